//! `cargo xtask setup`: installs every prerequisite, idempotently, on a fresh Debian machine.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Debian packages: LLVM 22 to build bpf-linker (matches the nightly rustc's LLVM), qemu and
/// busybox for the VM tier, iproute2 for network namespaces (and `ss`, which the scenario tests
/// read), xz for the VM kernel, nginx and redis-server for the leak scenarios
/// (tests/leaks_scenarios.rs), which start their own instances inside namespaces, gcc for the
/// symbolization fixtures (tests/fixtures/leaky.c), podman and runc for the container tests
/// (tests/containers.rs: an image imported from busybox-static, no registry), man-db for the
/// package's install test (`man 8 tcptrace`), musl-tools for the packaged binary (static, with
/// musl: ring's C parts are compiled with musl-gcc), prometheus (with promtool) and curl for `serve`'s
/// tests (tests/serve.rs: a real Prometheus scrapes it; promtool checks the exposition and the
/// alert rules in deploy/), python3 and python3-dev for the interpreter-frame tests
/// (tests/python.rs: Debian's interpreter runs the leaking program; its headers check the
/// layout tcptrace reads it with), OpenJDK 17 for the Java ones (tests/java.rs) and Node.js
/// for the JavaScript ones (tests/node.rs; a machine with NodeSource's `nodejs` keeps it).
const DEBIAN_PACKAGES: &[&str] = &[
    "gcc",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "iproute2",
    "nginx",
    "redis-server",
    "podman",
    "runc",
    "man-db",
    "prometheus",
    "curl",
    "musl-tools",
    "python3",
    "python3-dev",
    "openjdk-17-jdk-headless",
    "nodejs",
];
/// Services that the packages above start on install (Debian's postinst does, unless a
/// policy-rc.d forbids it) and enable at boot. The tests never use them: stopped and disabled.
const SERVICES_TO_STOP: &[&str] = &["nginx", "redis-server", "prometheus"];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The target of the packaged binary (see `dist`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.contains("ok installed"))
}

/// The peers `cargo xtask bench` compares with: bpftrace, and libbpf-tools (tcplife, tcpstates,
/// built by Debian from bcc's sources); and bpftool, which reads every program's run time.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "libbpf-tools", "bpftool"];

/// Installs the benchmark's peers (idempotent); a peer that cannot be installed is left out
/// of the benchmark, which says so.
pub fn bench_peers() {
    if let Err(e) = install(BENCH_PACKAGES) {
        eprintln!("setup: the benchmark's peers could not be installed ({e:#})");
    }
}

fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

pub fn setup() -> Result<()> {
    install(DEBIAN_PACKAGES)?;

    for service in SERVICES_TO_STOP {
        stop_service(service);
    }

    if !succeeds("rustup", &["run", "nightly", "rustc", "--version"]) {
        eprintln!("setup: installing the nightly toolchain");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
            .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // The packaged binary is static (`dist`): the C library it links is musl's.
    let targets = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == MUSL_TARGET) {
        eprintln!("setup: adding the {MUSL_TARGET} target");
        run_checked(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }

    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        run_checked(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    Ok(())
}

/// Stops `service` and keeps it from starting at boot, under systemd or SysV init; quiet and
/// without effect when it is already stopped and disabled, or not installed.
fn stop_service(service: &str) {
    let unit = format!("{service}.service");
    if std::path::Path::new("/run/systemd/system").exists() {
        // systemd is PID 1.
        if succeeds("systemctl", &["is-active", "--quiet", &unit]) {
            eprintln!("setup: stopping the {service} service (the tests start their own)");
            warn_unless(succeeds("systemctl", &["stop", &unit]), "stop", service);
        }
        if succeeds("systemctl", &["is-enabled", "--quiet", &unit]) {
            warn_unless(succeeds("systemctl", &["disable", "--quiet", &unit]), "disable", service);
        }
        return;
    }
    // No systemd (a container): the init script, if the package installed one.
    let script = format!("/etc/init.d/{service}");
    if !std::path::Path::new(&script).exists() {
        return;
    }
    if succeeds(&script, &["status"]) {
        eprintln!("setup: stopping the {service} service (the tests start their own)");
        warn_unless(succeeds(&script, &["stop"]), "stop", service);
    }
    // update-rc.d turns the S (start) links into K (kill) links; done once.
    let starts_at_boot = |entry: std::fs::DirEntry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with('S')
            && name.trim_start_matches(|c: char| c == 'S' || c.is_ascii_digit()) == service
    };
    let links = std::fs::read_dir("/etc/rc2.d").is_ok_and(|dir| dir.flatten().any(starts_at_boot));
    if links {
        warn_unless(succeeds("update-rc.d", &[service, "disable"]), "disable", service);
    }
}

/// A service left running costs nothing to the tests (they use their own instances and ports):
/// say so and go on.
fn warn_unless(done: bool, action: &str, service: &str) {
    if !done {
        eprintln!("setup: warning: could not {action} the {service} service");
    }
}
