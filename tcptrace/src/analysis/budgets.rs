//! `tcptrace run`'s budgets: each one a verdict with the measured value and, when exceeded, the
//! processes and code paths responsible. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analysis::{
    aggregate::Aggregator,
    findings::{Finding, FindingKind},
    groups::FindingGroup,
};

/// The budgets of one run; each unset one is not judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    /// Findings of any kind allowed.
    pub max_leaks: Option<u64>,
    /// closed-by-exit findings allowed.
    pub max_closed_by_exit: Option<u64>,
    /// TIME_WAIT entries per second toward one remote allowed, per process.
    pub max_time_wait_rate: Option<f64>,
    /// connect() calls allowed, all processes together.
    pub max_connections: Option<u64>,
    /// Findings of one kind allowed (overrides `max_leaks` for that kind).
    pub max_kind: Vec<(FindingKind, u64)>,
}

/// One budget's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The flag that set it: `max-leaks`, `max-closed-by-exit`, `max-time-wait-rate`,
    /// `max-connections`, or `max close-wait` (a per-kind budget).
    pub budget: String,
    pub limit: f64,
    pub measured: f64,
    pub passed: bool,
    /// Who made up the measured value, largest first (when exceeded, at most 10).
    pub offenders: Vec<Offender>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offender {
    /// The process, or null for a remote (`max-connections`).
    pub pid: Option<u32>,
    /// The process name, or the remote `ip:port`.
    pub name: String,
    pub value: f64,
    /// Open sites of its findings (`db_checkout (leaky.c:87) ← handle_orders (leaky.c:93)`).
    pub sites: Vec<String>,
}

const MAX_OFFENDERS: usize = 10;

/// What a run measured, for the budgets.
pub struct Measured<'a> {
    pub findings: &'a [Finding],
    pub groups: &'a [FindingGroup],
    pub agg: &'a Aggregator,
}

/// The verdict of every budget set, in flag order.
pub fn check(budgets: &Budgets, m: &Measured<'_>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    if let Some(max) = budgets.max_leaks {
        verdicts.push(findings_verdict("max-leaks".to_owned(), max, m, |_| true));
    }
    if let Some(max) = budgets.max_closed_by_exit {
        verdicts.push(findings_verdict("max-closed-by-exit".to_owned(), max, m, |k| {
            k == FindingKind::ClosedByExit
        }));
    }
    for &(kind, max) in &budgets.max_kind {
        verdicts.push(findings_verdict(format!("max {}", kind.name()), max, m, |k| k == kind));
    }
    if let Some(max) = budgets.max_time_wait_rate {
        verdicts.push(time_wait_verdict(max, m.agg));
    }
    if let Some(max) = budgets.max_connections {
        verdicts.push(connections_verdict(max, m.agg));
    }
    verdicts
}

fn verdict(budget: String, limit: f64, measured: f64, mut offenders: Vec<Offender>) -> Verdict {
    let passed = measured <= limit;
    offenders.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.name.cmp(&b.name)));
    offenders.truncate(MAX_OFFENDERS);
    Verdict { budget, limit, measured, passed, offenders }
}

/// Findings of the kinds `counts` selects, by process with their groups' sites.
fn findings_verdict(
    budget: String,
    max: u64,
    m: &Measured<'_>,
    counts: impl Fn(FindingKind) -> bool,
) -> Verdict {
    let measured = m.findings.iter().filter(|f| counts(f.kind)).count();
    let mut by_pid: BTreeMap<u32, Offender> = BTreeMap::new();
    for g in m.groups.iter().filter(|g| counts(g.kind)) {
        let offender = by_pid.entry(g.pid).or_insert_with(|| Offender {
            pid: Some(g.pid),
            name: g.comm.clone(),
            value: 0.0,
            sites: Vec::new(),
        });
        offender.value += g.findings as f64;
        let site = match &g.site {
            Some(site) => format!("{} ×{}: {site}", g.kind.name(), g.findings),
            None => format!("{} ×{} (no code path)", g.kind.name(), g.findings),
        };
        offender.sites.push(site);
    }
    verdict(budget, max as f64, measured as f64, by_pid.into_values().collect())
}

/// The highest TIME_WAIT rate of one process toward one remote.
fn time_wait_verdict(max: f64, agg: &Aggregator) -> Verdict {
    let mut measured: f64 = 0.0;
    let mut offenders = Vec::new();
    for (pid, remote, counter) in agg.churn.iter() {
        // As for the churn finding: one entry is no rate.
        if counter.entries < 2 {
            continue;
        }
        let rate = counter.rate_per_s();
        measured = measured.max(rate);
        if rate > max {
            let comm = agg.processes.get(&pid).map(|p| p.comm.clone()).unwrap_or_default();
            let site = counter.stack.as_ref().and_then(|s| s.site());
            offenders.push(Offender {
                pid: Some(pid),
                name: comm,
                value: (rate * 100.0).round() / 100.0,
                sites: vec![format!(
                    "-> {remote}: {} entries{}",
                    counter.entries,
                    site.map(|s| format!(", opened at {s}")).unwrap_or_default()
                )],
            });
        }
    }
    verdict("max-time-wait-rate".to_owned(), max, (measured * 100.0).round() / 100.0, offenders)
}

/// connect() calls, all processes together; the offenders are the remotes.
fn connections_verdict(max: u64, agg: &Aggregator) -> Verdict {
    let remotes = &agg.remotes;
    let measured: u64 =
        remotes.by_remote.values().map(|r| r.connections).sum::<u64>() + remotes.other.connections;
    let offenders = remotes
        .by_remote
        .iter()
        .map(|(remote, stats)| Offender {
            pid: None,
            name: remote.to_string(),
            value: stats.connections as f64,
            sites: Vec::new(),
        })
        .collect();
    verdict("max-connections".to_owned(), max as f64, measured as f64, offenders)
}

/// One line per verdict, and for a failed one its offenders: the human summary of `run`.
pub fn describe(verdicts: &[Verdict]) -> Vec<String> {
    let mut lines = Vec::new();
    for v in verdicts {
        let (mark, relation) = if v.passed { ("ok", "<=") } else { ("EXCEEDED", ">") };
        lines.push(format!(
            "budget {}: {mark}: {} {relation} {}",
            v.budget,
            number(v.measured),
            number(v.limit)
        ));
        if v.passed {
            continue;
        }
        for o in &v.offenders {
            let who = match o.pid {
                Some(pid) => format!("{} ({pid})", o.name),
                None => o.name.clone(),
            };
            lines.push(format!("  {who}: {}", number(o.value)));
            for site in &o.sites {
                lines.push(format!("    {site}"));
            }
        }
    }
    lines
}

/// `3`, `2.5`: integers without a fraction.
fn number(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        analysis::groups::group,
        event::TcpState,
        stacks::{OpenStack, StackKey},
        symbolize::Frame,
    };

    fn finding(pid: u32, kind: FindingKind, function: Option<&str>) -> Finding {
        let stack = function.map(|function| {
            Arc::new(OpenStack {
                key: StackKey::native(Some(function.len() as u32), None),
                frames: vec![Frame {
                    addr: 0x5555_0000_1000,
                    symbol: Some(function.to_owned()),
                    file: Some("/src/app.c".to_owned()),
                    line: Some(12),
                    module: Some("/usr/bin/app".to_owned()),
                }],
                truncated: false,
            })
        });
        Finding {
            fd: Some(3),
            remote: Some("10.0.0.5:5432".parse().unwrap()),
            age: Some(Duration::from_secs(1)),
            stack,
            ..Finding::new(kind, pid, format!("app{pid}"), TcpState::Established)
        }
    }

    #[test]
    fn budgets_name_the_processes_and_sites_that_exceed_them() {
        let findings = vec![
            finding(7, FindingKind::ClosedByExit, Some("db_checkout")),
            finding(7, FindingKind::ClosedByExit, Some("db_checkout")),
            finding(8, FindingKind::ClosedByExit, None),
            finding(8, FindingKind::CloseWait, Some("fetch")),
        ];
        let groups = group(&findings);
        let agg = Aggregator::new(1);
        let budgets = Budgets {
            max_leaks: Some(4),
            max_closed_by_exit: Some(2),
            max_kind: vec![(FindingKind::CloseWait, 0)],
            ..Budgets::default()
        };
        let verdicts =
            check(&budgets, &Measured { findings: &findings, groups: &groups, agg: &agg });
        let summary: Vec<_> =
            verdicts.iter().map(|v| (v.budget.as_str(), v.measured, v.passed)).collect();
        assert_eq!(
            summary,
            [
                ("max-leaks", 4.0, true),
                ("max-closed-by-exit", 3.0, false),
                ("max close-wait", 1.0, false)
            ]
        );
        let by_exit = &verdicts[1];
        assert_eq!(by_exit.offenders[0].pid, Some(7));
        assert_eq!(by_exit.offenders[0].value, 2.0);
        assert_eq!(by_exit.offenders[0].sites, ["closed-by-exit ×2: db_checkout (app.c:12)"]);
        assert_eq!(by_exit.offenders[1].sites, ["closed-by-exit ×1 (no code path)"]);
        let text = describe(&verdicts).join("\n");
        assert!(text.contains("budget max-closed-by-exit: EXCEEDED: 3 > 2"), "{text}");
        assert!(text.contains("app7 (7): 2"), "{text}");
        assert!(text.contains("budget max-leaks: ok: 4 <= 4"), "{text}");
    }

    #[test]
    fn no_budget_no_verdict() {
        let agg = Aggregator::new(1);
        let m = Measured { findings: &[], groups: &[], agg: &agg };
        assert!(check(&Budgets::default(), &m).is_empty());
        let connections = Budgets { max_connections: Some(0), ..Budgets::default() };
        let verdicts = check(&connections, &m);
        assert_eq!((verdicts[0].measured, verdicts[0].passed), (0.0, true));
    }
}
