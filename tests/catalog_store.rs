//! Issue 24: a catalog restarted from the compact store (`<state>/catalog.store`) serves every
//! torrent right after `ready`, and a content file changed between runs is hashed again
//! instead of trusted.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const TORRENTS: usize = 2_000;

fn info_hash_hex(torrent: &Path) -> String {
    let bytes = std::fs::read(torrent).unwrap();
    squall_engine::metainfo::torrent::parse(&bytes)
        .unwrap()
        .info_hash
        .to_hex()
}

/// `squall catalog-check` on the catalog: its one summary line.
fn catalog_check(dir: &Path) -> String {
    let out = Command::new(squall_bin())
        .arg("catalog-check")
        .args(["--torrents", dir.join("torrents").to_str().unwrap()])
        .args(["--data", dir.join("data").to_str().unwrap()])
        .args(["--state", dir.join("state").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Proves: after a first start (all hashed, store written), a restart takes all 2,000
/// torrents from the store, and libtorrent fetches a sample of them by bare magnet right
/// after `ready`, byte-identical; a content file rewritten between runs (same size, new
/// bytes, new mtime) is hashed again, so its damaged piece is not offered.
#[test]
fn restart_from_the_store_serves_a_sample_by_magnet() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gen = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/gen-catalog.sh"
        ))
        .arg(TORRENTS.to_string())
        .arg(dir.path())
        .args(["--announce", "", "--size-max", "40000"])
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let (torrents, data, state) = (
        dir.path().join("torrents"),
        dir.path().join("data"),
        dir.path().join("state"),
    );
    let first = SeedArgs::catalog(&torrents, &data)
        .state(&state)
        .shards(2)
        .start();
    assert_eq!(first.terminate().0, Some(0));
    assert!(state.join("catalog.store").exists());

    // Damage t0000005 in place: same size, one byte changed, new mtime.
    let damaged = data.join("t0000005.bin");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[0] ^= 0xff;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&damaged, &bytes).unwrap();
    let check = catalog_check(dir.path());
    assert!(
        check.contains(&format!("from_store={} verified=1 ", TORRENTS - 1)),
        "{check}"
    );
    let check = catalog_check(dir.path());
    assert!(
        check.contains(&format!("from_store={TORRENTS} verified=0 ")),
        "{check}"
    );

    let squall = SeedArgs::catalog(&torrents, &data)
        .state(&state)
        .shards(2)
        .start();
    for i in [0, 1_234, TORRENTS - 1] {
        let name = format!("t{i:07}.bin");
        let hash = info_hash_hex(&torrents.join(format!("t{i:07}.torrent")));
        let save = dir.path().join(format!("dl{i}"));
        let magnet = format!("magnet:?xt=urn:btih:{hash}");
        let r = lt_download(Source::Magnet(&magnet), &save, &squall.peer(), &[]);
        assert!(r.ok, "{name}: {}", r.json);
        assert_same_tree(&data.join(&name), &save.join(&name));
    }
    // The damaged torrent's only piece failed verification: a client cannot complete it.
    let hash = info_hash_hex(&torrents.join("t0000005.torrent"));
    let save = dir.path().join("dl5");
    let magnet = format!("magnet:?xt=urn:btih:{hash}");
    let r = lt_download(
        Source::Magnet(&magnet),
        &save,
        &squall.peer(),
        &["--timeout", "10"],
    );
    assert!(!r.ok, "the damaged torrent completed: {}", r.json);
}
