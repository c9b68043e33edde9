//! `tcptrace top`: feeds the view from the collector every interval.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    analysis::{
        aggregate::{Aggregator, Percentiles},
        findings::{self, Limits},
    },
    cli::TopArgs,
    cmd::stop::stop_signal,
    event::{TcpState, clock::monotonic_ns},
    kernel::probes::Changes,
    pipeline::Collector,
    stacks::StacksMode,
    top::{Action, Frame, Row, Sort, Tui, is_terminal, render_plain},
};

/// How often the terminal view looks at the keyboard.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Counters at the previous refresh, for rates.
#[derive(Default, Clone, Copy)]
struct Seen {
    opened: u64,
    released: u64,
    time_wait: u64,
}

#[derive(Default)]
struct Rates {
    seen: HashMap<u32, Seen>,
    events: u64,
    at: Option<Instant>,
}

impl Rates {
    fn frame(&mut self, c: &Collector, limits: &Limits, lost: u64) -> Frame {
        let agg = c.agg();
        let now = Instant::now();
        let secs = self.at.map_or(c.elapsed(), |at| now - at).as_secs_f64().max(1e-3);
        let mut rows = rows(agg, limits);
        for row in &mut rows {
            let stats = &agg.processes[&row.pid];
            let current = Seen {
                opened: stats.opened,
                released: stats.released,
                time_wait: stats.time_wait_entries,
            };
            let before = self.seen.insert(row.pid, current).unwrap_or_default();
            row.opened_per_s = (current.opened - before.opened) as f64 / secs;
            row.released_per_s = (current.released - before.released) as f64 / secs;
            row.time_wait_per_s = (current.time_wait - before.time_wait) as f64 / secs;
        }
        let events_per_s = (c.events() - self.events) as f64 / secs;
        self.events = c.events();
        self.at = Some(now);
        Frame {
            rows,
            elapsed: c.elapsed(),
            close_hook: c.close_hook().to_string(),
            sockets_tracked: agg.tracked() as u64,
            events_per_s,
            events_lost: lost,
            evicted: agg.evicted,
        }
    }
}

/// One row per process that holds a socket or did something while tracing.
fn rows(agg: &Aggregator, limits: &Limits) -> Vec<Row> {
    let mut rows: HashMap<u32, Row> = HashMap::new();
    for (&pid, stats) in &agg.processes {
        let lifetime = Percentiles::of(stats.lifetime_us.as_ref());
        rows.insert(
            pid,
            Row {
                pid,
                comm: stats.comm.clone(),
                lifetime_p50_ms: lifetime.map(|l| l.p50),
                lifetime_p99_ms: lifetime.map(|l| l.p99),
                ..Row::default()
            },
        );
    }
    for (pid, states) in agg.held_by_process() {
        let Some(row) = rows.get_mut(&pid) else { continue };
        row.open = states.values().sum();
        row.established = states.get(&TcpState::Established).copied().unwrap_or(0);
        row.close_wait = states.get(&TcpState::CloseWait).copied().unwrap_or(0);
    }
    for finding in findings::detect(agg, limits, monotonic_ns()) {
        if let Some(row) = rows.get_mut(&finding.pid) {
            row.findings += 1;
        }
    }
    rows.into_values().collect()
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let options = args.probe.to_options(StacksMode::Off, Changes::Lifecycle)?;
    let mut warnings = Vec::new();
    let limits = args.detect.limits(crate::cmd::leaks::DEFAULT_MIN_AGE, &mut warnings);
    // Before the banner: a Ctrl-C from then on ends the run with its report.
    let stop = stop_signal(args.duration)?;
    let mut collector = Collector::start(&options, args.detect.capacity(), true).await?;
    eprintln!("tcptrace: tracing TCP connections (close hook: {})", collector.close_hook());
    for note in collector.notes().iter().chain(&warnings) {
        eprintln!("tcptrace: note: {note}");
    }
    let mut rates = Rates::default();
    let mut sort = Sort::from(args.sort);

    if is_terminal() {
        let mut tui = Tui::new()?;
        let mut next_draw = Instant::now();
        let result = collector
            .run(stop, args.detect.sweep, KEY_POLL, |c| {
                let mut redraw = Instant::now() >= next_draw;
                while let Some(action) = tui.poll_input(Duration::ZERO)? {
                    if action == Action::Quit {
                        return Ok(false);
                    }
                    sort = sort.apply(action);
                    redraw = true;
                }
                if redraw {
                    let lost = c.counters()?.lost_events;
                    tui.draw(&rates.frame(c, &limits, lost), sort)?;
                    next_draw = Instant::now() + args.interval;
                }
                Ok(true)
            })
            .await;
        tui.restore()?;
        return result;
    }

    collector
        .run(stop, args.detect.sweep, args.interval, |c| {
            let lost = c.counters()?.lost_events;
            let mut out = io::stdout().lock();
            let written = render_plain(&rates.frame(c, &limits, lost), sort, args.limit, &mut out)
                .and_then(|()| out.flush());
            match written {
                // `tcptrace top | head`: the reader left.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
                other => other.context("writing the table").map(|()| true),
            }
        })
        .await
}
