//! A compact distribution of durations in microseconds, for per-process lifetimes and connect
//! latencies: logarithmic buckets 2% wide, kept sparse (only the buckets a value fell into).
//!
//! An HdrHistogram from 1 µs to a day with 3 significant digits is an array of 27,648 counters
//! (221 KB) whether it holds one value or a million; two per process made `leaks` grow by
//! 450 KB for every short-lived process it saw. Here a process that closed one connection
//! costs one 8-byte bucket, and the worst case (every bucket from 1 µs to a day in use) is
//! 1,272 buckets, 10 KB. A bucket's value is its geometric middle, within 1% of every value in
//! it, clamped to the smallest and largest values recorded, which are exact.

/// The widest value kept: a day. Larger ones count as a day.
const MAX_US: u64 = 86_400 * 1_000_000;
/// Each bucket's upper bound is this times its lower bound.
const GROWTH: f64 = 1.02;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distribution {
    /// (bucket, values in it), by bucket.
    buckets: Vec<(u16, u32)>,
    count: u64,
    min: u64,
    max: u64,
}

fn bucket(us: u64) -> u16 {
    // The largest value's bucket is 1,271: u16 holds every bucket.
    ((us as f64).ln() / GROWTH.ln()).floor() as u16
}

/// The middle of `bucket`: within 1% of both of its bounds, and a whole number of µs that it
/// holds (below 50 µs a bucket holds one whole number: those values are exact).
fn middle(bucket: u16) -> f64 {
    let low = GROWTH.powi(i32::from(bucket));
    let high = low * GROWTH;
    let whole = (low.ceil(), (high.ceil() - 1.0).max(low.ceil()));
    (low * (1.0 + GROWTH) / 2.0).clamp(whole.0, whole.1)
}

impl Distribution {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (exact), in µs.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Records `us` microseconds (at least 1, at most a day).
    pub fn record(&mut self, us: u64) {
        let us = us.clamp(1, MAX_US);
        self.add(bucket(us), 1);
        self.min = if self.count == 0 { us } else { self.min.min(us) };
        self.max = self.max.max(us);
        self.count += 1;
    }

    fn add(&mut self, bucket: u16, n: u32) {
        match self.buckets.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(n),
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        if other.is_empty() {
            return;
        }
        for &(bucket, n) in &other.buckets {
            self.add(bucket, n);
        }
        self.min = if self.is_empty() { other.min } else { self.min.min(other.min) };
        self.max = self.max.max(other.max);
        self.count += other.count;
    }

    /// The value below which a `q` share of the values fall (`0 < q <= 1`), in µs: within 1%
    /// of the true value, and never outside the recorded range.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        let bucket = self
            .buckets
            .iter()
            .find(|&&(_, n)| {
                seen += u64::from(n);
                seen >= rank
            })
            .or(self.buckets.last())
            .map_or(0, |&(b, _)| b);
        middle(bucket).clamp(self.min as f64, self.max as f64)
    }

    /// Heap bytes in use (for tests and accounting).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<(u16, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact quantile of sorted `values`, by the same rank rule.
    fn exact(values: &[u64], q: f64) -> f64 {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1] as f64
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        // A spread from microseconds to hours, deterministic.
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) % 1_000_003) as f64 / 1_000_003.0;
                (10f64.powf(x * 10.0)).max(1.0) as u64
            })
            .collect();
        let mut d = Distribution::default();
        for &v in &values {
            d.record(v);
        }
        values.sort_unstable();
        for q in [0.5, 0.9, 0.99] {
            let (got, want) = (d.quantile(q), exact(&values, q));
            assert!((got - want).abs() <= want * 0.01 + 1.0, "q{q}: {got} vs {want}");
        }
        assert_eq!(d.max(), *values.last().unwrap());
        assert_eq!(d.len(), 10_000);
        assert!(d.heap_bytes() <= 1_272 * 8 * 2, "{} bytes", d.heap_bytes());
    }

    #[test]
    fn one_value_is_exact_and_small() {
        let mut d = Distribution::default();
        d.record(1_000);
        assert_eq!((d.quantile(0.5), d.quantile(0.99), d.max()), (1_000.0, 1_000.0, 1_000));
        assert!(d.heap_bytes() <= 64, "{} bytes", d.heap_bytes());
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut both) =
            (Distribution::default(), Distribution::default(), Distribution::default());
        for v in 1..=500u64 {
            let target = if v % 3 == 0 { &mut a } else { &mut b };
            target.record(v * 37);
            both.record(v * 37);
        }
        a.merge(&b);
        assert_eq!(a, both);
        let mut empty = Distribution::default();
        empty.merge(&both);
        assert_eq!(empty, both);
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut d = Distribution::default();
        d.record(0);
        d.record(u64::MAX);
        assert_eq!((d.quantile(0.5), d.max()), (1.0, MAX_US));
        for us in 1..50 {
            let mut d = Distribution::default();
            d.record(us);
            d.record(10_000);
            assert_eq!(d.quantile(0.5), us as f64, "small values are exact");
        }
    }
}
