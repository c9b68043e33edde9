//! Shared helpers for the root tests: a harness that loads the real kernel programs and collects
//! decoded events, expectations for one socket's event sequence, forked children and raw
//! socket calls that are safe to make in a child of a multi-threaded process.

#![allow(dead_code, reason = "each test binary uses a subset of the helpers")]

use std::{
    ffi::CStr,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use tcptrace::{
    event::{
        Endpoints, Event, EventKind, ReleaseReason,
        TcpState::{
            self, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent,
        },
    },
    kernel::{
        close_hook::{CloseHook, CloseHookChoice},
        probes::{Bench, Changes, Counters, ProbeOptions, Probes},
        stream::EventStream,
    },
    stacks::{StackResolver, StacksMode},
};
use tcptrace_common::Filter;

/// How long any expected event may take (the FIN_WAIT1 -> FIN_WAIT2 step waits for a delayed
/// ACK, ~40 ms; a loaded machine can be much slower).
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Lines of events or sockets a failure message prints at most.
const DUMP_LINES: usize = 60;
/// Selects the close hook, so the same binary runs under fentry and kprobe in the VM tier.
pub const CLOSE_HOOK_ENV: &str = "TCPTRACE_TEST_CLOSE_HOOK";
pub const AF_INET6: u16 = libc::AF_INET6 as u16;
pub const LOCALHOST_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
pub const LOCALHOST_V6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);

// ---------------------------------------------------------------------------------------------
// Serialisation

/// A forked child inherits every descriptor of this process, including the sockets of tests
/// running in other threads: its copy keeps their last close(2) from being the last reference
/// (no release where they expect one) or makes its exit the release. Tests that fork take this
/// lock exclusively; the others share it.
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
// Tasks and ports

/// The task a kernel program ran in, as the event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

impl Task {
    /// The calling thread.
    pub fn current() -> Self {
        // SAFETY: no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let comm = fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("reading comm");
        Self { pid: pid as u32, tid: tid as u32, comm: comm.trim_end_matches('\n').to_owned() }
    }

    /// A single-threaded child.
    pub fn child(pid: libc::pid_t, comm: &CStr) -> Self {
        Self {
            pid: pid as u32,
            tid: pid as u32,
            comm: comm.to_str().expect("ASCII comm").to_owned(),
        }
    }

    /// The owner-map entry this task leaves for a socket it opened as `fd`.
    pub fn owns(&self, fd: RawFd) -> Option<Owner> {
        Some(Owner { pid: self.pid, fd })
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {:?}", self.pid, self.tid, self.comm)
    }
}

/// Keeps this thread on the CPU it is running on until dropped; gives back the old mask.
pub struct PinnedCpu(libc::cpu_set_t);

pub fn pin_to_one_cpu() -> PinnedCpu {
    // SAFETY: plain syscalls on this thread with valid, zero-initialised masks.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old), 0);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        let cpu = usize::try_from(libc::sched_getcpu()).expect("sched_getcpu");
        libc::CPU_SET(cpu, &mut one);
        let ret = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one);
        assert_eq!(ret, 0, "sched_setaffinity: {}", io::Error::last_os_error());
        PinnedCpu(old)
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        // SAFETY: a mask the kernel gave us.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

pub fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

pub fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// A port nothing listens on: bound and released again.
pub fn unused_port() -> u16 {
    addr_of(&listen(LOCALHOST_V4)).port()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.accept().expect("accept").0
}

/// Reads until the peer's FIN (asserting it sent no data): the FIN has been processed.
pub fn read_eof(stream: &TcpStream) {
    let mut buf = [0u8; 16];
    // SAFETY: valid buffer; a plain blocking read.
    let n = unsafe { libc::read(stream.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 0, "expected EOF: {}", io::Error::last_os_error());
}

/// SO_LINGER {on, 0}: close(2) aborts the connection with a RST.
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid option pointer and length.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// The harness

/// Loaded probes and every event they delivered so far.
pub struct Harness {
    // Dropped first: the stream deregisters its descriptor from the runtime's reactor.
    stream: EventStream,
    probes: Probes,
    runtime: tokio::runtime::Runtime,
    /// The port filter, to show the kernel's own view of those sockets when a wait times out.
    port: u16,
    pub events: Vec<Event>,
}

fn requested_close_hook() -> CloseHookChoice {
    match std::env::var(CLOSE_HOOK_ENV).as_deref() {
        Err(_) | Ok("" | "auto") => CloseHookChoice::Auto,
        Ok("fentry") => CloseHookChoice::Fentry,
        Ok("kprobe") => CloseHookChoice::Kprobe,
        Ok("tracepoint") => CloseHookChoice::Tracepoint,
        Ok(other) => {
            panic!("{CLOSE_HOOK_ENV}={other}: expected auto, fentry, kprobe or tracepoint")
        }
    }
}

impl Harness {
    pub fn load(filter: Filter) -> Self {
        Self::load_with(filter, StacksMode::Off)
    }

    /// Probes that capture `stacks` at connect and accept.
    pub fn load_with(filter: Filter, stacks: StacksMode) -> Self {
        Self::load_options(filter, stacks, Changes::All)
    }

    /// Probes that send the state changes `changes` asks for.
    pub fn load_options(filter: Filter, stacks: StacksMode, changes: Changes) -> Self {
        Self::load_all(filter, stacks, changes, Bench::Off)
    }

    /// Probes doing one of `cargo xtask bench`'s reference points.
    pub fn load_bench(bench: Bench) -> Self {
        Self::load_all(Filter::none(), StacksMode::Off, Changes::All, bench)
    }

    fn load_all(filter: Filter, stacks: StacksMode, changes: Changes, bench: Bench) -> Self {
        let port = filter.port;
        let choice = requested_close_hook();
        let options = ProbeOptions {
            filter,
            close_hook: choice,
            ring_bytes: 1 << 20,
            stacks,
            bench,
            changes,
        };
        let mut probes =
            Probes::load(&options).unwrap_or_else(|e| panic!("loading the probes: {e:#}"));
        // Every program must load as it is meant to: a verifier rejection of a preferred one
        // would otherwise pass unnoticed as a fallback.
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            let degraded: Vec<&String> =
                probes.notes().iter().filter(|n| n.contains("unavailable")).collect();
            assert!(degraded.is_empty(), "programs fell back: {degraded:?}");
        }
        let expected = match choice {
            CloseHookChoice::Auto => None,
            CloseHookChoice::Fentry => Some(CloseHook::Fentry),
            CloseHookChoice::Kprobe => Some(CloseHook::Kprobe),
            CloseHookChoice::Tracepoint => Some(CloseHook::Tracepoint),
        };
        if let Some(expected) = expected {
            assert_eq!(probes.close_hook(), expected, "{CLOSE_HOOK_ENV} asked for {expected}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stream = {
            let _context = runtime.enter();
            probes.events().expect("event stream")
        };
        Self { stream, probes, runtime, port, events: Vec::new() }
    }

    /// Probes that only see connections with `port` on either side.
    pub fn on_port(port: u16) -> Self {
        Self::load(Filter { port, ..Filter::none() })
    }

    /// The stack map, with a symbolizer (probes loaded with stacks on).
    pub fn stacks(&mut self) -> StackResolver {
        self.probes.stacks(StacksMode::Both).expect("the stack map").expect("stacks on")
    }

    /// Follows process `pid` and what it forks (probes loaded with `Filter::follow`).
    pub fn follow(&mut self, pid: u32) {
        self.probes.follow(pid).expect("following");
    }

    pub fn followed_alive(&self) -> bool {
        self.probes.followed_alive().expect("reading the followed processes")
    }

    pub fn hook(&self) -> CloseHook {
        self.probes.close_hook()
    }

    fn record(events: &mut Vec<Event>, bytes: &[u8]) {
        let event = Event::try_from(bytes).unwrap_or_else(|e| panic!("undecodable record: {e}"));
        events.push(event);
    }

    /// Takes what the ring holds now, without waiting.
    pub fn drain(&mut self) {
        let events = &mut self.events;
        self.stream.drain_now(|bytes| Self::record(events, bytes));
    }

    /// Waits up to `timeout` for the ring to become readable and takes what it holds.
    fn poll(&mut self, timeout: Duration) {
        let Self { stream, runtime, events, .. } = self;
        let batch = runtime.block_on(async {
            tokio::time::timeout(timeout, stream.next_batch(|bytes| Self::record(events, bytes)))
                .await
        });
        if let Ok(result) = batch {
            result.expect("reading the ring buffer");
        }
    }

    /// Collects events until `done` holds, for at most `DEADLINE`.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.drain();
            if done(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within {DEADLINE:?}; events so far:\n{}kernel counters: {:?}\n{}",
                    self.dump(),
                    self.probes.counters(),
                    proc_net_tcp(self.port)
                );
            }
            self.poll(left);
        }
    }

    /// The kernel's address for `sock`, once an event identifies it.
    pub fn skaddr(&self, sock: &Sock) -> Option<u64> {
        self.events.iter().find(|e| sock.is_first(e)).map(|e| e.skaddr)
    }

    /// Every event about `sock`, in ring order.
    pub fn socket_events(&self, sock: &Sock) -> Vec<&Event> {
        match self.skaddr(sock) {
            Some(skaddr) => self.events.iter().filter(|e| e.skaddr == skaddr).collect(),
            None => Vec::new(),
        }
    }

    /// Waits for as many events about `sock` as `expected` lists, then checks each, in order.
    pub fn expect_socket(&mut self, sock: &Sock, expected: &[Expect]) {
        self.wait_until(&format!("{} events for {}", expected.len(), sock.label), |h| {
            h.socket_events(sock).len() >= expected.len()
        });
        self.drain();
        let got = self.socket_events(sock);
        let ok = got.len() == expected.len()
            && got.iter().zip(expected).all(|(e, x)| x.matches(e, sock));
        if !ok {
            let expected: String = expected.iter().map(|x| format!("  {x}\n")).collect();
            let got: String = got.iter().map(|e| format!("  {}\n", show(e))).collect();
            panic!(
                "{} ({} -> {}) under close hook {}:\nexpected\n{expected}got\n{got}all events:\n{}",
                sock.label,
                sock.local,
                sock.remote,
                self.hook(),
                self.dump()
            );
        }
    }

    /// Waits for the exit event of `task`'s process and checks there is exactly one.
    pub fn expect_exit(&mut self, task: &Task) -> usize {
        let is_exit = |e: &Event| e.kind == EventKind::Exit && e.pid == task.pid;
        self.wait_until(&format!("exit of {task}"), |h| h.events.iter().any(is_exit));
        let exits: Vec<usize> =
            (0..self.events.len()).filter(|&i| is_exit(&self.events[i])).collect();
        assert_eq!(exits.len(), 1, "one exit event for {task}; events:\n{}", self.dump());
        let exit = &self.events[exits[0]];
        assert!(
            exit.tid == task.tid && exit.comm.as_str() == task.comm && exit.skaddr == 0,
            "exit event of {task}: {}",
            show(exit)
        );
        exits[0]
    }

    /// Index in `events` of `sock`'s event that is a release.
    pub fn release_index(&self, sock: &Sock) -> usize {
        let skaddr = self.skaddr(sock).expect("socket seen");
        self.events
            .iter()
            .position(|e| e.skaddr == skaddr && matches!(e.kind, EventKind::Release { .. }))
            .unwrap_or_else(|| panic!("no release for {}:\n{}", sock.label, self.dump()))
    }

    /// Fails on any event that is not about `socks`, unless `allow` accepts it.
    pub fn expect_only(&self, socks: &[&Sock], allow: impl Fn(&Event) -> bool) {
        let skaddrs: Vec<u64> = socks
            .iter()
            .map(|s| self.skaddr(s).unwrap_or_else(|| panic!("{} not seen", s.label)))
            .collect();
        self.expect_none("events the filter should have dropped", |e| {
            !skaddrs.contains(&e.skaddr) && !allow(e)
        });
    }

    /// Fails, listing them, if any events match `stray`.
    pub fn expect_none(&self, what: &str, stray: impl Fn(&Event) -> bool) {
        let found: Vec<String> =
            self.events.iter().filter(|e| stray(e)).map(|e| format!("  {}\n", show(e))).collect();
        assert!(found.is_empty(), "{what}:\n{}\nall events:\n{}", found.concat(), self.dump());
    }

    /// Fails if any event names `port` on either side.
    pub fn expect_no_port(&self, port: u16, why: &str) {
        self.expect_none(&format!("{why}: events with port {port}"), |e| {
            e.endpoints.is_some_and(|ep| ep.local.port() == port || ep.remote.port() == port)
        });
    }

    pub fn counters(&self) -> Counters {
        self.probes.counters().expect("reading counters")
    }

    /// Nothing was dropped by a full ring or map, or skipped by the kernel. (Nested changes
    /// are not losses: the second state-change program handled them.)
    pub fn expect_nothing_lost(&self) {
        let counters = self.probes.counters().expect("reading counters");
        let nested_changes = counters.nested_changes;
        assert_eq!(counters, Counters { nested_changes, ..Counters::default() }, "kernel counters");
    }

    /// The events so far, for a failure message: the last `DUMP_LINES` of them, so a burst's
    /// thousands of events do not bury the counts printed after them.
    pub fn dump(&self) -> String {
        let skip = self.events.len().saturating_sub(DUMP_LINES);
        let mut out = format!("  ({} events, the first {skip} not shown)\n", self.events.len());
        for (i, e) in self.events.iter().enumerate().skip(skip) {
            out.push_str(&format!("  [{i:3}] {}\n", show(e)));
        }
        out
    }
}

/// The kernel's socket table rows (`/proc/net/tcp`, `/proc/net/tcp6`) with `port` on either side.
fn proc_net_tcp(port: u16) -> String {
    let needle = format!(":{port:04X} ");
    let mut out = format!("sockets with port {port} (sl local remote st ...):\n");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        let rows: Vec<&str> = text.lines().filter(|l| port != 0 && l.contains(&needle)).collect();
        for line in rows.iter().take(DUMP_LINES) {
            out.push_str(&format!("  {}\n", line.trim()));
        }
        if rows.len() > DUMP_LINES {
            out.push_str(&format!("  ... {} more in {table}\n", rows.len() - DUMP_LINES));
        }
    }
    out
}

/// An event kind as the failure messages print it.
fn show_kind(kind: EventKind) -> String {
    match kind {
        EventKind::Connect => "connect".to_owned(),
        EventKind::Accept { state } => format!("accept state={}", opt_state(state)),
        EventKind::State { old, new, reset } => {
            format!("{old}->{new}{}", if reset { " RESET" } else { "" })
        }
        EventKind::Release { reason, state } => {
            format!("release by={} state={}", reason.name(), opt_state(state))
        }
        EventKind::Exit => "exit".to_owned(),
        EventKind::Exec => "exec".to_owned(),
    }
}

/// One event on one line, every field the tests check.
pub fn show(e: &Event) -> String {
    let kind = show_kind(e.kind);
    let endpoints = match e.endpoints {
        Some(ep) => format!("{} -> {}", ep.local, ep.remote),
        None => "-".to_owned(),
    };
    format!(
        "{kind:<32} task={}/{} {:?} owner={} fd={} {endpoints} sk={:#x}{}",
        e.pid,
        e.tid,
        e.comm.as_str(),
        opt(e.owner_pid),
        opt(e.fd),
        e.skaddr,
        if e.owner_lost { " OWNER_LOST" } else { "" }
    )
}

fn opt<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn opt_state(state: Option<TcpState>) -> String {
    opt(state)
}

// ---------------------------------------------------------------------------------------------
// Sockets and expectations

/// How a socket's first event is recognised in the ring.
#[derive(Clone, Copy, Debug)]
pub enum Find {
    /// The `connect` event of this thread and descriptor.
    Connect { tid: u32, fd: RawFd },
    /// The first event with exactly these endpoints (the passive side).
    Endpoints,
}

/// A socket as the test knows it.
#[derive(Clone, Copy, Debug)]
pub struct Sock {
    pub label: &'static str,
    pub find: Find,
    /// Port 0: not known to the test (a failed connect() forgets its port).
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Sock {
    /// The active side, connected by `task` as `fd`.
    pub fn client(
        label: &'static str,
        task: &Task,
        fd: RawFd,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        Self { label, find: Find::Connect { tid: task.tid, fd }, local, remote }
    }

    /// The active side, connected by `task` as `stream`.
    pub fn client_stream(label: &'static str, task: &Task, stream: &TcpStream) -> Self {
        let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        Self::client(label, task, stream.as_raw_fd(), local, remote)
    }

    /// The passive side, known by its endpoints.
    pub fn server(label: &'static str, local: SocketAddr, remote: SocketAddr) -> Self {
        Self { label, find: Find::Endpoints, local, remote }
    }

    pub fn server_stream(label: &'static str, stream: &TcpStream) -> Self {
        Self::server(label, stream.local_addr().unwrap(), stream.peer_addr().unwrap())
    }

    fn is_first(&self, e: &Event) -> bool {
        match self.find {
            Find::Connect { tid, fd } => {
                e.kind == EventKind::Connect && e.tid == tid && e.fd == Some(fd)
            }
            Find::Endpoints => {
                e.kind != EventKind::Exit
                    && e.endpoints == Some(Endpoints { local: self.local, remote: self.remote })
            }
        }
    }

    fn local_matches(&self, local: SocketAddr) -> bool {
        local.ip() == self.local.ip()
            && (self.local.port() == 0 || local.port() == self.local.port())
    }
}

/// The owner-map entry an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub fd: RawFd,
}

/// An expected value, or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Is<T> {
    Eq(T),
    Any,
}

impl<T: PartialEq> Is<T> {
    fn accepts(&self, value: &T) -> bool {
        match self {
            Is::Eq(expected) => expected == value,
            Is::Any => true,
        }
    }
}

impl<T: fmt::Debug> fmt::Display for Is<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Is::Eq(value) => write!(f, "{value:?}"),
            Is::Any => f.write_str("*"),
        }
    }
}

/// Which endpoints an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    /// The socket's own.
    Exact,
    /// `CLOSE -> SYN_SENT` runs before connect() picks the local port: port 0.
    BeforePort,
    /// `LISTEN -> SYN_RECV` runs while the new socket is cloned from the listener: older kernels
    /// (6.1) have not copied the peer's address yet (`0.0.0.0:0`), newer ones (6.18) have.
    BeforePeer,
    /// The kernel clears ports (and, after a failed connect, addresses) once a socket is CLOSE.
    Any,
    /// Lean mode: none, user space has them from the socket's open.
    Omitted,
    /// Lean mode's release: none with fentry or kprobe; tracepoint mode reads the socket anyway
    /// (to find it behind the descriptor) and sends them.
    ExactOrOmitted,
}

/// One expected event of a socket.
#[derive(Clone, Debug)]
pub struct Expect {
    pub kind: EventKind,
    /// The task the program ran in; `None` for state changes, which run in whatever task the
    /// softirq interrupted.
    pub task: Option<Task>,
    pub owner_pid: Is<Option<u32>>,
    pub fd: Is<Option<RawFd>>,
    pub ends: Ends,
}

impl Expect {
    pub fn matches(&self, e: &Event, sock: &Sock) -> bool {
        let task_ok = self
            .task
            .as_ref()
            .is_none_or(|t| e.pid == t.pid && e.tid == t.tid && e.comm.as_str() == t.comm);
        let ends_ok = match (self.ends, e.endpoints) {
            (Ends::Any, _) | (Ends::Omitted | Ends::ExactOrOmitted, None) => true,
            (Ends::Omitted, Some(_)) | (_, None) => false,
            (Ends::Exact | Ends::ExactOrOmitted, Some(ep)) => {
                sock.local_matches(ep.local) && ep.remote == sock.remote
            }
            (Ends::BeforePeer, Some(ep)) => {
                let unset = ep.remote.ip().is_unspecified() && ep.remote.port() == 0;
                ep.local == sock.local && (ep.remote == sock.remote || unset)
            }
            (Ends::BeforePort, Some(ep)) => {
                ep.local.ip() == sock.local.ip() && ep.local.port() == 0 && ep.remote == sock.remote
            }
        };
        e.kind == self.kind
            && task_ok
            && self.owner_pid.accepts(&e.owner_pid)
            && self.fd.accepts(&e.fd)
            && ends_ok
            && !e.owner_lost
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = show_kind(self.kind);
        let task = self.task.as_ref().map_or_else(|| "*".to_owned(), Task::to_string);
        write!(
            f,
            "{kind:<32} task={task} owner={} fd={} endpoints={:?}",
            self.owner_pid, self.fd, self.ends
        )
    }
}

/// `CLOSE -> SYN_SENT` in the thread that called connect() on `fd`.
pub fn connect_event(task: &Task, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Connect,
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::BeforePort,
    }
}

/// accept() returned the socket as `fd` in `task`, ESTABLISHED.
pub fn accept_event(task: &Task, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Accept { state: Some(Established) },
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::Exact,
    }
}

/// A state change, attributed to `owner` (None before accept()).
pub fn change(old: TcpState, new: TcpState, owner: Option<Owner>) -> Expect {
    Expect {
        kind: EventKind::State { old, new, reset: false },
        task: None,
        owner_pid: Is::Eq(owner.map(|o| o.pid)),
        fd: Is::Eq(owner.map(|o| o.fd)),
        ends: Ends::Exact,
    }
}

/// `old -> CLOSE` because a RST arrived.
pub fn reset_close(old: TcpState, owner: Option<Owner>) -> Expect {
    Expect {
        kind: EventKind::State { old, new: TcpState::Close, reset: true },
        ..change(old, TcpState::Close, owner)
    }
}

/// `task`, the owner, gave up its last descriptor `fd` while the socket was `state`.
pub fn release_event(task: &Task, reason: ReleaseReason, state: TcpState, fd: RawFd) -> Expect {
    Expect {
        kind: EventKind::Release { reason, state: Some(state) },
        task: Some(task.clone()),
        owner_pid: Is::Eq(Some(task.pid)),
        fd: Is::Eq(Some(fd)),
        ends: Ends::Exact,
    }
}

/// The release, by `task`, the owner, of a socket that had already reached CLOSE (reset,
/// refused): the owner map keeps the entry until the release, so owner and descriptor are
/// known; the kernel has cleared the ports (and, after a failed connect, the addresses).
pub fn release_after_close(task: &Task, reason: ReleaseReason, fd: RawFd) -> Expect {
    Expect { ends: Ends::Any, ..release_event(task, reason, TcpState::Close, fd) }
}

// ---------------------------------------------------------------------------------------------
// Whole-connection sequences

/// The active side until it is established.
pub fn active_open(task: &Task, fd: RawFd) -> Vec<Expect> {
    vec![connect_event(task, fd), change(SynSent, Established, task.owns(fd))]
}

/// The passive side until accept() returns it.
pub fn passive_open(task: &Task, fd: RawFd) -> Vec<Expect> {
    vec![
        Expect { ends: Ends::BeforePeer, ..change(Listen, SynRecv, None) },
        change(SynRecv, Established, None),
        accept_event(task, fd),
    ]
}

/// The side that closes first, from ESTABLISHED to TIME_WAIT (`FIN_WAIT2 -> CLOSE`).
pub fn closes_first(
    task: &Task,
    fd: RawFd,
    owner: Option<Owner>,
    reason: ReleaseReason,
) -> Vec<Expect> {
    vec![
        release_event(task, reason, Established, fd),
        change(Established, FinWait1, owner),
        change(FinWait1, FinWait2, owner),
        change(FinWait2, TcpState::Close, owner),
    ]
}

/// The side that closes second, from ESTABLISHED to CLOSE.
pub fn closes_second(
    task: &Task,
    fd: RawFd,
    owner: Option<Owner>,
    reason: ReleaseReason,
) -> Vec<Expect> {
    vec![
        change(Established, CloseWait, owner),
        release_event(task, reason, CloseWait, fd),
        change(CloseWait, LastAck, owner),
        change(LastAck, TcpState::Close, owner),
    ]
}

pub fn concat(parts: &[Vec<Expect>]) -> Vec<Expect> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Forked children and raw socket calls

/// A socket address in the form connect(2) takes, built before fork().
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: libc::c_int,
}

impl From<SocketAddr> for RawAddr {
    fn from(addr: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                (size_of::<libc::sockaddr_in>(), libc::AF_INET)
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                (size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
            }
        };
        Self { storage, len: len as libc::socklen_t, family }
    }
}

/// Raw libc socket calls: no allocation, so they are safe in a forked child.
pub mod raw {
    use super::*;

    /// A TCP socket connected to `addr`, or -1.
    pub fn connect(addr: &RawAddr) -> RawFd {
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            let fd = libc::socket(addr.family, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return -1;
            }
            if libc::connect(fd, (&raw const addr.storage).cast(), addr.len) != 0 {
                return -1;
            }
            fd
        }
    }

    /// A TCP socket whose connect() to `addr` failed, and the error.
    pub fn failed_connect(addr: &RawAddr) -> (RawFd, io::Error) {
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            let fd = libc::socket(addr.family, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let ret = libc::connect(fd, (&raw const addr.storage).cast(), addr.len);
            assert_eq!(ret, -1, "connect succeeded");
            (fd, io::Error::last_os_error())
        }
    }

    pub fn accept(listener: RawFd) -> RawFd {
        // SAFETY: null address arguments are allowed.
        unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) }
    }

    /// The local port of `fd`, or -1.
    pub fn local_port(fd: RawFd) -> i32 {
        // SAFETY: valid buffer and length.
        unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, (&raw mut storage).cast(), &mut len) != 0 {
                return -1;
            }
            // sin_port and sin6_port are at the same offset.
            let sin = &*(&raw const storage).cast::<libc::sockaddr_in>();
            i32::from(u16::from_be(sin.sin_port))
        }
    }

    /// Reads until EOF; false on error or data.
    pub fn read_eof(fd: RawFd) -> bool {
        let mut byte = 0u8;
        // SAFETY: valid one-byte buffer.
        unsafe { libc::read(fd, (&raw mut byte).cast(), 1) == 0 }
    }

    pub fn close(fd: RawFd) -> bool {
        // SAFETY: closes a descriptor the caller owns.
        unsafe { libc::close(fd) == 0 }
    }
}

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

    /// Waits up to `DEADLINE` for a value (the test side).
    pub fn recv(&self, what: &str) -> i32 {
        let mut pfd = libc::pollfd { fd: self.read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, DEADLINE.as_millis() as i32) };
        assert_eq!(ready, 1, "no {what} from the child within {DEADLINE:?}");
        self.recv_blocking().unwrap_or_else(|| panic!("reading {what}"))
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
    pub fn task(&self) -> Task {
        Task::child(self.pid, self.comm)
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

/// How a child gives up its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// close(2), then exit.
    Close,
    /// Exit while still holding the descriptor.
    Exit,
}

impl Ending {
    pub fn reason(self) -> ReleaseReason {
        match self {
            Ending::Close => ReleaseReason::Close,
            Ending::Exit => ReleaseReason::Exit,
        }
    }
}

/// A forked client. Step by step, each on the test's word: connect to `server` and report the
/// descriptor and local port; then give the socket up (`Ending`) and exit.
pub struct ClientChild {
    pub child: Child,
    go: Pipe,
    report: Pipe,
    pub server: SocketAddr,
}

impl ClientChild {
    pub fn fork(comm: &'static CStr, server: SocketAddr, ending: Ending) -> Self {
        let (go, report) = (Pipe::new(), Pipe::new());
        let addr = RawAddr::from(server);
        let child = fork_child(comm, || {
            if go.recv_blocking().is_none() {
                return 10;
            }
            let fd = raw::connect(&addr);
            if fd < 0 {
                return 11;
            }
            if !report.send(fd) || !report.send(raw::local_port(fd)) {
                return 12;
            }
            if go.recv_blocking().is_none() {
                return 13;
            }
            if ending == Ending::Close && !raw::close(fd) {
                return 14;
            }
            0
        });
        Self { child, go, report, server }
    }

    pub fn task(&self) -> Task {
        self.child.task()
    }

    /// Lets the child connect; returns its socket as the tests describe it.
    pub fn connect(&self, label: &'static str) -> (Sock, RawFd) {
        assert!(self.go.send(1), "signalling the child");
        let fd = self.report.recv("client descriptor");
        let port = self.report.recv("client port");
        let local = SocketAddr::new(self.server.ip(), port as u16);
        (Sock::client(label, &self.task(), fd, local, self.server), fd)
    }

    /// Lets the child give up its socket and exit; waits for it.
    pub fn finish(self) {
        assert!(self.go.send(1), "signalling the child");
        self.child.wait();
    }
}

/// A forked server accepting on the test's `listener`. On the test's word: accept and report
/// the descriptor; then wait for the client's FIN, give the socket up (`Ending`) and exit.
pub struct ServerChild {
    pub child: Child,
    go: Pipe,
    report: Pipe,
}

impl ServerChild {
    pub fn fork(comm: &'static CStr, listener: &TcpListener, ending: Ending) -> Self {
        let (go, report) = (Pipe::new(), Pipe::new());
        let listener = listener.as_raw_fd();
        let child = fork_child(comm, || {
            if go.recv_blocking().is_none() {
                return 20;
            }
            let fd = raw::accept(listener);
            if fd < 0 {
                return 21;
            }
            if !report.send(fd) {
                return 22;
            }
            if !raw::read_eof(fd) {
                return 23;
            }
            if ending == Ending::Close && !raw::close(fd) {
                return 24;
            }
            0
        });
        Self { child, go, report }
    }

    pub fn task(&self) -> Task {
        self.child.task()
    }

    /// Lets the child accept; returns the accepted descriptor.
    pub fn accept(&self) -> RawFd {
        assert!(self.go.send(1), "signalling the child");
        self.report.recv("accepted descriptor")
    }

    pub fn wait(self) {
        self.child.wait();
    }
}

/// A loopback connection made in this thread, traced by probes that only see its port.
pub struct Loopback {
    /// Kept open for the test's duration, as a real server would.
    pub listener: TcpListener,
    pub h: Harness,
    pub me: Task,
    pub client: TcpStream,
    pub server: TcpStream,
    pub client_fd: RawFd,
    pub server_fd: RawFd,
    pub client_sock: Sock,
    pub server_sock: Sock,
}

impl Loopback {
    pub fn open(local: SocketAddr) -> Self {
        Self::open_with(local, Harness::on_port)
    }

    /// The same, with probes that `load` sets up for the listener's port.
    pub fn open_with(local: SocketAddr, load: impl FnOnce(u16) -> Harness) -> Self {
        let listener = listen(local);
        let h = load(addr_of(&listener).port());
        let me = Task::current();
        let client = connect(addr_of(&listener));
        let server = accept(&listener);
        Self {
            h,
            client_fd: client.as_raw_fd(),
            server_fd: server.as_raw_fd(),
            client_sock: Sock::client_stream("client", &me, &client),
            server_sock: Sock::server_stream("server", &server),
            me,
            client,
            server,
            listener,
        }
    }
}
