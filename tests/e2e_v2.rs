//! End-to-end: libtorrent 2.0 (Debian) downloads BitTorrent v2-only and hybrid torrents
//! (BEP 52) from the real `squall seed` binary over loopback; bytes are compared with the
//! source. Skips without python3-libtorrent unless SQUALL_REQUIRE_TOOLS=1.

mod common;

use common::*;
use std::process::Command;

/// Makes `--v2` and `--hybrid` torrents of the standard content (single file and multi-file
/// with odd sizes, an empty file, a file smaller than a block) into `torrents/`.
fn make_torrents(dir: &std::path::Path) {
    let torrents = dir.join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    for name in ["single.bin", "multi"] {
        for flavor in ["v2", "hybrid"] {
            let o = Command::new(squall_bin())
                .arg("make")
                .arg(dir.join("content").join(name))
                .arg("-o")
                .arg(torrents.join(format!("{name}-{flavor}.torrent")))
                .arg(format!("--{flavor}"))
                .args(["--piece-length", "64K"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
fn libtorrent_downloads_v2_only_and_hybrid_torrents_byte_identical() {
    // Proves: a v2-only torrent (handshake carries the truncated SHA-256 info-hash, files
    // piece-aligned with implicit pads) and a hybrid (explicit pad files served as zeros) are
    // downloaded by libtorrent from squall, byte-identical, with 1 and 2 shards.
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    standard_content(&dir.path().join("content"));
    make_torrents(dir.path());
    for shards in [1, 2] {
        let squall = SeedArgs::catalog(&dir.path().join("torrents"), &dir.path().join("content"))
            .state(&dir.path().join("state"))
            .shards(shards)
            .start();
        assert_eq!(squall.torrents.len(), 4, "{:?}", squall.torrents);
        for name in ["single.bin", "multi"] {
            for flavor in ["v2", "hybrid"] {
                let save = dir.path().join(format!("dl-{shards}-{flavor}"));
                let torrent = dir.path().join(format!("torrents/{name}-{flavor}.torrent"));
                let r = lt_download(Source::Torrent(&torrent), &save, &squall.peer(), &[]);
                assert!(r.ok, "{name} {flavor}, {shards} shard(s): {}", r.json);
                assert_same_tree(&dir.path().join("content").join(name), &save.join(name));
            }
        }
        let (code, _) = squall.terminate();
        assert_eq!(code, Some(0));
    }
}

/// Starts squall (one shard) on the standard content with the v2 and hybrid torrents.
fn start_v2_seeder(dir: &std::path::Path) -> SquallProcess {
    standard_content(&dir.join("content"));
    make_torrents(dir);
    SeedArgs::catalog(&dir.join("torrents"), &dir.join("content"))
        .state(&dir.join("state"))
        .shards(1)
        .start()
}

/// A raw v2 peer: handshakes, sends hash requests, reads the hash answers (ids 22, 23).
struct HashClient {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl HashClient {
    fn connect(addr: std::net::SocketAddr, info_hash: [u8; 20]) -> HashClient {
        use squall_engine::wire::{parse_handshake, Handshake};
        use std::io::{Read, Write};
        let mut s = raw_connect(addr);
        let hs = Handshake::new(info_hash, *b"-TT0001-hashrequest1", false, true).with_v2(true);
        s.write_all(&hs.to_bytes()).unwrap();
        let mut buf = Vec::new();
        loop {
            if let Ok(Some(h)) = parse_handshake(&buf) {
                assert!(h.supports_v2(), "squall's handshake lacks the v2 bit");
                buf.drain(..squall_engine::wire::HANDSHAKE_LEN);
                return HashClient { s, buf };
            }
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => panic!("closed before the handshake"),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    fn request(&mut self, r: &squall_engine::wire::hashes::HashRequest) {
        use squall_engine::wire::hashes::{encode_hash_request, HASH_REQUEST};
        use std::io::Write;
        let mut out = Vec::new();
        encode_hash_request(HASH_REQUEST, r, &mut out);
        self.s.write_all(&out).unwrap();
    }

    /// The first message `pick` maps to Some, read as it arrives; others are skipped.
    fn next_where<T>(
        &mut self,
        mut pick: impl FnMut(squall_engine::wire::Message<'_>) -> Option<T>,
    ) -> T {
        use std::io::Read;
        loop {
            if let Ok(Some((m, used))) = squall_engine::wire::decode_frame(&self.buf, 1 << 20) {
                let got = pick(m);
                self.buf.drain(..used);
                if let Some(g) = got {
                    return g;
                }
                continue;
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => panic!("squall closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// The next hashes (Ok) or hash reject (Err) message; other messages are skipped.
    fn next_answer(
        &mut self,
    ) -> Result<
        (squall_engine::wire::hashes::HashRequest, Vec<[u8; 32]>),
        squall_engine::wire::hashes::HashRequest,
    > {
        use squall_engine::metainfo::merkle::split_hashes;
        use squall_engine::wire::hashes::{parse_hash_request, parse_hashes, HASHES, HASH_REJECT};
        use squall_engine::wire::Message;
        self.next_where(|m| match m {
            Message::Unknown {
                id: HASHES,
                payload,
            } => {
                let (r, h) = parse_hashes(payload).expect("well-formed hashes");
                Some(Ok((r, split_hashes(h).unwrap())))
            }
            Message::Unknown {
                id: HASH_REJECT,
                payload,
            } => Some(Err(parse_hash_request(HASH_REJECT, payload).unwrap())),
            _ => None,
        })
    }
}

#[test]
fn hash_requests_get_verifiable_hashes_and_bad_ones_get_rejects() {
    // Proves: over a real socket, a v2 peer's hash request for the piece layer of a v2-only
    // torrent gets a `hashes` answer whose nodes are the .torrent's piece layer (pad nodes
    // past the last piece) and whose uncles recompute the pieces root; requests for a higher
    // layer are answered too; unknown roots, block layers, out-of-range ranges, too many proof
    // layers and unaligned or oversized lengths get hash rejects, and the peer stays connected.
    use squall_engine::metainfo::merkle::{hash_pair, pad_hash, piece_level, split_hashes};
    use squall_engine::wire::hashes::HashRequest;
    let dir = tempfile::tempdir().unwrap();
    let squall = start_v2_seeder(dir.path());
    let bytes = std::fs::read(dir.path().join("torrents/single.bin-v2.torrent")).unwrap();
    let t = squall_engine::metainfo::torrent::parse(&bytes).unwrap();
    let root = t.files[0].pieces_root.unwrap();
    let layer = split_hashes(&t.piece_layers[&root]).unwrap();
    // 3,000,017 bytes in 64 KiB pieces: 46 pieces, 184 leaves -> 256 wide, height 8;
    // the piece layer is level 2 and 64 nodes wide.
    let base = piece_level(t.piece_length);
    assert_eq!((layer.len(), base), (46, 2));
    let height = 8;
    let mut c = HashClient::connect(squall.addr, t.info_hash.0);
    let req = |base_layer, index, length, proof_layers| HashRequest {
        pieces_root: root,
        base_layer,
        index,
        length,
        proof_layers,
    };

    // The whole piece layer, as libtorrent asks for it (64 nodes, proof implied).
    let r = req(base, 0, 64, height - base - 1);
    c.request(&r);
    let (got_r, hashes) = c.next_answer().expect("hashes for the piece layer");
    assert_eq!(got_r, r);
    assert_eq!(hashes.len(), 64);
    assert_eq!(&hashes[..46], &layer[..]);
    assert!(hashes[46..].iter().all(|h| *h == pad_hash(base)));

    // Half the layer with a full proof: 32 nodes plus 1 uncle give the root.
    for index in [0u32, 32] {
        let r = req(base, index, 32, height - base - 1);
        c.request(&r);
        let (_, h) = c.next_answer().expect("hashes with a proof");
        assert_eq!(h.len(), 33);
        let mut nodes = h[..32].to_vec();
        while nodes.len() > 1 {
            nodes = nodes.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
        }
        let got_root = if index == 0 {
            hash_pair(&nodes[0], &h[32])
        } else {
            hash_pair(&h[32], &nodes[0])
        };
        assert_eq!(got_root, root, "index {index}");
    }

    // A higher layer: level 5 is 8 nodes; two of them plus uncles up to the root.
    let r = req(5, 2, 2, 2);
    c.request(&r);
    let (_, h) = c.next_answer().expect("hashes of a higher layer");
    assert_eq!(h.len(), 2 + 2);
    let mut node = hash_pair(&h[0], &h[1]); // level 6, position 1
    node = hash_pair(&h[2], &node); // level 7, position 0
    node = hash_pair(&node, &h[3]);
    assert_eq!(node, root);

    // Requests squall refuses, each answered with a hash reject echoing the request.
    let mut unknown = req(base, 0, 64, 5);
    unknown.pieces_root = [0xAB; 32];
    for bad in [
        unknown,
        req(0, 0, 4, 0),     // block layer: would need leaf hashes from file data
        req(base, 64, 2, 0), // past the layer's end
        req(base, 0, 2, height - base), // proof above the root
        req(base, 2, 4, 0),  // index not aligned to length
        req(base, 0, 3, 0),  // length not a power of two
        req(height, 0, 1, 0), // the root itself
    ] {
        c.request(&bad);
        assert_eq!(c.next_answer().map(|a| a.0), Err(bad));
    }
    // Still connected and answering after the rejects.
    c.request(&r);
    assert!(c.next_answer().is_ok());
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

impl HashClient {
    fn send(&mut self, m: &squall_engine::wire::Message) {
        use std::io::Write;
        let mut out = Vec::new();
        squall_engine::wire::message::encode(m, &mut out);
        self.s.write_all(&out).unwrap();
    }

    /// The answer to a block request: Ok(piece data length) or Err(()) for a BEP 6
    /// reject. Other messages are skipped.
    fn next_block_answer(&mut self) -> Result<usize, ()> {
        use squall_engine::wire::Message;
        self.next_where(|m| match m {
            Message::Piece { data, .. } => Some(Ok(data.len())),
            Message::RejectRequest(_) => Some(Err(())),
            _ => None,
        })
    }
}

#[test]
fn v2_block_requests_that_start_past_a_files_end_are_rejected() {
    // Proves: in a v2-only torrent (implicit padding after each file), a block request that
    // starts past a file's end gets a BEP 6 reject instead of zeros; one that starts inside
    // the file and runs into the padding is served whole (libtorrent asks for those), and
    // the peer stays connected.
    use squall_engine::wire::{BlockRequest, Message};
    let dir = tempfile::tempdir().unwrap();
    let squall = start_v2_seeder(dir.path());
    let bytes = std::fs::read(dir.path().join("torrents/multi-v2.torrent")).unwrap();
    let t = squall_engine::metainfo::torrent::parse(&bytes).unwrap();
    // multi/a.bin (1,234,567 bytes) comes first: its last piece, 18, holds 54,919 bytes of
    // it and 10,617 bytes of implicit padding.
    assert_eq!(
        (t.files[0].path.join("/"), t.files[0].length),
        ("a.bin".into(), 1_234_567)
    );
    assert!(t.files[1].pad);
    let in_file = 1_234_567 - 18 * 65_536;
    let mut c = HashClient::connect(squall.addr, t.info_hash.0);
    c.send(&Message::Interested);
    let req = |begin: u32, length: u32| {
        Message::Request(BlockRequest {
            index: 18,
            begin,
            length,
        })
    };
    for (begin, length, served) in [
        (49_152, 16_384, true), // straddles the end: real bytes, then zeros
        (in_file - 1, 1, true), // the file's last byte
        (in_file, 1, false),    // the first byte of padding
        (60_000, 5_536, false), // deep in the padding
    ] {
        c.send(&req(begin, length));
        let answer = c.next_block_answer();
        assert_eq!(answer.is_ok(), served, "begin {begin} length {length}");
        if served {
            assert_eq!(answer, Ok(length as usize));
        }
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn libtorrent_downloads_a_v2_only_torrent_from_a_bare_magnet() {
    // Proves: libtorrent, given only `magnet:?xt=urn:btmh:1220<hex>` and squall's address,
    // fetches the info dictionary (BEP 9), gets the piece layers it lacks through hash
    // requests answered by squall, and completes single- and multi-file v2-only torrents
    // byte-identical.
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let squall = start_v2_seeder(dir.path());
    for name in ["single.bin", "multi"] {
        let bytes = std::fs::read(dir.path().join(format!("torrents/{name}-v2.torrent"))).unwrap();
        let t = squall_engine::metainfo::torrent::parse(&bytes).unwrap();
        let magnet = format!(
            "magnet:?xt=urn:btmh:1220{}",
            hex::encode(t.info_hash_v2.unwrap())
        );
        let save = dir.path().join(format!("dl-magnet-{name}"));
        let r = lt_download(Source::Magnet(&magnet), &save, &squall.peer(), &[]);
        assert!(r.ok, "{name} from {magnet}: {}", r.json);
        assert_same_tree(&dir.path().join("content").join(name), &save.join(name));
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}
