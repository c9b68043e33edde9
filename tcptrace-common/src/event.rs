//! Events emitted through the ring buffer.

/// `RawEvent::kind`: a state change reported by `sock:inet_sock_set_state`.
pub const KIND_STATE: u8 = 1;
/// `RawEvent::kind`: the `CLOSE -> SYN_SENT` change, seen in the thread that called `connect()`.
pub const KIND_CONNECT: u8 = 2;
/// `RawEvent::kind`: `accept()`/`accept4()` returned a descriptor for a TCP socket.
pub const KIND_ACCEPT: u8 = 3;
/// `RawEvent::kind`: the process gave up its last descriptor (the `tcp_close()` moment).
pub const KIND_RELEASE: u8 = 4;
/// `RawEvent::kind`: the last thread of a process exited.
pub const KIND_EXIT: u8 = 5;
/// `RawEvent::kind`: the process called execve() (only with stacks on: its cached symbols are
/// stale, and the file it runs names the build id of its stacks). Sent as a `RawExec`.
pub const KIND_EXEC: u8 = 6;

/// `RawEvent::flags`: the change follows a RST received for this socket (`tcp:tcp_receive_reset`).
pub const FLAG_RESET: u16 = 1 << 0;
/// `RawEvent::flags`: the address fields are valid (state events always; accept and release only
/// when the kernel's struct offsets are known).
pub const FLAG_ADDRS: u16 = 1 << 1;
/// `RawEvent::flags`: the owner map was full, so this socket's owner is not remembered.
pub const FLAG_OWNER_LOST: u16 = 1 << 2;

/// `RawEvent::reason` for `KIND_RELEASE`: close(2) of the last descriptor.
pub const RELEASE_CLOSE: u8 = 1;
/// `RawEvent::reason` for `KIND_RELEASE`: close_range(2).
pub const RELEASE_CLOSE_RANGE: u8 = 2;
/// `RawEvent::reason` for `KIND_RELEASE`: dup2(2)/dup3(2) over the descriptor.
pub const RELEASE_DUP: u8 = 3;
/// `RawEvent::reason` for `KIND_RELEASE`: the process exited while holding the descriptor.
pub const RELEASE_EXIT: u8 = 4;

/// One ring-buffer record. Fields that do not apply to a kind are zero (`fd` is -1 when unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Address of the `struct sock`; with the open time, the connection's identity.
    pub skaddr: u64,
    /// Current task's process (tgid) and thread ids: meaningful for connect, accept, release and
    /// exit; for other state changes it is whatever task the softirq interrupted.
    pub pid: u32,
    pub tid: u32,
    /// The process that opened the socket (connect/accept), from the kernel's owner map; 0 if
    /// unknown (opened before tracing started, or not yet accepted).
    pub owner_pid: u32,
    /// The owner's descriptor, or the descriptor of connect/accept/close; -1 if unknown.
    pub fd: i32,
    /// Current task's comm (the thread name).
    pub comm: [u8; 16],
    pub kind: u8,
    /// TCP states as the kernel numbers them (`TCP_ESTABLISHED` = 1 ... `TCP_NEW_SYN_RECV` = 12).
    pub old_state: u8,
    pub new_state: u8,
    /// `RELEASE_*` for releases, 0 otherwise.
    pub reason: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local and remote ports, host byte order.
    pub lport: u16,
    pub rport: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Id of the user stack in the `STACKS` map (connect and accept), or `STACK_NONE`.
    pub user_stack: i32,
    /// IPv4 addresses use the first 4 bytes; network byte order as in the kernel.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Id of the kernel stack in the `STACKS` map (connect and accept), or `STACK_NONE`.
    pub kernel_stack: i32,
    pub _pad0: u32,
    /// The opener's cgroup v2 id (`bpf_get_current_cgroup_id()`, the inode of its cgroup
    /// directory) for connect, listen and accept; 0 otherwise. Read once per open, where the
    /// opener is the current task, so every later change of the socket is attributed from it.
    pub cgroup_id: u64,
}

const _: () = assert!(size_of::<RawEvent>() == 112);
const _: () = assert!(align_of::<RawEvent>() == 8);

impl RawEvent {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            skaddr: 0,
            pid: 0,
            tid: 0,
            owner_pid: 0,
            fd: -1,
            comm: [0; 16],
            kind: 0,
            old_state: 0,
            new_state: 0,
            reason: 0,
            family: 0,
            lport: 0,
            rport: 0,
            flags: 0,
            user_stack: STACK_NONE,
            saddr: [0; 16],
            daddr: [0; 16],
            kernel_stack: STACK_NONE,
            _pad0: 0,
            cgroup_id: 0,
        }
    }
}

/// Indexes of the per-CPU `COUNTERS` map.
pub const COUNTER_LOST_EVENTS: u32 = 0;
/// Owner map full: a socket's owner could not be remembered.
pub const COUNTER_OWNER_MAP_FULL: u32 = 1;
/// Thread-context map full: a syscall's context (connect fd, release reason) was not recorded.
pub const COUNTER_CTX_MAP_FULL: u32 = 2;
/// A stack could not be captured (`bpf_get_stackid` failed: map full, or a hash collision).
pub const COUNTER_STACK_FAILED: u32 = 3;
/// A child of a followed process could not be followed (`FOLLOWED` map full).
pub const COUNTER_FOLLOW_FULL: u32 = 4;
/// A state change the kernel kept from `inet_sock_set_state_raw` (it was already running on
/// the CPU, interrupted by the softirq making this change) and that `inet_sock_set_state_nested`
/// handled instead.
pub const COUNTER_NESTED_CHANGES: u32 = 5;
/// A kernel read failed (a `bpf_probe_read_kernel` fault walking task, descriptor table,
/// file and socket, or a tracepoint field that could not be read), so an event or a release was
/// not sent. An expected "no" (an empty descriptor slot, a file that is not a TCP socket, no BTF
/// offsets) is not counted.
pub const COUNTER_READ_FAILED: u32 = 6;
/// A record was written to the ring. User space compares it with the records it read: a
/// difference after the last drain is a loss no other counter sees.
pub const COUNTER_SENT_EVENTS: u32 = 7;
pub const COUNTER_COUNT: u32 = 8;

/// `RawEvent::user_stack`/`kernel_stack`: no stack captured.
pub const STACK_NONE: i32 = -1;

/// Frames of a user stack in the `USER_STACKS` map: the innermost ones (a deeper stack loses
/// its outermost frames, the runtime's start-up).
pub const USER_STACK_FRAMES: usize = 64;

/// `BuildIdFrame::status` (`enum bpf_stack_build_id_status`): no frame (the stack ended).
pub const BUILD_ID_EMPTY: i32 = 0;
/// `BuildIdFrame::status`: `build_id` and `offset` (in that file) are valid.
pub const BUILD_ID_VALID: i32 = 1;
/// `BuildIdFrame::status`: only the instruction address is known (anonymous memory, or the
/// file's build id could not be read).
pub const BUILD_ID_IP: i32 = 2;

/// One frame of a `USER_STACKS` value (`struct bpf_stack_build_id`): the kernel resolves each
/// address to the file it is in when it captures the stack, so the stack means something after
/// the process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildIdFrame {
    pub status: i32,
    pub build_id: [u8; 20],
    /// With `BUILD_ID_VALID` the offset in the file, with `BUILD_ID_IP` the address.
    pub offset_or_ip: u64,
}

const _: () = assert!(size_of::<BuildIdFrame>() == 32);

/// The length of the path an exec record carries (longer ones are cut).
pub const EXEC_PATH_LEN: usize = 256;

/// `KIND_EXEC` record: the event, then the path the process exec'd (NUL-terminated, as passed
/// to execve(): it can be relative to the process's working directory).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawExec {
    pub event: RawEvent,
    pub filename: [u8; EXEC_PATH_LEN],
}

const _: () = assert!(size_of::<RawExec>() == 112 + EXEC_PATH_LEN);

/// Value of the kernel's owner map, keyed by `skaddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub fd: i32,
    /// Non-zero once a release was reported, so a second close-style change is not reported again.
    pub released: u32,
    pub _pad0: u32,
}

const _: () = assert!(size_of::<Owner>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no implicit padding (checked by the size assertions).
unsafe impl aya::Pod for RawEvent {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Owner {}

/// TCP states as include/net/tcp_states.h numbers them.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}
