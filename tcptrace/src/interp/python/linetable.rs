//! CPython 3.11's location table (`co_linetable`): instruction index → source line.
//!
//! The format is CPython's Objects/locations.md: a sequence of entries, each a first byte with
//! the top bit set, a 4-bit code and a 3-bit length (code units − 1), then code-specific bytes.
//! Codes 0–9 (short form: same line, one column byte), 10–12 (one-line forms: line delta 0–2,
//! two column bytes), 13 (no columns: signed line delta), 14 (long form: signed line delta, end
//! line, two columns), 15 (no location). The line of each entry is the previous one's plus its
//! delta, starting at `co_firstlineno`. This is a port of `advance`/`get_line_delta` in
//! Objects/codeobject.c; the table comes from another process's memory, so every read is
//! checked and a malformed table gives `None`, never a panic.

/// The line the instruction at `index` (in code units) belongs to; `co_firstlineno` for the
/// frame's entry (`index` < 0, as before its first instruction); `None` when the table has no
/// line for it or is malformed.
pub fn line_at(table: &[u8], first_line: i32, index: i64) -> Option<u32> {
    if index < 0 {
        return u32::try_from(first_line).ok();
    }
    let target = index as u64;
    let mut line = i64::from(first_line);
    let mut start = 0u64;
    let mut at = 0;
    while at < table.len() {
        let head = table[at];
        at += 1;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 0x0f;
        let length = u64::from(head & 0x07) + 1;
        let mut located = true;
        match code {
            15 => located = false,
            14 => {
                line = line.checked_add(signed_varint(table, &mut at)?)?;
                for _ in 0..3 {
                    varint(table, &mut at)?;
                }
            }
            13 => line = line.checked_add(signed_varint(table, &mut at)?)?,
            10..=12 => {
                line = line.checked_add(i64::from(code - 10))?;
                at += 2;
            }
            _ => at += 1,
        }
        if target < start + length {
            return if located { u32::try_from(line).ok() } else { None };
        }
        start += length;
    }
    None
}

/// `scan_varint`: 6-bit groups, least significant first, bit 6 set on all but the last.
fn varint(table: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *table.get(*at)?;
        *at += 1;
        if shift > 60 {
            return None;
        }
        value |= u64::from(byte & 0x3f) << shift;
        if byte & 0x40 == 0 {
            return Some(value);
        }
        shift += 6;
    }
}

/// `scan_signed_varint`: the sign in the lowest bit.
fn signed_varint(table: &[u8], at: &mut usize) -> Option<i64> {
    let raw = varint(table, at)?;
    let magnitude = (raw >> 1) as i64;
    Some(if raw & 1 != 0 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries built as CPython's assembler writes them (Python/compile.c `write_location_*`).
    fn entry(code: u8, length: u8) -> u8 {
        0x80 | (code << 3) | (length - 1)
    }

    #[test]
    fn follows_each_form_to_the_line_of_an_instruction() {
        let table = [
            // 1 unit, no columns, line +0 (the RESUME at co_firstlineno).
            entry(13, 1),
            0,
            // 3 units one line down (one-line form 1), columns 4..20.
            entry(11, 3),
            4,
            20,
            // 2 units, short form: same line.
            entry(0, 2),
            0x12,
            // 4 units, long form: +3 lines (signed varint 6), end line 0, columns 8, 30.
            entry(14, 4),
            6,
            0,
            8,
            30,
            // 1 unit without a location.
            entry(15, 1),
            // 2 units, no columns, -2 lines (signed varint 5).
            entry(13, 2),
            5,
        ];
        let lines: Vec<Option<u32>> = (0..13).map(|i| line_at(&table, 10, i)).collect();
        assert_eq!(
            lines,
            [
                Some(10),
                Some(11),
                Some(11),
                Some(11),
                Some(11),
                Some(11),
                Some(14),
                Some(14),
                Some(14),
                Some(14),
                None,
                Some(12),
                Some(12),
            ]
        );
        assert_eq!(line_at(&table, 10, 13), None, "past the table");
        assert_eq!(line_at(&table, 10, -1), Some(10), "before the first instruction");
    }

    #[test]
    fn a_long_delta_spans_several_varint_groups() {
        // +100 lines: signed varint 200 = 0b11_001000 → groups 0x08|0x40, 0x03.
        let table = [entry(13, 1), 0x48, 0x03];
        assert_eq!(line_at(&table, 1, 0), Some(101));
    }

    #[test]
    fn a_malformed_table_is_no_line_not_a_panic() {
        assert_eq!(line_at(&[0x00, 0x01], 1, 0), None, "an entry without its start bit");
        assert_eq!(line_at(&[entry(14, 1)], 1, 0), None, "a long form cut short");
        assert_eq!(line_at(&[entry(13, 1), 0x7f, 0x7f, 0x7f], 1, 0), None, "an endless varint");
        let mut huge = vec![entry(13, 1)];
        huge.extend([0x7e; 10]);
        huge.push(0x3e);
        let twice: Vec<u8> = huge.iter().chain(&huge).copied().collect();
        assert_eq!(line_at(&twice, i32::MAX, 1), None, "line numbers that overflow");
        // Every table of up to 3 bytes, every index: no panic.
        for a in 0..=255u8 {
            for b in [0u8, 0x40, 0x7f, 0x80, 0xff] {
                for index in 0..4 {
                    let _ = line_at(&[a, b, b], 7, index);
                }
            }
        }
    }
}
