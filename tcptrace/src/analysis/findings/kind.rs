//! The leak classes (their names are part of the interface: flags, JSON, budgets) and the limits
//! that decide when a socket becomes one.

use std::time::Duration;

use serde::Serialize;

/// TIME_WAIT lasts this long on Linux (TCP_TIMEWAIT_LEN), so a rate of r entries per second
/// toward one remote holds about 60·r local ports.
pub const TIME_WAIT_SECS: f64 = 60.0;

/// The thresholds, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// A socket is only a finding once it has been in its leaking state this long.
    #[serde(rename = "min_age_s", serialize_with = "secs")]
    pub min_age: Duration,
    /// `idle-no-keepalive` after this long without data.
    #[serde(rename = "idle_s", serialize_with = "secs")]
    pub idle: Duration,
    /// `time-wait-churn` at this many TIME_WAIT entries per second toward one remote.
    pub time_wait_rate: f64,
    /// Ephemeral ports (net.ipv4.ip_local_port_range), for the share churn holds.
    pub ephemeral_ports: u32,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Limits {
    /// The rate at which one remote's TIME_WAIT sockets would hold 10% of the ephemeral range.
    pub fn default_time_wait_rate(ephemeral_ports: u32) -> f64 {
        f64::from(ephemeral_ports) * 0.10 / TIME_WAIT_SECS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    CloseWait,
    DeadFd,
    IdleNoKeepalive,
    Unclosed,
    ClosedByExit,
    TimeWaitChurn,
}

impl FindingKind {
    pub const ALL: [Self; 6] = [
        Self::CloseWait,
        Self::DeadFd,
        Self::IdleNoKeepalive,
        Self::Unclosed,
        Self::ClosedByExit,
        Self::TimeWaitChurn,
    ];
    pub const NAMES: [&'static str; 6] = [
        Self::CloseWait.name(),
        Self::DeadFd.name(),
        Self::IdleNoKeepalive.name(),
        Self::Unclosed.name(),
        Self::ClosedByExit.name(),
        Self::TimeWaitChurn.name(),
    ];

    /// The kind named `name` (`close-wait`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::CloseWait => "close-wait",
            Self::DeadFd => "dead-fd",
            Self::IdleNoKeepalive => "idle-no-keepalive",
            Self::Unclosed => "unclosed",
            Self::ClosedByExit => "closed-by-exit",
            Self::TimeWaitChurn => "time-wait-churn",
        }
    }

    pub const fn explanation(self) -> &'static str {
        match self {
            Self::CloseWait => "the peer closed and this process never called close()",
            Self::DeadFd => {
                "the connection ended (reset or timeout) but the process still holds the descriptor"
            }
            Self::IdleNoKeepalive => {
                "no data for longer than the idle limit and no keepalive: if the peer vanished, nothing will ever notice"
            }
            Self::Unclosed => {
                "opened during the trace and still held, unused, at its end: a client or pool that never closes"
            }
            Self::ClosedByExit => {
                "the process exited still holding the connection: the program never closed it, the kernel did"
            }
            Self::TimeWaitChurn => {
                "a new connection per request: every close leaves a TIME_WAIT socket holding a local port for 60 s"
            }
        }
    }

    pub const fn fix(self) -> &'static str {
        match self {
            Self::CloseWait => {
                "close the socket when a read returns end-of-file (e.g. close HTTP response bodies)"
            }
            Self::DeadFd => "close the descriptor on every error path",
            Self::IdleNoKeepalive => {
                "enable SO_KEEPALIVE (e.g. redis tcp-keepalive, TCP_KEEPIDLE) or time out idle connections"
            }
            Self::Unclosed => "close connections when done, or reuse them from a bounded pool",
            Self::ClosedByExit => {
                "close connections (and drop clients and pools) before exiting, e.g. in test teardown"
            }
            Self::TimeWaitChurn => "reuse connections (keep-alive, a connection pool)",
        }
    }
}
