//! `tcptrace leaks`: trace until the duration ends or Ctrl-C, then report findings by process.

use std::{
    io::{self, IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    analysis::{
        findings::{self, Limits},
        ports::{DEFAULT_EPHEMERAL_PORTS, ephemeral_ports},
    },
    cli::{DetectArgs, LeaksArgs},
    cmd::stop::stop_signal,
    event::clock::monotonic_ns,
    kernel::probes::{Changes, Counters},
    pipeline::Collector,
    render::report::{Report, RunInfo},
    stacks::StacksMode,
};

/// `--min-age` of leaks and top.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(30);

impl DetectArgs {
    /// The limits, with the default TIME_WAIT rate taken from this host's port range and the
    /// command's own default `--min-age`.
    pub fn limits(&self, default_min_age: Duration, warnings: &mut Vec<String>) -> Limits {
        let ephemeral_ports = ephemeral_ports().unwrap_or_else(|e| {
            warnings.push(format!("{e:#}; assuming Linux's default range"));
            DEFAULT_EPHEMERAL_PORTS
        });
        Limits {
            min_age: self.min_age.unwrap_or(default_min_age),
            idle: self.idle,
            time_wait_rate: self
                .time_wait_rate
                .unwrap_or_else(|| Limits::default_time_wait_rate(ephemeral_ports)),
            ephemeral_ports,
        }
    }

    pub fn capacity(&self) -> usize {
        usize::try_from(self.max_sockets).unwrap_or(usize::MAX)
    }
}

/// Takes the last events and sweep, then the findings and the report. Whatever fails here
/// becomes a warning in the report: what was collected is never lost.
pub async fn final_report(
    collector: &mut Collector,
    limits: Limits,
    mut warnings: Vec<String>,
) -> Report {
    if let Err(e) = collector.finish().await {
        warnings.push(format!("the final sweep failed ({e:#}): idle times are from the last one"));
    }
    let found = findings::detect(collector.agg(), &limits, monotonic_ns());
    warnings.extend(collector.warnings.iter().cloned());
    if collector.decode_errors() > 0 {
        warnings.push(format!("{} malformed events skipped", collector.decode_errors()));
    }
    let counters = collector.counters().unwrap_or_else(|e| {
        warnings.push(format!("kernel counters unreadable ({e:#}): losses may be unreported"));
        Counters::default()
    });
    let counters = Counters {
        stack_failures: counters.stack_failures + collector.unreadable_stacks(),
        ..counters
    };
    Report::build(
        collector.agg(),
        found,
        limits,
        &RunInfo {
            close_hook: collector.close_hook(),
            duration: collector.elapsed(),
            events: collector.events(),
            counters,
        },
        warnings,
    )
}

pub async fn run(args: LeaksArgs) -> anyhow::Result<()> {
    let options = args.probe.to_options(StacksMode::User, Changes::Lifecycle)?;
    let mut warnings = Vec::new();
    let limits = args.detect.limits(DEFAULT_MIN_AGE, &mut warnings);
    // Before the banner: a Ctrl-C from then on ends the run with its report.
    let stop = stop_signal(args.duration)?;
    let mut collector = Collector::start(&options, args.detect.capacity(), true).await?;
    eprintln!(
        "tcptrace: tracing TCP connections (close hook: {}); looking for leaks {}",
        collector.close_hook(),
        match args.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".to_owned(),
        }
    );
    for note in collector.notes() {
        eprintln!("tcptrace: note: {note}");
    }

    let status = io::stderr().is_terminal();
    collector
        .run(stop, args.detect.sweep, Duration::from_secs(1), |c| {
            if status {
                let found = findings::detect(c.agg(), &limits, monotonic_ns()).len();
                let secs = c.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r\x1b[Ktcptrace: {:.0}s, {} sockets tracked, {:.0} events/s, {} findings so far",
                    secs,
                    c.agg().tracked(),
                    c.events() as f64 / secs,
                    found
                );
            }
            Ok(true)
        })
        .await?;
    if status {
        eprint!("\r\x1b[K");
    }
    let report = final_report(&mut collector, limits, warnings).await;
    let mut out = io::stdout().lock();
    let written = if args.json { report.write_json(&mut out) } else { report.write_text(&mut out) };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}
