//! The in-process harness of the root tests: the real kernel programs loaded with a filter of
//! the test's own (and the close hook `TCPTRACE_TEST_CLOSE_HOOK` asks for), every event they
//! deliver decoded and kept, waits that fail with the events so far, the kernel counters and
//! the kernel's socket table; a loopback connection traced that way; pinning to one CPU.

use std::{
    fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    path::Path,
    time::{Duration, Instant},
};

#[cfg(feature = "bench")]
use tcptrace::kernel::probes::Bench;
use tcptrace::{
    event::{Event, EventKind},
    kernel::{
        close_hook::{CloseHook, CloseHookChoice},
        counters::Counters,
        probes::{Changes, ProbeOptions, Probes, StacksMode},
        stream::EventStream,
    },
    stacks::StackResolver,
};
use tcptrace_common::Filter;

use super::{
    expect::{Expect, Sock, Task, show},
    process::{CLOSE_HOOK_ENV, DEADLINE, requested_close_hook_name},
    sockets::{accept, addr_of, connect, listen},
};

/// Lines of events or sockets a failure message prints at most.
const DUMP_LINES: usize = 60;

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
    match requested_close_hook_name().as_str() {
        "" | "auto" => CloseHookChoice::Auto,
        "fentry" => CloseHookChoice::Fentry,
        "kprobe" => CloseHookChoice::Kprobe,
        "tracepoint" => CloseHookChoice::Tracepoint,
        other => {
            panic!("{CLOSE_HOOK_ENV}={other}: expected auto, fentry, kprobe or tracepoint")
        }
    }
}

/// The one place the tests build `ProbeOptions`: a 1 MiB ring, everything else as asked;
/// `cargo xtask bench`'s reference points only with the `bench` feature.
fn probe_options(
    filter: Filter,
    close_hook: CloseHookChoice,
    stacks: StacksMode,
    changes: Changes,
    #[cfg(feature = "bench")] bench: Bench,
) -> ProbeOptions {
    ProbeOptions {
        filter,
        close_hook,
        ring_bytes: 1 << 20,
        stacks,
        changes,
        cgroup_ids: true,
        unrolled_loops: false,
        #[cfg(feature = "bench")]
        bench,
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
        let options = probe_options(
            filter,
            requested_close_hook(),
            stacks,
            changes,
            #[cfg(feature = "bench")]
            Bench::Off,
        );
        Self::load_all(&options)
    }

    /// Probes with every stack, their loops verified unrolled as on kernels without
    /// `bpf_loop` (`ProbeOptions::unrolled_loops`).
    pub fn load_unrolled(filter: Filter) -> Self {
        let options = ProbeOptions {
            unrolled_loops: true,
            ..probe_options(
                filter,
                requested_close_hook(),
                StacksMode::Both,
                Changes::All,
                #[cfg(feature = "bench")]
                Bench::Off,
            )
        };
        Self::load_all(&options)
    }

    /// Probes doing one of `cargo xtask bench`'s reference points.
    #[cfg(feature = "bench")]
    pub fn load_bench(bench: Bench) -> Self {
        let choice = requested_close_hook();
        Self::load_all(&probe_options(Filter::none(), choice, StacksMode::Off, Changes::All, bench))
    }

    /// `Bench::InKernel`'s counts of process `pid`.
    #[cfg(feature = "bench")]
    pub fn bench_counts(&self, pid: u32) -> tcptrace_common::BenchCounts {
        let counts = self.probes.bench_counts().expect("reading the in-kernel counts");
        counts.into_iter().find(|&(p, _)| p == pid).map(|(_, c)| c).unwrap_or_default()
    }

    fn load_all(options: &ProbeOptions) -> Self {
        let port = options.filter.port;
        let choice = options.close_hook;
        let mut probes =
            Probes::load(options).unwrap_or_else(|e| panic!("loading the probes: {e:#}"));
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

    /// The close hook the probes use.
    pub fn close_hook(&self) -> CloseHook {
        self.probes.close_hook()
    }

    /// The stack map, with a symbolizer (probes loaded with stacks on).
    pub fn stacks(&mut self) -> StackResolver {
        let maps = self.probes.stack_maps(StacksMode::Both).expect("the stack map");
        let maps = maps.expect("stacks on");
        StackResolver::new(maps.user, maps.kernel, maps.interp)
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
        let Counters { nested_changes, sent_events, .. } = counters;
        assert_eq!(
            counters,
            Counters { nested_changes, sent_events, ..Counters::default() },
            "kernel counters"
        );
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
