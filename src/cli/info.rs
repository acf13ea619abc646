//! `squall info`: show what a .torrent contains, for humans or as one JSON object.
//!
//! Owns: formatting. Must never: touch the content the torrent describes.

use std::path::PathBuf;
use std::process::ExitCode;

use squall_engine::metainfo::torrent::{self, Torrent};

/// Show a .torrent's name, info-hash, size, files and trackers.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Print one JSON object (info_hash, name, piece_length, num_pieces, total_length, private,
    /// files [{path, length, pad}], trackers [[tier]], magnet, meta_version (v1, v2, hybrid),
    /// and comment/created_by/creation_date/web_seeds when present). `info_hash` is the v1
    /// SHA-1 hash and is left out of v2-only torrents; v2 and hybrid torrents add
    /// `info_hash_v2` (64 hex digits, SHA-256).
    #[arg(long)]
    pub json: bool,
}

/// Reads and parses a .torrent, with an error that names the file and says what to do.
pub fn load_torrent(path: &std::path::Path) -> Result<Torrent, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    torrent::parse(&bytes).map_err(|e| {
        format!(
            "{} (not a usable .torrent; re-create or re-download it)",
            e.describe(&path.display().to_string())
        )
    })
}

pub fn to_json(t: &Torrent) -> serde_json::Value {
    let mut v = serde_json::json!({
        "meta_version": t.version.as_str(),
        "name": t.name,
        "piece_length": t.piece_length,
        "num_pieces": t.num_pieces(),
        "total_length": t.total_length,
        "private": t.private,
        "files": t.files.iter().map(|f| serde_json::json!({
            "path": f.path.join("/"),
            "length": f.length,
            "pad": f.pad,
        })).collect::<Vec<_>>(),
        "trackers": t.trackers,
        "magnet": t.magnet(),
    });
    if let Some(obj) = v.as_object_mut() {
        // A v2-only torrent has no v1 hash; its 20-byte wire hash is a prefix of info_hash_v2,
        // so printing it as `info_hash` would mislead v1 tools.
        if t.has_v1() {
            obj.insert("info_hash".into(), t.info_hash.to_hex().into());
        }
        if let Some(v2) = t.info_hash_v2 {
            obj.insert("info_hash_v2".into(), hex::encode(v2).into());
        }
        if let Some(c) = &t.comment {
            obj.insert("comment".into(), c.clone().into());
        }
        if let Some(c) = &t.created_by {
            obj.insert("created_by".into(), c.clone().into());
        }
        if let Some(d) = t.creation_date {
            obj.insert("creation_date".into(), d.into());
        }
        if !t.web_seeds.is_empty() {
            obj.insert("web_seeds".into(), t.web_seeds.clone().into());
        }
    }
    v
}

pub fn run(args: InfoArgs) -> Result<ExitCode, String> {
    let t = load_torrent(&args.torrent)?;
    if args.json {
        println!("{}", to_json(&t));
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:         {}", t.name);
    println!("format:       {}", t.version.as_str());
    if t.has_v1() {
        println!("info-hash:    {}", t.info_hash);
    }
    if let Some(v2) = t.info_hash_v2 {
        println!("info-hash v2: {}", hex::encode(v2));
    }
    println!("size:         {} bytes", t.total_length);
    println!(
        "pieces:       {} x {} bytes",
        t.num_pieces(),
        t.piece_length
    );
    println!("private:      {}", if t.private { "yes" } else { "no" });
    if let Some(c) = &t.comment {
        println!("comment:      {c}");
    }
    if let Some(c) = &t.created_by {
        println!("created by:   {c}");
    }
    if let Some(d) = t.creation_date {
        println!("created:      {d} (Unix time)");
    }
    for (i, tier) in t.trackers.iter().enumerate() {
        println!("tracker tier {i}: {}", tier.join(", "));
    }
    for w in &t.web_seeds {
        println!("web seed:     {w}");
    }
    println!("magnet:       {}", t.magnet());
    println!("files ({}):", t.files.len());
    for f in &t.files {
        let pad = if f.pad { " (padding)" } else { "" };
        println!("  {:>14}  {}{pad}", f.length, f.path.join("/"));
    }
    Ok(ExitCode::SUCCESS)
}
