//! The `[tracker]` table: every bound of the tracker announcer, with documented defaults.
//!
//! Owns: `TrackerConfig` and its validation (re-exported as `config::TrackerConfig`).
//! Must never: let a value through that makes a hot loop or an unbounded table.

use serde::{Deserialize, Serialize};

/// Tracker announces (the `[tracker]` table): control plane only, never on a shard.
/// See docs/architecture.md, section Trackers, for what each bound protects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Announce at all. Default true.
    pub enabled: bool,
    /// Trackers announced to for every non-private torrent (BEP 27: private torrents use only
    /// their own). They form one more announce list per torrent (each URL a tier, BEP 12),
    /// announced independently of the torrent's own list. Default [].
    pub extra: Vec<String>,
    /// Announces in flight at once, all trackers together (= announce worker threads).
    /// Default 16.
    pub announce_concurrency_max: usize,
    /// Announces in flight at once to one tracker (one announce URL). Default 4.
    pub announce_per_tracker_max: usize,
    /// First announces are spread over `torrents / startup_announces_per_sec` seconds (with
    /// random jitter), so 100,000 torrents do not announce in the same second. Default 100.
    pub startup_announces_per_sec: u32,
    /// ... but never over more than this. Default 1800.
    pub startup_spread_secs_max: u64,
    /// Re-announce interval used when a tracker gives none. Default 1800.
    pub interval_secs_default: u64,
    /// Floor on any re-announce interval (whatever the tracker says). Default 60.
    pub interval_secs_min: u64,
    /// Ceiling on any re-announce interval. Default 7200.
    pub interval_secs_max: u64,
    /// Random jitter added to each re-announce, in percent of the interval. Default 10.
    pub interval_jitter_percent: u32,
    /// First retry delay after a failure (a tracker that cannot be reached, or a torrent the
    /// tracker refused); doubles per consecutive failure. Default 30.
    pub backoff_secs_min: u64,
    /// Cap on that delay. Default 3600.
    pub backoff_secs_max: u64,
    /// Whole HTTP(S) request timeout. Default 15.
    pub http_timeout_secs: u64,
    /// Largest HTTP response body read. Default 1 MiB.
    pub http_response_bytes_max: usize,
    /// BEP 15 retransmission: wait `udp_timeout_ms * 2^n` for try n. Default 15000.
    pub udp_timeout_ms: u64,
    /// BEP 15 retries after the first try (BEP 15 allows 8; 2 bounds one announce to
    /// 15 + 30 + 60 s). Default 2.
    pub udp_retries_max: u32,
    /// Peers asked for per announce. Default 50.
    pub numwant: u32,
    /// Seconds to wait at shutdown for `event=stopped` announces. Default 5.
    pub stop_timeout_secs: u64,
    /// Dial peers that trackers return (seeds connecting to leechers). Default true.
    pub dial_peers: bool,
    /// Distinct peers dialed per torrent within `redial_after_secs`. Default 50.
    pub outbound_per_torrent_max: usize,
    /// Outbound connection attempts per second, all torrents together. Default 50.
    pub connect_rate_per_sec: u32,
    /// The same (torrent, peer) is not dialed again before this. Default 300.
    pub redial_after_secs: u64,
    /// Recently dialed (torrent, peer) pairs remembered; dials beyond it are skipped.
    /// Default 65536.
    pub dial_recent_max: usize,
    /// Peers waiting for a connect token; more are dropped (the next announce brings them
    /// again). Default 4096.
    pub dial_queue_max: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            enabled: true,
            extra: Vec::new(),
            announce_concurrency_max: 16,
            announce_per_tracker_max: 4,
            startup_announces_per_sec: 100,
            startup_spread_secs_max: 1800,
            interval_secs_default: 1800,
            interval_secs_min: 60,
            interval_secs_max: 7200,
            interval_jitter_percent: 10,
            backoff_secs_min: 30,
            backoff_secs_max: 3600,
            http_timeout_secs: 15,
            http_response_bytes_max: 1 << 20,
            udp_timeout_ms: 15_000,
            udp_retries_max: 2,
            numwant: 50,
            stop_timeout_secs: 5,
            dial_peers: true,
            outbound_per_torrent_max: 50,
            connect_rate_per_sec: 50,
            redial_after_secs: 300,
            dial_recent_max: 65_536,
            dial_queue_max: 4_096,
        }
    }
}

impl TrackerConfig {
    /// Refuses values that would make a hot loop or an unbounded table; names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            (
                "announce_concurrency_max",
                self.announce_concurrency_max as u64,
            ),
            (
                "announce_per_tracker_max",
                self.announce_per_tracker_max as u64,
            ),
            (
                "startup_announces_per_sec",
                self.startup_announces_per_sec as u64,
            ),
            ("interval_secs_default", self.interval_secs_default),
            ("interval_secs_min", self.interval_secs_min),
            ("backoff_secs_min", self.backoff_secs_min),
            ("http_timeout_secs", self.http_timeout_secs),
            (
                "http_response_bytes_max",
                self.http_response_bytes_max as u64,
            ),
            ("udp_timeout_ms", self.udp_timeout_ms),
            ("connect_rate_per_sec", self.connect_rate_per_sec as u64),
            ("dial_recent_max", self.dial_recent_max as u64),
            ("dial_queue_max", self.dial_queue_max as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("[tracker] {name} = 0: must be at least 1"));
            }
        }
        if self.announce_concurrency_max > 1024 {
            return Err(format!(
                "[tracker] announce_concurrency_max = {}: at most 1024 (one thread each)",
                self.announce_concurrency_max
            ));
        }
        if self.interval_secs_max < self.interval_secs_min {
            return Err(format!(
                "[tracker] interval_secs_max = {} is below interval_secs_min = {}",
                self.interval_secs_max, self.interval_secs_min
            ));
        }
        if self.backoff_secs_max < self.backoff_secs_min {
            return Err(format!(
                "[tracker] backoff_secs_max = {} is below backoff_secs_min = {}",
                self.backoff_secs_max, self.backoff_secs_min
            ));
        }
        if self.udp_retries_max > 8 {
            return Err(format!(
                "[tracker] udp_retries_max = {}: at most 8 (BEP 15)",
                self.udp_retries_max
            ));
        }
        if self.interval_jitter_percent > 100 {
            return Err(format!(
                "[tracker] interval_jitter_percent = {}: at most 100",
                self.interval_jitter_percent
            ));
        }
        for url in &self.extra {
            if !(url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("udp://"))
            {
                return Err(format!(
                    "[tracker] extra: {url:?} is not an http://, https:// or udp:// URL"
                ));
            }
        }
        Ok(())
    }
}
