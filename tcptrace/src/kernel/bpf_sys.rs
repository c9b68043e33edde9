//! The two `bpf()` calls aya 0.14 has no safe API for: adding the calling process to a map
//! between fork and exec (where nothing may allocate), and reading a map value of a layout aya
//! refuses (stack maps with build ids).

use std::{io, os::fd::RawFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// `union bpf_attr` as the map element commands read it.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad0: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const _: () = assert!(size_of::<MapElemAttr>() == 32);

fn map_elem(command: libc::c_long, attr: &MapElemAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for the command; its pointers are the
    // caller's, who guarantees their sizes match the map's key and value.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, command, &raw const *attr, size_of::<MapElemAttr>())
    };
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Adds the calling process to the `u32 -> u32` map behind `fd`, with value 1. Safe to call
/// between fork and exec: one system call, no allocation.
pub fn add_self(fd: RawFd) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let one: u32 = 1;
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad0: 0,
        key: (&raw const pid) as u64,
        value: (&raw const one) as u64,
        flags: 0, // BPF_ANY
    };
    map_elem(BPF_MAP_UPDATE_ELEM, &attr)
}

/// Reads the value of `key` in the `u32`-keyed map behind `fd` into `value`, which must be the
/// map's value size. `Ok(false)` when the key is absent.
pub fn lookup(fd: RawFd, key: u32, value: &mut [u8]) -> io::Result<bool> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad0: 0,
        key: (&raw const key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match map_elem(BPF_MAP_LOOKUP_ELEM, &attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
