//! BEP 52 hash messages: hash request (21), hashes (22), hash reject (23).
//!
//! Owns: their byte layout, carried inside `Message::Unknown { id, payload }` frames (the
//! frame codec stays v1-agnostic), and the arithmetic of what a `hashes` answer holds.
//! Must never: decide policy (whether a request is for a known file, whether to answer),
//! allocate while decoding, or panic on any payload.
//!
//! Layout (all integers big-endian u32):
//! `<pieces root 32><base layer><index><length><proof layers>` for request and reject;
//! `hashes` repeats the request and appends `length` base-layer hashes then the uncle
//! hashes, bottom up, 32 bytes each.

use super::WireError;

pub const HASH_REQUEST: u8 = 21;
pub const HASHES: u8 = 22;
pub const HASH_REJECT: u8 = 23;

/// Bytes of the body shared by all three messages.
pub const HASH_REQUEST_BODY_LEN: usize = 32 + 4 * 4;
/// Most base-layer hashes one request may ask for (libtorrent asks for at most 512).
pub const HASH_REQUEST_LENGTH_MAX: u32 = 8192;

/// The body of a hash request or hash reject, and the head of a hashes message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRequest {
    pub pieces_root: [u8; 32],
    /// Tree level of the requested hashes, counted from the 16 KiB leaves (0).
    pub base_layer: u32,
    /// Offset of the first requested hash in its layer; a multiple of `length`.
    pub index: u32,
    /// Number of hashes: a power of two, at least 2 (or 1 for a one-node layer).
    pub length: u32,
    /// Layers of uncle hashes wanted above the requested subtree.
    pub proof_layers: u32,
}

impl HashRequest {
    /// Structural checks that need no torrent: length a power of two within bounds,
    /// index aligned to it. The shard still checks the root and layer against the torrent.
    pub fn is_well_formed(&self) -> bool {
        self.length.is_power_of_two()
            && self.length <= HASH_REQUEST_LENGTH_MAX
            && self.index.is_multiple_of(self.length)
            && self.base_layer < 64
            && self.proof_layers < 64
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// Parses the 48-byte body of a hash request or hash reject.
pub fn parse_hash_request(id: u8, payload: &[u8]) -> Result<HashRequest, WireError> {
    if payload.len() != HASH_REQUEST_BODY_LEN {
        return Err(WireError::BadMessageLength {
            id,
            len: payload.len() as u32 + 1,
        });
    }
    let mut pieces_root = [0u8; 32];
    pieces_root.copy_from_slice(&payload[..32]);
    Ok(HashRequest {
        pieces_root,
        base_layer: be_u32(payload, 32),
        index: be_u32(payload, 36),
        length: be_u32(payload, 40),
        proof_layers: be_u32(payload, 44),
    })
}

/// Parses a hashes message: its request head and the 32-byte hashes after it (borrowed).
pub fn parse_hashes(payload: &[u8]) -> Result<(HashRequest, &[u8]), WireError> {
    let bad = || WireError::BadMessageLength {
        id: HASHES,
        len: payload.len() as u32 + 1,
    };
    let head = payload.get(..HASH_REQUEST_BODY_LEN).ok_or_else(bad)?;
    let hashes = &payload[HASH_REQUEST_BODY_LEN..];
    if !hashes.len().is_multiple_of(32) {
        return Err(bad());
    }
    Ok((parse_hash_request(HASH_REQUEST, head)?, hashes))
}

fn encode_head(id: u8, r: &HashRequest, extra_len: usize, out: &mut Vec<u8>) {
    let len = 1 + HASH_REQUEST_BODY_LEN + extra_len;
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(id);
    out.extend_from_slice(&r.pieces_root);
    for v in [r.base_layer, r.index, r.length, r.proof_layers] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a framed hash request (id 21) or hash reject (id 23).
pub fn encode_hash_request(id: u8, r: &HashRequest, out: &mut Vec<u8>) {
    debug_assert!(id == HASH_REQUEST || id == HASH_REJECT);
    encode_head(id, r, 0, out);
}

/// Appends a framed hashes message (id 22): the request, then `hashes` (base layer first,
/// then uncles bottom up).
pub fn encode_hashes(r: &HashRequest, hashes: &[[u8; 32]], out: &mut Vec<u8>) {
    encode_head(HASHES, r, hashes.len() * 32, out);
    for h in hashes {
        out.extend_from_slice(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> HashRequest {
        HashRequest {
            pieces_root: [7; 32],
            base_layer: 2,
            index: 4,
            length: 4,
            proof_layers: 3,
        }
    }

    #[test]
    fn request_reject_and_hashes_round_trip() {
        // Proves: every hash message encodes to a frame whose payload decodes back to it.
        let mut out = Vec::new();
        encode_hash_request(HASH_REQUEST, &req(), &mut out);
        assert_eq!(out.len(), 4 + 1 + 48);
        assert_eq!(out[4], HASH_REQUEST);
        assert_eq!(parse_hash_request(HASH_REQUEST, &out[5..]), Ok(req()));
        out.clear();
        encode_hashes(&req(), &[[1; 32], [2; 32]], &mut out);
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()),
            1 + 48 + 64
        );
        let (r, hashes) = parse_hashes(&out[5..]).unwrap();
        assert_eq!((r, hashes.len()), (req(), 64));
        assert!(req().is_well_formed());
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        // Proves: short, long and ragged bodies are refused; misaligned or oversized requests
        // are not well formed.
        assert!(parse_hash_request(HASH_REQUEST, &[0; 47]).is_err());
        assert!(parse_hash_request(HASH_REJECT, &[0; 49]).is_err());
        assert!(parse_hashes(&[0; 40]).is_err());
        assert!(parse_hashes(&[0; 48 + 31]).is_err());
        let mut r = req();
        r.index = 2;
        assert!(!r.is_well_formed());
        r.index = 0;
        r.length = 3;
        assert!(!r.is_well_formed());
        r.length = 1 << 20;
        assert!(!r.is_well_formed());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            // Proves: the hash message parsers are total over arbitrary input.
            let _ = parse_hash_request(HASH_REQUEST, &bytes);
            let _ = parse_hashes(&bytes);
        }
    }
}
