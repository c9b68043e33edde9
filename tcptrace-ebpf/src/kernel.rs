//! Walks through kernel structures with offsets from BTF (see `KernelOffsets`).
//!
//! task_struct → files_struct → fdtable → file → socket → sock. Each member is read with
//! `bpf_probe_read_kernel`; a failed read ends the walk.

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
    generated::bpf_task_pt_regs,
};

use crate::maps::{OFFSETS, global};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// include/linux/sched.h
const PF_EXITING: u32 = 0x0000_0004;

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, i32> {
    if addr == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports a fault as an error.
    unsafe { bpf_probe_read_kernel(addr as *const T) }
}

#[inline(always)]
fn member<T>(base: u64, offset: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(-1);
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
    #[inline(always)]
    pub fn current() -> Result<Self, i32> {
        let files: u64 = member(current_task(), global!(OFFSETS.task_files))?;
        let fdt: u64 = member(files, global!(OFFSETS.files_fdt))?;
        let max_fds: u32 = member(fdt, global!(OFFSETS.fdtable_max_fds))?;
        let fds: u64 = member(fdt, global!(OFFSETS.fdtable_fd))?;
        Ok(Self { fds, max_fds })
    }

    #[inline(always)]
    pub fn max_fds(&self) -> u32 {
        self.max_fds
    }

    /// The `struct file *` behind `fd`, or an error when the slot is empty or out of range.
    #[inline(always)]
    pub fn file(&self, fd: u32) -> Result<u64, i32> {
        if fd >= self.max_fds {
            return Err(-1);
        }
        let file: u64 = read(self.fds + u64::from(fd) * 8)?;
        if file == 0 { Err(-1) } else { Ok(file) }
    }
}

/// `sk` of the socket behind `file`, or an error when the file is not a socket.
#[inline(always)]
pub fn socket_sock(file: u64) -> Result<u64, i32> {
    let inode: u64 = member(file, global!(OFFSETS.file_inode))?;
    let mode: u16 = member(inode, global!(OFFSETS.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(-1);
    }
    let socket: u64 = member(file, global!(OFFSETS.file_private_data))?;
    let sk: u64 = member(socket, global!(OFFSETS.socket_sk))?;
    if sk == 0 { Err(-1) } else { Ok(sk) }
}

/// How many references the file has: `f_count` on older kernels, `f_ref + 1` on 6.13+.
#[inline(always)]
pub fn file_refs(file: u64) -> Result<i64, i32> {
    let raw: i64 = member(file, global!(OFFSETS.file_refcount))?;
    Ok(raw + i64::from(global!(OFFSETS.file_ref_bias)))
}

/// The TCP state of `sk` (`skc_state`), alone: for events whose socket user space already knows.
#[inline(always)]
pub fn sock_state(sk: u64) -> Result<u8, i32> {
    member(sk, global!(OFFSETS.skc_state))
}

/// The current task's address space (`task->mm`): an exec replaces it.
#[inline(always)]
pub fn current_mm() -> Result<u64, i32> {
    if global!(OFFSETS.valid) == 0 {
        return Err(-1);
    }
    member(current_task(), global!(OFFSETS.task_mm))
}

/// The descriptor the current task passed to connect(2), from the user registers its syscall
/// entry saved; an error when it is not inside connect() (io_uring, a socket the kernel opens).
/// Only where `KernelOffsets::connect_regs` is set (`syscalls::connect_fd` decides).
#[inline(always)]
pub fn connect_fd_from_regs() -> Result<i32, i32> {
    // SAFETY: helpers with no preconditions; the verifier types the task pointer (BTF).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let nr: u64 = member(regs, global!(OFFSETS.regs_syscall_nr))?;
    if nr != u64::from(global!(OFFSETS.sys_connect)) {
        return Err(-1);
    }
    let fd: u64 = member(regs, global!(OFFSETS.regs_arg0))?;
    Ok(fd as i32)
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
    /// Reads an IPv4 or IPv6 TCP socket; an error for anything else, found after two reads.
    #[inline(always)]
    pub fn read(sk: u64) -> Result<Self, i32> {
        let protocol: u16 = member(sk, global!(OFFSETS.sock_protocol))?;
        let family: u16 = member(sk, global!(OFFSETS.skc_family))?;
        if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
            return Err(-1);
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
        Ok(Self {
            family,
            state,
            lport: u16::from_be(lport_be),
            rport: u16::from_be(rport_be),
            saddr,
            daddr,
        })
    }
}

/// Whether the current task is in do_exit() (PF_EXITING is set by exit_signals()).
#[inline(always)]
pub fn current_is_exiting() -> bool {
    member::<u32>(current_task(), global!(OFFSETS.task_flags)).is_ok_and(|f| f & PF_EXITING != 0)
}

/// Whether the current task is the last live thread of its process (`signal->live` reached 0).
#[inline(always)]
pub fn current_group_dead() -> Result<bool, i32> {
    let signal: u64 = member(current_task(), global!(OFFSETS.task_signal))?;
    let live: i32 = member(signal, global!(OFFSETS.signal_live))?;
    Ok(live == 0)
}
