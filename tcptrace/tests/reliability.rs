//! Hostile input, as a careful operator tries it on a live host: a closed stderr, report paths
//! the traced command can replace, paths that cannot be written, names no process has, a
//! tracefs closed to the user, reports of another shape. Each must give a clear line and the
//! documented status, never a panic, a hang, or a write through someone else's link.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod tracer;
}

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    process::Stdio,
};

use support::tracer::{run_to_end, tcptrace};

/// A directory of this test's own, under /tmp: the commands some tests run as `nobody` must
/// reach it, which a checkout under /root would not let them.
fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tcptrace-reliability-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Runs tcptrace with its stderr a pipe nobody reads any more: every message it writes there
/// fails with EPIPE. Returns its exit code and stdout.
fn with_stderr_closed(args: &[&str]) -> (Option<i32>, String) {
    let mut child = tcptrace(args).stdout(Stdio::piped()).spawn().expect("spawning tcptrace");
    drop(child.stderr.take());
    let out = child.wait_with_output().expect("waiting for tcptrace");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_closed_stderr_ends_no_command_early_and_loses_no_report() {
    let (status, _) = with_stderr_closed(&["trace", "--duration", "1s"]);
    assert_eq!(status, Some(0), "trace: a panic exits 101");
    let (status, stdout) = with_stderr_closed(&["leaks", "--duration", "1s", "--json"]);
    assert_eq!(status, Some(0), "leaks");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("the report on stdout");
    assert!(report["events"].is_u64(), "{report}");
    let (status, _) = with_stderr_closed(&["run", "--", "sh", "-c", "exit 5"]);
    assert_eq!(status, Some(5), "run keeps the command's status");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_link_the_command_plants_at_the_report_path_is_not_written_through() {
    let dir = scratch("planted");
    // The command runs as nobody and may write where the report goes.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let secret_dir = scratch("secret");
    let secret = secret_dir.join("secret");
    fs::write(&secret, "root's own").expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let report = dir.join("tcptrace.json");
    let junit = dir.join("tcptrace.xml");
    let plant = format!(
        "ln -s {secret} {report} && ln -s {secret} {junit}",
        secret = secret.display(),
        report = report.display(),
        junit = junit.display()
    );
    let (status, _, stderr) = run_to_end(&mut tcptrace(&[
        "run",
        "--report",
        report.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        &plant,
    ]));
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root's own", "written through a link");
    for path in [&report, &junit] {
        let meta = fs::symlink_metadata(path).expect("the report");
        assert!(meta.file_type().is_file(), "{}: the link was not replaced", path.display());
        assert_eq!(meta.uid(), 0);
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).unwrap()).expect("a JSON report");
    assert_eq!(json["status"], 0, "{json}");
    assert!(fs::read_to_string(&junit).unwrap().starts_with("<?xml"));
    let _ = fs::remove_dir_all(dir);
    let _ = fs::remove_dir_all(secret_dir);
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn an_unwritable_report_path_fails_before_the_command_runs() {
    let dir = scratch("unwritable");
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    for report in ["/nonexistent/tcptrace.json".to_owned(), dir.display().to_string()] {
        let (status, _, stderr) =
            run_to_end(&mut tcptrace(&["run", "--report", &report, "--", "sh", "-c", &touch]));
        assert_eq!(status, 2, "{report}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!marker.exists(), "{report}: the command ran");
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn names_and_reports_of_the_wrong_shape_are_refused_in_one_line() {
    let (status, _, stderr) = run_to_end(&mut tcptrace(&["leaks", "-c", ""]));
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("--comm is empty"), "{stderr}");

    let dir = scratch("compare");
    let bad = dir.join("bad.json");
    fs::write(&bad, r#"{"processes": [], "findings": [], "remotes": "x"}"#).unwrap();
    let (status, _, stderr) =
        run_to_end(&mut tcptrace(&["compare", bad.to_str().unwrap(), bad.to_str().unwrap()]));
    assert_eq!(status, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expected a sequence"), "{stderr}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs root: runs tcptrace as another user with capabilities"]
fn a_tracefs_closed_to_the_user_is_named_as_the_cause() {
    let mode = fs::metadata("/sys/kernel/tracing").expect("tracefs mount point").mode() & 0o777;
    assert_eq!(mode, 0o700, "the case needs tracefs closed to other users");
    // A copy `nobody` can execute, wherever the checkout is.
    let dir = scratch("tracefs");
    let binary = dir.join("tcptrace");
    fs::copy(support::tracer::TCPTRACE, &binary).expect("copying tcptrace");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (status, _, stderr) = run_to_end(
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=+bpf,+perfmon",
                "--ambient-caps=+bpf,+perfmon",
                binary.to_str().unwrap(),
                "trace",
                "--duration",
                "1s",
            ])
            .stdin(Stdio::null()),
    );
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("CAP_DAC_READ_SEARCH"), "{stderr}");
    assert!(!stderr.contains("not mounted"), "{stderr}");
    let _ = fs::remove_dir_all(dir);
}
