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
    for shards in ["1", "2"] {
        let squall = SquallProcess::start(&[
            "--torrents",
            dir.path().join("torrents").to_str().unwrap(),
            "--data",
            dir.path().join("content").to_str().unwrap(),
            "--state",
            dir.path().join("state").to_str().unwrap(),
            "--shards",
            shards,
        ]);
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
