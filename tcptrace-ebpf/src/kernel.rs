//! Walks through kernel structures with offsets from BTF (see `KernelOffsets`).
//!
//! task_struct → files_struct → fdtable → file → socket → sock. Each member is read with
//! `bpf_probe_read_kernel`; a failed read ends the walk with `ReadFailed` (counted), while the
//! expected "no"s (no BTF offsets, an empty slot, a file that is not a TCP socket) are
//! `Ok(None)`. The members and their kernels: include/linux/sched.h (`task_struct`),
//! include/linux/fdtable.h (`files_struct`, `fdtable`), include/linux/fs.h (`file`, `inode`),
//! include/linux/net.h (`socket`), include/net/sock.h and include/net/inet_sock.h (`sock`,
//! `sock_common`, `inet_sock`); user space finds each offset by name in the running kernel's
//! BTF, so no layout is assumed here.

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
    generated::bpf_task_pt_regs,
};
use tcptrace_common::{AF_INET, AF_INET6, IPPROTO_TCP};

use crate::maps::{OFFSETS, ReadFailed, global, offsets_valid};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// include/linux/sched.h
const PF_EXITING: u32 = 0x0000_0004;

/// `T` at `addr`. A null `addr` is a failed read too: every pointer followed here is one the
/// kernel keeps set while the walk can see it (the exceptions are checked by the callers).
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ReadFailed> {
    if addr == 0 {
        return Err(ReadFailed);
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports a fault as an error.
    Ok(unsafe { bpf_probe_read_kernel(addr as *const T) }?)
}

#[inline(always)]
fn member<T>(base: u64, offset: u32) -> Result<T, ReadFailed> {
    if base == 0 {
        return Err(ReadFailed);
    }
    read(base + u64::from(offset))
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: helper with no preconditions.
    unsafe { bpf_get_current_task() }
}

/// The current task's descriptor table: the `fd` array and its length.
pub struct FdTable {
    fds: u64,
    max_fds: u32,
}

impl FdTable {
    /// `None` without BTF offsets, or for a task without a descriptor table (`task->files` is
    /// NULL for some kernel threads, and after exit_files()).
    #[inline(always)]
    pub fn current() -> Result<Option<Self>, ReadFailed> {
        if !offsets_valid() {
            return Ok(None);
        }
        let files: u64 = member(current_task(), global!(OFFSETS.task_files))?;
        if files == 0 {
            return Ok(None);
        }
        let fdt: u64 = member(files, global!(OFFSETS.files_fdt))?;
        let max_fds: u32 = member(fdt, global!(OFFSETS.fdtable_max_fds))?;
        let fds: u64 = member(fdt, global!(OFFSETS.fdtable_fd))?;
        Ok(Some(Self { fds, max_fds }))
    }

    #[inline(always)]
    pub fn max_fds(&self) -> u32 {
        self.max_fds
    }

    /// The `struct file *` behind `fd`; `None` when the slot is empty or out of range.
    #[inline(always)]
    pub fn file(&self, fd: u32) -> Result<Option<u64>, ReadFailed> {
        if fd >= self.max_fds {
            return Ok(None);
        }
        let file: u64 = read(self.fds + u64::from(fd) * 8)?;
        Ok(if file == 0 { None } else { Some(file) })
    }
}

/// `sk` of the socket behind `file`; `None` when the file is not a socket, or a socket without
/// a sock (released, or never given one).
#[inline(always)]
pub fn socket_sock(file: u64) -> Result<Option<u64>, ReadFailed> {
    let inode: u64 = member(file, global!(OFFSETS.file_inode))?;
    let mode: u16 = member(inode, global!(OFFSETS.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(None);
    }
    let socket: u64 = member(file, global!(OFFSETS.file_private_data))?;
    let sk: u64 = member(socket, global!(OFFSETS.socket_sk))?;
    Ok(if sk == 0 { None } else { Some(sk) })
}

/// How many references the file has: `f_count` on older kernels, `f_ref + 1` on 6.13+.
#[inline(always)]
pub fn file_refs(file: u64) -> Result<i64, ReadFailed> {
    let raw: i64 = member(file, global!(OFFSETS.file_refcount))?;
    Ok(raw + i64::from(global!(OFFSETS.file_ref_bias)))
}

/// The TCP state of `sk` (`skc_state`), alone: for events whose socket user space already knows.
#[inline(always)]
pub fn sock_state(sk: u64) -> Result<u8, ReadFailed> {
    member(sk, global!(OFFSETS.skc_state))
}

/// The current task's address space (`task->mm`: an exec replaces it; 0 in a kernel thread);
/// `None` without BTF offsets.
#[inline(always)]
pub fn current_mm() -> Result<Option<u64>, ReadFailed> {
    if !offsets_valid() {
        return Ok(None);
    }
    member(current_task(), global!(OFFSETS.task_mm)).map(Some)
}

/// The current task's thread pointer (`KernelOffsets::task_fsbase`); `None` where unknown.
#[inline(always)]
pub fn current_thread_pointer() -> Option<u64> {
    let offset = global!(OFFSETS.task_fsbase);
    if !offsets_valid() || offset == 0 {
        return None;
    }
    member::<u64>(current_task(), offset).ok().filter(|&fs| fs != 0)
}

/// The current task's user frame pointer, as its syscall entry saved it; `None` where the
/// kernel cannot hand the programs those registers (`KernelOffsets::connect_regs`).
#[inline(always)]
pub fn current_user_frame_pointer() -> Option<u64> {
    if !offsets_valid() || global!(OFFSETS.connect_regs) == 0 {
        return None;
    }
    // SAFETY: helpers with no preconditions; the verifier types the task pointer (BTF).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    member::<u64>(regs, global!(OFFSETS.regs_fp)).ok()
}

/// The descriptor the current task passed to connect(2), from the user registers its syscall
/// entry saved; `None` when it is not inside connect() (io_uring, a socket the kernel opens).
/// Only where `KernelOffsets::connect_regs` is set (`syscalls::connect_fd` decides).
///
/// `bpf_task_pt_regs` (5.15+) gives the registers `entry_SYSCALL_64` saved; x86-64 keeps the
/// syscall number in `orig_ax` and the first argument in `di` (arch/x86/include/asm/ptrace.h),
/// whose offsets user space reads from BTF.
#[inline(always)]
pub fn connect_fd_from_regs() -> Result<Option<i32>, ReadFailed> {
    // SAFETY: helpers with no preconditions; the verifier types the task pointer (BTF).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let nr: u64 = member(regs, global!(OFFSETS.regs_syscall_nr))?;
    if nr != u64::from(global!(OFFSETS.sys_connect)) {
        return Ok(None);
    }
    let fd: u64 = member(regs, global!(OFFSETS.regs_arg0))?;
    Ok(Some(fd as i32))
}

/// What a TCP `struct sock` says about itself: state, family, ports and addresses.
pub struct SockInfo {
    pub family: u16,
    pub state: u8,
    pub lport: u16,
    pub rport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl SockInfo {
    /// Reads an IPv4 or IPv6 TCP socket; `None` for anything else, found after two reads.
    #[inline(always)]
    pub fn read(sk: u64) -> Result<Option<Self>, ReadFailed> {
        let protocol: u16 = member(sk, global!(OFFSETS.sock_protocol))?;
        let family: u16 = member(sk, global!(OFFSETS.skc_family))?;
        if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
            return Ok(None);
        }
        let state: u8 = member(sk, global!(OFFSETS.skc_state))?;
        let lport_be: u16 = member(sk, global!(OFFSETS.inet_sport))?;
        let rport_be: u16 = member(sk, global!(OFFSETS.skc_dport))?;
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET {
            let s: [u8; 4] = member(sk, global!(OFFSETS.skc_rcv_saddr))?;
            let d: [u8; 4] = member(sk, global!(OFFSETS.skc_daddr))?;
            saddr[..4].copy_from_slice(&s);
            daddr[..4].copy_from_slice(&d);
        } else {
            saddr = member(sk, global!(OFFSETS.skc_v6_rcv_saddr))?;
            daddr = member(sk, global!(OFFSETS.skc_v6_daddr))?;
        }
        Ok(Some(Self {
            family,
            state,
            lport: u16::from_be(lport_be),
            rport: u16::from_be(rport_be),
            saddr,
            daddr,
        }))
    }
}

/// Whether the current task is in do_exit() (PF_EXITING is set by exit_signals()).
#[inline(always)]
pub fn current_is_exiting() -> Result<bool, ReadFailed> {
    let flags: u32 = member(current_task(), global!(OFFSETS.task_flags))?;
    Ok(flags & PF_EXITING != 0)
}

/// Whether the current task is the last live thread of its process (`signal->live` reached 0);
/// `None` without BTF offsets.
#[inline(always)]
pub fn current_group_dead() -> Result<Option<bool>, ReadFailed> {
    if !offsets_valid() {
        return Ok(None);
    }
    let signal: u64 = member(current_task(), global!(OFFSETS.task_signal))?;
    let live: i32 = member(signal, global!(OFFSETS.signal_live))?;
    Ok(Some(live == 0))
}
