//! The ephemeral port range that TIME_WAIT churn exhausts.

use std::fs;

use anyhow::{Context as _, bail};

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Linux's default range, 32768–60999.
pub const DEFAULT_EPHEMERAL_PORTS: u32 = 60999 - 32768 + 1;

/// How many ports `net.ipv4.ip_local_port_range` holds in this network namespace.
pub fn ephemeral_ports() -> anyhow::Result<u32> {
    let text = fs::read_to_string(PORT_RANGE).with_context(|| format!("reading {PORT_RANGE}"))?;
    parse_range(&text).with_context(|| format!("parsing {PORT_RANGE}: {text:?}"))
}

/// The number of ports in the text of `ip_local_port_range` (`"LOW\tHIGH\n"`); pure (fuzzed by
/// `fuzz/`).
pub fn parse_range(text: &str) -> anyhow::Result<u32> {
    let mut fields = text.split_whitespace().map(str::parse::<u32>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (fields.next(), fields.next(), fields.next())
    else {
        bail!("expected two port numbers");
    };
    if low > high {
        bail!("the range is empty");
    }
    // Ports are 16-bit: a wider range is not the kernel's (and would overflow the count).
    if high > u32::from(u16::MAX) {
        bail!("{high} is not a port");
    }
    Ok(high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format() {
        assert_eq!(parse_range("32768\t60999\n").unwrap(), DEFAULT_EPHEMERAL_PORTS);
        assert_eq!(parse_range("1024 1024").unwrap(), 1);
        assert!(parse_range("60999 32768").is_err());
        assert!(parse_range("0 4294967295").is_err(), "found by fuzzing: overflowed");
        assert!(parse_range("1 2 3").is_err());
        assert!(parse_range("").is_err());
    }

    #[test]
    fn reads_this_machine() {
        assert!(ephemeral_ports().unwrap() > 0);
    }
}
