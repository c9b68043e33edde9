//! CPython processes: recognising one (the interpreter's file, its version, where its
//! `_PyRuntime` is), and naming the frames the kernel walked in it.
//!
//! A process runs CPython when it maps `python3.N` (the interpreter linked statically, as
//! Debian builds it) or `libpython3.N.so` (linked dynamically, as pyenv and most source builds
//! do). `_PyRuntime`, the root of every interpreter and thread, is an exported symbol of that
//! file; its address in the process is where the file is mapped plus the symbol's file offset.
//! The version in the file's name is checked against the `Py_Version` it exports (3.11+), so a
//! renamed file is not read with the wrong layout.

pub mod code;
pub mod layout;
pub mod linetable;

use std::path::PathBuf;

use procfs::process::MemoryMaps;

pub use self::layout::Version;
use super::{mapped::MappedFile, memory::ProcessMemory};

/// A CPython found in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub version: &'static Version,
    /// `_PyRuntime`'s address in the process.
    pub runtime: u64,
    /// The file holding the interpreter.
    pub path: PathBuf,
}

/// What a process runs, as far as Python goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    Known(Interpreter),
    /// A CPython whose layout tcptrace does not know: its opens get native frames only.
    Unsupported {
        version: (u8, u8),
        path: PathBuf,
        why: &'static str,
    },
    /// A CPython executable without `_PyRuntime`: one linking `libpython` that it has not
    /// mapped yet (just exec'd), or one that hides it.
    NotYet {
        version: (u8, u8),
        path: PathBuf,
        why: &'static str,
    },
    NotPython,
}

/// Whether process `pid`, mapping `maps`, runs CPython, and where.
pub fn detect(pid: u32, maps: &MemoryMaps) -> Detection {
    // libpython when the executable links it: the executable then holds no interpreter.
    let Some((file, (_, version))) = MappedFile::find(pid, maps, |name| {
        Some((name.starts_with("lib"), interpreter_version(name)?))
    }) else {
        return Detection::NotPython;
    };
    let unsupported = |why| Detection::Unsupported { version, path: file.path.clone(), why };
    let Some(layout) = layout::version(version.0, version.1) else {
        return unsupported("tcptrace has no layout for this version");
    };
    let [Some(runtime), exported_version] = file.symbols(&["_PyRuntime", "Py_Version"])[..] else {
        let why = "its _PyRuntime symbol could not be read";
        return Detection::NotYet { version, path: file.path.clone(), why };
    };
    let exported_version = exported_version.and_then(|addr| ProcessMemory::open(pid)?.u32(addr));
    if let Some(hex) = exported_version
        && ((hex >> 24) as u8, (hex >> 16) as u8) != version
    {
        return unsupported("its Py_Version differs from its file name");
    }
    Detection::Known(Interpreter { version: layout, runtime, path: file.path })
}

/// `(3, 11)` for `python3.11` and `libpython3.11.so.1.0`; `None` for every other name
/// (`python3` is a link, never what a process maps; debug builds, `python3.11d`, differ).
pub fn interpreter_version(name: &str) -> Option<(u8, u8)> {
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python")?;
    let (major, rest) = rest.split_once('.')?;
    let (minor, tail) = match rest.split_once('.') {
        Some((minor, tail)) => (minor, Some(tail)),
        None => (rest, None),
    };
    let is_library = name.starts_with("lib");
    match tail {
        None if !is_library => {}
        Some(tail) if is_library && (tail == "so" || tail.starts_with("so.")) => {}
        _ => return None,
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_an_interpreter_by_its_file() {
        assert_eq!(interpreter_version("python3.11"), Some((3, 11)));
        assert_eq!(interpreter_version("python3.9"), Some((3, 9)));
        assert_eq!(interpreter_version("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(interpreter_version("libpython3.12.so"), Some((3, 12)));
        for other in [
            "python3",
            "python",
            "python3.11d",
            "python3.11-config",
            "libpython3.11.a",
            "python3.11.so",
            "libpython3.so",
            "pythonista",
            "_socket.cpython-311-x86_64-linux-gnu.so",
        ] {
            assert_eq!(interpreter_version(other), None, "{other}");
        }
    }
}
