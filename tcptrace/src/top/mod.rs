//! The view of `tcptrace top`: a per-process table of socket counts and rates, redrawn every
//! interval.
//!
//! This module only presents; it never looks at kernel events. `rates` turns the aggregator
//! into a [`Frame`] (one row per process) and the caller picks a view: [`Tui`] when stdout is a
//! terminal ([`is_terminal`]), [`render_plain`] otherwise, so `tcptrace top | tee log` still
//! produces something a person or a script can read.
//!
//! May import `analysis`, `event` and `kernel`'s plain types; imported by `cli` (the sort key)
//! and `cmd`.

mod columns;
mod plain;
mod rates;
mod row;
mod sort;
mod status;
mod terminal;
mod tui;

use std::io::IsTerminal;

pub use plain::render_plain;
pub use rates::{Rates, RunState};
pub use row::{Frame, Row};
pub use sort::{Sort, SortKey};
pub use tui::{Action, Tui, action_for};

/// Whether stdout is a terminal, i.e. whether the interactive view can be used.
pub fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

#[cfg(test)]
pub(crate) mod test_rows {
    use std::time::Duration;

    use super::{Frame, Row};

    pub fn row(pid: u32, comm: &str, open: u64) -> Row {
        Row { pid, comm: comm.to_owned(), open, ..Row::default() }
    }

    pub fn frame(rows: Vec<Row>) -> Frame {
        Frame {
            rows,
            elapsed: Duration::from_secs(65),
            close_hook: "tracepoint".to_owned(),
            sockets_tracked: 1234,
            events_per_s: 56.5,
            events_lost: 7,
            evicted: 3,
        }
    }
}
