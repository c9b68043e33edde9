//! The flags validated once into typed options, with each command's defaults applied: what
//! clap cannot check (pids that exist, a comm the kernel can hold, `run`'s own process
//! choice) is checked here and nowhere else.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use tcptrace_common::{AF_INET, AF_INET6, Filter, MAX_FILTER_PIDS};

use super::{
    BudgetArgs, Cli, Command, CompareArgs, DetectArgs, FilterArgs, LeaksArgs, ProbeArgs, RunArgs,
    ServeArgs, TopArgs, TraceArgs,
};
use crate::{
    analysis::budgets::Budgets,
    container::{Hierarchy, Names, SelectError, select},
    kernel::options::{Changes, ProbeOptions, StacksMode},
    top::SortKey,
};

/// `--min-age` of leaks and top: younger sockets are not yet leaks.
const DEFAULT_MIN_AGE: Duration = Duration::from_secs(30);

/// Bad input that clap cannot check by itself; reported with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("at most {MAX_FILTER_PIDS} --pid values")]
    TooManyPids,
    #[error("no process with pid {0}")]
    NoSuchPid(u32),
    #[error("--comm {0:?} is longer than 15 bytes, the kernel's limit for a task name")]
    CommTooLong(String),
    #[error("--comm is empty: no process has an empty name")]
    EmptyComm,
    #[error("run follows its command and every descendant: --pid and --comm do not apply")]
    RunFollowsItsCommand,
    #[error(transparent)]
    Container(#[from] SelectError),
    /// A report path that cannot be written (checked before the command starts).
    #[error("{0}")]
    Output(String),
}

/// A command with its validated options.
#[derive(Debug)]
pub enum Options {
    Trace(TraceOptions),
    Leaks(LeaksOptions),
    Top(TopOptions),
    Run(RunOptions),
    Serve(ServeOptions),
    /// Reads two files: no kernel, no privileges.
    Compare(CompareArgs),
    /// Says what it can without privileges, and tries the rest.
    Doctor,
    /// No kernel, no privileges: the completion script for a shell.
    Completions(clap_complete::Shell),
    /// No kernel, no privileges: the man pages, into a directory.
    Man(PathBuf),
}

#[derive(Debug)]
pub struct TraceOptions {
    pub probe: ProbeOptions,
    pub duration: Option<Duration>,
    pub json: bool,
}

/// The limits that turn sockets into findings, and how the socket table is kept.
#[derive(Debug, Clone, Copy)]
pub struct DetectOptions {
    pub min_age: Duration,
    pub idle: Duration,
    /// `None`: the rate that holds 10% of this host's ephemeral port range.
    pub time_wait_rate: Option<f64>,
    pub sweep: Duration,
    /// Sockets tracked at most.
    pub capacity: usize,
}

#[derive(Debug)]
pub struct LeaksOptions {
    pub probe: ProbeOptions,
    pub detect: DetectOptions,
    pub duration: Option<Duration>,
    pub json: bool,
}

#[derive(Debug)]
pub struct ServeOptions {
    pub probe: ProbeOptions,
    pub detect: DetectOptions,
    pub listen: std::net::SocketAddr,
    pub web_config: Option<PathBuf>,
    pub max_series: usize,
}

#[derive(Debug)]
pub struct TopOptions {
    pub probe: ProbeOptions,
    pub detect: DetectOptions,
    pub interval: Duration,
    pub sort: SortKey,
    pub limit: Option<usize>,
    pub duration: Option<Duration>,
}

#[derive(Debug)]
pub struct RunOptions {
    /// Follows the command's process tree (`Filter::follow`).
    pub probe: ProbeOptions,
    pub detect: DetectOptions,
    pub budgets: Budgets,
    pub wait_descendants: Duration,
    pub report: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// The command and its arguments; never empty (clap requires it).
    pub command: Vec<OsString>,
}

impl Cli {
    /// The command's options, checked.
    pub fn validate(self) -> Result<Options, UsageError> {
        Ok(match self.command {
            Command::Trace(TraceArgs { probe, duration, json }) => Options::Trace(TraceOptions {
                probe: probe.to_options(StacksMode::Off, Changes::All)?,
                duration,
                json,
            }),
            Command::Leaks(LeaksArgs { probe, detect, duration, json }) => {
                Options::Leaks(LeaksOptions {
                    probe: probe.to_options(StacksMode::User, Changes::Lifecycle)?,
                    detect: detect.to_options(DEFAULT_MIN_AGE),
                    duration,
                    json,
                })
            }
            Command::Top(TopArgs { probe, detect, interval, sort, limit, duration }) => {
                Options::Top(TopOptions {
                    probe: probe.to_options(StacksMode::Off, Changes::Lifecycle)?,
                    detect: detect.to_options(DEFAULT_MIN_AGE),
                    interval,
                    sort,
                    limit,
                    duration,
                })
            }
            Command::Run(args) => Options::Run(args.into_options()?),
            Command::Serve(ServeArgs { probe, detect, listen, web_config, max_series }) => {
                Options::Serve(ServeOptions {
                    probe: probe.to_options(StacksMode::User, Changes::Lifecycle)?,
                    detect: detect.to_options(DEFAULT_MIN_AGE),
                    listen,
                    web_config,
                    max_series: usize::try_from(max_series).unwrap_or(usize::MAX),
                })
            }
            Command::Compare(args) => Options::Compare(args),
            Command::Doctor => Options::Doctor,
            Command::Completions { shell } => Options::Completions(shell),
            Command::Man { dir } => Options::Man(dir),
        })
    }
}

impl RunArgs {
    fn into_options(self) -> Result<RunOptions, UsageError> {
        let Self { probe, detect, budgets, wait_descendants, report, junit, command } = self;
        // `run` chooses its processes itself.
        if !probe.filter.pids.is_empty() || probe.filter.comm.is_some() {
            return Err(UsageError::RunFollowsItsCommand);
        }
        let mut probe = probe.to_options(StacksMode::User, Changes::Lifecycle)?;
        probe.filter.follow = 1;
        Ok(RunOptions {
            probe,
            // A CI run is short: every socket still held at the end counts.
            detect: detect.to_options(Duration::ZERO),
            budgets: budgets.into(),
            wait_descendants,
            report,
            junit,
            command,
        })
    }
}

impl From<BudgetArgs> for Budgets {
    fn from(args: BudgetArgs) -> Self {
        let BudgetArgs {
            max_leaks,
            max_closed_by_exit,
            max_time_wait_rate,
            max_connections,
            max_kind,
        } = args;
        Self { max_leaks, max_closed_by_exit, max_time_wait_rate, max_connections, max_kind }
    }
}

impl DetectArgs {
    fn to_options(&self, default_min_age: Duration) -> DetectOptions {
        DetectOptions {
            min_age: self.min_age.unwrap_or(default_min_age),
            idle: self.idle,
            time_wait_rate: self.time_wait_rate,
            sweep: self.sweep,
            capacity: usize::try_from(self.max_sockets).unwrap_or(usize::MAX),
        }
    }
}

impl ProbeArgs {
    /// The kernel side's options; `stacks` is the command's default for `--stacks`, `changes`
    /// what it does with state changes.
    fn to_options(&self, stacks: StacksMode, changes: Changes) -> Result<ProbeOptions, UsageError> {
        Ok(ProbeOptions {
            filter: self.filter.to_filter()?,
            close_hook: self.close_hook,
            ring_bytes: self.ring_size << 20,
            stacks: self.stacks.unwrap_or(stacks),
            changes,
            #[cfg(feature = "bench")]
            cgroup_ids: !self.bench_no_cgroup,
            #[cfg(not(feature = "bench"))]
            cgroup_ids: true,
            unrolled_loops: false,
            #[cfg(feature = "bench")]
            bench: if self.bench_in_kernel {
                crate::kernel::options::Bench::InKernel
            } else if self.bench_minimum {
                crate::kernel::options::Bench::Minimum
            } else if self.bench_floor {
                crate::kernel::options::Bench::Floor
            } else {
                crate::kernel::options::Bench::Off
            },
        })
    }
}

impl FilterArgs {
    /// The in-kernel filter; checks that every `--pid` exists now, and finds the cgroups of
    /// `--container` and `--cgroup` (which must exist now too).
    fn to_filter(&self) -> Result<Filter, UsageError> {
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
            if comm.is_empty() {
                return Err(UsageError::EmptyComm);
            }
            if comm.len() > 15 {
                return Err(UsageError::CommTooLong(comm.clone()));
            }
            filter.has_comm = 1;
            filter.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        }
        let cgroups =
            select(Hierarchy::find().as_ref(), &mut Names::new(), &self.containers, &self.cgroups)?;
        filter.cgroups[..cgroups.len()].copy_from_slice(&cgroups);
        filter.n_cgroups = cgroups.len() as u32;
        filter.port = self.port.unwrap_or(0);
        filter.family = match (self.ipv4, self.ipv6) {
            (true, _) => AF_INET,
            (_, true) => AF_INET6,
            _ => 0,
        };
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn validate(args: &[&str]) -> Result<Options, UsageError> {
        Cli::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
            .expect("parses")
            .validate()
    }

    #[test]
    fn builds_the_kernel_filter() {
        let pid = std::process::id();
        let Ok(Options::Trace(trace)) = validate(&[
            "trace",
            "-p",
            &pid.to_string(),
            "-c",
            "redis-server",
            "--port",
            "6379",
            "-6",
        ]) else {
            panic!("trace")
        };
        let filter = trace.probe.filter;
        assert_eq!((filter.n_pids, filter.pids[0]), (1, pid));
        assert_eq!(&filter.comm[..12], b"redis-server");
        assert_eq!((filter.port, filter.family), (6379, 10));
    }

    #[test]
    fn rejects_what_clap_cannot_check() {
        assert!(matches!(validate(&["trace", "-p", "999999999"]), Err(UsageError::NoSuchPid(_))));
        assert!(matches!(
            validate(&["trace", "-c", "a-very-long-process-name"]),
            Err(UsageError::CommTooLong(_))
        ));
        let pids: Vec<String> = (0..9).map(|_| std::process::id().to_string()).collect();
        let mut args = vec!["leaks"];
        for pid in &pids {
            args.extend(["-p", pid]);
        }
        assert!(matches!(validate(&args), Err(UsageError::TooManyPids)));
        assert!(matches!(validate(&["top", "-c", ""]), Err(UsageError::EmptyComm)));
        assert!(matches!(
            validate(&["leaks", "--container", "no-such-container-anywhere"]),
            Err(UsageError::Container(_))
        ));
        assert!(matches!(
            validate(&["trace", "--cgroup", "/no/such/cgroup"]),
            Err(UsageError::Container(_))
        ));
        assert!(matches!(
            validate(&["run", "-c", "x", "--", "true"]),
            Err(UsageError::RunFollowsItsCommand)
        ));
    }

    #[test]
    fn each_command_gets_its_defaults() {
        let Ok(Options::Trace(trace)) = validate(&["trace"]) else { panic!("trace") };
        assert_eq!((trace.probe.stacks, trace.probe.changes), (StacksMode::Off, Changes::All));
        let Ok(Options::Leaks(leaks)) = validate(&["leaks"]) else { panic!("leaks") };
        assert_eq!(
            (leaks.probe.stacks, leaks.probe.changes),
            (StacksMode::User, Changes::Lifecycle)
        );
        assert_eq!(leaks.detect.min_age, DEFAULT_MIN_AGE);
        let Ok(Options::Top(top)) = validate(&["top", "--stacks"]) else { panic!("top") };
        assert_eq!(top.probe.stacks, StacksMode::User, "--stacks alone means user");
        let Ok(Options::Run(run)) = validate(&["run", "--max-leaks", "0", "--", "true"]) else {
            panic!("run")
        };
        assert_eq!(run.probe.filter.follow, 1);
        assert_eq!(run.detect.min_age, Duration::ZERO);
        assert_eq!(run.budgets.max_leaks, Some(0));
    }
}
