//! tcptrace: follow every TCP connection on a Linux host from open to close.
//!
//! The layers, top to bottom; each imports only the layers below it (docs/architecture.md draws
//! them):
//!
//! - `cmd`: one entry point per command (`trace`, `leaks`, `top`, `run`, `compare`, `serve`);
//! - `cli`: the flags, validated once into typed options;
//! - `serve`: the always-on exporter's metrics and HTTP side;
//! - `top`: the live table's view; `render`: reports, trace lines, JUnit;
//! - `analysis`: the lifecycle aggregator, findings, groups, budgets, comparisons;
//! - `pipeline`: the one event loop every command shares, and per-socket attribution;
//! - `inventory`: the sockets that exist already (sock_diag, /proc);
//! - `stacks`, `interp` and `symbolize`: the code path that opened a connection, and its
//!   frames in an interpreter (Python);
//! - `container`: which container (or pod, or service) a process runs in;
//! - `event`: ring records decoded into domain types;
//! - `kernel`: loading, attaching and reading the kernel programs.
//!
//! `stdio` (every message to stderr, never a panic when stderr is gone) is a leaf any layer uses.

pub mod analysis;
pub mod cli;
pub mod cmd;
pub mod container;
pub mod event;
pub mod interp;
pub mod inventory;
pub mod kernel;
pub mod pipeline;
pub mod render;
pub mod serve;
pub mod stacks;
pub mod stdio;
pub mod symbolize;
pub mod top;
