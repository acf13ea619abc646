//! Hostile catalogs, end to end with the real `squall seed`: a torrents directory holding one
//! good torrent and many hostile ones (path traversal, NUL, separators, empty components, a
//! symlink escaping the data directory, piece count and length mismatches, zero, negative and
//! absurd sizes, duplicate paths, a million files, garbage, an empty file).
//!
//! What it must show: every hostile torrent is skipped with a message naming its file and the
//! reason, within bounded time, and the good torrent still seeds (a real libtorrent download
//! when python3-libtorrent is available, else a raw handshake answered for its info-hash).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use squall_engine::metainfo::bencode::{DictBuilder, Value};

fn s(x: &str) -> Value {
    Value::str(x)
}

fn file(len: i64, path: &[&str]) -> Value {
    DictBuilder::new()
        .insert("length", Value::Int(len))
        .insert("path", Value::List(path.iter().map(|c| s(c)).collect()))
        .build()
}

/// A multi-file info dict; `pieces` fake hashes.
fn multi(name: &str, files: Vec<Value>, piece_length: i64, pieces: usize) -> DictBuilder {
    DictBuilder::new()
        .insert("name", s(name))
        .insert("piece length", Value::Int(piece_length))
        .insert("pieces", Value::Bytes(vec![7; 20 * pieces]))
        .insert("files", Value::List(files))
}

fn single(name: &str, len: i64, piece_length: i64, pieces: usize) -> DictBuilder {
    DictBuilder::new()
        .insert("name", s(name))
        .insert("piece length", Value::Int(piece_length))
        .insert("pieces", Value::Bytes(vec![7; 20 * pieces]))
        .insert("length", Value::Int(len))
}

fn torrent_bytes(info: DictBuilder) -> Vec<u8> {
    DictBuilder::new()
        .insert("announce", s("http://127.0.0.1:1/announce"))
        .insert("info", info.build())
        .build()
        .encode()
}

/// A torrent of `count` one-byte files, bencoded straight into a buffer (a million entries
/// take ~30 MB and well under a second to build this way).
fn million_files_torrent(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 32 + 1024);
    out.extend_from_slice(b"d4:infod5:filesl");
    for i in 0..count {
        let name = format!("f{i}");
        out.extend_from_slice(format!("d6:lengthi1e4:pathl{}:{name}ee", name.len()).as_bytes());
    }
    let pieces = count.div_ceil(16384);
    out.extend_from_slice(b"e4:name4:many12:piece lengthi16384e6:pieces");
    out.extend_from_slice(format!("{}:", pieces * 20).as_bytes());
    out.extend(std::iter::repeat_n(7u8, pieces * 20));
    out.extend_from_slice(b"ee");
    out
}

fn squall_make(content: &Path, out: &Path) {
    let o = Command::new(squall_bin())
        .args(["make", "--piece-length", "16K", "-o"])
        .arg(out)
        .arg(content)
        .output()
        .expect("run squall make");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn hostile_torrents_are_skipped_by_name_and_the_good_one_seeds() {
    // Proves: each hostile torrent is refused with a message naming its file and the reason;
    // the million-file torrent is refused within bounded time; a symlink out of the data
    // directory is refused; the good torrent in the same catalog seeds to a real client.
    let dir = tempfile::tempdir().unwrap();
    let (torrents, data, state, outside) = (
        dir.path().join("torrents"),
        dir.path().join("data"),
        dir.path().join("state"),
        dir.path().join("outside"),
    );
    for d in [&torrents, &data, &state, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }

    // The good torrent.
    write_file(&data.join("good.bin"), &pattern_bytes(300_001, 11));
    squall_make(&data.join("good.bin"), &torrents.join("good.torrent"));

    // A symlink in the data dir pointing outside it, with a genuine torrent for the target.
    write_file(&outside.join("escape.bin"), &pattern_bytes(50_000, 12));
    squall_make(
        &outside.join("escape.bin"),
        &torrents.join("symlink-escape.torrent"),
    );
    std::os::unix::fs::symlink(outside.join("escape.bin"), data.join("escape.bin")).unwrap();
    // The same through a symlinked directory.
    write_file(&outside.join("tree/inner.bin"), &pattern_bytes(20_000, 13));
    squall_make(
        &outside.join("tree"),
        &torrents.join("symlink-dir-escape.torrent"),
    );
    std::os::unix::fs::symlink(outside.join("tree"), data.join("tree")).unwrap();

    let big = i64::MAX / 2 + 1;
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            torrent_bytes(multi(
                "root",
                vec![file(4, &["..", "..", "etc", "passwd"])],
                16384,
                1,
            )),
            "directory reference",
        ),
        (
            "dotdot-name",
            torrent_bytes(single("..", 4, 16384, 1)),
            "directory reference",
        ),
        (
            "absolute-name",
            torrent_bytes(single("/etc/passwd", 4, 16384, 1)),
            "path separator",
        ),
        (
            "absolute-component",
            torrent_bytes(multi("root", vec![file(4, &["/etc", "passwd"])], 16384, 1)),
            "path separator",
        ),
        (
            "nul",
            torrent_bytes(multi("root", vec![file(4, &["a\0b"])], 16384, 1)),
            "NUL",
        ),
        (
            "slash-inside",
            torrent_bytes(multi("root", vec![file(4, &["a/../../b"])], 16384, 1)),
            "path separator",
        ),
        (
            "backslash-inside",
            torrent_bytes(multi("root", vec![file(4, &["..\\..\\b"])], 16384, 1)),
            "path separator",
        ),
        (
            "empty-component",
            torrent_bytes(multi("root", vec![file(4, &["a", "", "b"])], 16384, 1)),
            "empty component",
        ),
        (
            "no-components",
            torrent_bytes(multi("root", vec![file(4, &[])], 16384, 1)),
            "no components",
        ),
        (
            "pieces-too-many",
            torrent_bytes(single("p.bin", 100, 16384, 2)),
            "info.pieces",
        ),
        (
            "pieces-too-few",
            torrent_bytes(single("p.bin", 40_000, 16384, 2)),
            "info.pieces",
        ),
        (
            "piece-length-zero",
            torrent_bytes(single("z.bin", 100, 0, 1)),
            "must be positive",
        ),
        (
            "piece-length-negative",
            torrent_bytes(single("z.bin", 100, -16384, 1)),
            "must be positive",
        ),
        (
            "piece-length-huge",
            torrent_bytes(single("z.bin", 100, 1 << 40, 1)),
            "exceeds the limit",
        ),
        (
            "length-negative",
            torrent_bytes(single("n.bin", -5, 16384, 1)),
            "must not be negative",
        ),
        (
            "length-zero",
            torrent_bytes(single("n.bin", 0, 16384, 0)),
            "total length is 0",
        ),
        (
            "total-over-2-63",
            torrent_bytes(multi(
                "root",
                vec![file(big, &["a"]), file(big, &["b"])],
                16384,
                1,
            )),
            "overflows 2^63",
        ),
        (
            "too-many-pieces",
            torrent_bytes(single("n.bin", i64::MAX, 16384, 1)),
            "more than 2^32 - 1",
        ),
        (
            "duplicate-paths",
            torrent_bytes(multi(
                "root",
                vec![file(4, &["a", "b"]), file(4, &["a", "b"])],
                16384,
                1,
            )),
            "duplicate file path",
        ),
        (
            "file-is-also-dir",
            torrent_bytes(multi(
                "root",
                vec![file(4, &["a"]), file(4, &["a", "b"])],
                16384,
                1,
            )),
            "which is also a file",
        ),
        // A million files: refused while decoding, by the bencode value bound (4 values per
        // file), before any per-file work, so peak memory is bounded by that bound.
        (
            "million-files",
            million_files_torrent(1_000_000),
            "more than 2000000 values",
        ),
        // Fewer files than that, still over the metainfo limit: refused by the file bound.
        (
            "300k-files",
            million_files_torrent(300_000),
            "files per torrent",
        ),
        ("garbage", pattern_bytes(4096, 99), "bencode"),
        ("empty", Vec::new(), "bencode: input ends early"),
        (
            "info-not-a-dict",
            DictBuilder::new().insert("info", s("x")).build().encode(),
            "not a dictionary",
        ),
        (
            "missing-content",
            torrent_bytes(single("absent.bin", 100, 16384, 1)),
            "No such file",
        ),
    ];
    for (name, bytes, _) in &hostile {
        std::fs::write(torrents.join(format!("{name}.torrent")), bytes).unwrap();
    }

    let started = Instant::now();
    let squall = SeedArgs::catalog(&torrents, &data).state(&state).start();
    let load_time = started.elapsed();
    assert!(
        load_time < Duration::from_secs(30),
        "loading a hostile catalog took {load_time:?}"
    );

    // Only the good torrent seeds.
    let names: Vec<&str> = squall.torrents.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(names, ["good.bin"], "seeded: {names:?}");

    // Every hostile file is named with its reason on stderr (the log reader thread may lag).
    let mut expected: Vec<(String, &str)> = hostile
        .iter()
        .map(|(name, _, reason)| (format!("{name}.torrent"), *reason))
        .collect();
    expected.push((
        "symlink-escape.torrent".into(),
        "outside the data directory",
    ));
    expected.push((
        "symlink-dir-escape.torrent".into(),
        "outside the data directory",
    ));
    let mut lines: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let missing = |lines: &[String]| -> Vec<(String, &str)> {
        expected
            .iter()
            .filter(|(file, reason)| {
                !lines.iter().any(|l| {
                    l.contains("skipping torrent")
                        && l.contains(file.as_str())
                        && l.contains(reason)
                })
            })
            .cloned()
            .collect()
    };
    while !missing(&lines).is_empty() && Instant::now() < deadline {
        if let Ok(line) = squall.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(line);
        }
    }
    let still_missing = missing(&lines);
    assert!(
        still_missing.is_empty(),
        "no clear skip message for {still_missing:?}; stderr was:\n{}",
        lines.join("\n")
    );

    // The good torrent still serves: a real client downloads it, byte for byte.
    if libtorrent_available() {
        let save = dir.path().join("download");
        let r = lt_download(
            Source::Torrent(&torrents.join("good.torrent")),
            &save,
            &squall.peer(),
            &[],
        );
        assert!(
            r.ok,
            "libtorrent download of the good torrent failed: {}",
            r.json
        );
        assert_same_tree(&data.join("good.bin"), &save.join("good.bin"));
    } else {
        let info_hash: [u8; 20] = hex::decode(&squall.torrents[0].0)
            .unwrap()
            .try_into()
            .unwrap();
        let mut stream = raw_connect(squall.addr);
        let hs = squall_engine::wire::Handshake::new(info_hash, [3; 20], true, true);
        write_all(&mut stream, &hs.to_bytes());
        let mut answer = [0u8; squall_engine::wire::HANDSHAKE_LEN];
        std::io::Read::read_exact(&mut stream, &mut answer).unwrap();
        assert_eq!(&answer[28..48], &info_hash);
    }
    drop(squall);
}
