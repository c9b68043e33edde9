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
}

const _: () = assert!(size_of::<Filter>() == 64);

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
        }
    }

    /// A process filter needs the owner map to attribute softirq state changes.
    #[inline(always)]
    pub const fn filters_process(&self) -> bool {
        self.n_pids != 0 || self.has_comm != 0 || self.follow != 0
    }

    /// Whether the process `tgid`, whose thread runs `comm` (NUL-padded, as the kernel's
    /// `task->comm`), is one the user asked for. `followed`: whether `tgid` is in the `FOLLOWED`
    /// map; only read when `follow` is set, so callers need not look it up otherwise.
    #[inline(always)]
    pub fn process_matches(&self, tgid: u32, comm: &[u8; 16], followed: bool) -> bool {
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
}

const _: () = assert!(size_of::<Settings>() == 20);

impl Settings {
    pub const fn none() -> Self {
        Self { stacks: 0, fork_child_pid: 0, bench: 0, wakeup_bytes: 0, lean: 0 }
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
        assert!(f.process_matches(1, &comm("x"), false));
        assert!(f.addr_matches(AF_INET, 1, 2));
        assert!(f.addr_matches(AF_INET6, 0, 0));
    }

    #[test]
    fn pids_match_only_the_first_n_pids() {
        let f = pids(&[10, 20, 30]);
        assert!(f.filters_process());
        for pid in [10, 20, 30] {
            assert!(f.process_matches(pid, &comm("x"), false), "{pid}");
        }
        for pid in [0, 11, 40] {
            assert!(!f.process_matches(pid, &comm("x"), false), "{pid}");
        }
        // A stale pid past `n_pids` does not count, nor does the zero filling.
        let mut f = pids(&[10]);
        f.pids[1] = 20;
        assert!(!f.process_matches(20, &comm("x"), false));
        assert!(!f.process_matches(0, &comm("x"), false));
        // Every slot is looked at.
        let all: Vec<u32> = (1..=MAX_FILTER_PIDS as u32).collect();
        let f = pids(&all);
        assert!(f.process_matches(MAX_FILTER_PIDS as u32, &comm("x"), false));
    }

    #[test]
    fn comm_matches_all_sixteen_bytes() {
        let mut f = Filter::none();
        f.has_comm = 1;
        f.comm = comm("curl");
        assert!(f.filters_process());
        assert!(f.process_matches(1, &comm("curl"), false));
        assert!(!f.process_matches(1, &comm("cur"), false), "a prefix");
        assert!(!f.process_matches(1, &comm("curl2"), false), "a longer name");
        assert!(!f.process_matches(1, &comm("Curl"), false));
        let long = "fifteen_chars_x";
        f.comm = comm(long);
        assert!(f.process_matches(1, &comm(long), false));
        assert!(!f.process_matches(1, &comm("fifteen_chars_y"), false), "last byte differs");
    }

    #[test]
    fn pids_and_comm_must_both_match() {
        let mut f = pids(&[7]);
        f.has_comm = 1;
        f.comm = comm("nginx");
        assert!(f.process_matches(7, &comm("nginx"), false));
        assert!(!f.process_matches(8, &comm("nginx"), false));
        assert!(!f.process_matches(7, &comm("redis"), false));
    }

    #[test]
    fn follow_decides_alone() {
        let mut f = pids(&[7]);
        f.has_comm = 1;
        f.comm = comm("nginx");
        f.follow = 1;
        assert!(f.filters_process());
        assert!(f.process_matches(99, &comm("other"), true), "pids and comm are unused");
        assert!(!f.process_matches(7, &comm("nginx"), false));
        let mut f = Filter::none();
        f.follow = 1;
        assert!(f.filters_process());
        assert!(!f.process_matches(1, &comm("x"), false));
        assert!(Filter::none().process_matches(1, &comm("x"), false), "ignored unless following");
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
}
