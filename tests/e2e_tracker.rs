//! End-to-end tracker tests: the real `squall seed` announcing to a real Debian opentracker
//! (HTTP and UDP on one port), found by aria2c and libtorrent through it, dialing a
//! libtorrent leecher it learned from the tracker, announcing 1,000 torrents within its
//! concurrency bound, and backing off from dead and misbehaving trackers. Loopback only.

mod common;

use common::*;
use squall_engine::metainfo::InfoHash;
use squall_engine::tracker::udp::UdpClient;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LT_TRACKER_LEECH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/lt_tracker_leech.py"
);

/// A tracker config with short intervals so the tests run in seconds.
const FAST_TRACKER: &str = "[tracker]\nannounce_concurrency_max = 4\nannounce_per_tracker_max = 4\n\
startup_announces_per_sec = 1000\ninterval_secs_min = 1\nbackoff_secs_min = 1\nbackoff_secs_max = 2\n\
http_timeout_secs = 3\nudp_timeout_ms = 300\nudp_retries_max = 2\nstop_timeout_secs = 3\n\
connect_rate_per_sec = 100\n";

/// `squall make` with one tracker URL; returns (torrent path, info-hash hex).
fn make_torrent(content: &Path, out: &Path, tracker: &str) -> (PathBuf, String) {
    let hash = squall_make(content, out, &["--tracker", tracker]);
    (out.to_path_buf(), hash)
}

fn hash_of(hex: &str) -> InfoHash {
    InfoHash::from_hex(hex).expect("hex info-hash")
}

/// Scrapes (UDP, batched by 74) until every hash shows one seeder: squall announced them.
fn wait_until_seeded(tracker_port: u16, hashes: &[String], within: Duration) {
    let url = format!("udp://127.0.0.1:{tracker_port}/announce");
    let client = UdpClient::new(500, 2);
    let hashes: Vec<InfoHash> = hashes.iter().map(|h| hash_of(h)).collect();
    let deadline = Instant::now() + within;
    loop {
        let seeded = match client.scrape(&url, &hashes) {
            Ok(stats) => stats.iter().filter(|s| s.seeders >= 1).count(),
            Err(_) => 0,
        };
        if seeded == hashes.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {seeded} of {} torrents announced to the tracker",
            hashes.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("squall.toml");
    std::fs::write(&p, format!("{FAST_TRACKER}{extra}")).unwrap();
    p
}

/// SIGTERM, wait for exit, return everything squall wrote to stderr.
fn terminate_and_collect_stderr(mut squall: SquallProcess) -> String {
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while squall.child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "squall did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    squall
        .stderr_lines
        .try_iter()
        .collect::<Vec<_>>()
        .join("\n")
}

fn aria2c(torrent: &Path, save: &Path, dht: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("aria2c");
    cmd.args([
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--bt-stop-timeout=60",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--allow-overwrite=true",
        "--file-allocation=none",
    ]);
    cmd.arg(format!("--listen-port={}", free_port()));
    match dht {
        // aria2 reaches UDP trackers only through its DHT socket. A fresh routing-table file
        // and no entry point: it has nobody to talk to but the tracker.
        Some(table) => cmd.args([
            "--enable-dht=true".to_string(),
            format!("--dht-listen-port={}", free_port()),
            format!("--dht-file-path={}", table.display()),
        ]),
        None => cmd.arg("--enable-dht=false"),
    };
    cmd.arg(format!("--dir={}", save.display())).arg(torrent);
    cmd.output().unwrap()
}

fn aria2c_through_tracker(scheme: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("{scheme}://127.0.0.1:{port}/announce");
    let content = dir.path().join("content");
    standard_content(&content);
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    let mut hashes = Vec::new();
    for name in ["single.bin", "multi"] {
        let (_, h) = make_torrent(
            &content.join(name),
            &torrents.join(format!("{name}.torrent")),
            &url,
        );
        hashes.push(h);
    }
    let _tracker = start_opentracker(dir.path(), port, &hashes);
    let config = write_config(dir.path(), "");
    let state = dir.path().join("state");
    let squall = SeedArgs::catalog(&torrents, &content)
        .state(&state)
        .config(&config)
        .start();
    // Nobody announces for squall: it must have done so itself.
    wait_until_seeded(port, &hashes, Duration::from_secs(30));
    for name in ["single.bin", "multi"] {
        let save = dir.path().join(format!("aria-{name}"));
        let dht = (scheme == "udp").then(|| dir.path().join(format!("dht-{name}.dat")));
        let out = aria2c(
            &torrents.join(format!("{name}.torrent")),
            &save,
            dht.as_deref(),
        );
        assert!(
            out.status.success(),
            "aria2c failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&content.join(name), &save.join(name));
    }
    let stderr = terminate_and_collect_stderr(squall);
    assert!(stderr.contains("trackers stopped"), "{stderr}");
}

/// aria2c learns squall's address only from opentracker over HTTP (squall announced itself)
/// and downloads identical bytes.
#[test]
fn aria2c_finds_squall_through_http_tracker() {
    if !aria2c_available() || !opentracker_available() {
        return;
    }
    aria2c_through_tracker("http");
}

/// The same through opentracker's UDP side (BEP 15 announce from squall).
#[test]
fn aria2c_finds_squall_through_udp_tracker() {
    if !aria2c_available() || !opentracker_available() {
        return;
    }
    aria2c_through_tracker("udp");
}

/// A libtorrent leecher that announced first and never dials anyone is dialed by squall
/// (peer learned from the tracker, `Seeder::connect`) and completes the download.
#[test]
fn libtorrent_leecher_from_the_tracker_is_dialed() {
    if !libtorrent_available() || !opentracker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    let content = dir.path().join("content");
    standard_content(&content);
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    let (torrent, hash) = make_torrent(
        &content.join("single.bin"),
        &torrents.join("single.bin.torrent"),
        &url,
    );
    let _tracker = start_opentracker(dir.path(), port, &[hash]);
    let save = dir.path().join("lt");
    let mut leech = Command::new(SYSTEM_PYTHON)
        .arg(LT_TRACKER_LEECH)
        .arg("--save")
        .arg(&save)
        .arg("--torrent")
        .arg(&torrent)
        .args(["--timeout", "90"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(leech.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(first, "announced", "libtorrent did not announce: {first}");
    let leech = KillOnDrop(leech);
    let config = write_config(dir.path(), "");
    let state = dir.path().join("state");
    let squall = SeedArgs::catalog(&torrents, &content)
        .state(&state)
        .config(&config)
        .start();
    let result = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    drop(leech);
    let stderr = terminate_and_collect_stderr(squall);
    assert!(
        result.contains("\"ok\": true"),
        "libtorrent: {result}\nsquall: {stderr}"
    );
    assert_same_tree(&content.join("single.bin"), &save.join("single.bin"));
    let dials = stderr
        .split("dials ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dials >= 1, "squall reported no dial: {stderr}");
}

/// 1,000 torrents (zero-config, announced through `[tracker] extra`) all reach the tracker
/// (scrape shows one seeder each), and squall never had more announces in flight than
/// `announce_concurrency_max = 4`.
#[test]
fn thousand_torrents_announced_within_the_concurrency_bound() {
    if !opentracker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    for i in 0..1000u64 {
        write_file(
            &content.join(format!("t{i:04}.bin")),
            &pattern_bytes(512, i + 7),
        );
    }
    let state = dir.path().join("state");
    // First run without trackers only to learn the info-hashes (torrents are cached).
    let quiet = write_config(dir.path(), "enabled = false\n");
    let first = SeedArgs::content(&content)
        .state(&state)
        .config(&quiet)
        .start();
    let hashes: Vec<String> = first.torrents.iter().map(|t| t.0.clone()).collect();
    assert_eq!(hashes.len(), 1000);
    drop(first);
    let port = free_port();
    let _tracker = start_opentracker(dir.path(), port, &hashes);
    let config = write_config(
        dir.path(),
        &format!("extra = [\"udp://127.0.0.1:{port}/announce\"]\n"),
    );
    let squall = SeedArgs::content(&content)
        .state(&state)
        .config(&config)
        .start();
    wait_until_seeded(port, &hashes, Duration::from_secs(60));
    let stderr = terminate_and_collect_stderr(squall);
    let max = stderr
        .split("in-flight max ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no in-flight max in: {stderr}"));
    assert!(
        (1..=4).contains(&max),
        "in-flight max {max} breaks the bound of 4"
    );
}

/// A fake HTTP tracker on loopback that answers every request with `body` and counts them.
fn fake_tracker(body: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    (port, count)
}

/// A closed port, a tracker answering garbage and one answering `failure reason`: squall
/// logs a clear reason for each and backs off (backoff 1 s then 2 s here), so over 6 s each
/// misbehaving tracker sees a handful of requests, not a hot loop.
#[test]
fn dead_garbage_and_refusing_trackers_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    let dead_port = free_port();
    let (garbage_port, garbage_hits) = fake_tracker(b"<html>not bencode</html>");
    let (refuse_port, refuse_hits) = fake_tracker(b"d14:failure reason11:not allowede");
    for (name, port) in [
        ("dead", dead_port),
        ("garbage", garbage_port),
        ("refuse", refuse_port),
    ] {
        write_file(
            &content.join(format!("{name}.bin")),
            &pattern_bytes(4096, port as u64),
        );
        make_torrent(
            &content.join(format!("{name}.bin")),
            &torrents.join(format!("{name}.torrent")),
            &format!("http://127.0.0.1:{port}/announce"),
        );
    }
    let config = write_config(dir.path(), "");
    let state = dir.path().join("state");
    let squall = SeedArgs::catalog(&torrents, &content)
        .state(&state)
        .config(&config)
        .start();
    std::thread::sleep(Duration::from_secs(6));
    let stderr = terminate_and_collect_stderr(squall);
    for (what, hits) in [("garbage", &garbage_hits), ("refuse", &refuse_hits)] {
        let n = hits.load(Ordering::SeqCst);
        assert!(
            (2..=8).contains(&n),
            "{what} tracker got {n} requests in 6 s"
        );
    }
    assert!(stderr.contains("failure reason: not allowed"), "{stderr}");
    assert!(stderr.contains("malformed response"), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{dead_port}")) && stderr.contains("network error"),
        "{stderr}"
    );
}
