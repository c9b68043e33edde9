//! /proc texts tcptrace parses itself: `/proc/self/status` (the `CapEff:` mask checked before
//! loading) and `/proc/sys/net/ipv4/ip_local_port_range` (the ephemeral range TIME_WAIT churn
//! is measured against). Other /proc files are parsed by the procfs crate.
//!
//! Holds: neither parser panics; a mask is the hexadecimal value of the first `CapEff:` line;
//! a range is two numbers, low ≤ high, and holds high - low + 1 ports.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tcptrace::{analysis::ports::parse_range, kernel::privileges::cap_eff};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let caps = cap_eff(&text);
    let first = text.lines().find(|l| l.starts_with("CapEff:"));
    match (caps, first) {
        (Some(mask), Some(line)) => {
            let hex = line["CapEff:".len()..].trim();
            assert_eq!(u64::from_str_radix(hex, 16).ok(), Some(mask), "{line:?}");
        }
        (Some(mask), None) => panic!("mask {mask:#x} without a CapEff: line"),
        (None, _) => {}
    }
    if let Ok(ports) = parse_range(&text) {
        let numbers: Vec<u64> =
            text.split_whitespace().map(|n| n.parse().expect("two numbers")).collect();
        let [low, high] = numbers[..] else { panic!("{numbers:?} accepted") };
        assert!(low <= high);
        assert_eq!(u64::from(ports), high - low + 1);
    }
});
