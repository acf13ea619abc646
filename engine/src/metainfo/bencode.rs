//! Bencode codec (BEP 3) that keeps the raw byte span of every decoded value.
//!
//! Owns: decoding untrusted bytes into a borrowed tree (`Node`) whose every value remembers
//! the exact range of input it came from, and canonical encoding of owned values (`Value`).
//! The span matters because a torrent's info-hash is the SHA-1 of the `info` dictionary's bytes
//! *exactly as they appear in the file*, even when the file is not canonical.
//!
//! Must never: panic on any input, recurse deeper than `DecodeLimits::depth_max`, allocate more
//! than a small multiple of the input, or accept ambiguous encodings (leading zeros, `-0`,
//! duplicate dictionary keys).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// Default nesting limit. Real torrents nest to depth ~6 (info -> files -> file -> path).
pub const DEPTH_MAX_DEFAULT: usize = 64;
/// Default input limit: 64 MiB is larger than any sane .torrent (a 16 TiB torrent with
/// 16 MiB pieces has 20 MiB of piece hashes).
pub const INPUT_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Default limit on decoded values (integers, strings, lists, dictionaries; keys are not
/// counted). Each costs ~50-100 bytes of tree, so without it a 64 MiB input of `i0e`s would
/// build a tree of over a gigabyte. A torrent at the metainfo file limit (262,144 files, four
/// values each) needs ~1.05 million; libtorrent's equivalent bound is 3 million tokens.
pub const VALUES_MAX_DEFAULT: usize = 2_000_000;

/// Limits applied while decoding untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub depth_max: usize,
    pub input_bytes_max: usize,
    /// Most values (not counting dictionary keys) one decode may produce.
    pub values_max: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            depth_max: DEPTH_MAX_DEFAULT,
            input_bytes_max: INPUT_BYTES_MAX_DEFAULT,
            values_max: VALUES_MAX_DEFAULT,
        }
    }
}

/// What went wrong, and at which byte offset of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BencodeError {
    UnexpectedEnd {
        offset: usize,
    },
    UnexpectedByte {
        offset: usize,
        byte: u8,
    },
    InvalidInteger {
        offset: usize,
        reason: &'static str,
    },
    StringTooLong {
        offset: usize,
        declared_len: u64,
        available_len: usize,
    },
    TooDeep {
        offset: usize,
        depth_max: usize,
    },
    InputTooLarge {
        len: usize,
        input_bytes_max: usize,
    },
    TooManyValues {
        offset: usize,
        values_max: usize,
    },
    DictKeyNotString {
        offset: usize,
    },
    DuplicateKey {
        offset: usize,
    },
    TrailingBytes {
        offset: usize,
    },
}

impl fmt::Display for BencodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BencodeError::UnexpectedEnd { offset } => write!(f, "bencode: input ends early at byte {offset}"),
            BencodeError::UnexpectedByte { offset, byte } => {
                write!(f, "bencode: unexpected byte 0x{byte:02x} at byte {offset}")
            }
            BencodeError::InvalidInteger { offset, reason } => {
                write!(f, "bencode: invalid integer at byte {offset}: {reason}")
            }
            BencodeError::StringTooLong { offset, declared_len, available_len } => write!(
                f,
                "bencode: string at byte {offset} declares {declared_len} bytes but only {available_len} remain"
            ),
            BencodeError::TooDeep { offset, depth_max } => {
                write!(f, "bencode: nesting deeper than {depth_max} at byte {offset}")
            }
            BencodeError::InputTooLarge { len, input_bytes_max } => {
                write!(f, "bencode: input of {len} bytes exceeds the limit of {input_bytes_max} bytes")
            }
            BencodeError::TooManyValues { offset, values_max } => write!(
                f,
                "bencode: more than {values_max} values (the limit against hostile input) at byte {offset}"
            ),
            BencodeError::DictKeyNotString { offset } => {
                write!(f, "bencode: dictionary key at byte {offset} is not a string")
            }
            BencodeError::DuplicateKey { offset } => write!(f, "bencode: duplicate dictionary key at byte {offset}"),
            BencodeError::TrailingBytes { offset } => {
                write!(f, "bencode: trailing bytes after the value, starting at byte {offset}")
            }
        }
    }
}

impl std::error::Error for BencodeError {}

/// A decoded value borrowing from the input, with its raw span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub kind: NodeKind<'a>,
    /// Byte range of this value in the input, from its first byte to its last (inclusive of
    /// the `d`/`l`/`i` marker and the closing `e`).
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Node<'a>>),
    /// Entries in input order (which is sorted for canonical input, but need not be).
    Dict(Vec<(&'a [u8], Node<'a>)>),
}

impl<'a> Node<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            NodeKind::Int(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            NodeKind::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_list(&self) -> Option<&[Node<'a>]> {
        match &self.kind {
            NodeKind::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Node<'a>)]> {
        match &self.kind {
            NodeKind::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// Looks a key up in a dictionary; `None` if this is not a dictionary or the key is absent.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }
    /// Converts to an owned value (used to re-encode canonically).
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Int(v) => Value::Int(*v),
            NodeKind::Bytes(b) => Value::Bytes(b.to_vec()),
            NodeKind::List(l) => Value::List(l.iter().map(Node::to_value).collect()),
            NodeKind::Dict(d) => {
                Value::Dict(d.iter().map(|(k, v)| (k.to_vec(), v.to_value())).collect())
            }
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Int(_) => "integer",
            NodeKind::Bytes(_) => "string",
            NodeKind::List(_) => "list",
            NodeKind::Dict(_) => "dictionary",
        }
    }
}

/// Decodes exactly one value spanning the whole input, with default limits.
pub fn decode(input: &[u8]) -> Result<Node<'_>, BencodeError> {
    decode_with(input, DecodeLimits::default())
}

/// Decodes exactly one value spanning the whole input.
pub fn decode_with(input: &[u8], limits: DecodeLimits) -> Result<Node<'_>, BencodeError> {
    let (node, end) = decode_prefix_with(input, limits)?;
    if end != input.len() {
        return Err(BencodeError::TrailingBytes { offset: end });
    }
    Ok(node)
}

/// Decodes one value at the start of `input` and returns it with the offset just past it.
/// Used where a bencoded dictionary is followed by raw bytes (BEP 9 metadata `data` messages).
pub fn decode_prefix_with(
    input: &[u8],
    limits: DecodeLimits,
) -> Result<(Node<'_>, usize), BencodeError> {
    if input.len() > limits.input_bytes_max {
        return Err(BencodeError::InputTooLarge {
            len: input.len(),
            input_bytes_max: limits.input_bytes_max,
        });
    }
    let mut decoder = Decoder {
        input,
        pos: 0,
        depth_max: limits.depth_max,
        values_max: limits.values_max,
        values_left: limits.values_max,
    };
    let node = decoder.value(0)?;
    Ok((node, decoder.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    depth_max: usize,
    values_max: usize,
    values_left: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::UnexpectedEnd { offset: self.pos })
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, BencodeError> {
        let start = self.pos;
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(BencodeError::TooManyValues {
                offset: start,
                values_max: self.values_max,
            })?;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let v = self.integer(b'e')?;
                Ok(Node {
                    kind: NodeKind::Int(v),
                    span: start..self.pos,
                })
            }
            b'0'..=b'9' => {
                let b = self.bytes()?;
                Ok(Node {
                    kind: NodeKind::Bytes(b),
                    span: start..self.pos,
                })
            }
            b'l' => {
                if depth >= self.depth_max {
                    return Err(BencodeError::TooDeep {
                        offset: start,
                        depth_max: self.depth_max,
                    });
                }
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Node {
                    kind: NodeKind::List(items),
                    span: start..self.pos,
                })
            }
            b'd' => {
                if depth >= self.depth_max {
                    return Err(BencodeError::TooDeep {
                        offset: start,
                        depth_max: self.depth_max,
                    });
                }
                self.pos += 1;
                let mut entries: Vec<(&'a [u8], Node<'a>)> = Vec::new();
                let mut sorted_so_far = true;
                while self.peek()? != b'e' {
                    let key_offset = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::DictKeyNotString { offset: key_offset });
                    }
                    let key = self.bytes()?;
                    // While the keys seen so far are sorted (the common case), comparing with the
                    // previous key is enough; once unsorted, fall back to a scan.
                    let duplicate = match entries.last() {
                        Some((prev, _)) if sorted_so_far && *prev < key => false,
                        Some(_) => {
                            sorted_so_far = false;
                            entries.iter().any(|(k, _)| *k == key)
                        }
                        None => false,
                    };
                    if duplicate {
                        return Err(BencodeError::DuplicateKey { offset: key_offset });
                    }
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                self.pos += 1;
                Ok(Node {
                    kind: NodeKind::Dict(entries),
                    span: start..self.pos,
                })
            }
            byte => Err(BencodeError::UnexpectedByte {
                offset: start,
                byte,
            }),
        }
    }

    /// Parses a decimal integer terminated by `terminator`; `self.pos` is at its first byte.
    fn integer(&mut self, terminator: u8) -> Result<i64, BencodeError> {
        let start = self.pos;
        let rest = &self.input[self.pos..];
        let len =
            rest.iter()
                .position(|&b| b == terminator)
                .ok_or(BencodeError::UnexpectedEnd {
                    offset: self.input.len(),
                })?;
        let digits = &rest[..len];
        let (negative, magnitude) = match digits.split_first() {
            Some((b'-', m)) => (true, m),
            _ => (false, digits),
        };
        if magnitude.is_empty() {
            return Err(BencodeError::InvalidInteger {
                offset: start,
                reason: "no digits",
            });
        }
        if !magnitude.iter().all(u8::is_ascii_digit) {
            return Err(BencodeError::InvalidInteger {
                offset: start,
                reason: "not a decimal number",
            });
        }
        if magnitude.len() > 1 && magnitude[0] == b'0' {
            return Err(BencodeError::InvalidInteger {
                offset: start,
                reason: "leading zero",
            });
        }
        if negative && magnitude == b"0" {
            return Err(BencodeError::InvalidInteger {
                offset: start,
                reason: "negative zero",
            });
        }
        let mut value: i64 = 0;
        for &d in magnitude {
            let digit = i64::from(d - b'0');
            value = value
                .checked_mul(10)
                .and_then(|v| {
                    if negative {
                        v.checked_sub(digit)
                    } else {
                        v.checked_add(digit)
                    }
                })
                .ok_or(BencodeError::InvalidInteger {
                    offset: start,
                    reason: "out of 64-bit range",
                })?;
        }
        self.pos += len + 1;
        Ok(value)
    }

    fn bytes(&mut self) -> Result<&'a [u8], BencodeError> {
        let start = self.pos;
        let declared = self.integer(b':')?;
        if declared < 0 {
            return Err(BencodeError::InvalidInteger {
                offset: start,
                reason: "negative string length",
            });
        }
        let available = self.input.len() - self.pos;
        if declared as u64 > available as u64 {
            return Err(BencodeError::StringTooLong {
                offset: start,
                declared_len: declared as u64,
                available_len: available,
            });
        }
        let len = declared as usize;
        let b = &self.input[self.pos..self.pos + len];
        self.pos += len;
        Ok(b)
    }
}

/// An owned bencode value; dictionaries are `BTreeMap`s so encoding is canonical (sorted keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(v) => {
                out.push(b'i');
                out.extend_from_slice(v.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(entries) => {
                out.push(b'd');
                for (k, v) in entries {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// Builder for dictionaries with `&str` keys.
#[derive(Debug, Default, Clone)]
pub struct DictBuilder(BTreeMap<Vec<u8>, Value>);

impl DictBuilder {
    pub fn new() -> Self {
        DictBuilder(BTreeMap::new())
    }
    pub fn insert(mut self, key: &str, value: Value) -> Self {
        self.0.insert(key.as_bytes().to_vec(), value);
        self
    }
    pub fn insert_mut(&mut self, key: &str, value: Value) {
        self.0.insert(key.as_bytes().to_vec(), value);
    }
    pub fn build(self) -> Value {
        Value::Dict(self.0)
    }
}

pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_every_kind_with_spans() {
        let input = b"d3:bar4:spam3:fooi42e4:listli1ei-2eee";
        let node = decode(input).unwrap();
        assert_eq!(node.span, 0..input.len());
        assert_eq!(node.get("bar").unwrap().as_bytes(), Some(&b"spam"[..]));
        assert_eq!(node.get("foo").unwrap().as_int(), Some(42));
        let list = node.get("list").unwrap();
        assert_eq!(&input[list.span.clone()], b"li1ei-2ee");
        assert_eq!(list.as_list().unwrap()[1].as_int(), Some(-2));
    }

    #[test]
    fn raw_span_survives_non_canonical_order() {
        // Keys out of order: the span must still be the exact bytes, not a re-encoding.
        let input = b"d4:infod1:zi1e1:ai2eee";
        let node = decode(input).unwrap();
        let info = node.get("info").unwrap();
        assert_eq!(&input[info.span.clone()], b"d1:zi1e1:ai2ee");
        assert_ne!(info.to_value().encode(), &input[info.span.clone()]);
    }

    #[test]
    fn rejects_malformed_integers() {
        for bad in [
            &b"i-0e"[..],
            b"i03e",
            b"ie",
            b"i-e",
            b"i1x2e",
            b"i99999999999999999999e",
            b"i12",
        ] {
            assert!(
                decode(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap().as_int(),
            Some(i64::MIN)
        );
    }

    #[test]
    fn rejects_lying_string_lengths_with_offset() {
        assert_eq!(
            decode(b"l5:abce"),
            Err(BencodeError::StringTooLong {
                offset: 1,
                declared_len: 5,
                available_len: 4
            })
        );
        assert!(decode(b"18446744073709551616:x").is_err());
        assert!(decode(b"01:a").is_err());
    }

    #[test]
    fn rejects_duplicates_depth_and_trailing() {
        assert_eq!(
            decode(b"d1:ai1e1:ai2ee"),
            Err(BencodeError::DuplicateKey { offset: 7 })
        );
        assert_eq!(
            decode(b"d1:bi1e1:ai2e1:bi3ee"),
            Err(BencodeError::DuplicateKey { offset: 13 })
        );
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert!(matches!(
            decode(deep.as_bytes()),
            Err(BencodeError::TooDeep { .. })
        ));
        assert_eq!(
            decode(b"i1ei2e"),
            Err(BencodeError::TrailingBytes { offset: 3 })
        );
        assert_eq!(
            decode(b"di1ei2ee"),
            Err(BencodeError::DictKeyNotString { offset: 1 })
        );
        let limits = DecodeLimits {
            depth_max: 4,
            input_bytes_max: 3,
            values_max: 10,
        };
        assert!(matches!(
            decode_with(b"i100e", limits),
            Err(BencodeError::InputTooLarge { .. })
        ));
        // Values are bounded: three fit a limit of three, a fourth is refused at its offset.
        let limits = DecodeLimits {
            values_max: 3,
            ..DecodeLimits::default()
        };
        assert!(decode_with(b"li1ei2ee", limits).is_ok());
        assert_eq!(
            decode_with(b"li1ei2ei3ee", limits),
            Err(BencodeError::TooManyValues {
                offset: 7,
                values_max: 3
            })
        );
    }

    #[test]
    fn prefix_decode_reports_end() {
        let (node, end) = decode_prefix_with(b"d1:ai1eeRAWBYTES", DecodeLimits::default()).unwrap();
        assert_eq!(end, 8);
        assert_eq!(node.get("a").unwrap().as_int(), Some(1));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..8),
                    inner,
                    0..8
                )
                .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip_is_identity(v in arb_value()) {
            let encoded = v.encode();
            let node = decode(&encoded).unwrap();
            prop_assert_eq!(node.span.clone(), 0..encoded.len());
            prop_assert_eq!(node.to_value(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_valid_input_never_panics(v in arb_value(), idx in any::<usize>(), byte in any::<u8>()) {
            let mut encoded = v.encode();
            if !encoded.is_empty() {
                let i = idx % encoded.len();
                encoded[i] = byte;
            }
            if let Ok(node) = decode(&encoded) {
                // Whatever decodes must re-encode to something that decodes to the same value.
                let again = node.to_value().encode();
                prop_assert_eq!(decode(&again).unwrap().to_value(), node.to_value());
            }
        }
    }
}
