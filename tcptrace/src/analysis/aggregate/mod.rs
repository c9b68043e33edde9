//! The lifecycle aggregator behind `tcptrace leaks` and `tcptrace top`: every socket's state,
//! owner and release, per-process counts and distributions, and TIME_WAIT churn. It is fed the
//! records of `connections` (which attributes each event to the socket's owner) and the
//! inventory sweeps, and it is pure: unit-tested without root.
//!
//! A socket stays in the table until it is both protocol-closed and released, so a descriptor
//! that outlives its connection (`dead-fd`) is still known. Memory is bounded by `capacity`;
//! sockets beyond it are not tracked and counted (once each) in `evicted`, which every report
//! shows.
//!
//! Processes that exited are folded into one entry per task name (`folded`) once they hold no
//! socket and owe no finding, so a host running short-lived processes all day does not grow
//! the aggregator: what stays per process is what a finding or a live process needs.

mod churn;
mod counted;
mod distribution;
mod exits;
mod process;
mod remotes;
mod socket;
mod sweep;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

pub use churn::{Churn, ChurnCounter};
pub use counted::{Count, Counted};
pub use distribution::Distribution;
pub use exits::{ExitRelease, ExitReleases};
use foldhash::{HashMap as FastMap, HashSet as FastSet};
pub use process::{Folded, FoldedStats, OTHER_COMM, Percentiles, ProcessStats};
pub use remotes::{RemoteStats, Remotes};
pub use socket::{Direction, Origin, TrackedSocket};

use crate::{
    container::Cgroup,
    event::{Comm, ReleaseReason, TcpState},
    inventory::Snapshot,
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
    /// Live processes, and exited ones not folded yet.
    pub processes: FastMap<u32, ProcessStats>,
    /// Exited processes, by task name.
    pub folded: Folded,
    /// Exited processes not folded yet: they hold a socket or owe a finding.
    exited: FastSet<u32>,
    /// `exited` holds this many processes when the next fold runs (sweeps fold too).
    fold_at: usize,
    /// The latest folded pids and their names (`RECENTLY_FOLDED` at most, oldest first in
    /// `folded_order`): a late record about one (a TIME_WAIT after its exit) adds to its name.
    recently_folded: FastMap<u32, String>,
    folded_order: VecDeque<u32>,
    pub churn: Churn,
    pub remotes: Remotes,
    pub exit_releases: ExitReleases,
    capacity: usize,
    /// Sockets not tracked because the table was full, each counted once.
    pub evicted: u64,
    /// Untracked sockets already counted in `evicted`: kernel addresses until their close,
    /// and inodes while sweeps still find them (`remembered_evictions` of each at most).
    evicted_skaddrs: FastSet<u64>,
    evicted_inodes: FastSet<u64>,
    /// Held sockets a sweep found gone whose end no event told (events lost): removed then.
    pub ended_unseen: u64,
    pub sweeps: u64,
    /// Each count added to a process, as it is added, for a caller that keeps counters of its
    /// own (`serve`'s metrics); `None` (nothing kept) unless `count_each` turned it on.
    counted: Option<Vec<Counted>>,
}

/// Exited processes folded at once at least; a fold walks every socket, so it waits for a
/// batch (and for twice what the previous fold could not fold).
const FOLD_BATCH: usize = 256;
/// Folded pids remembered for late records.
const RECENTLY_FOLDED: usize = 4_096;

impl Aggregator {
    pub fn new(capacity: usize) -> Self {
        Self {
            sockets: FastMap::default(),
            inventory_only: FastMap::default(),
            inventory_by_tuple: FastMap::default(),
            processes: FastMap::default(),
            folded: Folded::default(),
            exited: FastSet::default(),
            fold_at: FOLD_BATCH,
            recently_folded: FastMap::default(),
            folded_order: VecDeque::new(),
            churn: Churn::default(),
            remotes: Remotes::default(),
            exit_releases: ExitReleases::default(),
            capacity,
            evicted: 0,
            evicted_skaddrs: FastSet::default(),
            evicted_inodes: FastSet::default(),
            ended_unseen: 0,
            sweeps: 0,
            counted: None,
        }
    }

    /// From now on, keeps each count added to a process for `take_counted`.
    pub fn count_each(&mut self) {
        self.counted.get_or_insert_with(Vec::new);
    }

    /// The counts added since the last call (empty unless `count_each` was called).
    pub fn take_counted(&mut self) -> impl Iterator<Item = Counted> + '_ {
        self.counted.iter_mut().flat_map(|counted| counted.drain(..))
    }

    /// The name and cgroup of `pid`: a known process's, or for one folded since it exited,
    /// its name only.
    pub fn owner(&self, pid: u32) -> Option<(&str, Option<&Arc<Cgroup>>)> {
        match self.processes.get(&pid) {
            Some(stats) => Some((&stats.comm, stats.cgroup.as_ref())),
            None => self.recently_folded.get(&pid).map(|comm| (comm.as_str(), None)),
        }
    }

    fn note(&mut self, pid: u32, count: Count) {
        if let Some(counted) = &mut self.counted {
            counted.push(Counted { pid, count });
        }
    }

    /// Sockets tracked at most.
    pub fn capacity(&self) -> usize {
        self.capacity
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

    /// Untracked sockets remembered (so each is counted once), per kind of identity: a few
    /// bytes each, where a tracked socket is 64.
    fn remembered_evictions(&self) -> usize {
        self.capacity.max(65_536)
    }

    /// Counts one more untracked socket, unless it was counted already.
    fn evict(&mut self, skaddr: u64) {
        if self.evicted_skaddrs.len() < self.remembered_evictions() {
            if self.evicted_skaddrs.insert(skaddr) {
                self.evicted += 1;
            }
        } else if !self.evicted_skaddrs.contains(&skaddr) {
            // Beyond what is remembered: counted at each sighting.
            self.evicted += 1;
        }
    }

    /// The counts a record about `pid` adds to: its process's, or for a process folded since
    /// it exited (a TIME_WAIT or close that came after), its name's.
    fn process(&mut self, pid: u32, comm: Option<&str>) -> &mut ProcessStats {
        if !self.processes.contains_key(&pid)
            && let Some(folded) = self.recently_folded.get(&pid)
            && comm.is_none_or(|c| c == folded)
        {
            return &mut self.folded.entry(folded).stats;
        }
        self.live_process(pid, comm)
    }

    /// A process that opens or holds a socket now: alive, even if its pid was folded before
    /// (the kernel reused it).
    fn live_process(&mut self, pid: u32, comm: Option<&str>) -> &mut ProcessStats {
        if !self.recently_folded.is_empty() {
            self.recently_folded.remove(&pid);
        }
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
                None => {
                    let socket = create()?;
                    if self.full() {
                        self.evict(record.skaddr);
                        return None;
                    }
                    socket
                }
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
                    self.exited.insert(pid);
                    if self.exited.len() >= self.fold_at {
                        self.fold_exited();
                    }
                }
            }
        }
    }

    /// Folds every exited process that holds no socket, has no closed-by-exit finding and no
    /// TIME_WAIT rate (two entries or more toward one remote) into its name's entry, and frees
    /// it. Runs at each sweep, and when `fold_at` processes wait.
    pub fn fold_exited(&mut self) {
        if self.exited.is_empty() {
            return;
        }
        let mut busy: FastSet<u32> = self
            .sockets()
            .filter_map(TrackedSocket::pid)
            .filter(|pid| self.exited.contains(pid))
            .collect();
        busy.extend(self.exit_releases.kept.iter().map(|e| e.pid));
        busy.extend(self.churn.pids_with_rates());
        let foldable: HashSet<u32> =
            self.exited.iter().copied().filter(|pid| !busy.contains(pid)).collect();
        for &pid in &foldable {
            self.exited.remove(&pid);
            let Some(stats) = self.processes.remove(&pid) else { continue };
            self.folded.fold(&stats);
            if self.folded_order.len() >= RECENTLY_FOLDED
                && let Some(oldest) = self.folded_order.pop_front()
            {
                self.recently_folded.remove(&oldest);
            }
            self.folded_order.push_back(pid);
            self.recently_folded.insert(pid, stats.comm);
        }
        // Their single TIME_WAIT entries are in their counts; no rate can come of them.
        self.churn.forget(&foldable);
        self.fold_at = (2 * self.exited.len()).max(FOLD_BATCH);
        // A burst of processes should not hold its table's memory after they are gone.
        if self.processes.capacity() > 1_024 && self.processes.len() * 4 < self.processes.capacity()
        {
            self.processes.shrink_to_fit();
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
        // An accepted socket's remote is a client's ephemeral port: a new endpoint at every
        // connection, neither a service the process talked to nor a rate (ephemeral ports are
        // used up by connects, not accepts). Counted per remote, a server that closes first
        // made a table entry per connection: a fifth of the tracer's CPU under churn, and
        // memory growing with the rate. Its entries count per process only.
        let service = remote.filter(|_| known.is_none_or(|s| s.direction != Direction::Passive));
        if let Some(remote) = service {
            self.remotes.time_wait(remote);
        }
        if let Some(pid) = pid {
            self.process(pid, None).time_wait_entries += 1;
            self.note(pid, Count::TimeWait { remote });
            // A process folded already has exited: no rate can come of it.
            if let Some(remote) = service
                && self.processes.contains_key(&pid)
            {
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
            None => {
                self.evicted_skaddrs.remove(&record.skaddr);
                record.pid
            }
        };
        if let (Some(pid), Some(lifetime)) = (pid, lifetime_ns) {
            self.process(pid, None).record_lifetime(lifetime);
            self.note(pid, Count::Lifetime { ns: lifetime });
        }
    }

    /// The process gave up its last descriptor: the socket leaves if TCP closed it too.
    fn release(&mut self, record: &Record, reason: ReleaseReason) {
        let ts = record.ts_ns;
        let Some(socket) = self.socket(record, || None) else {
            // Never seen open and not in the inventory: count the release only.
            if let Some(pid) = record.pid {
                self.process(pid, comm(record).as_deref()).released += 1;
                self.note(pid, Count::Released);
            }
            return;
        };
        socket.set_released(true);
        set_endpoints(socket, record);
        // `opened` leaves listeners out; so does `released`, or it would exceed `opened`.
        let listener = socket.direction == Direction::Listen || socket.state == TcpState::Listen;
        let by_exit = (reason == ReleaseReason::Exit).then(|| socket.clone());
        if socket.state == TcpState::Close {
            self.sockets.remove(&record.skaddr);
        }
        if let Some(exited) = by_exit
            && let Some(pid) = record.pid.or(exited.pid())
        {
            self.exit_releases.record(&exited, pid, record.fd, ts);
        }
        if let Some(pid) = record.pid
            && !listener
        {
            self.process(pid, comm(record).as_deref()).released += 1;
            self.note(pid, Count::Released);
        }
    }

    fn open(&mut self, record: &Record, direction: Direction, state: TcpState) {
        let ts = record.ts_ns;
        // Counted whether or not the table has room for the socket.
        if let Some(pid) = record.pid {
            // An exited process does not open: its pid is a new process's now.
            if self.processes.get(&pid).is_some_and(|p| p.exited) {
                self.retire(pid);
            }
            let stats = self.live_process(pid, comm(record).as_deref());
            stats.place(record.cgroup.as_ref());
            if direction != Direction::Listen {
                stats.opened += 1;
                self.note(pid, Count::Opened(direction));
            }
        }
        if direction == Direction::Active
            && let Some(e) = record.endpoints
            && e.remote.port() != 0
        {
            self.remotes.connect(e.remote);
        }
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
                // A new socket at this address: counted again.
                self.evicted_skaddrs.remove(&record.skaddr);
                self.evict(record.skaddr);
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
        }
        self.sockets.insert(record.skaddr, socket);
    }

    /// Folds an exited process now, whatever it still holds: its pid belongs to another.
    fn retire(&mut self, pid: u32) {
        self.exited.remove(&pid);
        if let Some(stats) = self.processes.remove(&pid) {
            self.folded.fold(&stats);
        }
    }
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

#[cfg(test)]
mod tests;
