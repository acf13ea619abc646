//! The control plane in-process: `Control` started on loopback with a one-torrent catalog made
//! in the test, a hand-written BitTorrent peer on a real socket, then an orderly stop.
//!
//! Proves, without the binary: the control loop starts the shards, the extras loader, the
//! admin endpoint; blocks requested over the wire arrive intact; BEP 9 metadata comes from the
//! extras loader (the shard reads no .torrent); shard snapshots reach the merged view and the
//! admin endpoint; a reload swaps the catalog; shutdown joins everything and returns the
//! merged stats. Loopback only, a few seconds at most.

use sha1::{Digest, Sha1};
use squall_engine::catalog::{Catalog, CatalogOptions, VerifyPolicy};
use squall_engine::config::{EngineConfig, TrackerConfig};
use squall_engine::control::{lock_view, AdminSetup, Control, ControlSetup};
use squall_engine::make::make_torrent_version;
use squall_engine::metainfo::create::CreateOptions;
use squall_engine::metainfo::torrent::MetaVersion;
use squall_engine::metainfo::InfoHash;
use squall_engine::wire::{
    decode_frame, encode_extended, encode_request, BlockRequest, ExtendedHandshake, Handshake,
    Message, MetadataMessage, HANDSHAKE_LEN, MESSAGE_LEN_MAX_DEFAULT_BYTES,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PIECE_LEN_BYTES: u64 = 32 * 1024;
const BLOCK_LEN_BYTES: u32 = 16 * 1024;
const CONTENT_LEN_BYTES: usize = 100_000;
/// Our id for ut_metadata messages the seeder sends us (BEP 10: the receiver picks).
const OUR_UT_METADATA_ID: u8 = 3;
/// Longest any single wait in this test may take before it fails.
const WAIT: Duration = Duration::from_secs(5);

/// A one-torrent catalog: content in `data/`, its .torrent in `torrents/`, verified.
fn catalog(dir: &Path) -> (Catalog, Vec<u8>) {
    let data = dir.join("data");
    let torrents = dir.join("torrents");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&torrents).unwrap();
    let content: Vec<u8> = (0..CONTENT_LEN_BYTES)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    std::fs::write(data.join("blob.bin"), &content).unwrap();
    let opts = CreateOptions {
        piece_length: Some(PIECE_LEN_BYTES),
        trackers: Vec::new(),
        private: false,
        comment: None,
        web_seeds: Vec::new(),
        created_by: "control_harness".into(),
        creation_date: None,
    };
    let (_, raw) = make_torrent_version(
        &data.join("blob.bin"),
        &opts,
        MetaVersion::V1,
        1,
        &|_, _| {},
    )
    .unwrap();
    std::fs::write(torrents.join("blob.torrent"), raw).unwrap();
    let (catalog, report) = Catalog::load(
        &CatalogOptions {
            torrents_dir: torrents,
            data_dir: data,
            state_dir: dir.join("state"),
            hash_threads: 1,
            verify: VerifyPolicy::Always,
        },
        &|_, _| {},
    )
    .unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    (catalog, content)
}

/// A peer on a real socket: reads whole frames, hands back the ones the test waits for.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr, info_hash: InfoHash) -> Peer {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let hs = Handshake::new(info_hash.0, *b"-CH0001-harness-0001", true, true);
        stream.write_all(&hs.to_bytes()).unwrap();
        let mut answer = [0u8; HANDSHAKE_LEN];
        stream.read_exact(&mut answer).unwrap();
        let answer = squall_engine::wire::parse_handshake(&answer)
            .unwrap()
            .expect("a whole handshake");
        assert_eq!(answer.info_hash, info_hash.0);
        Peer {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until `pick` accepts a frame; returns what it made of it.
    fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Message<'_>) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some((msg, used)) =
                decode_frame(&self.buf, MESSAGE_LEN_MAX_DEFAULT_BYTES).unwrap()
            {
                let picked = pick(&msg);
                self.buf.drain(..used);
                if let Some(t) = picked {
                    return t;
                }
            }
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the seeder closed while we waited for {what}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn control_plane_serves_blocks_and_metadata_then_stops_with_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, content) = catalog(dir.path());
    let info_hash = catalog.torrents()[0].info_hash;
    let torrents = catalog.len();
    let catalog = std::sync::Arc::new(catalog);
    let engine = EngineConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: 2,
        pin_shards: false,
        ..EngineConfig::default()
    };
    let mut control = Control::start(
        ControlSetup {
            engine,
            admin: Some(AdminSetup {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: None,
                optional: false,
                reads_need_token: false,
                auth_failures_per_min_max: 10,
                api_body_bytes_max: 1 << 20,
            }),
            tracker: TrackerConfig {
                enabled: false,
                ..TrackerConfig::default()
            },
            summary_secs: 0,
            api: None,
        },
        catalog.clone(),
    )
    .unwrap();
    let peer_addr = control.local_addrs()[0];
    // The loop thread holds `control`; the view is shared behind its own lock.
    let view = control.view().clone();
    let admin_addr = control.admin_addr().expect("admin endpoint");
    assert_eq!(control.shard_count(), 2);
    let stop = AtomicBool::new(false);
    let reload = AtomicBool::new(false);
    let rebuilds = AtomicUsize::new(0);
    let started = Instant::now();

    std::thread::scope(|s| {
        let looped = s.spawn(|| {
            let mut rebuild = || {
                rebuilds.fetch_add(1, Ordering::Relaxed);
                // The same torrents: a reload that changes nothing disturbs no peer.
                Ok(Catalog::from_entries(
                    catalog.torrents().iter().map(|t| (**t).clone()).collect(),
                ))
            };
            control.run(&stop, &reload, &mut rebuild).unwrap();
        });

        let mut peer = Peer::connect(peer_addr, info_hash);
        // BEP 10 handshake both ways, then BEP 9 metadata piece 0 from the extras loader.
        let ours = ExtendedHandshake {
            m: vec![("ut_metadata".into(), OUR_UT_METADATA_ID)],
            ..ExtendedHandshake::default()
        };
        let mut out = Vec::new();
        encode_extended(0, &ours.encode(), &mut out);
        peer.send(&out);
        let theirs = peer.wait_for("extended handshake", |m| match m {
            Message::Extended { id: 0, payload } => ExtendedHandshake::parse(payload).ok(),
            _ => None,
        });
        let ut_metadata = theirs.extension_id("ut_metadata").expect("ut_metadata");
        let mut request = Vec::new();
        MetadataMessage::Request { piece: 0 }.encode(&mut request);
        out.clear();
        encode_extended(ut_metadata, &request, &mut out);
        peer.send(&out);
        let info = peer.wait_for("metadata piece 0", |m| match m {
            Message::Extended { id, payload } if *id == OUR_UT_METADATA_ID => {
                match MetadataMessage::parse(payload) {
                    Ok(MetadataMessage::Data { data, .. }) => Some(data.to_vec()),
                    Ok(other) => panic!("metadata answered with {other:?}"),
                    Err(e) => panic!("bad metadata message: {e}"),
                }
            }
            _ => None,
        });
        assert_eq!(<[u8; 20]>::from(Sha1::digest(&info)), info_hash.0);

        // interested -> unchoke -> four blocks, checked against the content.
        peer.send(&[0, 0, 0, 1, 2]);
        peer.wait_for("unchoke", |m| (*m == Message::Unchoke).then_some(()));
        let blocks: Vec<BlockRequest> = (0..4u32)
            .map(|i| BlockRequest {
                index: i / 2,
                begin: (i % 2) * BLOCK_LEN_BYTES,
                length: BLOCK_LEN_BYTES,
            })
            .collect();
        out.clear();
        for r in &blocks {
            encode_request(*r, &mut out);
        }
        peer.send(&out);
        for r in &blocks {
            let data = peer.wait_for("a piece", |m| match m {
                Message::Piece { index, begin, data } if *index == r.index && *begin == r.begin => {
                    Some(data.to_vec())
                }
                Message::RejectRequest(rej) => panic!("rejected {rej:?}"),
                _ => None,
            });
            let at = (u64::from(r.index) * PIECE_LEN_BYTES + u64::from(r.begin)) as usize;
            assert!(data == content[at..at + r.length as usize], "block {r:?}");
        }

        // Snapshots (one per shard per second) reach the view and the admin endpoint.
        let served = 4 * u64::from(BLOCK_LEN_BYTES);
        let deadline = Instant::now() + WAIT;
        while lock_view(&view).total().uploaded_bytes < served {
            assert!(Instant::now() < deadline, "the view never saw the upload");
            std::thread::sleep(Duration::from_millis(50));
        }
        let stats = http_get(admin_addr, "/stats");
        assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
        assert!(http_get(admin_addr, "/health").starts_with("HTTP/1.1 200"));

        // A reload goes through the caller's rebuild and keeps serving.
        reload.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + WAIT;
        while rebuilds.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the reload flag was never seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(peer);
        stop.store(true, Ordering::Relaxed);
        looped.join().unwrap();
    });

    assert_eq!(control.catalog().len(), torrents);
    let total = control.shutdown().unwrap();
    assert!(total.blocks_served >= 4, "{}", total.blocks_served);
    assert!(total.uploaded_bytes >= 4 * u64::from(BLOCK_LEN_BYTES));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
