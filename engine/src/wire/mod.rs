//! Peer wire protocol (BEP 3, 6, 9, 10), sans I/O: bytes in, typed messages out.
//!
//! Owns: the byte layout of every message a peer can send or receive — the 68-byte
//! handshake, length-prefixed messages (including the BEP 6 fast extension), BEP 10
//! extended handshakes and BEP 9 `ut_metadata` payloads — and the typed errors for
//! malformed input.
//!
//! Must never: perform I/O, read a clock, own a socket or a buffer pool, keep per-peer
//! state, or panic on any byte sequence a peer can send. Every parser borrows from the
//! caller's buffer and reports "need more bytes" as `Ok(None)`, so the shard keeps its own
//! receive buffer and decides what to do with errors (close the peer, count it).

use std::fmt;

use crate::metainfo::bencode::BencodeError;

pub mod extended;
pub mod handshake;
pub mod hashes;
pub mod message;
pub mod metadata;
pub mod mse;

pub use extended::{encode_extended, ExtendedHandshake};
pub use handshake::{parse_handshake, peer_id, Handshake, HANDSHAKE_LEN, PROTOCOL};
pub use message::{
    bitfield_len_bytes, decode_frame, encode, encode_request, frame_len, validate_bitfield,
    write_piece_header, BlockRequest, Message, MESSAGE_LEN_MAX_DEFAULT_BYTES, PIECE_HEADER_LEN,
};
pub use metadata::{
    metadata_piece_count, metadata_piece_range, MetadataMessage, METADATA_PIECE_LEN_BYTES,
};

/// The block size every mainstream client requests (BEP 3 convention). Peers asking for more
/// are refused by the shard; this module only carries the number.
pub const BLOCK_LEN_BYTES: u32 = 16384;

/// Why a peer's bytes were refused. Every variant means "this peer is broken or hostile":
/// the shard closes that peer and counts the reason; nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The handshake's first byte (protocol-string length) is not 19.
    BadProtocolLength { len: u8 },
    /// The handshake's protocol string is not "BitTorrent protocol".
    BadProtocolString,
    /// A length prefix larger than the configured maximum; refused before the body arrives
    /// so a peer cannot make us buffer an arbitrary amount.
    MessageTooLong { len: u32, max_len: u32 },
    /// A message whose length prefix does not fit its id (e.g. `have` not 5 bytes long).
    BadMessageLength { id: u8, len: u32 },
    /// A bitfield of the wrong length for the torrent, or with spare bits set.
    BadBitfield { len_bytes: usize, num_pieces: u32 },
    /// A bencoded payload (BEP 9 / BEP 10) that does not decode.
    Bencode(BencodeError),
    /// A BEP 10 extended handshake that decodes but is not usable (e.g. not a dictionary).
    BadExtendedHandshake(String),
    /// A BEP 9 `ut_metadata` message that decodes but is not usable.
    BadMetadataMessage(String),
    /// A BEP 9 message with a `msg_type` we do not know. BEP 9 says such messages must be
    /// ignored, so the shard should drop the message and keep the peer; it is an error here
    /// only because there is no typed message to return.
    UnknownMetadataMessageType(i64),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadProtocolLength { len } => write!(
                f,
                "handshake: protocol string length is {len}, expected 19 (not a BitTorrent peer, or an encrypted one)"
            ),
            WireError::BadProtocolString => {
                write!(f, "handshake: protocol string is not \"BitTorrent protocol\"")
            }
            WireError::MessageTooLong { len, max_len } => write!(
                f,
                "message length prefix {len} exceeds the limit of {max_len} bytes"
            ),
            WireError::BadMessageLength { id, len } => write!(
                f,
                "{} message (id {id}) has invalid length {len}",
                message::id::name(*id)
            ),
            WireError::BadBitfield {
                len_bytes,
                num_pieces,
            } => write!(
                f,
                "bitfield of {len_bytes} bytes is wrong for {num_pieces} pieces (bad length or spare bits set)"
            ),
            WireError::Bencode(e) => write!(f, "bencoded payload: {e}"),
            WireError::BadExtendedHandshake(why) => write!(f, "extended handshake: {why}"),
            WireError::BadMetadataMessage(why) => write!(f, "ut_metadata message: {why}"),
            WireError::UnknownMetadataMessageType(t) => {
                write!(f, "ut_metadata message: unknown msg_type {t} (ignorable)")
            }
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BencodeError> for WireError {
    fn from(e: BencodeError) -> Self {
        WireError::Bencode(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_human_messages() {
        // Proves every error renders a message naming what was wrong, for logs and stats.
        let cases = [
            (WireError::BadProtocolLength { len: 7 }, "length is 7"),
            (WireError::BadProtocolString, "BitTorrent protocol"),
            (
                WireError::MessageTooLong {
                    len: 99,
                    max_len: 10,
                },
                "limit of 10",
            ),
            (WireError::BadMessageLength { id: 4, len: 9 }, "have"),
            (
                WireError::BadBitfield {
                    len_bytes: 3,
                    num_pieces: 9,
                },
                "9 pieces",
            ),
            (
                WireError::Bencode(BencodeError::UnexpectedEnd { offset: 3 }),
                "byte 3",
            ),
            (WireError::BadExtendedHandshake("x".into()), "extended"),
            (WireError::BadMetadataMessage("y".into()), "ut_metadata"),
            (WireError::UnknownMetadataMessageType(9), "msg_type 9"),
        ];
        for (err, needle) in cases {
            let text = err.to_string();
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
    }
}
