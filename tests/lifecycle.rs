//! Lifecycle of the real binary: SIGHUP reloads the catalog without disturbing peers of
//! unchanged torrents; JSON logs are one object per line.

mod common;

use common::*;
use squall_engine::wire::{parse_handshake, Handshake};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn make(content: &Path, out: &Path) -> [u8; 20] {
    hex::decode(squall_make(content, out, &[]))
        .unwrap()
        .try_into()
        .unwrap()
}

/// True when squall answers a handshake for `info_hash` (it closes unknown ones at once).
fn answers(addr: std::net::SocketAddr, info_hash: [u8; 20]) -> bool {
    let mut s = raw_connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(&Handshake::new(info_hash, [9; 20], true, true).to_bytes());
    let mut buf = Vec::new();
    let mut tmp = [0u8; 256];
    while buf.len() < 68 {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    matches!(parse_handshake(&buf), Ok(Some(h)) if h.info_hash == info_hash)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGHUP: a torrent added to the directory starts seeding, a removed one stops being
/// offered, and a download of an unchanged torrent running across the reload completes with
/// identical bytes.
#[test]
fn sighup_adds_and_removes_torrents_without_disturbing_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    write_file(&data.join("a.bin"), &pattern_bytes(300_000, 1));
    write_file(&data.join("b.bin"), &pattern_bytes(6 * 1024 * 1024, 2));
    write_file(&data.join("c.bin"), &pattern_bytes(200_000, 3));
    let a = make(&data.join("a.bin"), &torrents.join("a.torrent"));
    let _b = make(&data.join("b.bin"), &torrents.join("b.torrent"));
    let squall = SquallProcess::start(&[
        "--torrents",
        torrents.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--state",
        dir.path().join("state").to_str().unwrap(),
        "--admin",
        "off",
    ]);
    assert!(answers(squall.addr, a));
    let c_torrent = dir.path().join("c.torrent");
    let c = make(&data.join("c.bin"), &c_torrent);
    assert!(!answers(squall.addr, c), "c is not in the catalog yet");

    let can_download = libtorrent_available();
    let honest = can_download.then(|| {
        lt_command(
            Source::Torrent(&torrents.join("b.torrent")),
            &dir.path().join("dl"),
            &squall.peer(),
            &["--rate-limit", "2000000"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(800));
    std::fs::rename(&c_torrent, torrents.join("c.torrent")).unwrap();
    std::fs::remove_file(torrents.join("a.torrent")).unwrap();
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    wait_for("c to be seeded after SIGHUP", || answers(squall.addr, c));
    wait_for("a to be dropped after SIGHUP", || !answers(squall.addr, a));
    if let Some(child) = honest {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "download across the reload: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_same_tree(&data.join("b.bin"), &dir.path().join("dl/b.bin"));
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// `--log-format json` writes one JSON object per log line on stderr.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("x.bin"), &pattern_bytes(50_000, 4));
    let state = dir.path().join("state");
    let err = stderr_of_run(
        &[
            "--log-format",
            "json",
            "seed",
            content.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--state",
            state.to_str().unwrap(),
        ],
        2,
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "no JSON log lines in: {err}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}
