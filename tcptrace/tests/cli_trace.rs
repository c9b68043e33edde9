//! End to end: the `tcptrace` binary as a user runs it.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod peers;
    pub mod process;
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{
    ffi::CStr,
    net::TcpListener,
    os::{fd::RawFd, unix::process::CommandExt},
    process::{Command, Stdio},
};

use support::{
    peers::{ClientChild, Ending, ServerChild},
    process::{forks, no_forks, requested_close_hook_name},
    sockets::{
        LOCALHOST_V4, accept, addr_of, connect, listen, loopback, set_linger_zero, unused_port,
    },
    tracer::{TCPTRACE, Tracer, run_to_end, tcptrace},
};

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
fn completions_cover_every_command_and_flag() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = run_to_end(&mut tcptrace(&["completions", shell]));
        assert_eq!(code, 0, "{shell}: {stderr}");
        // fish names a long flag `-l NAME`.
        let flag =
            |name: &str| if shell == "fish" { format!("-l {name}") } else { format!("--{name}") };
        for word in ["leaks", "trace", "top", "compare", "doctor"]
            .map(String::from)
            .into_iter()
            .chain([flag("container"), flag("min-age")])
        {
            assert!(stdout.contains(&word), "{shell} completion lacks {word}");
        }
    }
    let (code, _, _) = run_to_end(&mut tcptrace(&["completions", "tcsh"]));
    assert_eq!(code, 2, "an unknown shell is a usage error");
}

#[test]
fn man_pages_for_the_tool_and_each_command() {
    let dir = std::env::temp_dir().join(format!("tcptrace-man-{}", std::process::id()));
    let (code, _, stderr) = run_to_end(&mut tcptrace(&["man", &dir.to_string_lossy()]));
    assert_eq!(code, 0, "{stderr}");
    for page in ["tcptrace", "tcptrace-trace", "tcptrace-leaks", "tcptrace-top", "tcptrace-run"] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.8"))).expect(page);
        assert!(text.contains(".TH") && text.contains(".SH SYNOPSIS"), "{page}: {text}");
    }
    let leaks = std::fs::read_to_string(dir.join("tcptrace-leaks.8")).unwrap();
    assert!(leaks.contains("min\\-age"), "the flags are documented: {leaks}");
    assert!(!dir.join("tcptrace-man.8").exists(), "the hidden command has no page");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn version_names_the_build_and_the_kernels_close_hooks() {
    let (code, stdout, _) = run_to_end(&mut tcptrace(&["--version"]));
    assert_eq!(code, 0);
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("tcptrace ") && first.contains("(commit ") && first.contains(", aya "),
        "{stdout}"
    );
    assert!(
        lines.next().unwrap_or_default().starts_with("close hooks here: tracepoint "),
        "{stdout}"
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn doctor_loads_the_programs_and_says_tracing_works() {
    let (code, stdout, stderr) = run_to_end(&mut tcptrace(&["doctor"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("yes tracing works here"), "{stdout}");
    assert!(stdout.contains("yes privileges"), "{stdout}");
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

/// Starts `tcptrace COMMAND --json --port PORT --duration 4s --close-hook HOOK`, the hook the
/// VM tier asks for (it runs this binary once per close hook: cargo xtask vm-test); and HOOK.
fn start_json(command: &[&str], port: u16) -> (Tracer, String) {
    let hook = requested_close_hook_name();
    let port = port.to_string();
    let mut args = command.to_vec();
    args.extend(["--json", "--port", &port, "--duration", "4s", "--close-hook", &hook]);
    (Tracer::start(&args), hook)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn trace_json_attributes_both_ends_to_their_processes() {
    let _serial = forks();
    let listener = listen(LOCALHOST_V4);
    let port = addr_of(&listener).port();
    let (trace, hook) = start_json(&["trace"], port);

    // The server reads until the client closes, then closes too.
    let server_child = ServerChild::fork(c"tt-server", &listener, Ending::Close);
    let client_child = ClientChild::fork(c"tt-client", addr_of(&listener), Ending::Close);
    let (client, server) = (client_child.child().pid, server_child.child().pid);
    let (client_fd, _) = client_child.connect();
    let server_fd = server_child.accept();
    client_child.finish();
    server_child.wait();

    let out = trace.wait();
    let stdout = out.stdout;
    assert!(out.status.success(), "{}", out.stderr);
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

/// A forked client that connects to `listener` and holds its socket until `finish`, which makes
/// it exit: its pid and descriptor.
fn holding_client(
    comm: &'static CStr,
    listener: &TcpListener,
) -> (ClientChild, libc::pid_t, RawFd) {
    let client = ClientChild::fork(comm, addr_of(listener), Ending::Exit);
    let pid = client.child().pid;
    let (fd, _) = client.connect();
    (client, pid, fd)
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_json_names_each_leaking_socket_and_nothing_else() {
    let _serial = forks();
    // A run whose report counts lost events says its findings may be wrong, and is run again:
    // under the VM tier's emulation a state change is now and then skipped by the kernel
    // (counted as a missed run, see `kernel_events`' nesting test). The findings of a run
    // that lost nothing must be exact; a third lossy run fails.
    for attempt in 1..=3 {
        if leaks_scenario(attempt == 3) {
            return;
        }
        eprintln!("attempt {attempt}: events were lost (counted), so the run is made again");
    }
}

/// One run of `leaks_json_names_each_leaking_socket_and_nothing_else`'s scenario: false when
/// the report counts lost events and `last` is false; otherwise its assertions hold.
fn leaks_scenario(last: bool) -> bool {
    let listener = listen(LOCALHOST_V4);
    let (leaks, hook) = start_json(&["leaks", "--min-age", "1s"], addr_of(&listener).port());

    // The server closes: the client sits in CLOSE_WAIT, never closing.
    let (close_wait_child, close_wait, close_wait_fd) = holding_client(c"tt-closewait", &listener);
    drop(accept(&listener));
    // The server resets: the client's descriptor outlives its connection.
    let (dead_child, dead, dead_fd) = holding_client(c"tt-deadfd", &listener);
    let reset = accept(&listener);
    set_linger_zero(&reset);
    drop(reset);
    // Opened and held, unused: unclosed. The server side held too is not a finding.
    let (holder_child, holder, holder_fd) = holding_client(c"tt-holder", &listener);
    let _held = accept(&listener);

    let output = leaks.wait();
    for child in [close_wait_child, dead_child, holder_child] {
        child.finish();
    }
    // tcptrace has exited, so its stderr (notes, errors) is complete: it goes with any failure
    // below.
    let printed = format!("{}\n{}", output.stdout, output.stderr);
    assert!(output.status.success(), "{printed}");
    let report: serde_json::Value =
        serde_json::from_str(&output.stdout).expect("one JSON document");
    if report["events_lost"] != 0 && !last {
        return false;
    }
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
    true
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn top_prints_plain_tables_when_stdout_is_not_a_terminal() {
    let _serial = no_forks();
    // A free port, listened on only once top runs: its listen() is seen as an event, with or
    // without the inventory (the VM tier has no sock_diag).
    let port = unused_port();
    let port_arg = port.to_string();
    let top =
        Tracer::start(&["top", "--port", &port_arg, "--interval", "500ms", "--duration", "2s"]);
    let listener = listen(loopback(port));
    let _client = connect(addr_of(&listener));
    let _server = accept(&listener);
    let output = top.wait();
    assert!(output.status.success(), "{}", output.stderr);
    let stdout = output.stdout;
    let tables = stdout.matches("PID COMM").count();
    assert!(tables >= 2, "one table per interval:\n{stdout}");
    // The last table has this process with its listener and both ends of the connection.
    let last = stdout.rsplit("PID COMM").next().unwrap();
    let me = std::process::id().to_string();
    let row = last
        .lines()
        .find(|l| l.split_whitespace().next() == Some(me.as_str()))
        .unwrap_or_else(|| panic!("no row for pid {me}:\n{stdout}"));
    // Columns by their titles: "PID COMM" then the rest of the header line.
    let titles: Vec<&str> = ["PID", "COMM"]
        .into_iter()
        .chain(last.lines().next().unwrap_or_default().split_whitespace())
        .collect();
    let cell = |title: &str| -> u64 {
        let at = titles.iter().position(|t| *t == title).expect("a column title");
        row.split_whitespace().nth(at).and_then(|c| c.parse().ok()).expect("a count")
    };
    let (open, estab) = (cell("OPEN"), cell("ESTAB"));
    assert_eq!((open, estab), (3, 2), "{row}");
}
