//! The table's rows from the aggregator: counts per process, and rates between two refreshes.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{Frame, Row};
use crate::{
    analysis::{
        aggregate::{Aggregator, Percentiles},
        findings::{self, Limits},
    },
    event::{TcpState, clock::monotonic_ns},
    kernel::close_hook::CloseHook,
};

/// What the pipeline says about the run itself at a refresh.
#[derive(Debug, Clone, Copy)]
pub struct RunState {
    pub elapsed: Duration,
    pub close_hook: CloseHook,
    /// Kernel events decoded so far.
    pub events: u64,
    pub events_lost: u64,
}

/// Counters at the previous refresh, for rates.
#[derive(Default, Clone, Copy)]
struct Seen {
    opened: u64,
    released: u64,
    time_wait: u64,
}

/// Per-process rates between two refreshes.
#[derive(Default)]
pub struct Rates {
    seen: HashMap<u32, Seen>,
    events: u64,
    at: Option<Instant>,
}

impl Rates {
    /// The table now, with rates since the last one.
    pub fn frame(&mut self, agg: &Aggregator, run: &RunState, limits: &Limits) -> Frame {
        let now = Instant::now();
        let secs = self.at.map_or(run.elapsed, |at| now - at).as_secs_f64().max(1e-3);
        let mut rows = rows(agg, limits);
        // Processes folded since (exited) leave: the table follows the live ones.
        let live: HashSet<u32> = rows.iter().map(|r| r.pid).collect();
        self.seen.retain(|pid, _| live.contains(pid));
        for row in &mut rows {
            let stats = &agg.processes[&row.pid];
            let current = Seen {
                opened: stats.opened,
                released: stats.released,
                time_wait: stats.time_wait_entries,
            };
            let before = self.seen.insert(row.pid, current).unwrap_or_default();
            row.opened_per_s = (current.opened - before.opened) as f64 / secs;
            row.released_per_s = (current.released - before.released) as f64 / secs;
            row.time_wait_per_s = (current.time_wait - before.time_wait) as f64 / secs;
        }
        let events_per_s = run.events.saturating_sub(self.events) as f64 / secs;
        self.events = run.events;
        self.at = Some(now);
        Frame {
            rows,
            elapsed: run.elapsed,
            close_hook: run.close_hook.to_string(),
            sockets_tracked: agg.tracked() as u64,
            events_per_s,
            events_lost: run.events_lost,
            evicted: agg.evicted,
        }
    }
}

/// One row per process that holds a socket or did something while tracing.
fn rows(agg: &Aggregator, limits: &Limits) -> Vec<Row> {
    let mut rows: HashMap<u32, Row> = HashMap::new();
    for (&pid, stats) in &agg.processes {
        let lifetime = Percentiles::of(&stats.lifetime_us);
        rows.insert(
            pid,
            Row {
                pid,
                comm: stats.comm.clone(),
                container: stats
                    .cgroup
                    .as_ref()
                    .and_then(|c| c.container.as_ref())
                    .map(|c| c.name.clone().unwrap_or_else(|| c.short_id().to_owned()))
                    .unwrap_or_default(),
                lifetime_p50_ms: lifetime.map(|l| l.p50),
                lifetime_p99_ms: lifetime.map(|l| l.p99),
                ..Row::default()
            },
        );
    }
    for (pid, states) in agg.held_by_process() {
        let Some(row) = rows.get_mut(&pid) else { continue };
        row.open = states.values().sum();
        row.established = states.get(&TcpState::Established).copied().unwrap_or(0);
        row.close_wait = states.get(&TcpState::CloseWait).copied().unwrap_or(0);
    }
    for finding in findings::detect(agg, limits, monotonic_ns()) {
        if let Some(row) = rows.get_mut(&finding.pid) {
            row.findings += 1;
        }
    }
    rows.into_values().collect()
}
