//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! Churn: every configuration (no tracer, the floor, tcptrace's commands, the peers) runs the
//! same loopback workloads (client closes first, server closes first, resets, a keep-alive
//! pool), round after round, interleaved so that drift (thermal, other load) spreads over all
//! of them; each line gives min/median/max of the rate, the median as a ratio of the untraced
//! one, how idle the CPUs were (a workload that leaves them idle hides a tracer's cost), and
//! where the cost is per connection: the configuration's BPF programs (run times the kernel
//! keeps with `kernel.bpf_stats_enabled`, `bpf_stats`) and the tracer's own CPU time, their
//! total as a multiple of the floor's; what a system call costs with it attached (the time of
//! a `getppid(2)`, against the untraced one: the cost its hooks put on every system call of the
//! host, which neither of the other two sees; `syscall_path`); then what it delivered and lost
//! and its peak RSS.
//! Replay: tcptrace's user space alone on a generated event stream (`tcptrace/examples/replay`).
//!
//! The binary measured is the packaged one's build (static, musl, mimalloc) with tcptrace's
//! `bench` feature ([`FEATURE`]): the reference points' flags (`--bench-floor`,
//! `--bench-minimum`, `--bench-in-kernel`) exist only there.

mod bpf_stats;
mod churn;
mod syscall_path;
mod tracers;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
pub use churn::{Workload, churn};
use clap::Args;
use tracers::{Tracer, TracerCost};

use crate::{cargo, run_checked, setup::MUSL_TARGET, workspace_root};

/// tcptrace's cargo feature that holds the benchmark's programs and flags; every build this
/// module measures, and the root tests of those programs, enable it.
pub const FEATURE: &str = "bench";

/// `xtask bench-rounds`: the rounds alone (what the VM runs).
#[derive(Debug, Args)]
pub struct RoundsOnly {
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// The tcptrace binary to measure
    #[arg(long)]
    pub tcptrace: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    rounds: RoundArgs,
    /// A few seconds of everything, to check that the benchmark runs (CI); no figures to trust
    #[arg(long)]
    smoke: bool,
    /// Also measure inside Debian's stock kernel under qemu (fentry close hook; bpftrace is
    /// left out there)
    #[arg(long)]
    vm: bool,
}

/// What the rounds measure: shared by the host run and the one inside the VM.
#[derive(Debug, Clone, Args)]
pub struct RoundArgs {
    /// Rounds of every configuration (interleaved)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of churn per configuration and round
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Client threads of the churn generator (as many server threads)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only the configurations whose name contains one of these words (the baseline always
    /// runs), e.g. --only tcptrace,tcplife
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The workloads, e.g. --workloads server-closes,keep-alive; default: all four
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Print each configuration's BPF programs: ns per run and runs per connection
    #[arg(long)]
    verbose: bool,
    /// A check that everything runs (set by `bench --smoke`): every configuration on the
    /// server-closes workload, the baseline and `tcptrace leaks` on the others
    #[arg(long = "smoke-rounds", hide = true)]
    smoke_rounds: bool,
}

/// Configurations the VM tier leaves out: bpftrace's LLVM libraries would make the initramfs
/// hundreds of megabytes.
const NOT_IN_VM: &[&str] = &["bpftrace"];

/// One configuration's run in one round.
#[derive(Debug, Clone)]
struct Sample {
    rate: f64,
    /// Connections made (requests, for keep-alive).
    connections: u64,
    cost: TracerCost,
    /// The tracer's CPU time while the workload ran (start-up and report left out).
    tracer_cpu_s: f64,
    /// Share of the CPUs idle while the workload ran.
    idle: f64,
    /// The configuration's programs, what they ran meanwhile; `None` without bpftool.
    programs: Option<Vec<bpf_stats::ProgStat>>,
    /// ns of a `getppid(2)` with the tracer attached (see `syscall_path`).
    syscall_ns: f64,
}

impl Sample {
    /// BPF time per connection, ns.
    fn bpf_ns(&self) -> Option<f64> {
        let total: u64 = self.programs.as_ref()?.iter().map(|p| p.run_time_ns).sum();
        Some(total as f64 / self.connections.max(1) as f64)
    }

    /// The tracer's own CPU time (user and system) per connection while the workload ran, ns.
    fn user_ns(&self) -> f64 {
        self.tracer_cpu_s * 1e9 / self.connections.max(1) as f64
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let mut rounds = args.rounds.clone();
    if args.smoke {
        (rounds.rounds, rounds.seconds, rounds.smoke_rounds) = (1, 1, true);
    }
    // The target the package ships (static, musl with mimalloc), so the figures are the
    // shipped binary's, and `dist`'s build of the dependencies serves this one too.
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "tcptrace",
        "--features",
        FEATURE,
        "--bins",
        "--examples",
        "--target",
        MUSL_TARGET,
    ]))?;
    let release = workspace_root().join("target").join(MUSL_TARGET).join("release");
    let tcptrace = release.join("tcptrace");

    replay(&release.join("examples/replay"), args.smoke)?;
    run_rounds(&rounds, &tcptrace)?;
    if args.vm {
        vm_rounds(&rounds, &tcptrace)?;
    }
    Ok(())
}

/// Every wanted configuration that can start here, on every workload, round after round
/// (configurations interleaved), then a table per workload.
pub fn run_rounds(args: &RoundArgs, tcptrace: &Path) -> Result<()> {
    let mut configs: Vec<Tracer> = Vec::new();
    let wanted = |tracer: Tracer| {
        tracer == Tracer::Baseline
            || args.only.is_empty()
            || args.only.iter().any(|word| tracer.name().contains(word.as_str()))
    };
    for tracer in Tracer::ALL.into_iter().filter(|&t| wanted(t)) {
        // A configuration that cannot start here (a peer not installed) is said once and left out.
        match tracers::start(tracer, tcptrace) {
            Ok(running) => {
                if let Some(running) = running {
                    running.stop()?;
                }
                configs.push(tracer);
            }
            Err(e) => println!("bench: {} left out: {e:#}", tracer.name()),
        }
    }
    let workloads =
        if args.workloads.is_empty() { Workload::ALL.to_vec() } else { args.workloads.clone() };
    // Without bpftool (or in a kernel without the sysctl) the BPF column stays empty.
    let stats = match bpf_stats::Enabled::new().and_then(|e| bpf_stats::snapshot().map(|_| e)) {
        Ok(enabled) => Some(enabled),
        Err(e) => {
            println!("bench: no BPF run times ({e:#})");
            None
        }
    };
    let (rounds, seconds) = (args.rounds.max(1), args.seconds);
    for &workload in &workloads {
        let configs: Vec<Tracer> = configs
            .iter()
            .copied()
            .filter(|&t| {
                !args.smoke_rounds
                    || workload == Workload::ServerCloses
                    || matches!(t, Tracer::Baseline | Tracer::Leaks)
            })
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
        for round in 1..=rounds {
            for (i, &tracer) in configs.iter().enumerate() {
                let run = Run { tracer, tcptrace, threads: args.threads, seconds, workload };
                let sample = measure(&run, stats.is_some()).with_context(|| {
                    format!("round {round}, {}, {}", workload.name(), tracer.name())
                })?;
                eprintln!(
                    "bench: {} round {round}/{rounds} {:<44} {:>9.0} {}",
                    workload.name(),
                    tracer.name(),
                    sample.rate,
                    workload.unit()
                );
                samples[i].push(sample);
            }
        }
        print_table(&configs, &samples, args, workload);
    }
    drop(stats);
    Ok(())
}

/// The same rounds inside Debian's stock kernel under qemu: this xtask binary runs them there
/// (`xtask bench-rounds`), with tcptrace and libbpf-tools placed at their host paths. The
/// emulated CPU is slow, so rates are far below the host's; the ratios are what compare.
fn vm_rounds(args: &RoundArgs, tcptrace: &Path) -> Result<()> {
    if vm_workloads(args).is_empty() {
        println!("bench: none of these workloads runs in the VM");
        return Ok(());
    }
    let kernel = crate::vm::prepare_kernel(&crate::vm::default_cache_dir())?;
    let xtask = std::env::current_exe().context("the xtask binary")?;
    let mut only: Vec<String> = if args.only.is_empty() {
        Tracer::ALL.iter().map(|t| t.name().to_owned()).collect()
    } else {
        args.only.clone()
    };
    only.retain(|word| !NOT_IN_VM.iter().any(|left_out| word.contains(left_out)));
    let mut extra = vec![tcptrace.to_path_buf()];
    extra.extend(tracers::libbpf_tools());
    // For the BPF column (its libraries come along).
    extra.extend(
        ["/usr/sbin/bpftool"].map(std::path::PathBuf::from).into_iter().filter(|p| p.exists()),
    );
    let command = crate::vm::VmCommand {
        name: "bench".to_owned(),
        program: xtask,
        args: vec![
            "bench-rounds".to_owned(),
            format!("--tcptrace={}", tcptrace.display()),
            format!("--rounds={}", args.rounds),
            format!("--seconds={}", args.seconds),
            format!("--threads={}", args.threads),
            format!("--only={}", only.join(",")),
        ]
        .into_iter()
        .chain(std::iter::once({
            let names: Vec<&str> = vm_workloads(args).iter().map(|w| w.name()).collect();
            format!("--workloads={}", names.join(","))
        }))
        .chain(args.smoke_rounds.then(|| "--smoke-rounds".to_owned()))
        .chain(args.verbose.then(|| "--verbose".to_owned()))
        .collect(),
        env: Vec::new(),
        files: Vec::new(),
    };
    // Loading and attaching is slow under emulation: allow a minute per run.
    let workloads = vm_workloads(args).len();
    let runs = (args.rounds.max(1) * workloads + 1) * Tracer::ALL.len();
    let timeout = Duration::from_secs(120 + runs as u64 * (args.seconds + 60));
    let outcomes = crate::vm::run(&kernel, &[command], &extra, timeout)?;
    let outcome = outcomes.first().context("the VM ran nothing")?;
    println!();
    println!("In the VM (Debian's stock kernel under qemu TCG, close hook fentry):");
    for line in outcome.output.lines() {
        if line.starts_with('|')
            || line.starts_with("Workload ")
            || line.starts_with("bench:")
            || line.starts_with("  ")
            || line.contains("BPF programs per connection")
        {
            println!("{line}");
        }
    }
    match outcome.failure() {
        None => Ok(()),
        Some(failure) => bail!("in the VM, {failure}"),
    }
}

/// One configuration on one workload.
struct Run<'a> {
    tracer: Tracer,
    tcptrace: &'a Path,
    threads: usize,
    seconds: u64,
    workload: Workload,
}

/// The workloads the VM runs: those asked for, and for a smoke run only server-closes (the
/// host's smoke run checks the others; emulation makes each run slow); never the Python
/// clients, as the VM holds no interpreter.
fn vm_workloads(args: &RoundArgs) -> Vec<Workload> {
    let asked = if !args.workloads.is_empty() {
        args.workloads.clone()
    } else if args.smoke_rounds {
        vec![Workload::ServerCloses]
    } else {
        Workload::ALL.to_vec()
    };
    asked.into_iter().filter(|&w| w != Workload::PythonClients).collect()
}

fn measure(run: &Run<'_>, bpf: bool) -> Result<Sample> {
    let existing = if bpf { Some(bpf_stats::snapshot()?) } else { None };
    let running = tracers::start(run.tracer, run.tcptrace)?;
    let from = existing.as_ref().map(|_| bpf_stats::snapshot()).transpose()?;
    let cpu_from = cpu_times()?;
    let tracer_from = running.as_ref().map(tracers::Running::cpu_s).transpose()?;
    let churned = run_churn(run.threads, run.seconds, run.workload);
    let tracer_to = running.as_ref().map(tracers::Running::cpu_s).transpose()?;
    let idle = cpu_times()?.idle_share_since(&cpu_from);
    let to = existing.as_ref().map(|_| bpf_stats::snapshot()).transpose()?;
    let syscall_ns = syscall_path::ns_per_call();
    let cost = match running {
        Some(running) => running.stop()?,
        None => TracerCost::default(),
    };
    let tracer_cpu_s = tracer_from.zip(tracer_to).map_or(0.0, |(from, to)| to - from);
    let programs = match (&existing, &from, &to) {
        (Some(existing), Some(from), Some(to)) => Some(bpf_stats::ran(existing, from, to)),
        _ => None,
    };
    let (connections, secs) = churned?;
    Ok(Sample {
        rate: connections as f64 / secs,
        connections,
        cost,
        tracer_cpu_s,
        idle,
        programs,
        syscall_ns,
    })
}

/// The CPUs' time counters from /proc/stat (all CPUs, in ticks).
struct CpuTimes {
    idle: u64,
    total: u64,
}

fn cpu_times() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("an empty /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok(CpuTimes { idle, total: ticks.iter().take(8).sum() })
}

impl CpuTimes {
    fn idle_share_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        self.idle.saturating_sub(earlier.idle) as f64 / total as f64
    }
}

/// The generator in a process of its own (its own network namespace, its own CPU accounting).
fn run_churn(threads: usize, seconds: u64, workload: Workload) -> Result<(u64, f64)> {
    let exe = std::env::current_exe().context("the xtask binary")?;
    let out = Command::new(exe)
        .args(["churn", "--threads", &threads.to_string(), "--seconds", &seconds.to_string()])
        .args(["--workload", workload.name()])
        .output()
        .context("running the churn generator")?;
    if !out.status.success() {
        bail!("the churn generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the churn generator printed {text:?}"))?;
    let connections = value["connections"].as_u64().context("no connections")?;
    let seconds = value["seconds"].as_f64().context("no seconds")?;
    Ok((connections, seconds))
}

/// `xtask churn`: the generator's process.
pub fn churn_main(threads: usize, seconds: u64, workload: Workload) -> Result<()> {
    let churned = churn(threads, Duration::from_secs(seconds), workload)?;
    println!(
        "{}",
        serde_json::json!({"connections": churned.connections, "seconds": churned.seconds})
    );
    Ok(())
}

fn replay(binary: &Path, smoke: bool) -> Result<()> {
    let mut cmd = Command::new(binary);
    if smoke {
        cmd.arg("--smoke");
    }
    let status = cmd.status().with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("the replay benchmark failed ({status})");
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn print_table(configs: &[Tracer], samples: &[Vec<Sample>], args: &RoundArgs, workload: Workload) {
    let (threads, seconds, rounds) = (args.threads, args.seconds, args.rounds.max(1));
    let unit = workload.unit();
    println!();
    println!(
        "Workload {}: {threads} client threads and {threads} server threads on loopback, {seconds} s per run, {rounds} rounds interleaved",
        workload.name()
    );
    println!(
        "| tracer | {unit} median (min–max) | vs none | CPU idle | BPF µs/conn | tracer CPU µs/conn | total µs/conn | × floor | syscall ns | events/s | lost | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let med_of = |samples: &[Sample], f: &dyn Fn(&Sample) -> Option<f64>| -> Option<f64> {
        let mut values: Vec<f64> = samples.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| median(&mut values))
    };
    let baseline = samples.first().and_then(|s| med_of(s, &|x| Some(x.rate))).unwrap_or(f64::NAN);
    let syscall_ns = |samples: &[Sample]| med_of(samples, &|s| Some(s.syscall_ns));
    let untraced_syscall = samples.first().and_then(|s| syscall_ns(s));
    let total_us = |s: &Sample| Some((s.bpf_ns()? + s.user_ns()) / 1e3);
    let floor = configs
        .iter()
        .position(|&t| t == Tracer::Floor)
        .and_then(|i| med_of(&samples[i], &total_us));
    let show = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    for (tracer, samples) in configs.iter().zip(samples) {
        let mut rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
        let med = median(&mut rates);
        let (min, max) = (rates[0], rates[rates.len() - 1]);
        let events = med_of(samples, &|s| s.cost.events.map(|e| e as f64 / seconds as f64));
        let lost = if samples.iter().all(|s| s.cost.lost.is_none()) {
            "-".to_owned()
        } else {
            samples.iter().filter_map(|s| s.cost.lost).sum::<u64>().to_string()
        };
        let traced = *tracer != Tracer::Baseline;
        let idle = med_of(samples, &|s| Some(s.idle * 100.0));
        let (bpf, user, total) = if traced {
            (
                med_of(samples, &|s| s.bpf_ns().map(|ns| ns / 1e3)),
                med_of(samples, &|s| Some(s.user_ns() / 1e3)),
                med_of(samples, &total_us),
            )
        } else {
            (None, None, None)
        };
        let times_floor = total.zip(floor).map(|(t, f)| t / f);
        let syscall = match (syscall_ns(samples), untraced_syscall) {
            (Some(ns), Some(untraced)) if traced => format!("{ns:.0} ({:+.0})", ns - untraced),
            (Some(ns), _) => format!("{ns:.0}"),
            (None, _) => "-".to_owned(),
        };
        let rss = samples.iter().map(|s| s.cost.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "| {} | {med:.0} ({min:.0}–{max:.0}) | {:.1}% | {}% | {} | {} | {} | {} | {syscall} | {} | {lost} | {} |",
            tracer.name(),
            med / baseline * 100.0,
            show(idle, 0),
            show(bpf, 2),
            show(user, 2),
            show(total, 2),
            show(times_floor, 1),
            show(events, 0),
            if traced { format!("{rss:.1}") } else { "-".to_owned() },
        );
    }
    if args.verbose {
        for (tracer, samples) in configs.iter().zip(samples) {
            // The last round's programs, per connection.
            let Some(sample) = samples.last() else { continue };
            let Some(programs) = &sample.programs else { continue };
            if programs.is_empty() {
                continue;
            }
            println!("{} ({}): BPF programs per connection", tracer.name(), workload.name());
            let per_conn = |x: u64| x as f64 / sample.connections.max(1) as f64;
            for p in programs {
                println!(
                    "  {:<32} {:>8.0} ns/run × {:>5.2} runs = {:>7.0} ns",
                    p.name,
                    p.run_time_ns as f64 / p.run_cnt.max(1) as f64,
                    per_conn(p.run_cnt),
                    per_conn(p.run_time_ns)
                );
            }
        }
    }
}
