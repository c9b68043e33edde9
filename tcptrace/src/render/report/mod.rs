//! The `tcptrace leaks` report: one JSON document (schema in README) or text by process, each
//! process's findings grouped by open site.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

mod text;

use crate::{
    analysis::{
        aggregate::{Aggregator, Percentiles},
        findings::{Finding, Limits},
        groups::{FindingGroup, group},
    },
    container::Container,
    kernel::close_hook::CloseHook,
    pipeline::losses::Losses,
};

#[derive(Debug, Serialize)]
pub struct Report {
    pub close_hook: CloseHook,
    pub duration_s: f64,
    pub events: u64,
    /// Events the kernel could not deliver: ring buffer full, or runs it skipped.
    pub events_lost: u64,
    pub evicted: u64,
    pub sweeps: u64,
    /// Opens whose stack could not be captured or read.
    pub stack_failures: u64,
    /// Kernel reads that failed: events dropped or sent incomplete.
    pub read_failures: u64,
    pub limits: Limits,
    pub warnings: Vec<String>,
    pub processes: Vec<ProcessReport>,
    /// Exited processes folded by task name: what they did, not who they were.
    pub exited_processes: Vec<ExitedReport>,
    /// The findings by (process, kind, open site).
    pub groups: Vec<FindingGroup>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    /// Its container (`null` on the host), and its cgroup path (`null` when unknown).
    pub container: Option<Container>,
    pub cgroup: Option<String>,
    pub opened: u64,
    pub released: u64,
    /// Sockets it holds now.
    pub open: u64,
    pub open_by_state: BTreeMap<&'static str, u64>,
    pub time_wait_entries: u64,
    pub time_wait_per_s: f64,
    pub lifetime_ms: Option<Percentiles>,
    pub connect_latency_ms: Option<Percentiles>,
    pub exited: bool,
    pub findings: u64,
}

/// Processes of one name that exited holding nothing and owing no finding, folded together
/// (the aggregator frees them).
#[derive(Debug, Serialize)]
pub struct ExitedReport {
    pub comm: String,
    /// Processes folded in.
    pub processes: u64,
    pub opened: u64,
    pub released: u64,
    pub time_wait_entries: u64,
    pub lifetime_ms: Option<Percentiles>,
    pub connect_latency_ms: Option<Percentiles>,
}

/// What the run itself says about its completeness.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo {
    pub close_hook: CloseHook,
    pub duration: Duration,
    /// Kernel events decoded.
    pub events: u64,
    pub losses: Losses,
}

impl Report {
    pub fn build(
        agg: &Aggregator,
        findings: Vec<Finding>,
        limits: Limits,
        run: &RunInfo,
        mut warnings: Vec<String>,
    ) -> Self {
        let RunInfo { close_hook, duration, events, losses } = *run;
        warnings.extend(losses.warnings());
        warnings.extend(completeness_warnings(agg, &losses));
        Self {
            close_hook,
            duration_s: round2(duration.as_secs_f64()),
            events,
            events_lost: losses.events_lost(),
            evicted: agg.evicted,
            sweeps: agg.sweeps,
            stack_failures: losses.stack_failures(),
            read_failures: losses.kernel.read_failures,
            limits,
            warnings,
            processes: process_reports(agg, &findings, duration),
            exited_processes: exited_reports(agg),
            groups: group(&findings),
            findings,
        }
    }

    pub fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

/// What the losses and the aggregator's limits mean for the findings.
fn completeness_warnings(agg: &Aggregator, losses: &Losses) -> Vec<String> {
    let mut warnings = Vec::new();
    if losses.events_lost() > 0 {
        warnings.push(
            "findings may be wrong where events were lost: a lost release makes a closed socket \
             look held (unclosed, close-wait, dead-fd may be false), a lost TIME_WAIT entry lowers \
             time-wait-churn rates"
                .to_owned(),
        );
    }
    if agg.evicted > 0 {
        warnings.push(format!(
            "{} sockets were not tracked (table full): findings about them are missing",
            agg.evicted
        ));
    }
    if agg.ended_unseen > 0 {
        warnings.push(format!(
            "{} held sockets were found gone by a sweep although no event said so (their \
             events were lost): no longer counted as open, and their releases are missing from \
             `released`",
            agg.ended_unseen
        ));
    }
    if agg.exit_releases.dropped > 0 {
        warnings.push(format!(
            "{} closed-by-exit sockets beyond the first {} were not kept",
            agg.exit_releases.dropped,
            agg.exit_releases.kept.len()
        ));
    }
    warnings
}

/// Every process seen, those with findings first, then by sockets held and opened.
fn process_reports(
    agg: &Aggregator,
    findings: &[Finding],
    duration: Duration,
) -> Vec<ProcessReport> {
    let mut held = agg.held_by_process();
    let mut per_pid_findings: BTreeMap<u32, u64> = BTreeMap::new();
    for f in findings {
        *per_pid_findings.entry(f.pid).or_default() += 1;
    }
    let secs = duration.as_secs_f64().max(1e-3);
    let mut processes: Vec<ProcessReport> = agg
        .processes
        .iter()
        .map(|(&pid, stats)| {
            let open_by_state: BTreeMap<&'static str, u64> = held
                .remove(&pid)
                .unwrap_or_default()
                .into_iter()
                .map(|(state, n)| (state.name(), n))
                .collect();
            ProcessReport {
                pid,
                comm: stats.comm.clone(),
                container: stats.cgroup.as_ref().and_then(|c| c.container.clone()),
                cgroup: stats.cgroup.as_ref().map(|c| c.path.clone()),
                opened: stats.opened,
                released: stats.released,
                open: open_by_state.values().sum(),
                open_by_state,
                time_wait_entries: stats.time_wait_entries,
                time_wait_per_s: round2(stats.time_wait_entries as f64 / secs),
                lifetime_ms: Percentiles::of(&stats.lifetime_us),
                connect_latency_ms: Percentiles::of(&stats.connect_latency_us),
                exited: stats.exited,
                findings: per_pid_findings.get(&pid).copied().unwrap_or(0),
            }
        })
        .collect();
    processes.sort_by(|a, b| {
        (b.findings, b.open, b.opened, a.pid).cmp(&(a.findings, a.open, a.opened, b.pid))
    });
    processes
}

/// The folded exited processes, most connections first.
fn exited_reports(agg: &Aggregator) -> Vec<ExitedReport> {
    let mut exited: Vec<ExitedReport> = agg
        .folded
        .by_comm
        .iter()
        .map(|(comm, folded)| ExitedReport {
            comm: comm.clone(),
            processes: folded.processes,
            opened: folded.stats.opened,
            released: folded.stats.released,
            time_wait_entries: folded.stats.time_wait_entries,
            lifetime_ms: Percentiles::of(&folded.stats.lifetime_us),
            connect_latency_ms: Percentiles::of(&folded.stats.connect_latency_us),
        })
        .collect();
    exited.sort_by(|a, b| (b.opened, &a.comm).cmp(&(a.opened, &b.comm)));
    exited
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::findings::detect,
        event::{Comm, Endpoints, TcpState},
        kernel::counters::Counters,
        pipeline::connections::{Record, RecordKind},
    };

    /// A report with one process, lifetimes and one finding of each shape.
    fn sample() -> serde_json::Value {
        let mut out = Vec::new();
        sample_report().write_json(&mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn sample_report() -> Report {
        let mut agg = Aggregator::new(16);
        let endpoints = Endpoints {
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
        };
        let record = |ts_s: u64, skaddr: u64, kind| Record {
            ts_ns: ts_s * 1_000_000_000,
            kind,
            pid: Some(7),
            tid: Some(7),
            comm: Some(Comm::from("client")),
            fd: Some(3),
            skaddr,
            endpoints: Some(endpoints),
            stack: None,
            cgroup: None,
        };
        let stack = crate::stacks::OpenStack {
            key: crate::stacks::StackKey::native(Some(1), None),
            frames: vec![crate::symbolize::Frame {
                addr: 0x5555_0000_1000,
                symbol: Some("db_checkout".to_owned()),
                file: Some("/src/leaky.c".to_owned()),
                line: Some(87),
                module: Some("/usr/bin/leaky".to_owned()),
            }],
            truncated: false,
        };
        agg.apply(&Record {
            stack: Some(std::sync::Arc::new(stack)),
            ..record(1, 1, RecordKind::Connect)
        });
        agg.apply(&record(
            1,
            1,
            RecordKind::State { old: TcpState::SynSent, new: TcpState::Established },
        ));
        agg.apply(&record(
            1,
            1,
            RecordKind::State { old: TcpState::Established, new: TcpState::CloseWait },
        ));
        for i in 0..10 {
            agg.apply(&record(i, 2, RecordKind::Connect));
            agg.apply(&record(
                i,
                2,
                RecordKind::Release { reason: crate::event::ReleaseReason::Close },
            ));
            agg.apply(&record(i, 2, RecordKind::TimeWait { from: TcpState::FinWait2 }));
            agg.apply(&record(
                i,
                2,
                RecordKind::Close {
                    from: TcpState::FinWait2,
                    reset: false,
                    lifetime_ns: Some(1_000_000),
                },
            ));
        }
        // A short-lived process: one connection, then its exit; folded at the sweep.
        let short =
            |kind| Record { pid: Some(8), comm: Some(Comm::from("curl")), ..record(2, 3, kind) };
        agg.apply(&short(RecordKind::Connect));
        agg.apply(&short(RecordKind::Exit));
        agg.apply(&short(RecordKind::Release { reason: crate::event::ReleaseReason::Exit }));
        agg.apply(&short(RecordKind::Close {
            from: TcpState::FinWait2,
            reset: false,
            lifetime_ns: Some(2_000_000),
        }));
        agg.fold_exited();
        let limits = Limits {
            min_age: Duration::from_secs(1),
            idle: Duration::from_secs(600),
            time_wait_rate: 0.5,
            ephemeral_ports: 28232,
        };
        let findings = detect(&agg, &limits, 100 * 1_000_000_000);
        Report::build(
            &agg,
            findings,
            limits,
            &RunInfo {
                close_hook: CloseHook::Tracepoint,
                duration: Duration::from_secs(100),
                events: 0,
                losses: Losses {
                    kernel: Counters { lost_events: 1, read_failures: 2, ..Counters::default() },
                    ..Losses::default()
                },
            },
            vec![],
        )
    }

    #[test]
    fn losses_and_read_failures_are_reported() {
        let report = sample();
        assert_eq!(
            (report["events_lost"].as_u64(), report["read_failures"].as_u64()),
            (Some(1), Some(2))
        );
        let warnings: Vec<&str> =
            report["warnings"].as_array().unwrap().iter().filter_map(|w| w.as_str()).collect();
        assert!(warnings.iter().any(|w| w.starts_with("1 events lost")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.starts_with("2 kernel reads failed")), "{warnings:?}");
    }

    #[test]
    fn every_json_field_is_documented_in_the_readme() {
        let readme = include_str!("../../../../README.md");
        let section = readme
            .split("### The JSON report")
            .nth(1)
            .expect("README has the JSON report section")
            .split("\n## ")
            .next()
            .unwrap();
        let report = sample();
        let documented = |key: &str| {
            section.contains(&format!("`{key}`")) || section.contains(&format!("`{key}[]`"))
        };
        let objects = [
            ("report", &report),
            ("process", &report["processes"][0]),
            ("finding", &report["findings"][0]),
            ("finding", &report["findings"][1]),
            ("limits", &report["limits"]),
            ("group", &report["groups"][0]),
            ("frame", &report["findings"][0]["stack"][0]),
            ("remote", &report["groups"][0]["remotes"][0]),
            ("lifetimes", &report["processes"][0]["lifetime_ms"]),
            ("exited", &report["exited_processes"][0]),
        ];
        for (what, object) in objects {
            let object =
                object.as_object().unwrap_or_else(|| panic!("{what} is an object: {report:#}"));
            for key in object.keys() {
                assert!(documented(key), "{what} field `{key}` is not in README's JSON table");
            }
        }
        let kinds: Vec<_> =
            report["findings"].as_array().unwrap().iter().map(|f| f["kind"].clone()).collect();
        assert_eq!(kinds, ["close-wait", "time-wait-churn"]);
        assert_eq!(report["findings"][0]["stack"][0]["symbol"], "db_checkout");
        assert_eq!(report["groups"].as_array().unwrap().len(), 2);
        assert_eq!(report["events_lost"], 1);
        assert_eq!(report["processes"].as_array().unwrap().len(), 1, "curl is folded");
        assert_eq!(report["exited_processes"][0]["comm"], "curl");
        assert_eq!(report["exited_processes"][0]["lifetime_ms"]["p50"], 2.0);
        // The two losses, and what lost events mean for the findings.
        assert_eq!(report["warnings"].as_array().unwrap().len(), 3, "{}", report["warnings"]);
    }

    #[test]
    fn text_report_lists_exited_processes_by_name() {
        let mut out = Vec::new();
        sample_report().write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("exited processes, by name:"), "{text}");
        assert!(
            text.contains("curl ×1: opened 1, released 1, TIME_WAIT entries 0 lifetime p50=2.0ms"),
            "{text}"
        );
    }

    #[test]
    fn text_report_groups_findings_under_their_process() {
        let report = {
            let mut agg = Aggregator::new(4);
            let record = Record {
                ts_ns: 0,
                kind: RecordKind::Connect,
                pid: Some(9),
                tid: Some(9),
                comm: Some(Comm::from("leaky")),
                fd: Some(5),
                skaddr: 1,
                endpoints: None,
                stack: None,
                cgroup: None,
            };
            agg.apply(&record);
            let limits = Limits {
                min_age: Duration::ZERO,
                idle: Duration::from_secs(600),
                time_wait_rate: 1.0,
                ephemeral_ports: 100,
            };
            Report::build(
                &agg,
                vec![],
                limits,
                &RunInfo {
                    close_hook: CloseHook::Fentry,
                    duration: Duration::from_secs(1),
                    events: 1,
                    losses: Losses::default(),
                },
                vec![],
            )
        };
        let mut out = Vec::new();
        report.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("close hook fentry"), "{text}");
        assert!(text.contains("leaky (9): opened 1, released 0, open 1 (SYN_SENT=1)"), "{text}");
        assert!(text.contains("no findings"), "{text}");
    }
}
