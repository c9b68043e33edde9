//! Kernel struct member offsets, read from the running kernel's BTF by user space and handed to
//! the kernel programs as the `OFFSETS` global (Rust eBPF has no CO-RE relocations yet).

/// Byte offsets of the members the kernel programs walk: task → files → fdtable → file →
/// socket → sock. `valid == 0` means BTF was unavailable: the walks are skipped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    pub task_files: u32,
    pub task_flags: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    /// `file.f_count` (6.1: atomic_long_t, count of references) or `file.f_ref` (6.13+:
    /// file_ref_t, where 0 means one reference); `file_ref_bias` turns either into a count.
    pub file_refcount: u32,
    pub file_ref_bias: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sock_protocol: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    /// `inet_sock.inet_sport` (network order), which keeps the local port after CLOSE.
    pub inet_sport: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `task_struct.mm`: with an address stack, the key of a cached build-id stack (an exec
    /// replaces the mm, so a cached stack never outlives the mappings it was resolved against).
    pub task_mm: u32,
    /// 1 when connect()'s descriptor can be read from the caller's saved user registers
    /// (`bpf_task_pt_regs`, 5.15+) at the `CLOSE -> SYN_SENT` change, so no syscall programs
    /// need to remember it; the three members below are then set.
    pub connect_regs: u32,
    /// `pt_regs` members holding the syscall number and its first argument (x86-64: `orig_ax`
    /// and `di`).
    pub regs_syscall_nr: u32,
    pub regs_arg0: u32,
    /// This architecture's number of connect(2).
    pub sys_connect: u32,
    /// `task_struct.thread.fsbase` (x86-64): the thread pointer, which is what
    /// `pthread_self()` returns, so a Python thread is found by it in any pid namespace
    /// (`PyLayout::tstate_thread_id`). 0 when unknown: threads are then matched by thread id.
    pub task_fsbase: u32,
    /// `pt_regs` member holding the user frame pointer (x86-64: `bp`), for the walk of a
    /// JVM's frames; set with `connect_regs`, as it needs the same helper.
    pub regs_fp: u32,
    /// 1 when the verifier knows `bpf_loop` (5.17+): the interpreter walks' loops then run as
    /// its callbacks, which the verifier checks once, instead of unrolled, which it checks
    /// iteration by iteration (the kernel crate's `loops` module).
    pub has_loop: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 31 * 4);

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        Self {
            valid: 0,
            task_files: 0,
            task_flags: 0,
            task_signal: 0,
            signal_live: 0,
            files_fdt: 0,
            fdtable_max_fds: 0,
            fdtable_fd: 0,
            file_private_data: 0,
            file_inode: 0,
            file_refcount: 0,
            file_ref_bias: 0,
            inode_mode: 0,
            socket_sk: 0,
            sock_protocol: 0,
            skc_family: 0,
            skc_state: 0,
            inet_sport: 0,
            skc_dport: 0,
            skc_daddr: 0,
            skc_rcv_saddr: 0,
            skc_v6_daddr: 0,
            skc_v6_rcv_saddr: 0,
            task_mm: 0,
            connect_regs: 0,
            regs_syscall_nr: 0,
            regs_arg0: 0,
            sys_connect: 0,
            task_fsbase: 0,
            regs_fp: 0,
            has_loop: 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), u32 fields only, no padding (checked by the size assertion).
unsafe impl aya::Pod for KernelOffsets {}
