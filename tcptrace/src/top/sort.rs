//! Row order. Every order ends with the pid so that equal rows keep their places between
//! refreshes instead of flickering.

use std::cmp::Ordering;

use super::Row;

/// The table's columns: one per key.
pub const COLUMNS: usize = 12;

/// The column the table is sorted by. Counts and rates sort largest first (the process to look
/// at is on top); `pid`, `comm` and `container` sort ascending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Pid,
    Comm,
    Container,
    #[default]
    Open,
    Estab,
    CloseWait,
    TimeWait,
    Opened,
    Released,
    P50,
    P99,
    Findings,
}

impl SortKey {
    /// Every key, in column order (the table has one column per key).
    pub const ALL: [SortKey; COLUMNS] = [
        SortKey::Pid,
        SortKey::Comm,
        SortKey::Container,
        SortKey::Open,
        SortKey::Estab,
        SortKey::CloseWait,
        SortKey::TimeWait,
        SortKey::Opened,
        SortKey::Released,
        SortKey::P50,
        SortKey::P99,
        SortKey::Findings,
    ];

    /// The name used on the command line and in the views.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Pid => "pid",
            SortKey::Comm => "comm",
            SortKey::Container => "container",
            SortKey::Open => "open",
            SortKey::Estab => "estab",
            SortKey::CloseWait => "close-wait",
            SortKey::TimeWait => "time-wait",
            SortKey::Opened => "opened",
            SortKey::Released => "released",
            SortKey::P50 => "p50",
            SortKey::P99 => "p99",
            SortKey::Findings => "findings",
        }
    }

    /// The index of this key's column in the table.
    pub fn column(self) -> usize {
        self as usize
    }

    fn descending(self) -> bool {
        !matches!(self, SortKey::Pid | SortKey::Comm | SortKey::Container)
    }
}

/// A key and whether its natural direction is flipped (the TUI's `R`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub reversed: bool,
}

impl From<SortKey> for Sort {
    fn from(key: SortKey) -> Self {
        Sort { key, reversed: false }
    }
}

impl Sort {
    /// Whether larger values come first.
    pub fn descending(self) -> bool {
        self.key.descending() != self.reversed
    }

    /// The rows in this order. Unknown percentiles go last in either direction: a process with
    /// no closed connection yet has nothing to rank.
    pub fn order(self, rows: &[Row]) -> Vec<&Row> {
        let mut sorted: Vec<&Row> = rows.iter().collect();
        sorted.sort_by(|a, b| self.compare(a, b));
        sorted
    }

    pub fn compare(self, a: &Row, b: &Row) -> Ordering {
        let dir = |o: Ordering| if self.descending() { o.reverse() } else { o };
        let by_key = match self.key {
            SortKey::Pid => dir(a.pid.cmp(&b.pid)),
            SortKey::Comm => dir(a.comm.cmp(&b.comm)),
            SortKey::Container => dir(a.container.cmp(&b.container)),
            SortKey::Open => dir(a.open.cmp(&b.open)),
            SortKey::Estab => dir(a.established.cmp(&b.established)),
            SortKey::CloseWait => dir(a.close_wait.cmp(&b.close_wait)),
            SortKey::TimeWait => dir(a.time_wait_per_s.total_cmp(&b.time_wait_per_s)),
            SortKey::Opened => dir(a.opened_per_s.total_cmp(&b.opened_per_s)),
            SortKey::Released => dir(a.released_per_s.total_cmp(&b.released_per_s)),
            SortKey::P50 => unknown_last(a.lifetime_p50_ms, b.lifetime_p50_ms, dir),
            SortKey::P99 => unknown_last(a.lifetime_p99_ms, b.lifetime_p99_ms, dir),
            SortKey::Findings => dir(a.findings.cmp(&b.findings)),
        };
        by_key.then(a.pid.cmp(&b.pid))
    }
}

fn unknown_last(a: Option<f64>, b: Option<f64>, dir: impl Fn(Ordering) -> Ordering) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => dir(a.total_cmp(&b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;
    use crate::top::test_rows::row;

    fn pids(sort: impl Into<Sort>, rows: &[Row]) -> Vec<u32> {
        sort.into().order(rows).iter().map(|r| r.pid).collect()
    }

    /// Three rows whose values for `key` are 1, 3 and 2 (pids 10, 20, 30), plus pid 5 that ties
    /// with pid 30, so both the direction and the tie-break show.
    fn rows_for(key: SortKey) -> Vec<Row> {
        let mut rows = vec![row(10, "a", 0), row(20, "b", 0), row(30, "c", 0), row(5, "c", 0)];
        for (r, v) in rows.iter_mut().zip([1u32, 3, 2, 2]) {
            let f = f64::from(v);
            match key {
                SortKey::Pid | SortKey::Comm | SortKey::Container => {}
                SortKey::Open => r.open = v.into(),
                SortKey::Estab => r.established = v.into(),
                SortKey::CloseWait => r.close_wait = v.into(),
                SortKey::TimeWait => r.time_wait_per_s = f,
                SortKey::Opened => r.opened_per_s = f,
                SortKey::Released => r.released_per_s = f,
                SortKey::P50 => r.lifetime_p50_ms = Some(f),
                SortKey::P99 => r.lifetime_p99_ms = Some(f),
                SortKey::Findings => r.findings = v.into(),
            }
        }
        rows
    }

    #[test]
    fn numeric_keys_sort_descending_ties_by_pid() {
        for key in SortKey::ALL.into_iter().filter(|k| k.descending()) {
            let rows = rows_for(key);
            assert_eq!(pids(key, &rows), [20, 5, 30, 10], "{key:?}");
            let reversed = Sort { key, reversed: true };
            // The tie still breaks by ascending pid: reversing flips the key, not the tie-break.
            assert_eq!(pids(reversed, &rows), [10, 5, 30, 20], "{key:?} reversed");
        }
    }

    #[test]
    fn pid_and_comm_sort_ascending() {
        let rows = rows_for(SortKey::Pid);
        assert_eq!(pids(SortKey::Pid, &rows), [5, 10, 20, 30]);
        assert_eq!(pids(Sort { key: SortKey::Pid, reversed: true }, &rows), [30, 20, 10, 5]);
        // "c" twice: pid 5 before pid 30.
        assert_eq!(pids(SortKey::Comm, &rows), [10, 20, 5, 30]);
        assert_eq!(pids(Sort { key: SortKey::Comm, reversed: true }, &rows), [5, 30, 20, 10]);
    }

    #[test]
    fn unknown_percentiles_sort_last_either_way() {
        let mut rows = rows_for(SortKey::P99);
        rows[1].lifetime_p99_ms = None;
        assert_eq!(pids(SortKey::P99, &rows), [5, 30, 10, 20]);
        assert_eq!(pids(Sort { key: SortKey::P99, reversed: true }, &rows), [10, 5, 30, 20]);
    }

    #[test]
    fn default_is_open_and_names_match_the_command_line() {
        assert_eq!(SortKey::default(), SortKey::Open);
        assert_eq!(SortKey::value_variants(), SortKey::ALL);
        for key in SortKey::ALL {
            assert_eq!(SortKey::from_str(key.name(), false), Ok(key));
            assert_eq!(SortKey::ALL[key.column()], key);
        }
    }
}
