//! Planning a batch: which of a peer's queued blocks go out next, and from where.
//!
//! Owns: the batch budget (`BatchBudget`, pure: blocks per batch, bytes read from disk per
//! batch, bytes of the send slot) and the layout of one batch into its send slot: for each
//! block, in queue order, whether it is sent from the hot-block cache, from the page cache
//! through a file mapping, or read (into a claimed cache entry or in place in the slot), the
//! 13-byte piece headers, the gather list of the send, and the reads to submit.
//! `submit.rs` turns a `Plan` into SQE chains.
//!
//! The budget rules are pure functions; `lay_out` reaches the shard only through what it is
//! lent (`Layout`: the open-file cache, the block cache, a fixed-file table that is the ring
//! in the shard and a fake in tests), so its tests run it on real files with no ring and
//! check the bytes a batch would send against the piece messages it must carry.
//!
//! Must never: exceed a budget (asserted when a block is taken), take a block out of order,
//! leave a file use or a cache claim held for a block that did not make the batch, or wait
//! on the disk (a block whose pages are not resident is read by io_uring, not faulted in).

use crate::catalog::CatalogTorrent;
use crate::config::{pipe_slots_of_file_splice, pipe_slots_of_pipe_write};
use crate::shard::block_cache::{BlockCache, BlockKey, Lookup, CACHE_BLOCK_LEN_BYTES};
use crate::shard::files::{AcquireError, FileCache, FileKey, FixedFileTable};
use crate::shard::health::{self, ShardHealth};
use crate::shard::peer::{Peer, Residency};
use crate::stats::ShardStats;
use crate::storage::extents::{map_range, Extent};
use crate::storage::mapping::RESIDENCY_CHECK_PAGES_MAX;
use crate::wire::message::{self, BlockRequest, PIECE_HEADER_LEN};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Registered buffer indices: the send pool, then the hot-block cache.
pub const POOL_BUF_INDEX: u16 = 0;
/// The cache's first registered buffer; a cache over 1 GiB takes several (see
/// `BlockCache::iovecs`).
pub const CACHE_BUF_INDEX_FIRST: u16 = 1;

/// What one batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct BatchBudget {
    pub blocks_max: usize,
    /// Bytes read from disk per batch (`send_batch_bytes_max`): a longer read chain only
    /// delays the send.
    pub read_bytes_max: usize,
    /// Bytes of the send slot (headers, and blocks read in place); in splice mode, the pipe's.
    pub slot_len: usize,
    /// Blocks may be sent from outside the slot (cache entries, file mappings), so a batch of
    /// those grows past the read budget, up to the slot's room for their headers.
    pub gather: bool,
    /// SQEs one linked chain may hold (`batch_chain_entries_max`; the ring is validated to
    /// hold one such chain beside everything else queued).
    pub chain_entries_max: usize,
    /// Splice mode: each read is a splice, with a pipe write before it, and the batch ends
    /// with a write and the socket splice.
    pub splice: bool,
    /// Splice mode: the pipe's slots (`F_GETPIPE_SZ` / 4 KiB). The kernel bounds a pipe by
    /// slots, not bytes: each header write and each page a file splice touches takes one,
    /// and a batch must fit before its socket splice drains the pipe.
    pub pipe_slots_max: usize,
    /// Files a batch may hold open (`batch_files_max`): no block is added to a batch that
    /// holds this many already, so a batch holds at most this plus one block's files, and
    /// stuck batches pin a bounded share of the shard's open files.
    pub files_max: usize,
}

/// Where a block's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Already in memory (a block cache hit, or resident pages of a file mapping): only its
    /// header goes in the slot; nothing is read.
    Resident,
    /// Read from disk into a cache entry claimed for it: counts against the read budget.
    ReadIntoCache,
    /// Read from disk in place in the slot, after its header.
    ReadInPlace,
}

/// What a batch holds so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchState {
    pub blocks: usize,
    pub read_bytes: usize,
    /// Bytes of the slot laid out (headers and in-place blocks), in stream order.
    pub slot_used: usize,
    /// Bytes the batch's send carries (headers and every block).
    pub send_len: usize,
    pub payload_bytes: u64,
}

impl BatchBudget {
    /// Room to consider one more block of `len` bytes at all: a free block place and room
    /// for its header, and (without a gather list) for its read.
    pub fn may_try(&self, s: &BatchState, len: u32) -> bool {
        s.blocks < self.blocks_max
            && s.slot_used + PIECE_HEADER_LEN <= self.slot_len
            && (self.gather || self.read_fits(s, len))
    }

    pub fn read_fits(&self, s: &BatchState, len: u32) -> bool {
        s.read_bytes + len as usize <= self.read_bytes_max
    }

    /// The block fits the batch when placed so.
    pub fn fits(&self, s: &BatchState, len: u32, placement: Placement) -> bool {
        let in_slot = PIECE_HEADER_LEN
            + match placement {
                Placement::ReadInPlace => len as usize,
                _ => 0,
            };
        self.may_try(s, len)
            && s.slot_used + in_slot <= self.slot_len
            && (placement == Placement::Resident || self.read_fits(s, len))
    }

    /// The chain that `reads` planned reads make fits one chain: in copy mode a read each
    /// (at most; adjacent ones merge) and the send, in splice mode a pipe write and a splice
    /// each, then the last write and the socket splice.
    pub fn chain_fits(&self, reads: usize) -> bool {
        let entries = if self.splice {
            2 * reads + 2
        } else {
            reads + 1
        };
        entries <= self.chain_entries_max
    }

    /// Takes a block that `fits`.
    pub fn take(&self, s: &mut BatchState, len: u32, placement: Placement) {
        assert!(
            self.fits(s, len, placement),
            "a block taken past the budget"
        );
        if placement != Placement::Resident {
            s.read_bytes += len as usize;
        }
        s.slot_used += PIECE_HEADER_LEN;
        if placement == Placement::ReadInPlace {
            s.slot_used += len as usize;
        }
        s.blocks += 1;
        s.send_len += PIECE_HEADER_LEN + len as usize;
        s.payload_bytes += u64::from(len);
        assert!(s.blocks <= self.blocks_max && s.slot_used <= self.slot_len);
        assert!(s.read_bytes <= self.read_bytes_max);
    }
}

/// A read or splice planned while laying out a batch, turned into SQEs afterwards.
#[derive(Clone, Copy)]
pub struct PlannedRead {
    pub fd: RawFd,
    /// The file's fixed-file slot, when it has one: reads name it instead of `fd` (splice
    /// never does: no table is registered in splice mode).
    pub fixed_slot: Option<u32>,
    pub file_offset: u64,
    /// Where the bytes go in the slot's stream (splice mode writes headers around them).
    pub slot_offset: u32,
    /// Where the read lands: in the slot, or in a cache entry.
    pub dest: *mut u8,
    /// The registered buffer `dest` lies in.
    pub buf_index: u16,
    pub len: u32,
    /// The torrent's file this reads (a failure is reported against it).
    pub file_index: u32,
}

/// Scratch vectors a shard reuses for every plan (no allocation per batch).
pub struct PlanScratch {
    pub reads: Vec<PlannedRead>,
    extents: Vec<Extent>,
    /// `mincore` result vector for page-cache residency checks.
    mincore: Vec<u8>,
}

impl Default for PlanScratch {
    fn default() -> PlanScratch {
        PlanScratch {
            reads: Vec::with_capacity(64),
            extents: Vec::with_capacity(8),
            mincore: Vec::with_capacity(RESIDENCY_CHECK_PAGES_MAX),
        }
    }
}

/// What laying out a batch needs of its shard, lent for the call. `T` is the ring's
/// fixed-file table (`Ring` in the shard; a fake in tests, which then run on real files).
pub struct Layout<'a, T: FixedFileTable> {
    pub files: &'a mut FileCache,
    pub ring: &'a mut T,
    /// None in splice mode (never built there: file bytes go through a pipe).
    pub cache: Option<&'a mut BlockCache>,
    pub stats: &'a mut ShardStats,
    pub health: &'a mut ShardHealth,
    pub scratch: &'a mut PlanScratch,
    /// The slot: its address (for the gather list and reads in place) and its bytes (for
    /// headers and pad zeros, written before any op names the slot).
    pub slot_base: *mut u8,
    pub slot_mem: &'a mut [u8],
    pub send_iovs: &'a mut [libc::iovec],
    pub cache_refs: &'a mut Vec<(u32, bool)>,
}

#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub budget: BatchBudget,
    pub direct_io: bool,
    pub piece_readahead: bool,
    pub page_cache_sends: bool,
    pub now: Instant,
}

/// A laid-out batch. Its reads are in `PlanScratch::reads`.
#[derive(Debug, Default)]
pub struct Plan {
    pub state: BatchState,
    pub cached_blocks: u16,
    pub mapped_blocks: u16,
    pub send_iov_count: usize,
    /// A content file could not be opened (the peer is closed when no block made it).
    pub disk_error: bool,
    /// The first block alone spans more files than one chain can read
    /// (`batch_chain_entries_max`), or than its pipe holds (splice): it cannot be served
    /// with this configuration.
    pub unservable: bool,
    /// Splice mode: the pipe slots the batch takes at most.
    pub pipe_slots: usize,
    /// (file, fd, file offset, length) of a readahead hint for the rest of a piece; the file
    /// is acquired and held until the hint completes.
    pub readahead: Option<(FileKey, RawFd, u64, u32)>,
}

/// Lays out the peer's queued blocks, from the front, into its batch until a budget is met.
/// Taken blocks leave the session's queue; their files are held in `peer.batch_files`.
pub fn lay_out<T: FixedFileTable>(
    l: Layout<'_, T>,
    opts: &PlanOptions,
    peer: &mut Peer,
    torrent: &CatalogTorrent,
) -> Plan {
    let budget = opts.budget;
    let (direct_io, piece_readahead, page_cache_sends, now) = (
        opts.direct_io,
        opts.piece_readahead,
        opts.page_cache_sends,
        opts.now,
    );
    let Layout {
        files,
        ring,
        mut cache,
        stats,
        health,
        scratch: sc,
        slot_base,
        slot_mem,
        send_iovs,
        cache_refs,
    } = l;
    sc.reads.clear();
    peer.batch_files.clear();
    peer.batch_request_times.clear();
    let mut plan = Plan::default();
    let mut st = BatchState::default();
    let mut pipe_slots = 0usize;
    // Files the batch holds, counted as changes of file along `batch_files` (a file the
    // batch comes back to counts again: an overestimate, never an underestimate).
    let (mut files_counted, mut files_held, mut last_file) = (0usize, 0usize, None);
    'blocks: while let Some(q) = peer.session.next_request() {
        let r = q.request;
        if !budget.may_try(&st, r.length) {
            break;
        }
        for k in &peer.batch_files[files_counted..] {
            if last_file != Some(*k) {
                files_held += 1;
                last_file = Some(*k);
            }
        }
        files_counted = peer.batch_files.len();
        if st.blocks > 0 && files_held >= budget.files_max {
            break;
        }
        // A claim may evict a block: only within the read budget.
        let read_fits = budget.read_fits(&st, r.length);
        let torrent_offset = u64::from(r.index) * torrent.piece_length + u64::from(r.begin);
        // (entry, claimed for this batch to fill) when the block goes through the cache.
        let mut cached: Option<(u32, bool)> = None;
        let block_key: BlockKey = (torrent.info_hash, r.index, r.begin);
        let (mut claimable, mut busy) = (false, false);
        if let Some(cache) = cache.as_deref_mut() {
            if is_cacheable_block(torrent, r) {
                match cache.lookup(&block_key) {
                    Lookup::Hit { entry, len } => {
                        debug_assert_eq!(len, r.length, "a cached block changed length");
                        cached = Some((entry, false));
                    }
                    Lookup::Miss => claimable = true,
                    Lookup::Busy => busy = true,
                }
            }
        }
        // Not in the block cache but in the page cache: sent from the file's mapping,
        // with no read and no claim (the page cache already holds it).
        let mut mapped: Option<(*mut u8, u32)> = None;
        if cached.is_none() && page_cache_sends {
            mapped = resident_block_ptr(
                files,
                ring,
                torrent,
                r,
                torrent_offset,
                &mut sc.extents,
                &mut sc.mincore,
                &mut peer.residency,
                now,
            );
            if let Some((_, file_index)) = mapped {
                // `resident_block_ptr` acquired the file: held until the send completes.
                peer.batch_files.push((torrent.info_hash, file_index));
            }
        }
        let mapped = mapped.map(|(ptr, _)| ptr);
        // Coalescing: another batch is reading this very block into the cache right now.
        // Rather than read the same bytes a second time, end this batch before it (nothing
        // is held for it): it stays first in the queue, and the next batch sends it from
        // the cache once that one read is done. As the first block of a batch it is read
        // in place instead, so a peer never waits on another's read.
        if busy && mapped.is_none() && st.blocks > 0 {
            break;
        }
        if claimable && mapped.is_none() && read_fits {
            // Claim only within the read budget: a claim may evict a block.
            if let Some(cache) = cache.as_deref_mut() {
                cached = cache.claim(block_key, r.length).map(|e| (e, true));
            }
        }
        let placement = match (cached, mapped) {
            (Some((_, false)), _) | (None, Some(_)) => Placement::Resident,
            (Some((_, true)), _) => Placement::ReadIntoCache,
            (None, None) => Placement::ReadInPlace,
        };
        if !budget.fits(&st, r.length, placement) {
            // A block to read, and the batch's read budget (or the slot) is full. (The
            // next batch looks this block up again, so its miss/busy counts twice: at
            // most once per batch.)
            // Only a block to read in place can end the batch here: nothing is held for it.
            assert!(
                cached.is_none() && mapped.is_none(),
                "a held block left the batch"
            );
            break;
        }
        let hit = placement == Placement::Resident;
        let reads_before = sc.reads.len();
        let files_before = peer.batch_files.len();
        let header_at = st.slot_used;
        let mut at = header_at + PIECE_HEADER_LEN;
        if !hit {
            // Read the block: into its claimed cache entry, or in place in the slot.
            let (dest, buf_index) = match (cached, cache.as_deref()) {
                (Some((entry, _)), Some(c)) => (
                    c.entry_ptr(entry),
                    CACHE_BUF_INDEX_FIRST + c.entry_region(entry) as u16,
                ),
                _ => (slot_base.wrapping_add(at), POOL_BUF_INDEX),
            };
            let mut dest_at = 0usize;
            sc.extents.clear();
            map_range(&torrent.files, torrent_offset, r.length, &mut sc.extents);
            for e in sc.extents.iter() {
                match *e {
                    Extent::Zero { len } => {
                        match (cached, cache.as_deref_mut()) {
                            (Some((entry, _)), Some(c)) => {
                                c.entry_mut(entry)[dest_at..dest_at + len as usize].fill(0)
                            }
                            _ => slot_mem[at + dest_at..at + dest_at + len as usize].fill(0),
                        }
                        dest_at += len as usize;
                    }
                    Extent::File {
                        file_index,
                        file_offset,
                        len,
                    } => {
                        let key: FileKey = (torrent.info_hash, file_index);
                        let path = &torrent.files[file_index as usize].path;
                        match files.acquire(key, path, ring) {
                            Ok(file) => {
                                peer.batch_files.push(key);
                                // O_DIRECT only into a cache entry, and only when file
                                // offset, length and address are all aligned.
                                let direct = match (cached, file.direct) {
                                    (Some(_), Some((dfd, align)))
                                        if file_offset.is_multiple_of(u64::from(align))
                                            && len.is_multiple_of(align)
                                            && dest_at.is_multiple_of(align as usize) =>
                                    {
                                        Some(dfd)
                                    }
                                    _ => None,
                                };
                                if let (Some(_), Some((_, align))) = (direct, file.direct) {
                                    debug_assert!(
                                        (dest as usize + dest_at).is_multiple_of(align as usize),
                                        "cache entries are page aligned"
                                    );
                                    stats.direct_reads += 1;
                                } else if direct_io {
                                    stats.direct_read_fallbacks += 1;
                                }
                                sc.reads.push(PlannedRead {
                                    fd: direct.unwrap_or(file.fd),
                                    fixed_slot: if direct.is_some() {
                                        None
                                    } else {
                                        file.fixed_slot
                                    },
                                    file_offset,
                                    slot_offset: (at + dest_at) as u32,
                                    dest: dest.wrapping_add(dest_at),
                                    buf_index,
                                    len,
                                    file_index,
                                });
                                dest_at += len as usize;
                            }
                            Err(err) => {
                                let claim = cached.map(|c| c.0);
                                abandon_block(
                                    files,
                                    peer,
                                    files_before,
                                    claim,
                                    cache.as_deref_mut(),
                                );
                                sc.reads.truncate(reads_before);
                                match err {
                                    AcquireError::Full => stats.open_files_limit_hit += 1,
                                    AcquireError::Open(e) => {
                                        tracing::warn!("cannot open {}: {e}", path.display());
                                        stats.disk_errors += 1;
                                        plan.disk_error = true;
                                        if health::is_content_fault(&e) {
                                            let why = format!("open failed: {e}");
                                            health.content_failed(
                                                torrent, file_index, why, now, stats,
                                            );
                                        }
                                    }
                                }
                                break 'blocks;
                            }
                        }
                    }
                }
            }
            debug_assert_eq!(dest_at, r.length as usize, "extents must cover the block");
            // Splice mode: the pipe slots this block's header write, splices and pad writes
            // take (an overestimate: writes may merge into the last slot).
            let block_pipe_slots = if budget.splice {
                1 + sc
                    .extents
                    .iter()
                    .map(|e| match *e {
                        Extent::File { len, .. } => pipe_slots_of_file_splice(len as usize),
                        Extent::Zero { len } => pipe_slots_of_pipe_write(len as usize),
                    })
                    .sum::<usize>()
            } else {
                0
            };
            if !budget.chain_fits(sc.reads.len())
                || pipe_slots + block_pipe_slots > budget.pipe_slots_max
            {
                // More reads than one chain holds: the batch ends before this block, and a
                // block that alone needs more cannot be served (the caller refuses it).
                let claim = cached.map(|c| c.0);
                abandon_block(files, peer, files_before, claim, cache.as_deref_mut());
                sc.reads.truncate(reads_before);
                plan.unservable = st.blocks == 0;
                break 'blocks;
            }
            pipe_slots += block_pipe_slots;
            if cached.is_none() {
                at += dest_at;
            }
            // The first block of a piece missed the cache: hint the rest of the piece
            // (its first file's part) to the kernel, once per peer at a time.
            if piece_readahead
                && r.begin == 0
                && plan.readahead.is_none()
                && peer.readahead_file.is_none()
            {
                if let Some((file_index, file_offset, len)) =
                    piece_rest_first_file(torrent, r, &mut sc.extents)
                {
                    let key: FileKey = (torrent.info_hash, file_index);
                    let path = &torrent.files[file_index as usize].path;
                    // A file that cannot be opened now is the block read's business.
                    if let Ok(file) = files.acquire(key, path, ring) {
                        plan.readahead = Some((key, file.fd, file_offset, len));
                    }
                }
            }
        }
        let header: &mut [u8; PIECE_HEADER_LEN] =
            match (&mut slot_mem[header_at..header_at + PIECE_HEADER_LEN]).try_into() {
                Ok(h) => h,
                Err(_) => unreachable!("header slice has the header's length"),
            };
        message::write_piece_header(header, r.index, r.begin, r.length);
        if budget.gather {
            // The gather list of the send: slot bytes (header, and the block when it is
            // read in place), then the cache entry or the file mapping it lives in.
            push_iov(
                send_iovs,
                &mut plan.send_iov_count,
                slot_base.wrapping_add(header_at),
                at - header_at,
            );
            if let (Some((entry, filling)), Some(c)) = (cached, cache.as_deref()) {
                push_iov(
                    send_iovs,
                    &mut plan.send_iov_count,
                    c.entry_ptr(entry),
                    r.length as usize,
                );
                cache_refs.push((entry, filling));
                plan.cached_blocks += 1;
            }
            if let Some(ptr) = mapped {
                push_iov(send_iovs, &mut plan.send_iov_count, ptr, r.length as usize);
                plan.mapped_blocks += 1;
            }
        }
        budget.take(&mut st, r.length, placement);
        assert_eq!(st.slot_used, at, "the slot holds what was laid out");
        peer.session.pop_request();
        peer.batch_request_times.push(q.received_at);
    }
    plan.state = st;
    plan.pipe_slots = pipe_slots;
    stats.page_cache_sends += u64::from(plan.mapped_blocks);
    plan
}

/// Gives back what a block that does not make the batch took: its file uses and its cache
/// claim (never filled: unmapped and released). The caller drops its planned reads.
fn abandon_block(
    files: &mut FileCache,
    peer: &mut Peer,
    files_before: usize,
    claim: Option<u32>,
    cache: Option<&mut BlockCache>,
) {
    for k in peer.batch_files.drain(files_before..) {
        files.release(&k);
    }
    if let (Some(entry), Some(c)) = (claim, cache) {
        c.fill_done(entry, false);
        c.release(entry);
    }
}

/// The first file extent (file index, offset in the file, length) of the rest of block
/// `r`'s piece after `r`: what a readahead hint covers. None when the block ends its piece
/// or the rest is all padding.
fn piece_rest_first_file(
    torrent: &CatalogTorrent,
    r: BlockRequest,
    extents: &mut Vec<Extent>,
) -> Option<(u32, u64, u32)> {
    let piece_len =
        crate::metainfo::torrent::piece_len(torrent.total_length, torrent.piece_length, r.index);
    let rest_begin = u64::from(r.begin) + u64::from(r.length);
    let rest_len = piece_len.checked_sub(rest_begin).filter(|n| *n > 0)?;
    let rest_at = u64::from(r.index) * torrent.piece_length + rest_begin;
    map_range(
        &torrent.files,
        rest_at,
        rest_len.min(u64::from(u32::MAX)) as u32,
        extents,
    );
    extents.iter().find_map(|e| match *e {
        Extent::File {
            file_index,
            file_offset,
            len,
        } => Some((file_index, file_offset, len)),
        Extent::Zero { .. } => None,
    })
}

/// Bytes of a piece one residency check looks at, from the block asked for on: peers fetch a
/// piece's blocks in order, so one `mincore` answers for the next requests too.
const RESIDENCY_WINDOW_BYTES: u64 = 256 * 1024;

/// How long a peer reuses a residency answer. Pages leave the page cache only under memory
/// pressure; an answer gone stale costs a synchronous fault in one send (latency, never
/// bytes), while re-asking costs a syscall per batch, which in open loop (one block per
/// batch) is one per request.
const RESIDENCY_FRESH_MICROS: u64 = 10_000;

/// `page_cache_sends`: where in its file's mapping block `r` can be sent from, when it lies
/// in one file whose pages for it are all in the page cache now. Returns the address and the
/// file's index with the file acquired (the caller holds it until the send completes), or
/// `None` with nothing held: the block is then read as usual.
///
/// `residency` is the peer's last check (file, resident byte range, when), reused while
/// younger than `RESIDENCY_FRESH_MICROS`: consecutive blocks of a piece cost one `mincore`
/// per `RESIDENCY_WINDOW_BYTES`, across batches too.
#[allow(clippy::too_many_arguments)]
fn resident_block_ptr(
    files: &mut FileCache,
    ring: &mut impl FixedFileTable,
    torrent: &CatalogTorrent,
    r: BlockRequest,
    torrent_offset: u64,
    extents: &mut Vec<Extent>,
    mincore_scratch: &mut Vec<u8>,
    residency: &mut Option<Residency>,
    now: Instant,
) -> Option<(*mut u8, u32)> {
    extents.clear();
    map_range(&torrent.files, torrent_offset, r.length, extents);
    let [Extent::File {
        file_index,
        file_offset,
        len,
    }] = extents[..]
    else {
        return None; // pad bytes, or a block across files: read it
    };
    debug_assert_eq!(len, r.length);
    let key: FileKey = (torrent.info_hash, file_index);
    let path = &torrent.files[file_index as usize].path;
    let file = files.acquire(key, path, ring).ok()?;
    let end = file_offset + u64::from(len);
    let known = residency.is_some_and(|r| {
        r.file == key
            && r.start <= file_offset
            && end <= r.end
            && now.duration_since(r.checked_at) < Duration::from_micros(RESIDENCY_FRESH_MICROS)
    });
    let ptr = file.map.and_then(|map| {
        let ptr = map.send_ptr(file_offset, u64::from(len))?;
        if !known {
            let piece_len = crate::metainfo::torrent::piece_len(
                torrent.total_length,
                torrent.piece_length,
                r.index,
            );
            let window = piece_len
                .saturating_sub(u64::from(r.begin))
                .min(RESIDENCY_WINDOW_BYTES)
                .max(u64::from(len));
            let n = map.resident_prefix(file_offset, window, mincore_scratch);
            *residency = Some(Residency {
                file: key,
                start: file_offset,
                end: file_offset + n,
                checked_at: now,
            });
            if n < u64::from(len) {
                return None;
            }
        }
        Some(ptr)
    });
    match ptr {
        Some(p) => Some((p, file_index)),
        None => {
            files.release(&key);
            None
        }
    }
}

/// Only whole standard blocks go through the cache: 16 KiB at a multiple of 16 KiB, or a
/// piece's shorter last block. Then (torrent, piece, offset) fixes the bytes exactly.
fn is_cacheable_block(torrent: &CatalogTorrent, r: BlockRequest) -> bool {
    let block = CACHE_BLOCK_LEN_BYTES as u64;
    if u64::from(r.begin) % block != 0 {
        return false;
    }
    let piece_len =
        crate::metainfo::torrent::piece_len(torrent.total_length, torrent.piece_length, r.index);
    u64::from(r.length) == block.min(piece_len.saturating_sub(u64::from(r.begin)))
}

/// Appends `len` bytes at `ptr` to a gather list, growing the last entry when they follow
/// it in memory (consecutive slot bytes become one iovec).
pub fn push_iov(iovs: &mut [libc::iovec], count: &mut usize, ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    if let Some(last) = count.checked_sub(1).map(|i| &mut iovs[i]) {
        if (last.iov_base as *mut u8).wrapping_add(last.iov_len) == ptr {
            last.iov_len += len;
            return;
        }
    }
    iovs[*count] = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    *count += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::BlockRequest;
    use proptest::prelude::*;

    fn placement() -> impl Strategy<Value = Placement> {
        prop_oneof![
            Just(Placement::Resident),
            Just(Placement::ReadIntoCache),
            Just(Placement::ReadInPlace),
        ]
    }

    #[test]
    fn a_batch_of_hits_grows_past_the_read_budget_but_not_past_the_slot() {
        // Proves: resident blocks cost only their header in the slot and nothing of the
        // read budget; the slot's room for headers still ends the batch.
        let b = BatchBudget {
            blocks_max: 1000,
            read_bytes_max: 16384,
            slot_len: 10 * PIECE_HEADER_LEN,
            gather: true,
            chain_entries_max: 128,
            splice: false,
            pipe_slots_max: usize::MAX,
            files_max: usize::MAX,
        };
        let mut s = BatchState::default();
        while b.fits(&s, 16384, Placement::Resident) {
            b.take(&mut s, 16384, Placement::Resident);
        }
        assert_eq!(s.blocks, 10);
        assert_eq!(s.read_bytes, 0);
        assert_eq!(s.send_len, 10 * (PIECE_HEADER_LEN + 16384));
        let mut s = BatchState::default();
        assert!(b.fits(&s, 16384, Placement::ReadIntoCache));
        b.take(&mut s, 16384, Placement::ReadIntoCache);
        assert!(
            !b.fits(&s, 1, Placement::ReadIntoCache),
            "read budget spent"
        );
        assert!(b.fits(&s, 1, Placement::Resident));
    }

    #[test]
    fn a_chain_holds_its_reads_and_the_send() {
        let b = |splice| BatchBudget {
            blocks_max: 64,
            read_bytes_max: 1 << 20,
            slot_len: 1 << 20,
            gather: false,
            chain_entries_max: 8,
            splice,
            pipe_slots_max: usize::MAX,
            files_max: usize::MAX,
        };
        assert!(b(false).chain_fits(7) && !b(false).chain_fits(8));
        assert!(b(true).chain_fits(3) && !b(true).chain_fits(4));
    }

    /// A torrent of real files (some BEP 47 pad files among them) under a temp dir.
    struct Content {
        _dir: tempfile::TempDir,
        torrent: std::sync::Arc<CatalogTorrent>,
        bytes: Vec<u8>,
    }

    const PIECE_LEN: u64 = 32 * 1024;

    fn content(sizes: &[(u32, bool)]) -> Content {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, mut bytes) = (Vec::new(), Vec::new());
        for (i, &(len, pad)) in sizes.iter().enumerate() {
            let data: Vec<u8> = if pad {
                vec![0; len as usize]
            } else {
                (0..len).map(|b| (b as usize * 31 + i * 7) as u8).collect()
            };
            let path = dir.path().join(format!("f{i}"));
            if !pad {
                std::fs::write(&path, &data).unwrap();
            }
            files.push(crate::storage::ContentFile {
                path: if pad { Default::default() } else { path },
                length: u64::from(len),
                offset: bytes.len() as u64,
                pad,
            });
            bytes.extend_from_slice(&data);
        }
        let total = bytes.len() as u64;
        let pieces = total.div_ceil(PIECE_LEN) as u32;
        let torrent = CatalogTorrent {
            piece_length: PIECE_LEN,
            total_length: total,
            num_pieces: pieces,
            files,
            have: vec![0xff; (pieces as usize).div_ceil(8)],
            info_len_bytes: 1,
            ..CatalogTorrent::fixture(5)
        };
        Content {
            _dir: dir,
            torrent: std::sync::Arc::new(torrent),
            bytes,
        }
    }

    /// The shard as a session sees it, with one torrent, for queueing requests.
    struct Env(
        std::sync::Arc<CatalogTorrent>,
        crate::shard::session::SessionLimits,
    );

    impl crate::shard::session::SessionEnv for Env {
        fn limits(&self) -> &crate::shard::session::SessionLimits {
            &self.1
        }
        fn peer_id(&self) -> [u8; 20] {
            [1; 20]
        }
        fn torrent(&self, _: &crate::metainfo::InfoHash) -> Option<std::sync::Arc<CatalogTorrent>> {
            Some(self.0.clone())
        }
        fn torrent_peers(&self, _: &crate::metainfo::InfoHash) -> usize {
            0
        }
        fn is_errored(&self, _: &crate::metainfo::InfoHash) -> bool {
            false
        }
        fn extras(&self, _: &crate::metainfo::InfoHash) -> Option<&crate::plane::TorrentExtras> {
            None
        }
    }

    /// No fixed-file table (`fixed_files` off): the cache never updates one.
    struct NoTable;
    impl FixedFileTable for NoTable {
        fn update(&mut self, _: u32, _: RawFd) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A peer of `c`'s torrent, unchoked, with `requests` queued.
    fn peer_with(c: &Content, requests: &[BlockRequest]) -> Peer {
        use crate::shard::session::{Session, SessionLimits};
        let limits = SessionLimits {
            block_len_max_bytes: 16384,
            request_queue_max: 1024,
            peers_per_torrent_max: 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
        };
        let env = Env(c.torrent.clone(), limits);
        let now = Instant::now();
        let mut s = Session::inbound("127.0.0.1".parse().unwrap(), now);
        let hs = crate::wire::handshake::Handshake::new([5; 20], [2; 20], false, true);
        let mut a = Vec::new();
        s.on_handshake(&hs, &env, &mut a).unwrap();
        assert!(s.unchoke());
        for r in requests {
            s.on_message(
                crate::wire::message::Message::Request(*r),
                &env,
                now,
                &mut a,
            )
            .unwrap();
        }
        assert_eq!(s.queue().len(), requests.len(), "every request queued");
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        Peer::new(fd, "127.0.0.1:1".parse().unwrap(), 0, s, 0)
    }

    /// The piece message of `r` as a correct seeder sends it.
    fn piece_message(c: &Content, r: BlockRequest) -> Vec<u8> {
        let mut m = vec![0u8; PIECE_HEADER_LEN];
        let header: &mut [u8; PIECE_HEADER_LEN] = (&mut m[..]).try_into().unwrap();
        message::write_piece_header(header, r.index, r.begin, r.length);
        let at = (u64::from(r.index) * PIECE_LEN + u64::from(r.begin)) as usize;
        m.extend_from_slice(&c.bytes[at..at + r.length as usize]);
        m
    }

    /// Every block request of `c`'s torrent (16 KiB, the last block of a piece shorter).
    fn all_blocks(c: &Content) -> Vec<BlockRequest> {
        let mut v = Vec::new();
        for index in 0..c.torrent.num_pieces {
            let len = crate::metainfo::torrent::piece_len(c.torrent.total_length, PIECE_LEN, index);
            let mut begin = 0;
            while u64::from(begin) < len {
                let length = (len - u64::from(begin)).min(16384) as u32;
                v.push(BlockRequest {
                    index,
                    begin,
                    length,
                });
                begin += length;
            }
        }
        v
    }

    /// Lays out one copy-mode batch of `peer` with `cache` (no page-cache sends, room for 8
    /// blocks); returns (blocks taken, reads planned, cache refs taken: (entry, filling)).
    fn plan_batch(
        c: &Content,
        peer: &mut Peer,
        files: &mut FileCache,
        cache: &mut BlockCache,
    ) -> (usize, usize, Vec<(u32, bool)>) {
        let blocks_max = 8;
        let slot_len = blocks_max * (PIECE_HEADER_LEN + 16384);
        let mut slot = vec![0u8; slot_len];
        let mut send_iovs = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            blocks_max * 2
        ];
        let mut cache_refs = Vec::new();
        let mut stats = ShardStats::new(0);
        let (tx, _rx) = crossbeam_channel::bounded(16);
        let mut health = ShardHealth::new(tx);
        let mut scratch = PlanScratch::default();
        let opts = PlanOptions {
            budget: BatchBudget {
                blocks_max,
                read_bytes_max: 1 << 20,
                slot_len,
                gather: true,
                chain_entries_max: 64,
                splice: false,
                pipe_slots_max: usize::MAX,
                files_max: 8,
            },
            direct_io: false,
            piece_readahead: false,
            page_cache_sends: false,
            now: Instant::now(),
        };
        let slot_base = slot.as_mut_ptr();
        let plan = lay_out(
            Layout {
                files,
                ring: &mut NoTable,
                cache: Some(cache),
                stats: &mut stats,
                health: &mut health,
                scratch: &mut scratch,
                slot_base,
                slot_mem: &mut slot,
                send_iovs: &mut send_iovs,
                cache_refs: &mut cache_refs,
            },
            &opts,
            peer,
            &c.torrent,
        );
        for k in peer.batch_files.drain(..) {
            files.release(&k);
        }
        (plan.state.blocks, scratch.reads.len(), cache_refs)
    }

    #[test]
    fn a_block_another_batch_is_reading_is_read_once_not_twice() {
        // Proves (coalescing in-flight reads): while peer A's batch fills block X into the
        // cache, peer B's batch [Y, X] takes Y and stops before X instead of reading X a
        // second time; X stays first in B's queue, and once A's read is done B's next batch
        // sends X from the cache with no read. A peer whose first block is X (C) still
        // reads it at once rather than wait on A.
        let c = content(&[(4 * PIECE_LEN as u32, false)]);
        let blocks = all_blocks(&c);
        let (x, y) = (blocks[0], blocks[3]);
        let mut files = FileCache::new(8, false, false, None);
        let mut cache = BlockCache::new(1 << 20, CACHE_BLOCK_LEN_BYTES).unwrap();
        let mut a = peer_with(&c, &[x]);
        let (taken, reads, a_refs) = plan_batch(&c, &mut a, &mut files, &mut cache);
        assert_eq!((taken, reads), (1, 1), "A reads X into the cache");
        assert!(a_refs[0].1, "A fills X");
        let mut b = peer_with(&c, &[y, x]);
        let (taken, reads, b_refs) = plan_batch(&c, &mut b, &mut files, &mut cache);
        assert_eq!((taken, reads), (1, 1), "B reads Y and leaves X to A's read");
        assert_eq!(b.session.next_request().map(|q| q.request), Some(x));
        let mut cpeer = peer_with(&c, &[x]);
        let (taken, reads, c_refs) = plan_batch(&c, &mut cpeer, &mut files, &mut cache);
        assert_eq!(
            (taken, reads, c_refs.len()),
            (1, 1, 0),
            "C reads X in place"
        );
        // A's read completes (bytes in the entry), its send lets go; B's fill too.
        for (entry, filling) in a_refs.into_iter().chain(b_refs) {
            if filling {
                cache.fill_done(entry, true);
            }
            cache.release(entry);
        }
        let (taken, reads, b_refs) = plan_batch(&c, &mut b, &mut files, &mut cache);
        assert_eq!(
            (taken, reads),
            (1, 0),
            "B sends X from the cache: no second read"
        );
        assert_eq!(b_refs.len(), 1);
        assert!(!b_refs[0].1, "a hit, not a fill");
        cache.release(b_refs[0].0);
        assert_eq!(cache.refs_held(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Proves, on real files with pad files, a block cache holding random blocks and
        /// page-cache sends on or off (or splice mode with a random pipe), for random
        /// budgets: when the planned reads are done (pread into their destinations) the
        /// batch's send (the slot, or its gather list) carries exactly the piece messages of
        /// the first requests of the queue, in order; those requests and no others leave the
        /// queue; no chain or pipe bound is passed; and every file use and cache reference
        /// the plan took can be given back.
        #[test]
        fn a_planned_batch_sends_the_queued_blocks_in_order(
            sizes in proptest::collection::vec((1u32..40_000, proptest::bool::weighted(0.15)), 1..12),
            picks in proptest::collection::vec(0usize..1000, 1..40),
            cached in proptest::collection::vec(proptest::bool::ANY, 64),
            page_cache_sends: bool,
            with_cache: bool,
            splice: bool,
            pipe_slots_max in 6usize..80,
            blocks_max in 1usize..24,
            read_kib in 16usize..256,
            chain_entries_max in 3usize..64,
            files_max in 1usize..8,
        ) {
            let c = content(&sizes);
            let blocks = all_blocks(&c);
            let queue: Vec<BlockRequest> = picks.iter().map(|i| blocks[i % blocks.len()]).collect();
            let mut peer = peer_with(&c, &queue);
            // Splice mode has neither a block cache nor page-cache sends.
            let (page_cache_sends, with_cache) = (page_cache_sends && !splice, with_cache && !splice);
            let mut files = FileCache::new(64, false, false, page_cache_sends.then_some(1 << 30));
            let mut cache = with_cache.then(|| BlockCache::new(1 << 20, CACHE_BLOCK_LEN_BYTES).unwrap());
            if let Some(bc) = cache.as_mut() {
                // Some whole standard blocks are in the cache already, with their bytes.
                for (b, hit) in blocks.iter().zip(cached.iter()) {
                    if *hit && is_cacheable_block(&c.torrent, *b) {
                        if let Some(e) = bc.claim((c.torrent.info_hash, b.index, b.begin), b.length) {
                            bc.entry_mut(e)[..b.length as usize].copy_from_slice(&piece_message(&c, *b)[PIECE_HEADER_LEN..]);
                            bc.fill_done(e, true);
                            bc.release(e);
                        }
                    }
                }
            }
            let gather = cache.is_some() || page_cache_sends;
            let slot_len = blocks_max * (PIECE_HEADER_LEN + 16384);
            let mut slot = vec![0u8; slot_len];
            let mut send_iovs = vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; blocks_max * 2];
            let mut cache_refs = Vec::new();
            let mut stats = ShardStats::new(0);
            let (tx, _rx) = crossbeam_channel::bounded(16);
            let mut health = ShardHealth::new(tx);
            let mut scratch = PlanScratch::default();
            let opts = PlanOptions {
                budget: BatchBudget {
                    blocks_max,
                    read_bytes_max: read_kib * 1024,
                    slot_len,
                    gather,
                    chain_entries_max,
                    splice,
                    pipe_slots_max: if splice { pipe_slots_max } else { usize::MAX },
                    files_max,
                },
                direct_io: false,
                piece_readahead: true,
                page_cache_sends,
                now: Instant::now(),
            };
            let slot_base = slot.as_mut_ptr();
            let plan = lay_out(
                Layout {
                    files: &mut files,
                    ring: &mut NoTable,
                    cache: cache.as_mut(),
                    stats: &mut stats,
                    health: &mut health,
                    scratch: &mut scratch,
                    slot_base,
                    slot_mem: &mut slot,
                    send_iovs: &mut send_iovs,
                    cache_refs: &mut cache_refs,
                },
                &opts,
                &mut peer,
                &c.torrent,
            );
            let taken = plan.state.blocks;
            prop_assert!(!plan.disk_error);
            prop_assert_eq!(peer.session.queue().len(), queue.len() - taken, "taken from the front");
            prop_assert_eq!(peer.session.next_request().map(|q| q.request), queue.get(taken).copied());
            if taken == 0 {
                // Only a chain bound too small for one block, or a first block over budget.
                prop_assert!(plan.unservable || !opts.budget.may_try(&BatchState::default(), queue[0].length) || read_kib * 1024 < queue[0].length as usize);
                return Ok(());
            }
            for rd in scratch.reads.iter() {
                // SAFETY: `dest` points into `slot` or a cache entry this test owns, with
                // room for `len` bytes (the plan laid them out there); both live to the end.
                let n = unsafe { libc::pread(rd.fd, rd.dest.cast(), rd.len as usize, rd.file_offset as i64) };
                prop_assert_eq!(n, rd.len as isize);
            }
            let sent: Vec<u8> = if gather {
                let mut v = Vec::new();
                for iov in &send_iovs[..plan.send_iov_count] {
                    // SAFETY: the gather list names bytes of `slot`, of cache entries and of
                    // file mappings whose uses the plan holds; all alive here.
                    v.extend_from_slice(unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) });
                }
                v
            } else {
                slot[..plan.state.slot_used].to_vec()
            };
            let want: Vec<u8> = queue[..taken].iter().flat_map(|r| piece_message(&c, *r)).collect();
            prop_assert_eq!(sent.len(), plan.state.send_len);
            prop_assert!(sent == want, "the batch's bytes differ from the piece messages");
            prop_assert!(opts.budget.chain_fits(scratch.reads.len()));
            prop_assert!(plan.pipe_slots <= opts.budget.pipe_slots_max);
            // The file bound: every block but the last was added while the batch held
            // fewer than `files_max` files, so without the last block's files it is below.
            let last = queue[taken - 1];
            let mut last_block_files = Vec::new();
            map_range(&c.torrent.files, u64::from(last.index) * c.torrent.piece_length + u64::from(last.begin), last.length, &mut last_block_files);
            let changes = peer.batch_files.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!peer.batch_files.is_empty());
            prop_assert!(changes <= files_max + last_block_files.len(), "{} file changes, bound {}", changes, files_max);
            for k in peer.batch_files.drain(..) {
                files.release(&k);
            }
            if let Some((key, _, _, _)) = plan.readahead {
                files.release(&key);
            }
            if let Some(bc) = cache.as_mut() {
                for (entry, filling) in cache_refs.drain(..) {
                    if filling {
                        bc.fill_done(entry, true);
                    }
                    bc.release(entry);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Proves, for random budgets and random queues of blocks with random placements,
        /// the loop `lay_out` runs (take from the front while `may_try` and `fits`): the
        /// blocks taken are a prefix of the queue, in order; no budget is exceeded; the
        /// counts add up; and the batch stops only at a block that does not fit.
        #[test]
        fn batches_take_a_prefix_and_never_pass_a_budget(
            blocks_max in 1usize..40,
            read_bytes_max in 0usize..300_000,
            slot_len in 0usize..300_000,
            gather: bool,
            queue in proptest::collection::vec((1u32..=16384, placement()), 0..80),
        ) {
            let b = BatchBudget { blocks_max, read_bytes_max, slot_len, gather, chain_entries_max: 128, splice: false, pipe_slots_max: usize::MAX, files_max: usize::MAX };
            let mut s = BatchState::default();
            let mut taken = 0;
            for &(len, p) in queue.iter() {
                if !b.may_try(&s, len) || !b.fits(&s, len, p) {
                    break;
                }
                b.take(&mut s, len, p);
                taken += 1;
            }
            let prefix = &queue[..taken];
            prop_assert_eq!(s.blocks, taken);
            prop_assert!(s.blocks <= blocks_max);
            prop_assert!(s.read_bytes <= read_bytes_max);
            prop_assert!(s.slot_used <= slot_len);
            let read: usize = prefix.iter().filter(|q| q.1 != Placement::Resident).map(|q| q.0 as usize).sum();
            let in_slot: usize = prefix.iter().map(|q| PIECE_HEADER_LEN + if q.1 == Placement::ReadInPlace { q.0 as usize } else { 0 }).sum();
            let payload: u64 = prefix.iter().map(|q| u64::from(q.0)).sum();
            prop_assert_eq!(s.read_bytes, read);
            prop_assert_eq!(s.slot_used, in_slot);
            prop_assert_eq!(s.payload_bytes, payload);
            prop_assert_eq!(s.send_len, taken * PIECE_HEADER_LEN + payload as usize);
            if let Some(&(len, p)) = queue.get(taken) {
                prop_assert!(!b.fits(&s, len, p), "stopped before a block that fits");
            }
        }
    }
}
