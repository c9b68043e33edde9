//! One symbolized stack frame and its one-line rendering.

use std::path::Path;

use serde::Serialize;

/// One frame of a symbolized stack.
///
/// An address inside inlined code gives several frames with the same `addr`, innermost first
/// (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The address the caller passed; JSON has it as a hex string (`"0x7f0c1a2b3c4d"`): as a
    /// number it would lose precision in JavaScript and jq.
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    /// The function, demangled (`leaky::db_checkout`, `std::net::tcp::TcpStream::connect`);
    /// `None` when nothing covers the address.
    pub symbol: Option<String>,
    /// The source file, as the debug information names it (usually an absolute path); `None`
    /// without DWARF line information.
    pub file: Option<String>,
    /// The line in `file`: for the innermost frame of an address, the line of that address; for
    /// the frames that inlined it, the line of the inlined call.
    pub line: Option<u32>,
    /// The object holding the address: the path of an executable or shared object, `[vdso]`,
    /// `[heap]`, `[stack]` or a kernel module's name; `None` for anonymous memory (JIT code),
    /// the kernel image, or a process that is gone.
    pub module: Option<String>,
}

impl Frame {
    /// A frame nothing resolved.
    pub fn unknown(addr: u64, module: Option<String>) -> Self {
        Self { addr, symbol: None, file: None, line: None, module }
    }

    /// `func (file.rs:12)`, `func (file.rs)`, `func`, `0x7f0c1a2b3c4d (libc.so.6)` or
    /// `0x7f0c1a2b3c4d`: file and module by their last path component.
    pub fn display(&self) -> String {
        let Self { addr, symbol, file, line, module } = self;
        match (symbol, file, line) {
            (Some(symbol), Some(file), Some(line)) => {
                format!("{symbol} ({}:{line})", file_name(file))
            }
            (Some(symbol), Some(file), None) => format!("{symbol} ({})", file_name(file)),
            (Some(symbol), None, _) => symbol.clone(),
            (None, _, _) => match module {
                Some(module) => format!("{addr:#x} ({})", file_name(module)),
                None => format!("{addr:#x}"),
            },
        }
    }
}

fn hex<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{addr:#x}"))
}

/// The last component of a path; the whole string when it has none (`[vdso]`, `/`).
fn file_name(path: &str) -> &str {
    Path::new(path).file_name().and_then(|name| name.to_str()).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(
        symbol: Option<&str>,
        file: Option<&str>,
        line: Option<u32>,
        module: Option<&str>,
    ) -> Frame {
        Frame {
            addr: 0x7f0c_1a2b_3c4d,
            symbol: symbol.map(str::to_owned),
            file: file.map(str::to_owned),
            line,
            module: module.map(str::to_owned),
        }
    }

    #[test]
    fn symbol_with_file_and_line() {
        let frame = frame(
            Some("db::pool::checkout"),
            Some("/src/app/src/db/pool.rs"),
            Some(12),
            Some("/usr/bin/app"),
        );
        assert_eq!(frame.display(), "db::pool::checkout (pool.rs:12)");
    }

    #[test]
    fn symbol_with_file_without_line() {
        let frame = frame(Some("open_conn"), Some("leaky.c"), None, None);
        assert_eq!(frame.display(), "open_conn (leaky.c)");
    }

    #[test]
    fn symbol_without_debug_info() {
        let frame = frame(Some("connect"), None, None, Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(frame.display(), "connect");
    }

    #[test]
    fn unknown_address_in_a_module() {
        let in_libc = frame(None, None, None, Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(in_libc.display(), "0x7f0c1a2b3c4d (libc.so.6)");
        let in_vdso = frame(None, None, None, Some("[vdso]"));
        assert_eq!(in_vdso.display(), "0x7f0c1a2b3c4d ([vdso])");
    }

    #[test]
    fn unknown_address() {
        assert_eq!(Frame::unknown(0x7f0c_1a2b_3c4d, None).display(), "0x7f0c1a2b3c4d");
    }

    #[test]
    fn serializes_every_field() {
        let frame = frame(Some("open_conn"), Some("/src/leaky.c"), Some(70), Some("/tmp/leaky"));
        assert_eq!(
            serde_json::to_value(&frame).unwrap(),
            serde_json::json!({
                "addr": "0x7f0c1a2b3c4d",
                "symbol": "open_conn",
                "file": "/src/leaky.c",
                "line": 70,
                "module": "/tmp/leaky",
            })
        );
    }
}
