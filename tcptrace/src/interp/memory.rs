//! Reads another process's memory through `/proc/<pid>/mem`: the interpreter's objects that
//! name a frame. Every read is bounded by its caller and checked; a process that is gone, or
//! an address it does not map, is `None`.

use std::{fs::File, os::unix::fs::FileExt as _};

/// One process's memory, opened once.
pub struct ProcessMemory(File);

impl ProcessMemory {
    /// `None` when the process is gone or its memory cannot be opened (tcptrace runs as root
    /// with CAP_SYS_PTRACE; without it the kernel refuses other users' processes).
    pub fn open(pid: u32) -> Option<Self> {
        File::open(format!("/proc/{pid}/mem")).ok().map(Self)
    }

    /// Exactly `len` bytes at `addr`.
    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        self.0.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        let mut buf = [0; 8];
        self.0.read_exact_at(&mut buf, addr).ok()?;
        Some(u64::from_ne_bytes(buf))
    }

    pub fn i64(&self, addr: u64) -> Option<i64> {
        self.u64(addr).map(|v| v as i64)
    }

    pub fn u32(&self, addr: u64) -> Option<u32> {
        let mut buf = [0; 4];
        self.0.read_exact_at(&mut buf, addr).ok()?;
        Some(u32::from_ne_bytes(buf))
    }
}
