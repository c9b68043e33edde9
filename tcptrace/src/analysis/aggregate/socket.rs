//! What the aggregator knows about one socket.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{event::TcpState, stacks::OpenStack};

/// Where tcptrace learned of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Seen opening (connect, accept, listen) while tracing.
    Events,
    /// It existed before tracing started: found by the inventory.
    Inventory,
}

/// How the socket was opened, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// connect(): this side is the client.
    Active,
    /// accept() or a listener's child: this side is the server.
    Passive,
    Listen,
    Unknown,
}

/// What tcptrace knows of one socket, in 64 bytes: a million open sockets are a million table
/// entries (and the table doubles its buckets as it grows), so every byte counts about twice.
/// Options are kept as sentinels or bits behind accessors; the open and connect times are not
/// stored, they are `first_seen_ns` (see `opened_ns` and `take_connect_started_ns`).
#[derive(Debug, Clone)]
pub struct TrackedSocket {
    /// When tcptrace first knew of it (the open, or the inventory that found it).
    first_seen_ns: u64,
    /// When it entered `state` (or was first seen in it).
    pub state_since_ns: u64,
    /// When the sweep that measured `idle_ms` ran; `NO_IDLE` when no sweep measured it.
    idle_measured_ns: u64,
    /// The code path that opened it, when stacks are captured.
    pub stack: Option<Arc<OpenStack>>,
    addrs: Addrs,
    /// `NO_PID` when no process is known to hold it.
    pid: u32,
    /// The descriptor it is held by; `NO_FD` when unknown.
    fd: i32,
    /// From the latest sweep that matched it: no data either way for this long, measured then.
    /// The kernel reports it in whole milliseconds, as a u32 (`tcp_info`).
    idle_ms: u32,
    pub state: TcpState,
    origin: Origin,
    pub direction: Direction,
    flags: u8,
}

const _: () = assert!(size_of::<TrackedSocket>() <= 64);

/// Above PID_MAX_LIMIT (2^22): never a real pid.
const NO_PID: u32 = u32::MAX;
const NO_FD: i32 = i32::MIN;
/// Not a monotonic time the kernel will reach (584 years of uptime).
const NO_IDLE: u64 = u64::MAX;

/// `flags` bits.
const RELEASED: u8 = 1;
/// connect() was called and the handshake has not completed yet.
const CONNECTING: u8 = 1 << 1;
const KEEPALIVE_KNOWN: u8 = 1 << 2;
const KEEPALIVE_ON: u8 = 1 << 3;
/// A sweep found it by its addresses: they are written as the inventory writes them.
const SWEPT: u8 = 1 << 4;

/// Both endpoints in 16 bytes: IPv4 inline; anything else behind a box, which is 8 bytes where
/// two `Option<SocketAddr>` are 64.
#[derive(Debug, Clone)]
enum Addrs {
    V4 { local: [u8; 4], remote: [u8; 4], local_port: u16, remote_port: u16, known: u8 },
    Other(Box<[Option<SocketAddr>; 2]>),
}

const LOCAL: u8 = 1;
const REMOTE: u8 = 1 << 1;

impl Addrs {
    const NONE: Self =
        Self::V4 { local: [0; 4], remote: [0; 4], local_port: 0, remote_port: 0, known: 0 };

    fn get(&self, which: u8) -> Option<SocketAddr> {
        match self {
            Self::V4 { local, remote, local_port, remote_port, known } => {
                let (ip, port) =
                    if which == LOCAL { (local, local_port) } else { (remote, remote_port) };
                (known & which != 0).then(|| SocketAddr::from((*ip, *port)))
            }
            Self::Other(both) => both[usize::from(which == REMOTE)],
        }
    }

    fn set(&mut self, which: u8, addr: SocketAddr) {
        match (&mut *self, addr) {
            (Self::V4 { local, remote, local_port, remote_port, known }, SocketAddr::V4(v4)) => {
                let (ip, port) =
                    if which == LOCAL { (local, local_port) } else { (remote, remote_port) };
                *ip = v4.ip().octets();
                *port = v4.port();
                *known |= which;
            }
            (Self::Other(both), _) => both[usize::from(which == REMOTE)] = Some(addr),
            (Self::V4 { .. }, SocketAddr::V6(_)) => {
                let mut both = [self.get(LOCAL), self.get(REMOTE)];
                both[usize::from(which == REMOTE)] = Some(addr);
                *self = Self::Other(Box::new(both));
            }
        }
    }
}

impl TrackedSocket {
    pub fn new(origin: Origin, direction: Direction, state: TcpState, now_ns: u64) -> Self {
        Self {
            first_seen_ns: now_ns,
            state_since_ns: now_ns,
            idle_measured_ns: NO_IDLE,
            stack: None,
            addrs: Addrs::NONE,
            pid: NO_PID,
            fd: NO_FD,
            idle_ms: 0,
            state,
            origin,
            direction,
            flags: 0,
        }
    }

    /// A listener's child seen in its handshake (LISTEN -> SYN_RECV) and not yet accepted: the
    /// only socket an accept() at its address continues.
    pub fn is_handshake_child(&self) -> bool {
        self.origin == Origin::Events
            && self.direction == Direction::Passive
            && self.pid == NO_PID
            && !self.released()
            && matches!(self.state, TcpState::SynRecv | TcpState::Established)
    }

    /// Where tcptrace learned of it.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// When tcptrace first knew of it (the open, or the inventory that found it).
    pub fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }

    /// When it was opened; None for inventory sockets (opened before tracing). Sockets seen
    /// opening are created at their open, so it is when they were first seen.
    pub fn opened_ns(&self) -> Option<u64> {
        (self.origin == Origin::Events).then_some(self.first_seen_ns)
    }

    /// The process holding it.
    pub fn pid(&self) -> Option<u32> {
        (self.pid != NO_PID).then_some(self.pid)
    }

    pub fn set_pid(&mut self, pid: Option<u32>) {
        debug_assert_ne!(pid, Some(NO_PID));
        self.pid = pid.unwrap_or(NO_PID);
    }

    /// The descriptor it is held by.
    pub fn fd(&self) -> Option<i32> {
        (self.fd != NO_FD).then_some(self.fd)
    }

    pub fn set_fd(&mut self, fd: Option<i32>) {
        self.fd = fd.unwrap_or(NO_FD);
    }

    /// The owner gave up its last descriptor.
    pub fn released(&self) -> bool {
        self.flags & RELEASED != 0
    }

    pub fn set_released(&mut self, released: bool) {
        self.set_flag(RELEASED, released);
    }

    pub fn local(&self) -> Option<SocketAddr> {
        self.addrs.get(LOCAL)
    }

    pub fn set_local(&mut self, addr: SocketAddr) {
        self.addrs.set(LOCAL, addr);
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.addrs.get(REMOTE)
    }

    pub fn set_remote(&mut self, addr: SocketAddr) {
        self.addrs.set(REMOTE, addr);
    }

    /// Whether a sweep has found it (by its addresses).
    pub fn swept(&self) -> bool {
        self.flags & SWEPT != 0
    }

    pub fn set_swept(&mut self) {
        self.set_flag(SWEPT, true);
    }

    /// From the latest sweep that matched it.
    pub fn keepalive(&self) -> Option<bool> {
        (self.flags & KEEPALIVE_KNOWN != 0).then_some(self.flags & KEEPALIVE_ON != 0)
    }

    pub fn set_keepalive(&mut self, keepalive: Option<bool>) {
        self.set_flag(KEEPALIVE_KNOWN, keepalive.is_some());
        self.set_flag(KEEPALIVE_ON, keepalive == Some(true));
    }

    /// No data either way for `idle` (whole milliseconds, as the kernel reports it), measured by
    /// the sweep at `now_ns`.
    pub fn set_idle(&mut self, idle: Duration, now_ns: u64) {
        self.idle_ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
        self.idle_measured_ns = now_ns;
    }

    /// Marks connect() called at the open (`first_seen_ns`), for the connect latency.
    pub fn start_connect(&mut self) {
        self.set_flag(CONNECTING, true);
    }

    /// When connect() was called, once, when the handshake completes.
    pub fn take_connect_started_ns(&mut self) -> Option<u64> {
        let connecting = self.flags & CONNECTING != 0;
        self.set_flag(CONNECTING, false);
        connecting.then_some(self.first_seen_ns)
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// A process still holds a descriptor to it.
    pub fn held(&self) -> bool {
        !self.released() && self.pid().is_some()
    }

    pub fn set_state(&mut self, state: TcpState, ts_ns: u64) {
        if self.state != state {
            self.state = state;
            self.state_since_ns = ts_ns;
        }
    }

    /// Idle time at `now_ns`, extrapolated from the last measurement (no traffic since is the
    /// only way it could have grown; a sweep corrects it).
    pub fn idle_at(&self, now_ns: u64) -> Option<Duration> {
        (self.idle_measured_ns != NO_IDLE).then(|| {
            Duration::from_millis(u64::from(self.idle_ms))
                + Duration::from_nanos(now_ns.saturating_sub(self.idle_measured_ns))
        })
    }

    /// Age at `now_ns`: since the open, or since first seen for inventory sockets.
    pub fn age_at(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.first_seen_ns))
    }
}
