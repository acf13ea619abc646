//! `squall make`: create a .torrent from a file or directory.
//!
//! Owns: argument parsing, the progress bar and writing the output file. Listing, hashing and
//! the torrent bytes come from `squall_engine::make`. Must never: write into the content.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use squall_engine::make::make_torrent_version;
use squall_engine::metainfo::create::CreateOptions;
use squall_engine::metainfo::MetaVersion;

/// Create a .torrent from a file (single-file torrent) or a directory (multi-file torrent).
///
/// Files are listed in a fixed order (path components sorted bytewise), and the info
/// dictionary holds only standard keys, so the same content always gives the same info-hash.
#[derive(clap::Args, Debug)]
pub struct MakeArgs {
    /// File or directory to share. Its file name becomes the torrent's name.
    pub path: PathBuf,
    /// Where to write the .torrent.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Piece length in bytes, a power of two from 16K to 256M; accepts K/M suffixes
    /// (e.g. 256K, 1M). Default: automatic, aiming at 1,000-2,000 pieces (16 KiB to 16 MiB).
    #[arg(long = "piece-length", value_name = "BYTES")]
    pub piece_length: Option<String>,
    /// Tracker URL. Each --tracker is its own tier (tried in order, BEP 12); a comma-separated
    /// value (--tracker URL1,URL2) puts those URLs in one tier (load-balanced).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Mark the torrent private (BEP 27): peers only from its trackers, no DHT/PEX.
    #[arg(long)]
    pub private: bool,
    /// Free-text comment stored in the .torrent (outside the info dictionary).
    #[arg(long)]
    pub comment: Option<String>,
    /// Web seed URL (BEP 19 url-list); repeatable.
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,
    /// Overwrite OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Hashing threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Make a BitTorrent v2-only torrent (BEP 52: SHA-256 merkle trees, 16 KiB leaves).
    /// v1-only clients cannot use it; prefer --hybrid unless every peer speaks v2.
    #[arg(long, conflicts_with = "hybrid")]
    pub v2: bool,
    /// Make a hybrid torrent: v1 and v2 halves over the same content (BEP 47 pad files align
    /// every file to a piece). Both v1 and v2 clients can use it.
    #[arg(long)]
    pub hybrid: bool,
}

/// Parses `16384`, `256K`, `256KiB`, `1M`, `1MiB` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub fn run(args: MakeArgs) -> Result<ExitCode, String> {
    let piece_length = match &args.piece_length {
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            format!("--piece-length {s:?} is not a size; use bytes or a K/M suffix, e.g. 262144 or 256K")
        })?),
        None => None,
    };
    if args.output.exists() && !args.force {
        return Err(format!(
            "{} already exists; choose another -o path or pass --force to overwrite it",
            args.output.display()
        ));
    }
    let trackers: Vec<Vec<String>> = args
        .trackers
        .iter()
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|tier| !tier.is_empty())
        .collect();
    let opts = CreateOptions {
        piece_length,
        trackers,
        private: args.private,
        comment: args.comment.clone(),
        web_seeds: args.web_seeds.clone(),
        created_by: format!("squall/{}", env!("CARGO_PKG_VERSION")),
        creation_date: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "hashing {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let version = match (args.v2, args.hybrid) {
        (true, _) => MetaVersion::V2,
        (false, true) => MetaVersion::Hybrid,
        (false, false) => MetaVersion::V1,
    };
    let made = make_torrent_version(&args.path, &opts, version, args.threads, &progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (torrent, bytes) =
        made.map_err(|e| format!("cannot make a torrent of {}: {e}", args.path.display()))?;
    squall_engine::storage::write_atomic(&args.output, &bytes).map_err(|e| {
        format!(
            "cannot write {}: {e}; check the directory exists and is writable",
            args.output.display()
        )
    })?;
    println!("name:       {}", torrent.name);
    if torrent.has_v1() {
        println!("info-hash:  {}", torrent.info_hash);
    }
    if let Some(v2) = torrent.info_hash_v2 {
        println!("info-hash v2: {}", hex::encode(v2));
    }
    println!(
        "size:       {} bytes in {} file(s), {} pieces of {} bytes",
        torrent.total_length,
        torrent.files.len(),
        torrent.num_pieces(),
        torrent.piece_length
    );
    println!("written:    {}", args.output.display());
    println!("magnet:     {}", torrent.magnet());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_accept_suffixes() {
        // Proves: --piece-length accepts bytes and K/M suffixes and refuses junk.
        assert_eq!(parse_size("16384"), Some(16384));
        assert_eq!(parse_size("256K"), Some(256 * 1024));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("1X"), None);
        assert_eq!(parse_size("K"), None);
    }
}
