//! The shard's open-file cache: content files opened read-only, bounded in count, each
//! optionally installed in a slot of the ring's fixed-file table.
//!
//! Owns: the fds of content files, keyed by (info-hash, file index), how many in-flight
//! reads use each, and which fixed-file slot each occupies (`fixed_files`: reads then name
//! `types::Fixed(slot)` and the kernel skips its per-op fd-table lookup). Must never: close an
//! fd, or empty or reuse a fixed-file slot, that an in-flight (or linked, not yet issued)
//! io_uring read names: the kernel resolves a linked request's fd or slot only when it is
//! issued, so changing it early could make it read another file. Entries with in-flight reads
//! are never evicted or forgotten; when every entry is in use and the cache is full,
//! `acquire` says so and the caller waits (counted as `open_files_limit_hit`).
//!
//! The fixed-file table has exactly `capacity` slots (`open_files_per_shard_max`), so every
//! cached file can hold one: a slot is taken when a file is opened and given back when it is
//! evicted or forgotten. A slot the kernel would not fill leaves that file on its plain fd.
//!
//! With `direct_io`, each file also gets a second fd opened with O_DIRECT (and the alignment
//! its reads need): reads into the hot-block cache that are aligned use it and bypass the
//! page cache; everything else (file tails, blocks that straddle files) uses the buffered fd.
//! A file whose filesystem refuses O_DIRECT keeps only its buffered fd (counted).
//!
//! With `page_cache_sends`, each file is also mapped read-only (`storage::mapping`): blocks
//! whose pages are resident are sent straight from the mapping. The mapping lives exactly
//! as long as the entry, so the same in-flight rule keeps it mapped while a send names it.
//! Mapped files are bounded by the same `open_files_per_shard_max`, and their total length
//! by `page_cache_map_bytes_max` (idle files' mappings are dropped, least recently used
//! first, to make room); a file that cannot be mapped (the budget is held by files in use,
//! or `vm.max_map_count`) is read as before (counted).

use crate::keyhash::KeyHashBuilder;
use crate::metainfo::InfoHash;
use crate::storage::mapping::{residency_visible, MapView, Mapping};
use crate::storage::{open_content, open_content_direct};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

pub type FileKey = (InfoHash, u32);

/// How SQEs name a cached content file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFile {
    /// The plain fd: splice mode, and reads of a file without a fixed slot.
    pub fd: RawFd,
    /// The file's slot in the ring's fixed-file table, when it has one.
    pub fixed_slot: Option<u32>,
    /// `direct_io`: the O_DIRECT fd and the alignment (bytes) its reads need.
    pub direct: Option<(RawFd, u32)>,
    /// `page_cache_sends`: the file's read-only mapping (valid while this use is held).
    pub map: Option<MapView>,
}

/// The ring's fixed-file table as the cache sees it (`Ring` in the shard, a fake in tests).
pub trait FixedFileTable {
    /// Points `slot` at `fd`, replacing what it held; `-1` empties it. On failure the kernel
    /// leaves the slot empty.
    fn update(&mut self, slot: u32, fd: RawFd) -> io::Result<()>;
}

impl FixedFileTable for crate::ring::Ring {
    fn update(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        self.update_fixed_file(slot, fd)
    }
}

struct Entry {
    file: File,
    /// `direct_io`: the same file opened with O_DIRECT, and its read alignment.
    direct: Option<(File, u32)>,
    /// `page_cache_sends`: the whole file, mapped read-only (unmapped with the entry).
    map: Option<Mapping>,
    inflight: u32,
    last_used: u64,
    fixed_slot: Option<u32>,
}

impl Entry {
    fn open_file(&self) -> OpenFile {
        OpenFile {
            fd: self.file.as_raw_fd(),
            fixed_slot: self.fixed_slot,
            direct: self
                .direct
                .as_ref()
                .map(|(f, align)| (f.as_raw_fd(), *align)),
            map: self.map.as_ref().map(Mapping::view),
        }
    }
}

pub struct FileCache {
    entries: HashMap<FileKey, Entry, KeyHashBuilder>,
    capacity: usize,
    clock: u64,
    /// Fixed-file slots no entry holds (None: no fixed-file table, plain fds only).
    free_slots: Option<Vec<u32>>,
    /// Slots the kernel would not fill (the file was then read by its plain fd).
    pub fixed_slot_failures: u64,
    /// Open an O_DIRECT fd beside each buffered one (`direct_io`).
    direct_io: bool,
    /// `direct_io`: files whose O_DIRECT open failed (they are read buffered).
    pub direct_open_failures: u64,
    /// Map every file for sends from the page cache (`page_cache_sends`), keeping at most
    /// this many bytes mapped (`page_cache_map_bytes_max`); None: map nothing.
    map_bytes_max: Option<u64>,
    /// Total length of the mappings held now.
    pub mapped_bytes: u64,
    /// Files read instead of mapped because files in use held the mapping budget.
    pub maps_over_budget: u64,
    /// `page_cache_sends`: files that could not be mapped, or whose page-cache residency
    /// this user cannot see (`residency_visible`); they are read as before.
    pub map_failures: u64,
    /// The "residency not visible" and "mmap refused" warnings were logged (once each per
    /// shard).
    warned_residency_hidden: bool,
    warned_map_failed: bool,
}

#[derive(Debug)]
pub enum AcquireError {
    /// Every cached file has reads in flight and the cache is full: retry later.
    Full,
    Open(std::io::Error),
}

impl FileCache {
    /// This cache's counters into the shard's stats.
    pub fn copy_counters(&self, stats: &mut crate::stats::ShardStats) {
        stats.direct_open_failures = self.direct_open_failures;
        stats.map_failures = self.map_failures;
        stats.maps_over_budget = self.maps_over_budget;
        stats.mapped_bytes = self.mapped_bytes;
    }

    /// `fixed_files`: the ring has a sparse fixed-file table of `capacity` slots.
    /// `direct_io`: also open every file with O_DIRECT; `map_bytes_max`: also map it, with
    /// at most this many bytes mapped at once (see the module comment).
    pub fn new(
        capacity: usize,
        fixed_files: bool,
        direct_io: bool,
        map_bytes_max: Option<u64>,
    ) -> FileCache {
        assert!(capacity > 0);
        // `validate` bounds open_files_per_shard_max by the kernel's table size (2^20).
        assert!(capacity <= crate::config::OPEN_FILES_PER_SHARD_CEILING);
        let slots = capacity as u32;
        FileCache {
            entries: HashMap::with_capacity_and_hasher(capacity, KeyHashBuilder::new()),
            capacity,
            clock: 0,
            // Reversed so slots are handed out from 0 up (tidy in traces).
            free_slots: fixed_files.then(|| (0..slots).rev().collect()),
            fixed_slot_failures: 0,
            direct_io,
            direct_open_failures: 0,
            map_bytes_max,
            mapped_bytes: 0,
            maps_over_budget: 0,
            map_failures: 0,
            warned_residency_hidden: false,
            warned_map_failed: false,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns how to name a file in SQEs, opening it (and installing it in a fixed-file
    /// slot) if needed, and counts one in-flight use.
    pub fn acquire(
        &mut self,
        key: FileKey,
        path: &Path,
        table: &mut impl FixedFileTable,
    ) -> Result<OpenFile, AcquireError> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            e.inflight += 1;
            e.last_used = self.clock;
            return Ok(e.open_file());
        }
        let victim = if self.entries.len() >= self.capacity {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| e.inflight == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => Some(k),
                None => return Err(AcquireError::Full),
            }
        } else {
            None
        };
        // Open before evicting: a file that cannot be opened costs the cache nothing.
        let file = open_content(path).map_err(AcquireError::Open)?;
        let direct = if self.direct_io {
            match open_content_direct(path) {
                Ok(d) => Some(d),
                Err(e) => {
                    if self.direct_open_failures == 0 {
                        tracing::warn!(
                            "direct_io: cannot open {} with O_DIRECT ({e}); reading it \
                             through the page cache (squall_direct_open_failures_total \
                             counts such files)",
                            path.display()
                        );
                    }
                    self.direct_open_failures += 1;
                    None
                }
            }
        } else {
            None
        };
        let map = self.map_file(&file, path, victim.as_ref());
        // The victim's slot goes straight to the new file: one update replaces it.
        let mut slot = None;
        if let Some(k) = victim {
            if let Some(old) = self.entries.remove(&k) {
                debug_assert_eq!(old.inflight, 0, "evicted a file with reads in flight");
                slot = old.fixed_slot;
                self.mapped_bytes -= old.map.as_ref().map_or(0, |m| m.len_bytes());
            }
        }
        self.mapped_bytes += map.as_ref().map_or(0, |m| m.len_bytes());
        debug_assert!(self.mapped_bytes <= self.map_bytes_max.unwrap_or(0));
        let mut fixed_slot = None;
        if let Some(free) = self.free_slots.as_mut() {
            if let Some(s) = slot.or_else(|| free.pop()) {
                match table.update(s, file.as_raw_fd()) {
                    Ok(()) => fixed_slot = Some(s),
                    Err(e) => {
                        // The kernel left the slot empty: it stays free, the file uses its fd.
                        if self.fixed_slot_failures == 0 {
                            tracing::warn!(
                                "cannot install a content file in fixed-file slot {s} ({e}); \
                                 using its fd"
                            );
                        }
                        self.fixed_slot_failures += 1;
                        free.push(s);
                    }
                }
            }
        } else {
            debug_assert!(slot.is_none(), "a slot without a fixed-file table");
        }
        let entry = Entry {
            file,
            direct,
            map,
            inflight: 1,
            last_used: self.clock,
            fixed_slot,
        };
        let open = entry.open_file();
        self.entries.insert(key, entry);
        debug_assert!(self.slots_consistent());
        Ok(open)
    }

    /// `page_cache_sends`: the mapping of a file just opened, or None when it is read
    /// instead: sends from mappings are off, this user cannot see its page-cache residency,
    /// it does not fit the budget, or mmap refused it (each counted; the first residency and
    /// mmap refusals warned about).
    fn map_file(&mut self, file: &File, path: &Path, victim: Option<&FileKey>) -> Option<Mapping> {
        let max = self.map_bytes_max?;
        // An unreadable length maps nothing (an empty mapping is none).
        let meta = file.metadata().ok()?;
        if !residency_visible(file, &meta) {
            if !self.warned_residency_hidden {
                self.warned_residency_hidden = true;
                tracing::warn!(
                    "page_cache_sends: this user cannot see which pages of {} are cached \
                     (Linux reports page-cache residency only for files it owns or may \
                     write); reading it instead (squall_map_failures_total counts such files; \
                     run squall as the content's owner to send from the page cache)",
                    path.display()
                );
            }
            self.map_failures += 1;
            return None;
        }
        let len = self.map_budget_for(max, meta.len(), victim)?;
        match Mapping::new(file, len) {
            Ok(m) => m,
            Err(e) => {
                if !self.warned_map_failed {
                    self.warned_map_failed = true;
                    tracing::warn!(
                        "page_cache_sends: cannot map {} ({e}); reading it instead \
                         (squall_map_failures_total counts such files; see vm.max_map_count)",
                        path.display()
                    );
                }
                self.map_failures += 1;
                None
            }
        }
    }

    /// Whether a file of `len` bytes may be mapped within `max`: it fits once `victim`
    /// (about to be evicted) is gone, after dropping idle files' mappings, least recently
    /// used first, as needed. Counts a file that does not fit. Returns the length to map.
    fn map_budget_for(&mut self, max: u64, len: u64, victim: Option<&FileKey>) -> Option<u64> {
        let victim_len = victim
            .and_then(|k| self.entries.get(k))
            .and_then(|e| e.map.as_ref())
            .map_or(0, |m| m.len_bytes());
        let mut mapped = self.mapped_bytes - victim_len;
        if mapped + len > max && len <= max {
            let mut idle: Vec<(u64, FileKey)> = self
                .entries
                .iter()
                .filter(|(k, e)| e.inflight == 0 && e.map.is_some() && Some(*k) != victim)
                .map(|(k, e)| (e.last_used, *k))
                .collect();
            idle.sort_unstable();
            for (_, k) in idle {
                if mapped + len <= max {
                    break;
                }
                if let Some(m) = self.entries.get_mut(&k).and_then(|e| e.map.take()) {
                    mapped -= m.len_bytes();
                    self.mapped_bytes -= m.len_bytes();
                }
            }
        }
        if mapped + len > max {
            self.maps_over_budget += 1;
            return None;
        }
        Some(len)
    }

    /// `page_cache_sends`: when `key`'s file is now shorter than its mapping (it shrank
    /// under it, so sends from the lost pages fail with -EFAULT), its (current, mapped)
    /// lengths. None for a file that is not cached, not mapped, or not shorter.
    pub fn shrunk_under_mapping(&self, key: &FileKey) -> Option<(u64, u64)> {
        let e = self.entries.get(key)?;
        let mapped = e.map.as_ref()?.len_bytes();
        let now = e.file.metadata().ok()?.len();
        (now < mapped).then_some((now, mapped))
    }

    /// Uses `acquire` counted that no `release` has given back, all files together (0 once
    /// every batch and readahead is done: the shutdown leak audit checks it).
    pub fn uses_held(&self) -> u64 {
        self.entries.values().map(|e| u64::from(e.inflight)).sum()
    }

    /// The read(s) counted by `acquire` completed.
    pub fn release(&mut self, key: &FileKey) {
        if let Some(e) = self.entries.get_mut(key) {
            assert!(e.inflight > 0, "file cache release without acquire");
            e.inflight -= 1;
        } else {
            debug_assert!(false, "released a file that is not cached");
        }
    }

    /// Drops every idle fd of a torrent (e.g. after a content error, so a restored file is
    /// reopened), emptying their fixed-file slots: a slot left pointing at a truncated or
    /// replaced file would keep serving the old inode.
    pub fn forget_idle(&mut self, info_hash: &InfoHash, table: &mut impl FixedFileTable) {
        let free_slots = &mut self.free_slots;
        let mapped_bytes = &mut self.mapped_bytes;
        self.entries.retain(|k, e| {
            if k.0 != *info_hash || e.inflight > 0 {
                return true;
            }
            // Its mapping goes with it (a replaced file is mapped afresh when reopened).
            *mapped_bytes -= e.map.as_ref().map_or(0, |m| m.len_bytes());
            if let (Some(slot), Some(free)) = (e.fixed_slot, free_slots.as_mut()) {
                debug_assert_eq!(e.inflight, 0, "emptied a fixed-file slot a read names");
                if let Err(err) = table.update(slot, -1) {
                    // The next file installed there replaces it anyway.
                    tracing::debug!("cannot empty fixed-file slot {slot}: {err}");
                }
                free.push(slot);
            }
            false
        });
        debug_assert!(self.slots_consistent());
    }

    /// Every slot is either free or held by exactly one entry.
    fn slots_consistent(&self) -> bool {
        let Some(free) = &self.free_slots else {
            return self.entries.values().all(|e| e.fixed_slot.is_none());
        };
        let mut seen = vec![false; self.capacity];
        for s in free
            .iter()
            .copied()
            .chain(self.entries.values().filter_map(|e| e.fixed_slot))
        {
            match seen.get_mut(s as usize) {
                Some(b) if !*b => *b = true,
                _ => return false,
            }
        }
        // An entry whose install failed holds no slot: its slot went back to the free list.
        seen.iter().all(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fixed-file table that records its slots, with a switch to refuse updates.
    #[derive(Default)]
    struct FakeTable {
        slots: HashMap<u32, RawFd>,
        refuse: bool,
    }

    impl FixedFileTable for FakeTable {
        fn update(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
            self.slots.remove(&slot);
            if self.refuse {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            if fd >= 0 {
                self.slots.insert(slot, fd);
            }
            Ok(())
        }
    }

    fn files(n: usize) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::File::create(&p)
                    .unwrap()
                    .write_all(b"data")
                    .unwrap();
                p
            })
            .collect();
        (dir, paths)
    }

    #[test]
    fn never_evicts_files_in_use_and_reports_full() {
        // With capacity 1, a second file cannot displace one with a read in flight.
        let (dir, p) = files(2);
        let (a, b) = (&p[0], &p[1]);
        let h = InfoHash([1; 20]);
        let mut t = FakeTable::default();
        let mut cache = FileCache::new(1, false, false, None);
        let fd_a = cache.acquire((h, 0), a, &mut t).unwrap();
        assert_eq!(fd_a.fixed_slot, None);
        assert!(matches!(
            cache.acquire((h, 1), b, &mut t),
            Err(AcquireError::Full)
        ));
        // The same file is shared, not reopened.
        assert_eq!(cache.acquire((h, 0), a, &mut t).unwrap(), fd_a);
        cache.release(&(h, 0));
        cache.release(&(h, 0));
        cache.acquire((h, 1), b, &mut t).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            cache.acquire((h, 2), &dir.path().join("missing"), &mut t),
            Err(AcquireError::Full)
        ));
        cache.release(&(h, 1));
        assert!(matches!(
            cache.acquire((h, 2), &dir.path().join("missing"), &mut t),
            Err(AcquireError::Open(_))
        ));
        // A failed open evicted nothing.
        assert_eq!(cache.len(), 1);
        assert!(t.slots.is_empty(), "no table use without fixed files");
    }

    #[test]
    fn direct_io_opens_a_second_fd_with_o_direct() {
        // Proves: with direct_io each file gets a distinct O_DIRECT fd (the buffered fd has
        // no O_DIRECT), shared by every acquire, and without it there is none.
        let (_dir, p) = files(1);
        let h = InfoHash([3; 20]);
        let mut t = FakeTable::default();
        let mut plain = FileCache::new(1, false, false, None);
        assert_eq!(plain.acquire((h, 0), &p[0], &mut t).unwrap().direct, None);
        let mut cache = FileCache::new(1, false, true, None);
        let f = cache.acquire((h, 0), &p[0], &mut t).unwrap();
        // SAFETY: fcntl F_GETFL on fds the cache holds open.
        let flags = |fd| unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_eq!(
            flags(f.fd) & libc::O_DIRECT,
            0,
            "the buffered fd stays buffered"
        );
        match f.direct {
            Some((dfd, align)) => {
                assert_ne!(dfd, f.fd);
                assert_ne!(flags(dfd) & libc::O_DIRECT, 0);
                assert!(align.is_power_of_two());
                assert_eq!(cache.direct_open_failures, 0);
            }
            // A temp dir on a filesystem without O_DIRECT: counted, and the file still opens.
            None => assert_eq!(cache.direct_open_failures, 1),
        }
        assert_eq!(cache.acquire((h, 0), &p[0], &mut t).unwrap(), f);
    }

    fn mapped_regions() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains("squall-map-test"))
            .count()
    }

    #[test]
    fn page_cache_sends_map_each_file_for_exactly_the_entry_s_life() {
        // Proves: with map_files each file is mapped once (shared by every acquire), over its
        // whole length; an evicted file's mapping is gone from the process; without
        // map_files nothing is mapped.
        let dir = tempfile::Builder::new()
            .prefix("squall-map-test")
            .tempdir()
            .unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![1u8; 20_000]).unwrap();
        std::fs::write(&b, vec![2u8; 5]).unwrap();
        let h = InfoHash([4; 20]);
        let mut t = FakeTable::default();
        let mut plain = FileCache::new(1, false, false, None);
        assert_eq!(plain.acquire((h, 0), &a, &mut t).unwrap().map, None);
        assert_eq!(mapped_regions(), 0);
        let mut cache = FileCache::new(1, false, false, Some(1 << 30));
        let f = cache.acquire((h, 0), &a, &mut t).unwrap();
        let view = f.map.expect("mapped");
        assert_eq!(view.len_bytes(), 20_000);
        assert!(view.send_ptr(0, 20_000).is_some());
        assert_eq!(cache.acquire((h, 0), &a, &mut t).unwrap(), f);
        assert_eq!(mapped_regions(), 1);
        cache.release(&(h, 0));
        cache.release(&(h, 0));
        // Capacity 1: b evicts a, and a's mapping goes with it.
        let g = cache.acquire((h, 1), &b, &mut t).unwrap();
        assert_eq!(g.map.map(|m| m.len_bytes()), Some(5));
        assert_eq!(mapped_regions(), 1);
        assert_eq!(cache.map_failures, 0);
        drop(cache);
        assert_eq!(mapped_regions(), 0);
    }

    #[test]
    fn the_mapping_budget_drops_idle_mappings_first_and_never_one_in_use() {
        // Proves: mapped bytes never exceed page_cache_map_bytes_max; to map a new file the
        // least recently used idle mapping is dropped (its file stays open, read instead);
        // a file that does not fit beside files in use is opened unmapped and counted.
        let dir = tempfile::tempdir().unwrap();
        let p: Vec<_> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; 40_000]).unwrap();
                p
            })
            .collect();
        let h = InfoHash([5; 20]);
        let mut t = FakeTable::default();
        // Room for two 40,000-byte files.
        let mut cache = FileCache::new(8, false, false, Some(100_000));
        assert!(cache.acquire((h, 0), &p[0], &mut t).unwrap().map.is_some());
        assert!(cache.acquire((h, 1), &p[1], &mut t).unwrap().map.is_some());
        assert_eq!(cache.mapped_bytes, 80_000);
        // Both in use: the third opens unmapped.
        assert!(cache.acquire((h, 2), &p[2], &mut t).unwrap().map.is_none());
        assert_eq!(cache.maps_over_budget, 1);
        assert_eq!(cache.mapped_bytes, 80_000);
        // f0 idle (least recently used), f1 idle: f3 takes f0's mapping, f1 keeps its own.
        cache.release(&(h, 0));
        cache.release(&(h, 1));
        cache.release(&(h, 2));
        assert!(cache.acquire((h, 1), &p[1], &mut t).unwrap().map.is_some());
        cache.release(&(h, 1));
        assert!(cache.acquire((h, 3), &p[3], &mut t).unwrap().map.is_some());
        assert_eq!(cache.mapped_bytes, 80_000);
        assert!(cache.acquire((h, 0), &p[0], &mut t).unwrap().map.is_none());
        assert!(cache.acquire((h, 1), &p[1], &mut t).unwrap().map.is_some());
        assert_eq!(cache.len(), 4, "dropping a mapping closes no file");
        // A file larger than the whole budget is never mapped.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![9u8; 200_000]).unwrap();
        assert!(cache.acquire((h, 9), &big, &mut t).unwrap().map.is_none());
        assert_eq!(cache.maps_over_budget, 2);
        // Forgetting a torrent's idle files gives their mappings' bytes back; a file in use
        // keeps its own.
        for i in [0, 3, 9] {
            cache.release(&(h, i));
        }
        cache.forget_idle(&h, &mut t);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.mapped_bytes, 40_000, "f1 is still in use");
        cache.release(&(h, 1));
        cache.forget_idle(&h, &mut t);
        assert_eq!((cache.len(), cache.mapped_bytes), (0, 0));
    }

    #[test]
    fn a_file_that_shrinks_under_its_mapping_is_found() {
        // Proves: after another writer truncates a mapped file, the cache reports it with
        // its new and mapped lengths; an unchanged file, an unmapped one and an unknown key
        // are not reported.
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![1u8; 50_000]).unwrap();
        std::fs::write(&b, vec![2u8; 50_000]).unwrap();
        let h = InfoHash([6; 20]);
        let mut t = FakeTable::default();
        let mut cache = FileCache::new(4, false, false, Some(1 << 30));
        cache.acquire((h, 0), &a, &mut t).unwrap();
        cache.acquire((h, 1), &b, &mut t).unwrap();
        assert_eq!(cache.shrunk_under_mapping(&(h, 0)), None);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .set_len(1_000)
            .unwrap();
        assert_eq!(cache.shrunk_under_mapping(&(h, 0)), Some((1_000, 50_000)));
        assert_eq!(cache.shrunk_under_mapping(&(h, 1)), None);
        assert_eq!(cache.shrunk_under_mapping(&(h, 7)), None);
        let mut plain = FileCache::new(4, false, false, None);
        plain.acquire((h, 0), &a, &mut t).unwrap();
        assert_eq!(plain.shrunk_under_mapping(&(h, 0)), None, "not mapped");
    }

    #[test]
    fn fixed_slots_follow_files_and_are_emptied_only_when_idle() {
        // Each cached file holds one slot naming its fd; eviction hands the slot to the new
        // file in one update; forgetting empties idle slots only, never one a read names.
        let (_dir, p) = files(3);
        let h = InfoHash([2; 20]);
        let g = InfoHash([3; 20]);
        let mut t = FakeTable::default();
        let mut cache = FileCache::new(2, true, false, None);
        let a = cache.acquire((h, 0), &p[0], &mut t).unwrap();
        let b = cache.acquire((g, 0), &p[1], &mut t).unwrap();
        assert_eq!(a.fixed_slot, Some(0));
        assert_eq!(b.fixed_slot, Some(1));
        assert_eq!(t.slots.get(&0), Some(&a.fd));
        assert_eq!(t.slots.get(&1), Some(&b.fd));
        // Full, both busy.
        assert!(matches!(
            cache.acquire((h, 9), &p[2], &mut t),
            Err(AcquireError::Full)
        ));
        // `a` idles: the third file takes its slot.
        cache.release(&(h, 0));
        let c = cache.acquire((h, 1), &p[2], &mut t).unwrap();
        assert_eq!(c.fixed_slot, Some(0));
        assert_eq!(t.slots.get(&0), Some(&c.fd));
        // Forgetting torrent h while `c` is in flight keeps c and its slot.
        cache.forget_idle(&h, &mut t);
        assert_eq!(t.slots.get(&0), Some(&c.fd));
        assert_eq!(cache.len(), 2);
        // Once idle, it goes and its slot is emptied, then reused.
        cache.release(&(h, 1));
        cache.forget_idle(&h, &mut t);
        assert_eq!(cache.len(), 1);
        assert_eq!(t.slots.get(&0), None);
        let again = cache.acquire((h, 1), &p[2], &mut t).unwrap();
        assert_eq!(again.fixed_slot, Some(0));
        // Another torrent's busy file was never touched.
        assert_eq!(t.slots.get(&1), Some(&b.fd));
        assert!(cache.slots_consistent());
    }

    #[test]
    fn a_refused_slot_falls_back_to_the_fd_and_stays_free() {
        // If the kernel will not fill a slot, the file is still served by its fd, the slot
        // is not lost, and the next file gets it once the kernel takes updates again.
        let (_dir, p) = files(2);
        let h = InfoHash([4; 20]);
        let mut t = FakeTable {
            refuse: true,
            ..FakeTable::default()
        };
        let mut cache = FileCache::new(1, true, false, None);
        let a = cache.acquire((h, 0), &p[0], &mut t).unwrap();
        assert_eq!(a.fixed_slot, None);
        assert_eq!(cache.fixed_slot_failures, 1);
        assert!(cache.slots_consistent());
        cache.release(&(h, 0));
        t.refuse = false;
        let b = cache.acquire((h, 1), &p[1], &mut t).unwrap();
        assert_eq!(b.fixed_slot, Some(0));
        assert_eq!(t.slots.get(&0), Some(&b.fd));
        assert!(cache.slots_consistent());
    }
}
