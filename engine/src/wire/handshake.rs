//! The BEP 3 handshake: `<19><"BitTorrent protocol"><8 reserved><20 info-hash><20 peer id>`.
//!
//! Owns: the 68-byte layout, the reserved-bit flags we care about (BEP 10 extension
//! protocol, BEP 6 fast extension) and peer-id construction.
//! Must never: decide whether an info-hash is one we seed (the catalog does), wait for 68
//! bytes from a peer whose first bytes already prove it is not speaking BitTorrent, or
//! panic on any input.

use super::WireError;

/// Total handshake size in bytes: 1 + 19 + 8 + 20 + 20.
pub const HANDSHAKE_LEN: usize = 68;
/// The protocol string, preceded on the wire by its length byte (19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

// Offsets inside the 68-byte handshake.
const PROTOCOL_OFFSET: usize = 1;
const RESERVED_OFFSET: usize = PROTOCOL_OFFSET + PROTOCOL.len();
const INFO_HASH_OFFSET: usize = RESERVED_OFFSET + 8;
const PEER_ID_OFFSET: usize = INFO_HASH_OFFSET + 20;
const _: () = assert!(PEER_ID_OFFSET + 20 == HANDSHAKE_LEN);

/// BEP 10: reserved byte 5, bit 0x10 announces the extension protocol.
const EXTENDED_BYTE_INDEX: usize = 5;
const EXTENDED_BIT: u8 = 0x10;
/// BEP 6: reserved byte 7, bit 0x04 announces the fast extension.
const FAST_BYTE_INDEX: usize = 7;
const FAST_BIT: u8 = 0x04;
/// BEP 52: reserved byte 7, bit 0x10 announces BitTorrent v2 support.
const V2_BYTE_INDEX: usize = 7;
const V2_BIT: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Builds our handshake, announcing only the extensions we actually implement.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20], extended: bool, fast: bool) -> Self {
        let mut reserved = [0u8; 8];
        if extended {
            reserved[EXTENDED_BYTE_INDEX] |= EXTENDED_BIT;
        }
        if fast {
            reserved[FAST_BYTE_INDEX] |= FAST_BIT;
        }
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the peer speaks BEP 10 (and so may send id-20 messages and ut_metadata).
    pub fn supports_extended(&self) -> bool {
        self.reserved[EXTENDED_BYTE_INDEX] & EXTENDED_BIT != 0
    }

    /// Whether the peer speaks BEP 6 (have all/none, reject, allowed fast). The fast
    /// messages may only be used when *both* sides set this bit; the shard checks both.
    /// Sets the BEP 52 v2 bit (only for torrents that have a v2 half).
    pub fn with_v2(mut self, v2: bool) -> Self {
        if v2 {
            self.reserved[V2_BYTE_INDEX] |= V2_BIT;
        }
        self
    }

    /// BEP 52: the peer speaks v2 (hash request / hashes / hash reject).
    pub fn supports_v2(&self) -> bool {
        self.reserved[V2_BYTE_INDEX] & V2_BIT != 0
    }

    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_BYTE_INDEX] & FAST_BIT != 0
    }

    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[PROTOCOL_OFFSET..RESERVED_OFFSET].copy_from_slice(PROTOCOL);
        out[RESERVED_OFFSET..INFO_HASH_OFFSET].copy_from_slice(&self.reserved);
        out[INFO_HASH_OFFSET..PEER_ID_OFFSET].copy_from_slice(&self.info_hash);
        out[PEER_ID_OFFSET..].copy_from_slice(&self.peer_id);
        out
    }
}

/// Parses a handshake at the start of `buf`. `Ok(None)` means "need more bytes"; on
/// success exactly `HANDSHAKE_LEN` bytes were consumed.
///
/// Fails fast: the length byte and every protocol-string byte present are checked as soon
/// as they arrive, so a port scanner, an HTTP client or an encrypted (MSE) peer is dropped
/// after its first byte instead of holding a connection slot until 68 bytes or a timeout.
pub fn parse_handshake(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
    let Some(&protocol_len) = buf.first() else {
        return Ok(None);
    };
    if usize::from(protocol_len) != PROTOCOL.len() {
        return Err(WireError::BadProtocolLength { len: protocol_len });
    }
    let protocol_seen = buf.iter().skip(PROTOCOL_OFFSET).take(PROTOCOL.len());
    if protocol_seen
        .zip(PROTOCOL.iter())
        .any(|(seen, want)| seen != want)
    {
        return Err(WireError::BadProtocolString);
    }
    let (Some(reserved), Some(info_hash), Some(peer_id)) = (
        array_at::<8>(buf, RESERVED_OFFSET),
        array_at::<20>(buf, INFO_HASH_OFFSET),
        array_at::<20>(buf, PEER_ID_OFFSET),
    ) else {
        return Ok(None);
    };
    Ok(Some(Handshake {
        reserved,
        info_hash,
        peer_id,
    }))
}

/// Copies `N` bytes at `offset`, or `None` if `buf` is too short.
fn array_at<const N: usize>(buf: &[u8], offset: usize) -> Option<[u8; N]> {
    buf.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// Builds a peer id in the Azureus style: an 8-byte client prefix such as `b"-SQ0100-"`
/// followed by 12 caller-supplied random bytes (randomness is the caller's: no RNG here).
pub fn peer_id(prefix: &[u8; 8], random: [u8; 12]) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(prefix);
    id[8..].copy_from_slice(&random);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Handshake {
        Handshake::new([0xAB; 20], peer_id(b"-SQ0100-", [7; 12]), true, true)
    }

    #[test]
    fn round_trips_and_sets_reserved_bits() {
        // Proves to_bytes/parse are inverse and the BEP 10 / BEP 6 bits land where peers look.
        let hs = sample();
        let bytes = hs.to_bytes();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], PROTOCOL);
        assert_eq!(bytes[25], 0x10);
        assert_eq!(bytes[27], 0x04);
        assert_eq!(&bytes[48..56], b"-SQ0100-");
        assert_eq!(parse_handshake(&bytes), Ok(Some(hs)));
        assert!(hs.supports_extended() && hs.supports_fast());

        let plain = Handshake::new([1; 20], [2; 20], false, false);
        assert_eq!(plain.reserved, [0; 8]);
        assert!(!plain.supports_extended() && !plain.supports_fast());
        let ext_only = Handshake::new([1; 20], [2; 20], true, false);
        assert!(ext_only.supports_extended() && !ext_only.supports_fast());
    }

    #[test]
    fn needs_all_68_bytes() {
        // Proves every strict prefix of a valid handshake asks for more bytes, never errs.
        let bytes = sample().to_bytes();
        for len in 0..HANDSHAKE_LEN {
            assert_eq!(parse_handshake(&bytes[..len]), Ok(None), "prefix {len}");
        }
    }

    #[test]
    fn ignores_bytes_after_the_handshake() {
        // Proves a handshake followed by the first message (same read) still parses.
        let mut bytes = sample().to_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 1, 2]);
        assert_eq!(parse_handshake(&bytes), Ok(Some(sample())));
    }

    #[test]
    fn fails_fast_on_first_byte() {
        // Proves a non-BitTorrent peer is refused on its very first byte.
        assert_eq!(
            parse_handshake(b"G"),
            Err(WireError::BadProtocolLength { len: b'G' })
        );
        assert_eq!(
            parse_handshake(&[18]),
            Err(WireError::BadProtocolLength { len: 18 })
        );
        assert_eq!(
            parse_handshake(b"GET / HTTP/1.1\r\n"),
            Err(WireError::BadProtocolLength { len: b'G' })
        );
    }

    #[test]
    fn fails_fast_on_partial_protocol_string() {
        // Proves a wrong protocol string is refused at its first wrong byte, not at byte 68.
        assert_eq!(parse_handshake(b"\x13Bit"), Ok(None));
        assert_eq!(
            parse_handshake(b"\x13Bix"),
            Err(WireError::BadProtocolString)
        );
        assert_eq!(parse_handshake(b"\x13x"), Err(WireError::BadProtocolString));
        let mut bytes = sample().to_bytes();
        bytes[19] = b'L'; // "BitTorrent protocoL"
        assert_eq!(
            parse_handshake(&bytes[..20]),
            Err(WireError::BadProtocolString)
        );
        assert_eq!(parse_handshake(&bytes), Err(WireError::BadProtocolString));
    }

    #[test]
    fn peer_id_keeps_prefix_and_random_tail() {
        // Proves the client prefix is kept verbatim and the random part fills the rest.
        let id = peer_id(b"-SQ0100-", *b"abcdefghijkl");
        assert_eq!(&id, b"-SQ0100-abcdefghijkl");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            // Proves no input panics, and a success always came from a 68-byte prefix.
            if let Ok(Some(hs)) = parse_handshake(&bytes) {
                prop_assert!(bytes.len() >= HANDSHAKE_LEN);
                prop_assert_eq!(&hs.to_bytes()[..], &bytes[..HANDSHAKE_LEN]);
            }
        }

        #[test]
        fn arbitrary_handshakes_round_trip(
            reserved in any::<[u8; 8]>(),
            info_hash in any::<[u8; 20]>(),
            peer in any::<[u8; 20]>(),
        ) {
            // Proves every field value, including unknown reserved bits, survives a round trip.
            let hs = Handshake { reserved, info_hash, peer_id: peer };
            prop_assert_eq!(parse_handshake(&hs.to_bytes()), Ok(Some(hs)));
        }
    }
}
