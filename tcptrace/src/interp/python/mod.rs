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

use std::path::{Path, PathBuf};

use blazesym::inspect::{Inspector, source::Elf};
use procfs::process::{MMapPath, MemoryMap, Process};

pub use self::layout::Version;

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
    /// A CPython whose layout tcptrace does not know (or that hides its `_PyRuntime`): its
    /// opens get native frames only.
    Unsupported {
        version: (u8, u8),
        path: PathBuf,
        why: &'static str,
    },
    NotPython,
}

/// Whether process `pid` runs CPython, and where. A process that is gone is `NotPython`.
pub fn detect(pid: u32) -> Detection {
    let Some(maps) = i32::try_from(pid).ok().and_then(|pid| Process::new(pid).ok()?.maps().ok())
    else {
        return Detection::NotPython;
    };
    let files = || {
        maps.iter().filter_map(|map| match &map.pathname {
            MMapPath::Path(path) => Some((path, map)),
            _ => None,
        })
    };
    // libpython when the executable links it: the executable then holds no interpreter.
    let found = files()
        .filter_map(|(path, _)| Some((path, interpreter_version(file_name(path)?)?)))
        .max_by_key(|(path, _)| file_name(path).is_some_and(|name| name.starts_with("lib")));
    let Some((path, version)) = found else {
        return Detection::NotPython;
    };
    let unsupported = |why| Detection::Unsupported { version, path: path.clone(), why };
    let Some(layout) = layout::version(version.0, version.1) else {
        return unsupported("tcptrace has no layout for this version");
    };
    let mappings: Vec<&MemoryMap> =
        files().filter(|(mapped, _)| *mapped == path).map(|(_, map)| map).collect();
    let Some(symbols) = exported(pid, &mappings) else {
        return unsupported("its _PyRuntime symbol could not be read");
    };
    let Some(runtime) = symbols.runtime.and_then(|offset| address(&mappings, offset)) else {
        return unsupported("its _PyRuntime symbol could not be read");
    };
    let exported_version = symbols
        .version
        .and_then(|offset| address(&mappings, offset))
        .and_then(|addr| crate::interp::memory::ProcessMemory::open(pid)?.u32(addr));
    if let Some(hex) = exported_version
        && ((hex >> 24) as u8, (hex >> 16) as u8) != version
    {
        return unsupported("its Py_Version differs from its file name");
    }
    Detection::Known(Interpreter { version: layout, runtime, path: path.clone() })
}

/// File offsets of the exported symbols the walk needs.
struct Exported {
    runtime: Option<u64>,
    version: Option<u64>,
}

/// Looks the symbols up in the mapped file itself (`/proc/<pid>/map_files/`), so a process in
/// another mount namespace, or running a file since replaced, is read right.
fn exported(pid: u32, mappings: &[&MemoryMap]) -> Option<Exported> {
    let map = mappings.first()?;
    let file = format!("/proc/{pid}/map_files/{:x}-{:x}", map.address.0, map.address.1);
    let inspector = Inspector::new();
    let source = Elf { debug_syms: false, ..Elf::new(file) };
    let found = inspector.lookup(&source.into(), &["_PyRuntime", "Py_Version"]).ok()?;
    let offset = |i: usize| found.get(i)?.first()?.file_offset;
    Some(Exported { runtime: offset(0), version: offset(1) })
}

/// The address where the mappings of one file put `offset` of that file.
fn address(mappings: &[&MemoryMap], offset: u64) -> Option<u64> {
    mappings.iter().find_map(|map| {
        let len = map.address.1 - map.address.0;
        (map.offset..map.offset + len)
            .contains(&offset)
            .then(|| map.address.0 + offset - map.offset)
    })
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
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
