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
pub mod plan;
pub mod recv;
pub mod session;
pub mod setup;
pub mod submit;

use crate::catalog::{Catalog, CatalogTorrent};
use crate::config::{EngineConfig, ServeMode};
use crate::metainfo::InfoHash;
use crate::plane::{ShardCommand, TorrentExtras};
use crate::ring::token::{OpKind, Token};
use crate::ring::{Completion, Ring, IORING_NOTIF_USAGE_ZC_COPIED};
use crate::stats::{CloseReason, ShardStats};
use crate::wire::handshake::{parse_handshake, HANDSHAKE_LEN};
use crate::wire::message::{decode_frame, PIECE_HEADER_LEN};
use crate::wire::WireError;
use admission::Admission;
use choker::{Choker, PeerKey};
use conn::{dial_socket, make_pipe, peer_addr, pin_to_cpu, set_nodelay, PeerTable};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use extras::{ExtrasCache, Wish};
use files::FileCache;
use io_uring::{opcode, squeue, types};
use peer::{Peer, Phase};
use plan::{BatchBudget, Layout, PlanOptions, PlanScratch};
use recv::{Received, RecvPath};
use session::{Action, Session, SessionEnv, SessionLimits};
use setup::IoResources;
pub use setup::{ShardSetup, StartError};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use submit::SendSlots;

/// Housekeeping period: timeouts, keep-alives, choker rotation, stats snapshots.
pub const TICK_INTERVAL_MS: u64 = 250;
/// Stats snapshots go to the control thread this often.
pub const STATS_INTERVAL_MS: u64 = 1000;
/// On shutdown, peers get this long to finish in-flight sends before the shard exits.
pub const SHUTDOWN_DRAIN_MS: u64 = 3000;
/// After the drain, force-closed peers get this long for their ops to complete.
pub const SHUTDOWN_FORCE_MS: u64 = 1000;

pub struct Shard {
    index: usize,
    config: Arc<EngineConfig>,
    catalog: Arc<Catalog>,
    // Declared before `slots`: dropped first, so no op outlives the memory it names.
    ring: Ring,
    /// The send buffer pool and the hot-block cache, with their per-slot arrays. Declared
    /// after the ring.
    slots: SendSlots,
    /// The receive path (with multishot, its provided-buffer ring). Declared after the ring,
    /// like the slots.
    recv: RecvPath,
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
    peer_id: [u8; 20],
    now: Instant,
    tick: u64,
    next_tick_at: Instant,
    next_stats_at: Instant,
    next_rotation_at: Instant,
    shutdown_deadline: Option<Instant>,
    plan_scratch: PlanScratch,
}

impl Shard {
    /// Builds the shard on the calling thread (SINGLE_ISSUER: the creator submits).
    pub fn new(setup: ShardSetup) -> Result<Shard, StartError> {
        let config = setup.config;
        if let Some(cpu) = setup.cpu {
            pin_to_cpu(cpu);
        }
        let IoResources {
            ring,
            slots: send_slots,
            recv_ring,
            files,
            fixed_buffers_error,
            stats,
        } = IoResources::open(setup.index, &config)?;
        let now = Instant::now();
        let shards = config.shard_count().max(1);
        let slots = config.upload_slots_max.div_ceil(shards).max(1);
        let listeners_len = setup.listeners.len();
        Ok(Shard {
            index: setup.index,
            catalog: setup.catalog,
            ring,
            slots: send_slots,
            recv: RecvPath::new(recv_ring, config.message_len_max_bytes),
            fixed_buffers_error,
            peers: PeerTable::default(),
            listeners: setup.listeners,
            accept_armed: vec![false; listeners_len],
            accepting: true,
            files,
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
            peer_id: setup.peer_id,
            now,
            tick: 0,
            next_tick_at: now,
            next_stats_at: now,
            next_rotation_at: now + Duration::from_secs(config.choke_rotation_secs),
            shutdown_deadline: None,
            plan_scratch: PlanScratch::default(),
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
                ring, slots, recv, ..
            } = self;
            drop(ring);
            std::mem::forget(slots);
            std::mem::forget(recv);
        }
        stats
    }

    fn sync_cache_stats(&mut self) {
        self.stats.direct_open_failures = self.files.direct_open_failures;
        self.stats.map_failures = self.files.map_failures;
        self.stats.maps_over_budget = self.files.maps_over_budget;
        self.stats.mapped_bytes = self.files.mapped_bytes;
        if let Some(cache) = &self.slots.cache {
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
        let recv_buf_bytes = self.recv.initial_buffer_bytes();
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
        if let Some(sqe) = self.recv.arm(peer, idx) {
            self.push(&sqe);
        }
    }

    fn on_recv(&mut self, idx: u32, c: Completion) {
        let now = self.now;
        let ended = match self.recv.on_completion(self.peers.get_mut(idx), &c) {
            Received::Ignored => return,
            Received::OutOfBuffers => {
                // A burst took every ring buffer before this turn gave them back: re-arm.
                self.stats.recv_buffers_exhausted += 1;
                self.arm_recv(idx);
                return;
            }
            Received::Eof => {
                let owed = self.peer_mut(idx).is_some_and(|p| {
                    let send_busy = p.send_busy();
                    p.session.on_read_closed(send_busy)
                });
                if owed {
                    // Half-closed (SHUT_WR) with answers still owed: send them, then close in
                    // `pump` (the idle timeout backs that up). No recv is armed again.
                    self.pump(idx);
                } else {
                    self.close_peer(idx, CloseReason::PeerClosed);
                }
                return;
            }
            Received::Failed => {
                self.close_peer(idx, CloseReason::SocketError);
                return;
            }
            Received::Bytes { ended } => ended,
        };
        if let Some(peer) = self.peer_mut(idx) {
            peer.session.on_received(now);
        }
        if let Err(reason) = self.process_input(idx) {
            self.close_peer(idx, reason);
            return;
        }
        if let Some(peer) = self.peers.get_mut(idx) {
            self.recv.after_parse(peer);
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

    /// Plans a batch of the peer's queued blocks into a free send slot (`plan.rs`) and
    /// submits its chain of reads and the send (`submit.rs`); a readahead hint may follow.
    fn start_batch(&mut self, idx: u32) {
        let Some(slot) = self.slots.pool.acquire() else {
            self.stats.buffer_pool_exhausted += 1;
            self.wait_for_slot(idx);
            return;
        };
        debug_assert!(self.slots.cache_refs[slot as usize].is_empty());
        let mode = self.config.serve_mode;
        let direct_io = self.stats.direct_io;
        let now = self.now;
        let Some(peer) = self.peers.get_mut(idx) else {
            self.slots.pool.release(slot);
            return;
        };
        let Some(torrent) = peer.session.torrent().cloned() else {
            self.slots.pool.release(slot);
            return;
        };
        let use_zc = mode == ServeMode::Zerocopy && !peer.zerocopy_disabled;
        let mut slot_len = self.slots.pool.slot_len_bytes();
        if mode == ServeMode::Splice {
            if peer.pipe.is_none() {
                match make_pipe(slot_len) {
                    Ok(p) => peer.pipe = Some(p),
                    Err(e) => {
                        tracing::warn!("cannot create a pipe for splice: {e}");
                        self.slots.pool.release(slot);
                        self.close_peer(idx, CloseReason::SocketError);
                        return;
                    }
                }
            }
            // A batch never holds more than its pipe can.
            slot_len = slot_len.min(peer.pipe.as_ref().map(|p| p.2).unwrap_or(0));
        }
        let page_cache_sends = self.stats.page_cache_sends_on;
        let opts = PlanOptions {
            budget: BatchBudget {
                blocks_max: self.config.blocks_per_batch_max(),
                read_bytes_max: self.config.send_batch_bytes_max as usize,
                slot_len,
                gather: self.slots.cache.is_some() || page_cache_sends,
            },
            direct_io,
            piece_readahead: self.config.piece_readahead && !direct_io,
            page_cache_sends,
            now,
        };
        let slots = &mut self.slots;
        let slot_base = slots.pool.slot_ptr(slot);
        let plan = plan::lay_out(
            Layout {
                files: &mut self.files,
                ring: &mut self.ring,
                cache: slots.cache.as_mut(),
                stats: &mut self.stats,
                health: &mut self.health,
                scratch: &mut self.plan_scratch,
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
            let too_big = self
                .peer_mut(idx)
                .and_then(|p| p.session.next_request())
                .is_some_and(|q| PIECE_HEADER_LEN + q.request.length as usize > slot_len);
            if too_big {
                // Only a pipe smaller than one block (F_SETPIPE_SZ refused) gets here.
                tracing::warn!("a block does not fit this peer's splice pipe; closing it");
                self.close_peer(idx, CloseReason::SocketError);
            } else if plan.disk_error {
                self.close_peer(idx, CloseReason::DiskError);
            } else {
                // Every cached file is busy: retry when a batch completes.
                self.wait_for_slot(idx);
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let generation = peer.generation;
        let reads = &self.plan_scratch.reads;
        let pushed = self
            .slots
            .submit(&mut self.ring, peer, idx, slot, &plan, reads, use_zc, now);
        if let Err(e) = pushed {
            tracing::error!(shard = self.index, "io_uring push failed: {e}");
        }
        if let Some((key, fd, file_offset, len)) = plan.readahead {
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

    /// The peer waits for a free slot (or a free file); `serve_slot_waiters` retries it.
    fn wait_for_slot(&mut self, idx: u32) {
        if let Some(peer) = self.peer_mut(idx) {
            peer.waiting_for_slot = true;
            let key = (idx, peer.generation);
            self.slot_waiters.push_back(key);
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
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.ops_inflight -= 1;
        if c.more() {
            // zerocopy: a notification follows; the slot waits for it.
            peer.ops_inflight += 1;
            self.slots.notification_owed(slot);
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
        if batch.sent_bytes < batch.len_bytes {
            let token = Token::new(OpKind::SendBatch, slot, idx, peer.generation);
            let sock = peer.fd.as_raw_fd();
            let pipe_r = peer.pipe.as_ref().map(|p| p.0.as_raw_fd());
            let sent_now = c.result as usize;
            if let Some(sqe) = self
                .slots
                .rest_of_send(sock, pipe_r, batch, token, sent_now)
            {
                peer.ops_inflight += 1;
                self.push(&sqe);
            }
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
        self.slots.finish(&batch);
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
        let histograms = self.config.stats_histograms;
        self.slots
            .on_notification(slot, self.now, histograms, &mut self.stats);
    }

    fn serve_slot_waiters(&mut self) {
        while self.slots.pool.free_slots() > 0 {
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
                if let Some(cache) = self.slots.cache.as_mut() {
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
