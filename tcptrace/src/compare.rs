//! `tcptrace compare BASE.json NEW.json`: what changed between two reports (of `run --report`
//! or `leaks --json`), as a table or markdown, and whether a metric regressed past the
//! threshold. Processes are matched by name (pids differ between runs), remotes by `ip:port`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::Context as _;
use serde_json::Value;

use crate::{cli::CompareArgs, run::EXIT_BUDGET};

/// One compared quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub base: Option<f64>,
    pub new: Option<f64>,
    /// Whether growth past the threshold fails the comparison (lifetimes, and remotes present
    /// in one report only, are shown but not judged).
    pub gated: bool,
}

impl Metric {
    /// Grew by more than `pct` percent (from zero: grew at all).
    pub fn regressed(&self, pct: f64) -> bool {
        match (self.base, self.new) {
            (Some(base), Some(new)) if self.gated => new > base && new > base * (1.0 + pct / 100.0),
            _ => false,
        }
    }

    fn change(&self) -> String {
        match (self.base, self.new) {
            (Some(base), Some(new)) if base == new => "=".to_owned(),
            (Some(0.0), Some(new)) => format!("+{}", number(new)),
            (Some(base), Some(new)) => format!("{:+.0}%", (new - base) / base * 100.0),
            (None, Some(_)) => "new".to_owned(),
            (Some(_), None) => "gone".to_owned(),
            (None, None) => String::new(),
        }
    }
}

/// The metrics of two reports, in a stable order: totals, then by process, then by remote.
pub fn diff(base: &Value, new: &Value) -> Vec<Metric> {
    let (base, new) = (Summary::of(base), Summary::of(new));
    let mut metrics = Vec::new();
    let both = |name: &str, b: f64, n: f64| Metric {
        name: name.to_owned(),
        base: Some(b),
        new: Some(n),
        gated: true,
    };
    metrics.push(both("connections", base.connections, new.connections));
    metrics.push(both("TIME_WAIT entries", base.time_wait, new.time_wait));
    metrics.push(both("findings", base.findings.values().sum(), new.findings.values().sum()));
    for kind in union(&base.findings, &new.findings) {
        let count = |s: &Summary| s.findings.get(&kind).copied().unwrap_or(0.0);
        metrics.push(both(&format!("findings: {kind}"), count(&base), count(&new)));
    }
    for comm in union(&base.processes, &new.processes) {
        let p = |s: &Summary| s.processes.get(&comm).cloned().unwrap_or_default();
        let (b, n) = (p(&base), p(&new));
        metrics.push(both(&format!("{comm}: connections"), b.opened, n.opened));
        metrics.push(both(&format!("{comm}: TIME_WAIT entries"), b.time_wait, n.time_wait));
        for (label, b, n) in [("lifetime p50 ms", b.p50, n.p50), ("lifetime p99 ms", b.p99, n.p99)]
        {
            if b.is_some() || n.is_some() {
                metrics.push(Metric {
                    name: format!("{comm}: {label}"),
                    base: b,
                    new: n,
                    gated: false,
                });
            }
        }
    }
    for remote in union(&base.remotes, &new.remotes) {
        let (b, n) = (base.remotes.get(&remote).copied(), new.remotes.get(&remote).copied());
        metrics.push(Metric {
            name: format!("-> {remote}: connections"),
            base: b,
            new: n,
            gated: b.is_some() && n.is_some(),
        });
    }
    metrics
}

/// What a report says, in the shape compared.
#[derive(Default)]
struct Summary {
    connections: f64,
    time_wait: f64,
    findings: BTreeMap<String, f64>,
    processes: BTreeMap<String, ProcessSummary>,
    remotes: BTreeMap<String, f64>,
}

#[derive(Default, Clone)]
struct ProcessSummary {
    opened: f64,
    time_wait: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Summary {
    fn of(report: &Value) -> Self {
        let mut s = Self::default();
        let items = |key: &str| report[key].as_array().cloned().unwrap_or_default();
        for p in items("processes") {
            let comm = p["comm"].as_str().unwrap_or("?").to_owned();
            let entry = s.processes.entry(comm).or_default();
            entry.opened += p["opened"].as_f64().unwrap_or(0.0);
            entry.time_wait += p["time_wait_entries"].as_f64().unwrap_or(0.0);
            // Several processes of one name: the slowest stands for them.
            let worst = |old: Option<f64>, new: Option<f64>| match (old, new) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            entry.p50 = worst(entry.p50, p["lifetime_ms"]["p50"].as_f64());
            entry.p99 = worst(entry.p99, p["lifetime_ms"]["p99"].as_f64());
            s.time_wait += p["time_wait_entries"].as_f64().unwrap_or(0.0);
        }
        for f in items("findings") {
            *s.findings.entry(f["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1.0;
        }
        let remotes = items("remotes");
        for r in &remotes {
            let connections = r["connections"].as_f64().unwrap_or(0.0);
            *s.remotes.entry(r["remote"].as_str().unwrap_or("?").to_owned()).or_default() +=
                connections;
            s.connections += connections;
        }
        // A leaks report has no remotes: its processes' opens stand for the connections.
        if remotes.is_empty() {
            s.connections = s.processes.values().map(|p| p.opened).sum();
        }
        s
    }
}

fn union<V>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

fn number(x: f64) -> String {
    // An empty sum of f64 is -0.0.
    let x = if x == 0.0 { 0.0 } else { x };
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), number)
}

/// The metrics as aligned text, regressions marked.
pub fn render_text(metrics: &[Metric], pct: f64) -> String {
    let width = metrics.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}  {:>10}  {:>10}  CHANGE\n", "METRIC", "BASE", "NEW");
    for m in metrics {
        let mark = if m.regressed(pct) { "  REGRESSED" } else { "" };
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {}{mark}",
            m.name,
            cell(m.base),
            cell(m.new),
            m.change()
        );
    }
    out
}

/// The metrics as a markdown table for a pull-request comment: what changed, then the rest
/// folded away.
pub fn render_markdown(metrics: &[Metric], pct: f64) -> String {
    let regressions = metrics.iter().filter(|m| m.regressed(pct)).count();
    let mut out = if regressions == 0 {
        format!("### tcptrace: no regression past {pct}%\n\n")
    } else {
        format!("### tcptrace: {regressions} regression(s) past {pct}%\n\n")
    };
    let row = |m: &Metric| {
        let mark = if m.regressed(pct) { " :x:" } else { "" };
        format!(
            "| {} | {} | {} | {}{mark} |\n",
            m.name.replace('|', "\\|"),
            cell(m.base),
            cell(m.new),
            m.change()
        )
    };
    let header = "| metric | base | new | change |\n|---|---:|---:|---|\n";
    let (changed, same): (Vec<&Metric>, Vec<&Metric>) =
        metrics.iter().partition(|m| m.base != m.new);
    out.push_str(header);
    for m in &changed {
        out.push_str(&row(m));
    }
    if !same.is_empty() {
        let _ = write!(out, "\n<details><summary>{} unchanged</summary>\n\n{header}", same.len());
        for m in &same {
            out.push_str(&row(m));
        }
        out.push_str("\n</details>\n");
    }
    out
}

fn load(path: &Path) -> anyhow::Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON report", path.display()))?;
    anyhow::ensure!(
        value["processes"].is_array() && value["findings"].is_array(),
        "{} is not a tcptrace report (no processes or findings)",
        path.display()
    );
    Ok(value)
}

/// The command: prints the comparison; status 3 when a metric regressed.
pub fn run(args: &CompareArgs) -> anyhow::Result<i32> {
    let metrics = diff(&load(&args.base)?, &load(&args.new)?);
    let text = if args.markdown {
        render_markdown(&metrics, args.max_regression)
    } else {
        render_text(&metrics, args.max_regression)
    };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the comparison")?,
    }
    let regressed = metrics.iter().any(|m| m.regressed(args.max_regression));
    Ok(if regressed { EXIT_BUDGET } else { 0 })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn report(opened: u64, time_wait: u64, findings: &[&str], db: u64) -> Value {
        json!({
            "processes": [
                {"comm": "pytest", "opened": opened, "time_wait_entries": time_wait,
                 "lifetime_ms": {"p50": 1.0, "p99": 4.0}},
                {"comm": "pytest", "opened": 1, "time_wait_entries": 0, "lifetime_ms": null},
            ],
            "findings": findings.iter().map(|k| json!({"kind": k})).collect::<Vec<_>>(),
            "remotes": [{"remote": "127.0.0.1:5432", "connections": db, "time_wait_entries": 0}],
        })
    }

    fn metric<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}: {metrics:#?}"))
    }

    #[test]
    fn growth_past_the_threshold_is_a_regression() {
        let metrics = diff(
            &report(10, 4, &[], 10),
            &report(12, 4, &["closed-by-exit", "closed-by-exit"], 12),
        );
        let connections = metric(&metrics, "connections");
        assert_eq!((connections.base, connections.new), (Some(10.0), Some(12.0)));
        assert!(connections.regressed(10.0) && !connections.regressed(25.0));
        let by_exit = metric(&metrics, "findings: closed-by-exit");
        assert!(by_exit.regressed(1000.0), "from zero, any growth");
        assert_eq!(metric(&metrics, "pytest: connections").new, Some(13.0), "summed by name");
        assert!(!metric(&metrics, "TIME_WAIT entries").regressed(0.0));
        let text = render_text(&metrics, 10.0);
        assert!(text.contains("REGRESSED"), "{text}");
        let markdown = render_markdown(&metrics, 10.0);
        assert!(markdown.starts_with("### tcptrace: 5 regression(s) past 10%"), "{markdown}");
        assert!(markdown.contains("| findings: closed-by-exit | 0 | 2 | +2 :x: |"), "{markdown}");
        assert!(markdown.contains("<details>"), "{markdown}");
    }

    #[test]
    fn the_same_report_has_no_regression() {
        let r = report(10, 4, &["unclosed"], 10);
        let metrics = diff(&r, &r);
        assert!(metrics.iter().all(|m| !m.regressed(0.0)));
        assert!(render_markdown(&metrics, 10.0).starts_with("### tcptrace: no regression"));
        // Lifetimes are shown, never judged.
        assert!(!metric(&metrics, "pytest: lifetime p99 ms").gated);
    }
}
