//! `squall catalog-check` (hidden): load a catalog the way `seed` will and report what loaded,
//! what was skipped and why, how long it took and how much memory it holds. Used by
//! scripts/gen-catalog.py to measure catalog scale.
//!
//! Owns: reporting only. Must never: write anywhere but the state directory (via the catalog).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use squall_engine::catalog::{Catalog, CatalogOptions, VerifyPolicy};

/// Load a catalog and report counts, time and memory (a measurement tool).
#[derive(clap::Args, Debug)]
pub struct CatalogCheckArgs {
    /// Directory of *.torrent files.
    #[arg(long)]
    pub torrents: PathBuf,
    /// Directory containing each torrent's content under its name.
    #[arg(long)]
    pub data: PathBuf,
    /// State directory (resume files go in <state>/resume/).
    #[arg(long)]
    pub state: PathBuf,
    /// Threads for parsing and hashing (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// When to hash content: if-changed (default), always, never.
    #[arg(long, default_value = "if-changed")]
    pub verify: String,
}

fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A `/proc/self/status` field given in kB, in bytes (0 when absent).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn run(args: CatalogCheckArgs) -> Result<ExitCode, String> {
    let verify = match args.verify.as_str() {
        "if-changed" => VerifyPolicy::IfChanged,
        "always" => VerifyPolicy::Always,
        "never" => VerifyPolicy::Never,
        other => {
            return Err(format!(
                "--verify {other:?}: use if-changed, always or never"
            ))
        }
    };
    let opts = CatalogOptions {
        torrents_dir: args.torrents,
        data_dir: args.data,
        state_dir: args.state,
        hash_threads: args.threads,
        verify,
    };
    let rss_before = rss_bytes();
    let anon_before = status_bytes("RssAnon:");
    let started = Instant::now();
    let bar = super::load_bar::LoadBar::new();
    let loaded = Catalog::load(&opts, &|done, total| bar.update(done, total));
    let elapsed = started.elapsed();
    drop(bar);
    let (catalog, report) = loaded.map_err(|e| format!("loading the catalog: {e}"))?;
    let rss_after = rss_bytes();
    let anon_after = status_bytes("RssAnon:");
    let n = catalog.len().max(1) as u64;
    println!(
        "loaded={} resumed={} from_store={} verified={} skipped={} load_ms={} rss_anon_per_torrent_bytes={} rss_before_bytes={} rss_after_bytes={} rss_per_torrent_bytes={}",
        report.loaded,
        report.resumed,
        report.from_store,
        report.verified,
        report.skipped.len(),
        elapsed.as_millis(),
        anon_after.saturating_sub(anon_before) / n,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before) / n
    );
    for (path, reason) in report.skipped.iter().take(10) {
        println!("skipped {}: {reason}", path.display());
    }
    drop(catalog);
    Ok(ExitCode::SUCCESS)
}
