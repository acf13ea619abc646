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

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent(hash: u8, v2: Option<u8>, name: &str) -> Arc<CatalogTorrent> {
        Arc::new(CatalogTorrent {
            info_hash_v2: v2.map(|b| [b; 32]),
            name: name.into(),
            ..CatalogTorrent::fixture(hash)
        })
    }

    #[test]
    fn finds_wire_hashes_first_duplicate_and_hybrid_aliases() {
        // Proves: every wire hash is found, a duplicate wire hash gives the first position, a
        // hybrid is also found by its truncated v2 hash, a v2-only torrent (wire hash = the
        // truncated v2 one) is not indexed twice, and an unknown hash finds nothing.
        let torrents = vec![
            torrent(9, None, "a"),
            torrent(3, Some(7), "hybrid"),
            torrent(9, None, "dup"),
            torrent(5, Some(5), "v2-only"),
            torrent(1, None, "b"),
        ];
        let index = HashIndex::build(&torrents);
        let get = |b: u8| index.get(&torrents, &InfoHash([b; 20]));
        assert_eq!(
            [get(9), get(3), get(5), get(1), get(7), get(2), get(0xff)],
            [Some(0), Some(1), Some(3), Some(4), Some(1), None, None]
        );
        assert_eq!(index.aliases.len(), 1);
        assert_eq!(HashIndex::default().get(&[], &InfoHash([0; 20])), None);
    }
}
