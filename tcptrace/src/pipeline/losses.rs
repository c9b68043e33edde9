//! What a run could not see, in one place: the kernel's counters and what user space dropped.
//! Every command reports the same list in the same words (`trace` on stderr, `leaks` and
//! `run` in their report).

use crate::kernel::counters::Counters;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    pub kernel: Counters,
    /// Ring records that did not decode.
    pub decode_errors: u64,
    /// Stack ids the kernel handed over whose stack could not be read.
    pub unreadable_stacks: u64,
    /// Sockets the attribution table had no room for.
    pub untracked: u64,
}

impl Losses {
    /// Events the kernel could not deliver: ring buffer full, or runs it skipped.
    pub fn events_lost(&self) -> u64 {
        self.kernel.lost_events + self.kernel.missed_runs
    }

    /// Opens whose stack could not be captured or read.
    pub fn stack_failures(&self) -> u64 {
        self.kernel.stack_failures + self.unreadable_stacks
    }

    /// One line per kind of loss that happened: how many, why, and what it costs.
    pub fn warnings(&self) -> Vec<String> {
        let Counters {
            lost_events,
            missed_runs,
            nested_changes: _,
            read_failures,
            owner_map_full,
            ctx_map_full,
            stack_failures: _,
            follow_full,
            sent_events: _,
        } = self.kernel;
        let lines = [
            (lost_events, "events lost: the ring buffer was full (try a larger --ring-size)"),
            (
                missed_runs,
                "kernel program runs skipped by the kernel (a hook re-entered on one CPU): their events are lost",
            ),
            (
                read_failures,
                "kernel reads failed (a socket or descriptor changed while a program read it): those events were dropped or sent incomplete",
            ),
            (
                owner_map_full,
                "sockets opened while the kernel owner map was full: their owner may be unknown",
            ),
            (
                ctx_map_full,
                "connect() calls not tied to their descriptor (the kernel's thread map was full)",
            ),
            (
                self.stack_failures(),
                "stacks not captured (stack map full, or a hash collision): those opens show no code path",
            ),
            (follow_full, "descendants not followed (the followed-process map was full)"),
            (self.decode_errors, "malformed events skipped"),
            (self.untracked, "sockets not tracked (table full): no owner or lifetime for them"),
        ];
        lines.into_iter().filter(|&(n, _)| n > 0).map(|(n, what)| format!("{n} {what}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_is_said_once_and_nothing_when_none() {
        assert!(Losses::default().warnings().is_empty());
        let losses = Losses {
            kernel: Counters {
                lost_events: 1,
                missed_runs: 2,
                nested_changes: 100,
                read_failures: 3,
                owner_map_full: 4,
                ctx_map_full: 5,
                stack_failures: 6,
                follow_full: 7,
                sent_events: 1000,
            },
            decode_errors: 8,
            unreadable_stacks: 1,
            untracked: 9,
        };
        assert_eq!(losses.events_lost(), 3);
        let warnings = losses.warnings();
        assert_eq!(warnings.len(), 9, "{warnings:#?}");
        assert!(warnings.iter().any(|w| w.starts_with("3 kernel reads failed")), "{warnings:#?}");
        assert!(warnings.iter().any(|w| w.starts_with("7 stacks not captured")), "{warnings:#?}");
        assert!(!warnings.iter().any(|w| w.starts_with("100 ")), "nested changes are not lost");
        assert!(!warnings.iter().any(|w| w.starts_with("1000 ")), "sent records are not lost");
    }
}
