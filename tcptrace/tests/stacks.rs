//! End to end: the code path of each connection, as `tcptrace leaks` and `tcptrace trace
//! --stacks` name it, on the leaky fixtures (C with and without frame pointers, Rust), which
//! open connections along two call paths:
//!
//!   main -> handle_orders -> db_checkout -> open_conn
//!   main -> refresh_cache -> open_conn
//!
//! Debian's glibc is built without frame pointers, so the function that calls connect() in the
//! C fixture (open_conn) is skipped by the kernel's frame-pointer walk: its callers are found.
//! Rust's std connect is generic and compiled into the fixture, which keeps open_conn.

mod fixtures;
#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{path::Path, thread, time::Duration};

use fixtures::{Fixture, line_of};
use serde_json::Value;
use support::{sockets::holding_server, tracer::Tracer};

/// Stops `tracer` (SIGINT) and returns its report.
fn finish(tracer: Tracer) -> String {
    let out = tracer.stop();
    assert!(out.status.success(), "tcptrace failed: {}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// When the fixture ends.
#[derive(PartialEq)]
enum Ending {
    /// It holds its connections until the report is made.
    AfterReport,
    /// It exits (closing them) as soon as they are all open, long before the report, and
    /// likely before tcptrace has read its first event: the kernel placed each frame in its
    /// file (build id and offset) at the capture.
    Early,
}

/// `tcptrace leaks` on the fixture's connections (N along each path). Returns the report and
/// the fixture's pid.
fn leaks(fixture: Fixture, n: u32, extra: &[&str], ending: Ending) -> (String, u32) {
    let port = holding_server().to_string();
    let mut args = vec!["leaks", "--port", &port, "--min-age", "1s"];
    args.extend_from_slice(extra);
    let child = Tracer::start(&args);
    let mut running = fixture.spawn(&[&port, &n.to_string()]);
    assert_eq!(running.line(), "ready");
    let pid = running.pid();
    // The report comes once the opens are older than --min-age, however late a loaded machine
    // ran the fixture (a fixed --duration made this test fail under load).
    let past_min_age = Duration::from_millis(1500);
    if ending == Ending::Early {
        assert!(running.finish().success());
        thread::sleep(past_min_age);
        return (finish(child), pid);
    }
    thread::sleep(past_min_age);
    let report = finish(child);
    drop(running);
    (report, pid)
}

fn json(report: &str) -> Value {
    serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: not one JSON document: {report}"))
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// The groups of `pid`, as (kind, count, stack).
fn groups_of(report: &Value, pid: u32) -> Vec<&Value> {
    array(&report["groups"]).iter().filter(|g| g["pid"] == pid).collect()
}

/// The line of `function`'s frame in `stack`, if a frame names it.
fn frame_line(stack: &Value, function: &str) -> Option<u64> {
    array(stack).iter().find(|f| f["symbol"] == function).and_then(|f| f["line"].as_u64())
}

fn names(stack: &Value, function: &str) -> bool {
    array(stack).iter().any(|f| f["symbol"] == function)
}

/// The line of the first line containing `needle` after the one containing `after`.
fn line_after(source: &Path, after: &str, needle: &str) -> u64 {
    let start = line_of(source, after) as usize;
    let text = std::fs::read_to_string(source).expect("reading the fixture source");
    let offset = text.lines().skip(start).position(|l| l.contains(needle)).expect("the needle");
    (start + offset + 1) as u64
}

/// Where the C fixture's two paths call on: db_checkout -> open_conn, handle_orders ->
/// db_checkout and refresh_cache -> open_conn.
fn c_call_lines() -> (u64, u64, u64) {
    let source = Fixture::C.source();
    (
        line_after(&source, "static int db_checkout(", "open_conn(port)"),
        line_after(&source, "static int handle_orders(", "db_checkout(port)"),
        line_after(&source, "static int refresh_cache(", "open_conn(port)"),
    )
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_groups_a_c_programs_findings_by_the_path_that_opened_them() {
    let (report, pid) = leaks(Fixture::C, 3, &["--json"], Ending::AfterReport);
    let report = json(&report);
    let (checkout_line, orders_line, refresh_line) = c_call_lines();
    let groups = groups_of(&report, pid);
    assert_eq!(groups.len(), 2, "two open sites: {report:#}");
    for g in &groups {
        assert_eq!((g["kind"].as_str(), g["count"].as_u64()), (Some("unclosed"), Some(3)), "{g:#}");
    }
    let orders = groups.iter().find(|g| names(&g["stack"], "db_checkout")).expect("orders path");
    let refresh = groups.iter().find(|g| names(&g["stack"], "refresh_cache")).expect("cache path");
    assert_eq!(frame_line(&orders["stack"], "db_checkout"), Some(checkout_line), "{orders:#}");
    assert_eq!(frame_line(&orders["stack"], "handle_orders"), Some(orders_line), "{orders:#}");
    assert!(!names(&orders["stack"], "refresh_cache"), "paths kept apart: {orders:#}");
    assert_eq!(frame_line(&refresh["stack"], "refresh_cache"), Some(refresh_line), "{refresh:#}");
    assert!(!names(&refresh["stack"], "db_checkout"), "paths kept apart: {refresh:#}");
    assert_eq!(
        orders["site"],
        format!("db_checkout (leaky.c:{checkout_line}) ← handle_orders (leaky.c:{orders_line})")
    );
    // Each finding carries its own stack too, the same as its group's.
    let findings: Vec<&Value> =
        array(&report["findings"]).iter().filter(|f| f["pid"] == pid).collect();
    assert_eq!(findings.len(), 6);
    assert!(
        findings.iter().all(|f| f["stack"] == orders["stack"] || f["stack"] == refresh["stack"])
    );
    // With frame pointers the walk reaches main: nothing is cut short.
    assert!(groups.iter().chain(&findings).all(|g| g["stack_truncated"] == false), "{report:#}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn leaks_text_names_the_rust_function_and_line_that_opened_each_group() {
    let (text, pid) = leaks(Fixture::Rust, 2, &[], Ending::AfterReport);
    let source = Fixture::Rust.source();
    let connect = line_after(&source, "fn open_conn(", "TcpStream::connect(");
    let checkout = line_after(&source, "fn db_checkout(", "open_conn(port)");
    let refresh = line_after(&source, "fn refresh_cache(", "open_conn(port)");
    let process =
        text.split("\n\n").find(|p| p.contains(&format!("({pid})"))).expect("the fixture");
    for site in [
        format!(
            "opened at leaky::open_conn (leaky.rs:{connect}) ← leaky::db_checkout (leaky.rs:{checkout})"
        ),
        format!(
            "opened at leaky::open_conn (leaky.rs:{connect}) ← leaky::refresh_cache (leaky.rs:{refresh})"
        ),
    ] {
        assert!(process.contains(&site), "{site:?} missing from:\n{text}");
    }
    assert_eq!(process.matches("unclosed          2 sockets").count(), 2, "{text}");
    // The stack under each group stops at main: the runtime's start-up is in the JSON only.
    assert!(process.contains("leaky::main (leaky.rs:"), "{text}");
    assert!(!process.contains("lang_start"), "{text}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_program_without_frame_pointers_gets_a_short_stack_and_no_error() {
    let (report, pid) = leaks(Fixture::CWithoutFramePointers, 2, &["--json"], Ending::AfterReport);
    let report = json(&report);
    let findings: Vec<&Value> =
        array(&report["findings"]).iter().filter(|f| f["pid"] == pid).collect();
    assert_eq!(findings.len(), 4, "{report:#}");
    for f in findings {
        let stack = array(&f["stack"]);
        // The system call's own frame always resolves (the C library has symbols) ...
        let first = stack.first().unwrap_or_else(|| panic!("no stack: {f:#}"));
        assert!(first["module"].as_str().is_some_and(|m| m.contains("libc.so")), "{f:#}");
        // ... but the walk cannot reach the fixture's callers, and nothing has a leaky.c line.
        assert!(!names(&f["stack"], "handle_orders"), "{f:#}");
        let from_leaky_c =
            |frame: &Value| frame["file"].as_str().is_some_and(|f| f.ends_with("leaky.c"));
        assert!(!stack.iter().any(from_leaky_c), "{f:#}");
        // ... and the report says the stack was cut short.
        assert_eq!(f["stack_truncated"], true, "{f:#}");
    }
    // Not `stack_failures == 0`: this test's own server (a Rust build without frame pointers)
    // accepts the connections, and a walk of its stack may find nothing to capture.
}

/// Debian's python3 is built without frame pointers: the kernel's walk reads through the
/// interpreter's registers and used to hand back a kernel-space "return address" as the only
/// frame past the C library, which the report then named as the opening site.
#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn no_report_shows_a_frame_that_cannot_be_a_user_return_address() {
    const PROGRAM: &str = "import socket, sys\n\
        def open_order_client(port):\n    return socket.create_connection(('127.0.0.1', port))\n\
        held = [open_order_client(int(sys.argv[1])) for _ in range(4)]\n\
        print('ready', flush=True)\nsys.stdin.read()\n";
    let port = holding_server().to_string();
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    let mut python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PROGRAM, &port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running /usr/bin/python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(python.stdout.as_mut().expect("stdout")),
        &mut ready,
    )
    .expect("reading python's output");
    assert_eq!(ready.trim(), "ready");
    thread::sleep(Duration::from_millis(1500));
    let report = json(&finish(tracer));
    let _ = python.kill();
    let _ = python.wait();
    let pid = python.id();
    let findings: Vec<&Value> =
        array(&report["findings"]).iter().filter(|f| f["pid"] == pid).collect();
    assert_eq!(findings.len(), 4, "{report:#}");
    let groups = groups_of(&report, pid);
    for stack in findings.iter().chain(&groups).map(|f| &f["stack"]) {
        for frame in array(stack) {
            let addr = frame["addr"].as_str().and_then(|a| a.strip_prefix("0x"));
            let addr = addr.and_then(|a| u64::from_str_radix(a, 16).ok()).expect("a hex addr");
            assert!(addr != 0 && addr < 1 << 47, "not a user return address: {frame:#}");
        }
    }
    for g in &groups {
        let site = g["site"].as_str().unwrap_or_default();
        assert!(!site.contains("0xffff"), "{g:#}");
        // The native walk stops in the interpreter, short of main: said so, unless the
        // interpreter's own frames (tests/python.rs) carried the stack out to its module. An
        // open right after the exec can come before tcptrace knows the interpreter.
        let interpreted = array(&g["stack"]).iter().any(|f| f["module"] == "[python]");
        assert_eq!(g["stack_truncated"], !interpreted, "{g:#}");
    }
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_process_that_exits_before_the_report_keeps_its_symbolized_stacks() {
    // Each connection closed by the exit enters TIME_WAIT: churn, attributed to the open site of
    // a process that no longer exists when the report is made.
    let (report, pid) = leaks(Fixture::C, 2, &["--json", "--time-wait-rate", "0.5"], Ending::Early);
    let report = json(&report);
    let process = array(&report["processes"]).iter().find(|p| p["pid"] == pid).expect("fixture");
    assert_eq!(process["exited"], true, "{process:#}");
    let churn = array(&report["findings"])
        .iter()
        .find(|f| f["pid"] == pid && f["kind"] == "time-wait-churn")
        .unwrap_or_else(|| panic!("no churn finding: {report:#}"));
    let (checkout_line, _, refresh_line) = c_call_lines();
    let line = frame_line(&churn["stack"], "db_checkout")
        .or_else(|| frame_line(&churn["stack"], "refresh_cache"));
    assert!(line == Some(checkout_line) || line == Some(refresh_line), "{churn:#}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn trace_stacks_prints_the_path_of_each_open() {
    let port = holding_server();
    let port_arg = port.to_string();
    let child =
        Tracer::start(&["trace", "--stacks", "--json", "--port", &port_arg, "--duration", "3s"]);
    let mut running = Fixture::C.spawn(&[&port_arg, "1"]);
    assert_eq!(running.line(), "ready");
    let pid = running.pid();
    let stdout = finish(child);
    drop(running);
    let records: Vec<Value> = stdout.lines().map(json).collect();
    let connects: Vec<&Value> =
        records.iter().filter(|r| r["event"] == "connect" && r["pid"] == pid).collect();
    assert_eq!(connects.len(), 2, "{stdout}");
    assert!(names(&connects[0]["stack"], "handle_orders"), "{:#}", connects[0]);
    assert!(names(&connects[1]["stack"], "refresh_cache"), "{:#}", connects[1]);
    let others = records.iter().filter(|r| r["event"] != "connect" && r["event"] != "accept");
    assert!(others.clone().count() > 0 && others.clone().all(|r| r["stack"].is_null()), "{stdout}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn stacks_off_leaves_findings_without_a_code_path() {
    let (report, pid) = leaks(Fixture::C, 1, &["--json", "--stacks", "off"], Ending::AfterReport);
    let report = json(&report);
    let groups = groups_of(&report, pid);
    // Without stacks, one group per (process, kind).
    assert_eq!(groups.len(), 1, "{report:#}");
    assert_eq!((groups[0]["count"].as_u64(), groups[0]["site"].is_null()), (Some(2), true));
    assert!(groups[0]["stack"].is_null());
}
