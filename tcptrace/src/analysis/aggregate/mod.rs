//! The lifecycle aggregator behind `tcptrace leaks` and `tcptrace top`: every socket's state,
//! owner and release, per-process counts and distributions, and TIME_WAIT churn. It is fed the
//! records of `connections` (which attributes each event to the socket's owner) and the
//! inventory sweeps, and it is pure: unit-tested without root.
//!
//! A socket stays in the table until it is both protocol-closed and released, so a descriptor
//! that outlives its connection (`dead-fd`) is still known. Memory is bounded by `capacity`;
//! sockets beyond it are not tracked and counted in `evicted`, which every report shows.

mod churn;
mod exits;
mod process;
mod remotes;
mod socket;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

pub use churn::{Churn, ChurnCounter};
pub use exits::{ExitRelease, ExitReleases};
use foldhash::HashMap as FastMap;
pub use process::{Percentiles, ProcessStats};
pub use remotes::{RemoteStats, Remotes};
pub use socket::{Direction, Origin, TrackedSocket};

use crate::{
    event::{Comm, ReleaseReason, TcpState},
    inventory::{InventorySocket, Snapshot},
    pipeline::{
        Sink,
        connections::{Record, RecordKind},
    },
};

type Tuple = (SocketAddr, SocketAddr);

/// The pipeline of `leaks`, `top` and `run` feeds the aggregator.
impl Sink for Aggregator {
    fn record(&mut self, record: &Record) -> std::io::Result<()> {
        self.apply(record);
        Ok(())
    }

    fn inventory(&mut self, snapshot: &Snapshot, taken_ns: u64) {
        self.apply_inventory(snapshot, taken_ns);
    }
}

pub struct Aggregator {
    /// Sockets known from events, by kernel address.
    sockets: FastMap<u64, TrackedSocket>,
    /// Sockets only the inventory knows (they existed before tracing), by inode, until an
    /// event names their kernel address.
    inventory_only: FastMap<u64, TrackedSocket>,
    inventory_by_tuple: FastMap<Tuple, u64>,
    pub processes: FastMap<u32, ProcessStats>,
    pub churn: Churn,
    pub remotes: Remotes,
    pub exit_releases: ExitReleases,
    capacity: usize,
    /// Sockets not tracked because the table was full.
    pub evicted: u64,
    pub sweeps: u64,
}

impl Aggregator {
    pub fn new(capacity: usize) -> Self {
        Self {
            sockets: FastMap::default(),
            inventory_only: FastMap::default(),
            inventory_by_tuple: FastMap::default(),
            processes: FastMap::default(),
            churn: Churn::default(),
            remotes: Remotes::default(),
            exit_releases: ExitReleases::default(),
            capacity,
            evicted: 0,
            sweeps: 0,
        }
    }

    pub fn tracked(&self) -> usize {
        self.sockets.len() + self.inventory_only.len()
    }

    /// Every socket tcptrace knows of.
    pub fn sockets(&self) -> impl Iterator<Item = &TrackedSocket> {
        self.sockets.values().chain(self.inventory_only.values())
    }

    /// The sockets each process holds now, by state.
    pub fn held_by_process(&self) -> HashMap<u32, HashMap<TcpState, u64>> {
        let mut held: HashMap<u32, HashMap<TcpState, u64>> = HashMap::new();
        for socket in self.sockets().filter(|s| s.held()) {
            if let Some(pid) = socket.pid() {
                *held.entry(pid).or_default().entry(socket.state).or_default() += 1;
            }
        }
        held
    }

    fn full(&self) -> bool {
        self.tracked() >= self.capacity
    }

    fn process(&mut self, pid: u32, comm: Option<&str>) -> &mut ProcessStats {
        let stats = self.processes.entry(pid).or_insert_with(|| ProcessStats::new(String::new()));
        if let Some(comm) = comm
            && stats.comm != comm
        {
            comm.clone_into(&mut stats.comm);
        }
        stats
    }

    /// The socket at `skaddr`: known, adopted from the inventory by its addresses, or new (when
    /// `create` allows and there is room).
    fn socket(
        &mut self,
        record: &Record,
        create: impl FnOnce() -> Option<TrackedSocket>,
    ) -> Option<&mut TrackedSocket> {
        if !self.sockets.contains_key(&record.skaddr) {
            let adopted = record
                .endpoints
                .and_then(|e| self.inventory_by_tuple.remove(&(e.local, e.remote)))
                .and_then(|inode| self.inventory_only.remove(&inode));
            let socket = match adopted {
                Some(socket) => socket,
                None if self.full() => {
                    self.evicted += 1;
                    return None;
                }
                None => create()?,
            };
            self.sockets.insert(record.skaddr, socket);
        }
        self.sockets.get_mut(&record.skaddr)
    }

    /// Applies one record of `connections`.
    pub fn apply(&mut self, record: &Record) {
        match record.kind {
            RecordKind::Connect => self.open(record, Direction::Active, TcpState::SynSent),
            RecordKind::Accept { state } => {
                if record.skaddr != 0 {
                    self.open(record, Direction::Passive, state.unwrap_or(TcpState::Established));
                }
            }
            RecordKind::State { old: TcpState::Close, new: TcpState::Listen } => {
                self.open(record, Direction::Listen, TcpState::Listen);
            }
            RecordKind::State { old, new } => self.state_change(record, old, new),
            RecordKind::TimeWait { .. } => self.time_wait(record),
            RecordKind::Close { lifetime_ns, .. } => self.protocol_close(record, lifetime_ns),
            RecordKind::Release { reason } => self.release(record, reason),
            RecordKind::Exit => {
                if let Some(pid) = record.pid
                    && let Some(stats) = self.processes.get_mut(&pid)
                {
                    stats.exited = true;
                }
            }
        }
    }

    fn state_change(&mut self, record: &Record, old: TcpState, new: TcpState) {
        let ts = record.ts_ns;
        let created = || {
            // A listener's child is opened by the handshake; anything else existed
            // before tracing (or its open was filtered out).
            Some(if old == TcpState::Listen {
                TrackedSocket::new(Origin::Events, Direction::Passive, old, ts)
            } else {
                TrackedSocket::new(Origin::Inventory, Direction::Unknown, old, ts)
            })
        };
        let Some(socket) = self.socket(record, created) else { return };
        socket.set_state(new, ts);
        set_endpoints(socket, record);
        if socket.pid().is_none() {
            socket.set_pid(record.pid);
            socket.set_fd(record.fd);
        }
        let latency = (old == TcpState::SynSent && new == TcpState::Established)
            .then(|| socket.take_connect_started_ns())
            .flatten()
            .map(|started| ts.saturating_sub(started));
        let pid = socket.pid();
        if let (Some(latency), Some(pid)) = (latency, pid) {
            self.process(pid, None).record_connect_latency(latency);
        }
    }

    /// The full socket went to TIME_WAIT: churn per (process, remote).
    fn time_wait(&mut self, record: &Record) {
        let ts = record.ts_ns;
        let known = self.sockets.get(&record.skaddr);
        let pid = known.and_then(TrackedSocket::pid).or(record.pid);
        let remote = record.endpoints.map(|e| e.remote).or(known.and_then(|s| s.remote()));
        let stack = known.and_then(|s| s.stack.clone());
        if let Some(remote) = remote {
            self.remotes.time_wait(remote);
        }
        if let Some(pid) = pid {
            self.process(pid, None).time_wait_entries += 1;
            if let Some(remote) = remote {
                self.churn.record(pid, remote, ts, stack);
            }
        }
    }

    /// TCP reached CLOSE: the lifetime, and the socket leaves if it was released too.
    fn protocol_close(&mut self, record: &Record, lifetime_ns: Option<u64>) {
        let ts = record.ts_ns;
        let pid = match self.sockets.get_mut(&record.skaddr) {
            Some(socket) => {
                socket.set_state(TcpState::Close, ts);
                let (pid, released) = (socket.pid(), socket.released());
                if released {
                    self.sockets.remove(&record.skaddr);
                }
                pid
            }
            // Not tracked (table full): the owner the record names still gets the lifetime.
            None => record.pid,
        };
        if let (Some(pid), Some(lifetime)) = (pid, lifetime_ns) {
            self.process(pid, None).record_lifetime(lifetime);
        }
    }

    /// The process gave up its last descriptor: the socket leaves if TCP closed it too.
    fn release(&mut self, record: &Record, reason: ReleaseReason) {
        let ts = record.ts_ns;
        let Some(socket) = self.socket(record, || None) else {
            // Never seen open and not in the inventory: count the release only.
            if let Some(pid) = record.pid {
                self.process(pid, comm(record).as_deref()).released += 1;
            }
            return;
        };
        socket.set_released(true);
        set_endpoints(socket, record);
        let by_exit = (reason == ReleaseReason::Exit).then(|| socket.clone());
        if socket.state == TcpState::Close {
            self.sockets.remove(&record.skaddr);
        }
        if let Some(exited) = by_exit
            && let Some(pid) = record.pid.or(exited.pid())
        {
            self.exit_releases.record(&exited, pid, record.fd, ts);
        }
        if let Some(pid) = record.pid {
            self.process(pid, comm(record).as_deref()).released += 1;
        }
    }

    fn open(&mut self, record: &Record, direction: Direction, state: TcpState) {
        let ts = record.ts_ns;
        let existing = self.sockets.remove(&record.skaddr);
        // The sweep that found it before this event did (a child accepted between the two):
        // the same socket, now known by its address.
        if !self.inventory_by_tuple.is_empty()
            && let Some(e) = record.endpoints
            && let Some(inode) = self.inventory_by_tuple.remove(&(e.local, e.remote))
        {
            self.inventory_only.remove(&inode);
        }
        let mut socket = match existing {
            // accept() of a child whose handshake was seen (`trace`'s events; lean ones have no
            // handshake): it was opened then.
            Some(mut s) if direction == Direction::Passive && s.is_handshake_child() => {
                s.direction = direction;
                s.set_state(state, ts);
                s
            }
            // Anything else at this address is a socket whose end was not seen, and whose
            // memory the kernel reused: a new socket replaces it.
            _ if self.full() => {
                self.evicted += 1;
                return;
            }
            _ => TrackedSocket::new(Origin::Events, direction, state, ts),
        };
        socket.set_pid(record.pid);
        socket.set_fd(record.fd);
        socket.set_released(false);
        socket.stack.clone_from(&record.stack);
        set_endpoints(&mut socket, record);
        if direction == Direction::Active {
            // A new socket (see above): connect() was called at its first sight.
            socket.start_connect();
            if let Some(remote) = socket.remote() {
                self.remotes.connect(remote);
            }
        }
        self.sockets.insert(record.skaddr, socket);
        if let Some(pid) = record.pid
            && direction != Direction::Listen
        {
            self.process(pid, comm(record).as_deref()).opened += 1;
        }
    }

    /// Applies an inventory sweep taken at `now_ns`: refreshes idle times and keepalive of
    /// known sockets, learns the sockets that existed before tracing, and forgets inventory
    /// sockets that are gone.
    pub fn apply_inventory(&mut self, snapshot: &Snapshot, now_ns: u64) {
        self.sweeps += 1;
        let by_tuple: HashMap<Tuple, &InventorySocket> = snapshot
            .sockets
            .iter()
            // TIME_WAIT sockets have no owner left; listeners count as open sockets.
            .filter(|s| s.state != TcpState::TimeWait)
            .map(|s| ((s.local, s.remote), s))
            .collect();
        let mut matched: HashSet<u64> = HashSet::new();
        for socket in self.sockets.values_mut() {
            let (Some(local), Some(remote)) = (socket.local(), socket.remote()) else { continue };
            if let Some(found) = by_tuple.get(&(local, remote)) {
                refresh(socket, found, now_ns);
                if let Some(state) = unsent_state(socket.state, found.state) {
                    socket.set_state(state, now_ns);
                }
                if socket.pid().is_none()
                    && let Some(owner) = found.owners.first()
                {
                    socket.set_pid(Some(owner.pid));
                    socket.set_fd(Some(owner.fd));
                }
                matched.insert(found.inode);
            }
        }

        let mut seen: HashSet<u64> = HashSet::new();
        for found in by_tuple.values() {
            if found.inode == 0 || matched.contains(&found.inode) {
                continue;
            }
            let Some(owner) = found.owners.first() else { continue };
            seen.insert(found.inode);
            if !self.inventory_only.contains_key(&found.inode) {
                if self.full() {
                    self.evicted += 1;
                    continue;
                }
                let mut socket =
                    TrackedSocket::new(Origin::Inventory, Direction::Unknown, found.state, now_ns);
                socket.set_local(found.local);
                socket.set_remote(found.remote);
                self.inventory_only.insert(found.inode, socket);
                self.inventory_by_tuple.insert((found.local, found.remote), found.inode);
            }
            let socket = self.inventory_only.get_mut(&found.inode).expect("inserted above");
            socket.set_pid(Some(owner.pid));
            socket.set_fd(Some(owner.fd));
            socket.set_state(found.state, now_ns);
            refresh(socket, found, now_ns);
            let comm = owner.comm.clone();
            self.process(owner.pid, Some(&comm));
        }
        self.inventory_only.retain(|inode, _| seen.contains(inode));
        let inventory_only = &self.inventory_only;
        self.inventory_by_tuple.retain(|_, inode| inventory_only.contains_key(inode));
    }
}

fn refresh(socket: &mut TrackedSocket, found: &InventorySocket, now_ns: u64) {
    if let Some(idle) = found.idle {
        socket.set_idle(idle, now_ns);
    }
    if found.keepalive.is_some() {
        socket.set_keepalive(found.keepalive);
    }
}

/// The state a sweep found, if it is one that lean events leave out (`Settings::lean`) and it
/// comes after the one last seen: a shutdown() or a child's handshake. A sweep is a snapshot
/// older than the events read since, so it never moves a socket back.
fn unsent_state(known: TcpState, found: TcpState) -> Option<TcpState> {
    use TcpState::*;
    let later = match known {
        SynRecv => matches!(found, Established | FinWait1 | FinWait2 | Closing),
        Established => matches!(found, FinWait1 | FinWait2 | Closing | LastAck),
        FinWait1 => matches!(found, FinWait2 | Closing),
        CloseWait => found == LastAck,
        _ => false,
    };
    later.then_some(found)
}

/// Takes the record's addresses, except a port the kernel had not assigned yet.
fn set_endpoints(socket: &mut TrackedSocket, record: &Record) {
    if let Some(e) = record.endpoints {
        if e.local.port() != 0 {
            socket.set_local(e.local);
        }
        if e.remote.port() != 0 {
            socket.set_remote(e.remote);
        }
    }
}

/// The record's task name as text (borrowed: no allocation for a valid UTF-8 name).
fn comm(record: &Record) -> Option<Cow<'_, str>> {
    record.comm.as_ref().map(Comm::as_str)
}
