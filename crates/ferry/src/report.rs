//! `ferry bench` results: a latency histogram with percentiles, throughput,
//! and errors counted by reply code, printed for people or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

/// Sub-buckets per power of two: values are kept to within 1/32 (about 3%).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64` microsecond count.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// A log-linear latency histogram in microseconds: fixed memory (about
/// 15 KiB) whatever the number of samples, exact below 32 µs and within
/// about 3% above.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    min: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            min: u64::MAX,
            sum: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let p = 63 - v.leading_zeros(); // position of the top bit, >= SUB_BITS
    let shift = p - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // the SUB_BITS bits below the top bit
    (SUB + u64::from(shift) * SUB + mantissa) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    let low = (SUB + mantissa) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
        self.min = self.min.min(us);
        self.sum += u128::from(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
        self.sum += other.sum;
    }

    /// The number of samples.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded bucket
    /// bound below which at least `q` of the samples lie, never above the
    /// true maximum. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(bucket_high(i).min(self.max));
            }
        }
        Duration::from_micros(self.max)
    }

    /// The largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max)
    }

    /// The smallest sample (zero when empty).
    pub fn min(&self) -> Duration {
        if self.total == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.min)
        }
    }

    /// The mean sample (zero when empty).
    pub fn mean(&self) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((self.sum / u128::from(self.total)) as u64)
    }

    /// Counts per power-of-two range of microseconds, `(low, high, count)`,
    /// only for ranges that hold samples: the coarse picture for people.
    pub fn octaves(&self) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let high = bucket_high(i);
            let top = 63 - high.max(1).leading_zeros();
            let low = if high == 0 { 0 } else { 1u64 << top };
            let high = if high == 0 { 0 } else { (low << 1) - 1 };
            match out.last_mut() {
                Some(last) if last.0 == low => last.2 += count,
                _ => out.push((low, high, count)),
            }
        }
        out
    }
}

/// Everything a benchmark run measured.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Messages the server accepted (250 after the data).
    pub delivered: u64,
    /// Messages that failed, for any reason.
    pub failed: u64,
    /// Messages still in flight when `--duration` ran out: cancelled,
    /// neither delivered nor failed.
    pub cancelled: u64,
    /// Octets of message data sent for delivered messages.
    pub bytes: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Per-message latency of delivered messages: from the start of the
    /// transaction to the final reply.
    pub latency: Histogram,
    /// Failures by cause: `"550 5.1.1"`, `"421"`, `"timeout"`, ...
    pub errors: BTreeMap<String, u64>,
    /// How many tasks sent at once.
    pub concurrency: usize,
}

impl BenchReport {
    /// Records a delivered message of `size` octets.
    pub fn delivered(&mut self, latency: Duration, size: u64) {
        self.delivered += 1;
        self.bytes += size;
        self.latency.record(latency);
    }

    /// Records a failure under `cause` (a reply code such as `"451 4.3.0"`,
    /// or a short word for failures without a reply).
    pub fn failed(&mut self, cause: impl Into<String>) {
        self.failed += 1;
        *self.errors.entry(cause.into()).or_default() += 1;
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &BenchReport) {
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
        for (cause, count) in &other.errors {
            *self.errors.entry(cause.clone()).or_default() += count;
        }
    }

    /// Messages attempted.
    pub fn messages(&self) -> u64 {
        self.delivered + self.failed
    }

    /// Delivered messages per second.
    pub fn messages_per_second(&self) -> f64 {
        per_second(self.delivered as f64, self.elapsed)
    }

    /// Delivered megabytes (10^6 octets) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        per_second(self.bytes as f64 / 1e6, self.elapsed)
    }

    /// The report as one JSON object; durations in milliseconds.
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        json!({
            "messages": self.messages(),
            "delivered": self.delivered,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "bytes": self.bytes,
            "concurrency": self.concurrency,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "messages_per_second": self.messages_per_second(),
            "megabytes_per_second": self.megabytes_per_second(),
            "latency_ms": {
                "min": ms(self.latency.min()),
                "mean": ms(self.latency.mean()),
                "p50": ms(self.latency.quantile(0.50)),
                "p90": ms(self.latency.quantile(0.90)),
                "p99": ms(self.latency.quantile(0.99)),
                "max": ms(self.latency.max()),
            },
            "errors": self.errors,
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let cancelled = if self.cancelled > 0 {
            format!(", {} cancelled at the deadline", self.cancelled)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "messages:    {} attempted, {} delivered, {} failed{cancelled}, concurrency {}",
            self.messages(),
            self.delivered,
            self.failed,
            self.concurrency
        );
        let _ = writeln!(
            out,
            "throughput:  {:.1} messages/s, {:.2} MB/s over {:.2}s",
            self.messages_per_second(),
            self.megabytes_per_second(),
            self.elapsed.as_secs_f64()
        );
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "latency:     p50 {}  p90 {}  p99 {}  max {}",
                human(self.latency.quantile(0.5)),
                human(self.latency.quantile(0.9)),
                human(self.latency.quantile(0.99)),
                human(self.latency.max()),
            );
            let octaves = self.latency.octaves();
            let widest = octaves.iter().map(|o| o.2).max().unwrap_or(1);
            for (low, high, count) in octaves {
                let bar = "#".repeat(((count * 40).div_ceil(widest)) as usize);
                let _ = writeln!(
                    out,
                    "  {:>9} .. {:<9} {:>8} {bar}",
                    human(Duration::from_micros(low)),
                    human(Duration::from_micros(high)),
                    count
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "errors:");
            for (cause, count) in &self.errors {
                let _ = writeln!(out, "  {count:>8}  {cause}");
            }
        }
        out
    }
}

fn per_second(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

/// A duration with a unit chosen for reading: `850µs`, `12.3ms`, `1.20s`.
pub fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip() {
        for v in [
            0u64,
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            123_456,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let i = bucket_of(v);
            assert!(i < BUCKETS, "{v}");
            assert!(bucket_high(i) >= v, "{v}: {}", bucket_high(i));
            // Relative error at most 1/32.
            assert!(bucket_high(i) - v <= v / 32, "{v}: {}", bucket_high(i));
        }
        // Buckets are contiguous and ordered.
        for i in 1..BUCKETS {
            assert_eq!(
                bucket_high(i - 1) + 1,
                bucket_high(i) - (bucket_width(i) - 1)
            );
        }
    }

    fn bucket_width(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB { 1 } else { 1 << ((i - SUB) / SUB) }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.len(), 1000);
        let near = |d: Duration, want: u64| {
            let got = d.as_micros() as u64;
            assert!(got >= want && got - want <= want / 32, "{got} vs {want}");
        };
        near(h.quantile(0.5), 500);
        near(h.quantile(0.9), 900);
        near(h.quantile(0.99), 990);
        assert_eq!(h.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(h.max(), Duration::from_micros(1000));
        assert_eq!(h.min(), Duration::from_micros(1));
        assert_eq!(h.mean(), Duration::from_micros(500));
        // Small values are exact.
        let mut small = Histogram::new();
        for us in [3u64, 3, 7, 20] {
            small.record(Duration::from_micros(us));
        }
        assert_eq!(small.quantile(0.5), Duration::from_micros(3));
        assert_eq!(small.quantile(0.75), Duration::from_micros(7));
        assert_eq!(small.quantile(0.99), Duration::from_micros(20));
    }

    #[test]
    fn merge_and_octaves() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(Duration::from_micros(100));
        b.record(Duration::from_micros(150));
        b.record(Duration::from_millis(5));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.max(), Duration::from_millis(5));
        assert_eq!(a.min(), Duration::from_micros(100));
        assert_eq!(
            a.octaves(),
            vec![(64, 127, 1), (128, 255, 1), (4096, 8191, 1)]
        );
    }

    #[test]
    fn report_json_and_text() {
        let mut r = BenchReport {
            concurrency: 4,
            elapsed: Duration::from_secs(2),
            ..BenchReport::default()
        };
        for _ in 0..10 {
            r.delivered(Duration::from_millis(2), 1_000_000);
        }
        let mut other = BenchReport::default();
        other.failed("451 4.3.0");
        other.failed("451 4.3.0");
        other.failed("timeout");
        r.merge(&other);
        let json = r.to_json();
        assert_eq!(json["messages"], 13);
        assert_eq!(json["delivered"], 10);
        assert_eq!(json["failed"], 3);
        assert_eq!(json["messages_per_second"], 5.0);
        assert_eq!(json["megabytes_per_second"], 5.0);
        assert_eq!(json["latency_ms"]["p50"], 2.0);
        assert_eq!(json["latency_ms"]["max"], 2.0);
        assert_eq!(json["errors"]["451 4.3.0"], 2);
        assert_eq!(json["errors"]["timeout"], 1);
        let text = r.to_text();
        assert!(
            text.contains("13 attempted, 10 delivered, 3 failed"),
            "{text}"
        );
        assert!(text.contains("5.0 messages/s, 5.00 MB/s"), "{text}");
        assert!(text.contains("p50 2.0ms"), "{text}");
        assert!(text.contains("       2  451 4.3.0"), "{text}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_micros(850)), "850µs");
        assert_eq!(human(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(human(Duration::from_millis(1200)), "1.20s");
    }
}
