//! `tcptrace leaks`: trace until the duration ends or Ctrl-C, then report findings by process.

use std::{
    io::{self, IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    analysis::{
        aggregate::Aggregator,
        findings::{self, Limits},
        ports::{DEFAULT_EPHEMERAL_PORTS, ephemeral_ports},
    },
    cli::{DetectOptions, LeaksOptions},
    cmd::stop::stop_signal,
    event::clock::monotonic_ns,
    kernel::options::ProbeOptions,
    pipeline::{Pipeline, Sink, losses::Losses},
    render::report::{Report, RunInfo},
};

/// How often the progress line on a terminal is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The limits, with the default TIME_WAIT rate taken from this host's port range.
pub fn limits(detect: &DetectOptions, warnings: &mut Vec<String>) -> Limits {
    let ephemeral_ports = ephemeral_ports().unwrap_or_else(|e| {
        warnings.push(format!("{e:#}; assuming Linux's default range"));
        DEFAULT_EPHEMERAL_PORTS
    });
    Limits {
        min_age: detect.min_age,
        idle: detect.idle,
        time_wait_rate: detect
            .time_wait_rate
            .unwrap_or_else(|| Limits::default_time_wait_rate(ephemeral_ports)),
        ephemeral_ports,
    }
}

/// Takes the last events and sweep, then the findings and the report. Whatever fails here
/// becomes a warning in the report: what was collected is never lost.
pub async fn final_report(
    pipeline: &mut Pipeline<Aggregator>,
    limits: Limits,
    mut warnings: Vec<String>,
) -> Report {
    if let Err(e) = pipeline.finish().await {
        warnings.push(format!("the final sweep failed ({e:#}): idle times are from the last one"));
    }
    report_now(pipeline, pipeline.sink(), limits, warnings)
}

/// The report of what `agg` (the pipeline's aggregator) knows now; `serve` answers `/report`
/// with it while tracing goes on.
pub fn report_now<S: Sink>(
    pipeline: &Pipeline<S>,
    agg: &Aggregator,
    limits: Limits,
    mut warnings: Vec<String>,
) -> Report {
    let found = findings::detect(agg, &limits, monotonic_ns());
    warnings.extend(pipeline.warnings().iter().cloned());
    let losses = pipeline.losses().unwrap_or_else(|e| {
        warnings.push(format!("kernel counters unreadable ({e:#}): losses may be unreported"));
        Losses::default()
    });
    let run = RunInfo {
        close_hook: pipeline.close_hook(),
        duration: pipeline.elapsed(),
        events: pipeline.events(),
        losses,
    };
    Report::build(agg, found, limits, &run, warnings)
}

/// The pipeline of `leaks` and `top`: the aggregator as its sink, inventory sweeps on.
pub async fn aggregating(
    probe: &ProbeOptions,
    detect: &DetectOptions,
) -> anyhow::Result<Pipeline<Aggregator>> {
    let capacity = detect.capacity;
    Pipeline::start(probe, capacity, Some(detect.sweep), |_| Aggregator::new(capacity)).await
}

pub async fn run(options: LeaksOptions) -> anyhow::Result<()> {
    let LeaksOptions { probe, detect, duration, json } = options;
    let mut warnings = Vec::new();
    let limits = limits(&detect, &mut warnings);
    // Before the banner: a Ctrl-C from then on ends the run with its report.
    let stop = stop_signal(duration)?;
    let mut pipeline = aggregating(&probe, &detect).await?;
    let purpose = match duration {
        Some(d) => format!("looking for leaks for {}", humantime::format_duration(d)),
        None => "looking for leaks until Ctrl-C".to_owned(),
    };
    pipeline.announce("TCP connections", Some(&purpose));

    let progress = io::stderr().is_terminal();
    let tick = progress.then_some(PROGRESS_EVERY);
    pipeline.run(stop, tick, |p| show_progress(p, &limits)).await?;
    if progress {
        crate::say_partial!("\r\x1b[K");
    }
    let report = final_report(&mut pipeline, limits, warnings).await;
    let mut out = io::stdout().lock();
    let written = if json { report.write_json(&mut out) } else { report.write_text(&mut out) };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}

/// The progress line on a terminal's stderr.
fn show_progress(p: &mut Pipeline<Aggregator>, limits: &Limits) -> anyhow::Result<bool> {
    let found = findings::detect(p.sink(), limits, monotonic_ns()).len();
    let secs = p.elapsed().as_secs_f64().max(1e-3);
    crate::say_partial!(
        "\r\x1b[Ktcptrace: {:.0}s, {} sockets tracked, {:.0} events/s, {} findings so far",
        secs,
        p.sink().tracked(),
        p.events() as f64 / secs,
        found
    );
    Ok(true)
}
