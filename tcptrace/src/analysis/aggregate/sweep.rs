//! Inventory sweeps applied to the aggregator: what the kernel's socket tables and /proc say
//! now, against what the events said. Refreshes idle times and keepalive of known sockets,
//! learns the sockets that existed before tracing, forgets inventory sockets that are gone,
//! removes held sockets that are gone although no event said so (their events were lost), and
//! folds the processes that exited.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Aggregator, Direction, Origin, TrackedSocket, Tuple};
use crate::{
    event::TcpState,
    inventory::{InventorySocket, Snapshot},
};

/// A sweep's sockets by their addresses (TIME_WAIT left out: no process holds one).
type ByTuple<'a> = HashMap<Tuple, &'a InventorySocket>;

impl Aggregator {
    /// Applies an inventory sweep taken at `now_ns`.
    pub fn apply_inventory(&mut self, snapshot: &Snapshot, now_ns: u64) {
        self.sweeps += 1;
        let by_tuple: ByTuple<'_> = snapshot
            .sockets
            .iter()
            // TIME_WAIT sockets have no owner left; listeners count as open sockets.
            .filter(|s| s.state != TcpState::TimeWait)
            .map(|s| ((s.local, s.remote), s))
            .collect();
        let matched = self.match_known(&by_tuple, snapshot.warnings.is_empty(), now_ns);
        self.learn_unknown(&by_tuple, &matched, now_ns);
        // Untracked sockets the sweep still found stay counted; the others are gone.
        let found: HashSet<u64> = by_tuple.values().map(|s| s.inode).collect();
        self.evicted_inodes.retain(|inode| found.contains(inode));
        for (pid, cgroup) in &snapshot.cgroups {
            if let Some(stats) = self.processes.get_mut(pid) {
                stats.place(Some(cgroup));
            }
        }
        self.fold_exited();
    }

    /// Brings the sockets events told of up to date with the sweep; returns the inodes it
    /// matched. `complete`: the sweep read everything (no warnings).
    fn match_known(&mut self, by_tuple: &ByTuple<'_>, complete: bool, now_ns: u64) -> HashSet<u64> {
        let mut matched: HashSet<u64> = HashSet::new();
        let mut gone: Vec<u64> = Vec::new();
        // Owners the sweep named for sockets whose owner was unknown or gone.
        let mut owners: Vec<(u32, &str)> = Vec::new();
        // The pipeline applied every event read before the snapshot ended. A socket a sweep
        // does not find is gone if its holder has exited (the exit released everything it
        // held), or if the sweep read everything and an earlier sweep found the socket (its
        // addresses are written as the inventory writes them).
        let exited = |pid: Option<u32>| {
            pid.and_then(|pid| self.processes.get(&pid)).is_some_and(|p| p.exited)
        };
        for (&skaddr, socket) in &mut self.sockets {
            let Some((local, remote)) = tuple(socket) else { continue };
            let Some(found) = by_tuple.get(&(local, remote)) else {
                // A dead-fd socket (CLOSE) is not in the kernel's tables, only in its
                // descriptor: that one a sweep cannot see.
                if (exited(socket.pid()) || complete && socket.swept())
                    && socket.held()
                    && socket.state != TcpState::Close
                    && socket.state_since_ns < now_ns
                    && socket.first_seen_ns() < now_ns
                {
                    gone.push(skaddr);
                }
                continue;
            };
            socket.set_swept();
            refresh(socket, found, now_ns);
            if let Some(state) = unsent_state(socket.state, found.state) {
                socket.set_state(state, now_ns);
            }
            // Held after its process exited: a process it forked holds it now.
            if (socket.pid().is_none() || exited(socket.pid()))
                && let Some(owner) = found.owners.first()
                && Some(owner.pid) != socket.pid()
            {
                socket.set_pid(Some(owner.pid));
                socket.set_fd(Some(owner.fd));
                owners.push((owner.pid, owner.comm.as_str()));
            }
            matched.insert(found.inode);
        }
        self.ended_unseen += gone.len() as u64;
        for skaddr in gone {
            self.sockets.remove(&skaddr);
        }
        for (pid, comm) in owners {
            self.live_process(pid, Some(comm));
        }
        matched
    }

    /// Keeps the sockets only the sweep knows (they existed before tracing, or their open was
    /// not seen) by inode, until an event names them; forgets those it no longer finds.
    fn learn_unknown(&mut self, by_tuple: &ByTuple<'_>, matched: &HashSet<u64>, now_ns: u64) {
        let mut seen: HashSet<u64> = HashSet::new();
        for found in by_tuple.values() {
            if found.inode == 0 || matched.contains(&found.inode) {
                continue;
            }
            let Some(owner) = found.owners.first() else { continue };
            seen.insert(found.inode);
            if !self.inventory_only.contains_key(&found.inode) {
                if self.full() {
                    self.evict_inode(found.inode);
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
            self.live_process(owner.pid, Some(&comm));
        }
        self.inventory_only.retain(|inode, _| seen.contains(inode));
        let inventory_only = &self.inventory_only;
        self.inventory_by_tuple.retain(|_, inode| inventory_only.contains_key(inode));
    }

    /// A socket only a sweep found, with no room for it: counted once while sweeps find it.
    fn evict_inode(&mut self, inode: u64) {
        if self.evicted_inodes.len() < self.remembered_evictions() {
            if self.evicted_inodes.insert(inode) {
                self.evicted += 1;
            }
        } else if !self.evicted_inodes.contains(&inode) {
            self.evicted += 1;
        }
    }
}

/// The addresses a sweep knows the socket by: a listener's remote is unspecified (port 0,
/// which events leave unset).
fn tuple(socket: &TrackedSocket) -> Option<Tuple> {
    let local = socket.local()?;
    let remote = match socket.remote() {
        Some(remote) => remote,
        None if socket.state == TcpState::Listen => {
            let any = match local.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            SocketAddr::new(any, 0)
        }
        None => return None,
    };
    Some((local, remote))
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
