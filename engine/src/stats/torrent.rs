//! Per-torrent and per-peer figures that must stay small: a fixed log-bucket latency
//! histogram and a windowed byte-rate meter.
//!
//! Owns: `LatencyBuckets` (request latency of one torrent: 100 `u32` buckets, 400 bytes, no
//! allocation, mergeable by addition) and `RateMeter` (bytes per second over the last window,
//! decaying when the bytes stop). Must never: allocate, or cost more than O(1) per record on
//! the shard (a record is one index computation and one add).
//!
//! Why not an hdrhistogram per torrent: one with the shards' range (1 us to 60 s) costs
//! kilobytes even at one significant digit, for every torrent with traffic. Four buckets per
//! power of two bound a percentile's error to about +-11% (the midpoint of a bucket at most
//! 25% wide), enough to tell a torrent at 200 us from one at 20 ms.

use std::time::{Duration, Instant};

/// Buckets per power of two of microseconds.
const SUB_BUCKETS: usize = 4;
/// Powers of two covered: 1 us up to 2^26 us (~67 s, above `LATENCY_NS_MAX`).
const OCTAVES_MAX: usize = 25;
/// Buckets of one `LatencyBuckets`: values 0..4 us one each, then 4 per power of two.
pub const LATENCY_BUCKETS: usize = SUB_BUCKETS * OCTAVES_MAX;
/// The largest value a bucket holds, in microseconds; larger ones land in the last bucket.
const VALUE_US_MAX: u64 = (1 << (OCTAVES_MAX + 1)) - 1;
/// Bytes one `LatencyBuckets` takes (documented as the per-torrent cost in operations.md).
pub const LATENCY_BUCKETS_BYTES: usize = LATENCY_BUCKETS * 4;

/// Request latencies of one torrent, counted in log buckets of microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBuckets {
    counts: [u32; LATENCY_BUCKETS],
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets {
            counts: [0; LATENCY_BUCKETS],
        }
    }
}

fn index_of(us: u64) -> usize {
    let v = us.min(VALUE_US_MAX);
    if v < SUB_BUCKETS as u64 {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros() as usize; // floor(log2 v), >= 2
    let sub = ((v >> (octave - 2)) & 3) as usize;
    (SUB_BUCKETS * (octave - 1) + sub).min(LATENCY_BUCKETS - 1)
}

/// The middle of bucket `i`, in microseconds (what a percentile in it reports).
fn midpoint_us(i: usize) -> f64 {
    if i < SUB_BUCKETS {
        return i as f64;
    }
    let octave = i / SUB_BUCKETS + 1;
    let sub = (i % SUB_BUCKETS) as u64;
    let width = 1u64 << (octave - 2);
    let low = (SUB_BUCKETS as u64 + sub) * width;
    low as f64 + width as f64 / 2.0
}

impl LatencyBuckets {
    /// Counts one latency of `ns` nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        let c = &mut self.counts[index_of(ns / 1000)];
        *c = c.saturating_add(1);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    /// Adds `other` in. A bucket that would pass half of `u32::MAX` first halves every
    /// bucket: the shape (and so every percentile) stays, old requests weigh less.
    pub fn merge(&mut self, other: &LatencyBuckets) {
        let near_full = self
            .counts
            .iter()
            .zip(other.counts.iter())
            .any(|(a, b)| u64::from(*a) + u64::from(*b) > u64::from(u32::MAX / 2));
        if near_full {
            for c in self.counts.iter_mut() {
                *c /= 2;
            }
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// The latency at quantile `q` (0..=1) in microseconds; 0 when nothing was recorded.
    pub fn quantile_us(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return midpoint_us(i);
            }
        }
        midpoint_us(LATENCY_BUCKETS - 1)
    }
}

/// Bytes per second over the last `window`: `update` closes a window once it is at least
/// that long; `rate` gives the last closed window's rate, or, when no bytes came for longer
/// than a window, the (decaying) rate since the last window closed.
#[derive(Debug, Clone, Copy)]
pub struct RateMeter {
    window: Duration,
    window_at: Instant,
    window_bytes: u64,
    rate_bytes_per_sec: f64,
}

impl RateMeter {
    pub fn new(now: Instant, window: Duration) -> RateMeter {
        RateMeter {
            window,
            window_at: now,
            window_bytes: 0,
            rate_bytes_per_sec: 0.0,
        }
    }

    /// `total_bytes` (cumulative) were sent by `now`.
    pub fn update(&mut self, total_bytes: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_at);
        if elapsed >= self.window {
            let bytes = total_bytes.saturating_sub(self.window_bytes);
            self.rate_bytes_per_sec = bytes as f64 / elapsed.as_secs_f64();
            self.window_at = now;
            self.window_bytes = total_bytes;
        }
    }

    /// The recent rate in bytes per second, `total_bytes` being the cumulative count now.
    pub fn rate(&self, total_bytes: u64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.window_at);
        if elapsed > self.window * 2 {
            let bytes = total_bytes.saturating_sub(self.window_bytes);
            return bytes as f64 / elapsed.as_secs_f64();
        }
        self.rate_bytes_per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_percentiles_close() {
        // Every microsecond value maps to a bucket whose midpoint is within 25% of it, buckets
        // never go backwards, and percentiles of a known mix land in the right bucket.
        let mut last = 0;
        for us in 1..200_000u64 {
            let i = index_of(us);
            assert!(i >= last, "{us} went back to bucket {i}");
            last = i;
            let mid = midpoint_us(i);
            if us >= 4 {
                assert!((mid - us as f64).abs() / us as f64 <= 0.25, "{us}: {mid}");
            }
        }
        assert_eq!(index_of(u64::MAX), LATENCY_BUCKETS - 1);
        let mut b = LatencyBuckets::default();
        for _ in 0..98 {
            b.record_ns(200_000);
        }
        b.record_ns(20_000_000);
        b.record_ns(20_000_000);
        let p50 = b.quantile_us(0.5);
        let p99 = b.quantile_us(0.99);
        assert!((p50 - 200.0).abs() < 30.0, "{p50}");
        assert!((p99 - 20_000.0).abs() < 3_000.0, "{p99}");
        assert_eq!(LatencyBuckets::default().quantile_us(0.5), 0.0);
    }

    #[test]
    fn merge_adds_and_halves_before_saturating() {
        // Merging sums counts; near u32::MAX every bucket halves, keeping the percentiles.
        let mut a = LatencyBuckets::default();
        let mut b = LatencyBuckets::default();
        a.record_ns(100_000);
        b.record_ns(5_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        let mut big = LatencyBuckets::default();
        big.counts[10] = u32::MAX / 2;
        big.counts[50] = u32::MAX / 4;
        let before = big.quantile_us(0.9);
        let copy = big;
        big.merge(&copy);
        assert_eq!(big.quantile_us(0.9), before);
        assert!(big.counts[10] < u32::MAX);
    }

    #[test]
    fn rate_follows_bytes_and_decays_when_they_stop() {
        // 1 MB per window reads as 1 MB/s; with no bytes for many windows it falls toward 0.
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut m = RateMeter::new(t0, w);
        m.update(1_000_000, t0 + w);
        assert!((m.rate(1_000_000, t0 + w) - 1e6).abs() < 1.0);
        m.update(2_000_000, t0 + 2 * w);
        assert!((m.rate(2_000_000, t0 + 2 * w) - 1e6).abs() < 1.0);
        assert!(m.rate(2_000_000, t0 + 20 * w) < 1.0);
    }
}
