//! The network namespaces to dump, and running a dump inside one.
//!
//! sock_diag only answers for the namespace of the thread that created the netlink socket.
//! Namespaces are found through `/proc/<pid>/ns/net` (fed in by the /proc walk) and the bind
//! mounts under `/run/netns` (`ip netns add`, which may have no process in them), deduplicated
//! by the namespace's inode. Each one's file is opened as soon as it is found: the open
//! descriptor keeps the namespace alive until its dump, however the process that led to it
//! exits. The dump runs in a short-lived thread that `setns()`s first; setns(CLONE_NEWNET)
//! changes only the calling thread, so the caller's own thread never moves.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow};

use super::{
    sock_diag::{self, Dump},
    vanished,
    warnings::Warnings,
};

/// Where `ip netns add` bind-mounts named namespaces.
const NAMED_NETNS_DIR: &str = "/run/netns";

/// A namespace other than the caller's, held open until its dump.
#[derive(Debug)]
struct Foreign {
    file: File,
    /// How it was found, for warnings.
    path: PathBuf,
}

/// Every network namespace found so far, the caller's own included.
#[derive(Debug)]
pub struct Namespaces {
    own: u64,
    /// Device of the nsfs filesystem: a file under /run/netns on any other device is not a
    /// namespace (an empty file left by a failed `ip netns add`).
    nsfs_dev: u64,
    foreign: BTreeMap<u64, Foreign>,
}

/// The outcome of dumping one namespace.
#[derive(Debug)]
pub struct NsDump {
    pub netns: u64,
    pub dump: Dump,
}

impl Namespaces {
    /// Starts with the calling thread's namespace, which is dumped without setns().
    pub fn new() -> Result<Self> {
        let path = "/proc/thread-self/ns/net";
        let own = fs::metadata(path).with_context(|| format!("stat {path}"))?;
        Ok(Self { own: own.ino(), nsfs_dev: own.dev(), foreign: BTreeMap::new() })
    }

    /// Adds the namespace of process `pid`. The error is the caller's to classify: reading
    /// `/proc/<pid>/ns/net` takes the same ptrace-read permission as reading `/proc/<pid>/fd`
    /// links, and a process that exited fails with NotFound or ESRCH.
    pub fn add_process(&mut self, pid: i32) -> io::Result<()> {
        self.add(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// Adds every named namespace under /run/netns.
    pub fn add_named(&mut self, warnings: &mut Warnings) {
        let entries = match fs::read_dir(NAMED_NETNS_DIR) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(error) => return warnings.push(format!("reading {NAMED_NETNS_DIR}: {error}")),
        };
        for entry in entries {
            let result = entry.and_then(|entry| {
                let path = entry.path();
                self.add(&path).map_err(|error| {
                    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
                })
            });
            match result {
                Ok(()) => {}
                // `ip netns delete` racing with the listing.
                Err(error) if vanished(&error) => {}
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                    warnings.denied("reading a named network namespace");
                }
                Err(error) => warnings.push(format!("reading {NAMED_NETNS_DIR}: {error}")),
            }
        }
    }

    fn add(&mut self, path: &Path) -> io::Result<()> {
        // stat first: opening every process's file only to find a known namespace costs two
        // more syscalls per process.
        let meta = fs::metadata(path)?;
        if meta.dev() != self.nsfs_dev
            || meta.ino() == self.own
            || self.foreign.contains_key(&meta.ino())
        {
            return Ok(());
        }
        let file = File::open(path)?;
        // The pid may have been reused between stat and open: key by what was opened.
        let inode = file.metadata()?.ino();
        if inode != self.own {
            self.foreign.entry(inode).or_insert_with(|| Foreign { file, path: path.to_owned() });
        }
        Ok(())
    }

    /// Dumps every namespace, the caller's first. Only a failure in the caller's own
    /// namespace is an error; a namespace that cannot be entered or dumped is a warning.
    pub fn dump_all(self, warnings: &mut Warnings) -> Result<Vec<NsDump>> {
        let Self { own, nsfs_dev: _, foreign } = self;
        let mut dumps = Vec::with_capacity(1 + foreign.len());
        let dump = sock_diag::dump().context("dumping the tracer's own network namespace")?;
        dumps.push(NsDump { netns: own, dump });
        for (netns, Foreign { file, path }) in foreign {
            match dump_in(&file) {
                Ok(dump) => dumps.push(NsDump { netns, dump }),
                // EINVAL: a file under /run/netns that is a namespace of another type.
                Err(EnterError::Setns(error)) if error.raw_os_error() == Some(libc::EINVAL) => {}
                Err(EnterError::Setns(error))
                    if error.kind() == io::ErrorKind::PermissionDenied =>
                {
                    warnings.denied("entering a network namespace");
                }
                Err(EnterError::Setns(error)) => {
                    warnings.push(format!(
                        "entering network namespace {netns} ({}): {error}",
                        path.display()
                    ));
                }
                Err(EnterError::Dump(error)) => {
                    warnings
                        .push(format!("network namespace {netns} ({}): {error:#}", path.display()));
                }
            }
        }
        Ok(dumps)
    }
}

#[derive(Debug)]
enum EnterError {
    Setns(io::Error),
    Dump(anyhow::Error),
}

/// Runs the dump in a thread of its own that first joins the namespace open as `netns`.
fn dump_in(netns: &File) -> Result<Dump, EnterError> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("tcptrace-netns".to_owned())
            .spawn_scoped(scope, || {
                // SAFETY: a valid descriptor and a namespace type; the call changes only this
                // thread's namespace, and the thread ends when the dump does.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(EnterError::Setns(io::Error::last_os_error()));
                }
                sock_diag::dump().map_err(EnterError::Dump)
            })
            .map_err(|error| {
                EnterError::Dump(anyhow!(error).context("spawning the namespace thread"))
            })?;
        worker
            .join()
            .unwrap_or_else(|_| Err(EnterError::Dump(anyhow!("the namespace thread panicked"))))
    })
}
