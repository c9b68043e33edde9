//! What the kernel programs should send for one socket, and how a test names it: the task a
//! program ran in (`Task`), a socket as the test knows it (`Sock`), one expected event
//! (`Expect`, with what may vary: owner, descriptor, endpoints), the sequences of whole
//! connections (active and passive opens, closing first or second), and one-line renderings of
//! events for failure messages.

use std::{
    fmt, fs,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, RawFd},
};

use tcptrace::event::{
    Endpoints, Event, EventKind, ReleaseReason,
    TcpState::{
        self, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent,
    },
};

use super::{
    peers::{ClientChild, Ending},
    process::Child,
};

pub const AF_INET6: u16 = libc::AF_INET6 as u16;

// ---------------------------------------------------------------------------------------------
// Tasks

/// The task a kernel program ran in, as the event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

impl Task {
    /// The calling thread.
    pub fn current() -> Self {
        // SAFETY: no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let comm = fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("reading comm");
        Self { pid: pid as u32, tid: tid as u32, comm: comm.trim_end_matches('\n').to_owned() }
    }

    /// A forked child (single-threaded).
    pub fn of(child: &Child) -> Self {
        Self { pid: child.pid(), tid: child.pid(), comm: child.name().to_owned() }
    }

    /// The owner-map entry this task leaves for a socket it opened as `fd`.
    pub fn owns(&self, fd: RawFd) -> Option<Owner> {
        Some(Owner { pid: self.pid, fd })
    }
}

/// How a forked peer's `Ending` shows in its release event.
impl Ending {
    pub fn reason(self) -> ReleaseReason {
        match self {
            Ending::Close => ReleaseReason::Close,
            Ending::Exit => ReleaseReason::Exit,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {:?}", self.pid, self.tid, self.comm)
    }
}

/// An event kind as the failure messages print it.
fn show_kind(kind: EventKind) -> String {
    match kind {
        EventKind::Connect => "connect".to_owned(),
        EventKind::Accept { state } => format!("accept state={}", opt_state(state)),
        EventKind::State { old, new, reset } => {
            format!("{old}->{new}{}", if reset { " RESET" } else { "" })
        }
        EventKind::Release { reason, state } => {
            format!("release by={} state={}", reason.name(), opt_state(state))
        }
        EventKind::Exit => "exit".to_owned(),
        EventKind::Exec => "exec".to_owned(),
    }
}

/// One event on one line, every field the tests check.
pub fn show(e: &Event) -> String {
    let kind = show_kind(e.kind);
    let endpoints = match e.endpoints {
        Some(ep) => format!("{} -> {}", ep.local, ep.remote),
        None => "-".to_owned(),
    };
    format!(
        "{kind:<32} task={}/{} {:?} owner={} fd={} {endpoints} sk={:#x}{}",
        e.pid,
        e.tid,
        e.comm.as_str(),
        opt(e.owner_pid),
        opt(e.fd),
        e.skaddr,
        if e.owner_lost { " OWNER_LOST" } else { "" }
    )
}

fn opt<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn opt_state(state: Option<TcpState>) -> String {
    opt(state)
}

// ---------------------------------------------------------------------------------------------
// Sockets and expectations

/// How a socket's first event is recognised in the ring.
#[derive(Clone, Copy, Debug)]
pub enum Find {
    /// The `connect` event of this thread and descriptor.
    Connect { tid: u32, fd: RawFd },
    /// The first event with exactly these endpoints (the passive side).
    Endpoints,
}

/// A socket as the test knows it.
#[derive(Clone, Copy, Debug)]
pub struct Sock {
    pub label: &'static str,
    pub find: Find,
    /// Port 0: not known to the test (a failed connect() forgets its port).
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Sock {
    /// The active side, connected by `task` as `fd`.
    pub fn client(
        label: &'static str,
        task: &Task,
        fd: RawFd,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        Self { label, find: Find::Connect { tid: task.tid, fd }, local, remote }
    }

    /// The active side, connected by `task` as `stream`.
    pub fn client_stream(label: &'static str, task: &Task, stream: &TcpStream) -> Self {
        let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        Self::client(label, task, stream.as_raw_fd(), local, remote)
    }

    /// Lets the forked `client` connect; its socket as the tests describe it, and its descriptor.
    pub fn connect_child(label: &'static str, client: &ClientChild) -> (Self, RawFd) {
        let (fd, local) = client.connect();
        (Self::client(label, &Task::of(client.child()), fd, local, client.server), fd)
    }

    /// The passive side, known by its endpoints.
    pub fn server(label: &'static str, local: SocketAddr, remote: SocketAddr) -> Self {
        Self { label, find: Find::Endpoints, local, remote }
    }

    pub fn server_stream(label: &'static str, stream: &TcpStream) -> Self {
        Self::server(label, stream.local_addr().unwrap(), stream.peer_addr().unwrap())
    }

    pub fn is_first(&self, e: &Event) -> bool {
        match self.find {
            Find::Connect { tid, fd } => {
                e.kind == EventKind::Connect && e.tid == tid && e.fd == Some(fd)
            }
            Find::Endpoints => {
                e.kind != EventKind::Exit
                    && e.endpoints == Some(Endpoints { local: self.local, remote: self.remote })
            }
        }
    }

    fn local_matches(&self, local: SocketAddr) -> bool {
        local.ip() == self.local.ip()
            && (self.local.port() == 0 || local.port() == self.local.port())
    }
}

/// The owner-map entry an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub fd: RawFd,
}

/// An expected value, or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Is<T> {
    Eq(T),
    Any,
}

impl<T: PartialEq> Is<T> {
    fn accepts(&self, value: &T) -> bool {
        match self {
            Is::Eq(expected) => expected == value,
            Is::Any => true,
        }
    }
}

impl<T: fmt::Debug> fmt::Display for Is<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Is::Eq(value) => write!(f, "{value:?}"),
            Is::Any => f.write_str("*"),
        }
    }
}

/// Which endpoints an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    /// The socket's own.
    Exact,
    /// `CLOSE -> SYN_SENT` runs before connect() picks the local port: port 0.
    BeforePort,
    /// `LISTEN -> SYN_RECV` runs while the new socket is cloned from the listener: older kernels
    /// (6.1) have not copied the peer's address yet (`0.0.0.0:0`), newer ones (6.18) have.
    BeforePeer,
    /// The kernel clears ports (and, after a failed connect, addresses) once a socket is CLOSE.
    Any,
    /// Lean mode: none, user space has them from the socket's open.
    Omitted,
    /// Lean mode's release: none with fentry or kprobe; tracepoint mode reads the socket anyway
    /// (to find it behind the descriptor) and sends them.
    ExactOrOmitted,
}

/// One expected event of a socket.
#[derive(Clone, Debug)]
pub struct Expect {
    pub kind: EventKind,
    /// The task the program ran in; `None` for state changes, which run in whatever task the
    /// softirq interrupted.
    pub task: Option<Task>,
    pub owner_pid: Is<Option<u32>>,
    pub fd: Is<Option<RawFd>>,
    pub ends: Ends,
}

impl Expect {
    pub fn matches(&self, e: &Event, sock: &Sock) -> bool {
        let task_ok = self
            .task
            .as_ref()
            .is_none_or(|t| e.pid == t.pid && e.tid == t.tid && e.comm.as_str() == t.comm);
        let ends_ok = match (self.ends, e.endpoints) {
            (Ends::Any, _) | (Ends::Omitted | Ends::ExactOrOmitted, None) => true,
            (Ends::Omitted, Some(_)) | (_, None) => false,
            (Ends::Exact | Ends::ExactOrOmitted, Some(ep)) => {
                sock.local_matches(ep.local) && ep.remote == sock.remote
            }
            (Ends::BeforePeer, Some(ep)) => {
                let unset = ep.remote.ip().is_unspecified() && ep.remote.port() == 0;
                ep.local == sock.local && (ep.remote == sock.remote || unset)
            }
            (Ends::BeforePort, Some(ep)) => {
                ep.local.ip() == sock.local.ip() && ep.local.port() == 0 && ep.remote == sock.remote
            }
        };
        e.kind == self.kind
            && task_ok
            && self.owner_pid.accepts(&e.owner_pid)
            && self.fd.accepts(&e.fd)
            && ends_ok
            && !e.owner_lost
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = show_kind(self.kind);
        let task = self.task.as_ref().map_or_else(|| "*".to_owned(), Task::to_string);
        write!(
            f,
            "{kind:<32} task={task} owner={} fd={} endpoints={:?}",
            self.owner_pid, self.fd, self.ends
        )
    }
}

/// `CLOSE -> SYN_SENT` in the thread that called connect() on `fd`.
pub fn connect_event(task: &Task, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Connect,
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::BeforePort,
    }
}

/// accept() returned the socket as `fd` in `task`, ESTABLISHED.
pub fn accept_event(task: &Task, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Accept { state: Some(Established) },
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::Exact,
    }
}

/// A state change, attributed to `owner` (None before accept()).
pub fn change(old: TcpState, new: TcpState, owner: Option<Owner>) -> Expect {
    Expect {
        kind: EventKind::State { old, new, reset: false },
        task: None,
        owner_pid: Is::Eq(owner.map(|o| o.pid)),
        fd: Is::Eq(owner.map(|o| o.fd)),
        ends: Ends::Exact,
    }
}

/// `old -> CLOSE` because a RST arrived.
pub fn reset_close(old: TcpState, owner: Option<Owner>) -> Expect {
    Expect {
        kind: EventKind::State { old, new: TcpState::Close, reset: true },
        ..change(old, TcpState::Close, owner)
    }
}

/// `task`, the owner, gave up its last descriptor `fd` while the socket was `state`.
pub fn release_event(task: &Task, reason: ReleaseReason, state: TcpState, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Release { reason, state: Some(state) },
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::Exact,
    }
}

/// The release, by `task`, the owner, of a socket that had already reached CLOSE (reset,
/// refused): the owner map keeps the entry until the release, so owner and descriptor are
/// known; the kernel has cleared the ports (and, after a failed connect, the addresses).
pub fn release_after_close(task: &Task, reason: ReleaseReason, fd: RawFd) -> Expect {
    Expect { ends: Ends::Any, ..release_event(task, reason, TcpState::Close, fd) }
}

// ---------------------------------------------------------------------------------------------
// Whole-connection sequences

/// The active side until it is established.
pub fn active_open(task: &Task, fd: RawFd) -> Vec<Expect> {
    vec![connect_event(task, fd), change(SynSent, Established, task.owns(fd))]
}

/// The passive side until accept() returns it.
pub fn passive_open(task: &Task, fd: RawFd) -> Vec<Expect> {
    vec![
        Expect { ends: Ends::BeforePeer, ..change(Listen, SynRecv, None) },
        change(SynRecv, Established, None),
        accept_event(task, fd),
    ]
}

/// The side that closes first, from ESTABLISHED to TIME_WAIT (`FIN_WAIT2 -> CLOSE`), `task`'s
/// process owning it as `fd`.
pub fn closes_first(task: &Task, fd: RawFd, by: ReleaseReason) -> Vec<Expect> {
    let owner = task.owns(fd);
    vec![
        release_event(task, by, Established, fd),
        change(Established, FinWait1, owner),
        change(FinWait1, FinWait2, owner),
        change(FinWait2, TcpState::Close, owner),
    ]
}

/// The side that closes second, from ESTABLISHED to CLOSE, `task`'s process owning it as `fd`.
pub fn closes_second(task: &Task, fd: RawFd, by: ReleaseReason) -> Vec<Expect> {
    let owner = task.owns(fd);
    vec![
        change(Established, CloseWait, owner),
        release_event(task, by, CloseWait, fd),
        change(CloseWait, LastAck, owner),
        change(LastAck, TcpState::Close, owner),
    ]
}

pub fn concat(parts: &[Vec<Expect>]) -> Vec<Expect> {
    parts.concat()
}
