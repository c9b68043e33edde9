//! End to end: a Python program's connections named by its own function and line, read from
//! the interpreter's frames (issue 18), with Debian's `/usr/bin/python3` (3.11, built without
//! frame pointers, so its native stack names nothing of the program): running before tcptrace
//! starts (no restart), started under it, in a podman container, and a Python tcptrace has no
//! layout for, which gets native frames and a note rather than wrong names.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod leaky_program;
    pub mod podman;
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    leaky_program::{Program, Workdir, frames_of, report, unclosed_group},
    podman::Container,
    sockets::holding_server,
    tracer::Tracer,
};

const PYTHON: &str = "/usr/bin/python3.11";

/// Opens 4 connections from `open_order_client` (line 5) once the file `go` exists, says so by
/// creating `ready`, and holds them (see `support::leaky_program`); `started` says it runs.
const LEAKY_JOBS: &str = r#"import os, socket, sys, time


def open_order_client(port):
    return socket.create_connection(("127.0.0.1", port))


def main():
    port, here = int(sys.argv[1]), os.path.dirname(sys.argv[0])
    open(os.path.join(here, "started"), "w").close()
    while not os.path.exists(os.path.join(here, "go")):
        time.sleep(0.02)
    held = [open_order_client(port) for _ in range(4)]
    open(os.path.join(here, "ready"), "w").close()
    time.sleep(600)


main()
"#;

/// The line `main` calls `open_order_client` from.
const MAIN_CALL_LINE: u64 = 13;

/// A scratch directory holding leaky_jobs.py.
fn script(name: &str) -> (Workdir, PathBuf) {
    let work = Workdir::new(&format!("python-{name}"));
    let script = work.write("leaky_jobs.py", LEAKY_JOBS);
    (work, script)
}

/// `interpreter leaky_jobs.py PORT`.
fn spawn(interpreter: &Path, script: &Path, port: &str) -> Program {
    Program::spawn(interpreter, &[&script.to_string_lossy(), port])
}

/// The site is the program's function at its line, with its caller; the stack goes through the
/// standard library's `create_connection` (not the site: library code) out to the module, whole.
fn assert_named_by_the_program(group: &Value) {
    let site = group["site"].as_str().unwrap_or_default();
    assert!(
        site.starts_with("open_order_client (leaky_jobs.py:5) ← "),
        "the site names the program's function and line: {group:#}"
    );
    let python = frames_of(group, "[python]");
    let names: Vec<&str> = python.iter().filter_map(|f| f["symbol"].as_str()).collect();
    assert_eq!(names.first(), Some(&"create_connection"), "{group:#}");
    assert!(python[0]["file"].as_str().is_some_and(|f| f.ends_with("/socket.py")), "{group:#}");
    assert_eq!(names.last(), Some(&"<module>"), "the walk reached the outermost frame: {group:#}");
    let main = python.iter().find(|f| f["symbol"] == "main").expect("main's frame");
    assert_eq!(main["line"], MAIN_CALL_LINE, "the line main calls from: {group:#}");
    assert_eq!(group["stack_truncated"], false, "{group:#}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_python_program_running_before_tcptrace_is_named_by_its_function_and_line() {
    let port = holding_server().to_string();
    let (work, script) = script("running");
    let program = spawn(Path::new(PYTHON), &script, &port);
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    work.connect();
    let (report, _) = report(tracer);
    assert_named_by_the_program(unclosed_group(&report, program.pid()));
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_python_program_started_under_tcptrace_is_named_by_its_function_and_line() {
    let port = holding_server().to_string();
    let (work, script) = script("started");
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    let program = spawn(Path::new(PYTHON), &script, &port);
    // tcptrace recognises the interpreter when it reads the exec, a few ms after it: opens
    // before that get native frames only (README, "Code paths"). The margin is for the VM
    // tier's emulation.
    work.wait_for("started");
    thread::sleep(Duration::from_millis(300));
    work.connect();
    let (report, _) = report(tracer);
    assert_named_by_the_program(unclosed_group(&report, program.pid()));
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_python_version_without_a_known_layout_gets_native_frames_and_a_note() {
    let port = holding_server().to_string();
    let (work, script) = script("unknown");
    // Debian's interpreter is linked statically: a copy under another version's name runs the
    // same, and tcptrace must not read it with 3.11's layout (nor any other).
    let renamed = work.dir.join("python3.99");
    std::fs::copy(PYTHON, &renamed).expect("copying the interpreter");
    let program = spawn(&renamed, &script, &port);
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    work.connect();
    let (report, stderr) = report(tracer);
    assert!(
        stderr.lines().any(|l| l.starts_with("tcptrace: note: ")
            && l.contains("python3.99 (Python 3.99")
            && l.contains("native frames only")),
        "a note names the interpreter it cannot read: {stderr}"
    );
    let group = unclosed_group(&report, program.pid());
    assert!(frames_of(group, "[python]").is_empty(), "no interpreter frames: {group:#}");
    assert!(!group["site"].as_str().unwrap_or_default().contains("open_order_client"));
}

/// In a container the program's threads have the container's pid namespace's numbers, which
/// the kernel's thread ids are not: the thread is found by its thread pointer instead.
#[test]
#[ignore = "loads BPF programs and runs podman: needs root (cargo xtask test)"]
fn a_python_program_in_a_container_is_named_by_its_function_and_line() {
    let port = holding_server().to_string();
    let (work, script) = script("container");
    let dir = work.dir.to_string_lossy().into_owned();
    // The host's interpreter and standard library, read-only, in the busybox image.
    let volumes = [
        format!("{dir}:{dir}"),
        "/usr:/usr:ro".to_owned(),
        "/lib:/lib:ro".to_owned(),
        "/lib64:/lib64:ro".to_owned(),
    ];
    let volumes: Vec<&str> = volumes.iter().flat_map(|v| ["-v", v.as_str()]).collect();
    let container =
        Container::run_with(&volumes, &format!("exec {PYTHON} {} {port}", script.display()));
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    work.connect();
    let (report, _) = report(tracer);
    let group = unclosed_group(&report, container.pid);
    assert_eq!(group["container"]["name"], container.name.as_str(), "{group:#}");
    assert_named_by_the_program(group);
}

/// The layout tcptrace reads CPython 3.11 with is the one the installed headers define.
#[test]
fn the_python_3_11_layout_matches_the_installed_headers() {
    let headers = Path::new("/usr/include/python3.11/internal/pycore_frame.h");
    assert!(headers.exists(), "python3.11-dev is missing (cargo xtask setup installs it)");
    let work = Workdir::new("python-offsets");
    let source = work.dir.join("offsets.c");
    std::fs::write(
        &source,
        r#"#define Py_BUILD_CORE 1
#include <Python.h>
#include <internal/pycore_runtime.h>
#include <internal/pycore_interp.h>
#include <internal/pycore_frame.h>
#include <stddef.h>
#include <stdio.h>
#define P(t, f) printf("%zu\n", offsetof(t, f))
int main(void) {
    P(_PyRuntimeState, interpreters.main);
    P(PyInterpreterState, threads.head);
    P(PyThreadState, next);
    P(PyThreadState, native_thread_id);
    P(PyThreadState, thread_id);
    P(PyThreadState, cframe);
    P(_PyCFrame, current_frame);
    P(_PyInterpreterFrame, f_code);
    P(_PyInterpreterFrame, previous);
    P(_PyInterpreterFrame, prev_instr);
    P(PyCodeObject, co_code_adaptive);
    P(PyCodeObject, co_filename);
    P(PyCodeObject, co_qualname);
    P(PyCodeObject, co_firstlineno);
    P(PyCodeObject, co_linetable);
    P(PyASCIIObject, length);
    P(PyASCIIObject, state);
    printf("%zu\n%zu\n", sizeof(PyASCIIObject), sizeof(PyCompactUnicodeObject));
    P(PyVarObject, ob_size);
    P(PyBytesObject, ob_sval);
    return 0;
}
"#,
    )
    .expect("writing offsets.c");
    let binary = work.dir.join("offsets");
    let built = Command::new("gcc")
        .args(["-I/usr/include/python3.11", "-I/usr/include/x86_64-linux-gnu/python3.11", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("running gcc");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let out = Command::new(&binary).output().expect("running the offsets program");
    let from_headers: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("a number"))
        .collect();
    let v = tcptrace::interp::python::layout::version(3, 11).expect("3.11 is known");
    let w = v.walk;
    let ours: Vec<u64> = [
        w.runtime_main_interp,
        w.interp_threads_head,
        w.tstate_next,
        w.tstate_native_thread_id,
        w.tstate_thread_id,
        w.tstate_cframe,
        w.cframe_current_frame,
        w.frame_code,
        w.frame_previous,
        w.frame_prev_instr,
    ]
    .into_iter()
    .map(u64::from)
    .chain([
        v.code_first_instr,
        v.code_filename,
        v.code_qualname,
        v.code_firstlineno,
        v.code_linetable,
        v.str_length,
        v.str_state,
        v.str_ascii_data,
        v.str_compact_data,
        v.bytes_size,
        v.bytes_data,
    ])
    .collect();
    assert_eq!(ours, from_headers);
}
