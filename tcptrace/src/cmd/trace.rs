//! `tcptrace trace`: print every connection's lifecycle as it happens.

use std::io::{self, BufWriter, Stdout};

use anyhow::Context as _;

use crate::{
    cli::TraceOptions,
    cmd::stop::stop_signal,
    pipeline::{Pipeline, Sink},
    render::trace::{Clock, Format, Renderer},
};

/// Sockets remembered for lifetimes and owners; beyond this they are counted, not tracked.
const MAX_TRACKED: usize = 1 << 20;

pub async fn run(options: TraceOptions) -> anyhow::Result<()> {
    let TraceOptions { probe, duration, json } = options;
    // Before the banner: a Ctrl-C from then on ends the trace cleanly.
    let stop = stop_signal(duration)?;
    let format = if json { Format::Json } else { Format::Text };
    let mut pipeline = Pipeline::start(&probe, MAX_TRACKED, None, |close_hook| {
        Renderer::new(BufWriter::new(io::stdout()), format, Clock::now(), close_hook)
    })
    .await?;
    pipeline.announce("TCP connections", Some("Ctrl-C to stop"));
    let traced = print(&mut pipeline, stop).await;
    summarize(&pipeline);
    traced
}

/// Prints records until the stop or until the reader leaves; whatever the kernel delivered
/// before the stop is printed, not dropped.
async fn print(
    pipeline: &mut Pipeline<Renderer<BufWriter<Stdout>>>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let header = pipeline.sink_mut().header();
    if let Err(e) = header {
        return written(e);
    }
    pipeline.run(stop, None, |_| Ok(true)).await?;
    pipeline.finish().await?;
    match pipeline.take_sink_error() {
        Some(e) => written(e),
        None => Ok(()),
    }
}

/// `tcptrace trace | head`: the reader left; that is a normal end.
fn written(e: io::Error) -> anyhow::Result<()> {
    match e.kind() {
        io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e).context("writing output"),
    }
}

/// The end-of-trace lines on stderr: events read, lost and read failures, then each kind of
/// loss.
fn summarize<S: Sink>(pipeline: &Pipeline<S>) {
    match pipeline.losses() {
        Ok(losses) => {
            // One line benchmarks and users can count on (bcc's tools print their losses the
            // same way).
            crate::say!(
                "tcptrace: {} events read, {} lost, {} kernel read failures",
                pipeline.events(),
                losses.events_lost(),
                losses.kernel.read_failures
            );
            for warning in losses.warnings() {
                crate::say!("tcptrace: {warning}");
            }
        }
        Err(e) => crate::say!(
            "tcptrace: {} events read; kernel counters unreadable ({e:#}): losses unknown",
            pipeline.events()
        ),
    }
    #[cfg(feature = "bench")]
    match pipeline.bench_counts() {
        Ok(counts) if counts.is_empty() => {}
        Ok(counts) => crate::say!(
            "tcptrace: counted in the kernel: {} opens, {} closes, {} processes",
            counts.iter().map(|(_, c)| c.opens).sum::<u64>(),
            counts.iter().map(|(_, c)| c.closes).sum::<u64>(),
            counts.len()
        ),
        Err(e) => crate::say!("tcptrace: in-kernel counts unreadable ({e:#})"),
    }
}
