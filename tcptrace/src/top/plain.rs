//! The view for a pipe or a file: each interval, one `label=value` summary line, the table and a
//! blank line, so a log of `tcptrace top` reads like a series of snapshots.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use super::{Frame, Sort, columns, sort::COLUMNS, status};

/// Writes one snapshot of `frame`, rows in `sort` order, at most `limit` of them.
pub fn render_plain(
    frame: &Frame,
    sort: impl Into<Sort>,
    limit: Option<usize>,
    out: &mut impl Write,
) -> io::Result<()> {
    render_at(frame, sort.into(), limit, SystemTime::now(), out)
}

fn render_at(
    frame: &Frame,
    sort: Sort,
    limit: Option<usize>,
    now: SystemTime,
    out: &mut impl Write,
) -> io::Result<()> {
    let summary: Vec<String> = status::fields(frame, sort, now)
        .into_iter()
        .map(|(label, value)| format!("{label}={value}"))
        .collect();
    writeln!(out, "{}", summary.join(" "))?;

    let rows = sort.order(&frame.rows);
    let cells: Vec<[String; COLUMNS]> =
        rows.into_iter().take(limit.unwrap_or(usize::MAX)).map(columns::cells).collect();
    let widths = columns::widths(&cells);
    let titles = columns::TITLES.map(str::to_owned);
    for line in std::iter::once(&titles).chain(&cells) {
        write_line(out, line, &widths)?;
    }
    writeln!(out)?;
    out.flush()
}

fn write_line(
    out: &mut impl Write,
    cells: &[String; COLUMNS],
    widths: &[usize; COLUMNS],
) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push(' ');
        }
        if columns::left_aligned(i) {
            line.push_str(&format!("{cell:<width$}"));
        } else {
            line.push_str(&format!("{cell:>width$}"));
        }
    }
    // The last column is numeric (right-aligned), so there is no trailing padding to trim.
    writeln!(out, "{line}")
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::top::{
        Row, SortKey,
        test_rows::{frame, row},
    };

    fn render(frame: &Frame, sort: impl Into<Sort>, limit: Option<usize>) -> String {
        let mut out = Vec::new();
        render_at(frame, sort.into(), limit, UNIX_EPOCH, &mut out).expect("writes to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    fn sample() -> Frame {
        frame(vec![
            Row {
                lifetime_p50_ms: Some(1.5),
                lifetime_p99_ms: Some(250.0),
                ..row(300, "nginx", 12)
            },
            row(7, "a-very-long-process-name", 40),
            Row { close_wait: 900, ..row(4242, "java", 12) },
        ])
    }

    #[test]
    fn header_has_every_summary_field() {
        let out = render(&sample(), SortKey::Open, None);
        let header = out.lines().next().expect("a header line");
        for field in [
            "elapsed=1m5s",
            "close_hook=tracepoint",
            "sockets=1234",
            "events/s=56.5",
            "lost=7",
            "evicted=3",
            "procs=3",
            "sort=open-desc",
        ] {
            assert!(header.contains(field), "{field} missing from {header:?}");
        }
        assert!(header.starts_with("time="), "{header:?}");
    }

    #[test]
    fn table_is_aligned_sorted_and_ends_with_a_blank_line() {
        let out = render(&sample(), SortKey::Open, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "    PID COMM            CONTAINER OPEN ESTAB CLOSE_WAIT TW/s OPENED/s RELEASED/s P50_MS P99_MS FINDINGS"
        );
        // 40 open first; the two with 12 by pid. The long comm is cut to 15 characters.
        assert_eq!(
            lines[2],
            "      7 a-very-long-pro -           40     0          0  0.0      0.0        0.0      -      -        0"
        );
        assert_eq!(
            lines[3],
            "    300 nginx           -           12     0          0  0.0      0.0        0.0  1.500  250.0        0"
        );
        assert_eq!(
            lines[4],
            "   4242 java            -           12     0        900  0.0      0.0        0.0      -      -        0"
        );
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[5], "");
        assert!(out.ends_with("\n\n"));
        // Every line of the table is as wide as the title line: the columns line up.
        assert!(lines[1..5].iter().all(|l| l.len() == lines[1].len()), "{out}");
    }

    #[test]
    fn rows_follow_the_sort_and_the_limit() {
        let pids = |out: &str| -> Vec<String> {
            out.lines()
                .skip(2)
                .filter(|l| !l.is_empty())
                .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(pids(&render(&sample(), SortKey::CloseWait, None)), ["4242", "7", "300"]);
        assert_eq!(pids(&render(&sample(), SortKey::Pid, None)), ["7", "300", "4242"]);
        assert_eq!(pids(&render(&sample(), SortKey::Comm, Some(2))), ["7", "4242"]);
        let reversed = Sort { key: SortKey::Open, reversed: true };
        assert_eq!(pids(&render(&sample(), reversed, None)), ["300", "4242", "7"]);
        // A frame without rows still has its header, titles and blank line.
        assert_eq!(render(&frame(vec![]), SortKey::Open, None).lines().count(), 3);
    }
}
