//! What a shard shows its sessions: `ShardEnv`, the read-only view behind
//! `session::SessionEnv` (catalog, per-torrent peer counts, errored set, loaded extras).
//! Must never: hand a session anything it could mutate, or do I/O to answer.

use crate::catalog::{Catalog, CatalogTorrent};
use crate::metainfo::InfoHash;
use crate::plane::TorrentExtras;
use crate::shard::extras::ExtrasCache;
use crate::shard::health::ShardHealth;
use crate::shard::session::{SessionEnv, SessionLimits};
use std::collections::HashMap;
use std::sync::Arc;

/// A shard's read-only view for its sessions (`session::SessionEnv`).
pub struct ShardEnv<'a> {
    pub limits: &'a SessionLimits,
    pub peer_id: [u8; 20],
    pub catalog: &'a Catalog,
    pub torrent_peers: &'a HashMap<InfoHash, usize>,
    pub health: &'a ShardHealth,
    pub extras: &'a ExtrasCache,
}

impl SessionEnv for ShardEnv<'_> {
    fn limits(&self) -> &SessionLimits {
        self.limits
    }
    fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }
    fn torrent(&self, info_hash: &InfoHash) -> Option<Arc<CatalogTorrent>> {
        self.catalog.get(info_hash).cloned()
    }
    fn torrent_peers(&self, info_hash: &InfoHash) -> usize {
        self.torrent_peers.get(info_hash).copied().unwrap_or(0)
    }
    fn is_errored(&self, info_hash: &InfoHash) -> bool {
        self.health.is_errored(info_hash)
    }
    fn extras(&self, info_hash: &InfoHash) -> Option<&TorrentExtras> {
        self.extras.get(info_hash)
    }
}
