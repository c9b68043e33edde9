//! Report files (`run --report`, `--junit`) written so that nobody else can redirect them. The
//! command `run` traces may run as another user and write where tcptrace writes (the README's
//! `sudo tcptrace run -- sudo -u "$USER" ...`): a symbolic link it plants at the report's path
//! must not make tcptrace, as root, overwrite the file it points to.
//!
//! So the directory is opened once, before the command starts (which also proves it exists
//! and is writable), and the report is written to a fresh file created in that directory with
//! `O_EXCL|O_NOFOLLOW`, then renamed over the path: a rename replaces a link, it never follows
//! one, and a directory swapped for a link later does not move the write either.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{self, BufWriter, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// A report file to write when the run ends, its directory held open since the start.
pub struct OutputFile {
    dir: OwnedFd,
    name: CString,
    path: PathBuf,
}

impl OutputFile {
    /// Opens `path`'s directory and checks that a file can be created there now. A path whose
    /// last component is a symbolic link, or anything but a regular file, is refused.
    pub fn prepare(path: &Path) -> anyhow::Result<Self> {
        let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(meta) = path.symlink_metadata()
            && !meta.file_type().is_file()
        {
            anyhow::bail!(
                "refusing to write {}: it exists and is not a regular file (a symbolic link?)",
                path.display()
            );
        }
        let dir = open_dir(parent).with_context(|| format!("opening {}", parent.display()))?;
        let output = Self { dir, name: c_name(name)?, path: path.to_owned() };
        // Proves now, not after the command ran, that the directory takes a new file.
        let probe =
            output.create_temp().with_context(|| format!("cannot write {}", path.display()))?;
        output.unlink(&probe.0);
        Ok(output)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file: a new file in the directory, renamed over the path once complete.
    pub fn write(
        &self,
        write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let (temp, file) =
            self.create_temp().with_context(|| format!("creating {}", self.path.display()))?;
        let mut out = BufWriter::new(file);
        let written = write(&mut out)
            .and_then(|()| out.flush())
            .and_then(|()| out.get_ref().sync_all())
            .and_then(|()| self.rename(&temp));
        if written.is_err() {
            self.unlink(&temp);
        }
        written.with_context(|| format!("writing {}", self.path.display()))
    }

    /// A new file next to the target, with a name nobody could have prepared.
    fn create_temp(&self) -> io::Result<(CString, File)> {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        for attempt in 0u32..16 {
            let mut name = b".".to_vec();
            name.extend_from_slice(self.name.as_bytes());
            name.extend_from_slice(
                format!(".{}.{attempt}.{:x}.tmp", std::process::id(), nonce()).as_bytes(),
            );
            let name = CString::new(name).map_err(io::Error::other)?;
            // SAFETY: a valid directory descriptor and NUL-terminated name.
            let fd = unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), flags, 0o644) };
            if fd >= 0 {
                // SAFETY: a descriptor openat just returned, owned by nobody else.
                return Ok((name, unsafe { File::from_raw_fd(fd) }));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(err);
            }
        }
        Err(io::Error::other("no free temporary name"))
    }

    fn rename(&self, temp: &CString) -> io::Result<()> {
        let dir = self.dir.as_raw_fd();
        // SAFETY: valid descriptors and NUL-terminated names.
        if unsafe { libc::renameat(dir, temp.as_ptr(), dir, self.name.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn unlink(&self, temp: &CString) {
        // SAFETY: valid descriptor and NUL-terminated name; failure leaves a stray temp file.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path.
    let fd =
        unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor open just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_name(name: &OsStr) -> anyhow::Result<CString> {
    CString::new(name.as_bytes()).context("a file name with a NUL byte")
}

/// A number another process cannot guess ahead, from the kernel's random pool (a failed
/// call leaves 0: names are still taken with `O_EXCL`, so a guess only costs a retry).
fn nonce() -> u64 {
    let mut n = 0u64;
    // SAFETY: writes at most 8 bytes into `n`.
    unsafe { libc::getrandom((&raw mut n).cast(), size_of::<u64>(), 0) };
    n
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_the_file_and_leaves_no_temporary_behind() {
        let dir = scratch("plain");
        let path = dir.join("report.json");
        let output = OutputFile::prepare(&path).expect("prepared");
        output.write(|out| out.write_all(b"{}\n")).expect("written");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "only the report");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_link_planted_after_the_start_is_replaced_not_followed() {
        let dir = scratch("planted");
        let secret = dir.join("secret");
        std::fs::write(&secret, "root's").unwrap();
        let path = dir.join("report.json");
        let output = OutputFile::prepare(&path).expect("prepared");
        symlink(&secret, &path).unwrap();
        output.write(|out| out.write_all(b"report")).expect("written");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root's", "the target is untouched");
        assert!(path.symlink_metadata().unwrap().file_type().is_file(), "the link was replaced");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_link_or_a_missing_directory_is_refused_up_front() {
        let dir = scratch("refused");
        let path = dir.join("report.json");
        symlink(dir.join("elsewhere"), &path).unwrap();
        let err = OutputFile::prepare(&path).err().expect("refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(OutputFile::prepare(&dir.join("missing/report.json")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
