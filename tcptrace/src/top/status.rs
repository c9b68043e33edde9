//! The summary above the table: when, how long, and how healthy the data source is.

use std::time::{Duration, SystemTime};

use super::{Frame, Sort};
use crate::event::clock::local_time_of_day;

/// `(label, value)` pairs; each view lays them out its own way. Labels are single words so the
/// plain view's `label=value` stays easy to split.
pub(crate) fn fields(frame: &Frame, sort: Sort, now: SystemTime) -> Vec<(&'static str, String)> {
    let Frame { rows, elapsed, close_hook, sockets_tracked, events_per_s, events_lost, evicted } =
        frame;
    vec![
        ("time", local_time_of_day(now, false)),
        ("elapsed", elapsed_secs(*elapsed)),
        ("close_hook", close_hook.clone()),
        ("sockets", sockets_tracked.to_string()),
        ("events/s", format!("{events_per_s:.1}")),
        ("lost", events_lost.to_string()),
        ("evicted", evicted.to_string()),
        ("procs", rows.len().to_string()),
        (
            "sort",
            format!("{}{}", sort.key.name(), if sort.descending() { "-desc" } else { "-asc" }),
        ),
    ]
}

/// Whole seconds, without spaces (`1h2m5s`): sub-second precision is noise at a refresh of a
/// second or more.
fn elapsed_secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::top::{SortKey, test_rows::frame};

    #[test]
    fn every_header_value_is_shown() {
        let f = fields(&frame(vec![]), SortKey::Open.into(), UNIX_EPOCH);
        let get = |label| f.iter().find(|(l, _)| *l == label).map(|(_, v)| v.as_str());
        assert_eq!(get("elapsed"), Some("1m5s"));
        assert_eq!(get("close_hook"), Some("tracepoint"));
        assert_eq!(get("sockets"), Some("1234"));
        assert_eq!(get("events/s"), Some("56.5"));
        assert_eq!(get("lost"), Some("7"));
        assert_eq!(get("evicted"), Some("3"));
        assert_eq!(get("procs"), Some("0"));
        assert_eq!(get("sort"), Some("open-desc"));
        assert_eq!(get("time").map(str::len), Some(8));
    }
}
