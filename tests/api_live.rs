//! The runtime catalog API while torrents are served, end to end with the real binary:
//! per-torrent figures (uploaded bytes, Gb/s, request p50/p99) and the peer list with
//! libtorrent's client name during a real download; a removal that drains its peers (queued
//! blocks arrive, new requests are refused, then the connection closes, and the API says
//! `draining`, then nothing); and a recheck of a zero-config torrent that a restart keeps.

mod common;

use common::*;
use squall_engine::wire::{decode_frame, BlockRequest, Message};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BLOCK: u32 = 16384;

fn token(state: &Path) -> String {
    std::fs::read_to_string(state.join("admin.token"))
        .expect("token file")
        .trim()
        .to_string()
}

fn get(admin: SocketAddr, state: &Path, path: &str) -> (u16, serde_json::Value) {
    admin_request(admin, "GET", path, Some(&token(state)), b"")
}

#[test]
fn api_shows_per_torrent_figures_and_libtorrent_in_the_peer_list() {
    // During a rate-limited libtorrent download the one-torrent view lists the peer with
    // libtorrent's name, its queued requests and rate, and the torrent's uploaded bytes,
    // Gb/s and request p50/p99 are non-zero; after it, the list and `squall torrents ls
    // --json` keep the uploaded bytes and percentiles.
    if !libtorrent_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    let size = 6 << 20;
    write_file(&content.join("show.bin"), &pattern_bytes(size, 5));
    let state = tmp.path().join("state");
    let squall = SeedArgs::content(&content)
        .state(&state)
        .shards(2)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let hash = squall.torrents[0].0.clone();
    let torrent = made_torrent(&state, "show.bin");
    let save = tmp.path().join("save");
    let mut download = lt_command(
        Source::Torrent(&torrent),
        &save,
        &squall.peer(),
        &["--rate-limit", "1500000"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("start lt_download");
    let one = format!("/api/v1/torrents/{hash}");
    let live = wait_for(Duration::from_secs(30), "live per-torrent figures", || {
        let (code, v) = get(admin, &state, &one);
        assert_eq!(code, 200, "{v}");
        let peer = v["peer_list"]["peers"].as_array()?.first()?.clone();
        let named = peer["client"]
            .as_str()?
            .to_lowercase()
            .contains("libtorrent");
        let busy = v["uploaded_bytes"].as_u64()? > 0
            && v["request_p50_us"].as_f64()? > 0.0
            && v["request_p99_us"].as_f64()? > 0.0
            && v["upload_bytes_per_sec"].as_f64()? > 0.0
            && peer["upload_bytes_per_sec"].as_f64()? > 0.0;
        (named && busy).then_some((v, peer))
    });
    let (v, peer) = live;
    assert_eq!(v["peer_list"]["total"], 1, "{v}");
    assert_eq!(v["peers"], 1, "{v}");
    assert!(
        peer["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{peer}"
    );
    assert!(peer["queued_requests"].as_u64().is_some(), "{peer}");
    assert!(v["request_p99_us"].as_f64() >= v["request_p50_us"].as_f64());
    // A rate-limited download: the torrent's rate is near the limit, not wildly off.
    let gbps = v["upload_bytes_per_sec"].as_f64().unwrap();
    assert!(gbps < 20e6, "{gbps} bytes/s under a 1.5 MB/s limit");
    let (code, page) = get(
        admin,
        &state,
        &format!("{one}?peers_offset=1&peers_limit=5"),
    );
    assert_eq!(code, 200);
    assert_eq!(page["peer_list"]["peers"].as_array().unwrap().len(), 0);
    assert_eq!(page["peer_list"]["total"], 1);
    let (code, _) = get(admin, &state, &format!("{one}?peers_limit=100000"));
    assert_eq!(code, 400);

    let mut out = String::new();
    download
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(download.wait().unwrap().success(), "{out}");
    let (_, list) = get(admin, &state, "/api/v1/torrents");
    let row = &list["torrents"][0];
    assert!(
        row["uploaded_bytes"].as_u64().unwrap() >= size as u64,
        "{row}"
    );
    assert!(row["request_p50_us"].as_f64().unwrap() > 0.0, "{row}");
    let ls = Command::new(squall_bin())
        .args(["torrents", "ls", "--json", "--admin", &admin.to_string()])
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("ls --json");
    assert!(rows[0]["request_p99_us"].as_f64().unwrap() > 0.0, "{rows}");
    let ls = Command::new(squall_bin())
        .args(["torrents", "ls", "--admin", &admin.to_string()])
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    let text = output_text(&ls);
    assert!(text.contains("Gb/s") && text.contains("p99 us"), "{text}");
}

#[test]
fn removing_a_torrent_drains_its_peers() {
    // A peer with 256 blocks requested through a 4 KiB window is mid-download when the
    // torrent is removed: the API shows it `draining` (the peer listed as draining), a new
    // request gets a reject, every block it had asked for still arrives byte for byte, then
    // squall closes the connection and the torrent is gone from the API.
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    let data = pattern_bytes(8 << 20, 11);
    write_file(&content.join("drain.bin"), &data);
    let state = tmp.path().join("state");
    let config = write_config(tmp.path(), "[engine]\nremove_drain_secs = 30\n");
    let squall = SeedArgs::content(&content)
        .state(&state)
        .shards(1)
        .admin()
        .config(&config)
        .start();
    let admin = squall.admin.expect("admin");
    let hash = squall.torrents[0].0.clone();
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(&hex::decode(&hash).unwrap());
    let mut s =
        connect_from(std::net::Ipv4Addr::LOCALHOST, squall.addr, Some(4096)).expect("connect");
    let mut buf = join_unchoked(&mut s, info_hash, *b"-TT0001-draindraindr", true);
    // Zero config makes 16 KiB pieces for 8 MiB: block i is piece i.
    let asked = 256u32;
    for i in 0..asked {
        send_message(
            &mut s,
            &Message::Request(BlockRequest {
                index: i,
                begin: 0,
                length: BLOCK,
            }),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let one = format!("/api/v1/torrents/{hash}");
    let (code, v) = admin_request(admin, "DELETE", &one, Some(&token(&state)), b"");
    assert_eq!(code, 200, "{v}");
    let (code, v) = get(admin, &state, &one);
    assert_eq!((code, v["state"].as_str()), (200, Some("draining")), "{v}");
    // The shard has the new catalog once it lists the peer as draining.
    let v = wait_for(Duration::from_secs(5), "the peer to drain", || {
        let (_, v) = get(admin, &state, &one);
        (v["peer_list"]["peers"][0]["draining"] == true).then_some(v)
    });
    assert_eq!(v["state"], "draining", "{v}");
    assert!(
        v["peer_list"]["peers"][0]["queued_requests"].as_u64() > Some(0),
        "{v}"
    );
    assert!(!handshake_accepted(squall.addr, &hash), "new peers refused");
    send_message(
        &mut s,
        &Message::Request(BlockRequest {
            index: 300,
            begin: 0,
            length: BLOCK,
        }),
    );
    // Now read everything: the asked blocks, the reject, then EOF.
    let mut got = vec![false; asked as usize];
    let mut rejected = Vec::new();
    let started = Instant::now();
    let closed = loop {
        while let Ok(Some((m, used))) = decode_frame(&buf, 1 << 20) {
            match m {
                Message::Piece {
                    index,
                    begin,
                    data: block,
                } => {
                    let at = index as usize * BLOCK as usize + begin as usize;
                    assert!(
                        block == &data[at..at + block.len()],
                        "block {index} differs"
                    );
                    assert!(index < asked, "block {index} was asked after the removal");
                    got[index as usize] = true;
                }
                Message::RejectRequest(r) => rejected.push(r.index),
                _ => {}
            }
            buf.drain(..used);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never closed");
        let mut tmp = [0u8; 65536];
        match s.read(&mut tmp) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => panic!("read: {e}"),
        }
    };
    assert!(closed);
    assert_eq!(
        got.iter().filter(|g| **g).count(),
        asked as usize,
        "every block asked before the removal arrives"
    );
    assert_eq!(
        rejected,
        vec![300],
        "the request after the removal is refused"
    );
    wait_for(
        Duration::from_secs(10),
        "the drain to end in the API",
        || (get(admin, &state, &one).0 == 404).then_some(()),
    );
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(
        metric_sum_with_reason(
            &metrics,
            "squall_requests_rejected_total",
            "torrent_removed"
        ) >= 1.0
    );
    assert!(
        metric_sum_with_reason(&metrics, "squall_peers_closed_total", "torrent_removed") >= 1.0
    );
    assert!(
        content.join("drain.bin").exists(),
        "content is never touched"
    );
}

#[test]
fn a_recheck_of_a_zero_config_torrent_survives_a_restart() {
    // A content file damaged in place (same size and mtime, so resume state still matches)
    // is found by an API recheck (`incomplete`); after a restart the torrent is still
    // `incomplete`, because the recheck wrote its result to the state directory.
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    let file = content.join("kept.bin");
    write_file(&file, &pattern_bytes(1 << 20, 3));
    let state = tmp.path().join("state");
    let start = || {
        SeedArgs::content(&content)
            .state(&state)
            .shards(1)
            .admin()
            .start()
    };
    let squall = start();
    let admin = squall.admin.expect("admin");
    let hash = squall.torrents[0].0.clone();
    let one = format!("/api/v1/torrents/{hash}");
    let state_of = |admin: SocketAddr| get(admin, &state, &one).1["state"].clone();
    assert_eq!(state_of(admin), "seeding");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    {
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xAA; 4096], 100_000).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let (code, v) = admin_request(
        admin,
        "POST",
        &format!("{one}/recheck"),
        Some(&token(&state)),
        b"",
    );
    assert_eq!(code, 202, "{v}");
    wait_for(Duration::from_secs(20), "the recheck to finish", || {
        (state_of(admin) == "incomplete").then_some(())
    });
    assert_eq!(squall.terminate().0, Some(0));
    let squall = start();
    let admin = squall.admin.expect("admin");
    assert_eq!(
        state_of(admin),
        "incomplete",
        "the recheck's result was lost"
    );
}
