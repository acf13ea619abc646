//! End-to-end: the admin endpoint of the real `squall seed` reports what a real libtorrent
//! download did, and `squall stats` reads it.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const CONTENT_BYTES: u64 = 64 << 20;
const BLOCK_BYTES: u64 = 16 << 10;

/// Polls /metrics until the shards' snapshots (sent every second) include the whole download.
fn metrics_after_upload(admin: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = http_get(admin, "/metrics");
        assert_eq!(status, 200);
        let uploaded = metric_sum(&page, "squall_uploaded_bytes_total");
        if uploaded >= CONTENT_BYTES as f64 || Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// After one libtorrent download of a 64 MiB torrent: uploaded bytes within [64 MiB, +5%],
/// at least one request-latency sample per 16 KiB block, a non-zero p99 in /stats, /health
/// 200, the torrent's own series, and `squall stats --once` prints the table.
#[test]
fn metrics_report_a_64_mib_download() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(
        &content.join("big.bin"),
        &pattern_bytes(CONTENT_BYTES as usize, 64),
    );
    let squall = SeedArgs::content(&content)
        .state(&state)
        .shards(2)
        .admin()
        .start();
    let admin = squall
        .admin
        .expect("squall printed no `admin on ADDR` line");
    let save = dir.path().join("dl");
    let r = lt_download(
        Source::Torrent(&made_torrent(&state, "big.bin")),
        &save,
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);

    let page = metrics_after_upload(admin);
    let uploaded = metric_sum(&page, "squall_uploaded_bytes_total");
    let ceiling = CONTENT_BYTES as f64 * 1.05;
    assert!(
        (CONTENT_BYTES as f64..=ceiling).contains(&uploaded),
        "uploaded {uploaded} bytes, expected within [{CONTENT_BYTES}, {ceiling}]"
    );
    let blocks = CONTENT_BYTES / BLOCK_BYTES;
    let latency_count = metric_sum(&page, "squall_request_latency_seconds_count");
    assert!(
        latency_count >= blocks as f64,
        "request latency count {latency_count} < {blocks} blocks"
    );
    assert!(metric_sum(&page, "squall_blocks_served_total") >= blocks as f64);
    assert!(metric_sum(&page, "squall_peers_accepted_total") >= 1.0);
    let torrent_line = page
        .lines()
        .find(|l| l.starts_with("squall_torrent_uploaded_bytes_total{"))
        .expect("a per-torrent series");
    assert!(torrent_line.contains("name=\"big.bin\""), "{torrent_line}");

    let (status, body) = http_get(admin, "/stats");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("/stats is JSON");
    let p99 = v["total"]["request_latency_us"]["p99"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(p99 > 0.0, "p99 is zero: {body}");
    assert_eq!(v["shards"].as_array().map(|a| a.len()), Some(2));

    assert_eq!(http_get(admin, "/health").0, 200);
    assert_eq!(http_get(admin, "/nope").0, 404);

    let out = Command::new(squall_bin())
        .args(["stats", "--once", "--admin", &admin.to_string()])
        .output()
        .expect("run squall stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "squall stats failed: {text} {:?}",
        out.stderr
    );
    assert!(
        text.contains("throughput") && text.contains("peers") && text.contains("p99.9 us"),
        "{text}"
    );
    assert!(text.contains("big.bin"), "top torrents missing: {text}");
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// `squall stats` against an address where nothing listens fails with a hint, not a hang.
#[test]
fn stats_without_a_seeder_says_what_to_do() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = listener.local_addr().unwrap();
    drop(listener);
    let out = Command::new(squall_bin())
        .args(["stats", "--once", "--admin", &free.to_string()])
        .output()
        .expect("run squall stats");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is `squall seed` running with --admin"),
        "{err}"
    );
}

/// zerocopy mode: the request-to-notification histogram is recorded, and on loopback (where
/// the kernel always copies) the adaptive switch to plain sends is counted.
#[test]
fn zerocopy_notifications_are_measured_and_the_switch_counted() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(&content.join("zc.bin"), &pattern_bytes(8 << 20, 65));
    let squall = SeedArgs::content(&content)
        .state(&state)
        .args(&["--serve", "zerocopy"])
        .admin()
        .start();
    let admin = squall
        .admin
        .expect("squall printed no `admin on ADDR` line");
    let r = lt_download(
        Source::Torrent(&made_torrent(&state, "zc.bin")),
        &dir.path().join("dl"),
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);
    let page = metrics_after_upload(admin);
    assert!(
        metric_sum(&page, "squall_zc_notification_latency_seconds_count") >= 1.0,
        "no notification latency recorded"
    );
    assert!(
        metric_sum(&page, "squall_zerocopy_connections_switched_total") >= 1.0,
        "{page}"
    );
}
