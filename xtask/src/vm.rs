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

use std::{
    collections::BTreeSet,
    env,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// One program to run in its own VM.
pub struct VmCommand {
    /// Label used in log lines.
    pub name: String,
    /// Absolute host path of the executable; it keeps that path inside the VM.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What came out of one VM.
pub struct VmOutcome {
    pub name: String,
    /// The program's exit status, or `None` when the VM never printed the exit marker (kernel
    /// panic, hang, timeout, qemu failure).
    pub exit_code: Option<i32>,
    /// The VM's serial console output, followed by anything qemu itself printed on stderr.
    pub output: String,
}

impl VmOutcome {
    /// Why the program did not succeed, or None when it exited with 0.
    pub fn failure(&self) -> Option<String> {
        match self.exit_code {
            Some(0) => None,
            Some(code) => Some(format!("{} exited with {code}", self.name)),
            None => Some(format!("{} did not finish (panic, hang or timeout)", self.name)),
        }
    }
}

/// Metapackage whose dependency names the current kernel ABI; the ABI number changes with
/// security updates and old packages leave the archive, so it is looked up on every call.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
const EXIT_MARKER: &str = "TCPTRACE-VM-EXIT=";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
const ELF_MAGIC: &[u8] = b"\x7fELF";
/// Cached kernel names: the uncompressed ELF (PVH boot, fast) or the bzImage fallback.
const VMLINUX: &str = "vmlinux";
const BZIMAGE: &str = "vmlinuz";
/// The per-command script, relative to the VM's root; `INIT_SCRIPT` runs it by this path.
const COMMAND_SCRIPT: &str = "tcptrace-vm/command.sh";

const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# PID 1 of the test VM. The kernel's built-in initramfs provides /dev/console, so output reaches
# the serial port before devtmpfs is mounted.

# SeaBIOS leaves "Booting from ROM.." without a newline; keep the program's first line separate.
echo
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Files placed under /tmp (a test binary built there) would be hidden by a fresh tmpfs; rootfs
# is itself a writable tmpfs, so keep it in that case.
if [ -z "$(ls -A /tmp)" ]; then mount -t tmpfs tmpfs /tmp; fi
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
cd /tmp
sh /tcptrace-vm/command.sh
echo "TCPTRACE-VM-EXIT=$?"
# If poweroff fails, PID 1 exits, the kernel panics and panic=-1 with -no-reboot stops qemu.
poweroff -f
"#;

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

/// Downloads (once, cached) and prepares the kernel; returns the path to pass to qemu -kernel.
pub fn prepare_kernel(cache_dir: &Path) -> Result<PathBuf> {
    require_tool("apt-cache", "apt")?;
    let package = kernel_package()?;
    let dir = cache_dir.join(&package);
    for name in [VMLINUX, BZIMAGE] {
        let cached = dir.join(name);
        if cached.is_file() {
            return Ok(cached);
        }
    }

    require_tool("apt-get", "apt")?;
    require_tool("dpkg-deb", "dpkg")?;
    require_tool("tar", "tar")?;
    require_tool("xz", "xz-utils")?;
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache directory {}", cache_dir.display()))?;
    // Working inside the cache directory keeps the final rename on one filesystem, so
    // concurrent callers only ever see a complete kernel.
    let work = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .with_context(|| format!("creating a temporary directory in {}", cache_dir.display()))?;

    eprintln!("[vm] downloading {package} into {}", cache_dir.display());
    run_checked(Command::new("apt-get").args(["download", &package]).current_dir(work.path()))?;
    let deb = find_entry(work.path(), |name| name.ends_with(".deb"))?
        .with_context(|| format!("apt-get download {package} produced no .deb"))?;
    let bzimage = extract_vmlinuz(&deb, work.path())?;

    let (source, name) = match extract_elf(&bzimage, work.path())? {
        Some(elf) => (elf, VMLINUX),
        None => {
            eprintln!(
                "[vm] no xz-compressed ELF found in {}; booting the bzImage (slower)",
                bzimage.display()
            );
            (bzimage, BZIMAGE)
        }
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernel = dir.join(name);
    fs::rename(&source, &kernel)
        .with_context(|| format!("moving {} to {}", source.display(), kernel.display()))?;
    eprintln!("[vm] kernel ready: {}", kernel.display());
    Ok(kernel)
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

/// Name of the versioned kernel package the metapackage currently depends on, e.g.
/// `linux-image-6.1.0-26-amd64`.
fn kernel_package() -> Result<String> {
    let listing = run_checked(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))
        .context("querying apt for the current kernel package (has `apt-get update` been run?)")?;
    listing
        .lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|dep| {
            *dep != KERNEL_METAPACKAGE
                && dep.starts_with("linux-image-")
                && dep.ends_with("-amd64")
                && dep
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".+-".contains(&b))
        })
        .map(str::to_owned)
        .with_context(|| {
            format!("`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-*-amd64 package")
        })
}

/// Extracts only `./boot/vmlinuz-*`: the rest of the package is hundreds of MB of modules.
fn extract_vmlinuz(deb: &Path, dest: &Path) -> Result<PathBuf> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tarball = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let tar_status = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dest)
        .args(["--wildcards", "./boot/vmlinuz-*"])
        .stdin(tarball)
        .status()
        .context("running tar")?;
    let dpkg_status = dpkg.wait().context("waiting for dpkg-deb")?;
    ensure!(
        dpkg_status.success(),
        "dpkg-deb --fsys-tarfile {} failed: {dpkg_status}",
        deb.display()
    );
    ensure!(
        tar_status.success(),
        "extracting ./boot/vmlinuz-* from {} failed: {tar_status}",
        deb.display()
    );
    find_entry(&dest.join("boot"), |name| name.starts_with("vmlinuz-"))?
        .with_context(|| format!("{} contains no ./boot/vmlinuz-*", deb.display()))
}

/// Debian's bzImage wraps an xz-compressed ELF kernel; qemu boots that ELF directly through its
/// PVH note, skipping the real-mode setup and self-decompression that are slow under TCG.
fn extract_elf(bzimage: &Path, work: &Path) -> Result<Option<PathBuf>> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let payload = work.join("payload.xz");
    let elf = work.join(VMLINUX);
    let candidates = image
        .windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, window)| *window == XZ_MAGIC)
        .map(|(offset, _)| offset);
    for offset in candidates {
        fs::write(&payload, &image[offset..])
            .with_context(|| format!("writing {}", payload.display()))?;
        let out = File::create(&elf).with_context(|| format!("creating {}", elf.display()))?;
        // The payload is followed by its size and padding; --single-stream ignores that tail.
        let status = Command::new("xz")
            .args(["-dc", "--single-stream"])
            .arg(&payload)
            .stdout(out)
            .stderr(Stdio::null())
            .status()
            .context("running xz")?;
        if status.success() && starts_with(&elf, ELF_MAGIC)? {
            fs::remove_file(&payload).with_context(|| format!("removing {}", payload.display()))?;
            return Ok(Some(elf));
        }
    }
    Ok(None)
}

/// Busybox, `/init` and mount points; shared by every command's initramfs.
fn build_base_archive(work: &Path, busybox: &Path) -> Result<PathBuf> {
    let root = work.join("base");
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "etc",
        "run",
        "tcptrace-vm",
    ] {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let installed = root.join("bin/busybox");
    fs::copy(busybox, &installed)
        .with_context(|| format!("copying {} to {}", busybox.display(), installed.display()))?;
    // Debian's non-static busybox package also provides `busybox`; carry its libraries rather
    // than failing in the VM.
    for library in shared_libraries(busybox)? {
        stage(&root, &library)?;
    }
    let init = root.join("init");
    fs::write(&init, INIT_SCRIPT).with_context(|| format!("writing {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", init.display()))?;

    let archive = work.join("base.cpio");
    write_cpio(&root, &archive)?;
    Ok(archive)
}

/// Writes the base archive followed by a second one holding the command's files: the kernel
/// unpacks concatenated archives in order.
fn build_command_initrd(
    work: &Path,
    base: &Path,
    command: &VmCommand,
    extra_files: &[PathBuf],
    initrd: &Path,
) -> Result<()> {
    let staging = tempfile::Builder::new()
        .prefix("command-")
        .tempdir_in(work)
        .context("creating a staging directory")?;
    let root = staging.path();

    let mut files = BTreeSet::new();
    for file in std::iter::once(&command.program).chain(extra_files) {
        files.insert(file.clone());
        files.extend(shared_libraries(file)?);
    }
    // Always present so a dynamically linked program added without ldd's help still starts.
    files.insert(PathBuf::from(LOADER));
    for file in &files {
        stage(root, file)?;
    }

    let script = root.join(COMMAND_SCRIPT);
    if let Some(parent) = script.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(&script, command_script(command)?)
        .with_context(|| format!("writing {}", script.display()))?;

    let command_archive = work.join("command.cpio");
    write_cpio(root, &command_archive)?;
    fs::copy(base, initrd)
        .with_context(|| format!("copying {} to {}", base.display(), initrd.display()))?;
    let mut out = OpenOptions::new()
        .append(true)
        .open(initrd)
        .with_context(|| format!("opening {}", initrd.display()))?;
    let mut archive = File::open(&command_archive)
        .with_context(|| format!("opening {}", command_archive.display()))?;
    io::copy(&mut archive, &mut out).with_context(|| {
        format!("appending {} to {}", command_archive.display(), initrd.display())
    })?;
    fs::remove_file(&command_archive)
        .with_context(|| format!("removing {}", command_archive.display()))?;
    Ok(())
}

/// The shell script `/init` runs: environment then `exec`, so the program's exit status (or
/// 128+signal) is what `/init` reports.
fn command_script(command: &VmCommand) -> Result<Vec<u8>> {
    let mut script = Vec::new();
    for (key, value) in &command.env {
        let valid_name = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        ensure!(valid_name, "{}: `{key}` is not a valid environment variable name", command.name);
        script.extend_from_slice(format!("export {key}=").as_bytes());
        script.extend(shell_quote(value.as_bytes())?);
        script.push(b'\n');
    }
    script.extend_from_slice(b"exec ");
    script.extend(shell_quote(command.program.as_os_str().as_bytes())?);
    for arg in &command.args {
        script.push(b' ');
        script.extend(shell_quote(arg.as_bytes())?);
    }
    script.push(b'\n');
    Ok(script)
}

/// Single-quotes a word for sh; inside single quotes only `'` itself needs escaping.
fn shell_quote(word: &[u8]) -> Result<Vec<u8>> {
    ensure!(!word.contains(&0), "a command word contains a NUL byte");
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_-./=:,+@%".contains(b);
    if !word.is_empty() && word.iter().all(plain) {
        return Ok(word.to_vec());
    }
    let mut quoted = vec![b'\''];
    for &b in word {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    Ok(quoted)
}

/// Copies a host file into the staging tree at the same absolute path, since test binaries embed
/// absolute paths. Copying (rather than archiving host paths) dereferences the merged-/usr
/// symlinks such as /lib and /lib64.
fn stage(root: &Path, host_path: &Path) -> Result<()> {
    let relative = vm_relative_path(host_path)?;
    ensure!(
        !host_path.is_dir(),
        "{} is a directory; only files can be placed in the VM",
        host_path.display()
    );
    let dest = root.join(relative);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(host_path, &dest)
        .with_context(|| format!("copying {} into the initramfs", host_path.display()))?;
    Ok(())
}

fn vm_relative_path(path: &Path) -> Result<&Path> {
    ensure!(path.is_absolute(), "{} is not an absolute path", path.display());
    ensure!(
        path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{} must not contain `.` or `..`",
        path.display()
    );
    path.strip_prefix("/").with_context(|| format!("{} is not an absolute path", path.display()))
}

/// The shared libraries `ldd` lists for an ELF file; empty for static binaries and non-ELF files
/// (scripts, data).
fn shared_libraries(file: &Path) -> Result<Vec<PathBuf>> {
    if !starts_with(file, ELF_MAGIC)? {
        return Ok(Vec::new());
    }
    let output = Command::new("ldd")
        .arg(file)
        .output()
        .with_context(|| format!("running ldd {}", file.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed ({}): {}", file.display(), output.status, stderr.trim());
    }
    let mut libraries = Vec::new();
    for line in stdout.lines().map(str::trim) {
        // Lines look like `libc.so.6 => /lib/.../libc.so.6 (0x...)`, `/lib64/ld-linux... (0x...)`
        // or `linux-vdso.so.1 (0x...)`; the vDSO has no file.
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} needs {}, which ldd cannot find", file.display(), name.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or(target).trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Archives everything under `root` in newc format, parents before children as the kernel's
/// unpacker needs.
fn write_cpio(root: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    collect_entries(root, Path::new(""), &mut names)?;
    let mut list = Vec::new();
    for name in &names {
        list.extend_from_slice(name.as_os_str().as_bytes());
        list.push(b'\n');
    }

    let out = File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut cpio = Command::new("cpio")
        // Owned by root inside the VM whoever builds it.
        .args(["-o", "-H", "newc", "--quiet", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio has no stdin")?;
    stdin.write_all(&list).context("sending the file list to cpio")?;
    drop(stdin);
    let status = cpio.wait().context("waiting for cpio")?;
    ensure!(status.success(), "cpio failed while writing {}: {status}", archive.display());
    Ok(())
}

fn collect_entries(root: &Path, relative: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(relative);
    let mut entries = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    for name in entries {
        let child = relative.join(&name);
        let is_dir = fs::symlink_metadata(root.join(&child))
            .with_context(|| format!("inspecting {}", root.join(&child).display()))?
            .is_dir();
        names.push(child.clone());
        if is_dir {
            collect_entries(root, &child, names)?;
        }
    }
    Ok(())
}

/// Boots one VM, streaming its console live and collecting it.
fn boot(kernel: &Path, initrd: &Path, name: &str, timeout: Duration) -> Result<VmOutcome> {
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

/// Copies `reader` line by line to `writer` with a prefix and returns the lines without it.
fn forward(reader: impl Read, mut writer: impl Write, prefix: &str) -> io::Result<String> {
    let mut reader = BufReader::new(reader);
    let mut collected = String::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(collected);
        }
        let line = printable(&String::from_utf8_lossy(&raw));
        // Losing a log line (closed stdout) must not abandon the VM or its collected output.
        let _ = writeln!(writer, "{prefix}{line}");
        collected.push_str(&line);
        collected.push('\n');
    }
}

/// Drops terminal escape sequences and control characters: SeaBIOS clears and resets the screen
/// (`ESC c`), which would wipe the caller's terminal, and the console ends lines with `\r\n`.
fn printable(raw: &str) -> String {
    let mut line = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI sequences run to a final byte in @..~; other escapes are one character.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => line.push(c),
            c if c.is_control() => {}
            c => line.push(c),
        }
    }
    line
}

/// The status from the last marker line; the last one wins in case the program printed
/// something marker-like itself.
fn parse_exit_marker(console: &str) -> Option<i32> {
    console.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(EXIT_MARKER)?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// Finds an executable on PATH, or explains which Debian package provides it.
fn require_tool(tool: &str, package: &str) -> Result<PathBuf> {
    let executable = |path: &PathBuf| {
        fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(tool))
        .find(executable)
        .with_context(|| {
            format!(
                "`{tool}` was not found on PATH; install the Debian package `{package}` \
                 (apt-get install {package})"
            )
        })
}

/// Runs a command to completion, returning its stdout; the error carries its stderr.
fn run_checked(command: &mut Command) -> Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output =
        command.stderr(Stdio::piped()).output().with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).with_context(|| format!("{program} printed invalid UTF-8"))
}

/// The first directory entry whose name matches.
fn find_entry(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_name().to_str().is_some_and(&matches) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

fn starts_with(file: &Path, magic: &[u8]) -> Result<bool> {
    let mut head = Vec::with_capacity(magic.len());
    File::open(file)
        .with_context(|| format!("opening {}", file.display()))?
        .take(magic.len() as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(head == magic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_shell_words() {
        let quote = |word: &str| String::from_utf8(shell_quote(word.as_bytes()).unwrap()).unwrap();
        assert_eq!(quote("/work/main/target/debug/tcptrace"), "/work/main/target/debug/tcptrace");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's $HOME"), r"'it'\''s $HOME'");
        assert!(shell_quote(b"a\0b").is_err());
    }

    #[test]
    fn strips_terminal_control() {
        assert_eq!(printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(printable("a\tb\n"), "a\tb");
    }

    #[test]
    fn parses_the_last_exit_marker() {
        assert_eq!(parse_exit_marker("boot\nTCPTRACE-VM-EXIT=7\r\n"), Some(7));
        assert_eq!(parse_exit_marker("TCPTRACE-VM-EXIT=1\n[ 1.0] x TCPTRACE-VM-EXIT=0\n"), Some(0));
        assert_eq!(parse_exit_marker("Kernel panic - not syncing\n"), None);
    }
}
