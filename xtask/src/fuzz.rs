//! `cargo xtask fuzz --seconds N`: every libFuzzer target of `fuzz/` (the parsers of untrusted
//! input: ring records, sock_diag replies, /proc and tracefs texts, reports given to
//! `compare`) for N seconds each, with cargo-fuzz on the nightly toolchain.
//!
//! Needs no root: tcptrace's build script builds the kernel programs (nightly rust-src and
//! bpf-linker, which `cargo xtask setup` installs) but loads nothing. The committed seeds in
//! `fuzz/corpus/<target>/` are only read; what the fuzzer finds goes to a scratch corpus under
//! `fuzz/target/`, so a run leaves the tree clean. A crash or an assertion that fails makes the
//! task fail with the reproducer's path and the command that replays it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup::run_checked, workspace_root};

/// Longest a single input may run before libFuzzer calls it a hang, in seconds.
const INPUT_TIMEOUT_S: u32 = 10;

pub fn fuzz(seconds: u32) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    run_checked(nightly(&dir).args(["fuzz", "build"]))?;
    let targets = targets(&dir)?;
    let mut failures = Vec::new();
    for target in &targets {
        if let Err(failure) = run_target(&dir, target, seconds) {
            eprintln!("fuzz: {failure:#}");
            failures.push(format!("{failure:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} fuzz targets failed:\n{}",
            failures.len(),
            targets.len(),
            failures.join("\n")
        );
    }
    println!("fuzz: {seconds} s each, no failure: {}", targets.join(", "));
    Ok(())
}

/// Runs one target for `seconds`; on a crash, the error names the reproducer.
fn run_target(dir: &Path, target: &str, seconds: u32) -> Result<()> {
    let scratch = dir.join("target/corpus-run").join(target);
    fs::create_dir_all(&scratch)
        .with_context(|| format!("creating the scratch corpus {}", scratch.display()))?;
    let seeds = dir.join("corpus").join(target);
    let started = SystemTime::now();
    println!("fuzz: {target} for {seconds} s");
    // The first corpus directory is the one libFuzzer writes to.
    let status = nightly(dir)
        .args(["fuzz", "run", target])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-print_final_stats=1")
        .status()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    if status.success() {
        return Ok(());
    }
    let found = artifacts_since(&dir.join("artifacts").join(target), started);
    let Some(reproducer) = found.first() else {
        bail!("{target} failed ({status}) and left no reproducer");
    };
    bail!(
        "{target} failed ({status}); reproducer: {}; replay it with: cd fuzz && cargo +nightly \
         fuzz run {target} {}",
        reproducer.display(),
        reproducer.display()
    )
}

/// `cargo +nightly` in `dir`, through rustup's proxy (the `CARGO` that runs xtask is stable's).
fn nightly(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").current_dir(dir);
    cmd
}

/// Installs cargo-fuzz when `cargo fuzz` is not there; idempotent.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// The targets `fuzz/Cargo.toml` declares, as `cargo fuzz list` prints them.
fn targets(dir: &Path) -> Result<Vec<String>> {
    let out = nightly(dir)
        .args(["fuzz", "list"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed ({})", out.status);
    }
    let targets: Vec<String> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no target in {}", dir.display());
    }
    Ok(targets)
}

/// Files libFuzzer wrote to `dir` (crash-, leak-, timeout-, oom-…) since `since`, newest first.
fn artifacts_since(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let modified = entry.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| (modified, entry.path()))
        })
        .collect();
    found.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    found.into_iter().map(|(_, path)| path).collect()
}
