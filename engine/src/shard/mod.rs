//! A shard: one thread, one io_uring, its own listeners, and every peer accepted on them.
//!
//! Owns: its peers (a slab indexed by the `peer` field of op tokens), its send buffer pool,
//! its open-file cache, its choker and its stats. Nothing here is shared with other shards;
//! the catalog is an immutable `Arc` snapshot, and commands arrive over a bounded channel.
//!
//! The loop (TigerBeetle's shape): submit everything queued and wait for completions (or the
//! next tick), copy the completions out in one batch, then dispatch each by its token. A
//! handler never re-enters the loop; it only queues SQEs, which go out at the next turn.
//!
//! Serving a block (copy mode): requests are validated and queued per peer; when the peer's
//! send pipeline is idle, queued blocks are laid out in one buffer slot as
//! `[13-byte piece header][block]...` (up to `send_batch_bytes_max` of blocks to read, plus
//! cache hits up to `cached_send_batch_bytes_max`, whose bytes stay in the cache and are
//! gathered by the send), the block bytes are read with ReadFixed
//! straight into place, and one Send of the whole slot is linked after the reads: no trip to
//! userspace between read and send. zerocopy mode sends the slot with SendZc and frees it at
//! the notification; splice mode sends the header, then splices file -> pipe -> socket.
//!
//! Buffer lifetimes: a peer's receive buffer and control buffer are only resized or reused
//! while no op names them (`recv_armed`, `control_inflight` are false); a peer is freed only
//! when `ops_inflight` is 0; buffer slots follow `ring::buffers`. The ring is declared before
//! the pool so it is dropped (and its ops cancelled) first; if ops are still in flight at
//! exit the pool is leaked rather than freed under the kernel.
//!
//! Must never: block (the only syscalls outside io_uring are at connection set-up/teardown and
//! the first open of a content file, with the update of its fixed-file slot), allocate per
//! request in steady state, panic on peer input, or let a peer's error affect another peer.

pub mod admission;
pub mod block_cache;
pub mod choker;
pub mod conn;
pub mod extras;
pub mod files;
pub mod health;
pub mod peer;
pub mod session;

use crate::catalog::{Catalog, CatalogTorrent};
use crate::config::{EngineConfig, ServeMode};
use crate::metainfo::InfoHash;
use crate::plane::{ExtrasRequest, HealthReport, ShardCommand, TorrentExtras};
use crate::ring::buffers::{BufferPool, SlotState};
use crate::ring::provided::RecvBufRing;
use crate::ring::token::{OpKind, Token};
use crate::ring::Optional;
use crate::ring::{Completion, Ring, IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE};
use crate::stats::{CloseReason, ShardStats};
use crate::storage::extents::{map_range, Extent};
use crate::storage::mapping::RESIDENCY_CHECK_PAGES_MAX;
use crate::wire::handshake::{parse_handshake, HANDSHAKE_LEN};
use crate::wire::message::{self, decode_frame, BlockRequest, PIECE_HEADER_LEN};
use crate::wire::WireError;
use admission::Admission;
use block_cache::{BlockCache, BlockKey, Lookup, CACHE_BLOCK_LEN_BYTES};
use choker::{Choker, PeerKey};
use conn::{dial_socket, make_pipe, peer_addr, pin_to_cpu, set_nodelay, PeerTable};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use extras::{ExtrasCache, Wish};
use files::{AcquireError, FileCache, FileKey};
use io_uring::{cqueue, opcode, squeue, types};
use peer::{Batch, GatherSend, Peer, Phase, Residency, RECV_BUF_INITIAL_BYTES};
use session::{Action, Session, SessionEnv, SessionLimits};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Housekeeping period: timeouts, keep-alives, choker rotation, stats snapshots.
pub const TICK_INTERVAL_MS: u64 = 250;
/// Stats snapshots go to the control thread this often.
pub const STATS_INTERVAL_MS: u64 = 1000;
/// On shutdown, peers get this long to finish in-flight sends before the shard exits.
pub const SHUTDOWN_DRAIN_MS: u64 = 3000;
/// After the drain, force-closed peers get this long for their ops to complete.
pub const SHUTDOWN_FORCE_MS: u64 = 1000;
/// Registered buffer indices: the send pool, then the hot-block cache.
const POOL_BUF_INDEX: u16 = 0;
/// The cache's first registered buffer; a cache over 1 GiB takes several (see
/// `BlockCache::iovecs`).
const CACHE_BUF_INDEX_FIRST: u16 = 1;
/// The buffer group of the shard's receive buffer ring (`multishot_recv`).
const RECV_BUFFER_GROUP: u16 = 0;

/// Everything a shard is built from (moved into its thread).
pub struct ShardSetup {
    pub index: usize,
    pub config: Arc<EngineConfig>,
    pub catalog: Arc<Catalog>,
    pub listeners: Vec<OwnedFd>,
    pub commands: Receiver<ShardCommand>,
    pub stats_tx: Sender<ShardStats>,
    pub health_tx: Sender<HealthReport>,
    /// Requests for what only a .torrent holds (BEP 9 info, BEP 52 trees), to the control
    /// plane's loader; answers come back as `ShardCommand::Extras`.
    pub extras_tx: Sender<ExtrasRequest>,
    pub admission: Arc<Admission>,
    pub peer_id: [u8; 20],
    pub cpu: Option<usize>,
}

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

/// A read or splice planned while laying out a batch, turned into SQEs afterwards.
#[derive(Clone, Copy)]
struct PlannedRead {
    fd: RawFd,
    /// The file's fixed-file slot, when it has one: reads name it instead of `fd` (splice
    /// never does: no table is registered in splice mode).
    fixed_slot: Option<u32>,
    file_offset: u64,
    /// Where the bytes go in the slot's stream (splice mode writes headers around them).
    slot_offset: u32,
    /// Where the read lands: in the slot, or in a cache entry.
    dest: *mut u8,
    /// The registered buffer `dest` lies in.
    buf_index: u16,
    len: u32,
    /// The torrent's file this reads (a failure is reported against it).
    file_index: u32,
}

pub struct Shard {
    index: usize,
    config: Arc<EngineConfig>,
    catalog: Arc<Catalog>,
    // Declared before `pool`: dropped first, so no op outlives the memory it names.
    ring: Ring,
    pool: BufferPool,
    /// Hot-block cache (None when `block_cache_bytes_per_shard` is 0, or in splice mode).
    /// Declared after the ring, like the pool.
    cache: Option<BlockCache>,
    /// Receive buffers of every peer's multishot recv (None: single recvs into each peer's
    /// own buffer). Declared after the ring, like the pool.
    recv_ring: Option<RecvBufRing>,
    fixed_buffers: bool,
    /// Why the buffer pool is not registered (then reads and sends use plain buffers).
    fixed_buffers_error: Option<String>,
    peers: PeerTable,
    listeners: Vec<OwnedFd>,
    accept_armed: Vec<bool>,
    accepting: bool,
    files: FileCache,
    health: health::ShardHealth,
    choker: Choker,
    admission: Arc<Admission>,
    commands: Receiver<ShardCommand>,
    stats: ShardStats,
    stats_tx: Sender<ShardStats>,
    torrent_peers: HashMap<InfoHash, usize>,
    /// BEP 9 info and BEP 52 trees, loaded by the control plane on demand.
    extras: ExtrasCache,
    limits: SessionLimits,
    /// Scratch for the actions of one session call.
    actions: Vec<Action>,
    /// Peers to pump at the end of this loop turn (each at most once: `Peer::pump_queued`).
    ready: Vec<PeerKey>,
    slot_waiters: VecDeque<PeerKey>,
    /// zerocopy notifications still owed per buffer slot.
    slot_notifs: Vec<u16>,
    /// Per buffer slot: the iovecs a vectored read of that slot uses. Sized once; a slot's
    /// array is only rewritten while the slot is Filling and before its ops are submitted,
    /// and the kernel reads it only while they are in flight.
    slot_iovecs: Vec<Vec<libc::iovec>>,
    /// zerocopy mode: request times of the batch a slot carries, until its notification.
    slot_request_times: Vec<Vec<Instant>>,
    /// Per slot: the cache entries its batch names (entry, claimed to be filled by it); the
    /// references are given back when the slot is released (after the send, or its
    /// zerocopy notification).
    slot_cache_refs: Vec<Vec<(u32, bool)>>,
    /// Per slot: the gather list and message header of a batch sent with SendMsg. Sized
    /// once; rewritten only while the slot is Filling or between the sends of its batch.
    slot_send_iovecs: Vec<Vec<libc::iovec>>,
    slot_msghdrs: Vec<libc::msghdr>,
    peer_id: [u8; 20],
    now: Instant,
    tick: u64,
    next_tick_at: Instant,
    next_stats_at: Instant,
    next_rotation_at: Instant,
    shutdown_deadline: Option<Instant>,
    scratch_extents: Vec<Extent>,
    /// `mincore` result vector for page-cache residency checks.
    scratch_mincore: Vec<u8>,
    scratch_reads: Vec<PlannedRead>,
    scratch_chain: Vec<squeue::Entry>,
}

/// Why a shard could not start; the message says what to do.
pub type StartError = String;

impl Shard {
    /// Builds the shard on the calling thread (SINGLE_ISSUER: the creator submits).
    pub fn new(setup: ShardSetup) -> Result<Shard, StartError> {
        let config = setup.config;
        if let Some(cpu) = setup.cpu {
            pin_to_cpu(cpu);
        }
        let mut ring = Ring::new(config.ring_entries)?;
        for note in ring.notes.drain(..) {
            if setup.index == 0 {
                tracing::warn!("{note}");
            }
        }
        // Optional registrations: a refusal (old kernel, seccomp, RLIMIT_NOFILE below the
        // table size) only costs the saving, so it is logged once (shard 0) and served on.
        // Splice runs in io-wq workers, where a fixed-file lookup takes the ring's lock:
        // splice mode keeps plain fds and registers no table.
        let ring_fd = ring.register_ring_fd(config.register_ring_fd);
        let fixed_files_wanted = config.fixed_files && config.serve_mode != ServeMode::Splice;
        let table_slots = config.open_files_per_shard_max as u32;
        let table = ring.register_fixed_files(fixed_files_wanted, table_slots);
        if setup.index == 0 {
            if let Optional::Refused(note) = &ring_fd {
                tracing::debug!("{note}");
            }
            if let Optional::Refused(note) = &table {
                tracing::info!("{note}");
            }
            tracing::debug!(
                registered_ring_fd = ring.features.registered_ring_fd,
                fixed_file_slots = ring.features.fixed_file_slots,
                "io_uring registrations"
            );
        }
        let fixed_files = ring.features.fixed_file_slots > 0;
        if config.serve_mode == ServeMode::Zerocopy && !ring.features.send_zc {
            return Err(
                "serve mode zerocopy needs IORING_OP_SEND_ZC (Linux >= 6.0); use --serve copy"
                    .into(),
            );
        }
        if config.serve_mode == ServeMode::Splice && !ring.features.splice {
            return Err("serve mode splice needs IORING_OP_SPLICE; use --serve copy".into());
        }
        if !ring.features.multishot_accept {
            return Err(
                "this kernel's io_uring lacks multishot accept (Linux >= 5.19 needed)".into(),
            );
        }
        let pool = BufferPool::new(config.buffer_pool_slots_per_shard, config.slot_len_bytes())?;
        let cache =
            if config.block_cache_bytes_per_shard > 0 && config.serve_mode != ServeMode::Splice {
                Some(BlockCache::new(
                    config.block_cache_bytes_per_shard,
                    CACHE_BLOCK_LEN_BYTES,
                )?)
            } else {
                None
            };
        let mut regions = vec![pool.iovec()];
        regions.extend(cache.as_ref().map(|c| c.iovecs()).unwrap_or_default());
        // A failure is not logged here: the seeder gathers every shard's outcome and warns
        // once for the whole process (see `Seeder::start`).
        let fixed_buffers_error = if ring.features.read_fixed {
            ring.register_buffers(&regions).err().map(|e| {
                format!(
                    "cannot register the {} MiB send buffer pool and block cache with io_uring ({e})",
                    regions.iter().map(|r| r.iov_len).sum::<usize>() >> 20
                )
            })
        } else {
            Some("this kernel's io_uring lacks IORING_OP_READ_FIXED".to_string())
        };
        let fixed_buffers = fixed_buffers_error.is_none();
        let recv_ring = if config.multishot_recv {
            match RecvBufRing::new(
                &ring,
                RECV_BUFFER_GROUP,
                config.recv_buffers_per_shard,
                config.recv_buffer_bytes,
            ) {
                Ok(r) => Some(r),
                Err(e) => {
                    if setup.index == 0 {
                        tracing::info!(
                            "io_uring provided-buffer ring refused ({e}); receiving with \
                             single recvs (multishot_recv off)"
                        );
                    }
                    None
                }
            }
        } else {
            None
        };
        // `validate` refuses direct_io without a cache; the cache is None in splice mode.
        let direct_io = config.direct_io && cache.is_some();
        let mut stats = ShardStats::new(setup.index);
        stats.direct_io = direct_io;
        let page_cache_sends = config.page_cache_sends_effective();
        stats.page_cache_sends_on = page_cache_sends;
        stats.multishot_recv = recv_ring.is_some();
        stats.fixed_buffers = fixed_buffers;
        stats.fixed_files = fixed_files;
        stats.registered_ring_fd = ring.features.registered_ring_fd;
        let now = Instant::now();
        let shards = config.shard_count().max(1);
        let slots = config.upload_slots_max.div_ceil(shards).max(1);
        let listeners_len = setup.listeners.len();
        let slot_count = pool.slots();
        Ok(Shard {
            index: setup.index,
            catalog: setup.catalog,
            ring,
            pool,
            cache,
            recv_ring,
            fixed_buffers,
            fixed_buffers_error,
            peers: PeerTable::default(),
            listeners: setup.listeners,
            accept_armed: vec![false; listeners_len],
            accepting: true,
            files: FileCache::new(
                config.open_files_per_shard_max,
                fixed_files,
                direct_io,
                page_cache_sends.then_some(config.page_cache_map_bytes_max),
            ),
            health: health::ShardHealth::new(setup.health_tx),
            choker: Choker::new(slots),
            admission: setup.admission,
            commands: setup.commands,
            stats,
            stats_tx: setup.stats_tx,
            torrent_peers: HashMap::new(),
            extras: ExtrasCache::new(
                setup.index,
                config.metadata_cache_entries_max,
                config.v2_layer_cache_entries_max,
                setup.extras_tx,
            ),
            limits: SessionLimits::from_config(&config),
            actions: Vec::with_capacity(64),
            ready: Vec::with_capacity(64),
            slot_waiters: VecDeque::new(),
            slot_notifs: vec![0; slot_count],
            slot_request_times: (0..slot_count)
                .map(|_| Vec::with_capacity(config.blocks_per_batch_max()))
                .collect(),
            slot_cache_refs: (0..slot_count)
                .map(|_| Vec::with_capacity(config.blocks_per_batch_max()))
                .collect(),
            slot_send_iovecs: (0..slot_count)
                .map(|_| empty_iovecs(config.blocks_per_batch_max() * 2))
                .collect(),
            // SAFETY: msghdr is plain data; all-zero is its empty value.
            slot_msghdrs: (0..slot_count)
                .map(|_| unsafe { std::mem::zeroed::<libc::msghdr>() })
                .collect(),
            slot_iovecs: (0..slot_count)
                .map(|_| empty_iovecs(config.blocks_per_batch_max() * 2))
                .collect(),
            peer_id: setup.peer_id,
            now,
            tick: 0,
            next_tick_at: now,
            next_stats_at: now,
            next_rotation_at: now + Duration::from_secs(config.choke_rotation_secs),
            shutdown_deadline: None,
            scratch_extents: Vec::with_capacity(8),
            scratch_mincore: Vec::with_capacity(RESIDENCY_CHECK_PAGES_MAX),
            scratch_reads: Vec::with_capacity(64),
            scratch_chain: Vec::with_capacity(128),
            config,
        })
    }

    /// Why this shard fell back to unregistered buffers; None when it uses fixed buffers.
    pub fn fixed_buffers_error(&self) -> Option<&str> {
        self.fixed_buffers_error.as_deref()
    }

    /// Runs until shutdown; returns the final stats.
    pub fn run(mut self) -> ShardStats {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.stats.accepting = true;
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        let idle_poll = Duration::from_micros(self.config.idle_poll_usecs);
        loop {
            self.now = Instant::now();
            if let Some(deadline) = self.shutdown_deadline {
                let drained = self.peers.live() == 0 && !self.accept_armed.iter().any(|a| *a);
                if drained || self.now >= deadline + Duration::from_millis(SHUTDOWN_FORCE_MS) {
                    break;
                }
                if self.now >= deadline {
                    self.force_close_all();
                }
            }
            let wait = self
                .next_tick_at
                .saturating_duration_since(self.now)
                .min(Duration::from_millis(TICK_INTERVAL_MS));
            let mut polled_ready = false;
            if idle_poll > Duration::ZERO && !completions.is_empty() {
                // Poll before sleeping (`idle_poll_usecs`): each enter submits what is queued
                // and runs deferred task work, without blocking.
                let poll_until = self.now + idle_poll.min(wait);
                loop {
                    if let Err(e) = self.ring.submit_and_wait(Duration::ZERO) {
                        tracing::error!(shard = self.index, "io_uring submit failed: {e}");
                        break;
                    }
                    polled_ready = self.ring.completions_ready();
                    if polled_ready || Instant::now() >= poll_until {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            // A poll that found completions has submitted everything: reap without entering.
            let entered = if polled_ready {
                Ok(())
            } else {
                self.ring.submit_and_wait(wait)
            };
            if let Err(e) = entered {
                tracing::error!(
                    shard = self.index,
                    "io_uring submit failed: {e}; shard stops"
                );
                break;
            }
            self.ring.reap(&mut completions);
            self.now = Instant::now();
            for c in completions.iter() {
                self.dispatch(*c);
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
            }
            if self.now >= self.next_tick_at {
                self.on_tick();
            }
            self.pump_ready();
            self.serve_slot_waiters();
        }
        self.stats.accepting = false;
        self.stats.peers_connected = self.peers.live() as u64;
        self.sync_cache_stats();
        let inflight: u32 = self.peers.iter().map(|p| p.ops_inflight).sum();
        let stats = self.stats.snapshot();
        let _ = self.stats_tx.try_send(stats.clone());
        if inflight > 0 || self.accept_armed.iter().any(|a| *a) {
            // The kernel may still touch the pool while it tears the ring down: leak it.
            tracing::warn!(
                shard = self.index,
                inflight,
                "shard exits with ops in flight"
            );
            let Shard {
                ring,
                pool,
                cache,
                recv_ring,
                ..
            } = self;
            drop(ring);
            std::mem::forget(pool);
            std::mem::forget(cache);
            std::mem::forget(recv_ring);
        }
        stats
    }

    fn sync_cache_stats(&mut self) {
        self.stats.direct_open_failures = self.files.direct_open_failures;
        self.stats.map_failures = self.files.map_failures;
        self.stats.maps_over_budget = self.files.maps_over_budget;
        self.stats.mapped_bytes = self.files.mapped_bytes;
        if let Some(cache) = &self.cache {
            let c = cache.counters;
            self.stats.block_cache_hits = c.hits;
            self.stats.block_cache_misses = c.misses;
            self.stats.block_cache_busy = c.busy;
            self.stats.block_cache_full = c.full;
            self.stats.block_cache_evictions = c.evictions;
            self.stats.block_cache_bytes_used =
                (cache.used_entries() * cache.entry_len_bytes()) as u64;
        }
    }

    fn on_command(&mut self, cmd: ShardCommand) {
        match cmd {
            ShardCommand::Shutdown => self.begin_shutdown(),
            ShardCommand::SwapCatalog(catalog) => {
                self.catalog = catalog;
                self.extras.clear();
                // Peers of torrents still in the catalog keep going undisturbed (they hold
                // their own Arc); peers of removed torrents are closed.
                for idx in 0..self.peers.slots() {
                    let removed = self
                        .peer_mut(idx)
                        .and_then(|p| p.session.torrent().map(|t| t.info_hash))
                        .is_some_and(|h| self.catalog.get(&h).is_none());
                    if removed {
                        self.close_peer(idx, CloseReason::TorrentRemoved);
                    }
                }
            }
            ShardCommand::Connect { addr, info_hash } => self.dial(addr, info_hash),
            ShardCommand::Health(set) => self.on_health(set),
            ShardCommand::Extras(extras) => self.on_extras(extras),
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.now + Duration::from_millis(SHUTDOWN_DRAIN_MS));
        self.accepting = false;
        self.stats.accepting = false;
        for i in 0..self.listeners.len() {
            if self.accept_armed[i] {
                let target = Token::new(OpKind::Accept, i as u16, 0, 0).encode();
                let sqe = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(Token::new(OpKind::Ignore, 0, 0, 0).encode());
                self.push(&sqe);
            }
        }
        // Drain: a peer with a send in flight finishes it (up to the drain deadline) and is
        // closed when it completes; idle peers are closed now. New requests are not served.
        for idx in 0..self.peers.slots() {
            let busy = self.peer_mut(idx).is_some_and(|p| p.send_busy());
            if !busy {
                self.close_peer(idx, CloseReason::Shutdown);
            }
        }
    }

    /// After the drain deadline: close whoever is left; their ops complete with errors.
    fn force_close_all(&mut self) {
        for idx in 0..self.peers.slots() {
            self.close_peer(idx, CloseReason::Shutdown);
        }
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        if let Err(e) = self.ring.push(sqe) {
            // Only a broken ring fails here; nothing sane remains but to stop accepting work.
            tracing::error!(shard = self.index, "io_uring push failed: {e}");
        }
    }

    // ---------------------------------------------------------------- accept

    fn arm_accept(&mut self, i: usize) {
        if !self.accepting || self.accept_armed[i] {
            return;
        }
        let fd = self.listeners[i].as_raw_fd();
        let sqe = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(OpKind::Accept, i as u16, 0, 0).encode());
        self.push(&sqe);
        self.accept_armed[i] = true;
    }

    fn on_accept(&mut self, c: Completion, listener: usize) {
        if !c.more() {
            if let Some(armed) = self.accept_armed.get_mut(listener) {
                *armed = false;
            }
        }
        if c.result < 0 {
            let errno = -c.result;
            if errno != libc::ECANCELED {
                // EMFILE/ENFILE and friends: counted; re-armed at the next tick, not in a
                // hot loop.
                tracing::debug!(
                    shard = self.index,
                    "accept failed: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
                self.stats.accept_errors += 1;
            }
            return;
        }
        // SAFETY: a non-negative accept result is a new fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
        if !self.accepting {
            return;
        }
        let Some(addr) = peer_addr(fd.as_raw_fd()) else {
            self.stats.closed(CloseReason::SocketError);
            return;
        };
        if self.peers.live() >= self.config.peers_max {
            self.stats.closed(CloseReason::PeersLimit);
            return;
        }
        if let Err(refusal) = self.admission.admit(&addr.ip()) {
            self.stats.closed(refusal_reason(refusal));
            return;
        }
        set_nodelay(fd.as_raw_fd());
        let idx = self.insert_peer(fd, addr, None);
        self.stats.peers_accepted += 1;
        self.arm_recv(idx);
    }

    /// Puts a new connection in the slab (reusing a freed index) and returns its index.
    fn insert_peer(
        &mut self,
        fd: OwnedFd,
        addr: SocketAddr,
        outbound: Option<Arc<CatalogTorrent>>,
    ) -> u32 {
        // multishot: received bytes land in the shared ring, and the peer's buffer holds only
        // what is left of a partial message, so it starts empty and grows on demand.
        let recv_buf_bytes = if self.recv_ring.is_some() {
            0
        } else {
            RECV_BUF_INITIAL_BYTES
        };
        let queue_max = self.limits.request_queue_max;
        let session = match outbound {
            Some(t) => Session::outbound(addr.ip(), self.now, queue_max, t),
            None => Session::inbound(addr.ip(), self.now, queue_max),
        };
        self.peers
            .insert(|generation| Peer::new(fd, addr, generation, session, recv_buf_bytes))
    }

    /// Dials a peer for `info_hash`; it is served like an inbound peer once connected, except
    /// that we send our handshake first and check that theirs names the same torrent.
    fn dial(&mut self, addr: SocketAddr, info_hash: InfoHash) {
        if !self.accepting {
            return;
        }
        let Some(torrent) = self.catalog.get(&info_hash).cloned() else {
            return;
        };
        if self.peers.live() >= self.config.peers_max {
            self.stats.closed(CloseReason::PeersLimit);
            return;
        }
        if let Err(refusal) = self.admission.admit(&addr.ip()) {
            self.stats.closed(refusal_reason(refusal));
            return;
        }
        let Ok(fd) = dial_socket(&addr) else {
            self.admission.release(&addr.ip());
            self.stats.closed(CloseReason::ConnectFailed);
            return;
        };
        set_nodelay(fd.as_raw_fd());
        let idx = self.insert_peer(fd, addr, Some(torrent));
        self.stats.peers_dialed += 1;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.phase = Phase::Connecting;
        let (storage, len) = crate::net::std_to_sockaddr(&addr);
        let boxed = Box::new((storage, len));
        let sqe = opcode::Connect::new(
            types::Fd(peer.fd.as_raw_fd()),
            (&boxed.0 as *const libc::sockaddr_storage).cast(),
            boxed.1,
        )
        .build()
        .user_data(Token::new(OpKind::Connect, 0, idx, peer.generation).encode());
        peer.connect_addr = Some(boxed);
        peer.ops_inflight += 1;
        self.push(&sqe);
    }

    fn on_connected(&mut self, idx: u32, c: Completion) {
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        peer.connect_addr = None;
        if peer.phase == Phase::Closing {
            return;
        }
        if c.result < 0 {
            self.close_peer(idx, CloseReason::ConnectFailed);
            return;
        }
        peer.phase = Phase::Open;
        self.with_session(idx, |s, env, _| s.on_connected(env));
        self.pump(idx);
        self.arm_recv(idx);
    }

    // ---------------------------------------------------------------- dispatch

    fn dispatch(&mut self, c: Completion) {
        let Some(token) = Token::decode(c.user_data) else {
            debug_assert!(false, "completion with an unknown token {:#x}", c.user_data);
            return;
        };
        match token.kind {
            OpKind::Accept => self.on_accept(c, token.slot as usize),
            OpKind::Ignore | OpKind::Tick | OpKind::Wakeup => {}
            _ => {
                let idx = token.peer;
                let live = self.peers.is_live(idx, token.generation);
                if !live {
                    // A peer is freed only with no ops in flight, so this cannot happen for
                    // ops we count; it is loud in tests and harmless in production.
                    debug_assert!(false, "completion {token:?} for a freed peer");
                    return;
                }
                match token.kind {
                    OpKind::Recv => self.on_recv(idx, c),
                    OpKind::Connect => self.on_connected(idx, c),
                    OpKind::SendControl => self.on_control_sent(idx, c),
                    OpKind::ReadBlock | OpKind::Splice => self.on_chain_step(idx, c, token.slot),
                    OpKind::Readahead => self.on_readahead_done(idx),
                    OpKind::SendBatch => {
                        if c.is_notif() {
                            self.on_send_notification(idx, c, token.slot);
                        } else {
                            self.on_batch_sent(idx, c, token.slot);
                        }
                    }
                    _ => {}
                }
                self.maybe_free(idx);
            }
        }
    }

    fn peer_mut(&mut self, idx: u32) -> Option<&mut Peer> {
        self.peers.get_mut(idx)
    }

    // ---------------------------------------------------------------- receive

    fn arm_recv(&mut self, idx: u32) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        if peer.phase == Phase::Closing || peer.recv_armed {
            return;
        }
        if let Some(bufs) = &self.recv_ring {
            // One op for the connection's life: every completion names a ring buffer.
            let sqe = opcode::RecvMulti::new(types::Fd(peer.fd.as_raw_fd()), bufs.bgid())
                .build()
                .user_data(Token::new(OpKind::Recv, 0, idx, peer.generation).encode());
            peer.recv_armed = true;
            peer.ops_inflight += 1;
            self.push(&sqe);
            return;
        }
        if peer.recv_len == peer.recv_buf.len() {
            // The buffer is full of one incomplete message: grow, bounded by the largest
            // message allowed (checked by the decoder before we get here).
            let limit = self.config.message_len_max_bytes as usize + 4;
            let new_len = (peer.recv_buf.len() * 2)
                .max(RECV_BUF_INITIAL_BYTES)
                .min(limit)
                .max(peer.recv_len + 1);
            peer.recv_buf.resize(new_len, 0);
        }
        let buf = &mut peer.recv_buf[peer.recv_len..];
        let sqe = opcode::Recv::new(
            types::Fd(peer.fd.as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .build()
        .user_data(Token::new(OpKind::Recv, 0, idx, peer.generation).encode());
        peer.recv_armed = true;
        peer.ops_inflight += 1;
        self.push(&sqe);
    }

    fn on_recv(&mut self, idx: u32, c: Completion) {
        let now = self.now;
        let multishot = self.recv_ring.is_some();
        // multishot: the bytes sit in a ring buffer. Append them to the peer's parse buffer
        // and give the buffer back at once, whatever state the peer is in.
        let mut appended = 0usize;
        if let (Some(bufs), Some(bid)) = (self.recv_ring.as_mut(), cqueue::buffer_select(c.flags)) {
            bufs.taken(bid);
            let len = usize::try_from(c.result).unwrap_or(0);
            if let Some(peer) = self.peers.get_mut(idx) {
                if peer.phase != Phase::Closing && len > 0 {
                    // Bounded: the decoder closes a peer whose message exceeds
                    // message_len_max_bytes, so this holds at most one partial message
                    // plus one receive buffer.
                    let need = peer.recv_len + len;
                    if peer.recv_buf.len() < need {
                        peer.recv_buf.resize(need.max(peer.recv_buf.len() * 2), 0);
                    }
                    peer.recv_buf[peer.recv_len..need].copy_from_slice(bufs.buffer(bid, len));
                    peer.recv_len = need;
                    appended = len;
                }
            }
            bufs.recycle(bid);
        }
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        // A multishot recv stays armed while the kernel says MORE.
        let ended = !multishot || !cqueue::more(c.flags);
        if ended {
            peer.recv_armed = false;
            peer.ops_inflight -= 1;
        }
        if peer.phase == Phase::Closing {
            return;
        }
        if multishot && c.result == -libc::ENOBUFS {
            // A burst took every ring buffer before this turn gave them back: re-arm.
            self.stats.recv_buffers_exhausted += 1;
            self.arm_recv(idx);
            return;
        }
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        let send_busy = peer.send_busy();
        if c.result == 0 && peer.session.on_read_closed(send_busy) {
            // Half-closed (SHUT_WR) with answers still owed: send them, then close in `pump`
            // (the idle timeout backs that up). No recv is armed again.
            self.pump(idx);
            return;
        }
        if c.result <= 0 {
            let reason = if c.result == 0 {
                CloseReason::PeerClosed
            } else {
                CloseReason::SocketError
            };
            self.close_peer(idx, reason);
            return;
        }
        if multishot {
            debug_assert_eq!(
                appended, c.result as usize,
                "a multishot completion without its buffer"
            );
        } else {
            peer.recv_len += c.result as usize;
        }
        debug_assert!(peer.recv_len <= peer.recv_buf.len());
        peer.session.on_received(now);
        if let Err(reason) = self.process_input(idx) {
            self.close_peer(idx, reason);
            return;
        }
        self.pump(idx);
        if ended {
            self.arm_recv(idx);
        }
    }

    /// Decodes every complete message in the peer's buffer and hands each to its session.
    fn process_input(&mut self, idx: u32) -> Result<(), CloseReason> {
        let mut consumed = 0usize;
        let (mut recv_buf, recv_len) = match self.peer_mut(idx) {
            Some(p) => (std::mem::take(&mut p.recv_buf), p.recv_len),
            None => return Ok(()),
        };
        let now = self.now;
        let max_len = self.config.message_len_max_bytes;
        let result = (|| {
            let active = |shard: &mut Shard| {
                shard
                    .peer_mut(idx)
                    .map(|p| p.phase == Phase::Open && p.session.is_active())
            };
            if active(self) == Some(false) {
                match parse_handshake(&recv_buf[..recv_len]) {
                    Err(_) => return Err(CloseReason::BadHandshake),
                    Ok(None) => return Ok(()),
                    Ok(Some(hs)) => {
                        self.with_session(idx, |s, env, a| s.on_handshake(&hs, env, a))
                            .unwrap_or(Ok(()))?;
                        consumed = HANDSHAKE_LEN;
                    }
                }
            }
            loop {
                if active(self) != Some(true) {
                    return Ok(());
                }
                match decode_frame(&recv_buf[consumed..recv_len], max_len) {
                    Ok(Some((msg, used))) => {
                        self.with_session(idx, |s, env, a| s.on_message(msg, env, now, a))
                            .unwrap_or(Ok(()))?;
                        consumed += used;
                    }
                    Ok(None) => return Ok(()),
                    Err(WireError::MessageTooLong { .. }) => {
                        return Err(CloseReason::MessageTooLong)
                    }
                    Err(_) => return Err(CloseReason::MalformedMessage),
                }
            }
        })();
        if let Some(peer) = self.peer_mut(idx) {
            recv_buf.copy_within(consumed..recv_len, 0);
            peer.recv_len = recv_len - consumed;
            peer.recv_buf = recv_buf;
        }
        result
    }

    /// Runs one session call with the shard's read-only view, then applies the actions it
    /// pushed. None when the peer is gone.
    fn with_session<R>(
        &mut self,
        idx: u32,
        f: impl FnOnce(&mut Session, &ShardEnv<'_>, &mut Vec<Action>) -> R,
    ) -> Option<R> {
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        let env = ShardEnv {
            limits: &self.limits,
            peer_id: self.peer_id,
            catalog: &self.catalog,
            torrent_peers: &self.torrent_peers,
            health: &self.health,
            extras: &self.extras,
        };
        let result = self
            .peers
            .get_mut(idx)
            .map(|p| f(&mut p.session, &env, &mut actions));
        for action in actions.iter() {
            self.apply(idx, *action);
        }
        self.actions = actions;
        result
    }

    /// Does for a session what only the shard can: counts, the choker, loads.
    fn apply(&mut self, idx: u32, action: Action) {
        let tick = self.tick;
        let now = self.now;
        let histograms = self.config.stats_histograms;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let key = (idx, peer.generation);
        match action {
            Action::Rejected(reason) => self.stats.rejected(reason),
            Action::Joined => {
                let Some(h) = peer.session.torrent().map(|t| t.info_hash) else {
                    return;
                };
                let count = self.torrent_peers.entry(h).or_insert(0);
                *count += 1;
                self.stats.torrent_peers(h, *count);
                if histograms {
                    let elapsed = now.duration_since(peer.session.connected_at()).as_nanos();
                    ShardStats::record_latency(
                        &mut self.stats.handshake_latency_ns,
                        elapsed as u64,
                    );
                }
            }
            Action::WantsSlot => {
                if self.choker.interested(key, tick) {
                    self.unchoke(idx);
                }
            }
            Action::LeavesSlot => {
                if let Some(next) = self.choker.remove(key, tick) {
                    self.unchoke(next.0);
                }
            }
            Action::MetadataPieceServed => self.stats.metadata_pieces_served += 1,
            Action::NeedsExtras => self.request_extras(idx),
        }
    }

    /// A session holds requests for its torrent's extras: join or start a load.
    fn request_extras(&mut self, idx: u32) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let Some(torrent) = peer.session.torrent().cloned() else {
            return;
        };
        let key = (idx, peer.generation);
        if self.extras.want(&torrent, key, now) == Wish::Refused {
            self.stats.extras_loads_refused = self.extras.loads_refused;
            self.wake_extras_waiter(key, None);
        }
    }

    /// `ShardCommand::Extras`: cache what the loader read and answer the waiting sessions.
    fn on_extras(&mut self, extras: Arc<TorrentExtras>) {
        let h = extras.info_hash;
        for key in self.extras.on_loaded(extras) {
            self.wake_extras_waiter(key, Some(h));
        }
    }

    /// Loads past their deadline end with rejects for their waiters.
    fn expire_extras_loads(&mut self) {
        for (_, waiters) in self.extras.expire(self.now) {
            for key in waiters {
                self.wake_extras_waiter(key, None);
            }
        }
        self.stats.extras_loads_refused = self.extras.loads_refused;
    }

    /// Answers a peer's held metadata/hash requests from `loaded` (None: rejects).
    fn wake_extras_waiter(&mut self, (idx, generation): PeerKey, loaded: Option<InfoHash>) {
        let live = self
            .peer_mut(idx)
            .is_some_and(|p| p.generation == generation && p.phase == Phase::Open);
        if !live {
            return;
        }
        let extras = loaded.and_then(|h| self.extras.get(&h).map(|_| h));
        let result = self.with_session(idx, |s, env, actions| {
            s.on_extras(extras.and_then(|h| env.extras(&h)), actions);
            s.has_out()
        });
        if result == Some(true) {
            self.queue_pump(idx);
        }
    }

    // ---------------------------------------------------------------- choking

    fn unchoke(&mut self, idx: u32) {
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        if peer.phase == Phase::Open && peer.session.unchoke() {
            self.queue_pump(idx);
        }
    }

    fn choke(&mut self, idx: u32) {
        self.with_session(idx, |s, _, actions| s.choke(actions));
        self.queue_pump(idx);
    }

    /// Pumps the peer at the end of this loop turn, not from inside a handler (its receive
    /// buffer may be taken out, or another peer's call may be under way).
    fn queue_pump(&mut self, idx: u32) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        if !peer.pump_queued {
            peer.pump_queued = true;
            self.ready.push((idx, peer.generation));
        }
    }

    /// Pumps every peer queued this turn (a pump may queue others: they run too).
    fn pump_ready(&mut self) {
        let mut i = 0;
        while i < self.ready.len() {
            let (idx, generation) = self.ready[i];
            i += 1;
            let Some(peer) = self.peer_mut(idx) else {
                continue;
            };
            if peer.generation != generation {
                continue;
            }
            peer.pump_queued = false;
            self.pump(idx);
        }
        self.ready.clear();
    }

    // ---------------------------------------------------------------- send pipeline

    /// Starts the next send for this peer if none is in flight: control bytes first, then a
    /// batch of queued blocks.
    fn pump(&mut self, idx: u32) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        if peer.phase != Phase::Open || peer.send_busy() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            // Draining: the send that was in flight is done; nothing new goes out.
            self.close_peer(idx, CloseReason::Shutdown);
            return;
        }
        if peer.session.has_out() {
            std::mem::swap(peer.session.out_mut(), &mut peer.control_sending);
            peer.session.out_mut().clear();
            peer.control_sent = 0;
            peer.control_inflight = true;
            peer.ops_inflight += 1;
            peer.session.on_send_started(now);
            let sqe = opcode::Send::new(
                types::Fd(peer.fd.as_raw_fd()),
                peer.control_sending.as_ptr(),
                peer.control_sending.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Token::new(OpKind::SendControl, 0, idx, peer.generation).encode());
            self.push(&sqe);
            return;
        }
        if peer.session.finished() {
            // A half-closed peer got every answer it was owed.
            self.close_peer(idx, CloseReason::PeerClosed);
            return;
        }
        if !peer.session.wants_blocks() || peer.waiting_for_slot {
            return;
        }
        if self.reject_if_errored(idx) {
            return;
        }
        self.start_batch(idx);
    }

    fn on_control_sent(&mut self, idx: u32, c: Completion) {
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        if peer.phase == Phase::Closing {
            peer.control_inflight = false;
            return;
        }
        if c.result < 0 {
            peer.control_inflight = false;
            self.close_peer(idx, CloseReason::SocketError);
            return;
        }
        peer.control_sent += c.result as usize;
        if peer.control_sent < peer.control_sending.len() {
            // Short send: send the rest before anything else goes out.
            let rest = &peer.control_sending[peer.control_sent..];
            let sqe = opcode::Send::new(
                types::Fd(peer.fd.as_raw_fd()),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Token::new(OpKind::SendControl, 0, idx, peer.generation).encode());
            peer.ops_inflight += 1;
            self.push(&sqe);
            return;
        }
        peer.control_inflight = false;
        peer.control_sending.clear();
        self.pump(idx);
    }

    /// Lays out queued blocks in a buffer slot and submits the read(s) + send chain.
    ///
    /// With the hot-block cache, a block found in the cache is not read at all: only its
    /// 13-byte header goes in the slot and the send gathers header and cached bytes with one
    /// SendMsg. A missed block is read into a cache entry claimed for it (then sent from
    /// there), so the next peer asking for it hits.
    fn start_batch(&mut self, idx: u32) {
        let Some(slot) = self.pool.acquire() else {
            self.stats.buffer_pool_exhausted += 1;
            if let Some(peer) = self.peer_mut(idx) {
                peer.waiting_for_slot = true;
                let key = (idx, peer.generation);
                self.slot_waiters.push_back(key);
            }
            return;
        };
        debug_assert!(self.slot_cache_refs[slot as usize].is_empty());
        let mode = self.config.serve_mode;
        let blocks_max = self.config.blocks_per_batch_max();
        let read_bytes_max = self.config.send_batch_bytes_max as usize;
        let mut read_bytes = 0usize;
        let slot_len = self.pool.slot_len_bytes();
        let fixed = self.fixed_buffers;
        let vectored_reads = self.config.vectored_reads;
        let readv_fixed = self.ring.features.readv_fixed;
        let direct_io = self.stats.direct_io;
        let piece_readahead = self.config.piece_readahead && !direct_io;
        let page_cache_sends = self.stats.page_cache_sends_on;
        let now = self.now;
        let Some(peer) = self.peers.get_mut(idx) else {
            self.pool.release(slot);
            return;
        };
        // (file, fd, file offset, length) of a readahead hint for the rest of a piece.
        let mut readahead: Option<(FileKey, RawFd, u64, u32)> = None;
        let Some(torrent) = peer.session.torrent().cloned() else {
            self.pool.release(slot);
            return;
        };
        let use_zc = mode == ServeMode::Zerocopy && !peer.zerocopy_disabled;
        let mut slot_len = slot_len;
        if mode == ServeMode::Splice {
            if peer.pipe.is_none() {
                match make_pipe(slot_len) {
                    Ok(p) => peer.pipe = Some(p),
                    Err(e) => {
                        tracing::warn!("cannot create a pipe for splice: {e}");
                        self.pool.release(slot);
                        self.close_peer(idx, CloseReason::SocketError);
                        return;
                    }
                }
            }
            // A batch never holds more than its pipe can.
            slot_len = slot_len.min(peer.pipe.as_ref().map(|p| p.2).unwrap_or(0));
        }
        let mut reads = std::mem::take(&mut self.scratch_reads);
        let mut extents = std::mem::take(&mut self.scratch_extents);
        reads.clear();
        peer.batch_files.clear();
        peer.batch_request_times.clear();
        let mut offset = 0usize;
        let mut send_len = 0usize;
        let mut blocks = 0u16;
        let mut cached_blocks = 0u16;
        let mut mapped_blocks = 0u16;
        let mut mincore_scratch = std::mem::take(&mut self.scratch_mincore);
        let mut payload = 0u64;
        let mut disk_error = false;
        let base = self.pool.slot_ptr(slot);
        let send_iovs = &mut self.slot_send_iovecs[slot as usize];
        let mut send_iov_count = 0usize;
        let cache_refs = &mut self.slot_cache_refs[slot as usize];
        // None in splice mode (never built there: file bytes go through a pipe).
        let mut cache = self.cache.as_mut();
        // Blocks may be sent from outside the slot (cache entries, file mappings): the send
        // is then a SendMsg over a gather list built alongside.
        let gather = cache.is_some() || page_cache_sends;
        let slot_mem = self.pool.slot_mut(slot);
        // Zero extents and headers are written now, before any op names the slot.
        'blocks: while let Some(q) = peer.session.next_request() {
            let r = q.request;
            // A block read from disk counts against `send_batch_bytes_max` (and, read into the
            // slot, needs room there); a cache hit needs room for its header only, so a batch
            // of hits grows to `cached_send_batch_bytes_max`. Misses keep the old bound: a
            // longer read chain only delays the send.
            let fits_in_slot = offset + PIECE_HEADER_LEN + r.length as usize <= slot_len;
            let read_fits = read_bytes + r.length as usize <= read_bytes_max;
            if blocks as usize >= blocks_max
                || offset + PIECE_HEADER_LEN > slot_len
                || (!read_fits && !gather)
            {
                break;
            }
            let torrent_offset = u64::from(r.index) * torrent.piece_length + u64::from(r.begin);
            // (entry, claimed for this batch to fill) when the block goes through the cache.
            let mut cached: Option<(u32, bool)> = None;
            let block_key: BlockKey = (torrent.info_hash, r.index, r.begin);
            let mut claimable = false;
            if let Some(cache) = cache.as_deref_mut() {
                if is_cacheable_block(&torrent, r) {
                    match cache.lookup(&block_key) {
                        Lookup::Hit { entry, len } => {
                            debug_assert_eq!(len, r.length, "a cached block changed length");
                            cached = Some((entry, false));
                        }
                        Lookup::Miss => claimable = true,
                        Lookup::Busy => {}
                    }
                }
            }
            // Not in the block cache but in the page cache: sent from the file's mapping,
            // with no read and no claim (the page cache already holds it).
            let mut mapped: Option<(*mut u8, u32)> = None;
            if cached.is_none() && page_cache_sends {
                mapped = resident_block_ptr(
                    &mut self.files,
                    &mut self.ring,
                    &torrent,
                    r,
                    torrent_offset,
                    &mut extents,
                    &mut mincore_scratch,
                    &mut peer.residency,
                    now,
                );
                if let Some((_, file_index)) = mapped {
                    // `resident_block_ptr` acquired the file: held until the send completes.
                    peer.batch_files.push((torrent.info_hash, file_index));
                }
            }
            let mapped = mapped.map(|(ptr, _)| ptr);
            if claimable && mapped.is_none() && read_fits {
                // Claim only within the read budget: a claim may evict a block.
                if let Some(cache) = cache.as_deref_mut() {
                    cached = cache.claim(block_key, r.length).map(|e| (e, true));
                }
            }
            // Nothing to read: the block is in the block cache or the page cache.
            let hit = matches!(cached, Some((_, false))) || mapped.is_some();
            if !hit && (!read_fits || (cached.is_none() && !fits_in_slot)) {
                // A block to read, and the batch's read budget (or the slot) is full. (The
                // next batch looks this block up again, so its miss/busy counts twice: at
                // most once per batch.)
                debug_assert!(cached.is_none(), "claimed beyond the read budget");
                break;
            }
            if !hit {
                read_bytes += r.length as usize;
            }
            let reads_before = reads.len();
            let files_before = peer.batch_files.len();
            let header_at = offset;
            let mut at = offset + PIECE_HEADER_LEN;
            if !hit {
                // Read the block: into its claimed cache entry, or in place in the slot.
                let (dest, buf_index) = match (cached, cache.as_deref()) {
                    (Some((entry, _)), Some(c)) => (
                        c.entry_ptr(entry),
                        CACHE_BUF_INDEX_FIRST + c.entry_region(entry) as u16,
                    ),
                    _ => (base.wrapping_add(at), POOL_BUF_INDEX),
                };
                let mut dest_at = 0usize;
                extents.clear();
                map_range(&torrent.files, torrent_offset, r.length, &mut extents);
                for e in extents.iter() {
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
                            match self.files.acquire(key, path, &mut self.ring) {
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
                                            (dest as usize + dest_at)
                                                .is_multiple_of(align as usize),
                                            "cache entries are page aligned"
                                        );
                                        self.stats.direct_reads += 1;
                                    } else if direct_io {
                                        self.stats.direct_read_fallbacks += 1;
                                    }
                                    reads.push(PlannedRead {
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
                                    for k in peer.batch_files.drain(files_before..) {
                                        self.files.release(&k);
                                    }
                                    reads.truncate(reads_before);
                                    if let (Some((entry, _)), Some(c)) =
                                        (cached, cache.as_deref_mut())
                                    {
                                        // Never filled: unmap it and give it back.
                                        c.fill_done(entry, false);
                                        c.release(entry);
                                    }
                                    match err {
                                        AcquireError::Full => self.stats.open_files_limit_hit += 1,
                                        AcquireError::Open(e) => {
                                            tracing::warn!("cannot open {}: {e}", path.display());
                                            self.stats.disk_errors += 1;
                                            disk_error = true;
                                            if health::is_content_fault(&e) {
                                                let why = format!("open failed: {e}");
                                                let stats = &mut self.stats;
                                                self.health.content_failed(
                                                    &torrent, file_index, why, now, stats,
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
                if cached.is_none() {
                    at += dest_at;
                }
                // The first block of a piece missed the cache: hint the rest of the piece
                // (its first file's part) to the kernel, once per peer at a time.
                if piece_readahead
                    && r.begin == 0
                    && readahead.is_none()
                    && peer.readahead_file.is_none()
                {
                    if let Some((file_index, file_offset, len)) =
                        piece_rest_first_file(&torrent, r, &mut extents)
                    {
                        let key: FileKey = (torrent.info_hash, file_index);
                        let path = &torrent.files[file_index as usize].path;
                        // A file that cannot be opened now is the block read's business.
                        if let Ok(file) = self.files.acquire(key, path, &mut self.ring) {
                            readahead = Some((key, file.fd, file_offset, len));
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
            if gather {
                // The gather list of the send: slot bytes (header, and the block when it is
                // read in place), then the cache entry or the file mapping it lives in.
                push_iov(
                    send_iovs,
                    &mut send_iov_count,
                    base.wrapping_add(header_at),
                    at - header_at,
                );
                if let (Some((entry, filling)), Some(c)) = (cached, cache.as_deref()) {
                    push_iov(
                        send_iovs,
                        &mut send_iov_count,
                        c.entry_ptr(entry),
                        r.length as usize,
                    );
                    cache_refs.push((entry, filling));
                    cached_blocks += 1;
                }
                if let Some(ptr) = mapped {
                    push_iov(send_iovs, &mut send_iov_count, ptr, r.length as usize);
                    mapped_blocks += 1;
                }
            }
            offset = at;
            send_len += PIECE_HEADER_LEN + r.length as usize;
            blocks += 1;
            payload += u64::from(r.length);
            peer.session.pop_request();
            peer.batch_request_times.push(q.received_at);
        }
        self.scratch_extents = extents;
        self.scratch_mincore = mincore_scratch;
        self.stats.page_cache_sends += u64::from(mapped_blocks);
        let gathered_blocks = cached_blocks + mapped_blocks;
        if blocks == 0 {
            debug_assert!(self.slot_cache_refs[slot as usize].is_empty());
            self.pool.release(slot);
            self.scratch_reads = reads;
            let too_big = self
                .peer_mut(idx)
                .and_then(|p| p.session.next_request())
                .is_some_and(|q| PIECE_HEADER_LEN + q.request.length as usize > slot_len);
            if too_big {
                // Only a pipe smaller than one block (F_SETPIPE_SZ refused) gets here.
                tracing::warn!("a block does not fit this peer's splice pipe; closing it");
                self.close_peer(idx, CloseReason::SocketError);
            } else if disk_error {
                self.close_peer(idx, CloseReason::DiskError);
            } else if let Some(peer) = self.peer_mut(idx) {
                // Every cached file is busy: retry when a batch completes.
                peer.waiting_for_slot = true;
                let key = (idx, peer.generation);
                self.slot_waiters.push_back(key);
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let sock = peer.fd.as_raw_fd();
        let generation = peer.generation;
        let mut chain = std::mem::take(&mut self.scratch_chain);
        chain.clear();
        peer.chain_expect.clear();
        peer.chain_files.clear();
        let link = squeue::Flags::IO_LINK;
        if mode == ServeMode::Splice {
            let (pipe_r, pipe_w) = match &peer.pipe {
                Some((r, w, _)) => (r.as_raw_fd(), w.as_raw_fd()),
                None => unreachable!("the pipe is made before the batch is laid out"),
            };
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
            write_into_pipe(&mut chain, &mut peer.chain_expect, cursor, offset as u32);
            chain.push(
                opcode::Splice::new(types::Fd(pipe_r), -1, types::Fd(sock), -1, offset as u32)
                    .build()
                    .user_data(Token::new(OpKind::SendBatch, slot, idx, generation).encode()),
            );
        } else {
            // Consecutive blocks of one piece are contiguous in the file but separated by
            // 13-byte headers in the slot (or live in separate cache entries): one vectored
            // read fills them all (one op and one page-cache walk instead of one per block).
            let iovecs = &mut self.slot_iovecs[slot as usize];
            let iov_cap = iovecs.len();
            let mut iov_used = 0usize;
            let mut i = 0usize;
            while i < reads.len() {
                let mut j = i + 1;
                while j < reads.len()
                    && vectored_reads
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
                    if fixed {
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
                    if fixed && readv_fixed {
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
                let msg = &mut self.slot_msghdrs[slot as usize];
                chain.push(batch_sendmsg_sqe(
                    sock,
                    msg,
                    &mut self.slot_send_iovecs[slot as usize][..send_iov_count],
                    use_zc,
                    token,
                ));
            } else {
                debug_assert_eq!(send_len, offset);
                chain.push(batch_send_sqe(
                    sock,
                    base,
                    offset as u32,
                    use_zc,
                    fixed,
                    token,
                ));
            }
        }
        // Link every op to the next; the last (the batch's send) ends the chain. `flags` ORs,
        // so entries are built unlinked and linked here.
        let last = chain.len().saturating_sub(1);
        for e in chain[..last].iter_mut() {
            *e = e.clone().flags(link);
        }
        peer.ops_inflight += chain.len() as u32;
        peer.session.on_send_started(now);
        if use_zc {
            // The notification may come after the peer's next batch reused its own vectors:
            // keep this batch's request times with the slot.
            let times = &mut self.slot_request_times[slot as usize];
            times.clear();
            times.extend_from_slice(&peer.batch_request_times);
        }
        peer.batch = Some(Batch {
            slot,
            len_bytes: send_len as u32,
            sent_bytes: 0,
            payload_bytes: payload,
            blocks,
            failed: false,
            submitted_at: now,
            zerocopy: use_zc,
            gather: (gathered_blocks > 0).then_some(GatherSend {
                iov_first: 0,
                iov_count: send_iov_count as u16,
            }),
            page_cache: mapped_blocks > 0,
        });
        if let Err(e) = self.ring.push_chain(&chain) {
            tracing::error!(shard = self.index, "io_uring push failed: {e}");
        }
        self.scratch_chain = chain;
        self.scratch_reads = reads;
        if let Some((key, fd, file_offset, len)) = readahead {
            let sqe =
                opcode::Fadvise::new(types::Fd(fd), len as libc::off_t, libc::POSIX_FADV_WILLNEED)
                    .offset(file_offset)
                    .build()
                    .user_data(Token::new(OpKind::Readahead, 0, idx, generation).encode());
            if let Some(peer) = self.peer_mut(idx) {
                peer.readahead_file = Some(key);
                peer.ops_inflight += 1;
            }
            self.stats.readaheads += 1;
            self.push(&sqe);
        }
    }

    /// A readahead hint completed: give its file back. Its result only matters to the
    /// kernel's page cache (a failure is a later read's to report).
    fn on_readahead_done(&mut self, idx: u32) {
        let Some(peer) = self.peer_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        if let Some(key) = peer.readahead_file.take() {
            self.files.release(&key);
        } else {
            debug_assert!(false, "a readahead completed with no file held");
        }
    }

    /// A read (copy/zerocopy) or an intermediate splice/send (splice mode) of a chain.
    fn on_chain_step(&mut self, idx: u32, c: Completion, seq: u16) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        let expected = peer.chain_expect.get(seq as usize).copied().unwrap_or(0);
        if let Some(batch) = peer.batch.as_mut() {
            if c.result < 0 || c.result as u32 != expected {
                tracing::debug!(
                    shard = self.index,
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
                        let stats = &mut self.stats;
                        self.health.content_failed(t, file, why, now, stats);
                    }
                }
                batch.failed = true;
            } else if self.config.serve_mode != ServeMode::Splice && self.config.stats_histograms {
                let ns = now.duration_since(batch.submitted_at).as_nanos() as u64;
                ShardStats::record_latency(&mut self.stats.disk_read_latency_ns, ns);
            }
        }
    }

    fn on_batch_sent(&mut self, idx: u32, c: Completion, slot: u16) {
        let now = self.now;
        let mode = self.config.serve_mode;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        if c.more() {
            // zerocopy: a notification follows; the slot waits for it.
            peer.ops_inflight += 1;
            self.slot_notifs[slot as usize] += 1;
        }
        let Some(batch) = peer.batch.as_mut() else {
            debug_assert!(false, "batch completion without a batch");
            return;
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
                            let stats = &mut self.stats;
                            self.health.content_failed(t, key.1, why, now, stats);
                        }
                    }
                }
            }
            let disk = batch.failed || mapping_fault;
            tracing::debug!(
                shard = self.index,
                result = c.result,
                disk,
                len = batch.len_bytes,
                "batch send failed"
            );
            self.finish_batch(idx);
            if !closing {
                self.close_peer(
                    idx,
                    if disk {
                        CloseReason::DiskError
                    } else {
                        CloseReason::SocketError
                    },
                );
            }
            return;
        }
        batch.sent_bytes += c.result as u32;
        debug_assert!(
            batch.sent_bytes <= batch.len_bytes,
            "sent more than the batch holds"
        );
        if batch.sent_bytes < batch.len_bytes && mode == ServeMode::Splice {
            // Short splice: the rest is still in the pipe, in order.
            let rest_len = batch.len_bytes - batch.sent_bytes;
            let Some((pipe_r, _, _)) = &peer.pipe else {
                return;
            };
            let sqe = opcode::Splice::new(
                types::Fd(pipe_r.as_raw_fd()),
                -1,
                types::Fd(peer.fd.as_raw_fd()),
                -1,
                rest_len,
            )
            .build()
            .user_data(Token::new(OpKind::SendBatch, slot, idx, peer.generation).encode());
            peer.ops_inflight += 1;
            self.push(&sqe);
            return;
        }
        if batch.sent_bytes < batch.len_bytes {
            if let Some(gather) = batch.gather.as_mut() {
                // Short SendMsg: drop what went out from the front of the gather list.
                let iovs = &mut self.slot_send_iovecs[slot as usize];
                let end = usize::from(gather.iov_first) + usize::from(gather.iov_count);
                let first = advance_iovecs(
                    &mut iovs[usize::from(gather.iov_first)..end],
                    c.result as usize,
                );
                gather.iov_first += first as u16;
                gather.iov_count -= first as u16;
                let rest = &mut iovs[usize::from(gather.iov_first)..end];
                let sqe = batch_sendmsg_sqe(
                    peer.fd.as_raw_fd(),
                    &mut self.slot_msghdrs[slot as usize],
                    rest,
                    batch.zerocopy,
                    Token::new(OpKind::SendBatch, slot, idx, peer.generation),
                );
                peer.ops_inflight += 1;
                self.push(&sqe);
                return;
            }
            // Short send: send the rest of the slot, then continue.
            let base = self.pool.slot_ptr(slot);
            let rest_ptr = base.wrapping_add(batch.sent_bytes as usize);
            let rest_len = batch.len_bytes - batch.sent_bytes;
            let token = Token::new(OpKind::SendBatch, slot, idx, peer.generation);
            let sqe = batch_send_sqe(
                peer.fd.as_raw_fd(),
                rest_ptr,
                rest_len,
                batch.zerocopy,
                self.fixed_buffers,
                token,
            );
            peer.ops_inflight += 1;
            self.push(&sqe);
            return;
        }
        if self.config.stats_histograms {
            for t in peer.batch_request_times.iter() {
                let ns = now.duration_since(*t).as_nanos() as u64;
                ShardStats::record_latency(&mut self.stats.request_latency_ns, ns);
            }
        }
        if let Some(t) = peer.session.torrent() {
            self.stats
                .torrent_uploaded(t.info_hash, batch.payload_bytes);
        }
        self.stats.uploaded_bytes += batch.payload_bytes;
        self.stats.blocks_served += u64::from(batch.blocks);
        peer.uploaded_bytes += batch.payload_bytes;
        self.finish_batch(idx);
        self.pump(idx);
    }

    /// Releases what a batch held: file uses, and the slot (now, or at its notification).
    fn finish_batch(&mut self, idx: u32) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let Some(batch) = peer.batch.take() else {
            return;
        };
        for k in peer.batch_files.drain(..) {
            self.files.release(&k);
        }
        if let Some(cache) = self.cache.as_mut() {
            // Every op of the chain has completed: the entries this batch filled hold the
            // block now, unless a read failed (then they are unmapped, never served).
            for &(entry, filled) in self.slot_cache_refs[batch.slot as usize].iter() {
                if filled {
                    cache.fill_done(entry, !batch.failed);
                }
            }
        }
        if self.slot_notifs[batch.slot as usize] > 0 {
            self.pool.await_notif(batch.slot);
        } else {
            self.release_slot(batch.slot);
        }
    }

    /// The kernel is done with a slot (and with the cache entries its batch named).
    fn release_slot(&mut self, slot: u16) {
        let refs = &mut self.slot_cache_refs[slot as usize];
        if let Some(cache) = self.cache.as_mut() {
            for (entry, _) in refs.drain(..) {
                cache.release(entry);
            }
        }
        debug_assert!(refs.is_empty(), "cache references without a cache");
        self.pool.release(slot);
    }

    fn on_send_notification(&mut self, idx: u32, c: Completion, slot: u16) {
        let adaptive = self.config.zerocopy_adaptive;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        let copied = (c.result as u32) & IORING_NOTIF_USAGE_ZC_COPIED != 0;
        if copied {
            self.stats.zc_sends_copied += 1;
            if adaptive && !peer.zerocopy_disabled {
                // The kernel copied anyway (loopback, or a NIC without the offloads): zero-copy
                // only costs us here, so this connection switches to plain sends.
                peer.zerocopy_disabled = true;
                self.stats.zc_connections_switched_to_copy += 1;
            }
        } else {
            self.stats.zc_sends_zerocopy += 1;
        }
        let pending = &mut self.slot_notifs[slot as usize];
        debug_assert!(*pending > 0);
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            // Zerocopy: the kernel is done with the blocks only now. Request latency to the
            // notification, beside the one to the send completion.
            if self.config.stats_histograms {
                let now = self.now;
                for t in self.slot_request_times[slot as usize].iter() {
                    let ns = now.duration_since(*t).as_nanos() as u64;
                    ShardStats::record_latency(&mut self.stats.zc_notification_latency_ns, ns);
                }
            }
            self.slot_request_times[slot as usize].clear();
            if self.pool.state(slot) == SlotState::AwaitingNotif {
                self.release_slot(slot);
            }
        }
    }

    fn serve_slot_waiters(&mut self) {
        while self.pool.free_slots() > 0 {
            let Some((idx, generation)) = self.slot_waiters.pop_front() else {
                return;
            };
            let Some(peer) = self.peer_mut(idx) else {
                continue;
            };
            if peer.generation != generation {
                continue;
            }
            peer.waiting_for_slot = false;
            self.pump(idx);
            if self
                .peer_mut(idx)
                .map(|p| p.waiting_for_slot)
                .unwrap_or(false)
            {
                // It went back to waiting (e.g. every cached file busy): stop for this turn.
                return;
            }
        }
    }

    // ---------------------------------------------------------------- close

    fn close_peer(&mut self, idx: u32, reason: CloseReason) {
        let tick = self.tick;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        if peer.phase == Phase::Closing {
            return;
        }
        let was_connecting = peer.phase == Phase::Connecting;
        peer.phase = Phase::Closing;
        let key = (idx, peer.generation);
        if was_connecting {
            // shutdown() does not abort a pending connect: cancel the op itself.
            let target = Token::new(OpKind::Connect, 0, idx, peer.generation).encode();
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(Token::new(OpKind::Ignore, 0, 0, 0).encode());
            self.push(&sqe);
        }
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        tracing::debug!(shard = self.index, peer = %peer.addr, reason = reason.as_str(), "closing peer");
        self.stats.closed(reason);
        if reason == CloseReason::DiskError {
            // A truncated or replaced file: reopen it on next use, so a restored file serves
            // again without a restart (the batch released its uses before we got here).
            if let Some(t) = peer.session.torrent() {
                self.files.forget_idle(&t.info_hash, &mut self.ring);
                // And never serve its blocks from memory read before the fault.
                if let Some(cache) = self.cache.as_mut() {
                    cache.purge(&t.info_hash);
                }
            }
        }
        // Wake every op on the socket: recv returns 0, sends fail; reads finish normally.
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(peer.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(next) = self.choker.remove(key, tick) {
            self.unchoke(next.0);
        }
        self.maybe_free(idx);
    }

    /// Frees a closing peer once no op names it.
    fn maybe_free(&mut self, idx: u32) {
        let ready = self
            .peers
            .get(idx)
            .is_some_and(|p| p.phase == Phase::Closing && p.ops_inflight == 0);
        if !ready {
            return;
        }
        let Some(peer) = self.peers.remove(idx) else {
            return;
        };
        debug_assert!(peer.batch.is_none() && !peer.control_inflight && !peer.recv_armed);
        if let Some(t) = peer.session.torrent() {
            if let Some(n) = self.torrent_peers.get_mut(&t.info_hash) {
                *n = n.saturating_sub(1);
                self.stats.torrent_peers(t.info_hash, *n);
                if *n == 0 {
                    self.torrent_peers.remove(&t.info_hash);
                }
            }
        }
        self.admission.release(&peer.addr.ip());
        drop(peer); // closes the socket and the splice pipe
    }

    // ---------------------------------------------------------------- tick

    fn on_tick(&mut self) {
        self.tick += 1;
        self.health.on_tick(self.now, &mut self.stats);
        self.next_tick_at = self.now + Duration::from_millis(TICK_INTERVAL_MS);
        let now = self.now;
        let limits = self.limits;
        for idx in 0..self.peers.slots() {
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            if peer.phase == Phase::Closing {
                continue;
            }
            let send_busy = peer.send_busy();
            match peer.session.on_tick(now, &limits, send_busy) {
                Err(reason) => self.close_peer(idx, reason),
                Ok(()) if peer.session.has_out() => self.pump(idx),
                Ok(()) => {}
            }
        }
        self.expire_extras_loads();
        if now >= self.next_rotation_at {
            self.next_rotation_at = now + Duration::from_secs(self.config.choke_rotation_secs);
            let decisions = self.choker.rotate(self.tick);
            for (idx, _) in decisions.choke {
                self.choke(idx);
            }
            for (idx, _) in decisions.unchoke {
                self.unchoke(idx);
            }
        }
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        if now >= self.next_stats_at {
            self.next_stats_at = now + Duration::from_millis(STATS_INTERVAL_MS);
            self.stats.peers_connected = self.peers.live() as u64;
            self.stats.accepting = self.accepting && self.accept_armed.iter().all(|a| *a);
            self.sync_cache_stats();
            match self.stats_tx.try_send(self.stats.snapshot()) {
                Ok(()) => {}
                Err(TrySendError::Full(snap)) | Err(TrySendError::Disconnected(snap)) => {
                    // Keep the per-torrent deltas for the next snapshot.
                    self.stats.restore_torrents(snap);
                    self.stats.stats_snapshots_dropped += 1;
                }
            }
        }
    }
}

/// The close reason counted for an admission refusal.
fn refusal_reason(refusal: admission::Refusal) -> CloseReason {
    match refusal {
        admission::Refusal::PeersLimit => CloseReason::PeersLimit,
        admission::Refusal::PerIpLimit => CloseReason::PeersPerIpLimit,
        admission::Refusal::PerPrefixLimit => CloseReason::PeersPerPrefixLimit,
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

/// Appends `len` bytes at `ptr` to a gather list, growing the last entry when they follow
/// it in memory (consecutive slot bytes become one iovec).
fn push_iov(iovs: &mut [libc::iovec], count: &mut usize, ptr: *mut u8, len: usize) {
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
    ring: &mut Ring,
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

/// A shard's read-only view for its sessions (`session::SessionEnv`).
struct ShardEnv<'a> {
    limits: &'a SessionLimits,
    peer_id: [u8; 20],
    catalog: &'a Catalog,
    torrent_peers: &'a HashMap<InfoHash, usize>,
    health: &'a health::ShardHealth,
    extras: &'a ExtrasCache,
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
