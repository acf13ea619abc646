//! End-to-end: real BitTorrent clients we did not write download from the real `squall`
//! binary over loopback, and the bytes are compared with the source.

mod common;

use common::*;
use std::time::Duration;

/// libtorrent downloads a single-file and a multi-file torrent (odd sizes, an empty file, a
/// file smaller than a block) byte-identical, in every serving mode, with 1 and 2 shards.
#[test]
fn libtorrent_downloads_in_every_mode_and_shard_count() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    standard_content(&content);
    for mode in ["copy", "zerocopy", "splice"] {
        for shards in [1, 2] {
            let squall = SeedArgs::content(&content)
                .state(&state)
                .args(&["--serve", mode])
                .shards(shards)
                .start();
            for name in ["single.bin", "multi"] {
                let save = dir.path().join(format!("dl-{mode}-{shards}"));
                let r = lt_download(
                    Source::Torrent(&made_torrent(&state, name)),
                    &save,
                    &squall.peer(),
                    &[],
                );
                assert!(r.ok, "mode {mode}, {shards} shard(s), {name}: {}", r.json);
                assert_same_tree(&content.join(name), &save.join(name));
            }
            let (code, took) = squall.terminate();
            assert_eq!(code, Some(0), "squall must exit 0 on SIGTERM");
            assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
        }
    }
}

/// A client holding only a bare magnet link (info-hash and x.pe, no trackers) gets the info
/// dictionary from squall through BEP 9, then the content.
#[test]
fn libtorrent_downloads_from_a_bare_magnet() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    standard_content(&content);
    let squall = SeedArgs::content(&content).state(&state).start();
    for name in ["single.bin", "multi"] {
        let hash = &squall.torrents.iter().find(|t| t.1 == name).unwrap().0;
        let magnet = format!("magnet:?xt=urn:btih:{hash}");
        let save = dir.path().join("dl");
        let r = lt_download(Source::Magnet(&magnet), &save, &squall.peer(), &[]);
        assert!(r.ok, "{name}: {}", r.json);
        assert_same_tree(&content.join(name), &save.join(name));
    }
}

/// 20 libtorrent clients downloading at once all end with identical bytes.
#[test]
fn twenty_concurrent_downloads_are_identical() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(
        &content.join("shared.bin"),
        &pattern_bytes(4 * 1024 * 1024 + 333, 9),
    );
    let squall = SeedArgs::content(&content).state(&state).shards(2).start();
    let torrent = made_torrent(&state, "shared.bin");
    let children: Vec<_> = (0..20)
        .map(|i| {
            let save = dir.path().join(format!("dl{i}"));
            let child = lt_command(Source::Torrent(&torrent), &save, &squall.peer(), &[])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (save, child)
        })
        .collect();
    for (save, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_same_tree(&content.join("shared.bin"), &save.join("shared.bin"));
    }
}

/// A client that disconnects mid-transfer disturbs no one: a concurrent download completes,
/// and a fresh one afterwards too.
#[test]
fn a_client_leaving_mid_transfer_disturbs_no_one() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(
        &content.join("big.bin"),
        &pattern_bytes(16 * 1024 * 1024, 5),
    );
    let squall = SeedArgs::content(&content).state(&state).start();
    let torrent = made_torrent(&state, "big.bin");
    let quitter = lt_command(
        Source::Torrent(&torrent),
        &dir.path().join("quit"),
        &squall.peer(),
        &["--rate-limit", "2000000", "--abort-after-bytes", "3000000"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let honest = lt_command(
        Source::Torrent(&torrent),
        &dir.path().join("honest"),
        &squall.peer(),
        &["--rate-limit", "6000000"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let q = quitter.wait_with_output().unwrap();
    assert!(
        q.status.success(),
        "quitter: {}",
        String::from_utf8_lossy(&q.stdout)
    );
    let h = honest.wait_with_output().unwrap();
    assert!(
        h.status.success(),
        "honest: {}",
        String::from_utf8_lossy(&h.stdout)
    );
    assert_same_tree(&content.join("big.bin"), &dir.path().join("honest/big.bin"));
    let r = lt_download(
        Source::Torrent(&torrent),
        &dir.path().join("fresh"),
        &squall.peer(),
        &[],
    );
    assert!(r.ok, "{}", r.json);
    assert_same_tree(&content.join("big.bin"), &dir.path().join("fresh/big.bin"));
}

/// A peer sending garbage is disconnected while an honest, rate-limited download continues
/// and completes with identical bytes.
#[test]
fn garbage_peer_is_dropped_while_an_honest_download_continues() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    let state = dir.path().join("state");
    write_file(
        &content.join("file.bin"),
        &pattern_bytes(8 * 1024 * 1024, 6),
    );
    // With MSE allowed (the default), garbage that is neither BitTorrent nor a complete
    // encrypted handshake waits for the handshake timeout: keep it short.
    let config = write_config(dir.path(), "[engine]\nhandshake_timeout_secs = 3\n");
    let squall = SeedArgs::content(&content)
        .state(&state)
        .config(&config)
        .start();
    let torrent = made_torrent(&state, "file.bin");
    let honest = lt_command(
        Source::Torrent(&torrent),
        &dir.path().join("honest"),
        &squall.peer(),
        &["--rate-limit", "4000000"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[19u8; 100][..],
        &pattern_bytes(4096, 11)[..],
    ] {
        let mut s = raw_connect(squall.addr);
        write_all(&mut s, garbage);
        assert!(closed_by_peer(&mut s), "squall kept a garbage peer open");
    }
    let h = honest.wait_with_output().unwrap();
    assert!(
        h.status.success(),
        "honest: {}",
        String::from_utf8_lossy(&h.stdout)
    );
    assert_same_tree(
        &content.join("file.bin"),
        &dir.path().join("honest/file.bin"),
    );
}

/// aria2c finds squall through a local opentracker and downloads identical bytes. The test
/// announces squall's address itself, so this checks peer discovery through a real tracker
/// independently of squall's own tracker client (tests/e2e_tracker.rs covers that).
#[test]
fn aria2c_downloads_through_opentracker() {
    if !aria2c_available() || !opentracker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let TrackedCatalog {
        content,
        torrents,
        hashes,
        tracker_port,
        tracker: _tracker,
    } = tracked_standard_catalog(dir.path());
    let state = dir.path().join("state");
    let squall = SeedArgs::catalog(&torrents, &content).state(&state).start();
    for hash in &hashes {
        announce_to(tracker_port, hash, squall.addr.port());
    }
    for name in ["single.bin", "multi"] {
        let save = dir.path().join("aria");
        let out = aria2c_download(&torrents.join(format!("{name}.torrent")), &save, &[]);
        assert!(
            out.status.success(),
            "aria2c failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&content.join(name), &save.join(name));
    }
}
