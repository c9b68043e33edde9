//! Why a ring record is not an event: each raw value is checked, never assumed.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown release reason {0}")]
    Reason(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown interpreter {0}")]
    Runtime(u32),
    #[error("unknown interpreter walk status {0}")]
    InterpWalk(u32),
    #[error("interpreter record of {0} bytes is shorter than its frames")]
    ShortInterp(usize),
}
