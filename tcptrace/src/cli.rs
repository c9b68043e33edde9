//! Command-line interface. Usage errors exit with status 2 (clap's convention).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tcptrace_common::{Filter, MAX_FILTER_PIDS};

use crate::close_hook::CloseHookChoice;

const EXAMPLES: &str = "\
Examples:
  tcptrace trace                          every TCP connection on the host
  tcptrace trace -p 1234 --duration 30s   one process for 30 seconds
  tcptrace trace --port 6379 --json       Redis traffic (either side), one JSON object per line
  tcptrace trace -c nginx -4              IPv4 connections of processes named nginx
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
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only connections opened or released by this process (repeatable, up to 8)
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only processes whose thread name (comm) is exactly this (at most 15 bytes)
    #[arg(short = 'c', long, value_name = "COMM")]
    pub comm: Option<String>,
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

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this long (e.g. 10s, 5m); default: until Ctrl-C
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How releases (the tcp_close() moment) are observed
    #[arg(long, value_enum, default_value_t = CloseHookChoice::Auto)]
    pub close_hook: CloseHookChoice,
    /// One JSON object per line (fields documented in README)
    #[arg(long)]
    pub json: bool,
    /// Ring buffer size in MiB (a power of two)
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_size: u32,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if mib == 0 || !mib.is_power_of_two() || mib > 1024 {
        return Err("must be a power of two between 1 and 1024".to_owned());
    }
    Ok(mib)
}

/// Bad input that clap cannot check by itself; reported with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("at most {MAX_FILTER_PIDS} --pid values")]
    TooManyPids,
    #[error("no process with pid {0}")]
    NoSuchPid(u32),
    #[error("--comm {0:?} is longer than 15 bytes, the kernel's limit for a task name")]
    CommTooLong(String),
}

impl FilterArgs {
    /// The in-kernel filter; checks that every `--pid` exists now.
    pub fn to_filter(&self) -> Result<Filter, UsageError> {
        let mut filter = Filter::none();
        if self.pids.len() > MAX_FILTER_PIDS {
            return Err(UsageError::TooManyPids);
        }
        for (slot, &pid) in filter.pids.iter_mut().zip(&self.pids) {
            if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(UsageError::NoSuchPid(pid));
            }
            *slot = pid;
        }
        filter.n_pids = self.pids.len() as u32;
        if let Some(comm) = &self.comm {
            if comm.len() > 15 {
                return Err(UsageError::CommTooLong(comm.clone()));
            }
            filter.has_comm = 1;
            filter.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        }
        filter.port = self.port.unwrap_or(0);
        filter.family = match (self.ipv4, self.ipv6) {
            (true, _) => 2,
            (_, true) => 10,
            _ => 0,
        };
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
    }

    #[test]
    fn builds_the_kernel_filter() {
        let pid = std::process::id();
        let cli = parse(&["trace", "-p", &pid.to_string(), "-c", "redis-server", "--port", "6379", "-6"])
            .expect("parses");
        let Command::Trace(args) = cli.command;
        let filter = args.filter.to_filter().expect("valid");
        assert_eq!((filter.n_pids, filter.pids[0]), (1, pid));
        assert_eq!(&filter.comm[..12], b"redis-server");
        assert_eq!((filter.port, filter.family), (6379, 10));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&["trace", "-4", "-6"]).is_err());
        assert!(parse(&["trace", "--port", "0"]).is_err());
        assert!(parse(&["trace", "--close-hook", "uprobe"]).is_err());
        assert!(parse(&["trace", "--duration", "soon"]).is_err());
        assert!(parse(&["trace", "--ring-size", "3"]).is_err());
        let Command::Trace(args) = parse(&["trace", "-p", "999999999"]).unwrap().command;
        assert!(matches!(args.filter.to_filter(), Err(UsageError::NoSuchPid(999999999))));
        let Command::Trace(args) = parse(&["trace", "-c", "a-very-long-process-name"]).unwrap().command;
        assert!(matches!(args.filter.to_filter(), Err(UsageError::CommTooLong(_))));
    }
}
