//! The ABI between tcptrace's kernel programs and its user space, and the decisions both sides
//! make the same way.
//!
//! Everything that crosses the kernel boundary as raw bytes is `repr(C)` with explicit padding,
//! holds only integers (no `bool`, no enums: an unknown discriminant read from the ring would be
//! undefined behaviour) and has its size pinned by a compile-time assertion. User space turns
//! these raw values into domain types with `TryFrom`.
//!
//! The decision logic the kernel programs run (`triage`, `StateMarks`, `Filter`'s matching) is
//! plain functions over plain data here, so it is unit-tested on the host (`cargo test -p
//! tcptrace-common`) rather than only by root tests that hit its cases by chance; the kernel
//! crate keeps only the map accesses around it. Everything the kernel calls is
//! `#[inline(always)]`: a BPF call would cost a stack frame of its own and, on 6.1, lose the
//! verifier's knowledge of the load-time globals across the call.
#![cfg_attr(not(test), no_std)]

pub mod config;
pub mod event;
pub mod interp;
pub mod lifecycle;
/// The names of the kernel object's maps, globals and programs, for user space to load them by.
pub mod names;
pub mod nested;
pub mod net;
pub mod offsets;

pub use config::*;
pub use event::*;
pub use interp::*;
pub use lifecycle::*;
pub use nested::*;
pub use net::*;
pub use offsets::*;
