//! What the aggregator knows about one socket.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{decode::TcpState, stacks::OpenStack};

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

#[derive(Debug, Clone)]
pub struct TrackedSocket {
    pub origin: Origin,
    pub direction: Direction,
    /// When it was opened; None for inventory sockets (opened before tracing).
    pub opened_ns: Option<u64>,
    /// When tcptrace first knew of it (the open, or the inventory that found it).
    pub first_seen_ns: u64,
    pub state: TcpState,
    /// When it entered `state` (or was first seen in it).
    pub state_since_ns: u64,
    /// The process holding it and the descriptor it holds it by.
    pub pid: Option<u32>,
    pub fd: Option<i32>,
    /// The owner gave up its last descriptor.
    pub released: bool,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// From the latest sweep that matched it: no data either way for this long, measured then.
    pub idle: Option<Duration>,
    pub idle_measured_ns: u64,
    pub keepalive: Option<bool>,
    /// When connect() was called, until the handshake completes (connect latency).
    pub connect_started_ns: Option<u64>,
    /// The code path that opened it, when stacks are captured.
    pub stack: Option<Arc<OpenStack>>,
}

impl TrackedSocket {
    pub fn new(origin: Origin, direction: Direction, state: TcpState, now_ns: u64) -> Self {
        Self {
            origin,
            direction,
            opened_ns: (origin == Origin::Events).then_some(now_ns),
            first_seen_ns: now_ns,
            state,
            state_since_ns: now_ns,
            pid: None,
            fd: None,
            released: false,
            local: None,
            remote: None,
            idle: None,
            idle_measured_ns: now_ns,
            keepalive: None,
            connect_started_ns: None,
            stack: None,
        }
    }

    /// A process still holds a descriptor to it.
    pub fn held(&self) -> bool {
        !self.released && self.pid.is_some()
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
        self.idle.map(|i| i + Duration::from_nanos(now_ns.saturating_sub(self.idle_measured_ns)))
    }

    /// Age at `now_ns`: since the open, or since first seen for inventory sockets.
    pub fn age_at(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.opened_ns.unwrap_or(self.first_seen_ns)))
    }
}
