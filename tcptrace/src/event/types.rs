//! The domain types every layer above reads: TCP states, release reasons, task names,
//! endpoints and the decoded event.

use std::{fmt, net::SocketAddr, path::PathBuf};

use tcptrace_common::{RELEASE_CLOSE, RELEASE_CLOSE_RANGE, RELEASE_DUP, RELEASE_EXIT};

use super::error::DecodeError;

/// TCP states, numbered as include/net/tcp_states.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TryFrom<u8> for TcpState {
    type Error = DecodeError;

    fn try_from(raw: u8) -> Result<Self, DecodeError> {
        use tcptrace_common::tcp_state as s;
        Ok(match raw {
            s::ESTABLISHED => Self::Established,
            s::SYN_SENT => Self::SynSent,
            s::SYN_RECV => Self::SynRecv,
            s::FIN_WAIT1 => Self::FinWait1,
            s::FIN_WAIT2 => Self::FinWait2,
            s::TIME_WAIT => Self::TimeWait,
            s::CLOSE => Self::Close,
            s::CLOSE_WAIT => Self::CloseWait,
            s::LAST_ACK => Self::LastAck,
            s::LISTEN => Self::Listen,
            s::CLOSING => Self::Closing,
            s::NEW_SYN_RECV => Self::NewSynRecv,
            other => return Err(DecodeError::State(other)),
        })
    }
}

impl TcpState {
    /// Every state, for callers that enumerate them (metric series).
    pub const ALL: [Self; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    /// The names `ss` and the kernel's tracepoint use, without the `TCP_` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

/// As the name (`"CLOSE_WAIT"`), in reports.
impl serde::Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the process gave up its last descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    Close,
    CloseRange,
    Dup,
    Exit,
}

impl TryFrom<u8> for ReleaseReason {
    type Error = DecodeError;

    fn try_from(raw: u8) -> Result<Self, DecodeError> {
        Ok(match raw {
            RELEASE_CLOSE => Self::Close,
            RELEASE_CLOSE_RANGE => Self::CloseRange,
            RELEASE_DUP => Self::Dup,
            RELEASE_EXIT => Self::Exit,
            other => return Err(DecodeError::Reason(other)),
        })
    }
}

impl ReleaseReason {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Close => "close",
            Self::CloseRange => "close_range",
            Self::Dup => "dup2",
            Self::Exit => "exit",
        }
    }
}

/// A task name as the kernel stores it: up to 16 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn new(raw: [u8; 16]) -> Self {
        Self(raw)
    }

    /// The bytes as the kernel keeps them, for the kernel's own filter decisions.
    pub fn raw(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..len])
    }
}

/// A name given in user space (tests, filters): its first 16 bytes, as the kernel would keep.
impl From<&str> for Comm {
    fn from(name: &str) -> Self {
        let mut raw = [0u8; 16];
        let len = name.len().min(raw.len());
        raw[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self(raw)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `CLOSE -> SYN_SENT` in the thread that called connect().
    Connect,
    /// accept() returned this socket; `state` is its state at that moment.
    Accept {
        state: Option<TcpState>,
    },
    State {
        old: TcpState,
        new: TcpState,
        reset: bool,
    },
    Release {
        reason: ReleaseReason,
        state: Option<TcpState>,
    },
    /// The last thread of process `pid` exited.
    Exit,
    /// Process `pid` called execve().
    Exec,
}

/// Ids of the stacks captured at connect or accept, in the kernel's `STACKS` map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StackIds {
    pub user: Option<u32>,
    pub kernel: Option<u32>,
}

impl StackIds {
    pub(super) fn from_raw(user: i32, kernel: i32) -> Self {
        Self { user: u32::try_from(user).ok(), kernel: u32::try_from(kernel).ok() }
    }
}

/// The interpreter a `InterpStack` was walked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Python,
    HotSpot,
    /// Node.js.
    V8,
}

impl TryFrom<u32> for Runtime {
    type Error = DecodeError;

    fn try_from(raw: u32) -> Result<Self, DecodeError> {
        match raw {
            tcptrace_common::RUNTIME_PYTHON => Ok(Self::Python),
            tcptrace_common::RUNTIME_HOTSPOT => Ok(Self::HotSpot),
            tcptrace_common::RUNTIME_V8 => Ok(Self::V8),
            other => Err(DecodeError::Runtime(other)),
        }
    }
}

/// How the kernel's walk of the interpreter's frames ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpWalk {
    /// It reached the outermost frame: the stack is whole.
    Complete,
    /// It stopped at its frame limit: outer frames are missing.
    Cut,
    /// The calling thread is not one the interpreter lists (a thread started outside it).
    NoThread,
    /// A read of the process's memory failed mid-walk.
    ReadFailed,
}

impl TryFrom<u32> for InterpWalk {
    type Error = DecodeError;

    fn try_from(raw: u32) -> Result<Self, DecodeError> {
        use tcptrace_common::{INTERP_COMPLETE, INTERP_CUT, INTERP_NO_THREAD, INTERP_READ_FAILED};
        match raw {
            INTERP_COMPLETE => Ok(Self::Complete),
            INTERP_CUT => Ok(Self::Cut),
            INTERP_NO_THREAD => Ok(Self::NoThread),
            INTERP_READ_FAILED => Ok(Self::ReadFailed),
            other => Err(DecodeError::InterpWalk(other)),
        }
    }
}

/// The interpreter frames an open record carried, innermost first: addresses in the process
/// (code object, last instruction), named by `interp` in user space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpStack {
    pub runtime: Runtime,
    pub walk: InterpWalk,
    pub frames: Vec<tcptrace_common::InterpFrame>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub skaddr: u64,
    /// The task the kernel program ran in.
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    /// The process that opened the socket, as the kernel's owner map knows it.
    pub owner_pid: Option<u32>,
    pub fd: Option<i32>,
    pub endpoints: Option<Endpoints>,
    /// The kernel could not remember the owner (owner map full).
    pub owner_lost: bool,
    pub stacks: StackIds,
    pub kind: EventKind,
    /// For `Exec`: the path passed to execve() (relative to the process's working directory
    /// when it does not start with `/`).
    pub exec_path: Option<PathBuf>,
    /// For connect, listen and accept: the opener's cgroup v2 id, when the kernel reads it.
    pub cgroup: Option<u64>,
    /// For connect and accept in a process running a known interpreter: its frames (boxed:
    /// most events have none, and events are moved by value).
    pub interp: Option<Box<InterpStack>>,
}
