//! Perf maps (`/tmp/perf-<pid>.map`, written by `node --perf-basic-prof`, Java agents,
//! `python -X perf`): the names of JIT functions, for addresses in anonymous memory that
//! nothing else resolved. tcptrace reads them itself, not through blazesym, because they are
//! written by the processes it traces: any user's file, read by root (issue 13).
//!
//! Files, one reason to change each: `table` (the text as a sorted table: pure), `open` (the
//! path, and opening it as an untrusted file: the kernel), this one (a table per process, when
//! to read it again, and the time box).
//!
//! Each process's table is kept until [`PerfMaps::forget`], and checked again at most every
//! [`RECHECK`] when a lookup needs it (a JIT appends functions as it compiles them): read
//! again only if the file changed. Tables take at most [`MAX_CACHED_BYTES`] together: past
//! that, those used least recently are dropped (and read again if needed).
//!
//! The time box: opening and reading a local regular file cannot block indefinitely once
//! FIFOs, links and sizes are refused (see `open`), but a file on FUSE can, and a process in
//! its own user and mount namespaces can put one at its `/tmp`. So each read runs on a thread
//! of its own, counting the bytes it reads, and the caller waits while it makes progress: at
//! most [`STALL`] without a byte read, and [`MAX_WAIT`] in all. Past that the lookup goes on
//! without the map, and the result is taken when it comes, at a later lookup. A thread still
//! blocked stays so (nothing can interrupt it but the file system): at most [`MAX_READERS`]
//! run at once, and when that many are blocked no more maps are read (a note says why).
//!
//! The cost: a map is read again (when it changed) at most every [`RECHECK`], or ten times
//! as long as its last read took, so that a process rewriting a large map keeps tcptrace
//! reading it a tenth of the time at most.
//!
//! Maps not read (refused, too large, timed out) are said on stderr, once per process and at
//! most [`MAX_NOTES`] times in a run.

mod open;
pub mod table;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, TryRecvError},
    },
    thread,
    time::{Duration, Instant},
};

use self::open::{Loaded, Stamp};
pub use self::table::Table;

/// How long a lookup waits for a read that reads nothing.
pub const STALL: Duration = Duration::from_secs(2);
/// How long a lookup waits for a read in all (64 MiB on a slow machine, in a debug build).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How often a waiting lookup looks at the read's progress.
const POLL: Duration = Duration::from_millis(50);
/// How often a process's map is checked for changes, at most.
pub const RECHECK: Duration = Duration::from_secs(2);
/// Reading threads that may run at once (blocked ones included).
pub const MAX_READERS: usize = 4;
/// Memory all tables may take together.
pub const MAX_CACHED_BYTES: usize = 256 << 20;
/// Notes said in a run.
const MAX_NOTES: usize = 8;

/// Reads a process's map, counting the bytes read (`open::load`; another in tests).
type Loader = Arc<dyn Fn(u32, Option<Stamp>, &AtomicU64) -> Loaded + Send + Sync>;

/// Each process's perf map, read when needed.
pub struct PerfMaps {
    by_pid: HashMap<u32, Known>,
    load: Loader,
    /// [`STALL`], shorter in tests.
    stall: Duration,
    /// Reading threads still running, blocked or not.
    readers: Arc<AtomicUsize>,
    /// Lookups so far: the clock of "least recently used".
    uses: u64,
    notes: usize,
}

/// What is known of one process's map.
struct Known {
    table: Option<Table>,
    /// The version `table` was read from (or that was found unchanged since).
    stamp: Option<Stamp>,
    checked: Instant,
    /// How long the last read took.
    took: Duration,
    /// A read that was waited for no longer: its result, when it comes.
    pending: Option<Receiver<Loaded>>,
    /// Whether a note was said about this process.
    noted: bool,
    used: u64,
}

impl Default for PerfMaps {
    fn default() -> Self {
        Self::with_loader(Arc::new(open::load), STALL)
    }
}

impl PerfMaps {
    fn with_loader(load: Loader, stall: Duration) -> Self {
        Self { by_pid: HashMap::new(), load, stall, readers: Arc::default(), uses: 0, notes: 0 }
    }

    /// Process `pid`'s table. While `alive`, its map is read if it never was, or was checked
    /// long enough ago (see the module documentation) and changed since; otherwise what was
    /// read before (if any).
    pub fn table(&mut self, pid: u32, alive: bool) -> Option<&Table> {
        self.uses += 1;
        let due = match self.by_pid.get_mut(&pid) {
            Some(known) => {
                known.used = self.uses;
                known.pending.is_none() && known.checked.elapsed() >= RECHECK.max(known.took * 10)
            }
            None => true,
        };
        if alive && due {
            self.refresh(pid);
        } else if let Some(rx) = self.by_pid.get_mut(&pid).and_then(|known| known.pending.take()) {
            match rx.try_recv() {
                Ok(loaded) => self.apply(pid, loaded),
                Err(TryRecvError::Empty) => self.known(pid).pending = Some(rx),
                Err(TryRecvError::Disconnected) => {}
            }
        }
        self.by_pid.get(&pid)?.table.as_ref()
    }

    /// Drops what is kept of process `pid` (it exited or exec'd). A read still running is
    /// abandoned.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// Reads the map on a thread, waiting while it makes progress.
    fn refresh(&mut self, pid: u32) {
        let previous = self.known(pid).stamp;
        let started = Instant::now();
        self.known(pid).checked = started;
        if self.readers.load(Ordering::Acquire) >= MAX_READERS {
            self.note(
                pid,
                format_args!(
                    "perf map of pid {pid} not read: {MAX_READERS} earlier reads are still \
                     blocked (a perf map on a file system that does not answer?)"
                ),
            );
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let progress = Arc::new(AtomicU64::new(0));
        let (readers, load, read) =
            (Arc::clone(&self.readers), Arc::clone(&self.load), Arc::clone(&progress));
        readers.fetch_add(1, Ordering::AcqRel);
        let spawned = thread::Builder::new().name("perf-map".to_owned()).spawn(move || {
            let reading = Reading(readers);
            let loaded = load(pid, previous, &read);
            // Counted until here: a result received is from a reader that has ended.
            drop(reading);
            // The receiver may be gone (abandoned): nothing to do then.
            let _ = tx.send(loaded);
        });
        if let Err(err) = spawned {
            self.readers.fetch_sub(1, Ordering::AcqRel);
            self.note(pid, format_args!("perf map of pid {pid} not read: no thread: {err}"));
            return;
        }
        let (mut read, mut moved) = (0, started);
        loop {
            match rx.recv_timeout(POLL) {
                Ok(loaded) => {
                    self.known(pid).took = started.elapsed();
                    return self.apply(pid, loaded);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The thread panicked: as if there were no map.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = progress.load(Ordering::Relaxed);
            if now != read {
                (read, moved) = (now, Instant::now());
            }
            let waited = started.elapsed();
            if moved.elapsed() >= self.stall || waited >= MAX_WAIT {
                let known = self.known(pid);
                known.pending = Some(rx);
                known.took = waited;
                let why =
                    if moved.elapsed() >= self.stall { "nothing read" } else { "still reading" };
                self.note(
                    pid,
                    format_args!(
                        "perf map of pid {pid} not read yet ({why} after {waited:.1?}); its JIT \
                         frames looked up meanwhile stay unnamed"
                    ),
                );
                return;
            }
        }
    }

    fn apply(&mut self, pid: u32, loaded: Loaded) {
        match loaded {
            Loaded::Missing => {
                let known = self.known(pid);
                (known.table, known.stamp) = (None, None);
            }
            Loaded::Unchanged => {}
            Loaded::Read(table, stamp) => {
                let skipped = table.skipped();
                let known = self.known(pid);
                (known.table, known.stamp) = (Some(table), Some(stamp));
                if skipped > 0 {
                    self.note(
                        pid,
                        format_args!("perf map of pid {pid}: {skipped} malformed lines skipped"),
                    );
                }
                self.keep_within_budget(pid);
            }
            Loaded::Refused { path, why } => {
                let known = self.known(pid);
                (known.table, known.stamp) = (None, None);
                self.note(pid, format_args!("perf map {} not read: {why}", path.display()));
            }
        }
    }

    /// Drops the tables used least recently, other than `pid`'s, until all fit the budget.
    fn keep_within_budget(&mut self, pid: u32) {
        let bytes = |known: &Known| known.table.as_ref().map_or(0, Table::bytes);
        let mut total: usize = self.by_pid.values().map(bytes).sum();
        while total > MAX_CACHED_BYTES {
            let Some(known) = self
                .by_pid
                .iter_mut()
                .filter(|(other, known)| **other != pid && known.table.is_some())
                .map(|(_, known)| known)
                .min_by_key(|known| known.used)
            else {
                break;
            };
            total -= bytes(known);
            (known.table, known.stamp) = (None, None);
        }
    }

    fn known(&mut self, pid: u32) -> &mut Known {
        let used = self.uses;
        self.by_pid.entry(pid).or_insert_with(|| Known {
            table: None,
            stamp: None,
            checked: Instant::now(),
            took: Duration::ZERO,
            pending: None,
            noted: false,
            used,
        })
    }

    /// Says `what` on stderr, once per process and at most [`MAX_NOTES`] times in all.
    fn note(&mut self, pid: u32, what: std::fmt::Arguments<'_>) {
        let known = self.known(pid);
        if known.noted {
            return;
        }
        known.noted = true;
        self.notes += 1;
        match self.notes {
            ..MAX_NOTES => crate::say!("tcptrace: note: {what}"),
            MAX_NOTES => crate::say!("tcptrace: note: {what} (further perf map notes omitted)"),
            _ => {}
        }
    }
}

/// Counts a reading thread until it ends.
struct Reading(Arc<AtomicUsize>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        sync::{Condvar, Mutex},
    };

    use super::*;

    /// This process's perf map, removed on drop.
    struct OwnMap(std::path::PathBuf);

    impl OwnMap {
        fn write(text: &str) -> Self {
            let path = std::path::PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
            fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for OwnMap {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_map_is_read_kept_and_forgotten() {
        let pid = std::process::id();
        let mut maps = PerfMaps::default();
        let map = OwnMap::write("1000 10 jitted\n");
        assert_eq!(maps.table(pid, true).and_then(|t| t.find(0x1004)), Some("jitted"));
        drop(map);
        // Kept, without looking at the file again before RECHECK, or once the process is gone.
        assert_eq!(maps.table(pid, true).and_then(|t| t.find(0x1004)), Some("jitted"));
        assert_eq!(maps.table(pid, false).and_then(|t| t.find(0x1004)), Some("jitted"));
        maps.forget(pid);
        assert!(maps.table(pid, false).is_none());
        // Alive, read again: the file is gone now.
        assert!(maps.table(pid, true).is_none());
        // Not read again while unchanged (the same test: one map per process).
        let map = OwnMap::write("1000 10 jitted\n");
        let progress = AtomicU64::new(0);
        let Loaded::Read(_, stamp) = open::load(pid, None, &progress) else { panic!("a map") };
        assert_eq!(progress.load(Ordering::Relaxed), 15);
        assert!(matches!(open::load(pid, Some(stamp), &progress), Loaded::Unchanged));
        drop(map);
        assert_eq!(maps.readers.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_read_that_blocks_is_waited_for_a_bounded_time_and_taken_later() {
        // Reads block until the gate opens, as on a file system that does not answer.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let held = Arc::clone(&gate);
        let load: Loader = Arc::new(move |pid, _, _| {
            let (open, opened) = &*held;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
            Loaded::Read(table::parse(format!("1000 10 f{pid}\n").as_bytes()), Stamp::test())
        });
        let wait = Duration::from_millis(100);
        let mut maps = PerfMaps::with_loader(load, wait);
        for pid in 1..=MAX_READERS as u32 {
            let started = Instant::now();
            assert!(maps.table(pid, true).is_none());
            assert!(started.elapsed() < wait + Duration::from_secs(1), "{:?}", started.elapsed());
        }
        assert_eq!(maps.readers.load(Ordering::Acquire), MAX_READERS);
        // That many blocked: no more reads, and no waiting.
        let started = Instant::now();
        assert!(maps.table(99, true).is_none());
        assert!(started.elapsed() < wait, "{:?}", started.elapsed());
        assert_eq!(maps.readers.load(Ordering::Acquire), MAX_READERS);
        // Still blocked: a later lookup does not wait either.
        let started = Instant::now();
        assert!(maps.table(1, true).is_none());
        assert!(started.elapsed() < wait, "{:?}", started.elapsed());

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while maps.readers.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "the readers did not end");
            thread::sleep(Duration::from_millis(10));
        }
        // The results are taken at the next lookup.
        assert_eq!(maps.table(1, true).and_then(|t| t.find(0x1000)), Some("f1"));
        assert_eq!(maps.table(2, false).and_then(|t| t.find(0x1000)), Some("f2"));
        // A process forgotten while its read was blocked: its result is dropped.
        maps.forget(3);
        assert!(maps.table(3, false).is_none());
    }

    #[test]
    fn a_slow_read_that_makes_progress_is_waited_for() {
        let stall = Duration::from_millis(100);
        // Reads a little every 20 ms for three times the stall.
        let load: Loader = Arc::new(|pid, _, progress| {
            for _ in 0..15 {
                thread::sleep(Duration::from_millis(20));
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Loaded::Read(table::parse(format!("1000 10 f{pid}\n").as_bytes()), Stamp::test())
        });
        let mut maps = PerfMaps::with_loader(load, stall);
        assert_eq!(maps.table(1, true).and_then(|t| t.find(0x1000)), Some("f1"));
        // Not read again before ten times as long as it took.
        let took = maps.by_pid[&1].took;
        assert!(took >= 3 * stall, "{took:?}");
        maps.by_pid.get_mut(&1).unwrap().checked -= RECHECK;
        let started = Instant::now();
        assert!(maps.table(1, true).is_some());
        assert!(started.elapsed() < stall, "read again: {:?}", started.elapsed());
    }
}
