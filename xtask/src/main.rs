//! Project tasks: `cargo xtask setup | run | test | vm-test | bench | fuzz | dist`.

mod bench;
mod dist;
mod fuzz;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};
use setup::run_checked;

#[derive(Parser)]
#[command(about = "tcptrace development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (Debian packages, nightly rust-src, bpf-linker); idempotent
    Setup,
    /// Set up, build tcptrace in release mode and run it (default arguments: `trace`)
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit and root tests on this kernel (those of the `bench`
    /// feature too), then the VM tier
    Test {
        /// Skip the VM tier (stock distro kernel under qemu)
        #[arg(long)]
        host_only: bool,
    },
    /// Run the root tests inside Debian's stock kernel under qemu, in fentry and kprobe modes
    VmTest,
    /// Set up, then build the release binary and package it: target/dist/tcptrace_VERSION_amd64.deb
    /// and tcptrace-VERSION-x86_64-linux.tar.gz, with man pages and shell completions
    Dist {
        /// Then install the package here, run it from the installed files and remove it (root;
        /// `test` does this)
        #[arg(long)]
        check: bool,
    },
    /// Set up, then measure what tracing costs: loopback churn under every tracer side by side,
    /// and the user-space replay
    Bench(bench::BenchArgs),
    /// Run every fuzz target of fuzz/ (parsers of untrusted input) for a bounded time with
    /// cargo-fuzz on nightly, installing cargo-fuzz if missing; fails on a crash, naming the
    /// reproducer. Needs no root
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Run one program inside Debian's stock kernel under qemu, as root, with the files it
    /// needs placed at their host paths (their libraries too), e.g. `cargo xtask vm-run --file
    /// /usr/sbin/bpftool -- /bin/sh -c 'bpftool prog'`
    VmRun {
        /// A host file to place in the VM (repeatable); the program's own libraries come along
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Seconds before the VM is stopped
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The program (an absolute path) and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The benchmark's rounds alone, without building (what `bench --vm` runs in the VM)
    #[command(hide = true)]
    BenchRounds(bench::RoundsOnly),
    /// The benchmark's churn generator (run by `bench`, as root)
    #[command(hide = true)]
    Churn {
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        seconds: u64,
        #[arg(long, value_enum)]
        workload: bench::Workload,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Run { args } => run(args),
        Task::Test { host_only } => test(host_only),
        Task::VmTest => setup::setup().and_then(|()| vm_test(None)),
        Task::Dist { check } => setup::setup().and_then(|()| {
            let dist = dist::dist()?;
            if check { dist::install_test(&dist) } else { Ok(()) }
        }),
        Task::Bench(args) => setup::setup().and_then(|()| {
            setup::bench_peers();
            bench::bench(&args)
        }),
        Task::Fuzz { seconds } => fuzz::fuzz(seconds),
        Task::VmRun { files, timeout, command } => {
            setup::setup().and_then(|()| vm_run(&files, timeout, &command))
        }
        Task::BenchRounds(args) => bench::run_rounds(&args.rounds, &args.tcptrace),
        Task::Churn { threads, seconds, workload } => bench::churn_main(threads, seconds, workload),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(mut args: Vec<String>) -> Result<()> {
    setup::setup()?;
    run_checked(cargo().args(["build", "--release", "-p", "tcptrace"]))?;
    if args.is_empty() {
        args.push("trace".to_owned());
    }
    let binary = workspace_root().join("target/release/tcptrace");
    let status = Command::new(&binary)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("tcptrace exited with {status}");
    }
    Ok(())
}

fn test(host_only: bool) -> Result<()> {
    setup::setup()?;
    // Root tests are #[ignore]d so a plain unprivileged `cargo test` passes; here they run.
    run_checked(cargo().args(["test", "--", "--include-ignored"]))?;
    bench_feature_tests()?;
    // The package as a user installs it, from the files it installs.
    let dist = dist::dist()?;
    dist::install_test(&dist)?;
    if !host_only {
        vm_test(Some(&dist.deb))?;
    }
    Ok(())
}

/// The root tests of tcptrace's `bench` feature (the floor's and the minimum's programs), which
/// the default-feature run above cannot see: `kernel_events`' tests with `bench` in their names,
/// on this kernel. Fails when they fail or when the filter matches none.
fn bench_feature_tests() -> Result<()> {
    let out = cargo()
        .args(["test", "-p", "tcptrace", "--features", bench::FEATURE, "--test", "kernel_events"])
        .args(["--", "--include-ignored", BENCH_TEST_FILTER])
        .stderr(Stdio::inherit())
        .output()
        .context("running the bench feature's tests")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    let (passed, failed) = count_results(&stdout);
    println!("bench feature tests: {passed} passed, {failed} failed");
    if !out.status.success() {
        bail!("the bench feature's tests failed ({})", out.status);
    }
    if passed == 0 {
        bail!(
            "no test of kernel_events matches `{BENCH_TEST_FILTER}` with --features {}",
            bench::FEATURE
        );
    }
    Ok(())
}

/// The VM command that runs the packaged binary.
const PACKAGED_LEAKS: &str = "package:leaks";

/// libtest's name filter for the library's unit tests the VM tier runs (see `vm_test`).
const LIB_TESTS_IN_VM: &str = "kernel::";

/// libtest's name filter for the tests that need the `bench` feature.
const BENCH_TEST_FILTER: &str = "bench";

/// Test binaries that only the host tier runs: the leak scenarios start Debian's nginx and
/// redis-server and use iproute2 in network namespaces, the inventory tests need sock_diag,
/// which Debian's kernel builds as modules (inet_diag, tcp_diag), and the symbolization, stacks
/// and run tests compile their fixtures with gcc and rustc (run also uses bash), the
/// reliability and perf-map tests run commands as another user, and the soak test's 3,000
/// processes would take minutes under emulation, the container tests run podman, and the serve
/// tests run Debian's prometheus and promtool, the Java tests run OpenJDK with its class
/// library and the Node.js tests Node's 120 MB executable (the Python tests run in part:
/// `partly_in_vm`); the VM's initramfs holds busybox and the test binaries only. The kernel side of stacks and of run's process
/// following is tested in the VM by kernel_events. `leaks` itself runs in the VM (cli_trace),
/// without the inventory, as it would on such a host.
const HOST_ONLY_TESTS: &[&str] = &[
    "leaks_scenarios",
    "inventory",
    "symbolize",
    "stacks",
    "run",
    "reliability",
    "perf_map_hostile",
    "soak",
    "containers",
    "serve",
    "java",
    "node",
];

/// Test binaries the VM tier runs in part, once (their subject does not depend on the close
/// hook), with the libtest filters that pick the part, and the host files it needs: of the
/// Python tests, those that need only Debian's interpreter and the standard library modules
/// the leaking program imports (not the container test: no podman; nor the header test: no
/// gcc).
type VmPart = (&'static [&'static str], fn() -> Result<Vec<PathBuf>>);

fn partly_in_vm(name: &str) -> Option<VmPart> {
    match name {
        "python" => Some((&["named_by_its_function", "--skip", "container"], python_files)),
        _ => None,
    }
}

/// Debian's python3.11 and the files of the modules it loads to run the tests' program
/// (`import os, socket, sys, time` and a connect to an address), as the host's interpreter
/// lists them.
fn python_files() -> Result<Vec<PathBuf>> {
    const PYTHON: &str = "/usr/bin/python3.11";
    // Resolving a name as create_connection() does loads the idna codec too.
    const LIST: &str = r"import os, socket, sys, time
socket.getaddrinfo('127.0.0.1', 1)
print('\n'.join(sorted({m.__file__ for m in sys.modules.values() if getattr(m, '__file__', None)})))";
    let out = Command::new(PYTHON)
        .args(["-c", LIST])
        .output()
        .with_context(|| format!("running {PYTHON} (cargo xtask setup installs python3)"))?;
    ensure!(out.status.success(), "{PYTHON} failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut files = vec![PathBuf::from(PYTHON)];
    files.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
    Ok(files)
}

/// Test executables of the tcptrace package (unit tests and integration tests), built once.
fn build_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args(["test", "-p", "tcptrace", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building test binaries")?;
    if !out.status.success() {
        bail!("building test binaries failed");
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        // The bin target's unit-test binary holds no tests: skip its VM boot.
        let is_bin = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
        if msg["profile"]["test"].as_bool() == Some(true)
            && !is_bin
            && !HOST_ONLY_TESTS.contains(&name)
        {
            binaries.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if binaries.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok(binaries)
}

/// "test result: ok. 12 passed; 0 failed; ..." → (passed, failed), summed over the output.
fn count_results(output: &str) -> (u32, u32) {
    let mut totals = (0, 0);
    for line in output.lines().filter_map(|l| l.split("test result:").nth(1)) {
        let count = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("ok.")
                        .trim_start_matches("FAILED.")
                        .trim()
                        .strip_suffix(word)
                })
                .and_then(|n| n.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        totals.0 += count("passed");
        totals.1 += count("failed");
    }
    totals
}

fn vm_run(files: &[PathBuf], timeout: u64, command: &[String]) -> Result<()> {
    let (program, args) = command.split_first().context("no program to run")?;
    let kernel = vm::prepare_kernel(&vm::default_cache_dir())?;
    let command = vm::VmCommand {
        name: "run".to_owned(),
        program: PathBuf::from(program),
        args: args.to_vec(),
        env: Vec::new(),
        files: Vec::new(),
    };
    let outcomes = vm::run(&kernel, &[command], files, Duration::from_secs(timeout))?;
    let outcome = outcomes.first().context("the VM ran nothing")?;
    match outcome.failure() {
        None => Ok(()),
        Some(failure) => bail!("in the VM, {failure}"),
    }
}

/// The test binaries in fentry and kprobe mode inside the stock kernel; with `package`, also
/// `leaks` from the package's own binary (extracted from the .deb, unchanged): the packaged
/// binary runs on Debian's kernel without rebuilding.
fn vm_test(package: Option<&Path>) -> Result<()> {
    let binaries = build_test_binaries()?;
    run_checked(cargo().args(["build", "-p", "tcptrace"]))?;
    let files = [workspace_root().join("target/debug/tcptrace")];
    let kernel = vm::prepare_kernel(&vm::default_cache_dir())?;
    let mut commands = Vec::new();
    let extracted = tempfile::tempdir().context("a directory for the package")?;
    if let Some(deb) = package {
        run_checked(Command::new("dpkg-deb").arg("-x").arg(deb).arg(extracted.path()))?;
        commands.push(vm::VmCommand {
            name: PACKAGED_LEAKS.to_owned(),
            program: extracted.path().join("usr/sbin/tcptrace"),
            args: ["leaks", "--duration", "2s"].map(str::to_owned).to_vec(),
            env: Vec::new(),
            files: Vec::new(),
        });
    }
    for mode in ["fentry", "kprobe"] {
        // Of the library's unit tests only the `kernel` module's read the running kernel (its
        // BTF, tracefs); the rest is pure logic the host tier ran already, and took two
        // minutes under emulation. They load no program, so they run once, not per mode.
        for (name, exe) in binaries.iter().filter(|(name, _)| {
            mode == "fentry" || (name != "tcptrace" && partly_in_vm(name).is_none())
        }) {
            let mut args = vec!["--include-ignored".to_owned(), "--test-threads=1".to_owned()];
            if name == "tcptrace" {
                args.push(LIB_TESTS_IN_VM.to_owned());
            }
            let mut files = Vec::new();
            if let Some((filters, needs)) = partly_in_vm(name) {
                args.extend(filters.iter().map(|f| (*f).to_owned()));
                files = needs()?;
            }
            commands.push(vm::VmCommand {
                name: format!("{mode}:{name}"),
                program: exe.clone(),
                args,
                env: vec![("TCPTRACE_TEST_CLOSE_HOOK".to_owned(), mode.to_owned())],
                files,
            });
        }
    }
    let outcomes = vm::run(&kernel, &commands, &files, Duration::from_secs(600))?;
    let (mut passed, mut failed, mut broken) = (0, 0, Vec::new());
    for outcome in &outcomes {
        if outcome.name == PACKAGED_LEAKS && !outcome.output.contains("tcptrace leaks: ") {
            broken.push(format!("{PACKAGED_LEAKS} printed no report"));
        }
        let (p, f) = count_results(&outcome.output);
        passed += p;
        failed += f;
        broken.extend(outcome.failure());
    }
    println!("vm-test: {passed} passed, {failed} failed");
    if !broken.is_empty() {
        bail!("VM tier failed: {}", broken.join("; "));
    }
    if passed == 0 {
        bail!("VM tier ran no test");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::{Cli, count_results};

    /// clap checks a definition (unique names among flattened arguments...) only when it
    /// parses: this makes a bad one fail here, not in CI's first `cargo xtask` call.
    #[test]
    fn the_command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn counts_libtest_summaries() {
        let out = "test result: ok. 12 passed; 0 failed; 1 ignored\n[vm] test result: FAILED. 3 passed; 2 failed; 0 ignored";
        assert_eq!(count_results(out), (15, 2));
    }

    #[test]
    fn counts_a_filter_that_matched_nothing_as_none() {
        let out = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 41 filtered out; finished in 0.00s";
        assert_eq!(count_results(out), (0, 0));
    }
}
