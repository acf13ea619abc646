//! The only words between the control plane and the shards.
//!
//! Owns: the messages that cross planes over bounded crossbeam channels: commands to a shard
//! (`ShardCommand`), a shard's fault reports (`HealthReport`) and the control plane's answer
//! (`ErroredSet`, the whole set, latest wins), and the rows /stats shows. Shards and stats
//! import this module and nothing of the control plane (`control` with its `health` and `admin`,
//! and `tracker`); the control plane imports this module and talks to shards only through it.
//! Must never: hold behaviour beyond small accessors, or anything a shard would have to lock.

use crate::catalog::{Catalog, CatalogTorrent};
use crate::metainfo::hash_tree::TorrentTrees;
use crate::metainfo::InfoHash;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Messages from the control thread to a shard.
pub enum ShardCommand {
    /// Stop accepting, close every peer, drain, exit.
    Shutdown,
    /// Use this catalog for new handshakes; existing peers keep their torrent, and those of
    /// torrents it lacks drain (`shard/drain.rs`).
    SwapCatalog(Arc<Catalog>),
    /// Dial a peer (from a tracker) and serve it like an inbound one.
    Connect {
        addr: SocketAddr,
        info_hash: InfoHash,
    },
    /// The control plane's errored torrents (the whole set; the latest wins).
    Health(Arc<ErroredSet>),
    /// A torrent's BEP 9 info dictionary and BEP 52 trees, read off the shard thread in
    /// answer to an `ExtrasRequest` of this shard.
    Extras(Arc<TorrentExtras>),
    /// The admin API asks for one page of a torrent's peers on this shard.
    Peers(PeersRequest),
}

/// Peers one shard puts in one answer at most: a page is bounded however many peers a
/// torrent has (the API pages with `?peers_offset=`).
pub const PEERS_PAGE_MAX: usize = 200;

/// A request for the peers of one torrent on one shard, answered with `try_send` on `reply`
/// (a bounded channel with room for the answer: the shard never waits).
#[derive(Debug)]
pub struct PeersRequest {
    pub info_hash: InfoHash,
    /// Peers of this torrent on the shard to skip (in the shard's peer-table order).
    pub offset: usize,
    /// Peers to return at most (capped at `PEERS_PAGE_MAX`).
    pub limit: usize,
    pub reply: crossbeam_channel::Sender<PeersPage>,
}

/// One shard's answer: how many peers the torrent has there, and the page asked for.
#[derive(Debug, Clone)]
pub struct PeersPage {
    pub shard: usize,
    pub total: usize,
    pub peers: Vec<PeerRow>,
}

/// One connected peer of a torrent, as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    pub addr: SocketAddr,
    /// BEP 10 `v` when the peer sent one, else what its peer id says ("unknown" if nothing).
    pub client: String,
    pub upload_bytes_per_sec: f64,
    pub uploaded_bytes: u64,
    /// Block requests queued, not yet sent.
    pub queued_requests: usize,
    /// Its torrent was removed: it takes no new requests and closes when its queue is sent.
    pub draining: bool,
}

/// Extras requests queued from all shards to the control plane's loader. A shard asks once
/// per torrent missing from its cache and keeps at most `EXTRAS_LOADS_INFLIGHT_MAX` loads
/// in flight; a full queue is counted and the waiting peers get rejects.
pub const EXTRAS_REQUESTS_CAPACITY: usize = 256;
/// Loads one shard keeps in flight at once.
pub const EXTRAS_LOADS_INFLIGHT_MAX: usize = 32;
/// A load not answered within this long is given up: its waiting peers get rejects.
pub const EXTRAS_LOAD_TIMEOUT_SECS: u64 = 10;

/// A shard asks for what only the .torrent holds (no shard reads files it does not serve).
#[derive(Debug, Clone)]
pub struct ExtrasRequest {
    /// The asking shard's index: the answer goes to its command channel.
    pub shard: usize,
    pub torrent: Arc<CatalogTorrent>,
}

/// What the control plane read from a torrent's .torrent file for the shards.
#[derive(Debug)]
pub struct TorrentExtras {
    pub info_hash: InfoHash,
    /// The raw info dictionary (BEP 9 metadata); None when the .torrent could not be read
    /// or no longer has this info-hash (peers then get metadata rejects).
    pub info: Option<Vec<u8>>,
    /// Merkle trees of the files with piece layers (BEP 52 hash requests); empty for v1.
    pub trees: TorrentTrees,
}

/// Health reports queued from all shards to the control loop. Reports are rare (one per
/// torrent per shard per fault), so a small queue suffices; a full one is counted by the
/// shard (`health_reports_dropped`) and the report is retried at its next tick.
pub const HEALTH_REPORTS_CAPACITY: usize = 64;
/// A shard's word that a content file of a torrent failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub info_hash: InfoHash,
    pub file: PathBuf,
    /// What failed, e.g. "read failed: Input/output error (os error 5)".
    pub reason: String,
}

/// The torrents every shard must not serve, as published by the control plane.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErroredSet {
    hashes: HashSet<InfoHash>,
}

impl FromIterator<InfoHash> for ErroredSet {
    fn from_iter<I: IntoIterator<Item = InfoHash>>(iter: I) -> Self {
        ErroredSet {
            hashes: iter.into_iter().collect(),
        }
    }
}

impl ErroredSet {
    pub fn contains(&self, h: &InfoHash) -> bool {
        self.hashes.contains(h)
    }
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &InfoHash> {
        self.hashes.iter()
    }
}

/// One errored torrent, as /stats shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErroredRow {
    pub info_hash: InfoHash,
    pub name: String,
    /// "file PATH: what failed".
    pub reason: String,
    /// When it became errored (wall clock, for humans and dashboards).
    pub since: SystemTime,
}
