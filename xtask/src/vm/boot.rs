//! Booting one VM: qemu (TCG, no network, serial console on stdout) bounded by timeout(1), its
//! console streamed live and collected into a `VmOutcome`.
//!
//! Imports only `console`; the `vm` module calls `boot` once per command.

use std::{
    io,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::console::{VmOutcome, forward, parse_exit_marker};

/// Boots one VM, streaming its console live and collecting it.
pub(super) fn boot(
    kernel: &Path,
    initrd: &Path,
    name: &str,
    timeout: Duration,
) -> Result<VmOutcome> {
    let prefix = format!("[vm:{name}] ");
    let started = Instant::now();
    let mut qemu = Command::new("timeout")
        // Keeps qemu in our process group so Ctrl-C stops it too; --kill-after covers a qemu
        // that ignores SIGTERM.
        .args(["--foreground", "--kill-after=10s"])
        .arg(format!("{:.3}s", timeout.as_secs_f64()))
        .arg("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-net", "none"])
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // -nographic would otherwise put an interactive terminal into raw mode.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let serial = qemu.stdout.take().context("qemu has no stdout")?;
    let errors = qemu.stderr.take().context("qemu has no stderr")?;

    let error_prefix = prefix.clone();
    let error_reader = thread::spawn(move || forward(errors, io::stderr(), &error_prefix));
    let console = forward(serial, io::stdout(), &prefix).context("reading the VM console")?;
    let qemu_errors = error_reader
        .join()
        .map_err(|_| anyhow!("the qemu stderr reader panicked"))?
        .context("reading qemu's stderr")?;
    let status = qemu.wait().context("waiting for qemu")?;
    let elapsed = started.elapsed().as_secs_f64();

    let exit_code = parse_exit_marker(&console);
    match exit_code {
        Some(code) => eprintln!("{prefix}exit status {code} after {elapsed:.1} s"),
        // timeout(1) exits with 124 when it had to stop the command.
        None if status.code() == Some(124) => {
            eprintln!("{prefix}timed out after {elapsed:.1} s without an exit marker");
        }
        None => eprintln!("{prefix}no exit marker (qemu: {status}) after {elapsed:.1} s"),
    }
    Ok(VmOutcome { name: name.to_owned(), exit_code, output: console + &qemu_errors })
}
