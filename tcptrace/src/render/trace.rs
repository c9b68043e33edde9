//! Renders `tcptrace trace` records as aligned text columns or JSON lines.
//!
//! JSON field names are part of the interface (README "JSON fields"): every record has every
//! field, `null` where it does not apply, so consumers never branch on presence.

use std::{
    borrow::Cow,
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    container::{Container, Runtime},
    event::{Comm, clock::local_time_of_day},
    kernel::close_hook::CloseHook,
    pipeline::{
        Sink,
        connections::{Record, RecordKind},
    },
    stacks::OpenStack,
};

/// Maps the kernel's CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_ns: u64,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono_ns = (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64;
        Self { mono_ns, wall: SystemTime::now() }
    }

    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        if ts_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(ts_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - ts_ns)
        }
    }
}

fn event_name(kind: &RecordKind) -> &'static str {
    match kind {
        RecordKind::Connect => "connect",
        RecordKind::Accept { .. } => "accept",
        RecordKind::State { .. } => "state",
        RecordKind::Release { .. } => "release",
        RecordKind::TimeWait { .. } => "time-wait",
        RecordKind::Close { .. } => "close",
        RecordKind::Exit => "exit",
    }
}

fn lifetime_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub enum Format {
    Text,
    Json,
}

pub struct Renderer<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    close_hook: CloseHook,
    /// Whether the CONTAINER column is shown: from the first record of a process in a
    /// container on (the header is printed again then).
    container_column: bool,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    ts: String,
    ts_ns: u64,
    event: &'static str,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<Cow<'a, str>>,
    fd: Option<i32>,
    family: Option<&'static str>,
    laddr: Option<String>,
    lport: Option<u16>,
    raddr: Option<String>,
    rport: Option<u16>,
    old_state: Option<&'static str>,
    new_state: Option<&'static str>,
    reason: Option<&'static str>,
    reset: Option<bool>,
    lifetime_ms: Option<f64>,
    skaddr: String,
    close_hook: &'static str,
    stack: Option<&'a OpenStack>,
    /// With a stack: whether it stops short of a `main` or a thread's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_truncated: Option<bool>,
    /// The process's cgroup path, and its container.
    cgroup: Option<&'a str>,
    container: Option<&'a Container>,
}

/// `trace` renders the pipeline's records as they come.
impl<W: Write> Sink for Renderer<W> {
    fn record(&mut self, r: &Record) -> io::Result<()> {
        match self.format {
            Format::Text => self.text(r),
            Format::Json => self.json(r),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, format: Format, clock: Clock, close_hook: CloseHook) -> Self {
        Self { out, format, clock, close_hook, container_column: false }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if let Format::Text = self.format {
            let container = if self.container_column { "CONTAINER            " } else { "" };
            writeln!(
                self.out,
                "{:<15} {:>7} {:<16} {container}{:>4} {:<22} {:<22} {:<24} DETAIL",
                "TIME", "PID", "COMM", "FD", "LADDR:LPORT", "RADDR:RPORT", "EVENT"
            )?;
        }
        Ok(())
    }

    fn text(&mut self, r: &Record) -> io::Result<()> {
        let dash = || "-".to_owned();
        let container = r.cgroup.as_ref().and_then(|c| c.container.as_ref());
        if container.is_some() && !self.container_column {
            self.container_column = true;
            self.header()?;
        }
        let container = match container {
            _ if !self.container_column => String::new(),
            // A service by its unit's name, a container by its short id, as `ss`/`docker ps`.
            Some(c) if c.runtime == Runtime::Systemd => format!("{:<20.20} ", c.id),
            Some(c) => format!("{:<20} ", c.short_id()),
            None => format!("{:<20} ", "-"),
        };
        let (event, detail) = match &r.kind {
            RecordKind::State { old, new } => (format!("{old}->{new}"), String::new()),
            RecordKind::Accept { state: Some(s) } => ("accept".to_owned(), format!("state={s}")),
            RecordKind::Release { reason } => {
                ("release".to_owned(), format!("by={}", reason.name()))
            }
            RecordKind::TimeWait { from } => ("time-wait".to_owned(), format!("from={from}")),
            RecordKind::Close { from, reset, lifetime_ns } => {
                let mut detail = format!("from={from}");
                if let Some(ns) = lifetime_ns {
                    detail = format!("lifetime={:.3}ms {detail}", lifetime_ms(*ns));
                }
                if *reset {
                    detail.push_str(" reset");
                }
                ("close".to_owned(), detail)
            }
            other => (event_name(other).to_owned(), String::new()),
        };
        let endpoint = |a: Option<SocketAddr>| a.map_or_else(dash, |a| a.to_string());
        writeln!(
            self.out,
            "{:<15} {:>7} {:<16} {container}{:>4} {:<22} {:<22} {:<24} {}",
            local_time_of_day(self.clock.wall(r.ts_ns), true),
            r.pid.map_or_else(dash, |p| p.to_string()),
            r.comm.as_ref().map(Comm::as_str).as_deref().unwrap_or("-"),
            r.fd.map_or_else(dash, |f| f.to_string()),
            endpoint(r.endpoints.map(|e| e.local)),
            endpoint(r.endpoints.map(|e| e.remote)),
            event,
            detail
        )?;
        // Under the open, innermost first, as bpftrace prints ustack.
        for frame in r.stack.iter().flat_map(|stack| &stack.frames) {
            writeln!(self.out, "{:>17}{}", "", frame.display())?;
        }
        if r.stack.as_ref().is_some_and(|s| s.truncated) {
            writeln!(self.out, "{:>17}(stack cut short)", "")?;
        }
        Ok(())
    }

    fn json(&mut self, r: &Record) -> io::Result<()> {
        let (old_state, new_state) = match &r.kind {
            RecordKind::State { old, new } => (Some(old.name()), Some(new.name())),
            RecordKind::Accept { state } => (None, state.map(|s| s.name())),
            RecordKind::TimeWait { from } => (Some(from.name()), Some("TIME_WAIT")),
            RecordKind::Close { from, .. } => (Some(from.name()), Some("CLOSE")),
            _ => (None, None),
        };
        let record = JsonRecord {
            ts: humantime::format_rfc3339_micros(self.clock.wall(r.ts_ns)).to_string(),
            ts_ns: r.ts_ns,
            event: event_name(&r.kind),
            pid: r.pid,
            tid: r.tid,
            comm: r.comm.as_ref().map(Comm::as_str),
            fd: r.fd,
            family: r.endpoints.map(|e| if e.local.is_ipv4() { "ipv4" } else { "ipv6" }),
            laddr: r.endpoints.map(|e| e.local.ip().to_string()),
            lport: r.endpoints.map(|e| e.local.port()),
            raddr: r.endpoints.map(|e| e.remote.ip().to_string()),
            rport: r.endpoints.map(|e| e.remote.port()),
            old_state,
            new_state,
            reason: match &r.kind {
                RecordKind::Release { reason } => Some(reason.name()),
                _ => None,
            },
            reset: match &r.kind {
                RecordKind::Close { reset, .. } => Some(*reset),
                _ => None,
            },
            lifetime_ms: match &r.kind {
                RecordKind::Close { lifetime_ns, .. } => lifetime_ns.map(lifetime_ms),
                _ => None,
            },
            skaddr: format!("{:#x}", r.skaddr),
            close_hook: self.close_hook.name(),
            stack: r.stack.as_deref(),
            stack_truncated: r.stack.as_ref().map(|s| s.truncated),
            cgroup: r.cgroup.as_ref().map(|c| c.path.as_str()),
            container: r.cgroup.as_ref().and_then(|c| c.container.as_ref()),
        };
        serde_json::to_writer(&mut self.out, &record)?;
        self.out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::event::{Endpoints, TcpState};

    fn record(kind: RecordKind) -> Record {
        Record {
            ts_ns: 5_000_000_000,
            kind,
            pid: Some(42),
            tid: Some(43),
            comm: Some(Comm::from("curl")),
            fd: Some(3),
            skaddr: 0xffff_8880_0000_1000,
            endpoints: Some(Endpoints {
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: "127.0.0.1:80".parse().unwrap(),
            }),
            stack: None,
            cgroup: None,
        }
    }

    fn render(format: Format, r: &Record) -> String {
        let clock = Clock { mono_ns: 0, wall: UNIX_EPOCH };
        let mut out = Vec::new();
        Renderer::new(&mut out, format, clock, CloseHook::Tracepoint).record(r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_has_every_field_with_stable_names() {
        let line = render(
            Format::Json,
            &record(RecordKind::Close {
                from: TcpState::FinWait2,
                reset: false,
                lifetime_ns: Some(1_500_000),
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "close");
        assert_eq!(v["ts"], "1970-01-01T00:00:05.000000Z");
        assert_eq!(v["lifetime_ms"], 1.5);
        assert_eq!(v["old_state"], "FIN_WAIT2");
        assert_eq!(v["new_state"], "CLOSE");
        assert_eq!(v["close_hook"], "tracepoint");
        assert_eq!(v["skaddr"], "0xffff888000001000");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["rport"], 80);
        assert!(v["reason"].is_null());
        assert!(v["stack"].is_null());
        assert!(v["cgroup"].is_null() && v["container"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 22);
    }

    #[test]
    fn text_grows_a_container_column_at_the_first_record_from_a_container() {
        use std::sync::Arc;

        use crate::container::{Cgroup, Container, Runtime};

        let clock = Clock { mono_ns: 0, wall: UNIX_EPOCH };
        let mut out = Vec::new();
        let mut renderer = Renderer::new(&mut out, Format::Text, clock, CloseHook::Tracepoint);
        renderer.header().unwrap();
        renderer.record(&record(RecordKind::Connect)).unwrap();
        let id = "ab".repeat(32);
        let cgroup = Cgroup {
            id: Some(7),
            path: format!("/libpod_parent/libpod-{id}"),
            container: Some(Container::new(id.clone(), Runtime::Podman)),
        };
        let inside = Record { cgroup: Some(Arc::new(cgroup)), ..record(RecordKind::Connect) };
        renderer.record(&inside).unwrap();
        renderer.record(&record(RecordKind::Connect)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines[0].contains("CONTAINER") && lines[1].contains(" curl "), "{text}");
        assert!(lines[2].starts_with("TIME") && lines[2].contains("CONTAINER"), "again: {text}");
        assert!(lines[3].contains(&format!(" {} ", &id[..12])), "the short id: {text}");
        assert!(lines[4].contains(" curl ") && lines[4].contains(" - "), "the host: {text}");
        // Columns stay aligned: the FD column starts at the same place below the header.
        let fd_at = lines[2].find("  FD").map(|i| i + 4);
        assert_eq!(fd_at, lines[3].find(" 3 ").map(|i| i + 2), "{text}");
    }

    #[test]
    fn text_shows_state_changes_as_old_arrow_new() {
        let line = render(
            Format::Text,
            &record(RecordKind::State { old: TcpState::SynSent, new: TcpState::Established }),
        );
        assert!(line.contains("SYN_SENT->ESTABLISHED"), "{line}");
        assert!(line.contains("127.0.0.1:40000"), "{line}");
        assert!(line.contains(" curl "), "{line}");
    }
}
