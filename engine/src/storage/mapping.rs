//! A read-only shared mapping of a content file, used as the source address of sends.
//!
//! Owns: one `mmap(PROT_READ, MAP_SHARED)` of a whole content file, and the question "are
//! these bytes in the page cache right now?" (`mincore`). With `page_cache_sends`, a block
//! whose pages are resident is sent by handing the kernel an iovec into the mapping: the
//! kernel copies page cache -> socket once, where a read would first copy page cache -> our
//! buffer and the send copy it again.
//!
//! Must never: be read or written through in userspace. No Rust reference into the mapping
//! is ever made; only the kernel reads it, from inside a send. That is what makes a content
//! file truncated (or replaced) under a live mapping harmless to the process: a user-mode
//! access past the new end would be SIGBUS, but a kernel access returns -EFAULT to the send,
//! which the shard counts and turns into a closed peer. Must never be unmapped while a send
//! names it: the shard's open-file cache keeps a file (and its mapping) while any batch holds
//! it, and batches hold their files until their send completes.
//!
//! Residency can change between `resident_prefix` and the send: a page evicted in between is
//! faulted in synchronously inside the send (one disk read on the shard's thread). That race
//! needs memory pressure within microseconds of the check; it costs latency, never bytes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Page size assumed for `mincore` arithmetic (checked against sysconf at map time).
const PAGE_BYTES: u64 = 4096;

/// Most pages one residency check asks about (so its scratch vector stays small).
pub const RESIDENCY_CHECK_PAGES_MAX: usize = 64;

/// Whether `mincore` tells the truth about `file`'s pages for this process. Linux reveals
/// page-cache residency only for files the caller owns, could open for writing, or holds
/// CAP_FOWNER over; for any other file it reports every page resident (a side-channel guard:
/// `can_do_mincore` in mm/mincore.c; measured here: uid 65534 sees a cold root-owned file
/// as fully resident). Sending from such a file's mapping could then fault pages in from
/// disk on the shard's thread, so it is not mapped. Root is taken as holding CAP_FOWNER.
/// `meta` is the file's metadata (its owner is compared).
pub fn residency_visible(file: &File, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid only reads the process's credentials.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 || meta.uid() == euid {
        return true;
    }
    // SAFETY: faccessat2(fd, "", W_OK, AT_EACCESS | AT_EMPTY_PATH) checks write permission
    // on the inode of an fd we own (the same test the kernel's check makes); the path is a
    // NUL-terminated "". A kernel without faccessat2 (< 5.8) answers -1: not visible.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    rc == 0
}

/// Owns the mapping: unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    view: MapView,
}

/// Where a live mapping lies, to name it in iovecs and ask about residency. Copied into the
/// shard's `OpenFile`; valid only while the open-file cache holds the file (the shard uses
/// it only between acquiring the file for a batch and releasing it after the send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapView {
    /// Start of the mapping; page aligned. Never dereferenced in userspace.
    addr: usize,
    len_bytes: u64,
}

impl Mapping {
    /// Maps the first `len_bytes` of `file` (its length, as the caller read it) read-only
    /// and shared. `Ok(None)` for an empty file (nothing to map) or a system whose page size
    /// is not 4 KiB (the residency arithmetic assumes it). A file that shrinks later leaves
    /// pages past its end that are never resident, so never sent from.
    pub fn new(file: &File, len_bytes: u64) -> io::Result<Option<Mapping>> {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if len_bytes == 0 || page != PAGE_BYTES as libc::c_long {
            return Ok(None);
        }
        let len = usize::try_from(len_bytes).map_err(|_| io::Error::other("file too large"))?;
        // SAFETY: a fresh read-only mapping of an fd we own, at an address the kernel picks;
        // it aliases no Rust object. The mapping is never read or written in userspace (see
        // the module comment), so a file that shrinks later cannot fault the process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Mapping {
            view: MapView {
                addr: ptr as usize,
                len_bytes,
            },
        }))
    }

    pub fn view(&self) -> MapView {
        self.view
    }

    pub fn len_bytes(&self) -> u64 {
        self.view.len_bytes
    }
}

impl MapView {
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The address of `offset` in the mapping, for an iovec the kernel reads. `None` when
    /// `offset + len` is past the mapped length (the file grew after it was mapped).
    pub fn send_ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len_bytes {
            return None;
        }
        // In range: `offset < len_bytes`, which fit a usize when mapped.
        Some((self.addr + offset as usize) as *mut u8)
    }

    /// How many bytes from `offset` (at most `len`) are in the page cache now, counted in
    /// whole pages from the start: the first absent page ends the count. One `mincore` of
    /// at most `RESIDENCY_CHECK_PAGES_MAX` pages; `scratch` is its result vector.
    pub fn resident_prefix(&self, offset: u64, len: u64, scratch: &mut Vec<u8>) -> u64 {
        if offset >= self.len_bytes || len == 0 {
            return 0;
        }
        let len = len.min(self.len_bytes - offset);
        let first_page = offset / PAGE_BYTES;
        let end_page = (offset + len).div_ceil(PAGE_BYTES);
        let pages = ((end_page - first_page) as usize).min(RESIDENCY_CHECK_PAGES_MAX);
        scratch.clear();
        scratch.resize(pages, 0);
        let start = self.addr + (first_page * PAGE_BYTES) as usize;
        // SAFETY: [start, start + pages pages) lies within our live mapping (page aligned,
        // clipped to its length above); `scratch` has one writable byte per page. mincore
        // reads page tables and the page cache only; it touches no mapped byte.
        let rc = unsafe {
            libc::mincore(
                start as *mut libc::c_void,
                pages * PAGE_BYTES as usize,
                scratch.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        let resident_pages = scratch.iter().take_while(|b| *b & 1 == 1).count() as u64;
        let resident_end = (first_page + resident_pages) * PAGE_BYTES;
        resident_end.saturating_sub(offset).min(len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped; nothing in the process refers to
        // it any more (the open-file cache drops a mapping only with no batch holding it).
        unsafe {
            libc::munmap(
                self.view.addr as *mut libc::c_void,
                self.view.len_bytes as usize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn evict(file: &File) {
        // SAFETY: fsync + fadvise(DONTNEED) on an fd we own; no memory is passed.
        unsafe {
            libc::fsync(file.as_raw_fd());
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }

    #[test]
    fn residency_follows_the_page_cache_and_stops_at_the_first_absent_page() {
        // Proves: a file just written is resident; after DONTNEED it is not (on filesystems
        // that honour it: tmpfs keeps everything resident, so that half is skipped there);
        // reading one page back makes exactly the prefix up to it resident.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 64 * 1024]).unwrap();
        drop(f);
        let file = File::open(&path).unwrap();
        let owner = Mapping::new(&file, file.metadata().unwrap().len())
            .unwrap()
            .unwrap();
        let map = owner.view();
        assert_eq!(map.len_bytes(), 64 * 1024);
        let mut scratch = Vec::new();
        assert_eq!(map.resident_prefix(0, 16384, &mut scratch), 16384);
        // Clipped to the file's end, and to what was asked.
        assert_eq!(map.resident_prefix(60 * 1024, 16384, &mut scratch), 4096);
        assert_eq!(map.resident_prefix(100, 50, &mut scratch), 50);
        assert_eq!(map.resident_prefix(64 * 1024, 10, &mut scratch), 0);
        evict(&file);
        if map.resident_prefix(0, 65536, &mut scratch) == 0 {
            // Page 1 back in cache, page 0 not: nothing resident from 0, a page from 4096.
            let mut byte = [0u8; 1];
            // SAFETY: pread into a 1-byte buffer we own.
            let n = unsafe { libc::pread(file.as_raw_fd(), byte.as_mut_ptr().cast(), 1, 4096 + 5) };
            assert_eq!(n, 1);
            // Readahead may bring in more after page 1, never page 0 (before the read).
            assert_eq!(map.resident_prefix(0, 8192, &mut scratch), 0);
            assert!(map.resident_prefix(4096, 4096, &mut scratch) == 4096);
        }
    }

    #[test]
    fn a_send_from_a_truncated_mapping_fails_with_efault_not_sigbus() {
        // Proves the safety claim of the module comment: once the file shrinks under the
        // mapping, a kernel copy from the vanished pages (here a send on a socket, as the
        // shard's SendMsg does) returns -EFAULT to the caller; the process gets no SIGBUS
        // (which would kill this test) because it never touches the mapping itself.
        use std::os::unix::net::UnixStream;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![3u8; 64 * 1024]).unwrap();
        let file = File::open(&path).unwrap();
        let owner = Mapping::new(&file, 64 * 1024).unwrap().unwrap();
        let view = owner.view();
        let (tx, mut rx) = UnixStream::pair().unwrap();
        let send = |offset: u64| {
            let ptr = view.send_ptr(offset, 4096).unwrap();
            // SAFETY: send(2) reads 4 KiB at `ptr` inside our live mapping, in the kernel;
            // we never dereference it.
            let n = unsafe { libc::send(tx.as_raw_fd(), ptr.cast(), 4096, libc::MSG_NOSIGNAL) };
            (n, io::Error::last_os_error().raw_os_error())
        };
        assert_eq!(send(32 * 1024).0, 4096, "resident pages send");
        let mut got = vec![0u8; 4096];
        std::io::Read::read_exact(&mut rx, &mut got).unwrap();
        assert!(got.iter().all(|b| *b == 3));
        // Another writer truncates the file to 8 KiB.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8 * 1024)
            .unwrap();
        let (n, errno) = send(32 * 1024);
        assert_eq!((n, errno), (-1, Some(libc::EFAULT)));
        // (mincore may still call the lost pages resident: the kernel may keep a large folio
        // it could not split. So the shard does not rely on residency here; it reports the
        // shrunk file when a send faults.)
        // What is left of the file still sends.
        assert_eq!(send(4096).0, 4096);
    }

    #[test]
    fn send_ptr_refuses_ranges_past_the_mapped_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        let owner = Mapping::new(&file, file.metadata().unwrap().len())
            .unwrap()
            .unwrap();
        let map = owner.view();
        assert!(map.send_ptr(0, 10_000).is_some());
        assert!(map.send_ptr(9_999, 1).is_some());
        assert!(map.send_ptr(9_999, 2).is_none());
        assert!(map.send_ptr(u64::MAX, 2).is_none());
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").unwrap();
        assert!(Mapping::new(&File::open(&empty).unwrap(), 0)
            .unwrap()
            .is_none());
    }
}
