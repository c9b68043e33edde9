//! Per-process counts and distributions, and the exited processes folded by name.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use super::distribution::Distribution;
use crate::container::Cgroup;

#[derive(Debug, Default)]
pub struct ProcessStats {
    pub comm: String,
    /// Sockets it opened (connect, accept) while tracing.
    pub opened: u64,
    /// Last descriptors of connections it gave up while tracing (listeners are not counted, as
    /// in `opened`; sockets from before tracing are).
    pub released: u64,
    /// TIME_WAIT entries of sockets it owned.
    pub time_wait_entries: u64,
    /// Open to protocol close, in µs.
    pub lifetime_us: Distribution,
    /// connect() to ESTABLISHED, in µs.
    pub connect_latency_us: Distribution,
    pub exited: bool,
    /// Its cgroup, and so its container.
    pub cgroup: Option<Arc<Cgroup>>,
}

impl ProcessStats {
    pub fn new(comm: String) -> Self {
        Self { comm, ..Self::default() }
    }

    /// The cgroup a record or a sweep placed it in (the latest: a process can be moved).
    pub fn place(&mut self, cgroup: Option<&Arc<Cgroup>>) {
        if let Some(cgroup) = cgroup
            && !self.cgroup.as_ref().is_some_and(|known| Arc::ptr_eq(known, cgroup))
        {
            self.cgroup = Some(cgroup.clone());
        }
    }

    pub fn record_lifetime(&mut self, ns: u64) {
        self.lifetime_us.record(ns / 1_000);
    }

    pub fn record_connect_latency(&mut self, ns: u64) {
        self.connect_latency_us.record(ns / 1_000);
    }

    /// Adds `other`'s counts and distributions (its name and exit are not merged).
    pub fn merge(&mut self, other: &Self) {
        let Self {
            comm: _,
            opened,
            released,
            time_wait_entries,
            lifetime_us,
            connect_latency_us,
            exited: _,
            cgroup: _,
        } = other;
        self.opened += opened;
        self.released += released;
        self.time_wait_entries += time_wait_entries;
        self.lifetime_us.merge(lifetime_us);
        self.connect_latency_us.merge(connect_latency_us);
    }
}

/// Names kept apart at most; the processes of further names fold into `OTHER_COMM`.
const MAX_COMMS: usize = 4_096;
/// The name that stands for every name beyond `MAX_COMMS`.
pub const OTHER_COMM: &str = "(other)";

/// Processes that exited, holding nothing and owing no finding, folded into one entry per
/// task name: their memory is freed, their counts and distributions stay in the report.
#[derive(Debug, Default)]
pub struct Folded {
    pub by_comm: BTreeMap<String, FoldedStats>,
}

#[derive(Debug, Default)]
pub struct FoldedStats {
    /// Processes folded in.
    pub processes: u64,
    pub stats: ProcessStats,
}

impl Folded {
    /// The entry for `comm` (or `OTHER_COMM` when there are too many names).
    pub fn entry(&mut self, comm: &str) -> &mut FoldedStats {
        let comm = if self.by_comm.len() >= MAX_COMMS && !self.by_comm.contains_key(comm) {
            OTHER_COMM
        } else {
            comm
        };
        if !self.by_comm.contains_key(comm) {
            let stats = ProcessStats::new(comm.to_owned());
            self.by_comm.insert(comm.to_owned(), FoldedStats { processes: 0, stats });
        }
        self.by_comm.get_mut(comm).expect("inserted above")
    }

    /// Folds one process in.
    pub fn fold(&mut self, stats: &ProcessStats) {
        let entry = self.entry(&stats.comm);
        entry.processes += 1;
        entry.stats.merge(stats);
    }
}

/// A distribution as reports show it, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(dist: &Distribution) -> Option<Self> {
        if dist.is_empty() {
            return None;
        }
        let ms = |us: f64| (us / 1_000.0 * 1e6).round() / 1e6;
        Some(Self {
            count: dist.len(),
            p50: ms(dist.quantile(0.50)),
            p90: ms(dist.quantile(0.90)),
            p99: ms(dist.quantile(0.99)),
            max: ms(dist.max() as f64),
        })
    }
}
