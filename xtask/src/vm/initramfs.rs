//! The VM's initramfs: a base cpio archive shared by every command (busybox, `/init`, mount
//! points) and, appended to it, one per command holding the program, its shared libraries (as
//! `ldd` lists them), the extra files at their host paths and the script `/init` runs.
//!
//! Defines `VmCommand` (re-exported by the `vm` module) and imports only `host`. `/init` prints
//! the exit marker that `console` parses.

use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::host::{ELF_MAGIC, starts_with};

/// One program to run in its own VM.
pub struct VmCommand {
    /// Label used in log lines.
    pub name: String,
    /// Absolute host path of the executable; it keeps that path inside the VM.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// More host files this command needs, placed at their host paths (their libraries too).
    pub files: Vec<PathBuf>,
}

const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// The per-command script, relative to the VM's root; `INIT_SCRIPT` runs it by this path.
const COMMAND_SCRIPT: &str = "tcptrace-vm/command.sh";

pub(super) const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
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

/// Busybox, `/init` and mount points; shared by every command's initramfs.
pub(super) fn build_base_archive(work: &Path, busybox: &Path) -> Result<PathBuf> {
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
pub(super) fn build_command_initrd(
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
    for file in std::iter::once(&command.program).chain(extra_files).chain(&command.files) {
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
}
