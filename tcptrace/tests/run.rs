//! End to end: `tcptrace run -- CMD` as a CI job runs it, and `tcptrace compare` on its reports.
//! The commands are real programs (bash, sh, sleep, the leaky C fixture) talking to a loopback
//! server in this process.

mod fixtures;
#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::Duration,
};

use fixtures::{Fixture, line_of};
use serde_json::Value;
use support::{
    sockets::holding_server,
    tracer::{Tracer, tcptrace},
};
/// `tcptrace run`'s status when a budget is exceeded.
const EXIT_BUDGET: i32 = 3;

/// A directory of this test's own for report files.
fn scratch(test: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("run-{}-{test}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

struct Run {
    status: i32,
    stderr: String,
    report: Value,
    junit: String,
}

/// `tcptrace run ARGS --report R --junit J -- CMD`, to its end.
fn run(test: &str, args: &[&str], command: &[&str]) -> Run {
    let dir = scratch(test);
    let (report, junit) = (dir.join("report.json"), dir.join("junit.xml"));
    let Output { status, stderr, .. } = tcptrace(&["run"])
        .args(args)
        .arg("--report")
        .arg(&report)
        .arg("--junit")
        .arg(&junit)
        .arg("--")
        .args(command)
        .output()
        .expect("running tcptrace");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    let report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let junit = fs::read_to_string(&junit).expect("the JUnit file");
    Run { status: status.code().unwrap_or(-1), stderr, report, junit }
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn leaky() -> String {
    Fixture::C.binary().to_str().expect("a UTF-8 path").to_owned()
}

/// The line where `db_checkout` calls on, as the leaky fixture's stacks name it.
fn checkout_line() -> u32 {
    line_of(&Fixture::C.source(), "int fd = open_conn(port); checkout_call_line")
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_clean_command_passes_every_budget() {
    let port = holding_server();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-");
    let run = run(
        "clean",
        &["--max-leaks", "0", "--max-closed-by-exit", "0", "--max-connections", "1"],
        &["bash", "-c", &script],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let r = &run.report;
    assert_eq!(array(&r["findings"]).len(), 0, "{r:#}");
    assert_eq!(r["command_status"]["exit_code"], 0);
    assert_eq!(r["status"], 0);
    let budgets = array(&r["budgets"]);
    assert_eq!(budgets.len(), 3);
    assert!(budgets.iter().all(|b| b["passed"] == true), "{r:#}");
    let remote = format!("127.0.0.1:{port}");
    let remotes: Vec<_> = array(&r["remotes"]).iter().filter(|x| x["remote"] == remote).collect();
    assert_eq!(remotes.len(), 1, "{r:#}");
    assert_eq!(remotes[0]["connections"], 1);
    let bash = array(&r["processes"]).iter().find(|p| p["comm"] == "bash").expect("bash traced");
    assert_eq!((bash["opened"].as_u64(), bash["released"].as_u64()), (Some(1), Some(1)));
    assert!(run.junit.contains(r#"tests="3" failures="0""#), "{}", run.junit);
    assert!(run.stderr.contains("budget max-connections: ok: 1 <= 1"), "{}", run.stderr);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_leaking_command_exceeds_its_budget_and_names_the_code_path() {
    let port = holding_server().to_string();
    // With stdin at end of file the fixture exits as soon as its connections are open: the
    // kernel closes them, which is what closed-by-exit means.
    let run = run(
        "leaking",
        &["--max-closed-by-exit", "0", "--max-leaks", "10"],
        &[&leaky(), &port, "2"],
    );
    assert_eq!(run.status, EXIT_BUDGET, "{}", run.stderr);
    let r = &run.report;
    let findings = array(&r["findings"]);
    assert_eq!(findings.len(), 4, "{r:#}");
    assert!(findings.iter().all(|f| f["kind"] == "closed-by-exit" && f["comm"] == "leaky-c"));
    let site = format!("db_checkout (leaky.c:{})", checkout_line());
    let sites: Vec<&str> = array(&r["groups"]).iter().filter_map(|g| g["site"].as_str()).collect();
    assert!(sites.iter().any(|s| s.starts_with(&site)), "{sites:?}");
    assert!(sites.iter().any(|s| s.starts_with("refresh_cache (leaky.c:")), "{sites:?}");
    let budget = |name: &str| {
        array(&r["budgets"])
            .iter()
            .find(|b| b["budget"] == name)
            .unwrap_or_else(|| panic!("{name}: {r:#}"))
    };
    let by_exit = budget("max-closed-by-exit");
    assert_eq!(
        (by_exit["measured"].as_f64(), &by_exit["passed"]),
        (Some(4.0), &Value::Bool(false))
    );
    assert!(by_exit["offenders"][0]["sites"].to_string().contains(&site), "{by_exit:#}");
    assert_eq!(budget("max-leaks")["passed"], true, "10 allowed");
    assert!(run.stderr.contains("budget max-closed-by-exit: EXCEEDED: 4 > 0"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("opened at {site}")), "{}", run.stderr);
    assert!(run.junit.contains(r#"tests="2" failures="1""#), "{}", run.junit);
    every_field_is_documented(r);
    assert!(
        run.junit.contains(
            r#"<testcase classname="tcptrace.budgets" name="max-closed-by-exit"><failure"#
        )
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_failing_command_keeps_its_status_even_over_budget() {
    let run1 = run("failing", &["--max-leaks", "0"], &["sh", "-c", "exit 7"]);
    assert_eq!(run1.status, 7, "{}", run1.stderr);
    assert_eq!(run1.report["command_status"]["exit_code"], 7);
    // It leaked too: the command's failure is what CI must see first.
    let port = holding_server();
    let script = format!("{} {port} 1 </dev/null; exit 5", leaky());
    let run2 = run("failing-leaking", &["--max-closed-by-exit", "0"], &["sh", "-c", &script]);
    assert_eq!(run2.status, 5, "{}", run2.stderr);
    assert_eq!(array(&run2.report["budgets"])[0]["passed"], false);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn forked_workers_are_followed_and_their_leaks_are_theirs() {
    let port = holding_server();
    let leaky = leaky();
    let script = format!("{leaky} {port} 1 </dev/null & {leaky} {port} 1 </dev/null & wait");
    let run = run("workers", &["--max-closed-by-exit", "0"], &["sh", "-c", &script]);
    assert_eq!(run.status, EXIT_BUDGET, "{}", run.stderr);
    let findings = array(&run.report["findings"]);
    assert_eq!(findings.len(), 4, "{:#}", run.report);
    let mut pids: Vec<u64> = findings.iter().filter_map(|f| f["pid"].as_u64()).collect();
    pids.dedup();
    assert_eq!(pids.len(), 2, "two workers, two connections each: {pids:?}");
    assert!(findings.iter().all(|f| f["comm"] == "leaky-c"), "{:#}", run.report);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn sigterm_goes_to_the_command_and_the_report_is_still_made() {
    let dir = scratch("signal");
    let report = dir.join("report.json");
    let report_arg = report.to_str().expect("a UTF-8 path");
    let tracer = Tracer::start(&["run", "--report", report_arg, "--", "sleep", "30"]);
    // The command is spawned right after that line.
    thread::sleep(Duration::from_millis(500));
    tracer.signal(libc::SIGTERM);
    let out = tracer.wait();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{}", out.stderr);
    let report: Value =
        serde_json::from_str(&fs::read_to_string(&report).expect("report")).unwrap();
    assert_eq!(report["command_status"]["signal"], libc::SIGTERM);
    assert!(out.stderr.contains("was killed by signal 15"), "{}", out.stderr);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn compare_flags_a_regression_and_passes_the_same_report() {
    let port = holding_server().to_string();
    let base = run("compare-base", &[], &[&leaky(), &port, "1"]);
    let new = run("compare-new", &[], &[&leaky(), &port, "3"]);
    assert_eq!((base.status, new.status), (0, 0), "no budgets: the command's status");
    let dir = scratch("compare-files");
    let (base_file, new_file) = (dir.join("base.json"), dir.join("new.json"));
    fs::write(&base_file, base.report.to_string()).unwrap();
    fs::write(&new_file, new.report.to_string()).unwrap();

    let compare = |args: &[&Path], extra: &[&str]| {
        let out = tcptrace(&["compare"])
            .args(args)
            .args(extra)
            .output()
            .expect("running tcptrace compare");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (status, table) = compare(&[&base_file, &new_file], &[]);
    assert_eq!(status, EXIT_BUDGET, "{table}");
    let line = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap_or("").to_owned();
    assert!(line("connections ").contains("REGRESSED"), "{table}");
    assert!(line("findings: closed-by-exit").contains("REGRESSED"), "{table}");
    assert!(
        line("connections ").split_whitespace().collect::<Vec<_>>()[1..3] == ["2", "6"],
        "{table}"
    );

    let (status, markdown) = compare(&[&base_file, &base_file], &["--markdown"]);
    assert_eq!(status, 0, "{markdown}");
    assert!(markdown.starts_with("### tcptrace: no regression past 10%"), "{markdown}");
    // Tripled connections pass a threshold of 300%.
    let (status, _) = compare(&[&base_file, &new_file], &["--max-regression", "300"]);
    assert_eq!(status, 0);
}

#[test]
fn bad_run_and_compare_input_are_one_line_errors() {
    let out = tcptrace(&["run", "-p", "1", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--pid and --comm do not apply"), "{stderr}");
    let out = tcptrace(&["compare", "/nonexistent.json", "/x.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "tcptrace: error: reading /nonexistent.json: No such file or directory (os error 2)"
    );
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_command_that_does_not_exist_is_127() {
    let out = tcptrace(&["run", "--", "/nonexistent/cmd"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot run `/nonexistent/cmd`"), "{stderr}");
}

/// Every field of the run report (beyond the leaks report's, which report.rs checks) is named
/// in README's `run` section.
fn every_field_is_documented(report: &Value) {
    let readme = include_str!("../../README.md");
    let section = readme.split("## `tcptrace run` (CI)").nth(1).expect("README has a run section");
    let objects = [
        ("report", report),
        ("command_status", &report["command_status"]),
        ("budget", &report["budgets"][0]),
        ("offender", &report["budgets"][0]["offenders"][0]),
        ("remote", &report["remotes"][0]),
    ];
    for (what, object) in objects {
        let object =
            object.as_object().unwrap_or_else(|| panic!("{what} is an object: {report:#}"));
        for key in object.keys() {
            let documented = section.contains(&format!("`{key}`"))
                || section.contains(&format!("`{key}[]`"))
                || readme.contains(&format!("| `{key}` |"))
                || readme.contains(&format!("| `{key}[]` |"));
            assert!(documented, "{what} field `{key}` is not documented in README");
        }
    }
}
