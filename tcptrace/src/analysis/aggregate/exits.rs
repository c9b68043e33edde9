//! Sockets released only by their process's exit (`tcptrace run`'s `closed-by-exit`): the
//! program never closed them itself. Kept at the release, because the socket leaves the table
//! once its connection closes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::{Direction, TrackedSocket};
use crate::{event::TcpState, stacks::OpenStack};

/// Releases kept at most; beyond, they are counted in `dropped`.
const MAX_KEPT: usize = 65_536;

#[derive(Debug, Clone)]
pub struct ExitRelease {
    pub pid: u32,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The state the exit found it in.
    pub state: TcpState,
    /// From the open to the exit.
    pub age: Duration,
    pub stack: Option<Arc<OpenStack>>,
}

#[derive(Debug, Default)]
pub struct ExitReleases {
    /// Off (the default) for `leaks` and `top`: on a host, processes end with open connections
    /// all the time; in a test run that is the finding.
    pub enabled: bool,
    pub kept: Vec<ExitRelease>,
    pub dropped: u64,
}

impl ExitReleases {
    /// Keeps the release of `socket` by `pid`'s exit at `ts_ns`. Listeners are left out: a
    /// server's listening socket ends with the server.
    pub fn record(&mut self, socket: &TrackedSocket, pid: u32, fd: Option<i32>, ts_ns: u64) {
        if !self.enabled || socket.direction == Direction::Listen {
            return;
        }
        if self.kept.len() >= MAX_KEPT {
            self.dropped += 1;
            return;
        }
        self.kept.push(ExitRelease {
            pid,
            fd: fd.or(socket.fd()),
            local: socket.local(),
            remote: socket.remote(),
            state: socket.state,
            age: socket.age_at(ts_ns),
            stack: socket.stack.clone(),
        });
    }
}
