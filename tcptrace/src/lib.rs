//! tcptrace: follow every TCP connection on a Linux host from open to close.
//!
//! Layers, each in its own module: `probes` loads and attaches the kernel programs (the only
//! code that talks to the BPF syscall), `btf_offsets` and `tracefs` read what the kernel
//! programs need to know about the running kernel, `decode` turns ring-buffer bytes into
//! checked events, `connections` is the pure per-socket bookkeeping, `inventory` lists the
//! sockets that already exist (netlink sock_diag joined with /proc), `output` renders records,
//! and `cli`/`trace` are the command line.

pub mod btf_offsets;
pub mod cli;
pub mod close_hook;
pub mod connections;
pub mod decode;
pub mod inventory;
pub mod output;
pub mod privileges;
pub mod probes;
pub mod stream;
pub mod trace;
pub mod tracefs;
