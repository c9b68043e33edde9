//! The event loop `leaks` and `top` share: kernel events through `connections` into the
//! aggregator, and inventory sweeps at start, every `sweep` interval and at the end.

pub mod connections;

use std::{future::Future, pin::pin, time::Duration};

use anyhow::Context as _;
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use crate::{
    analysis::aggregate::Aggregator,
    event::{Event, clock::monotonic_ns},
    inventory::{self, Snapshot, filter::InventoryFilter},
    kernel::{
        close_hook::CloseHook,
        probes::{Counters, ProbeOptions, Probes},
        stream::EventStream,
    },
    pipeline::connections::{Connections, Record},
    stacks::StackResolver,
};

pub struct Collector {
    probes: Probes,
    stream: EventStream,
    tracked: Tracked,
    /// Inventory problems (each said once).
    pub warnings: Vec<String>,
    /// When tracing started (CLOCK_MONOTONIC ns).
    pub started_ns: u64,
    filter: InventoryFilter,
    /// Whether sweeps run (not for `run`: its processes are new, and other processes' sockets
    /// are not its business).
    inventory: bool,
}

/// A sweep running on the blocking pool, and when it started.
type PendingSweep = (JoinHandle<anyhow::Result<Snapshot>>, u64);

impl Collector {
    /// Loads and attaches the probes, then takes the starting inventory (with `inventory`):
    /// what exists before the first event is known.
    pub async fn start(
        options: &ProbeOptions,
        capacity: usize,
        inventory: bool,
    ) -> anyhow::Result<Self> {
        let mut probes = Probes::load(options)?;
        let stream = probes.events()?;
        let stacks = probes.stacks(options.stacks)?;
        let mut collector = Self {
            probes,
            stream,
            tracked: Tracked {
                conns: Connections::new(capacity),
                records: Vec::new(),
                agg: Aggregator::new(capacity),
                stacks,
                events: 0,
                decode_errors: 0,
            },
            warnings: Vec::new(),
            started_ns: monotonic_ns(),
            filter: InventoryFilter::new(options.filter),
            inventory,
        };
        collector.sweep().await?;
        Ok(collector)
    }

    pub fn close_hook(&self) -> CloseHook {
        self.probes.close_hook()
    }

    pub fn notes(&self) -> &[String] {
        self.probes.notes()
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.probes.counters()
    }

    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.started_ns))
    }

    pub fn agg(&self) -> &Aggregator {
        &self.tracked.agg
    }

    pub fn agg_mut(&mut self) -> &mut Aggregator {
        &mut self.tracked.agg
    }

    /// See `Probes::follow_self_hook`.
    pub fn follow_self_hook(
        &self,
    ) -> anyhow::Result<impl Fn() -> std::io::Result<()> + Send + Sync + 'static> {
        self.probes.follow_self_hook()
    }

    /// Whether a followed process still lives.
    pub fn followed_alive(&self) -> anyhow::Result<bool> {
        self.probes.followed_alive()
    }

    /// Kernel events decoded.
    pub fn events(&self) -> u64 {
        self.tracked.events
    }

    /// Stack ids the kernel handed over whose stack could not be read.
    pub fn unreadable_stacks(&self) -> u64 {
        self.tracked.stacks.as_ref().map_or(0, |s| s.unreadable)
    }

    /// Ring-buffer records that did not decode.
    pub fn decode_errors(&self) -> u64 {
        self.tracked.decode_errors
    }

    fn drain(&mut self) {
        self.stream.drain_now(|bytes| self.tracked.handle(bytes));
    }

    fn spawn_sweep() -> PendingSweep {
        (tokio::task::spawn_blocking(inventory::snapshot), monotonic_ns())
    }

    fn apply_sweep(
        &mut self,
        snapshot: anyhow::Result<Snapshot>,
        taken_ns: u64,
    ) -> anyhow::Result<()> {
        let mut snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            // Without sock_diag (inet_diag not loaded) the events still work; only what
            // existed before tracing, and idle times, are unknown.
            Err(e) => {
                self.warn(format!(
                    "socket inventory unavailable ({e:#}): sockets from before tracing and idle times are unknown"
                ));
                return Ok(());
            }
        };
        // Events from before the snapshot first, so sockets opened meanwhile are known by
        // their kernel address rather than mistaken for ones that existed before tracing.
        self.drain();
        for warning in &snapshot.warnings {
            self.warn(warning.clone());
        }
        snapshot.sockets.retain_mut(|s| self.filter.keep(s));
        self.tracked.agg.apply_inventory(&snapshot, taken_ns);
        Ok(())
    }

    fn warn(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// One sweep, now (at start and at the end).
    pub async fn sweep(&mut self) -> anyhow::Result<()> {
        if !self.inventory {
            return Ok(());
        }
        let (task, taken_ns) = Self::spawn_sweep();
        let snapshot = task.await.context("the inventory task failed")?;
        self.apply_sweep(snapshot, taken_ns)
    }

    /// Consumes events until `stop` completes, sweeping every `sweep_every` and calling
    /// `on_tick` every `tick_every`.
    pub async fn run(
        &mut self,
        stop: impl Future<Output = ()>,
        sweep_every: Duration,
        tick_every: Duration,
        mut on_tick: impl FnMut(&mut Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut stop = pin!(stop);
        let mut sweeps = tokio::time::interval(sweep_every);
        sweeps.set_missed_tick_behavior(MissedTickBehavior::Delay);
        sweeps.tick().await; // the first tick is immediate: the start already swept
        let mut ticks = tokio::time::interval(tick_every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending: Option<PendingSweep> = None;
        loop {
            let outcome = tokio::select! {
                _ = &mut stop => Outcome::Stop,
                _ = sweeps.tick(), if pending.is_none() && self.inventory => Outcome::StartSweep,
                done = async { (&mut pending.as_mut().expect("guarded").0).await }, if pending.is_some() => {
                    Outcome::SweepDone(done)
                }
                _ = ticks.tick() => Outcome::Tick,
                batch = self.stream.next_batch(|bytes| self.tracked.handle(bytes)) => {
                    Outcome::Batch(batch)
                }
            };
            match outcome {
                Outcome::Stop => break,
                Outcome::StartSweep => pending = Some(Self::spawn_sweep()),
                Outcome::SweepDone(done) => {
                    let (_, taken_ns) = pending.take().expect("a sweep was pending");
                    self.apply_sweep(done.context("the inventory task failed")?, taken_ns)?;
                }
                Outcome::Tick => {
                    if !on_tick(self)? {
                        break;
                    }
                }
                Outcome::Batch(batch) => {
                    batch.context("reading the ring buffer")?;
                }
            }
        }
        if let Some((task, _)) = pending {
            task.abort();
        }
        Ok(())
    }

    /// Takes what the kernel delivered before the stop, then a last sweep for fresh idle times.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        self.drain();
        self.sweep().await
    }
}

/// Everything the events feed, apart from the stream they come from (so the stream's callback
/// can borrow it).
struct Tracked {
    conns: Connections,
    records: Vec<Record>,
    agg: Aggregator,
    stacks: Option<StackResolver>,
    events: u64,
    decode_errors: u64,
}

impl Tracked {
    fn handle(&mut self, bytes: &[u8]) {
        let Ok(event) = Event::try_from(bytes) else {
            self.decode_errors += 1;
            return;
        };
        self.events += 1;
        self.records.clear();
        self.conns.apply(&event, &mut self.records);
        if let Some(stacks) = &mut self.stacks {
            stacks.attach(&event, &mut self.records);
        }
        for record in &self.records {
            self.agg.apply(record);
        }
    }
}

enum Outcome {
    Stop,
    StartSweep,
    SweepDone(Result<anyhow::Result<Snapshot>, tokio::task::JoinError>),
    Tick,
    Batch(std::io::Result<usize>),
}
