//! The one event pipeline every command runs: the kernel programs' ring buffer → decode →
//! attribution to the socket's owner (`connections`) → code path (`stacks`) → a [`Sink`] (the
//! aggregator of `leaks`, `top` and `run`, or `trace`'s renderer), with inventory sweeps at
//! start, every `sweep` interval (further apart where a sweep is slow: `pace`) and at the end
//! when the command wants them. It says what it could not see in one list (`losses`).
//!
//! May import `kernel`, `event`, `stacks`, `container` and `inventory`; imported by `analysis` (for
//! `Record`), `render`, `top` and `cmd`. It never looks at what the records mean.

pub mod connections;
mod feed;
pub mod losses;
mod pace;
mod placement;

use std::{future::Future, pin::pin, time::Duration};

use anyhow::Context as _;
use feed::Feed;
pub use feed::Sink;
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use crate::{
    container::Resolver,
    event::clock::monotonic_ns,
    inventory::{self, Snapshot, filter::InventoryFilter},
    kernel::{
        close_hook::CloseHook,
        counters::Counters,
        probes::{ProbeOptions, Probes},
        stream::EventStream,
    },
    pipeline::{losses::Losses, placement::Placement},
    stacks::StackResolver,
};

pub struct Pipeline<S> {
    probes: Probes,
    stream: EventStream,
    feed: Feed<S>,
    /// Inventory problems (each said once).
    warnings: Vec<String>,
    /// When tracing started (CLOCK_MONOTONIC ns).
    started_ns: u64,
    filter: InventoryFilter,
    /// How often the inventory is swept; `None`: never (`trace` prints events, and `run`'s
    /// processes are new: other processes' sockets are not its business).
    sweep_every: Option<Duration>,
    /// The wait before the next periodic sweep, from how long the last one took (`pace`).
    sweep_gap: Duration,
    /// Whether the warning that sweeps are spaced out was given.
    sweep_paced: bool,
    /// How containers are found, when it is the degraded way.
    cgroup_note: Option<&'static str>,
    /// Interpreters found running that tcptrace cannot read (`interp`).
    stack_notes: Vec<String>,
}

const NO_HIERARCHY: &str = "no cgroup v2 hierarchy is mounted: containers are found from /proc/<pid>/cgroup, so a process that exits before it is read has none";

/// A sweep running on the blocking pool, and when it started.
type PendingSweep = (JoinHandle<anyhow::Result<Snapshot>>, u64);

impl<S: Sink> Pipeline<S> {
    /// Loads and attaches the probes, then takes the starting inventory (when it sweeps): what
    /// exists before the first event is known. `capacity` bounds the sockets tracked; `sink`
    /// makes the sink once the close hook in use is known.
    pub async fn start(
        options: &ProbeOptions,
        capacity: usize,
        sweep_every: Option<Duration>,
        sink: impl FnOnce(CloseHook) -> S,
    ) -> anyhow::Result<Self> {
        let resolver = Resolver::for_host();
        // Without a v2 hierarchy every task reads the root's id: the kernel need not read it.
        let options = &ProbeOptions {
            cgroup_ids: options.cgroup_ids && resolver.hierarchy().is_some(),
            ..options.clone()
        };
        let mut probes = Probes::load(options)?;
        let sink = sink(probes.close_hook());
        let stream = probes.events()?;
        let mut stacks = probes
            .stack_maps(options.stacks)?
            .map(|maps| StackResolver::new(maps.user, maps.kernel, maps.interp));
        let stack_notes = stacks.as_mut().map(StackResolver::take_start_notes).unwrap_or_default();
        let hierarchy = resolver.hierarchy().cloned();
        let feed = Feed::new(capacity, stacks, Placement::new(resolver), sink);
        #[cfg(feature = "bench")]
        let feed = feed.count_only(options.bench != crate::kernel::probes::Bench::Off);
        let mut pipeline = Self {
            probes,
            stream,
            feed,
            warnings: Vec::new(),
            started_ns: monotonic_ns(),
            cgroup_note: hierarchy.is_none().then_some(NO_HIERARCHY),
            stack_notes,
            filter: InventoryFilter::new(options.filter, hierarchy),
            sweep_every,
            sweep_gap: sweep_every.unwrap_or(IDLE),
            sweep_paced: false,
        };
        pipeline.sweep().await?;
        Ok(pipeline)
    }

    /// The start-up lines on stderr: what is traced, the close hook, what for, and what runs
    /// degraded on this kernel.
    pub fn announce(&self, subject: &str, purpose: Option<&str>) {
        let purpose = purpose.map(|p| format!("; {p}")).unwrap_or_default();
        crate::say!("tcptrace: tracing {subject} (close hook: {}){purpose}", self.close_hook());
        for note in self.probes.notes() {
            crate::say!("tcptrace: note: {note}");
        }
        if let Some(note) = self.cgroup_note {
            crate::say!("tcptrace: note: {note}");
        }
        for note in &self.stack_notes {
            crate::say!("tcptrace: note: {note}");
        }
    }

    pub fn close_hook(&self) -> CloseHook {
        self.probes.close_hook()
    }

    pub fn sink(&self) -> &S {
        &self.feed.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.feed.sink
    }

    /// Inventory problems, each said once.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.probes.counters()
    }

    /// Everything lost so far, the kernel's counters included.
    pub fn losses(&self) -> anyhow::Result<Losses> {
        Ok(Losses {
            kernel: self.counters()?,
            decode_errors: self.feed.decode_errors,
            unreadable_stacks: self.feed.unreadable_stacks(),
            untracked: self.feed.untracked(),
        })
    }

    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.started_ns))
    }

    /// Kernel events decoded.
    pub fn events(&self) -> u64 {
        self.feed.events
    }

    /// `--bench-in-kernel`'s counts by process (see `Probes::bench_counts`).
    #[cfg(feature = "bench")]
    pub fn bench_counts(&self) -> anyhow::Result<Vec<(u32, tcptrace_common::BenchCounts)>> {
        self.probes.bench_counts()
    }

    /// The sink's error, which ended the pipeline early.
    pub fn take_sink_error(&mut self) -> Option<std::io::Error> {
        self.feed.error.take()
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

    fn drain(&mut self) {
        self.stream.drain_now(|bytes| self.feed.handle(bytes));
        self.feed.flush();
    }

    fn spawn_sweep() -> PendingSweep {
        (tokio::task::spawn_blocking(inventory::snapshot), monotonic_ns())
    }

    fn apply_sweep(&mut self, snapshot: anyhow::Result<Snapshot>, taken_ns: u64) {
        self.pace_sweeps(Duration::from_nanos(monotonic_ns().saturating_sub(taken_ns)));
        let mut snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            // Without sock_diag (inet_diag not loaded) the events still work; only what
            // existed before tracing, and idle times, are unknown.
            Err(e) => {
                self.warn(format!(
                    "socket inventory unavailable ({e:#}): sockets from before tracing and idle times are unknown"
                ));
                return;
            }
        };
        // Events from before the snapshot first, so sockets opened meanwhile are known by
        // their kernel address rather than mistaken for ones that existed before tracing.
        self.drain();
        for warning in &snapshot.warnings {
            self.warn(warning.clone());
        }
        snapshot.sockets.retain_mut(|s| self.filter.keep(s));
        self.feed.inventory(&mut snapshot, taken_ns);
    }

    /// Sets the wait before the next sweep from how long this one took, and says once when
    /// that is longer than the interval asked for.
    fn pace_sweeps(&mut self, took: Duration) {
        let Some(every) = self.sweep_every else {
            return;
        };
        self.sweep_gap = pace::gap_after(every, took);
        if pace::stretched(every, took) && !self.sweep_paced {
            self.sweep_paced = true;
            let spaced = self.sweep_gap + took;
            self.warn(format!(
                "a sweep of the socket inventory took {} ms (it walks every process's descriptors, and the kernel's established hash, TIME_WAIT included, once per network namespace): sweeps are spaced about {} s apart, not {} s, to take at most 1/{} of a CPU",
                took.as_millis(),
                spaced.as_secs_f64().round(),
                every.as_secs_f64(),
                pace::SPACING,
            ));
        }
    }

    fn warn(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// One sweep, now (at start and at the end).
    pub async fn sweep(&mut self) -> anyhow::Result<()> {
        if self.sweep_every.is_none() {
            return Ok(());
        }
        let (task, taken_ns) = Self::spawn_sweep();
        let snapshot = task.await.context("the inventory task failed")?;
        self.apply_sweep(snapshot, taken_ns);
        Ok(())
    }

    /// Consumes events until `stop` completes, `on_tick` (called every `tick_every`) returns
    /// false, or the sink fails; sweeps meanwhile.
    pub async fn run(
        &mut self,
        stop: impl Future<Output = ()>,
        tick_every: Option<Duration>,
        mut on_tick: impl FnMut(&mut Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut stop = pin!(stop);
        // The start already swept; the next sweep waits as long as that one says (`pace`).
        let mut next_sweep = pin!(tokio::time::sleep(self.sweep_gap));
        // Periods for intervals never polled when there is nothing to do.
        let mut ticks = interval(tick_every.unwrap_or(IDLE));
        let (sweeping, ticking) = (self.sweep_every.is_some(), tick_every.is_some());
        // Work of the pipeline's own between batches, when no batch comes (`Feed::tick`).
        let mut housekeeping = interval(HOUSEKEEPING);
        let mut pending: Option<PendingSweep> = None;
        while self.feed.error.is_none() {
            let outcome = tokio::select! {
                _ = &mut stop => Outcome::Stop,
                () = &mut next_sweep, if pending.is_none() && sweeping => Outcome::StartSweep,
                done = async { (&mut pending.as_mut().expect("guarded").0).await }, if pending.is_some() => {
                    Outcome::SweepDone(done)
                }
                _ = ticks.tick(), if ticking => Outcome::Tick,
                _ = housekeeping.tick() => Outcome::Housekeeping,
                batch = self.stream.next_batch(|bytes| self.feed.handle(bytes)) => {
                    Outcome::Batch(batch)
                }
            };
            match outcome {
                Outcome::Stop => break,
                Outcome::StartSweep => pending = Some(Self::spawn_sweep()),
                Outcome::SweepDone(done) => {
                    let (_, taken_ns) = pending.take().expect("a sweep was pending");
                    self.apply_sweep(done.context("the inventory task failed")?, taken_ns);
                    let now = tokio::time::Instant::now();
                    next_sweep
                        .as_mut()
                        .reset(now.checked_add(self.sweep_gap).unwrap_or(now + IDLE));
                }
                Outcome::Tick => {
                    if !on_tick(self)? {
                        break;
                    }
                }
                Outcome::Batch(batch) => {
                    batch.context("reading the ring buffer")?;
                    self.feed.flush();
                    self.feed.tick();
                }
                Outcome::Housekeeping => self.feed.tick(),
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

/// The period of an interval that is never awaited.
const IDLE: Duration = Duration::from_secs(3600);
/// How often the pipeline does its own periodic work when no events come.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

enum Outcome {
    Stop,
    StartSweep,
    SweepDone(Result<anyhow::Result<Snapshot>, tokio::task::JoinError>),
    Tick,
    Housekeeping,
    Batch(std::io::Result<usize>),
}
