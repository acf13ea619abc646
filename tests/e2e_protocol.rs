//! Protocol conformance of the real `squall` binary, driven by a raw socket speaking the wire
//! format through squall-engine's pure codec: what a well-behaved peer gets, and what
//! happens to peers that break the rules. Needs no external tools.

mod common;

use common::*;
use squall_engine::wire::extended::{ExtendedHandshake, UT_METADATA};
use squall_engine::wire::metadata::MetadataMessage;
use squall_engine::wire::{
    decode_frame, encode, encode_extended, parse_handshake, BlockRequest, Handshake, Message,
};
use std::io::{Read, Write};
use std::net::TcpStream;

const BLOCK: u32 = 16384;

/// One owned message read off the socket.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Handshake(Handshake),
    Msg(OwnedMessage),
    Closed,
}

#[derive(Debug, PartialEq, Eq)]
enum OwnedMessage {
    KeepAlive,
    Unchoke,
    Choke,
    HaveAll,
    HaveNone,
    Bitfield(Vec<u8>),
    Piece {
        index: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Reject(BlockRequest),
    Extended {
        id: u8,
        payload: Vec<u8>,
    },
    Other(String),
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    handshaken: bool,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        Client {
            s: raw_connect(addr),
            buf: Vec::new(),
            handshaken: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    fn send_msg(&mut self, m: &Message<'_>) {
        let mut out = Vec::new();
        encode(m, &mut out);
        self.send(&out);
    }

    fn handshake(&mut self, info_hash: [u8; 20], extended: bool, fast: bool) -> Handshake {
        let hs = Handshake::new(info_hash, *b"-TT0001-abcdefghijkl", extended, fast);
        self.send(&hs.to_bytes());
        match self.next() {
            Got::Handshake(h) => h,
            other => panic!("expected a handshake, got {other:?}"),
        }
    }

    fn next(&mut self) -> Got {
        loop {
            if !self.handshaken {
                if let Ok(Some(h)) = parse_handshake(&self.buf) {
                    self.buf.drain(..68);
                    self.handshaken = true;
                    return Got::Handshake(h);
                }
            } else if let Ok(Some((m, used))) = decode_frame(&self.buf, 1 << 20) {
                let owned = match m {
                    Message::KeepAlive => OwnedMessage::KeepAlive,
                    Message::Unchoke => OwnedMessage::Unchoke,
                    Message::Choke => OwnedMessage::Choke,
                    Message::HaveAll => OwnedMessage::HaveAll,
                    Message::HaveNone => OwnedMessage::HaveNone,
                    Message::Bitfield(b) => OwnedMessage::Bitfield(b.to_vec()),
                    Message::Piece { index, begin, data } => OwnedMessage::Piece {
                        index,
                        begin,
                        data: data.to_vec(),
                    },
                    Message::RejectRequest(r) => OwnedMessage::Reject(r),
                    Message::Extended { id, payload } => OwnedMessage::Extended {
                        id,
                        payload: payload.to_vec(),
                    },
                    other => OwnedMessage::Other(format!("{other:?}")),
                };
                self.buf.drain(..used);
                return Got::Msg(owned);
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Reads until a message matching `pred` arrives (skipping others) or the peer closes.
    fn until(&mut self, pred: impl Fn(&OwnedMessage) -> bool) -> Option<OwnedMessage> {
        loop {
            match self.next() {
                Got::Msg(m) if pred(&m) => return Some(m),
                Got::Msg(_) | Got::Handshake(_) => continue,
                Got::Closed => return None,
            }
        }
    }

    fn closed(&mut self) -> bool {
        loop {
            match self.next() {
                Got::Closed => return true,
                _ => continue,
            }
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    squall: SquallProcess,
    info_hash: [u8; 20],
    data: Vec<u8>,
}

/// One 1 MiB + 100 byte file with 256 KiB pieces (automatic piece length picks 16 KiB for
/// small content, so the torrent is made explicitly).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (data, info_hash) = one_file_catalog(dir.path(), 1024 * 1024 + 100, 42);
    let content = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    let squall = SeedArgs::catalog(&torrents, &content)
        .state(&dir.path().join("state"))
        .shards(1)
        .start();
    Fixture {
        _dir: dir,
        squall,
        info_hash,
        data,
    }
}

/// A fast, extended peer: handshake answered with our reserved bits, an extended handshake
/// with ut_metadata/metadata_size/reqq, HaveAll; requests while choked are rejected;
/// after `interested` it is unchoked and blocks (including the short last one) arrive
/// byte-identical; invalid requests get a reject and the connection stays up.
#[test]
fn fast_peer_gets_haveall_unchoke_blocks_and_rejects() {
    let f = fixture();
    let mut c = Client::connect(f.squall.addr);
    let hs = c.handshake(f.info_hash, true, true);
    assert_eq!(hs.info_hash, f.info_hash);
    assert!(hs.supports_fast() && hs.supports_extended());
    let ext = c
        .until(|m| matches!(m, OwnedMessage::Extended { id: 0, .. }))
        .expect("extended handshake");
    let OwnedMessage::Extended { payload, .. } = ext else {
        unreachable!()
    };
    let eh = ExtendedHandshake::parse(&payload).unwrap();
    assert!(eh.extension_id(UT_METADATA).is_some());
    assert!(eh.metadata_size.unwrap() > 0);
    assert_eq!(eh.reqq, Some(512));
    assert!(eh.upload_only);
    assert_eq!(
        c.until(|m| matches!(m, OwnedMessage::HaveAll)),
        Some(OwnedMessage::HaveAll)
    );

    let r = BlockRequest {
        index: 0,
        begin: 0,
        length: BLOCK,
    };
    c.send_msg(&Message::Request(r));
    assert_eq!(
        c.until(|m| matches!(m, OwnedMessage::Reject(_))),
        Some(OwnedMessage::Reject(r)),
        "choked request"
    );

    c.send_msg(&Message::Interested);
    assert_eq!(
        c.until(|m| matches!(m, OwnedMessage::Unchoke)),
        Some(OwnedMessage::Unchoke)
    );
    // The last piece is 100 bytes long: index 4 (1 MiB / 256 KiB = 4 full pieces).
    for r in [
        BlockRequest {
            index: 0,
            begin: 0,
            length: BLOCK,
        },
        BlockRequest {
            index: 3,
            begin: 256 * 1024 - BLOCK,
            length: BLOCK,
        },
        BlockRequest {
            index: 4,
            begin: 0,
            length: 100,
        },
    ] {
        c.send_msg(&Message::Request(r));
        let got = c
            .until(|m| matches!(m, OwnedMessage::Piece { .. }))
            .expect("piece");
        let start = r.index as usize * 256 * 1024 + r.begin as usize;
        assert_eq!(
            got,
            OwnedMessage::Piece {
                index: r.index,
                begin: r.begin,
                data: f.data[start..start + r.length as usize].to_vec()
            }
        );
    }
    for bad in [
        BlockRequest {
            index: 5,
            begin: 0,
            length: BLOCK,
        }, // no such piece
        BlockRequest {
            index: 4,
            begin: 0,
            length: 101,
        }, // past the end
        BlockRequest {
            index: 0,
            begin: 0,
            length: 0,
        }, // empty
        BlockRequest {
            index: 0,
            begin: 0,
            length: 2 * BLOCK,
        }, // over the maximum
        BlockRequest {
            index: 0,
            begin: u32::MAX - 10,
            length: 16,
        }, // overflowing begin
    ] {
        c.send_msg(&Message::Request(bad));
        assert_eq!(
            c.until(|m| matches!(m, OwnedMessage::Reject(_))),
            Some(OwnedMessage::Reject(bad))
        );
    }
    // Still served after all that.
    let r = BlockRequest {
        index: 1,
        begin: BLOCK,
        length: BLOCK,
    };
    c.send_msg(&Message::Request(r));
    assert!(matches!(
        c.until(|m| matches!(m, OwnedMessage::Piece { .. })),
        Some(OwnedMessage::Piece { .. })
    ));
}

/// BEP 9: metadata piece 0 is the info dictionary (its SHA-1 is the info-hash); an absurd
/// piece number gets a reject, not a crash.
#[test]
fn metadata_is_served_and_absurd_pieces_rejected() {
    let f = fixture();
    let mut c = Client::connect(f.squall.addr);
    c.handshake(f.info_hash, true, true);
    let ours = ExtendedHandshake {
        m: vec![(UT_METADATA.to_string(), 7)],
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_extended(0, &ours.encode(), &mut out);
    c.send(&out);
    let ext = c
        .until(|m| matches!(m, OwnedMessage::Extended { id: 0, .. }))
        .unwrap();
    let OwnedMessage::Extended { payload, .. } = ext else {
        unreachable!()
    };
    let theirs = ExtendedHandshake::parse(&payload).unwrap();
    let their_id = theirs.extension_id(UT_METADATA).unwrap();
    for piece in [0u32, 1_000_000] {
        let mut p = Vec::new();
        MetadataMessage::Request { piece }.encode(&mut p);
        let mut out = Vec::new();
        encode_extended(their_id, &p, &mut out);
        c.send(&out);
        let got = c
            .until(|m| matches!(m, OwnedMessage::Extended { id: 7, .. }))
            .expect("metadata reply");
        let OwnedMessage::Extended { payload, .. } = got else {
            unreachable!()
        };
        match MetadataMessage::parse(&payload).unwrap() {
            MetadataMessage::Data {
                piece: 0,
                total_size,
                data,
            } => {
                assert_eq!(total_size as usize, data.len());
                use sha1::{Digest, Sha1};
                assert_eq!(Sha1::digest(data).as_slice(), &f.info_hash);
                assert_eq!(piece, 0);
            }
            MetadataMessage::Reject { piece: p } => assert_eq!(p, 1_000_000),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A peer without BEP 6 gets a full bitfield, and an invalid request closes it.
#[test]
fn plain_peer_gets_bitfield_and_is_closed_for_invalid_requests() {
    let f = fixture();
    let mut c = Client::connect(f.squall.addr);
    c.handshake(f.info_hash, false, false);
    let bf = c
        .until(|m| matches!(m, OwnedMessage::Bitfield(_)))
        .expect("bitfield");
    assert_eq!(bf, OwnedMessage::Bitfield(vec![0b1111_1000]));
    c.send_msg(&Message::Interested);
    c.until(|m| matches!(m, OwnedMessage::Unchoke))
        .expect("unchoke");
    c.send_msg(&Message::Request(BlockRequest {
        index: 9,
        begin: 0,
        length: BLOCK,
    }));
    assert!(
        c.closed(),
        "invalid request from a non-fast peer must close it"
    );
}

/// Rule breakers are closed: unknown info-hash, a 4 GiB length prefix (refused from its 4
/// bytes alone), fast messages without negotiating BEP 6, extension messages without BEP 10,
/// unsolicited piece data, a bitfield of the wrong length.
#[test]
fn rule_breakers_are_closed() {
    let f = fixture();
    let mut c = Client::connect(f.squall.addr);
    c.send(&Handshake::new([7; 20], [1; 20], true, true).to_bytes());
    assert!(c.closed(), "unknown info-hash");

    let cases: Vec<(bool, bool, Vec<u8>)> = vec![
        (true, true, vec![0xff, 0xff, 0xff, 0xff]),
        (true, false, {
            let mut v = Vec::new();
            encode(&Message::HaveAll, &mut v);
            v
        }),
        (false, true, {
            let mut v = Vec::new();
            encode_extended(0, b"de", &mut v);
            v
        }),
        (true, true, {
            let mut v = Vec::new();
            encode(
                &Message::Piece {
                    index: 0,
                    begin: 0,
                    data: b"xx",
                },
                &mut v,
            );
            v
        }),
        (true, true, {
            let mut v = Vec::new();
            encode(&Message::Bitfield(&[0xff, 0xff]), &mut v);
            v
        }),
    ];
    for (i, (extended, fast, bytes)) in cases.into_iter().enumerate() {
        let mut c = Client::connect(f.squall.addr);
        c.handshake(f.info_hash, extended, fast);
        c.send(&bytes);
        assert!(c.closed(), "case {i} was not closed");
    }
    // The seeder still serves an honest peer afterwards.
    let mut c = Client::connect(f.squall.addr);
    c.handshake(f.info_hash, true, true);
    c.send_msg(&Message::Interested);
    c.until(|m| matches!(m, OwnedMessage::Unchoke))
        .expect("unchoke");
    c.send_msg(&Message::Request(BlockRequest {
        index: 0,
        begin: 0,
        length: BLOCK,
    }));
    assert!(c
        .until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .is_some());
}

/// A cancelled request is not served; a BEP 6 peer gets a reject for it instead.
#[test]
fn cancelled_request_gets_a_reject_for_fast_peers() {
    let f = fixture();
    let mut c = Client::connect(f.squall.addr);
    c.handshake(f.info_hash, true, true);
    c.send_msg(&Message::Interested);
    c.until(|m| matches!(m, OwnedMessage::Unchoke))
        .expect("unchoke");
    // Queue many requests and cancel the last one at once: it cannot have been sent yet.
    let mut out = Vec::new();
    for i in 0..64u32 {
        encode(
            &Message::Request(BlockRequest {
                index: i / 16,
                begin: (i % 16) * BLOCK,
                length: BLOCK,
            }),
            &mut out,
        );
    }
    let last = BlockRequest {
        index: 3,
        begin: 15 * BLOCK,
        length: BLOCK,
    };
    encode(&Message::Cancel(last), &mut out);
    c.send(&out);
    let mut pieces = 0;
    let mut rejected = false;
    while pieces + usize::from(rejected) < 64 {
        match c.next() {
            Got::Msg(OwnedMessage::Piece { index, begin, .. }) => {
                pieces += 1;
                if index == last.index && begin == last.begin {
                    // Served before the cancel was read: allowed, then no reject follows.
                    rejected = true;
                }
            }
            Got::Msg(OwnedMessage::Reject(r)) => {
                assert_eq!(r, last);
                rejected = true;
            }
            Got::Msg(_) | Got::Handshake(_) => {}
            Got::Closed => panic!("closed"),
        }
    }
    assert!(rejected);
}

/// Proves (issue 18): a request whose block spans more files than one io_uring chain may
/// read no longer aborts the process. With `ring_entries = 64` and `batch_chain_entries_max
/// = 48`, a 16 KiB block of a torrent of 3,000 files of 100 bytes (164 files) is refused
/// with a BEP 6 reject, counted as `unservable`; blocks within the bound are still served
/// byte-identical, and the process keeps running.
#[test]
fn a_block_over_the_chain_bound_is_refused_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("data");
    let root = content.join("tiny");
    let mut all = Vec::new();
    for i in 0..3000u64 {
        let bytes = pattern_bytes(100, i);
        write_file(&root.join(format!("{:04}.bin", i)), &bytes);
        all.extend_from_slice(&bytes);
    }
    let torrents = dir.path().join("torrents");
    let info_hash = make_catalog_torrent(&root, &torrents, "tiny", "16K");
    let squall = seed_catalog_with_engine(
        dir.path(),
        &torrents,
        &content,
        "ring_entries = 64\nbatch_chain_entries_max = 48\n",
    );
    let mut c = Client::connect(squall.addr);
    c.handshake(info_hash, false, true);
    c.send_msg(&Message::Interested);
    c.until(|m| *m == OwnedMessage::Unchoke).expect("unchoke");
    // 164 files in one block: refused. 4,000 bytes at the start: 40 files, served.
    let whole = BlockRequest {
        index: 0,
        begin: 0,
        length: BLOCK,
    };
    c.send_msg(&Message::Request(whole));
    assert_eq!(
        c.until(|m| matches!(m, OwnedMessage::Reject(_) | OwnedMessage::Piece { .. })),
        Some(OwnedMessage::Reject(whole))
    );
    let small = BlockRequest {
        index: 0,
        begin: 0,
        length: 4000,
    };
    c.send_msg(&Message::Request(small));
    let got = c.until(|m| matches!(m, OwnedMessage::Piece { .. }));
    assert_eq!(
        got,
        Some(OwnedMessage::Piece {
            index: 0,
            begin: 0,
            data: all[..4000].to_vec()
        })
    );
    let admin = squall.admin.expect("admin");
    let unservable =
        wait_metric_with_reason(admin, "squall_requests_rejected_total", "unservable", 1.0);
    assert_eq!(unservable, 1.0);
}
