//! Events as the rest of tcptrace sees them: the domain types (`types`: TCP states, task
//! names, endpoints, the event), ring-buffer records decoded into them with every value checked
//! (`decode`), and the clock they are stamped with (`clock`).
//!
//! Pure, no I/O: unit-tested without root. Imports nothing from the crate's other layers; every
//! layer above `kernel` may use it.

pub mod clock;
mod decode;
mod error;
mod types;

pub use error::DecodeError;
pub use types::*;
