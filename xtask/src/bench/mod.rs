//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! Churn: every configuration (no tracer, the floor, tcptrace's commands, the peers) runs the
//! same loopback workload, round after round, interleaved so that drift (thermal, other load)
//! spreads over all of them; each line gives min/median/max of the connection rate, the median
//! as a ratio of the untraced one, what the tracer delivered and lost, its CPU time and peak RSS.
//! Replay: tcptrace's user space alone on a generated event stream (`tcptrace/examples/replay`).
//!
//! The binary measured is built with tcptrace's `bench` feature ([`FEATURE`]): the floor's and
//! the minimum's flags (`--bench-floor`, `--bench-minimum`) exist only there.

mod churn;
mod tracers;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
pub use churn::churn;
use clap::Args;
use tracers::{Tracer, TracerCost};

use crate::{cargo, run_checked, workspace_root};

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
}

/// Configurations the VM tier leaves out: bpftrace's LLVM libraries would make the initramfs
/// hundreds of megabytes.
const NOT_IN_VM: &[&str] = &["bpftrace"];

/// One configuration's run in one round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    cost: TracerCost,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let mut rounds = args.rounds.clone();
    if args.smoke {
        (rounds.rounds, rounds.seconds) = (1, 1);
    }
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "tcptrace",
        "--features",
        FEATURE,
        "--bins",
        "--examples",
    ]))?;
    let root = workspace_root();
    let tcptrace = root.join("target/release/tcptrace");

    replay(&root.join("target/release/examples/replay"), args.smoke)?;
    run_rounds(&rounds, &tcptrace)?;
    if args.vm {
        vm_rounds(&rounds, &tcptrace)?;
    }
    Ok(())
}

/// Every wanted configuration that can start here, round after round, then the table.
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
    let (rounds, seconds) = (args.rounds.max(1), args.seconds);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    for round in 1..=rounds {
        for (i, &tracer) in configs.iter().enumerate() {
            let sample = measure(tracer, tcptrace, args.threads, seconds)
                .with_context(|| format!("round {round}, {}", tracer.name()))?;
            eprintln!(
                "bench: round {round}/{rounds} {:<30} {:>9.0} conn/s",
                tracer.name(),
                sample.rate
            );
            samples[i].push(sample);
        }
    }
    print_table(&configs, &samples, args.threads, seconds, rounds);
    Ok(())
}

/// The same rounds inside Debian's stock kernel under qemu: this xtask binary runs them there
/// (`xtask bench-rounds`), with tcptrace and libbpf-tools placed at their host paths. The
/// emulated CPU is slow, so rates are far below the host's; the ratios are what compare.
fn vm_rounds(args: &RoundArgs, tcptrace: &Path) -> Result<()> {
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
        ],
        env: Vec::new(),
    };
    // Loading and attaching is slow under emulation: allow a minute per run.
    let runs = (args.rounds.max(1) + 1) * Tracer::ALL.len();
    let timeout = Duration::from_secs(120 + runs as u64 * (args.seconds + 60));
    let outcomes = crate::vm::run(&kernel, &[command], &extra, timeout)?;
    let outcome = outcomes.first().context("the VM ran nothing")?;
    println!();
    println!("In the VM (Debian's stock kernel under qemu TCG, close hook fentry):");
    for line in outcome.output.lines() {
        if line.starts_with('|') || line.starts_with("Loopback churn") || line.starts_with("bench:")
        {
            println!("{line}");
        }
    }
    match outcome.failure() {
        None => Ok(()),
        Some(failure) => bail!("in the VM, {failure}"),
    }
}

fn measure(tracer: Tracer, tcptrace: &Path, threads: usize, seconds: u64) -> Result<Sample> {
    let running = tracers::start(tracer, tcptrace)?;
    let churned = run_churn(threads, seconds);
    let cost = match running {
        Some(running) => running.stop()?,
        None => TracerCost::default(),
    };
    let (connections, secs) = churned?;
    Ok(Sample { rate: connections as f64 / secs, cost })
}

/// The generator in a process of its own (its own network namespace, its own CPU accounting).
fn run_churn(threads: usize, seconds: u64) -> Result<(u64, f64)> {
    let exe = std::env::current_exe().context("the xtask binary")?;
    let out = Command::new(exe)
        .args(["churn", "--threads", &threads.to_string(), "--seconds", &seconds.to_string()])
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
pub fn churn_main(threads: usize, seconds: u64) -> Result<()> {
    let churned = churn(threads, Duration::from_secs(seconds))?;
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

fn print_table(
    configs: &[Tracer],
    samples: &[Vec<Sample>],
    threads: usize,
    seconds: u64,
    rounds: usize,
) {
    println!();
    println!(
        "Loopback churn: {threads} client threads (connect, 1 byte each way, close), {seconds} s per run, {rounds} rounds interleaved"
    );
    println!(
        "| tracer | conn/s median (min–max) | vs none | events/s delivered | lost | tracer CPU s/s | tracer peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let baseline = samples
        .first()
        .map(|s| median(&mut s.iter().map(|x| x.rate).collect::<Vec<_>>()))
        .unwrap_or(f64::NAN);
    for (tracer, samples) in configs.iter().zip(samples) {
        let mut rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
        let med = median(&mut rates);
        let (min, max) = (rates[0], rates[rates.len() - 1]);
        let per_s = |x: u64| x as f64 / seconds as f64;
        let events = samples.iter().filter_map(|s| s.cost.events).map(per_s).collect::<Vec<_>>();
        let events = if events.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", median(&mut events.clone()))
        };
        let lost = if samples.iter().all(|s| s.cost.lost.is_none()) {
            "-".to_owned()
        } else {
            samples.iter().filter_map(|s| s.cost.lost).sum::<u64>().to_string()
        };
        let traced = *tracer != Tracer::Baseline;
        let cpu =
            median(&mut samples.iter().map(|s| s.cost.cpu_s / seconds as f64).collect::<Vec<_>>());
        let rss = samples.iter().map(|s| s.cost.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "| {} | {med:.0} ({min:.0}–{max:.0}) | {:.1}% | {events} | {lost} | {} | {} |",
            tracer.name(),
            med / baseline * 100.0,
            if traced { format!("{cpu:.2}") } else { "-".to_owned() },
            if traced { format!("{rss:.1}") } else { "-".to_owned() },
        );
    }
}
