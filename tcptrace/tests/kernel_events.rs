//! Root tests: load the real kernel programs with a port filter of their own, drive loopback
//! connections from this process and from forked children, and check the exact events each
//! socket produces: kinds and order, the task, the descriptor, the owner and the endpoints.
//!
//! Run with `cargo xtask test`, or as root:
//! `cargo test -p tcptrace --test kernel_events -- --include-ignored`.
//! `TCPTRACE_TEST_CLOSE_HOOK` (auto, fentry, kprobe, tracepoint) selects the close hook.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod expect;
    pub mod harness;
    pub mod peers;
    pub mod process;
    pub mod raw;
    pub mod sockets;
}

use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener},
    os::fd::{AsRawFd, RawFd},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use support::{
    expect::*,
    harness::{Harness, Loopback, pin_to_one_cpu},
    peers::{ClientChild, Ending, ServerChild},
    process::{forks, no_forks},
    raw::{self, RawAddr},
    sockets::{
        LOCALHOST_V4, LOCALHOST_V6, accept, addr_of, connect, listen, read_eof, set_linger_zero,
        unused_port,
    },
};
use tcptrace::{
    event::{
        Event, EventKind, ReleaseReason,
        ReleaseReason::{Close as ByClose, Exit as ByExit},
        TcpState::{
            self, Close, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv,
            SynSent,
        },
    },
    kernel::{
        close_hook::CloseHook,
        probes::{Changes, StacksMode},
    },
};
use tcptrace_common::{CgroupMatch, Filter};

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn active_open_is_reported_in_the_connecting_thread() {
    let _serial = no_forks();
    let listener = listen(LOCALHOST_V4);
    let mut h = Harness::on_port(addr_of(&listener).port());
    let me = Task::current();

    let client = connect(addr_of(&listener));
    let client_sock = Sock::client_stream("client", &me, &client);
    h.expect_socket(&client_sock, &active_open(&me, client.as_raw_fd()));
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn accept_and_close_are_attributed_to_their_threads() {
    let _serial = no_forks();
    let listener = listen(LOCALHOST_V4);
    let mut h = Harness::on_port(addr_of(&listener).port());
    let me = Task::current();

    let client = connect(addr_of(&listener));
    let (server, acceptor) = thread::scope(|s| {
        let accepting = thread::Builder::new().name("tt-acceptor".into());
        let accepting = accepting.spawn_scoped(s, || (accept(&listener), Task::current())).unwrap();
        accepting.join().unwrap()
    });
    let server_fd = server.as_raw_fd();
    let server_sock = Sock::server_stream("server", &server);
    let closer = thread::scope(|s| {
        let closing = thread::Builder::new().name("tt-closer".into());
        let closing = closing
            .spawn_scoped(s, move || {
                drop(server);
                Task::current()
            })
            .unwrap();
        closing.join().unwrap()
    });
    assert_ne!(acceptor.tid, closer.tid);
    assert_ne!(acceptor.tid, me.tid);

    // The state changes carry the owner: this process (the closing thread's), with the accepted
    // descriptor.
    h.expect_socket(
        &server_sock,
        &concat(&[passive_open(&acceptor, server_fd), closes_first(&closer, server_fd, ByClose)]),
    );
    drop(client);
    h.expect_nothing_lost();
}

/// Both sides in this thread; `client_first` picks who closes first.
fn open_and_close(local: SocketAddr, client_first: bool) {
    let Loopback {
        mut h, me, client, server, client_fd, server_fd, client_sock, server_sock, ..
    } = Loopback::open(local);

    let (client_end, server_end) = if client_first {
        drop(client);
        read_eof(&server);
        drop(server);
        (closes_first(&me, client_fd, ByClose), closes_second(&me, server_fd, ByClose))
    } else {
        drop(server);
        read_eof(&client);
        drop(client);
        (closes_second(&me, client_fd, ByClose), closes_first(&me, server_fd, ByClose))
    };
    h.expect_socket(&client_sock, &concat(&[active_open(&me, client_fd), client_end]));
    h.expect_socket(&server_sock, &concat(&[passive_open(&me, server_fd), server_end]));
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn client_closes_first() {
    let _serial = no_forks();
    open_and_close(LOCALHOST_V4, true);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn server_closes_first() {
    let _serial = no_forks();
    open_and_close(LOCALHOST_V4, false);
}

/// `leaks`, `top` and `run` aggregate: the kernel sends only the state changes they use (opens,
/// a connect's outcome, CLOSE_WAIT, CLOSE; not what follows the owner's close, nor a listener
/// child's handshake, before accept()), with their owner, and without the endpoints of a socket
/// user space knows.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn lifecycle_changes_leave_out_what_aggregation_does_not_use() {
    let _serial = no_forks();
    let Loopback {
        mut h, me, client, server, client_fd, server_fd, client_sock, server_sock, ..
    } = Loopback::open_with(LOCALHOST_V4, |port| {
        let filter = Filter { port, ..Filter::none() };
        Harness::load_options(filter, StacksMode::Off, Changes::Lifecycle)
    });
    let (client_owner, server_owner) = (me.owns(client_fd), me.owns(server_fd));

    drop(client);
    read_eof(&server);
    drop(server);
    // A socket's endpoints travel once: its open, and the local port a connect() picks.
    let known = |x: Expect| Expect { ends: Ends::Omitted, ..x };
    let release = |x: Expect| Expect { ends: Ends::ExactOrOmitted, ..x };
    h.expect_socket(
        &client_sock,
        &[
            connect_event(&me, client_fd),
            change(SynSent, Established, client_owner),
            release(release_event(&me, ByClose, Established, client_fd)),
            known(change(FinWait2, Close, client_owner)),
        ],
    );
    h.expect_socket(
        &server_sock,
        &[
            accept_event(&me, server_fd),
            known(change(Established, CloseWait, server_owner)),
            release(release_event(&me, ByClose, CloseWait, server_fd)),
            known(change(LastAck, Close, server_owner)),
        ],
    );
    h.expect_nothing_lost();
}

/// The bench tests one at a time: each counts the connections of this process, host-wide, so
/// the other's loopback connection would be counted too.
#[cfg(feature = "bench")]
fn one_bench_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BENCH_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BENCH_TESTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "bench")]
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn the_bench_minimum_sends_one_record_at_each_open_and_close() {
    use tcptrace::kernel::probes::Bench;

    let _alone = one_bench_test_at_a_time();
    let _serial = no_forks();
    let Loopback { mut h, me, client, server, .. } =
        Loopback::open_with(LOCALHOST_V4, |_| Harness::load_bench(Bench::Minimum));
    drop(client);
    read_eof(&server);
    drop(server);
    // Opens name their owner; the host may open other connections meanwhile.
    let opens = |h: &Harness| -> Vec<(EventKind, u64)> {
        h.events
            .iter()
            .filter(|e| e.owner_pid == Some(me.pid))
            .map(|e| (e.kind, e.skaddr))
            .collect()
    };
    let closed = |h: &Harness, sk: u64| {
        h.events
            .iter()
            .any(|e| e.skaddr == sk && matches!(e.kind, EventKind::State { new: Close, .. }))
    };
    h.wait_until("both opens and both CLOSEs", |h| {
        let opens = opens(h);
        opens.len() == 2 && opens.iter().all(|&(_, sk)| closed(h, sk))
    });
    h.drain();
    let opens = opens(&h);
    let kinds: Vec<EventKind> = opens.iter().map(|&(kind, _)| kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Connect, EventKind::Accept { state: Some(Established) }],
        "{}",
        h.dump()
    );
    for (kind, sk) in opens {
        let records: Vec<&Event> = h.events.iter().filter(|e| e.skaddr == sk).collect();
        assert_eq!(
            records.len(),
            2,
            "{kind:?}: one record at the open, one at CLOSE\n{}",
            h.dump()
        );
        assert!(records.iter().all(|e| e.endpoints.is_none()), "the minimum reads no socket");
    }
    h.expect_nothing_lost();
}

#[cfg(feature = "bench")]
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn the_bench_in_kernel_counts_each_open_and_close_and_sends_no_record() {
    use tcptrace::kernel::probes::Bench;
    use tcptrace_common::BenchCounts;

    let _alone = one_bench_test_at_a_time();
    let _serial = no_forks();
    let Loopback { mut h, me, client, server, .. } =
        Loopback::open_with(LOCALHOST_V4, |_| Harness::load_bench(Bench::InKernel));
    let both = BenchCounts { opens: 2, closes: 2 };
    drop(client);
    read_eof(&server);
    drop(server);
    h.wait_until("both opens and both CLOSEs counted", |h| h.bench_counts(me.pid) == both);
    h.drain();
    let mine: Vec<&Event> =
        h.events.iter().filter(|e| e.pid == me.pid || e.owner_pid == Some(me.pid)).collect();
    assert!(mine.is_empty(), "records sent: {mine:?}");
    assert_eq!(h.bench_counts(me.pid), both);
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn ipv6_open_and_close() {
    let _serial = no_forks();
    open_and_close(LOCALHOST_V6, true);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn linger_zero_close_resets_the_peer() {
    let _serial = no_forks();
    let Loopback {
        mut h, me, client, server, client_fd, server_fd, client_sock, server_sock, ..
    } = Loopback::open(LOCALHOST_V4);
    set_linger_zero(&client);
    drop(client);

    // The closing side aborts: release, then straight to CLOSE; it sent the RST, it did not
    // receive one.
    h.expect_socket(
        &client_sock,
        &concat(&[
            active_open(&me, client_fd),
            vec![
                release_event(&me, ByClose, Established, client_fd),
                change(Established, Close, me.owns(client_fd)),
            ],
        ]),
    );
    // The peer received it.
    let mut server_expected =
        concat(&[passive_open(&me, server_fd), vec![reset_close(Established, me.owns(server_fd))]]);
    h.expect_socket(&server_sock, &server_expected);

    // Closing the reset socket is still its release.
    drop(server);
    server_expected.push(release_after_close(&me, ByClose, server_fd));
    h.expect_socket(&server_sock, &server_expected);
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn shutdown_is_not_a_release() {
    let _serial = no_forks();
    let Loopback {
        mut h, me, client, server, client_fd, server_fd, client_sock, server_sock, ..
    } = Loopback::open(LOCALHOST_V4);
    let client_owner = me.owns(client_fd);

    // shutdown() sends the FIN: FIN_WAIT1, and FIN_WAIT2 once acknowledged; nothing released.
    client.shutdown(Shutdown::Write).expect("shutdown");
    let half_closed = concat(&[
        active_open(&me, client_fd),
        vec![change(Established, FinWait1, client_owner), change(FinWait1, FinWait2, client_owner)],
    ]);
    h.expect_socket(&client_sock, &half_closed);

    // close() is the one release; the orphaned FIN_WAIT2 socket enters TIME_WAIT.
    drop(client);
    let mut closed = half_closed;
    closed.extend([
        release_event(&me, ByClose, FinWait2, client_fd),
        change(FinWait2, Close, client_owner),
    ]);
    h.expect_socket(&client_sock, &closed);

    read_eof(&server);
    drop(server);
    h.expect_socket(
        &server_sock,
        &concat(&[passive_open(&me, server_fd), closes_second(&me, server_fd, ByClose)]),
    );
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn refused_connect_is_reset_then_released() {
    let _serial = no_forks();
    let (mut h, me, fd, sock, mut expected) = refused_connect();

    assert!(raw::close(fd));
    expected.push(release_after_close(&me, ByClose, fd));
    h.expect_socket(&sock, &expected);
    h.expect_nothing_lost();
}

/// A connect() refused on an unused port, as the probes saw it: the harness, this task, the
/// descriptor, its socket and the events so far (the connect and the reset).
fn refused_connect() -> (Harness, Task, RawFd, Sock, Vec<Expect>) {
    let port = unused_port();
    let mut h = Harness::on_port(port);
    let me = Task::current();
    let server = SocketAddr::new(LOCALHOST_V4.ip(), port);
    let (fd, error) = raw::failed_connect(&RawAddr::from(server));
    assert_eq!(error.raw_os_error(), Some(libc::ECONNREFUSED), "connect: {error}");
    // The local port is gone once connect() fails: any port matches.
    let sock = Sock::client("refused", &me, fd, LOCALHOST_V4, server);
    let expected = vec![connect_event(&me, fd), reset_close(SynSent, me.owns(fd))];
    h.expect_socket(&sock, &expected);
    (h, me, fd, sock, expected)
}

/// close_range() releases a descriptor far into its range: in tracepoint mode the kernel
/// side scans the range with bpf_loop (it stopped after 64 descriptors when unrolled).
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn close_range_releases_a_descriptor_far_into_its_range() {
    const HIGH: RawFd = 600;
    let _serial = no_forks();
    let (mut h, me, fd, sock, mut expected) = refused_connect();

    // Only HIGH holds the socket once `fd` is closed, 200 descriptors into the range.
    // SAFETY: plain descriptor calls on descriptors this test owns.
    assert_eq!(unsafe { libc::dup2(fd, HIGH) }, HIGH, "dup2: {}", io::Error::last_os_error());
    assert!(raw::close(fd));
    let first = (HIGH - 200) as libc::c_uint;
    // SAFETY: as above; nothing else in this process holds descriptors that high.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    assert_eq!(closed, 0, "close_range: {}", io::Error::last_os_error());
    let (reason, fd) = match h.close_hook() {
        CloseHook::Tracepoint => (ReleaseReason::CloseRange, HIGH),
        // tcp_close() does not know the syscall: a release by close, with the opener's fd.
        CloseHook::Fentry | CloseHook::Kprobe => (ByClose, fd),
    };
    expected.push(release_after_close(&me, reason, fd));
    h.expect_socket(&sock, &expected);
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn exit_releases_the_sockets_a_process_holds() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let client = ClientChild::fork(c"tt-exit", addr_of(&listener), Ending::Exit);
    let mut h = Harness::on_port(addr_of(&listener).port());
    let me = Task::current();
    let child = Task::of(client.child());

    let (client_sock, client_fd) = Sock::connect_child("client (child)", &client);
    let server = accept(&listener);
    let server_fd = server.as_raw_fd();
    let server_sock = Sock::server_stream("server", &server);
    client.finish();
    read_eof(&server);
    drop(server);

    h.expect_socket(
        &client_sock,
        &concat(&[active_open(&child, client_fd), closes_first(&child, client_fd, ByExit)]),
    );
    let exit = h.expect_exit(&child);
    assert!(
        exit < h.release_index(&client_sock),
        "the process exits before its descriptors are closed:\n{}",
        h.dump()
    );
    h.expect_socket(
        &server_sock,
        &concat(&[passive_open(&me, server_fd), closes_second(&me, server_fd, ByClose)]),
    );
    h.expect_nothing_lost();
}

/// A server and a client in two children; each gives its socket up with `ending`.
fn across_processes(ending: Ending) {
    let listener = listen(LOCALHOST_V4);
    let server = ServerChild::fork(c"tt-server", &listener, ending);
    let client = ClientChild::fork(c"tt-client", addr_of(&listener), ending);
    let mut h = Harness::on_port(addr_of(&listener).port());
    let (server_task, client_task) = (Task::of(server.child()), Task::of(client.child()));

    let (client_sock, client_fd) = Sock::connect_child("client (tt-client)", &client);
    let server_fd = server.accept();
    let server_sock = Sock::server("server (tt-server)", addr_of(&listener), client_sock.local);
    client.finish();
    server.wait();

    h.expect_socket(
        &client_sock,
        &concat(&[
            active_open(&client_task, client_fd),
            closes_first(&client_task, client_fd, ending.reason()),
        ]),
    );
    h.expect_socket(
        &server_sock,
        &concat(&[
            passive_open(&server_task, server_fd),
            closes_second(&server_task, server_fd, ending.reason()),
        ]),
    );
    h.expect_exit(&client_task);
    h.expect_exit(&server_task);
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn client_and_server_in_other_processes_close() {
    let _serial = forks();
    across_processes(Ending::Close);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn client_and_server_in_other_processes_exit() {
    let _serial = forks();
    across_processes(Ending::Exit);
}

/// The events of a child client's socket `fd`: connected, closed first.
fn child_client_sequence(child: &Task, fd: RawFd) -> Vec<Expect> {
    concat(&[active_open(child, fd), closes_first(child, fd, ByClose)])
}

/// Lets `client` connect to `listener`, close and exit; this thread accepts and closes.
fn run_child_client(
    client: ClientChild,
    listener: &TcpListener,
    label: &'static str,
) -> (Sock, RawFd) {
    let (sock, fd) = Sock::connect_child(label, &client);
    let server = accept(listener);
    client.finish();
    read_eof(&server);
    (sock, fd)
}

/// A connection of this thread on `listener`, client closing first.
fn own_connection(listener: &TcpListener) -> u16 {
    let client = connect(addr_of(listener));
    let server = accept(listener);
    let port = client.local_addr().unwrap().port();
    drop(client);
    read_eof(&server);
    port
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn pid_filter_keeps_only_that_process() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let client = ClientChild::fork(c"tt-pid", addr_of(&listener), Ending::Close);
    let child = Task::of(client.child());
    let mut pids = [0; tcptrace_common::MAX_FILTER_PIDS];
    pids[0] = child.pid;
    let filter = Filter { pids, n_pids: 1, port: addr_of(&listener).port(), ..Filter::none() };
    let mut h = Harness::load(filter);

    // This process: same port, not the filtered pid.
    let own_port = own_connection(&listener);
    let (sock, fd) = run_child_client(client, &listener, "client (child)");

    h.expect_socket(&sock, &child_client_sequence(&child, fd));
    h.expect_exit(&child);
    h.expect_only(&[&sock], |e| e.kind == EventKind::Exit && e.pid == child.pid);
    h.expect_no_port(own_port, "this process's connection");
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn comm_filter_keeps_only_that_name() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let other = ClientChild::fork(c"tt-comm-other", addr_of(&listener), Ending::Close);
    let matching = ClientChild::fork(c"tt-comm-match", addr_of(&listener), Ending::Close);
    let child = Task::of(matching.child());
    let mut comm = [0u8; 16];
    comm[..child.comm.len()].copy_from_slice(child.comm.as_bytes());
    let filter = Filter { has_comm: 1, comm, port: addr_of(&listener).port(), ..Filter::none() };
    let mut h = Harness::load(filter);

    let (other_sock, _) = run_child_client(other, &listener, "client (other name)");
    let own_port = own_connection(&listener);
    let (sock, fd) = run_child_client(matching, &listener, "client (matching name)");

    h.expect_socket(&sock, &child_client_sequence(&child, fd));
    h.expect_exit(&child);
    h.expect_only(&[&sock], |e| e.kind == EventKind::Exit && e.pid == child.pid);
    h.expect_no_port(other_sock.local.port(), "the other name's connection");
    h.expect_no_port(own_port, "this process's connection");
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn cgroup_filter_keeps_only_that_cgroup_and_opens_carry_its_id() {
    let _serial = forks();
    let cgroup = TestCgroup::new();
    let listener = listen(LOCALHOST_V4);
    let client = ClientChild::fork(c"tt-cgroup", addr_of(&listener), Ending::Close);
    let child = Task::of(client.child());
    cgroup.add(child.pid);
    let mut filter = Filter { port: addr_of(&listener).port(), ..Filter::none() };
    filter.cgroups[0] = CgroupMatch { id: cgroup.id(), level: 1, _pad0: 0 };
    filter.n_cgroups = 1;
    let mut h = Harness::load(filter);

    // This process, in another cgroup: same port, filtered out.
    let own_port = own_connection(&listener);
    let (sock, fd) = run_child_client(client, &listener, "client (in the cgroup)");

    h.expect_socket(&sock, &child_client_sequence(&child, fd));
    h.expect_exit(&child);
    h.expect_only(&[&sock], |e| e.kind == EventKind::Exit && e.pid == child.pid);
    h.expect_no_port(own_port, "this process's connection");
    let opens: Vec<Option<u64>> = h
        .socket_events(&sock)
        .iter()
        .filter(|e| e.kind == EventKind::Connect)
        .map(|e| e.cgroup)
        .collect();
    assert_eq!(opens, [Some(cgroup.id())], "the connect carries its cgroup's id");
    h.expect_nothing_lost();
}

/// A cgroup v2 directory of the test's own, directly under the hierarchy's root (mounted for the
/// test where nothing mounts it, as in the VM's initramfs); removed when dropped, once its
/// processes have exited.
struct TestCgroup {
    dir: std::path::PathBuf,
    /// The mount point when the test mounted the hierarchy itself.
    mounted: Option<std::path::PathBuf>,
}

impl TestCgroup {
    fn new() -> Self {
        let (root, mounted) = match tcptrace::container::Hierarchy::find() {
            Some(h) => (h.root().to_path_buf(), None),
            None => {
                let at = std::env::temp_dir().join(format!("tt-cgroup2-{}", std::process::id()));
                std::fs::create_dir_all(&at).expect("mount point");
                let target = std::ffi::CString::new(at.to_string_lossy().as_bytes()).unwrap();
                // SAFETY: NUL-terminated strings that outlive the call.
                let ret = unsafe {
                    libc::mount(
                        c"cgroup2".as_ptr(),
                        target.as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                assert_eq!(ret, 0, "mount cgroup2: {}", io::Error::last_os_error());
                (at.clone(), Some(at))
            }
        };
        let dir = root.join(format!("tcptrace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a cgroup of the test's");
        Self { dir, mounted }
    }

    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.dir).expect("the cgroup").ino()
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("moving a process");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(at) = &self.mounted {
            let target = std::ffi::CString::new(at.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount(target.as_ptr()) };
            let _ = std::fs::remove_dir(at);
        }
    }
}

/// Connects to `listener` from this thread and expects both opens and nothing else but exits.
fn expect_only_one_connection(h: &mut Harness, me: &Task, listener: &TcpListener) {
    let client = connect(addr_of(listener));
    let server = accept(listener);
    let client_sock = Sock::client_stream("client", me, &client);
    let server_sock = Sock::server_stream("server", &server);
    h.expect_socket(&client_sock, &active_open(me, client.as_raw_fd()));
    h.expect_socket(&server_sock, &passive_open(me, server.as_raw_fd()));
    h.expect_only(&[&client_sock, &server_sock], |e| e.kind == EventKind::Exit);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn family_filter_keeps_only_ipv6() {
    let _serial = no_forks();
    // An IPv4 and an IPv6 listener on one port, so only the family tells them apart.
    let (v4, v6) = (0..20)
        .find_map(|_| {
            let v4 = listen(LOCALHOST_V4);
            let v6 =
                TcpListener::bind(SocketAddr::new(LOCALHOST_V6.ip(), addr_of(&v4).port())).ok()?;
            Some((v4, v6))
        })
        .expect("a port free on 127.0.0.1 and ::1");
    let filter = Filter { port: addr_of(&v4).port(), family: AF_INET6, ..Filter::none() };
    let mut h = Harness::load(filter);
    let me = Task::current();

    let v4_port = own_connection(&v4);
    expect_only_one_connection(&mut h, &me, &v6);
    h.expect_no_port(v4_port, "the IPv4 connection");
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn port_filter_keeps_only_that_port() {
    let _serial = no_forks();
    let (traced, other) = (listen(LOCALHOST_V4), listen(LOCALHOST_V4));
    let mut h = Harness::on_port(addr_of(&traced).port());
    let me = Task::current();

    let other_port = own_connection(&other);
    expect_only_one_connection(&mut h, &me, &traced);
    h.expect_no_port(other_port, "the connection on the other port");
    h.expect_no_port(addr_of(&other).port(), "the other listener");
    h.expect_nothing_lost();
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn exit_releases_a_descriptor_whose_connection_was_reset() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let client = ClientChild::fork(c"tt-dead-exit", addr_of(&listener), Ending::Exit);
    let mut h = Harness::on_port(addr_of(&listener).port());
    let child = Task::of(client.child());

    let (client_sock, client_fd) = Sock::connect_child("client (child)", &client);
    let server = accept(&listener);
    set_linger_zero(&server);
    drop(server);
    let mut expected = concat(&[
        active_open(&child, client_fd),
        vec![reset_close(Established, child.owns(client_fd))],
    ]);
    h.expect_socket(&client_sock, &expected);

    // The socket is already in CLOSE: its exit makes no state change, and the release must
    // still be seen (tracepoint mode scans the descriptor table at exit).
    client.finish();
    expected.push(release_after_close(&child, ByExit, client_fd));
    h.expect_socket(&client_sock, &expected);
    h.expect_nothing_lost();
}

/// Many short connections at once: every state change of every socket reaches user space. A
/// classic tracepoint program is skipped, uncounted on 6.1, while another BPF program runs on the
/// CPU, which loopback softirqs hit; the raw tracepoints tcptrace uses are only skipped when they
/// re-enter themselves, and the second state-change program makes up for that (tested below):
/// nothing may be lost, not even a loss the kernel counts.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_burst_of_connections_loses_no_state_change() {
    // About 13 events of 112 bytes each per connection: well within the harness's 1 MiB ring.
    const CONNECTIONS: usize = 500;
    let _serial = no_forks();
    let listener = listen(LOCALHOST_V4);
    let mut h = Harness::on_port(addr_of(&listener).port());

    // The connector may run at most AHEAD connections before the acceptor: a full accept queue
    // drops handshakes and FINs, and their retransmissions (1 s, 2 s, ...) would outlast the wait
    // below on a busy machine (CI saw it). 64 stays under std's listen backlog of 128.
    const AHEAD: usize = 64;
    let (connected, accepted) = mpsc::sync_channel::<()>(AHEAD);
    thread::scope(|s| {
        let listener = &listener;
        let acceptor = s.spawn(move || {
            for _ in 0..CONNECTIONS {
                accepted.recv().expect("the connector ended early");
                let server = accept(listener);
                read_eof(&server);
            }
        });
        for _ in 0..CONNECTIONS {
            drop(connect(addr_of(listener)));
            connected.send(()).expect("the acceptor ended early");
        }
        acceptor.join().unwrap();
    });
    // Each connection ends twice: the client's TIME_WAIT entry and the server's last ACK. A
    // counted loss ends the wait early, so that the checks below name it.
    let accounted = |h: &Harness| {
        let counters = h.counters();
        socket_chains(h).closed as u64 + counters.missed_runs + counters.lost_events
    };
    h.wait_until("a CLOSE, or a counted loss, for both ends of every connection", |h| {
        accounted(h) >= 2 * CONNECTIONS as u64
    });
    h.drain();
    h.expect_nothing_lost();
    let chains = socket_chains(&h);
    let shown = &chains.gaps[..chains.gaps.len().min(20)];
    assert!(chains.gaps.is_empty(), "{} changes missing: {shown:?}", chains.gaps.len());
    // Each connection has one connect() and one accept(); the kernel can make a listener child
    // more than accept() takes (two CPUs handling one handshake's retransmitted ACK: the loser
    // of the race is closed at once, seen in the VM), so sockets are counted as opened and
    // closed alike, not as exactly two per connection.
    let count = |kind: fn(&EventKind) -> bool| h.events.iter().filter(|e| kind(&e.kind)).count();
    let connects = count(|k| matches!(k, EventKind::Connect));
    let accepts = count(|k| matches!(k, EventKind::Accept { .. }));
    assert_eq!((connects, accepts), (CONNECTIONS, CONNECTIONS), "{}", h.dump());
    assert!(
        chains.opened >= 2 * CONNECTIONS && chains.closed == chains.opened,
        "both ends of every connection opened and closed: {} opened, {} closed\n{}",
        chains.opened,
        chains.closed,
        h.dump()
    );
}

/// The state changes of the sockets a test opened, followed socket by socket in ring order.
struct Chains {
    /// Sockets whose open (connect, or `LISTEN -> SYN_RECV`) was seen.
    opened: usize,
    /// Of those, the ones whose chain reached CLOSE.
    closed: usize,
    /// Each change that does not start where the socket's previous one ended, and each socket
    /// left open.
    gaps: Vec<String>,
}

/// Only sockets opened while the probes ran count: a socket of an earlier test can still be
/// closing on the same port (the VM tier, slower, saw such a CLOSE). A socket that reached
/// CLOSE is gone: a new one can take its address.
fn socket_chains(h: &Harness) -> Chains {
    let mut chains = Chains { opened: 0, closed: 0, gaps: Vec::new() };
    let mut last: std::collections::HashMap<u64, TcpState> = std::collections::HashMap::new();
    for e in &h.events {
        let (old, new) = match e.kind {
            EventKind::Connect => (Close, SynSent),
            EventKind::State { old, new, .. } => (old, new),
            _ => continue,
        };
        let open = matches!(e.kind, EventKind::Connect) || (old, new) == (Listen, SynRecv);
        match last.get(&e.skaddr) {
            Some(&previous) if previous != Close && previous != old => {
                chains.gaps.push(format!("{:#x}: {previous} then {old} -> {new}", e.skaddr));
            }
            Some(&previous) if previous == Close && !open => {
                chains.gaps.push(format!("{:#x}: a change after CLOSE: {old} -> {new}", e.skaddr));
            }
            None if !open => continue,
            _ => {}
        }
        if open && last.get(&e.skaddr).is_none_or(|&previous| previous == Close) {
            chains.opened += 1;
        }
        if new == Close {
            chains.closed += 1;
        }
        last.insert(e.skaddr, new);
    }
    chains.gaps.extend(
        last.iter()
            .filter(|&(_, &state)| state != Close)
            .map(|(skaddr, state)| format!("{skaddr:#x}: last seen in {state}")),
    );
    chains
}

/// A state change that interrupts the state-change program on its CPU is handled, or else counted
/// as a missed run, never silently lost: the
/// kernel skips a program that is already running on the CPU, and a second program on the same
/// tracepoint handles exactly those changes (the kernel crate's `nested` module). Such changes
/// are made to happen here: everything runs on one CPU, and each server closes first, so the
/// client delays its ACK of the FIN (a socket that receives a FIN acks lazily); the delayed-ACK
/// timer runs in a softirq at the end of a timer interrupt and moves the server from FIN_WAIT1
/// to FIN_WAIT2, often while this thread's next connect() or close() is being traced, with its
/// stacks. Every socket's changes must then form an unbroken chain.
///
/// The test runs alone (`forks()`, the exclusive lock), not beside the others: with another
/// thread competing for its CPU, about one run in ten on this 2-vCPU machine (two busy loops
/// beside it, `docs/bench/log.md`, 2026-12-04) lost the FIN_WAIT1 -> FIN_WAIT2 -> CLOSE pair of
/// a few server sockets while no counter moved: upstream of tcptrace's programs (a second,
/// independent set of them missed the same sockets, and every record sent was read), as
/// `docs/architecture.md` ("Never silently lost") records; this test is about nesting, which
/// it needs quiet to provoke.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_state_change_that_interrupts_another_is_handled_or_counted() {
    // Rounds run in batches until some change was nested (most 2000-round batches see a few
    // hundred on the host, one in ten none; a loaded machine sees fewer, so the bound is time,
    // not batches), each round about 13 records: the harness's 1 MiB ring is drained long
    // before it fills.
    const BATCH: usize = 2000;
    const PROVOKE_FOR: Duration = Duration::from_secs(40);
    // Clients left in CLOSE_WAIT at once: their servers wait in FIN_WAIT1 for a delayed ACK.
    const IN_FLIGHT: usize = 64;
    let _alone = forks();
    let _cpu = pin_to_one_cpu();
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    let mut h = Harness::load_with(Filter { port, ..Filter::none() }, StacksMode::Both);

    let mut clients = std::collections::VecDeque::new();
    let mut rounds = 0;
    let started = Instant::now();
    while started.elapsed() < PROVOKE_FOR {
        for _ in 0..BATCH {
            clients.push_back(connect(addr_of(&listener)));
            drop(accept(&listener));
            if clients.len() > IN_FLIGHT {
                clients.pop_front();
            }
            rounds += 1;
            if rounds % 100 == 0 {
                h.drain();
            }
        }
        if h.counters().nested_changes > 0 {
            break;
        }
    }
    drop(clients);
    // Both ends of every connection reach CLOSE (the server's by TIME_WAIT, or by a reset when
    // the kernel sheds orphaned sockets, as the VM's small memory makes it do); or a run was
    // skipped, and the chain check below names what it cost.
    let finished = |h: &Harness| {
        socket_chains(h).closed as u64 + h.counters().missed_runs >= 2 * rounds as u64
    };
    h.wait_until("both ends of every connection closed, or a counted skip", finished);

    // Every socket has closed by now, so every chain ends in CLOSE, except where a run was
    // skipped in the window the `nested` module documents as closable by no program (a few
    // instructions at the end of the second program's run): such a change is counted in the
    // missed runs, never silent, and rare (one in several thousand nested changes when seen).
    let chains = socket_chains(&h);
    let counters = h.counters();
    let shown = &chains.gaps[..chains.gaps.len().min(20)];
    assert!(
        chains.gaps.len() as u64 <= counters.missed_runs,
        "{} changes missing, {} counted ({counters:?}): {shown:?}",
        chains.gaps.len(),
        counters.missed_runs
    );
    assert!(
        counters.missed_runs * 100 <= counters.nested_changes.max(1),
        "more than 1% of the interrupting changes were skipped: {counters:?}"
    );
    assert_eq!(counters.lost_events, 0, "{counters:?}");
    // Every record the programs sent was read: nothing lost between the ring and the reader.
    h.drain();
    assert_eq!(h.counters().sent_events, h.events.len() as u64, "records sent and read");
    assert!(
        chains.opened <= 2 * rounds
            && chains.opened as u64 + counters.missed_runs >= 2 * rounds as u64,
        "both ends of every connection opened, or a counted skip: {} of {}",
        chains.opened,
        2 * rounds
    );
    eprintln!("nested state changes handled: {}", counters.nested_changes);
    assert!(counters.nested_changes > 0, "no change interrupted another: the test proved nothing");
}

/// With stacks on, connect and accept carry the ids of the stacks captured in the opening
/// thread: the kernel's (connect only) shows the TCP connect path, the user one this test's
/// own frames.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn connect_and_accept_carry_their_stacks() {
    let _serial = no_forks();
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    let h = Harness::load_with(Filter { port, ..Filter::none() }, StacksMode::Both);
    opens_carry_their_stacks(h, &listener);
}

/// The same where the kernel verifies the programs' loops unrolled, as before 5.17 (the
/// interpreter walks are in the programs that report opens): they still load and report.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn connect_and_accept_carry_their_stacks_with_loops_unrolled() {
    let _serial = no_forks();
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    let h = Harness::load_unrolled(Filter { port, ..Filter::none() });
    opens_carry_their_stacks(h, &listener);
}

fn opens_carry_their_stacks(mut h: Harness, listener: &TcpListener) {
    let mut stacks = h.stacks();
    let me = Task::current();

    let _client = connect(addr_of(listener));
    let _server = accept(listener);
    h.wait_until("a connect and an accept", |h| {
        let opens = h.events.iter().filter(|e| is_open(e));
        opens.count() == 2
    });
    for event in h.events.iter().filter(|e| is_open(e)) {
        // At accept()'s return the kernel stack says nothing: only connect asks for one.
        let connect = event.kind == EventKind::Connect;
        assert!(event.stacks.user.is_some(), "{event:?}");
        assert_eq!(event.stacks.kernel.is_some(), connect, "{event:?}");
        let stack = stacks.resolve(me.pid, event.stacks, None).expect("a readable stack");
        let symbols: Vec<&str> = stack.frames.iter().filter_map(|f| f.symbol.as_deref()).collect();
        let kernel = stack.frames.iter().filter(|f| f.addr >= 1 << 63).count();
        assert!(kernel < stack.frames.len(), "user frames last: {symbols:?}");
        if connect {
            assert!(kernel > 0, "kernel frames first: {symbols:?}");
            assert!(symbols.contains(&"tcp_v4_connect"), "{symbols:?}");
        }
        // The program that ran, and the tracing code that called it, are left out.
        assert!(!symbols.iter().any(|s| s.starts_with("bpf_prog_")), "{symbols:?}");
    }
    let counters = h.counters();
    assert_eq!(counters.stack_failures, 0);
}

fn is_open(event: &Event) -> bool {
    matches!(event.kind, EventKind::Connect | EventKind::Accept { .. })
}

/// `tcptrace run`'s filter: the processes followed, and the children they fork from then on,
/// each until it exits; nothing else.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_followed_process_and_what_it_forks_are_traced_and_nothing_else() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    // Forked before this process is followed: never followed.
    let outsider = ClientChild::fork(c"tt-outsider", addr_of(&listener), Ending::Exit);
    let outsider_pid = outsider.child().pid();
    let mut h = Harness::load(Filter { port, follow: 1, ..Filter::none() });
    assert!(!h.followed_alive());
    h.follow(std::process::id());
    let insider = ClientChild::fork(c"tt-insider", addr_of(&listener), Ending::Exit);
    let child = Task::of(insider.child());

    let (insider_sock, fd) = Sock::connect_child("client (followed child)", &insider);
    let _insider_server = accept(&listener);
    h.expect_socket(&insider_sock, &active_open(&child, fd));
    let _ = outsider.connect();
    let _outsider_server = accept(&listener);
    insider.finish();
    outsider.finish();
    h.wait_until("the followed child's exit", |h| {
        h.events.iter().any(|e| e.kind == EventKind::Exit && e.pid == child.pid)
    });
    // Softirq state changes run in whatever task they interrupt: the owner is what counts.
    h.expect_none("events of the process that is not followed", |e| {
        e.owner_pid == Some(outsider_pid) || (e.kind == EventKind::Connect && e.pid == outsider_pid)
    });
    // The child left at its exit; this process is still followed.
    assert!(h.followed_alive());
}
