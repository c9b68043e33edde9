//! What the kernel programs could not deliver or remember: the per-CPU `COUNTERS` map, and the
//! runs the kernel skipped (each program's `recursion_misses`).

use super::plan::{NESTED_STATE_PROGRAM, STATE_PROGRAM};

/// Counters the kernel keeps for what it could not deliver or remember.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub lost_events: u64,
    /// Runs the kernel skipped because the program was already running on that CPU, and that
    /// no other program made up for.
    pub missed_runs: u64,
    /// State changes that interrupted the state-change program on their CPU, handled by its
    /// companion (`inet_sock_set_state_nested`) instead of being lost.
    pub nested_changes: u64,
    /// Kernel memory reads that failed (a socket or descriptor freed or changed while a
    /// program walked it): the event was dropped or sent incomplete.
    pub read_failures: u64,
    pub owner_map_full: u64,
    pub ctx_map_full: u64,
    /// Stacks the kernel could not capture (stack map full, or a hash collision).
    pub stack_failures: u64,
    /// Children of followed processes that could not be followed (map full).
    pub follow_full: u64,
    /// Records written to the ring (not a loss: the reader compares it with what it read).
    pub sent_events: u64,
}

/// The runs the kernel skipped that are lost, from each attached program's skip count
/// (`recursion_misses`): the nested program's own skips never are (the first program ran for
/// those changes), and the state program's are lost only beyond the changes the nested one
/// handled in its place.
pub fn missed_runs<'a>(
    skipped: impl IntoIterator<Item = (&'a str, u64)>,
    nested_changes: u64,
    nested_attached: bool,
) -> u64 {
    skipped
        .into_iter()
        .map(|(program, missed)| match program {
            NESTED_STATE_PROGRAM => 0,
            STATE_PROGRAM if nested_attached => missed.saturating_sub(nested_changes),
            _ => missed,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_changes_make_up_for_the_state_programs_skips_only() {
        let skipped = [(STATE_PROGRAM, 10), (NESTED_STATE_PROGRAM, 4), ("sys_exit_accept4", 2)];
        assert_eq!(missed_runs(skipped, 7, true), 3 + 2);
        assert_eq!(missed_runs(skipped, 12, true), 2, "never below zero");
        // Without the nested program nothing makes up for the skips.
        assert_eq!(missed_runs([(STATE_PROGRAM, 10)], 7, false), 10);
    }
}
