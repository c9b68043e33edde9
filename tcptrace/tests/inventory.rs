//! Root tests of the starting inventory: real loopback sockets in this process, in a forked
//! child's network namespace and in a named namespace under /run/netns, checked against what
//! the kernel says about them through other channels (fstat inodes, SO_COOKIE, the fds).
//!
//! They load no BPF program; the `#[ignore]` text is the project's marker for root tests.
//!
//! Run with `cargo xtask test`, or as root:
//! `cargo test -p tcptrace --test inventory -- --include-ignored`.

use std::{
    ffi::CString,
    fs, io,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::PathBuf,
    sync::{
        RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tcptrace::{
    event::TcpState::{self, CloseWait, Established, FinWait2, Listen},
    inventory::{FdOwner, InventorySocket, Snapshot, snapshot},
};

const LOCALHOST_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const LOCALHOST_V6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);
/// How long a state the kernel reaches asynchronously (a FIN's arrival) may take.
const DEADLINE: Duration = Duration::from_secs(5);
/// include/uapi/asm-generic/socket.h; the libc crate does not export it for Linux.
const SO_COOKIE: libc::c_int = 57;

// ---------------------------------------------------------------------------------------------
// Serialisation

/// A forked child inherits every descriptor of this process, so while it lives, the sockets of
/// tests running in other threads would have it as an extra owner. The forking test takes this
/// lock exclusively; the others share it.
static FORK_LOCK: RwLock<()> = RwLock::new(());

fn no_forks() -> RwLockReadGuard<'static, ()> {
    FORK_LOCK.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn forks() -> RwLockWriteGuard<'static, ()> {
    FORK_LOCK.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Sockets and facts about them from outside the inventory

fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

fn addr_of(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// A connected (client, server) pair through `listener`.
fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(addr_of(listener)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

fn local(stream: &TcpStream) -> SocketAddr {
    stream.local_addr().expect("local address")
}

/// The inode `/proc/<pid>/fd/<fd>` names, read with stat(2) rather than through procfs.
fn inode_of(fd: RawFd) -> u64 {
    fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat of the fd").ino()
}

fn cookie_of(fd: RawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an 8-byte out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, SO_COOKIE, (&raw mut cookie).cast(), &raw mut len)
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    cookie
}

fn set_keepalive(fd: RawFd, on: bool) {
    let value = libc::c_int::from(on);
    // SAFETY: a valid socket and an int option.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_KEEPALIVE: {}", io::Error::last_os_error());
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
    let start = Instant::now();
    loop {
        let snapshot = take();
        if done(&snapshot) || start.elapsed() > DEADLINE {
            return snapshot;
        }
        thread::sleep(Duration::from_millis(20));
    }
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
        assert_socket(listening, Listen, netns, lfd, &owned_by_me(&[lfd]));
        assert_eq!((listening.idle, listening.keepalive), (None, None), "{listening:?}");

        let client_side = find(&snapshot, netns, local(&client), addr_of(&listener));
        assert_socket(client_side, Established, netns, cfd, &owned_by_me(&[cfd, dfd]));
        // SAFETY: no preconditions.
        assert_eq!(client_side.uid, unsafe { libc::geteuid() }, "{client_side:?}");
        assert!(client_side.idle.is_some(), "an ESTABLISHED socket has tcp_info: {client_side:?}");

        let server_side = find(&snapshot, netns, addr_of(&listener), local(&client));
        assert_socket(server_side, Established, netns, sfd, &owned_by_me(&[sfd]));
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
    assert_socket(
        waiting,
        CloseWait,
        netns,
        client.as_raw_fd(),
        &owned_by_me(&[client.as_raw_fd()]),
    );
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

/// Brings up `lo` in the calling thread's network namespace (`ip link set lo up`), with raw
/// syscalls only, so a forked child may call it.
///
/// # Safety
/// None beyond the syscalls'; unsafe so the child's code path reads as such.
unsafe fn loopback_up() -> bool {
    // SAFETY: plain syscalls on a socket this function owns; ifreq is zeroed then named "lo".
    unsafe {
        let control = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if control < 0 {
            return false;
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        let ok = libc::ioctl(control, libc::SIOCGIFFLAGS, &raw mut request) == 0 && {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(control, libc::SIOCSIFFLAGS, &raw const request) == 0
        };
        libc::close(control);
        ok
    }
}

/// A forked child in a network namespace of its own (unshare(CLONE_NEWNET)), holding a
/// listener and both ends of a connection on its loopback until dropped. Dropping kills and
/// reaps it, which also removes the namespace, whether or not the test failed.
struct NetnsChild {
    pid: libc::pid_t,
    listener_fd: RawFd,
    client_fd: RawFd,
    server_fd: RawFd,
    port: u16,
    /// Closing it (EOF) lets the child exit.
    _release: OwnedFd,
}

impl NetnsChild {
    fn spawn() -> Self {
        let (report_read, report_write) = pipe();
        let (release_read, release_write) = pipe();
        let any_port = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: the child only makes syscalls (async-signal-safe) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child: descriptors inherited from the parent, raw syscalls.
            unsafe {
                libc::close(release_write.as_raw_fd());
                libc::close(report_read.as_raw_fd());
                child_main(report_write.as_raw_fd(), release_read.as_raw_fd(), any_port)
            }
        }
        drop((report_write, release_read));
        let mut child = Self {
            pid,
            listener_fd: -1,
            client_fd: -1,
            server_fd: -1,
            port: 0,
            _release: release_write,
        };
        let mut report = [0u8; 16];
        let mut reader = fs::File::from(report_read);
        if let Err(error) = reader.read_exact(&mut report) {
            let mut status = 0;
            // SAFETY: our child.
            unsafe { libc::waitpid(pid, &raw mut status, 0) };
            child.pid = -1;
            panic!(
                "the namespace child failed ({error}): wait status {status:#x} (exit code = failed step)"
            );
        }
        let word = |i: usize| i32::from_ne_bytes(report[i * 4..i * 4 + 4].try_into().unwrap());
        (child.listener_fd, child.client_fd, child.server_fd) = (word(0), word(1), word(2));
        child.port = u16::try_from(word(3)).expect("port");
        child
    }
}

impl Drop for NetnsChild {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: our own child, killed and reaped once.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The forked child: a namespace, loopback up, a listener, a connected pair; reports
/// (listener fd, client fd, server fd, port) and waits for EOF on `release`. Exits with the
/// number of the step that failed.
unsafe fn child_main(report: RawFd, release: RawFd, mut addr: libc::sockaddr_in) -> ! {
    // SAFETY: raw syscalls on descriptors this child owns, buffers that outlive each call.
    unsafe {
        let fail = |step: i32| -> ! { libc::_exit(step) };
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            fail(10);
        }
        if !loopback_up() {
            fail(11);
        }
        let addr_len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let listener = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if listener < 0 || libc::bind(listener, (&raw const addr).cast(), addr_len) != 0 {
            fail(12);
        }
        let mut len = addr_len;
        if libc::listen(listener, 8) != 0
            || libc::getsockname(listener, (&raw mut addr).cast(), &raw mut len) != 0
        {
            fail(13);
        }
        let client = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if client < 0 || libc::connect(client, (&raw const addr).cast(), addr_len) != 0 {
            fail(14);
        }
        let server = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
        if server < 0 {
            fail(15);
        }
        let words = [listener, client, server, i32::from(u16::from_be(addr.sin_port))];
        let mut bytes = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        if libc::write(report, bytes.as_ptr().cast(), bytes.len()) != 16 {
            fail(16);
        }
        let mut byte = 0u8;
        libc::read(release, (&raw mut byte).cast(), 1);
        libc::_exit(0)
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a two-int out array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_socket_in_a_child_network_namespace_is_found_with_its_owner() {
    let _serial = forks();
    // The child is named after the thread that forks it.
    let comm = fs::read_to_string("/proc/thread-self/comm").expect("comm").trim_end().to_owned();
    let child = NetnsChild::spawn();
    let child_netns = netns_of(&format!("/proc/{}/ns/net", child.pid));
    assert_ne!(child_netns, own_netns(), "the child has a namespace of its own");
    let pid = u32::try_from(child.pid).unwrap();
    let owner = |fd| vec![FdOwner { pid, fd, comm: comm.clone() }];
    let port_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), child.port);

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

/// A named network namespace, as `ip netns add NAME` makes it: the namespace file of a thread
/// that unshared, bind-mounted on /run/netns/NAME. Dropping unmounts and removes it, whether
/// or not the test failed.
struct NamedNetns {
    path: PathBuf,
    mounted: bool,
}

impl NamedNetns {
    fn new() -> Self {
        let dir = PathBuf::from("/run/netns");
        fs::create_dir_all(&dir).expect("creating /run/netns");
        let path = dir.join(format!("tt-inv-{}", me()));
        fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path, mounted: false }
    }

    /// Runs `f` in a thread inside a new namespace mounted on this name (lo up), returning
    /// what `f` returns and the namespace's inode. Only that thread ever enters it.
    fn create_and_run<T: Send>(&mut self, f: impl FnOnce() -> T + Send) -> (T, u64) {
        let target = CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
        let source = CString::new("/proc/thread-self/ns/net").unwrap();
        let mounted = AtomicBool::new(false);
        let outcome = thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: unshare changes only this thread's namespace; mount gets valid
                    // NUL-terminated paths.
                    unsafe {
                        assert_eq!(
                            libc::unshare(libc::CLONE_NEWNET),
                            0,
                            "unshare: {}",
                            io::Error::last_os_error()
                        );
                        let rc = libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        );
                        assert_eq!(
                            rc,
                            0,
                            "bind-mounting the namespace: {}",
                            io::Error::last_os_error()
                        );
                        mounted.store(true, Ordering::Relaxed);
                        assert!(loopback_up(), "lo up: {}", io::Error::last_os_error());
                    }
                    (f(), netns_of("/proc/thread-self/ns/net"))
                })
                .join()
        });
        // Recorded before any panic is resumed, so Drop unmounts.
        self.mounted = mounted.load(Ordering::Relaxed);
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if self.mounted {
            let target = CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_socket_in_a_named_namespace_is_found_through_run_netns() {
    let _serial = no_forks();
    let mut named = NamedNetns::new();
    let ((listener, client, server), netns) = named.create_and_run(|| {
        let listener = listen(LOCALHOST_V4);
        let (client, server) = pair(&listener);
        (listener, client, server)
    });
    // No process is in it (only the thread, now gone): /run/netns is the only way in.
    assert_ne!(netns, own_netns());

    let snapshot = take();
    assert!(snapshot.namespaces.contains(&netns), "{:?}", snapshot.namespaces);
    let listening = find(&snapshot, netns, addr_of(&listener), unspecified(LOCALHOST_V4));
    assert_socket(
        listening,
        Listen,
        netns,
        listener.as_raw_fd(),
        &owned_by_me(&[listener.as_raw_fd()]),
    );
    let client_side = find(&snapshot, netns, local(&client), addr_of(&listener));
    assert_socket(
        client_side,
        Established,
        netns,
        client.as_raw_fd(),
        &owned_by_me(&[client.as_raw_fd()]),
    );
    let server_side = find(&snapshot, netns, addr_of(&listener), local(&client));
    assert_socket(
        server_side,
        Established,
        netns,
        server.as_raw_fd(),
        &owned_by_me(&[server.as_raw_fd()]),
    );
    // The same endpoints are not reported in this process's own namespace.
    assert!(
        !snapshot.sockets.iter().any(|s| s.netns != netns && s.inode == client_side.inode),
        "inode reported twice"
    );
}
