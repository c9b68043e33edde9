//! Build id → the file that has it: how a frame the kernel captured as (build id, offset) is
//! found on disk, even after its process is gone.
//!
//! Learned from every file a live process maps (read when its exec or first open event
//! arrives), from the path each exec names (which may be all there is of a process that ran
//! for a millisecond), and from tcptrace's own mappings (the C library and loader every
//! dynamically linked program shares).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use blazesym::helper::read_elf_build_id;
use procfs::process::{MMapPath, Process};

/// The kernel's build ids: at most 20 bytes, zero-padded.
pub type BuildId = [u8; 20];

/// Files whose build id was read, at most; past this the set starts over (each file is then
/// read again once).
const MAX_FILES: usize = 65_536;

#[derive(Default)]
pub struct BuildIds {
    by_id: HashMap<BuildId, PathBuf>,
    /// Files already read, with or without a build id.
    read: HashSet<PathBuf>,
}

impl BuildIds {
    /// An index of the files this process maps.
    pub fn new() -> Self {
        let mut ids = Self::default();
        ids.learn_process(std::process::id());
        ids
    }

    pub fn path(&self, id: &BuildId) -> Option<&Path> {
        self.by_id.get(id).map(PathBuf::as_path)
    }

    /// Reads the build id of `path` (once).
    pub fn learn_file(&mut self, path: &Path) {
        if self.read.contains(path) {
            return;
        }
        if self.read.len() >= MAX_FILES {
            self.read.clear();
        }
        self.read.insert(path.to_owned());
        if let Ok(Some(id)) = read_elf_build_id(&path)
            && let Some(id) = padded(&id)
        {
            self.by_id.entry(id).or_insert_with(|| path.to_owned());
        }
    }

    /// Reads the build ids of every file process `pid` maps (nothing if it is gone).
    pub fn learn_process(&mut self, pid: u32) {
        let Some(maps) =
            i32::try_from(pid).ok().and_then(|pid| Process::new(pid).ok()?.maps().ok())
        else {
            return;
        };
        for map in maps {
            if let MMapPath::Path(path) = map.pathname {
                self.learn_file(&path);
            }
        }
    }

    /// Reads the build id of the file process `pid` exec'd: `path` as execve() was given it,
    /// relative to the process's working directory, or to ours (a command `tcptrace run`
    /// started inherits it) once the process is gone.
    pub fn learn_exec(&mut self, pid: u32, path: &Path) {
        if path.is_absolute() {
            self.learn_file(path);
            return;
        }
        let cwd =
            std::fs::read_link(format!("/proc/{pid}/cwd")).or_else(|_| std::env::current_dir());
        if let Ok(cwd) = cwd {
            self.learn_file(&absolute(&cwd, path));
        }
    }
}

/// `path` (as execve() was given it) from `cwd`, without the `.` components a reader would
/// stumble on (`./bin` run in `/tmp` is `/tmp/bin`, not `/tmp/./bin`). `..` stays: it may
/// cross a symbolic link.
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path).components().collect()
}

/// A build id as the kernel reports it: zero-padded to 20 bytes (longer ones do not fit).
fn padded(id: &[u8]) -> Option<BuildId> {
    let mut out = [0; 20];
    out.get_mut(..id.len())?.copy_from_slice(id);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_maps_files_with_build_ids() {
        let ids = BuildIds::new();
        // The test binary itself (rustc passes --build-id through the C toolchain) or libc.
        assert!(!ids.by_id.is_empty(), "no build id among this process's files");
        let exe = std::env::current_exe().unwrap();
        if let Ok(Some(id)) = read_elf_build_id(&exe) {
            assert_eq!(ids.path(&padded(&id).unwrap()), Some(exe.as_path()));
        }
    }

    #[test]
    fn exec_paths_are_shown_without_dot_components() {
        let cwd = Path::new("/tmp");
        assert_eq!(absolute(cwd, Path::new("./bin")), Path::new("/tmp/bin"));
        assert_eq!(absolute(cwd, Path::new("a/./b")), Path::new("/tmp/a/b"));
        assert_eq!(absolute(cwd, Path::new("../x")), Path::new("/tmp/../x"));
    }

    #[test]
    fn short_build_ids_are_padded_and_long_ones_refused() {
        assert_eq!(padded(&[1, 2]).unwrap()[..3], [1, 2, 0]);
        assert_eq!(padded(&[7; 21]), None);
    }
}
