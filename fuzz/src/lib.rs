//! Fuzz harness: one function per fuzz target, each feeding arbitrary bytes to one of the
//! engine's untrusted-input entry points and asserting the invariants that entry point
//! promises.
//!
//! Owns: the invariants checked per target. The libFuzzer binaries in `fuzz_targets/` are
//! one-line wrappers around these functions, and `tests/fuzz_regressions.rs` (stable
//! toolchain, part of `cargo test`) includes this file with `#[path]` and replays every
//! committed crash input and seed through the same functions — so a fix is proven against
//! exactly the code that found the bug.
//!
//! Must never: depend on anything but `squall_engine` and `std` (the regression test
//! compiles this file inside the root package), or touch files, sockets or clocks. Panicking
//! is this module's job: an assertion failure here *is* the bug report.

use squall_engine::config::SeedConfig;
use squall_engine::http::index::{decode_path, UrlIndex};
use squall_engine::http::request::{self, ParseLimits};
use squall_engine::http::response::{self, RangeAnswer};
use squall_engine::metainfo::bencode::{self, DecodeLimits};
use squall_engine::metainfo::magnet::Magnet;
use squall_engine::metainfo::torrent;
use squall_engine::wire::{
    decode_frame, encode, parse_handshake, validate_bitfield, ExtendedHandshake, Handshake,
    MetadataMessage, WireError, HANDSHAKE_LEN,
};

/// One fuzz target's entry point: arbitrary bytes in, a panic if an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by name, for the regression test and scripts.
pub const TARGETS: &[(&str, Target)] = &[
    ("bencode_decode", bencode_decode),
    ("metainfo_parse", metainfo_parse),
    ("magnet_parse", magnet_parse),
    ("wire_stream", wire_stream),
    ("extended_and_metadata", extended_and_metadata),
    ("config_parse", config_parse),
    ("http_request", http_request),
    ("mse_handshake", mse_handshake),
];

/// Bencode: never panics; whatever decodes spans the whole input, re-encodes canonically to
/// something that decodes to the same value, and the prefix decoder agrees with the
/// whole-input decoder. Tight limits (taken from the first two bytes) must fail cleanly too.
pub fn bencode_decode(data: &[u8]) {
    if let Ok(node) = bencode::decode(data) {
        assert_eq!(node.span, 0..data.len(), "root span must cover the input");
        let value = node.to_value();
        let again = value.encode();
        assert!(again.len() <= data.len(), "canonical form is never longer");
        let reparsed = bencode::decode(&again).expect("canonical re-encoding must decode");
        assert_eq!(reparsed.to_value(), value, "round trip changed the value");
    }
    if let Ok((node, end)) = bencode::decode_prefix_with(data, DecodeLimits::default()) {
        assert!(end <= data.len(), "prefix end past the input");
        assert_eq!(node.span, 0..end);
        let whole = bencode::decode(&data[..end]).expect("a decoded prefix decodes alone");
        assert_eq!(whole, node);
    }
    let depth_max = usize::from(data.first().copied().unwrap_or(0) % 8);
    let tight = DecodeLimits {
        depth_max,
        input_bytes_max: data.len().saturating_sub(depth_max),
        values_max: usize::from(data.get(1).copied().unwrap_or(0)),
    };
    let _ = bencode::decode_with(data, tight);
}

/// Metainfo: never panics; an accepted torrent is internally consistent and none of its
/// file paths can leave the data directory.
pub fn metainfo_parse(data: &[u8]) {
    let Ok(t) = torrent::parse(data) else {
        return;
    };
    assert!(t.piece_length > 0);
    assert!(t.piece_length <= torrent::PIECE_LENGTH_MAX_BYTES);
    assert!(t.total_length > 0);
    assert!(t.files.len() <= torrent::FILES_PER_TORRENT_MAX);
    assert_eq!(
        u64::from(t.num_pieces()),
        t.total_length.div_ceil(t.piece_length)
    );
    if t.has_v1() {
        // v1 and hybrid: one SHA-1 per piece. (v2-only torrents carry piece layers instead.)
        assert_eq!(t.piece_hashes.len() as u64, u64::from(t.num_pieces()) * 20);
        assert!(t.piece_hash(t.num_pieces().saturating_sub(1)).is_some());
        assert!(t.piece_hash(t.num_pieces()).is_none());
    } else {
        assert!(t.piece_hashes.is_empty() && t.info_hash_v2.is_some());
    }
    let last = t.num_pieces() - 1;
    assert!(t.piece_len(last) > 0 && t.piece_len(last) <= t.piece_length);
    let mut offset = 0u64;
    for f in &t.files {
        assert_eq!(f.offset, offset, "file offsets must be contiguous");
        offset += f.length;
        assert!(!f.path.is_empty());
        for c in &f.path {
            assert!(
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && !c.contains('/')
                    && !c.contains('\\')
                    && !c.contains('\0'),
                "unsafe component {c:?} accepted"
            );
        }
        let root = std::path::Path::new("/data-root");
        let p = t.file_path_in(root, f);
        assert!(p.starts_with(root), "{p:?} escapes the root");
        assert!(p.components().all(|c| matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )));
    }
    assert_eq!(offset, t.total_length);
    assert!(bencode::decode(&t.info_bytes).is_ok());
    let _ = t.magnet();
}

/// Magnet: never panics on any string; an accepted link survives format-then-parse.
pub fn magnet_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(m) = Magnet::parse(&text) else {
        return;
    };
    let uri = m.to_uri();
    let again = Magnet::parse(&uri).expect("a formatted magnet link must parse");
    assert_eq!(again, m, "format/parse round trip changed the link: {uri}");
}

/// What one decode step produced, owned, so the whole-buffer and chunked runs compare.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Frame(Vec<u8>),
    Error(WireError),
}

/// The wire decoder as the shard drives it: a handshake, then length-prefixed frames,
/// delivered in chunks whose sizes come from the input, into a receive buffer that grows
/// (bounded by the largest message) only when full, decoded in a loop, then compacted.
///
/// Input layout: byte 0 = flags (bit 0: prepend a valid handshake so the fuzzer reaches the
/// message loop quickly; bits 1-3: `max_len` = 2^(7 + n) bytes); byte 1 = number `k` of
/// chunk sizes (mod 16); the next `k` bytes are chunk sizes (cycled, 0 means 1); the rest
/// is the byte stream.
///
/// Invariants: consumed <= buffered; every frame consumes > 0 bytes and re-encodes to the
/// exact bytes it came from; the buffer never has to grow past `max_len + 4` (the decoder
/// refuses an oversized frame before the buffer fills); and chunking changes nothing — the
/// chunked run yields the same frames and the same final error as decoding the stream at once.
pub fn wire_stream(data: &[u8]) {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&k, rest) = rest.split_first().unwrap_or((&0, &[]));
    let k = usize::from(k % 16).min(rest.len());
    let (chunk_sizes, body) = rest.split_at(k);
    let max_len: u32 = 1 << (7 + u32::from((flags >> 1) & 7));
    let mut stream = Vec::with_capacity(HANDSHAKE_LEN + body.len());
    if flags & 1 == 1 {
        stream.extend_from_slice(&Handshake::new([7; 20], [9; 20], true, true).to_bytes());
    }
    stream.extend_from_slice(body);

    let reference = decode_all_at_once(&stream, max_len);
    let chunked = decode_in_chunks(&stream, chunk_sizes, max_len);
    assert_eq!(chunked, reference, "chunking changed what was decoded");
}

/// Reference run: the whole stream in one buffer.
fn decode_all_at_once(stream: &[u8], max_len: u32) -> (bool, Vec<Step>) {
    let mut steps = Vec::new();
    let handshake_ok = match parse_handshake(stream) {
        Ok(Some(hs)) => {
            assert_eq!(hs.to_bytes()[..], stream[..HANDSHAKE_LEN]);
            true
        }
        Ok(None) => return (false, steps),
        Err(e) => {
            steps.push(Step::Error(e));
            return (false, steps);
        }
    };
    let mut consumed = HANDSHAKE_LEN;
    loop {
        match decode_frame(&stream[consumed..], max_len) {
            Ok(Some((msg, used))) => {
                steps.push(Step::Frame(check_frame(&stream[consumed..], &msg, used)));
                consumed += used;
            }
            Ok(None) => break,
            Err(e) => {
                steps.push(Step::Error(e));
                break;
            }
        }
    }
    (handshake_ok, steps)
}

/// Checks one decoded frame and returns its bytes.
fn check_frame(buf: &[u8], msg: &squall_engine::wire::Message<'_>, used: usize) -> Vec<u8> {
    assert!(
        used >= 4 && used <= buf.len(),
        "used {used} of {}",
        buf.len()
    );
    let mut out = Vec::new();
    encode(msg, &mut out);
    assert_eq!(out[..], buf[..used], "re-encoding differs from the frame");
    if let squall_engine::wire::Message::Bitfield(bits) = msg {
        // Any piece count near the bitfield's size must be checked without panicking.
        let bits_len = u32::try_from(bits.len()).unwrap_or(u32::MAX);
        for num_pieces in [
            0,
            1,
            bits_len.saturating_mul(8),
            bits_len.saturating_mul(8).saturating_sub(3),
        ] {
            let _ = validate_bitfield(bits, num_pieces);
        }
    }
    out
}

/// The shard's way: chunked receives into a growable, bounded buffer, decode loop, compaction.
fn decode_in_chunks(stream: &[u8], chunk_sizes: &[u8], max_len: u32) -> (bool, Vec<Step>) {
    let limit = max_len as usize + 4;
    let mut buf = vec![0u8; 64];
    let mut buffered = 0usize;
    let mut fed = 0usize;
    let mut handshake_ok = false;
    let mut steps = Vec::new();
    let mut chunk_index = 0usize;
    while fed < stream.len() {
        if buffered == buf.len() {
            // The shard's arm_recv growth rule.
            let new_len = (buf.len() * 2).min(limit).max(buffered + 1);
            assert!(
                new_len <= limit.max(HANDSHAKE_LEN),
                "buffer of {buffered} bytes is full of an incomplete frame above the limit {limit}"
            );
            buf.resize(new_len, 0);
        }
        let want = chunk_sizes
            .get(chunk_index % chunk_sizes.len().max(1))
            .map_or(usize::MAX, |&c| usize::from(c).max(1));
        chunk_index += 1;
        let n = want.min(buf.len() - buffered).min(stream.len() - fed);
        buf[buffered..buffered + n].copy_from_slice(&stream[fed..fed + n]);
        buffered += n;
        fed += n;

        let mut consumed = 0usize;
        if !handshake_ok {
            match parse_handshake(&buf[..buffered]) {
                Ok(Some(_)) => {
                    handshake_ok = true;
                    consumed = HANDSHAKE_LEN;
                }
                Ok(None) => continue,
                Err(e) => {
                    steps.push(Step::Error(e));
                    return (false, steps);
                }
            }
        }
        loop {
            assert!(
                consumed <= buffered,
                "consumed {consumed} > buffered {buffered}"
            );
            match decode_frame(&buf[consumed..buffered], max_len) {
                Ok(Some((msg, used))) => {
                    steps.push(Step::Frame(check_frame(
                        &buf[consumed..buffered],
                        &msg,
                        used,
                    )));
                    consumed += used;
                }
                Ok(None) => break,
                Err(e) => {
                    steps.push(Step::Error(e));
                    return (handshake_ok, steps);
                }
            }
        }
        // Compaction, as process_input does.
        buf.copy_within(consumed..buffered, 0);
        buffered -= consumed;
    }
    (handshake_ok, steps)
}

/// BEP 10 extended handshake and BEP 9 ut_metadata: never panic; what parses survives
/// encode-then-parse unchanged.
pub fn extended_and_metadata(data: &[u8]) {
    if let Ok(hs) = ExtendedHandshake::parse(data) {
        let again = ExtendedHandshake::parse(&hs.encode()).expect("our encoding must parse");
        let sorted = |h: &ExtendedHandshake| {
            let mut h = h.clone();
            h.m.sort();
            h
        };
        assert_eq!(sorted(&again), sorted(&hs));
        for (name, _) in &hs.m {
            let _ = hs.extension_id(name);
        }
    }
    if let Ok(msg) = MetadataMessage::parse(data) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        let again = MetadataMessage::parse(&out).expect("our encoding must parse");
        assert_eq!(again, msg);
    }
}

/// Config: never panics on any UTF-8 text; an accepted config passes validation again and
/// its derived sizes compute without overflow.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = SeedConfig::from_toml(text) {
        assert!(config.engine.validate().is_ok());
        let _ = config.engine.shard_count();
        let _ = config.engine.slot_len_bytes();
        let _ = config.engine.blocks_per_batch_max();
    }
}

/// HTTP request heads: never panics; a parsed head claims no more bytes than it was given,
/// parses the same from exactly those bytes (a head is self-delimiting, so pipelined requests
/// split where the client meant), every range answer stays inside the file, a decoded path
/// has no traversal segment, and every answer's head is well framed. Tight limits (from the
/// first two bytes) must fail cleanly too.
pub fn http_request(data: &[u8]) {
    let (limits, input) = match data {
        [a, b, rest @ ..] => {
            let line = 1 + usize::from(*a) * 4;
            let limits = ParseLimits {
                request_line_bytes_max: line,
                header_bytes_max: line + usize::from(*b) * 16,
                header_count_max: 1 + usize::from(*b % 70),
            };
            (limits, rest)
        }
        _ => return,
    };
    let Ok(Some((req, used))) = request::parse(input, &limits) else {
        return;
    };
    assert!(used > 0 && used <= input.len());
    let again = request::parse(&input[..used], &limits);
    assert_eq!(again, Ok(Some((req.clone(), used))));
    if let Some(value) = req.range {
        for len in [0u64, 1, 100, 1 << 40] {
            if let RangeAnswer::Part { start, len: n } = response::range(value, len) {
                assert!(n > 0 && start.checked_add(n).is_some_and(|end| end <= len));
            }
        }
    }
    if let Ok(path) = decode_path(req.path) {
        for segment in path.split('/') {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(!segment.contains(['\\', '\0']));
        }
    }
    let mut head = Vec::new();
    let answer = response::answer(&req, &UrlIndex::default(), |_| false, 0, &mut head);
    assert!(matches!(answer.status, 400 | 404) && answer.body.is_none());
    assert!(head.starts_with(b"HTTP/1.1 ") && head.ends_with(b"\r\n\r\n"));
}

/// MSE/PE handshake (`wire::mse`): never panics, never takes more than it was given, never
/// waits holding more than the spec's sync bound plus one bounded message. Byte 0 picks the
/// chunk size and the responder's mode; the rest is (a) fed raw to a responder, chunked, and
/// (b) laid over an honest initiator's third message (XOR), so the deep states (SKEY, VC,
/// PadC, IA) see hostile bytes behind a valid key exchange.
pub fn mse_handshake(data: &[u8]) {
    use squall_engine::metainfo::InfoHash;
    use squall_engine::wire::mse::{
        req2_hash, EncryptionMode, Initiator, Responder, CRYPTO_PLAINTEXT, CRYPTO_RC4,
        PAD_MAX_BYTES, RESPONDER_SYNC_BYTES_MAX,
    };
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x3f) + 1;
    let mode = match ctl >> 6 {
        0 => EncryptionMode::Allow,
        1 => EncryptionMode::Prefer,
        _ => EncryptionMode::Require,
    };
    let torrent = InfoHash([0x5a; 20]);
    let lookup = |h: &[u8; 20]| (*h == req2_hash(&torrent)).then_some(torrent);
    // One message past the sync point is at most 20 + 14 + PadC + 2 + IA (u16) bytes.
    let waiting_max = RESPONDER_SYNC_BYTES_MAX + 20 + 14 + PAD_MAX_BYTES + 2 + 65_535;
    let drive = |stream: &[u8]| {
        let mut r = Responder::new([7; 20], usize::from(ctl) % (PAD_MAX_BYTES + 1), mode);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            match r.feed(&buf, &mut out, &lookup) {
                Err(_) => return,
                Ok(p) => {
                    assert!(p.consumed <= buf.len(), "consumed past the input");
                    buf.drain(..p.consumed);
                    if let Some(done) = p.established {
                        assert_eq!(done.info_hash, torrent);
                        assert!(done.initial_payload.len() <= 65_535);
                        return;
                    }
                    assert!(buf.len() <= waiting_max, "waits on {} bytes", buf.len());
                }
            }
        }
    };
    drive(rest);
    let mut to_b = Vec::new();
    let provide = if ctl & 1 == 0 {
        CRYPTO_RC4
    } else {
        CRYPTO_RC4 | CRYPTO_PLAINTEXT
    };
    let mut init = Initiator::new(
        [9; 20],
        usize::from(ctl) % 64,
        torrent,
        provide,
        b"ia".to_vec(),
        &mut to_b,
    );
    let mut to_a = Vec::new();
    let mut r = Responder::new([7; 20], 0, EncryptionMode::Allow);
    if r.feed(&to_b, &mut to_a, &lookup).is_err() {
        return;
    }
    let mut third = Vec::new();
    if init.feed(&to_a, &mut third).is_err() {
        return;
    }
    for (b, x) in third.iter_mut().zip(rest.iter()) {
        *b ^= x;
    }
    third.extend_from_slice(rest.get(third.len()..).unwrap_or(&[]));
    let mut stream = to_b;
    stream.extend_from_slice(&third);
    drive(&stream);
}
