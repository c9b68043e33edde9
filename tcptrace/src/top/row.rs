//! What the view shows: one [`Row`] per process and the [`Frame`] around them. Filled by the
//! aggregator; nothing here knows how the numbers were counted.

use std::time::Duration;

/// One process's TCP sockets over the last interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub pid: u32,
    pub comm: String,
    /// Its container: a name, else a short id (a systemd service by its unit); empty on the
    /// host.
    pub container: String,
    /// Sockets the process holds now (opened and not yet released).
    pub open: u64,
    pub established: u64,
    /// Held sockets whose peer has closed: the usual sign of a leak.
    pub close_wait: u64,
    pub time_wait_per_s: f64,
    pub opened_per_s: f64,
    pub released_per_s: f64,
    /// Lifetime percentiles of the connections that closed; `None` until one has.
    pub lifetime_p50_ms: Option<f64>,
    pub lifetime_p99_ms: Option<f64>,
    pub findings: u64,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub rows: Vec<Row>,
    /// Time since tracing started.
    pub elapsed: Duration,
    pub close_hook: String,
    pub sockets_tracked: u64,
    pub events_per_s: f64,
    pub events_lost: u64,
    /// Sockets dropped from the kernel's tracking map because it was full.
    pub evicted: u64,
}
