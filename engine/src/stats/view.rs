//! The control thread's merged view of every shard's stats.
//!
//! Owns: the latest snapshot per shard, per-shard upload rates, and the per-torrent totals
//! summed from the shards' deltas. Must never: run on a shard or be shared with one: the
//! seed control loop feeds it from the stats channel; readers (admin endpoint, summary line)
//! take it behind the control plane's own lock.
//!
//! Cardinality: `torrents` holds one entry per torrent that ever had a peer or uploaded a
//! byte, so at most the catalog size (about 500 bytes each: 400 of latency buckets, a rate
//! meter, the per-shard peer counts); exposition shows only the top `top_torrents` by
//! uploaded bytes.

use super::catalog_health::{CatalogHealth, Health};
use super::torrent::{LatencyBuckets, RateMeter};
use super::{ShardStats, TorrentDelta};
use crate::metainfo::InfoHash;
use crate::plane::ErroredRow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A torrent's upload rate is measured over windows of at least this long (its deltas
/// arrive once a second per shard).
pub const TORRENT_RATE_WINDOW_MS: u64 = 3000;

/// One torrent, summed over the shards.
#[derive(Debug, Clone)]
pub struct TorrentTotals {
    pub uploaded_bytes: u64,
    /// Current peers per shard (index = shard); the torrent's peers are the sum.
    pub peers_by_shard: Vec<u32>,
    /// Request latencies of its blocks since start (all shards).
    pub latency: LatencyBuckets,
    pub upload_rate: RateMeter,
}

impl TorrentTotals {
    fn new(now: Instant) -> TorrentTotals {
        TorrentTotals {
            uploaded_bytes: 0,
            peers_by_shard: Vec::new(),
            latency: LatencyBuckets::default(),
            upload_rate: RateMeter::new(now, Duration::from_millis(TORRENT_RATE_WINDOW_MS)),
        }
    }

    pub fn peers(&self) -> u64 {
        self.peers_by_shard.iter().map(|p| u64::from(*p)).sum()
    }

    /// Recent upload rate, bytes per second.
    pub fn upload_bytes_per_sec(&self, now: Instant) -> f64 {
        self.upload_rate.rate(self.uploaded_bytes, now)
    }

    /// What the API and /stats show of it at `now`.
    pub fn figures(&self, now: Instant) -> TorrentFigures {
        TorrentFigures {
            uploaded_bytes: self.uploaded_bytes,
            peers: self.peers(),
            upload_bytes_per_sec: self.upload_bytes_per_sec(now),
            request_p50_us: self.latency.quantile_us(0.5),
            request_p99_us: self.latency.quantile_us(0.99),
        }
    }
}

/// One torrent's serving figures (0 for a torrent that never had traffic).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TorrentFigures {
    pub uploaded_bytes: u64,
    pub peers: u64,
    pub upload_bytes_per_sec: f64,
    /// Request latency percentiles since start, microseconds (log buckets: +-11%).
    pub request_p50_us: f64,
    pub request_p99_us: f64,
}

/// One row of the top-torrents table.
#[derive(Debug, Clone, PartialEq)]
pub struct TorrentRow {
    pub info_hash: InfoHash,
    pub name: String,
    pub uploaded_bytes: u64,
    pub peers: u64,
    pub upload_bytes_per_sec: f64,
    pub request_p50_us: f64,
    pub request_p99_us: f64,
}

/// The latest snapshot of a shard and the upload rate measured between its last two.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub stats: ShardStats,
    pub received_at: Instant,
    pub upload_bytes_per_sec: f64,
}

#[derive(Debug)]
pub struct StatsView {
    shard_count: usize,
    top_torrents: usize,
    names: HashMap<InfoHash, String>,
    shards: BTreeMap<usize, ShardView>,
    torrents: HashMap<InfoHash, TorrentTotals>,
    /// Errored torrents as the health monitor last saw them (at most the catalog size).
    errored: Vec<ErroredRow>,
    /// Torrents by state, skipped torrents, announce results (set by the control loop).
    catalog_health: CatalogHealth,
    /// The DHT node's numbers (process-level), when it was started.
    dht: Option<crate::dht::DhtStats>,
}

impl StatsView {
    /// `names` labels per-torrent series (from the catalog); unknown hashes show as "".
    pub fn new(
        shard_count: usize,
        top_torrents: usize,
        names: HashMap<InfoHash, String>,
    ) -> StatsView {
        StatsView {
            shard_count,
            top_torrents,
            names,
            shards: BTreeMap::new(),
            torrents: HashMap::new(),
            errored: Vec::new(),
            catalog_health: CatalogHealth::default(),
            dht: None,
        }
    }

    pub fn catalog_health(&self) -> &CatalogHealth {
        &self.catalog_health
    }

    /// The control loop's handle on the catalog's state, skipped torrents and announces.
    pub fn catalog_health_mut(&mut self) -> &mut CatalogHealth {
        &mut self.catalog_health
    }

    /// The /health verdict: shards first, then errored and skipped torrents.
    pub fn health(&self) -> Health {
        Health::judge(
            self.complete(),
            self.healthy(),
            &self.errored,
            &self.catalog_health.skipped,
        )
    }

    /// Payload bytes uploaded for one torrent since start (for tracker `uploaded=`).
    pub fn torrent_uploaded_bytes(&self, info_hash: &InfoHash) -> u64 {
        self.torrents
            .get(info_hash)
            .map(|t| t.uploaded_bytes)
            .unwrap_or(0)
    }

    /// One torrent's summed numbers, if it ever had a peer or uploaded a byte.
    pub fn torrent_totals(&self, info_hash: &InfoHash) -> Option<&TorrentTotals> {
        self.torrents.get(info_hash)
    }

    /// Names for torrents added by a catalog reload.
    pub fn add_names(&mut self, names: impl IntoIterator<Item = (InfoHash, String)>) {
        for (h, n) in names {
            self.names.entry(h).or_insert(n);
        }
    }

    /// Takes in one shard snapshot received at `now`.
    pub fn apply(&mut self, mut snap: ShardStats, now: Instant) {
        for d in snap.torrents.drain(..) {
            self.apply_torrent(snap.shard, d, now);
        }
        let rate = match self.shards.get(&snap.shard) {
            Some(prev) => {
                let secs = now.duration_since(prev.received_at).as_secs_f64();
                let bytes = snap
                    .uploaded_bytes
                    .saturating_sub(prev.stats.uploaded_bytes);
                if secs > 0.0 {
                    bytes as f64 / secs
                } else {
                    prev.upload_bytes_per_sec
                }
            }
            None => 0.0,
        };
        self.shards.insert(
            snap.shard,
            ShardView {
                stats: snap,
                received_at: now,
                upload_bytes_per_sec: rate,
            },
        );
    }

    fn apply_torrent(&mut self, shard: usize, d: TorrentDelta, now: Instant) {
        let t = self
            .torrents
            .entry(d.info_hash)
            .or_insert_with(|| TorrentTotals::new(now));
        t.uploaded_bytes += d.uploaded_bytes;
        t.upload_rate.update(t.uploaded_bytes, now);
        t.latency.merge(&d.latency);
        if let Some(p) = d.peers {
            if t.peers_by_shard.len() <= shard {
                t.peers_by_shard.resize(shard + 1, 0);
            }
            t.peers_by_shard[shard] = p;
        }
    }

    /// The health monitor's current errored torrents (replaces the previous list).
    pub fn set_errored(&mut self, rows: Vec<ErroredRow>) {
        self.errored = rows;
    }

    pub fn errored(&self) -> &[ErroredRow] {
        &self.errored
    }

    /// The DHT node's latest numbers (None: the DHT is off).
    pub fn set_dht(&mut self, dht: Option<crate::dht::DhtStats>) {
        self.dht = dht;
    }

    pub fn dht(&self) -> Option<&crate::dht::DhtStats> {
        self.dht.as_ref()
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// True once every shard has sent at least one snapshot.
    pub fn complete(&self) -> bool {
        self.shards.len() >= self.shard_count
    }

    /// Every shard's latest snapshot arrived at or after `t` (so it was taken after a command
    /// sent before `t - STATS_INTERVAL_MS` was applied: the control plane's drain check).
    pub fn all_reported_since(&self, t: Instant) -> bool {
        self.complete() && self.shards.values().all(|s| s.received_at >= t)
    }

    /// Every shard reported and says it is accepting.
    pub fn healthy(&self) -> bool {
        self.complete() && self.shards.values().all(|s| s.stats.accepting)
    }

    /// Latest snapshot per shard, by shard index.
    pub fn shards(&self) -> impl Iterator<Item = &ShardView> {
        self.shards.values()
    }

    /// Every shard's counters and histograms added up.
    pub fn total(&self) -> ShardStats {
        let mut total = ShardStats::new(0);
        total.accepting = true;
        // Feature flags merge with AND: the total says true only when every shard uses it.
        let any = !self.shards.is_empty();
        total.fixed_buffers = any;
        total.fixed_files = any;
        total.registered_ring_fd = any;
        total.direct_io = any;
        total.page_cache_sends_on = any;
        total.multishot_recv = any;
        for s in self.shards.values() {
            total.merge(&s.stats);
        }
        total.accepting = self.healthy();
        total
    }

    pub fn upload_bytes_per_sec(&self) -> f64 {
        self.shards.values().map(|s| s.upload_bytes_per_sec).sum()
    }

    /// The `top_torrents` torrents with the most uploaded bytes (ties: by info-hash).
    pub fn top_torrents(&self) -> Vec<TorrentRow> {
        let now = Instant::now();
        let mut rows: Vec<TorrentRow> = self
            .torrents
            .iter()
            .map(|(h, t)| {
                let f = t.figures(now);
                TorrentRow {
                    info_hash: *h,
                    name: self.names.get(h).cloned().unwrap_or_default(),
                    uploaded_bytes: f.uploaded_bytes,
                    peers: f.peers,
                    upload_bytes_per_sec: f.upload_bytes_per_sec,
                    request_p50_us: f.request_p50_us,
                    request_p99_us: f.request_p99_us,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.uploaded_bytes
                .cmp(&a.uploaded_bytes)
                .then(b.peers.cmp(&a.peers))
                .then(a.info_hash.cmp(&b.info_hash))
        });
        rows.truncate(self.top_torrents);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torrent_deltas_sum_across_shards_and_snapshots() {
        // Uploaded bytes are increments (summed); peers are per-shard absolutes (replaced).
        let h = InfoHash([1; 20]);
        let mut names = HashMap::new();
        names.insert(h, "one".to_string());
        let mut view = StatsView::new(2, 10, names);
        let now = Instant::now();
        for (shard, bytes, peers) in [(0, 100, 3), (1, 50, 1), (0, 25, 2)] {
            let mut s = ShardStats::new(shard);
            s.torrent_uploaded(h, bytes);
            s.torrent_peers(h, peers);
            view.apply(s.snapshot(), now);
        }
        let top = view.top_torrents();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].uploaded_bytes, 175);
        assert_eq!(top[0].peers, 3);
        assert_eq!(top[0].name, "one");
    }

    #[test]
    fn top_torrents_is_bounded() {
        // Only N torrents are exposed however many uploaded, and they are the largest.
        let mut view = StatsView::new(1, 3, HashMap::new());
        let mut s = ShardStats::new(0);
        for i in 0..10u8 {
            s.torrent_uploaded(InfoHash([i; 20]), u64::from(i) * 10);
        }
        view.apply(s.snapshot(), Instant::now());
        let top = view.top_torrents();
        assert_eq!(
            top.iter().map(|r| r.uploaded_bytes).collect::<Vec<_>>(),
            vec![90, 80, 70]
        );
    }

    #[test]
    fn health_needs_every_shard_accepting() {
        // /health is 200 only when every shard has reported and accepts connections.
        let mut view = StatsView::new(2, 0, HashMap::new());
        let mut a = ShardStats::new(0);
        a.accepting = true;
        view.apply(a.snapshot(), Instant::now());
        assert!(!view.healthy());
        let mut b = ShardStats::new(1);
        b.accepting = false;
        view.apply(b.snapshot(), Instant::now());
        assert!(!view.healthy());
        b.accepting = true;
        view.apply(b.snapshot(), Instant::now());
        assert!(view.healthy());
    }
}
