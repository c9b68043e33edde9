//! The interactive view: a full-screen table redrawn each interval, sorted from the keyboard.

use std::{
    io::{self, Stdout},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use ratatui::{
    Frame as Canvas, Terminal,
    backend::{Backend, CrosstermBackend},
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{Frame, Sort, SortKey, columns, sort::COLUMNS, status, terminal::TerminalGuard};

/// What a key press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Sort(SortKey),
    /// Flip the current sort direction.
    Reverse,
    /// The terminal was resized: draw again now rather than at the next interval.
    Redraw,
}

/// Quitting and reversing first: on a narrow terminal the end of the line is what gets cut.
const HELP: &str = "q quit  R reverse  sort: o open  e estab  w close-wait  t time-wait  n opened  \
                    r released  5 p50  9 p99  f findings  p pid  c comm  C container";

/// Maps a key to its action. Raw mode turns Ctrl-C into a key instead of SIGINT, so it has to
/// mean quit here or nothing would.
pub fn action_for(key: KeyEvent) -> Option<Action> {
    // Key releases only arrive with the kitty protocol; a press and its release must not act twice.
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) {
        let ctrl_c = key.modifiers == KeyModifiers::CONTROL && key.code == KeyCode::Char('c');
        return ctrl_c.then_some(Action::Quit);
    }
    let sort = |key| Some(Action::Sort(key));
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') => Some(Action::Quit),
        KeyCode::Char('R') => Some(Action::Reverse),
        KeyCode::Char('o') => sort(SortKey::Open),
        KeyCode::Char('e') => sort(SortKey::Estab),
        KeyCode::Char('w') => sort(SortKey::CloseWait),
        KeyCode::Char('t') => sort(SortKey::TimeWait),
        KeyCode::Char('n') => sort(SortKey::Opened),
        KeyCode::Char('r') => sort(SortKey::Released),
        KeyCode::Char('5') => sort(SortKey::P50),
        KeyCode::Char('9') => sort(SortKey::P99),
        KeyCode::Char('f') => sort(SortKey::Findings),
        KeyCode::Char('p') => sort(SortKey::Pid),
        KeyCode::Char('C') => sort(SortKey::Container),
        KeyCode::Char('c') => sort(SortKey::Comm),
        _ => None,
    }
}

impl Sort {
    /// The sort after `action`. Choosing another column starts in that column's natural
    /// direction; choosing the current one again keeps the direction.
    pub fn apply(self, action: Action) -> Sort {
        match action {
            Action::Sort(key) if key != self.key => Sort::from(key),
            Action::Reverse => Sort { reversed: !self.reversed, ..self },
            Action::Sort(_) | Action::Quit | Action::Redraw => self,
        }
    }
}

/// The full-screen view. Generic over the backend so tests can draw into ratatui's
/// `TestBackend`; only [`Tui::new`] touches the real terminal.
pub struct Tui<B: Backend> {
    terminal: Terminal<B>,
    /// Present only for the real terminal; dropping it restores the terminal, so every way out of
    /// the caller (return, `?`, panic unwinding) gives the terminal back.
    guard: Option<TerminalGuard>,
}

impl Tui<CrosstermBackend<Stdout>> {
    /// Takes over the terminal: raw mode, alternate screen, and a panic hook that restores both.
    pub fn new() -> anyhow::Result<Self> {
        let guard = TerminalGuard::take().context("cannot set up the terminal")?;
        // On error the guard drops here and restores the terminal.
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("cannot set up the terminal")?;
        Ok(Tui { terminal, guard: Some(guard) })
    }
}

impl<B: Backend> Tui<B>
where
    B::Error: Send + Sync + 'static,
{
    /// A view on `backend` that leaves the real terminal alone (for tests).
    pub fn with_backend(backend: B) -> anyhow::Result<Self> {
        let terminal = Terminal::new(backend).context("cannot set up the terminal backend")?;
        Ok(Tui { terminal, guard: None })
    }

    pub fn backend(&self) -> &B {
        self.terminal.backend()
    }

    pub fn draw(&mut self, frame: &Frame, sort: impl Into<Sort>) -> anyhow::Result<()> {
        let sort = sort.into();
        let now = SystemTime::now();
        self.terminal
            .draw(|canvas| render(canvas, frame, sort, now))
            .context("cannot draw to the terminal")?;
        Ok(())
    }

    /// Waits up to `timeout` for a key that means something. `None` when the time is up, so the
    /// caller can use its refresh deadline as the timeout and redraw on `None`.
    pub fn poll_input(&mut self, timeout: Duration) -> anyhow::Result<Option<Action>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !event::poll(left).context("cannot read the terminal")? {
                return Ok(None);
            }
            let action = match event::read().context("cannot read the terminal")? {
                Event::Key(key) => action_for(key),
                Event::Resize(..) => Some(Action::Redraw),
                _ => None,
            };
            if action.is_some() {
                return Ok(action);
            }
        }
    }

    /// Gives the terminal back now, reporting what failed (dropping the `Tui` does the same
    /// silently).
    pub fn restore(self) -> anyhow::Result<()> {
        let Tui { terminal, guard } = self;
        drop(terminal);
        match guard {
            Some(guard) => guard.restore().context("cannot restore the terminal"),
            None => Ok(()),
        }
    }
}

fn render(canvas: &mut Canvas, frame: &Frame, sort: Sort, now: SystemTime) {
    let [top, table, bottom] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(0), Constraint::Length(1)])
            .areas(canvas.area());
    canvas.render_widget(status_bar(frame, sort, now), top);
    render_table(canvas, frame, sort, table);
    canvas.render_widget(Paragraph::new(HELP).reversed(), bottom);
}

/// Two lines so that at 80 columns nothing is cut: when and how on the first, the health of the
/// data source (where losses show) on the second.
fn status_bar(frame: &Frame, sort: Sort, now: SystemTime) -> Paragraph<'static> {
    let mut lines = [vec![Span::from("tcptrace top").bold()], Vec::new()];
    for (label, value) in status::fields(frame, sort, now) {
        let line = match label {
            // The sort shows as the arrow on its column.
            "sort" => continue,
            "time" | "elapsed" | "close_hook" => &mut lines[0],
            _ => &mut lines[1],
        };
        let alarming = matches!(label, "lost" | "evicted") && value != "0";
        let value =
            if alarming { Span::from(value).bold().red() } else { Span::from(value).bold() };
        let gap = if line.is_empty() { "" } else { "  " };
        line.extend([Span::from(format!("{gap}{label} ")).dim(), value]);
    }
    Paragraph::new(lines.map(Line::from).to_vec())
}

fn render_table(canvas: &mut Canvas, frame: &Frame, sort: Sort, area: Rect) {
    let rows = sort.order(&frame.rows);
    // No more rows than fit: the rest would be cut anyway.
    let visible = usize::from(area.height.saturating_sub(1));
    let cells: Vec<[String; COLUMNS]> =
        rows.into_iter().take(visible).map(columns::cells).collect();
    let mut widths = columns::widths(&cells);
    widths[sort.key.column()] += 1; // the arrow
    let widths = widths.map(|w| Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX)));

    let arrow = if sort.descending() { "▼" } else { "▲" };
    let titles = columns::TITLES.iter().enumerate().map(|(i, title)| {
        let sorted = i == sort.key.column();
        let text = if sorted { format!("{title}{arrow}") } else { (*title).to_owned() };
        let cell = Cell::from(aligned(i, text));
        if sorted { cell.underlined() } else { cell }
    });
    let header =
        TableRow::new(titles).style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let body = cells.into_iter().map(|row| {
        TableRow::new(row.into_iter().enumerate().map(|(i, c)| Cell::from(aligned(i, c))))
    });
    canvas.render_widget(Table::new(body, widths).header(header), area);
}

fn aligned(column: usize, text: String) -> Line<'static> {
    if columns::left_aligned(column) { Line::from(text) } else { Line::from(text).right_aligned() }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, crossterm::event::KeyEventState};

    use super::*;
    use crate::top::{
        Row,
        test_rows::{frame, row},
    };

    fn screen(tui: &Tui<TestBackend>) -> Vec<String> {
        let buffer = tui.backend().buffer();
        (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol()).collect())
            .collect()
    }

    fn draw(frame: &Frame, sort: impl Into<Sort>, width: u16, height: u16) -> Vec<String> {
        let mut tui = Tui::with_backend(TestBackend::new(width, height)).expect("test backend");
        tui.draw(frame, sort).expect("draws");
        screen(&tui)
    }

    fn sample() -> Frame {
        frame(vec![
            Row { close_wait: 900, lifetime_p99_ms: Some(250.0), ..row(4242, "java", 12) },
            row(7, "a-very-long-process-name", 40),
            row(300, "nginx", 12),
        ])
    }

    #[test]
    fn draws_status_titles_and_rows_in_order() {
        let lines = draw(&sample(), SortKey::Open, 110, 9);
        for field in ["tcptrace top  time ", "elapsed 1m5s", "close_hook tracepoint"] {
            assert!(lines[0].contains(field), "{field} missing from {:?}", lines[0]);
        }
        for field in ["sockets 1234", "events/s 56.5", "lost 7", "evicted 3", "procs 3"] {
            assert!(lines[1].contains(field), "{field} missing from {:?}", lines[1]);
        }
        let titles = &lines[2];
        let positions: Vec<usize> = columns::TITLES
            .iter()
            .map(|t| titles.find(t).unwrap_or_else(|| panic!("{t} missing from {titles:?}")))
            .collect();
        assert!(positions.is_sorted(), "titles out of order: {titles:?}");
        assert!(titles.contains("OPEN▼"), "{titles:?}");

        let first_word =
            |line: &String| line.split_whitespace().next().unwrap_or_default().to_owned();
        assert_eq!(lines[3..6].iter().map(first_word).collect::<Vec<_>>(), ["7", "300", "4242"]);
        assert!(
            lines[3].contains("a-very-long-pro ") && !lines[3].contains("a-very-long-proc"),
            "{:?}",
            lines[3]
        );
        assert!(lines[5].contains("900") && lines[5].contains("250.0"), "{:?}", lines[5]);
        assert!(lines[4].contains(" - "), "unknown percentiles show as '-': {:?}", lines[4]);
        assert!(lines[8].starts_with("q quit  R reverse  sort: o open"), "{:?}", lines[8]);
    }

    #[test]
    fn draws_in_the_requested_order() {
        let first_word =
            |line: &String| line.split_whitespace().next().unwrap_or_default().to_owned();
        let lines = draw(&sample(), SortKey::CloseWait, 120, 9);
        assert!(lines[2].contains("CLOSE_WAIT▼"), "{:?}", lines[2]);
        assert_eq!(lines[3..6].iter().map(first_word).collect::<Vec<_>>(), ["4242", "7", "300"]);

        let lines = draw(&sample(), SortKey::Pid, 120, 9);
        assert!(lines[2].contains("PID▲"), "pid sorts ascending: {:?}", lines[2]);
        assert_eq!(lines[3..6].iter().map(first_word).collect::<Vec<_>>(), ["7", "300", "4242"]);
        let lines = draw(&sample(), Sort { key: SortKey::Pid, reversed: true }, 120, 9);
        assert!(lines[2].contains("PID▼"), "reversed pid sorts descending: {:?}", lines[2]);
        assert_eq!(lines[3..6].iter().map(first_word).collect::<Vec<_>>(), ["4242", "300", "7"]);
    }

    #[test]
    fn a_short_terminal_shows_the_top_rows() {
        // Two status lines, titles, one row, help.
        let lines = draw(&sample(), SortKey::Open, 120, 5);
        assert!(lines[3].trim_start().starts_with("7 "), "{lines:?}");
        assert!(lines[4].starts_with("q quit  R reverse  sort: o open"), "{lines:?}");
    }

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent { code, modifiers, kind: KeyEventKind::Press, state: KeyEventState::NONE }
    }

    #[test]
    fn keys_map_to_actions() {
        let plain = |c| action_for(key(KeyCode::Char(c), KeyModifiers::NONE));
        for (c, sort_key) in [
            ('o', SortKey::Open),
            ('e', SortKey::Estab),
            ('w', SortKey::CloseWait),
            ('t', SortKey::TimeWait),
            ('n', SortKey::Opened),
            ('r', SortKey::Released),
            ('5', SortKey::P50),
            ('9', SortKey::P99),
            ('f', SortKey::Findings),
            ('p', SortKey::Pid),
            ('c', SortKey::Comm),
        ] {
            assert_eq!(plain(c), Some(Action::Sort(sort_key)), "{c}");
        }
        assert_eq!(plain('q'), Some(Action::Quit));
        assert_eq!(action_for(key(KeyCode::Esc, KeyModifiers::NONE)), Some(Action::Quit));
        assert_eq!(action_for(key(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Action::Quit));
        // Crossterm reports a shifted letter as the capital with SHIFT set.
        assert_eq!(action_for(key(KeyCode::Char('R'), KeyModifiers::SHIFT)), Some(Action::Reverse));
        assert_eq!(plain('R'), Some(Action::Reverse));

        assert_eq!(plain('x'), None);
        assert_eq!(action_for(key(KeyCode::Char('o'), KeyModifiers::CONTROL)), None);
        assert_eq!(action_for(key(KeyCode::Char('c'), KeyModifiers::ALT)), None);
        let release =
            KeyEvent { kind: KeyEventKind::Release, ..key(KeyCode::Char('q'), KeyModifiers::NONE) };
        assert_eq!(action_for(release), None);
    }

    #[test]
    fn actions_change_the_sort() {
        let open = Sort::from(SortKey::Open);
        let reversed = open.apply(Action::Reverse);
        assert_eq!(reversed, Sort { key: SortKey::Open, reversed: true });
        assert_eq!(reversed.apply(Action::Reverse), open);
        // Same key keeps the direction; another key starts in its natural one.
        assert_eq!(reversed.apply(Action::Sort(SortKey::Open)), reversed);
        assert_eq!(reversed.apply(Action::Sort(SortKey::Pid)), Sort::from(SortKey::Pid));
        assert_eq!(open.apply(Action::Quit), open);
        assert_eq!(open.apply(Action::Redraw), open);
    }
}
