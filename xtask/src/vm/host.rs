//! Host tools and files the VM is built from: finding an executable on PATH (or naming the
//! Debian package that provides it), running a tool for its output, and peeking at files.
//!
//! A leaf: `kernel`, `initramfs` and the `vm` module itself import it; it imports nothing from
//! `vm`.

use std::{
    env,
    fs::{self, File},
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

pub(super) const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Finds an executable on PATH, or explains which Debian package provides it.
pub(super) fn require_tool(tool: &str, package: &str) -> Result<PathBuf> {
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
pub(super) fn run_checked(command: &mut Command) -> Result<String> {
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
pub(super) fn find_entry(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_name().to_str().is_some_and(&matches) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

pub(super) fn starts_with(file: &Path, magic: &[u8]) -> Result<bool> {
    let mut head = Vec::with_capacity(magic.len());
    File::open(file)
        .with_context(|| format!("opening {}", file.display()))?
        .take(magic.len() as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", file.display()))?;
    Ok(head == magic)
}
