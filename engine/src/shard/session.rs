//! The BitTorrent peer protocol of one connection, as a state machine with no I/O.
//!
//! Owns: what the protocol says about one peer: its handshake and what we answer (handshake,
//! BEP 10 extended handshake, bitfield or BEP 6 HaveAll/HaveNone), the choke state seen from
//! our side and the peer's interest, the queue of validated block requests, the control bytes
//! owed to the peer (`out`), BEP 6 rejects, BEP 9 metadata and BEP 52 hash answers, and the
//! timeouts (handshake, idle, keep-alive). Every rule is written once, here.
//!
//! Shape (quinn-proto's): the shard hands in a decoded message or an event with `now`, and a
//! read-only view of the shard (`SessionEnv`: catalog, per-torrent counts, errored set,
//! loaded extras); the session changes its own state, appends wire bytes to `out`, and pushes
//! `Action`s for what only the shard can do (count a reject, ask the choker for a slot,
//! load a torrent's extras). A protocol violation is returned as `Err(CloseReason)`.
//!
//! Must never: do I/O, read a clock, import `ring`, `io_uring`, sockets or files, allocate
//! per message beyond `out` and the bounded queues, or panic on anything a peer sends.

use crate::catalog::CatalogTorrent;
use crate::config::EngineConfig;
use crate::metainfo::InfoHash;
use crate::plane::TorrentExtras;
use crate::stats::{CloseReason, RejectReason};
use crate::wire::extended::{self, ExtendedHandshake};
use crate::wire::handshake::Handshake;
use crate::wire::hashes::{self, HashRequest, HASH_REJECT, HASH_REQUEST};
use crate::wire::message::{self, BlockRequest, Message};
use crate::wire::metadata::{metadata_piece_range, MetadataMessage};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Our id for ut_metadata in the extended handshake `m` dictionary.
pub const UT_METADATA_LOCAL_ID: u8 = 3;
/// Control bytes (rejects, metadata, haves) queued for a peer that does not read; above this
/// the peer is closed (`send_backlog`).
pub const CONTROL_BACKLOG_MAX_BYTES: usize = 256 * 1024;
/// BEP 9 piece requests and BEP 52 hash requests a session holds while its torrent's extras
/// are loaded off the shard; more are rejected at once.
pub const EXTRAS_PENDING_MAX: usize = 16;
pub const CLIENT_VERSION: &str = concat!("Squall ", env!("CARGO_PKG_VERSION"));

/// The limits a session enforces, taken from the config once per shard.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub block_len_max_bytes: u32,
    pub request_queue_max: usize,
    pub peers_per_torrent_max: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
}

impl SessionLimits {
    pub fn from_config(c: &EngineConfig) -> SessionLimits {
        SessionLimits {
            block_len_max_bytes: c.block_len_max_bytes,
            request_queue_max: c.request_queue_per_peer_max,
            peers_per_torrent_max: c.peers_per_torrent_max,
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            keepalive_interval: Duration::from_secs(c.keepalive_interval_secs),
        }
    }
}

/// What a session may read of its shard. Read-only: the shard applies `Action`s.
pub trait SessionEnv {
    fn limits(&self) -> &SessionLimits;
    /// Our peer id (a handshake carrying it is a connection to ourselves).
    fn peer_id(&self) -> [u8; 20];
    /// The catalog's torrent for a handshake's info-hash.
    fn torrent(&self, info_hash: &InfoHash) -> Option<Arc<CatalogTorrent>>;
    /// Peers this shard serves for the torrent now.
    fn torrent_peers(&self, info_hash: &InfoHash) -> usize;
    fn is_errored(&self, info_hash: &InfoHash) -> bool;
    /// The torrent's loaded extras (BEP 9 info, BEP 52 trees), if the shard holds them.
    fn extras(&self, info_hash: &InfoHash) -> Option<&TorrentExtras>;
}

/// What the shard does for a session, in order, right after the call that pushed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Count a request that got no block (a BEP 6 reject was written when the peer has fast).
    Rejected(RejectReason),
    /// The handshake was accepted: count the peer for its torrent.
    Joined,
    /// The peer became interested: ask the choker for an upload slot (then `unchoke`).
    WantsSlot,
    /// The peer lost interest: give its slot (or its place in line) to the next peer.
    LeavesSlot,
    /// A BEP 9 metadata piece was written.
    MetadataPieceServed,
    /// Requests wait for the torrent's extras: load them (then `on_extras`).
    NeedsExtras,
}

#[derive(Debug, Clone, Copy)]
pub struct QueuedRequest {
    pub request: BlockRequest,
    pub received_at: Instant,
}

/// The peer protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    ip: IpAddr,
    active: bool,
    /// Outbound: the torrent we dialed for (their handshake must name it).
    outbound: Option<Arc<CatalogTorrent>>,
    torrent: Option<Arc<CatalogTorrent>>,
    fast: bool,
    extended: bool,
    /// The peer's id for ut_metadata messages we send it (0: it does not take them).
    ut_metadata_id: u8,
    am_choking: bool,
    peer_interested: bool,
    queue: VecDeque<QueuedRequest>,
    /// Control bytes owed to the peer, in order; the shard sends them before any block.
    out: Vec<u8>,
    /// The peer shut its write side with answers owed: finish them, then close.
    read_closed: bool,
    pending_metadata: Vec<u32>,
    pending_hashes: Vec<HashRequest>,
    connected_at: Instant,
    last_recv_at: Instant,
    last_send_at: Instant,
}

impl Session {
    /// An inbound connection: the peer speaks first.
    pub fn inbound(ip: IpAddr, now: Instant, queue_max: usize) -> Session {
        Session {
            ip,
            active: false,
            outbound: None,
            torrent: None,
            fast: false,
            extended: false,
            ut_metadata_id: 0,
            am_choking: true,
            peer_interested: false,
            queue: VecDeque::with_capacity(queue_max.min(1024)),
            out: Vec::new(),
            read_closed: false,
            pending_metadata: Vec::new(),
            pending_hashes: Vec::new(),
            connected_at: now,
            last_recv_at: now,
            last_send_at: now,
        }
    }

    /// An outbound connection for `torrent`; `on_connected` writes our handshake.
    pub fn outbound(
        ip: IpAddr,
        now: Instant,
        queue_max: usize,
        torrent: Arc<CatalogTorrent>,
    ) -> Session {
        let mut s = Session::inbound(ip, now, queue_max);
        s.outbound = Some(torrent);
        s
    }

    pub fn is_active(&self) -> bool {
        self.active
    }
    pub fn torrent(&self) -> Option<&Arc<CatalogTorrent>> {
        self.torrent.as_ref()
    }
    pub fn fast(&self) -> bool {
        self.fast
    }
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }
    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }
    pub fn queue(&self) -> &VecDeque<QueuedRequest> {
        &self.queue
    }
    /// The next queued request (the plan takes requests from the front, in order).
    pub fn next_request(&self) -> Option<QueuedRequest> {
        self.queue.front().copied()
    }
    /// The front request was planned into a batch.
    pub fn pop_request(&mut self) -> Option<QueuedRequest> {
        self.queue.pop_front()
    }
    /// Control bytes to send (the shard swaps them out when it starts a send).
    pub fn out_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }
    pub fn connected_at(&self) -> Instant {
        self.connected_at
    }
    /// Blocks are owed and may be served now.
    pub fn wants_blocks(&self) -> bool {
        !self.am_choking && !self.queue.is_empty()
    }
    pub fn awaiting_extras(&self) -> bool {
        !self.pending_metadata.is_empty() || !self.pending_hashes.is_empty()
    }

    /// Outbound: the connection is up; we speak first.
    pub fn on_connected(&mut self, env: &impl SessionEnv) {
        if let Some(t) = &self.outbound {
            self.out.extend_from_slice(
                &Handshake::new(t.info_hash.0, env.peer_id(), true, true)
                    .with_v2(t.info_hash_v2.is_some())
                    .to_bytes(),
            );
        }
    }

    /// Bytes arrived from the peer (idle timeout counts from here).
    pub fn on_received(&mut self, now: Instant) {
        self.last_recv_at = now;
    }

    /// A send to the peer started (keep-alives count from here).
    pub fn on_send_started(&mut self, now: Instant) {
        self.last_send_at = now;
    }

    /// The peer's handshake. On success the session is active and our answer is in `out`.
    pub fn on_handshake(
        &mut self,
        hs: &Handshake,
        env: &impl SessionEnv,
        actions: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        debug_assert!(!self.active, "a second handshake on one connection");
        let info_hash = InfoHash(hs.info_hash);
        if hs.peer_id == env.peer_id() {
            return Err(CloseReason::SelfConnection);
        }
        let torrent = match self.outbound.as_ref() {
            // We dialed for one torrent: the answer must name it.
            Some(t) if t.info_hash != info_hash => return Err(CloseReason::BadHandshake),
            Some(t) => t.clone(),
            None => env
                .torrent(&info_hash)
                .ok_or(CloseReason::UnknownInfoHash)?,
        };
        // Keyed by the torrent's own hash: a hybrid's v2 peers count with its v1 peers.
        if env.torrent_peers(&torrent.info_hash) >= env.limits().peers_per_torrent_max {
            return Err(CloseReason::PeersPerTorrentLimit);
        }
        self.fast = hs.supports_fast();
        self.extended = hs.supports_extended();
        self.active = true;
        if self.outbound.is_none() {
            // Inbound: the dialer spoke first; answer. (Outbound sent ours at connect.)
            let ours = Handshake::new(hs.info_hash, env.peer_id(), true, true)
                .with_v2(torrent.info_hash_v2.is_some());
            self.out.extend_from_slice(&ours.to_bytes());
        }
        if self.extended {
            let ext = ExtendedHandshake {
                m: vec![(extended::UT_METADATA.to_string(), UT_METADATA_LOCAL_ID)],
                metadata_size: (torrent.info_len_bytes > 0).then_some(torrent.info_len_bytes),
                reqq: Some(env.limits().request_queue_max as u32),
                v: Some(CLIENT_VERSION.to_string()),
                upload_only: true,
                yourip: Some(match self.ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                }),
                p: None,
            };
            extended::encode_extended(extended::HANDSHAKE_ID, &ext.encode(), &mut self.out);
        }
        let have_any = torrent.have.iter().any(|b| *b != 0);
        if self.fast && torrent.complete {
            message::encode(&Message::HaveAll, &mut self.out);
        } else if self.fast && !have_any {
            message::encode(&Message::HaveNone, &mut self.out);
        } else if have_any {
            message::encode(&Message::Bitfield(&torrent.have), &mut self.out);
        }
        self.torrent = Some(torrent);
        actions.push(Action::Joined);
        Ok(())
    }

    /// One decoded message of an active session.
    pub fn on_message(
        &mut self,
        msg: Message<'_>,
        env: &impl SessionEnv,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        let Some(torrent) = self.torrent.clone().filter(|_| self.active) else {
            return Err(CloseReason::ProtocolViolation);
        };
        match msg {
            Message::KeepAlive | Message::Choke | Message::Unchoke | Message::Port(_) => {}
            Message::Have(index) => {
                if index >= torrent.num_pieces {
                    return Err(CloseReason::MalformedMessage);
                }
            }
            Message::Bitfield(bits) => {
                if bits.len() != message::bitfield_len_bytes(torrent.num_pieces) {
                    return Err(CloseReason::MalformedMessage);
                }
            }
            Message::Interested => {
                if !self.peer_interested {
                    self.peer_interested = true;
                    actions.push(Action::WantsSlot);
                }
            }
            Message::NotInterested => {
                if self.peer_interested {
                    self.peer_interested = false;
                    self.choke(actions);
                    actions.push(Action::LeavesSlot);
                }
            }
            Message::Request(r) => self.on_request(r, &torrent, env, now, actions)?,
            Message::Cancel(r) => {
                if let Some(pos) = self.queue.iter().position(|q| q.request == r) {
                    self.queue.remove(pos);
                    // BEP 6: with the fast extension every request gets a piece or a reject.
                    self.reject(r, RejectReason::Cancelled, actions);
                }
            }
            Message::Piece { .. } => return Err(CloseReason::ProtocolViolation),
            Message::HaveAll
            | Message::HaveNone
            | Message::SuggestPiece(_)
            | Message::AllowedFast(_)
            | Message::RejectRequest(_) => {
                if !self.fast {
                    return Err(CloseReason::ProtocolViolation);
                }
            }
            Message::Extended { id, payload } => {
                if !self.extended {
                    return Err(CloseReason::ProtocolViolation);
                }
                if id == extended::HANDSHAKE_ID {
                    let hs = ExtendedHandshake::parse(payload)
                        .map_err(|_| CloseReason::MalformedMessage)?;
                    self.ut_metadata_id = hs.extension_id(extended::UT_METADATA).unwrap_or(0);
                } else if id == UT_METADATA_LOCAL_ID {
                    let m = MetadataMessage::parse(payload)
                        .map_err(|_| CloseReason::MalformedMessage)?;
                    if let MetadataMessage::Request { piece } = m {
                        self.on_metadata_request(piece, &torrent, env, actions);
                    }
                }
                // Other extension ids: we never advertised them; ignore, as BEP 10 asks.
            }
            Message::Unknown {
                id: HASH_REQUEST,
                payload,
            } if torrent.info_hash_v2.is_some() => {
                let r = hashes::parse_hash_request(HASH_REQUEST, payload)
                    .map_err(|_| CloseReason::ProtocolViolation)?;
                self.on_hash_request(r, &torrent, env, actions);
            }
            Message::Unknown { .. } => {}
        }
        if self.out.len() > CONTROL_BACKLOG_MAX_BYTES {
            return Err(CloseReason::SendBacklog);
        }
        Ok(())
    }

    /// A block request: validated, then queued, or refused with the reason counted (and a
    /// BEP 6 reject for a fast peer; an invalid request from a peer without fast closes it).
    fn on_request(
        &mut self,
        r: BlockRequest,
        torrent: &CatalogTorrent,
        env: &impl SessionEnv,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), CloseReason> {
        let limits = env.limits();
        if let Err(reason) = validate_request(torrent, r, limits.block_len_max_bytes) {
            if !self.fast {
                actions.push(Action::Rejected(reason));
                return Err(CloseReason::InvalidRequest);
            }
            self.reject(r, reason, actions);
        } else if env.is_errored(&torrent.info_hash) {
            // No data from an errored torrent; the peer may stay (it recovers).
            self.reject(r, RejectReason::TorrentErrored, actions);
            if !self.fast {
                self.choke(actions);
            }
        } else if self.am_choking {
            self.reject(r, RejectReason::Choked, actions);
        } else if self.queue.len() >= limits.request_queue_max {
            self.reject(r, RejectReason::QueueFull, actions);
        } else {
            self.queue.push_back(QueuedRequest {
                request: r,
                received_at: now,
            });
        }
        Ok(())
    }

    /// Counts a refused request and, for a fast peer, writes its BEP 6 reject.
    fn reject(&mut self, r: BlockRequest, reason: RejectReason, actions: &mut Vec<Action>) {
        actions.push(Action::Rejected(reason));
        if self.fast {
            message::encode(&Message::RejectRequest(r), &mut self.out);
        }
    }

    /// The choker (or a rule) chokes this peer. BEP 3: choking discards its pending requests;
    /// BEP 6 peers get a reject for each so they can re-request elsewhere at once.
    pub fn choke(&mut self, actions: &mut Vec<Action>) {
        if self.am_choking {
            return;
        }
        self.am_choking = true;
        message::encode(&Message::Choke, &mut self.out);
        while let Some(q) = self.queue.pop_front() {
            self.reject(q.request, RejectReason::Choked, actions);
        }
    }

    /// The choker gave this peer a slot. Returns whether an unchoke was written.
    pub fn unchoke(&mut self) -> bool {
        if !self.active || !self.am_choking {
            return false;
        }
        self.am_choking = false;
        message::encode(&Message::Unchoke, &mut self.out);
        true
    }

    /// The torrent is errored: every queued request is answered now (BEP 6 rejects), or a
    /// peer without fast is choked, which discards its queue (BEP 3).
    pub fn on_torrent_errored(&mut self, actions: &mut Vec<Action>) {
        if self.fast {
            while let Some(q) = self.queue.pop_front() {
                self.reject(q.request, RejectReason::TorrentErrored, actions);
            }
        } else {
            for _ in 0..self.queue.len() {
                actions.push(Action::Rejected(RejectReason::TorrentErrored));
            }
            self.queue.clear();
            self.choke(actions);
        }
    }

    /// The peer shut its write side. Returns true when answers are still owed (the session
    /// finishes them, then `finished` says so); false: close now.
    pub fn on_read_closed(&mut self, send_busy: bool) -> bool {
        if self.active && (!self.queue.is_empty() || send_busy || !self.out.is_empty()) {
            self.read_closed = true;
            return true;
        }
        false
    }

    /// A half-closed peer got every answer it was owed.
    pub fn finished(&self) -> bool {
        self.read_closed && self.out.is_empty() && (self.am_choking || self.queue.is_empty())
    }

    /// Housekeeping: the handshake and idle deadlines, and keep-alives (written to `out`
    /// when nothing was sent for `keepalive_interval` and no send is in flight).
    pub fn on_tick(
        &mut self,
        now: Instant,
        limits: &SessionLimits,
        send_busy: bool,
    ) -> Result<(), CloseReason> {
        if !self.active {
            if now.duration_since(self.connected_at) > limits.handshake_timeout {
                return Err(CloseReason::HandshakeTimeout);
            }
            return Ok(());
        }
        if now.duration_since(self.last_recv_at) > limits.idle_timeout {
            return Err(CloseReason::IdleTimeout);
        }
        if now.duration_since(self.last_send_at) > limits.keepalive_interval && !send_busy {
            message::encode(&Message::KeepAlive, &mut self.out);
        }
        Ok(())
    }

    /// BEP 9 metadata request: the piece from the loaded info dictionary, a reject, or held
    /// until the shard has loaded the torrent's extras.
    fn on_metadata_request(
        &mut self,
        piece: u32,
        torrent: &CatalogTorrent,
        env: &impl SessionEnv,
        actions: &mut Vec<Action>,
    ) {
        if self.ut_metadata_id == 0 {
            return;
        }
        match env.extras(&torrent.info_hash) {
            Some(extras) => self.answer_metadata(piece, extras.info.as_deref(), actions),
            None if self.pending_metadata.len() < EXTRAS_PENDING_MAX => {
                if !self.awaiting_extras() {
                    actions.push(Action::NeedsExtras);
                }
                self.pending_metadata.push(piece);
            }
            None => self.answer_metadata(piece, None, actions),
        }
    }

    fn answer_metadata(&mut self, piece: u32, info: Option<&[u8]>, actions: &mut Vec<Action>) {
        let mut payload = Vec::new();
        let range = info.and_then(|m| metadata_piece_range(m.len() as u64, piece));
        match (info, range) {
            (Some(m), Some(range)) => {
                MetadataMessage::Data {
                    piece,
                    total_size: m.len() as u64,
                    data: &m[range],
                }
                .encode(&mut payload);
                actions.push(Action::MetadataPieceServed);
            }
            _ => MetadataMessage::Reject { piece }.encode(&mut payload),
        }
        extended::encode_extended(self.ut_metadata_id, &payload, &mut self.out);
    }

    /// BEP 52 hash request (id 21): `hashes` (22) from the torrent's merkle trees, or hash
    /// reject (23) for what we cannot or will not answer; held while the extras load.
    fn on_hash_request(
        &mut self,
        r: HashRequest,
        torrent: &CatalogTorrent,
        env: &impl SessionEnv,
        actions: &mut Vec<Action>,
    ) {
        match env.extras(&torrent.info_hash) {
            Some(extras) => self.answer_hashes(&r, Some(extras)),
            None if self.pending_hashes.len() < EXTRAS_PENDING_MAX => {
                if !self.awaiting_extras() {
                    actions.push(Action::NeedsExtras);
                }
                self.pending_hashes.push(r);
            }
            None => self.answer_hashes(&r, None),
        }
    }

    fn answer_hashes(&mut self, r: &HashRequest, extras: Option<&TorrentExtras>) {
        let answer = extras.map(|e| e.trees.answer(r));
        // Debug level: one line per request lets an operator see what v2 peers ask for.
        tracing::debug!(
            base_layer = r.base_layer,
            index = r.index,
            length = r.length,
            proof_layers = r.proof_layers,
            answer = ?answer.as_ref().map(|a| a.as_ref().map(Vec::len)),
            "hash request from a v2 peer"
        );
        match answer {
            Some(Ok(nodes)) => hashes::encode_hashes(r, &nodes, &mut self.out),
            _ => hashes::encode_hash_request(HASH_REJECT, r, &mut self.out),
        }
    }

    /// The torrent's extras arrived (or could not be loaded: None): answer what waited.
    pub fn on_extras(&mut self, extras: Option<&TorrentExtras>, actions: &mut Vec<Action>) {
        let pieces = std::mem::take(&mut self.pending_metadata);
        for piece in pieces {
            let info = extras.and_then(|e| e.info.as_deref());
            self.answer_metadata(piece, info, actions);
        }
        let requests = std::mem::take(&mut self.pending_hashes);
        for r in requests.iter() {
            self.answer_hashes(r, extras);
        }
    }
}

/// Checks a request against the torrent: index, bounds inside the piece, length, and that
/// the piece is verified.
pub fn validate_request(
    torrent: &CatalogTorrent,
    r: BlockRequest,
    block_len_max: u32,
) -> Result<(), RejectReason> {
    if r.index >= torrent.num_pieces || r.length == 0 || r.length > block_len_max {
        return Err(RejectReason::Invalid);
    }
    let piece_len =
        crate::metainfo::torrent::piece_len(torrent.total_length, torrent.piece_length, r.index);
    if u64::from(r.begin) + u64::from(r.length) > piece_len {
        return Err(RejectReason::Invalid);
    }
    let byte = torrent
        .have
        .get((r.index / 8) as usize)
        .copied()
        .unwrap_or(0);
    if byte & (0x80 >> (r.index % 8)) == 0 {
        return Err(RejectReason::NotHave);
    }
    Ok(())
}
