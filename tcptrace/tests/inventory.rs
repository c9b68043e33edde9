//! Root tests of the starting inventory: real loopback sockets in this process, in a forked
//! child's network namespace and in a named namespace under /run/netns, checked against what
//! the kernel says about them through other channels (fstat inodes, SO_COOKIE, the fds).
//!
//! They load no BPF program; the `#[ignore]` text is the project's marker for root tests.
//!
//! Run with `cargo xtask test`, or as root:
//! `cargo test -p tcptrace --test inventory -- --include-ignored`.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod netns;
    pub mod process;
    pub mod raw;
    pub mod sockets;
}

use std::{
    fs, io,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::MetadataExt,
    },
    thread,
    time::{Duration, Instant},
};

use support::{
    netns::Netns,
    process::{Actor, DEADLINE, forks, no_forks, poll_until},
    raw,
    sockets::{LOCALHOST_V4, LOCALHOST_V6, addr_of, listen, local_addr as local, loopback, pair},
};
use tcptrace::{
    event::TcpState::{self, CloseWait, Established, FinWait2, Listen},
    inventory::{FdOwner, InventorySocket, Snapshot, snapshot},
};

/// include/uapi/asm-generic/socket.h; the libc crate does not export it for Linux.
const SO_COOKIE: libc::c_int = 57;

// ---------------------------------------------------------------------------------------------
// Facts about sockets from outside the inventory

/// The inode `/proc/<pid>/fd/<fd>` names, read with stat(2) rather than through procfs.
fn inode_of(fd: RawFd) -> u64 {
    fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat of the fd").ino()
}

fn cookie_of(fd: RawFd) -> u64 {
    // SAFETY: SO_COOKIE is a u64.
    let cookie = unsafe { raw::get_option(fd, libc::SOL_SOCKET, SO_COOKIE) };
    cookie.unwrap_or_else(|| panic!("SO_COOKIE: {}", io::Error::last_os_error()))
}

fn set_keepalive(fd: RawFd, on: bool) {
    let set = raw::set_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, libc::c_int::from(on));
    assert!(set, "SO_KEEPALIVE: {}", io::Error::last_os_error());
}

fn netns_of(path: &str) -> u64 {
    fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}")).ino()
}

fn own_netns() -> u64 {
    netns_of("/proc/self/ns/net")
}

fn me() -> u32 {
    std::process::id()
}

/// The process's name, as /proc/<pid>/stat gives it (the thread-group leader's).
fn my_comm() -> String {
    fs::read_to_string("/proc/self/comm").expect("comm").trim_end().to_owned()
}

fn owned_by_me(fds: &[RawFd]) -> Vec<FdOwner> {
    let mut owners: Vec<_> =
        fds.iter().map(|&fd| FdOwner { pid: me(), fd, comm: my_comm() }).collect();
    owners.sort();
    owners
}

// ---------------------------------------------------------------------------------------------
// Snapshots

fn take() -> Snapshot {
    snapshot().expect("inventory snapshot")
}

fn describe(snapshot: &Snapshot, netns: u64) -> String {
    let lines: Vec<String> =
        snapshot.sockets.iter().filter(|s| s.netns == netns).map(|s| format!("  {s:?}")).collect();
    format!(
        "{} sockets in netns {netns}:\n{}\nwarnings: {:?}",
        lines.len(),
        lines.join("\n"),
        snapshot.warnings
    )
}

/// The one socket of `netns` with these endpoints; panics listing what the snapshot holds.
fn find(
    snapshot: &Snapshot,
    netns: u64,
    local: SocketAddr,
    remote: SocketAddr,
) -> &InventorySocket {
    let found: Vec<_> = snapshot
        .sockets
        .iter()
        .filter(|s| s.netns == netns && s.local == local && s.remote == remote)
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one socket {local} -> {remote}, found {}\n{}",
            found.len(),
            describe(snapshot, netns)
        ),
    }
}

/// Snapshots until `done` holds or the deadline passes; returns the last one either way, so
/// the caller's assertions say what was wrong.
fn wait_for(done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    poll_until(DEADLINE, || Some(take()).filter(|s| done(s))).unwrap_or_else(take)
}

fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

#[track_caller]
fn assert_socket(
    socket: &InventorySocket,
    state: TcpState,
    netns: u64,
    fd: RawFd,
    owners: &[FdOwner],
) {
    assert_eq!(socket.state, state, "{socket:?}");
    assert_eq!(socket.netns, netns, "{socket:?}");
    assert_eq!(socket.inode, inode_of(fd), "inode of fd {fd}: {socket:?}");
    assert_eq!(socket.cookie, cookie_of(fd), "SO_COOKIE of fd {fd}: {socket:?}");
    assert_eq!(socket.owners, owners, "{socket:?}");
}

/// `assert_socket` for a socket this process holds as `fd` alone.
#[track_caller]
fn assert_mine(socket: &InventorySocket, state: TcpState, netns: u64, fd: RawFd) {
    assert_socket(socket, state, netns, fd, &owned_by_me(&[fd]));
}

// ---------------------------------------------------------------------------------------------
// Tests in this process's namespace

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn loopback_sockets_appear_with_states_addresses_and_owners() {
    let _serial = no_forks();
    let netns = own_netns();
    for bind in [LOCALHOST_V4, LOCALHOST_V6] {
        let listener = listen(bind);
        let (client, server) = pair(&listener);
        // A second descriptor for the same socket: both are owners.
        let client_dup = client.try_clone().expect("dup");
        let (lfd, cfd, sfd, dfd) =
            (listener.as_raw_fd(), client.as_raw_fd(), server.as_raw_fd(), client_dup.as_raw_fd());

        let snapshot = take();
        assert_eq!(snapshot.namespaces.first(), Some(&netns), "own netns first");
        assert!(snapshot.taken_at <= snapshot.finished_at);

        let listening = find(&snapshot, netns, addr_of(&listener), unspecified(bind));
        assert_mine(listening, Listen, netns, lfd);
        assert_eq!((listening.idle, listening.keepalive), (None, None), "{listening:?}");

        let client_side = find(&snapshot, netns, local(&client), addr_of(&listener));
        assert_socket(client_side, Established, netns, cfd, &owned_by_me(&[cfd, dfd]));
        // SAFETY: no preconditions.
        assert_eq!(client_side.uid, unsafe { libc::geteuid() }, "{client_side:?}");
        assert!(client_side.idle.is_some(), "an ESTABLISHED socket has tcp_info: {client_side:?}");

        let server_side = find(&snapshot, netns, addr_of(&listener), local(&client));
        assert_mine(server_side, Established, netns, sfd);
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn keepalive_follows_so_keepalive() {
    let _serial = no_forks();
    let netns = own_netns();
    let plain = listen(LOCALHOST_V4);
    let (with_keepalive, accepted_plain) = pair(&plain);
    set_keepalive(with_keepalive.as_raw_fd(), true);
    let (without_keepalive, _accepted) = pair(&plain);
    let (turned_off, _accepted2) = pair(&plain);
    set_keepalive(turned_off.as_raw_fd(), true);
    set_keepalive(turned_off.as_raw_fd(), false);
    // Set on the listener before the handshake: the accepted socket inherits it
    // (tcp_create_openreq_child arms the timer).
    let inheriting = listen(LOCALHOST_V4);
    set_keepalive(inheriting.as_raw_fd(), true);
    let (inheriting_client, accepted_inheriting) = pair(&inheriting);

    let expected = [
        (local(&with_keepalive), addr_of(&plain), Some(true)),
        (addr_of(&plain), local(&with_keepalive), Some(false)),
        (local(&without_keepalive), addr_of(&plain), Some(false)),
        (local(&turned_off), addr_of(&plain), Some(false)),
        (addr_of(&inheriting), local(&inheriting_client), Some(true)),
        (addr_of(&inheriting), unspecified(LOCALHOST_V4), None),
    ];
    // Idle loopback connections have no retransmit timer to hide the keepalive timer; wait out
    // a transient one (the kernel reports only one timer) rather than fail on it.
    let snapshot =
        wait_for(|s| expected.iter().all(|&(l, r, k)| find(s, netns, l, r).keepalive == k));
    for (local, remote, keepalive) in expected {
        let socket = find(&snapshot, netns, local, remote);
        assert_eq!(socket.keepalive, keepalive, "{local} -> {remote}: {socket:?}");
    }
    assert_eq!(
        find(&snapshot, netns, addr_of(&plain), local(&with_keepalive)).inode,
        inode_of(accepted_plain.as_raw_fd())
    );
    assert_eq!(
        find(&snapshot, netns, addr_of(&inheriting), local(&inheriting_client)).inode,
        inode_of(accepted_inheriting.as_raw_fd())
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn idle_time_grows_without_traffic() {
    let _serial = no_forks();
    let netns = own_netns();
    let listener = listen(LOCALHOST_V4);
    let (mut client, mut server) = pair(&listener);
    let mut byte = [0u8; 1];
    client.write_all(b"x").expect("write");
    server.read_exact(&mut byte).expect("read");
    server.write_all(b"y").expect("write");
    client.read_exact(&mut byte).expect("read");
    let (client_key, server_key) =
        ((local(&client), addr_of(&listener)), (addr_of(&listener), local(&client)));

    let fresh = take();
    for (local, remote) in [client_key, server_key] {
        let socket = find(&fresh, netns, local, remote);
        let idle = socket.idle.unwrap_or_else(|| panic!("no idle time: {socket:?}"));
        assert!(idle < Duration::from_secs(1), "data just moved, idle {idle:?}: {socket:?}");
    }
    thread::sleep(Duration::from_millis(1500));
    let later = take();
    for (local, remote) in [client_key, server_key] {
        let socket = find(&later, netns, local, remote);
        let idle = socket.idle.unwrap_or_else(|| panic!("no idle time: {socket:?}"));
        assert!(idle >= Duration::from_secs(1), "1.5 s without traffic, idle {idle:?}: {socket:?}");
        assert!(
            idle < Duration::from_secs(30),
            "idle {idle:?} is not this connection's: {socket:?}"
        );
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_socket_whose_peer_closed_is_in_close_wait() {
    let _serial = no_forks();
    let netns = own_netns();
    let listener = listen(LOCALHOST_V4);
    let (client, server) = pair(&listener);
    let (client_key, server_key) =
        ((local(&client), addr_of(&listener)), (addr_of(&listener), local(&client)));
    drop(server);

    let snapshot = wait_for(|s| {
        find(s, netns, client_key.0, client_key.1).state == CloseWait
            && find(s, netns, server_key.0, server_key.1).state == FinWait2
    });
    let waiting = find(&snapshot, netns, client_key.0, client_key.1);
    assert_mine(waiting, CloseWait, netns, client.as_raw_fd());
    assert_eq!(waiting.keepalive, Some(false), "{waiting:?}");
    assert!(waiting.idle.is_some(), "{waiting:?}");
    // The closed side: no process holds it any more.
    let closed = find(&snapshot, netns, server_key.0, server_key.1);
    assert_eq!(closed.state, FinWait2, "{closed:?}");
    assert_eq!(closed.inode, 0, "{closed:?}");
    assert!(closed.owners.is_empty(), "{closed:?}");
    assert_eq!(closed.keepalive, None, "{closed:?}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_dump_spanning_many_datagrams_is_complete() {
    let _serial = no_forks();
    const PAIRS: usize = 1000;
    raise_fd_limit(4 * PAIRS as u64);
    let netns = own_netns();
    let listener = listen(LOCALHOST_V4);
    let pairs: Vec<_> = (0..PAIRS).map(|_| pair(&listener)).collect();

    let start = Instant::now();
    let snapshot = take();
    let took = start.elapsed();
    eprintln!("snapshot of {} sockets in {took:?}", snapshot.sockets.len());
    for (client, server) in &pairs {
        let client_side = find(&snapshot, netns, local(client), addr_of(&listener));
        assert_eq!(client_side.owners, owned_by_me(&[client.as_raw_fd()]), "{client_side:?}");
        let server_side = find(&snapshot, netns, addr_of(&listener), local(client));
        assert_eq!(server_side.owners, owned_by_me(&[server.as_raw_fd()]), "{server_side:?}");
    }
}

fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) }, 0);
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted.max(limit.rlim_cur);
        limit.rlim_max = limit.rlim_max.max(wanted);
        // SAFETY: a valid limit; root may raise the hard limit.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
        assert_eq!(rc, 0, "RLIMIT_NOFILE to {wanted}: {}", io::Error::last_os_error());
    }
}

// ---------------------------------------------------------------------------------------------
// Other namespaces

/// A forked child in a network namespace of its own (unshare(CLONE_NEWNET)), holding a
/// listener and both ends of a connection on its loopback until dropped. Dropping kills and
/// reaps it, which also removes the namespace, whether or not the test failed.
struct NetnsChild {
    actor: Actor,
    listener_fd: RawFd,
    client_fd: RawFd,
    server_fd: RawFd,
    port: u16,
}

impl NetnsChild {
    /// The child: a namespace, loopback up, a listener, a connected pair; it reports (listener
    /// fd, client fd, server fd, port) and holds them. Exits with the number of the step that
    /// failed.
    fn spawn() -> Self {
        let actor = Actor::fork(c"tt-inv-netns", |steps| {
            // SAFETY: unshare changes only this (child) process's namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return 10;
            }
            if !raw::loopback_up() {
                return 11;
            }
            let Some((listener, port)) = raw::listen_loopback() else {
                return 12;
            };
            let Some(client) = raw::connect(&raw::RawAddr::from(loopback(port))) else {
                return 14;
            };
            let Some(server) = raw::accept(listener) else {
                return 15;
            };
            if ![listener, client, server, i32::from(port)].into_iter().all(|w| steps.report(w)) {
                return 16;
            }
            steps.wait_go();
            0
        });
        let listener_fd = actor.recv("the listener's descriptor");
        let client_fd = actor.recv("the client's descriptor");
        let server_fd = actor.recv("the server's descriptor");
        let port = u16::try_from(actor.recv("the port")).expect("port");
        Self { actor, listener_fd, client_fd, server_fd, port }
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_socket_in_a_child_network_namespace_is_found_with_its_owner() {
    let _serial = forks();
    let child = NetnsChild::spawn();
    let (pid, comm) = (child.actor.pid(), child.actor.comm().to_owned());
    let child_netns = netns_of(&format!("/proc/{pid}/ns/net"));
    assert_ne!(child_netns, own_netns(), "the child has a namespace of its own");
    let owner = |fd| vec![FdOwner { pid, fd, comm: comm.clone() }];
    let port_addr = loopback(child.port);

    let snapshot = take();
    assert!(snapshot.namespaces.contains(&child_netns), "{:?}", snapshot.namespaces);
    let listening = find(&snapshot, child_netns, port_addr, unspecified(port_addr));
    assert_eq!(listening.state, Listen, "{listening:?}");
    assert_eq!(listening.owners, owner(child.listener_fd), "{listening:?}");
    let in_child: Vec<_> = snapshot.sockets.iter().filter(|s| s.netns == child_netns).collect();
    let client_side: Vec<_> = in_child.iter().filter(|s| s.remote == port_addr).collect();
    assert!(
        matches!(client_side.as_slice(), [one] if one.state == Established && one.owners == owner(child.client_fd)),
        "client side:\n{}",
        describe(&snapshot, child_netns)
    );
    let server_side = find(&snapshot, child_netns, port_addr, client_side[0].local);
    assert_eq!(server_side.state, Established, "{server_side:?}");
    assert_eq!(server_side.owners, owner(child.server_fd), "{server_side:?}");
    assert!(
        in_child.iter().all(|s| s.owners.iter().all(|o| o.pid == pid)),
        "{}",
        describe(&snapshot, child_netns)
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_socket_in_a_named_namespace_is_found_through_run_netns() {
    let _serial = no_forks();
    // `ip netns add`: the namespace file of a thread that unshared, bind-mounted on
    // /run/netns/NAME; removed on drop, whether or not the test failed.
    let named = Netns::new("inv");
    let ((listener, client, server), netns) = named.run(|| {
        let listener = listen(LOCALHOST_V4);
        let (client, server) = pair(&listener);
        ((listener, client, server), netns_of("/proc/thread-self/ns/net"))
    });
    // No process is in it (only the thread, now gone): /run/netns is the only way in.
    assert_ne!(netns, own_netns());

    let snapshot = take();
    assert!(snapshot.namespaces.contains(&netns), "{:?}", snapshot.namespaces);
    let listening = find(&snapshot, netns, addr_of(&listener), unspecified(LOCALHOST_V4));
    assert_mine(listening, Listen, netns, listener.as_raw_fd());
    let client_side = find(&snapshot, netns, local(&client), addr_of(&listener));
    assert_mine(client_side, Established, netns, client.as_raw_fd());
    let server_side = find(&snapshot, netns, addr_of(&listener), local(&client));
    assert_mine(server_side, Established, netns, server.as_raw_fd());
    // The same endpoints are not reported in this process's own namespace.
    assert!(
        !snapshot.sockets.iter().any(|s| s.netns != netns && s.inode == client_side.inode),
        "inode reported twice"
    );
}
