//! `tcptrace leaks --json` around a scenario: started (see `support::tracer`), stopped with
//! SIGINT, its one JSON document parsed into the report's contract.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::support::tracer::{Finished, Tracer};

/// A cap in case the test never stops it (its drop kills it anyway).
const MAX_DURATION: &str = "120s";

/// A running `tcptrace leaks --json`.
pub struct Leaks(Tracer);

impl Leaks {
    /// Starts `tcptrace leaks --json --duration 120s ARGS` and waits until it is tracing.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["leaks", "--json", "--duration", MAX_DURATION];
        all.extend_from_slice(args);
        Self(Tracer::start(&all))
    }

    /// SIGINT, then the report it prints.
    pub fn stop(self) -> Report {
        let Finished { status, stdout, stderr } = self.0.stop();
        assert!(
            status.success(),
            "tcptrace exited with {status}; stderr:\n{stderr}\nstdout:\n{stdout}"
        );
        let mut report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "tcptrace leaks --json printed no single JSON report ({e}):\n{stdout}\nstderr:\n{stderr}"
            )
        });
        report.text = stdout;
        report.stderr = stderr;
        report
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
