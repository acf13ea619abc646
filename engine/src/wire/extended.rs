//! BEP 10 extension protocol: the extended handshake dictionary and the id-20 envelope.
//!
//! Owns: encoding our extended handshake, parsing a peer's leniently (real clients send
//! many keys we do not use, sometimes with odd types), and framing extended messages.
//! Must never: trust a peer's dictionary beyond tight decode limits, fail a peer for an
//! unknown or oddly-typed optional key, keep per-peer state (the shard stores the parsed
//! handshake), or panic on any input.

use super::message::id;
use super::WireError;
use crate::metainfo::bencode::{decode_with, DecodeLimits, DictBuilder, Node, Value};

/// Extended message id 0 is always the extended handshake.
pub const HANDSHAKE_ID: u8 = 0;
/// The BEP 9 extension name in the `m` dictionary.
pub const UT_METADATA: &str = "ut_metadata";

/// Real handshakes are a few hundred bytes; 64 KiB leaves room for clients that list many
/// extensions while bounding the work one message can cost.
pub const EXTENDED_HANDSHAKE_LEN_MAX_BYTES: usize = 64 * 1024;
/// The handshake is a dict of (at most) dicts; 8 tolerates odd extras, stops deep nesting.
pub const EXTENDED_HANDSHAKE_DEPTH_MAX: usize = 8;

const LIMITS: DecodeLimits = DecodeLimits {
    depth_max: EXTENDED_HANDSHAKE_DEPTH_MAX,
    input_bytes_max: EXTENDED_HANDSHAKE_LEN_MAX_BYTES,
    // Real handshakes hold a few dozen values; this bounds the tree a 64 KiB payload can build.
    values_max: 4096,
};

/// The fields of a BEP 10 handshake that a seeder uses. Anything else a peer sends is
/// dropped at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtendedHandshake {
    /// Extension name -> the id the sender wants to *receive* that extension's messages
    /// under. Id 0 means the extension is disabled.
    pub m: Vec<(String, u8)>,
    /// Size of the info dictionary in bytes (BEP 9), if the sender has it.
    pub metadata_size: Option<u64>,
    /// How many outstanding requests the sender will queue.
    pub reqq: Option<u32>,
    /// Client name and version, for logs.
    pub v: Option<String>,
    /// BEP 21: the sender will not download.
    pub upload_only: bool,
    /// Our address as the sender sees it: 4 (IPv4) or 16 (IPv6) bytes.
    pub yourip: Option<Vec<u8>>,
    /// The sender's listen port.
    pub p: Option<u16>,
}

impl ExtendedHandshake {
    /// The bencoded dictionary (the payload after the extended id byte), canonical order.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = DictBuilder::new();
        for (name, ext_id) in &self.m {
            m.insert_mut(name, Value::Int(i64::from(*ext_id)));
        }
        let mut dict = DictBuilder::new().insert("m", m.build());
        if let Some(size) = self.metadata_size {
            // Metadata sizes above i64::MAX do not exist; saturate rather than wrap.
            dict.insert_mut(
                "metadata_size",
                Value::Int(i64::try_from(size).unwrap_or(i64::MAX)),
            );
        }
        if let Some(reqq) = self.reqq {
            dict.insert_mut("reqq", Value::Int(i64::from(reqq)));
        }
        if let Some(v) = &self.v {
            dict.insert_mut("v", Value::str(v));
        }
        if self.upload_only {
            dict.insert_mut("upload_only", Value::Int(1));
        }
        if let Some(ip) = &self.yourip {
            dict.insert_mut("yourip", Value::Bytes(ip.clone()));
        }
        if let Some(p) = self.p {
            dict.insert_mut("p", Value::Int(i64::from(p)));
        }
        dict.build().encode()
    }

    /// Parses a peer's extended handshake payload.
    ///
    /// Strict where a wrong answer would mislead us (the payload must be one well-formed
    /// bencoded dictionary within the limits), lenient elsewhere: unknown keys, optional
    /// keys of the wrong type or out of range, and `m` entries that are not a name -> id in
    /// 0..=255 are ignored, because real clients send all of these and dropping such a
    /// peer would only lose an upload.
    pub fn parse(payload: &[u8]) -> Result<ExtendedHandshake, WireError> {
        let root = decode_with(payload, LIMITS)?;
        if root.as_dict().is_none() {
            return Err(WireError::BadExtendedHandshake(format!(
                "expected a dictionary, got a {}",
                root.type_name()
            )));
        }
        let int_in = |key: &str| root.get(key).and_then(Node::as_int);

        let m = root
            .get("m")
            .and_then(Node::as_dict)
            .unwrap_or_default()
            .iter()
            .filter_map(|(name, value)| {
                let name = std::str::from_utf8(name).ok()?;
                let ext_id = u8::try_from(value.as_int()?).ok()?;
                Some((name.to_owned(), ext_id))
            })
            .collect();

        Ok(ExtendedHandshake {
            m,
            metadata_size: int_in("metadata_size").and_then(|s| u64::try_from(s).ok()),
            reqq: int_in("reqq").and_then(|q| u32::try_from(q).ok()),
            v: root
                .get("v")
                .and_then(Node::as_bytes)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            upload_only: int_in("upload_only").is_some_and(|u| u != 0),
            yourip: root
                .get("yourip")
                .and_then(Node::as_bytes)
                .filter(|ip| ip.len() == 4 || ip.len() == 16)
                .map(<[u8]>::to_vec),
            p: int_in("p")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
        })
    }

    /// The id under which the sender accepts messages of extension `name`; `None` if the
    /// sender did not list it or disabled it (id 0).
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.m
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, ext_id)| ext_id)
            .filter(|&ext_id| ext_id != 0)
    }
}

/// Appends a full extended frame: `<len><20><ext_id><payload>`.
pub fn encode_extended(ext_id: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload
        .len()
        .checked_add(2)
        .and_then(|l| u32::try_from(l).ok());
    let Some(len) = len else {
        panic!(
            "wire: extended payload of {} bytes cannot be framed",
            payload.len()
        );
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.push(id::EXTENDED);
    out.push(ext_id);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{decode_frame, Message, MESSAGE_LEN_MAX_DEFAULT_BYTES};
    use proptest::prelude::*;

    const LIBTORRENT: &[u8] = b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei1234e1:pi6881e4:reqqi500e1:v16:libTorrent 2.0.8e";

    #[test]
    fn parses_a_libtorrent_handshake() {
        // Proves a real-world handshake yields every field we use.
        let hs = ExtendedHandshake::parse(LIBTORRENT).unwrap();
        assert_eq!(
            hs.m,
            vec![("ut_metadata".to_owned(), 2), ("ut_pex".to_owned(), 1)]
        );
        assert_eq!(hs.extension_id(UT_METADATA), Some(2));
        assert_eq!(hs.extension_id("ut_pex"), Some(1));
        assert_eq!(hs.extension_id("lt_donthave"), None);
        assert_eq!(hs.metadata_size, Some(1234));
        assert_eq!(hs.p, Some(6881));
        assert_eq!(hs.reqq, Some(500));
        assert_eq!(hs.v.as_deref(), Some("libTorrent 2.0.8"));
        assert!(!hs.upload_only);
        assert_eq!(hs.yourip, None);
    }

    #[test]
    fn encode_round_trips_and_is_canonical() {
        // Proves our handshake parses back identically and uses sorted (canonical) keys.
        let ours = ExtendedHandshake {
            m: vec![(UT_METADATA.to_owned(), 3), ("ut_pex".to_owned(), 0)],
            metadata_size: Some(31_337),
            reqq: Some(250),
            v: Some("Squall 0.1.0".to_owned()),
            upload_only: true,
            yourip: Some(vec![127, 0, 0, 1]),
            p: Some(51413),
        };
        let bytes = ours.encode();
        assert_eq!(ExtendedHandshake::parse(&bytes), Ok(ours.clone()));
        assert!(bytes.starts_with(b"d1:md11:ut_metadatai3e6:ut_pexi0ee13:metadata_sizei31337e"));
        assert_eq!(ours.extension_id("ut_pex"), None, "id 0 means disabled");

        let empty = ExtendedHandshake::default();
        assert_eq!(empty.encode(), b"d1:mdee");
        assert_eq!(ExtendedHandshake::parse(b"d1:mdee"), Ok(empty));
    }

    #[test]
    fn ignores_unknown_and_mistyped_optional_keys() {
        // Proves odd-but-harmless peers are kept: wrong types and ranges are dropped silently.
        let payload = b"d12:complete_agoi-1e1:md11:ut_metadata3:two6:ut_pexi300e7:lt_tex2i4ee\
13:metadata_sizei-5e1:pi0e4:reqqi-1e11:upload_onlyi1e1:v2:\xff\xfe6:yourip3:abce";
        let hs = ExtendedHandshake::parse(payload).unwrap();
        // Only the well-formed entry survives; the string id and the id > 255 are dropped.
        assert_eq!(hs.m, vec![("lt_tex2".to_owned(), 4)]);
        assert_eq!(hs.metadata_size, None);
        assert_eq!(hs.p, None);
        assert_eq!(hs.reqq, None);
        assert!(hs.upload_only);
        assert_eq!(hs.v.as_deref(), Some("\u{FFFD}\u{FFFD}"));
        assert_eq!(hs.yourip, None);

        // `m` of the wrong type is ignored too, keeping the other fields.
        let hs = ExtendedHandshake::parse(b"d1:mi5e1:pi80ee").unwrap();
        assert_eq!((hs.m.len(), hs.p), (0, Some(80)));
    }

    #[test]
    fn rejects_non_dictionaries_and_bad_bencode() {
        // Proves the top level must be a single, well-formed, bounded dictionary.
        assert!(matches!(
            ExtendedHandshake::parse(b"li1ee"),
            Err(WireError::BadExtendedHandshake(_))
        ));
        assert!(matches!(
            ExtendedHandshake::parse(b"4:spam"),
            Err(WireError::BadExtendedHandshake(_))
        ));
        for bad in [&b""[..], b"d1:m", b"d1:mdeejunk", b"d1:ai1e1:ai1ee"] {
            assert!(
                matches!(ExtendedHandshake::parse(bad), Err(WireError::Bencode(_))),
                "{bad:?}"
            );
        }
        let deep = format!("d1:x{}{}e", "l".repeat(20), "e".repeat(20));
        assert!(matches!(
            ExtendedHandshake::parse(deep.as_bytes()),
            Err(WireError::Bencode(_))
        ));
        let mut huge = b"d1:v".to_vec();
        huge.extend_from_slice(format!("{}:", EXTENDED_HANDSHAKE_LEN_MAX_BYTES).as_bytes());
        huge.resize(huge.len() + EXTENDED_HANDSHAKE_LEN_MAX_BYTES, b'x');
        huge.push(b'e');
        assert!(matches!(
            ExtendedHandshake::parse(&huge),
            Err(WireError::Bencode(_))
        ));
    }

    #[test]
    fn extended_frame_decodes_as_extended_message() {
        // Proves encode_extended produces a frame the message decoder reads back.
        let mut out = Vec::new();
        encode_extended(HANDSHAKE_ID, LIBTORRENT, &mut out);
        let decoded = decode_frame(&out, MESSAGE_LEN_MAX_DEFAULT_BYTES).unwrap();
        assert_eq!(
            decoded,
            Some((
                Message::Extended {
                    id: HANDSHAKE_ID,
                    payload: LIBTORRENT
                },
                out.len()
            ))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            // Proves no payload panics the parser.
            let _ = ExtendedHandshake::parse(&bytes);
        }

        #[test]
        fn mutated_real_handshake_never_panics(idx in any::<usize>(), byte in any::<u8>()) {
            // Proves near-valid input (the hard case for a lenient parser) never panics.
            let mut bytes = LIBTORRENT.to_vec();
            let i = idx % bytes.len();
            bytes[i] = byte;
            let _ = ExtendedHandshake::parse(&bytes);
        }

        #[test]
        fn arbitrary_handshakes_round_trip(
            names in proptest::collection::btree_map("[a-z_]{1,12}", any::<u8>(), 0..6),
            metadata_size in proptest::option::of(0u64..=i64::MAX as u64),
            reqq in proptest::option::of(any::<u32>()),
            v in proptest::option::of("[ -~]{0,20}"),
            upload_only in any::<bool>(),
            p in proptest::option::of(1u16..),
        ) {
            // Proves every representable handshake survives encode -> parse.
            let hs = ExtendedHandshake {
                m: names.into_iter().collect(),
                metadata_size, reqq, v, upload_only, yourip: None, p,
            };
            prop_assert_eq!(ExtendedHandshake::parse(&hs.encode()), Ok(hs));
        }
    }
}
