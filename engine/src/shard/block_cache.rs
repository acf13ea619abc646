//! The per-shard hot-block cache: recently served 16 KiB blocks kept in registered memory,
//! so one disk read fans out to many peers from the same bytes.
//!
//! Owns: one contiguous, page-aligned region cut into block-sized entries, the map from
//! (torrent, piece, offset) to entry, each entry's reference count, and the CLOCK eviction
//! hand. The region is registered with io_uring beside the send buffer pool, so a miss is
//! read straight into its entry with ReadFixed and every hit is sent from it with no read
//! at all: one copy per block (into the socket) instead of two.
//!
//! Lifecycle of an entry: `Free -> Filling (one batch's reads in flight) -> Valid`, or back
//! to `Free` when the fill failed. A Valid entry may be named by any number of in-flight
//! sends; it is evicted (CLOCK, second chance) only when no send names it (`refs == 0`).
//! A Filling entry is never handed to a second batch: that batch ends before the block (it
//! is sent from the entry by the next batch, once filled: one read for both), or reads it
//! itself when it is the batch's first block (`shard::plan`).
//! Purging a torrent (its file failed) unmaps its entries at once; an entry still named by
//! a send is freed when that send lets go of it.
//!
//! Bounded: the entry count is fixed at start (`block_cache_bytes_per_shard`); the map never
//! holds more keys than entries. Must never: hand out an entry whose bytes the kernel may be
//! writing, free an entry a send still names, or grow.

use crate::keyhash::KeyHashBuilder;
use crate::metainfo::InfoHash;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;

/// A cached block: which torrent, which piece, which offset in the piece. Only canonical
/// blocks are cached (offset a multiple of the entry length, length up to the piece's end),
/// so the key fixes the length too.
pub type BlockKey = (InfoHash, u32, u32);

const PAGE_BYTES: usize = 4096;

/// io_uring refuses a registered buffer larger than 1 GiB (EFAULT), so a larger cache is
/// registered as several buffers of this size.
pub const REGISTERED_BUFFER_MAX_BYTES: usize = 1 << 30;
const _: () = assert!(REGISTERED_BUFFER_MAX_BYTES.is_multiple_of(CACHE_BLOCK_LEN_BYTES));

/// Only blocks of the standard length (`crate::BLOCK_LEN_BYTES`, or a piece's shorter last
/// block) at multiples of it are cached.
pub const CACHE_BLOCK_LEN_BYTES: usize = crate::BLOCK_LEN_BYTES as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Free,
    /// A batch's reads are writing the entry; only that batch names it.
    Filling,
    Valid,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: EntryState,
    /// In-flight batches whose send names this entry (a Filling entry's filler counts).
    refs: u32,
    /// CLOCK's second-chance bit: set on every hit, cleared as the hand passes.
    recently_used: bool,
    /// The key mapping to this entry; None once unmapped (purged, failed fill).
    key: Option<BlockKey>,
    /// Valid bytes in the entry (the block's length).
    len: u32,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Valid: send from this entry (a reference was taken).
    Hit {
        entry: u32,
        len: u32,
    },
    /// Another batch is filling it right now: serve this block uncached.
    Busy,
    Miss,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub busy: u64,
    pub evictions: u64,
    /// A miss found no entry to evict (all named by in-flight sends): served uncached.
    pub full: u64,
}

pub struct BlockCache {
    base: *mut u8,
    layout: Layout,
    entry_len_bytes: usize,
    entries: Vec<Entry>,
    map: HashMap<BlockKey, u32, KeyHashBuilder>,
    free: Vec<u32>,
    hand: usize,
    pub counters: CacheCounters,
}

// SAFETY: like the send buffer pool, the cache is created and used by exactly one shard
// thread and its io_uring; `Send` only lets the shard be built before its thread starts.
unsafe impl Send for BlockCache {}

impl BlockCache {
    /// A cache of `total_bytes / entry_len_bytes` entries (at least one), or an error if the
    /// memory cannot be had.
    pub fn new(total_bytes: u64, entry_len_bytes: usize) -> Result<BlockCache, String> {
        assert!(entry_len_bytes > 0, "entry length must be positive");
        let entry_len_bytes = entry_len_bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        let count = usize::try_from(total_bytes / entry_len_bytes as u64)
            .map_err(|_| "block cache size does not fit in memory".to_string())?
            .clamp(1, u32::MAX as usize);
        let total = count
            .checked_mul(entry_len_bytes)
            .ok_or_else(|| "block cache size overflows".to_string())?;
        let layout = Layout::from_size_align(total, PAGE_BYTES).map_err(|e| e.to_string())?;
        // SAFETY: the layout has non-zero size (count >= 1, entry length >= one page).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return Err(format!(
                "cannot allocate a {} MiB block cache; lower block_cache_bytes_per_shard",
                total >> 20
            ));
        }
        Ok(BlockCache {
            base,
            layout,
            entry_len_bytes,
            entries: vec![
                Entry {
                    state: EntryState::Free,
                    refs: 0,
                    recently_used: false,
                    key: None,
                    len: 0,
                };
                count
            ],
            map: HashMap::with_capacity_and_hasher(count, KeyHashBuilder::new()),
            free: (0..count as u32).rev().collect(),
            hand: 0,
            counters: CacheCounters::default(),
        })
    }

    /// The region for `register_buffers`, cut into pieces of at most
    /// `REGISTERED_BUFFER_MAX_BYTES` (the kernel refuses larger ones with EFAULT); entry `e`
    /// lies in piece `entry_region(e)`.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        let total = self.layout.size();
        (0..total.div_ceil(REGISTERED_BUFFER_MAX_BYTES))
            .map(|i| {
                let start = i * REGISTERED_BUFFER_MAX_BYTES;
                libc::iovec {
                    // SAFETY: start < total, inside the allocation.
                    iov_base: unsafe { self.base.add(start) }.cast(),
                    iov_len: (total - start).min(REGISTERED_BUFFER_MAX_BYTES),
                }
            })
            .collect()
    }

    /// Which piece of `iovecs()` holds an entry (entries never straddle two: the piece size
    /// is a multiple of the page-rounded entry length).
    pub fn entry_region(&self, entry: u32) -> usize {
        entry as usize * self.entry_len_bytes / REGISTERED_BUFFER_MAX_BYTES
    }

    pub fn entry_len_bytes(&self) -> usize {
        self.entry_len_bytes
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Entries holding a block (Filling or Valid, mapped or waiting for their last send).
    pub fn used_entries(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Looks a block up; a hit takes a reference the caller gives back with `release`.
    pub fn lookup(&mut self, key: &BlockKey) -> Lookup {
        let Some(&entry) = self.map.get(key) else {
            self.counters.misses += 1;
            return Lookup::Miss;
        };
        let e = &mut self.entries[entry as usize];
        debug_assert_eq!(e.key.as_ref(), Some(key), "map and entry disagree");
        match e.state {
            EntryState::Valid => {
                e.refs += 1;
                e.recently_used = true;
                self.counters.hits += 1;
                Lookup::Hit { entry, len: e.len }
            }
            EntryState::Filling => {
                self.counters.busy += 1;
                Lookup::Busy
            }
            EntryState::Free => unreachable!("a mapped entry is never free"),
        }
    }

    /// Claims an entry to read a missed block into (a free one, or one evicted by CLOCK).
    /// The caller holds the only reference and must call `fill_done` then `release`.
    /// None when every entry is named by an in-flight send.
    pub fn claim(&mut self, key: BlockKey, len: u32) -> Option<u32> {
        debug_assert!(len as usize <= self.entry_len_bytes);
        debug_assert!(!self.map.contains_key(&key), "claim of a mapped key");
        let entry = match self.free.pop() {
            Some(e) => e,
            None => match self.evict() {
                Some(e) => e,
                None => {
                    self.counters.full += 1;
                    return None;
                }
            },
        };
        let e = &mut self.entries[entry as usize];
        assert_eq!(e.state, EntryState::Free, "claimed a busy entry");
        assert_eq!(e.refs, 0);
        *e = Entry {
            state: EntryState::Filling,
            refs: 1,
            recently_used: false,
            key: Some(key),
            len,
        };
        self.map.insert(key, entry);
        Some(entry)
    }

    /// CLOCK: the first Valid entry with no sends in flight whose second chance is used up.
    /// Bounded to two sweeps (the first clears the bits it passes).
    fn evict(&mut self) -> Option<u32> {
        let n = self.entries.len();
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let e = &mut self.entries[i];
            if e.state != EntryState::Valid || e.refs > 0 {
                continue;
            }
            if e.recently_used {
                e.recently_used = false;
                continue;
            }
            if let Some(k) = e.key.take() {
                self.map.remove(&k);
            }
            e.state = EntryState::Free;
            self.counters.evictions += 1;
            return Some(i as u32);
        }
        None
    }

    /// The reads of a claimed entry finished: `ok` makes it Valid for every later lookup;
    /// a failed fill unmaps it (its bytes are garbage) and it is freed at its last release.
    pub fn fill_done(&mut self, entry: u32, ok: bool) {
        let e = &mut self.entries[entry as usize];
        assert_eq!(
            e.state,
            EntryState::Filling,
            "fill_done on an entry not filling"
        );
        if ok {
            e.state = EntryState::Valid;
        } else {
            if let Some(k) = e.key.take() {
                self.map.remove(&k);
            }
            // Stays out of every lookup; `release` frees it once refs reach 0.
            e.state = EntryState::Valid;
        }
    }

    /// References sends hold, all entries together (0 once every send is done).
    pub fn refs_held(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.refs)).sum()
    }

    /// A send that named the entry is done with it.
    pub fn release(&mut self, entry: u32) {
        let e = &mut self.entries[entry as usize];
        assert!(e.refs > 0, "entry {entry} released more often than taken");
        e.refs -= 1;
        if e.refs == 0 && e.key.is_none() {
            assert_ne!(
                e.state,
                EntryState::Filling,
                "freeing an entry being filled"
            );
            e.state = EntryState::Free;
            self.free.push(entry);
        }
    }

    /// Unmaps every block of a torrent (its content failed or changed). Entries no send
    /// names are freed now; the rest at their last release.
    pub fn purge(&mut self, info_hash: &InfoHash) {
        let entries = &mut self.entries;
        let free = &mut self.free;
        self.map.retain(|k, &mut entry| {
            if &k.0 != info_hash {
                return true;
            }
            let e = &mut entries[entry as usize];
            e.key = None;
            if e.refs == 0 {
                e.state = EntryState::Free;
                free.push(entry);
            }
            // A Filling entry keeps its filler's reference; fill_done/release free it.
            false
        });
    }

    /// Start of an entry's memory; valid for the cache's life.
    pub fn entry_ptr(&self, entry: u32) -> *mut u8 {
        assert!((entry as usize) < self.entries.len());
        // SAFETY: entry < count, so the offset lies inside the allocation.
        unsafe { self.base.add(entry as usize * self.entry_len_bytes) }
    }

    /// Mutable view of an entry being filled (zero extents), before its reads are submitted.
    pub fn entry_mut(&mut self, entry: u32) -> &mut [u8] {
        assert_eq!(self.entries[entry as usize].state, EntryState::Filling);
        // SAFETY: the entry lies inside the allocation; a Filling entry is named by exactly
        // one batch, which writes here before submitting any op naming the entry.
        unsafe { std::slice::from_raw_parts_mut(self.entry_ptr(entry), self.entry_len_bytes) }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the shard drops its ring (and with it
        // every op that could name the region) before the cache, or leaks the cache.
        unsafe { dealloc(self.base, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: usize = 16 * 1024;

    fn key(t: u8, piece: u32) -> BlockKey {
        (InfoHash([t; 20]), piece, 0)
    }

    #[test]
    fn a_filled_block_hits_until_evicted() {
        let mut c = BlockCache::new(2 * E as u64, E).unwrap();
        assert_eq!(c.entry_count(), 2);
        assert_eq!(c.lookup(&key(1, 0)), Lookup::Miss);
        let a = c.claim(key(1, 0), 16384).unwrap();
        // Another batch asking while the read is in flight reads the block itself.
        assert_eq!(c.lookup(&key(1, 0)), Lookup::Busy);
        c.fill_done(a, true);
        c.release(a);
        assert_eq!(
            c.lookup(&key(1, 0)),
            Lookup::Hit {
                entry: a,
                len: 16384
            }
        );
        c.release(a);
        let b = c.claim(key(1, 1), 100).unwrap();
        c.fill_done(b, true);
        c.release(b);
        // Full: a third block evicts one (CLOCK gives the recently hit `a` a second chance).
        let x = c.claim(key(1, 2), 16384).unwrap();
        assert_eq!(x, b);
        assert_eq!(c.counters.evictions, 1);
        assert_eq!(c.lookup(&key(1, 1)), Lookup::Miss);
        c.fill_done(x, true);
        c.release(x);
    }

    #[test]
    fn entries_named_by_sends_are_never_evicted() {
        let mut c = BlockCache::new(E as u64, E).unwrap();
        let a = c.claim(key(1, 0), 16384).unwrap();
        c.fill_done(a, true);
        // Still referenced by its filler's send: a second block cannot take the entry.
        assert_eq!(c.claim(key(1, 1), 16384), None);
        assert_eq!(c.counters.full, 1);
        c.release(a);
        assert!(c.claim(key(1, 1), 16384).is_some());
    }

    #[test]
    fn a_large_cache_registers_in_pieces_entries_never_straddle() {
        let c = BlockCache::new((REGISTERED_BUFFER_MAX_BYTES + 3 * E) as u64, E).unwrap();
        let v = c.iovecs();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].iov_len, REGISTERED_BUFFER_MAX_BYTES);
        assert_eq!(v[1].iov_len, 3 * E);
        let per_piece = (REGISTERED_BUFFER_MAX_BYTES / E) as u32;
        assert_eq!(c.entry_region(per_piece - 1), 0);
        assert_eq!(c.entry_region(per_piece), 1);
        assert_eq!(
            c.entry_ptr(per_piece) as usize,
            v[1].iov_base as usize,
            "entry and region start agree"
        );
    }

    #[test]
    fn a_failed_fill_is_never_served_and_is_freed_at_release() {
        let mut c = BlockCache::new(E as u64, E).unwrap();
        let a = c.claim(key(1, 0), 16384).unwrap();
        c.fill_done(a, false);
        assert_eq!(c.lookup(&key(1, 0)), Lookup::Miss);
        assert_eq!(c.used_entries(), 1);
        c.release(a);
        assert_eq!(c.used_entries(), 0);
    }

    #[test]
    fn purge_unmaps_a_torrent_and_frees_after_the_last_send() {
        let mut c = BlockCache::new(3 * E as u64, E).unwrap();
        let a = c.claim(key(1, 0), 16384).unwrap();
        c.fill_done(a, true);
        c.release(a);
        let b = c.claim(key(1, 1), 16384).unwrap();
        c.fill_done(b, true); // b's send still in flight
        let other = c.claim(key(2, 0), 16384).unwrap();
        c.fill_done(other, true);
        c.release(other);
        c.purge(&InfoHash([1; 20]));
        assert_eq!(c.lookup(&key(1, 0)), Lookup::Miss);
        assert_eq!(c.lookup(&key(1, 1)), Lookup::Miss);
        assert!(matches!(c.lookup(&key(2, 0)), Lookup::Hit { .. }));
        c.release(other);
        assert_eq!(c.used_entries(), 2, "b waits for its send");
        c.release(b);
        assert_eq!(c.used_entries(), 1);
    }

    #[test]
    #[should_panic(expected = "released more often")]
    fn double_release_stops_loudly() {
        let mut c = BlockCache::new(E as u64, E).unwrap();
        let a = c.claim(key(1, 0), 16384).unwrap();
        c.fill_done(a, true);
        c.release(a);
        c.release(a);
    }

    #[test]
    fn random_use_keeps_the_invariants() {
        // Map and entries agree and the free list never holds a named entry, under a random
        // mix of lookups, claims, fills, releases and purges.
        let mut c = BlockCache::new(8 * E as u64, E).unwrap();
        let mut held: Vec<(u32, bool)> = Vec::new(); // (entry, filling)
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = key((seed % 3) as u8, ((seed >> 8) % 16) as u32);
            match (seed >> 20) % 5 {
                0 | 1 => match c.lookup(&k) {
                    Lookup::Hit { entry, .. } => held.push((entry, false)),
                    Lookup::Miss => {
                        if let Some(e) = c.claim(k, 16384) {
                            held.push((e, true));
                        }
                    }
                    Lookup::Busy => {}
                },
                2 | 3 if !held.is_empty() => {
                    let i = (seed >> 30) as usize % held.len();
                    let (e, filling) = held.swap_remove(i);
                    if filling {
                        c.fill_done(e, !(seed >> 40).is_multiple_of(4));
                    }
                    c.release(e);
                }
                _ => c.purge(&InfoHash([(seed % 3) as u8; 20])),
            }
            for (k, &e) in c.map.iter() {
                assert_eq!(c.entries[e as usize].key, Some(*k));
                assert_ne!(c.entries[e as usize].state, EntryState::Free);
            }
            for &f in c.free.iter() {
                assert_eq!(c.entries[f as usize].state, EntryState::Free);
                assert_eq!(c.entries[f as usize].refs, 0);
            }
        }
    }
}
