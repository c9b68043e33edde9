//! Processes for the tests: forked children (with the lock that keeps a fork from copying
//! another test's sockets), the pipes they talk over, "actors" driven step by step over two
//! pipes, and the installed programs and polling the fixtures need.
//!
//! A forked child runs in a copy of a multi-threaded process: its body may only make raw libc
//! calls (`super::raw`, `Pipe`), and it exits with a code that names the failing step.

use std::{
    env,
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
    time::{Duration, Instant},
};

/// How long any expected step may take (the FIN_WAIT1 -> FIN_WAIT2 step waits for a delayed
/// ACK, ~40 ms; a loaded machine can be much slower).
pub const DEADLINE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Serialisation

/// A forked child inherits every descriptor of this process, including the sockets of tests
/// running in other threads: its copy keeps their last close(2) from being the last reference
/// (no release where they expect one) or makes its exit the release, and while it lives those
/// sockets have it as an extra owner. Tests that fork take this lock exclusively; the others
/// that open sockets share it.
static FORK_LOCK: RwLock<()> = RwLock::new(());

/// For tests that do not fork.
pub fn no_forks() -> RwLockReadGuard<'static, ()> {
    FORK_LOCK.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// For tests that fork.
pub fn forks() -> RwLockWriteGuard<'static, ()> {
    FORK_LOCK.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Pipes and children

/// A pipe carrying i32 values between the test and a child.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub fn new() -> Self {
        let mut fds = [0; 2];
        // SAFETY: valid array of two descriptors.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 returned two new descriptors we own.
        unsafe { Self { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } }
    }

    /// One write (atomic for a pipe); safe in a child.
    pub fn send(&self, value: i32) -> bool {
        let bytes = value.to_ne_bytes();
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(self.write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        n == bytes.len() as isize
    }

    /// Blocks for a value; safe in a child (the test kills it if it never comes).
    pub fn recv_blocking(&self) -> Option<i32> {
        let mut bytes = [0u8; 4];
        // SAFETY: valid buffer.
        let n =
            unsafe { libc::read(self.read.as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len()) };
        (n == bytes.len() as isize).then(|| i32::from_ne_bytes(bytes))
    }

    /// Both descriptors (read, write): for a child that closes everything else it inherited.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }

    /// Waits up to `timeout` for a value; `None` when none came. Safe in a child.
    pub fn recv_within(&self, timeout: Duration) -> Option<i32> {
        let mut pfd = libc::pollfd { fd: self.read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if ready == 1 { self.recv_blocking() } else { None }
    }
}

/// A forked child process; killed and reaped if the test ends without waiting for it.
pub struct Child {
    pub pid: libc::pid_t,
    pub comm: &'static CStr,
    reaped: bool,
}

/// Forks a child named `comm` that runs `body` and exits with its return value. `body` runs in
/// a copy of a multi-threaded process: it may only make raw libc calls (see `raw`, `Pipe`).
pub fn fork_child(comm: &'static CStr, body: impl FnOnce() -> i32) -> Child {
    // SAFETY: the child only makes async-signal-safe calls and leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", io::Error::last_os_error()),
        0 => {
            // SAFETY: a NUL-terminated name; prctl and _exit are async-signal-safe.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
                libc::_exit(body())
            }
        }
        pid => Child { pid, comm, reaped: false },
    }
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub fn name(&self) -> &'static str {
        self.comm.to_str().expect("ASCII comm")
    }

    /// Waits up to `DEADLINE` for the child to exit and checks it succeeded.
    pub fn wait(mut self) {
        // SAFETY: pidfd_open on our own child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) } as RawFd;
        assert!(pidfd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: pidfd_open returned a descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
        assert_eq!(
            ready, 1,
            "child {} ({:?}) did not exit within {DEADLINE:?}",
            self.pid, self.comm
        );
        let mut status = 0;
        // SAFETY: reaping our own exited child.
        let ret = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(ret, self.pid, "waitpid: {}", io::Error::last_os_error());
        self.reaped = true;
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child {:?} failed: status {status:#x} (exit code {} marks the failing step)",
            self.comm,
            libc::WEXITSTATUS(status)
        );
    }

    /// The exit code, if the child has exited (it stays a zombie for `wait` or drop to reap).
    fn exit_status(&self) -> Option<i32> {
        // SAFETY: all-zero is a valid siginfo_t; waitid with WNOWAIT leaves the child unreaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let ret = libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags);
            assert_eq!(ret, 0, "waitid: {}", io::Error::last_os_error());
            (info.si_pid() != 0).then(|| info.si_status())
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Actors: children driven step by step

/// A forked child driven over two pipes: the test says go, the actor does one step and reports
/// values (descriptors, ports, counts).
pub struct Actor {
    pub child: Child,
    go: Pipe,
    report: Pipe,
}

/// The actor's side of its pipes.
pub struct Steps<'a> {
    go: &'a Pipe,
    report: &'a Pipe,
}

impl Steps<'_> {
    /// Blocks until the test says go; false if it never will.
    pub fn wait_go(&self) -> bool {
        self.go.recv_blocking().is_some()
    }

    /// Sleeps up to `pause`; true if the test said go meanwhile (a pace that a stop cuts short).
    pub fn go_within(&self, pause: Duration) -> bool {
        self.go.recv_within(pause).is_some()
    }

    pub fn report(&self, value: i32) -> bool {
        self.report.send(value)
    }

    /// The descriptors of both pipes, for a child that closes everything else it inherited.
    pub fn fds(&self) -> [RawFd; 4] {
        let ([go_read, go_write], [report_read, report_write]) = (self.go.fds(), self.report.fds());
        [go_read, go_write, report_read, report_write]
    }
}

/// Closes every descriptor from 3 up except `keep`; safe in a forked child.
pub fn close_inherited(mut keep: [RawFd; 4]) -> bool {
    keep.sort_unstable();
    let close_range = |first: u32, last: u32| {
        // SAFETY: closes descriptors of this (child) process only.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) == 0 }
    };
    let mut first = 3u32;
    for fd in keep {
        let fd = fd as u32;
        if fd > first && !close_range(first, fd - 1) {
            return false;
        }
        first = first.max(fd + 1);
    }
    close_range(first, u32::MAX)
}

impl Actor {
    /// Forks `body` as a process named `comm`; it inherits every descriptor (a listener the
    /// test made, say), so the caller holds `forks()`.
    pub fn fork(comm: &'static CStr, body: impl FnOnce(&Steps<'_>) -> i32) -> Self {
        let (go, report) = (Pipe::new(), Pipe::new());
        let child = fork_child(comm, || body(&Steps { go: &go, report: &report }));
        Self { child, go, report }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn comm(&self) -> &'static str {
        self.child.name()
    }

    /// Lets the actor take its next step.
    pub fn go(&self) {
        assert!(self.go.send(1), "signalling {}", self.comm());
    }

    /// The actor's next report, within `DEADLINE`.
    pub fn recv(&self, what: &str) -> i32 {
        self.recv_within(what, DEADLINE)
    }

    /// The actor's next report, within `timeout`; fails at once if the actor exited instead.
    pub fn recv_within(&self, what: &str, timeout: Duration) -> i32 {
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            if let Some(value) = self.report.recv_within(step) {
                return value;
            }
            if let Some(status) = self.child.exit_status() {
                panic!(
                    "{} (pid {}) exited with code {status} before reporting {what} (the code marks the failing step)",
                    self.comm(),
                    self.pid()
                );
            }
            waited += step;
            assert!(waited < timeout, "no {what} from {} within {timeout:?}", self.comm());
        }
    }

    /// Says go for the last time and waits for a clean exit.
    pub fn finish(self) {
        self.go();
        self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Environment, programs and polling

/// Selects the close hook, so the same binary runs under fentry and kprobe in the VM tier.
pub const CLOSE_HOOK_ENV: &str = "TCPTRACE_TEST_CLOSE_HOOK";

/// The close hook `CLOSE_HOOK_ENV` asks for, as `--close-hook` takes it ("auto" when unset).
pub fn requested_close_hook_name() -> String {
    env::var(CLOSE_HOOK_ENV).unwrap_or_else(|_| "auto".to_owned())
}

/// Where a program the tests run is installed; a failure names the setup that installs it.
pub fn tool(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs = env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed: run `cargo xtask setup` (it installs nginx, redis-server and iproute2)"
    )
}

/// Polls `probe` every 20 ms until it returns a value, for at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
