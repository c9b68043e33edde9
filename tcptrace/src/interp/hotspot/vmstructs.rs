//! HotSpot's own description of its structures: the `gHotSpotVM*` tables `libjvm.so` exports
//! for serviceability agents (src/hotspot/share/runtime/vmStructs.cpp). Each entry names a
//! type and a field with its offset (or, for a static, its address); the type table gives
//! sizes; the constant table gives flag values. The tables' own layout is exported too
//! (`gHotSpotVMStructEntryTypeNameOffset`, ...), so nothing here assumes a JDK version: what a
//! JDK lacks is `None`, and its frames stay unnamed.

use std::collections::HashMap;

use crate::interp::memory::ProcessMemory;

/// Entries read at most from one table (JDK 17 has about 2,000 fields).
const MAX_ENTRIES: u64 = 16_384;
/// Bytes of a type or field name read at most.
const MAX_NAME: usize = 128;

/// The exported symbols the tables are read through, as addresses in the process.
pub const SYMBOLS: &[&str] = &[
    "gHotSpotVMStructs",
    "gHotSpotVMStructEntryArrayStride",
    "gHotSpotVMStructEntryTypeNameOffset",
    "gHotSpotVMStructEntryFieldNameOffset",
    "gHotSpotVMStructEntryIsStaticOffset",
    "gHotSpotVMStructEntryOffsetOffset",
    "gHotSpotVMStructEntryAddressOffset",
    "gHotSpotVMTypes",
    "gHotSpotVMTypeEntryArrayStride",
    "gHotSpotVMTypeEntryTypeNameOffset",
    "gHotSpotVMTypeEntrySizeOffset",
    "gHotSpotVMIntConstants",
    "gHotSpotVMIntConstantEntryArrayStride",
    "gHotSpotVMIntConstantEntryNameOffset",
    "gHotSpotVMIntConstantEntryValueOffset",
];

/// What the tables say, kept for the names tcptrace asks about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmStructs {
    /// "Type::field" → offset (non-static) or address (static).
    fields: HashMap<String, u64>,
    sizes: HashMap<String, u64>,
    constants: HashMap<String, i32>,
}

impl VmStructs {
    /// Reads the tables through the symbols' addresses (`SYMBOLS`, in order), keeping the
    /// entries of `types`. `None` before the JVM has filled them in (early in its start-up).
    pub fn read(memory: &ProcessMemory, symbols: &[u64], types: &[&str]) -> Option<Self> {
        let value = |i: usize| memory.u64(*symbols.get(i)?);
        let [structs, stride, type_name, field_name, is_static, offset, address] =
            [0, 1, 2, 3, 4, 5, 6].map(value);
        let (structs, stride) = (structs?, stride?);
        if stride == 0 {
            return None;
        }
        let mut fields = HashMap::new();
        for (entry, ty) in named_entries(memory, structs, stride, type_name?) {
            if !types.contains(&ty.as_str()) {
                continue;
            }
            let field = c_string(memory, memory.u64(entry + field_name?)?)?;
            let value = if memory.u32(entry + is_static?)? != 0 {
                memory.u64(entry + address?)?
            } else {
                memory.u64(entry + offset?)?
            };
            fields.insert(format!("{ty}::{field}"), value);
        }
        let mut sizes = HashMap::new();
        if let [Some(table), Some(stride), Some(name_at), Some(size)] = [7, 8, 9, 10].map(value) {
            for (entry, name) in named_entries(memory, table, stride, name_at) {
                if types.contains(&name.as_str()) {
                    sizes.insert(name, memory.u64(entry + size)?);
                }
            }
        }
        let mut constants = HashMap::new();
        if let [Some(table), Some(stride), Some(name_at), Some(value_at)] =
            [11, 12, 13, 14].map(value)
        {
            for (entry, name) in named_entries(memory, table, stride, name_at) {
                if types.iter().any(|ty| name.starts_with(&format!("{ty}::"))) {
                    constants.insert(name, memory.u32(entry + value_at)? as i32);
                }
            }
        }
        Some(Self { fields, sizes, constants })
    }

    /// The offset of `Type::field` (the address, for a static).
    pub fn field(&self, name: &str) -> Option<u64> {
        self.fields.get(name).copied()
    }

    pub fn size(&self, ty: &str) -> Option<u64> {
        self.sizes.get(ty).copied()
    }

    pub fn constant(&self, name: &str) -> Option<i32> {
        self.constants.get(name).copied()
    }
}

/// The entries of a table that starts with a name pointer at `name_at` in each entry: (entry
/// address, name), up to the entry whose name is NULL (or unreadable).
fn named_entries<'a>(
    memory: &'a ProcessMemory,
    table: u64,
    stride: u64,
    name_at: u64,
) -> impl Iterator<Item = (u64, String)> + 'a {
    (0..MAX_ENTRIES).map_while(move |i| {
        let entry = table + i * stride.max(1);
        let name = memory.u64(entry + name_at).filter(|&p| p != 0)?;
        Some((entry, c_string(memory, name)?))
    })
}

/// A NUL-terminated string of at most `MAX_NAME` bytes at `addr`.
fn c_string(memory: &ProcessMemory, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let mut bytes = Vec::new();
    // In small pieces: few bytes past a name's end are read (it may end a mapping).
    for chunk in 0..(MAX_NAME / 16) as u64 {
        let piece = memory.bytes(addr + chunk * 16, 16)?;
        match piece.iter().position(|&b| b == 0) {
            Some(end) => {
                bytes.extend_from_slice(&piece[..end]);
                return String::from_utf8(bytes).ok();
            }
            None => bytes.extend_from_slice(&piece),
        }
    }
    None
}
