//! BEP 9 `ut_metadata`: serving a torrent's info dictionary to magnet-link peers.
//!
//! Owns: the payload of ut_metadata extended messages (a bencoded dictionary, followed by
//! raw bytes for `data`), and the 16 KiB piece arithmetic over the info dictionary.
//! Must never: hold the metadata itself (the catalog does), decide whether to serve or
//! reject a request (the shard does), or panic on any input.

use std::ops::Range;

use super::WireError;
use crate::metainfo::bencode::{decode_prefix_with, DecodeLimits, DictBuilder, Node, Value};

/// BEP 9 splits the info dictionary into 16 KiB pieces; the last may be shorter.
pub const METADATA_PIECE_LEN_BYTES: usize = 16384;

/// The dictionary part of a message is ~50 bytes; 1 KiB of slack bounds what a peer can
/// stuff in extra keys. A `data` message is that plus one piece.
const DICT_LEN_MAX_BYTES: usize = 1024;
/// Whole-payload bound: a dictionary plus one metadata piece.
pub const METADATA_MESSAGE_LEN_MAX_BYTES: usize = DICT_LEN_MAX_BYTES + METADATA_PIECE_LEN_BYTES;
/// A flat dictionary; a little depth tolerates odd extra keys.
const DEPTH_MAX: usize = 4;

const MSG_TYPE_REQUEST: i64 = 0;
const MSG_TYPE_DATA: i64 = 1;
const MSG_TYPE_REJECT: i64 = 2;

#[derive(Debug, PartialEq, Eq, Clone)]
pub enum MetadataMessage<'a> {
    Request {
        piece: u32,
    },
    /// `data` borrows from the payload: the bytes after the dictionary.
    Data {
        piece: u32,
        total_size: u64,
        data: &'a [u8],
    },
    Reject {
        piece: u32,
    },
}

fn bad(why: impl Into<String>) -> WireError {
    WireError::BadMetadataMessage(why.into())
}

impl MetadataMessage<'_> {
    /// Parses a ut_metadata payload (the bytes after the extended id).
    ///
    /// Request and reject must be a dictionary alone; data is a dictionary followed by the
    /// piece bytes, whose length must match what `total_size` and `piece` imply, so the
    /// receiver can trust `data` without redoing the arithmetic. An unknown `msg_type`
    /// yields `WireError::UnknownMetadataMessageType`, which BEP 9 says to ignore.
    pub fn parse(payload: &[u8]) -> Result<MetadataMessage<'_>, WireError> {
        if payload.len() > METADATA_MESSAGE_LEN_MAX_BYTES {
            return Err(bad(format!(
                "payload of {} bytes exceeds {} bytes",
                payload.len(),
                METADATA_MESSAGE_LEN_MAX_BYTES
            )));
        }
        let limits = DecodeLimits {
            depth_max: DEPTH_MAX,
            input_bytes_max: METADATA_MESSAGE_LEN_MAX_BYTES,
            // A ut_metadata dictionary holds three or four values.
            values_max: 64,
        };
        let (dict, dict_end) = decode_prefix_with(payload, limits)?;
        if dict.as_dict().is_none() {
            return Err(bad(format!(
                "expected a dictionary, got a {}",
                dict.type_name()
            )));
        }
        let int = |key: &str| dict.get(key).and_then(Node::as_int);
        let msg_type = int("msg_type").ok_or_else(|| bad("missing integer msg_type"))?;
        let piece = int("piece")
            .ok_or_else(|| bad("missing integer piece"))
            .and_then(|p| u32::try_from(p).map_err(|_| bad(format!("piece {p} out of range"))))?;
        let trailing = payload.get(dict_end..).unwrap_or_default();

        match msg_type {
            MSG_TYPE_REQUEST | MSG_TYPE_REJECT => {
                if !trailing.is_empty() {
                    return Err(bad(format!(
                        "{} trailing bytes after a request or reject",
                        trailing.len()
                    )));
                }
                Ok(if msg_type == MSG_TYPE_REQUEST {
                    MetadataMessage::Request { piece }
                } else {
                    MetadataMessage::Reject { piece }
                })
            }
            MSG_TYPE_DATA => {
                let total_size = int("total_size")
                    .ok_or_else(|| bad("data without integer total_size"))
                    .and_then(|s| {
                        u64::try_from(s).map_err(|_| bad(format!("negative total_size {s}")))
                    })?;
                let range = metadata_piece_range(total_size, piece).ok_or_else(|| {
                    bad(format!(
                        "piece {piece} is past the end of {total_size} bytes"
                    ))
                })?;
                if trailing.len() != range.len() {
                    return Err(bad(format!(
                        "piece {piece} of {total_size} bytes should carry {} bytes, got {}",
                        range.len(),
                        trailing.len()
                    )));
                }
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: trailing,
                })
            }
            other => Err(WireError::UnknownMetadataMessageType(other)),
        }
    }

    /// Appends the payload (dictionary, then the piece bytes for `Data`) to `out`; the
    /// caller wraps it with `encode_extended` using the peer's ut_metadata id.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (msg_type, piece) = match *self {
            MetadataMessage::Request { piece } => (MSG_TYPE_REQUEST, piece),
            MetadataMessage::Data { piece, .. } => (MSG_TYPE_DATA, piece),
            MetadataMessage::Reject { piece } => (MSG_TYPE_REJECT, piece),
        };
        let mut dict = DictBuilder::new()
            .insert("msg_type", Value::Int(msg_type))
            .insert("piece", Value::Int(i64::from(piece)));
        if let MetadataMessage::Data { total_size, .. } = *self {
            dict.insert_mut(
                "total_size",
                Value::Int(i64::try_from(total_size).unwrap_or(i64::MAX)),
            );
        }
        dict.build().encode_into(out);
        if let MetadataMessage::Data { data, .. } = *self {
            out.extend_from_slice(data);
        }
    }
}

/// Number of 16 KiB pieces in metadata of `metadata_size` bytes (saturating at u32::MAX,
/// far beyond any size a shard would accept).
pub fn metadata_piece_count(metadata_size: u64) -> u32 {
    let count = metadata_size.div_ceil(METADATA_PIECE_LEN_BYTES as u64);
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Byte range of `piece` within metadata of `metadata_size` bytes, or `None` if the piece
/// is past the end (or the range does not fit in memory on this target).
pub fn metadata_piece_range(metadata_size: u64, piece: u32) -> Option<Range<usize>> {
    let piece_len = METADATA_PIECE_LEN_BYTES as u64;
    // u32 * 2^14 < 2^46: cannot overflow u64.
    let start = u64::from(piece) * piece_len;
    if start >= metadata_size {
        return None;
    }
    let end = metadata_size.min(start + piece_len);
    Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(msg: &MetadataMessage<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    #[test]
    fn every_message_round_trips_with_known_bytes() {
        // Proves encode/parse are inverse and match the BEP 9 examples byte for byte.
        let request = MetadataMessage::Request { piece: 0 };
        assert_eq!(encoded(&request), b"d8:msg_typei0e5:piecei0ee");
        let reject = MetadataMessage::Reject { piece: 3 };
        assert_eq!(encoded(&reject), b"d8:msg_typei2e5:piecei3ee");
        let tail = [7u8; 100];
        let data = MetadataMessage::Data {
            piece: 1,
            total_size: 16384 + 100,
            data: &tail,
        };
        let bytes = encoded(&data);
        assert!(bytes.starts_with(b"d8:msg_typei1e5:piecei1e10:total_sizei16484ee"));
        for msg in [request, reject, data] {
            let bytes = encoded(&msg);
            assert_eq!(MetadataMessage::parse(&bytes), Ok(msg));
        }
    }

    #[test]
    fn full_piece_data_round_trips() {
        // Proves a full 16 KiB piece (the largest legal payload) is accepted.
        let block = vec![1u8; METADATA_PIECE_LEN_BYTES];
        let msg = MetadataMessage::Data {
            piece: 0,
            total_size: 40_000,
            data: &block,
        };
        assert_eq!(MetadataMessage::parse(&encoded(&msg)), Ok(msg));
    }

    #[test]
    fn rejects_malformed_messages() {
        // Proves each way a payload can be wrong is an error, not a guess.
        let cases: &[&[u8]] = &[
            b"",
            b"le",
            b"d5:piecei0ee",                                  // no msg_type
            b"d8:msg_typei0ee",                               // no piece
            b"d8:msg_type1:05:piecei0ee",                     // msg_type not an int
            b"d8:msg_typei0e5:piecei-1ee",                    // negative piece
            b"d8:msg_typei0e5:piecei4294967296ee",            // piece > u32
            b"d8:msg_typei0e5:piecei0eeX",                    // trailing after request
            b"d8:msg_typei2e5:piecei0eeXY",                   // trailing after reject
            b"d8:msg_typei1e5:piecei0eeabc",                  // data without total_size
            b"d8:msg_typei1e5:piecei0e10:total_sizei-3eeabc", // negative size
            b"d8:msg_typei1e5:piecei0e10:total_sizei4eeabc",  // too short
            b"d8:msg_typei1e5:piecei0e10:total_sizei2eeabc",  // too long
            b"d8:msg_typei1e5:piecei1e10:total_sizei3eeabc",  // piece past the end
            b"d8:msg_typei1e5:piecei0e10:total_sizei0ee",     // empty metadata
            b"d8:msg_typei0e5:piecei0e",                      // truncated
        ];
        for &bad in cases {
            let result = MetadataMessage::parse(bad);
            assert!(
                matches!(
                    result,
                    Err(WireError::BadMetadataMessage(_)) | Err(WireError::Bencode(_))
                ),
                "{:?} -> {result:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let oversized = vec![b'x'; METADATA_MESSAGE_LEN_MAX_BYTES + 1];
        assert!(MetadataMessage::parse(&oversized).is_err());
    }

    #[test]
    fn unknown_msg_type_is_distinguishable() {
        // Proves the shard can tell an ignorable future msg_type from a broken peer.
        assert_eq!(
            MetadataMessage::parse(b"d8:msg_typei7e5:piecei0ee"),
            Err(WireError::UnknownMetadataMessageType(7))
        );
    }

    #[test]
    fn piece_arithmetic() {
        // Proves count and ranges cover the metadata exactly, with a short last piece.
        assert_eq!(metadata_piece_count(0), 0);
        assert_eq!(metadata_piece_count(1), 1);
        assert_eq!(metadata_piece_count(16384), 1);
        assert_eq!(metadata_piece_count(16385), 2);
        assert_eq!(metadata_piece_count(u64::MAX), u32::MAX);
        assert_eq!(metadata_piece_range(0, 0), None);
        assert_eq!(metadata_piece_range(100, 0), Some(0..100));
        assert_eq!(metadata_piece_range(16384, 0), Some(0..16384));
        assert_eq!(metadata_piece_range(16384, 1), None);
        assert_eq!(metadata_piece_range(40_000, 2), Some(32768..40_000));
        assert_eq!(
            metadata_piece_range(u64::MAX, u32::MAX).map(|r| r.len()),
            Some(16384)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            // Proves no payload panics the parser.
            let _ = MetadataMessage::parse(&bytes);
        }

        #[test]
        fn mutated_data_message_never_panics(idx in any::<usize>(), byte in any::<u8>()) {
            // Proves near-valid input never panics, and what still parses re-encodes exactly.
            let tail = [9u8; 10];
            let mut bytes = encoded(&MetadataMessage::Data { piece: 0, total_size: 10, data: &tail });
            let i = idx % bytes.len();
            bytes[i] = byte;
            if let Ok(msg) = MetadataMessage::parse(&bytes) {
                prop_assert_eq!(encoded(&msg), bytes);
            }
        }

        #[test]
        fn ranges_tile_the_metadata(size in 1u64..200_000) {
            // Proves the pieces are contiguous, non-empty, and end exactly at the size.
            let count = metadata_piece_count(size);
            let mut next = 0usize;
            for piece in 0..count {
                let range = metadata_piece_range(size, piece).unwrap();
                prop_assert_eq!(range.start, next);
                prop_assert!(!range.is_empty() && range.len() <= METADATA_PIECE_LEN_BYTES);
                next = range.end;
            }
            prop_assert_eq!(next as u64, size);
            prop_assert_eq!(metadata_piece_range(size, count), None);
        }

        #[test]
        fn requests_and_rejects_round_trip(piece in any::<u32>(), reject in any::<bool>()) {
            // Proves any piece index survives a round trip.
            let msg = if reject { MetadataMessage::Reject { piece } } else { MetadataMessage::Request { piece } };
            let bytes = encoded(&msg);
            prop_assert_eq!(MetadataMessage::parse(&bytes), Ok(msg));
        }
    }
}
