//! `tcptrace leaks --json` as a user runs it: started, ready when it says `tcptrace: tracing` on
//! stderr, stopped with SIGINT, its one JSON document parsed.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

const TCPTRACE: &str = env!("CARGO_BIN_EXE_tcptrace");
/// Loading the programs and taking the inventory.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The final sweep and the report after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A cap in case the test never stops it (its drop kills it anyway).
const MAX_DURATION: &str = "120s";

/// A running `tcptrace leaks --json`.
pub struct Leaks {
    child: Child,
    args: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Option<thread::JoinHandle<String>>,
    pub started: Instant,
}

impl Leaks {
    /// Starts `tcptrace leaks --json --duration 120s ARGS` and waits until it is tracing.
    pub fn start(args: &[&str]) -> Self {
        let mut all: Vec<String> =
            ["leaks", "--json", "--duration", MAX_DURATION].map(String::from).to_vec();
        all.extend(args.iter().map(|a| a.to_string()));
        let mut child = Command::new(TCPTRACE)
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcptrace");
        let mut stdout_pipe = child.stdout.take().expect("stdout");
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout_pipe.read_to_string(&mut text);
            text
        });
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr_pipe = child.stderr.take().expect("stderr");
        let lines = Arc::clone(&stderr_lines);
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if line.starts_with("tcptrace: tracing") {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut leaks = Self {
            child,
            args: all,
            stderr: stderr_lines,
            stdout: Some(stdout),
            started: Instant::now(),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed before the line: tcptrace is exiting.
                let status = leaks.child.wait().expect("waiting for tcptrace");
                panic!(
                    "tcptrace {} exited with {status} before tracing; stderr:\n{}",
                    leaks.args.join(" "),
                    leaks.stderr()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "tcptrace {} did not start tracing within {START_TIMEOUT:?}; stderr:\n{}",
                leaks.args.join(" "),
                leaks.stderr()
            ),
        }
        leaks.started = Instant::now();
        leaks
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// SIGINT, then the report it prints.
    pub fn stop(mut self) -> Report {
        // SAFETY: signals our own child.
        let ret = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(ret, 0, "SIGINT to tcptrace: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tcptrace") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tcptrace did not exit within {STOP_TIMEOUT:?} of SIGINT; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().expect("stdout reader").join().expect("stdout reader");
        assert!(
            status.success(),
            "tcptrace exited with {status}; stderr:\n{}\nstdout:\n{stdout}",
            self.stderr()
        );
        let mut report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "tcptrace leaks --json printed no single JSON report ({e}):\n{stdout}\nstderr:\n{}",
                self.stderr()
            )
        });
        report.text = stdout;
        report.stderr = self.stderr();
        report
    }
}

impl Drop for Leaks {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report (the `tcptrace leaks --json` contract)

#[derive(Debug, Deserialize)]
pub struct Limits {
    pub min_age_s: f64,
    pub idle_s: f64,
    pub time_wait_rate: f64,
}

#[derive(Debug, Deserialize)]
#[expect(
    dead_code,
    reason = "parsed to check the contract's fields are there; not every test reads each"
)]
pub struct Lifetimes {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Deserialize)]
#[expect(
    dead_code,
    reason = "parsed to check the contract's fields are there; not every test reads each"
)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub opened: u64,
    pub released: u64,
    pub open: u64,
    pub open_by_state: BTreeMap<String, u64>,
    pub time_wait_per_s: f64,
    /// Null until a connection of the process has closed.
    pub lifetime_ms: Option<Lifetimes>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Finding {
    pub kind: String,
    pub pid: u32,
    pub comm: String,
    pub fd: Option<i32>,
    pub local: Option<String>,
    pub remote: Option<String>,
    pub state: String,
    pub age_s: Option<f64>,
    pub idle_s: Option<f64>,
    pub keepalive: Option<bool>,
    pub source: String,
    pub count: u64,
    pub rate_per_s: Option<f64>,
    pub port_share: Option<f64>,
    pub explanation: String,
    pub fix: String,
}

#[derive(Debug, Deserialize)]
pub struct Report {
    pub close_hook: String,
    pub duration_s: f64,
    pub events: u64,
    pub events_lost: u64,
    pub evicted: u64,
    pub limits: Limits,
    pub warnings: Vec<String>,
    pub processes: Vec<Process>,
    pub findings: Vec<Finding>,
    /// The document as printed, and tcptrace's stderr, for failure messages.
    #[serde(skip)]
    pub text: String,
    #[serde(skip)]
    pub stderr: String,
}

impl Report {
    /// The findings about any of `pids`.
    pub fn findings_of(&self, pids: &[u32]) -> Vec<&Finding> {
        self.findings.iter().filter(|f| pids.contains(&f.pid)).collect()
    }

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Established sockets `pid` held at the end, as the report counts them.
    pub fn established(&self, pid: u32) -> u64 {
        self.process(pid).and_then(|p| p.open_by_state.get("ESTABLISHED").copied()).unwrap_or(0)
    }

    /// The findings about `pids`, one per line, then the whole report: for failure messages.
    pub fn show(&self, pids: &[u32]) -> String {
        let mine: String = self.findings_of(pids).iter().map(|f| format!("  {f:?}\n")).collect();
        format!(
            "findings about pids {pids:?}:\n{mine}{} events, {} evicted, warnings {:?}; whole report:\n{}\ntcptrace stderr:\n{}",
            self.events, self.evicted, self.warnings, self.text, self.stderr
        )
    }
}
