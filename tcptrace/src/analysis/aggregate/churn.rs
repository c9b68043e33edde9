//! TIME_WAIT entries per (process, remote): the churn that exhausts ephemeral ports.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

// foldhash, not SipHash: a connect()ed socket's TIME_WAIT entry looks its counter up, on the
// event path.
use foldhash::HashMap;

use crate::stacks::OpenStack;

/// Entries toward one remote.
#[derive(Debug, Clone)]
pub struct ChurnCounter {
    pub entries: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// The code path that opened the latest of these connections, when stacks are captured:
    /// a loop opening a connection per iteration has one.
    pub stack: Option<Arc<OpenStack>>,
}

impl ChurnCounter {
    /// Entries per second while the churn lasted. Measured between the first and the last
    /// entry, so a loop that ran for part of the trace is not diluted by the rest; a window
    /// under a second is stretched to one second, so a handful of entries is not a rate.
    pub fn rate_per_s(&self) -> f64 {
        let window = Duration::from_nanos(self.last_ns.saturating_sub(self.first_ns));
        if window >= Duration::from_secs(1) {
            (self.entries - 1) as f64 / window.as_secs_f64()
        } else {
            self.entries as f64
        }
    }
}

#[derive(Debug, Default)]
pub struct Churn {
    counters: HashMap<(u32, SocketAddr), ChurnCounter>,
}

impl Churn {
    pub fn record(
        &mut self,
        pid: u32,
        remote: SocketAddr,
        ts_ns: u64,
        stack: Option<Arc<OpenStack>>,
    ) {
        let counter = self.counters.entry((pid, remote)).or_insert(ChurnCounter {
            entries: 0,
            first_ns: ts_ns,
            last_ns: ts_ns,
            stack: None,
        });
        counter.entries += 1;
        counter.first_ns = counter.first_ns.min(ts_ns);
        counter.last_ns = counter.last_ns.max(ts_ns);
        if stack.is_some() {
            counter.stack = stack;
        }
    }

    /// Processes with a counter that may be a finding: two entries or more toward one remote
    /// (one entry is no rate, whatever the limit).
    pub fn pids_with_rates(&self) -> HashSet<u32> {
        self.counters.iter().filter(|(_, c)| c.entries >= 2).map(|(&(pid, _), _)| pid).collect()
    }

    /// Forgets the counters of `pids` (processes folded after they exited).
    pub fn forget(&mut self, pids: &HashSet<u32>) {
        if !pids.is_empty() {
            self.counters.retain(|(pid, _), _| !pids.contains(pid));
        }
    }

    /// Forgets the counters with no entry since `before_ns`: an always-on tracer would
    /// otherwise keep one per remote a live process ever churned toward.
    pub fn forget_idle(&mut self, before_ns: u64) {
        self.counters.retain(|_, c| c.last_ns >= before_ns);
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, SocketAddr, &ChurnCounter)> {
        self.counters.iter().map(|(&(pid, remote), c)| (pid, remote, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_measured_between_first_and_last_entry() {
        let mut churn = Churn::default();
        let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
        // 101 entries, one every 10 ms, starting late in the trace: 100/s.
        for i in 0..=100u64 {
            churn.record(7, remote, 5_000_000_000 + i * 10_000_000, None);
        }
        let (_, _, c) = churn.iter().next().unwrap();
        assert_eq!(c.entries, 101);
        assert!((c.rate_per_s() - 100.0).abs() < 1e-9, "{}", c.rate_per_s());
    }

    #[test]
    fn a_burst_shorter_than_a_second_counts_its_entries() {
        let mut churn = Churn::default();
        let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
        for i in 0..5u64 {
            churn.record(7, remote, i * 1_000, None);
        }
        assert_eq!(churn.iter().next().unwrap().2.rate_per_s(), 5.0);
    }
}
