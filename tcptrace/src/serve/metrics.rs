//! `serve`'s Prometheus metrics: the aggregator of `leaks`, fed the same records, with
//! counters that only grow and gauges recomputed from its state at each scrape.
//!
//! Counters are kept here, not derived from the aggregator, because the aggregator folds and
//! forgets exited processes to stay bounded and a counter must never fall: each count it adds
//! (`Aggregator::count_each`) is added here too, under the owner's labels. Gauges of a series
//! that drops to zero stay at zero (so `sum(...)` answers 0, not nothing) until their owner has
//! counted nothing for `RETENTION`; then every series of that owner leaves.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::AtomicU64,
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

use super::{
    labels::{Owner, Owners},
    window::TimeWaitWindow,
};
use crate::{
    analysis::{
        aggregate::{Aggregator, Count, Counted, Direction},
        findings::{self, FindingKind, Limits},
    },
    event::TcpState,
    inventory::Snapshot,
    kernel::close_hook::CloseHook,
    pipeline::{Sink, connections::Record, losses::Losses},
};

/// Upper bounds of `tcptrace_connection_lifetime_seconds`: from a loopback request (1 ms) to
/// a day-long connection pool.
pub const LIFETIME_BUCKETS: [f64; 9] = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 3600.0, 86400.0];

/// Series one `(comm, container)` pair can have at most, across every family labelled by it:
/// every TCP state, 5 finding kinds, 2 directions, released, TIME_WAIT entries, port share, and
/// the lifetime histogram (its buckets, `+Inf`, `_sum` and `_count`). `--max-series` is
/// turned into pairs with it.
pub const SERIES_PER_OWNER: usize =
    TcpState::ALL.len() + GAUGE_KINDS.len() + DIRECTIONS.len() + 3 + (LIFETIME_BUCKETS.len() + 3);

/// An owner's series leave after it counted nothing (and held nothing) this long.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// OpenMetrics' content type, for a scraper that asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The finding kinds with a gauge: what holds sockets now. `closed-by-exit` is a `run` finding
/// (off for `serve`: on a host, processes end with connections open all the time).
const GAUGE_KINDS: [FindingKind; 5] = [
    FindingKind::CloseWait,
    FindingKind::DeadFd,
    FindingKind::IdleNoKeepalive,
    FindingKind::Unclosed,
    FindingKind::TimeWaitChurn,
];

const DIRECTIONS: [(Direction, &str); 2] =
    [(Direction::Active, "connect"), (Direction::Passive, "accept")];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Held {
    #[prometheus(flatten)]
    owner: Owner,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Found {
    kind: &'static str,
    #[prometheus(flatten)]
    owner: Owner,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Opened {
    #[prometheus(flatten)]
    owner: Owner,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    close_hook: String,
}

type Lifetimes = Family<Owner, Histogram, fn() -> Histogram>;

/// The metric families, registered once.
struct Families {
    registry: Registry,
    connections: Family<Held, Gauge>,
    findings: Family<Found, Gauge>,
    opened: Family<Opened, Counter>,
    released: Family<Owner, Counter>,
    time_wait: Family<Owner, Counter>,
    port_share: Family<Owner, Gauge<f64, AtomicU64>>,
    lifetime: Lifetimes,
    events: Counter,
    events_lost: Family<Reason, Counter>,
    tracked: Gauge,
    capacity: Gauge,
    folded: Counter,
}

impl Families {
    fn new(close_hook: CloseHook) -> Self {
        let mut registry = Registry::default();
        let connections = Family::<Held, Gauge>::default();
        let findings = Family::<Found, Gauge>::default();
        let opened = Family::<Opened, Counter>::default();
        let released = Family::<Owner, Counter>::default();
        let time_wait = Family::<Owner, Counter>::default();
        let port_share = Family::<Owner, Gauge<f64, AtomicU64>>::default();
        let lifetime: Lifetimes = Family::new_with_constructor(|| Histogram::new(LIFETIME_BUCKETS));
        let events = Counter::default();
        let events_lost = Family::<Reason, Counter>::default();
        let (tracked, capacity) = (Gauge::default(), Gauge::default());
        let folded = Counter::default();
        registry.register(
            "tcptrace_connections",
            "Sockets held by live processes, per TCP state",
            connections.clone(),
        );
        registry.register(
            "tcptrace_findings",
            "Sockets currently in a leak finding (for time-wait-churn: the TIME_WAIT entries counted)",
            findings.clone(),
        );
        registry.register(
            "tcptrace_connections_opened",
            "Connections opened by connect() or accept()",
            opened.clone(),
        );
        registry.register(
            "tcptrace_connections_released",
            "Connections whose last descriptor the process gave up",
            released.clone(),
        );
        registry.register(
            "tcptrace_time_wait_entries",
            "Sockets that entered TIME_WAIT",
            time_wait.clone(),
        );
        registry.register(
            "tcptrace_ephemeral_port_share",
            "Share of the ephemeral port range held in TIME_WAIT toward the busiest remote (last 60 s)",
            port_share.clone(),
        );
        registry.register(
            "tcptrace_connection_lifetime_seconds",
            "From open to protocol close",
            lifetime.clone(),
        );
        registry.register("tcptrace_events", "Kernel events decoded", events.clone());
        registry.register(
            "tcptrace_events_lost",
            "Events and sockets tcptrace could not see, by reason",
            events_lost.clone(),
        );
        registry.register("tcptrace_tracked_sockets", "Sockets tracked now", tracked.clone());
        registry.register(
            "tcptrace_tracked_sockets_capacity",
            "Sockets tracked at most (--max-sockets)",
            capacity.clone(),
        );
        registry.register(
            "tcptrace_series_folded",
            "Counts and gauges put under comm=\"other\" because --max-series was reached",
            folded.clone(),
        );
        registry.register(
            "tcptrace_build",
            "The running tcptrace: its version and close hook",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION"),
                close_hook: close_hook.to_string(),
            }),
        );
        Self {
            registry,
            connections,
            findings,
            opened,
            released,
            time_wait,
            port_share,
            lifetime,
            events,
            events_lost,
            tracked,
            capacity,
            folded,
        }
    }
}

/// The sink of `serve`: the aggregator, and the metrics kept beside it.
pub struct MetricsSink {
    pub agg: Aggregator,
    families: Families,
    owners: Owners,
    window: TimeWaitWindow,
    /// Counts taken from the aggregator, reused.
    scratch: Vec<Counted>,
    /// Gauge series set at the last refresh.
    held: HashSet<Held>,
    found: HashSet<Found>,
    shares: HashSet<Owner>,
    /// Totals already added to the self-observation counters.
    events_seen: u64,
    lost_seen: HashMap<&'static str, u64>,
    folded_seen: u64,
}

impl Sink for MetricsSink {
    fn record(&mut self, record: &Record) -> std::io::Result<()> {
        self.agg.apply(record);
        self.scratch.extend(self.agg.take_counted());
        for Counted { pid, count } in self.scratch.drain(..) {
            let Some((comm, cgroup)) = self.agg.owner(pid) else { continue };
            let cgroup = cgroup.or(record.cgroup.as_ref());
            let owner = self.owners.admit(Owner::new(comm, cgroup.map(|c| &**c)), record.ts_ns);
            let f = &self.families;
            match count {
                Count::Opened(direction) => {
                    if let Some(&(_, name)) = DIRECTIONS.iter().find(|(d, _)| *d == direction) {
                        f.opened.get_or_create(&Opened { owner, direction: name }).inc();
                    }
                }
                Count::Released => {
                    f.released.get_or_create(&owner).inc();
                }
                Count::TimeWait { remote } => {
                    f.time_wait.get_or_create(&owner).inc();
                    if let Some(remote) = remote {
                        self.window.record(&owner, remote, record.ts_ns);
                    }
                }
                Count::Lifetime { ns } => {
                    f.lifetime.get_or_create(&owner).observe(ns as f64 / 1e9);
                }
            }
        }
        Ok(())
    }

    fn inventory(&mut self, snapshot: &Snapshot, taken_ns: u64) {
        self.agg.apply_inventory(snapshot, taken_ns);
    }
}

/// What the pipeline knows about itself, for the self-observation metrics.
#[derive(Debug, Clone, Copy)]
pub struct PipelineState {
    pub events: u64,
    pub losses: Losses,
    pub capacity: usize,
}

impl MetricsSink {
    pub fn new(capacity: usize, max_series: usize, close_hook: CloseHook) -> Self {
        let mut agg = Aggregator::new(capacity);
        agg.count_each();
        Self {
            agg,
            families: Families::new(close_hook),
            owners: Owners::new(max_series / SERIES_PER_OWNER),
            window: TimeWaitWindow::default(),
            scratch: Vec::new(),
            held: HashSet::new(),
            found: HashSet::new(),
            shares: HashSet::new(),
            events_seen: 0,
            lost_seen: HashMap::new(),
            folded_seen: 0,
        }
    }

    /// Recomputes the gauges from the aggregator at `now_ns`, brings the self-observation
    /// counters to the pipeline's totals, and lets owners idle for `RETENTION` go.
    pub fn refresh(&mut self, now_ns: u64, limits: &Limits, pipeline: &PipelineState) {
        self.refresh_connections(now_ns);
        self.refresh_findings(now_ns, limits);
        self.refresh_port_share(now_ns, limits.ephemeral_ports);
        self.refresh_self(pipeline);
        let retention = RETENTION.as_nanos() as u64;
        self.agg.churn.forget_idle(now_ns.saturating_sub(retention));
        for owner in self.owners.expire(now_ns.saturating_sub(retention)) {
            self.forget(&owner);
        }
    }

    fn refresh_connections(&mut self, now_ns: u64) {
        let mut counts: HashMap<(u32, TcpState), i64> = HashMap::new();
        for socket in self.agg.sockets().filter(|s| s.held()) {
            if let Some(pid) = socket.pid()
                && self.agg.processes.get(&pid).is_some_and(|p| !p.exited)
            {
                *counts.entry((pid, socket.state)).or_default() += 1;
            }
        }
        let mut by_series: HashMap<Held, i64> = HashMap::new();
        for ((pid, state), n) in counts {
            let Some((comm, cgroup)) = self.agg.owner(pid) else { continue };
            let owner = self.owners.admit(Owner::new(comm, cgroup.map(|c| &**c)), now_ns);
            *by_series.entry(Held { owner, state: state.name() }).or_default() += n;
        }
        set_gauges(&self.families.connections, &mut self.held, by_series);
    }

    fn refresh_findings(&mut self, now_ns: u64, limits: &Limits) {
        let mut by_series: HashMap<Found, i64> = HashMap::new();
        for finding in findings::detect(&self.agg, limits, now_ns) {
            if !GAUGE_KINDS.contains(&finding.kind) {
                continue;
            }
            let owner = Owner::new(&finding.comm, finding.cgroup.as_deref());
            let owner = self.owners.admit(owner, now_ns);
            let n = i64::try_from(finding.count).unwrap_or(i64::MAX);
            *by_series.entry(Found { kind: finding.kind.name(), owner }).or_default() += n;
        }
        set_gauges(&self.families.findings, &mut self.found, by_series);
    }

    fn refresh_port_share(&mut self, now_ns: u64, ephemeral_ports: u32) {
        let ports = f64::from(ephemeral_ports.max(1));
        let busiest = self.window.busiest(now_ns);
        for owner in self.shares.iter().filter(|o| !busiest.contains_key(o)) {
            self.families.port_share.get_or_create(owner).set(0.0);
        }
        for (owner, entries) in busiest {
            let share = (entries as f64 / ports).min(1.0);
            self.families.port_share.get_or_create(&owner).set(share);
            self.shares.insert(owner);
        }
    }

    fn refresh_self(&mut self, pipeline: &PipelineState) {
        let f = &self.families;
        advance(&f.events, &mut self.events_seen, pipeline.events);
        advance(&f.folded, &mut self.folded_seen, self.owners.folded);
        let l = &pipeline.losses;
        let reasons = [
            ("ring_full", l.kernel.lost_events),
            ("missed_runs", l.kernel.missed_runs),
            ("read_failures", l.kernel.read_failures),
            ("decode_errors", l.decode_errors),
            ("untracked", l.untracked + self.agg.evicted),
            ("owner_map_full", l.kernel.owner_map_full),
            ("stack_failures", l.stack_failures()),
        ];
        for (reason, total) in reasons {
            let seen = self.lost_seen.entry(reason).or_default();
            advance(&f.events_lost.get_or_create(&Reason { reason }), seen, total);
        }
        f.tracked.set(i64::try_from(self.agg.tracked()).unwrap_or(i64::MAX));
        f.capacity.set(i64::try_from(pipeline.capacity).unwrap_or(i64::MAX));
    }

    /// Removes every series of `owner`.
    fn forget(&mut self, owner: &Owner) {
        let f = &self.families;
        for state in TcpState::ALL {
            let held = Held { owner: owner.clone(), state: state.name() };
            f.connections.remove(&held);
            self.held.remove(&held);
        }
        for kind in GAUGE_KINDS {
            let found = Found { kind: kind.name(), owner: owner.clone() };
            f.findings.remove(&found);
            self.found.remove(&found);
        }
        for (_, direction) in DIRECTIONS {
            f.opened.remove(&Opened { owner: owner.clone(), direction });
        }
        f.released.remove(owner);
        f.time_wait.remove(owner);
        f.port_share.remove(owner);
        f.lifetime.remove(owner);
        self.shares.remove(owner);
        self.window.forget(owner);
    }

    /// The exposition: OpenMetrics when asked for, else Prometheus' text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            text::encode(&mut out, &self.families.registry)?;
        } else {
            prometheus_text::encode(&mut out, &self.families.registry)?;
        }
        Ok(out)
    }

    /// `(comm, container)` pairs with series now.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }
}

/// Sets each gauge of `values`; those set last time and absent now go to 0 (they stay until
/// their owner leaves, so a sum over them reads 0 rather than nothing).
fn set_gauges<L>(family: &Family<L, Gauge>, set: &mut HashSet<L>, values: HashMap<L, i64>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    for stale in set.iter().filter(|labels| !values.contains_key(labels)) {
        family.get_or_create(stale).set(0);
    }
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
        set.insert(labels);
    }
}

/// Adds to `counter` what `total` grew by since `seen`.
fn advance(counter: &Counter, seen: &mut u64, total: u64) {
    if total > *seen {
        counter.inc_by(total - *seen);
        *seen = total;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        event::{Comm, Endpoints, ReleaseReason},
        pipeline::connections::RecordKind,
    };

    const SEC: u64 = 1_000_000_000;
    const LIMITS: Limits = Limits {
        min_age: Duration::from_secs(1),
        idle: Duration::from_secs(600),
        time_wait_rate: 1e9,
        ephemeral_ports: 1000,
    };

    fn record(ts_ns: u64, pid: u32, comm: &str, skaddr: u64, kind: RecordKind) -> Record {
        let remote: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        Record {
            ts_ns,
            kind,
            pid: Some(pid),
            tid: Some(pid),
            comm: Some(Comm::from(comm)),
            fd: Some(3),
            skaddr,
            endpoints: Some(Endpoints {
                local: SocketAddr::new("10.0.0.1".parse().unwrap(), 40_000 + skaddr as u16),
                remote,
            }),
            stack: None,
            cgroup: None,
        }
    }

    fn state(old: TcpState, new: TcpState) -> RecordKind {
        RecordKind::State { old, new }
    }

    fn scrape(sink: &mut MetricsSink, now_ns: u64) -> String {
        let pipeline = PipelineState { events: 0, losses: Losses::default(), capacity: 100 };
        sink.refresh(now_ns, &LIMITS, &pipeline);
        sink.encode(false).unwrap()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// A client that connects twice, is left in CLOSE_WAIT by both servers, then exits: the
    /// counters count each open once, the gauges rise to 2 and fall to 0 (and stay, at 0).
    #[test]
    fn counters_count_once_and_gauges_fall_to_zero_when_the_process_exits() {
        let mut sink = MetricsSink::new(100, 10_000, CloseHook::Tracepoint);
        for sk in [1, 2] {
            let apply = |sink: &mut MetricsSink, ts, kind| {
                sink.record(&record(ts, 7, "api", sk, kind)).unwrap()
            };
            apply(&mut sink, SEC, RecordKind::Connect);
            apply(&mut sink, SEC, state(TcpState::SynSent, TcpState::Established));
            apply(&mut sink, SEC, state(TcpState::Established, TcpState::CloseWait));
        }
        let text = scrape(&mut sink, 5 * SEC);
        let opened =
            "tcptrace_connections_opened_total{comm=\"api\",container=\"\",direction=\"connect\"}";
        let findings = "tcptrace_findings{kind=\"close-wait\",comm=\"api\",container=\"\"}";
        let held = "tcptrace_connections{comm=\"api\",container=\"\",state=\"CLOSE_WAIT\"}";
        assert_eq!(value(&text, opened), Some(2.0), "{text}");
        assert_eq!(value(&text, findings), Some(2.0), "{text}");
        assert_eq!(value(&text, held), Some(2.0), "{text}");

        for sk in [1, 2] {
            let kind = RecordKind::Release { reason: ReleaseReason::Exit };
            sink.record(&record(6 * SEC, 7, "api", sk, kind)).unwrap();
        }
        sink.record(&record(6 * SEC, 7, "api", 0, RecordKind::Exit)).unwrap();
        let text = scrape(&mut sink, 7 * SEC);
        assert_eq!(value(&text, opened), Some(2.0), "a counter never falls: {text}");
        assert_eq!(value(&text, findings), Some(0.0), "{text}");
        assert_eq!(value(&text, held), Some(0.0), "{text}");
        let released = "tcptrace_connections_released_total{comm=\"api\",container=\"\"}";
        assert_eq!(value(&text, released), Some(2.0), "{text}");

        // Idle past the retention, every series of the pair leaves.
        let text = scrape(&mut sink, 7 * SEC + RETENTION.as_nanos() as u64 + SEC);
        assert!(!text.contains("comm=\"api\""), "{text}");
    }

    #[test]
    fn lifetimes_and_time_wait_entries_are_counted_per_owner() {
        let mut sink = MetricsSink::new(100, 10_000, CloseHook::Tracepoint);
        let mut apply = |ts, kind| sink.record(&record(ts, 9, "job", 1, kind)).unwrap();
        apply(SEC, RecordKind::Connect);
        apply(SEC, state(TcpState::SynSent, TcpState::Established));
        apply(2 * SEC, RecordKind::TimeWait { from: TcpState::FinWait2 });
        apply(
            2 * SEC,
            RecordKind::Close {
                from: TcpState::FinWait2,
                reset: false,
                lifetime_ns: Some(SEC / 2),
            },
        );
        let text = scrape(&mut sink, 3 * SEC);
        let owner = "{comm=\"job\",container=\"\"}";
        assert_eq!(
            value(&text, &format!("tcptrace_time_wait_entries_total{owner}")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, &format!("tcptrace_connection_lifetime_seconds_count{owner}")),
            Some(1.0)
        );
        assert_eq!(
            value(&text, &format!("tcptrace_connection_lifetime_seconds_sum{owner}")),
            Some(0.5)
        );
        // One TIME_WAIT toward one remote in the last minute, of 1000 ports.
        assert_eq!(
            value(&text, &format!("tcptrace_ephemeral_port_share{owner}")),
            Some(0.001),
            "{text}"
        );
    }
}
