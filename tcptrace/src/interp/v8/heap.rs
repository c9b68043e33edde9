//! V8's heap as another process sees it: tagged words, object types and strings, read through
//! `/proc/<pid>/mem` with the offsets and tags of that V8's postmortem metadata.
//!
//! A tagged word is a small integer (low bit 0, the value in the upper 32 bits on x86-64
//! without pointer compression, as Node is built) or a heap object's address plus 1. An
//! object's first word is its map, whose `instance_type` says what the object is; every
//! read checks the type before trusting a field, since what the kernel read in a frame may be
//! anything.

use crate::interp::memory::ProcessMemory;

/// Characters of one string read at most (a function's name, a script's path).
pub const MAX_STRING: usize = 4096;
/// Pieces of a cons string followed at most.
const MAX_PIECES: usize = 16;

/// How one V8 lays out what tcptrace reads of its heap (`v8dbg_*` values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heap {
    pub map: u64,
    pub instance_type: u64,
    pub map_type: u16,
    pub first_nonstring_type: u16,
    pub string: StringLayout,
}

/// Strings: their representations (`v8dbg_*StringTag`) and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringLayout {
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub one_byte_tag: u16,
    pub seq_tag: u16,
    pub cons_tag: u16,
    pub thin_tag: u16,
    pub sliced_tag: u16,
    pub length: u64,
    pub seq_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
}

/// The address of the object `tagged` points to; `None` for a small integer.
pub fn untag(tagged: u64) -> Option<u64> {
    (tagged & 3 == 1).then(|| tagged - 1)
}

/// The value of a small integer; `None` for a pointer.
pub fn smi(tagged: u64) -> Option<i32> {
    (tagged & 1 == 0).then_some((tagged as i64 >> 32) as i32)
}

impl Heap {
    /// The instance type of the object `tagged` points to, when it is one: its map must be a
    /// map (the map's own map has `map_type`).
    pub fn type_of(&self, memory: &ProcessMemory, tagged: u64) -> Option<u16> {
        let map = untag(memory.u64(untag(tagged)? + self.map)?)?;
        let meta = untag(memory.u64(map + self.map)?)?;
        if u16_at(memory, meta + self.instance_type)? != self.map_type {
            return None;
        }
        u16_at(memory, map + self.instance_type)
    }

    /// The tagged field at `offset` of the object `tagged` points to.
    pub fn field(&self, memory: &ProcessMemory, tagged: u64, offset: u64) -> Option<u64> {
        memory.u64(untag(tagged)? + offset)
    }

    /// The text of the string `tagged` points to; `None` when it is not a string, or one
    /// kept outside the heap (external strings).
    pub fn string(&self, memory: &ProcessMemory, tagged: u64) -> Option<String> {
        let mut units = Vec::new();
        self.append(memory, tagged, &mut units, &mut 0)?;
        Some(String::from_utf16_lossy(&units))
    }

    /// Appends the UTF-16 units of string `tagged` to `out`, within `MAX_STRING` units and
    /// `MAX_PIECES` pieces (`pieces` counts them across the recursion).
    fn append(
        &self,
        memory: &ProcessMemory,
        tagged: u64,
        out: &mut Vec<u16>,
        pieces: &mut usize,
    ) -> Option<()> {
        *pieces += 1;
        if *pieces > MAX_PIECES {
            return None;
        }
        let ty = self.type_of(memory, tagged)?;
        if ty >= self.first_nonstring_type {
            return None;
        }
        let s = &self.string;
        let object = untag(tagged)?;
        let length = usize::try_from(memory.u32(object + s.length)?).ok()?;
        if length > MAX_STRING - out.len() {
            return None;
        }
        let representation = ty & s.representation_mask;
        if representation == s.seq_tag {
            if ty & s.encoding_mask == s.one_byte_tag {
                let bytes = memory.bytes(object + s.seq_chars, length)?;
                out.extend(bytes.iter().map(|&b| u16::from(b)));
            } else {
                let bytes = memory.bytes(object + s.seq_chars, length * 2)?;
                out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
            }
            Some(())
        } else if representation == s.cons_tag {
            self.append(memory, memory.u64(object + s.cons_first)?, out, pieces)?;
            self.append(memory, memory.u64(object + s.cons_second)?, out, pieces)
        } else if representation == s.thin_tag {
            self.append(memory, memory.u64(object + s.thin_actual)?, out, pieces)
        } else if representation == s.sliced_tag {
            let offset = usize::try_from(smi(memory.u64(object + s.sliced_offset)?)?).ok()?;
            let mut parent = Vec::new();
            self.append(memory, memory.u64(object + s.sliced_parent)?, &mut parent, pieces)?;
            out.extend(parent.get(offset..offset.checked_add(length)?)?);
            Some(())
        } else {
            None
        }
    }
}

pub fn u16_at(memory: &ProcessMemory, addr: u64) -> Option<u16> {
    memory.bytes(addr, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_words_are_pointers_or_small_integers() {
        assert_eq!(untag(0x1000_0001), Some(0x1000_0000));
        assert_eq!(untag(0x4700_0000_0000), None, "a small integer");
        assert_eq!(untag(0x1000_0003), None, "a weak reference is not followed");
        assert_eq!(smi(0x4700_0000_0000), Some(0x4700));
        assert_eq!(smi(0xffff_ffff_0000_0000), Some(-1));
        assert_eq!(smi(0x1000_0001), None);
    }
}
