//! `squall torrents ls|add|rm|recheck|pause|resume`: a client of a running seeder's runtime
//! catalog API (`/api/v1/` on its admin endpoint).
//!
//! Owns: finding the endpoint and its token (flags, then `--config FILE`, then the defaults),
//! a minimal HTTP/1.1 client (one request per connection, bounded response), and the human
//! tables. Must never: touch the state directory's catalog itself (the seeder owns it; this
//! only reads the token file), or print the token.

use squall_engine::config::{SeedConfig, ADMIN_LISTEN_DEFAULT};
use squall_engine::control::api::percent_encode;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Add, remove, pause, resume, recheck and list the torrents of a running `squall seed`.
///
/// The endpoint is `--admin ADDR`, else `[admin] listen` of `--config FILE`, else
/// 127.0.0.1:7881. The token is SQUALL_ADMIN_TOKEN, else `[admin] token`, else the token file:
/// `--token-file`, `[admin] token_file`, or `admin.token` in the state directory (`--state`,
/// `[catalog] state_dir`, or the default state directory), as `squall seed` made it.
#[derive(clap::Args, Debug)]
pub struct TorrentsArgs {
    #[command(subcommand)]
    pub command: TorrentsCommand,
    /// Admin endpoint of the seeder (its `--admin` / `[admin] listen`).
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub admin: Option<String>,
    /// The seeder's config file: finds the endpoint, the token file and the state directory.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The token file (default: `[admin] token_file`, else STATE_DIR/admin.token).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The seeder's state directory (where its admin.token lies).
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum TorrentsCommand {
    /// List torrents: info-hash, state, size, peers, uploaded, Gb/s now, request p50/p99
    /// (microseconds, since start), name.
    Ls {
        /// Only names containing this (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Only torrents in this state: verifying, seeding, incomplete, paused, errored,
        /// failed (`--state` names the state directory).
        #[arg(long, value_name = "STATE")]
        status: Option<String>,
        /// Only errored or failed torrents.
        #[arg(long)]
        errored: bool,
    },
    /// Add a .torrent whose content lies under DIR (single-file: DIR/NAME; multi-file:
    /// DIR/NAME/...). The seeder verifies it, then serves it.
    Add {
        #[arg(value_name = "FILE.torrent")]
        file: PathBuf,
        /// Directory holding the content; must be inside the seeder's allowed roots.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Remove a torrent: its peers drain (no new requests; queued blocks still go out), then
    /// close; its content is never touched.
    Rm { hash: String },
    /// Hash a torrent's content again.
    Recheck { hash: String },
    /// Stop serving a torrent (kept in the catalog, across restarts).
    Pause { hash: String },
    /// Serve a paused torrent again.
    Resume { hash: String },
}

/// Connect and I/O timeout of one request (an upload of a large .torrent included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows asked per page while `ls` walks the whole list.
const LS_PAGE_ROWS: usize = 1000;

struct Endpoint {
    addr: SocketAddr,
    token: Option<String>,
}

pub fn run(args: TorrentsArgs) -> Result<ExitCode, String> {
    let ep = endpoint(&args)?;
    match &args.command {
        TorrentsCommand::Ls {
            name,
            status,
            errored,
        } => ls(&ep, name, status, *errored, args.json),
        TorrentsCommand::Add { file, data } => {
            let bytes =
                std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            let data = std::fs::canonicalize(data)
                .map_err(|e| format!("--data {}: {e}", data.display()))?;
            let path = format!(
                "/api/v1/torrents?data={}",
                percent_encode(&data.display().to_string())
            );
            let v = call(&ep, "POST", &path, Some(&bytes))?;
            print_one(&v, args.json, "added");
            Ok(ExitCode::SUCCESS)
        }
        TorrentsCommand::Rm { hash } => {
            let v = call(&ep, "DELETE", &format!("/api/v1/torrents/{hash}"), None)?;
            if args.json {
                println!("{v}");
            } else {
                println!("removed {}", v["removed"].as_str().unwrap_or(hash));
            }
            Ok(ExitCode::SUCCESS)
        }
        TorrentsCommand::Recheck { hash } => action(&ep, hash, "recheck", args.json),
        TorrentsCommand::Pause { hash } => action(&ep, hash, "pause", args.json),
        TorrentsCommand::Resume { hash } => action(&ep, hash, "resume", args.json),
    }
}

fn action(ep: &Endpoint, hash: &str, what: &str, json: bool) -> Result<ExitCode, String> {
    let v = call(ep, "POST", &format!("/api/v1/torrents/{hash}/{what}"), None)?;
    print_one(&v, json, what);
    Ok(ExitCode::SUCCESS)
}

fn print_one(v: &serde_json::Value, json: bool, what: &str) {
    if json {
        println!("{v}");
    } else {
        println!(
            "{what} {} {} ({})",
            v["info_hash"].as_str().unwrap_or(""),
            v["name"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or("")
        );
    }
}

fn ls(
    ep: &Endpoint,
    name: &Option<String>,
    state: &Option<String>,
    errored: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let mut filter = String::new();
    if let Some(n) = name {
        filter.push_str(&format!("&name={}", percent_encode(n)));
    }
    if let Some(s) = state {
        filter.push_str(&format!("&state={}", percent_encode(s)));
    }
    if errored {
        filter.push_str("&errored=true");
    }
    let mut rows = Vec::new();
    loop {
        let path = format!(
            "/api/v1/torrents?offset={}&limit={LS_PAGE_ROWS}{filter}",
            rows.len()
        );
        let v = call(ep, "GET", &path, None)?;
        let page = v["torrents"].as_array().cloned().unwrap_or_default();
        let total = v["total"].as_u64().unwrap_or(0) as usize;
        let empty = page.is_empty();
        rows.extend(page);
        if empty || rows.len() >= total {
            break;
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print!("{}", table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human table of `ls`.
pub fn table(rows: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<40}  {:<10}  {:>10}  {:>5}  {:>12}  {:>7}  {:>8}  {:>8}  NAME\n",
        "INFO-HASH", "STATE", "SIZE MiB", "PEERS", "UPLOADED MiB", "Gb/s", "p50 us", "p99 us"
    );
    let mib = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    for r in rows {
        let mut state = r["state"].as_str().unwrap_or("").to_string();
        if let Some(done) = r["verified_bytes"].as_u64() {
            let size = r["size_bytes"].as_u64().unwrap_or(0).max(1);
            state = format!("{state} {}%", done * 100 / size);
        }
        out.push_str(&format!(
            "{:<40}  {:<10}  {:>10.1}  {:>5}  {:>12.1}  {:>7.3}  {:>8.0}  {:>8.0}  {}\n",
            r["info_hash"].as_str().unwrap_or(""),
            state,
            mib(&r["size_bytes"]),
            r["peers"].as_u64().unwrap_or(0),
            mib(&r["uploaded_bytes"]),
            num(&r["upload_bytes_per_sec"]) * 8.0 / 1e9,
            num(&r["request_p50_us"]),
            num(&r["request_p99_us"]),
            r["name"].as_str().unwrap_or("")
        ));
        if let Some(e) = r["error"].as_str() {
            out.push_str(&format!("{:<40}  ^ {e}\n", ""));
        }
    }
    out
}

fn endpoint(args: &TorrentsArgs) -> Result<Endpoint, String> {
    let config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            squall_engine::config_file::load(&p.display().to_string(), &text)?
        }
        None => SeedConfig::default(),
    };
    let admin = args
        .admin
        .clone()
        .unwrap_or_else(|| config.admin.listen.clone());
    if admin.trim().eq_ignore_ascii_case("off") {
        return Err(format!(
            "{}: [admin] listen = \"off\": the seeder has no admin endpoint; give --admin ADDR",
            args.config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    let addr = admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!("--admin {admin:?}: expected ADDR:PORT, e.g. {ADMIN_LISTEN_DEFAULT}")
        })?;
    let token = match std::env::var("SQUALL_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(t) => Some(t),
        None => match &config.admin.token {
            Some(t) => Some(t.clone()),
            None => {
                let state = args
                    .state
                    .clone()
                    .or_else(|| config.catalog.state_dir.clone())
                    .unwrap_or_else(super::seed::default_state_dir);
                let file = args
                    .token_file
                    .clone()
                    .or_else(|| config.admin.token_file.clone())
                    .unwrap_or_else(|| state.join(super::seed::ADMIN_TOKEN_FILE));
                read_token(&file)
            }
        },
    };
    Ok(Endpoint { addr, token })
}

/// The token file's token; None (and reads only) when it cannot be read.
fn read_token(file: &Path) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("no admin token from {}: {e}", file.display());
            None
        }
    }
}

/// One request; the JSON answer of a 2xx, else the API's `error` message with advice.
fn call(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<serde_json::Value, String> {
    let (status, body) = super::admin_client::request(
        ep.addr,
        ep.token.as_deref(),
        method,
        path,
        // Every request carries a body (empty for reads), as the API has always been sent.
        Some(body.unwrap_or(&[])),
        REQUEST_TIMEOUT,
        &format!(
            "is `squall seed` running with --admin {}? else give --admin ADDR or --config FILE",
            ep.addr
        ),
    )?;
    let body = body.as_str();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if (200..300).contains(&status) {
        return Ok(v);
    }
    let message = v["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().to_string());
    let hint = match status {
        401 => {
            " (the token comes from SQUALL_ADMIN_TOKEN, [admin] token, or the token file: \
                 give --config FILE, --state DIR or --token-file FILE)"
        }
        404 if message.starts_with("not found") => {
            " (this seeder has no runtime catalog API: is it an older squall?)"
        }
        _ => "",
    };
    Err(format!("{method} {path}: {status}: {message}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_progress_and_errors() {
        // Verifying rows show their percent; errored rows their reason on the next line.
        let rows = vec![
            serde_json::json!({"info_hash": "aa", "name": "one", "state": "verifying",
                "size_bytes": 200, "verified_bytes": 50, "peers": 0, "uploaded_bytes": 0}),
            serde_json::json!({"info_hash": "bb", "name": "two", "state": "errored",
                "size_bytes": 1 << 20, "peers": 3, "uploaded_bytes": 2 << 20,
                "upload_bytes_per_sec": 125_000_000.0, "request_p50_us": 180.0,
                "request_p99_us": 2500.0, "error": "file /d/x: missing"}),
        ];
        let t = table(&rows);
        assert!(t.contains("verifying 25%"), "{t}");
        assert!(t.contains("^ file /d/x: missing"), "{t}");
        let two = t.lines().nth(2).unwrap();
        assert!(two.contains("2.0    1.000       180      2500  two"), "{t}");
    }
}
