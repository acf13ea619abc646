//! `user_data` encoding: every SQE carries a token naming what completed.
//!
//! Owns: packing (op kind, peer index, slot index, peer generation) into 64 bits and back.
//! Must never: allocate; a completion is dispatched by decoding its token into the shard's
//! slabs (peers, buffer slots), never through a boxed callback.

/// What kind of operation a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    Accept = 1,
    Recv = 2,
    /// A control-message send (handshake, bitfield, unchoke, rejects, metadata ...).
    SendControl = 3,
    /// A read of block data into a buffer slot (linked before its send).
    ReadBlock = 4,
    /// The send of a batch of piece messages from a buffer slot.
    SendBatch = 5,
    /// The shard's periodic tick (timeouts, choker, stats).
    Tick = 6,
    /// The shard's command eventfd became readable.
    Wakeup = 7,
    /// splice(file -> pipe) or splice(pipe -> socket) in `splice` mode.
    Splice = 8,
    /// Completions whose result nobody needs (e.g. a cancel request itself).
    Ignore = 9,
    /// An outbound connection attempt (dialing a peer a tracker returned).
    Connect = 10,
    /// A readahead hint (fadvise WILLNEED) for the rest of a piece a peer started on.
    Readahead = 11,
    /// An HTTP connection's recv into its head buffer (`shard::http_conn`).
    HttpRecv = 12,
    /// An HTTP response head (slot 0) or body chunk (slot 1) send.
    HttpSend = 13,
    /// A read of an HTTP body chunk into a send-pool slot (the token's slot).
    HttpRead = 14,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        Some(match v {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::SendControl,
            4 => OpKind::ReadBlock,
            5 => OpKind::SendBatch,
            6 => OpKind::Tick,
            7 => OpKind::Wakeup,
            8 => OpKind::Splice,
            9 => OpKind::Ignore,
            10 => OpKind::Connect,
            11 => OpKind::Readahead,
            12 => OpKind::HttpRecv,
            13 => OpKind::HttpSend,
            14 => OpKind::HttpRead,
            _ => return None,
        })
    }
}

/// Decoded `user_data`. Layout: kind 8 bits | slot 16 bits | peer 24 bits | generation 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: OpKind,
    /// Buffer slot index (SendBatch, ReadBlock) or listener index (Accept).
    pub slot: u16,
    pub peer: u32,
    /// Generation of the peer slot when the op was submitted: a completion for a reused
    /// peer slot is detected (and is a bug: peers are freed only with no ops in flight).
    pub generation: u16,
}

pub const PEER_INDEX_MAX: u32 = (1 << 24) - 1;

impl Token {
    pub fn new(kind: OpKind, slot: u16, peer: u32, generation: u16) -> Token {
        debug_assert!(peer <= PEER_INDEX_MAX);
        Token {
            kind,
            slot,
            peer,
            generation,
        }
    }

    pub fn encode(self) -> u64 {
        (self.kind as u64) << 56
            | u64::from(self.slot) << 40
            | u64::from(self.peer & PEER_INDEX_MAX) << 16
            | u64::from(self.generation)
    }

    pub fn decode(v: u64) -> Option<Token> {
        Some(Token {
            kind: OpKind::from_u8((v >> 56) as u8)?,
            slot: (v >> 40) as u16,
            peer: ((v >> 16) as u32) & PEER_INDEX_MAX,
            generation: v as u16,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_at_its_limits() {
        // A token decodes to exactly what was encoded, at the edges of each field.
        for (kind, slot, peer, generation) in [
            (OpKind::Accept, 0, 0, 0),
            (OpKind::SendBatch, u16::MAX, PEER_INDEX_MAX, u16::MAX),
            (OpKind::Recv, 7, 12345, 3),
            (OpKind::Readahead, 0, 1, 2),
        ] {
            let t = Token::new(kind, slot, peer, generation);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
