//! A code object read from a Python process: the function's qualified name, its file, and the
//! line table that turns an instruction into a line (see `linetable`).

use super::{layout::Version, linetable};
use crate::interp::memory::ProcessMemory;

/// Characters of a name or a path read at most; longer ones are cut.
const MAX_STRING: i64 = 4096;
/// Bytes of a line table read at most (a function of thousands of lines has a few KiB).
const MAX_LINE_TABLE: i64 = 64 << 10;

/// What names a frame of one code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// `co_qualname`: `OrderClient.open`, `open_order_client`, `<module>`.
    pub name: String,
    /// `co_filename`, as the interpreter loaded it.
    pub file: String,
    first_line: i32,
    line_table: Vec<u8>,
}

impl Code {
    /// Reads the code object at `addr`; `None` when any part of it cannot be read.
    pub fn read(memory: &ProcessMemory, version: &Version, addr: u64) -> Option<Self> {
        let name = string(memory, version, memory.u64(addr + version.code_qualname)?)?;
        let file = string(memory, version, memory.u64(addr + version.code_filename)?)?;
        let first_line = memory.u32(addr + version.code_firstlineno)? as i32;
        let table = memory.u64(addr + version.code_linetable)?;
        let size = memory.i64(table + version.bytes_size)?;
        if !(0..=MAX_LINE_TABLE).contains(&size) {
            return None;
        }
        let line_table = memory.bytes(table + version.bytes_data, size as usize)?;
        Some(Self { name, file, first_line, line_table })
    }

    /// Bytes this holds, for the cache's bound.
    pub fn size(&self) -> usize {
        self.name.len() + self.file.len() + self.line_table.len()
    }

    /// The line of the instruction at `instr` in this code object at `addr`.
    pub fn line(&self, version: &Version, addr: u64, instr: u64) -> Option<u32> {
        let first = addr.checked_add(version.code_first_instr)?;
        // Code units are two bytes; before the first one is the frame's entry.
        let index = (instr as i64).wrapping_sub(first as i64) / 2;
        linetable::line_at(&self.line_table, self.first_line, index)
    }
}

/// A `str` object's text. Compact strings only: every name and path the compiler makes is one.
fn string(memory: &ProcessMemory, version: &Version, addr: u64) -> Option<String> {
    let length = memory.i64(addr + version.str_length)?;
    if !(0..=MAX_STRING).contains(&length) {
        return None;
    }
    let length = length as usize;
    let state = memory.u32(addr + version.str_state)?;
    // `state` bit fields: interned (2 bits), kind (3), compact (1), ascii (1).
    let kind = (state >> 2) & 0x7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact {
        return None;
    }
    if ascii {
        let bytes = memory.bytes(addr + version.str_ascii_data, length)?;
        return String::from_utf8(bytes).ok();
    }
    let data = addr + version.str_compact_data;
    match kind {
        1 => Some(memory.bytes(data, length)?.into_iter().map(char::from).collect()),
        2 => {
            let units: Vec<u16> = memory
                .bytes(data, length * 2)?
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        4 => memory
            .bytes(data, length * 4)?
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}
