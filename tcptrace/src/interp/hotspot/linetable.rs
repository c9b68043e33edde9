//! HotSpot's compressed line number table: bytecode index → source line.
//!
//! The table follows a method's bytecodes when `ConstMethod`'s flags say it has one. It is a
//! stream of (bci, line) pairs, each a delta from the previous (starting at 0, 0), ended by a
//! zero byte: one byte `bci_delta << 3 | line_delta` when both are small, otherwise 0xFF then
//! both deltas as signed UNSIGNED5 numbers (src/hotspot/share/oops/method.hpp,
//! `CompressedLineNumberWriteStream`; share/code/compressedStream.cpp). A bytecode's line is
//! that of its own pair, or of the closest pair before it (`Method::line_number_from_bci`).
//! The table comes from another process, so a malformed one is `None`, never a panic.

/// Pairs read at most: a method's bytecode is under 64 KiB.
const MAX_PAIRS: usize = 65_536;

/// The line of bytecode `bci` in `table`.
pub fn line_at(table: &[u8], bci: u64) -> Option<u32> {
    let mut stream = Stream { bytes: table, at: 0 };
    let (mut pair_bci, mut line) = (0i64, 0i64);
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..MAX_PAIRS {
        let head = stream.byte()?;
        if head == 0 {
            break;
        }
        if head == 0xff {
            pair_bci = pair_bci.checked_add(stream.signed()?)?;
            line = line.checked_add(stream.signed()?)?;
        } else {
            pair_bci += i64::from(head >> 3);
            line += i64::from(head & 7);
        }
        if pair_bci == bci as i64 {
            return u32::try_from(line).ok();
        }
        // Pairs need not come in bytecode order: the closest one before wins.
        if pair_bci < bci as i64 && best.is_none_or(|(best_bci, _)| pair_bci >= best_bci) {
            best = Some((pair_bci, line));
        }
    }
    best.and_then(|(_, line)| u32::try_from(line).ok())
}

/// Whether `table` holds a whole stream, end marker included (the table's length is not
/// stored: it is read until this holds).
pub fn is_complete(table: &[u8]) -> bool {
    let mut stream = Stream { bytes: table, at: 0 };
    for _ in 0..MAX_PAIRS {
        match stream.byte() {
            Some(0) => return true,
            Some(0xff) => {
                if stream.signed().and_then(|_| stream.signed()).is_none() {
                    return false;
                }
            }
            Some(_) => {}
            None => return false,
        }
    }
    true
}

struct Stream<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Stream<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// UNSIGNED5: bytes below 192 end a number; up to five bytes, six bits each after the first.
    fn unsigned(&mut self) -> Option<u32> {
        const L: u32 = 192;
        let first = u32::from(self.byte()?);
        if first < L {
            return Some(first);
        }
        let mut sum = first;
        let mut shift = 6;
        for i in 1..5 {
            let b = u32::from(self.byte()?);
            sum = sum.wrapping_add(b << shift);
            if b < L || i == 4 {
                return Some(sum);
            }
            shift += 6;
        }
        Some(sum)
    }

    /// `decode_sign`: the sign in the lowest bit.
    fn signed(&mut self) -> Option<i64> {
        let raw = self.unsigned()?;
        Some(i64::from((raw >> 1) as i32 ^ -((raw & 1) as i32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `write_signed_int` of `value` as HotSpot writes it.
    fn signed(value: i32) -> Vec<u8> {
        let mut v = ((value << 1) ^ (value >> 31)) as u32;
        let mut out = Vec::new();
        for i in 0..5 {
            if v < 192 || i == 4 {
                out.push(v as u8);
                return out;
            }
            let b = 192 + (v - 192) % 64;
            out.push(b as u8);
            v = (v - b) >> 6;
        }
        out
    }

    #[test]
    fn finds_the_line_of_a_bytecode_in_short_and_long_pairs() {
        // (0, 7), (5, 8), (40, 20): the last two need the long form.
        let mut table = vec![7u8]; // bci +0, line +7
        table.push((5 << 3) | 1); // bci +5, line +1
        table.push(0xff);
        table.extend(signed(35));
        table.extend(signed(12));
        table.push(0);
        assert_eq!(line_at(&table, 0), Some(7));
        assert_eq!(line_at(&table, 3), Some(7));
        assert_eq!(line_at(&table, 5), Some(8));
        assert_eq!(line_at(&table, 39), Some(8));
        assert_eq!(line_at(&table, 40), Some(20));
        assert_eq!(line_at(&table, 900), Some(20));
        assert!(is_complete(&table));
        assert!(!is_complete(&table[..table.len() - 1]), "no end marker yet");
        assert!(!is_complete(&table[..3]), "a long pair cut short");
    }

    #[test]
    fn large_and_negative_deltas_round_trip() {
        let mut table = vec![0xff];
        table.extend(signed(1000));
        table.extend(signed(5000));
        table.push(0xff);
        table.extend(signed(10));
        table.extend(signed(-4990));
        table.push(0);
        assert_eq!(line_at(&table, 1000), Some(5000));
        assert_eq!(line_at(&table, 1010), Some(10));
    }

    #[test]
    fn a_malformed_table_is_no_line_not_a_panic() {
        assert_eq!(line_at(&[], 0), None);
        assert_eq!(line_at(&[0xff, 0xff], 0), None, "a long pair cut short");
        for a in 0..=255u8 {
            for b in [0u8, 0x7f, 0xc0, 0xff] {
                let _ = line_at(&[a, b, b, b, b, b, b], 3);
            }
        }
    }
}
