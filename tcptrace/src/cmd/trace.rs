//! `tcptrace trace`: print every connection's lifecycle as it happens.

use std::{
    io::{self, BufWriter, Write},
    pin::pin,
};

use anyhow::Context as _;

use crate::{
    cli::TraceArgs,
    cmd::stop::stop_signal,
    event::Event,
    kernel::probes::{Bench, Changes, Probes},
    pipeline::connections::Connections,
    render::trace::{Clock, Format, Renderer},
    stacks::{StackResolver, StacksMode},
};

/// Sockets remembered for lifetimes and owners; beyond this they are counted, not tracked.
const MAX_TRACKED: usize = 1 << 20;

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let options = args.probe.to_options(StacksMode::Off, Changes::All)?;
    // Before the banner: a Ctrl-C from then on ends the trace cleanly.
    let mut stop = pin!(stop_signal(args.duration)?);
    let mut probes = Probes::load(&options)?;
    let mut stream = probes.events()?;
    let stacks = probes.stacks(options.stacks)?;
    eprintln!(
        "tcptrace: tracing TCP connections (close hook: {}); Ctrl-C to stop",
        probes.close_hook()
    );
    for note in probes.notes() {
        eprintln!("tcptrace: note: {note}");
    }

    let format = if args.json { Format::Json } else { Format::Text };
    let mut renderer =
        Renderer::new(BufWriter::new(io::stdout()), format, Clock::now(), probes.close_hook());
    let mut session = Session {
        count_only: options.bench == Bench::Minimum,
        conns: Connections::new(MAX_TRACKED),
        records: Vec::new(),
        stacks,
        events: 0,
        decode_errors: 0,
    };

    let result: io::Result<()> = async {
        renderer.header()?;
        renderer.flush()?;
        loop {
            let mut write_result = Ok(());
            tokio::select! {
                _ = &mut stop => break,
                batch = stream.next_batch(|bytes| {
                    if write_result.is_ok() {
                        write_result = session.handle(bytes, &mut renderer);
                    }
                }) => {
                    batch?;
                    write_result?;
                    renderer.flush()?;
                }
            }
        }
        // Whatever the kernel delivered before the stop is printed, not dropped.
        let mut write_result = Ok(());
        stream.drain_now(|bytes| {
            if write_result.is_ok() {
                write_result = session.handle(bytes, &mut renderer);
            }
        });
        write_result?;
        renderer.flush()
    }
    .await;
    match result {
        // `tcptrace trace | head`: the reader left; that is a normal end.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing output")?,
    }

    let counters = probes.counters()?;
    // One line benchmarks and users can count on (bcc's tools print their losses the same way).
    eprintln!(
        "tcptrace: {} events read, {} lost",
        session.events,
        counters.lost_events + counters.missed_runs
    );
    if counters.lost_events > 0 {
        eprintln!(
            "tcptrace: {} events lost: the ring buffer was full (try a larger --ring-size)",
            counters.lost_events
        );
    }
    if counters.missed_runs > 0 {
        eprintln!(
            "tcptrace: {} kernel program runs skipped by the kernel (a hook re-entered on one CPU): their events are lost",
            counters.missed_runs
        );
    }
    if counters.owner_map_full > 0 {
        eprintln!(
            "tcptrace: {} sockets opened while the kernel owner map was full: their later state changes show no owner",
            counters.owner_map_full
        );
    }
    let unreadable = session.stacks.as_ref().map_or(0, |s| s.unreadable);
    if counters.stack_failures + unreadable > 0 {
        eprintln!(
            "tcptrace: {} stacks not captured (stack map full or a hash collision): those opens show no code path",
            counters.stack_failures + unreadable
        );
    }
    if session.decode_errors > 0 {
        eprintln!("tcptrace: {} malformed events skipped", session.decode_errors);
    }
    if session.conns.untracked > 0 {
        eprintln!(
            "tcptrace: {} sockets not tracked (table full): no lifetime for them",
            session.conns.untracked
        );
    }
    Ok(())
}

struct Session {
    /// `--bench-minimum`: the events are counted, nothing more, so that the bench's minimum
    /// measures the kernel's least work and not printing.
    count_only: bool,
    conns: Connections,
    records: Vec<crate::pipeline::connections::Record>,
    stacks: Option<StackResolver>,
    events: u64,
    decode_errors: u64,
}

impl Session {
    fn handle<W: Write>(&mut self, bytes: &[u8], renderer: &mut Renderer<W>) -> io::Result<()> {
        let Ok(event) = Event::try_from(bytes) else {
            self.decode_errors += 1;
            return Ok(());
        };
        self.events += 1;
        if self.count_only {
            return Ok(());
        }
        self.records.clear();
        self.conns.apply(&event, &mut self.records);
        if let Some(stacks) = &mut self.stacks {
            stacks.attach(&event, &mut self.records);
        }
        for record in &self.records {
            renderer.record(record)?;
        }
        Ok(())
    }
}
