//! Replays fuzz inputs on the stable toolchain, as part of `cargo test`: every file in
//! tests/fuzz-regressions/<target>/ (inputs that once crashed a target) and every committed
//! seed in fuzz/corpus/<target>/, through the exact harness the libFuzzer targets run
//! (fuzz/src/lib.rs, included by path so the two can never drift apart).
//!
//! Owns: nothing but the replay loop. Must never: need nightly, cargo-fuzz or the network.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

fn inputs_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every input in `dir`, reporting which file panicked.
fn replay(root: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(root)
        .join(target);
    let files = inputs_under(&dir);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} panics on {} (replay: cargo +nightly fuzz run {target} {})",
            file.display(),
            file.display()
        );
    }
    files.len()
}

#[test]
fn regression_inputs_never_panic() {
    // Proves: every input that once crashed a fuzz target is handled now (an empty
    // regressions directory passes trivially).
    for (target, run) in harness::TARGETS {
        let n = replay("tests/fuzz-regressions", target, *run);
        eprintln!("{target}: {n} regression inputs");
    }
}

#[test]
fn seed_corpora_pass_every_invariant() {
    // Proves: the committed seeds (real torrents from mktorrent, transmission-create,
    // libtorrent and squall make; real wire sessions) pass the harness, and that they exist,
    // so the fuzz runs start from meaningful inputs.
    for (target, run) in harness::TARGETS {
        let n = replay("fuzz/corpus", target, *run);
        assert!(
            n > 0,
            "fuzz/corpus/{target}/ has no seeds (run scripts/fuzz-corpus.sh)"
        );
    }
}

#[test]
fn real_torrents_parse_and_bencode_round_trips() {
    // Proves: the v1, v2 and hybrid seed torrents really parse (the seeds are not all
    // rejected early, which would make the metainfo target fuzz only the error paths), with
    // the version their file name says.
    use squall_engine::metainfo::torrent::{parse, MetaVersion};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/metainfo_parse");
    let mut parsed = 0;
    for file in inputs_under(&dir) {
        let bytes = std::fs::read(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match parse(&bytes) {
            Ok(t) => {
                if name.contains("-v2-") {
                    assert_eq!(t.version, MetaVersion::V2, "{name}");
                }
                assert!(t.total_length > 0);
                parsed += 1;
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(parsed >= 4, "only {parsed} seed torrents parse");
}
