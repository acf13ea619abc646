//! A fast hasher for the shard's hot maps: hot-block cache keys (info-hash, piece, offset)
//! and open-file keys (info-hash, file index).
//!
//! Owns: a multiply-rotate fold per 8-byte word with a splitmix64 finish, seeded per
//! process. SipHash (std's default) took 1.8% of the shard's samples in the default
//! configuration (every cache lookup, claim, eviction and file acquire/release hashes its
//! key); this costs a few multiplies and left the profile. Must never: serve a map whose size a peer controls
//! without a bound: these maps hold at most the cache's entries and open files, and their
//! keys are valid blocks and files of catalog torrents, so a crafted collision could only
//! slow lookups, never grow memory (and the random seed makes even that guesswork).

use std::hash::{BuildHasher, Hasher};

/// The hasher of the shard's hot maps.
#[derive(Clone, Copy)]
pub struct KeyHashBuilder {
    seed: u64,
}

impl KeyHashBuilder {
    pub fn new() -> KeyHashBuilder {
        KeyHashBuilder {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl Default for KeyHashBuilder {
    fn default() -> Self {
        KeyHashBuilder::new()
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

pub struct KeyHasher(u64);

impl KeyHasher {
    fn mix(&mut self, word: u64) {
        const ODD_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
        self.0 = (self.0 ^ word).wrapping_mul(ODD_MULTIPLIER).rotate_left(29);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    fn finish(&self) -> u64 {
        // splitmix64's finalizer: every input bit reaches every output bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::InfoHash;

    #[test]
    fn block_key_hash_spreads_structured_keys() {
        // Proves: the keys a cache really holds (consecutive blocks of consecutive pieces
        // of a few torrents) spread evenly over the low bits hashbrown indexes by, and over
        // the top 7 bits it keeps as control bytes: no bucket gets more than 3x its share.
        let b = KeyHashBuilder::new();
        let mut low = vec![0u32; 1 << 12];
        let mut top = [0u32; 128];
        let mut n = 0u32;
        for t in 0..4u8 {
            for piece in 0..1024u32 {
                for block in 0..16u32 {
                    let h = b.hash_one((InfoHash([t; 20]), piece, block * 16384));
                    low[(h & 0xFFF) as usize] += 1;
                    top[(h >> 57) as usize] += 1;
                    n += 1;
                }
            }
        }
        let low_max = *low.iter().max().unwrap();
        let top_max = *top.iter().max().unwrap();
        assert!(
            low_max <= 3 * n / 4096,
            "low bits: {low_max} in one of 4096 buckets"
        );
        assert!(
            top_max <= 3 * n / 128,
            "top bits: {top_max} in one of 128 buckets"
        );
        // Distinct keys, distinct hashes (for these 65,536, no collision of all 64 bits).
        let mut all: Vec<u64> = (0..65536u32)
            .map(|i| b.hash_one((InfoHash([9; 20]), i / 16, (i % 16) * 16384)))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 65536);
    }
}
