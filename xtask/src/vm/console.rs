//! The VM's serial console: streaming it live with a per-VM prefix, stripping terminal control,
//! and judging the outcome from the exit marker `/init` prints (`VmOutcome`).
//!
//! A leaf: `boot` reads the console with it and the `vm` module re-exports `VmOutcome`; it
//! imports nothing from `vm`. `EXIT_MARKER` must match the line `initramfs`'s `/init` prints (a
//! test in `vm` checks it).

use std::io::{self, BufRead, BufReader, Read, Write};

/// What came out of one VM.
pub struct VmOutcome {
    pub name: String,
    /// The program's exit status, or `None` when the VM never printed the exit marker (kernel
    /// panic, hang, timeout, qemu failure).
    pub exit_code: Option<i32>,
    /// The VM's serial console output, followed by anything qemu itself printed on stderr.
    pub output: String,
}

impl VmOutcome {
    /// Why the program did not succeed, or None when it exited with 0.
    pub fn failure(&self) -> Option<String> {
        match self.exit_code {
            Some(0) => None,
            Some(code) => Some(format!("{} exited with {code}", self.name)),
            None => Some(format!("{} did not finish (panic, hang or timeout)", self.name)),
        }
    }
}

pub(super) const EXIT_MARKER: &str = "TCPTRACE-VM-EXIT=";

/// Copies `reader` line by line to `writer` with a prefix and returns the lines without it.
pub(super) fn forward(
    reader: impl Read,
    mut writer: impl Write,
    prefix: &str,
) -> io::Result<String> {
    let mut reader = BufReader::new(reader);
    let mut collected = String::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(collected);
        }
        let line = printable(&String::from_utf8_lossy(&raw));
        // Losing a log line (closed stdout) must not abandon the VM or its collected output.
        let _ = writeln!(writer, "{prefix}{line}");
        collected.push_str(&line);
        collected.push('\n');
    }
}

/// Drops terminal escape sequences and control characters: SeaBIOS clears and resets the screen
/// (`ESC c`), which would wipe the caller's terminal, and the console ends lines with `\r\n`.
fn printable(raw: &str) -> String {
    let mut line = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI sequences run to a final byte in @..~; other escapes are one character.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => line.push(c),
            c if c.is_control() => {}
            c => line.push(c),
        }
    }
    line
}

/// The status from the last marker line; the last one wins in case the program printed
/// something marker-like itself.
pub(super) fn parse_exit_marker(console: &str) -> Option<i32> {
    console.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(EXIT_MARKER)?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_terminal_control() {
        assert_eq!(printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(printable("a\tb\n"), "a\tb");
    }

    #[test]
    fn parses_the_last_exit_marker() {
        assert_eq!(parse_exit_marker("boot\nTCPTRACE-VM-EXIT=7\r\n"), Some(7));
        assert_eq!(parse_exit_marker("TCPTRACE-VM-EXIT=1\n[ 1.0] x TCPTRACE-VM-EXIT=0\n"), Some(0));
        assert_eq!(parse_exit_marker("Kernel panic - not syncing\n"), None);
    }
}
