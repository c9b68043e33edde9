//! Runs programs inside a throwaway qemu VM booted from Debian 12's stock kernel.
//!
//! The host kernel refuses fentry and kprobes, but Debian's 6.1 kernel allows both and has
//! everything the tests need built in (BTF, tracefs, bpffs, loopback networking), so no modules
//! are needed. KVM is not usable here, so qemu emulates the CPU (TCG); booting the uncompressed
//! kernel through its PVH entry point keeps a boot at a few seconds.
//!
//! Every VM gets an initramfs made of two concatenated cpio archives: a base one shared by all
//! commands (busybox, `/init`, mount points) and one per command holding the program, its shared
//! libraries, the extra files and the script `/init` runs.
//!
//! The public API (`prepare_kernel`, `default_cache_dir`, `run`, `VmCommand`, `VmOutcome`) is
//! this module's, for `main` and `bench`; the submodules are private to it: `kernel` (the cached
//! Debian kernel), `initramfs` (the cpio images), `boot` (qemu), `console` (the serial output
//! and its exit marker) and `host` (tools on PATH). Imports point one way: this module uses the
//! submodules, `boot` uses `console`, `kernel` and `initramfs` use `host`; `console` and `host`
//! use none, and no submodule imports this one.

mod boot;
mod console;
mod host;
mod initramfs;
mod kernel;

use std::{
    env, fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
pub use console::VmOutcome;
pub use initramfs::VmCommand;
pub use kernel::prepare_kernel;

use self::{
    boot::boot,
    host::require_tool,
    initramfs::{build_base_archive, build_command_initrd},
};

/// `$XDG_CACHE_HOME/tcptrace/vm`, else `~/.cache/tcptrace/vm`: the kernel is large and must stay
/// out of the repository.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |var| env::var_os(var).filter(|value| !value.is_empty()).map(PathBuf::from);
    let base = non_empty("XDG_CACHE_HOME")
        .filter(|path| path.is_absolute())
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(|| env::temp_dir().join("cache"));
    base.join("tcptrace").join("vm")
}

/// Boots one VM per command; `extra_files` are additional host files (absolute paths) to place in
/// the VM. `timeout` bounds each VM (boot, run and power-off) separately.
pub fn run(
    kernel: &Path,
    commands: &[VmCommand],
    extra_files: &[PathBuf],
    timeout: Duration,
) -> Result<Vec<VmOutcome>> {
    // timeout(1) treats 0 as "no limit", which is never what a caller means.
    ensure!(!timeout.is_zero(), "the VM timeout must not be zero");
    ensure!(kernel.is_file(), "kernel {} does not exist", kernel.display());
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    require_tool("cpio", "cpio")?;
    require_tool("timeout", "coreutils")?;
    require_tool("ldd", "libc-bin")?;
    let busybox = require_tool("busybox", "busybox-static")?;

    let work = tempfile::Builder::new()
        .prefix("tcptrace-vm-")
        .tempdir()
        .context("creating a temporary directory for the initramfs")?;
    let base = build_base_archive(work.path(), &busybox)?;

    let mut outcomes = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        let initrd = work.path().join(format!("initrd-{index}.cpio"));
        build_command_initrd(work.path(), &base, command, extra_files, &initrd)
            .with_context(|| format!("building the initramfs for {}", command.name))?;
        let outcome = boot(kernel, &initrd, &command.name, timeout)
            .with_context(|| format!("running {} in a VM", command.name))?;
        // Test binaries can be large; don't keep one copy per command around.
        fs::remove_file(&initrd).with_context(|| format!("removing {}", initrd.display()))?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::{console::EXIT_MARKER, initramfs::INIT_SCRIPT};

    #[test]
    fn init_prints_the_marker_the_console_parses() {
        assert!(INIT_SCRIPT.contains(&format!("echo \"{EXIT_MARKER}$?\"")));
    }
}
