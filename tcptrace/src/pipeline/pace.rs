//! How far apart the inventory sweeps are. A sweep's cost is the kernel's: one sock_diag walk per
//! network namespace and address family, each over the host-wide established hash, TIME_WAIT
//! sockets included although the dump leaves them out (unless `net.ipv4.tcp_child_ehash_entries`
//! gave the namespace a table of its own). Measured here (`xtask/scripts/sweep-cost.sh`): 18 ms
//! a sweep on an idle host, 124 ms with 100,000 TIME_WAIT sockets, 1.5 s with those and 34
//! namespaces. At the interval asked for, such a host would spend a CPU sweeping. Spaced as
//! below, sweeps run at most a fiftieth of the time, and the kernel's walks keep a CPU busy
//! while they run, so they take at most a fiftieth of one.

use std::time::Duration;

/// A sweep that took `d` is followed by at least `(SPACING - 1) × d` without one: sweeps take at
/// most 1/SPACING of a CPU.
pub const SPACING: u32 = 50;

/// The wait between the end of a sweep that took `took` and the start of the next: what is left
/// of the interval asked for, `every`, or what keeps sweeps to their share, whichever is longer.
pub fn gap_after(every: Duration, took: Duration) -> Duration {
    every.saturating_sub(took).max(took.saturating_mul(SPACING - 1))
}

/// Whether a sweep that took `took` puts the next one later than `every` asked.
pub fn stretched(every: Duration, took: Duration) -> bool {
    gap_after(every, took).saturating_add(took) > every
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    #[test]
    fn a_quick_sweep_keeps_the_interval_asked_for() {
        let took = Duration::from_millis(18);
        assert_eq!(gap_after(EVERY, took) + took, EVERY);
        assert!(!stretched(EVERY, took));
        // Exactly at the share: still the interval.
        let took = EVERY / SPACING;
        assert_eq!(gap_after(EVERY, took) + took, EVERY);
        assert!(!stretched(EVERY, took));
    }

    #[test]
    fn a_slow_sweep_is_followed_by_enough_quiet_to_keep_its_share() {
        for took in [Duration::from_millis(101), Duration::from_secs(1), Duration::from_secs(30)] {
            let gap = gap_after(EVERY, took);
            assert!(gap + took > EVERY, "{took:?}");
            // The share of the time spent sweeping is 1/SPACING.
            assert_eq!(gap + took, took * SPACING, "{took:?}");
            assert!(stretched(EVERY, took), "{took:?}");
        }
    }

    #[test]
    fn no_duration_overflows() {
        assert_eq!(gap_after(EVERY, Duration::MAX), Duration::MAX);
        assert!(stretched(EVERY, Duration::MAX));
        assert_eq!(gap_after(Duration::MAX, Duration::ZERO), Duration::MAX);
    }
}
