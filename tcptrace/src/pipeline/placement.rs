//! Which cgroup (and so which container) each record's process is in: from the id the kernel
//! read at the open, else from `/proc/<pid>/cgroup` once per process (sockets from before
//! tracing, hosts whose ids mean nothing), remembered until a while after the process exits:
//! the releases its exit makes come after the exit's own record, when `/proc` has nothing left.

use std::{collections::VecDeque, sync::Arc};

use foldhash::HashMap;

use super::connections::Record;
use crate::{
    container::{Cgroup, Resolver},
    event::{Event, EventKind},
};

/// Processes remembered at most; past it the table starts again from the live ones, which are
/// read back from `/proc` (an exited process then loses its container, nothing else).
const PROCESSES_MAX: usize = 1 << 18;
/// Exited processes still remembered: the latest ones, whose exit releases may still come.
const EXITED_KEPT: usize = 1 << 10;

pub struct Placement {
    resolver: Resolver,
    by_pid: HashMap<u32, Placed>,
    /// Exited pids, oldest first, forgotten once `EXITED_KEPT` newer ones have exited (unless
    /// the pid was placed again meanwhile, a new process by the same pid).
    exited: VecDeque<(u32, Placed)>,
}

/// Where a process is, and the kernel's id it was placed by.
#[derive(Debug, Clone, Default)]
struct Placed {
    /// The cgroup id of its latest open; 0 when placed from `/proc`. An open with the same id
    /// needs no lookup: most opens are of processes already placed.
    kernel_id: u64,
    cgroup: Option<Arc<Cgroup>>,
}

impl Placed {
    fn same(&self, other: &Self) -> bool {
        let cgroups = match (&self.cgroup, &other.cgroup) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        cgroups && self.kernel_id == other.kernel_id
    }
}

impl Placement {
    pub fn new(resolver: Resolver) -> Self {
        Self { resolver, by_pid: HashMap::default(), exited: VecDeque::new() }
    }

    /// Places the process behind `event` if it opened a socket, gives each record its
    /// process's cgroup, and forgets a process at its exit.
    pub fn attach(&mut self, event: &Event, records: &mut [Record]) {
        if let Some(id) = event.cgroup
            && self.by_pid.get(&event.pid).is_none_or(|p| p.kernel_id != id)
        {
            let cgroup = self.resolver.by_id(id);
            // The root says nothing: a host that does not use v2, or the process is in none
            // of its cgroups; its v1 path may name the container.
            let cgroup = match cgroup {
                Some(c) if c.path != "/" => Some(c),
                _ => self.resolver.by_pid(event.pid).or(cgroup),
            };
            self.remember(event.pid, Placed { kernel_id: id, cgroup });
        }
        for record in records.iter_mut() {
            if let Some(pid) = record.pid {
                record.cgroup = self.of(pid);
            }
        }
        if event.kind == EventKind::Exit {
            self.exited(event.pid);
        }
    }

    fn exited(&mut self, pid: u32) {
        let Some(placed) = self.by_pid.get(&pid) else { return };
        self.exited.push_back((pid, placed.clone()));
        if self.exited.len() > EXITED_KEPT
            && let Some((old, placed)) = self.exited.pop_front()
            && self.by_pid.get(&old).is_some_and(|now| now.same(&placed))
        {
            self.by_pid.remove(&old);
        }
    }

    /// Process `pid`'s cgroup, read from `/proc` the first time.
    pub fn of(&mut self, pid: u32) -> Option<Arc<Cgroup>> {
        if let Some(known) = self.by_pid.get(&pid) {
            return known.cgroup.clone();
        }
        let cgroup = self.resolver.by_pid(pid);
        self.remember(pid, Placed { kernel_id: 0, cgroup: cgroup.clone() });
        cgroup
    }

    fn remember(&mut self, pid: u32, placed: Placed) {
        if self.by_pid.len() >= PROCESSES_MAX {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, placed);
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;
    use crate::{
        container::{Hierarchy, Names},
        event::{Comm, ReleaseReason},
        pipeline::connections::RecordKind,
    };

    /// A pid no process has (above PID_MAX_LIMIT): only what events said places it.
    const PID: u32 = 1 << 23;

    fn event(kind: EventKind, cgroup: Option<u64>) -> Event {
        Event {
            ts_ns: 1,
            skaddr: 1,
            pid: PID,
            tid: PID,
            comm: Comm::from("nc"),
            owner_pid: None,
            fd: Some(3),
            endpoints: None,
            owner_lost: false,
            stacks: Default::default(),
            kind,
            exec_path: None,
            cgroup,
            interp: None,
        }
    }

    fn record(kind: RecordKind) -> Record {
        Record {
            ts_ns: 1,
            kind,
            pid: Some(PID),
            tid: Some(PID),
            comm: Some(Comm::from("nc")),
            fd: Some(3),
            skaddr: 1,
            endpoints: None,
            stack: None,
            cgroup: None,
        }
    }

    #[test]
    fn the_releases_an_exit_makes_keep_the_container_of_the_process() {
        let root = std::env::temp_dir().join(format!("tcptrace-placement-{}", std::process::id()));
        let id = "ab".repeat(32);
        let dir = root.join(format!("libpod_parent/libpod-{id}"));
        fs::create_dir_all(&dir).unwrap();
        let names = Names::with_roots(root.join("none"), root.join("none"));
        let mut placement =
            Placement::new(Resolver::new(Some(Hierarchy::new(root.clone())), names));
        let ino = fs::metadata(&dir).unwrap().ino();

        let mut open = [record(RecordKind::Connect)];
        placement.attach(&event(EventKind::Connect, Some(ino)), &mut open);
        let container = open[0].cgroup.as_ref().and_then(|c| c.container.as_ref()).unwrap();
        assert_eq!(container.id, id);

        // In tracepoint mode the exit's record comes first, then the releases it makes.
        let mut exit = [record(RecordKind::Exit)];
        placement.attach(&event(EventKind::Exit, None), &mut exit);
        let release = EventKind::Release { reason: ReleaseReason::Exit, state: None };
        let mut released = [record(RecordKind::Release { reason: ReleaseReason::Exit })];
        placement.attach(&event(release, None), &mut released);
        assert_eq!(released[0].cgroup, open[0].cgroup, "placed after its exit too");

        // Forgotten once enough later processes have exited.
        for pid in 1..=EXITED_KEPT as u32 {
            placement.remember(pid, Placed::default());
            placement.exited(pid);
        }
        assert!(!placement.by_pid.contains_key(&PID));
        assert!(placement.by_pid.len() <= EXITED_KEPT);
        fs::remove_dir_all(root).unwrap();
    }
}
