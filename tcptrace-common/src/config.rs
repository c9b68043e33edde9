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
    pub const fn filters_process(&self) -> bool {
        self.n_pids != 0 || self.has_comm != 0 || self.follow != 0
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
pub const BENCH_FLOOR: u32 = 1;
/// `Settings::bench`: the least per-connection work a tracer that matches opens to closes can
/// do, and nothing else: at each connect() and accept(), an owner-map entry and one record; at
/// the CLOSE of a socket with an entry, its removal and one record.
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
    /// `cargo xtask bench`'s reference points (`BENCH_*`); 0 for real use.
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
