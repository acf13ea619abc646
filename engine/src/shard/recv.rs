//! The receive path: what a peer's recv op is, and where its bytes go.
//!
//! Owns: the shard's provided-buffer ring for multishot recvs (`multishot_recv`), and the
//! rules of each peer's parse buffer: with multishot, received bytes are copied from the ring
//! buffer into the peer's buffer (which holds only the unparsed rest of a message) and the
//! ring buffer is recycled at once; with single recvs, the kernel writes into the peer's
//! buffer, which grows for a large message, bounded by `message_len_max_bytes`. Either way
//! the buffer shrinks back once a large message has been parsed, so a peer that sent one
//! and went idle holds no more than a small buffer. What the shard's buffers hold beyond
//! `RECV_BUF_INITIAL_BYTES` is counted against `recv_buffer_bytes_per_shard_max`; a peer whose
//! message would pass it is closed (`recv_memory_limit`).
//! With multishot, a peer whose buffer is empty after parsing holds none: the buffer goes
//! back to the shard's spares (at most `RECV_SPARE_BUFFERS_MAX` of at most
//! `RECV_BUF_INITIAL_BYTES` each) and the next completion takes one, so an idle connection
//! costs no receive memory and steady traffic allocates nothing.
//! Must never: resize a peer's buffer while a recv op names it (single recvs), keep a ring
//! buffer past the completion that delivered it, grow a buffer past one message, or let
//! the shard's buffers grow past their budget.

use crate::ring::provided::RecvBufRing;
use crate::ring::token::{OpKind, Token};
use crate::ring::Completion;
use crate::shard::peer::{Peer, Phase, RECV_BUF_INITIAL_BYTES};
use crate::stats::CloseReason;
use crate::wire::handshake::{parse_handshake, Handshake, HANDSHAKE_LEN};
use crate::wire::message::{self, decode_frame, frame_len, Message, LEN_PREFIX_BYTES};
use crate::wire::WireError;
use io_uring::{cqueue, opcode, squeue, types};
use std::os::fd::AsRawFd;

/// A parse buffer larger than this with nothing in it is given back (shrunk to its initial
/// size): it grew for one large message (a bitfield, metadata, an extension message).
pub const RECV_BUF_KEEP_MAX_BYTES: usize = 64 * 1024;

/// Spare parse buffers the shard keeps for multishot completions (each at most
/// `RECV_BUF_INITIAL_BYTES`): one is in use at a time (a completion is parsed before the
/// next), a few absorb buffers given back by peers whose partial message just completed.
pub const RECV_SPARE_BUFFERS_MAX: usize = 8;

/// Extension (BEP 10) and unknown-id messages longer than this are refused at their length
/// prefix, before their body is buffered: a seeder takes only small ones (handshakes, metadata
/// and hash requests), and a peer must not make it hold a large one it will ignore.
pub const UNSOLICITED_MESSAGE_LEN_MAX_BYTES: u32 = 64 * 1024;

/// One complete input from a peer's buffer.
pub enum Input<'a> {
    Handshake(Handshake),
    Message(Message<'a>),
}

/// The next complete input at the front of `buf` and the bytes it takes; None until one is
/// whole. Before the handshake only a handshake is read. A message a seeder refuses is
/// refused at its length prefix (`pieces`: the torrent's piece count, for the bitfield's
/// exact length), not after its body arrived.
pub fn next_input(
    buf: &[u8],
    handshake_done: bool,
    message_len_max_bytes: u32,
    pieces: Option<u32>,
) -> Result<Option<(Input<'_>, usize)>, CloseReason> {
    if !handshake_done {
        return match parse_handshake(buf) {
            Err(_) => Err(CloseReason::BadHandshake),
            Ok(None) => Ok(None),
            Ok(Some(hs)) => Ok(Some((Input::Handshake(hs), HANDSHAKE_LEN))),
        };
    }
    if let (Some(len), Some(&id)) = (frame_len(buf), buf.get(LEN_PREFIX_BYTES)) {
        let body_len = len.saturating_sub(1) as usize;
        match id {
            message::id::PIECE => return Err(CloseReason::ProtocolViolation),
            message::id::BITFIELD
                if pieces.is_some_and(|n| body_len != message::bitfield_len_bytes(n)) =>
            {
                return Err(CloseReason::MalformedMessage)
            }
            // What parsing it would find (its bencode is over the extension bound), found
            // before its body is buffered.
            message::id::EXTENDED if len > UNSOLICITED_MESSAGE_LEN_MAX_BYTES => {
                return Err(CloseReason::MalformedMessage)
            }
            id if !message::id::is_known(id) && len > UNSOLICITED_MESSAGE_LEN_MAX_BYTES => {
                return Err(CloseReason::MessageTooLong)
            }
            _ => {}
        }
    }
    match decode_frame(buf, message_len_max_bytes) {
        Ok(Some((msg, used))) => Ok(Some((Input::Message(msg), used))),
        Ok(None) => Ok(None),
        Err(WireError::MessageTooLong { .. }) => Err(CloseReason::MessageTooLong),
        Err(_) => Err(CloseReason::MalformedMessage),
    }
}

/// What a recv completion brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The peer is closing or gone: nothing to do.
    Ignored,
    /// multishot: the ring ran out of buffers in a burst; arm again.
    OutOfBuffers,
    /// The peer shut its write side (0 bytes).
    Eof,
    /// The socket failed.
    Failed,
    /// Bytes were added to the peer's buffer; `ended`: the op is no longer armed.
    Bytes { ended: bool },
    /// Holding the rest of the peer's message would take the shard's receive buffers past
    /// `recv_buffer_bytes_per_shard_max`: close it.
    OverBudget,
}

pub struct RecvPath {
    ring: Option<RecvBufRing>,
    message_len_max_bytes: usize,
    /// Bytes the shard's peers' buffers hold beyond `RECV_BUF_INITIAL_BYTES` each, and its
    /// bound. Below that a buffer is free: a handshake or a request never waits on the
    /// budget, so a shard whose budget is full still takes new peers.
    grown_bytes: usize,
    grown_bytes_max: usize,
    /// multishot: parse buffers no peer holds (bounded by `RECV_SPARE_BUFFERS_MAX`).
    spare: Vec<Vec<u8>>,
}

impl RecvPath {
    pub fn new(
        ring: Option<RecvBufRing>,
        message_len_max_bytes: u32,
        grown_bytes_max: usize,
    ) -> RecvPath {
        RecvPath {
            ring,
            message_len_max_bytes: message_len_max_bytes as usize,
            grown_bytes: 0,
            grown_bytes_max,
            spare: Vec::new(),
        }
    }

    /// Bytes the shard's peers' buffers hold beyond `RECV_BUF_INITIAL_BYTES` each, now.
    pub fn grown_bytes(&self) -> usize {
        self.grown_bytes
    }

    /// The peer's buffer may become `new_len` bytes within the shard's budget.
    fn fits(&self, peer: &Peer, new_len: usize) -> bool {
        let others = self.grown_bytes - peer.recv_charged_bytes;
        others + new_len.saturating_sub(RECV_BUF_INITIAL_BYTES) <= self.grown_bytes_max
    }

    /// Counts the peer's buffer as it is now.
    pub(crate) fn charge(&mut self, peer: &mut Peer) {
        let now = peer.recv_buf.len().saturating_sub(RECV_BUF_INITIAL_BYTES);
        self.grown_bytes = self.grown_bytes - peer.recv_charged_bytes + now;
        peer.recv_charged_bytes = now;
    }

    /// The peer is freed: its buffer no longer counts.
    pub fn release(&mut self, peer: &mut Peer) {
        self.grown_bytes -= peer.recv_charged_bytes;
        peer.recv_charged_bytes = 0;
    }

    pub fn multishot(&self) -> bool {
        self.ring.is_some()
    }

    /// The parse buffer a new peer starts with: empty with multishot (it grows on demand),
    /// else room for handshakes and requests.
    pub fn initial_buffer_bytes(&self) -> usize {
        if self.multishot() {
            0
        } else {
            RECV_BUF_INITIAL_BYTES
        }
    }

    /// The recv op to arm for the peer, with its state updated; None when it is closing or
    /// already armed; Err when its buffer would have to grow past the shard's budget.
    pub fn arm(&mut self, peer: &mut Peer, idx: u32) -> Result<Option<squeue::Entry>, CloseReason> {
        if peer.phase == Phase::Closing || peer.recv_armed {
            return Ok(None);
        }
        let token = Token::new(OpKind::Recv, 0, idx, peer.generation).encode();
        let sqe = if let Some(bufs) = &self.ring {
            // One op for the connection's life: every completion names a ring buffer.
            opcode::RecvMulti::new(types::Fd(peer.fd.as_raw_fd()), bufs.bgid())
                .build()
                .user_data(token)
        } else {
            if peer.recv_len == peer.recv_buf.len() {
                // The buffer is full of one incomplete message: grow, bounded by the largest
                // message allowed (checked by the decoder before we get here).
                let limit = self.message_len_max_bytes + 4;
                let new_len = (peer.recv_buf.len() * 2)
                    .max(RECV_BUF_INITIAL_BYTES)
                    .min(limit)
                    .max(peer.recv_len + 1);
                if !self.fits(peer, new_len) {
                    return Err(CloseReason::RecvMemoryLimit);
                }
                peer.recv_buf.resize(new_len, 0);
                self.charge(peer);
            }
            let buf = &mut peer.recv_buf[peer.recv_len..];
            opcode::Recv::new(
                types::Fd(peer.fd.as_raw_fd()),
                buf.as_mut_ptr(),
                buf.len() as u32,
            )
            .build()
            .user_data(token)
        };
        peer.recv_armed = true;
        peer.ops_inflight += 1;
        Ok(Some(sqe))
    }

    /// Takes a recv completion: its bytes into the peer's buffer (multishot: the ring buffer
    /// is given back at once, whatever state the peer is in), and the op's bookkeeping.
    pub fn on_completion(&mut self, peer: Option<&mut Peer>, c: &Completion) -> Received {
        let mut appended = 0usize;
        let mut over_budget = false;
        let multishot = self.multishot();
        let mut peer = peer;
        let bid = cqueue::buffer_select(c.flags).filter(|_| multishot);
        if let (Some(bid), Some(bufs)) = (bid, self.ring.as_mut()) {
            bufs.taken(bid);
        }
        if let Some(bid) = bid {
            let len = usize::try_from(c.result).unwrap_or(0);
            if let Some(peer) = peer.as_deref_mut() {
                if peer.phase != Phase::Closing && len > 0 {
                    // Bounded: the decoder closes a peer whose message exceeds
                    // message_len_max_bytes, so this holds at most one partial message
                    // plus one receive buffer; the shard's budget bounds them all.
                    let need = peer.recv_len + len;
                    if peer.recv_buf.is_empty() {
                        // An idle peer holds no buffer: take a spare (sized within the
                        // initial size, so it is free of the budget).
                        peer.recv_buf = self.spare.pop().unwrap_or_default();
                    }
                    if peer.recv_buf.len() < need {
                        let doubled = need.max(peer.recv_buf.len() * 2);
                        let new_len = if self.fits(peer, doubled) {
                            doubled
                        } else {
                            need
                        };
                        over_budget = !self.fits(peer, new_len);
                        if !over_budget {
                            peer.recv_buf.resize(new_len, 0);
                            self.charge(peer);
                        }
                    }
                    if let (false, Some(bufs)) = (over_budget, self.ring.as_ref()) {
                        peer.recv_buf[peer.recv_len..need].copy_from_slice(bufs.buffer(bid, len));
                        peer.recv_len = need;
                        appended = len;
                    }
                }
            }
            if let Some(bufs) = self.ring.as_mut() {
                bufs.recycle(bid);
            }
        }
        let Some(peer) = peer else {
            return Received::Ignored;
        };
        // A multishot recv stays armed while the kernel says MORE.
        let ended = !multishot || !cqueue::more(c.flags);
        if ended {
            peer.recv_armed = false;
            peer.ops_inflight -= 1;
        }
        if peer.phase == Phase::Closing {
            return Received::Ignored;
        }
        if multishot && c.result == -libc::ENOBUFS {
            return Received::OutOfBuffers;
        }
        if over_budget {
            return Received::OverBudget;
        }
        match c.result {
            0 => Received::Eof,
            r if r < 0 => Received::Failed,
            r => {
                if multishot {
                    debug_assert_eq!(
                        appended, r as usize,
                        "a multishot completion without its buffer"
                    );
                } else {
                    peer.recv_len += r as usize;
                }
                debug_assert!(peer.recv_len <= peer.recv_buf.len());
                Received::Bytes { ended }
            }
        }
    }

    /// After its messages were parsed: a buffer that grew for a large message and is now
    /// empty shrinks back (never while a single recv names it).
    pub fn after_parse(&mut self, peer: &mut Peer) {
        if self.multishot() {
            // Nothing names the buffer between completions: an empty one goes back.
            if peer.recv_len == 0 && !peer.recv_buf.is_empty() {
                let buf = std::mem::take(&mut peer.recv_buf);
                self.charge(peer);
                if buf.len() <= RECV_BUF_INITIAL_BYTES && self.spare.len() < RECV_SPARE_BUFFERS_MAX
                {
                    self.spare.push(buf);
                }
            }
            return;
        }
        let named_by_op = !self.multishot() && peer.recv_armed;
        if peer.recv_len == 0 && peer.recv_buf.len() > RECV_BUF_KEEP_MAX_BYTES && !named_by_op {
            peer.recv_buf = vec![0; self.initial_buffer_bytes()];
            self.charge(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u8, body_len: usize) -> Vec<u8> {
        let mut v = ((body_len + 1) as u32).to_be_bytes().to_vec();
        v.push(id);
        v
    }

    #[test]
    fn refused_messages_close_at_their_length_prefix() {
        // Proves: only 5 bytes of a piece, a wrong-sized bitfield or an oversized extension
        // or unknown message are needed to refuse it; the body is never waited for.
        let max = 1 << 20;
        let r = |b: &[u8]| next_input(b, true, max, Some(10)).err();
        assert_eq!(
            r(&frame(message::id::PIECE, 16384 + 8)),
            Some(CloseReason::ProtocolViolation)
        );
        assert_eq!(
            r(&frame(message::id::BITFIELD, 3)),
            Some(CloseReason::MalformedMessage)
        );
        assert_eq!(
            r(&frame(message::id::BITFIELD, 2)),
            None,
            "2 bytes hold 10 pieces: wait"
        );
        assert_eq!(
            r(&frame(message::id::EXTENDED, 1 << 19)),
            Some(CloseReason::MalformedMessage)
        );
        assert_eq!(r(&frame(99, 1 << 19)), Some(CloseReason::MessageTooLong));
        assert_eq!(
            r(&frame(99, 100)),
            None,
            "a small unknown message is read (and ignored)"
        );
        assert!(next_input(&frame(99, 100)[..], true, max, Some(10))
            .unwrap()
            .is_none());
    }
}
