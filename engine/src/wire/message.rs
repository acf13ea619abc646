//! Length-prefixed peer messages: BEP 3 core, BEP 6 fast extension, the BEP 10 envelope.
//!
//! Owns: framing (`<u32 big-endian length><id><body>`), the per-id length rules, decoding
//! into `Message`s that borrow from the caller's buffer, and encoding (including the 13-byte
//! piece header the shard writes straight in front of a block so one send carries both).
//! Must never: buffer bytes itself, allocate while decoding, wait for the body of a message
//! whose length prefix is already known to be wrong, decide policy (whether a request is in
//! bounds, whether fast messages were negotiated), or panic on any input.

use super::WireError;

/// Message ids (BEP 3, BEP 6, BEP 10).
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST_PIECE: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT_REQUEST: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    pub const EXTENDED: u8 = 20;

    /// An id of BEP 3, 6 or 10 (what `Message` decodes by name).
    pub fn is_known(id: u8) -> bool {
        name(id) != "unknown"
    }

    /// Human name of a message id, for errors and logs.
    pub fn name(id: u8) -> &'static str {
        match id {
            CHOKE => "choke",
            UNCHOKE => "unchoke",
            INTERESTED => "interested",
            NOT_INTERESTED => "not interested",
            HAVE => "have",
            BITFIELD => "bitfield",
            REQUEST => "request",
            PIECE => "piece",
            CANCEL => "cancel",
            PORT => "port",
            SUGGEST_PIECE => "suggest piece",
            HAVE_ALL => "have all",
            HAVE_NONE => "have none",
            REJECT_REQUEST => "reject request",
            ALLOWED_FAST => "allowed fast",
            EXTENDED => "extended",
            _ => "unknown",
        }
    }
}

/// Bytes of the big-endian length prefix in front of every message.
pub const LEN_PREFIX_BYTES: usize = 4;
/// `<len = 9 + block><7><index><begin>`: what precedes a block in a piece message.
pub const PIECE_HEADER_LEN: usize = 13;
/// A whole request/cancel/reject frame: 4 + 1 + 12.
pub const REQUEST_FRAME_LEN: usize = 17;
/// A sensible default for `decode_frame`'s `max_len_bytes`: 1 MiB holds the bitfield of an
/// 8-million-piece torrent and any 16 KiB block or metadata piece with room to spare, while
/// bounding what one peer can make a shard buffer. The shard takes its value from config.
pub const MESSAGE_LEN_MAX_DEFAULT_BYTES: u32 = 1 << 20;

/// The body of request, cancel and reject (BEP 6) messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

/// One decoded message. Variable-length bodies borrow from the decoded buffer, so decoding
/// a 16 KiB piece or a large bitfield copies nothing.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(BlockRequest),
    Piece {
        index: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRequest),
    Port(u16),
    SuggestPiece(u32),
    HaveAll,
    HaveNone,
    RejectRequest(BlockRequest),
    AllowedFast(u32),
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// Any id we do not interpret (e.g. BEP 52 hash messages 21-23). Returned rather than
    /// refused so the shard can choose to ignore it, as BEP 3 recommends.
    Unknown {
        id: u8,
        payload: &'a [u8],
    },
}

impl Message<'_> {
    /// The wire id, or `None` for keep-alive (which has no id byte).
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::SuggestPiece(_) => id::SUGGEST_PIECE,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::RejectRequest(_) => id::REJECT_REQUEST,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }
}

/// What the length prefix (which counts the id byte) must be for a given id.
enum LenRule {
    Exact(u32),
    AtLeast(u32),
}

fn len_rule(msg_id: u8) -> LenRule {
    match msg_id {
        id::CHOKE | id::UNCHOKE | id::INTERESTED | id::NOT_INTERESTED => LenRule::Exact(1),
        id::HAVE_ALL | id::HAVE_NONE => LenRule::Exact(1),
        id::HAVE | id::SUGGEST_PIECE | id::ALLOWED_FAST => LenRule::Exact(5),
        id::REQUEST | id::CANCEL | id::REJECT_REQUEST => LenRule::Exact(13),
        id::PORT => LenRule::Exact(3),
        id::PIECE => LenRule::AtLeast(9),
        // An extended message carries at least its extension id.
        id::EXTENDED => LenRule::AtLeast(2),
        // Bitfield length depends on the torrent (the shard checks it with
        // `bitfield_len_bytes`); unknown ids are opaque.
        _ => LenRule::AtLeast(1),
    }
}

fn check_len(msg_id: u8, len: u32) -> Result<(), WireError> {
    let ok = match len_rule(msg_id) {
        LenRule::Exact(want) => len == want,
        LenRule::AtLeast(min) => len >= min,
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::BadMessageLength { id: msg_id, len })
    }
}

/// The length prefix at the start of `buf`, if its 4 bytes are present.
pub fn frame_len(buf: &[u8]) -> Option<u32> {
    let prefix: [u8; LEN_PREFIX_BYTES] = buf.get(..LEN_PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix))
}

/// Decodes one message at the start of `buf`, returning it and the bytes it spans, or
/// `Ok(None)` if the frame is not complete yet.
///
/// Errors come as early as the bytes allow: an oversized prefix as soon as its 4 bytes are
/// present, a length that cannot fit the id as soon as the id byte is present. A peer thus
/// cannot park a connection on a body we would refuse anyway.
pub fn decode_frame(
    buf: &[u8],
    max_len_bytes: u32,
) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some(len) = frame_len(buf) else {
        return Ok(None);
    };
    if len > max_len_bytes {
        return Err(WireError::MessageTooLong {
            len,
            max_len: max_len_bytes,
        });
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, LEN_PREFIX_BYTES)));
    }
    let Some(&msg_id) = buf.get(LEN_PREFIX_BYTES) else {
        return Ok(None);
    };
    check_len(msg_id, len)?;
    // On a 32-bit target a u32 length plus the prefix may not fit a usize; such a frame
    // could never be buffered anyway.
    let frame_end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(LEN_PREFIX_BYTES))
        .ok_or(WireError::MessageTooLong {
            len,
            max_len: max_len_bytes,
        })?;
    let Some(body) = buf.get(LEN_PREFIX_BYTES + 1..frame_end) else {
        return Ok(None);
    };
    let message = decode_body(msg_id, len, body)?;
    Ok(Some((message, frame_end)))
}

/// Decodes a body whose length already passed `check_len`. The reads below are still
/// fallible rather than indexed, so a mistake in the length table is an error, not a panic.
fn decode_body(msg_id: u8, len: u32, body: &[u8]) -> Result<Message<'_>, WireError> {
    // A closure, not a value: the error is only built on the (never expected) failure path.
    let bad_len = || WireError::BadMessageLength { id: msg_id, len };
    let u32_at = |offset: usize| -> Result<u32, WireError> {
        let bytes: [u8; 4] = body
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad_len)?;
        Ok(u32::from_be_bytes(bytes))
    };
    let block_request = || -> Result<BlockRequest, WireError> {
        Ok(BlockRequest {
            index: u32_at(0)?,
            begin: u32_at(4)?,
            length: u32_at(8)?,
        })
    };
    Ok(match msg_id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(u32_at(0)?),
        id::BITFIELD => Message::Bitfield(body),
        id::REQUEST => Message::Request(block_request()?),
        id::PIECE => Message::Piece {
            index: u32_at(0)?,
            begin: u32_at(4)?,
            data: body.get(8..).ok_or_else(bad_len)?,
        },
        id::CANCEL => Message::Cancel(block_request()?),
        id::PORT => {
            let bytes: [u8; 2] = body.try_into().map_err(|_| bad_len())?;
            Message::Port(u16::from_be_bytes(bytes))
        }
        id::SUGGEST_PIECE => Message::SuggestPiece(u32_at(0)?),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::REJECT_REQUEST => Message::RejectRequest(block_request()?),
        id::ALLOWED_FAST => Message::AllowedFast(u32_at(0)?),
        id::EXTENDED => {
            let (&ext_id, payload) = body.split_first().ok_or_else(bad_len)?;
            Message::Extended {
                id: ext_id,
                payload,
            }
        }
        other => Message::Unknown {
            id: other,
            payload: body,
        },
    })
}

/// Appends a length prefix and id for a body of `body_len_bytes` (excluding the id byte).
/// Bodies come from us, never from a peer, so an over-4-GiB body is a bug worth a panic.
fn put_header(out: &mut Vec<u8>, msg_id: u8, body_len_bytes: usize) {
    let len = body_len_bytes
        .checked_add(1)
        .and_then(|l| u32::try_from(l).ok());
    let Some(len) = len else {
        panic!("wire: message body of {body_len_bytes} bytes cannot be framed");
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.push(msg_id);
}

fn put_block_request(out: &mut Vec<u8>, msg_id: u8, r: BlockRequest) {
    put_header(out, msg_id, 12);
    out.extend_from_slice(&r.index.to_be_bytes());
    out.extend_from_slice(&r.begin.to_be_bytes());
    out.extend_from_slice(&r.length.to_be_bytes());
}

fn put_u32_message(out: &mut Vec<u8>, msg_id: u8, value: u32) {
    put_header(out, msg_id, 4);
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends the full frame (length prefix included) of `msg` to `out`.
pub fn encode(msg: &Message<'_>, out: &mut Vec<u8>) {
    let frame_start = out.len();
    encode_body(msg, out);
    // Paired with decode_frame's length check: what we send, we would accept.
    debug_assert_eq!(
        out.get(frame_start..)
            .and_then(frame_len)
            .map(|len| len as usize),
        Some(out.len() - frame_start - LEN_PREFIX_BYTES),
    );
}

fn encode_body(msg: &Message<'_>, out: &mut Vec<u8>) {
    match *msg {
        Message::KeepAlive => out.extend_from_slice(&0u32.to_be_bytes()),
        Message::Choke => put_header(out, id::CHOKE, 0),
        Message::Unchoke => put_header(out, id::UNCHOKE, 0),
        Message::Interested => put_header(out, id::INTERESTED, 0),
        Message::NotInterested => put_header(out, id::NOT_INTERESTED, 0),
        Message::Have(index) => put_u32_message(out, id::HAVE, index),
        Message::Bitfield(bits) => {
            put_header(out, id::BITFIELD, bits.len());
            out.extend_from_slice(bits);
        }
        Message::Request(r) => put_block_request(out, id::REQUEST, r),
        Message::Piece { index, begin, data } => {
            put_header(out, id::PIECE, 8 + data.len());
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&begin.to_be_bytes());
            out.extend_from_slice(data);
        }
        Message::Cancel(r) => put_block_request(out, id::CANCEL, r),
        Message::Port(port) => {
            put_header(out, id::PORT, 2);
            out.extend_from_slice(&port.to_be_bytes());
        }
        Message::SuggestPiece(index) => put_u32_message(out, id::SUGGEST_PIECE, index),
        Message::HaveAll => put_header(out, id::HAVE_ALL, 0),
        Message::HaveNone => put_header(out, id::HAVE_NONE, 0),
        Message::RejectRequest(r) => put_block_request(out, id::REJECT_REQUEST, r),
        Message::AllowedFast(index) => put_u32_message(out, id::ALLOWED_FAST, index),
        Message::Extended {
            id: ext_id,
            payload,
        } => {
            put_header(out, id::EXTENDED, 1 + payload.len());
            out.push(ext_id);
            out.extend_from_slice(payload);
        }
        Message::Unknown {
            id: msg_id,
            payload,
        } => {
            put_header(out, msg_id, payload.len());
            out.extend_from_slice(payload);
        }
    }
}

/// Appends a request frame (what a leecher, and the benchmark, sends).
pub fn encode_request(r: BlockRequest, out: &mut Vec<u8>) {
    put_block_request(out, id::REQUEST, r);
}

/// Appends a BEP 6 reject frame (what the shard sends for a request it will not serve).
pub fn encode_reject_request(r: BlockRequest, out: &mut Vec<u8>) {
    put_block_request(out, id::REJECT_REQUEST, r);
}

/// Appends a have frame.
pub fn encode_have(index: u32, out: &mut Vec<u8>) {
    put_u32_message(out, id::HAVE, index);
}

/// Writes the header of a piece message carrying `block_len` bytes into the 13 bytes that
/// sit right before the block in a send buffer, so one send carries header and block.
///
/// `block_len` was validated by the shard against the request bound (16 KiB by default);
/// a length that overflows the prefix is a shard bug, hence the assertion.
pub fn write_piece_header(
    out: &mut [u8; PIECE_HEADER_LEN],
    index: u32,
    begin: u32,
    block_len: u32,
) {
    let Some(len) = block_len.checked_add(9) else {
        panic!("wire: block of {block_len} bytes cannot be framed as a piece message");
    };
    let [l0, l1, l2, l3] = len.to_be_bytes();
    let [i0, i1, i2, i3] = index.to_be_bytes();
    let [b0, b1, b2, b3] = begin.to_be_bytes();
    *out = [l0, l1, l2, l3, id::PIECE, i0, i1, i2, i3, b0, b1, b2, b3];
}

/// Bytes in a bitfield for `num_pieces` pieces: one bit per piece, rounded up.
pub fn bitfield_len_bytes(num_pieces: u32) -> usize {
    // u32 -> usize is lossless on every target this engine builds for (64-bit Linux).
    (num_pieces as usize).div_ceil(8)
}

/// Checks a peer's bitfield against the torrent: exactly `bitfield_len_bytes(num_pieces)`
/// bytes and no spare bits set past the last piece. BEP 3 says to drop a peer whose
/// bitfield fails either check; the length cannot be checked in `decode_frame`, which does
/// not know the torrent.
pub fn validate_bitfield(bits: &[u8], num_pieces: u32) -> Result<(), WireError> {
    let bad = || WireError::BadBitfield {
        len_bytes: bits.len(),
        num_pieces,
    };
    if bits.len() != bitfield_len_bytes(num_pieces) {
        return Err(bad());
    }
    // Pieces are numbered from the high bit of the first byte, so the spare bits are the
    // low bits of the last byte.
    let used_bits_in_last_byte = num_pieces % 8;
    if used_bits_in_last_byte != 0 {
        let spare_mask = 0xFFu8 >> used_bits_in_last_byte;
        if bits.last().is_some_and(|last| last & spare_mask != 0) {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_LEN_BYTES: u32 = MESSAGE_LEN_MAX_DEFAULT_BYTES;
    const BLOCK_LEN: u32 = crate::wire::BLOCK_LEN_BYTES;

    fn req(index: u32, begin: u32, length: u32) -> BlockRequest {
        BlockRequest {
            index,
            begin,
            length,
        }
    }

    /// One of every message kind, with edge-case values.
    fn every_message() -> Vec<Message<'static>> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(0),
            Message::Have(u32::MAX),
            Message::Bitfield(&[0xFF, 0x80]),
            Message::Bitfield(&[]),
            Message::Request(req(1, 16384, 16384)),
            Message::Piece {
                index: 3,
                begin: 32768,
                data: b"block bytes",
            },
            Message::Piece {
                index: 0,
                begin: 0,
                data: &[],
            },
            Message::Cancel(req(1, 0, 16384)),
            Message::Port(6881),
            Message::SuggestPiece(42),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest(req(u32::MAX, u32::MAX, u32::MAX)),
            Message::AllowedFast(7),
            Message::Extended {
                id: 0,
                payload: b"d1:md11:ut_metadatai2eee",
            },
            Message::Extended {
                id: 3,
                payload: &[],
            },
            Message::Unknown {
                id: 21,
                payload: b"bep52 hash request",
            },
            Message::Unknown {
                id: 255,
                payload: &[],
            },
        ]
    }

    fn encoded(msg: &Message<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out);
        out
    }

    #[test]
    fn every_message_round_trips() {
        // Proves encode and decode_frame are inverse for every kind, consuming the whole frame.
        for msg in every_message() {
            let bytes = encoded(&msg);
            assert_eq!(frame_len(&bytes), Some(bytes.len() as u32 - 4));
            assert_eq!(
                decode_frame(&bytes, MAX_LEN_BYTES),
                Ok(Some((msg.clone(), bytes.len()))),
                "{msg:?}"
            );
            assert_eq!(msg.id(), bytes.get(4).copied(), "{msg:?}");
        }
    }

    #[test]
    fn known_byte_layouts() {
        // Proves the encodings match BEP 3/6 byte for byte, not just our own decoder.
        assert_eq!(encoded(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(encoded(&Message::Interested), [0, 0, 0, 1, 2]);
        assert_eq!(
            encoded(&Message::Have(0x01020304)),
            [0, 0, 0, 5, 4, 1, 2, 3, 4]
        );
        assert_eq!(encoded(&Message::Port(0x1AE1)), [0, 0, 0, 3, 9, 0x1A, 0xE1]);
        assert_eq!(encoded(&Message::HaveAll), [0, 0, 0, 1, 14]);
        let mut out = Vec::new();
        encode_request(req(1, 2, 0x4000), &mut out);
        assert_eq!(out, [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0x40, 0]);
        assert_eq!(out.len(), REQUEST_FRAME_LEN);
        out.clear();
        encode_reject_request(req(1, 2, 3), &mut out);
        assert_eq!(out.get(4), Some(&id::REJECT_REQUEST));
        out.clear();
        encode_have(9, &mut out);
        assert_eq!(out, encoded(&Message::Have(9)));
    }

    #[test]
    fn piece_header_matches_encoded_piece() {
        // Proves the in-place header plus the block is exactly an encoded piece message.
        let block = vec![0x5Au8; BLOCK_LEN as usize];
        let mut header = [0u8; PIECE_HEADER_LEN];
        write_piece_header(&mut header, 12, 16384, BLOCK_LEN);
        let mut frame = header.to_vec();
        frame.extend_from_slice(&block);
        let expected = encoded(&Message::Piece {
            index: 12,
            begin: 16384,
            data: &block,
        });
        assert_eq!(frame, expected);
        assert_eq!(&header[..5], &[0, 0, 0x40, 0x09, 7]);
    }

    #[test]
    fn bitfield_len_rounds_up() {
        // Proves one bit per piece, rounded up to whole bytes.
        assert_eq!(bitfield_len_bytes(0), 0);
        assert_eq!(bitfield_len_bytes(1), 1);
        assert_eq!(bitfield_len_bytes(8), 1);
        assert_eq!(bitfield_len_bytes(9), 2);
        assert_eq!(bitfield_len_bytes(u32::MAX), 536_870_912);
    }

    #[test]
    fn bitfield_validation_checks_length_and_spare_bits() {
        // Proves BEP 3's two bitfield rules: exact length, and spare bits clear.
        assert_eq!(validate_bitfield(&[], 0), Ok(()));
        assert_eq!(validate_bitfield(&[0xFF], 8), Ok(()));
        assert_eq!(validate_bitfield(&[0xFF, 0x80], 9), Ok(()));
        assert_eq!(validate_bitfield(&[0xFF, 0xFE], 15), Ok(()));
        let bad = |len_bytes, num_pieces| {
            Err(WireError::BadBitfield {
                len_bytes,
                num_pieces,
            })
        };
        assert_eq!(validate_bitfield(&[0xFF, 0x40], 9), bad(2, 9));
        assert_eq!(validate_bitfield(&[0xFF, 0xFF], 15), bad(2, 15));
        assert_eq!(validate_bitfield(&[0xFF], 9), bad(1, 9));
        assert_eq!(validate_bitfield(&[0xFF, 0, 0], 9), bad(3, 9));
        assert_eq!(validate_bitfield(&[0], 0), bad(1, 0));
    }

    #[test]
    fn oversized_prefix_rejected_with_only_four_bytes() {
        // Proves a huge length is refused before any body byte arrives.
        let prefix = (MAX_LEN_BYTES + 1).to_be_bytes();
        assert_eq!(
            decode_frame(&prefix, MAX_LEN_BYTES),
            Err(WireError::MessageTooLong {
                len: MAX_LEN_BYTES + 1,
                max_len: MAX_LEN_BYTES
            })
        );
        assert!(decode_frame(&u32::MAX.to_be_bytes(), MAX_LEN_BYTES).is_err());
        // Exactly the maximum is allowed (and merely incomplete here).
        assert_eq!(
            decode_frame(&MAX_LEN_BYTES.to_be_bytes(), MAX_LEN_BYTES),
            Ok(None)
        );
        // Fewer than four bytes can say nothing yet.
        assert_eq!(decode_frame(&[0xFF, 0xFF, 0xFF], MAX_LEN_BYTES), Ok(None));
    }

    #[test]
    fn wrong_fixed_lengths_rejected_from_the_id_byte() {
        // Proves each fixed-size message with a wrong length fails as soon as its id
        // arrives, and that the error names the id and length.
        let cases: &[(u8, u32)] = &[
            (id::CHOKE, 2),
            (id::UNCHOKE, 5),
            (id::INTERESTED, 2),
            (id::NOT_INTERESTED, 13),
            (id::HAVE, 4),
            (id::HAVE, 6),
            (id::HAVE, 1),
            (id::REQUEST, 12),
            (id::REQUEST, 14),
            (id::PIECE, 8),
            (id::PIECE, 1),
            (id::CANCEL, 1),
            (id::PORT, 2),
            (id::PORT, 5),
            (id::SUGGEST_PIECE, 9),
            (id::HAVE_ALL, 5),
            (id::HAVE_NONE, 2),
            (id::REJECT_REQUEST, 17),
            (id::ALLOWED_FAST, 1),
            (id::EXTENDED, 1),
        ];
        for &(msg_id, len) in cases {
            let mut frame = len.to_be_bytes().to_vec();
            frame.push(msg_id);
            let want = Err(WireError::BadMessageLength { id: msg_id, len });
            assert_eq!(
                decode_frame(&frame, MAX_LEN_BYTES),
                want,
                "id {msg_id} len {len}"
            );
            // Still an error once the (wrong-sized) body has fully arrived.
            frame.resize(4 + len as usize, 0);
            assert_eq!(
                decode_frame(&frame, MAX_LEN_BYTES),
                want,
                "id {msg_id} len {len}"
            );
        }
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        // Proves every strict prefix of every valid frame is "incomplete", never an error.
        for msg in every_message() {
            let bytes = encoded(&msg);
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode_frame(&bytes[..cut], MAX_LEN_BYTES),
                    Ok(None),
                    "{msg:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn variable_bodies_borrow_the_input() {
        // Proves piece data and bitfields are slices of the input buffer (zero copy).
        let bytes = encoded(&Message::Piece {
            index: 1,
            begin: 2,
            data: b"abc",
        });
        let Ok(Some((Message::Piece { data, .. }, _))) = decode_frame(&bytes, MAX_LEN_BYTES) else {
            panic!("piece did not decode");
        };
        assert_eq!(data.as_ptr(), bytes[13..].as_ptr());
    }

    /// Decodes as many whole frames as `buf` holds; returns them and the bytes consumed.
    fn drain(buf: &[u8]) -> (Vec<Message<'_>>, usize) {
        let mut messages = Vec::new();
        let mut consumed = 0;
        while let Some((msg, used)) = decode_frame(&buf[consumed..], MAX_LEN_BYTES).unwrap() {
            messages.push(msg);
            consumed += used;
        }
        (messages, consumed)
    }

    #[test]
    fn stream_split_at_every_byte_boundary() {
        // Proves that however TCP splits a stream of concatenated frames, the receiver
        // (which keeps leftover bytes and appends the next read) sees the same messages,
        // and that at every prefix exactly the complete frames decode and the rest waits.
        let messages = every_message();
        let mut stream = Vec::new();
        let mut frame_ends = Vec::new();
        for msg in &messages {
            encode(msg, &mut stream);
            frame_ends.push(stream.len());
        }

        for cut in 0..=stream.len() {
            // Every prefix: exactly the frames that end within it decode.
            let (seen, consumed) = drain(&stream[..cut]);
            let complete = frame_ends.iter().filter(|&&end| end <= cut).count();
            assert_eq!(seen, messages[..complete], "prefix {cut}");
            assert_eq!(
                consumed,
                if complete == 0 {
                    0
                } else {
                    frame_ends[complete - 1]
                }
            );

            // Two reads split at `cut`: leftover bytes carried into the second read.
            let mut buffer = stream[..cut].to_vec();
            let (first, used) = drain(&buffer);
            let mut all: Vec<Message<'static>> =
                first.iter().map(|m| to_static(m, &messages)).collect();
            buffer.drain(..used);
            buffer.extend_from_slice(&stream[cut..]);
            let (second, used) = drain(&buffer);
            all.extend(second.iter().map(|m| to_static(m, &messages)));
            assert_eq!(used, buffer.len());
            assert_eq!(all, messages, "split at {cut}");
        }
    }

    /// Maps a decoded message back to the equal one in `known` (so it can outlive the buffer).
    fn to_static(msg: &Message<'_>, known: &[Message<'static>]) -> Message<'static> {
        known
            .iter()
            .find(|k| *k == msg)
            .cloned()
            .unwrap_or_else(|| panic!("decoded an unexpected message {msg:?}"))
    }

    fn arb_request() -> impl Strategy<Value = BlockRequest> {
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(index, begin, length)| BlockRequest {
            index,
            begin,
            length,
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            max_len in prop_oneof![Just(0u32), Just(16u32), Just(u32::MAX)],
        ) {
            // Proves no input panics and a success never claims more bytes than it was given.
            if let Ok(Some((_, used))) = decode_frame(&bytes, max_len) {
                prop_assert!(used <= bytes.len() && used >= 4);
            }
        }

        #[test]
        fn arbitrary_frames_with_valid_prefix_never_panic(
            msg_id in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            // Proves bodies of every size under every id decode or err, never panic, and that
            // a decoded frame re-encodes to the same bytes.
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(msg_id);
            frame.extend_from_slice(&body);
            if let Ok(Some((msg, used))) = decode_frame(&frame, MAX_LEN_BYTES) {
                prop_assert_eq!(used, frame.len());
                prop_assert_eq!(encoded(&msg), frame);
            }
        }

        #[test]
        fn requests_round_trip(r in arb_request(), kind in 0u8..3) {
            // Proves request, cancel and reject carry any three u32s unchanged.
            let msg = match kind {
                0 => Message::Request(r),
                1 => Message::Cancel(r),
                _ => Message::RejectRequest(r),
            };
            let bytes = encoded(&msg);
            prop_assert_eq!(bytes.len(), REQUEST_FRAME_LEN);
            prop_assert_eq!(decode_frame(&bytes, MAX_LEN_BYTES), Ok(Some((msg, REQUEST_FRAME_LEN))));
        }

        #[test]
        fn haves_round_trip(index in any::<u32>()) {
            // Proves have, suggest and allowed-fast carry any piece index unchanged.
            for msg in [Message::Have(index), Message::SuggestPiece(index), Message::AllowedFast(index)] {
                let bytes = encoded(&msg);
                prop_assert_eq!(decode_frame(&bytes, MAX_LEN_BYTES), Ok(Some((msg, 9))));
            }
        }

        #[test]
        fn pieces_round_trip(
            index in any::<u32>(),
            begin in any::<u32>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // Proves piece messages carry any header and block, and the in-place header agrees.
            let msg = Message::Piece { index, begin, data: &data };
            let bytes = encoded(&msg);
            let mut header = [0u8; PIECE_HEADER_LEN];
            write_piece_header(&mut header, index, begin, data.len() as u32);
            prop_assert_eq!(&bytes[..PIECE_HEADER_LEN], &header[..]);
            prop_assert_eq!(decode_frame(&bytes, MAX_LEN_BYTES), Ok(Some((msg, bytes.len()))));
        }
    }
}
