//! Man pages and shell completions come from the binaries' clap definitions (`squall generate`,
//! `squall-bench generate`, hidden): the pages render with man-db without warnings, and the
//! completions offer every visible subcommand and no hidden one.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const SQUALL_SUBCOMMANDS: [&str; 7] = [
    "make", "info", "seed", "config", "verify", "stats", "torrents",
];
const BENCH_SUBCOMMANDS: [&str; 6] = [
    "run",
    "scenario",
    "scenario-data",
    "null-seeder",
    "gen-content",
    "report",
];
const HIDDEN_SUBCOMMANDS: [&str; 2] = ["generate", "catalog-check"];

/// squall-bench sits beside the squall binary that cargo built for this test.
fn bench_bin() -> PathBuf {
    let bin = Path::new(squall_bin())
        .parent()
        .expect("binary directory")
        .join("squall-bench");
    assert!(
        bin.exists(),
        "no {}: run `cargo test --workspace` (it builds the bench too) or `cargo build -p squall-bench`",
        bin.display()
    );
    bin
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the command");
    assert!(out.status.success(), "{:?}: {}", cmd, output_text(&out));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// man-db's own check (what lintian runs): warnings from groff go to stderr.
fn render_man_page(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l {}: {stderr}",
        page.display()
    );
    // -Z stops before the formatter: plain `man -l` output is what a reader sees.
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("LC_ALL", "C.UTF-8")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man");
    assert!(out.status.success(), "man -l {}", page.display());
    without_overstrike(&String::from_utf8_lossy(&out.stdout))
}

/// Off a terminal man bolds by overstriking (`N\x08N`, `_\x08x`); keep the last character.
fn without_overstrike(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

fn man_available() -> bool {
    tool_available("man (man-db)", Command::new("man").arg("--version"))
}

/// Proves: `squall generate man DIR` writes squall.1 and one page per visible subcommand
/// (none for hidden ones), each renders without a groff warning, and the pages carry the
/// options clap knows (the seed page documents --config, the top page lists the commands).
#[test]
fn squall_man_pages_render_and_cover_every_command() {
    if !man_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(squall_bin())
            .args(["generate", "man"])
            .arg(dir.path()),
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for sub in SQUALL_SUBCOMMANDS {
        assert!(
            pages.contains(&format!("squall-{sub}.1")),
            "no page for {sub}: {pages:?}"
        );
    }
    for hidden in HIDDEN_SUBCOMMANDS {
        assert!(
            !pages.iter().any(|p| p.contains(hidden)),
            "a page for hidden {hidden}: {pages:?}"
        );
    }
    for page in &pages {
        let text = render_man_page(&dir.path().join(page));
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
    let top = render_man_page(&dir.path().join("squall.1"));
    for sub in SQUALL_SUBCOMMANDS {
        assert!(top.contains(&format!("squall-{sub}(1)")), "{top}");
    }
    assert!(top.contains(env!("CARGO_PKG_VERSION")), "no version: {top}");
    assert!(
        top.contains("FILES") && top.contains("/etc/squall/squall.toml"),
        "{top}"
    );
    let seed = render_man_page(&dir.path().join("squall-seed.1"));
    assert!(seed.contains("--config"), "{seed}");
}

/// Proves: squall-bench gets pages the same way (its binary shares src/cli/generate.rs).
#[test]
fn bench_man_pages_render() {
    if !man_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(bench_bin())
            .args(["generate", "man"])
            .arg(dir.path()),
    );
    for page in std::iter::once("squall-bench.1".to_string()).chain(
        BENCH_SUBCOMMANDS
            .iter()
            .map(|s| format!("squall-bench-{s}.1")),
    ) {
        let text = render_man_page(&dir.path().join(&page));
        assert!(text.contains("SYNOPSIS"), "{page}: {text}");
    }
}

/// Proves: bash, zsh and fish completions of both binaries name every visible subcommand and
/// no hidden one, and the bash script really completes (`squall se<TAB>` gives `seed`,
/// `squall config <TAB>` gives its subcommands).
#[test]
fn completions_offer_visible_subcommands_only() {
    let bench = bench_bin();
    for (bin, subs) in [
        (Path::new(squall_bin()), &SQUALL_SUBCOMMANDS[..]),
        (bench.as_path(), &BENCH_SUBCOMMANDS[..]),
    ] {
        for shell in ["bash", "zsh", "fish"] {
            let script = run_ok(Command::new(bin).args(["generate", "completions", shell]));
            for sub in subs {
                assert!(script.contains(sub), "{} {shell}: no {sub}", bin.display());
            }
            for hidden in HIDDEN_SUBCOMMANDS {
                assert!(
                    !script.contains(hidden),
                    "{} {shell}: offers hidden {hidden}",
                    bin.display()
                );
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("squall.bash");
    std::fs::write(
        &script,
        run_ok(Command::new(squall_bin()).args(["generate", "completions", "bash"])),
    )
    .unwrap();
    let complete = |words: &str, cword: usize| -> String {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _squall squall \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        run_ok(Command::new("bash").args(["--norc", "-c", &probe]))
    };
    assert_eq!(complete("squall se", 1).trim(), "seed");
    let config = complete("squall config ''", 2);
    assert!(
        config.contains("check") && config.contains("default"),
        "{config}"
    );
}

/// Proves: a write error is reported, not a panic (clap_complete panics on one; the
/// completions are rendered into memory first): /dev/full refuses every write.
#[test]
fn completions_to_a_full_device_fail_cleanly() {
    let full = std::fs::File::create("/dev/full").expect("/dev/full");
    let out = Command::new(squall_bin())
        .args(["generate", "completions", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the bash completions") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
