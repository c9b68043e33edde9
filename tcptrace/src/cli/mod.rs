//! Command-line interface: the flags (clap), validated once into typed options (`options`).
//! Usage errors exit with status 2 (clap's convention).
//!
//! Imports the plain types of the layers below (`kernel`, `analysis`, `stacks`, `top`) and
//! `container` (to find the cgroups a filter names); imported by `cmd` and `main`.

mod options;

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use self::options::{
    DetectOptions, LeaksOptions, Options, RunOptions, ServeOptions, TopOptions, TraceOptions,
    UsageError,
};
use crate::{
    analysis::findings::FindingKind,
    kernel::{close_hook::CloseHookChoice, options::StacksMode},
    top::SortKey,
};

const EXAMPLES: &str = "\
Examples:
  tcptrace leaks --duration 60s           which processes leak or churn connections, after a minute
  tcptrace leaks -c myservice --json      one service, a JSON report when Ctrl-C is pressed
  tcptrace top                            a live per-process table (q quits)
  tcptrace trace                          every TCP connection on the host
  tcptrace trace -p 1234 --duration 30s   one process for 30 seconds
  tcptrace trace --port 6379 --json       Redis traffic (either side), one JSON object per line
  tcptrace trace -c nginx -4              IPv4 connections of processes named nginx
  tcptrace trace --container web          the processes of one container (name or id prefix)
  tcptrace trace --stacks -p 1234         each open with the code path that made it
  tcptrace trace --close-hook tracepoint  force the tracepoint-only release detection";

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    about = "Follow every TCP connection from open to close, with the process and descriptor that own it",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each connection's lifecycle as it happens: opens, state changes, releases, TIME_WAIT
    /// entries and closes with lifetimes
    #[command(after_help = EXAMPLES)]
    Trace(TraceArgs),
    /// Find leaked, ghost and churning connections: sockets left in CLOSE_WAIT, descriptors of
    /// dead connections, idle connections without keepalive, connections never closed, and
    /// TIME_WAIT churn; report by process when the duration ends or on Ctrl-C
    #[command(after_help = LEAKS_EXAMPLES)]
    Leaks(LeaksArgs),
    /// A live per-process table of connections: open, ESTABLISHED, CLOSE_WAIT, TIME_WAIT,
    /// open and release rates, lifetimes and findings
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Run always: trace as `leaks` does and serve Prometheus metrics (/metrics), the current
    /// leak report (/report) and health (/healthz) over HTTP, until SIGTERM or Ctrl-C
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Run a command under tracing (it and every descendant) and report its connections when
    /// the last of them exits; fail (status 3) when a budget is exceeded. For CI
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Compare two reports of `run --report` (or `leaks --json`): connections, TIME_WAIT
    /// entries, findings and lifetimes; status 3 when a metric regresses past the threshold
    #[command(after_help = COMPARE_EXAMPLES)]
    Compare(CompareArgs),
    /// Check what this host gives tcptrace (BTF, kprobes, uprobes, cgroup v2, privileges), what
    /// each missing piece costs, and load and attach the programs once; status 0 when tracing
    /// works
    Doctor,
    /// Print a shell completion script to stdout
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (tcptrace.8 and one per command) into DIR, for packaging
    #[command(hide = true)]
    Man { dir: PathBuf },
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  tcptrace completions bash > /etc/bash_completion.d/tcptrace
  tcptrace completions zsh > \"${fpath[1]}/_tcptrace\"
  tcptrace completions fish > ~/.config/fish/completions/tcptrace.fish

The Debian package installs these for bash, zsh and fish.";

const RUN_EXAMPLES: &str = "\
Exit status: the command's own status when it failed (128+N when killed by signal N); otherwise
3 when a budget is exceeded; otherwise 0 (1: tcptrace failed, 2: bad usage, 127: no such command).

Findings: those of leaks, plus
  closed-by-exit     a connection the program never closed: its process exited holding it

Examples:
  tcptrace run --max-leaks 0 -- cargo test
  tcptrace run --max-closed-by-exit 0 --max close-wait=0 -- pytest -x
  tcptrace run --max-connections 500 --report run.json --junit tcptrace.xml -- npm test
  tcptrace run --max-time-wait-rate 50 --stacks off -- ./load-test.sh";

const COMPARE_EXAMPLES: &str = "\
Examples:
  tcptrace compare main.json pr.json                          a table of what changed
  tcptrace compare main.json pr.json --markdown >> comment.md  for a pull-request comment
  tcptrace compare main.json pr.json --max-regression 25      tolerate up to 25% more";

const LEAKS_EXAMPLES: &str = "\
Findings:
  close-wait         the peer closed; the process still holds the socket (never called close())
  dead-fd            the connection ended (reset, timeout); the descriptor is still open
  idle-no-keepalive  ESTABLISHED, idle longer than --idle, keepalive off: a ghost if the peer vanished
  unclosed           a connection this process opened during the trace, unused and still open at the end
  time-wait-churn    TIME_WAIT entries toward one remote faster than --time-wait-rate

Examples:
  tcptrace leaks --duration 5m                  the whole host for five minutes
  tcptrace leaks -p 1234 --min-age 10s          one process, quicker verdicts
  tcptrace leaks --port 6379 --idle 2m --json   Redis connections, ghost limit two minutes, JSON
  tcptrace leaks --stacks both                  code paths with the kernel's side too
  tcptrace leaks --container 64a1b0d8ae8b       one container (podman/docker id prefix or name)
  tcptrace leaks --cgroup /system.slice/nginx.service   one systemd service and what it runs

Findings are grouped by process and by the code path (user stack) that opened the sockets; build
with frame pointers for full stacks (README: Code paths).";

const TOP_EXAMPLES: &str = "\
Keys: o open, e ESTABLISHED, w CLOSE_WAIT, t TIME_WAIT/s, n opened/s, r released/s, 5 p50, 9 p99,
      f findings, p pid, c comm, C container, R reverse, q quit

Examples:
  tcptrace top                          the host, refreshed every 2 s
  tcptrace top --sort time-wait -c php  which php processes churn TIME_WAIT
  tcptrace top --interval 10s | tee log plain tables when stdout is not a terminal";

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only connections opened or released by this process (repeatable, up to 8)
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only processes whose thread name (comm) is exactly this (at most 15 bytes)
    #[arg(short = 'c', long, value_name = "COMM")]
    pub comm: Option<String>,
    /// Only processes in this container: its id, an id prefix or its name, as `podman ps` or
    /// `docker ps` show them, or a systemd service (`nginx.service`); repeatable
    #[arg(long = "container", value_name = "ID|NAME")]
    pub containers: Vec<String>,
    /// Only processes in this cgroup or below it: a cgroup v2 path such as
    /// `/system.slice/nginx.service`, relative to the hierarchy or under its mount; repeatable
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// Only connections with this local or remote port
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only IPv4
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

/// What the kernel side needs: filters, the close hook, the ring size.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How releases (the tcp_close() moment) are observed
    #[arg(long, value_enum, default_value_t = CloseHookChoice::Auto)]
    pub close_hook: CloseHookChoice,
    /// Ring buffer size in MiB (a power of two)
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_size: u32,
    /// Capture the code path of each connect and accept: user (the functions that opened it),
    /// kernel, both or off; `--stacks` alone means user. Default: user for leaks, off for
    /// trace and top
    #[arg(long, value_name = "WHICH", num_args = 0..=1, default_missing_value = "user")]
    pub stacks: Option<StacksMode>,
    /// Benchmarks only: attach every program, but have each return at once
    #[cfg(feature = "bench")]
    #[arg(long, hide = true)]
    pub bench_floor: bool,
    /// Benchmarks only: the least per-connection work (one record at each open and CLOSE);
    /// `trace` only counts the records
    #[cfg(feature = "bench")]
    #[arg(long, hide = true, conflicts_with = "bench_floor")]
    pub bench_minimum: bool,
    /// Benchmarks only: the least per-connection work counted in the kernel, no records;
    /// `trace` prints the counts at its end
    #[cfg(feature = "bench")]
    #[arg(long, hide = true, conflicts_with_all = ["bench_floor", "bench_minimum"])]
    pub bench_in_kernel: bool,
    /// Benchmarks only: open records go without the opener's cgroup id (its cost)
    #[cfg(feature = "bench")]
    #[arg(long, hide = true)]
    pub bench_no_cgroup: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Stop after this long (e.g. 10s, 5m); default: until Ctrl-C
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per line (fields documented in README)
    #[arg(long)]
    pub json: bool,
}

/// The limits that turn sockets into findings, and how the socket table is kept.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// A socket is reported once it has been in its leaking state (CLOSE_WAIT, a dead
    /// descriptor, opened and unused) this long; default 30s (leaks, top), 0s (run)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_age: Option<Duration>,
    /// idle-no-keepalive after this long without data
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// time-wait-churn at this many TIME_WAIT entries per second toward one remote; default:
    /// the rate that holds 10% of net.ipv4.ip_local_port_range
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub time_wait_rate: Option<f64>,
    /// Re-read every socket (sock_diag and /proc) this often, to refresh idle times and repair
    /// anything an event missed; sweeps that take longer than 1/50 of this (many network
    /// namespaces, many TIME_WAIT sockets) are spaced out to use at most 1/50 of a CPU
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_sweep)]
    pub sweep: Duration,
    /// Sockets tracked at most; beyond, they are counted as not tracked
    #[arg(long, value_name = "N", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sockets: u64,
}

#[derive(Debug, Args)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Stop after this long (e.g. 10s, 5m); default: until Ctrl-C
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Print the report as one JSON document (schema in README)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Where to serve HTTP. /report names processes and addresses: listen beyond localhost
    /// only on purpose, with --web-config for TLS and basic auth
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// TLS and basic auth, in the Prometheus exporter-toolkit format (tls_server_config,
    /// basic_auth_users with bcrypt hashes)
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Series of the per-process metrics at most; each process name and container pair takes
    /// up to 34, and pairs beyond the bound are counted under comm="other"
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(34..))]
    pub max_series: u64,
}

const SERVE_EXAMPLES: &str = "\
Examples:
  tcptrace serve                                   metrics on http://127.0.0.1:9464/metrics
  tcptrace serve --listen 0.0.0.0:9464 --web-config /etc/tcptrace/web.yml   TLS and basic auth
  tcptrace serve --min-age 5m --idle 30m           slower verdicts for a busy host
  curl -s localhost:9464/report | jq '.findings[] | {kind, comm, stack}'   who leaks, from where

Metrics (labels comm, container; see README): tcptrace_connections{state},
tcptrace_findings{kind}, tcptrace_connections_opened_total{direction},
tcptrace_connections_released_total, tcptrace_time_wait_entries_total,
tcptrace_ephemeral_port_share, tcptrace_connection_lifetime_seconds; and tcptrace_events_total,
tcptrace_events_lost_total{reason}, tcptrace_tracked_sockets(_capacity), tcptrace_build_info.
Ready-made alert rules, a Grafana dashboard, a systemd unit and a DaemonSet are in deploy/.";

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    /// Refresh every
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_sweep)]
    pub interval: Duration,
    /// Sort by
    #[arg(long, value_enum, default_value_t = SortKey::Open)]
    pub sort: SortKey,
    /// Rows shown at most (plain output)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Stop after this long; default: until q or Ctrl-C
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Budgets of `tcptrace run`: over any of them, the run fails with status 3.
#[derive(Debug, Clone, Default, Args)]
pub struct BudgetArgs {
    /// Findings of any kind allowed
    #[arg(long, value_name = "N")]
    pub max_leaks: Option<u64>,
    /// closed-by-exit findings allowed (connections the program never closed)
    #[arg(long, value_name = "N")]
    pub max_closed_by_exit: Option<u64>,
    /// TIME_WAIT entries per second toward one remote allowed, per process
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub max_time_wait_rate: Option<f64>,
    /// connect() calls allowed, all processes together
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Findings of one kind allowed, e.g. --max close-wait=0 (repeatable; overrides
    /// --max-leaks for that kind)
    #[arg(long = "max", value_name = "KIND=N", value_parser = parse_kind_budget)]
    pub max_kind: Vec<(FindingKind, u64)>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub detect: DetectArgs,
    #[command(flatten)]
    pub budgets: BudgetArgs,
    /// Once the command has exited, wait at most this long for its descendants; the sockets
    /// of those still running then are reported as they are
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub wait_descendants: Duration,
    /// Write the JSON report here: the leaks report, plus the command, its status, the
    /// budgets and per-remote counts
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML file with one test case per budget
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The command and its arguments (after `--`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline report (the last good run)
    #[arg(value_name = "BASE.json")]
    pub base: PathBuf,
    /// The report to judge
    #[arg(value_name = "NEW.json")]
    pub new: PathBuf,
    /// A metric regresses when it grows more than this many percent (from zero: any growth)
    #[arg(long, value_name = "PCT", default_value_t = 10.0, value_parser = parse_percent)]
    pub max_regression: f64,
    /// Print a markdown table (for a pull-request comment)
    #[arg(long)]
    pub markdown: bool,
}

fn parse_kind_budget(s: &str) -> Result<(FindingKind, u64), String> {
    let (kind, n) = s.split_once('=').ok_or("expected KIND=N, e.g. close-wait=0")?;
    let kind = FindingKind::from_name(kind).ok_or_else(|| {
        format!("unknown finding kind {kind:?}; one of: {}", FindingKind::NAMES.join(", "))
    })?;
    let n = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
    Ok((kind, n))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let pct: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(pct.is_finite() && pct >= 0.0) {
        return Err("must be a number of percent, 0 or more".to_owned());
    }
    Ok(pct)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err("must be a positive number".to_owned());
    }
    Ok(rate)
}

fn parse_sweep(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".to_owned());
    }
    Ok(d)
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if mib == 0 || !mib.is_power_of_two() || mib > 1024 {
        return Err("must be a power of two between 1 and 1024".to_owned());
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    #[test]
    fn leaks_defaults_follow_the_design() {
        let Command::Leaks(args) = parse(&["leaks"]).unwrap().command else { panic!("leaks") };
        assert_eq!(args.detect.min_age, None);
        assert_eq!(args.detect.idle, Duration::from_secs(600));
        assert_eq!(args.detect.time_wait_rate, None);
        let Command::Top(args) = parse(&["top", "--sort", "close-wait"]).unwrap().command else {
            panic!("top")
        };
        assert_eq!(args.sort, SortKey::CloseWait);
    }

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["trace", "-4", "-6"]).is_err());
        assert!(parse(&["trace", "--port", "0"]).is_err());
        assert!(parse(&["trace", "--close-hook", "uprobe"]).is_err());
        assert!(parse(&["trace", "--duration", "soon"]).is_err());
        assert!(parse(&["trace", "--ring-size", "3"]).is_err());
        assert!(parse(&["leaks", "--min-age", "never"]).is_err());
        assert!(parse(&["leaks", "--time-wait-rate", "-1"]).is_err());
        assert!(parse(&["leaks", "--sweep", "1ms"]).is_err());
        assert!(parse(&["top", "--sort", "size"]).is_err());
    }
}
