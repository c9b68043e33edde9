//! Real-world leak scenarios for `tcptrace leaks`: real Debian servers (nginx, redis-server) and
//! forked clients in network namespaces made by the test, each scenario putting one socket, in
//! one process and descriptor, into the state a leak class describes.
//!
//! Two kinds of root tests use the same scenarios:
//! - `fixture_*` check, without tcptrace, that the scenario does what it claims: the kernel's own
//!   view (`ss` inside the namespace, `/proc/<pid>/net/tcp` joined with `/proc/<pid>/fd`,
//!   `tcp_info` through `pidfd_getfd`) shows the expected state in the expected process and fd;
//! - `leaks_*` run `tcptrace leaks --json` around the scenario and check that its report has
//!   exactly the expected finding (kind, pid, fd, state, endpoints, source) and no other about
//!   the scenario's processes. Other processes on the host may have findings of their own.
//!
//! Run with `cargo xtask test`, or as root (nginx and redis-server installed by `cargo xtask
//! setup`): `cargo test -p tcptrace --test leaks_scenarios -- --include-ignored`.

mod scenarios;
#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod netns;
    pub mod process;
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::RawFd,
    thread,
    time::{Duration, Instant},
};

use scenarios::{
    leaks::{Finding, Leaks, Report},
    nginx::{self, KEEPALIVE_TIMEOUT, Nginx},
    redis::{self, Redis},
    sockets::{self, Timer},
};
use support::{
    netns::{Netns, VETH, Veth},
    process::Actor,
    raw::{self, RawAddr},
    sockets::loopback,
};

/// The limits the tests pass (`--min-age`, `--idle`), short so that scenarios take seconds.
const MIN_AGE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(3);
const LIMITS: [&str; 4] = ["--min-age", "1s", "--idle", "3s"];
/// Time beyond a limit before the tracer is stopped, for a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(1);
/// How long a socket may take to reach the state a step leads to.
const SETTLE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Checks on a report

/// The one finding about the scenario's `pids`; fails unless it is `kind` for `pid` and `fd`.
fn the_finding<'r>(
    report: &'r Report,
    pids: &[u32],
    kind: &str,
    pid: u32,
    fd: Option<RawFd>,
) -> &'r Finding {
    let found = report.findings_of(pids);
    assert!(
        found.len() == 1 && found[0].kind == kind && found[0].pid == pid && found[0].fd == fd,
        "expected exactly one {kind} finding for pid {pid} fd {fd:?}\n{}",
        report.show(pids)
    );
    found[0]
}

/// Fails on any finding about `pids`.
fn no_findings(report: &Report, pids: &[u32]) {
    assert!(report.findings_of(pids).is_empty(), "expected no finding\n{}", report.show(pids));
}

/// What every report must satisfy, whatever the scenario.
fn sound(report: &Report) {
    assert_eq!(report.events_lost, 0, "events lost\n{}", report.text);
    assert!(!report.close_hook.is_empty() && report.duration_s > 0.0, "{}", report.text);
    assert_eq!(
        report.limits.min_age_s,
        MIN_AGE.as_secs_f64(),
        "--min-age as passed\n{}",
        report.text
    );
    for f in &report.findings {
        assert!(
            !f.explanation.is_empty()
                && !f.fix.is_empty()
                && matches!(f.source.as_str(), "events" | "inventory"),
            "every finding explains itself and names its source: {f:?}"
        );
    }
}

/// A finding about one socket: its fields as the scenario knows them.
struct Expect<'a> {
    comm: &'a str,
    state: &'a str,
    local: SocketAddr,
    remote: SocketAddr,
    source: &'a str,
}

fn check_socket_finding(f: &Finding, x: &Expect<'_>, report: &Report) {
    let local = x.local.to_string();
    let remote = x.remote.to_string();
    assert!(
        f.comm == x.comm
            && f.state == x.state
            && f.local.as_deref() == Some(local.as_str())
            && f.remote.as_deref() == Some(remote.as_str())
            && f.source == x.source
            && f.count == 1,
        "finding {f:?}\nexpected comm {} state {} {local} -> {remote} source {} count 1\n{}",
        x.comm,
        x.state,
        x.source,
        report.text
    );
}

// ---------------------------------------------------------------------------------------------
// a. An HTTP client that reads a keep-alive response and never closes the connection

struct HttpKeepAlive {
    client: Actor,
    nginx: Nginx,
    ns: Netns,
}

impl HttpKeepAlive {
    fn start() -> Self {
        let ns = Netns::new("http");
        let nginx = Nginx::start(&ns);
        let server = RawAddr::from(nginx.addr);
        let client = ns.fork(c"tt-http", |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let Some(fd) = raw::connect(&server) else {
                return 11;
            };
            let mut response = [0u8; 1024];
            if !nginx::http_get(fd, &mut response) {
                return 12;
            }
            if !steps.report(fd) {
                return 13;
            }
            // The response was read and the connection forgotten: never closed.
            if !steps.wait_go() {
                return 14;
            }
            0
        });
        Self { client, nginx, ns }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.nginx.pid()]
    }

    /// One keep-alive `GET /`; the client's descriptor and when the response had been read.
    fn get(&self) -> (RawFd, Instant) {
        self.client.go();
        let fd = self.client.recv("the client's descriptor");
        (fd, Instant::now())
    }

    /// nginx closes the idle keep-alive connection: the client's socket goes CLOSE_WAIT.
    fn wait_close_wait(&self, fd: RawFd) -> sockets::TcpRow {
        sockets::wait_state(self.client.pid(), fd, "CLOSE_WAIT", KEEPALIVE_TIMEOUT + SETTLE)
    }
}

#[test]
#[ignore = "needs root, nginx and network namespaces (cargo xtask test)"]
fn fixture_http_keepalive_timeout_leaves_the_client_in_close_wait() {
    let s = HttpKeepAlive::start();
    let (fd, answered) = s.get();
    let row = s.wait_close_wait(fd);
    let after = answered.elapsed();
    assert!(
        after >= KEEPALIVE_TIMEOUT.mul_f64(0.8),
        "CLOSE_WAIT {after:?} after the response: not nginx's keepalive_timeout\n{}",
        s.nginx.daemon.log()
    );
    assert_eq!(row.remote, s.nginx.addr);

    let ss = sockets::ss(&s.ns);
    let table = sockets::show_ss(&ss);
    let client = ss.iter().find(|r| r.held_by(s.client.pid(), fd));
    let client = client.unwrap_or_else(|| panic!("no socket held by tt-http fd {fd}:\n{table}"));
    assert_eq!(client.state, "CLOSE-WAIT", "{table}");
    assert_eq!(client.peer, s.nginx.addr.to_string(), "{table}");
    assert_eq!(client.users.len(), 1, "only the client holds it:\n{table}");
    // nginx closed its end (no descriptor left) and waits for the client's FIN: in FIN_WAIT2,
    // or still in FIN_WAIT1 while the client's ACK of nginx's FIN is delayed.
    let nginx_end = ss.iter().find(|r| r.local == client.peer && r.peer == client.local);
    let nginx_end = nginx_end.unwrap_or_else(|| panic!("no nginx end:\n{table}"));
    assert!(
        matches!(nginx_end.state.as_str(), "FIN-WAIT-1" | "FIN-WAIT-2")
            && nginx_end.users.is_empty(),
        "{table}"
    );
    let listener = ss.iter().find(|r| r.state == "LISTEN" && r.local == s.nginx.addr.to_string());
    assert!(
        listener
            .is_some_and(|r| r.users.iter().any(|u| u.pid == s.nginx.pid() && u.comm == "nginx")),
        "{table}"
    );
    s.client.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_http_client_holding_a_closed_keepalive_connection_is_close_wait() {
    let s = HttpKeepAlive::start();
    let leaks = Leaks::start(&LIMITS);
    let (fd, _) = s.get();
    let row = s.wait_close_wait(fd);
    thread::sleep(MIN_AGE + MARGIN);
    let report = leaks.stop();
    sound(&report);

    let pids = s.pids();
    let f = the_finding(&report, &pids, "close-wait", s.client.pid(), Some(fd));
    let expect = Expect {
        comm: "tt-http",
        state: "CLOSE_WAIT",
        local: row.local,
        remote: s.nginx.addr,
        source: "events",
    };
    check_socket_finding(f, &expect, &report);
    assert!(f.age_s.is_some_and(|age| age >= MIN_AGE.as_secs_f64()), "{f:?}");
    s.client.finish();
}

// ---------------------------------------------------------------------------------------------
// b. A client whose peer resets the connection, and which never closes its descriptor

struct ResetPeer {
    client: Actor,
    server: Actor,
    server_addr: SocketAddr,
    ns: Netns,
}

impl ResetPeer {
    fn start() -> Self {
        let ns = Netns::new("reset");
        let server = ns.fork(c"tt-rst-server", |steps| {
            let Some((listener, port)) = raw::listen_loopback() else {
                return 20;
            };
            if !steps.report(i32::from(port)) || !steps.wait_go() {
                return 21;
            }
            let Some(fd) = raw::accept(listener) else {
                return 22;
            };
            // SO_LINGER 0: close(2) aborts the connection with a RST.
            if !raw::linger_zero(fd) || !raw::close(fd) || !steps.report(1) {
                return 23;
            }
            if !steps.wait_go() {
                return 24;
            }
            0
        });
        let server_addr = loopback(server.recv("the server's port") as u16);
        let raw_server = RawAddr::from(server_addr);
        let client = ns.fork(c"tt-rst-client", |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let Some(fd) = raw::connect(&raw_server) else {
                return 11;
            };
            if !steps.report(fd) || !steps.wait_go() {
                return 12;
            }
            // What the program sees: an error, then end of file. It never closes the socket.
            if !steps.report(raw::read_one(fd)) || !steps.report(raw::read_one(fd)) {
                return 13;
            }
            if !steps.wait_go() {
                return 14;
            }
            0
        });
        Self { client, server, server_addr, ns }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.server.pid()]
    }

    /// Connects, lets the server abort, lets the client read; returns the client's descriptor.
    fn reset(&self) -> RawFd {
        self.client.go();
        let fd = self.client.recv("the client's descriptor");
        self.server.go();
        self.server.recv("the server's abort");
        self.client.go();
        let first = self.client.recv("the client's first read");
        let second = self.client.recv("the client's second read");
        assert_eq!(
            (first, second),
            (-libc::ECONNRESET, 0),
            "the client's reads after the RST: ECONNRESET, then end of file"
        );
        fd
    }

    fn finish(self) {
        self.client.finish();
        self.server.finish();
    }
}

#[test]
#[ignore = "needs root and network namespaces (cargo xtask test)"]
fn fixture_reset_by_the_peer_leaves_a_dead_descriptor() {
    let s = ResetPeer::start();
    let fd = s.reset();
    let pid = s.client.pid();
    // Still a socket in the process, but no longer in the namespace's TCP table (it is CLOSE).
    let held = sockets::held(pid);
    let socket = held.iter().find(|h| h.fd == fd);
    let socket =
        socket.unwrap_or_else(|| panic!("fd {fd} of tt-rst-client is no socket: {held:#?}"));
    let table = sockets::tcp_table(pid);
    assert!(!table.iter().any(|r| r.inode == socket.inode), "still in the TCP table: {socket:?}");
    assert_eq!(sockets::peek(pid, fd).state, "CLOSE");
    let ss = sockets::ss(&s.ns);
    assert!(
        !ss.iter().any(|r| r.users.iter().any(|u| u.pid == pid)),
        "ss lists no CLOSE socket:\n{}",
        sockets::show_ss(&ss)
    );
    s.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_descriptor_kept_after_a_reset_is_dead_fd() {
    let s = ResetPeer::start();
    let leaks = Leaks::start(&LIMITS);
    let fd = s.reset();
    thread::sleep(MIN_AGE + MARGIN);
    let report = leaks.stop();
    sound(&report);

    let f = the_finding(&report, &s.pids(), "dead-fd", s.client.pid(), Some(fd));
    assert!(
        f.comm == "tt-rst-client" && f.state == "CLOSE" && f.source == "events" && f.count == 1,
        "{f:?}\n{}",
        report.text
    );
    // The kernel clears a reset socket's ports; the peer is what the tracer saw at connect.
    let remote = s.server_addr.to_string();
    assert!(f.remote.is_none() || f.remote.as_deref() == Some(remote.as_str()), "{f:?}");
    s.finish();
}

// ---------------------------------------------------------------------------------------------
// c. A Redis client that vanishes without a FIN: redis-server keeps a ghost connection

struct RedisGhost {
    client: Actor,
    redis: Redis,
    veth: Veth,
    client_ns: Netns,
    server_ns: Netns,
}

/// The connection as both ends know it.
struct GhostConnection {
    client_addr: SocketAddr,
    server_fd: RawFd,
    pinged: Instant,
}

impl RedisGhost {
    /// redis-server in one namespace, a client in another, a veth pair between them.
    fn start(keepalive_s: u32) -> Self {
        let server_ns = Netns::new(&format!("ghost{keepalive_s}s"));
        let client_ns = Netns::new(&format!("ghost{keepalive_s}c"));
        let veth = Veth::between(&server_ns, &client_ns);
        let redis = Redis::start(&server_ns, IpAddr::V4(veth.a_addr), keepalive_s);
        let server = RawAddr::from(redis.addr);
        let client = client_ns.fork(c"tt-redis-cli", |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let Some(fd) = raw::connect(&server) else {
                return 11;
            };
            if !redis::ping(fd) {
                return 12;
            }
            if !steps.report(fd) || !steps.report(raw::local_port(fd)) || !steps.wait_go() {
                return 13;
            }
            // Gone for good: the close cannot reach the server any more.
            if !raw::close(fd) || !steps.report(1) || !steps.wait_go() {
                return 14;
            }
            0
        });
        Self { client, redis, veth, client_ns, server_ns }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.redis.pid()]
    }

    /// The client connects and PINGs; redis-server's end of the connection.
    fn ping(&self) -> GhostConnection {
        self.client.go();
        let _fd = self.client.recv("the client's descriptor");
        let port = self.client.recv("the client's port") as u16;
        let pinged = Instant::now();
        let client_addr = SocketAddr::from((self.veth.b_addr, port));
        let (server_fd, _) =
            sockets::wait_held(self.redis.pid(), "ESTABLISHED", client_addr, SETTLE);
        GhostConnection { client_addr, server_fd, pinged }
    }

    /// The link goes away, then the client closes: its FIN never reaches redis-server.
    fn vanish(&self) {
        self.veth.cut();
        self.client.go();
        self.client.recv("the client's close");
    }
}

fn fixture_redis_ghost(keepalive_s: u32) {
    let s = RedisGhost::start(keepalive_s);
    let c = s.ping();
    s.vanish();
    let keepalive = keepalive_s > 0;
    let redis = s.redis.pid();

    let ss = sockets::ss(&s.server_ns);
    let table = sockets::show_ss(&ss);
    let row = ss.iter().find(|r| r.held_by(redis, c.server_fd));
    let row = row
        .unwrap_or_else(|| panic!("no socket held by redis-server fd {}:\n{table}", c.server_fd));
    assert_eq!(
        (row.state.as_str(), row.peer.clone()),
        ("ESTAB", c.client_addr.to_string()),
        "{table}"
    );
    assert_eq!(
        row.keepalive(),
        keepalive,
        "timer:(keepalive...) with tcp-keepalive {keepalive_s}:\n{table}"
    );
    let proc_row = sockets::row_of(redis, c.server_fd).expect("in /proc/net/tcp");
    assert_eq!(proc_row.timer == Timer::Keepalive, keepalive, "{proc_row:?}");
    // The link is gone; the client holds nothing.
    assert!(
        !s.client_ns.has_link(VETH) && !s.server_ns.has_link(VETH),
        "the veth pair is still there"
    );
    assert!(sockets::held(s.client.pid()).is_empty(), "the client closed its socket");
    // redis-server sends and receives nothing on it: idle since the PING.
    thread::sleep(Duration::from_secs(1));
    let peek = sockets::peek(redis, c.server_fd);
    assert_eq!((peek.state, peek.keepalive), ("ESTABLISHED", keepalive), "{peek:?}");
    assert!(
        peek.last_data_recv_ms >= 900 && peek.last_data_sent_ms >= 900,
        "idle since the PING ({:?} ago): {peek:?}",
        c.pinged.elapsed()
    );
    s.client.finish();
}

#[test]
#[ignore = "needs root, redis-server and network namespaces (cargo xtask test)"]
fn fixture_redis_ghost_without_keepalive() {
    fixture_redis_ghost(0);
}

#[test]
#[ignore = "needs root, redis-server and network namespaces (cargo xtask test)"]
fn fixture_redis_ghost_with_keepalive() {
    fixture_redis_ghost(60);
}

/// Traces the ghost scenario until redis-server's end has been idle beyond `--idle`.
fn leaks_redis_ghost(keepalive_s: u32) -> (RedisGhost, GhostConnection, Report) {
    let s = RedisGhost::start(keepalive_s);
    let leaks = Leaks::start(&LIMITS);
    let c = s.ping();
    s.vanish();
    thread::sleep((IDLE + MARGIN).saturating_sub(c.pinged.elapsed()));
    let report = leaks.stop();
    sound(&report);
    (s, c, report)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_redis_without_keepalive_keeps_an_idle_ghost() {
    let (s, c, report) = leaks_redis_ghost(0);
    let f = the_finding(&report, &s.pids(), "idle-no-keepalive", s.redis.pid(), Some(c.server_fd));
    let expect = Expect {
        comm: "redis-server",
        state: "ESTABLISHED",
        local: s.redis.addr,
        remote: c.client_addr,
        source: "events",
    };
    check_socket_finding(f, &expect, &report);
    assert_eq!(f.keepalive, Some(false), "{f:?}");
    assert!(f.idle_s.is_some_and(|idle| idle >= IDLE.as_secs_f64()), "{f:?}");
    assert_eq!(report.limits.idle_s, IDLE.as_secs_f64());
    s.client.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_redis_with_keepalive_has_no_ghost() {
    let (s, _, report) = leaks_redis_ghost(60);
    no_findings(&report, &s.pids());
    // Not vacuous: the tracer saw redis-server hold the connection.
    assert_eq!(report.established(s.redis.pid()), 1, "{}", report.show(&s.pids()));
    s.client.finish();
}

// ---------------------------------------------------------------------------------------------
// d. A client that opens a connection per request and closes first: TIME_WAIT churn

/// How long the churning client runs and how it paces itself (a few hundred connections per
/// second: far above the limit, far below exhausting the port range within TIME_WAIT's 60 s).
const CHURN_FOR: Duration = Duration::from_secs(3);
const CHURN_PACE: Duration = Duration::from_millis(3);
const TIME_WAIT_RATE: f64 = 50.0;

struct Churn {
    client: Actor,
    server: Actor,
    server_addr: SocketAddr,
    ns: Netns,
}

/// What the client measured itself.
struct ChurnRun {
    connections: u32,
    /// From its first close to its last.
    elapsed: Duration,
}

impl ChurnRun {
    /// TIME_WAIT entries per second between the first entry and the last.
    fn rate(&self) -> f64 {
        f64::from(self.connections - 1) / self.elapsed.as_secs_f64()
    }
}

impl Churn {
    fn start() -> Self {
        let ns = Netns::new("churn");
        // tcp_tw_reuse defaults to 2: loopback connections reuse a port whose TIME_WAIT is older
        // than a second, which ends that TIME_WAIT early. Toward a remote server (the case this
        // stands for) nothing is reused: every connection keeps its TIME_WAIT for 60 s.
        ns.run(|| fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0")).expect("setting tcp_tw_reuse");
        // Echoes one byte per connection, waits for the client's FIN, then closes: second.
        let server = ns.fork(c"tt-churn-srv", |steps| {
            let Some((listener, port)) = raw::listen_loopback() else {
                return 20;
            };
            if !steps.report(i32::from(port)) {
                return 21;
            }
            loop {
                let Some(fd) = raw::accept(listener) else {
                    return 22;
                };
                let mut byte = [0u8];
                if !raw::read_exact(fd, &mut byte)
                    || !raw::write_all(fd, &byte)
                    || raw::read_one(fd) != 0
                {
                    return 23;
                }
                if !raw::close(fd) {
                    return 24;
                }
            }
        });
        let server_addr = loopback(server.recv("the server's port") as u16);
        let raw_server = RawAddr::from(server_addr);
        let client = ns.fork(c"tt-churn", |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let start = raw::now_us();
            let (mut first, mut last, mut count) = (0, 0, 0);
            while raw::now_us() - start < CHURN_FOR.as_micros() as i64 {
                let Some(fd) = raw::connect(&raw_server) else {
                    return 11;
                };
                let mut byte = [b'x'];
                if !raw::write_all(fd, &byte) || !raw::read_exact(fd, &mut byte) || !raw::close(fd)
                {
                    return 12;
                }
                last = raw::now_us();
                if count == 0 {
                    first = last;
                }
                count += 1;
                raw::sleep(CHURN_PACE);
            }
            if !steps.report(count) || !steps.report((last - first) as i32) || !steps.wait_go() {
                return 13;
            }
            0
        });
        Self { client, server, server_addr, ns }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.server.pid()]
    }

    fn run(&self) -> ChurnRun {
        self.client.go();
        let wait = CHURN_FOR + SETTLE;
        let connections = self.client.recv_within("the connection count", wait) as u32;
        let elapsed_us = self.client.recv("the elapsed time") as u64;
        assert!(connections >= 10, "only {connections} connections in {CHURN_FOR:?}");
        ChurnRun { connections, elapsed: Duration::from_micros(elapsed_us) }
    }

    /// net.ipv4.ip_local_port_range of the namespace, as a number of ports.
    fn port_range(&self) -> f64 {
        let text = self.ns.run(|| fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range"));
        let text = text.expect("reading ip_local_port_range");
        let bounds: Vec<f64> =
            text.split_whitespace().map(|n| n.parse().expect("a port")).collect();
        bounds[1] - bounds[0] + 1.0
    }
}

#[test]
#[ignore = "needs root and network namespaces (cargo xtask test)"]
fn fixture_churning_client_fills_time_wait() {
    let s = Churn::start();
    let run = s.run();
    assert!(
        run.rate() >= 2.0 * TIME_WAIT_RATE,
        "{} conn/s: too slow for the leaks test's limit",
        run.rate()
    );
    let ss = sockets::ss(&s.ns);
    let server = s.server_addr.to_string();
    let client_side = ss.iter().filter(|r| r.state == "TIME-WAIT" && r.peer == server).count();
    let server_side = ss.iter().filter(|r| r.state == "TIME-WAIT" && r.local == server).count();
    assert_eq!(
        (client_side, server_side),
        (run.connections as usize, 0),
        "every connection left a TIME_WAIT on the client's side, none on the server's"
    );
    assert!(sockets::held(s.client.pid()).is_empty(), "the client holds no socket");
    s.client.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_connection_per_request_is_time_wait_churn() {
    let s = Churn::start();
    let rate_arg = TIME_WAIT_RATE.to_string();
    let mut args = LIMITS.to_vec();
    args.extend(["--time-wait-rate", &rate_arg]);
    let leaks = Leaks::start(&args);
    let run = s.run();
    let report = leaks.stop();
    sound(&report);

    let f = the_finding(&report, &s.pids(), "time-wait-churn", s.client.pid(), None);
    let server = s.server_addr.to_string();
    assert!(
        f.comm == "tt-churn"
            && f.state == "TIME_WAIT"
            && f.local.is_none()
            && f.remote.as_deref() == Some(server.as_str()),
        "{f:?}"
    );
    let true_rate = run.rate();
    let rate = f.rate_per_s.unwrap_or_else(|| panic!("no rate: {f:?}"));
    assert!(
        (rate - true_rate).abs() <= 0.2 * true_rate,
        "rate {rate}/s; the client made {} connections in {:?}: {true_rate:.1}/s",
        run.connections,
        run.elapsed
    );
    let true_share = true_rate * 60.0 / s.port_range();
    let share = f.port_share.unwrap_or_else(|| panic!("no port share: {f:?}"));
    assert!(
        (share - true_share).abs() <= 0.2 * true_share,
        "port share {share}, expected {true_share:.3}: {f:?}"
    );
    assert_eq!(report.limits.time_wait_rate, TIME_WAIT_RATE);
    s.client.finish();
}

// ---------------------------------------------------------------------------------------------
// e, f. A client holding connections: idle ESTABLISHED (unclosed), or closed by the peer
// (CLOSE_WAIT) before the tracer starts

struct Holder {
    client: Actor,
    server: Actor,
    server_addr: SocketAddr,
    ns: Netns,
    connections: i32,
}

impl Holder {
    /// A server that accepts `connections` and keeps them (or closes them at once, when
    /// `server_closes`), and a client that opens them and holds them.
    fn start(
        label: &str,
        client_comm: &'static CStr,
        connections: i32,
        server_closes: bool,
    ) -> Self {
        let ns = Netns::new(label);
        let server = ns.fork(c"tt-hold-server", |steps| {
            let Some((listener, port)) = raw::listen_loopback() else {
                return 20;
            };
            if !steps.report(i32::from(port)) || !steps.wait_go() {
                return 21;
            }
            for _ in 0..connections {
                let Some(fd) = raw::accept(listener) else {
                    return 22;
                };
                if server_closes && !raw::close(fd) {
                    return 23;
                }
            }
            if !steps.report(connections) || !steps.wait_go() {
                return 24;
            }
            0
        });
        let server_addr = loopback(server.recv("the server's port") as u16);
        let raw_server = RawAddr::from(server_addr);
        let client = ns.fork(client_comm, |steps| {
            if !steps.wait_go() {
                return 10;
            }
            for _ in 0..connections {
                let Some(fd) = raw::connect(&raw_server) else {
                    return 11;
                };
                if !steps.report(fd) {
                    return 12;
                }
            }
            if !steps.wait_go() {
                return 13;
            }
            0
        });
        Self { client, server, server_addr, ns, connections }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.server.pid()]
    }

    /// The client's descriptors, once the server has accepted every connection.
    fn connect(&self) -> BTreeSet<RawFd> {
        self.server.go();
        self.client.go();
        let fds: BTreeSet<RawFd> =
            (0..self.connections).map(|_| self.client.recv("a descriptor")).collect();
        assert_eq!(self.server.recv("the accept count"), self.connections);
        fds
    }

    /// Waits until each of the client's `fds` is in `state`; their local addresses.
    fn wait_all(&self, fds: &BTreeSet<RawFd>, state: &str) -> Vec<(RawFd, SocketAddr)> {
        fds.iter()
            .map(|&fd| (fd, sockets::wait_state(self.client.pid(), fd, state, SETTLE).local))
            .collect()
    }

    /// Fails unless `ss` lists each of the client's `fds` in `state` (as ss names it), to the
    /// server; what ss listed, and as a table for failure messages.
    fn expect_ss_rows(&self, fds: &BTreeSet<RawFd>, state: &str) -> (Vec<sockets::SsRow>, String) {
        let ss = sockets::ss(&self.ns);
        let table = sockets::show_ss(&ss);
        for &fd in fds {
            let row = ss.iter().find(|r| r.held_by(self.client.pid(), fd));
            let row = row.unwrap_or_else(|| panic!("fd {fd} not in ss:\n{table}"));
            assert_eq!(
                (row.state.as_str(), row.peer.clone()),
                (state, self.server_addr.to_string()),
                "{table}"
            );
        }
        (ss, table)
    }

    /// Exactly one `kind` finding per descriptor in `locals`, all the client's, and no other
    /// finding for the client or the server.
    fn expect_one_per_fd(
        &self,
        report: &Report,
        kind: &str,
        locals: Vec<(RawFd, SocketAddr)>,
        x: (&str, &str, &str),
    ) {
        let (comm, state, source) = x;
        let pids = self.pids();
        let found = report.findings_of(&pids);
        let fds: BTreeSet<RawFd> = locals.iter().map(|&(fd, _)| fd).collect();
        let found_fds: BTreeSet<RawFd> = found.iter().filter_map(|f| f.fd).collect();
        assert!(
            found.len() == fds.len()
                && found.iter().all(|f| f.kind == kind && f.pid == self.client.pid())
                && found_fds == fds,
            "expected {} {kind} findings for pid {} fds {fds:?}\n{}",
            fds.len(),
            self.client.pid(),
            report.show(&pids)
        );
        for (fd, local) in locals {
            let f = found.iter().find(|f| f.fd == Some(fd)).expect("checked above");
            let expect = Expect { comm, state, local, remote: self.server_addr, source };
            check_socket_finding(f, &expect, report);
        }
    }

    fn finish(self) {
        self.client.finish();
        self.server.finish();
    }
}

const HELD: i32 = 5;

#[test]
#[ignore = "needs root and network namespaces (cargo xtask test)"]
fn fixture_held_connections_stay_established() {
    let s = Holder::start("held", c"tt-holder", HELD, false);
    let fds = s.connect();
    s.wait_all(&fds, "ESTABLISHED");
    let (ss, table) = s.expect_ss_rows(&fds, "ESTAB");
    let accepted = ss
        .iter()
        .filter(|r| r.state == "ESTAB" && r.users.iter().any(|u| u.pid == s.server.pid()))
        .count();
    assert_eq!(accepted, HELD as usize, "the server holds its ends:\n{table}");
    s.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_connections_held_idle_to_the_end_are_unclosed() {
    // --idle beyond the scenario's length: idle-no-keepalive (which ranks above unclosed, and
    // would also flag the server's accepted ends) does not apply; unclosed needs --min-age.
    let s = Holder::start("unclosed", c"tt-holder", HELD, false);
    let leaks = Leaks::start(&["--min-age", "1s", "--idle", "30s"]);
    let fds = s.connect();
    let locals = s.wait_all(&fds, "ESTABLISHED");
    thread::sleep(MIN_AGE + MARGIN);
    let report = leaks.stop();
    sound(&report);
    s.expect_one_per_fd(&report, "unclosed", locals, ("tt-holder", "ESTABLISHED", "events"));
    s.finish();
}

const PRE_EXISTING: i32 = 2;

#[test]
#[ignore = "needs root and network namespaces (cargo xtask test)"]
fn fixture_connections_closed_by_the_peer_wait_in_close_wait() {
    let s = Holder::start("cwait", c"tt-cwait", PRE_EXISTING, true);
    let fds = s.connect();
    s.wait_all(&fds, "CLOSE_WAIT");
    let (ss, table) = s.expect_ss_rows(&fds, "CLOSE-WAIT");
    assert!(
        !ss.iter().any(|r| r.state != "LISTEN" && r.users.iter().any(|u| u.pid == s.server.pid())),
        "{table}"
    );
    s.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_close_wait_from_before_the_trace_is_found_in_the_inventory() {
    let s = Holder::start("inventory", c"tt-cwait", PRE_EXISTING, true);
    let fds = s.connect();
    let locals = s.wait_all(&fds, "CLOSE_WAIT");
    let leaks = Leaks::start(&LIMITS);
    thread::sleep(MIN_AGE + MARGIN);
    let report = leaks.stop();
    sound(&report);
    s.expect_one_per_fd(&report, "close-wait", locals, ("tt-cwait", "CLOSE_WAIT", "inventory"));
    s.finish();
}

// ---------------------------------------------------------------------------------------------
// g. A well-behaved pool: three Redis connections, used round-robin, closed at the end

const POOL: i32 = 3;
/// One request every this long, on the next connection: each is used every 300 ms.
const POOL_PACE: Duration = Duration::from_millis(100);

struct Pool {
    client: Actor,
    redis: Redis,
    ns: Netns,
}

impl Pool {
    fn start() -> Self {
        let ns = Netns::new("pool");
        // No keepalive on redis-server's side either: only activity keeps it out of findings.
        let redis = Redis::start(&ns, IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let server = RawAddr::from(redis.addr);
        let client = ns.fork(c"tt-pool", |steps| {
            if !steps.wait_go() {
                return 10;
            }
            let mut fds = [0; POOL as usize];
            for fd in &mut fds {
                let Some(connected) = raw::connect(&server) else {
                    return 11;
                };
                *fd = connected;
                if !steps.report(connected) {
                    return 12;
                }
            }
            let mut requests = 0;
            loop {
                if !redis::ping(fds[requests % fds.len()]) {
                    return 13;
                }
                requests += 1;
                if steps.go_within(POOL_PACE) {
                    break;
                }
            }
            for fd in fds {
                if !raw::close(fd) {
                    return 14;
                }
            }
            if !steps.report(requests as i32) || !steps.wait_go() {
                return 15;
            }
            0
        });
        Self { client, redis, ns }
    }

    fn pids(&self) -> [u32; 2] {
        [self.client.pid(), self.redis.pid()]
    }

    fn open(&self) -> Vec<RawFd> {
        self.client.go();
        (0..POOL).map(|_| self.client.recv("a pool descriptor")).collect()
    }

    /// Stops the requests; the client closes its pool. The number of requests made.
    fn close(&self) -> i32 {
        self.client.go();
        self.client.recv("the request count")
    }
}

#[test]
#[ignore = "needs root, redis-server and network namespaces (cargo xtask test)"]
fn fixture_pool_keeps_every_connection_busy() {
    let s = Pool::start();
    let fds = s.open();
    thread::sleep(Duration::from_millis(1500));
    for &fd in &fds {
        let peek = sockets::peek(s.client.pid(), fd);
        assert!(
            peek.state == "ESTABLISHED"
                && peek.last_data_recv_ms < 1000
                && peek.last_data_sent_ms < 1000,
            "pool fd {fd} idle: {peek:?}"
        );
    }
    let ss = sockets::ss(&s.ns);
    let table = sockets::show_ss(&ss);
    let served = ss
        .iter()
        .filter(|r| r.state == "ESTAB" && r.users.iter().any(|u| u.pid == s.redis.pid()))
        .count();
    assert_eq!(served, POOL as usize, "redis-server holds the pool's other ends:\n{table}");
    let requests = s.close();
    assert!(requests >= 10, "{requests} requests in 1.5 s");
    assert!(sockets::held(s.client.pid()).is_empty(), "the pool is closed");
    s.client.finish();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_pool_in_use_has_no_finding() {
    let s = Pool::start();
    let leaks = Leaks::start(&LIMITS);
    let fds = s.open();
    thread::sleep(IDLE + MARGIN);
    for &fd in &fds {
        sockets::wait_state(s.client.pid(), fd, "ESTABLISHED", SETTLE);
    }
    // Stopped while the pool is in use, then closed.
    let report = leaks.stop();
    let requests = s.close();
    sound(&report);

    let pids = s.pids();
    no_findings(&report, &pids);
    // Not vacuous: the tracer saw both ends of every pooled connection.
    let seen = (report.established(s.client.pid()), report.established(s.redis.pid()));
    assert_eq!(seen, (POOL as u64, POOL as u64), "{}", report.show(&pids));
    let client = report.process(s.client.pid()).expect("the client in the report");
    assert!(
        client.comm == "tt-pool"
            && client.opened == POOL as u64
            && client.open == POOL as u64
            && client.released == 0,
        "{client:?}"
    );
    assert!(requests >= 20, "{requests} requests");
    s.client.finish();
}
