//! A shard: one thread, one io_uring, its own listeners, and every peer accepted on them.
//! This file is the loop; each concern it routes to has its own room:
//! `session` (the peer protocol, pure), `plan` (which blocks go next, from where),
//! `submit` (send slots and SQE chains), `recv` (the receive path), `conn` (the peer table,
//! listeners, sockets), `extras` (BEP 9/52 data loaded by the control plane), `setup`,
//! `http_conn` (HTTP connections: listeners after the peer ones, ops of their own).
//!
//! The loop (TigerBeetle's shape): submit what is queued and wait for completions (or the
//! next tick), copy the completions out in one batch, dispatch each by its token, then apply
//! control-plane commands, the tick, and pump the peers that became ready. Session calls
//! return actions; unchokes they cause are pumped at the end of the turn, not re-entrantly.
//!
//! Lifetimes: a peer is freed only when `ops_inflight` is 0; its buffers are resized only
//! while no op names them; the ring is dropped before the memory registered with it, and if
//! ops are still in flight at exit that memory is leaked rather than freed under the kernel.
//!
//! Must never: block (the only syscalls outside io_uring are at connection set-up/teardown
//! and the first open of a content file), read a .torrent file, allocate per request in
//! steady state, panic on peer input, or let a peer's error affect another peer.

pub mod admission;
pub mod block_cache;
pub mod choker;
pub mod conn;
mod dial;
mod drain;
pub mod env;
pub mod extras;
pub mod files;
pub mod health;
pub mod http_conn;
mod inspect;
pub mod peer;
pub mod plan;
pub mod recv;
pub mod requests;
pub mod session;
pub mod setup;
mod shutdown;
pub mod spare;
pub mod submit;
pub mod transport;

use crate::catalog::{Catalog, CatalogTorrent};
use crate::config::EngineConfig;
use crate::metainfo::InfoHash;
use crate::plane::{ShardCommand, TorrentExtras};
use crate::ring::token::{OpKind, Token};
use crate::ring::{Completion, Ring};
use crate::stats::{CloseReason, RejectReason, ShardStats};
use crate::wire::message::Message::Request;
use admission::Admission;
use choker::{Choker, PeerKey};
use conn::{
    cancel_sqe, peer_addr, pin_to_cpu, refusal_reason, tune_socket, Accepted, Listeners, PeerTable,
    Waiting,
};
use crossbeam_channel::{Receiver, Sender};
use env::ShardEnv;
use extras::{ExtrasCache, Wish};
use files::FileCache;
use io_uring::squeue;
use peer::{Peer, Phase};
use plan::PlanScratch;
use recv::{Input, Received, RecvPath};
use session::{Action, Session, SessionEnv, SessionLimits};
use setup::IoResources;
pub use setup::{ShardSetup, StartError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use submit::{control_send_sqe, BatchSent, BatchStart, SendParts, SendSlots};

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
    listeners: Listeners,
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
    /// Peers to pump at the end of this loop turn, and peers waiting for a send slot.
    waiting: Waiting,
    peer_id: [u8; 20],
    now: Instant,
    tick: u64,
    next_tick_at: Instant,
    next_stats_at: Instant,
    next_rotation_at: Instant,
    shutdown_deadline: Option<Instant>,
    plan_scratch: PlanScratch,
    /// HTTP connections (`http_conn`); empty unless `[http] listen` is set.
    http: http_conn::HttpFront,
    /// MSE/PE: the SKEY index and the DH budget (`transport`).
    crypto: transport::ShardCrypto,
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
        let http = http_conn::HttpFront::new(&config.http, &setup.catalog);
        Ok(Shard {
            index: setup.index,
            catalog: setup.catalog,
            ring,
            slots: send_slots,
            recv: RecvPath::new(
                recv_ring,
                config.message_len_max_bytes,
                config.recv_buffer_bytes_per_shard_max,
            ),
            fixed_buffers_error,
            peers: PeerTable::default(),
            listeners: Listeners::new(setup.listeners),
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
            waiting: Waiting::default(),
            peer_id: setup.peer_id,
            now,
            tick: 0,
            next_tick_at: now,
            next_stats_at: now,
            next_rotation_at: now + Duration::from_secs(config.choke_rotation_secs),
            shutdown_deadline: None,
            plan_scratch: PlanScratch::default(),
            http,
            crypto: Default::default(),
            config,
        })
    }

    /// Why this shard fell back to unregistered buffers; None when it uses fixed buffers.
    pub fn fixed_buffers_error(&self) -> Option<&str> {
        self.fixed_buffers_error.as_deref()
    }

    /// Runs until shutdown; returns the final stats.
    pub fn run(mut self) -> ShardStats {
        self.arm_accepts();
        self.stats.accepting = true;
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        let idle_poll = Duration::from_micros(self.config.idle_poll_usecs);
        loop {
            self.now = Instant::now();
            if let Some(deadline) = self.shutdown_deadline {
                let drained =
                    self.peers.live() == 0 && self.http.live() == 0 && !self.listeners.any_armed();
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
            // Poll before sleeping only right after a turn that had work (`idle_poll_usecs`).
            let poll = if completions.is_empty() {
                Duration::ZERO
            } else {
                idle_poll
            };
            if let Err(e) = self.ring.poll_then_wait(poll, wait) {
                // Transient errors (EAGAIN, ENOMEM, EBUSY) never get here (the ring retries
                // them); what does is a broken ring, so stop, reaping what can be reaped.
                tracing::error!(
                    shard = self.index,
                    "io_uring_enter failed: {e}; shard stops"
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
            self.http_serve_waiters();
        }
        self.finish()
    }

    fn sync_stats(&mut self) {
        self.stats.peers_connected = self.peers.live() as u64;
        self.stats.accepting = self.listeners.all_armed();
        self.files.copy_counters(&mut self.stats);
        self.slots.copy_counters(&mut self.stats);
        self.stats.extras_loads_refused = self.extras.loads_refused;
        self.stats.ring_enter_errors = self.ring.enter_errors;
        self.stats.recv_buffer_bytes = self.recv.grown_bytes() as u64;
        self.stats.ring_push_failures = self.ring.push_failures;
    }

    fn on_command(&mut self, cmd: ShardCommand) {
        match cmd {
            ShardCommand::Shutdown => self.begin_shutdown(),
            ShardCommand::SwapCatalog(catalog) => {
                // Removed torrents' idle fds and mappings go now (ones in use, with their batch).
                let old = std::mem::replace(&mut self.catalog, catalog);
                self.http_on_catalog();
                for t in old.torrents() {
                    if self.catalog.get(&t.info_hash).is_none() {
                        self.forget_content(&t.info_hash);
                    }
                }
                self.extras.clear();
                // Peers of torrents still in the catalog keep going undisturbed (they hold
                // their own Arc); peers of removed torrents drain (`drain.rs`).
                self.drain_removed();
            }
            ShardCommand::Peers(request) => self.on_peers_request(request),
            ShardCommand::Connect { addr, info_hash } => {
                self.dial(addr, info_hash);
            }
            ShardCommand::Health(set) => self.on_health(set),
            ShardCommand::Extras(extras) => self.on_extras(extras),
        }
    }

    fn push(&mut self, sqe: &squeue::Entry) {
        push_or_log(&mut self.ring, sqe);
    }

    // ---------------------------------------------------------------- accept

    fn arm_accepts(&mut self) {
        let ring = &mut self.ring;
        self.listeners.arm(&mut |sqe| push_or_log(ring, &sqe));
    }

    fn on_accept(&mut self, c: Completion, listener: usize) {
        let fd = match self.listeners.on_completion(listener, &c) {
            Accepted::Conn(fd) => fd,
            Accepted::Ignored => return,
            Accepted::Failed(e) => {
                tracing::debug!(shard = self.index, "accept failed: {e}");
                self.stats.accept_errors += 1;
                return;
            }
        };
        if listener >= self.config.listen.len() {
            // HTTP listeners come after the peer ones (`control::seeder`).
            self.on_http_accept(fd);
            return;
        }
        let Some(addr) = peer_addr(fd.as_raw_fd()) else {
            self.stats.closed(CloseReason::SocketError);
            return;
        };
        if !self.admit(&addr) {
            return;
        }
        let idx = self.insert_peer(fd, addr, None);
        self.stats.peers_accepted += 1;
        self.arm_recv(idx);
    }

    /// A new connection within the shard's and the process's limits (counted in admission
    /// until the peer is freed); a refusal is counted under its reason.
    fn admit(&mut self, addr: &SocketAddr) -> bool {
        let admitted = if self.peers.live() >= self.config.peers_max {
            Err(CloseReason::PeersLimit)
        } else {
            self.admission.admit(&addr.ip()).map_err(refusal_reason)
        };
        if let Err(reason) = admitted {
            self.stats.closed(reason);
        }
        admitted.is_ok()
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
        tune_socket(fd.as_raw_fd(), self.config.send_stall_secs);
        let session = match outbound {
            Some(t) => Session::outbound(addr.ip(), self.now, t),
            None => Session::inbound(addr.ip(), self.now),
        };
        self.peers
            .insert(|generation| Peer::new(fd, addr, generation, session, recv_buf_bytes))
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
            OpKind::HttpRecv | OpKind::HttpSend | OpKind::HttpRead => {
                self.on_http_completion(token, c)
            }
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
                    OpKind::Readahead => {
                        let (peers, mut parts) = self.send_parts();
                        if let Some(peer) = peers.get_mut(idx) {
                            parts.on_readahead_done(peer);
                        }
                    }
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

    // ---------------------------------------------------------------- receive

    fn arm_recv(&mut self, idx: u32) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        match self.recv.arm(peer, idx) {
            Ok(Some(sqe)) => self.push(&sqe),
            Ok(None) => {}
            Err(reason) => self.close_peer(idx, reason),
        }
    }

    fn on_recv(&mut self, idx: u32, c: Completion) {
        let now = self.now;
        let before = self.peers.get(idx).map_or(0, |p| p.recv_len);
        let ended = match self.recv.on_completion(self.peers.get_mut(idx), &c) {
            Received::Ignored => return,
            Received::OutOfBuffers => {
                // A burst took every ring buffer before this turn gave them back: re-arm.
                self.stats.recv_buffers_exhausted += 1;
                self.arm_recv(idx);
                return;
            }
            Received::Eof => {
                self.on_transport_eof(idx);
                let owed = self.peers.get_mut(idx).is_some_and(|p| {
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
            Received::OverBudget => {
                self.close_peer(idx, CloseReason::RecvMemoryLimit);
                return;
            }
            Received::Bytes { ended } => ended,
        };
        if let Some(peer) = self.peers.get_mut(idx) {
            peer.session.on_received(now);
        }
        // MSE: what arrived is decrypted, or taken by the handshake (then nothing to parse).
        let parsed = match self.transport_input(idx, before) {
            Ok(true) => self.process_input(idx),
            other => other.map(|_| ()),
        };
        if let Err(reason) = parsed {
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

    /// Hands every complete input in the peer's buffer to its session, in order.
    fn process_input(&mut self, idx: u32) -> Result<(), CloseReason> {
        let (mut buf, len) = match self.peers.get_mut(idx) {
            Some(p) => (std::mem::take(&mut p.recv_buf), p.recv_len),
            None => return Ok(()),
        };
        let (now, max_len) = (self.now, self.config.message_len_max_bytes);
        let mut consumed = 0usize;
        let result = loop {
            let Some(peer) = self.peers.get(idx).filter(|p| p.phase == Phase::Open) else {
                break Ok(());
            };
            let pieces = peer.session.torrent().map(|t| t.num_pieces);
            let active = peer.session.is_active();
            let (input, used) = match recv::next_input(&buf[consumed..len], active, max_len, pieces)
            {
                Ok(Some(next)) => next,
                Ok(None) => break Ok(()),
                Err(reason) => break Err(reason),
            };
            consumed += used;
            if let (Input::Message(Request(_)), Some(p)) = (&input, self.peers.get_mut(idx)) {
                self.slots.spare_lists.lend_queue(p); // `spare`: idle peers hold no queue
            }
            let handled = self.with_session(idx, |s, env, a| match input {
                Input::Handshake(hs) => s.on_handshake(&hs, env, a),
                Input::Message(msg) => s.on_message(msg, env, now, a),
            });
            if let Some(Err(reason)) = handled {
                break Err(reason);
            }
        };
        if let Some(peer) = self.peers.get_mut(idx) {
            buf.copy_within(consumed..len, 0);
            peer.recv_len = len - consumed;
            peer.recv_buf = buf;
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
    }

    /// Answers a peer's held metadata/hash requests from `loaded` (None: rejects).
    fn wake_extras_waiter(&mut self, (idx, generation): PeerKey, loaded: Option<InfoHash>) {
        let live = self
            .peers
            .get_mut(idx)
            .is_some_and(|p| p.generation == generation && p.phase == Phase::Open);
        if !live {
            return;
        }
        let result = self.with_session(idx, |s, env, actions| {
            s.on_extras(loaded.and_then(|h| env.extras(&h)), actions);
            s.has_out()
        });
        if result == Some(true) {
            self.queue_pump(idx);
        }
    }

    // ---------------------------------------------------------------- choking

    fn unchoke(&mut self, idx: u32) {
        let Some(peer) = self.peers.get_mut(idx) else {
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
        if let Some(peer) = self.peers.get_mut(idx) {
            self.waiting.ready(peer, idx);
        }
    }

    /// Pumps every peer queued this turn (a pump may queue others: they run too).
    fn pump_ready(&mut self) {
        while let Some(idx) = self.waiting.next_ready(&mut self.peers) {
            self.pump(idx);
        }
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
            self.stats.encrypted_bytes += peer.crypto.seal_control(&mut peer.control_sending);
            peer.session.out_mut().clear();
            peer.control_sent = 0;
            peer.control_inflight = true;
            peer.ops_inflight += 1;
            peer.session.on_send_started(now);
            peer.send_progress_at = now;
            let sqe = control_send_sqe(peer, idx);
            self.push(&sqe);
            return;
        }
        if let Some(reason) = peer.session.finished() {
            // Half-closed, or draining, and every answer it was owed went out.
            self.close_peer(idx, reason);
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
        let Some(peer) = self.peers.get_mut(idx) else {
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
        peer.send_progress_at = self.now;
        if peer.control_sent < peer.control_sending.len() {
            // Short send: send the rest before anything else goes out.
            let sqe = control_send_sqe(peer, idx);
            peer.ops_inflight += 1;
            self.push(&sqe);
            return;
        }
        peer.control_inflight = false;
        peer.control_sending = Vec::new(); // idle peers hold no send buffer (peer.rs)
        self.pump(idx);
    }

    /// Plans a batch of the peer's queued blocks into a free send slot and submits it.
    fn start_batch(&mut self, idx: u32) {
        let (peers, mut parts) = self.send_parts();
        let Some(peer) = peers.get_mut(idx) else {
            return;
        };
        match parts.start_batch(peer, idx) {
            BatchStart::Submitted => {}
            BatchStart::Wait => self.wait_for_slot(idx),
            BatchStart::Close(reason) => self.close_peer(idx, reason),
            BatchStart::Unservable => {
                self.with_session(idx, |s, _, actions| {
                    s.refuse_next(RejectReason::Unservable, actions)
                });
                self.queue_pump(idx);
            }
        }
    }

    /// The peer waits for a free slot (or a free file); `serve_slot_waiters` retries it.
    fn wait_for_slot(&mut self, idx: u32) {
        if let Some(peer) = self.peers.get_mut(idx) {
            self.waiting.for_slot(peer, idx);
        }
    }

    /// The parts of the shard a batch's completions touch, lent to `submit`.
    fn send_parts(&mut self) -> (&mut PeerTable, SendParts<'_>) {
        (
            &mut self.peers,
            SendParts {
                ring: &mut self.ring,
                slots: &mut self.slots,
                scratch: &mut self.plan_scratch,
                files: &mut self.files,
                stats: &mut self.stats,
                health: &mut self.health,
                config: &self.config,
                now: self.now,
            },
        )
    }

    fn on_chain_step(&mut self, idx: u32, c: Completion, seq: u16) {
        let (peers, mut parts) = self.send_parts();
        if let Some(peer) = peers.get_mut(idx) {
            parts.on_chain_step(peer, &c, seq);
        }
    }

    fn on_batch_sent(&mut self, idx: u32, c: Completion, slot: u16) {
        let (peers, mut parts) = self.send_parts();
        let Some(peer) = peers.get_mut(idx) else {
            return;
        };
        match parts.on_batch_sent(peer, idx, &c, slot) {
            BatchSent::More(sqe) => self.push(&sqe),
            BatchSent::Done => self.pump(idx),
            BatchSent::Failed(None) => {}
            BatchSent::Failed(Some(reason)) => self.close_peer(idx, reason),
        }
    }

    fn on_send_notification(&mut self, idx: u32, c: Completion, slot: u16) {
        let (peers, mut parts) = self.send_parts();
        if let Some(peer) = peers.get_mut(idx) {
            parts.on_notification(peer, &c, slot);
        }
    }

    fn serve_slot_waiters(&mut self) {
        // Each waiter gets one try per turn while slots are free. One that goes back to
        // waiting (its source or network at its send-slot bound, every cached file busy)
        // goes to the back, and the next is tried: a limited waiter must not leave free
        // slots idle for the peers behind it.
        let mut tries = self.waiting.slot_waiters();
        while tries > 0 && self.slots.pool.free_slots() > 0 {
            tries -= 1;
            let Some(idx) = self.waiting.next_for_slot(&mut self.peers) else {
                return;
            };
            self.pump(idx);
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
            let target = Token::new(OpKind::Connect, 0, idx, peer.generation);
            self.push(&cancel_sqe(target));
        }
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        tracing::debug!(shard = self.index, peer = %peer.addr, reason = reason.as_str(), "closing peer");
        self.stats.closed(reason);
        self.plaintext_redial(idx);
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        // Wake every op on the socket: recv returns 0, sends fail; reads finish normally.
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::shutdown(peer.fd.as_raw_fd(), libc::SHUT_RDWR) };
        let torrent = peer.session.torrent().map(|t| t.info_hash);
        if let (CloseReason::DiskError, Some(h)) = (reason, torrent) {
            // A truncated or replaced file: reopen it on next use, so a restored file serves
            // again without a restart (the batch released its uses before we got here).
            self.forget_content(&h);
        }
        if let Some(next) = self.choker.remove(key, tick) {
            self.unchoke(next.0);
        }
        self.maybe_free(idx);
    }

    /// Whatever the fault or the fix, a torrent's files are reopened on next use (its idle
    /// fds and mappings dropped) and its blocks served from disk afresh, never from memory
    /// read before.
    fn forget_content(&mut self, h: &InfoHash) {
        self.files.forget_idle(h, &mut self.ring);
        if let Some(cache) = self.slots.cache.as_mut() {
            cache.purge(h);
        }
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
        let Some(mut peer) = self.peers.remove(idx) else {
            return;
        };
        self.recv.release(&mut peer);
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
        let stall = Duration::from_secs(self.config.send_stall_secs);
        for idx in 0..self.peers.slots() {
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            if peer.phase == Phase::Closing {
                continue;
            }
            let send_busy = peer.send_busy();
            if send_busy && now.duration_since(peer.send_progress_at) > stall {
                // Closing wakes its ops (shutdown): the send fails and its batch gives back
                // the slot, files and cache references it held.
                self.close_peer(idx, CloseReason::SendStalled);
                continue;
            }
            match peer.session.on_tick(now, &limits, send_busy) {
                Err(reason) => self.close_peer(idx, reason),
                Ok(()) if peer.session.has_out() => self.pump(idx),
                Ok(()) => {}
            }
        }
        self.expire_extras_loads();
        self.http_on_tick();
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
        self.arm_accepts();
        if now >= self.next_stats_at {
            self.next_stats_at = now + Duration::from_millis(STATS_INTERVAL_MS);
            self.sync_stats();
            self.stats.publish(&self.stats_tx);
        }
    }
}

/// Queues an SQE. Only a broken ring fails here (a full SQ is flushed by `Ring::push`).
fn push_or_log(ring: &mut Ring, sqe: &squeue::Entry) {
    if let Err(e) = ring.push(sqe) {
        tracing::error!("io_uring push failed: {e}");
    }
}
