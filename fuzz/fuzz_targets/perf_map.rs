//! A perf map (`/tmp/perf-<pid>.map`, written by the traced process's JIT, read by root) →
//! `symbolize::perf_map::table::read` → a table of functions.
//!
//! Holds: reading a slice never fails or panics, whatever the bytes, and with any byte limit;
//! no more lines are skipped than there are; every well-formed line (`START SIZE name`, hex,
//! at most `MAX_LINE` bytes) leaves its start address named, and the last one's start holds its
//! own name (a later line wins); every name found is non-empty and free of control characters
//! (names reach a terminal).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::symbolize::perf_map::table::{MAX_LINE, read};

fn hex(word: &[u8]) -> Option<u64> {
    let digits = word.strip_prefix(b"0x").unwrap_or(word);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// `START SIZE name` → (start, name), independently of the parser under test.
fn well_formed(line: &[u8]) -> Option<(u64, String)> {
    if line.len() > MAX_LINE {
        return None;
    }
    let mut rest = line;
    let mut words = [&[][..]; 2];
    for word in &mut words {
        rest = rest.trim_ascii_start();
        let end = rest.iter().position(u8::is_ascii_whitespace)?;
        (*word, rest) = rest.split_at(end);
    }
    let name = rest.trim_ascii();
    if name.is_empty() {
        return None;
    }
    hex(words[1])?;
    let name = String::from_utf8_lossy(name)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    Some((hex(words[0])?, name))
}

fuzz_target!(|data: &[u8]| {
    let table = read(data, u64::MAX).expect("reading a slice never fails");
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n' || b == b'\r').collect();
    assert!(table.skipped() <= lines.len() as u64, "{} skipped", table.skipped());
    let mut last = None;
    for (start, _) in lines.iter().filter_map(|line| well_formed(line)) {
        assert!(table.find(start).is_some(), "{start:#x} is not named");
    }
    if let Some(found) = lines.iter().rev().find_map(|line| well_formed(line)) {
        last = Some(found);
    }
    if let Some((start, name)) = &last {
        assert_eq!(table.find(*start), Some(name.as_str()), "the last line wins at {start:#x}");
    }
    for addr in [0, 1, u64::MAX].into_iter().chain(last.map(|(start, _)| start.wrapping_sub(1))) {
        if let Some(name) = table.find(addr) {
            assert!(!name.is_empty() && !name.chars().any(char::is_control), "{name:?}");
        }
    }
    // A byte limit (a map growing while it is read) drops at most what it cuts.
    let limited = read(data, (data.len() / 2) as u64).expect("reading a slice never fails");
    assert!(limited.skipped() <= lines.len() as u64);
});
