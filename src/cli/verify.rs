//! `squall verify`: hash every piece of a torrent's content on all cores and report.
//!
//! Owns: mapping the torrent onto DATA_DIR, the progress bar, the report. Must never: write
//! or repair content (it only reads).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use squall_engine::storage::extents::layout;
use squall_engine::storage::{verify_torrent_content, FileProblemKind};

/// Hash every piece of a torrent's content and compare with the .torrent.
///
/// Exit status 0 when every piece matches, 1 when any piece is bad or any file is missing.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The directory that contains the torrent's content under its name (libtorrent's
    /// save_path): `DATA_DIR/<name>` is the file or the directory.
    pub data_dir: PathBuf,
    /// Hashing threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(args: VerifyArgs) -> Result<ExitCode, String> {
    let t = super::info::load_torrent(&args.torrent)?;
    if !args.data_dir.is_dir() {
        return Err(format!(
            "{} is not a directory; pass the directory that contains {:?}",
            args.data_dir.display(),
            t.name
        ));
    }
    let root = args.data_dir.join(&t.name);
    if !root.exists() {
        eprintln!(
            "note: {} does not exist; DATA_DIR must contain the torrent's content under its name {:?}",
            root.display(),
            t.name
        );
    }
    let content = layout(t.files.iter().map(|f| {
        // Resolved here because content is opened without following symlinks (a guard
        // for the long-running seeder); a one-shot verify follows them as the user expects.
        // A missing file keeps its path and is reported as missing.
        let path = if f.pad {
            PathBuf::new()
        } else {
            let joined = t.file_path_in(&args.data_dir, f);
            std::fs::canonicalize(&joined).unwrap_or(joined)
        };
        (path, f.length, f.pad)
    }));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(t.total_length);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |done: u64| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    };
    // v1: SHA-1 per piece; v2: each piece's merkle subtree against the piece layer or the
    // file's pieces root; hybrid: both halves must agree.
    let report = verify_torrent_content(&t, &content, args.threads, &progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report.map_err(|e| format!("verifying {}: {e}", args.torrent.display()))?;
    if report.is_complete() && report.file_problems.is_empty() {
        println!(
            "ok: all {} pieces of {:?} match ({} bytes)",
            report.num_pieces, t.name, t.total_length
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ranges: Vec<String> = report
        .bad_ranges()
        .iter()
        .map(|&(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if report.bad_pieces.is_empty() {
        println!(
            "FAILED: every piece of {:?} matches, but some files have the wrong size:",
            t.name
        );
    } else {
        println!(
            "FAILED: {} of {} pieces of {:?} are bad or missing: pieces {}",
            report.bad_pieces.len(),
            report.num_pieces,
            t.name,
            ranges.join(", ")
        );
    }
    for p in &report.file_problems {
        let what = match &p.kind {
            FileProblemKind::Missing => "missing".to_string(),
            FileProblemKind::WrongSize {
                expected_bytes,
                actual_bytes,
            } => {
                format!("wrong size: {actual_bytes} bytes, expected {expected_bytes}")
            }
            FileProblemKind::Unreadable(e) => format!("unreadable: {e}"),
        };
        println!("  file {}: {what}", p.path.display());
    }
    println!("files with bad pieces:");
    for (f, cf) in t.files.iter().zip(&content) {
        if f.pad || f.length == 0 {
            continue;
        }
        let first = f.offset / t.piece_length;
        let last = (f.offset + f.length - 1) / t.piece_length;
        let lo = report.bad_pieces.partition_point(|&p| u64::from(p) < first);
        let hi = report.bad_pieces.partition_point(|&p| u64::from(p) <= last);
        if hi > lo {
            println!("  {} ({} bad piece(s))", cf.path.display(), hi - lo);
        }
    }
    Ok(ExitCode::from(1))
}
