//! The `--pid/--comm/--container/--cgroup/--port/-4/-6` filters, applied in user space to
//! inventory sockets the same way the kernel programs apply them to events, so a filtered
//! report only speaks of what was asked.

use std::net::SocketAddr;

use tcptrace_common::{AF_INET, AF_INET6, Filter};

use crate::{
    container::{Hierarchy, cgroup_v2_path_of_pid},
    event::Comm,
    inventory::InventorySocket,
};

pub struct InventoryFilter {
    filter: Filter,
    /// Where the cgroups of a `--container`/`--cgroup` filter are.
    hierarchy: Option<Hierarchy>,
}

impl InventoryFilter {
    pub fn new(filter: Filter, hierarchy: Option<Hierarchy>) -> Self {
        Self { filter, hierarchy }
    }

    /// Whether to keep `socket`; with a process filter, only the matching owners are kept.
    /// The decisions are the kernel programs' own (`Filter::addr_matches`,
    /// `Filter::process_matches`).
    pub fn keep(&self, socket: &mut InventorySocket) -> bool {
        let f = &self.filter;
        let (local, remote) = (socket.local.port(), socket.remote.port());
        if !f.addr_matches(family(&socket.local), local, remote) {
            return false;
        }
        if !f.filters_process() {
            return true;
        }
        // `run` follows its processes in the kernel only, and sweeps nothing.
        socket.owners.retain(|o| {
            f.process_matches(o.pid, Comm::from(o.comm.as_str()).raw(), false, |level| {
                self.ancestor_id(o.pid, level)
            })
        });
        !socket.owners.is_empty()
    }

    /// What the kernel's `bpf_get_current_ancestor_cgroup_id` answers for a task of `pid`;
    /// 0 (matching nothing) once it is gone.
    fn ancestor_id(&self, pid: u32, level: u32) -> u64 {
        match (&self.hierarchy, cgroup_v2_path_of_pid(pid)) {
            (Some(hierarchy), Some(path)) => hierarchy.ancestor_id(&path, level),
            _ => 0,
        }
    }
}

/// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; like the kernel's `skc_family`,
/// that is an IPv6 socket.
fn family(addr: &SocketAddr) -> u16 {
    match addr {
        SocketAddr::V4(_) => AF_INET,
        SocketAddr::V6(_) => AF_INET6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::TcpState, inventory::FdOwner};

    fn socket(local: &str, remote: &str, owners: &[(u32, &str)]) -> InventorySocket {
        InventorySocket {
            inode: 1,
            cookie: 1,
            netns: 1,
            state: TcpState::Established,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            idle: None,
            keepalive: None,
            owners: owners
                .iter()
                .map(|&(pid, comm)| FdOwner { pid, fd: 3, comm: comm.to_owned() })
                .collect(),
        }
    }

    #[test]
    fn ports_and_families_match_either_side() {
        let filter = InventoryFilter::new(Filter { port: 6379, ..Filter::none() }, None);
        assert!(filter.keep(&mut socket("10.0.0.1:40000", "10.0.0.2:6379", &[(1, "a")])));
        assert!(filter.keep(&mut socket("10.0.0.2:6379", "10.0.0.1:40000", &[(1, "a")])));
        assert!(!filter.keep(&mut socket("10.0.0.1:40000", "10.0.0.2:80", &[(1, "a")])));
        let v6 = InventoryFilter::new(Filter { family: AF_INET6, ..Filter::none() }, None);
        assert!(v6.keep(&mut socket("[::1]:1", "[::1]:2", &[])));
        assert!(!v6.keep(&mut socket("127.0.0.1:1", "127.0.0.1:2", &[])));
    }

    #[test]
    fn process_filters_keep_matching_owners_only() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"redis");
        let filter = InventoryFilter::new(Filter { has_comm: 1, comm, ..Filter::none() }, None);
        let mut shared = socket("127.0.0.1:1", "127.0.0.1:2", &[(1, "redis"), (2, "other")]);
        assert!(filter.keep(&mut shared));
        assert_eq!(shared.owners.len(), 1);
        assert!(!filter.keep(&mut socket("127.0.0.1:1", "127.0.0.1:2", &[(2, "redis-cli")])));
        let mut pids = [0; 8];
        pids[0] = 2;
        let by_pid = InventoryFilter::new(Filter { pids, n_pids: 1, ..Filter::none() }, None);
        assert!(by_pid.keep(&mut socket("127.0.0.1:1", "127.0.0.1:2", &[(1, "a"), (2, "b")])));
        assert!(!by_pid.keep(&mut socket("127.0.0.1:1", "127.0.0.1:2", &[(1, "a")])));
    }

    #[test]
    fn cgroup_filters_keep_owners_in_or_below_the_cgroup() {
        let Some(hierarchy) = Hierarchy::find() else {
            eprintln!("no cgroup v2 hierarchy here: nothing to test");
            return;
        };
        let root_id = hierarchy.id_of("/").unwrap();
        let me = std::process::id();
        let in_cgroup = |id, level| {
            let mut f = Filter::none();
            f.cgroups[0] = tcptrace_common::CgroupMatch { id, level, _pad0: 0 };
            f.n_cgroups = 1;
            InventoryFilter::new(f, Some(hierarchy.clone()))
        };
        let mine = || socket("127.0.0.1:1", "127.0.0.1:2", &[(me, "t"), (u32::MAX, "gone")]);
        let mut held = mine();
        assert!(in_cgroup(root_id, 0).keep(&mut held), "every process is below the root");
        assert_eq!(held.owners.len(), 1, "a process that is gone matches nothing");
        assert!(!in_cgroup(root_id.wrapping_add(1), 0).keep(&mut mine()), "another id");
        assert!(!in_cgroup(root_id, 1).keep(&mut mine()), "the root is never at level 1");
    }
}
