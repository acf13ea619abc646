//! Per-shard counters and latency histograms, and their merge on the control thread.
//!
//! Owns: what a shard records on its data path (plain integers and hdrhistograms owned by
//! the shard: no locks, no atomics) and the snapshot type shipped to the control thread.
//! Must never: block a shard: snapshots go through a bounded channel with `try_send`; a full
//! channel drops the snapshot and counts it.
//!
//! Per-torrent counters are deltas, not tables: the shard keeps one small entry per torrent
//! touched since its last *shipped* snapshot (`pending_torrents`: upload increment, and the
//! shard's current peer count when it changed). `snapshot()` drains it into the snapshot's
//! `torrents`; when `try_send` fails the shard gives the drained deltas back with
//! `restore_torrents`, so a dropped snapshot loses no bytes. The map is drained, never freed,
//! so after warm-up the data path does not allocate for it; it holds at most one entry per
//! torrent of the catalog (in practice: per torrent active on the shard in one interval).
//! The control thread (`view::StatsView`) sums the deltas; exposition shows the top N only.
//!
//! Submodules: `view` (the control thread's merged view), `prometheus` and `json` (renderers).

pub mod catalog_health;
pub mod dht;
pub mod http;
pub mod json;
pub mod prometheus;
pub mod torrent;
pub mod view;

use crate::metainfo::InfoHash;
pub use crate::wire::mse::MseError;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::Instant;
use torrent::LatencyBuckets;

/// Highest latency the histograms track; anything above is clamped (and shows as max).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Why a peer was closed. Each is a counter (`squall_peers_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    PeerClosed,
    SocketError,
    BadHandshake,
    UnknownInfoHash,
    HandshakeTimeout,
    IdleTimeout,
    SendStalled,
    MessageTooLong,
    MalformedMessage,
    InvalidRequest,
    ProtocolViolation,
    DiskError,
    PeersLimit,
    PeersPerIpLimit,
    PeersPerPrefixLimit,
    PeersPerTorrentLimit,
    SendBacklog,
    RecvMemoryLimit,
    ConnectFailed,
    SelfConnection,
    TorrentRemoved,
    Shutdown,
    /// An MSE/PE handshake failed (its reason: `encryption_failures`), or plaintext was
    /// refused under `encryption = "require"`.
    EncryptionFailed,
}

impl CloseReason {
    pub const ALL: [CloseReason; 23] = [
        CloseReason::PeerClosed,
        CloseReason::SocketError,
        CloseReason::BadHandshake,
        CloseReason::UnknownInfoHash,
        CloseReason::HandshakeTimeout,
        CloseReason::IdleTimeout,
        CloseReason::SendStalled,
        CloseReason::MessageTooLong,
        CloseReason::MalformedMessage,
        CloseReason::InvalidRequest,
        CloseReason::ProtocolViolation,
        CloseReason::DiskError,
        CloseReason::PeersLimit,
        CloseReason::PeersPerIpLimit,
        CloseReason::PeersPerPrefixLimit,
        CloseReason::PeersPerTorrentLimit,
        CloseReason::SendBacklog,
        CloseReason::RecvMemoryLimit,
        CloseReason::ConnectFailed,
        CloseReason::SelfConnection,
        CloseReason::TorrentRemoved,
        CloseReason::Shutdown,
        CloseReason::EncryptionFailed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::SocketError => "socket_error",
            CloseReason::BadHandshake => "bad_handshake",
            CloseReason::UnknownInfoHash => "unknown_info_hash",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SendStalled => "send_stalled",
            CloseReason::MessageTooLong => "message_too_long",
            CloseReason::MalformedMessage => "malformed_message",
            CloseReason::InvalidRequest => "invalid_request",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::DiskError => "disk_error",
            CloseReason::PeersLimit => "peers_limit",
            CloseReason::PeersPerIpLimit => "peers_per_ip_limit",
            CloseReason::PeersPerPrefixLimit => "peers_per_prefix_limit",
            CloseReason::PeersPerTorrentLimit => "peers_per_torrent_limit",
            CloseReason::SendBacklog => "send_backlog",
            CloseReason::RecvMemoryLimit => "recv_memory_limit",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::SelfConnection => "self_connection",
            CloseReason::TorrentRemoved => "torrent_removed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::EncryptionFailed => "encryption_failed",
        }
    }
    fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// Why a request was not served (`squall_requests_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Choked,
    QueueFull,
    Invalid,
    Cancelled,
    NotHave,
    /// The torrent is errored (a content file failed; see `control::health`).
    TorrentErrored,
    /// The block spans more files than one io_uring chain may read
    /// (`batch_chain_entries_max`).
    Unservable,
    /// The torrent was removed (or paused): its peers drain, taking no new requests.
    TorrentRemoved,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Choked,
        RejectReason::QueueFull,
        RejectReason::Invalid,
        RejectReason::Cancelled,
        RejectReason::NotHave,
        RejectReason::TorrentErrored,
        RejectReason::Unservable,
        RejectReason::TorrentRemoved,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Choked => "choked",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Invalid => "invalid",
            RejectReason::Cancelled => "cancelled",
            RejectReason::NotHave => "not_have",
            RejectReason::TorrentErrored => "torrent_errored",
            RejectReason::Unservable => "unservable",
            RejectReason::TorrentRemoved => "torrent_removed",
        }
    }
    fn index(self) -> usize {
        RejectReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// Everything one shard counts. Cloned once per second into a snapshot.
#[derive(Debug, Clone)]
pub struct ShardStats {
    pub shard: usize,
    pub uploaded_bytes: u64,
    pub blocks_served: u64,
    pub peers_accepted: u64,
    pub peers_connected: u64,
    pub peers_closed: [u64; CloseReason::ALL.len()],
    pub requests_rejected: [u64; RejectReason::ALL.len()],
    pub accept_errors: u64,
    /// io_uring_enter failures retried as transient (EAGAIN, ENOMEM), and pushes that
    /// failed (their ops completed as cancelled, their peers' state undone).
    pub ring_enter_errors: u64,
    pub ring_push_failures: u64,
    pub peers_dialed: u64,
    pub buffer_pool_exhausted: u64,
    /// Times a peer waited because its source held `send_slots_per_ip_max` send slots.
    pub send_slots_per_ip_limited: u64,
    /// Times a peer waited because its network held `send_slots_per_prefix_max` slots.
    pub send_slots_per_prefix_limited: u64,
    pub open_files_limit_hit: u64,
    pub zc_sends_copied: u64,
    pub zc_sends_zerocopy: u64,
    pub zc_connections_switched_to_copy: u64,
    pub disk_errors: u64,
    /// Hot-block cache: blocks sent from the cache with no read.
    pub block_cache_hits: u64,
    /// Cacheable blocks not in the cache (read from disk, into the cache when it had room).
    pub block_cache_misses: u64,
    /// Blocks served uncached because another batch was reading them into the cache.
    pub block_cache_busy: u64,
    /// Blocks served uncached because every cache entry was named by an in-flight send.
    pub block_cache_full: u64,
    pub block_cache_evictions: u64,
    /// Bytes of the cache holding blocks now (gauge).
    pub block_cache_bytes_used: u64,
    /// `direct_io`: block reads (file extents) done with O_DIRECT into the cache.
    pub direct_reads: u64,
    /// `direct_io`: block reads done through the page cache instead (unaligned extents, file
    /// tails, blocks the cache could not take, files without O_DIRECT).
    pub direct_read_fallbacks: u64,
    /// `direct_io`: content files whose O_DIRECT open failed (read buffered).
    pub direct_open_failures: u64,
    /// `piece_readahead`: readahead hints (fadvise WILLNEED) issued.
    pub readaheads: u64,
    /// `page_cache_sends`: blocks sent straight from a file mapping (resident pages).
    pub page_cache_sends: u64,
    /// `page_cache_sends`: content files that could not be mapped (read instead).
    pub map_failures: u64,
    /// `page_cache_sends`: sends that faulted on a mapping (-EFAULT: the file shrank under
    /// it); the peer is closed as on a disk error.
    pub page_cache_send_faults: u64,
    /// `page_cache_sends`: files read instead of mapped because files in use held
    /// `page_cache_map_bytes_max`.
    pub maps_over_budget: u64,
    /// `page_cache_sends`: total length of the content files mapped now (gauge).
    pub mapped_bytes: u64,
    /// Receive-buffer bytes the shard's peers hold beyond the first 4 KiB of each (gauge;
    /// at most `recv_buffer_bytes_per_shard_max`).
    pub recv_buffer_bytes: u64,
    /// `multishot_recv`: multishot recvs the kernel ended because the shard's receive
    /// buffer ring was empty (re-armed at once).
    pub recv_buffers_exhausted: u64,
    pub metadata_pieces_served: u64,
    /// MSE/PE: connections that finished the handshake with RC4 selected.
    pub encrypted_connections: u64,
    /// MSE/PE: bytes encrypted (sent) and decrypted (received) with RC4.
    pub encrypted_bytes: u64,
    /// MSE/PE: handshakes that failed, by reason (`MseError::ALL` order).
    pub encryption_failures: [u64; MseError::ALL.len()],
    /// MSE/PE under `prefer`: dial-outs redialed in plaintext after the peer ended our MSE
    /// handshake.
    pub encryption_plaintext_redials: u64,
    /// Extras loads (BEP 9 info, BEP 52 trees) refused or timed out: the waiting peers got
    /// rejects.
    pub extras_loads_refused: u64,
    pub stats_snapshots_dropped: u64,
    /// Content-fault reports to the control plane dropped on a full channel (retried).
    pub health_reports_dropped: u64,
    pub accepting: bool,
    /// The shard's buffer pool is registered with io_uring (ReadFixed); false after the
    /// fallback to plain Read/Send (RLIMIT_MEMLOCK too small).
    pub fixed_buffers: bool,
    /// Content files are read through the ring's fixed-file table (`fixed_files`); false
    /// when the knob is off, in splice mode, or after the kernel refused the table.
    pub fixed_files: bool,
    /// The ring's fd is registered (`register_ring_fd`); false when off or refused.
    pub registered_ring_fd: bool,
    /// The shard reads content with O_DIRECT into its cache (`direct_io`).
    pub direct_io: bool,
    /// The shard sends resident blocks from file mappings (`page_cache_sends`).
    pub page_cache_sends_on: bool,
    /// The shard receives with multishot recvs from a provided-buffer ring.
    pub multishot_recv: bool,
    /// request parsed -> its block handed to the kernel (send completion), nanoseconds.
    pub request_latency_ns: Histogram<u64>,
    /// read submitted -> read completed, nanoseconds.
    pub disk_read_latency_ns: Histogram<u64>,
    /// connection accepted -> handshake answered, nanoseconds.
    pub handshake_latency_ns: Histogram<u64>,
    /// zerocopy mode: request parsed -> the send's zero-copy notification (the kernel no
    /// longer needs the buffer), nanoseconds.
    pub zc_notification_latency_ns: Histogram<u64>,
    /// The HTTP front-end's counters (`stats::http`).
    pub http: http::HttpStats,
    /// Per-torrent deltas since the previous shipped snapshot; filled only in snapshots.
    pub torrents: Vec<TorrentDelta>,
    /// The shard's accumulating per-torrent deltas (never part of a snapshot).
    pending_torrents: HashMap<InfoHash, TorrentDelta>,
}

/// What one torrent did on one shard since the previous shipped snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorrentDelta {
    pub info_hash: InfoHash,
    /// Payload bytes of piece messages sent since the previous shipped snapshot (increment).
    pub uploaded_bytes: u64,
    /// Peers of this torrent on this shard now, when it changed (absolute, not increment).
    pub peers: Option<u32>,
    /// Request latencies of this torrent's blocks sent since the previous shipped snapshot
    /// (increments; `torrent::LATENCY_BUCKETS_BYTES` per entry, inline: no allocation).
    pub latency: LatencyBuckets,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Bounds are constants, so construction cannot fail; fall back to auto-resizing if it did.
    Histogram::new_with_bounds(1_000, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|_| Histogram::new(SIGNIFICANT_DIGITS).unwrap_or_else(|_| unreachable!()))
}

impl ShardStats {
    pub fn new(shard: usize) -> ShardStats {
        ShardStats {
            shard,
            uploaded_bytes: 0,
            blocks_served: 0,
            peers_accepted: 0,
            peers_connected: 0,
            peers_closed: [0; CloseReason::ALL.len()],
            requests_rejected: [0; RejectReason::ALL.len()],
            accept_errors: 0,
            ring_enter_errors: 0,
            ring_push_failures: 0,
            peers_dialed: 0,
            buffer_pool_exhausted: 0,
            send_slots_per_ip_limited: 0,
            send_slots_per_prefix_limited: 0,
            open_files_limit_hit: 0,
            zc_sends_copied: 0,
            zc_sends_zerocopy: 0,
            zc_connections_switched_to_copy: 0,
            disk_errors: 0,
            block_cache_hits: 0,
            block_cache_misses: 0,
            block_cache_busy: 0,
            block_cache_full: 0,
            block_cache_evictions: 0,
            block_cache_bytes_used: 0,
            direct_reads: 0,
            direct_read_fallbacks: 0,
            direct_open_failures: 0,
            readaheads: 0,
            page_cache_sends: 0,
            map_failures: 0,
            page_cache_send_faults: 0,
            maps_over_budget: 0,
            mapped_bytes: 0,
            recv_buffer_bytes: 0,
            recv_buffers_exhausted: 0,
            metadata_pieces_served: 0,
            encrypted_connections: 0,
            encryption_plaintext_redials: 0,
            encrypted_bytes: 0,
            encryption_failures: [0; MseError::ALL.len()],
            extras_loads_refused: 0,
            stats_snapshots_dropped: 0,
            health_reports_dropped: 0,
            accepting: false,
            fixed_buffers: false,
            fixed_files: false,
            registered_ring_fd: false,
            direct_io: false,
            page_cache_sends_on: false,
            multishot_recv: false,
            request_latency_ns: new_histogram(),
            disk_read_latency_ns: new_histogram(),
            handshake_latency_ns: new_histogram(),
            zc_notification_latency_ns: new_histogram(),
            http: http::HttpStats::default(),
            torrents: Vec::new(),
            pending_torrents: HashMap::new(),
        }
    }

    /// Shard: a batch of `bytes` payload bytes of `info_hash` was handed to the kernel.
    pub fn torrent_uploaded(&mut self, info_hash: InfoHash, bytes: u64) {
        self.pending_torrent(info_hash).uploaded_bytes += bytes;
    }

    /// Shard: a batch of `info_hash` went out at `now`: its bytes, and with `requested_at`
    /// (histograms on) the latency of each of its blocks. One map lookup per batch.
    pub fn torrent_batch_sent(
        &mut self,
        info_hash: InfoHash,
        bytes: u64,
        requested_at: Option<&[Instant]>,
        now: Instant,
    ) {
        let entry = self.pending_torrent(info_hash);
        entry.uploaded_bytes += bytes;
        for t in requested_at.unwrap_or(&[]) {
            let ns = now.saturating_duration_since(*t).as_nanos();
            entry
                .latency
                .record_ns(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }

    /// Shard: the number of peers of `info_hash` on this shard is now `peers`.
    pub fn torrent_peers(&mut self, info_hash: InfoHash, peers: usize) {
        self.pending_torrent(info_hash).peers = Some(u32::try_from(peers).unwrap_or(u32::MAX));
    }

    fn pending_torrent(&mut self, info_hash: InfoHash) -> &mut TorrentDelta {
        self.pending_torrents
            .entry(info_hash)
            .or_insert(TorrentDelta {
                info_hash,
                uploaded_bytes: 0,
                peers: None,
                latency: LatencyBuckets::default(),
            })
    }

    /// Shard: a copy to ship, carrying (and clearing) the pending per-torrent deltas.
    pub fn snapshot(&mut self) -> ShardStats {
        let pending = std::mem::take(&mut self.pending_torrents);
        let mut snap = self.clone();
        self.pending_torrents = pending;
        snap.torrents = self.pending_torrents.drain().map(|(_, d)| d).collect();
        snap
    }

    /// Shard: a snapshot could not be shipped; keep its deltas for the next one.
    /// Sends a snapshot to the control plane without waiting; when the queue is full (or
    /// gone) the per-torrent deltas are kept for the next one and the drop is counted.
    pub fn publish(&mut self, tx: &crossbeam_channel::Sender<ShardStats>) {
        use crossbeam_channel::TrySendError;
        match tx.try_send(self.snapshot()) {
            Ok(()) => {}
            Err(TrySendError::Full(snap)) | Err(TrySendError::Disconnected(snap)) => {
                self.restore_torrents(snap);
                self.stats_snapshots_dropped += 1;
            }
        }
    }

    pub fn restore_torrents(&mut self, snap: ShardStats) {
        for d in snap.torrents {
            let entry = self.pending_torrent(d.info_hash);
            entry.uploaded_bytes += d.uploaded_bytes;
            entry.latency.merge(&d.latency);
            // A newer peer count recorded since the snapshot wins over the shipped one.
            if entry.peers.is_none() {
                entry.peers = d.peers;
            }
        }
    }

    pub fn closed(&mut self, reason: CloseReason) {
        self.peers_closed[reason.index()] += 1;
    }
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.peers_closed[reason.index()]
    }
    pub fn rejected(&mut self, reason: RejectReason) {
        self.requests_rejected[reason.index()] += 1;
    }
    pub fn rejected_count(&self, reason: RejectReason) -> u64 {
        self.requests_rejected[reason.index()]
    }

    pub fn record_latency(h: &mut Histogram<u64>, ns: u64) {
        // saturating_record clamps out-of-range values instead of failing.
        h.saturating_record(ns.clamp(1_000, LATENCY_NS_MAX));
    }

    /// Adds another shard's snapshot into this one (control thread).
    pub fn merge(&mut self, other: &ShardStats) {
        self.uploaded_bytes += other.uploaded_bytes;
        self.blocks_served += other.blocks_served;
        self.peers_accepted += other.peers_accepted;
        self.peers_connected += other.peers_connected;
        for (a, b) in self.peers_closed.iter_mut().zip(other.peers_closed.iter()) {
            *a += b;
        }
        for (a, b) in self
            .requests_rejected
            .iter_mut()
            .zip(other.requests_rejected.iter())
        {
            *a += b;
        }
        self.accept_errors += other.accept_errors;
        self.ring_enter_errors += other.ring_enter_errors;
        self.ring_push_failures += other.ring_push_failures;
        self.peers_dialed += other.peers_dialed;
        self.buffer_pool_exhausted += other.buffer_pool_exhausted;
        self.send_slots_per_ip_limited += other.send_slots_per_ip_limited;
        self.send_slots_per_prefix_limited += other.send_slots_per_prefix_limited;
        self.open_files_limit_hit += other.open_files_limit_hit;
        self.zc_sends_copied += other.zc_sends_copied;
        self.zc_sends_zerocopy += other.zc_sends_zerocopy;
        self.zc_connections_switched_to_copy += other.zc_connections_switched_to_copy;
        self.disk_errors += other.disk_errors;
        self.block_cache_hits += other.block_cache_hits;
        self.block_cache_misses += other.block_cache_misses;
        self.block_cache_busy += other.block_cache_busy;
        self.block_cache_full += other.block_cache_full;
        self.block_cache_evictions += other.block_cache_evictions;
        self.block_cache_bytes_used += other.block_cache_bytes_used;
        self.direct_reads += other.direct_reads;
        self.direct_read_fallbacks += other.direct_read_fallbacks;
        self.direct_open_failures += other.direct_open_failures;
        self.readaheads += other.readaheads;
        self.page_cache_sends += other.page_cache_sends;
        self.map_failures += other.map_failures;
        self.page_cache_send_faults += other.page_cache_send_faults;
        self.maps_over_budget += other.maps_over_budget;
        self.mapped_bytes += other.mapped_bytes;
        self.recv_buffer_bytes += other.recv_buffer_bytes;
        self.recv_buffers_exhausted += other.recv_buffers_exhausted;
        self.metadata_pieces_served += other.metadata_pieces_served;
        self.encrypted_connections += other.encrypted_connections;
        self.encryption_plaintext_redials += other.encryption_plaintext_redials;
        self.encrypted_bytes += other.encrypted_bytes;
        for (a, b) in self
            .encryption_failures
            .iter_mut()
            .zip(other.encryption_failures.iter())
        {
            *a += b;
        }
        self.extras_loads_refused += other.extras_loads_refused;
        self.stats_snapshots_dropped += other.stats_snapshots_dropped;
        self.health_reports_dropped += other.health_reports_dropped;
        self.accepting &= other.accepting;
        self.fixed_buffers &= other.fixed_buffers;
        self.fixed_files &= other.fixed_files;
        self.registered_ring_fd &= other.registered_ring_fd;
        self.direct_io &= other.direct_io;
        self.page_cache_sends_on &= other.page_cache_sends_on;
        self.multishot_recv &= other.multishot_recv;
        let _ = self.request_latency_ns.add(&other.request_latency_ns);
        self.http.merge(&other.http);
        let _ = self.disk_read_latency_ns.add(&other.disk_read_latency_ns);
        let _ = self.handshake_latency_ns.add(&other.handshake_latency_ns);
        let _ = self
            .zc_notification_latency_ns
            .add(&other.zc_notification_latency_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_snapshot_keeps_torrent_deltas() {
        // A snapshot dropped on a full channel must not lose per-torrent bytes, and a shipped
        // one must clear them so the next snapshot carries increments only.
        let h = InfoHash([7; 20]);
        let mut s = ShardStats::new(0);
        s.torrent_uploaded(h, 100);
        s.torrent_peers(h, 2);
        let snap = s.snapshot();
        assert_eq!(snap.torrents.len(), 1);
        s.restore_torrents(snap);
        s.torrent_uploaded(h, 50);
        let snap = s.snapshot();
        assert_eq!(snap.torrents[0].uploaded_bytes, 150);
        assert_eq!(snap.torrents[0].peers, Some(2));
        assert!(s.snapshot().torrents.is_empty());
    }

    #[test]
    fn merge_adds_counters_and_histograms() {
        // The control thread's view is the sum of every shard's snapshot.
        let mut a = ShardStats::new(0);
        let mut b = ShardStats::new(1);
        a.uploaded_bytes = 10;
        b.uploaded_bytes = 5;
        a.closed(CloseReason::IdleTimeout);
        b.closed(CloseReason::IdleTimeout);
        ShardStats::record_latency(&mut a.request_latency_ns, 50_000);
        ShardStats::record_latency(&mut b.request_latency_ns, 70_000);
        a.accepting = true;
        b.accepting = true;
        a.merge(&b);
        assert_eq!(a.uploaded_bytes, 15);
        assert_eq!(a.closed_count(CloseReason::IdleTimeout), 2);
        assert_eq!(a.request_latency_ns.len(), 2);
        assert!(a.accepting);
    }
}
