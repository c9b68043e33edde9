//! Where the time goes in the kernel: each BPF program's run time and run count, as the kernel
//! keeps them while `kernel.bpf_stats_enabled` is 1, read with `bpftool prog show --json`.
//! A configuration's BPF cost is what its own programs (the ones loaded after the round began)
//! ran while the workload ran.

use std::{collections::HashMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run statistics on while it lives; the previous setting back when dropped.
pub struct Enabled {
    previous: String,
}

impl Enabled {
    pub fn new() -> Result<Self> {
        let previous = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(Self { previous: previous.trim().to_owned() })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.previous);
    }
}

/// One program's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgStat {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program, by id.
pub type Snapshot = HashMap<u64, ProgStat>;

pub fn snapshot() -> Result<Snapshot> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (cargo xtask bench installs it)")?;
    if !out.status.success() {
        bail!("bpftool prog show: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(json: &str) -> Result<Snapshot> {
    let progs: serde_json::Value = serde_json::from_str(json).context("bpftool's JSON")?;
    let progs = progs.as_array().context("bpftool printed no array")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let stat = ProgStat {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                // Absent until the program ran with statistics on.
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            };
            Some((p["id"].as_u64()?, stat))
        })
        .collect())
}

/// What the programs not in `existing` ran between `from` and `to`, by program name (several
/// programs of one name, e.g. two attachments, add up), most expensive first.
pub fn ran(existing: &Snapshot, from: &Snapshot, to: &Snapshot) -> Vec<ProgStat> {
    let mut by_name: HashMap<&str, ProgStat> = HashMap::new();
    for (id, end) in to.iter().filter(|(id, _)| !existing.contains_key(id)) {
        let start = from.get(id).cloned().unwrap_or_default();
        let stat = by_name
            .entry(&end.name)
            .or_insert_with(|| ProgStat { name: end.name.clone(), ..ProgStat::default() });
        stat.run_time_ns += end.run_time_ns.saturating_sub(start.run_time_ns);
        stat.run_cnt += end.run_cnt.saturating_sub(start.run_cnt);
    }
    let mut ran: Vec<ProgStat> = by_name.into_values().filter(|s| s.run_cnt > 0).collect();
    ran.sort_by(|a, b| b.run_time_ns.cmp(&a.run_time_ns).then_with(|| a.name.cmp(&b.name)));
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_programs_count_and_only_what_they_ran_meanwhile() {
        let before =
            parse(r#"[{"id": 3, "name": "systemd", "run_time_ns": 5, "run_cnt": 1}]"#).unwrap();
        let from = parse(
            r#"[{"id": 3, "name": "systemd", "run_time_ns": 50, "run_cnt": 10},
                {"id": 7, "name": "state", "run_time_ns": 1000, "run_cnt": 2},
                {"id": 8, "name": "state", "run_time_ns": 0, "run_cnt": 0},
                {"id": 9, "name": "exit"}]"#,
        )
        .unwrap();
        let to = parse(
            r#"[{"id": 3, "name": "systemd", "run_time_ns": 9000, "run_cnt": 90},
                {"id": 7, "name": "state", "run_time_ns": 5000, "run_cnt": 10},
                {"id": 8, "name": "state", "run_time_ns": 600, "run_cnt": 2},
                {"id": 9, "name": "exit"}]"#,
        )
        .unwrap();
        let ran = ran(&before, &from, &to);
        assert_eq!(ran, [ProgStat { name: "state".into(), run_time_ns: 4600, run_cnt: 10 }]);
    }
}
