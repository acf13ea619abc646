//! The catalog's info-hash index: torrent positions sorted by wire info-hash (4 bytes per
//! torrent, binary search on lookup), plus the few hybrids' truncated v2 hashes. A
//! `HashMap<InfoHash, u32>` costs ~50 bytes per torrent at 1,000,000 (24-byte entries in a
//! table rounded up to 2^21 buckets); lookups happen per handshake, not per block, so
//! ~20 comparisons instead of one hash probe do not matter.
//!
//! Owns: building and searching the index. Must never: change after it is built (a catalog
//! is immutable; a reload builds a new one), or hold anything but positions and aliases.

use std::sync::Arc;

use super::CatalogTorrent;
use crate::metainfo::torrent::InfoHash;

#[derive(Debug, Default)]
pub struct HashIndex {
    /// Positions in `Catalog::torrents`, sorted by (wire info-hash, position).
    by_hash: Box<[u32]>,
    /// (truncated v2 info-hash, position) of hybrids, sorted; a v2 peer's handshake names
    /// this one.
    aliases: Box<[(InfoHash, u32)]>,
}

impl HashIndex {
    pub fn build(torrents: &[Arc<CatalogTorrent>]) -> HashIndex {
        let mut by_hash: Vec<u32> = (0..torrents.len() as u32).collect();
        by_hash.sort_by(|&a, &b| {
            torrents[a as usize]
                .info_hash
                .0
                .cmp(&torrents[b as usize].info_hash.0)
                .then(a.cmp(&b))
        });
        let mut aliases: Vec<(InfoHash, u32)> = torrents
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let v2 = t.info_hash_v2?;
                let mut truncated = [0u8; 20];
                truncated.copy_from_slice(&v2[..20]);
                // A v2-only torrent's wire hash already is the truncated one.
                (truncated != t.info_hash.0).then_some((InfoHash(truncated), i as u32))
            })
            .collect();
        aliases.sort_by(|a, b| a.0 .0.cmp(&b.0 .0).then(a.1.cmp(&b.1)));
        HashIndex {
            by_hash: by_hash.into_boxed_slice(),
            aliases: aliases.into_boxed_slice(),
        }
    }

    /// The first position whose wire hash (else, alias) is `hash`.
    pub fn get(&self, torrents: &[Arc<CatalogTorrent>], hash: &InfoHash) -> Option<u32> {
        let at = |p: u32| torrents.get(p as usize).map(|t| t.info_hash.0);
        let i = self
            .by_hash
            .partition_point(|&p| at(p).is_some_and(|h| h < hash.0));
        if let Some(&p) = self.by_hash.get(i) {
            if at(p) == Some(hash.0) {
                return Some(p);
            }
        }
        let j = self.aliases.partition_point(|(h, _)| h.0 < hash.0);
        self.aliases
            .get(j)
            .filter(|(h, _)| h == hash)
            .map(|&(_, p)| p)
    }
}
