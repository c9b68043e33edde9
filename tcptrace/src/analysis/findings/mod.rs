//! Leak findings (the leak classes in docs/architecture.md): which sockets, or which processes,
//! are leaking, with the evidence and the usual fix. Pure: computed from the aggregator at a
//! point in time. The kinds and the limits that define them are in `kind`.

mod kind;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::Serialize;

pub use self::kind::{FindingKind, Limits, TIME_WAIT_SECS};
use crate::{
    analysis::aggregate::{Aggregator, Direction, Origin, TrackedSocket},
    container::{Cgroup, serialize_container},
    event::TcpState,
    stacks::OpenStack,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub pid: u32,
    pub comm: String,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub state: TcpState,
    #[serde(rename = "age_s", serialize_with = "opt_secs")]
    pub age: Option<Duration>,
    #[serde(rename = "idle_s", serialize_with = "opt_secs")]
    pub idle: Option<Duration>,
    pub keepalive: Option<bool>,
    pub source: Origin,
    /// Sockets this finding stands for (1 for a socket finding; TIME_WAIT entries for churn).
    pub count: u64,
    pub rate_per_s: Option<f64>,
    /// Share of the ephemeral port range held in TIME_WAIT at that rate.
    pub port_share: Option<f64>,
    pub explanation: &'static str,
    pub fix: &'static str,
    /// The code path that opened the socket (for churn: the latest connection toward the
    /// remote); `null` when stacks were off, not captured, or the socket predates the trace.
    pub stack: Option<Arc<OpenStack>>,
    /// The stack stops before a `main` or a thread's start (code without frame pointers, or
    /// the kernel's frame limit): its outer frames, and maybe the function that opened the
    /// socket, are missing.
    pub stack_truncated: bool,
    /// A Node.js program's connect() ran on a later tick of the event loop: the function that
    /// asked for the connection is not on the stack, only Node's own modules are.
    pub connect_deferred: bool,
    /// The process's container.
    #[serde(rename = "container", serialize_with = "serialize_container")]
    pub cgroup: Option<Arc<Cgroup>>,
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0),
        None => s.serialize_none(),
    }
}

/// The finding a socket deserves at `now_ns`, if any; at most one, the most specific.
fn socket_finding(s: &TrackedSocket, limits: &Limits, now_ns: u64) -> Option<FindingKind> {
    if !s.held() {
        return None;
    }
    let in_state = Duration::from_nanos(now_ns.saturating_sub(s.state_since_ns));
    let idle = s.idle_at(now_ns);
    match s.state {
        TcpState::CloseWait if in_state >= limits.min_age => Some(FindingKind::CloseWait),
        TcpState::Close if in_state >= limits.min_age => Some(FindingKind::DeadFd),
        TcpState::Established
            if s.keepalive() == Some(false) && idle.is_some_and(|i| i >= limits.idle) =>
        {
            Some(FindingKind::IdleNoKeepalive)
        }
        // Only clients: a server holding a connection is the client's choice. An idle time
        // that is known must show the connection unused; a pool in use is not a leak.
        TcpState::Established
            if s.origin() == Origin::Events
                && s.direction == Direction::Active
                && s.age_at(now_ns) >= limits.min_age
                && idle.is_none_or(|i| i >= limits.min_age) =>
        {
            Some(FindingKind::Unclosed)
        }
        _ => None,
    }
}

impl Finding {
    /// A finding of one socket of `pid` in `state`, before its details are filled in.
    pub fn new(kind: FindingKind, pid: u32, comm: String, state: TcpState) -> Self {
        Self {
            kind,
            pid,
            comm,
            fd: None,
            local: None,
            remote: None,
            state,
            age: None,
            idle: None,
            keepalive: None,
            source: Origin::Events,
            count: 1,
            rate_per_s: None,
            port_share: None,
            explanation: kind.explanation(),
            fix: kind.fix(),
            stack: None,
            stack_truncated: false,
            connect_deferred: false,
            cgroup: None,
        }
    }
}

/// Every finding at `now_ns`, sorted by pid, kind and descriptor.
pub fn detect(agg: &Aggregator, limits: &Limits, now_ns: u64) -> Vec<Finding> {
    let comm = |pid: u32| agg.processes.get(&pid).map(|p| p.comm.clone()).unwrap_or_default();
    let cgroup = |pid: u32| agg.processes.get(&pid).and_then(|p| p.cgroup.clone());
    let mut findings: Vec<Finding> = agg
        .sockets()
        .filter_map(|s| {
            let kind = socket_finding(s, limits, now_ns)?;
            let pid = s.pid()?;
            Some(Finding {
                fd: s.fd(),
                local: s.local(),
                remote: s.remote(),
                age: Some(s.age_at(now_ns)),
                idle: s.idle_at(now_ns),
                keepalive: s.keepalive(),
                source: s.origin(),
                stack: s.stack.clone(),
                ..Finding::new(kind, pid, comm(pid), s.state)
            })
        })
        .collect();
    for (pid, remote, counter) in agg.churn.iter() {
        let rate = counter.rate_per_s();
        if counter.entries < 2 || rate < limits.time_wait_rate {
            continue;
        }
        let share = (rate * TIME_WAIT_SECS / f64::from(limits.ephemeral_ports.max(1))).min(1.0);
        findings.push(Finding {
            remote: Some(remote),
            count: counter.entries,
            rate_per_s: Some((rate * 100.0).round() / 100.0),
            port_share: Some((share * 10_000.0).round() / 10_000.0),
            stack: counter.stack.clone(),
            ..Finding::new(FindingKind::TimeWaitChurn, pid, comm(pid), TcpState::TimeWait)
        });
    }
    for exited in &agg.exit_releases.kept {
        let kind = FindingKind::ClosedByExit;
        findings.push(Finding {
            fd: exited.fd,
            local: exited.local,
            remote: exited.remote,
            age: Some(exited.age),
            stack: exited.stack.clone(),
            ..Finding::new(kind, exited.pid, comm(exited.pid), exited.state)
        });
    }
    for finding in &mut findings {
        finding.cgroup = cgroup(finding.pid);
        finding.stack_truncated = finding.stack.as_ref().is_some_and(|s| s.truncated);
        finding.connect_deferred = finding.stack.as_ref().is_some_and(|s| s.deferred());
    }
    findings.sort_by_key(|f| (f.pid, f.kind, f.fd, f.remote));
    findings
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Instant};

    use super::*;
    use crate::{
        event::{Comm, Endpoints, ReleaseReason},
        inventory::{FdOwner, InventorySocket, Snapshot},
        pipeline::connections::{Record, RecordKind},
    };

    const SEC: u64 = 1_000_000_000;
    const SK: u64 = 0xffff_8880_0000_1000;
    const PID: u32 = 4242;

    fn limits() -> Limits {
        Limits {
            min_age: Duration::from_secs(30),
            idle: Duration::from_secs(600),
            time_wait_rate: 10.0,
            ephemeral_ports: 28232,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn endpoints() -> Endpoints {
        Endpoints { local: addr("10.0.0.1:40000"), remote: addr("10.0.0.2:6379") }
    }

    fn record(ts_s: u64, kind: RecordKind) -> Record {
        Record {
            ts_ns: ts_s * SEC,
            kind,
            pid: Some(PID),
            tid: Some(PID),
            comm: Some(Comm::from("client")),
            fd: Some(7),
            skaddr: SK,
            endpoints: Some(endpoints()),
            stack: None,
            cgroup: None,
        }
    }

    fn state(ts_s: u64, old: TcpState, new: TcpState) -> Record {
        record(ts_s, RecordKind::State { old, new })
    }

    /// A client that connected at t=1 s and is ESTABLISHED.
    fn connected() -> Aggregator {
        let mut agg = Aggregator::new(100);
        agg.apply(&record(1, RecordKind::Connect));
        agg.apply(&state(1, TcpState::SynSent, TcpState::Established));
        agg
    }

    fn kinds(agg: &Aggregator, at_s: u64) -> Vec<(FindingKind, u32, Option<i32>)> {
        detect(agg, &limits(), at_s * SEC).iter().map(|f| (f.kind, f.pid, f.fd)).collect()
    }

    #[test]
    fn a_connection_released_by_exit_is_closed_by_exit_once_enabled() {
        let exit = |agg: &mut Aggregator| {
            agg.apply(&record(5, RecordKind::Release { reason: ReleaseReason::Exit }));
            agg.apply(&state(5, TcpState::Established, TcpState::FinWait1));
        };
        // leaks and top: a process ending with open connections is no finding.
        let mut agg = connected();
        exit(&mut agg);
        assert_eq!(kinds(&agg, 10), []);
        // run: it is, even once the connection has closed and left the table.
        let mut agg = Aggregator::new(100);
        agg.exit_releases.enabled = true;
        agg.apply(&record(1, RecordKind::Connect));
        agg.apply(&state(1, TcpState::SynSent, TcpState::Established));
        exit(&mut agg);
        agg.apply(&record(
            6,
            RecordKind::Close { from: TcpState::FinWait2, reset: false, lifetime_ns: None },
        ));
        let found = detect(&agg, &limits(), 10 * SEC);
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(
            (f.kind, f.pid, f.fd, f.state),
            (FindingKind::ClosedByExit, PID, Some(7), TcpState::Established)
        );
        assert_eq!(f.age, Some(Duration::from_secs(4)));
        // A listener released by exit is not one.
        let mut agg = Aggregator::new(100);
        agg.exit_releases.enabled = true;
        agg.apply(&state(1, TcpState::Close, TcpState::Listen));
        agg.apply(&record(5, RecordKind::Release { reason: ReleaseReason::Exit }));
        assert_eq!(kinds(&agg, 10), []);
    }

    fn inventory(state: TcpState, idle_s: u64, keepalive: bool) -> InventorySocket {
        InventorySocket {
            inode: 99,
            cookie: 1,
            netns: 1,
            state,
            local: endpoints().local,
            remote: endpoints().remote,
            uid: 0,
            idle: Some(Duration::from_secs(idle_s)),
            keepalive: Some(keepalive),
            owners: vec![FdOwner { pid: PID, fd: 7, comm: "client".to_owned() }],
        }
    }

    fn snapshot(sockets: Vec<InventorySocket>) -> Snapshot {
        let now = Instant::now();
        Snapshot {
            sockets,
            taken_at: now,
            finished_at: now,
            namespaces: vec![1],
            warnings: vec![],
            cgroups: Default::default(),
        }
    }

    #[test]
    fn an_accept_at_a_reused_address_is_a_new_socket() {
        // A socket whose release was never seen: closed, still counted as held (a dead-fd).
        let mut agg = connected();
        agg.apply(&record(
            2,
            RecordKind::Close { from: TcpState::Established, reset: true, lifetime_ns: None },
        ));
        // Its memory reused for a child that a server accepts, with no handshake events
        // (leaks' lean mode sends none): a new, ESTABLISHED server socket, not the old one.
        let mut accepted = record(40, RecordKind::Accept { state: Some(TcpState::Established) });
        accepted.pid = Some(PID + 1);
        agg.apply(&accepted);
        let socket = agg.sockets().next().expect("the accepted socket");
        assert_eq!(agg.tracked(), 1);
        assert_eq!(
            (socket.state, socket.direction, socket.pid(), socket.opened_ns()),
            (TcpState::Established, Direction::Passive, Some(PID + 1), Some(40 * SEC))
        );
        assert_eq!(kinds(&agg, 50), vec![]);
    }

    #[test]
    fn an_accepted_child_the_sweep_found_first_is_one_socket() {
        let mut agg = Aggregator::new(100);
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::Established, 0, false)]), SEC);
        assert_eq!(agg.tracked(), 1);
        agg.apply(&record(2, RecordKind::Accept { state: Some(TcpState::Established) }));
        assert_eq!(agg.tracked(), 1, "adopted, not counted twice");
        assert_eq!(agg.sockets().next().map(TrackedSocket::origin), Some(Origin::Events));
    }

    #[test]
    fn peer_closed_and_never_closed_is_close_wait_after_min_age() {
        let mut agg = connected();
        agg.apply(&state(2, TcpState::Established, TcpState::CloseWait));
        assert_eq!(kinds(&agg, 20), vec![]);
        assert_eq!(kinds(&agg, 40), vec![(FindingKind::CloseWait, PID, Some(7))]);
        // close() ends it.
        agg.apply(&record(41, RecordKind::Release { reason: ReleaseReason::Close }));
        assert_eq!(kinds(&agg, 50), vec![]);
    }

    #[test]
    fn a_reset_connection_still_held_is_a_dead_fd_until_released() {
        let mut agg = connected();
        agg.apply(&record(
            2,
            RecordKind::Close { from: TcpState::Established, reset: true, lifetime_ns: Some(SEC) },
        ));
        assert_eq!(kinds(&agg, 40), vec![(FindingKind::DeadFd, PID, Some(7))]);
        agg.apply(&record(41, RecordKind::Release { reason: ReleaseReason::Close }));
        assert_eq!(kinds(&agg, 50), vec![]);
        assert_eq!(agg.tracked(), 0, "closed and released: forgotten");
        assert_eq!(agg.processes[&PID].lifetime_us.len(), 1);
    }

    #[test]
    fn an_unused_client_connection_is_unclosed_and_one_in_use_is_not() {
        let mut agg = connected();
        assert_eq!(kinds(&agg, 40), vec![(FindingKind::Unclosed, PID, Some(7))]);
        // A sweep shows traffic a second ago: a pool in use.
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::Established, 1, false)]), 40 * SEC);
        assert_eq!(kinds(&agg, 40), vec![]);
        // Idle past the limit without keepalive: a ghost, which outranks unclosed.
        agg.apply_inventory(
            &snapshot(vec![inventory(TcpState::Established, 700, false)]),
            41 * SEC,
        );
        assert_eq!(kinds(&agg, 41), vec![(FindingKind::IdleNoKeepalive, PID, Some(7))]);
        // Keepalive on: not a ghost, but still an unused client connection.
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::Established, 700, true)]), 42 * SEC);
        assert_eq!(kinds(&agg, 42), vec![(FindingKind::Unclosed, PID, Some(7))]);
    }

    #[test]
    fn a_sweep_fills_in_the_states_lean_events_leave_out() {
        // shutdown(SHUT_WR): lean events send no FIN_WAIT1/2, so the client still looks
        // ESTABLISHED and unused...
        let mut agg = connected();
        assert_eq!(kinds(&agg, 40), vec![(FindingKind::Unclosed, PID, Some(7))]);
        // ...until a sweep shows FIN_WAIT2: a half-closed socket, no unused connection.
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::FinWait2, 700, false)]), 40 * SEC);
        let socket = agg.sockets().next().expect("tracked");
        assert_eq!((socket.state, socket.state_since_ns), (TcpState::FinWait2, 40 * SEC));
        assert_eq!(kinds(&agg, 41), vec![]);
        // A sweep older than the events read since never moves a socket back.
        let mut agg = connected();
        agg.apply(&state(2, TcpState::Established, TcpState::CloseWait));
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::Established, 0, false)]), 3 * SEC);
        assert_eq!(agg.sockets().next().map(|s| s.state), Some(TcpState::CloseWait));
    }

    #[test]
    fn a_server_side_connection_is_never_unclosed() {
        let mut agg = Aggregator::new(100);
        agg.apply(&state(1, TcpState::Listen, TcpState::SynRecv));
        agg.apply(&state(1, TcpState::SynRecv, TcpState::Established));
        agg.apply(&record(1, RecordKind::Accept { state: Some(TcpState::Established) }));
        assert_eq!(kinds(&agg, 100), vec![]);
        assert_eq!(agg.processes[&PID].opened, 1);
    }

    #[test]
    fn sockets_from_before_tracing_come_from_the_inventory_until_they_go() {
        let mut agg = Aggregator::new(100);
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::CloseWait, 5, false)]), 0);
        let found = detect(&agg, &limits(), 31 * SEC);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind, found[0].fd, found[0].source),
            (FindingKind::CloseWait, Some(7), Origin::Inventory)
        );
        assert_eq!(found[0].comm, "client");
        // Gone from the next sweep: closed while the events could not name it.
        agg.apply_inventory(&snapshot(vec![]), 32 * SEC);
        assert_eq!(agg.tracked(), 0);
    }

    #[test]
    fn an_event_about_an_inventory_socket_adopts_it() {
        let mut agg = Aggregator::new(100);
        agg.apply_inventory(&snapshot(vec![inventory(TcpState::CloseWait, 5, false)]), 0);
        // The kernel reports its release: same addresses, now known by its kernel address.
        agg.apply(&record(2, RecordKind::Release { reason: ReleaseReason::Close }));
        assert_eq!(kinds(&agg, 40), vec![]);
        agg.apply(&state(2, TcpState::CloseWait, TcpState::LastAck));
        agg.apply(&record(
            3,
            RecordKind::Close { from: TcpState::LastAck, reset: false, lifetime_ns: None },
        ));
        assert_eq!(agg.tracked(), 0);
    }

    #[test]
    fn time_wait_churn_reports_rate_and_port_share() {
        let mut agg = Aggregator::new(100);
        for i in 0..=40u64 {
            // 20 per second for 2 s.
            let mut r = record(0, RecordKind::TimeWait { from: TcpState::FinWait2 });
            r.ts_ns = 10 * SEC + i * SEC / 20;
            agg.apply(&r);
        }
        let found = detect(&agg, &limits(), 20 * SEC);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!((f.kind, f.pid, f.count), (FindingKind::TimeWaitChurn, PID, 41));
        assert_eq!(f.remote, Some(endpoints().remote));
        assert_eq!(f.rate_per_s, Some(20.0));
        assert_eq!(f.port_share, Some((20.0 * 60.0 / 28232.0 * 10_000.0_f64).round() / 10_000.0));
        // Below the limit: nothing.
        let relaxed = Limits { time_wait_rate: 25.0, ..limits() };
        assert!(detect(&agg, &relaxed, 20 * SEC).is_empty());
    }

    #[test]
    fn a_full_table_counts_what_it_cannot_track() {
        let mut agg = Aggregator::new(1);
        agg.apply(&record(1, RecordKind::Connect));
        let mut other = record(1, RecordKind::Connect);
        other.skaddr = SK + 64;
        agg.apply(&other);
        assert_eq!((agg.tracked(), agg.evicted), (1, 1));
    }

    #[test]
    fn default_time_wait_rate_holds_a_tenth_of_the_range() {
        let rate = Limits::default_time_wait_rate(28232);
        assert!((rate * TIME_WAIT_SECS - 2823.2).abs() < 1e-6);
    }
}
