//! TIME_WAIT entries of the last minute per `(owner, remote)`: the ports each owner holds in
//! TIME_WAIT now, toward its busiest remote, as a share of the ephemeral range (the
//! `tcptrace_ephemeral_port_share` gauge).
//!
//! A socket stays in TIME_WAIT for 60 s on Linux and a local port is only reused toward
//! another remote meanwhile, so the entries of the last 60 s toward one remote are the ports
//! that remote has taken. The leak report's churn rate is measured over the whole trace, which
//! weeks of `serve` would dilute, hence a window of its own: per-second buckets, so a
//! connection costs one increment and memory stays bounded whatever the rate.

use std::{collections::HashMap, net::SocketAddr};

use super::labels::Owner;
use crate::analysis::findings::TIME_WAIT_SECS;

const BUCKETS: usize = TIME_WAIT_SECS as usize;
const NS_PER_S: u64 = 1_000_000_000;

/// `(owner, remote)` pairs counted at most; entries toward others are not counted in the
/// share (a host with that many busy remotes at once has the share spread across them).
const MAX_PAIRS: usize = 65_536;

#[derive(Debug, Clone)]
struct Buckets {
    counts: [u32; BUCKETS],
    /// The second of the newest bucket.
    newest_s: u64,
}

impl Buckets {
    fn new(now_s: u64) -> Self {
        Self { counts: [0; BUCKETS], newest_s: now_s }
    }

    /// Moves the window to `now_s`, clearing the seconds it skipped.
    fn advance(&mut self, now_s: u64) {
        if now_s <= self.newest_s {
            return;
        }
        let skipped = (now_s - self.newest_s).min(BUCKETS as u64);
        for s in 1..=skipped {
            self.counts[((self.newest_s + s) % BUCKETS as u64) as usize] = 0;
        }
        self.newest_s = now_s;
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }
}

#[derive(Debug, Default)]
pub struct TimeWaitWindow {
    pairs: HashMap<(Owner, SocketAddr), Buckets>,
}

impl TimeWaitWindow {
    pub fn record(&mut self, owner: &Owner, remote: SocketAddr, now_ns: u64) {
        let now_s = now_ns / NS_PER_S;
        let full = self.pairs.len() >= MAX_PAIRS;
        let buckets = match self.pairs.get_mut(&(owner.clone(), remote)) {
            Some(buckets) => buckets,
            None if full => return,
            None => {
                self.pairs.entry((owner.clone(), remote)).or_insert_with(|| Buckets::new(now_s))
            }
        };
        buckets.advance(now_s);
        let slot = &mut buckets.counts[(now_s % BUCKETS as u64) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Each owner's TIME_WAIT entries of the last minute toward its busiest remote, at
    /// `now_ns`; pairs with none left are forgotten.
    pub fn busiest(&mut self, now_ns: u64) -> HashMap<Owner, u64> {
        let now_s = now_ns / NS_PER_S;
        let mut busiest: HashMap<Owner, u64> = HashMap::new();
        self.pairs.retain(|(owner, _), buckets| {
            buckets.advance(now_s);
            let total = buckets.total();
            if total > 0 {
                let max = busiest.entry(owner.clone()).or_default();
                *max = (*max).max(total);
            }
            total > 0
        });
        busiest
    }

    pub fn forget(&mut self, owner: &Owner) {
        self.pairs.retain(|(o, _), _| o != owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_S;

    fn owner() -> Owner {
        Owner { comm: "job".into(), container: String::new() }
    }

    #[test]
    fn counts_the_last_minute_toward_the_busiest_remote() {
        let mut window = TimeWaitWindow::default();
        let (db, cache): (SocketAddr, SocketAddr) =
            ("10.0.0.2:5432".parse().unwrap(), "10.0.0.3:6379".parse().unwrap());
        // 10 per second toward db for 90 s, 1 per second toward cache.
        for s in 0..90 {
            for i in 0..10 {
                window.record(&owner(), db, 1_000 * S + s * S + i * 1_000);
            }
            window.record(&owner(), cache, 1_000 * S + s * S);
        }
        let busiest = window.busiest(1_089 * S);
        assert_eq!(busiest[&owner()], 600, "60 one-second buckets of 10");
        // A minute after the last entry, nothing is held and the pairs are forgotten.
        assert!(window.busiest(1_150 * S).is_empty());
        assert!(window.pairs.is_empty());
    }

    #[test]
    fn a_long_silence_clears_every_bucket() {
        let mut window = TimeWaitWindow::default();
        let db: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        window.record(&owner(), db, 5 * S);
        window.record(&owner(), db, 500 * S);
        assert_eq!(window.busiest(500 * S)[&owner()], 1);
    }
}
