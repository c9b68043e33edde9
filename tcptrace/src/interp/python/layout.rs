//! Where each CPython version keeps what tcptrace reads: the kernel's walk (`PyLayout`) and the
//! code objects and strings user space names frames from.
//!
//! Offsets are those of x86-64 builds, taken from each version's headers with `offsetof`
//! (`Include/internal/pycore_runtime.h`, `pycore_interp.h`, `pycore_frame.h`,
//! `Include/cpython/pystate.h`, `code.h`, `unicodeobject.h`, `bytesobject.h`). The table holds
//! only versions checked against their headers: `tests/python.rs` compiles those offsets
//! again from the installed Python's headers and compares. Another version gets native frames
//! and a note, never names read through a wrong layout.

use tcptrace_common::PyLayout;

/// One CPython minor version's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub minor: u8,
    /// The kernel walk's offsets (`runtime` is set per process).
    pub walk: PyLayout,
    /// `PyCodeObject.co_code_adaptive`: the first instruction.
    pub code_first_instr: u64,
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    /// `PyASCIIObject.length` and `.state`; the characters of a compact ASCII string follow
    /// `sizeof(PyASCIIObject)`, those of another compact string `sizeof(PyCompactUnicodeObject)`.
    pub str_length: u64,
    pub str_state: u64,
    pub str_ascii_data: u64,
    pub str_compact_data: u64,
    /// `PyVarObject.ob_size` and `PyBytesObject.ob_sval`.
    pub bytes_size: u64,
    pub bytes_data: u64,
}

/// CPython 3.11 (Debian 12's python3).
const PYTHON_3_11: Version = Version {
    minor: 11,
    walk: PyLayout {
        runtime: 0,
        runtime_main_interp: 48,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_native_thread_id: 160,
        tstate_thread_id: 152,
        tstate_cframe: 56,
        cframe_current_frame: 8,
        frame_code: 32,
        frame_previous: 48,
        frame_prev_instr: 56,
        _pad0: [0; 2],
    },
    code_first_instr: 184,
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 72,
    code_linetable: 136,
    str_length: 16,
    str_state: 32,
    str_ascii_data: 48,
    str_compact_data: 72,
    bytes_size: 16,
    bytes_data: 32,
};

const VERSIONS: &[Version] = &[PYTHON_3_11];

/// The layout of CPython 3.`minor`, if tcptrace knows it.
pub fn version(major: u8, minor: u8) -> Option<&'static Version> {
    if major != 3 {
        return None;
    }
    VERSIONS.iter().find(|v| v.minor == minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_3_11_and_no_version_it_was_not_checked_against() {
        assert_eq!(version(3, 11).map(|v| v.minor), Some(11));
        for (major, minor) in [(3, 10), (3, 12), (3, 13), (2, 7), (4, 11)] {
            assert!(version(major, minor).is_none(), "{major}.{minor}");
        }
    }
}
