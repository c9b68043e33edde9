//! The `leaks` report as text: a summary line, the warnings, then each process with its
//! counts and its findings grouped by open site.

use std::io::{self, Write};

use super::{ProcessReport, Report};
use crate::analysis::{
    aggregate::Origin,
    findings::{Finding, FindingKind},
    groups::FindingGroup,
};

impl Report {
    /// Processes with findings first, each with its counts and then its findings.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "tcptrace leaks: {:.1}s, close hook {}, {} events, {} lost, {} not tracked, {} findings",
            self.duration_s,
            self.close_hook,
            self.events,
            self.events_lost,
            self.evicted,
            self.findings.len()
        )?;
        for warning in &self.warnings {
            writeln!(out, "warning: {warning}")?;
        }
        let shown: Vec<&ProcessReport> = self
            .processes
            .iter()
            .filter(|p| p.findings > 0 || p.opened > 0 || p.open > 0)
            .collect();
        if shown.is_empty() {
            writeln!(out, "\nno TCP activity seen")?;
        }
        for p in shown {
            writeln!(out)?;
            let lifetime = p
                .lifetime_ms
                .map(|l| format!(" lifetime p50={:.1}ms p99={:.1}ms", l.p50, l.p99))
                .unwrap_or_default();
            let states: Vec<String> =
                p.open_by_state.iter().map(|(s, n)| format!("{s}={n}")).collect();
            writeln!(
                out,
                "{} ({}){}{}: opened {}, released {}, open {}{}, TIME_WAIT {:.2}/s{}",
                p.comm,
                p.pid,
                p.container.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default(),
                if p.exited { " [exited]" } else { "" },
                p.opened,
                p.released,
                p.open,
                if states.is_empty() { String::new() } else { format!(" ({})", states.join(" ")) },
                p.time_wait_per_s,
                lifetime
            )?;
            for g in self.groups.iter().filter(|g| g.pid == p.pid) {
                match self.findings.get(g.first_finding) {
                    Some(f) if g.findings == 1 => write_finding(out, f)?,
                    _ => write_group_line(out, g)?,
                }
                write_group_details(out, g)?;
            }
        }
        if !self.exited_processes.is_empty() {
            writeln!(out, "\nexited processes, by name:")?;
        }
        for e in &self.exited_processes {
            let lifetime = e
                .lifetime_ms
                .map(|l| format!(" lifetime p50={:.1}ms p99={:.1}ms", l.p50, l.p99))
                .unwrap_or_default();
            writeln!(
                out,
                "  {} ×{}: opened {}, released {}, TIME_WAIT entries {}{}",
                e.comm, e.processes, e.opened, e.released, e.time_wait_entries, lifetime
            )?;
        }
        if self.findings.is_empty() {
            writeln!(out, "\nno findings")?;
        }
        Ok(())
    }
}

/// Frames of a stack the text report shows; JSON has them all.
const TEXT_FRAMES: usize = 12;

/// A group of several findings in one line: kind, count, oldest age, the main remotes.
fn write_group_line(out: &mut impl Write, g: &FindingGroup) -> io::Result<()> {
    let mut remotes: Vec<String> =
        g.remotes.iter().take(3).map(|r| format!("{} ×{}", r.remote, r.count)).collect();
    if g.remotes_total > 3 {
        remotes.push(format!("+{} more", g.remotes_total - 3));
    }
    let what = match g.kind {
        FindingKind::TimeWaitChurn => format!("{} TIME_WAIT entries", g.count),
        _ => format!("{} sockets", g.count),
    };
    let oldest =
        g.oldest_age.map(|a| format!(", oldest {:.0}s", a.as_secs_f64())).unwrap_or_default();
    let fds: Vec<String> = g.fds.iter().take(8).map(i32::to_string).collect();
    let fds = match g.fds.len() {
        0 => String::new(),
        n if n > 8 => format!(", fds {} ...", fds.join(" ")),
        _ => format!(", fds {}", fds.join(" ")),
    };
    writeln!(out, "  {:<17} {what}{oldest}{fds} -> {}", g.kind.name(), remotes.join(", "))
}

/// Under a group's first line: the open site and the stack, then the explanation and the fix.
fn write_group_details(out: &mut impl Write, g: &FindingGroup) -> io::Result<()> {
    if let Some(site) = &g.site {
        writeln!(out, "      opened at {site}")?;
    }
    writeln!(out, "      {}; fix: {}", g.explanation, g.fix)?;
    if let Some(stack) = &g.stack {
        // The system-call plumbing before the program's own frames, and the runtime's start-up
        // after main, are in the JSON report.
        let own = stack.to_main();
        let frames = if own.is_empty() { &stack.frames[..] } else { own };
        for frame in frames.iter().take(TEXT_FRAMES) {
            writeln!(out, "        {}", frame.display())?;
        }
        if frames.len() > TEXT_FRAMES {
            writeln!(out, "        ... {} more frames (--json)", frames.len() - TEXT_FRAMES)?;
        }
        if stack.truncated {
            writeln!(out, "        (stack cut short: code without frame pointers, or too deep)")?;
        }
        if stack.deferred() {
            writeln!(
                out,
                "        (Node ran this connect() on a later tick: the function that asked for \
                 it had returned, so only Node's own frames are here)"
            )?;
        }
    }
    Ok(())
}

fn write_finding(out: &mut impl Write, f: &Finding) -> io::Result<()> {
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    match f.kind {
        FindingKind::TimeWaitChurn => writeln!(
            out,
            "  {:<17} -> {}  {:.1}/s ({} entries), {:.1}% of the ephemeral ports",
            f.kind.name(),
            addr(f.remote),
            f.rate_per_s.unwrap_or(0.0),
            f.count,
            f.port_share.unwrap_or(0.0) * 100.0
        )?,
        _ => {
            let idle = f.idle.map(|i| format!(" idle {:.0}s", i.as_secs_f64())).unwrap_or_default();
            let keepalive = match f.keepalive {
                Some(true) => " keepalive on",
                Some(false) => " keepalive off",
                None => "",
            };
            let fd = f.fd.map_or("-".to_owned(), |fd| fd.to_string());
            let age = f.age.map_or(0.0, |a| a.as_secs_f64());
            writeln!(
                out,
                "  {:<17} fd {fd:<4} {} -> {}  {} for {age:.0}s{idle}{keepalive}{}",
                f.kind.name(),
                addr(f.local),
                addr(f.remote),
                f.state,
                if f.source == Origin::Inventory { " (before tracing)" } else { "" }
            )?;
        }
    }
    Ok(())
}
