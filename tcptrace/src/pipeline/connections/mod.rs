//! Per-socket bookkeeping for every command: turns kernel events into the records the sinks
//! read — who owns each state change, when TIME_WAIT was entered, and each connection's
//! lifetime at close. Pure: unit-tested without root.

mod comms;

use std::sync::Arc;

use comms::Comms;
use foldhash::{HashMap, HashSet};

use crate::{
    container::Cgroup,
    event::{Comm, Endpoints, Event, EventKind, ReleaseReason, TcpState},
    stacks::OpenStack,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    Connect,
    Accept {
        state: Option<TcpState>,
    },
    State {
        old: TcpState,
        new: TcpState,
    },
    Release {
        reason: ReleaseReason,
    },
    /// The full socket went `FIN_WAIT2/CLOSING -> CLOSE` inside tcp_time_wait().
    TimeWait {
        from: TcpState,
    },
    Close {
        from: TcpState,
        reset: bool,
        lifetime_ns: Option<u64>,
    },
    Exit,
}

/// One line of `tcptrace trace` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts_ns: u64,
    pub kind: RecordKind,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// As the kernel keeps it (no allocation per event); `Comm::as_str` for text.
    pub comm: Option<Comm>,
    pub fd: Option<i32>,
    pub skaddr: u64,
    pub endpoints: Option<Endpoints>,
    /// The code path of a connect or accept, when stacks are captured (see `stacks`).
    pub stack: Option<Arc<OpenStack>>,
    /// The process's cgroup and container (see `placement`).
    pub cgroup: Option<Arc<Cgroup>>,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    pid: u32,
    comm: Comm,
    fd: Option<i32>,
}

/// One tracked socket in 24 bytes, its options as sentinels: with a million sockets open, every
/// byte here costs about two (the table doubles its buckets as it grows).
#[derive(Debug, Clone, Copy)]
struct Conn {
    /// `NO_TIME` when the socket existed before tracing started.
    opened_ns: u64,
    /// `NO_PID` until an owner is known.
    pid: u32,
    /// `NO_FD` when unknown (the kernel's descriptors are never negative).
    fd: i32,
    /// The owner's task name, in `Comms`.
    comm: u32,
}

const NO_TIME: u64 = u64::MAX;
/// Above PID_MAX_LIMIT (2^22): never a real pid.
const NO_PID: u32 = u32::MAX;
const NO_FD: i32 = -1;

impl Conn {
    fn unowned(opened_ns: Option<u64>) -> Self {
        // `comm` means nothing without a pid.
        Self { opened_ns: opened_ns.unwrap_or(NO_TIME), pid: NO_PID, fd: NO_FD, comm: 0 }
    }

    fn opened_ns(self) -> Option<u64> {
        (self.opened_ns != NO_TIME).then_some(self.opened_ns)
    }

    fn owner(self, comms: &Comms) -> Option<Owner> {
        (self.pid != NO_PID).then(|| Owner {
            pid: self.pid,
            comm: comms.get(self.comm),
            fd: (self.fd != NO_FD).then_some(self.fd),
        })
    }
}

pub struct Connections {
    conns: HashMap<u64, Conn>,
    comms: Comms,
    /// Live connections per owning process.
    owned: HashMap<u32, usize>,
    /// Processes that opened or released a socket (or that the inventory found holding one) and
    /// have not exited: their exit is reported, so a process that closed its connections before
    /// exiting is still known to have exited; exits of processes that never touched TCP stay
    /// quiet.
    seen: HashSet<u32>,
    capacity: usize,
    /// Sockets not tracked because the table was full.
    pub untracked: u64,
}

impl Connections {
    pub fn new(capacity: usize) -> Self {
        Self {
            conns: HashMap::default(),
            comms: Comms::default(),
            owned: HashMap::default(),
            seen: HashSet::default(),
            capacity,
            untracked: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether `skaddr` is tracked or there is room for it; counts it untracked otherwise.
    fn room_for(&mut self, skaddr: u64) -> bool {
        let room = self.conns.len() < self.capacity || self.conns.contains_key(&skaddr);
        if !room {
            self.untracked += 1;
        }
        room
    }

    /// The owner of a socket, which is tracked from here on when there is room.
    fn owner(&mut self, skaddr: u64, opened_ns: Option<u64>) -> Option<Owner> {
        if !self.room_for(skaddr) {
            return None;
        }
        self.conns.entry(skaddr).or_insert(Conn::unowned(opened_ns)).owner(&self.comms)
    }

    fn set_owner(&mut self, skaddr: u64, opened_ns: u64, owner: Owner) {
        // Its exit is reported even if it closes everything first, or the table is full.
        self.note(owner.pid);
        if !self.room_for(skaddr) {
            return;
        }
        let conn = self.conns.entry(skaddr).or_insert(Conn::unowned(Some(opened_ns)));
        // An owner already there means a socket whose CLOSE was not seen, its memory reused:
        // this is a new one.
        if conn.opened_ns == NO_TIME || conn.pid != NO_PID {
            conn.opened_ns = opened_ns;
        }
        let previous = (conn.pid != NO_PID).then_some((conn.pid, conn.comm));
        conn.pid = owner.pid;
        conn.fd = owner.fd.unwrap_or(NO_FD);
        conn.comm = self.comms.acquire(owner.comm);
        if let Some((pid, comm)) = previous {
            self.comms.release(comm);
            self.disown(pid);
        }
        *self.owned.entry(owner.pid).or_default() += 1;
    }

    fn disown(&mut self, pid: u32) {
        if let Some(count) = self.owned.get_mut(&pid) {
            *count -= 1;
            if *count == 0 {
                self.owned.remove(&pid);
            }
        }
    }

    fn remove(&mut self, skaddr: u64) -> Option<Conn> {
        let conn = self.conns.remove(&skaddr)?;
        if conn.pid != NO_PID {
            self.comms.release(conn.comm);
            self.disown(conn.pid);
        }
        Some(conn)
    }

    /// Processes the inventory found holding sockets: their exits are reported too.
    pub fn note_holders(&mut self, pids: impl IntoIterator<Item = u32>) {
        for pid in pids {
            self.note(pid);
        }
    }

    /// Remembers a process whose exit must be reported, within the table's bound (a process
    /// beyond it is reported exited only if it still owns a connection).
    fn note(&mut self, pid: u32) {
        if self.seen.len() < self.capacity {
            self.seen.insert(pid);
        }
    }

    /// Applies one kernel event and appends the records it produces to `out`.
    pub fn apply(&mut self, event: &Event, out: &mut Vec<Record>) {
        let current = Record {
            ts_ns: event.ts_ns,
            kind: RecordKind::Connect,
            pid: Some(event.pid),
            tid: Some(event.tid),
            comm: Some(event.comm),
            fd: event.fd,
            skaddr: event.skaddr,
            endpoints: event.endpoints,
            stack: None,
            cgroup: None,
        };
        let opener = || Owner { pid: event.pid, comm: event.comm, fd: event.fd };
        match event.kind {
            EventKind::Connect => {
                self.set_owner(event.skaddr, event.ts_ns, opener());
                out.push(current);
            }
            EventKind::Accept { state } => {
                if event.skaddr != 0 {
                    self.set_owner(event.skaddr, event.ts_ns, opener());
                }
                out.push(Record { kind: RecordKind::Accept { state }, ..current });
            }
            EventKind::Release { reason, .. } => {
                // A process that only closes what it inherited; not the releases its exit
                // makes, which follow the exit's own record.
                if reason != ReleaseReason::Exit {
                    self.note(event.pid);
                }
                out.push(Record { kind: RecordKind::Release { reason }, ..current });
            }
            // Only the symbolizer cares (see `stacks`).
            EventKind::Exec => {}
            EventKind::Exit => {
                // `|`, not `||`: the pid leaves `seen` either way.
                if self.seen.remove(&event.pid) | self.owned.contains_key(&event.pid) {
                    out.push(Record { kind: RecordKind::Exit, fd: None, ..current });
                }
            }
            EventKind::State { old: TcpState::Close, new: TcpState::Listen, .. } => {
                self.set_owner(event.skaddr, event.ts_ns, opener());
                out.push(Record {
                    kind: RecordKind::State { old: TcpState::Close, new: TcpState::Listen },
                    ..current
                });
            }
            EventKind::State { old, new, reset } => {
                // The passive child is created (LISTEN -> SYN_RECV) when the handshake completes.
                let created = (old == TcpState::Listen).then_some(event.ts_ns);
                let owner = self.owner(event.skaddr, created);
                // State changes run in softirq context: show the owner, not the interrupted task.
                let attributed = Record {
                    pid: owner.as_ref().map(|o| o.pid).or(event.owner_pid),
                    tid: None,
                    comm: owner.as_ref().map(|o| o.comm),
                    fd: owner.as_ref().and_then(|o| o.fd).or(event.fd),
                    ..current
                };
                if new != TcpState::Close {
                    out.push(Record { kind: RecordKind::State { old, new }, ..attributed });
                    return;
                }
                let conn = self.remove(event.skaddr);
                if !reset && matches!(old, TcpState::FinWait2 | TcpState::Closing) {
                    out.push(Record {
                        kind: RecordKind::TimeWait { from: old },
                        ..attributed.clone()
                    });
                }
                let lifetime_ns =
                    conn.and_then(Conn::opened_ns).map(|opened| event.ts_ns.saturating_sub(opened));
                out.push(Record {
                    kind: RecordKind::Close { from: old, reset, lifetime_ns },
                    ..attributed
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;

    fn event(ts_ns: u64, pid: u32, kind: EventKind) -> Event {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"cli");
        Event {
            ts_ns,
            skaddr: 0xffff_0001,
            pid,
            tid: pid,
            comm: Comm::new(comm),
            owner_pid: None,
            fd: Some(5),
            endpoints: None,
            owner_lost: false,
            stacks: Default::default(),
            exec_path: None,
            cgroup: None,
            interp: None,
            kind,
        }
    }

    fn state(ts: u64, old: TcpState, new: TcpState, reset: bool) -> Event {
        // Softirq context: the interrupted task is unrelated (pid 999).
        let mut e = event(ts, 999, EventKind::State { old, new, reset });
        e.fd = None;
        e
    }

    fn run(events: &[Event]) -> Vec<Record> {
        let mut conns = Connections::new(16);
        let mut out = Vec::new();
        for e in events {
            conns.apply(e, &mut out);
        }
        out
    }

    #[test]
    fn active_close_attributes_state_changes_and_reports_time_wait_and_lifetime() {
        use TcpState::*;
        let out = run(&[
            event(1_000, 10, EventKind::Connect),
            state(2_000, SynSent, Established, false),
            event(5_000, 10, EventKind::Release { reason: ReleaseReason::Close, state: None }),
            state(5_100, Established, FinWait1, false),
            state(5_200, FinWait1, FinWait2, false),
            state(5_300, FinWait2, Close, false),
        ]);
        let kinds: Vec<_> = out.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                RecordKind::Connect,
                RecordKind::State { old: SynSent, new: Established },
                RecordKind::Release { reason: ReleaseReason::Close },
                RecordKind::State { old: Established, new: FinWait1 },
                RecordKind::State { old: FinWait1, new: FinWait2 },
                RecordKind::TimeWait { from: FinWait2 },
                RecordKind::Close { from: FinWait2, reset: false, lifetime_ns: Some(4_300) },
            ]
        );
        // Softirq changes are shown with the owner (pid 10, fd 5), not the interrupted pid 999.
        assert!(out.iter().all(|r| r.pid == Some(10)));
        assert_eq!(out[1].fd, Some(5));
        assert_eq!(out[1].comm.as_ref().map(Comm::as_str).as_deref(), Some("cli"));
    }

    #[test]
    fn reset_is_a_close_not_a_time_wait() {
        use TcpState::*;
        let out = run(&[event(0, 10, EventKind::Connect), state(9, FinWait2, Close, true)]);
        assert_eq!(
            out[1].kind,
            RecordKind::Close { from: FinWait2, reset: true, lifetime_ns: Some(9) }
        );
    }

    #[test]
    fn passive_open_lifetime_starts_at_the_handshake() {
        use TcpState::*;
        let out = run(&[
            state(100, Listen, SynRecv, false),
            state(110, SynRecv, Established, false),
            event(500, 20, EventKind::Accept { state: Some(Established) }),
            state(900, CloseWait, LastAck, false),
            state(950, LastAck, Close, false),
        ]);
        assert_eq!(out[0].pid, None, "owner unknown before accept()");
        assert_eq!(
            out[4].kind,
            RecordKind::Close { from: LastAck, reset: false, lifetime_ns: Some(850) }
        );
        assert_eq!(out[4].pid, Some(20));
    }

    #[test]
    fn sockets_from_before_the_trace_have_no_lifetime_and_exit_is_reported_only_for_owners() {
        use TcpState::*;
        let out = run(&[event(0, 77, EventKind::Exit), state(10, Established, Close, true)]);
        assert_eq!(out.len(), 1, "exit of a process without connections is not shown");
        assert_eq!(
            out[0].kind,
            RecordKind::Close { from: Established, reset: true, lifetime_ns: None }
        );

        let out = run(&[event(0, 10, EventKind::Connect), event(5, 10, EventKind::Exit)]);
        assert_eq!(out[1].kind, RecordKind::Exit);
    }

    #[test]
    fn a_process_that_closed_its_connections_before_exiting_is_reported_exited() {
        use TcpState::*;
        let mut conns = Connections::new(16);
        let mut out = Vec::new();
        conns.apply(&event(0, 10, EventKind::Connect), &mut out);
        conns.apply(&state(5, Established, Close, false), &mut out);
        conns.apply(&event(9, 10, EventKind::Exit), &mut out);
        assert_eq!(out.last().map(|r| &r.kind), Some(&RecordKind::Exit), "{out:#?}");
        // Once: a pid reused by a process that never used TCP stays quiet.
        out.clear();
        conns.apply(&event(20, 10, EventKind::Exit), &mut out);
        assert!(out.is_empty(), "{out:#?}");
        // A process the inventory found holding a socket.
        conns.note_holders([33]);
        conns.apply(&event(30, 33, EventKind::Exit), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_full_table_counts_untracked_sockets() {
        let mut conns = Connections::new(1);
        let mut out = Vec::new();
        let mut second = event(0, 1, EventKind::Connect);
        second.skaddr = 2;
        conns.apply(&event(0, 1, EventKind::Connect), &mut out);
        conns.apply(&second, &mut out);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns.untracked, 1);
        assert_eq!(out.len(), 2, "events are still printed");
    }
}
