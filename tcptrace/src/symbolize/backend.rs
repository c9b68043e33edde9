//! The blazesym symbolizers: how a process's or the kernel's addresses are looked up, and how
//! blazesym's own caches are kept bounded.
//!
//! blazesym's own perf map reading is off: it opens `/tmp/perf-<pid>.map` with a plain `open`
//! and maps it whole, so a FIFO there blocked tcptrace for good, a large file took its size in
//! memory, and a symbolic link was followed to any file (issue 13); `perf_map` reads them.
//!
//! blazesym keeps every file it opened (parsed symbol tables, DWARF) for the life of its
//! `Symbolizer`, and remembers each `/proc/<pid>/map_files/...` path it went through. Its
//! `evict` drops little of a process, not those paths, so the user-space symbolizer is
//! replaced by a fresh one after it has served `PIDS_PER_SYMBOLIZER` processes: memory is
//! bounded by what that many processes map, and the cost is re-reading the files still in use.
//! The kernel symbolizer (one kallsyms) is never replaced.

use std::{collections::HashSet, fs, path::Path};

use blazesym::{
    MaybeDefault, Pid,
    symbolize::{
        Input, Symbolizer as Blazesym, evict,
        source::{Elf, Kernel, Process, Source},
    },
};

use super::{cache::Frames, convert};

/// Processes one user-space blazesym symbolizer serves before it is replaced.
const PIDS_PER_SYMBOLIZER: usize = 1024;

pub struct Backend {
    user: Blazesym,
    /// Processes `user` has served.
    user_pids: HashSet<u32>,
    kernel: Blazesym,
    /// Whether `/proc/<pid>/map_files/` can be opened (CAP_SYS_ADMIN, or CAP_CHECKPOINT_RESTORE
    /// since Linux 5.9). It reaches the very file a process mapped, even deleted, replaced or
    /// in another mount namespace; without it blazesym opens the path `maps` shows.
    map_files: bool,
}

impl Backend {
    pub fn new() -> Self {
        Self {
            user: blazesym(),
            user_pids: HashSet::new(),
            kernel: blazesym(),
            map_files: map_files_readable(),
        }
    }

    /// The frames of each address of process `pid`; `None` for those nothing resolved.
    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Option<Frames>> {
        if self.user_pids.insert(pid) && self.user_pids.len() > PIDS_PER_SYMBOLIZER {
            self.user = blazesym();
            self.user_pids.clear();
            self.user_pids.insert(pid);
        }
        let source = Source::Process(process(pid, self.map_files));
        if let Ok(symbolized) = self.user.symbolize(&source, Input::AbsAddr(addrs)) {
            return addrs
                .iter()
                .zip(&symbolized)
                .map(|(&addr, sym)| convert::frames(addr, sym))
                .collect();
        }
        // The batch fails as a whole when the process is gone, and also when one file it maps
        // cannot be read or parsed: then each address on its own.
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return vec![None; addrs.len()];
        }
        addrs
            .iter()
            .map(|&addr| {
                let symbolized = self.user.symbolize_single(&source, Input::AbsAddr(addr)).ok()?;
                convert::frames(addr, &symbolized)
            })
            .collect()
    }

    /// The frames of each file offset in the ELF file `path` (an executable or shared object a
    /// process mapped): for processes that are gone, whose mappings were kept.
    pub fn file(&mut self, path: &Path, offsets: &[u64]) -> Vec<Option<Frames>> {
        let source = Source::Elf(Elf::new(path));
        match self.user.symbolize(&source, Input::FileOffset(offsets)) {
            Ok(symbolized) => {
                offsets.iter().zip(&symbolized).map(|(&at, sym)| convert::frames(at, sym)).collect()
            }
            Err(_) => vec![None; offsets.len()],
        }
    }

    /// The frames of each kernel address (from /proc/kallsyms); `None` for those nothing
    /// resolved.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Option<Frames>> {
        // kallsyms only: a vmlinux with DWARF would add file:line, but finding one is rare and
        // parsing it costs seconds and hundreds of MiB.
        let kernel = Kernel { vmlinux: MaybeDefault::None, debug_syms: false, ..Kernel::default() };
        match self.kernel.symbolize(&Source::Kernel(kernel), Input::AbsAddr(addrs)) {
            Ok(symbolized) => addrs
                .iter()
                .zip(&symbolized)
                .map(|(&addr, sym)| convert::frames(addr, sym))
                .collect(),
            Err(_) => vec![None; addrs.len()],
        }
    }

    /// Drops what blazesym keeps for an exited process.
    pub fn forget(&mut self, pid: u32) {
        // blazesym returns no error for a process (nothing cached is not one).
        let _ = self.user.evict(&evict::Process::new(Pid::from(pid)).into());
    }
}

fn blazesym() -> Blazesym {
    Blazesym::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_demangling(true)
        .build()
}

fn process(pid: u32, map_files: bool) -> Process {
    // Also: DWARF when present (and split debug files found by build id or debug link under
    // /usr/lib/debug), the vDSO. Not the perf map: `perf_map` reads it as the untrusted file
    // it is.
    let mut process = Process::new(Pid::from(pid));
    process.map_files = map_files;
    process.perf_map = false;
    process
}

/// Whether this process can open its own `/proc/self/map_files/` entries, as it then can any
/// other process's.
fn map_files_readable() -> bool {
    let Ok(mut entries) = fs::read_dir("/proc/self/map_files") else { return false };
    entries.next().and_then(Result::ok).is_some_and(|entry| fs::File::open(entry.path()).is_ok())
}
