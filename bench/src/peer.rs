//! One synthetic leecher's protocol state, sans I/O: bytes and a clock go in, request bytes
//! and counted events come out.
//!
//! Owns: the handshake exchange, interested/choke/unchoke, the piece walk (every piece of the
//! torrent in a shuffled order before repeating), the outstanding-request window (`depth`),
//! the open-loop schedule (intended send times, so latency is corrected for coordinated
//! omission as wrk2 does), retries after reject and choke, and which pieces to verify
//! (`verify.rs` hashes them as a stream).
//! Must never: touch a socket, read a clock, allocate per block on the hot path, hold a piece
//! buffer (block payloads are hashed straight from the caller's receive buffer when they
//! arrive in order, and copied only into the small bounded reorder buffer when they do not),
//! or panic on bytes a seeder sends.

use std::collections::VecDeque;
use std::sync::Arc;

use squall_engine::metainfo::torrent::Torrent;
use squall_engine::wire::{
    decode_frame, encode, encode_request, parse_handshake, BlockRequest, ExtendedHandshake,
    Handshake, Message, BLOCK_LEN_BYTES, HANDSHAKE_LEN,
};

use crate::stats::{ErrorKind, Stats};
use crate::verify::{Outcome, StreamVerifier};

/// Largest frame we accept from a seeder: a block of up to 128 KiB plus headers, or the
/// bitfield of a torrent with millions of pieces.
pub const FRAME_LEN_MAX_BYTES: u32 = 2 << 20;
/// `--verify sample` hashes one piece in this many (on average: each piece is drawn).
pub const SAMPLE_EVERY_PIECES: u64 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Full,
    Sample,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Pieces 0, 1, 2 ... in order.
    Sequential,
    /// Every piece once in a fresh shuffled order per walk.
    Random,
    /// Pieces drawn with a Zipf(s = 1) popularity, piece 0 hottest: a "hot content" mix.
    Zipf,
}

/// Per-peer knobs, shared by every peer of a run.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub depth: usize,
    pub verify: Verify,
    pub pattern: Pattern,
    /// Open loop: one request every this many ns per peer; `None` is closed loop.
    pub interval_ns: Option<u64>,
    /// Stop requesting after one full walk of the torrent (the event loop then reconnects
    /// the peer to another torrent: the catalog "hop").
    pub stop_after_walk: bool,
    /// Stop requesting after this many payload bytes (churn: fetch, leave).
    pub stop_after_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitHandshake,
    Connected,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    req: BlockRequest,
    /// When the request was written (closed loop) or meant to be (open loop), ns.
    intended_ns: u64,
}

/// Why a peer must be closed (counted by kind, then reconnected by the event loop).
#[derive(Debug, PartialEq, Eq)]
pub struct PeerError(pub ErrorKind, pub String);

pub struct Peer {
    pub torrent: Arc<Torrent>,
    cfg: PeerConfig,
    peer_id: [u8; 20],
    pub phase: Phase,
    pub choked: bool,
    /// Since when the peer has been choked (handshake or the last choke), ns; meaningful
    /// only while `choked`.
    pub choked_since_ns: u64,
    /// The seeder's handshake arrived at this time (ns), for the connect histogram.
    pub handshake_done: bool,
    order: Vec<u32>,
    order_pos: usize,
    /// The piece whose blocks are being requested, and the next offset in it.
    cursor: Option<(u32, u32)>,
    retry: VecDeque<BlockRequest>,
    outstanding: VecDeque<Outstanding>,
    verifier: StreamVerifier,
    /// Pieces chosen for verification that the verifier could not track (its `pieces_max`
    /// was reached); added to `verify_skipped_out_of_order` at the next `on_recv`.
    verify_refused: u64,
    rng: u64,
    /// Open loop: when the next request is due, ns.
    next_due_ns: u64,
    /// Open loop: this peer's requests fall on the grid `phase_ns + k x interval` (ns since
    /// the run's epoch). Peers get evenly spread phases, so N peers at R/N each offer a
    /// smooth R per second instead of N requests at once every interval.
    phase_ns: u64,
    bytes_received: u64,
    /// Blocks this connection received inside the measured window (`peers_at_end.served`).
    pub blocks_in_window: u64,
    /// True once the walk (or byte budget) is done and nothing is outstanding.
    pub finished: bool,
    walk_done: bool,
}

impl Peer {
    pub fn new(torrent: Arc<Torrent>, cfg: PeerConfig, seed: u64, now_ns: u64) -> Peer {
        let mut rng = seed | 1;
        let mut random = [0u8; 12];
        for b in random.iter_mut() {
            *b = (xorshift(&mut rng) >> 24) as u8;
        }
        let peer_id = squall_engine::wire::peer_id(b"-SB0001-", random);
        // Pieces with blocks in flight: one per outstanding request plus the one being
        // requested (see StreamVerifier::new).
        let pieces_max = cfg.depth + 1;
        let mut peer = Peer {
            torrent,
            cfg,
            peer_id,
            phase: Phase::AwaitHandshake,
            choked: true,
            choked_since_ns: now_ns,
            handshake_done: false,
            order: Vec::new(),
            order_pos: 0,
            cursor: None,
            retry: VecDeque::new(),
            outstanding: VecDeque::new(),
            verifier: StreamVerifier::new(pieces_max),
            verify_refused: 0,
            rng,
            next_due_ns: now_ns,
            phase_ns: 0,
            bytes_received: 0,
            blocks_in_window: 0,
            finished: false,
            walk_done: false,
        };
        peer.new_walk();
        peer
    }

    /// Open loop: puts this peer's schedule on the grid `phase_ns + k x interval`.
    pub fn with_phase(mut self, phase_ns: u64) -> Peer {
        self.phase_ns = phase_ns;
        self
    }

    /// When the oldest unanswered request was written (or due), ns.
    pub fn oldest_outstanding_ns(&self) -> Option<u64> {
        self.outstanding.front().map(|o| o.intended_ns)
    }

    pub fn outstanding_len(&self) -> usize {
        self.outstanding.len()
    }

    /// Open loop: the time the next request is due, when the window has room for it.
    pub fn next_due_ns(&self) -> Option<u64> {
        if self.cfg.interval_ns.is_some()
            && self.phase == Phase::Connected
            && !self.choked
            && self.outstanding.len() < self.cfg.depth
            && !self.finished
        {
            Some(self.next_due_ns)
        } else {
            None
        }
    }

    /// Writes our handshake; called once the TCP connection is up.
    pub fn on_connected(&mut self, out: &mut Vec<u8>) {
        let hs = Handshake::new(self.torrent.info_hash.0, self.peer_id, true, true);
        out.extend_from_slice(&hs.to_bytes());
    }

    /// Consumes every complete frame at the start of `buf` and returns how many bytes were
    /// consumed; the caller keeps the rest for the next call. Requests to send are appended
    /// to `out` (by `refill`, which this calls once at the end).
    pub fn on_recv(
        &mut self,
        buf: &[u8],
        now_ns: u64,
        stats: &mut Stats,
        out: &mut Vec<u8>,
    ) -> Result<usize, PeerError> {
        let mut pos = 0usize;
        stats.verify_skipped_out_of_order += std::mem::take(&mut self.verify_refused);
        if self.phase == Phase::AwaitHandshake {
            let hs = match parse_handshake(buf) {
                Ok(Some(hs)) => hs,
                Ok(None) => return Ok(0),
                Err(e) => return Err(PeerError(ErrorKind::Protocol, e.to_string())),
            };
            if hs.info_hash != self.torrent.info_hash.0 {
                return Err(PeerError(
                    ErrorKind::Protocol,
                    "seeder answered with another info-hash".into(),
                ));
            }
            pos = HANDSHAKE_LEN;
            self.phase = Phase::Connected;
            self.handshake_done = true;
            self.choked_since_ns = now_ns;
            if hs.supports_fast() {
                encode(&Message::HaveNone, out);
            }
            if hs.supports_extended() {
                let ext = ExtendedHandshake {
                    reqq: Some(self.cfg.depth as u32),
                    v: Some("squall-bench".into()),
                    ..Default::default()
                };
                let payload = ext.encode();
                squall_engine::wire::encode_extended(0, &payload, out);
            }
            encode(&Message::Interested, out);
        }
        loop {
            let rest = &buf[pos..];
            let (msg, used) = match decode_frame(rest, FRAME_LEN_MAX_BYTES) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => return Err(PeerError(ErrorKind::Protocol, e.to_string())),
            };
            self.on_message(msg, now_ns, stats)?;
            pos += used;
        }
        self.refill(now_ns, out);
        Ok(pos)
    }

    fn on_message(
        &mut self,
        msg: Message<'_>,
        now_ns: u64,
        stats: &mut Stats,
    ) -> Result<(), PeerError> {
        match msg {
            Message::Choke => {
                stats.count(ErrorKind::Choke);
                self.choked = true;
                self.choked_since_ns = now_ns;
                // BEP 3: a choke drops every pending request; ask again after unchoke.
                while let Some(o) = self.outstanding.pop_front() {
                    self.retry.push_back(o.req);
                }
            }
            Message::Unchoke => {
                self.choked = false;
                if let Some(interval) = self.cfg.interval_ns {
                    // The schedule starts when the seeder lets us in (time spent choked at
                    // the start is connection setup, measured in the connect histogram), at
                    // this peer's next grid point.
                    if self.next_due_ns < now_ns
                        && self.outstanding.is_empty()
                        && self.retry.is_empty()
                    {
                        self.next_due_ns = grid_at_or_after(now_ns, self.phase_ns, interval);
                    }
                }
            }
            Message::Piece { index, begin, data } => {
                self.on_block(index, begin, data, now_ns, stats)?
            }
            Message::RejectRequest(req) => {
                stats.count(ErrorKind::Reject);
                if let Some(i) = self
                    .outstanding
                    .iter()
                    .position(|o| o.req.index == req.index && o.req.begin == req.begin)
                {
                    if let Some(o) = self.outstanding.remove(i) {
                        self.retry.push_back(o.req);
                    }
                }
            }
            Message::HaveNone => {
                return Err(PeerError(
                    ErrorKind::Protocol,
                    "seeder has no pieces".into(),
                ))
            }
            // A seed: bitfield / have all / have / extended handshake carry nothing we need.
            _ => {}
        }
        Ok(())
    }

    fn on_block(
        &mut self,
        index: u32,
        begin: u32,
        data: &[u8],
        now_ns: u64,
        stats: &mut Stats,
    ) -> Result<(), PeerError> {
        // Seeders answer in request order, so the front is the usual match.
        let pos = if self
            .outstanding
            .front()
            .is_some_and(|o| o.req.index == index && o.req.begin == begin)
        {
            Some(0)
        } else {
            self.outstanding
                .iter()
                .position(|o| o.req.index == index && o.req.begin == begin)
        };
        let Some(pos) = pos else {
            // E.g. a block already in flight when a choke dropped its request.
            stats.count(ErrorKind::Unexpected);
            return Ok(());
        };
        let Some(o) = self.outstanding.remove(pos) else {
            return Ok(());
        };
        if data.len() != o.req.length as usize {
            return Err(PeerError(
                ErrorKind::Protocol,
                format!(
                    "block of {} bytes for a {}-byte request",
                    data.len(),
                    o.req.length
                ),
            ));
        }
        stats.on_block(
            data.len() as u64,
            now_ns.saturating_sub(o.intended_ns),
            now_ns,
        );
        self.bytes_received += data.len() as u64;
        if now_ns >= stats.record_from_ns {
            self.blocks_in_window += 1;
        }
        let torrent = &self.torrent;
        match self
            .verifier
            .on_block(index, begin, data, || torrent.piece_hash(index))
        {
            Outcome::Pending => {}
            Outcome::Verified => stats.pieces_verified += 1,
            Outcome::Bad => stats.bad_pieces += 1,
            Outcome::SkippedOutOfOrder => stats.verify_skipped_out_of_order += 1,
        }
        self.check_finished();
        Ok(())
    }

    /// Done when nothing is owed and the walk (or byte budget) is over. Checked after every
    /// block and after every refill: the walk's end is discovered only when `refill` asks for
    /// the next piece, which can be after the last block arrived (a whole window answered in
    /// one receive), and a peer that missed it would sit idle, connected, for the rest of the
    /// run.
    fn check_finished(&mut self) {
        if self.outstanding.is_empty()
            && self.retry.is_empty()
            && (self.walk_done || self.budget_spent())
        {
            self.finished = true;
        }
    }

    fn budget_spent(&self) -> bool {
        self.cfg
            .stop_after_bytes
            .is_some_and(|max| self.bytes_received >= max)
    }

    /// Tops the window up to `depth`, appending request frames to `out` (one send per refill).
    pub fn refill(&mut self, now_ns: u64, out: &mut Vec<u8>) {
        if self.phase != Phase::Connected || self.choked {
            return;
        }
        while self.outstanding.len() < self.cfg.depth {
            let intended_ns = match self.cfg.interval_ns {
                None => now_ns,
                Some(interval) => {
                    if self.next_due_ns > now_ns {
                        break;
                    }
                    let due = self.next_due_ns;
                    self.next_due_ns += interval;
                    due
                }
            };
            let Some(req) = self.next_request() else {
                if let Some(interval) = self.cfg.interval_ns {
                    // Nothing to ask for: give the slot back to the schedule.
                    self.next_due_ns -= interval;
                }
                break;
            };
            encode_request(req, out);
            self.outstanding.push_back(Outstanding { req, intended_ns });
        }
        self.check_finished();
    }

    fn next_request(&mut self) -> Option<BlockRequest> {
        if let Some(r) = self.retry.pop_front() {
            return Some(r);
        }
        if self.budget_spent() {
            return None;
        }
        if self.cursor.is_none() {
            let index = self.next_piece()?;
            self.start_piece(index);
            self.cursor = Some((index, 0));
        }
        let (index, begin) = self.cursor?;
        let piece_len = self.torrent.piece_len(index) as u32;
        let length = BLOCK_LEN_BYTES.min(piece_len - begin);
        let next = begin + length;
        self.cursor = if next >= piece_len {
            None
        } else {
            Some((index, next))
        };
        Some(BlockRequest {
            index,
            begin,
            length,
        })
    }

    fn next_piece(&mut self) -> Option<u32> {
        let n = self.torrent.num_pieces();
        if n == 0 || self.walk_done {
            return None;
        }
        if self.cfg.pattern == Pattern::Zipf {
            return Some(zipf_draw(&mut self.rng, n));
        }
        if self.order_pos >= self.order.len() {
            if self.cfg.stop_after_walk {
                self.walk_done = true;
                return None;
            }
            self.new_walk();
        }
        let index = self.order[self.order_pos];
        self.order_pos += 1;
        Some(index)
    }

    fn new_walk(&mut self) {
        let n = self.torrent.num_pieces();
        self.order.clear();
        self.order.extend(0..n);
        if self.cfg.pattern == Pattern::Random {
            // Fisher-Yates.
            for i in (1..self.order.len()).rev() {
                let j = (xorshift(&mut self.rng) % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
        }
        self.order_pos = 0;
    }

    fn start_piece(&mut self, index: u32) {
        let verify = match self.cfg.verify {
            Verify::Full => true,
            // A draw per piece, not "every 16th piece of this connection": a peer that hops
            // after a short walk (catalog: 4 pieces) would otherwise verify its first piece
            // every time, a quarter of all bytes, and the bench's SHA-1 would cap the run.
            Verify::Sample => xorshift(&mut self.rng).is_multiple_of(SAMPLE_EVERY_PIECES),
            Verify::Off => false,
        };
        // A piece requested again while still being verified (zipf) is not verified twice.
        if !verify || self.verifier.is_tracking(index) {
            return;
        }
        if !self
            .verifier
            .start(index, self.torrent.piece_len(index) as u32)
        {
            self.verify_refused += 1;
        }
    }
}

/// The first time `>= now_ns` of the form `phase_ns + k x interval_ns`.
fn grid_at_or_after(now_ns: u64, phase_ns: u64, interval_ns: u64) -> u64 {
    if now_ns <= phase_ns || interval_ns == 0 {
        return phase_ns.max(now_ns);
    }
    let steps = (now_ns - phase_ns).div_ceil(interval_ns);
    phase_ns + steps * interval_ns
}

pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Draws a piece index with P(i) proportional to 1/(i+1), by inverting the approximate CDF
/// ln(i+1)/ln(n+1); cheap and good enough to make a few pieces hot.
fn zipf_draw(rng: &mut u64, n: u32) -> u32 {
    let u = (xorshift(rng) >> 11) as f64 / (1u64 << 53) as f64;
    let i = ((n as f64 + 1.0).ln() * u).exp() - 1.0;
    (i as u32).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_engine::wire::decode_frame;

    fn torrent(content: &[u8], piece_len: u64) -> Arc<Torrent> {
        Arc::new(crate::content::torrent_for_bytes("t", content, piece_len).expect("torrent"))
    }

    fn cfg(depth: usize, verify: Verify) -> PeerConfig {
        PeerConfig {
            depth,
            verify,
            pattern: Pattern::Sequential,
            interval_ns: None,
            stop_after_walk: false,
            stop_after_bytes: None,
        }
    }

    fn requests(bytes: &[u8]) -> Vec<BlockRequest> {
        let mut pos = 0;
        let mut out = Vec::new();
        while let Ok(Some((msg, used))) = decode_frame(&bytes[pos..], FRAME_LEN_MAX_BYTES) {
            if let Message::Request(r) = msg {
                out.push(r);
            }
            pos += used;
        }
        out
    }

    fn seeder_hello(t: &Torrent) -> Vec<u8> {
        let mut b = Handshake::new(t.info_hash.0, [9u8; 20], true, true)
            .to_bytes()
            .to_vec();
        encode(&Message::HaveAll, &mut b);
        encode(&Message::Unchoke, &mut b);
        b
    }

    fn piece_msg(index: u32, begin: u32, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode(&Message::Piece { index, begin, data }, &mut b);
        b
    }

    fn content(len: usize) -> Vec<u8> {
        let mut s = 99u64;
        (0..len).map(|_| xorshift(&mut s) as u8).collect()
    }

    #[test]
    fn handshake_then_window_of_depth_requests() {
        // Proves: after the seeder's handshake + unchoke the peer says interested and writes
        // exactly `depth` requests of whole 16 KiB blocks, and a partial frame is left unconsumed.
        let data = content(256 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut p = Peer::new(t.clone(), cfg(8, Verify::Off), 1, 0);
        let mut out = Vec::new();
        p.on_connected(&mut out);
        assert_eq!(out.len(), HANDSHAKE_LEN);
        out.clear();
        let mut hello = seeder_hello(&t);
        hello.extend_from_slice(&[0, 0]); // half a length prefix
        let used = p.on_recv(&hello, 10, &mut stats, &mut out).expect("ok");
        assert_eq!(used, hello.len() - 2);
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 8);
        assert!(reqs.iter().all(|r| r.length == BLOCK_LEN_BYTES));
        // Sequential pattern: the first two pieces, whole.
        assert_eq!((reqs[0].index, reqs[0].begin), (0, 0));
        assert_eq!((reqs[4].index, reqs[4].begin), (1, 0));
    }

    #[test]
    fn blocks_verify_pieces_and_refill_window() {
        // Proves: blocks answered out of order still assemble into a piece whose SHA-1 is
        // checked (good content verifies, corrupt content counts as bad), and each answered
        // block frees a window slot that is refilled.
        let data = content(128 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut p = Peer::new(t.clone(), cfg(4, Verify::Full), 1, 0);
        let mut out = Vec::new();
        p.on_recv(&seeder_hello(&t), 0, &mut stats, &mut out)
            .expect("ok");
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 4);
        // Answer piece 0 out of order: blocks 1, 0, 3, 2.
        for &i in &[1usize, 0, 3, 2] {
            let r = reqs[i];
            let off = (r.index as u64 * 65536 + r.begin as u64) as usize;
            let mut o = Vec::new();
            p.on_recv(
                &piece_msg(r.index, r.begin, &data[off..off + 16384]),
                5_000,
                &mut stats,
                &mut o,
            )
            .expect("ok");
            assert_eq!(requests(&o).len(), 1, "one slot freed, one request written");
        }
        assert_eq!(stats.pieces_verified, 1);
        assert_eq!(stats.bad_pieces, 0);
        assert_eq!(stats.blocks, 4);
        assert_eq!(stats.bytes, 65536);
        // Piece 1 with one corrupted byte.
        let mut bad = data.clone();
        bad[65536 + 100] ^= 0xff;
        for b in 0..4u32 {
            let off = 65536 + (b * 16384) as usize;
            let mut o = Vec::new();
            p.on_recv(
                &piece_msg(1, b * 16384, &bad[off..off + 16384]),
                6_000,
                &mut stats,
                &mut o,
            )
            .expect("ok");
        }
        assert_eq!(stats.bad_pieces, 1);
    }

    #[test]
    fn choke_drops_requests_and_reject_retries() {
        // Proves: a choke moves every outstanding request to the retry queue and stops
        // requesting; unchoke re-sends them first; a reject re-requests that block.
        let data = content(128 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut p = Peer::new(t.clone(), cfg(2, Verify::Off), 1, 0);
        let mut out = Vec::new();
        p.on_recv(&seeder_hello(&t), 0, &mut stats, &mut out)
            .expect("ok");
        let first = requests(&out);
        assert_eq!(first.len(), 2);
        let mut choke = Vec::new();
        encode(&Message::Choke, &mut choke);
        let mut o = Vec::new();
        p.on_recv(&choke, 1, &mut stats, &mut o).expect("ok");
        assert!(requests(&o).is_empty());
        assert_eq!(p.outstanding_len(), 0);
        let mut unchoke = Vec::new();
        encode(&Message::Unchoke, &mut unchoke);
        let mut o = Vec::new();
        p.on_recv(&unchoke, 2, &mut stats, &mut o).expect("ok");
        assert_eq!(requests(&o), first, "the dropped requests come back first");
        let mut reject = Vec::new();
        encode(&Message::RejectRequest(first[0]), &mut reject);
        let mut o = Vec::new();
        p.on_recv(&reject, 3, &mut stats, &mut o).expect("ok");
        assert_eq!(requests(&o), vec![first[0]]);
        assert_eq!(stats.errors[ErrorKind::Choke as usize], 1);
        assert_eq!(stats.errors[ErrorKind::Reject as usize], 1);
    }

    #[test]
    fn wrong_info_hash_and_short_block_are_errors() {
        // Proves: a seeder answering for another torrent, or a block shorter than asked, closes
        // the peer with a protocol error instead of being counted as good data.
        let data = content(64 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut p = Peer::new(t.clone(), cfg(2, Verify::Off), 1, 0);
        let hs = Handshake::new([1u8; 20], [9u8; 20], true, true).to_bytes();
        let err = p
            .on_recv(&hs, 0, &mut stats, &mut Vec::new())
            .expect_err("wrong hash");
        assert_eq!(err.0, ErrorKind::Protocol);
        let mut p = Peer::new(t.clone(), cfg(2, Verify::Off), 1, 0);
        p.on_recv(&seeder_hello(&t), 0, &mut stats, &mut Vec::new())
            .expect("ok");
        let err = p
            .on_recv(
                &piece_msg(0, 0, &data[..100]),
                1,
                &mut stats,
                &mut Vec::new(),
            )
            .expect_err("short block");
        assert_eq!(err.0, ErrorKind::Protocol);
    }

    #[test]
    fn open_loop_latency_counts_from_intended_time() {
        // Proves: in open loop a request due at t=0 but answered at t=5 ms records 5 ms even
        // if it was written late, and requests are only written when due.
        let data = content(64 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut c = cfg(4, Verify::Off);
        c.interval_ns = Some(1_000_000);
        let mut p = Peer::new(t.clone(), c, 1, 0);
        let mut out = Vec::new();
        p.on_recv(&seeder_hello(&t), 0, &mut stats, &mut out)
            .expect("ok");
        assert_eq!(requests(&out).len(), 1, "only the request due at t=0");
        let mut o = Vec::new();
        p.refill(2_500_000, &mut o);
        assert_eq!(requests(&o).len(), 2, "the ones due at 1 and 2 ms");
        p.on_recv(
            &piece_msg(0, 0, &data[..16384]),
            5_000_000,
            &mut stats,
            &mut Vec::new(),
        )
        .expect("ok");
        assert_eq!(
            stats.latency_us.max(),
            5_000_u64.max(stats.latency_us.max())
        );
        assert!(stats.latency_us.max() >= 4_990);
    }

    #[test]
    fn open_loop_schedule_starts_on_the_peers_phase() {
        // Proves: a peer's open-loop requests fall on its own grid (phase + k x interval),
        // so peers unchoked together do not all fire at once; a peer unchoked at 2.5 ms with
        // phase 0.3 ms and a 1 ms interval sends its first request at 3.3 ms, not 2.5 ms.
        let data = content(64 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut c = cfg(4, Verify::Off);
        c.interval_ns = Some(1_000_000);
        let mut p = Peer::new(t.clone(), c, 1, 0).with_phase(300_000);
        let mut out = Vec::new();
        p.on_recv(&seeder_hello(&t), 2_500_000, &mut stats, &mut out)
            .expect("ok");
        assert!(requests(&out).is_empty(), "nothing is due at 2.5 ms");
        assert_eq!(p.next_due_ns(), Some(3_300_000));
        let mut o = Vec::new();
        p.refill(3_300_000, &mut o);
        assert_eq!(requests(&o).len(), 1);
        assert_eq!(p.next_due_ns(), Some(4_300_000));
        assert_eq!(grid_at_or_after(0, 300, 1_000), 300);
        assert_eq!(grid_at_or_after(1_300, 300, 1_000), 1_300);
        assert_eq!(grid_at_or_after(1_301, 300, 1_000), 2_300);
    }

    #[test]
    fn hop_peer_finishes_when_its_whole_last_window_arrives_at_once() {
        // Proves: with stop_after_walk (catalog hop), a peer whose final window of blocks is
        // answered in one receive is marked finished (so the event loop moves it to another
        // torrent) rather than sitting idle and connected. The walk's end is only discovered
        // by the refill after those blocks; this once left every catalog peer idle mid-run.
        let data = content(64 * 1024);
        let t = torrent(&data, 64 * 1024);
        let mut stats = Stats::new(0, 0);
        let mut c = cfg(4, Verify::Full);
        c.stop_after_walk = true;
        let mut p = Peer::new(t.clone(), c, 1, 0);
        let mut out = Vec::new();
        p.on_recv(&seeder_hello(&t), 0, &mut stats, &mut out)
            .expect("ok");
        assert_eq!(
            requests(&out).len(),
            4,
            "the window is full at the walk's last block"
        );
        let mut all = Vec::new();
        for b in 0..4u32 {
            let off = (b * 16384) as usize;
            all.extend(piece_msg(0, b * 16384, &data[off..off + 16384]));
        }
        let mut o = Vec::new();
        p.on_recv(&all, 1_000, &mut stats, &mut o).expect("ok");
        assert!(requests(&o).is_empty());
        assert!(p.finished, "nothing owed and the walk is over");
        assert_eq!(stats.pieces_verified, 1);
    }

    #[test]
    fn random_walk_visits_every_piece_before_repeating() {
        // Proves: the shuffled walk requests each piece exactly once per walk.
        let data = content(16 * 16384);
        let t = torrent(&data, 16384);
        let mut c = cfg(1, Verify::Off);
        c.pattern = Pattern::Random;
        let mut p = Peer::new(t, c, 42, 0);
        let mut seen: Vec<u32> = (0..16).map(|_| p.next_piece().expect("piece")).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..16).collect::<Vec<u32>>());
    }

    #[test]
    fn sample_verifies_one_piece_in_sixteen_even_over_short_walks() {
        // Proves: --verify sample picks about 1 piece in SAMPLE_EVERY_PIECES however short
        // a connection's walk is (the catalog scenario hops after 4 pieces), not the first
        // piece of every connection.
        let data = content(4 * 16 * 1024);
        let t = torrent(&data, 16 * 1024);
        let (mut started, mut verified) = (0u64, 0u64);
        for seed in 0..4000u64 {
            let mut p = Peer::new(t.clone(), cfg(1, Verify::Sample), seed * 7919 + 1, 0);
            for index in 0..4 {
                p.start_piece(index);
                started += 1;
                if p.verifier.is_tracking(index) {
                    verified += 1;
                }
            }
        }
        let expected = started / SAMPLE_EVERY_PIECES;
        assert!(
            verified > expected * 8 / 10 && verified < expected * 12 / 10,
            "{verified} of {started} pieces sampled, expected about {expected}"
        );
    }
}
