//! The kernel programs stamp events with CLOCK_MONOTONIC (`bpf_ktime_get_ns`); user-space
//! observations (inventory sweeps, reports) use the same clock so the two can be compared.
//! Wall-clock times are shown in the host's local time (jiff reads TZ and /etc/localtime
//! itself, so the static binary needs no C library's time zone code).

use std::time::SystemTime;

use jiff::{Timestamp, tz::TimeZone};

/// `HH:MM:SS` in local time, with `.micros` when `micros` (bcc's tools print them so).
pub fn local_time_of_day(t: SystemTime, micros: bool) -> String {
    let Ok(at) = Timestamp::try_from(t) else {
        return if micros { "--:--:--.------" } else { "--:--:--" }.to_owned();
    };
    let zoned = at.to_zoned(TimeZone::system());
    zoned.strftime(if micros { "%H:%M:%S%.6f" } else { "%H:%M:%S" }).to_string()
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn time_of_day_has_its_fields_and_micros_when_asked() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let with = local_time_of_day(t, true);
        assert_eq!(with.len(), "HH:MM:SS.micros".len(), "{with}");
        assert!(with.ends_with(".123456"), "{with}");
        let without = local_time_of_day(t, false);
        assert_eq!(without, with[..8], "{without} {with}");
    }
}
