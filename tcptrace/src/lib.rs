//! tcptrace: follow every TCP connection on a Linux host from open to close.
//!
//! Layers, each in its own module: `probes` loads and attaches the kernel programs (with
//! `bpf_sys`, the only code that talks to the BPF syscall), `btf_offsets` and `tracefs` read what the kernel
//! programs need to know about the running kernel, `decode` turns ring-buffer bytes into
//! checked events, `connections` attributes each event to the socket's owner, `output` renders
//! records. `inventory` reads the sockets that already exist (sock_diag, /proc), `aggregate`
//! keeps each socket's lifecycle and per-process statistics, `findings` turns them into leak
//! findings and `report` prints them; `collector` is the event loop `leaks` and `top` share.
//! `stacks` reads the code path the kernel captured at each open and names its open site, with
//! `symbolize` turning addresses into functions, file:line and modules.
//! `run` traces a command and its descendants for CI, judging `budgets` and writing
//! `run_report`; `compare` diffs two reports. `cli`, `trace`, `leaks`, `top`, `run` and
//! `compare` are the commands.

pub mod aggregate;
pub mod bpf_sys;
pub mod btf_offsets;
pub mod budgets;
pub mod cli;
pub mod clock;
pub mod close_hook;
pub mod collector;
pub mod compare;
pub mod connections;
pub mod decode;
pub mod findings;
pub mod groups;
pub mod inventory;
pub mod inventory_filter;
pub mod leaks;
pub mod output;
pub mod ports;
pub mod privileges;
pub mod probes;
pub mod prog_stats;
pub mod report;
pub mod run;
pub mod run_report;
pub mod stacks;
pub mod stop;
pub mod stream;
pub mod symbolize;
pub mod top;
pub mod trace;
pub mod tracefs;
