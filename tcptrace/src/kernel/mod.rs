//! The kernel interface: everything that talks to the kernel about BPF, and nothing else.
//!
//! `probes` loads, configures and attaches the programs, as the pure `plan` decides from
//! `options` and the kernel, and hands out their maps; `counters` says what they lost;
//! `verifier` shortens load errors; `bpf_sys` and `prog_stats` make the two BPF system
//! calls aya does not offer; `btf_offsets` and `tracefs` read what the programs must know about
//! the running kernel; `close_hook` names the release-detection modes; `stream` reads the ring
//! buffer; `privileges` checks the capabilities up front; `support` says what the kernel offers
//! the close hooks, for `--version`.
//!
//! The bottom layer: it imports no other module of this crate, and any layer above may use it.

pub mod bpf_sys;
pub mod btf_offsets;
pub mod close_hook;
pub mod counters;
pub mod options;
pub mod plan;
pub mod privileges;
pub mod probes;
pub mod prog_stats;
pub mod stream;
pub mod support;
pub mod tracefs;
pub mod verifier;
