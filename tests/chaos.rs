//! Issue 18, the VOPR idea at the size of a shard: seeded chaos between the kernel and the
//! shard (`engine/src/ring/chaos.rs`: completions held back for a few reaps, some recvs and
//! sends failed) under peers that behave at random: request valid and invalid blocks,
//! cancel, toggle interest, send large ignored messages, stop reading for a while, vanish
//! mid-request, reconnect.
//!
//! Proves, for several seeds and with the real `squall` binary (a debug build, where chaos
//! and the shutdown leak audit are on): every byte any peer receives in a piece is the
//! content's; every request a fast peer made is answered (a piece or a reject) or its
//! connection was closed; an honest libtorrent download finishes byte-identical beside
//! them; and squall then exits 0, which a debug build does only when the leak audit found
//! every send slot, group count, cache reference, file use, receive-budget byte, choker
//! place and admission count given back.

mod common;

use common::*;
use squall_engine::wire::{
    decode_frame, encode, parse_handshake, BlockRequest, Handshake, Message,
};
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PIECE_LEN: u32 = 256 * 1024;
const BLOCK: u32 = 16384;
const CHAOS_PEERS: u64 = 16;
const CHAOS_RUN: Duration = Duration::from_secs(6);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One connection of a random peer: what it asked and what it got.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    handshaken: bool,
    fast: bool,
    outstanding: HashSet<(u32, u32, u32)>,
    closed: bool,
}

impl Conn {
    fn open(addr: SocketAddr, info_hash: [u8; 20], fast: bool) -> Option<Conn> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(5))).ok()?;
        s.write_all(&Handshake::new(info_hash, *b"-TT0001-chaoschaos01", false, fast).to_bytes())
            .ok()?;
        Some(Conn {
            s,
            buf: Vec::new(),
            handshaken: false,
            fast,
            outstanding: HashSet::new(),
            closed: false,
        })
    }

    fn send(&mut self, m: &Message<'_>) {
        let mut out = Vec::new();
        encode(m, &mut out);
        if self.s.write_all(&out).is_err() {
            self.closed = true;
        }
    }

    /// Reads what is there (for up to `wait`), checking every piece against `data`.
    fn pump(&mut self, data: &[u8], wait: Duration) {
        let until = Instant::now() + wait;
        while !self.closed {
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.closed = true,
            }
            self.parse(data);
            if Instant::now() >= until {
                break;
            }
        }
    }

    fn parse(&mut self, data: &[u8]) {
        if !self.handshaken {
            match parse_handshake(&self.buf) {
                Ok(Some(_)) => {
                    self.buf.drain(..68);
                    self.handshaken = true;
                }
                Ok(None) => return,
                Err(_) => panic!("squall sent a bad handshake"),
            }
        }
        while let Ok(Some((m, used))) = decode_frame(&self.buf, 1 << 20) {
            match m {
                Message::Piece {
                    index,
                    begin,
                    data: block,
                } => {
                    let at = (index * PIECE_LEN + begin) as usize;
                    assert_eq!(block, &data[at..at + block.len()], "piece {index}/{begin}");
                    self.outstanding.remove(&(index, begin, block.len() as u32));
                }
                Message::RejectRequest(r) => {
                    self.outstanding.remove(&(r.index, r.begin, r.length));
                }
                // BEP 3: a choke discards a plain peer's requests.
                Message::Choke if !self.fast => self.outstanding.clear(),
                _ => {}
            }
            self.buf.drain(..used);
        }
    }
}

/// A peer doing random things for `CHAOS_RUN`; at the end it stops asking and checks that
/// every request of a fast connection was answered, unless squall closed it.
fn random_peer(addr: SocketAddr, info_hash: [u8; 20], data: &[u8], seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed | 1);
    let pieces = (data.len() as u32).div_ceil(PIECE_LEN);
    let (mut asked, mut conns) = (0u64, 0u64);
    let started = Instant::now();
    let mut conn: Option<Conn> = None;
    while started.elapsed() < CHAOS_RUN {
        let c = match conn.as_mut() {
            Some(c) if !c.closed => c,
            _ => {
                conns += 1;
                conn = Conn::open(addr, info_hash, rng.below(4) != 0);
                match conn.as_mut() {
                    Some(c) => {
                        c.send(&Message::Interested);
                        c
                    }
                    None => continue,
                }
            }
        };
        match rng.below(20) {
            0..=9 => {
                let index = rng.below(u64::from(pieces)) as u32;
                let begin = rng.below(u64::from(PIECE_LEN / BLOCK)) as u32 * BLOCK;
                let r = BlockRequest {
                    index,
                    begin,
                    length: BLOCK,
                };
                c.outstanding.insert((index, begin, BLOCK));
                c.send(&Message::Request(r));
                asked += 1;
            }
            10 => {
                // Past the end: refused (a fast peer gets a reject, a plain one is closed).
                let r = BlockRequest {
                    index: pieces + 3,
                    begin: 0,
                    length: BLOCK,
                };
                c.outstanding.insert((r.index, r.begin, r.length));
                c.send(&Message::Request(r));
            }
            11 | 12 => {
                if let Some(&(index, begin, length)) = c.outstanding.iter().next() {
                    c.send(&Message::Cancel(BlockRequest {
                        index,
                        begin,
                        length,
                    }));
                }
            }
            13 => c.send(&Message::NotInterested),
            14 => c.send(&Message::Interested),
            15 => std::thread::sleep(Duration::from_millis(rng.below(400))), // stop reading
            16 => conn = None, // vanish, requests in flight
            17 => {
                // A 20 KiB message of an unknown id: read whole (it grows the receive
                // buffer past its free 4 KiB, so the receive budget is used) and ignored.
                let mut m = 20_481u32.to_be_bytes().to_vec();
                m.push(99);
                m.resize(4 + 20_481, 0);
                if c.s.write_all(&m).is_err() {
                    c.closed = true;
                }
            }
            _ => {}
        }
        if let Some(c) = conn.as_mut() {
            c.pump(data, Duration::from_millis(2));
        }
    }
    if let Some(mut c) = conn {
        // Settle: ask nothing more; every fast request is answered or the peer is closed.
        let until = Instant::now() + Duration::from_secs(15);
        while c.fast && !c.closed && !c.outstanding.is_empty() && Instant::now() < until {
            c.pump(data, Duration::from_millis(50));
        }
        if c.fast && !c.closed {
            assert!(
                c.outstanding.is_empty(),
                "seed {seed}: {} requests neither answered nor closed: {:?}",
                c.outstanding.len(),
                c.outstanding.iter().take(4).collect::<Vec<_>>()
            );
        }
    }
    (asked, conns)
}

/// One chaos run; `disk`: block reads fail too (`SQUALL_CHAOS_DISK=1`), so the torrent is
/// errored now and then until its recheck (1 s here) clears it.
fn chaos_run(seed: u64, disk: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (data, info_hash) = one_file_catalog(dir.path(), 6 << 20, seed);
    let content = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    let config = dir.path().join("squall.toml");
    // Disk chaos needs reads: blocks are read from disk, not sent from the page cache.
    let reads = if disk {
        "page_cache_sends = false\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "[engine]\nbuffer_pool_slots_per_shard = 8\nsend_stall_secs = 3\nidle_timeout_secs = 5\n\
             request_queue_per_peer_max = 64\nerrored_recheck_secs = 1\n{reads}"
        ),
    )
    .unwrap();
    let chaos_env = format!("SQUALL_CHAOS_SEED={seed}");
    let mut squall = SeedArgs::catalog(&torrents, &content)
        .state(&dir.path().join("state"))
        .shards(2)
        .config(&config)
        .admin()
        .start_under(&[
            "env",
            &chaos_env,
            &format!("SQUALL_CHAOS_DISK={}", u8::from(disk)),
        ]);
    let addr = squall.addr;
    // Beside socket chaos only: with reads failing, the torrent is errored half the time.
    let honest = (!disk && libtorrent_available()).then(|| {
        let torrent = torrents.join("f.torrent");
        let save = dir.path().join("honest");
        let peer = squall.peer();
        // Chaos resets its connection now and then (one socket result in 200); libtorrent
        // would wait 60 s and more before redialing, and give up after 3 drops.
        std::thread::spawn(move || {
            lt_download(
                Source::Torrent(&torrent),
                &save,
                &peer,
                &["--reconnect-secs", "1"],
            )
        })
    });
    let peers: Vec<_> = (0..CHAOS_PEERS)
        .map(|p| {
            let data = data.clone();
            std::thread::spawn(move || random_peer(addr, info_hash, &data, seed * 1000 + p))
        })
        .collect();
    let mut asked = 0;
    for p in peers {
        asked += p.join().expect("a random peer failed its checks").0;
    }
    assert!(asked > 100, "seed {seed}: only {asked} requests made");
    if let Some(honest) = honest {
        let r = honest.join().unwrap();
        assert!(r.ok, "seed {seed}: honest download: {}", r.json);
        assert_eq!(
            std::fs::read(dir.path().join("honest/f.bin")).unwrap(),
            data,
            "seed {seed}: honest bytes"
        );
    }
    let admin = squall.admin.expect("admin");
    let page = http_get(admin, "/metrics").1;
    if disk {
        // The injected read failures errored the torrent at least once.
        let disk_errors = metric_sum(&page, "squall_disk_errors_total");
        assert!(
            disk_errors >= 1.0,
            "seed {seed}: no read failed: {disk_errors}"
        );
    } else {
        let errored = metric_sum(&page, "squall_torrents_errored");
        assert_eq!(
            errored, 0.0,
            "seed {seed}: socket chaos must not error a torrent"
        );
    }
    // SIGTERM; a debug build that leaked anything aborts instead of exiting 0.
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = squall.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: squall did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = Vec::new();
    while let Ok(line) = squall.stderr_lines.recv_timeout(Duration::from_secs(5)) {
        stderr.push(line);
    }
    assert!(
        stderr.iter().any(|l| l.contains("chaos mode")),
        "seed {seed}: chaos was not on: {stderr:#?}"
    );
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("leak audit") || l.contains("panicked")),
        "seed {seed}: {stderr:#?}"
    );
    assert_eq!(status.code(), Some(0), "seed {seed}: {stderr:#?}");
}

#[test]
fn random_peers_under_seeded_io_chaos_leak_nothing_and_get_every_answer() {
    for seed in [1, 2, 3] {
        chaos_run(seed, false);
    }
}

#[test]
fn random_peers_under_io_and_disk_chaos_leak_nothing_and_get_every_answer() {
    // Proves the same with block reads failing too: the torrent goes errored and back, no
    // peer is sent a wrong byte, and every slot, file use and cache reference comes back.
    for seed in [11, 12] {
        chaos_run(seed, true);
    }
}
