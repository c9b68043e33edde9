//! Instruction addresses to functions, file:line and modules, for the stacks captured at
//! connect() and accept().
//!
//! User-space addresses are symbolized while the process lives (its `/proc/<pid>/maps` says
//! which file each address is in): the caller does it when the open event arrives, and calls
//! [`Symbolizer::forget`] when the process exits or execs (an exec replaces every mapping under
//! the same pid). A process's mappings are kept from its first lookup, so addresses looked up
//! after it has exited (a second stack still in the ring buffer when the first one took a while)
//! are found in the files it had mapped. Results are cached by (pid, address), bounded (see
//! `cache`).
//!
//! Lookups go through blazesym: ELF symbols, DWARF line and inline information when present
//! (in the binary, or a split debug file found by build id or debug link under
//! `/usr/lib/debug`), files reached through `/proc/<pid>/map_files/` when allowed (the file the
//! process mapped, even if deleted or in another mount namespace), and `/proc/kallsyms` for the
//! kernel. Rust and C++ names are demangled. Addresses in anonymous memory that nothing
//! resolved (JIT code) are looked up in the process's perf map (`/tmp/perf-<pid>.map`, written
//! by `node --perf-basic-prof` and Java agents), which tcptrace reads itself as the untrusted
//! file it is (see `perf_map`): a perf map's functions have no module.
//!
//! Inlined frames are expanded: an address inside code inlined from `g` into `f` gives the
//! frames `g` (with the line of the address) then `f` (with the line of the inlined call), both
//! with the address itself. Frames come out innermost first, in the order of the addresses.
//!
//! Files, one reason to change each: `frame` (the result and its rendering), `cache` (bounds),
//! `convert` (blazesym's results as frames: the inline policy), `backend` (blazesym's sources
//! and its own caches), `maps` (the module of an address nothing resolved), `perf_map` (JIT
//! functions' names, from files the traced processes write).
//!
//! A `Symbolizer` is not `Send` (blazesym's caches are single-threaded): keep it on the thread
//! that handles events.
//!
//! The bottom of user space: imports nothing from the crate but `stdio` (a perf map not read is
//! said on stderr); `stacks` uses it (and `analysis` and `render` its `Frame`).

mod backend;
mod cache;
mod convert;
mod frame;
mod maps;
pub mod perf_map;

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

pub use self::frame::Frame;
use self::{
    backend::Backend,
    cache::{FrameCache, Frames},
    maps::Mappings,
    perf_map::PerfMaps,
};

/// Symbolizes user-space and kernel addresses, with a bounded cache.
pub struct Symbolizer {
    backend: Backend,
    user_cache: FrameCache,
    kernel_cache: FrameCache,
    /// Each process's mappings, from its first lookup until it is forgotten.
    mappings: HashMap<u32, Mappings>,
    /// Each process's perf map, from its first lookup that needed it until it is forgotten.
    perf_maps: PerfMaps,
}

/// The kernel's addresses are cached under this pid (no user process has it).
const KERNEL: u32 = 0;

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// Addresses cached by [`Symbolizer::new`] (user space and kernel each): a few MiB at most.
    pub const DEFAULT_CAPACITY: usize = 16_384;

    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A symbolizer caching at most `addresses` user-space addresses (across all processes) and
    /// as many kernel addresses.
    pub fn with_capacity(addresses: usize) -> Self {
        Self {
            backend: Backend::new(),
            user_cache: FrameCache::new(addresses),
            kernel_cache: FrameCache::new(addresses),
            mappings: HashMap::new(),
            perf_maps: PerfMaps::default(),
        }
    }

    /// Symbolizes addresses of live process `pid`, each looked up as it is (a function's
    /// address, a sampled instruction pointer). An address nothing resolves gives a frame with
    /// `symbol: None` and the module of its mapping when there is one; a process that is gone
    /// gives such frames for every address (and nothing is cached). Never fails.
    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.resolve_user(pid, addrs, 0)
    }

    /// Symbolizes a stack captured in a system call (`bpf_get_stackid` with
    /// `BPF_F_USER_STACK`): every address is a return address, or the instruction after the
    /// `syscall`, so each is looked up one byte earlier, inside the call, which gives the line
    /// of the call (the return address may be on the next line, or past the end of a function
    /// whose last instruction is a call). Frames keep the addresses as passed. Otherwise as
    /// [`Symbolizer::user`].
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.resolve_user(pid, addrs, 1)
    }

    /// Symbolizes a stack's frames the kernel placed in file `path` (by build id): each offset
    /// is a return address's, looked up one byte earlier as in [`Symbolizer::user_stack`].
    /// Frames keep the offsets as `addr` and have `path` as their module; an offset nothing
    /// covers gives a frame without a symbol. Needs no process: the file is all there is.
    pub fn file_stack(&mut self, path: &Path, offsets: &[u64]) -> Vec<Frame> {
        let lookups: Vec<u64> = offsets.iter().map(|offset| offset.saturating_sub(1)).collect();
        let module = path.to_string_lossy().into_owned();
        self.backend
            .file(path, &lookups)
            .into_iter()
            .zip(offsets)
            .flat_map(|(frames, &offset)| {
                let frames = frames.unwrap_or_else(|| unknown(offset, None));
                frames.into_iter().map({
                    let module = module.clone();
                    move |frame| Frame { addr: offset, module: Some(module.clone()), ..frame }
                })
            })
            .collect()
    }

    /// Symbolizes kernel addresses, from /proc/kallsyms (which shows them to root only:
    /// otherwise every frame has `symbol: None`). Never fails.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let Self { backend, kernel_cache, .. } = self;
        lookup(kernel_cache, KERNEL, addrs, 0, |misses| {
            let found = backend.kernel(misses);
            let complete = found.iter().all(Option::is_some);
            let frames = found
                .into_iter()
                .zip(misses)
                .map(|(frames, &addr)| frames.unwrap_or_else(|| unknown(addr, None)))
                .collect();
            // kallsyms names no module for addresses outside every symbol: nothing to add.
            (frames, complete || kallsyms_readable())
        })
    }

    /// Drops what is cached for process `pid`: call it when the process exits or execs.
    pub fn forget(&mut self, pid: u32) {
        self.user_cache.forget(pid);
        self.backend.forget(pid);
        self.mappings.remove(&pid);
        self.perf_maps.forget(pid);
    }

    /// Reads process `pid`'s mappings now, replacing what was known of it: call it when the
    /// process has just exec'd. Its executable is mapped by then (its libraries may not be
    /// yet), so a process that opens a connection and exits before its open event is read
    /// still has its own code symbolized.
    pub fn remember(&mut self, pid: u32) {
        self.forget(pid);
        self.mappings.insert(pid, Mappings::read(pid));
    }

    /// User-space and kernel addresses cached now.
    pub fn cached_addresses(&self) -> usize {
        self.user_cache.len() + self.kernel_cache.len()
    }

    fn resolve_user(&mut self, pid: u32, addrs: &[u64], adjust: u64) -> Vec<Frame> {
        let Self { backend, user_cache, mappings, perf_maps, .. } = self;
        // Read while the process is surely there: this lookup is about its fresh stack. Read
        // again if it is, as the mappings kept may be from its exec, before its libraries.
        let fresh = Mappings::read(pid);
        let fresh_readable = fresh.is_readable();
        let mappings = match mappings.entry(pid) {
            Entry::Occupied(mut kept) => {
                if fresh_readable {
                    kept.insert(fresh);
                }
                kept.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(fresh),
        };
        let gone = !fresh_readable;
        lookup(user_cache, pid, addrs, adjust, |misses| {
            let mut found = if gone { vec![None; misses.len()] } else { backend.user(pid, misses) };
            if gone && mappings.is_readable() {
                in_files(backend, mappings, misses, &mut found);
            }
            in_perf_map(perf_maps, pid, !gone, mappings, misses, &mut found);
            let frames = found
                .into_iter()
                .zip(misses)
                .map(|(frames, &addr)| {
                    frames.unwrap_or_else(|| unknown(addr, mappings.module(addr)))
                })
                .collect();
            // Unresolved addresses of a process that is gone, and never seen alive, are not
            // worth keeping: its pid may come back as another process.
            (frames, !gone || mappings.is_readable())
        })
    }
}

/// Fills the unresolved `found` entries of `addrs` from the files `mappings` place them in.
fn in_files(
    backend: &mut Backend,
    mappings: &Mappings,
    addrs: &[u64],
    found: &mut [Option<Frames>],
) {
    let mut by_file: HashMap<PathBuf, Vec<(usize, u64)>> = HashMap::new();
    for (i, &addr) in addrs.iter().enumerate() {
        if found[i].is_none()
            && let Some((path, offset)) = mappings.file_offset(addr)
        {
            by_file.entry(path).or_default().push((i, offset));
        }
    }
    for (path, wanted) in by_file {
        let offsets: Vec<u64> = wanted.iter().map(|&(_, offset)| offset).collect();
        let module = path.to_string_lossy().into_owned();
        for ((i, _), frames) in wanted.into_iter().zip(backend.file(&path, &offsets)) {
            // As a live lookup gives them: the address itself, and the file as the module.
            found[i] = frames.map(|frames| {
                frames
                    .into_iter()
                    .map(|frame| Frame { addr: addrs[i], module: Some(module.clone()), ..frame })
                    .collect()
            });
        }
    }
}

/// Fills the unresolved `found` entries of `addrs` that are in anonymous memory from process
/// `pid`'s perf map (read if it is `alive`, else as read before): a frame with the name the map
/// gives and nothing else, as blazesym gave.
fn in_perf_map(
    perf_maps: &mut PerfMaps,
    pid: u32,
    alive: bool,
    mappings: &Mappings,
    addrs: &[u64],
    found: &mut [Option<Frames>],
) {
    let wanted: Vec<usize> = (0..addrs.len())
        .filter(|&i| found[i].is_none() && mappings.is_anonymous_code(addrs[i]))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let Some(table) = perf_maps.table(pid, alive) else { return };
    for i in wanted {
        found[i] = table.find(addrs[i]).map(|name| {
            let frame = Frame { symbol: Some(name.to_owned()), ..Frame::unknown(addrs[i], None) };
            Box::new([frame]) as Frames
        });
    }
}

fn unknown(addr: u64, module: Option<String>) -> Frames {
    Box::new([Frame::unknown(addr, module)])
}

/// Whether /proc/kallsyms shows addresses (to root, or with kptr_restrict off); without them,
/// unresolved kernel addresses are not cached.
fn kallsyms_readable() -> bool {
    let Ok(file) = File::open("/proc/kallsyms") else { return false };
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first).is_ok()
        && first.split_whitespace().next().is_some_and(|addr| addr.bytes().any(|b| b != b'0'))
}

/// Looks `addrs` (each minus `adjust`) up in `cache`; the misses, sorted and deduplicated, go
/// to `resolve`, which gives their frames in the same order and whether to cache them.
fn lookup(
    cache: &mut FrameCache,
    pid: u32,
    addrs: &[u64],
    adjust: u64,
    resolve: impl FnOnce(&[u64]) -> (Vec<Frames>, bool),
) -> Vec<Frame> {
    let lookups: Vec<u64> = addrs.iter().map(|addr| addr.saturating_sub(adjust)).collect();
    let mut found: Vec<Option<Frames>> =
        lookups.iter().map(|&addr| cache.get(pid, addr).map(Frames::from)).collect();
    let mut misses: Vec<u64> = lookups
        .iter()
        .zip(&found)
        .filter(|(_, frames)| frames.is_none())
        .map(|(&addr, _)| addr)
        .collect();
    if !misses.is_empty() {
        misses.sort_unstable();
        misses.dedup();
        let (resolved, keep) = resolve(&misses);
        for (slot, lookup) in found.iter_mut().zip(&lookups) {
            if slot.is_none() {
                // SANITY: every lookup without a cached result is one of the misses.
                let index = misses.binary_search(lookup).expect("a miss");
                *slot = Some(resolved[index].clone());
            }
        }
        if keep {
            for (addr, frames) in misses.into_iter().zip(resolved) {
                cache.insert(pid, addr, frames);
            }
        }
    }
    addrs
        .iter()
        .zip(found)
        .flat_map(|(&addr, frames)| {
            frames.unwrap_or_default().into_iter().map(move |frame| Frame { addr, ..frame })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses nothing maps in this process (the first page is never mapped).
    const UNMAPPED: std::ops::Range<u64> = 0x10..0x1000;

    #[test]
    fn unresolved_addresses_give_one_frame_each() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let frames = symbolizer.user(pid, &[0x10, 0x20, 0x10]);
        assert_eq!(
            frames,
            [Frame::unknown(0x10, None), Frame::unknown(0x20, None), Frame::unknown(0x10, None)]
        );
        // A stack keeps the addresses as passed, although it looks them up one byte earlier.
        assert_eq!(symbolizer.user_stack(pid, &[0x21]), [Frame::unknown(0x21, None)]);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut symbolizer = Symbolizer::with_capacity(8);
        let pid = std::process::id();
        for addr in UNMAPPED.step_by(0x10) {
            let frames = symbolizer.user(pid, &[addr]);
            assert_eq!(frames, [Frame::unknown(addr, None)]);
            assert!(symbolizer.cached_addresses() <= 8, "{}", symbolizer.cached_addresses());
        }
        assert!(symbolizer.cached_addresses() >= 4);
        symbolizer.forget(pid);
        assert_eq!(symbolizer.cached_addresses(), 0);
    }

    #[test]
    fn a_batch_is_cached_once_per_address() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let addrs: Vec<u64> = UNMAPPED.step_by(0x10).collect();
        symbolizer.user(pid, &addrs);
        symbolizer.user(pid, &addrs);
        // One byte lower: the same lookups again.
        let stack: Vec<u64> = addrs.iter().map(|addr| addr + 1).collect();
        symbolizer.user_stack(pid, &stack);
        assert_eq!(symbolizer.cached_addresses(), addrs.len());
    }
}
