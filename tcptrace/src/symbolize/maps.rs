//! A process's mappings: which file (and where in it) holds an address. Kept from the first
//! lookup of a live process, they still place its addresses in files once it has exited.

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, MemoryMaps, Process};

/// A process's mappings, as `/proc/<pid>/maps` listed them when read.
pub struct Mappings(Option<MemoryMaps>);

impl Mappings {
    /// Reads `/proc/<pid>/maps`; a process that is gone (or unreadable) has no mappings.
    pub fn read(pid: u32) -> Self {
        let maps = i32::try_from(pid).ok().and_then(|pid| Process::new(pid).ok()?.maps().ok());
        Self(maps)
    }

    /// Whether the maps could be read and list something: the process was there, and not a
    /// zombie (whose maps are empty).
    pub fn is_readable(&self) -> bool {
        self.0.as_ref().is_some_and(|maps| !maps.0.is_empty())
    }

    /// The file mapped at `addr` and the offset of `addr` in it; `None` outside file mappings.
    pub fn file_offset(&self, addr: u64) -> Option<(PathBuf, u64)> {
        let map =
            self.0.as_ref()?.iter().find(|map| (map.address.0..map.address.1).contains(&addr))?;
        match &map.pathname {
            MMapPath::Path(path) => Some((path.clone(), addr - map.address.0 + map.offset)),
            _ => None,
        }
    }

    /// Whether `addr` is in anonymous memory that is readable or executable: where a JIT puts
    /// its code (mapped executable, or switched to read-write while it writes more; blazesym
    /// looked these up in perf maps too).
    pub fn is_anonymous_code(&self, addr: u64) -> bool {
        self.0.as_ref().is_some_and(|maps| {
            maps.iter().any(|map| {
                (map.address.0..map.address.1).contains(&addr)
                    && matches!(map.pathname, MMapPath::Anonymous)
                    && map.perms.intersects(MMPermissions::READ | MMPermissions::EXECUTE)
            })
        })
    }

    /// The module holding `addr`: a file's path or a pseudo-path (`[vdso]`, `[heap]`,
    /// `[stack]`); `None` for anonymous memory and unmapped addresses.
    pub fn module(&self, addr: u64) -> Option<String> {
        let map =
            self.0.as_ref()?.iter().find(|map| (map.address.0..map.address.1).contains(&addr))?;
        match &map.pathname {
            MMapPath::Path(path) => Some(path.to_string_lossy().into_owned()),
            MMapPath::Heap => Some("[heap]".to_owned()),
            MMapPath::Stack | MMapPath::TStack(_) => Some("[stack]".to_owned()),
            MMapPath::Vdso => Some("[vdso]".to_owned()),
            MMapPath::Vvar => Some("[vvar]".to_owned()),
            MMapPath::Vsyscall => Some("[vsyscall]".to_owned()),
            MMapPath::Other(name) => Some(name.clone()),
            MMapPath::Vsys(_) => Some("SYSV shared memory".to_owned()),
            MMapPath::Anonymous | MMapPath::Rollup => None,
        }
    }
}
