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

use super::requests::RequestQueue;
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
    queue: RequestQueue,
    /// Control bytes owed to the peer, in order; the shard sends them before any block.
    out: Vec<u8>,
    /// The peer shut its write side with answers owed: finish them, then close.
    read_closed: bool,
    /// Metadata and hash requests waiting for the torrent's extras (boxed: rare, and two
    /// empty lists inline would cost every peer 48 bytes). Some only while one waits.
    pending: Option<Box<PendingExtras>>,
    connected_at: Instant,
    last_recv_at: Instant,
    last_send_at: Instant,
    /// The peer's handshake id (zeros before the handshake), for the API's peer list.
    peer_id: [u8; 20],
    /// The `v` of its BEP 10 handshake (at most `CLIENT_NAME_LEN_MAX_BYTES`), if it sent one.
    client: Option<Box<str>>,
    /// Its torrent left the catalog: new requests are refused, queued ones are served, then
    /// the connection closes (`finished`), or at this deadline at the latest (`on_tick`).
    drain_deadline: Option<Instant>,
    /// The torrent an encrypted peer named in its MSE handshake (SKEY): its BitTorrent
    /// handshake must name the same one.
    skey: Option<InfoHash>,
}

/// What waits for a torrent's extras (at most `EXTRAS_PENDING_MAX` of each).
#[derive(Debug, Default)]
struct PendingExtras {
    metadata: Vec<u32>,
    hashes: Vec<HashRequest>,
}

/// Longest client name (BEP 10 `v`) a session keeps: a peer cannot make it hold more.
pub const CLIENT_NAME_LEN_MAX_BYTES: usize = 64;

/// `s` cut to at most `max_bytes` on a character boundary.
fn truncate_chars(s: &str, max_bytes: usize) -> Box<str> {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

impl Session {
    /// An inbound connection: the peer speaks first.
    pub fn inbound(ip: IpAddr, now: Instant) -> Session {
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
            queue: RequestQueue::default(),
            out: Vec::new(),
            read_closed: false,
            pending: None,
            connected_at: now,
            last_recv_at: now,
            last_send_at: now,
            peer_id: [0; 20],
            client: None,
            drain_deadline: None,
            skey: None,
        }
    }

    /// An outbound connection for `torrent`; `on_connected` writes our handshake.
    pub fn outbound(ip: IpAddr, now: Instant, torrent: Arc<CatalogTorrent>) -> Session {
        let mut s = Session::inbound(ip, now);
        s.outbound = Some(torrent);
        s
    }

    pub fn is_active(&self) -> bool {
        self.active
    }
    pub fn torrent(&self) -> Option<&Arc<CatalogTorrent>> {
        self.torrent.as_ref()
    }
    /// The torrent a dial-out was made for (None: inbound), known before any handshake.
    pub fn dialed_for(&self) -> Option<&Arc<CatalogTorrent>> {
        self.outbound.as_ref()
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
    pub fn queue(&self) -> &RequestQueue {
        &self.queue
    }
    /// The queue's storage only (lent and taken back by `shard::spare`; what it holds is the
    /// session's).
    pub fn queue_storage(&mut self) -> &mut RequestQueue {
        &mut self.queue
    }
    /// The next queued request (the plan takes requests from the front, in order).
    pub fn next_request(&self) -> Option<QueuedRequest> {
        self.queue.front()
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
    /// The peer's handshake id and its BEP 10 client name, if any (the API's peer list).
    pub fn identity(&self) -> (&[u8; 20], Option<&str>) {
        (&self.peer_id, self.client.as_deref())
    }
    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }
    pub fn awaiting_extras(&self) -> bool {
        self.pending.is_some()
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

    /// The peer finished an MSE handshake naming `info_hash` (its SKEY): the BitTorrent
    /// handshake inside the encrypted stream must name that torrent too, or it is refused.
    pub fn expect_info_hash(&mut self, info_hash: InfoHash) {
        debug_assert!(!self.active, "an MSE handshake after the BitTorrent one");
        self.skey = Some(info_hash);
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
        if self.skey.is_some_and(|k| k != info_hash) {
            // Encrypted under one torrent's key, asking for another.
            return Err(CloseReason::BadHandshake);
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
        self.peer_id = hs.peer_id;
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
                if self.queue.cancel(r) {
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
                    self.client = hs.v.map(|v| truncate_chars(&v, CLIENT_NAME_LEN_MAX_BYTES));
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
                self.choke_for_errored(actions);
            }
        } else if self.drain_deadline.is_some() {
            // Its torrent was removed: what is queued is served, nothing new is taken.
            self.reject(r, RejectReason::TorrentRemoved, actions);
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

    /// The shard cannot serve the next queued request: it is refused (a BEP 6 reject for a
    /// fast peer; a plain peer only learns by its own timeout, as BEP 3 allows).
    pub fn refuse_next(&mut self, reason: RejectReason, actions: &mut Vec<Action>) {
        if let Some(q) = self.queue.pop_front() {
            self.reject(q.request, reason, actions);
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
            self.choke_for_errored(actions);
        }
    }

    /// A plain peer of an errored torrent is choked (BEP 3: that discards its queue) and
    /// gives its upload slot back, so the choker can serve others meanwhile; it asks for a
    /// slot again when the torrent recovers (`on_recovered`).
    fn choke_for_errored(&mut self, actions: &mut Vec<Action>) {
        if !self.am_choking {
            self.choke(actions);
            actions.push(Action::LeavesSlot);
        }
    }

    /// The torrent recovered: an interested peer that is choked asks for a slot again (it
    /// was choked for the error, or waits in line already: the choker keeps one place).
    pub fn on_recovered(&mut self, actions: &mut Vec<Action>) {
        if self.active && self.peer_interested && self.am_choking {
            actions.push(Action::WantsSlot);
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

    /// Its torrent left the catalog: refuse new requests, serve the queued ones, then close
    /// (by `deadline` at the latest).
    pub fn start_drain(&mut self, deadline: Instant) {
        if self.active && self.drain_deadline.is_none() {
            self.drain_deadline = Some(deadline);
        }
    }

    /// The connection owes nothing more and should close, and why: a half-closed peer got
    /// every answer it was owed, or a draining one got its queued blocks.
    pub fn finished(&self) -> Option<CloseReason> {
        let done = self.out.is_empty() && (self.am_choking || self.queue.is_empty());
        if self.read_closed && done {
            Some(CloseReason::PeerClosed)
        } else if self.drain_deadline.is_some() && done {
            Some(CloseReason::TorrentRemoved)
        } else {
            None
        }
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
        if self.drain_deadline.is_some_and(|d| now >= d) {
            return Err(CloseReason::TorrentRemoved);
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
            None if self.pending.as_ref().map_or(0, |p| p.metadata.len()) < EXTRAS_PENDING_MAX => {
                if !self.awaiting_extras() {
                    actions.push(Action::NeedsExtras);
                }
                self.pending
                    .get_or_insert_with(Default::default)
                    .metadata
                    .push(piece);
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
            None if self.pending.as_ref().map_or(0, |p| p.hashes.len()) < EXTRAS_PENDING_MAX => {
                if !self.awaiting_extras() {
                    actions.push(Action::NeedsExtras);
                }
                self.pending
                    .get_or_insert_with(Default::default)
                    .hashes
                    .push(r);
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
        let Some(pending) = self.pending.take() else {
            return;
        };
        for piece in pending.metadata {
            let info = extras.and_then(|e| e.info.as_deref());
            self.answer_metadata(piece, info, actions);
        }
        for r in pending.hashes.iter() {
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
    if torrent.is_v2_only() && starts_in_implicit_pad(torrent, r) {
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

/// A v2-only torrent's files are piece-aligned and the padding between them is implicit
/// (BEP 52): no v2 peer has a reason to ask for a block that starts past a file's end, and
/// such a request is refused rather than answered with zeros. A block that starts inside a
/// file and runs into the padding is served, zeros included: libtorrent 2.0 sizes its
/// requests by the padded piece and asks for exactly those (measured: refusing them stalls
/// its downloads; tests/e2e_v2.rs). Hybrids are not checked: their pad files are explicit
/// and v1 peers request them as part of whole pieces.
fn starts_in_implicit_pad(torrent: &CatalogTorrent, r: BlockRequest) -> bool {
    let start = u64::from(r.index) * torrent.piece_length + u64::from(r.begin);
    // Files are sorted by offset; the last one starting at or before `start` holds it
    // (empty files share their successor's offset and sort before it).
    let at = torrent.files.partition_point(|f| f.offset <= start);
    match at.checked_sub(1).and_then(|i| torrent.files.get(i)) {
        Some(f) => f.pad || start >= f.offset + f.length,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::hash_tree::TorrentTrees;
    use crate::wire::message::decode_frame;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    const PIECE_LEN: u64 = 4 * 16384;
    const PIECES: u32 = 8;
    const OUR_ID: [u8; 20] = [7; 20];
    const THEIR_ID: [u8; 20] = [9; 20];

    fn torrent() -> Arc<CatalogTorrent> {
        Arc::new(CatalogTorrent {
            piece_length: PIECE_LEN,
            total_length: PIECE_LEN * u64::from(PIECES),
            num_pieces: PIECES,
            have: vec![0xff],
            info_len_bytes: 40_000,
            ..CatalogTorrent::fixture(1)
        })
    }

    /// A shard as a session sees it, with one torrent.
    struct FakeEnv {
        limits: SessionLimits,
        torrent: Arc<CatalogTorrent>,
        peers: usize,
        errored: bool,
        extras: HashMap<InfoHash, TorrentExtras>,
    }

    impl FakeEnv {
        fn new() -> FakeEnv {
            FakeEnv {
                limits: SessionLimits {
                    block_len_max_bytes: 16384,
                    request_queue_max: 4,
                    peers_per_torrent_max: 2,
                    handshake_timeout: Duration::from_secs(10),
                    idle_timeout: Duration::from_secs(120),
                    keepalive_interval: Duration::from_secs(60),
                },
                torrent: torrent(),
                peers: 0,
                errored: false,
                extras: HashMap::new(),
            }
        }
    }

    impl SessionEnv for FakeEnv {
        fn limits(&self) -> &SessionLimits {
            &self.limits
        }
        fn peer_id(&self) -> [u8; 20] {
            OUR_ID
        }
        fn torrent(&self, h: &InfoHash) -> Option<Arc<CatalogTorrent>> {
            (*h == self.torrent.info_hash).then(|| self.torrent.clone())
        }
        fn torrent_peers(&self, _: &InfoHash) -> usize {
            self.peers
        }
        fn is_errored(&self, _: &InfoHash) -> bool {
            self.errored
        }
        fn extras(&self, h: &InfoHash) -> Option<&TorrentExtras> {
            self.extras.get(h)
        }
    }

    fn hs(fast: bool, peer_id: [u8; 20]) -> Handshake {
        Handshake::new([1; 20], peer_id, true, fast)
    }

    /// An active inbound session (handshake done, its answer drained).
    fn active(env: &FakeEnv, fast: bool, t0: Instant) -> Session {
        let mut s = Session::inbound("127.0.0.1".parse().unwrap(), t0);
        let mut a = Vec::new();
        s.on_handshake(&hs(fast, THEIR_ID), env, &mut a).unwrap();
        assert_eq!(a, vec![Action::Joined]);
        s.out_mut().clear();
        s
    }

    /// The messages in `out` as owned (id, body) pairs.
    fn frames(out: &[u8]) -> Vec<(Option<u8>, Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = 0;
        while let Ok(Some((m, used))) = decode_frame(&out[at..], 1 << 20) {
            v.push((m.id(), out[at + 5.min(used)..at + used].to_vec()));
            at += used;
        }
        assert_eq!(at, out.len(), "out holds whole frames only");
        v
    }

    fn count_id(out: &[u8], id: u8) -> usize {
        frames(out).iter().filter(|f| f.0 == Some(id)).count()
    }

    fn req(index: u32, begin: u32) -> BlockRequest {
        BlockRequest {
            index,
            begin,
            length: 16384,
        }
    }

    #[test]
    fn v2_only_requests_past_a_files_end_are_refused_and_hybrid_pads_are_served() {
        // Proves: in a v2-only torrent a block starting in the implicit padding after a
        // file is Invalid; one starting inside the file is valid even where it runs into
        // the padding (libtorrent asks for those); the same layout as a hybrid (explicit
        // pads, v1 wire hash) accepts every block.
        let files = crate::storage::extents::layout([
            (PathBuf::from("a"), 40_000, false),
            (PathBuf::new(), 9_152, true),
            (PathBuf::from("e"), 0, false),
            (PathBuf::from("f"), 10, false),
            (PathBuf::new(), 16_374, true),
        ]);
        let v2 = |hybrid: bool| CatalogTorrent {
            info_hash: InfoHash(if hybrid { [2; 20] } else { [5; 20] }),
            info_hash_v2: Some([5; 32]),
            piece_length: 16_384,
            total_length: 65_536,
            num_pieces: 4,
            files: files.clone(),
            ..(*torrent()).clone()
        };
        let req = |index, begin, length| BlockRequest {
            index,
            begin,
            length,
        };
        let only = v2(false);
        assert!(only.is_v2_only() && !v2(true).is_v2_only() && !torrent().is_v2_only());
        let cases = [
            (req(0, 0, 16_384), true),
            (req(2, 0, 7_232), true),
            (req(2, 0, 16_384), true),
            (req(2, 7_231, 16), true),
            (req(2, 7_232, 16), false),
            (req(2, 16_000, 384), false),
            (req(3, 0, 16_384), true),
            (req(3, 9, 1), true),
            (req(3, 10, 16), false),
        ];
        for (r, ok) in cases {
            assert_eq!(validate_request(&only, r, 16_384).is_ok(), ok, "{r:?}");
            assert!(validate_request(&v2(true), r, 16_384).is_ok(), "{r:?}");
        }
        assert_eq!(
            validate_request(&only, req(2, 7_232, 16), 16_384),
            Err(RejectReason::Invalid)
        );
    }

    #[test]
    fn an_inbound_handshake_is_answered_with_handshake_extensions_and_have_all() {
        // Proves: the answer to a fast, extended peer of a complete torrent is our handshake,
        // the BEP 10 handshake (metadata_size from the catalog, no file read) and HaveAll.
        let env = FakeEnv::new();
        let mut s = Session::inbound("127.0.0.1".parse().unwrap(), Instant::now());
        let mut a = Vec::new();
        s.on_handshake(&hs(true, THEIR_ID), &env, &mut a).unwrap();
        assert!(s.is_active());
        let out = s.out_mut().clone();
        assert_eq!(
            &out[..20],
            &crate::wire::handshake::Handshake::new([1; 20], OUR_ID, true, true).to_bytes()[..20]
        );
        let rest = frames(&out[crate::wire::handshake::HANDSHAKE_LEN..]);
        assert_eq!(rest[0].0, Some(message::id::EXTENDED));
        let ext = ExtendedHandshake::parse(&rest[0].1[1..]).unwrap();
        assert_eq!(ext.metadata_size, Some(40_000));
        assert_eq!(rest[1].0, Some(message::id::HAVE_ALL));
    }

    #[test]
    fn handshakes_to_ourselves_unknown_torrents_and_full_torrents_are_refused() {
        let mut env = FakeEnv::new();
        let t0 = Instant::now();
        let ip = "127.0.0.1".parse().unwrap();
        let mut a = Vec::new();
        let mut s = Session::inbound(ip, t0);
        assert_eq!(
            s.on_handshake(&hs(true, OUR_ID), &env, &mut a),
            Err(CloseReason::SelfConnection)
        );
        let mut s = Session::inbound(ip, t0);
        let other = Handshake::new([2; 20], THEIR_ID, true, true);
        assert_eq!(
            s.on_handshake(&other, &env, &mut a),
            Err(CloseReason::UnknownInfoHash)
        );
        let mut s = Session::outbound(ip, t0, torrent());
        assert_eq!(
            s.on_handshake(&other, &env, &mut a),
            Err(CloseReason::BadHandshake)
        );
        env.peers = 2;
        let mut s = Session::inbound(ip, t0);
        assert_eq!(
            s.on_handshake(&hs(true, THEIR_ID), &env, &mut a),
            Err(CloseReason::PeersPerTorrentLimit)
        );
        assert!(a.is_empty(), "no refused handshake joins");
    }

    #[test]
    fn an_encrypted_peer_must_name_the_torrent_of_its_mse_key() {
        // Proves: after an MSE handshake under one torrent's SKEY, a BitTorrent handshake
        // naming another torrent is refused, and one naming the same torrent joins.
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let ip = "127.0.0.1".parse().unwrap();
        let mut a = Vec::new();
        let mut s = Session::inbound(ip, t0);
        s.expect_info_hash(InfoHash([2; 20]));
        assert_eq!(
            s.on_handshake(&hs(true, THEIR_ID), &env, &mut a),
            Err(CloseReason::BadHandshake)
        );
        let mut s = Session::inbound(ip, t0);
        s.expect_info_hash(InfoHash([1; 20]));
        assert_eq!(s.on_handshake(&hs(true, THEIR_ID), &env, &mut a), Ok(()));
    }

    #[test]
    fn requests_are_queued_only_when_unchoked_valid_and_within_the_bound() {
        // Proves the BEP 6 rule written once: a fast peer gets a reject for each refusal, a
        // plain peer gets silence, or a close for an invalid request.
        let env = FakeEnv::new();
        let t0 = Instant::now();
        for fast in [true, false] {
            let mut s = active(&env, fast, t0);
            let mut a = Vec::new();
            s.on_message(Message::Request(req(0, 0)), &env, t0, &mut a)
                .unwrap();
            assert_eq!(a, vec![Action::Rejected(RejectReason::Choked)]);
            assert_eq!(
                count_id(s.out_mut(), message::id::REJECT_REQUEST),
                fast as usize
            );
            assert!(s.unchoke());
            for i in 0..4 {
                s.on_message(Message::Request(req(i, 0)), &env, t0, &mut a)
                    .unwrap();
            }
            a.clear();
            s.on_message(Message::Request(req(5, 0)), &env, t0, &mut a)
                .unwrap();
            assert_eq!(a, vec![Action::Rejected(RejectReason::QueueFull)]);
            assert_eq!(s.queue().len(), 4);
            let bad = BlockRequest {
                index: 0,
                begin: PIECE_LEN as u32 - 1,
                length: 2,
            };
            let r = s.on_message(Message::Request(bad), &env, t0, &mut a);
            assert_eq!(
                r.is_err(),
                !fast,
                "an invalid request closes a plain peer only"
            );
        }
    }

    #[test]
    fn cancel_choke_and_errored_answer_every_queued_request() {
        let mut env = FakeEnv::new();
        let t0 = Instant::now();
        let mut s = active(&env, true, t0);
        let mut a = Vec::new();
        s.unchoke();
        for i in 0..3 {
            s.on_message(Message::Request(req(i, 0)), &env, t0, &mut a)
                .unwrap();
        }
        s.on_message(Message::Cancel(req(1, 0)), &env, t0, &mut a)
            .unwrap();
        assert_eq!(a, vec![Action::Rejected(RejectReason::Cancelled)]);
        a.clear();
        s.on_torrent_errored(&mut a);
        assert_eq!(a, vec![Action::Rejected(RejectReason::TorrentErrored); 2]);
        assert!(s.queue().is_empty());
        // A plain peer asking an errored torrent is choked.
        env.errored = true;
        let mut p = active(&env, false, t0);
        p.unchoke();
        p.on_message(Message::Request(req(0, 0)), &env, t0, &mut a)
            .unwrap();
        assert!(p.am_choking());
    }

    #[test]
    fn a_plain_peer_choked_for_an_errored_torrent_is_unchoked_after_recovery() {
        // Proves the choke-forever fix: the choke gives the slot back, recovery asks again.
        let mut env = FakeEnv::new();
        let t0 = Instant::now();
        let mut p = active(&env, false, t0);
        let mut a = Vec::new();
        p.on_message(Message::Interested, &env, t0, &mut a).unwrap();
        assert_eq!(a, vec![Action::WantsSlot]);
        assert!(p.unchoke());
        env.errored = true;
        a.clear();
        p.on_message(Message::Request(req(0, 0)), &env, t0, &mut a)
            .unwrap();
        assert!(p.am_choking());
        assert_eq!(
            a,
            vec![
                Action::Rejected(RejectReason::TorrentErrored),
                Action::LeavesSlot
            ]
        );
        env.errored = false;
        a.clear();
        p.on_recovered(&mut a);
        assert_eq!(a, vec![Action::WantsSlot]);
        assert!(p.unchoke(), "the choker's grant unchokes it again");
    }

    #[test]
    fn rule_breakers_get_a_reason() {
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let mut a = Vec::new();
        let mut plain = active(&env, false, t0);
        let piece = Message::Piece {
            index: 0,
            begin: 0,
            data: &[1],
        };
        assert_eq!(
            plain.on_message(piece, &env, t0, &mut a),
            Err(CloseReason::ProtocolViolation)
        );
        assert_eq!(
            plain.on_message(Message::HaveAll, &env, t0, &mut a),
            Err(CloseReason::ProtocolViolation)
        );
        assert_eq!(
            plain.on_message(Message::Have(PIECES), &env, t0, &mut a),
            Err(CloseReason::MalformedMessage)
        );
        assert_eq!(
            plain.on_message(Message::Bitfield(&[0, 0]), &env, t0, &mut a),
            Err(CloseReason::MalformedMessage)
        );
        let mut not_active = Session::inbound("127.0.0.1".parse().unwrap(), t0);
        assert_eq!(
            not_active.on_message(Message::Interested, &env, t0, &mut a),
            Err(CloseReason::ProtocolViolation)
        );
    }

    /// An extended message (BEP 10) from the peer.
    fn extended(s: &mut Session, env: &FakeEnv, id: u8, payload: &[u8], a: &mut Vec<Action>) {
        let msg = Message::Extended { id, payload };
        s.on_message(msg, env, Instant::now(), a).unwrap();
    }

    /// An active fast session whose peer said it takes ut_metadata messages.
    fn metadata_peer(env: &FakeEnv, a: &mut Vec<Action>) -> Session {
        let mut s = active(env, true, Instant::now());
        let mut ext = Vec::new();
        ExtendedHandshake {
            m: vec![(extended::UT_METADATA.into(), 5)],
            ..Default::default()
        }
        .encode()
        .clone_into(&mut ext);
        extended(&mut s, env, extended::HANDSHAKE_ID, &ext, a);
        s
    }

    /// The ut_metadata message types in `out` (0 request, 1 data, 2 reject).
    fn metadata_types(out: &[u8]) -> Vec<u8> {
        frames(out)
            .iter()
            .filter(|f| f.0 == Some(message::id::EXTENDED))
            .filter_map(|f| match MetadataMessage::parse(&f.1[1..]).ok()? {
                MetadataMessage::Request { .. } => Some(0),
                MetadataMessage::Data { .. } => Some(1),
                MetadataMessage::Reject { .. } => Some(2),
            })
            .collect()
    }

    #[test]
    fn metadata_requests_wait_for_extras_then_get_data_or_rejects() {
        // Proves: no file is read; one NeedsExtras per wait; the answer comes with the
        // extras (data), or with their failed load (reject); once loaded, at once.
        let mut env = FakeEnv::new();
        let mut a = Vec::new();
        let mut ask = Vec::new();
        MetadataMessage::Request { piece: 0 }.encode(&mut ask);
        let mut waits = metadata_peer(&env, &mut a);
        let mut fails = metadata_peer(&env, &mut a);
        a.clear();
        for s in [&mut waits, &mut fails] {
            extended(s, &env, UT_METADATA_LOCAL_ID, &ask, &mut a);
            extended(s, &env, UT_METADATA_LOCAL_ID, &ask, &mut a);
            assert!(s.awaiting_extras() && !s.has_out());
        }
        assert_eq!(
            a,
            vec![Action::NeedsExtras; 2],
            "one load asked per session"
        );
        let h = InfoHash([1; 20]);
        let loaded = TorrentExtras {
            info_hash: h,
            info: Some(vec![b'x'; 100]),
            trees: TorrentTrees::default(),
        };
        env.extras.insert(h, loaded);
        a.clear();
        waits.on_extras(env.extras(&h), &mut a);
        assert_eq!(a, vec![Action::MetadataPieceServed; 2]);
        assert_eq!(metadata_types(waits.out_mut()), vec![1, 1]);
        fails.on_extras(None, &mut a);
        assert_eq!(metadata_types(fails.out_mut()), vec![2, 2]);
        assert!(!waits.awaiting_extras() && !fails.awaiting_extras());
        a.clear();
        let mut late = metadata_peer(&env, &mut a);
        extended(&mut late, &env, UT_METADATA_LOCAL_ID, &ask, &mut a);
        assert_eq!(a, vec![Action::MetadataPieceServed], "answered at once");
        assert_eq!(metadata_types(late.out_mut()), vec![1]);
    }

    #[test]
    fn timeouts_and_keepalives_follow_the_clock_handed_in() {
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let l = env.limits;
        let waiting = &mut Session::inbound("127.0.0.1".parse().unwrap(), t0);
        assert_eq!(waiting.on_tick(t0 + l.handshake_timeout, &l, false), Ok(()));
        assert_eq!(
            waiting.on_tick(
                t0 + l.handshake_timeout + Duration::from_millis(1),
                &l,
                false
            ),
            Err(CloseReason::HandshakeTimeout)
        );
        let mut s = active(&env, true, t0);
        let later = t0 + l.keepalive_interval + Duration::from_millis(1);
        s.on_tick(later, &l, true).unwrap();
        assert!(!s.has_out(), "no keep-alive while a send is in flight");
        s.on_tick(later, &l, false).unwrap();
        assert_eq!(s.out_mut().as_slice(), &[0, 0, 0, 0]);
        s.on_received(later);
        assert_eq!(
            s.on_tick(later + l.idle_timeout + Duration::from_millis(1), &l, false),
            Err(CloseReason::IdleTimeout)
        );
    }

    #[test]
    fn a_half_closed_peer_is_finished_once_answered() {
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let mut s = active(&env, true, t0);
        let mut a = Vec::new();
        assert!(!s.on_read_closed(false), "nothing owed: close now");
        s.unchoke();
        s.on_message(Message::Request(req(0, 0)), &env, t0, &mut a)
            .unwrap();
        s.out_mut().clear();
        assert!(s.on_read_closed(false));
        assert!(s.finished().is_none());
        s.pop_request();
        assert_eq!(s.finished(), Some(CloseReason::PeerClosed));
    }

    #[test]
    fn a_draining_peer_gets_its_queue_refuses_new_requests_and_closes() {
        // Proves: once its torrent is removed, a session keeps the blocks it had queued, a
        // new request gets a BEP 6 reject counted as torrent_removed, it is finished (closed
        // as torrent_removed) when the queue is served, and the deadline closes it otherwise.
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let mut s = active(&env, true, t0);
        let mut a = Vec::new();
        s.unchoke();
        s.on_message(Message::Request(req(0, 0)), &env, t0, &mut a)
            .unwrap();
        s.out_mut().clear();
        let deadline = t0 + Duration::from_secs(5);
        s.start_drain(deadline);
        assert!(s.draining());
        s.on_message(Message::Request(req(1, 0)), &env, t0, &mut a)
            .unwrap();
        assert_eq!(a, vec![Action::Rejected(RejectReason::TorrentRemoved)]);
        assert_eq!(count_id(s.out_mut(), message::id::REJECT_REQUEST), 1);
        assert_eq!(s.queue().len(), 1, "the queued request stays");
        assert!(s.finished().is_none(), "the reject is still owed");
        s.out_mut().clear();
        assert!(s.finished().is_none(), "the queued block is still owed");
        let l = env.limits;
        assert_eq!(s.on_tick(t0 + Duration::from_secs(1), &l, true), Ok(()));
        assert_eq!(
            s.on_tick(deadline, &l, true),
            Err(CloseReason::TorrentRemoved)
        );
        s.pop_request();
        assert_eq!(s.finished(), Some(CloseReason::TorrentRemoved));
    }

    #[test]
    fn a_peer_that_never_reads_its_rejects_is_closed_for_backlog() {
        let env = FakeEnv::new();
        let t0 = Instant::now();
        let mut s = active(&env, true, t0);
        let mut a = Vec::new();
        let mut result = Ok(());
        for _ in 0..(CONTROL_BACKLOG_MAX_BYTES / 17 + 1) {
            result = s.on_message(Message::Request(req(0, 0)), &env, t0, &mut a);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(CloseReason::SendBacklog));
    }

    /// One step of a random peer conversation, or a decision of the shard.
    #[derive(Debug, Clone)]
    enum Step {
        Interested,
        NotInterested,
        Request(u32, u32),
        Cancel(usize),
        Unchoke,
        Choke,
        Serve(usize),
        Errored,
        Tick(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        // Weighted so that queues fill up: requests dominate, chokes and errors are rare.
        prop_oneof![
            1 => Just(Step::Interested),
            1 => Just(Step::NotInterested),
            12 => (0..PIECES + 1, 0u32..5).prop_map(|(i, b)| Step::Request(i, b)),
            2 => (0usize..8).prop_map(Step::Cancel),
            3 => Just(Step::Unchoke),
            1 => Just(Step::Choke),
            2 => (0usize..4).prop_map(Step::Serve),
            1 => Just(Step::Errored),
            2 => (0u64..90_000).prop_map(Step::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Proves, against a simple model, for thousands of random conversations and time
        /// steps: every request is served exactly once, or rejected, or cancelled, or still
        /// queued (never lost, never twice); nothing is served to a choked peer; the queue
        /// never passes its bound; a fast peer gets one BEP 6 reject per refused request; a
        /// close always comes with a reason and only for a rule the model names.
        #[test]
        fn every_request_is_accounted_for(fast: bool, steps in proptest::collection::vec(step(), 1..80)) {
            let env = FakeEnv::new();
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = active(&env, fast, t0);
            let mut a = Vec::new();
            let (mut asked, mut served, mut rejected) = (0usize, 0usize, 0usize);
            let mut sent: Vec<BlockRequest> = Vec::new();
            let mut errored = false;
            let mut env = env;
            for st in steps {
                a.clear();
                let result = match st {
                    Step::Interested => s.on_message(Message::Interested, &env, now, &mut a),
                    Step::NotInterested => s.on_message(Message::NotInterested, &env, now, &mut a),
                    Step::Request(index, block) => {
                        let r = req(index, block * 16384);
                        asked += 1;
                        sent.push(r);
                        let valid = validate_request(&env.torrent, r, 16384).is_ok();
                        let before = s.queue().len();
                        let res = s.on_message(Message::Request(r), &env, now, &mut a);
                        if errored || !valid || s.am_choking() {
                            prop_assert!(s.queue().len() <= before, "queued a request it must refuse");
                        }
                        if !valid && !fast {
                            prop_assert_eq!(res, Err(CloseReason::InvalidRequest));
                        }
                        res
                    }
                    Step::Cancel(i) => match sent.get(i).copied() {
                        Some(r) => s.on_message(Message::Cancel(r), &env, now, &mut a),
                        None => Ok(()),
                    },
                    Step::Unchoke => { s.unchoke(); Ok(()) }
                    Step::Choke => { s.choke(&mut a); Ok(()) }
                    Step::Serve(n) => {
                        for _ in 0..n {
                            if !s.wants_blocks() { break; }
                            prop_assert!(!s.am_choking(), "served to a choked peer");
                            s.pop_request();
                            served += 1;
                        }
                        Ok(())
                    }
                    Step::Errored => {
                        errored = !errored;
                        env.errored = errored;
                        if errored {
                            s.on_torrent_errored(&mut a);
                            prop_assert!(s.queue().is_empty(), "an errored torrent's queue is answered");
                        }
                        Ok(())
                    }
                    Step::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        let r = s.on_tick(now, &env.limits, false);
                        if r.is_err() {
                            prop_assert_eq!(r, Err(CloseReason::IdleTimeout));
                        }
                        r
                    }
                };
                rejected += a.iter().filter(|x| matches!(x, Action::Rejected(_))).count();
                prop_assert!(s.queue().len() <= env.limits.request_queue_max);
                prop_assert!(!s.am_choking() || s.queue().is_empty(), "a choked peer holds no requests");
                if let Err(reason) = result {
                    prop_assert!(matches!(reason, CloseReason::InvalidRequest | CloseReason::IdleTimeout));
                    // The invalid request that closed a plain peer was counted as rejected.
                    prop_assert_eq!(asked, served + rejected + s.queue().len());
                    return Ok(());
                }
                prop_assert_eq!(asked, served + rejected + s.queue().len());
            }
            if fast {
                prop_assert_eq!(count_id(s.out_mut(), message::id::REJECT_REQUEST), rejected);
            }
        }
    }
}
