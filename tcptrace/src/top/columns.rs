//! The table's columns, shared by the plain and the terminal view so both show the same cells.

use super::{Row, SortKey, sort::COLUMNS};

/// Column titles, one per [`SortKey`] in the same order.
pub(crate) const TITLES: [&str; COLUMNS] = [
    "PID",
    "COMM",
    "CONTAINER",
    "OPEN",
    "ESTAB",
    "CLOSE_WAIT",
    "TW/s",
    "OPENED/s",
    "RELEASED/s",
    "P50_MS",
    "P99_MS",
    "FINDINGS",
];

/// The kernel's task names are at most 15 bytes; a longer name can only come from elsewhere
/// (e.g. /proc/PID/cmdline) and would push every column after it out of line.
pub(crate) const COMM_WIDTH: usize = 15;
/// A container name can be long; a 12-hex short id fits, as `docker ps` shows it.
pub(crate) const CONTAINER_WIDTH: usize = 16;

/// Whether column `i` is left-aligned (text) rather than right-aligned (numbers).
pub(crate) fn left_aligned(i: usize) -> bool {
    i == SortKey::Comm.column() || i == SortKey::Container.column()
}

pub(crate) fn cells(row: &Row) -> [String; COLUMNS] {
    // Exhaustive, so a field added to Row cannot be forgotten here.
    let Row {
        pid,
        comm,
        container,
        open,
        established,
        close_wait,
        time_wait_per_s,
        opened_per_s,
        released_per_s,
        lifetime_p50_ms,
        lifetime_p99_ms,
        findings,
    } = row;
    [
        pid.to_string(),
        comm.chars().take(COMM_WIDTH).collect(),
        if container.is_empty() {
            "-".to_owned()
        } else {
            container.chars().take(CONTAINER_WIDTH).collect()
        },
        open.to_string(),
        established.to_string(),
        close_wait.to_string(),
        rate(*time_wait_per_s),
        rate(*opened_per_s),
        rate(*released_per_s),
        millis(*lifetime_p50_ms),
        millis(*lifetime_p99_ms),
        findings.to_string(),
    ]
}

/// Each column's width: the widest of its title and its cells, so columns line up whatever the
/// values. PID and COMM keep their usual width so the table does not jump as processes come and
/// go.
pub(crate) fn widths<'a>(
    cells: impl IntoIterator<Item = &'a [String; COLUMNS]>,
) -> [usize; COLUMNS] {
    let mut widths = TITLES.map(str::len);
    widths[SortKey::Pid.column()] = 7;
    widths[SortKey::Comm.column()] = COMM_WIDTH;
    for row in cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

pub(crate) fn rate(per_s: f64) -> String {
    format!("{per_s:.1}")
}

/// Lifetimes span microseconds to hours; three significant digits for short ones keep a 40 µs
/// connection from showing as 0.0.
fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.3}"),
        Some(ms) if ms < 1000.0 => format!("{ms:.1}"),
        Some(ms) => format!("{ms:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::test_rows::row;

    #[test]
    fn cells_follow_the_titles() {
        let r = Row {
            close_wait: 4,
            time_wait_per_s: 2.26,
            lifetime_p50_ms: Some(0.04),
            lifetime_p99_ms: Some(12_345.6),
            findings: 9,
            ..row(42, "a-very-long-process-name", 8)
        };
        let c = cells(&r);
        assert_eq!(c[SortKey::Pid.column()], "42");
        assert_eq!(c[SortKey::Comm.column()], "a-very-long-pro");
        assert_eq!(c[SortKey::Open.column()], "8");
        assert_eq!(c[SortKey::CloseWait.column()], "4");
        assert_eq!(c[SortKey::TimeWait.column()], "2.3");
        assert_eq!(c[SortKey::P50.column()], "0.040");
        assert_eq!(c[SortKey::P99.column()], "12346");
        assert_eq!(c[SortKey::Findings.column()], "9");
        assert_eq!(cells(&row(1, "x", 0))[SortKey::P50.column()], "-");
    }
}
