//! The aggregator over long runs and hostile input (issue 13): exited processes folded and
//! freed, listeners counted once, sockets whose end was lost, evictions counted once.

use std::{net::SocketAddr, time::Instant};

use super::*;
use crate::{
    event::{Comm, Endpoints, ReleaseReason},
    inventory::{FdOwner, InventorySocket},
};

const SEC: u64 = 1_000_000_000;
const SERVER: &str = "10.0.0.2:80";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn record(ts_ns: u64, pid: u32, comm: &str, skaddr: u64, kind: RecordKind) -> Record {
    Record {
        ts_ns,
        kind,
        pid: Some(pid),
        tid: Some(pid),
        comm: Some(Comm::from(comm)),
        fd: Some(3),
        skaddr,
        endpoints: Some(Endpoints {
            local: SocketAddr::new(addr("10.0.0.1:0").ip(), 30_000 + (skaddr % 30_000) as u16),
            remote: addr(SERVER),
        }),
        stack: None,
        cgroup: None,
    }
}

fn state(old: TcpState, new: TcpState) -> RecordKind {
    RecordKind::State { old, new }
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

fn inventory(inode: u64, state: TcpState, local: &str, remote: &str, pid: u32) -> InventorySocket {
    InventorySocket {
        inode,
        cookie: inode,
        netns: 1,
        state,
        local: addr(local),
        remote: addr(remote),
        uid: 0,
        idle: None,
        keepalive: None,
        owners: vec![FdOwner { pid, fd: 3, comm: "server".to_owned() }],
    }
}

/// A process that connects, exits holding the connection (its exit releases it), and whose
/// connection then closes through TIME_WAIT: what `curl` in a loop does.
fn short_lived(agg: &mut Aggregator, pid: u32, comm: &str, t: u64) {
    let sk = 0xffff_0000 + u64::from(pid) * 64;
    let r = |dt: u64, kind| record(t + dt, pid, comm, sk, kind);
    agg.apply(&r(0, RecordKind::Connect));
    agg.apply(&r(50_000, state(TcpState::SynSent, TcpState::Established)));
    agg.apply(&r(100_000, RecordKind::Exit));
    agg.apply(&r(100_000, RecordKind::Release { reason: ReleaseReason::Exit }));
    agg.apply(&r(100_000, state(TcpState::Established, TcpState::FinWait1)));
    agg.apply(&r(150_000, state(TcpState::FinWait1, TcpState::FinWait2)));
    agg.apply(&r(200_000, RecordKind::TimeWait { from: TcpState::FinWait2 }));
    agg.apply(&r(
        200_000,
        RecordKind::Close { from: TcpState::FinWait2, reset: false, lifetime_ns: Some(200_000) },
    ));
}

#[test]
fn exited_processes_are_folded_by_name_and_freed() {
    let mut agg = Aggregator::new(10_000);
    for pid in 1_000..4_000 {
        short_lived(&mut agg, pid, "curl", u64::from(pid) * SEC / 1_000);
    }
    // Without sweeps (as in `run`), folds come in batches: what waits is bounded.
    assert!(agg.processes.len() <= FOLD_BATCH, "{} processes kept", agg.processes.len());
    agg.apply_inventory(&snapshot(vec![]), 10 * SEC);
    assert_eq!(agg.processes.len(), 0);
    assert!(agg.churn.is_empty(), "single TIME_WAIT entries of folded processes are forgotten");
    let curl = &agg.folded.by_comm["curl"];
    let s = &curl.stats;
    assert_eq!(
        (curl.processes, s.opened, s.released, s.time_wait_entries),
        (3_000, 3_000, 3_000, 3_000)
    );
    assert_eq!((s.lifetime_us.len(), s.connect_latency_us.len()), (3_000, 3_000));
    let lifetime = Percentiles::of(&s.lifetime_us).unwrap();
    assert_eq!((lifetime.p50, lifetime.max), (0.2, 0.2));
}

#[test]
fn a_process_that_holds_a_socket_or_owes_a_finding_is_kept() {
    let mut agg = Aggregator::new(100);
    // Exits, but a socket it shared with a child is still held in its name.
    agg.apply(&record(0, 7, "holder", 1, RecordKind::Connect));
    agg.apply(&record(1, 7, "holder", 1, RecordKind::Exit));
    // Exits after two TIME_WAIT entries toward one remote: a rate, maybe a finding.
    for sk in [2, 3] {
        agg.apply(&record(0, 8, "churner", sk, RecordKind::Connect));
        agg.apply(&record(
            1,
            8,
            "churner",
            sk,
            RecordKind::Release { reason: ReleaseReason::Close },
        ));
        agg.apply(&record(2, 8, "churner", sk, RecordKind::TimeWait { from: TcpState::FinWait2 }));
        agg.apply(&record(
            2,
            8,
            "churner",
            sk,
            RecordKind::Close { from: TcpState::FinWait2, reset: false, lifetime_ns: Some(2) },
        ));
    }
    agg.apply(&record(3, 8, "churner", 0, RecordKind::Exit));
    // Alive: never folded.
    agg.apply(&record(0, 9, "alive", 4, RecordKind::Connect));
    let held = |inode, sk: u16, pid| {
        let local = format!("10.0.0.1:{}", 30_000 + sk);
        inventory(inode, TcpState::SynSent, &local, SERVER, pid)
    };
    agg.apply_inventory(&snapshot(vec![held(100, 1, 7), held(101, 4, 9)]), 10 * SEC);
    let mut kept: Vec<u32> = agg.processes.keys().copied().collect();
    kept.sort_unstable();
    assert_eq!(kept, [7, 8, 9]);
    assert!(agg.processes[&7].exited && agg.processes[&8].exited);
    assert!(agg.folded.by_comm.is_empty());
}

#[test]
fn records_after_a_fold_add_to_the_name_and_a_reused_pid_is_a_new_process() {
    let mut agg = Aggregator::new(100);
    short_lived(&mut agg, 42, "curl", 0);
    agg.fold_exited();
    assert!(agg.processes.is_empty());
    // A close of a socket the table did not hold (it was full), named after the folded pid.
    agg.apply(&record(
        SEC,
        42,
        "curl",
        999,
        RecordKind::Close { from: TcpState::FinWait2, reset: false, lifetime_ns: Some(1_000) },
    ));
    agg.apply(&record(SEC, 42, "curl", 999, RecordKind::TimeWait { from: TcpState::FinWait2 }));
    assert!(agg.processes.is_empty(), "no entry for a process that is gone");
    let curl = &agg.folded.by_comm["curl"].stats;
    assert_eq!((curl.lifetime_us.len(), curl.time_wait_entries), (2, 2));
    assert!(agg.churn.is_empty());
    // The kernel gives the pid to a new process.
    agg.apply(&record(2 * SEC, 42, "wget", 5, RecordKind::Connect));
    assert_eq!((agg.processes[&42].comm.as_str(), agg.processes[&42].opened), ("wget", 1));
}

#[test]
fn a_pid_reused_before_its_process_was_folded_is_a_new_process() {
    let mut agg = Aggregator::new(100);
    // Exits while a child it forked still holds its connection: not folded.
    agg.apply(&record(0, 42, "curl", 1, RecordKind::Connect));
    agg.apply(&record(SEC, 42, "curl", 0, RecordKind::Exit));
    agg.fold_exited();
    assert!(agg.processes[&42].exited);
    // A new process with that pid opens a connection.
    agg.apply(&record(2 * SEC, 42, "wget", 2, RecordKind::Connect));
    let new = &agg.processes[&42];
    assert_eq!((new.comm.as_str(), new.opened, new.exited), ("wget", 1, false));
    assert_eq!(agg.folded.by_comm["curl"].stats.opened, 1);
    // The new process is not folded for the old one's exit.
    agg.fold_exited();
    assert!(agg.processes.contains_key(&42));
}

#[test]
fn an_open_the_full_table_cannot_track_is_still_counted() {
    let mut agg = Aggregator::new(1);
    agg.apply(&record(0, 7, "client", 1, RecordKind::Connect));
    agg.apply(&record(0, 7, "client", 2, RecordKind::Connect));
    assert_eq!((agg.tracked(), agg.evicted, agg.processes[&7].opened), (1, 1, 2));
    assert_eq!(agg.remotes.by_remote[&addr(SERVER)].connections, 2);
}

#[test]
fn a_server_closing_first_counts_its_time_wait_entries_without_a_counter_per_client_port() {
    let mut agg = Aggregator::new(64);
    for i in 0..10u64 {
        let sk = 0xaaaa_0000 + i * 64;
        let mut r = |kind| {
            let mut r = record(i * SEC, 5, "server", sk, kind);
            r.endpoints = Some(Endpoints {
                local: addr(SERVER),
                remote: SocketAddr::new(addr("10.0.0.1:0").ip(), 40_000 + i as u16),
            });
            agg.apply(&r);
        };
        r(RecordKind::Accept { state: Some(TcpState::Established) });
        r(RecordKind::Release { reason: ReleaseReason::Close });
        r(RecordKind::TimeWait { from: TcpState::FinWait2 });
    }
    // A client's churn toward one service is still counted per remote.
    short_lived(&mut agg, 6, "client", 0);
    short_lived(&mut agg, 6, "client", SEC);
    assert_eq!(agg.processes[&5].time_wait_entries, 10);
    assert_eq!(agg.remotes.by_remote.len(), 1, "{:?}", agg.remotes.by_remote);
    assert_eq!(agg.remotes.by_remote[&addr(SERVER)].time_wait_entries, 2);
    assert_eq!(agg.churn.pids_with_rates(), HashSet::from([6]));
}

#[test]
fn a_process_costs_little_memory() {
    let mut stats = ProcessStats::new("curl".to_owned());
    stats.record_lifetime(1_500_000);
    stats.record_connect_latency(40_000);
    let heap = stats.lifetime_us.heap_bytes() + stats.connect_latency_us.heap_bytes();
    // Two 3-digit HdrHistograms from 1 µs to a day were 2 × 221 KB.
    assert!(
        size_of::<ProcessStats>() + heap <= 256,
        "{} + {heap} bytes",
        size_of::<ProcessStats>()
    );
}

#[test]
fn a_listener_opened_during_the_trace_is_one_socket_after_a_sweep() {
    let mut agg = Aggregator::new(100);
    let mut listen = record(0, 7, "server", 1, state(TcpState::Close, TcpState::Listen));
    listen.endpoints = Some(Endpoints { local: addr("0.0.0.0:8080"), remote: addr("0.0.0.0:0") });
    agg.apply(&listen);
    let found = inventory(5, TcpState::Listen, "0.0.0.0:8080", "0.0.0.0:0", 7);
    agg.apply_inventory(&snapshot(vec![found.clone()]), SEC);
    agg.apply_inventory(&snapshot(vec![found]), 2 * SEC);
    assert_eq!(agg.tracked(), 1);
    assert_eq!(agg.held_by_process()[&7], HashMap::from([(TcpState::Listen, 1)]));
    // Closing it releases no connection: `released` stays within `opened`.
    agg.apply(&Record {
        kind: RecordKind::Release { reason: ReleaseReason::Close },
        ..listen.clone()
    });
    agg.apply(&Record {
        kind: RecordKind::Close { from: TcpState::Listen, reset: false, lifetime_ns: None },
        ..listen
    });
    assert_eq!((agg.processes[&7].opened, agg.processes[&7].released), (0, 0));
    assert_eq!(agg.tracked(), 0);
}

#[test]
fn a_held_socket_a_sweep_no_longer_finds_has_ended() {
    // Its release and close were lost: the process no longer holds it.
    let mut agg = Aggregator::new(100);
    agg.apply(&record(0, 7, "client", 1, RecordKind::Connect));
    agg.apply(&record(0, 7, "client", 1, state(TcpState::SynSent, TcpState::Established)));
    // A dead-fd is in no kernel table, only in its descriptor: kept.
    agg.apply(&record(0, 7, "client", 2, RecordKind::Connect));
    agg.apply(&record(
        SEC,
        7,
        "client",
        2,
        RecordKind::Close { from: TcpState::SynSent, reset: true, lifetime_ns: None },
    ));
    // A sweep that could not read everything proves nothing.
    let mut partial = snapshot(vec![]);
    partial.warnings.push("network namespace 1: dump failed".to_owned());
    agg.apply_inventory(&partial, 2 * SEC);
    assert_eq!((agg.tracked(), agg.ended_unseen), (2, 0));
    // Nor does one whose addresses never matched the inventory's.
    agg.apply_inventory(&snapshot(vec![]), 2 * SEC);
    assert_eq!((agg.tracked(), agg.ended_unseen), (2, 0));
    let established = inventory(5, TcpState::Established, "10.0.0.1:30001", SERVER, 7);
    agg.apply_inventory(&snapshot(vec![established]), 2 * SEC);
    agg.apply_inventory(&snapshot(vec![]), 3 * SEC);
    assert_eq!((agg.tracked(), agg.ended_unseen), (1, 1));
    assert_eq!(agg.held_by_process()[&7], HashMap::from([(TcpState::Close, 1)]));
    // Opened after the sweep began: not in it, not gone.
    agg.apply(&record(5 * SEC, 7, "client", 3, RecordKind::Connect));
    agg.apply_inventory(&snapshot(vec![]), 4 * SEC);
    assert_eq!(agg.tracked(), 2);
    // Once its process exited, even an incomplete sweep shows what it held is gone.
    agg.apply(&record(6 * SEC, 7, "client", 0, RecordKind::Exit));
    agg.apply_inventory(&partial, 7 * SEC);
    assert_eq!((agg.tracked(), agg.ended_unseen), (1, 2));
    assert!(!agg.held_by_process()[&7].contains_key(&TcpState::SynSent));
}

#[test]
fn a_socket_held_after_its_process_exited_belongs_to_the_process_holding_it() {
    let mut agg = Aggregator::new(100);
    agg.apply(&record(0, 7, "parent", 1, RecordKind::Connect));
    agg.apply(&record(SEC, 7, "parent", 0, RecordKind::Exit));
    let mut held = inventory(5, TcpState::SynSent, "10.0.0.1:30001", SERVER, 8);
    held.owners[0].comm = "child".to_owned();
    agg.apply_inventory(&snapshot(vec![held]), 2 * SEC);
    assert_eq!(agg.held_by_process().keys().copied().collect::<Vec<_>>(), [8]);
    assert!(!agg.processes.contains_key(&7), "the parent holds nothing: folded");
    assert_eq!(agg.processes[&8].comm, "child");
}

#[test]
fn evicted_counts_each_socket_once() {
    // Sweeps: 3 sockets in a table of 1, found by 4 sweeps.
    let mut agg = Aggregator::new(1);
    let sockets: Vec<InventorySocket> = (1..=3)
        .map(|i| {
            inventory(i, TcpState::Established, &format!("10.0.0.1:{}", 40_000 + i), SERVER, 7)
        })
        .collect();
    for sweep in 1..=4 {
        agg.apply_inventory(&snapshot(sockets.clone()), sweep * SEC);
    }
    assert_eq!((agg.tracked(), agg.evicted), (1, 2));
    // Events: a connection the full table cannot take, seen in four records.
    let mut agg = Aggregator::new(1);
    agg.apply(&record(0, 7, "client", 1, RecordKind::Connect));
    let r = |kind| record(SEC, 7, "client", 2, kind);
    agg.apply(&r(RecordKind::Connect));
    agg.apply(&r(state(TcpState::SynSent, TcpState::Established)));
    agg.apply(&r(RecordKind::Release { reason: ReleaseReason::Close }));
    agg.apply(&r(state(TcpState::Established, TcpState::FinWait1)));
    agg.apply(&r(RecordKind::Close { from: TcpState::FinWait2, reset: false, lifetime_ns: None }));
    assert_eq!(agg.evicted, 1);
    // Its address reused by a new socket: another one.
    agg.apply(&r(RecordKind::Connect));
    assert_eq!(agg.evicted, 2);
    // A release of a socket never seen is no eviction: it would not be tracked anyway.
    agg.apply(&record(SEC, 7, "client", 9, RecordKind::Release { reason: ReleaseReason::Close }));
    assert_eq!(agg.evicted, 2);
}
