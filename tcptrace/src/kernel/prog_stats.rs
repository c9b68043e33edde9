//! Per-program statistics the kernel keeps in `bpf_prog_info`, which aya 0.14 does not expose:
//! `recursion_misses` counts the runs the kernel skipped because the program was already
//! running on that CPU (a softirq interrupting the same hook). Those events are lost, and an
//! event is either delivered or counted.

use std::{
    io, mem,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// Runs of the program the kernel skipped. 0 on kernels before 5.12, which have no such field.
pub fn recursion_misses(prog: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: both are plain C structs for which all-zero bytes are valid.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.info.bpf_fd =
        u32::try_from(prog.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // A kernel with a shorter bpf_prog_info fills only what it knows and leaves the rest zero.
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes to `info`, which lives
    // until the call returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
