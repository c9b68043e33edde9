//! Opening a process's perf map as an untrusted file: the half of perf map support that talks
//! to the kernel.
//!
//! The file is `/tmp/perf-<pid>.map` as the process sees `/tmp` and its own pid (the last pid
//! of `NStgid` in `/proc/<pid>/status`, for a process in a pid namespace), reached through
//! `/proc/<pid>/root`, as blazesym does. Any user can put anything at that path, and tcptrace
//! runs as root, so:
//! - `/proc/<pid>/root` is a magic link and is followed (it is the process's root); `tmp` in it
//!   and the map's name are not: `tmp` is opened with `O_PATH|O_DIRECTORY|O_NOFOLLOW` and the
//!   map `openat` it with `O_NOFOLLOW`, so a symbolic link is refused (`ELOOP`) instead of
//!   leading to a file its owner could not read;
//! - the map is opened with `O_NONBLOCK`: opening a FIFO returns at once instead of waiting for
//!   a writer, and opening a file under a lease fails instead of waiting for the lease to break;
//! - `fstat` on the open descriptor decides, with no race against a rename: a regular file
//!   only (not a FIFO, socket or device), owned by one of the process's uids (real, effective,
//!   saved, filesystem) or by root (a JIT that started as root and dropped privileges), with
//!   one link (a hard link to someone else's file, where `fs.protected_hardlinks` is 0, has
//!   two), and at most [`MAX_SIZE`] bytes;
//! - it is read through a bounded reader (`table::read`): never more than [`MAX_SIZE`] bytes
//!   even if it grows, and never a line longer than `table::MAX_LINE` in memory.
//!
//! Reads of a local regular file cannot block indefinitely. A file on FUSE can (the daemon
//! answers when it likes), and a process in its own user and mount namespaces can have such a
//! `/tmp`: the caller runs [`load`] on a thread and stops waiting for it (see `perf_map`).

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{self, BufReader, Read as _},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::table::{self, Table};

/// Largest perf map read, in bytes. `node --perf-basic-prof` on a long-running server can
/// write more (every function it ever compiled, never removed): such a map is skipped, with a
/// note, rather than held in memory.
pub const MAX_SIZE: u64 = 64 << 20;

/// What identifies one version of a file: a map that has not changed is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

#[cfg(test)]
impl Stamp {
    /// A stamp for tests that need one.
    pub fn test() -> Self {
        Self { dev: 0, ino: 0, size: 0, mtime: (0, 0) }
    }
}

/// Why a perf map was not read.
#[derive(Debug)]
pub enum Refusal {
    /// A symbolic link at the map's path, or at `tmp`.
    Link,
    /// A FIFO, socket, device or directory, not a regular file.
    NotRegular(&'static str),
    /// Owned by a uid that is neither root nor one of the process's.
    Owner { uid: u32 },
    /// More than one hard link.
    Links(u64),
    /// Larger than the bound.
    TooLarge { size: u64, max: u64 },
    /// Any other error opening or reading it.
    Io(io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Link => write!(f, "a symbolic link (not followed)"),
            Self::NotRegular(kind) => write!(f, "a {kind}, not a regular file"),
            Self::Owner { uid } => write!(f, "owned by uid {uid}, neither root nor the process"),
            Self::Links(links) => write!(f, "{links} hard links (a perf map has one)"),
            Self::TooLarge { size, max } => {
                write!(f, "{} MiB, over the {} MiB bound", size.div_ceil(1 << 20), max >> 20)
            }
            Self::Io(err) => write!(f, "{err}"),
        }
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No perf map (the common case), or the process is gone.
    Missing,
    /// The same file as `previous`, unchanged: not read again.
    Unchanged,
    Read(Table, Stamp),
    Refused {
        path: PathBuf,
        why: Refusal,
    },
}

/// Reads process `pid`'s perf map (checked as the module documentation says), unless it is
/// the version `previous` stamps; `progress` counts the bytes read so far.
pub fn load(pid: u32, previous: Option<Stamp>, progress: &AtomicU64) -> Loaded {
    // Everything through one descriptor of /proc/<pid>: if the pid is reused meanwhile, the
    // lookups below fail instead of mixing two processes.
    let Ok(proc) = open_dir(Path::new(&format!("/proc/{pid}"))) else { return Loaded::Missing };
    let Some(process) = Status::read(&proc) else { return Loaded::Missing };
    let name = format!("perf-{}.map", process.ns_pid.unwrap_or(pid));
    let path = PathBuf::from(format!("/proc/{pid}/root/tmp/{name}"));
    let refused = |why| Loaded::Refused { path: path.clone(), why };
    // `root` is a magic link to the process's root: followed.
    let root = match openat(&proc, "root", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) {
        Ok(root) => root,
        Err(err) if is_missing(&err) => return Loaded::Missing,
        Err(err) => return refused(Refusal::Io(err)),
    };
    let tmp = match open_tmp(&root) {
        Ok(tmp) => tmp,
        Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return refused(Refusal::Link),
        Err(err) if is_missing(&err) => return Loaded::Missing,
        Err(err) => return refused(Refusal::Io(err)),
    };
    let owners = Owners { uids: process.uids };
    match open_checked(&tmp, &name, &owners, MAX_SIZE) {
        Ok((_, stamp)) if previous == Some(stamp) => Loaded::Unchanged,
        Ok((file, stamp)) => match read(file, progress) {
            Ok(table) => Loaded::Read(table, stamp),
            Err(err) => refused(Refusal::Io(err)),
        },
        Err(Refusal::Io(err)) if is_missing(&err) => Loaded::Missing,
        Err(why) => refused(why),
    }
}

/// Who may own a perf map: root, or one of these uids (the process's).
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    pub uids: [u32; 4],
}

/// Opens `name` in directory `dir` as an untrusted file: without following a link, without
/// blocking, then checked on the descriptor (regular, owned by root or `owners`, one link, at
/// most `max_size` bytes).
pub fn open_checked(
    dir: &OwnedFd,
    name: &str,
    owners: &Owners,
    max_size: u64,
) -> Result<(File, Stamp), Refusal> {
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    let file = match openat(dir, name, flags) {
        Ok(fd) => File::from(fd),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => return Err(Refusal::Link),
        Err(err) => return Err(Refusal::Io(err)),
    };
    let stat = fstat(&file).map_err(Refusal::Io)?;
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFIFO => return Err(Refusal::NotRegular("FIFO")),
        libc::S_IFSOCK => return Err(Refusal::NotRegular("socket")),
        libc::S_IFCHR | libc::S_IFBLK => return Err(Refusal::NotRegular("device")),
        libc::S_IFDIR => return Err(Refusal::NotRegular("directory")),
        _ => return Err(Refusal::NotRegular("special file")),
    }
    if stat.st_uid != 0 && !owners.uids.contains(&stat.st_uid) {
        return Err(Refusal::Owner { uid: stat.st_uid });
    }
    let (links, stamp) = facts(&stat);
    if links != 1 {
        return Err(Refusal::Links(links));
    }
    if stamp.size > max_size {
        return Err(Refusal::TooLarge { size: stamp.size, max: max_size });
    }
    Ok((file, stamp))
}

/// The number of links and the stamp of a file's `stat`.
#[allow(
    clippy::useless_conversion,
    reason = "libc's stat fields are u64 and i64 on x86_64, narrower on other architectures"
)]
fn facts(stat: &libc::stat) -> (u64, Stamp) {
    let stamp = Stamp {
        dev: u64::from(stat.st_dev),
        ino: u64::from(stat.st_ino),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mtime: (i64::from(stat.st_mtime), i64::from(stat.st_mtime_nsec)),
    };
    (u64::from(stat.st_nlink), stamp)
}

/// Reads a file [`open_checked`] accepted, at most [`MAX_SIZE`] bytes whatever it has grown to,
/// counting the bytes read in `progress`.
pub fn read(file: File, progress: &AtomicU64) -> io::Result<Table> {
    let counted = Counted { inner: file, progress };
    table::read(BufReader::with_capacity(64 << 10, counted), MAX_SIZE)
}

/// A reader that counts what it reads: the caller tells a slow read from a blocked one.
struct Counted<'a, R> {
    inner: R,
    progress: &'a AtomicU64,
}

impl<R: io::Read> io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A directory as an `O_PATH` descriptor, following links (`/proc/<pid>`).
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open_in(None, path.as_os_str(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
}

/// `tmp` in the process's root directory `root`, not followed if it is a link.
fn open_tmp(root: &OwnedFd) -> io::Result<OwnedFd> {
    // O_DIRECTORY with O_NOFOLLOW: a symbolic link fails with ENOTDIR.
    openat(root, "tmp", libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
}

fn openat(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    open_in(Some(dir), name.as_ref(), flags)
}

/// `openat(2)`: `path` in `dir`, or from the working directory.
fn open_in(dir: Option<&OwnedFd>, path: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_bytes())?;
    let dir = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: a valid directory descriptor (or AT_FDCWD) and a NUL-terminated path; the
    // descriptor returned is owned below.
    let fd = unsafe { libc::openat(dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(file: &File) -> io::Result<libc::stat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: an open descriptor and a buffer of the right size, initialized on success.
    let ret = unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled it.
    Ok(unsafe { stat.assume_init() })
}

fn is_missing(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// What `/proc/<pid>/status` says of the process that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    /// Real, effective, saved and filesystem uids.
    uids: [u32; 4],
    /// The pid the process sees itself as (the last of `NStgid`); `None` without pid
    /// namespaces.
    ns_pid: Option<u32>,
}

impl Status {
    /// Reads `status` in the process's `/proc` directory `proc`.
    fn read(proc: &OwnedFd) -> Option<Self> {
        let file = File::from(openat(proc, "status", libc::O_RDONLY | libc::O_CLOEXEC).ok()?);
        let mut status = Vec::new();
        // A few KiB; bounded all the same.
        file.take(1 << 20).read_to_end(&mut status).ok()?;
        Self::parse(&status)
    }

    fn parse(status: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(status);
        let field = |name: &str| {
            text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(|value| {
                value.split_whitespace().map(str::parse::<u32>).collect::<Result<Vec<_>, _>>()
            })
        };
        let uids = field("Uid")?.ok()?;
        let uids: [u32; 4] = uids.try_into().ok()?;
        let ns_pid = match field("NStgid") {
            Some(pids) => Some(*pids.ok()?.last()?),
            None => None,
        };
        Some(Self { uids, ns_pid })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{PermissionsExt as _, symlink},
        sync::mpsc,
        thread,
        time::Duration,
    };

    use super::*;

    /// A fresh directory under the temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("tcptrace-perf-map-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            Self(path)
        }

        fn fd(&self) -> OwnedFd {
            File::open(&self.0).unwrap().into()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn me() -> Owners {
        // SAFETY: no arguments, cannot fail.
        let uid = unsafe { libc::geteuid() };
        Owners { uids: [uid; 4] }
    }

    /// Opens `name` in `dir` on a thread: a test that would block fails instead of hanging.
    fn open_within(dir: &TempDir, name: &str, owners: Owners, max: u64) -> Result<Stamp, Refusal> {
        let (fd, name) = (dir.fd(), name.to_owned());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(open_checked(&fd, &name, &owners, max).map(|(_, stamp)| stamp));
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("opening the perf map blocked")
    }

    #[test]
    fn a_regular_file_is_opened_and_read() {
        let dir = TempDir::new("regular");
        fs::write(dir.0.join("perf-1.map"), "1000 10 f\n").unwrap();
        let (file, _) = open_checked(&dir.fd(), "perf-1.map", &me(), MAX_SIZE).unwrap();
        let progress = AtomicU64::new(0);
        assert_eq!(read(file, &progress).unwrap().find(0x1008), Some("f"));
        assert_eq!(progress.load(Ordering::Relaxed), 10);
        assert!(matches!(
            open_checked(&dir.fd(), "perf-2.map", &me(), MAX_SIZE),
            Err(Refusal::Io(err)) if is_missing(&err)
        ));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = TempDir::new("fifo");
        let path = CString::new(dir.0.join("perf-1.map").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
        // Opening a FIFO for reading blocks until a writer comes, without O_NONBLOCK.
        let refusal = open_within(&dir, "perf-1.map", me(), MAX_SIZE).unwrap_err();
        assert!(matches!(refusal, Refusal::NotRegular("FIFO")), "{refusal:?}");
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let dir = TempDir::new("symlink");
        let secret = dir.0.join("secret");
        fs::write(&secret, "1000 10 secret\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        symlink(&secret, dir.0.join("perf-1.map")).unwrap();
        let refusal = open_within(&dir, "perf-1.map", me(), MAX_SIZE).unwrap_err();
        assert!(matches!(refusal, Refusal::Link), "{refusal:?}");
        // A link to a FIFO is not followed either (it would block).
        let fifo = CString::new(dir.0.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        symlink(dir.0.join("fifo"), dir.0.join("perf-2.map")).unwrap();
        let refusal = open_within(&dir, "perf-2.map", me(), MAX_SIZE).unwrap_err();
        assert!(matches!(refusal, Refusal::Link), "{refusal:?}");
    }

    #[test]
    fn a_file_of_another_uid_is_refused() {
        let dir = TempDir::new("owner");
        let path = dir.0.join("perf-1.map");
        fs::write(&path, "1000 10 f\n").unwrap();
        let mine = me().uids[0];
        let (owner, process) = if mine == 0 {
            // Root's files are accepted (a JIT that started as root): give it to nobody, and
            // make the process someone else again.
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            (65534, Owners { uids: [1000; 4] })
        } else {
            (mine, Owners { uids: [mine + 1; 4] })
        };
        let result = open_within(&dir, "perf-1.map", process, MAX_SIZE);
        assert!(matches!(result, Err(Refusal::Owner { uid }) if uid == owner), "{result:?}");
        // Any of the process's uids (real, effective, saved, filesystem) will do.
        let owners = Owners { uids: [1, 2, owner, 3] };
        assert!(open_within(&dir, "perf-1.map", owners, MAX_SIZE).is_ok());
    }

    #[test]
    fn a_hard_link_is_refused() {
        let dir = TempDir::new("hardlink");
        fs::write(dir.0.join("secret"), "1000 10 secret\n").unwrap();
        fs::hard_link(dir.0.join("secret"), dir.0.join("perf-1.map")).unwrap();
        let result = open_within(&dir, "perf-1.map", me(), MAX_SIZE);
        assert!(matches!(result, Err(Refusal::Links(2))), "{result:?}");
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = TempDir::new("large");
        // Sparse: the size is what counts, and nothing is read.
        File::create(dir.0.join("perf-1.map")).unwrap().set_len(MAX_SIZE + 1).unwrap();
        let result = open_within(&dir, "perf-1.map", me(), MAX_SIZE);
        assert!(
            matches!(result, Err(Refusal::TooLarge { size, max: MAX_SIZE }) if size == MAX_SIZE + 1),
            "{result:?}"
        );
        File::create(dir.0.join("perf-2.map")).unwrap().set_len(100).unwrap();
        assert!(matches!(open_within(&dir, "perf-2.map", me(), 99), Err(Refusal::TooLarge { .. })));
        assert!(open_within(&dir, "perf-2.map", me(), 100).is_ok());
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = TempDir::new("dir");
        fs::create_dir(dir.0.join("perf-1.map")).unwrap();
        let result = open_within(&dir, "perf-1.map", me(), MAX_SIZE);
        assert!(matches!(result, Err(Refusal::NotRegular("directory"))), "{result:?}");
    }

    #[test]
    fn tmp_as_a_symbolic_link_is_refused() {
        let dir = TempDir::new("tmp-link");
        fs::create_dir(dir.0.join("elsewhere")).unwrap();
        symlink(dir.0.join("elsewhere"), dir.0.join("tmp")).unwrap();
        let err = open_tmp(&dir.fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
        fs::remove_file(dir.0.join("tmp")).unwrap();
        fs::create_dir(dir.0.join("tmp")).unwrap();
        assert!(open_tmp(&dir.fd()).is_ok());
    }

    #[test]
    fn a_process_that_is_gone_has_no_map() {
        // (This process's own map is read in `perf_map`'s tests: one file per process.)
        assert!(matches!(load(u32::MAX, None, &AtomicU64::new(0)), Loaded::Missing));
    }

    #[test]
    fn status_gives_uids_and_the_pid_in_the_namespace() {
        let status = b"Name:\tnode\nTgid:\t4242\nNStgid:\t4242\t7\nUid:\t1000\t1001\t1002\t1003\n";
        assert_eq!(
            Status::parse(status),
            Some(Status { uids: [1000, 1001, 1002, 1003], ns_pid: Some(7) })
        );
        let no_ns = b"Uid:\t0\t0\t0\t0\n";
        assert_eq!(Status::parse(no_ns), Some(Status { uids: [0; 4], ns_pid: None }));
        assert_eq!(Status::parse(b"Uid:\t0\t0\n"), None);
        assert_eq!(Status::parse(b"Name:\tx\n"), None);
        assert_eq!(Status::parse(b"Uid:\t0\t0\t0\t0\nNStgid:\tx\n"), None);
    }
}
