//! A perf map's text as a table of JIT functions, looked up by binary search: the pure half of
//! perf map support (no file, no process).
//!
//! The format (Linux `tools/perf/Documentation/jit-interface.txt`): one function per line,
//! `START SIZE name`, START and SIZE in hex without `0x` (accepted with it), the name the rest
//! of the line. The text is written by the process being traced, so none of it is trusted:
//! - a line that does not parse is skipped and counted, as is a line longer than [`MAX_LINE`]
//!   (skipped whole, never buffered past the bound);
//! - at most [`MAX_ENTRIES`] functions are kept, later lines are then counted as skipped;
//! - names are decoded lossily and control characters become U+FFFD: a name ends up in a
//!   report shown on a terminal.
//!
//! Overlaps: a JIT reuses memory for new code and appends the new function, so a later line
//! wins over the parts of earlier ones it covers (what is left of an earlier function still
//! names its addresses). A size of 0 covers its start address only, as blazesym and perf do.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead},
};

/// Longest line kept, in bytes (a JVM agent's signatures run to a few hundred).
pub const MAX_LINE: usize = 4096;
/// Most functions kept from one map (24 bytes each once built, plus their names).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Where a name is in [`Table::names`]: offset and length (a map is at most a few tens of MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Name {
    offset: u32,
    len: u32,
}

/// One function: the addresses `start..end` (disjoint from every other entry's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: u64,
    end: u64,
    name: Name,
}

/// A perf map's functions, sorted by address and disjoint.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Entry>,
    names: String,
    /// Lines that were not kept: malformed, too long, or past [`MAX_ENTRIES`].
    skipped: u64,
}

impl Table {
    /// The name of the function holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&str> {
        let after = self.entries.partition_point(|entry| entry.start <= addr);
        let entry = self.entries[..after].last()?;
        (addr < entry.end).then(|| self.name(entry.name))
    }

    /// Functions kept (each piece of one that later lines partly overwrote counts once).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no function was kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lines that were not kept.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Heap bytes held, for the cache's budget.
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>() + self.names.capacity()
    }

    fn name(&self, name: Name) -> &str {
        slice(&self.names, name)
    }
}

/// Parses a whole perf map held in memory.
#[cfg(test)]
pub fn parse(text: &[u8]) -> Table {
    // SANITY: reading from a slice never fails.
    read(text, u64::MAX).expect("reading a slice")
}

/// Parses a perf map from `reader`, reading at most `limit` bytes. A line is never buffered
/// past [`MAX_LINE`] bytes; a last line cut by `limit` is dropped (it may be half a name).
pub fn read(reader: impl BufRead, limit: u64) -> io::Result<Table> {
    let mut reader = io::Read::take(reader, limit);
    let mut builder = Builder::default();
    let mut line = Vec::with_capacity(256);
    let mut overlong = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buf.is_empty() {
            break;
        }
        let end = buf.iter().position(|&b| b == b'\n' || b == b'\r');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        if !overlong {
            if line.len() + chunk.len() > MAX_LINE {
                overlong = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(end.is_some());
        reader.consume(used);
        if end.is_some() {
            builder.line(&line, overlong);
            line.clear();
            overlong = false;
        }
    }
    let cut = reader.limit() == 0;
    if overlong || (cut && !line.is_empty()) {
        builder.line(&[], true);
    } else {
        builder.line(&line, false);
    }
    Ok(builder.build())
}

/// Accumulates lines; later lines overwrite what they cover of earlier ones.
#[derive(Default)]
struct Builder {
    /// Disjoint functions by start: start → (end, name).
    painted: BTreeMap<u64, (u64, Name)>,
    names: String,
    skipped: u64,
}

impl Builder {
    /// Adds one line (without its end of line); `skip` counts it as skipped whatever it holds.
    fn line(&mut self, line: &[u8], skip: bool) {
        if !skip && line.iter().all(u8::is_ascii_whitespace) {
            return; // Blank lines are not errors.
        }
        let parsed = if skip { None } else { parse_line(line) };
        match parsed {
            Some((start, size, name)) if self.painted.len() < MAX_ENTRIES => {
                // Size 0: the start address only.
                let end = start.saturating_add(size.max(1));
                let name = self.push_name(name);
                self.paint(start, end, name);
            }
            _ => self.skipped += 1,
        }
    }

    fn push_name(&mut self, raw: &[u8]) -> Name {
        let offset = self.names.len();
        let decoded = String::from_utf8_lossy(raw);
        self.names.extend(decoded.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }));
        Name { offset: to_u32(offset), len: to_u32(self.names.len() - offset) }
    }

    /// Makes `start..end` name `name`, trimming or splitting what it overlaps.
    fn paint(&mut self, start: u64, end: u64, name: Name) {
        // A function starting before `start` and running into it: keep its head, and its tail
        // past `end` if it runs that far.
        if let Some((&before, &(before_end, before_name))) = self.painted.range(..start).next_back()
            && before_end > start
        {
            self.painted.insert(before, (start, before_name));
            if before_end > end {
                self.painted.insert(end, (before_end, before_name));
            }
        }
        // Functions starting inside: removed, but for a tail past `end`.
        let inside: Vec<u64> = self.painted.range(start..end).map(|(&at, _)| at).collect();
        for at in inside {
            if let Some((at_end, at_name)) = self.painted.remove(&at)
                && at_end > end
            {
                self.painted.insert(end, (at_end, at_name));
            }
        }
        self.painted.insert(start, (end, name));
    }

    /// The table, holding only the names still used (a JIT that reuses its memory leaves many
    /// names painted over).
    fn build(self) -> Table {
        let Self { painted, names: all, skipped } = self;
        let mut names = String::new();
        let mut kept: HashMap<Name, Name> = HashMap::new();
        let entries: Vec<Entry> = painted
            .into_iter()
            .map(|(start, (end, name))| {
                let name = *kept.entry(name).or_insert_with(|| {
                    let offset = to_u32(names.len());
                    names.push_str(slice(&all, name));
                    Name { offset, len: name.len }
                });
                Entry { start, end, name }
            })
            .collect();
        names.shrink_to_fit();
        Table { entries, names, skipped }
    }
}

/// Names are at most [`MAX_LINE`] bytes (tripled by replacement characters) and the text is
/// bounded well below 4 GiB by the caller: saturate rather than wrap regardless.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The text of `name` in `names`; empty if it is not there (past 4 GiB).
fn slice(names: &str, name: Name) -> &str {
    let start = name.offset as usize;
    names.get(start..start.saturating_add(name.len as usize)).unwrap_or("")
}

/// `START SIZE name` → (start, size, name); `None` when malformed.
fn parse_line(line: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (start, rest) = word(line)?;
    let (size, rest) = word(rest)?;
    let name = rest.trim_ascii();
    if name.is_empty() {
        return None;
    }
    Some((hex(start)?, hex(size)?, name))
}

/// The first whitespace-separated word of `line` and what follows it.
fn word(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = line.trim_ascii_start();
    let end = line.iter().position(u8::is_ascii_whitespace)?;
    Some((&line[..end], &line[end..]))
}

fn hex(word: &[u8]) -> Option<u64> {
    let digits = word.strip_prefix(b"0x").unwrap_or(word);
    // from_str_radix accepts a sign; a perf map has none.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(table: &Table, addrs: &[u64]) -> Vec<Option<String>> {
        addrs.iter().map(|&addr| table.find(addr).map(str::to_owned)).collect()
    }

    #[test]
    fn finds_the_function_holding_an_address() {
        let table = parse(
            b"7f0000001000 100 LazyCompile:*handleOrders /srv/app/orders.js:12\n\
              7f0000001100 40 jit_stub\n",
        );
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.find(0x7f00_0000_1000),
            Some("LazyCompile:*handleOrders /srv/app/orders.js:12")
        );
        assert_eq!(
            table.find(0x7f00_0000_10ff),
            Some("LazyCompile:*handleOrders /srv/app/orders.js:12")
        );
        assert_eq!(table.find(0x7f00_0000_1100), Some("jit_stub"));
        assert_eq!(table.find(0x7f00_0000_113f), Some("jit_stub"));
        assert_eq!(table.find(0x7f00_0000_1140), None);
        assert_eq!(table.find(0x7f00_0000_0fff), None);
        assert_eq!(table.find(0), None);
        assert_eq!(table.find(u64::MAX), None);
        assert_eq!(table.skipped(), 0);
    }

    #[test]
    fn garbage_lines_are_skipped_and_counted() {
        let table = parse(
            b"not a perf map\n\
              \n\
              1000 10 good\n\
              zz 10 bad_start\n\
              2000 -10 negative_size\n\
              +3000 10 signed\n\
              3000 10\n\
              4000\n\
              \xff\xfe 10 binary\n\
              0x5000 0x10 with_prefix\n\
              \t  6000\t10\t tabs and  spaces \t\r\n\
              ffffffffffffffffff 10 too_big\n\
              fffffffffffffff0 100 to_the_end\n\
              7000 10 \x1b[31mred\x07 \xff\n",
        );
        assert_eq!(
            names(&table, &[0x1005, 0x2005, 0x3005, 0x5005, 0x6005, u64::MAX - 1, 0x7000]),
            [
                Some("good".to_owned()),
                None,
                None,
                Some("with_prefix".to_owned()),
                Some("tabs and  spaces".to_owned()),
                Some("to_the_end".to_owned()),
                Some("\u{fffd}[31mred\u{fffd} \u{fffd}".to_owned()),
            ]
        );
        // not a perf map, zz, -10, +3000, a name missing, a size missing, \xff\xfe, too_big.
        assert_eq!(table.skipped(), 8);
    }

    #[test]
    fn a_huge_line_is_skipped_without_being_kept() {
        let mut text = b"1000 10 before\n".to_vec();
        text.extend(b"2000 10 ");
        text.extend(std::iter::repeat_n(b'x', 10 * MAX_LINE));
        text.extend(b"\n3000 10 after\n");
        // A line just within the bound is kept.
        let long_name = "y".repeat(MAX_LINE - "4000 10 ".len());
        text.extend(format!("4000 10 {long_name}\n").bytes());
        // Read in small pieces, as a file is, so the line spans many buffers.
        let table = read(io::BufReader::with_capacity(64, &text[..]), u64::MAX).unwrap();
        assert_eq!(
            names(&table, &[0x1000, 0x2000, 0x3000]),
            [Some("before".to_owned()), None, Some("after".to_owned())]
        );
        assert_eq!(table.find(0x4000), Some(long_name.as_str()));
        assert_eq!(table.skipped(), 1);
        assert!(table.bytes() < 2 * MAX_LINE, "{} bytes kept", table.bytes());
    }

    #[test]
    fn an_unterminated_huge_line_at_the_end_is_skipped() {
        let mut text = b"1000 10 before\n2000 10 ".to_vec();
        text.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        let table = read(io::BufReader::with_capacity(64, &text[..]), u64::MAX).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.skipped(), 1);
    }

    #[test]
    fn reading_stops_at_the_limit_and_drops_a_cut_line() {
        let text = b"1000 10 first\n2000 10 second\n3000 10 third\n";
        // The limit falls inside "second": it is dropped, not kept as "sec".
        let table = read(&text[..], 20).unwrap();
        assert_eq!(
            names(&table, &[0x1000, 0x2000, 0x3000]),
            [Some("first".to_owned()), None, None]
        );
        assert_eq!(table.skipped(), 1);
        // A last line without an end of line, not cut by the limit, is kept.
        let table = read(&b"1000 10 first\n2000 10 last"[..], u64::MAX).unwrap();
        assert_eq!(table.find(0x2000), Some("last"));
    }

    #[test]
    fn unsorted_lines_are_sorted() {
        let table = parse(b"3000 10 c\n1000 10 a\n2000 10 b\n");
        assert_eq!(
            names(&table, &[0x1008, 0x2008, 0x3008, 0x2010]),
            [Some("a".to_owned()), Some("b".to_owned()), Some("c".to_owned()), None]
        );
    }

    #[test]
    fn a_later_line_wins_over_what_it_covers() {
        // `old` covers 0x1000..0x1100; `new` reuses 0x1040..0x1080; `head` then replaces the
        // start of `old`; `wide` covers several earlier ones entirely and cuts `tail`'s start.
        let table = parse(
            b"1000 100 old\n\
              1040 40 new\n\
              1000 10 head\n\
              2000 10 a\n\
              2020 10 b\n\
              2050 20 tail\n\
              1ff0 68 wide\n",
        );
        assert_eq!(
            names(
                &table,
                &[
                    0x1000, 0x100f, 0x1010, 0x1040, 0x107f, 0x1080, 0x10ff, 0x1100, 0x1ff0, 0x2025,
                    0x2057, 0x2058, 0x206f, 0x2070
                ]
            ),
            [
                Some("head".to_owned()),
                Some("head".to_owned()),
                Some("old".to_owned()),
                Some("new".to_owned()),
                Some("new".to_owned()),
                Some("old".to_owned()),
                Some("old".to_owned()),
                None,
                Some("wide".to_owned()),
                Some("wide".to_owned()),
                Some("wide".to_owned()),
                Some("tail".to_owned()),
                Some("tail".to_owned()),
                None,
            ]
        );
        // The same line twice: one entry.
        let table = parse(b"1000 10 f\n1000 10 f\n1000 10 g\n");
        assert_eq!((table.len(), table.find(0x1000)), (1, Some("g")));
    }

    #[test]
    fn names_painted_over_are_not_kept() {
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!("1000 100 function_compiled_again_{i}\n"));
        }
        // Split by a later line: both pieces share one copy of the name.
        text.push_str("1040 10 inner\n");
        let table = parse(text.as_bytes());
        assert_eq!(table.find(0x1000), Some("function_compiled_again_9999"));
        assert_eq!(table.find(0x1040), Some("inner"));
        assert_eq!(table.find(0x1050), Some("function_compiled_again_9999"));
        assert_eq!(table.len(), 3);
        assert!(table.bytes() < 200, "{} bytes kept", table.bytes());
    }

    #[test]
    fn a_zero_size_covers_its_start_only() {
        let table = parse(b"1000 0 point\n");
        assert_eq!(names(&table, &[0xfff, 0x1000, 0x1001]), [None, Some("point".to_owned()), None]);
    }

    #[test]
    fn keeps_at_most_max_entries() {
        let mut text = String::new();
        for i in 0..MAX_ENTRIES as u64 + 10 {
            text.push_str(&format!("{:x} 1 f\n", i * 2));
        }
        let table = parse(text.as_bytes());
        assert_eq!(table.len(), MAX_ENTRIES);
        assert_eq!(table.skipped(), 10);
        assert_eq!(table.find(0), Some("f"));
        assert_eq!(table.find(2 * (MAX_ENTRIES as u64 + 5)), None);
    }
}
