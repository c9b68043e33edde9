//! The ABI between tcptrace's kernel programs and its user space.
//!
//! Everything here crosses the kernel boundary as raw bytes, so every struct is `repr(C)` with
//! explicit padding, holds only integers (no `bool`, no enums: an unknown discriminant read from
//! the ring would be undefined behaviour) and has its size pinned by a compile-time assertion.
//! User space turns these raw values into domain types with `TryFrom`.
#![no_std]

pub mod config;
pub mod event;
pub mod offsets;

pub use config::*;
pub use event::*;
pub use offsets::*;
