//! Events as the rest of tcptrace sees them: ring-buffer records decoded into checked domain
//! types (`decode`), and the clock they are stamped with (`clock`).
//!
//! Pure, no I/O: unit-tested without root. Imports nothing from the crate's other layers; every
//! layer above `kernel` may use it.

pub mod clock;
mod decode;

pub use decode::*;
