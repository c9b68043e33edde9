//! End to end: the `tcptrace` binary as a user runs it.

use std::{
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const TCPTRACE: &str = env!("CARGO_BIN_EXE_tcptrace");

fn tcptrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(TCPTRACE);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn run_to_end(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run tcptrace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_usage_errors_with_status_2() {
    for args in [
        &["trace", "--close-hook", "uprobe"][..],
        &["trace", "-4", "-6"],
        &["trace", "--port", "x"],
        &["leaks", "--min-age", "soon"],
        &["leaks", "--time-wait-rate", "0"],
        &["leaks", "-p", "999999999"],
        &["leaks", "--stacks", "all"],
        &["top", "--sort", "size"],
        &["top", "--interval", "0s"],
    ] {
        let (code, _, stderr) = run_to_end(&mut tcptrace(args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_missing_pid_is_a_one_line_usage_error() {
    let (code, stdout, stderr) = run_to_end(&mut tcptrace(&["trace", "-p", "999999999"]));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim(), "tcptrace: error: no process with pid 999999999");
    assert!(stdout.is_empty());
}

#[test]
fn help_shows_examples() {
    let (code, stdout, _) = run_to_end(&mut tcptrace(&["trace", "--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("Examples:") && stdout.contains("--close-hook"), "{stdout}");
}

#[test]
#[ignore = "needs root to drop privileges (cargo xtask test)"]
fn without_privileges_it_names_what_is_missing() {
    // The checkout may sit in a directory the unprivileged user cannot enter (mktemp -d is
    // 0700): run a copy from a world-executable place.
    let copy = std::env::temp_dir().join(format!("tcptrace-nopriv-{}", std::process::id()));
    std::fs::copy(TCPTRACE, &copy).expect("copy tcptrace");
    let mut cmd = Command::new(&copy);
    cmd.args(["trace", "--duration", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setgid/setuid are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, _, stderr) = run_to_end(&mut cmd);
    let _ = std::fs::remove_file(&copy);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"), "{stderr}");
}

/// Runs `body` in a forked child named `comm`; the child exits with `body`'s status.
fn fork_named(comm: &'static [u8], body: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only makes plain syscalls and leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: NUL-terminated name; prctl and _exit have no preconditions.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
                libc::_exit(body());
            }
        }
        pid => pid,
    }
}

fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WEXITSTATUS(status)
}

/// A pipe on which each child reports its pid and the fd it used.
fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: valid out-array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn report(fd: i32, value: i32) {
    let bytes = value.to_ne_bytes();
    // SAFETY: valid buffer.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), 4) };
}

fn read_report(fd: i32) -> i32 {
    let mut bytes = [0u8; 4];
    // SAFETY: valid buffer.
    let n = unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), 4) };
    assert_eq!(n, 4, "child did not report");
    i32::from_ne_bytes(bytes)
}

fn start_trace(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = tcptrace(args).spawn().expect("spawn tcptrace");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("tcptrace said nothing on stderr");
    assert!(first.starts_with("tcptrace: tracing"), "tcptrace did not start: {first}");
    (child, rx)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn trace_json_attributes_both_ends_to_their_processes() {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    // The VM tier runs this binary once per close hook (cargo xtask vm-test).
    let hook = std::env::var("TCPTRACE_TEST_CLOSE_HOOK").unwrap_or_else(|_| "auto".to_owned());
    let port_arg = port.to_string();
    let (mut trace, _stderr) = start_trace(&[
        "trace",
        "--json",
        "--port",
        &port_arg,
        "--duration",
        "4s",
        "--close-hook",
        &hook,
    ]);

    let (server_rd, server_wr) = pipe();
    let server = fork_named(b"tt-server\0", || {
        use std::os::fd::AsRawFd;
        let Ok((conn, _)) = listener.accept() else { return 1 };
        report(server_wr, conn.as_raw_fd());
        let mut buf = [0u8; 1];
        let _ = (&conn).read(&mut buf); // until the client closes
        drop(conn);
        0
    });
    let (client_rd, client_wr) = pipe();
    let client = fork_named(b"tt-client\0", move || {
        use std::os::fd::AsRawFd;
        let Ok(conn) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { return 1 };
        report(client_wr, conn.as_raw_fd());
        drop(conn);
        0
    });
    let (server_fd, client_fd) = (read_report(server_rd), read_report(client_rd));
    assert_eq!((wait(client), wait(server)), (0, 0), "children failed");

    let mut stdout = String::new();
    trace.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(trace.wait().unwrap().success());
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let find = |event: &str, pid: i32| {
        records
            .iter()
            .find(|r| r["event"] == event && r["pid"] == pid)
            .unwrap_or_else(|| panic!("no {event} by pid {pid} in:\n{stdout}"))
    };
    let connect = find("connect", client);
    assert_eq!(
        (connect["comm"].as_str(), connect["fd"].as_i64()),
        (Some("tt-client"), Some(client_fd.into()))
    );
    assert_eq!(connect["rport"], port);
    let accept = find("accept", server);
    assert_eq!(
        (accept["comm"].as_str(), accept["fd"].as_i64()),
        (Some("tt-server"), Some(server_fd.into()))
    );
    assert_eq!(accept["lport"], port);
    for (pid, comm, fd) in [(client, "tt-client", client_fd), (server, "tt-server", server_fd)] {
        let release = find("release", pid);
        assert_eq!(
            (release["comm"].as_str(), release["fd"].as_i64()),
            (Some(comm), Some(fd.into()))
        );
        assert_eq!(release["reason"], "close");
    }
    // Every record says which close hook produced it; each socket ends with a close.
    assert!(records.iter().all(|r| r["close_hook"].is_string()));
    if hook != "auto" {
        assert!(records.iter().all(|r| r["close_hook"] == hook.as_str()), "{stdout}");
    }
    let closes: Vec<_> = records.iter().filter(|r| r["event"] == "close").collect();
    assert!(closes.len() >= 2, "{stdout}");
    assert!(
        closes.iter().any(|r| r["pid"] == client && r["lifetime_ms"].as_f64().is_some()),
        "{stdout}"
    );
    assert!(records.iter().any(|r| r["event"] == "time-wait" && r["pid"] == client), "{stdout}");
}

/// A forked client that connects to `port`, reports its descriptor, then holds the socket
/// until the write end of the `done` pipe is closed.
fn holding_client(
    comm: &'static [u8],
    port: u16,
    (done, done_wr): (i32, i32),
) -> (libc::pid_t, i32) {
    let (rd, wr) = pipe();
    let pid = fork_named(comm, move || {
        // SAFETY: the child's copy of the write end, which would keep `done` from ending.
        unsafe { libc::close(done_wr) };
        use std::os::fd::AsRawFd;
        let Ok(conn) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { return 1 };
        report(wr, conn.as_raw_fd());
        let mut byte = [0u8; 1];
        // SAFETY: valid buffer; returns at EOF, when the test closes its end.
        unsafe { libc::read(done, byte.as_mut_ptr().cast(), 1) };
        0
    });
    (pid, read_report(rd))
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_json_names_each_leaking_socket_and_nothing_else() {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let hook = std::env::var("TCPTRACE_TEST_CLOSE_HOOK").unwrap_or_else(|_| "auto".to_owned());
    let port_arg = port.to_string();
    let (leaks, stderr) = start_trace(&[
        "leaks",
        "--json",
        "--port",
        &port_arg,
        "--min-age",
        "1s",
        "--duration",
        "4s",
        "--close-hook",
        &hook,
    ]);
    let (done_rd, done_wr) = pipe();

    // The server closes: the client sits in CLOSE_WAIT, never closing.
    let (close_wait, close_wait_fd) = holding_client(b"tt-closewait\0", port, (done_rd, done_wr));
    drop(listener.accept().expect("accept").0);
    // The server resets: the client's descriptor outlives its connection.
    let (dead, dead_fd) = holding_client(b"tt-deadfd\0", port, (done_rd, done_wr));
    let (reset, _) = listener.accept().expect("accept");
    {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and option value.
        let ret = unsafe {
            libc::setsockopt(
                reset.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "SO_LINGER");
    }
    drop(reset);
    // Opened and held, unused: unclosed. The server side held too is not a finding.
    let (holder, holder_fd) = holding_client(b"tt-holder\0", port, (done_rd, done_wr));
    let (_held, _) = listener.accept().expect("accept");

    let output = leaks.wait_with_output().expect("leaks report");
    // SAFETY: our own pipe; closing the write end releases the children.
    unsafe { libc::close(done_wr) };
    for pid in [close_wait, dead, holder] {
        assert_eq!(wait(pid), 0, "child {pid} failed");
    }
    // tcptrace has exited, so its stderr (notes, errors) is complete: it goes with any failure
    // below.
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        stderr.iter().collect::<Vec<_>>().join("\n")
    );
    assert!(output.status.success(), "{printed}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    let mut found: Vec<(String, i64, i64)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["pid"].as_i64().unwrap(),
                f["fd"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![
        ("close-wait".to_owned(), i64::from(close_wait), i64::from(close_wait_fd)),
        ("dead-fd".to_owned(), i64::from(dead), i64::from(dead_fd)),
        ("unclosed".to_owned(), i64::from(holder), i64::from(holder_fd)),
    ];
    expected.sort();
    assert_eq!(found, expected, "{printed}");
    if hook != "auto" {
        assert_eq!(report["close_hook"], hook.as_str());
    }
    assert_eq!(report["events_lost"], 0, "{printed}");
    let me = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == i64::from(std::process::id()))
        .expect("this process in the report");
    assert_eq!((me["opened"].as_i64(), me["findings"].as_i64()), (Some(3), Some(0)), "{printed}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn top_prints_plain_tables_when_stdout_is_not_a_terminal() {
    // A free port, listened on only once top runs: its listen() is seen as an event, with or
    // without the inventory (the VM tier has no sock_diag).
    let port = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let port_arg = port.to_string();
    let (top, _stderr) =
        start_trace(&["top", "--port", &port_arg, "--interval", "500ms", "--duration", "2s"]);
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).expect("bind");
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let _server = listener.accept().expect("accept");
    let output = top.wait_with_output().expect("top output");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tables = stdout.matches("PID COMM").count();
    assert!(tables >= 2, "one table per interval:\n{stdout}");
    // The last table has this process with its listener and both ends of the connection.
    let last = stdout.rsplit("PID COMM").next().unwrap();
    let me = std::process::id().to_string();
    let row = last
        .lines()
        .find(|l| l.split_whitespace().next() == Some(me.as_str()))
        .unwrap_or_else(|| panic!("no row for pid {me}:\n{stdout}"));
    let open: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    let estab: u64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!((open, estab), (3, 2), "{row}");
}
