//! Maps, load-time globals and the small accessors every hook shares.
//!
//! Each `#[map]` static and `#[no_mangle]` global is named after the constant of the same name
//! in `tcptrace_common::names`, which user space loads it by: keep the two spellings equal.

use core::{
    cell::UnsafeCell,
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{
        BPF_F_STACK_BUILD_ID, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        bpf_map_def, bpf_map_type::BPF_MAP_TYPE_STACK_TRACE,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use tcptrace_common::{
    BuildIdFrame, CONFIG_CLOSE_HOOK, CONFIG_COUNT, COUNTER_COUNT, COUNTER_LOST_EVENTS,
    COUNTER_OWNER_MAP_FULL, COUNTER_READ_FAILED, COUNTER_SENT_EVENTS, Filter, FrameSlots,
    KernelOffsets, Owner, PyLayout, RawEvent, Settings, StateMarks, USER_STACK_FRAMES,
};

/// Reads a load-time global. The volatile read keeps the compiler from folding the zero
/// initialiser; the verifier still sees the patched value because `.rodata` is frozen.
macro_rules! global {
    ($place:expr) => {
        // SAFETY: reading a plain-data static.
        unsafe { core::ptr::read_volatile(&raw const $place) }
    };
}
pub(crate) use global;

/// Set by user space at load time (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
pub static FILTER: Filter = Filter::none();
/// Set by user space at load time from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Set by user space at load time (`--stacks`, lean mode, and `cargo xtask bench`'s
/// reference points, read only with the `bench` feature).
#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings::none();

/// The `FILTER` global, by reference, for `Filter`'s methods. The address goes through a
/// volatile read for the reason `global!` reads volatile: a plain reference would let the
/// compiler see the static's `Filter::none()` initialiser and fold every filter away. A
/// reference rather than a copy: the 64 bytes would count against the 512-byte stack of the
/// exit scan's call chain on 6.1 (see `process::report_exit`).
#[inline(always)]
pub fn filter() -> &'static Filter {
    let address = &raw const FILTER;
    // SAFETY: reads a local; the pointer it yields is the static's, valid for 'static.
    unsafe { &*core::ptr::read_volatile(&address) }
}

/// The current task's cgroup v2 id, for an open record (`Settings::cgroup_ids`), or 0.
#[inline(always)]
pub fn opener_cgroup() -> u64 {
    if global!(SETTINGS.cgroup_ids) == 0 {
        return 0;
    }
    // SAFETY: a helper without arguments, allowed in every tracing program.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Whether only the state changes an aggregating reader uses are sent (`Settings::lean`).
#[inline(always)]
pub fn lean() -> bool {
    global!(SETTINGS.lean) != 0
}

/// Kernel stacks captured at connect and accept, by id (`RawEvent::kernel_stack`). Equal stacks
/// share an id, so the map holds distinct open sites, not opens. Size set by user space.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// A stack-trace map of `USER_STACK_FRAMES` frames, whose values are either addresses or, with
/// `BPF_F_STACK_BUILD_ID`, `BuildIdFrame`s, which aya-ebpf's `StackTrace` does not model (and
/// its depth is fixed at 127).
#[repr(transparent)]
pub struct UserStacks(UnsafeCell<bpf_map_def>);

// SAFETY: only the loader reads the definition; the kernel owns the map.
unsafe impl Sync for UserStacks {}

impl UserStacks {
    const fn with_max_entries(max_entries: u32, build_ids: bool) -> Self {
        let (frame, flags) = if build_ids {
            (size_of::<BuildIdFrame>(), BPF_F_STACK_BUILD_ID)
        } else {
            (size_of::<u64>(), 0)
        };
        Self(UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_STACK_TRACE,
            key_size: size_of::<u32>() as u32,
            value_size: (frame * USER_STACK_FRAMES) as u32,
            max_entries,
            map_flags: flags,
            id: 0,
            pinning: 0,
        }))
    }

    pub const fn as_ptr(&self) -> *mut c_void {
        self.0.get().cast()
    }
}

/// User stacks captured at connect and accept, by id (`RawEvent::user_stack`), each frame as
/// (build id, file offset): they resolve after the process is gone, without its mappings.
/// Size set by user space.
#[map]
pub static USER_STACKS: UserStacks = UserStacks::with_max_entries(8192, true);

/// The same stacks as addresses, only to recognise a stack already resolved: the kernel reads
/// the build id of every frame's file on each build-id capture, which costs far more than the
/// frame walk. Size set by user space.
#[map]
pub static USER_ADDR_STACKS: UserStacks = UserStacks::with_max_entries(8192, false);

/// One address stack of one address space (see `SITE_STACKS`).
#[repr(C)]
pub struct SiteKey {
    /// `task->mm`: the mappings the addresses belong to.
    pub mm: u64,
    /// Id in `USER_ADDR_STACKS`.
    pub addr_stack: u32,
    pub _pad0: u32,
}

const _: () = assert!(size_of::<SiteKey>() == 16);

/// (address space, address stack) → id in `USER_STACKS`: each open site's build ids are read
/// once per process image. LRU, so a host of short-lived processes never fills it. Size set by
/// user space.
#[map]
pub static SITE_STACKS: LruHashMap<SiteKey, i32> = LruHashMap::with_max_entries(8192, 0);

/// The processes `tcptrace run` follows (`Filter::follow`), by tgid, plus the thread ids of
/// their threads (fork cannot tell a thread from a process) → 1. User space puts the command's
/// pid in before it execs; forks of a followed task join; exits leave. Size set by user space.
#[map]
pub static FOLLOWED: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);

/// tgid → where its Python interpreter keeps its frames (see `interp`). User space adds a
/// process when it recognises its interpreter and removes it at exit. Size set by user space
/// (1 without user stacks).
#[map]
pub static PY_PROCS: HashMap<u32, PyLayout> = HashMap::with_max_entries(1, 0);

/// tgid → what a frame-pointer walk reads in its JVM's or Node's frames (see `interp`). As
/// `PY_PROCS`.
#[map]
pub static FP_PROCS: HashMap<u32, FrameSlots> = HashMap::with_max_entries(1, 0);

/// All events, in order per CPU. Size set by user space.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters of things that went wrong (`COUNTER_*`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Runtime configuration (`CONFIG_*`): written by user space once the close hook is chosen.
#[map]
pub static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_COUNT, 0);

/// skaddr → the process that opened it (connect, accept, listen). Lets softirq state changes be
/// attributed and filtered by process. Entries go away when the socket reaches CLOSE.
#[map]
pub static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(65536, 0);

/// Thread id → descriptor passed to an in-flight connect(), read by the `CLOSE -> SYN_SENT`
/// change that runs inside that syscall.
#[map]
pub static CONNECT_FD: HashMap<u32, i32> = HashMap::with_max_entries(16384, 0);

/// The last socket that received a RST on this CPU: `tcp_reset()` fires `tcp_receive_reset` and
/// then moves the socket to CLOSE without leaving the CPU.
#[map]
pub static LAST_RESET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's marks of the state changes `inet_sock_set_state_raw` ran for (see `nested`).
#[map]
pub static STATE_MARKS: PerCpuArray<StateMarks> = PerCpuArray::with_max_entries(1, 0);

/// A kernel read failed: a `bpf_probe_read_kernel` fault, or a tracepoint field that could not
/// be read. Not for an expected "no" (an empty descriptor slot, a file that is not a TCP
/// socket, no BTF offsets): those are `Ok(None)` or `Ok(())` and cost nothing.
#[derive(Clone, Copy)]
pub struct ReadFailed;

impl From<i32> for ReadFailed {
    /// The error of aya's read helpers (`read_at`, `bpf_probe_read_kernel`): a negative errno.
    #[inline(always)]
    fn from(_errno: i32) -> Self {
        Self
    }
}

/// Every hook's last step: counts a failed read in `COUNTER_READ_FAILED`, the one place that
/// does, and returns the program's value (0 for every hook: a tracepoint program's value only
/// tells perf whether to keep its own sample, which nobody records).
#[inline(always)]
pub fn finish<R: Default>(result: Result<(), ReadFailed>) -> R {
    if let Err(ReadFailed) = result {
        count(COUNTER_READ_FAILED);
    }
    R::default()
}

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter) {
        // Atomic although the slot is per-CPU: a softirq program can interrupt a process-context
        // one between its read and its write.
        // SAFETY: a valid, aligned map value for the program's lifetime.
        unsafe { add_one(value) };
    }
}

/// Adds one to `*slot` with BPF's atomic add. (`AtomicU64::fetch_add` is not offered on BPF
/// targets, which lack compare-and-swap; the intrinsic compiles to the atomic add.)
///
/// # Safety
/// `slot` points into a map value that lives for the program's run.
#[inline(always)]
pub unsafe fn add_one(slot: *mut u64) {
    // SAFETY: the caller's.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
}

#[inline(always)]
pub fn close_hook() -> u32 {
    CONFIG.get(CONFIG_CLOSE_HOOK).copied().unwrap_or(0)
}

#[inline(always)]
pub fn offsets_valid() -> bool {
    global!(OFFSETS.valid) != 0
}

/// An event stamped with the current time only: for hooks where the current task is whatever
/// a softirq interrupted.
#[inline(always)]
pub fn stamped_event(kind: u8) -> RawEvent {
    let mut event = RawEvent::zeroed();
    // SAFETY: helper with no preconditions.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    event.kind = kind;
    event
}

/// An event stamped with the current time, task and comm.
#[inline(always)]
pub fn current_event(kind: u8) -> RawEvent {
    let mut event = RawEvent::zeroed();
    // SAFETY: helper with no preconditions.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    event.pid = (pid_tgid >> 32) as u32;
    event.tid = pid_tgid as u32;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    event.kind = kind;
    event
}

/// Copies the event into the ring buffer, or counts it as lost: never silently dropped.
#[inline(always)]
pub fn emit(event: &RawEvent) {
    if EVENTS.output::<RawEvent>(event, wakeup()).is_err() {
        count(COUNTER_LOST_EVENTS);
    } else {
        count(COUNTER_SENT_EVENTS);
    }
}

/// The flags of a ring-buffer submission: wake the reader only when enough is waiting
/// (`Settings::wakeup_bytes`).
#[inline(always)]
pub fn wakeup() -> u64 {
    let threshold = u64::from(global!(SETTINGS.wakeup_bytes));
    if threshold == 0 || EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Remembers who opened `skaddr`; counts (and flags) a full map.
#[inline(always)]
pub fn remember_owner(skaddr: u64, pid: u32, fd: i32) -> bool {
    let owner = Owner { pid, fd, released: 0, _pad0: 0 };
    if OWNERS.insert(skaddr, owner, 0).is_err() {
        count(COUNTER_OWNER_MAP_FULL);
        return false;
    }
    true
}
