//! A leaking program in a managed runtime (Python, Java), driven through files in its own
//! scratch directory: it opens its connections once `go` exists and says so by creating
//! `ready` (files rather than pipes: the same program runs detached in a container), and the
//! `leaks` report on it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::tracer::Tracer;

/// A fresh scratch directory for one program.
pub struct Workdir {
    pub dir: PathBuf,
}

impl Workdir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-runtime-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self { dir }
    }

    /// Writes `name` with `contents`; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        path
    }

    /// Waits until the program created `name`.
    pub fn wait_for(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.dir.join(name).exists() {
            assert!(Instant::now() < deadline, "the program did not create {name} within 30 s");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells the program to connect, and waits until its connections are open.
    pub fn connect(&self) {
        self.write("go", "");
        self.wait_for("ready");
    }
}

/// A program run by the test, killed when dropped.
pub struct Program(Child);

impl Program {
    pub fn spawn(program: &Path, args: &[&str]) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The report of a `leaks --json` run stopped once the connections are past `--min-age 1s`,
/// and tcptrace's stderr.
pub fn report(tracer: Tracer) -> (Value, String) {
    thread::sleep(Duration::from_millis(1500));
    let out = tracer.stop();
    assert!(out.status.success(), "tcptrace failed: {}\n{}", out.stdout, out.stderr);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: not one JSON document: {}", out.stdout));
    (report, out.stderr)
}

/// The one group of `pid`'s 4 never-closed connections.
pub fn unclosed_group(report: &Value, pid: u32) -> &Value {
    let groups: Vec<&Value> = report["groups"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|g| g["pid"] == pid && g["kind"] == "unclosed")
        .collect();
    assert_eq!(groups.len(), 1, "one group of unclosed connections: {report:#}");
    assert_eq!(groups[0]["count"], 4, "{:#}", groups[0]);
    groups[0]
}

/// The frames of `group`'s stack from `module` (`[python]`, `[java]`).
pub fn frames_of<'a>(group: &'a Value, module: &str) -> Vec<&'a Value> {
    let stack = group["stack"].as_array().map_or(&[][..], Vec::as_slice);
    stack.iter().filter(|f| f["module"] == module).collect()
}
