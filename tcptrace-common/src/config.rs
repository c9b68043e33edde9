//! Configuration handed to the kernel programs: filters as load-time globals, the close-hook mode
//! through the `CONFIG` array map (decided only after trying to attach fentry and kprobe).

/// Index of the close-hook mode in the `CONFIG` array map.
pub const CONFIG_CLOSE_HOOK: u32 = 0;
pub const CONFIG_COUNT: u32 = 1;

/// `CONFIG[CONFIG_CLOSE_HOOK]`: releases are derived from syscall and state tracepoints.
pub const CLOSE_HOOK_TRACEPOINT: u32 = 1;
/// `CONFIG[CONFIG_CLOSE_HOOK]`: an fentry program on `tcp_close` reports releases.
pub const CLOSE_HOOK_FENTRY: u32 = 2;
/// `CONFIG[CONFIG_CLOSE_HOOK]`: a kprobe on `tcp_close` reports releases.
pub const CLOSE_HOOK_KPROBE: u32 = 3;

/// How many `--pid` values the kernel filter holds.
pub const MAX_FILTER_PIDS: usize = 8;
/// How many cgroups (`--container`, `--cgroup`) the kernel filter holds.
pub const MAX_FILTER_CGROUPS: usize = 8;

/// One cgroup of the process filter: a process passes if its cgroup is this one or below it,
/// which is whether its cgroup's ancestor at `level` (the root is level 0) has this id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupMatch {
    /// The cgroup v2 id (its directory's inode).
    pub id: u64,
    /// Its depth below the root of the hierarchy.
    pub level: u32,
    pub _pad0: u32,
}

const _: () = assert!(size_of::<CgroupMatch>() == 16);

/// In-kernel filters, set as the `FILTER` global at load time. Zero means "no filter".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Process ids (tgid) to keep; the first `n_pids` are used.
    pub pids: [u32; MAX_FILTER_PIDS],
    pub n_pids: u32,
    /// Non-zero: keep only processes whose comm equals `comm` (NUL-padded).
    pub has_comm: u32,
    pub comm: [u8; 16],
    /// Non-zero: keep only connections with this local or remote port.
    pub port: u16,
    /// Non-zero: keep only this address family (`AF_INET` or `AF_INET6`).
    pub family: u16,
    /// Non-zero: keep only the processes in the `FOLLOWED` map (`tcptrace run`: the command and
    /// its descendants); `pids` and `comm` are then unused.
    pub follow: u32,
    /// Keep only processes in (or below) one of the first `n_cgroups` cgroups.
    pub n_cgroups: u32,
    pub cgroups: [CgroupMatch; MAX_FILTER_CGROUPS],
}

const _: () = assert!(size_of::<Filter>() == 72 + 16 * MAX_FILTER_CGROUPS);

impl Filter {
    pub const fn none() -> Self {
        Self {
            pids: [0; MAX_FILTER_PIDS],
            n_pids: 0,
            has_comm: 0,
            comm: [0; 16],
            port: 0,
            family: 0,
            follow: 0,
            n_cgroups: 0,
            cgroups: [CgroupMatch { id: 0, level: 0, _pad0: 0 }; MAX_FILTER_CGROUPS],
        }
    }

    /// A process filter needs the owner map to attribute softirq state changes.
    #[inline(always)]
    pub const fn filters_process(&self) -> bool {
        self.n_pids != 0 || self.has_comm != 0 || self.follow != 0 || self.n_cgroups != 0
    }

    /// Whether the process `tgid`, whose thread runs `comm` (NUL-padded, as the kernel's
    /// `task->comm`), is one the user asked for. `followed`: whether `tgid` is in the `FOLLOWED`
    /// map; only read when `follow` is set, so callers need not look it up otherwise.
    /// `ancestor(level)`: the id of the task's cgroup ancestor at `level` (the kernel's
    /// `bpf_get_current_ancestor_cgroup_id`); only called with a cgroup filter.
    #[inline(always)]
    pub fn process_matches(
        &self,
        tgid: u32,
        comm: &[u8; 16],
        followed: bool,
        ancestor: impl Fn(u32) -> u64,
    ) -> bool {
        if self.n_cgroups != 0 && !self.cgroup_matches(ancestor) {
            return false;
        }
        if self.follow != 0 {
            return followed;
        }
        if self.n_pids != 0 {
            let n_pids = self.n_pids as usize;
            // Every slot visited, no early exit: a loop the compiler unrolls into straight code
            // the verifier accepts on every kernel.
            let mut found = false;
            for (i, pid) in self.pids.iter().enumerate() {
                if i < n_pids && *pid == tgid {
                    found = true;
                }
            }
            if !found {
                return false;
            }
        }
        if self.has_comm != 0 {
            // Byte by byte: a slice comparison becomes a memcmp call, which BPF does not have.
            let mut differ = 0u8;
            for (want, byte) in self.comm.iter().zip(comm) {
                differ |= want ^ byte;
            }
            if differ != 0 {
                return false;
            }
        }
        true
    }

    /// Whether the task is in one of the filter's cgroups or below it. Every slot visited, as
    /// with `pids`; the helper is only called for slots in use.
    #[inline(always)]
    fn cgroup_matches(&self, ancestor: impl Fn(u32) -> u64) -> bool {
        let n_cgroups = self.n_cgroups as usize;
        let mut found = false;
        for (i, cgroup) in self.cgroups.iter().enumerate() {
            if i < n_cgroups && ancestor(cgroup.level) == cgroup.id {
                found = true;
            }
        }
        found
    }

    /// Whether a connection of `family` (`AF_INET`/`AF_INET6`) between the local port `lport`
    /// and the remote port `rport` (host order) passes the `-4`/`-6` and `--port` filters.
    #[inline(always)]
    pub const fn addr_matches(&self, family: u16, lport: u16, rport: u16) -> bool {
        if self.family != 0 && self.family != family {
            return false;
        }
        self.port == 0 || self.port == lport || self.port == rport
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (checked by the size assertion).
unsafe impl aya::Pod for Filter {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for CgroupMatch {}

/// `Settings::stacks` bit: capture the user stack at connect and accept.
pub const STACKS_USER: u32 = 1 << 0;
/// `Settings::stacks` bit: capture the kernel stack at connect and accept.
pub const STACKS_KERNEL: u32 = 1 << 1;

/// `Settings::bench`: every program returns at once, the cost of the hooks themselves.
#[cfg(feature = "bench")]
pub const BENCH_FLOOR: u32 = 1;
/// `Settings::bench`: the least per-connection work a tracer that matches opens to closes can
/// do, and nothing else: at each connect() and accept(), an owner-map entry and one record; at
/// the CLOSE of a socket with an entry, its removal and one record.
#[cfg(feature = "bench")]
pub const BENCH_MINIMUM: u32 = 2;
/// `Settings::bench`: the minimum's work with its records replaced by per-process counts in a
/// map (`BenchCounts`), and the user stack captured at each open when `Settings::stacks` asks:
/// what a tracer that aggregates in the kernel and sends nothing per connection would cost.
#[cfg(feature = "bench")]
pub const BENCH_IN_KERNEL: u32 = 3;

/// `BENCH_COUNTS`' value: one process's opens and the CLOSEs of its sockets, counted in the
/// kernel by `BENCH_IN_KERNEL`.
#[cfg(feature = "bench")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchCounts {
    pub opens: u64,
    pub closes: u64,
}

#[cfg(feature = "bench")]
const _: () = assert!(size_of::<BenchCounts>() == 16);

#[cfg(all(feature = "bench", feature = "user"))]
// SAFETY: repr(C), integers only, no implicit padding (checked by the size assertion).
unsafe impl aya::Pod for BenchCounts {}

/// Load-time settings other than filters, set as the `SETTINGS` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `STACKS_*` bits.
    pub stacks: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork` records (it moved when the comm
    /// fields became `__data_loc` strings), for `Filter::follow`.
    pub fork_child_pid: u32,
    /// `cargo xtask bench`'s reference points (`BENCH_*`); 0 for real use. Present with or
    /// without the `bench` feature so the layout user space writes never depends on it; only
    /// kernel programs built with the feature read it.
    pub bench: u32,
    /// Wake the reader once this many bytes wait in the ring buffer; below, it finds them at
    /// its next poll (user space polls every few milliseconds). A wakeup per event would cost
    /// it a context switch per event. 0: wake for every event.
    pub wakeup_bytes: u32,
    /// Non-zero: user space aggregates rather than prints (`leaks`, `top`, `run`), so only the
    /// state changes it uses are sent: opens, a connect()'s outcome, CLOSE_WAIT and CLOSE
    /// (which carries the lifetime and the TIME_WAIT entry). Not the states that follow the
    /// owner's close() or shutdown(), nor a listener child's handshake, before accept() names
    /// its owner; the inventory sweeps show the states of sockets still held. And a socket
    /// user space knows is sent without its endpoints. A churned connection then costs 8
    /// events instead of 13.
    pub lean: u32,
    /// Non-zero: open records carry the opener's cgroup id (`RawEvent::cgroup_id`). User space
    /// turns it off where the ids say nothing (no cgroup v2 hierarchy in use), and the bench
    /// to measure its cost.
    pub cgroup_ids: u32,
}

const _: () = assert!(size_of::<Settings>() == 24);

impl Settings {
    pub const fn none() -> Self {
        Self { stacks: 0, fork_child_pid: 0, bench: 0, wakeup_bytes: 0, lean: 0, cgroup_ids: 0 }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (checked by the size assertion).
unsafe impl aya::Pod for Settings {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AF_INET, AF_INET6};

    fn comm(name: &str) -> [u8; 16] {
        let mut comm = [0; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    }

    /// A task in the root cgroup: every ancestor is the root (id 1).
    fn root(_level: u32) -> u64 {
        1
    }

    fn pids(list: &[u32]) -> Filter {
        let mut filter = Filter::none();
        filter.pids[..list.len()].copy_from_slice(list);
        filter.n_pids = list.len() as u32;
        filter
    }

    #[test]
    fn no_filter_keeps_everything() {
        let f = Filter::none();
        assert!(!f.filters_process());
        assert!(f.process_matches(1, &comm("x"), false, root));
        assert!(f.addr_matches(AF_INET, 1, 2));
        assert!(f.addr_matches(AF_INET6, 0, 0));
    }

    #[test]
    fn pids_match_only_the_first_n_pids() {
        let f = pids(&[10, 20, 30]);
        assert!(f.filters_process());
        for pid in [10, 20, 30] {
            assert!(f.process_matches(pid, &comm("x"), false, root), "{pid}");
        }
        for pid in [0, 11, 40] {
            assert!(!f.process_matches(pid, &comm("x"), false, root), "{pid}");
        }
        // A stale pid past `n_pids` does not count, nor does the zero filling.
        let mut f = pids(&[10]);
        f.pids[1] = 20;
        assert!(!f.process_matches(20, &comm("x"), false, root));
        assert!(!f.process_matches(0, &comm("x"), false, root));
        // Every slot is looked at.
        let all: Vec<u32> = (1..=MAX_FILTER_PIDS as u32).collect();
        let f = pids(&all);
        assert!(f.process_matches(MAX_FILTER_PIDS as u32, &comm("x"), false, root));
    }

    #[test]
    fn comm_matches_all_sixteen_bytes() {
        let mut f = Filter::none();
        f.has_comm = 1;
        f.comm = comm("curl");
        assert!(f.filters_process());
        assert!(f.process_matches(1, &comm("curl"), false, root));
        assert!(!f.process_matches(1, &comm("cur"), false, root), "a prefix");
        assert!(!f.process_matches(1, &comm("curl2"), false, root), "a longer name");
        assert!(!f.process_matches(1, &comm("Curl"), false, root));
        let long = "fifteen_chars_x";
        f.comm = comm(long);
        assert!(f.process_matches(1, &comm(long), false, root));
        assert!(!f.process_matches(1, &comm("fifteen_chars_y"), false, root), "last byte differs");
    }

    #[test]
    fn pids_and_comm_must_both_match() {
        let mut f = pids(&[7]);
        f.has_comm = 1;
        f.comm = comm("nginx");
        assert!(f.process_matches(7, &comm("nginx"), false, root));
        assert!(!f.process_matches(8, &comm("nginx"), false, root));
        assert!(!f.process_matches(7, &comm("redis"), false, root));
    }

    #[test]
    fn follow_decides_alone() {
        let mut f = pids(&[7]);
        f.has_comm = 1;
        f.comm = comm("nginx");
        f.follow = 1;
        assert!(f.filters_process());
        assert!(f.process_matches(99, &comm("other"), true, root), "pids and comm are unused");
        assert!(!f.process_matches(7, &comm("nginx"), false, root));
        let mut f = Filter::none();
        f.follow = 1;
        assert!(f.filters_process());
        assert!(!f.process_matches(1, &comm("x"), false, root));
        assert!(
            Filter::none().process_matches(1, &comm("x"), false, root),
            "ignored unless following"
        );
    }

    #[test]
    fn family_and_port_filters() {
        let mut f = Filter::none();
        f.family = AF_INET6;
        assert!(!f.filters_process(), "an address filter needs no owner");
        assert!(f.addr_matches(AF_INET6, 1, 2));
        assert!(!f.addr_matches(AF_INET, 1, 2));
        let mut f = Filter::none();
        f.port = 443;
        assert!(f.addr_matches(AF_INET, 443, 50000), "local");
        assert!(f.addr_matches(AF_INET, 50000, 443), "remote");
        assert!(!f.addr_matches(AF_INET, 80, 50000));
        assert!(!f.addr_matches(AF_INET, 0, 0), "a closed socket's zero ports");
        f.family = AF_INET;
        assert!(f.addr_matches(AF_INET, 443, 1));
        assert!(!f.addr_matches(AF_INET6, 443, 1));
    }

    fn cgroups(list: &[(u64, u32)]) -> Filter {
        let mut filter = Filter::none();
        for (slot, &(id, level)) in filter.cgroups.iter_mut().zip(list) {
            *slot = CgroupMatch { id, level, _pad0: 0 };
        }
        filter.n_cgroups = list.len() as u32;
        filter
    }

    /// A task in `/a/b` with ids root 1, `/a` 10, `/a/b` 20; levels past its depth are 0, as the
    /// kernel answers.
    fn in_a_b(level: u32) -> u64 {
        [1, 10, 20].get(level as usize).copied().unwrap_or(0)
    }

    #[test]
    fn cgroup_filter_keeps_the_cgroup_and_everything_below_it() {
        let f = cgroups(&[(10, 1)]);
        assert!(f.filters_process());
        assert!(f.process_matches(1, &comm("x"), false, in_a_b), "a descendant of /a");
        assert!(cgroups(&[(20, 2)]).process_matches(1, &comm("x"), false, in_a_b), "itself");
        assert!(!f.process_matches(1, &comm("x"), false, root), "the root is not below /a");
        assert!(!cgroups(&[(10, 2)]).process_matches(1, &comm("x"), false, in_a_b), "wrong level");
        assert!(!cgroups(&[(30, 3)]).process_matches(1, &comm("x"), false, in_a_b), "deeper");
    }

    #[test]
    fn any_cgroup_of_the_list_matches_and_only_the_first_n_count() {
        let f = cgroups(&[(99, 1), (20, 2)]);
        assert!(f.process_matches(1, &comm("x"), false, in_a_b));
        let mut f = cgroups(&[(99, 1)]);
        f.cgroups[1] = CgroupMatch { id: 20, level: 2, _pad0: 0 };
        assert!(!f.process_matches(1, &comm("x"), false, in_a_b), "a stale slot");
        let all: Vec<(u64, u32)> = (0..MAX_FILTER_CGROUPS as u64).map(|i| (100 + i, 1)).collect();
        let mut f = cgroups(&all);
        f.cgroups[MAX_FILTER_CGROUPS - 1].id = 10;
        assert!(f.process_matches(1, &comm("x"), false, in_a_b), "the last slot is looked at");
    }

    #[test]
    fn cgroup_filter_applies_with_the_other_process_filters() {
        let mut f = cgroups(&[(10, 1)]);
        f.has_comm = 1;
        f.comm = comm("nginx");
        assert!(f.process_matches(1, &comm("nginx"), false, in_a_b));
        assert!(!f.process_matches(1, &comm("redis"), false, in_a_b));
        assert!(!f.process_matches(1, &comm("nginx"), false, root));
        let mut f = cgroups(&[(10, 1)]);
        f.follow = 1;
        assert!(f.process_matches(1, &comm("x"), true, in_a_b));
        assert!(!f.process_matches(1, &comm("x"), true, root), "followed, but elsewhere");
        assert!(!f.process_matches(1, &comm("x"), false, in_a_b), "here, but not followed");
    }

    #[test]
    fn the_cgroup_helper_is_not_called_without_a_cgroup_filter() {
        let never = |_: u32| -> u64 { panic!("no cgroup filter") };
        assert!(pids(&[7]).process_matches(7, &comm("x"), false, never));
    }
}
