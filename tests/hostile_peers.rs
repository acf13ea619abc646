//! Hostile peers against the real `squall seed`, while an honest, rate-limited libtorrent
//! download runs against the same process. Each case connects from its own loopback address
//! (127.0.x.y: the whole 127.0.0.0/8 is local on Linux) so per-IP limits only bite where a case
//! means them to. After the cases: squall is alive, the honest bytes are identical, a fresh
//! download completes, fds are back near the baseline, RSS is bounded, and every misbehaviour
//! is counted in /metrics under the reason the case expects.
//!
//! Two groups (two tests, two squall processes) keep the file under two minutes on 2 cores:
//! `protocol_abuse` (malformed and rule-breaking messages, one connection each) and
//! `resource_abuse` (floods, slow peers, thousands of connections, resets), run concurrently.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const HONEST_BYTES: usize = 12 << 20;
const HONEST_RATE: &str = "1000000";
const BLOCK: u32 = 16384;
const MESSAGE_LEN_MAX: u32 = 1 << 20;
const PEERS_PER_IP_MAX: usize = 32;
/// How far RSS may grow above its level right after start-up while peers abuse squall. The
/// start-up level includes the fixed, pinned memory (send pools and hot-block caches, ~81 MiB
/// per shard by default), which hostile peers cannot grow.
const RSS_GROWTH_MAX_KIB: u64 = 160 * 1024;
// The idle-connection case opens 2,000 connections from one /24 (127.3.0.0/24): the
// per-prefix bound is raised so they are admitted and then idle-closed.
// MSE is off: the garbage-handshake cases check the plaintext parser's fail-fast (with MSE
// allowed, garbage is taken for an encrypted handshake; tests/e2e_encryption.rs has those).
const CONFIG: &str =
    "[engine]\nencryption = \"off\"\nhandshake_timeout_secs = 2\nidle_timeout_secs = 4\n\
                      keepalive_interval_secs = 2\npeers_per_ip_max = 32\n\
                      peers_per_prefix_max = 4096\npeers_max = 5000\n";

// ------------------------------------------------------------------ harness

/// One squall with an honest download in flight.
struct Harness {
    _dir: tempfile::TempDir,
    squall: SquallProcess,
    admin: SocketAddr,
    info_hash: [u8; 20],
    content: std::path::PathBuf,
    torrent: std::path::PathBuf,
    honest: Option<std::process::Child>,
    honest_save: std::path::PathBuf,
    fds_baseline: usize,
    rss_baseline_kib: u64,
    scratch: std::path::PathBuf,
}

fn hex20(s: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex info-hash");
    }
    out
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the concurrent cases need (Sync, unlike the process handle).
#[derive(Clone, Copy)]
struct Target {
    addr: SocketAddr,
    admin: SocketAddr,
    info_hash: [u8; 20],
}

impl Target {
    fn metrics(&self) -> String {
        let (status, page) = http_get(self.admin, "/metrics");
        assert_eq!(status, 200);
        page
    }
}

impl Harness {
    fn target(&self) -> Target {
        Target {
            addr: self.squall.addr,
            admin: self.admin,
            info_hash: self.info_hash,
        }
    }

    fn start() -> Option<Harness> {
        if !libtorrent_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        let state = dir.path().join("state");
        write_file(
            &content.join("honest.bin"),
            &pattern_bytes(HONEST_BYTES, 77),
        );
        let config = dir.path().join("squall.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let squall = SeedArgs::content(&content)
            .state(&state)
            .shards(2)
            .config(&config)
            .admin()
            .start();
        let admin = squall.admin.expect("admin address");
        let info_hash = hex20(&squall.torrents[0].0);
        let fds_baseline = fd_count(squall.child.id());
        let rss_baseline_kib = rss_kib(squall.child.id());
        let torrent = made_torrent(&state, "honest.bin");
        let honest_save = dir.path().join("honest-dl");
        let honest = lt_command(
            Source::Torrent(&torrent),
            &honest_save,
            &squall.peer(),
            &["--rate-limit", HONEST_RATE],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn libtorrent");
        let scratch = dir.path().join("scratch");
        let honest = Some(honest);
        Some(Harness {
            content,
            _dir: dir,
            squall,
            admin,
            info_hash,
            torrent,
            honest,
            honest_save,
            fds_baseline,
            rss_baseline_kib,
            scratch,
        })
    }

    fn pid(&self) -> u32 {
        self.squall.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.squall.child.try_wait(), Ok(None))
    }

    fn metrics(&self) -> String {
        let (status, page) = http_get(self.admin, "/metrics");
        assert_eq!(status, 200);
        page
    }

    /// Waits (bounded) until the shards' snapshots show at least `want` for each label.
    fn wait_metrics(&self, name: &str, want: &[(&str, f64)]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page = self.metrics();
            let ok = want
                .iter()
                .all(|(reason, n)| metric_sum_with_reason(&page, name, reason) >= *n);
            if ok || Instant::now() > deadline {
                return page;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The common ending: alive, honest bytes identical, fresh download, fds, RSS.
    fn finish(mut self) {
        assert!(self.alive(), "squall died under hostile peers");
        let honest = self
            .honest
            .take()
            .expect("honest download")
            .wait_with_output()
            .expect("honest download");
        assert!(
            honest.status.success(),
            "honest download failed: {} {}",
            String::from_utf8_lossy(&honest.stdout),
            String::from_utf8_lossy(&honest.stderr)
        );
        assert_same_tree(
            &self.content.join("honest.bin"),
            &self.honest_save.join("honest.bin"),
        );
        let fresh = self.scratch.join("fresh-dl");
        let r = lt_download(
            Source::Torrent(&self.torrent),
            &fresh,
            &self.squall.peer(),
            &[],
        );
        assert!(r.ok, "fresh download failed: {}", r.json);
        assert_same_tree(&self.content.join("honest.bin"), &fresh.join("honest.bin"));
        // Closed peers are freed once their ops complete; give timeouts a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut fds = fd_count(self.pid());
        while fds > self.fds_baseline + 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            fds = fd_count(self.pid());
        }
        assert!(
            fds <= self.fds_baseline + 4,
            "fds {fds} not back near the baseline {}",
            self.fds_baseline
        );
        let rss = rss_kib(self.pid());
        let limit = self.rss_baseline_kib + RSS_GROWTH_MAX_KIB;
        assert!(
            rss < limit,
            "RSS {rss} KiB >= {limit} KiB (start-up {} KiB + {RSS_GROWTH_MAX_KIB})",
            self.rss_baseline_kib
        );
        assert!(self.alive());
        let (code, _) = self.squall.terminate();
        assert_eq!(code, Some(0));
    }
}

// ------------------------------------------------------------------ raw client

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd we own with a correctly sized option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Request (or cancel, id 8) of the torrent's `b`-th 16 KiB block, whatever the piece length.
fn block(id: u8, b: u32) -> Vec<u8> {
    let pl = squall_engine::metainfo::create::auto_piece_length(HONEST_BYTES as u64);
    let at = u64::from(b) * u64::from(BLOCK);
    request_frame(id, (at / pl) as u32, (at % pl) as u32, BLOCK)
}

fn pieces() -> usize {
    let pl = squall_engine::metainfo::create::auto_piece_length(HONEST_BYTES as u64);
    (HONEST_BYTES as u64).div_ceil(pl) as usize
}

fn extended(ext_id: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![ext_id];
    p.extend_from_slice(payload);
    frame(20, &p)
}

fn handshake_bytes(info_hash: [u8; 20], extended: bool, fast: bool) -> Vec<u8> {
    squall_engine::wire::Handshake::new(info_hash, *b"-HP0001-hostile-peer", extended, fast)
        .to_bytes()
        .to_vec()
}

/// Test-local constructors of the shared raw peer (tests/common/raw_peer.rs).
impl Raw {
    fn new(src: Ipv4Addr, dst: SocketAddr) -> Raw {
        Raw::connect(src, dst, None, Duration::from_secs(6)).expect("connect")
    }

    /// Connects and completes a handshake; panics when squall does not answer.
    fn handshaken(src: Ipv4Addr, h: &Target, ext: bool, fast: bool) -> Raw {
        let mut r = Raw::new(src, h.addr);
        assert!(
            r.handshake(h.info_hash, *b"-HP0001-hostile-peer", ext, fast),
            "no handshake answer"
        );
        r
    }

    /// True when squall closes the connection within the read timeout.
    fn closed(&mut self) -> bool {
        closed_by_peer(&mut self.s)
    }
}

// ------------------------------------------------------------------ protocol abuse

/// Proves: 30 kinds of malformed or rule-breaking peer input, sent while an honest download
/// runs, each get the answer BEP 3/6/10 and our limits call for (closed with the expected
/// reason, or rejected, or ignored), and none disturbs the honest download, squall's fds or
/// memory; every close and reject is counted in /metrics under its reason.
#[test]
fn protocol_abuse() {
    let Some(h) = Harness::start() else {
        return;
    };
    let t = h.target();
    let dst = t.addr;
    let ih = t.info_hash;
    let mut n: u8 = 0;
    let mut src = || {
        n += 1;
        ip(1, 0, n)
    };

    // 1. 68 bytes of garbage as a handshake: bad_handshake.
    let mut r = Raw::new(src(), dst);
    r.send(&pattern_bytes(68, 5));
    assert!(r.closed(), "garbage handshake");
    // 2. Wrong pstrlen (18): bad_handshake.
    let mut r = Raw::new(src(), dst);
    let mut hs = handshake_bytes(ih, false, false);
    hs[0] = 18;
    r.send(&hs);
    assert!(r.closed(), "wrong pstrlen");
    // 3. Right length, wrong protocol string: bad_handshake.
    let mut r = Raw::new(src(), dst);
    let mut hs = handshake_bytes(ih, false, false);
    hs[1..20].copy_from_slice(b"BitTorrent protocoX");
    r.send(&hs);
    assert!(r.closed(), "wrong protocol string");
    // 4. An HTTP request to the peer port: bad_handshake.
    let mut r = Raw::new(src(), dst);
    r.send(b"GET /announce HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.closed(), "HTTP on the peer port");
    // 5. A message before any handshake: bad_handshake.
    let mut r = Raw::new(src(), dst);
    r.send(&frame(2, &[]));
    assert!(r.closed(), "message before handshake");
    // 6. An info-hash squall does not seed: unknown_info_hash.
    let mut r = Raw::new(src(), dst);
    r.send(&handshake_bytes([0xAB; 20], true, true));
    assert!(r.closed(), "unknown info-hash");
    // 7. Length prefix 2^32-1: message_too_long, before any byte of it is buffered.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&u32::MAX.to_be_bytes());
    assert!(r.closed(), "length 2^32-1");
    // 8. Length prefix message_len_max + 1: message_too_long.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&(MESSAGE_LEN_MAX + 1).to_be_bytes());
    assert!(r.closed(), "length max+1");
    // 9. A second handshake after the first: read as a frame of length 0x13426974 (too long).
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&handshake_bytes(ih, false, false));
    assert!(r.closed(), "double handshake");
    // 10. Requests out of range, non-fast peer: invalid_request (index past the last piece).
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(2, &[]));
    r.send(&request_frame(6, 1_000_000, 0, BLOCK));
    assert!(r.closed(), "request index out of range");
    // 11. A request crossing the piece end: invalid_request.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(2, &[]));
    r.send(&request_frame(6, 0, 1 << 30, BLOCK));
    assert!(r.closed(), "request past the piece end");
    // 12. A request of length 0: invalid_request.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(2, &[]));
    r.send(&request_frame(6, 0, 0, 0));
    assert!(r.closed(), "request of length 0");
    // 13. A request over block_len_max (32 KiB): invalid_request.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(2, &[]));
    r.send(&request_frame(6, 0, 0, 2 * BLOCK));
    assert!(r.closed(), "request over the maximum");
    // 14. The same four invalid requests from a fast peer: each answered by a reject
    // (BEP 6), the connection kept; counted as rejected{invalid}.
    let mut r = Raw::handshaken(src(), &t, false, true);
    r.send(&frame(2, &[]));
    for (i, b, l) in [
        (1_000_000, 0, BLOCK),
        (0, 1 << 30, BLOCK),
        (0, 0, 0),
        (0, 0, 2 * BLOCK),
    ] {
        r.send(&request_frame(6, i, b, l));
    }
    for _ in 0..4 {
        assert!(
            r.until(16).is_some(),
            "fast peer: reject for an invalid request"
        );
    }
    // 15. Requests while choked (no `interested` sent): rejected{choked}, reject messages.
    let mut r = Raw::handshaken(src(), &t, false, true);
    for b in 0..8 {
        r.send(&block(6, b));
    }
    for _ in 0..8 {
        assert!(r.until(16).is_some(), "reject while choked");
    }
    // 16. Unknown message ids (99, 200, 254) are ignored (BEP 3); the peer is still served.
    let mut r = Raw::handshaken(src(), &t, false, false);
    for id in [99u8, 200, 254] {
        r.send(&frame(id, &pattern_bytes(100, u64::from(id))));
    }
    r.send(&frame(2, &[]));
    assert!(r.until(1).is_some(), "unchoke after unknown ids");
    r.send(&request_frame(6, 0, 0, BLOCK));
    assert!(r.until(7).is_some(), "piece after unknown ids");
    // 17. A keep-alive flood (200,000 = 800 KB) is absorbed; the peer is still served.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&vec![0u8; 800_000]);
    r.send(&frame(2, &[]));
    assert!(r.until(1).is_some(), "unchoke after a keep-alive flood");
    // 18. A cancel storm: 20,000 cancels of never-requested blocks plus request/cancel
    // pairs: cancels of queued requests count as rejected{cancelled}; the peer stays.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(2, &[]));
    assert!(r.until(1).is_some(), "unchoke before the cancel storm");
    let mut storm = Vec::new();
    for i in 0..20_000u32 {
        storm.extend_from_slice(&block(8, i % 64));
    }
    for b in 64..96 {
        storm.extend_from_slice(&block(6, b));
        storm.extend_from_slice(&block(8, b));
    }
    r.send(&storm);
    r.send(&request_frame(6, 0, 0, BLOCK));
    assert!(r.until(7).is_some(), "piece after a cancel storm");
    // 19. A giant bitfield (900 KB, under message_len_max): malformed_message.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(5, &vec![0xFF; 900_000]));
    assert!(r.closed(), "giant bitfield");
    // 20. A bitfield one byte too long: malformed_message.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(5, &vec![0xFF; pieces().div_ceil(8) + 1]));
    assert!(r.closed(), "bitfield of the wrong length");
    // 21. A have for a piece past the end: malformed_message.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(4, &u32::MAX.to_be_bytes()));
    assert!(r.closed(), "have out of range");
    // 22. A request frame with the wrong length (5 bytes of body): malformed_message.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(6, &[0, 0, 0, 0, 0]));
    assert!(r.closed(), "short request frame");
    // 23. An extended handshake nested 10,000 lists deep: malformed_message.
    let mut r = Raw::handshaken(src(), &t, true, false);
    let mut deep = vec![b'l'; 10_000];
    deep.extend(std::iter::repeat_n(b'e', 10_000));
    r.send(&extended(0, &deep));
    assert!(r.closed(), "deeply nested bencode");
    // 24. A 900 KB extended handshake (over its 64 KiB bound): malformed_message.
    let mut r = Raw::handshaken(src(), &t, true, false);
    let mut huge = b"d1:v900000:".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 900_000));
    huge.push(b'e');
    r.send(&extended(0, &huge));
    assert!(r.closed(), "huge bencode");
    // 25. Metadata requests for absurd pieces (2^32-1, 99,999): ut_metadata rejects, the
    // peer stays (then a real piece 0 is served).
    let mut r = Raw::handshaken(src(), &t, true, false);
    r.send(&extended(0, b"d1:md11:ut_metadatai2eee"));
    for piece in [u32::MAX, 99_999] {
        let m = format!("d8:msg_typei0e5:piecei{piece}ee");
        r.send(&extended(3, m.as_bytes()));
    }
    let mut rejects = 0;
    for _ in 0..4 {
        let p = r.until(20).expect("metadata reject");
        if p.first() == Some(&0) {
            continue; // squall's extended handshake
        }
        assert!(
            p.windows(11).any(|w| w == b"msg_typei2e"),
            "expected a reject"
        );
        rejects += 1;
        if rejects == 2 {
            break;
        }
    }
    assert_eq!(rejects, 2, "two metadata rejects");
    // 26. An extended message without the extension bit negotiated: protocol_violation.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&extended(0, b"d1:md11:ut_metadatai2eee"));
    assert!(r.closed(), "extended without negotiation");
    // 27. have_all without the fast extension negotiated: protocol_violation.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(14, &[]));
    assert!(r.closed(), "have_all without fast");
    // 28. reject_request without the fast extension: protocol_violation.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&request_frame(16, 0, 0, BLOCK));
    assert!(r.closed(), "reject without fast");
    // 29. allowed_fast without the fast extension: protocol_violation.
    let mut r = Raw::handshaken(src(), &t, false, false);
    r.send(&frame(17, &0u32.to_be_bytes()));
    assert!(r.closed(), "allowed_fast without fast");
    // 30. A piece message sent to a seeder: protocol_violation.
    let mut r = Raw::handshaken(src(), &t, false, false);
    let mut piece = vec![0u8; 8];
    piece.extend_from_slice(&[7u8; 1024]);
    r.send(&frame(7, &piece));
    assert!(r.closed(), "piece sent to a seeder");
    // 31. A handshake trickled in 1-byte writes (fast, legal) is still answered.
    let mut r = Raw::new(src(), dst);
    for b in handshake_bytes(ih, false, false) {
        r.send(&[b]);
    }
    assert!(r.fill(), "split handshake answered");

    let page = h.wait_metrics(
        "squall_peers_closed_total",
        &[
            ("bad_handshake", 5.0),
            ("unknown_info_hash", 1.0),
            ("message_too_long", 3.0),
            ("invalid_request", 4.0),
            ("malformed_message", 6.0),
            ("protocol_violation", 5.0),
        ],
    );
    for (reason, want) in [
        ("bad_handshake", 5.0),
        ("unknown_info_hash", 1.0),
        ("message_too_long", 3.0),
        ("invalid_request", 4.0),
        ("malformed_message", 6.0),
        ("protocol_violation", 5.0),
    ] {
        let got = metric_sum_with_reason(&page, "squall_peers_closed_total", reason);
        assert!(
            got >= want,
            "closed{{reason={reason}}} = {got}, want >= {want}"
        );
    }
    for (reason, want) in [("invalid", 8.0), ("choked", 8.0), ("cancelled", 1.0)] {
        let got = metric_sum_with_reason(&page, "squall_requests_rejected_total", reason);
        assert!(
            got >= want,
            "rejected{{reason={reason}}} = {got}, want >= {want}"
        );
    }
    h.finish();
}

// ------------------------------------------------------------------ resource abuse

/// Proves: slow, greedy and numerous peers cannot exhaust squall: slowloris handshakes and
/// 2,000 idle connections are closed by the handshake timeout, 1 MiB extension messages at
/// their length prefix, trickled smaller ones by the idle timeout, a fast peer that floods requests and never reads by the send backlog bound, a
/// non-fast one by the request queue bound; resets mid-send, connect/close churn and
/// half-closed sockets are absorbed; connections past peers_per_ip_max are refused. Meanwhile
/// the honest download completes, and afterwards fds return near the baseline and RSS grows
/// by less than 160 MiB over its start-up level.
#[test]
fn resource_abuse() {
    let Some(h) = Harness::start() else {
        return;
    };
    let t = h.target();
    let dst = t.addr;
    let pid = h.pid();
    let rss_peak = std::sync::atomic::AtomicU64::new(0);
    let watching = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        // RSS sampler, bounded by the scope (stops when the cases do).
        s.spawn(|| {
            for _ in 0..600 {
                if !watching.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                rss_peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let cases = [
            s.spawn(|| slowloris_handshakes(&t)),
            s.spawn(|| trickled_giant_messages(&t)),
            s.spawn(|| fast_flood_never_reads(&t)),
            s.spawn(|| plain_flood_never_reads(&t)),
            s.spawn(|| resets_mid_send(&t)),
            s.spawn(|| half_closed_socket(&t)),
            s.spawn(|| churn(dst)),
            s.spawn(|| per_ip_limit(dst)),
            s.spawn(|| thousands_idle(&t)),
        ];
        for c in cases {
            if let Err(e) = c.join() {
                watching.store(false, std::sync::atomic::Ordering::Relaxed);
                std::panic::resume_unwind(e);
            }
        }
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    let peak = rss_peak.load(std::sync::atomic::Ordering::Relaxed);
    let limit = h.rss_baseline_kib + RSS_GROWTH_MAX_KIB;
    assert!(
        peak < limit,
        "RSS peaked at {peak} KiB, limit {limit} KiB (start-up {} KiB + {RSS_GROWTH_MAX_KIB})",
        h.rss_baseline_kib
    );
    let want = [
        ("handshake_timeout", 2000.0),
        ("idle_timeout", 8.0),
        ("malformed_message", 8.0),
        ("send_backlog", 1.0),
        ("peers_per_ip_limit", 8.0),
    ];
    let page = h.wait_metrics("squall_peers_closed_total", &want);
    for (reason, n) in want {
        let got = metric_sum_with_reason(&page, "squall_peers_closed_total", reason);
        assert!(got >= n, "closed{{reason={reason}}} = {got}, want >= {n}");
    }
    let resets = metric_sum_with_reason(&page, "squall_peers_closed_total", "socket_error")
        + metric_sum_with_reason(&page, "squall_peers_closed_total", "peer_closed");
    assert!(resets >= 200.0, "resets and churn counted: {resets}");
    let full = metric_sum_with_reason(&page, "squall_requests_rejected_total", "queue_full");
    assert!(full >= 1.0, "rejected{{reason=queue_full}} = {full}");
    h.finish();
}

/// Slowloris: 8 handshakes sent one byte every 500 ms; each closed by the 2 s handshake
/// timeout long before it completes.
fn slowloris_handshakes(h: &Target) {
    let mut conns: Vec<Raw> = (0..8).map(|i| Raw::new(ip(2, 0, i + 1), h.addr)).collect();
    let hs = handshake_bytes(h.info_hash, false, false);
    let started = Instant::now();
    let mut closed = 0;
    for (i, b) in hs.iter().enumerate().take(12) {
        for c in conns.iter_mut() {
            if c.s.write_all(&[*b]).is_err() && i > 0 {
                closed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for c in conns.iter_mut() {
        assert!(c.closed(), "slowloris connection still open");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "{closed}");
}

/// 8 peers each announce an extension message just under message_len_max and start sending
/// it: squall refuses it at its length prefix (malformed_message: over the 64 KiB bound of a
/// message a seeder takes), before its body is buffered. 8 more announce one within the bound
/// (60,000 bytes), send most of it, then trickle a byte every 250 ms for 2 s and stop: squall
/// buffers at most that message per peer and closes each with idle_timeout.
fn trickled_giant_messages(h: &Target) {
    let mut giant: Vec<Raw> = (0..8)
        .map(|i| Raw::handshaken(ip(2, 1, i + 1), h, true, false))
        .collect();
    for c in giant.iter_mut() {
        let mut head = (MESSAGE_LEN_MAX - 1).to_be_bytes().to_vec();
        head.extend_from_slice(&[20, 0]);
        c.send(&head);
        let _ = c.s.write_all(&[b'x'; 4096]);
        c.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(c.closed(), "a giant message was not refused at its prefix");
    }
    let mut trickling: Vec<Raw> = (0..8)
        .map(|i| Raw::handshaken(ip(2, 1, i + 101), h, true, false))
        .collect();
    for c in trickling.iter_mut() {
        let mut head = 60_000u32.to_be_bytes().to_vec();
        head.extend_from_slice(&[20, 0]);
        c.send(&head);
        c.send(&vec![b'x'; 50_000]);
    }
    for _ in 0..8 {
        for c in trickling.iter_mut() {
            c.send(b"x");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for c in trickling.iter_mut() {
        c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(c.closed(), "trickling peer not closed on idle");
    }
}

/// A fast-extension peer floods requests and never reads: its queue fills, each further
/// request earns a reject that cannot be sent, and the control backlog bound closes it with
/// send_backlog (or squall stops reading and our writes stall: bounded either way).
fn fast_flood_never_reads(h: &Target) {
    for i in 0..2u8 {
        let mut r = Raw::handshaken(ip(2, 2, i + 1), h, false, true);
        r.send(&frame(2, &[]));
        assert!(r.until(1).is_some(), "unchoke before the flood");
        r.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut chunk = Vec::new();
        for b in 0..1000u32 {
            chunk.extend_from_slice(&block(6, b % 512));
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut broken = false;
        for _ in 0..2000 {
            if r.s.write_all(&chunk).is_err() {
                broken = true;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        assert!(
            broken,
            "a never-reading request flood was neither closed nor stalled"
        );
    }
}

/// A peer without the fast extension floods requests and never reads: requests past
/// request_queue_per_peer_max are dropped (rejected{queue_full}); memory stays bounded.
fn plain_flood_never_reads(h: &Target) {
    let mut r = Raw::handshaken(ip(2, 3, 1), h, false, false);
    r.send(&frame(2, &[]));
    assert!(r.until(1).is_some(), "unchoke before the flood");
    r.s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut chunk = Vec::new();
    for b in 0..1000u32 {
        chunk.extend_from_slice(&block(6, b % 512));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for _ in 0..500 {
        if r.s.write_all(&chunk).is_err() || Instant::now() > deadline {
            break;
        }
    }
}

/// 40 peers request 64 blocks each, read a little, then reset (SO_LINGER 0) while blocks are
/// in flight: squall counts socket_error/peer_closed and frees them.
fn resets_mid_send(h: &Target) {
    for i in 0..40u8 {
        let mut r = Raw::handshaken(ip(2, 4, i + 1), h, false, false);
        r.send(&frame(2, &[]));
        assert!(r.until(1).is_some(), "unchoke");
        let mut reqs = Vec::new();
        for b in 0..64u32 {
            reqs.extend_from_slice(&block(6, b));
        }
        r.send(&reqs);
        assert!(r.until(7).is_some(), "a first piece");
        set_linger_zero(&r.s);
        drop(r);
    }
}

/// A peer requests 4 blocks then shuts down its write side: squall still answers every
/// request, then closes the connection (EOF seen and nothing left to send, or idle timeout).
fn half_closed_socket(h: &Target) {
    let mut r = Raw::handshaken(ip(2, 5, 1), h, false, false);
    r.send(&frame(2, &[]));
    assert!(r.until(1).is_some(), "unchoke");
    for b in 0..4u32 {
        r.send(&block(6, 32 + b));
    }
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    for _ in 0..4 {
        assert!(r.until(7).is_some(), "a piece after SHUT_WR");
    }
    r.s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    assert!(r.closed(), "half-closed peer closed afterwards");
}

/// 1,000 connect/close cycles (half of them resets) from 10 addresses.
fn churn(dst: SocketAddr) {
    for i in 0..1000u32 {
        if let Ok(s) = connect_from(ip(2, 6, (i % 10) as u8 + 1), dst, None) {
            if i % 2 == 0 {
                set_linger_zero(&s);
            }
            drop(s);
        }
    }
}

/// 40 connections from one address when peers_per_ip_max is 32: the 8 extra are closed at
/// accept (peers_per_ip_limit); the 32 stay until the handshake timeout.
fn per_ip_limit(dst: SocketAddr) {
    let mut conns: Vec<TcpStream> = (0..40)
        .map(|_| connect_from(ip(2, 7, 1), dst, None).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for c in conns.iter_mut() {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    assert_eq!(
        refused,
        40 - PEERS_PER_IP_MAX,
        "connections past peers_per_ip_max"
    );
}

/// 2,000 connections that never handshake (62 addresses x 32 + a few) are all held at once,
/// squall keeps answering /metrics and serving, then closes them with handshake_timeout.
fn thousands_idle(h: &Target) {
    let mut conns = Vec::with_capacity(2000);
    'outer: for a in 1..=70u8 {
        for _ in 0..PEERS_PER_IP_MAX {
            if conns.len() == 2000 {
                break 'outer;
            }
            conns.push(connect_from(ip(3, 0, a), h.addr, None).expect("connect idle"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut connected = 0.0;
    while Instant::now() < deadline {
        connected = metric_sum(&h.metrics(), "squall_peers_connected");
        if connected >= 1500.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(connected >= 1500.0, "peers_connected {connected}");
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        assert!(closed_by_peer(c), "idle connection not closed");
    }
}
