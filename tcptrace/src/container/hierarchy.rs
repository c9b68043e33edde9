//! The cgroup v2 hierarchy as this host mounts it, and the cgroup paths `/proc` shows.
//!
//! The kernel records a cgroup by its id, which is the inode of the cgroup's directory under
//! the v2 mount; a path is found by walking that mount. Without a v2 mount (a host on cgroup v1
//! alone) the ids mean nothing and the paths come from `/proc/<pid>/cgroup`.

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use foldhash::HashMap;

use super::pattern;

/// Directories visited in one walk: a Kubernetes node has a few thousand cgroups; a bound keeps
/// a host with a runaway number of them from stalling the reader.
const WALK_MAX_DIRS: usize = 1 << 16;
/// `/proc/<pid>/cgroup` is a line per hierarchy; anything longer is not one.
const PROC_CGROUP_MAX: u64 = 64 << 10;

/// The mounted cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    /// The first cgroup2 mount in this process's mount namespace, if any.
    pub fn find() -> Option<Self> {
        let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
        mount_point(&text).map(|root| Self { root })
    }

    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path relative to the hierarchy (`/libpod_parent/libpod-…`), or absolute under its
    /// mount, as the directory it names.
    pub fn dir(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.starts_with(&self.root) {
            return path.to_path_buf();
        }
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The relative path of a directory under the mount (`/` for the root).
    pub fn relative(&self, dir: &Path) -> Option<String> {
        let rest = dir.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rest.to_str()?))
    }

    /// The id of the cgroup at `path` (relative or under the mount).
    pub fn id_of(&self, path: &str) -> io::Result<u64> {
        let meta = fs::symlink_metadata(self.dir(path))?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a cgroup directory"));
        }
        Ok(meta.ino())
    }

    /// The id of the ancestor at `level` of the cgroup at `path` (itself at its own level), as
    /// the kernel's `bpf_get_current_ancestor_cgroup_id` answers for a task there; 0 past its
    /// depth, or when the cgroup is gone.
    pub fn ancestor_id(&self, path: &str, level: u32) -> u64 {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let Some(prefix) = components.get(..level as usize) else { return 0 };
        self.id_of(&format!("/{}", prefix.join("/"))).unwrap_or(0)
    }

    /// Every cgroup's id and relative path, breadth first (so a cut walk keeps the shallow
    /// ones, where containers live), at most `WALK_MAX_DIRS`.
    pub fn walk(&self) -> HashMap<u64, String> {
        let mut found = HashMap::default();
        let mut queue = std::collections::VecDeque::from([self.root.clone()]);
        while let Some(dir) = queue.pop_front() {
            let Ok(meta) = fs::symlink_metadata(&dir) else { continue };
            if let Some(relative) = self.relative(&dir) {
                found.insert(meta.ino(), relative);
            }
            if found.len() >= WALK_MAX_DIRS {
                break;
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                // Cgroups are directories; the files beside them are its interface.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(entry.path());
                }
            }
        }
        found
    }
}

/// The mount point of the first `cgroup2` entry of a mountinfo text.
fn mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok().and_then(|d| u8::from_str_radix(d, 8).ok()));
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Process `pid`'s cgroup path from `/proc/<pid>/cgroup` (see `path_of`); `None` if it is gone.
pub fn of_pid(pid: u32) -> Option<Placed> {
    read_proc_cgroup(pid).map(|text| path_of(&text))
}

/// Where `/proc/<pid>/cgroup` places a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub path: String,
    /// Whether `path` is in the v2 hierarchy (so it has a cgroup id there).
    pub v2: bool,
}

/// Process `pid`'s cgroup v2 path (`0::…`), which the kernel's cgroup ids are of.
pub fn v2_path_of_pid(pid: u32) -> Option<String> {
    read_proc_cgroup(pid).and_then(|text| v2_path(&text))
}

fn read_proc_cgroup(pid: u32) -> Option<String> {
    let mut text = String::new();
    fs::File::open(format!("/proc/{pid}/cgroup"))
        .ok()?
        .take(PROC_CGROUP_MAX)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_string)
}

/// The path that places a process: its cgroup v2 path (`0::/…`) unless that is the root; then
/// a v1 path that names a container (a hybrid host whose runtime uses v1 only); then the v2
/// root; on a host without v2, the first v1 path not at the root (systemd's named hierarchy
/// first: it is where a v1-only host's runtimes put containers); else `/`.
pub fn path_of(proc_cgroup: &str) -> Placed {
    let mut v2_root = false;
    let mut v2 = None;
    let mut systemd = None;
    let mut v1 = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let is_v2 = hierarchy == "0" && controllers.is_empty();
        if path == "/" || path.is_empty() {
            v2_root |= is_v2;
            continue;
        }
        if is_v2 {
            v2.get_or_insert(path);
        } else if controllers == "name=systemd" {
            systemd.get_or_insert(path);
        } else {
            v1.get_or_insert(path);
        }
    }
    let v1 = systemd.or(v1);
    let placed = |path: &str, v2| Placed { path: path.to_string(), v2 };
    match (v2, v1) {
        (Some(path), _) => placed(path, true),
        (None, Some(path)) if !v2_root || pattern::parse(path).is_some() => placed(path, false),
        _ => placed("/", true),
    }
}

/// How deep a relative path is: the root is level 0, `/a/b` is level 2.
pub fn level(path: &str) -> u32 {
    let depth = path.split('/').filter(|c| !c.is_empty()).count();
    u32::try_from(depth).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        let text = "\
30 25 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:7 - cgroup cgroup rw,cpu
36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
37 25 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(mount_point(text), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let spaced = "36 25 0:31 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_point(spaced), Some(PathBuf::from("/mnt/my cgroups")));
        assert_eq!(mount_point("30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"), None);
        assert_eq!(mount_point("garbage\n\\\n - \n"), None);
    }

    #[test]
    fn the_v2_path_wins_unless_it_is_the_root() {
        let podman = "\
9:name=systemd:/libpod_parent/libpod-ab
4:memory:/libpod_parent/libpod-ab
0::/libpod_parent/libpod-ab\n";
        assert_eq!(path_of(podman).path, "/libpod_parent/libpod-ab");
        let docker = format!("/system.slice/docker-{}.scope", "cd".repeat(32));
        let v1_only = format!("4:memory:/process_api/de94\n9:name=systemd:{docker}\n0::/\n");
        assert_eq!(path_of(&v1_only).path, docker, "a v1 path that names a container");
        assert_eq!(path_of("4:memory:/a\n3:cpu:/b\n").path, "/a", "no v2 hierarchy");
        let host = path_of("4:memory:/process_api/de94\n0::/\n");
        assert_eq!((host.path.as_str(), host.v2), ("/", true), "a v1 path that names nothing");
        assert_eq!(path_of("0::/\n").path, "/");
        assert_eq!(path_of("").path, "/");
        assert_eq!(path_of("junk\n::\n0::\n").path, "/");
        assert_eq!(path_of("0::/a:b\n").path, "/a:b", "a colon in the path");
        assert!(path_of(podman).v2);
        assert!(!path_of(&v1_only).v2);
        assert_eq!(v2_path("4:memory:/a\n0::/b\n").as_deref(), Some("/b"));
        assert_eq!(v2_path("4:memory:/a\n"), None, "v1 only");
    }

    #[test]
    fn levels_count_components() {
        assert_eq!(level("/"), 0);
        assert_eq!(level("/libpod_parent/libpod-ab"), 2);
        assert_eq!(level("libpod_parent//x/"), 2);
    }

    #[test]
    fn paths_relative_to_the_mount() {
        let h = Hierarchy::new(PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(h.dir("/a/b"), PathBuf::from("/sys/fs/cgroup/unified/a/b"));
        assert_eq!(h.dir("/sys/fs/cgroup/unified/a"), PathBuf::from("/sys/fs/cgroup/unified/a"));
        assert_eq!(h.relative(Path::new("/sys/fs/cgroup/unified")).as_deref(), Some("/"));
        assert_eq!(h.relative(Path::new("/sys/fs/cgroup/unified/a/b")).as_deref(), Some("/a/b"));
        assert_eq!(h.relative(Path::new("/elsewhere")), None);
    }

    #[test]
    fn a_walk_finds_every_directory_by_inode() {
        let dir = crate::container::scratch("walk");
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/cgroup.procs"), "").unwrap();
        let h = Hierarchy::new(dir.clone());
        let found = h.walk();
        let ino = |p: &str| fs::metadata(dir.join(p)).unwrap().ino();
        assert_eq!(found.get(&ino("a/b")).map(String::as_str), Some("/a/b"));
        assert_eq!(found.get(&ino("")).map(String::as_str), Some("/"));
        assert_eq!(found.len(), 3, "files are not cgroups");
        assert_eq!(h.id_of("/a").unwrap(), ino("a"));
        assert_eq!(h.ancestor_id("/a/b", 0), ino(""));
        assert_eq!(h.ancestor_id("/a/b", 1), ino("a"));
        assert_eq!(h.ancestor_id("/a/b", 2), ino("a/b"));
        assert_eq!(h.ancestor_id("/a/b", 3), 0, "deeper than the path");
        assert_eq!(h.ancestor_id("/gone/b", 1), 0);
        assert!(h.id_of("/a/cgroup.procs").is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
