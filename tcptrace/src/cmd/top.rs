//! `tcptrace top`: feeds the view (`top`) from the pipeline every interval.

use std::{
    io::{self, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    analysis::{aggregate::Aggregator, findings::Limits},
    cli::TopOptions,
    cmd::{
        leaks::{aggregating, limits},
        stop::stop_signal,
    },
    pipeline::Pipeline,
    top::{Action, Rates, RunState, Sort, Tui, is_terminal, render_plain},
};

/// How often the terminal view looks at the keyboard.
const KEY_POLL: Duration = Duration::from_millis(100);

pub async fn run(options: TopOptions) -> anyhow::Result<()> {
    let TopOptions { probe, detect, interval, sort, limit, duration } = options;
    let mut warnings = Vec::new();
    let limits = limits(&detect, &mut warnings);
    // Before the banner: a Ctrl-C from then on ends the run.
    let stop = stop_signal(duration)?;
    let mut pipeline = aggregating(&probe, &detect).await?;
    pipeline.announce("TCP connections", None);
    for warning in &warnings {
        crate::say!("tcptrace: note: {warning}");
    }
    let mut view = View { rates: Rates::default(), sort: Sort::from(sort), limits };
    if !is_terminal() {
        return pipeline.run(stop, Some(interval), |p| view.print(p, limit)).await;
    }
    let mut tui = Tui::new()?;
    let mut next_draw = Instant::now();
    let result = pipeline
        .run(stop, Some(KEY_POLL), |p| {
            let mut redraw = Instant::now() >= next_draw;
            while let Some(action) = tui.poll_input(Duration::ZERO)? {
                if action == Action::Quit {
                    return Ok(false);
                }
                view.sort = view.sort.apply(action);
                redraw = true;
            }
            if redraw {
                tui.draw(&view.rates.frame(p.sink(), &run_state(p)?, &view.limits), view.sort)?;
                next_draw = Instant::now() + interval;
            }
            Ok(true)
        })
        .await;
    tui.restore()?;
    result
}

struct View {
    rates: Rates,
    sort: Sort,
    limits: Limits,
}

impl View {
    /// One plain table on stdout (not a terminal); false when the reader left.
    fn print(
        &mut self,
        p: &mut Pipeline<Aggregator>,
        limit: Option<usize>,
    ) -> anyhow::Result<bool> {
        let frame = self.rates.frame(p.sink(), &run_state(p)?, &self.limits);
        let mut out = io::stdout().lock();
        match render_plain(&frame, self.sort, limit, &mut out).and_then(|()| out.flush()) {
            // `tcptrace top | head`: the reader left.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            other => other.context("writing the table").map(|()| true),
        }
    }
}

fn run_state(p: &Pipeline<Aggregator>) -> anyhow::Result<RunState> {
    Ok(RunState {
        elapsed: p.elapsed(),
        close_hook: p.close_hook(),
        events: p.events(),
        events_lost: p.losses()?.events_lost(),
    })
}
