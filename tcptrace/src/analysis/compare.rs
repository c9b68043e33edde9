//! What changed between two reports (of `run --report` or `leaks --json`): totals, then by
//! process, then by remote, and whether each grew past a threshold. Processes are matched by
//! name (pids differ between runs), remotes by `ip:port`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The part of a report (`run --report`, `leaks --json`) that `compare` reads, typed: a report
/// of another shape is refused with the field and line at fault, and everything else in it
/// (stacks, findings' details) is skipped while parsing, so a large report costs little memory.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportDoc {
    processes: Vec<ProcessDoc>,
    /// Exited processes folded by name (absent from reports of older versions).
    #[serde(default)]
    exited_processes: Vec<ProcessDoc>,
    findings: Vec<FindingDoc>,
    /// Only in `run --report`.
    #[serde(default)]
    remotes: Vec<RemoteDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct ProcessDoc {
    comm: String,
    opened: f64,
    time_wait_entries: f64,
    lifetime_ms: Option<LifetimeDoc>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct LifetimeDoc {
    p50: f64,
    p99: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct FindingDoc {
    kind: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteDoc {
    remote: String,
    connections: f64,
}

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
}

/// The metrics of two reports, in a stable order: totals, then by process, then by remote.
pub fn diff(base: &ReportDoc, new: &ReportDoc) -> Vec<Metric> {
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
    fn of(report: &ReportDoc) -> Self {
        let mut s = Self::default();
        // Exited processes folded by name (`exited_processes`) count as that name's.
        for p in report.processes.iter().chain(&report.exited_processes) {
            let entry = s.processes.entry(p.comm.clone()).or_default();
            entry.opened += p.opened;
            entry.time_wait += p.time_wait_entries;
            // Several processes of one name: the slowest stands for them.
            let worst = |old: Option<f64>, new: Option<f64>| match (old, new) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            entry.p50 = worst(entry.p50, p.lifetime_ms.map(|l| l.p50));
            entry.p99 = worst(entry.p99, p.lifetime_ms.map(|l| l.p99));
            s.time_wait += p.time_wait_entries;
        }
        for f in &report.findings {
            *s.findings.entry(f.kind.clone()).or_default() += 1.0;
        }
        for r in &report.remotes {
            *s.remotes.entry(r.remote.clone()).or_default() += r.connections;
            s.connections += r.connections;
        }
        // A leaks report has no remotes: its processes' opens stand for the connections.
        if report.remotes.is_empty() {
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

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn report(opened: u64, time_wait: u64, findings: &[&str], db: u64) -> ReportDoc {
        serde_json::from_value(json!({
            "processes": [
                {"comm": "pytest", "opened": opened, "time_wait_entries": time_wait,
                 "lifetime_ms": {"p50": 1.0, "p99": 4.0}},
                {"comm": "pytest", "opened": 1, "time_wait_entries": 0, "lifetime_ms": null},
            ],
            "findings": findings.iter().map(|k| json!({"kind": k})).collect::<Vec<_>>(),
            "remotes": [{"remote": "127.0.0.1:5432", "connections": db, "time_wait_entries": 0}],
        }))
        .expect("a report")
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
    }

    #[test]
    fn the_same_report_has_no_regression() {
        let r = report(10, 4, &["unclosed"], 10);
        let metrics = diff(&r, &r);
        assert!(metrics.iter().all(|m| !m.regressed(0.0)));
        // Lifetimes are shown, never judged.
        assert!(!metric(&metrics, "pytest: lifetime p99 ms").gated);
    }

    #[test]
    fn a_report_of_another_shape_is_refused_with_its_field() {
        let bad = serde_json::from_value::<ReportDoc>(json!({
            "processes": [], "findings": [], "remotes": "x"
        }));
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("invalid type: string \"x\", expected a sequence"), "{err}");
        let missing = serde_json::from_value::<ReportDoc>(json!({"findings": []}));
        assert!(missing.unwrap_err().to_string().contains("missing field `processes`"));
        // A leaks report has no remotes.
        assert!(
            serde_json::from_value::<ReportDoc>(json!({"processes": [], "findings": []})).is_ok()
        );
    }
}
