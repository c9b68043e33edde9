//! End to end: a Java program's connections named by its own method and line, read from the
//! JVM's interpreted frames (issue 18), with Debian's OpenJDK 17 and the one flag common in
//! production for profiling, `-XX:+PreserveFramePointer`: running before tcptrace starts (no
//! restart) and started under it.

#[allow(dead_code, reason = "shared by several test binaries; each uses a subset")]
mod support {
    pub mod leaky_program;
    pub mod raw;
    pub mod sockets;
    pub mod tracer;
}

use std::{path::Path, process::Command, thread, time::Duration};

use serde_json::Value;
use support::{
    leaky_program::{Program, Workdir, frames_of, report, unclosed_group},
    sockets::holding_server,
    tracer::Tracer,
};

const JDK: &str = "/usr/lib/jvm/java-17-openjdk-amd64/bin";

/// Opens 4 connections from `open_order_client` (line 7) once the file `go` exists in its
/// directory, says so by creating `ready`, and holds them; `started` says main runs.
const LEAKY: &str = r#"import java.net.Socket;
import java.nio.file.*;
import java.util.*;

public class Leaky {
    static Socket open_order_client(int port) throws Exception {
        return new Socket("127.0.0.1", port);
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        Path dir = Paths.get(args[1]);
        Files.createFile(dir.resolve("started"));
        while (!Files.exists(dir.resolve("go"))) Thread.sleep(20);
        List<Socket> held = new ArrayList<>();
        for (int i = 0; i < 4; i++) held.add(open_order_client(port));
        Files.createFile(dir.resolve("ready"));
        Thread.sleep(600_000);
    }
}
"#;

/// Compiles Leaky.java in a fresh directory and starts it (it waits for `go`).
fn start(name: &str, port: &str) -> (Workdir, Program) {
    let work = Workdir::new(&format!("java-{name}"));
    let source = work.write("Leaky.java", LEAKY);
    let javac = Command::new(Path::new(JDK).join("javac"))
        .arg("-d")
        .arg(&work.dir)
        .arg(&source)
        .output()
        .expect("running javac (cargo xtask setup installs openjdk-17-jdk-headless)");
    assert!(javac.status.success(), "{}", String::from_utf8_lossy(&javac.stderr));
    let dir = work.dir.to_string_lossy().into_owned();
    let program = Program::spawn(
        &Path::new(JDK).join("java"),
        &["-XX:+PreserveFramePointer", "-cp", &dir, "Leaky", port, &dir],
    );
    work.wait_for("started");
    (work, program)
}

/// The site is the program's method at its line, with its caller, past the JDK's own frames
/// (named in the stack, with their lines); the stack reaches the thread's start.
fn assert_named_by_the_program(group: &Value) {
    assert_eq!(
        group["site"], "Leaky.open_order_client (Leaky.java:7) ← Leaky.main (Leaky.java:16)",
        "the site names the program's method and line: {group:#}"
    );
    let java = frames_of(group, "[java]");
    assert!(
        java.iter().any(|f| f["symbol"] == "java.net.Socket.<init>"
            && f["file"] == "Socket.java"
            && f["line"].as_u64().is_some()),
        "the JDK's frames are named with their lines: {group:#}"
    );
    assert_eq!(group["stack_truncated"], false, "{group:#}");
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_java_program_running_before_tcptrace_is_named_by_its_method_and_line() {
    let port = holding_server().to_string();
    let (work, program) = start("running", &port);
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    work.connect();
    let (report, _) = report(tracer);
    assert_named_by_the_program(unclosed_group(&report, program.pid()));
}

#[test]
#[ignore = "loads BPF programs: needs root (cargo xtask test)"]
fn a_java_program_started_under_tcptrace_is_named_by_its_method_and_line() {
    let port = holding_server().to_string();
    let tracer = Tracer::start(&["leaks", "--port", &port, "--min-age", "1s", "--json"]);
    let (work, program) = start("started", &port);
    // tcptrace looks at a new JVM again every 100 ms until its tables are filled in.
    thread::sleep(Duration::from_millis(500));
    work.connect();
    let (report, _) = report(tracer);
    assert_named_by_the_program(unclosed_group(&report, program.pid()));
}
