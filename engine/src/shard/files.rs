//! The shard's open-file cache: content files opened read-only, bounded in count.
//!
//! Owns: the fds of content files, keyed by (info-hash, file index), and how many in-flight
//! reads use each. Must never: close an fd that an in-flight (or linked, not yet issued)
//! io_uring read names: the kernel resolves a linked request's fd only when it is issued, so
//! closing early could make it read another file. Entries with in-flight reads are never
//! evicted; when every entry is in use and the cache is full, `acquire` says so and the
//! caller waits (counted as `open_files_limit_hit`).

use crate::metainfo::InfoHash;
use crate::storage::open_content;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

pub type FileKey = (InfoHash, u32);

struct Entry {
    file: File,
    inflight: u32,
    last_used: u64,
}

pub struct FileCache {
    entries: HashMap<FileKey, Entry>,
    capacity: usize,
    clock: u64,
}

#[derive(Debug)]
pub enum AcquireError {
    /// Every cached file has reads in flight and the cache is full: retry later.
    Full,
    Open(std::io::Error),
}

impl FileCache {
    pub fn new(capacity: usize) -> FileCache {
        assert!(capacity > 0);
        FileCache {
            entries: HashMap::with_capacity(capacity),
            capacity,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the raw fd for a file, opening it if needed, and counts one in-flight use.
    pub fn acquire(&mut self, key: FileKey, path: &Path) -> Result<RawFd, AcquireError> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            e.inflight += 1;
            e.last_used = self.clock;
            return Ok(e.file.as_raw_fd());
        }
        if self.entries.len() >= self.capacity {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| e.inflight == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => return Err(AcquireError::Full),
            }
        }
        let file = open_content(path).map_err(AcquireError::Open)?;
        let fd = file.as_raw_fd();
        self.entries.insert(
            key,
            Entry {
                file,
                inflight: 1,
                last_used: self.clock,
            },
        );
        Ok(fd)
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
    /// reopened).
    pub fn forget_idle(&mut self, info_hash: &InfoHash) {
        self.entries
            .retain(|k, e| k.0 != *info_hash || e.inflight > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn never_evicts_files_in_use_and_reports_full() {
        // With capacity 1, a second file cannot displace one with a read in flight.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::File::create(&a)
            .unwrap()
            .write_all(b"aaaa")
            .unwrap();
        std::fs::File::create(&b)
            .unwrap()
            .write_all(b"bbbb")
            .unwrap();
        let h = InfoHash([1; 20]);
        let mut cache = FileCache::new(1);
        let fd_a = cache.acquire((h, 0), &a).unwrap();
        assert!(matches!(cache.acquire((h, 1), &b), Err(AcquireError::Full)));
        // The same file is shared, not reopened.
        assert_eq!(cache.acquire((h, 0), &a).unwrap(), fd_a);
        cache.release(&(h, 0));
        cache.release(&(h, 0));
        cache.acquire((h, 1), &b).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            cache.acquire((h, 2), &dir.path().join("missing")),
            Err(AcquireError::Full)
        ));
        cache.release(&(h, 1));
        assert!(matches!(
            cache.acquire((h, 2), &dir.path().join("missing")),
            Err(AcquireError::Open(_))
        ));
    }
}
