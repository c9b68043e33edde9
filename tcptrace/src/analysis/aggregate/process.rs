//! Per-process counts and distributions.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lifetimes and latencies are recorded in microseconds, from 1 µs to a day, 3 significant
/// digits: about 30 KiB per histogram, allocated only for processes that close something.
const HIST_MAX_US: u64 = 86_400 * 1_000_000;

#[derive(Debug)]
pub struct ProcessStats {
    pub comm: String,
    /// Sockets it opened (connect, accept) while tracing.
    pub opened: u64,
    /// Last descriptors it gave up while tracing.
    pub released: u64,
    /// TIME_WAIT entries of sockets it owned.
    pub time_wait_entries: u64,
    /// Open to protocol close.
    pub lifetime_us: Option<Histogram<u64>>,
    /// connect() to ESTABLISHED.
    pub connect_latency_us: Option<Histogram<u64>>,
    pub exited: bool,
}

impl ProcessStats {
    pub fn new(comm: String) -> Self {
        Self {
            comm,
            opened: 0,
            released: 0,
            time_wait_entries: 0,
            lifetime_us: None,
            connect_latency_us: None,
            exited: false,
        }
    }

    pub fn record_lifetime(&mut self, ns: u64) {
        record(&mut self.lifetime_us, ns);
    }

    pub fn record_connect_latency(&mut self, ns: u64) {
        record(&mut self.connect_latency_us, ns);
    }
}

fn record(hist: &mut Option<Histogram<u64>>, ns: u64) {
    let hist = hist.get_or_insert_with(|| {
        Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant bounds are valid")
    });
    hist.saturating_record((ns / 1_000).max(1));
}

/// A distribution as reports show it, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(hist: Option<&Histogram<u64>>) -> Option<Self> {
        let hist = hist.filter(|h| !h.is_empty())?;
        let ms = |us: u64| us as f64 / 1_000.0;
        Some(Self {
            count: hist.len(),
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        })
    }
}
