//! Container names from the files the runtimes keep on the local disk.
//!
//! Only files are read: no daemon socket, no network, nothing that can block. A name is a
//! best-effort enrichment, so a missing, unreadable, oversized or malformed file simply means
//! "no name" and is not reported.
//!
//! - podman, CRI-O and buildah share containers/storage:
//!   `<storage root>/<driver>-containers/containers.json`, an array of `{"id", "names", ...}`.
//! - docker: `<docker root>/containers/<id>/config.v2.json`, an object with `"Name": "/foo"`.
//!
//! Every file is opened with `O_NOFOLLOW|O_NONBLOCK` and must be a regular file of at most
//! 16 MiB: a link planted in place of the file is refused, and a FIFO cannot hang the tracer.

use std::{
    fs::{self, File, OpenOptions},
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};
use foldhash::HashMap;
use serde::Deserialize;

use super::identity::{Container, Runtime, is_full_id};

const PODMAN_STORAGE: &str = "/var/lib/containers/storage";
const DOCKER_ROOT: &str = "/var/lib/docker";
/// Far above any real metadata file (containers.json holds ~1 KiB per container).
const MAX_FILE: u64 = 16 << 20;
/// Every cache is bounded so a host that churns containers for weeks keeps a flat footprint.
const MAX_ENTRIES: usize = 4096;
/// Podman limits names to `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; anything longer is not a real name.
const MAX_NAME: usize = 256;

/// The runtimes' names for their containers, cached.
pub struct Names {
    podman_storage: PathBuf,
    docker_root: PathBuf,
    podman: Storage,
    /// Per docker id, its name or `None` (negatives cached too: docker's file is read once).
    docker: HashMap<String, Option<String>>,
}

/// What the containers.json files said, and which versions of them.
#[derive(Default)]
struct Storage {
    names: HashMap<String, Vec<String>>,
    /// (path, mtime, size, inode) of each file read, to re-read only when one changes.
    stamps: Vec<(PathBuf, SystemTime, u64, u64)>,
}

#[derive(Deserialize)]
struct StorageEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: Option<String>,
}

impl Default for Names {
    fn default() -> Self {
        Self::new()
    }
}

impl Names {
    /// The runtimes' default roots.
    pub fn new() -> Self {
        Self::with_roots(PODMAN_STORAGE.into(), DOCKER_ROOT.into())
    }

    pub fn with_roots(podman_storage: PathBuf, docker_root: PathBuf) -> Self {
        Self { podman_storage, docker_root, podman: Storage::default(), docker: HashMap::default() }
    }

    /// Fills `container.name` when a runtime's files name it; a cache hit costs no I/O.
    /// Systemd units keep theirs.
    pub fn fill(&mut self, container: &mut Container) {
        let name = match container.runtime {
            Runtime::Podman | Runtime::CriO => self.storage_name(&container.id),
            Runtime::Docker => self.docker_name(&container.id),
            // containerd keeps its metadata in a bolt database, not a file meant for readers.
            Runtime::Containerd | Runtime::Systemd => None,
        };
        if name.is_some() {
            container.name = name;
        }
    }

    fn storage_name(&mut self, id: &str) -> Option<String> {
        if !is_full_id(id) {
            return None;
        }
        if !self.podman.names.contains_key(id) {
            self.rescan_storage();
        }
        self.podman.names.get(id)?.first().cloned()
    }

    /// Re-reads containers.json when one changed. Asked only for an id it does not know, which
    /// the resolver asks once per new cgroup: the stat calls cost nothing per event. The
    /// runtime writes a container's entry before starting it, so its first connect finds it.
    fn rescan_storage(&mut self) {
        let stamps = storage_stamps(&self.podman_storage);
        if stamps == self.podman.stamps {
            return;
        }
        let mut names = HashMap::default();
        for (path, ..) in &stamps {
            for entry in read_json::<Vec<StorageEntry>>(path).ok().into_iter().flatten() {
                let clean: Vec<String> = entry.names.into_iter().filter_map(clean_name).collect();
                // Past the bound, later containers go unnamed rather than growing the map.
                if is_full_id(&entry.id) && !clean.is_empty() && names.len() < MAX_ENTRIES {
                    names.insert(entry.id, clean);
                }
            }
        }
        self.podman.names = names;
        self.podman.stamps = stamps;
    }

    fn docker_name(&mut self, id: &str) -> Option<String> {
        // The id becomes a path component: only a real id may.
        if !is_full_id(id) {
            return None;
        }
        if let Some(cached) = self.docker.get(id) {
            return cached.clone();
        }
        let path = self.docker_root.join("containers").join(id).join("config.v2.json");
        let name = read_json::<DockerConfig>(&path)
            .ok()
            .and_then(|c| c.name)
            .and_then(|n| clean_name(n.strip_prefix('/').unwrap_or(&n).to_owned()));
        if self.docker.len() >= MAX_ENTRIES {
            self.docker.clear();
        }
        self.docker.insert(id.to_owned(), name.clone());
        name
    }
}

/// The containers.json of every storage driver (`overlay-containers`, `vfs-containers`, ...),
/// with what identifies their current version. Sorted, so two scans compare equal.
fn storage_stamps(root: &Path) -> Vec<(PathBuf, SystemTime, u64, u64)> {
    let Ok(dir) = fs::read_dir(root) else { return Vec::new() };
    let mut stamps: Vec<_> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with("-containers")))
        .filter_map(|e| {
            let path = e.path().join("containers.json");
            let meta = fs::symlink_metadata(&path).ok()?;
            Some((path, meta.modified().ok()?, meta.size(), meta.ino()))
        })
        .take(MAX_ENTRIES)
        .collect();
    stamps.sort_unstable();
    stamps
}

/// A name fit to print next to a process: no control characters to garble a terminal.
fn clean_name(name: String) -> Option<String> {
    let ok = !name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(char::is_control);
    ok.then_some(name)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_capped(path, MAX_FILE)?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The whole of a regular file of at most `cap` bytes, never following a final symbolic link
/// nor blocking on a FIFO or device.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    // Read one byte past the cap: the size from stat may already be stale.
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > cap {
        bail!("{} is larger than {cap} bytes", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        os::unix::{ffi::OsStrExt, fs::symlink},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    const ID: &str = "64a1b0d8ae8bf132110e6403f8e586522d0987de0a96c6f58101051bfb120d9d";
    const ID2: &str = "0f3c1d9a5b7e2f4c6a8b0d1e3f5a7c9b2d4e6f8a0b1c3d5e7f9a1b2c3d4e5f60";
    const PODMAN_SAMPLE: &str = r#"[{"id":"64a1b0d8ae8bf132110e6403f8e586522d0987de0a96c6f58101051bfb120d9d","names":["tta-probe"],"image":"3fc1ab3c0ec3c6e9ffe5e6a9b8e6b0f0ae0a4fa1c3e5d1e8e1f0c7b7d5e1c2d3","layer":"0871c8ad3c6d0a1f6e7e1a0a6b9c7d2e8f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c","metadata":"{\"image-name\":\"localhost/tta-busybox:latest\",\"name\":\"tta-probe\"}","created":"2026-12-04T11:39:30.041201134Z","flags":{"MountLabel":"","ProcessLabel":""}}]"#;

    /// A unique directory under the system's temporary directory, removed on drop; the
    /// crate has no tempfile dependency.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("tcptrace-names-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Roots under a fresh directory: `podman/` and `docker/`.
    fn setup() -> (TempDir, Names) {
        let dir = TempDir::new();
        let names = Names::with_roots(dir.0.join("podman"), dir.0.join("docker"));
        (dir, names)
    }

    fn write(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn storage_file(dir: &TempDir) -> PathBuf {
        dir.0.join("podman/overlay-containers/containers.json")
    }

    fn docker_file(dir: &TempDir, id: &str) -> PathBuf {
        dir.0.join("docker/containers").join(id).join("config.v2.json")
    }

    fn name_of(names: &mut Names, id: &str, runtime: Runtime) -> Option<String> {
        let mut c = Container::new(id, runtime);
        names.fill(&mut c);
        c.name
    }

    #[test]
    fn podman_sample() {
        let (dir, mut names) = setup();
        write(&storage_file(&dir), PODMAN_SAMPLE);
        assert_eq!(name_of(&mut names, ID, Runtime::Podman).as_deref(), Some("tta-probe"));
        // CRI-O shares containers/storage.
        assert_eq!(name_of(&mut names, ID, Runtime::CriO).as_deref(), Some("tta-probe"));
    }

    #[test]
    fn docker_sample() {
        let (dir, mut names) = setup();
        write(&docker_file(&dir, ID), r#"{"ID":"x","Name":"/web","State":{"Running":true}}"#);
        assert_eq!(name_of(&mut names, ID, Runtime::Docker).as_deref(), Some("web"));
        // Read once: the cache answers after the file is gone.
        fs::remove_file(docker_file(&dir, ID)).unwrap();
        assert_eq!(name_of(&mut names, ID, Runtime::Docker).as_deref(), Some("web"));
    }

    #[test]
    fn malformed_json() {
        let (dir, mut names) = setup();
        write(&storage_file(&dir), r#"[{"id": "#);
        write(&docker_file(&dir, ID), r#"{"Name": 5}"#);
        assert_eq!(name_of(&mut names, ID, Runtime::Podman), None);
        assert_eq!(name_of(&mut names, ID, Runtime::Docker), None);
    }

    #[test]
    fn symlinks_refused() {
        let (dir, mut names) = setup();
        let real = dir.0.join("elsewhere.json");
        write(&real, PODMAN_SAMPLE);
        fs::create_dir_all(storage_file(&dir).parent().unwrap()).unwrap();
        symlink(&real, storage_file(&dir)).unwrap();
        assert_eq!(name_of(&mut names, ID, Runtime::Podman), None);
        let real = dir.0.join("config.json");
        write(&real, r#"{"Name":"/web"}"#);
        fs::create_dir_all(docker_file(&dir, ID).parent().unwrap()).unwrap();
        symlink(&real, docker_file(&dir, ID)).unwrap();
        assert_eq!(name_of(&mut names, ID, Runtime::Docker), None);
    }

    #[test]
    fn not_regular_files_refused() {
        let (dir, mut names) = setup();
        fs::create_dir_all(storage_file(&dir)).unwrap();
        assert_eq!(name_of(&mut names, ID, Runtime::Podman), None);
        // A FIFO would block a plain open until a writer comes; O_NONBLOCK must not.
        let fifo = docker_file(&dir, ID);
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(name_of(&mut names, ID, Runtime::Docker), None);
    }

    #[test]
    fn oversize_refused() {
        let (dir, mut names) = setup();
        let path = storage_file(&dir);
        // Valid JSON padded past the cap: only the size can refuse it.
        let mut bytes = PODMAN_SAMPLE.as_bytes().to_vec();
        bytes.resize(MAX_FILE as usize + 1, b' ');
        write(&path, "");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(name_of(&mut names, ID, Runtime::Podman), None);
        let whole = read_capped(&path, MAX_FILE + 1).unwrap();
        assert!(serde_json::from_slice::<Vec<StorageEntry>>(&whole).is_ok());
    }

    #[test]
    fn unknown_and_invalid_ids() {
        let (dir, mut names) = setup();
        write(&storage_file(&dir), PODMAN_SAMPLE);
        assert_eq!(name_of(&mut names, ID2, Runtime::Podman), None);
        assert_eq!(name_of(&mut names, ID2, Runtime::Docker), None);
        // Not an id: never turned into a path.
        write(&dir.0.join("docker/config.v2.json"), r#"{"Name":"/escape"}"#);
        assert_eq!(name_of(&mut names, "../containers/..", Runtime::Docker), None);
        assert_eq!(name_of(&mut names, ID, Runtime::Containerd), None);
        // No roots at all: no names, no error.
        let mut empty = Names::with_roots(dir.0.join("none"), dir.0.join("none"));
        assert_eq!(name_of(&mut empty, ID, Runtime::Podman), None);
    }

    #[test]
    fn systemd_keeps_its_name() {
        let (_dir, mut names) = setup();
        let mut c = Container::new("nginx.service", Runtime::Systemd);
        c.name = Some("nginx".into());
        names.fill(&mut c);
        assert_eq!(c.name.as_deref(), Some("nginx"));
    }

    #[test]
    fn storage_reread_when_changed() {
        let (dir, mut names) = setup();
        write(&storage_file(&dir), PODMAN_SAMPLE);
        assert!(name_of(&mut names, ID, Runtime::Podman).is_some());
        // A container created right after: found at once (the first name is the name).
        let second = format!(r#"[{{"id":"{ID2}","names":["second","alias"]}}]"#);
        write(&storage_file(&dir), &second);
        assert_eq!(name_of(&mut names, ID2, Runtime::Podman).as_deref(), Some("second"));
        assert_eq!(name_of(&mut names, ID, Runtime::Podman), None, "removed from the file");
    }

    #[test]
    fn control_characters_dropped() {
        let (dir, mut names) = setup();
        write(&docker_file(&dir, ID), "{\"Name\":\"/evil\\u001b[2J\"}");
        assert_eq!(name_of(&mut names, ID, Runtime::Docker), None);
    }

    #[test]
    fn docker_cache_bounded() {
        let (_dir, mut names) = setup();
        for i in 0..MAX_ENTRIES + 10 {
            let id = format!("{i:064x}");
            assert_eq!(name_of(&mut names, &id, Runtime::Docker), None);
        }
        assert!(names.docker.len() <= MAX_ENTRIES);
        assert!(!names.docker.is_empty());
    }
}
