//! A file a process maps (an interpreter, `libjvm.so`), and where its exported symbols are in
//! that process: where the file is mapped plus the symbol's file offset.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use blazesym::inspect::{Inspector, source::Elf};
use procfs::process::{MMapPath, MemoryMaps, Process};

/// A process's mappings; `None` when it is gone.
pub fn maps(pid: u32) -> Option<MemoryMaps> {
    Process::new(i32::try_from(pid).ok()?).ok()?.maps().ok()
}

/// See `MappedFile::identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// One file's mappings in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub path: PathBuf,
    /// `/proc/<pid>/map_files/…` of one of its mappings: the very file the process maps, in
    /// its mount namespace, even if replaced or deleted since.
    map_file: PathBuf,
    /// (start, end, file offset) of each mapping.
    ranges: Vec<(u64, u64, u64)>,
}

impl MappedFile {
    /// The file whose name `pick` accepts; the one it ranks highest when several do.
    pub fn find<K: Ord>(
        pid: u32,
        maps: &MemoryMaps,
        pick: impl Fn(&str) -> Option<K>,
    ) -> Option<(Self, K)> {
        let (path, key) = maps
            .iter()
            .filter_map(|map| match &map.pathname {
                MMapPath::Path(path) => Some((path, pick(file_name(path)?)?)),
                _ => None,
            })
            .max_by(|a, b| a.1.cmp(&b.1))?;
        let ranges: Vec<(u64, u64, u64)> = maps
            .iter()
            .filter(|map| matches!(&map.pathname, MMapPath::Path(p) if p == path))
            .map(|map| (map.address.0, map.address.1, map.offset))
            .collect();
        let &(start, end, _) = ranges.first()?;
        let map_file = PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"));
        Some((Self { path: path.clone(), map_file, ranges }, key))
    }

    /// The addresses of `names` (exported symbols) in the process, in order. A symbol in the
    /// file's contents is placed by its file offset; one without (`.bss`) by its virtual
    /// address and the load bias that a symbol with contents gives.
    pub fn symbols(&self, names: &[&str]) -> Vec<Option<u64>> {
        let inspector = Inspector::new();
        let source = Elf { debug_syms: false, ..Elf::new(&self.map_file) };
        let Ok(found) = inspector.lookup(&source.into(), names) else {
            return vec![None; names.len()];
        };
        let found: Vec<Option<(u64, Option<u64>)>> = (0..names.len())
            .map(|i| found.get(i)?.first().map(|sym| (sym.addr, sym.file_offset)))
            .collect();
        let bias = found
            .iter()
            .flatten()
            .find_map(|&(vaddr, offset)| Some(self.address(offset?)?.wrapping_sub(vaddr)));
        found
            .into_iter()
            .map(|sym| {
                let (vaddr, offset) = sym?;
                offset.and_then(|o| self.address(o)).or_else(|| Some(vaddr.wrapping_add(bias?)))
            })
            .collect()
    }

    /// The file offset the mappings put at `addr`: how build-id stacks place a frame.
    pub fn offset(&self, addr: u64) -> Option<u64> {
        self.ranges.iter().find_map(|&(start, end, file_offset)| {
            (start..end).contains(&addr).then(|| addr - start + file_offset)
        })
    }

    /// What tells this file from any other, now or later: its device, inode, size and
    /// modification time (an inode is reused once a file is deleted).
    pub fn identity(&self) -> Option<FileId> {
        let meta = std::fs::metadata(&self.map_file).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }

    /// Where the mappings put `offset` of the file.
    fn address(&self, offset: u64) -> Option<u64> {
        self.ranges.iter().find_map(|&(start, end, file_offset)| {
            (file_offset..file_offset + (end - start))
                .contains(&offset)
                .then(|| start + offset - file_offset)
        })
    }
}

pub fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}
