//! Debian's stock kernel for the VM: the versioned package the `linux-image-amd64` metapackage
//! names, downloaded once into a cache directory, and the uncompressed ELF taken out of its
//! bzImage (qemu boots that through its PVH entry point, much faster under TCG).
//!
//! Imports only `host`; the `vm` module re-exports `prepare_kernel`.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use super::host::{ELF_MAGIC, find_entry, require_tool, run_checked, starts_with};

/// Metapackage whose dependency names the current kernel ABI; the ABI number changes with
/// security updates and old packages leave the archive, so it is looked up on every call.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// Cached kernel names: the uncompressed ELF (PVH boot, fast) or the bzImage fallback.
const VMLINUX: &str = "vmlinux";
const BZIMAGE: &str = "vmlinuz";

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
