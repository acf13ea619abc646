//! Submitting a planned batch, and the send slots it lives in.
//!
//! Owns: `SendSlots`: the send buffer pool, the hot-block cache, and per slot the arrays the
//! kernel reads while a batch is in flight (read iovecs, the send's gather list and msghdr),
//! the zerocopy notifications still owed and the request times they will close; and the
//! translation of a `Plan` into one linked SQE chain per serve mode (copy/zerocopy: reads,
//! then one Send/SendMsg/SendZc; splice: pipe writes and splices, then one socket splice),
//! with the continuation of a short send.
//!
//! Slot lifecycle (`ring::buffers`): Free -> Filling (laid out, chain built) -> in flight ->
//! Free at the send's completion, or AwaitingNotif -> Free at the last zerocopy notification.
//! Must never: rewrite a slot's arrays while the kernel may read them (only while the slot is
//! Filling, or between the sends of its batch), or free a slot a notification is owed for.

use crate::config::{EngineConfig, ServeMode};
use crate::ring::buffers::{BufferPool, SlotState};
use crate::ring::token::{OpKind, Token};
use crate::ring::{Completion, Ring, IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE};
use crate::shard::block_cache::BlockCache;
use crate::shard::conn::make_pipe;
use crate::shard::files::FileCache;
use crate::shard::health::{self, ShardHealth};
use crate::shard::peer::Phase;
use crate::shard::peer::{Batch, GatherSend, Peer};
use crate::shard::plan::{self, BatchBudget, Layout, Plan, PlanOptions, PlanScratch, PlannedRead};
use crate::shard::transport;
use crate::stats::CloseReason;
use crate::stats::ShardStats;
use crate::wire::message::PIECE_HEADER_LEN;
use io_uring::{opcode, squeue, types};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// Builds an SQE naming a planned read's file by its fixed-file slot when it has one, else
/// by its fd (`types::Fixed` and `types::Fd` are distinct types, hence a macro).
macro_rules! with_file {
    ($read:expr, |$f:ident| $build:expr) => {
        match $read.fixed_slot {
            Some(slot) => {
                let $f = types::Fixed(slot);
                $build
            }
            None => {
                let $f = types::Fd($read.fd);
                $build
            }
        }
    };
}

pub struct SendSlots {
    pub pool: BufferPool,
    /// Hot-block cache (None when `block_cache_bytes_per_shard` is 0, or in splice mode).
    pub cache: Option<BlockCache>,
    /// The pool (and cache) are registered: reads and sends name them by buffer index.
    pub fixed_buffers: bool,
    readv_fixed: bool,
    vectored_reads: bool,
    mode: ServeMode,
    /// zerocopy notifications still owed per slot.
    notifs: Vec<u16>,
    /// Per slot: the iovecs a vectored read of that slot uses. Sized once; a slot's array is
    /// only rewritten while the slot is Filling and before its ops are submitted, and the
    /// kernel reads it only while they are in flight.
    read_iovecs: Vec<Vec<libc::iovec>>,
    /// zerocopy mode: request times of the batch a slot carries, until its notification.
    request_times: Vec<Vec<Instant>>,
    /// Per slot: the cache entries its batch names (entry, claimed to be filled by it); the
    /// references are given back when the slot is released (after the send, or its
    /// zerocopy notification).
    pub cache_refs: Vec<Vec<(u32, bool)>>,
    /// Per slot: the gather list and message header of a batch sent with SendMsg. Sized
    /// once; rewritten only while the slot is Filling or between the sends of its batch.
    pub send_iovecs: Vec<Vec<libc::iovec>>,
    msghdrs: Vec<libc::msghdr>,
    chain: Vec<squeue::Entry>,
    /// Peers' per-batch lists while no batch of theirs is in flight (`spare`).
    pub spare_lists: crate::shard::spare::SpareLists,
    /// Unservable blocks are logged once per shard (then only counted).
    warned_unservable: bool,
    /// Slots held per source and per network (`admission::group_keys`; the
    /// first field says which), for `send_slots_per_ip_max` and `send_slots_per_prefix_max`.
    /// A group holding none has no entry: at most two entries per slot.
    held_by: std::collections::HashMap<(bool, bool, u128), u16>,
}

impl SendSlots {
    pub fn new(
        pool: BufferPool,
        cache: Option<BlockCache>,
        fixed_buffers: bool,
        readv_fixed: bool,
        config: &EngineConfig,
    ) -> SendSlots {
        let slots = pool.slots();
        let blocks_max = config.blocks_per_batch_max();
        SendSlots {
            pool,
            cache,
            fixed_buffers,
            readv_fixed,
            vectored_reads: config.vectored_reads,
            mode: config.serve_mode,
            notifs: vec![0; slots],
            read_iovecs: (0..slots).map(|_| empty_iovecs(blocks_max * 2)).collect(),
            request_times: (0..slots).map(|_| Vec::with_capacity(blocks_max)).collect(),
            cache_refs: (0..slots).map(|_| Vec::with_capacity(blocks_max)).collect(),
            send_iovecs: (0..slots).map(|_| empty_iovecs(blocks_max * 2)).collect(),
            // SAFETY: msghdr is plain data; all-zero is its empty value.
            msghdrs: (0..slots)
                .map(|_| unsafe { std::mem::zeroed::<libc::msghdr>() })
                .collect(),
            chain: Vec::with_capacity(128),
            spare_lists: crate::shard::spare::SpareLists::new(slots),
            warned_unservable: false,
            held_by: std::collections::HashMap::new(),
        }
    }

    /// Turns a laid-out batch in `slot` into one linked SQE chain (the send last), records
    /// the batch on the peer and pushes the chain. The peer's ops count covers every SQE.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        ring: &mut Ring,
        peer: &mut Peer,
        idx: u32,
        slot: u16,
        plan: &Plan,
        reads: &[PlannedRead],
        use_zc: bool,
        now: Instant,
    ) -> std::io::Result<()> {
        debug_assert!(plan.state.blocks > 0, "an empty batch is never submitted");
        let base = self.pool.slot_ptr(slot);
        let gathered_blocks = plan.cached_blocks + plan.mapped_blocks;
        let sock = peer.fd.as_raw_fd();
        let generation = peer.generation;
        let mut chain = std::mem::take(&mut self.chain);
        chain.clear();
        peer.chain_expect.clear();
        peer.chain_files.clear();
        let link = squeue::Flags::IO_LINK;
        // Splice mode made the pipe before the batch was laid out (never for encrypted
        // peers: they are served by copy).
        let pipe = (peer.pipe.as_ref()).map(|(r, w, _)| (r.as_raw_fd(), w.as_raw_fd()));
        if let (ServeMode::Splice, Some((pipe_r, pipe_w))) = (self.mode, pipe) {
            // Everything goes through the peer's pipe in stream order: headers and pad zeros
            // are written into it from the slot (13 bytes per block), block bytes are spliced
            // from the file, then ONE splice moves the whole batch to the socket. A short
            // final splice leaves the rest in the pipe, in order, for the next splice.
            let mut cursor = 0u32;
            let write_into_pipe =
                |chain: &mut Vec<squeue::Entry>, expect: &mut Vec<u32>, from: u32, to: u32| {
                    if to > from {
                        let seq = expect.len() as u16;
                        expect.push(to - from);
                        chain.push(
                            opcode::Write::new(
                                types::Fd(pipe_w),
                                base.wrapping_add(from as usize),
                                to - from,
                            )
                            .offset(u64::MAX)
                            .build()
                            .user_data(Token::new(OpKind::Splice, seq, idx, generation).encode()),
                        );
                    }
                };
            for rd in reads.iter() {
                write_into_pipe(&mut chain, &mut peer.chain_expect, cursor, rd.slot_offset);
                let seq = peer.chain_expect.len() as u16;
                peer.chain_expect.push(rd.len);
                peer.chain_files.push((seq, rd.file_index));
                chain.push(
                    opcode::Splice::new(
                        types::Fd(rd.fd),
                        rd.file_offset as i64,
                        types::Fd(pipe_w),
                        -1,
                        rd.len,
                    )
                    .build()
                    .user_data(Token::new(OpKind::Splice, seq, idx, generation).encode()),
                );
                cursor = rd.slot_offset + rd.len;
            }
            write_into_pipe(
                &mut chain,
                &mut peer.chain_expect,
                cursor,
                plan.state.slot_used as u32,
            );
            chain.push(
                opcode::Splice::new(
                    types::Fd(pipe_r),
                    -1,
                    types::Fd(sock),
                    -1,
                    plan.state.slot_used as u32,
                )
                .build()
                .user_data(Token::new(OpKind::SendBatch, slot, idx, generation).encode()),
            );
        } else {
            // Consecutive blocks of one piece are contiguous in the file but separated by
            // 13-byte headers in the slot (or live in separate cache entries): one vectored
            // read fills them all (one op and one page-cache walk instead of one per block).
            let iovecs = &mut self.read_iovecs[slot as usize];
            let iov_cap = iovecs.len();
            let mut iov_used = 0usize;
            let mut i = 0usize;
            while i < reads.len() {
                let mut j = i + 1;
                while j < reads.len()
                    && self.vectored_reads
                    // One fd is one cache entry, so one fixed slot too.
                    && reads[j].fd == reads[j - 1].fd
                    && reads[j].buf_index == reads[j - 1].buf_index
                    && reads[j].file_offset
                        == reads[j - 1].file_offset + u64::from(reads[j - 1].len)
                    && iov_used + (j + 1 - i) <= iov_cap
                {
                    j += 1;
                }
                let run = &reads[i..j];
                let total: u32 = run.iter().map(|r| r.len).sum();
                let seq = peer.chain_expect.len() as u16;
                peer.chain_expect.push(total);
                peer.chain_files.push((seq, reads[i].file_index));
                let first = run[0];
                debug_assert!(run.iter().all(|r| r.fixed_slot == first.fixed_slot));
                let sqe = if run.len() == 1 {
                    if self.fixed_buffers {
                        with_file!(first, |f| opcode::ReadFixed::new(
                            f,
                            first.dest,
                            first.len,
                            first.buf_index,
                        )
                        .offset(first.file_offset)
                        .build())
                    } else {
                        with_file!(first, |f| opcode::Read::new(f, first.dest, first.len)
                            .offset(first.file_offset)
                            .build())
                    }
                } else {
                    let vecs = &mut iovecs[iov_used..iov_used + run.len()];
                    for (v, r) in vecs.iter_mut().zip(run) {
                        *v = libc::iovec {
                            iov_base: r.dest.cast(),
                            iov_len: r.len as usize,
                        };
                    }
                    let ptr = vecs.as_ptr();
                    iov_used += run.len();
                    if self.fixed_buffers && self.readv_fixed {
                        with_file!(first, |f| opcode::ReadvFixed::new(
                            f,
                            ptr,
                            run.len() as u32,
                            first.buf_index,
                        )
                        .offset(first.file_offset)
                        .build())
                    } else {
                        with_file!(first, |f| opcode::Readv::new(f, ptr, run.len() as u32)
                            .offset(first.file_offset)
                            .build())
                    }
                };
                chain.push(
                    sqe.user_data(Token::new(OpKind::ReadBlock, seq, idx, generation).encode()),
                );
                i = j;
            }
            let token = Token::new(OpKind::SendBatch, slot, idx, generation);
            if gathered_blocks > 0 {
                let msg = &mut self.msghdrs[slot as usize];
                chain.push(batch_sendmsg_sqe(
                    sock,
                    msg,
                    &mut self.send_iovecs[slot as usize][..plan.send_iov_count],
                    use_zc,
                    token,
                ));
            } else {
                debug_assert_eq!(plan.state.send_len, plan.state.slot_used);
                chain.push(batch_send_sqe(
                    sock,
                    base,
                    plan.state.slot_used as u32,
                    use_zc,
                    self.fixed_buffers,
                    token,
                ));
            }
        }
        // Link every op to the next; the last (the batch's send) ends the chain. `flags` ORs,
        // so entries are built unlinked and linked here.
        if peer.crypto.is_rc4() && !transport::hold_send(peer, &mut chain) {
            let sealed = &mut self.pool.slot_mut(slot)[..plan.state.slot_used];
            transport::seal_now(peer, sealed);
        }
        let last = chain.len().saturating_sub(1);
        for e in chain[..last].iter_mut() {
            *e = e.clone().flags(link);
        }
        let held = u32::from(peer.crypto.held_send.is_some());
        peer.ops_inflight += chain.len() as u32 + held;
        peer.session.on_send_started(now);
        peer.send_progress_at = now;
        if use_zc {
            // The notification may come after the peer's next batch reused its own vectors:
            // keep this batch's request times with the slot.
            let times = &mut self.request_times[slot as usize];
            times.clear();
            times.extend_from_slice(&peer.batch_request_times);
        }
        peer.batch = Some(Batch {
            slot,
            len_bytes: plan.state.send_len as u32,
            sent_bytes: 0,
            payload_bytes: plan.state.payload_bytes,
            blocks: plan.state.blocks as u16,
            failed: false,
            submitted_at: now,
            zerocopy: use_zc,
            gather: (gathered_blocks > 0).then_some(GatherSend {
                iov_first: 0,
                iov_count: plan.send_iov_count as u16,
            }),
            page_cache: plan.mapped_blocks > 0,
        });
        let pushed = ring.push_chain(&chain);
        self.chain = chain;
        pushed
    }

    /// The rest of a short batch send (`sent` bytes of it went out so far, counted in the
    /// batch already): a splice of what is still in the pipe, a SendMsg of the rest of the
    /// gather list, or a Send of the rest of the slot.
    pub fn rest_of_send(
        &mut self,
        sock: RawFd,
        pipe_r: Option<RawFd>,
        batch: &mut Batch,
        token: Token,
        sent_now: usize,
    ) -> Option<squeue::Entry> {
        let slot = batch.slot;
        let rest_len = batch.len_bytes - batch.sent_bytes;
        if let (ServeMode::Splice, Some(pipe_r)) = (self.mode, pipe_r) {
            // Short splice: the rest is still in the pipe, in order.
            return Some(
                opcode::Splice::new(types::Fd(pipe_r), -1, types::Fd(sock), -1, rest_len)
                    .build()
                    .user_data(token.encode()),
            );
        }
        if let Some(gather) = batch.gather.as_mut() {
            // Short SendMsg: drop what went out from the front of the gather list.
            let iovs = &mut self.send_iovecs[slot as usize];
            let end = usize::from(gather.iov_first) + usize::from(gather.iov_count);
            let first = advance_iovecs(&mut iovs[usize::from(gather.iov_first)..end], sent_now);
            gather.iov_first += first as u16;
            gather.iov_count -= first as u16;
            let rest = &mut iovs[usize::from(gather.iov_first)..end];
            return Some(batch_sendmsg_sqe(
                sock,
                &mut self.msghdrs[slot as usize],
                rest,
                batch.zerocopy,
                token,
            ));
        }
        // Short send: send the rest of the slot, then continue.
        let rest_ptr = self
            .pool
            .slot_ptr(slot)
            .wrapping_add(batch.sent_bytes as usize);
        Some(batch_send_sqe(
            sock,
            rest_ptr,
            rest_len,
            batch.zerocopy,
            self.fixed_buffers,
            token,
        ))
    }

    /// The block cache's counters into the shard's stats.
    pub fn copy_counters(&self, stats: &mut ShardStats) {
        if let Some(cache) = &self.cache {
            let c = cache.counters;
            stats.block_cache_hits = c.hits;
            stats.block_cache_misses = c.misses;
            stats.block_cache_busy = c.busy;
            stats.block_cache_full = c.full;
            stats.block_cache_evictions = c.evictions;
            stats.block_cache_bytes_used = (cache.used_entries() * cache.entry_len_bytes()) as u64;
        }
    }

    /// What a shard with no peer and no op in flight must not still hold: a slot taken, a
    /// slot or cache reference counted to a group, a cache reference. One line per leak.
    pub fn leaks(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.pool.free_slots() != self.pool.slots() {
            out.push(format!(
                "send slots: {} of {} still taken",
                self.pool.slots() - self.pool.free_slots(),
                self.pool.slots()
            ));
        }
        if !self.held_by.is_empty() {
            out.push(format!(
                "send slots still counted to {} source/network groups",
                self.held_by.len()
            ));
        }
        let refs: usize = self.cache_refs.iter().map(Vec::len).sum();
        if refs > 0 {
            out.push(format!(
                "{refs} block cache references still named by slots"
            ));
        }
        if let Some(held) = self
            .cache
            .as_ref()
            .map(|c| c.refs_held())
            .filter(|n| *n > 0)
        {
            out.push(format!("{held} block cache references still held"));
        }
        out
    }

    /// Slots the peer's source (`network` false) or network (true) holds now.
    fn group_slots(&self, network: bool, (v6, bits): (bool, u128)) -> u16 {
        self.held_by.get(&(network, v6, bits)).copied().unwrap_or(0)
    }

    /// A batch of a peer of `source` in `network` took a slot (`held`) or gave it back.
    fn count_groups(&mut self, source: (bool, u128), network: (bool, u128), held: bool) {
        for key in [(false, source.0, source.1), (true, network.0, network.1)] {
            let n = self.held_by.entry(key).or_insert(0);
            if held {
                *n += 1;
            } else {
                debug_assert!(*n > 0, "a group gave back a slot it did not hold");
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.held_by.remove(&key);
                }
            }
        }
        debug_assert!(self.held_by.len() <= 2 * self.pool.slots());
    }

    /// zerocopy: a send of `slot` will be followed by a notification.
    pub fn notification_owed(&mut self, slot: u16) {
        self.notifs[slot as usize] += 1;
    }

    /// Every op of a batch's chain has completed: the cache entries it filled hold their
    /// block now (unless a read failed: then they are unmapped, never served), and the slot
    /// is free, or waits for its zerocopy notifications.
    pub fn finish(&mut self, batch: &Batch) {
        if let Some(cache) = self.cache.as_mut() {
            for &(entry, filled) in self.cache_refs[batch.slot as usize].iter() {
                if filled {
                    cache.fill_done(entry, !batch.failed);
                }
            }
        }
        if self.notifs[batch.slot as usize] > 0 {
            self.pool.await_notif(batch.slot);
        } else {
            self.release(batch.slot);
        }
    }

    /// The kernel is done with a slot (and with the cache entries its batch named).
    pub fn release(&mut self, slot: u16) {
        let refs = &mut self.cache_refs[slot as usize];
        if let Some(cache) = self.cache.as_mut() {
            for (entry, _) in refs.drain(..) {
                cache.release(entry);
            }
        }
        debug_assert!(refs.is_empty(), "cache references without a cache");
        self.pool.release(slot);
    }

    /// A zerocopy notification for `slot`. When it was the last one owed, the request
    /// latencies to the notification are recorded (when `histograms`) and the slot is freed
    /// if its batch has finished.
    pub fn on_notification(
        &mut self,
        slot: u16,
        now: Instant,
        histograms: bool,
        stats: &mut ShardStats,
    ) {
        let pending = &mut self.notifs[slot as usize];
        debug_assert!(*pending > 0);
        *pending = pending.saturating_sub(1);
        if *pending > 0 {
            return;
        }
        // Zerocopy: the kernel is done with the blocks only now. Request latency to the
        // notification, beside the one to the send completion.
        if histograms {
            for t in self.request_times[slot as usize].iter() {
                let ns = now.duration_since(*t).as_nanos() as u64;
                ShardStats::record_latency(&mut stats.zc_notification_latency_ns, ns);
            }
        }
        self.request_times[slot as usize].clear();
        if self.pool.state(slot) == SlotState::AwaitingNotif {
            self.release(slot);
        }
    }
}

/// A Send of the peer's control bytes not sent yet (all of them, or the rest after a short
/// send). Only one send is in flight per peer, so the bytes stay put until it completes.
pub fn control_send_sqe(peer: &Peer, idx: u32) -> squeue::Entry {
    let rest = &peer.control_sending[peer.control_sent..];
    opcode::Send::new(
        types::Fd(peer.fd.as_raw_fd()),
        rest.as_ptr(),
        rest.len() as u32,
    )
    .flags(libc::MSG_NOSIGNAL)
    .build()
    .user_data(Token::new(OpKind::SendControl, 0, idx, peer.generation).encode())
}

/// What a batch send's completion leaves to the shard.
pub enum BatchSent {
    /// Part went out: push this SQE for the rest.
    More(squeue::Entry),
    /// All of it went out: the peer may send again (pump it).
    Done,
    /// It failed (or the peer is closing): close it for this reason (None: it is closing).
    Failed(Option<CloseReason>),
}

/// What starting a batch leaves to the shard.
pub enum BatchStart {
    /// Submitted (or nothing to do).
    Submitted,
    /// No free slot, or every file the next block needs is busy: retry when one frees.
    Wait,
    /// The peer cannot be served: close it.
    Close(CloseReason),
    /// The next block spans more files than one chain can read: refuse that request.
    Unservable,
}

/// The parts of a shard that serving a batch touches, lent for one call.
pub struct SendParts<'a> {
    pub ring: &'a mut Ring,
    pub slots: &'a mut SendSlots,
    pub scratch: &'a mut PlanScratch,
    pub files: &'a mut FileCache,
    pub stats: &'a mut ShardStats,
    pub health: &'a mut ShardHealth,
    pub config: &'a EngineConfig,
    pub now: Instant,
}

impl SendParts<'_> {
    /// Plans a batch of the peer's queued blocks into a free send slot (`plan.rs`) and
    /// submits its chain of reads and the send; a readahead hint may follow.
    pub fn start_batch(&mut self, peer: &mut Peer, idx: u32) -> BatchStart {
        let (source, network) = peer.groups();
        if usize::from(self.slots.group_slots(false, source)) >= self.config.send_slots_per_ip_max {
            self.stats.send_slots_per_ip_limited += 1;
            return BatchStart::Wait;
        }
        if usize::from(self.slots.group_slots(true, network))
            >= self.config.send_slots_per_prefix_max
        {
            self.stats.send_slots_per_prefix_limited += 1;
            return BatchStart::Wait;
        }
        let Some(slot) = self.slots.pool.acquire() else {
            self.stats.buffer_pool_exhausted += 1;
            return BatchStart::Wait;
        };
        debug_assert!(self.slots.cache_refs[slot as usize].is_empty());
        self.slots.spare_lists.lend(peer);
        // Encrypted peers are served by copy into their own slot (`transport`).
        let encrypted = peer.crypto.is_rc4();
        let mode = if encrypted {
            ServeMode::Copy
        } else {
            self.config.serve_mode
        };
        let direct_io = self.stats.direct_io;
        let now = self.now;
        let Some(torrent) = peer.session.torrent().cloned() else {
            self.slots.pool.release(slot);
            return BatchStart::Submitted;
        };
        let use_zc = mode == ServeMode::Zerocopy && !peer.zerocopy_disabled;
        let mut slot_len = self.slots.pool.slot_len_bytes();
        let mut pipe_slots_max = usize::MAX;
        if mode == ServeMode::Splice {
            if peer.pipe.is_none() {
                match make_pipe(self.config.splice_pipe_bytes_requested()) {
                    Ok(p) => peer.pipe = Some(p),
                    Err(e) => {
                        tracing::warn!("cannot create a pipe for splice: {e}");
                        self.slots.pool.release(slot);
                        return BatchStart::Close(CloseReason::SocketError);
                    }
                }
            }
            // A batch never holds more than its pipe can, in bytes and in slots.
            let capacity = peer.pipe.as_ref().map(|p| p.2).unwrap_or(0);
            slot_len = slot_len.min(capacity);
            pipe_slots_max = crate::config::pipe_slots(capacity);
        }
        let page_cache_sends = self.stats.page_cache_sends_on && !encrypted;
        let opts = PlanOptions {
            budget: BatchBudget {
                blocks_max: self.config.blocks_per_batch_max(),
                read_bytes_max: self.config.send_batch_bytes_max as usize,
                slot_len,
                gather: (self.slots.cache.is_some() && !encrypted) || page_cache_sends,
                chain_entries_max: self.config.batch_chain_entries_max as usize,
                splice: mode == ServeMode::Splice,
                pipe_slots_max,
                files_max: self.config.batch_files_max,
            },
            direct_io,
            piece_readahead: self.config.piece_readahead && !direct_io,
            page_cache_sends,
            now,
        };
        let slots = &mut *self.slots;
        let slot_base = slots.pool.slot_ptr(slot);
        let plan = plan::lay_out(
            Layout {
                files: self.files,
                ring: self.ring,
                cache: slots.cache.as_mut().filter(|_| !encrypted),
                stats: self.stats,
                health: self.health,
                scratch: self.scratch,
                slot_base,
                slot_mem: slots.pool.slot_mut(slot),
                send_iovs: &mut slots.send_iovecs[slot as usize],
                cache_refs: &mut slots.cache_refs[slot as usize],
            },
            &opts,
            peer,
            &torrent,
        );
        if plan.state.blocks == 0 {
            debug_assert!(self.slots.cache_refs[slot as usize].is_empty());
            self.slots.pool.release(slot);
            let too_big = peer
                .session
                .next_request()
                .is_some_and(|q| PIECE_HEADER_LEN + q.request.length as usize > slot_len);
            if too_big {
                // Only a pipe smaller than one block (F_SETPIPE_SZ refused) gets here.
                tracing::warn!("a block does not fit this peer's splice pipe; closing it");
                return BatchStart::Close(CloseReason::SocketError);
            } else if plan.disk_error {
                return BatchStart::Close(CloseReason::DiskError);
            } else if plan.unservable {
                if !self.slots.warned_unservable {
                    self.slots.warned_unservable = true;
                    tracing::warn!(
                        "a requested block spans more files than one io_uring chain can read \
                         (batch_chain_entries_max = {}); such requests are refused. Raise \
                         batch_chain_entries_max (and ring_entries) to serve them",
                        self.config.batch_chain_entries_max
                    );
                }
                return BatchStart::Unservable;
            }
            // Every cached file is busy: retry when a batch completes.
            return BatchStart::Wait;
        }
        let generation = peer.generation;
        let reads = &self.scratch.reads;
        self.slots.count_groups(source, network, true);
        let pushed = self
            .slots
            .submit(self.ring, peer, idx, slot, &plan, reads, use_zc, now);
        if let Err(e) = pushed {
            tracing::error!("io_uring push failed: {e}");
        }
        if let Some((key, fd, file_offset, len)) = plan.readahead {
            let sqe =
                opcode::Fadvise::new(types::Fd(fd), len as libc::off_t, libc::POSIX_FADV_WILLNEED)
                    .offset(file_offset)
                    .build()
                    .user_data(Token::new(OpKind::Readahead, 0, idx, generation).encode());
            peer.readahead_file = Some(key);
            peer.ops_inflight += 1;
            self.stats.readaheads += 1;
            if let Err(e) = self.ring.push(&sqe) {
                tracing::error!("io_uring push failed: {e}");
            }
        }
        BatchStart::Submitted
    }

    /// A read (copy/zerocopy) or an intermediate splice/write (splice mode) of a chain
    /// completed: a failed or short one marks the batch failed and reports the file.
    pub fn on_chain_step(&mut self, peer: &mut Peer, c: &Completion, seq: u16) {
        peer.ops_inflight -= 1;
        peer.send_progress_at = self.now;
        let expected = peer.chain_expect.get(seq as usize).copied().unwrap_or(0);
        let Some(batch) = peer.batch.as_mut() else {
            return;
        };
        if c.result < 0 || c.result as u32 != expected {
            tracing::debug!(
                seq,
                result = c.result,
                expected,
                "chain step failed or short"
            );
            if c.result != -libc::ECANCELED && !batch.failed {
                self.stats.disk_errors += 1;
                let file = peer.chain_files.iter().find(|f| f.0 == seq).map(|f| f.1);
                if let (Some(t), Some(file)) = (peer.session.torrent(), file) {
                    let why = health::read_failure_reason(c.result, expected);
                    self.health
                        .content_failed(t, file, why, self.now, self.stats);
                }
            }
            batch.failed = true;
        } else if self.config.serve_mode != ServeMode::Splice && self.config.stats_histograms {
            let ns = self.now.duration_since(batch.submitted_at).as_nanos() as u64;
            ShardStats::record_latency(&mut self.stats.disk_read_latency_ns, ns);
        }
        let (failed, slot, len) = (batch.failed, batch.slot, batch.len_bytes as usize);
        if peer.crypto.held_send.is_some() {
            let bytes = (!failed).then(|| &mut self.slots.pool.slot_mut(slot)[..len]);
            if let Some((sqe, sealed)) = transport::after_read(peer, bytes, failed) {
                self.stats.encrypted_bytes += sealed;
                if let Err(e) = self.ring.push(&sqe) {
                    tracing::error!("io_uring push failed: {e}");
                }
            }
        }
    }

    /// The batch's send (or its last splice) completed, fully, partly, or with an error.
    pub fn on_batch_sent(
        &mut self,
        peer: &mut Peer,
        idx: u32,
        c: &Completion,
        slot: u16,
    ) -> BatchSent {
        let now = self.now;
        peer.ops_inflight -= 1;
        if c.more() {
            // zerocopy: a notification follows; the slot waits for it.
            peer.ops_inflight += 1;
            self.slots.notification_owed(slot);
        }
        let Some(batch) = peer.batch.as_mut() else {
            debug_assert!(false, "batch completion without a batch");
            return BatchSent::Failed(None);
        };
        debug_assert_eq!(batch.slot, slot);
        let closing = peer.phase == Phase::Closing;
        // 0 bytes moved means the socket is gone (a splice from a non-empty pipe, or a send of
        // a non-empty buffer, never legitimately moves nothing).
        if c.result <= 0 || batch.failed || closing {
            // -EFAULT from a send that names a file mapping: the file shrank under it. Report
            // the file(s) now shorter than their mappings to the health checker, as a short
            // read would be: mincore may keep calling the lost pages resident (a large folio
            // the kernel could not split), so the read path might never see the fault.
            let mapping_fault = c.result == -libc::EFAULT && batch.page_cache;
            if mapping_fault && !batch.failed {
                self.stats.page_cache_send_faults += 1;
                self.stats.disk_errors += 1;
                if let Some(t) = peer.session.torrent() {
                    for key in peer.batch_files.iter() {
                        if let Some((now_len, mapped_len)) = self.files.shrunk_under_mapping(key) {
                            let why = format!(
                                "file shrank to {now_len} bytes under its mapping of \
                                 {mapped_len} (a send from it faulted)"
                            );
                            self.health.content_failed(t, key.1, why, now, self.stats);
                        }
                    }
                }
            }
            let disk = batch.failed || mapping_fault;
            tracing::debug!(
                result = c.result,
                disk,
                len = batch.len_bytes,
                "batch send failed"
            );
            self.finish_batch(peer);
            return BatchSent::Failed((!closing).then_some(if disk {
                CloseReason::DiskError
            } else {
                CloseReason::SocketError
            }));
        }
        batch.sent_bytes += c.result as u32;
        peer.send_progress_at = now;
        assert!(
            batch.sent_bytes <= batch.len_bytes,
            "sent more than the batch holds"
        );
        if batch.sent_bytes < batch.len_bytes {
            let token = Token::new(OpKind::SendBatch, slot, idx, peer.generation);
            let sock = peer.fd.as_raw_fd();
            let pipe_r = peer.pipe.as_ref().map(|p| p.0.as_raw_fd());
            let sent_now = c.result as usize;
            return match self
                .slots
                .rest_of_send(sock, pipe_r, batch, token, sent_now)
            {
                Some(sqe) => {
                    peer.ops_inflight += 1;
                    BatchSent::More(sqe)
                }
                None => BatchSent::Failed(None),
            };
        }
        if self.config.stats_histograms {
            for t in peer.batch_request_times.iter() {
                let ns = now.duration_since(*t).as_nanos() as u64;
                ShardStats::record_latency(&mut self.stats.request_latency_ns, ns);
            }
        }
        if let Some(t) = peer.session.torrent() {
            let times = self.config.stats_histograms;
            let times = times.then_some(peer.batch_request_times.as_slice());
            self.stats
                .torrent_batch_sent(t.info_hash, batch.payload_bytes, times, now);
        }
        self.stats.uploaded_bytes += batch.payload_bytes;
        self.stats.blocks_served += u64::from(batch.blocks);
        peer.uploaded_bytes += batch.payload_bytes;
        peer.upload_rate.update(peer.uploaded_bytes, now);
        self.finish_batch(peer);
        BatchSent::Done
    }

    /// Releases what a batch held: file uses, and the slot (now, or at its notification).
    pub fn finish_batch(&mut self, peer: &mut Peer) {
        let Some(batch) = peer.batch.take() else {
            return;
        };
        let (source, network) = peer.groups();
        self.slots.count_groups(source, network, false);
        for k in peer.batch_files.drain(..) {
            self.files.release(&k);
        }
        self.slots.spare_lists.reclaim(peer);
        self.slots.finish(&batch);
    }

    /// A readahead hint completed: give its file back. Its result only matters to the
    /// kernel's page cache (a failure is a later read's to report).
    pub fn on_readahead_done(&mut self, peer: &mut Peer) {
        peer.ops_inflight -= 1;
        if let Some(key) = peer.readahead_file.take() {
            self.files.release(&key);
        } else {
            debug_assert!(false, "a readahead completed with no file held");
        }
    }

    /// A zerocopy notification: counted, and a connection whose sends the kernel copied
    /// anyway switches to plain sends (`zerocopy_adaptive`).
    pub fn on_notification(&mut self, peer: &mut Peer, c: &Completion, slot: u16) {
        peer.ops_inflight -= 1;
        let copied = (c.result as u32) & IORING_NOTIF_USAGE_ZC_COPIED != 0;
        if copied {
            self.stats.zc_sends_copied += 1;
            if self.config.zerocopy_adaptive && !peer.zerocopy_disabled {
                // The kernel copied anyway (loopback, or a NIC without the offloads): zero-copy
                // only costs us here, so this connection switches to plain sends.
                peer.zerocopy_disabled = true;
                self.stats.zc_connections_switched_to_copy += 1;
            }
        } else {
            self.stats.zc_sends_zerocopy += 1;
        }
        let histograms = self.config.stats_histograms;
        self.slots
            .on_notification(slot, self.now, histograms, self.stats);
    }
}

fn batch_send_sqe(
    sock: RawFd,
    ptr: *const u8,
    len: u32,
    zerocopy: bool,
    fixed: bool,
    token: Token,
) -> squeue::Entry {
    if zerocopy {
        let mut op = opcode::SendZc::new(types::Fd(sock), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .zc_flags(IORING_SEND_ZC_REPORT_USAGE);
        if fixed {
            op = op.buf_index(Some(0));
        }
        op.build().user_data(token.encode())
    } else {
        opcode::Send::new(types::Fd(sock), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token.encode())
    }
}

/// A batch's send over its gather list (slot bytes and cache entries), SendMsg or SendMsgZc.
/// `msg` and `iovs` belong to the slot and stay put until the op completes.
fn batch_sendmsg_sqe(
    sock: RawFd,
    msg: &mut libc::msghdr,
    iovs: &mut [libc::iovec],
    zerocopy: bool,
    token: Token,
) -> squeue::Entry {
    debug_assert!(!iovs.is_empty());
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    *msg = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len() as _;
    if zerocopy {
        opcode::SendMsgZc::new(types::Fd(sock), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .ioprio(IORING_SEND_ZC_REPORT_USAGE)
            .build()
            .user_data(token.encode())
    } else {
        opcode::SendMsg::new(types::Fd(sock), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(token.encode())
    }
}

/// `len` empty iovecs (a slot's read or gather list, filled per batch).
fn empty_iovecs(len: usize) -> Vec<libc::iovec> {
    vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        len
    ]
}

/// Drops `sent` bytes from the front of a gather list: returns how many iovecs are now
/// fully sent (the next one is trimmed in place).
fn advance_iovecs(iovs: &mut [libc::iovec], mut sent: usize) -> usize {
    let mut done = 0;
    for v in iovs.iter_mut() {
        if sent < v.iov_len {
            v.iov_base = (v.iov_base as *mut u8).wrapping_add(sent).cast();
            v.iov_len -= sent;
            return done;
        }
        sent -= v.iov_len;
        done += 1;
    }
    done
}
