//! Up-front privilege check, so a missing capability is one clear line instead of an EPERM from
//! deep inside the loader.

use std::fs;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask of this process.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    cap_eff(&status)
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text; pure (fuzzed by `fuzz/`).
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// What is missing to load and attach tracing programs, or None when nothing is.
pub fn missing() -> Option<String> {
    let caps = effective_caps()?;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    let absent: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    Some(format!(
        "tcptrace needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {}); run it with sudo",
        absent.join(", ")
    ))
}
