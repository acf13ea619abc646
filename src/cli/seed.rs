//! `squall seed`: load (or make) the catalog, start the shards, run until SIGINT/SIGTERM.
//!
//! Owns: the two ways to name what to seed (a catalog of .torrent files plus a data dir, or
//! zero config: a content directory whose top-level entries each become a torrent, made once
//! and cached in the state directory), building the catalog again on SIGHUP, printing what is
//! seeded, and turning signals into the flags the engine's control loop (`control::Control`)
//! polls. Must never: write into the content directory, or do the control plane's work
//! (stats, health, trackers, catalog swaps live in `squall_engine::control`).

use squall_engine::catalog::{Catalog, CatalogOptions, CatalogTorrent, VerifyPolicy};
use squall_engine::config::AdminConfig;
use squall_engine::config::{EngineConfig, SeedConfig, ServeMode, ADMIN_LISTEN_DEFAULT};
use squall_engine::config_file::check_dir;
use squall_engine::control::auth::load_or_create_token;
use squall_engine::control::runtime::RuntimeSetup;
use squall_engine::control::{AdminSetup, CatalogRebuild, Control, ControlSetup};
use squall_engine::make::make_torrent;
use squall_engine::metainfo::create::{list_files, CreateOptions};
use squall_engine::metainfo::{torrent, Magnet};
use squall_engine::stats::catalog_health::SkippedRow;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Seed torrents to BitTorrent peers.
///
/// No arguments: seeds a built-in 64 MiB sample (generated once in the state directory), so
/// `squall seed` alone shows the whole path working.
///
/// Zero config: `squall seed ./content` makes one torrent per top-level file or directory of
/// ./content (cached in the state directory; nothing is written into ./content) and seeds
/// them, printing each torrent's info-hash and a magnet link that points at this seeder.
///
/// Catalog: `squall seed --torrents DIR --data DIR` seeds every *.torrent in DIR whose content
/// is under --data (single-file: DATA/NAME; multi-file: DATA/NAME/...). Pieces are verified
/// once; the result is kept in the state directory, so restarts skip unchanged files.
///
/// An empty catalog is not an error: squall warns and serves nothing until torrents are
/// added and it gets SIGHUP. Under systemd (`Type=notify`) it sends READY=1 once it serves.
///
/// Stop with Ctrl-C or SIGTERM: peers are closed, resume state is kept, exit code 0.
#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// Content directory for zero-config seeding (each top-level entry becomes a torrent).
    #[arg(value_name = "CONTENT_DIR", conflicts_with_all = ["torrents", "data"])]
    pub content: Option<PathBuf>,
    /// Directory of .torrent files to seed (with --data).
    #[arg(long, value_name = "DIR", requires = "data")]
    pub torrents: Option<PathBuf>,
    /// Directory holding the torrents' content (with --torrents).
    #[arg(long, value_name = "DIR", requires = "torrents")]
    pub data: Option<PathBuf>,
    /// Address to listen on; repeatable. Default: 0.0.0.0:6881 and [::]:6881 (when IPv6
    /// exists). Port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR:PORT", value_parser = squall_engine::config_file::parse_socket_addr)]
    pub listen: Vec<SocketAddr>,
    /// Shard threads, one io_uring each (default: one per online CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Where resume state and zero-config torrents live. Default: $XDG_STATE_HOME/squall or
    /// ~/.local/state/squall.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// How blocks go from disk to socket: copy (default; fastest here: blocks already in the
    /// page cache go from it to the socket in one copy, others are read first), zerocopy
    /// (SendZc; adaptive: falls back per connection when the kernel copies), splice (file ->
    /// pipe -> socket).
    #[arg(long, value_name = "MODE")]
    pub serve: Option<ServeMode>,
    /// TOML config file (see `configs/default.toml`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Re-hash every piece at start even when the resume state says the files are unchanged.
    #[arg(long)]
    pub recheck: bool,
    /// Print a one-line summary every N seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub summary_secs: u64,
    /// The address peers reach this box at (IP, or IP:PORT when a NAT maps another port),
    /// put in the printed magnet links as `x.pe`. Default: the listen address, with a
    /// wildcard shown as loopback (only this machine can use such a link).
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub public_addr: Option<String>,
    /// Admin endpoint (/metrics, /stats, /health): ADDR:PORT or "off". Default: config
    /// `[admin] listen`, else 127.0.0.1:7881. Port 0 picks a free port (printed as
    /// `admin on ADDR`). A non-loopback address needs `[admin] token` in the config.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub admin: Option<String>,
    /// Also serve the content over HTTP on this address (web seeds, BEP 19, and plain range
    /// downloads); repeatable. URLs: /NAME[/PATH] or /INFOHASH/NAME[/PATH]. Default: config
    /// `[http] listen`, else off. Printed as `http on ADDR`; magnets then carry `ws=`.
    #[arg(long, value_name = "ADDR:PORT", value_parser = squall_engine::config_file::parse_socket_addr)]
    pub http: Vec<SocketAddr>,
    /// Announce every public torrent to the Mainline DHT (BEP 5), so trackerless magnets
    /// find this seeder. Default: config `[dht] enabled`, else off.
    #[arg(long, conflicts_with = "no_dht")]
    pub dht: bool,
    /// Do not join the DHT, whatever the config says.
    #[arg(long)]
    pub no_dht: bool,
}

/// Where the catalog comes from; kept so SIGHUP can build it again.
enum CatalogSource {
    /// Zero config (a content directory, or the built-in sample).
    Content {
        dir: PathBuf,
        state_dir: PathBuf,
        recheck: bool,
    },
    /// A directory of .torrent files plus a data directory.
    Torrents(CatalogOptions),
}

/// Trackers of zero-config torrents, for their magnet links.
type MadeTrackers = HashMap<squall_engine::metainfo::InfoHash, Vec<String>>;

impl CatalogSource {
    fn from_args(args: &SeedArgs, file: &SeedConfig, state_dir: &Path) -> Result<Self, String> {
        // Each directory is checked where it was named, so the error says which flag or key.
        let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>, flag_name: &str, key_name| match (
            flag, key,
        ) {
            (Some(p), _) => Some((p.clone(), flag_name.to_string())),
            (None, Some(p)) => Some((p.clone(), format!("[catalog] {key_name} ="))),
            (None, None) => None,
        };
        let torrents = pick(
            &args.torrents,
            &file.catalog.torrents_dir,
            "--torrents",
            "torrents_dir",
        );
        let data = pick(&args.data, &file.catalog.data_dir, "--data", "data_dir");
        if let Some(content) = &args.content {
            return Ok(CatalogSource::Content {
                dir: content.clone(),
                state_dir: state_dir.to_path_buf(),
                recheck: args.recheck,
            });
        }
        match (torrents, data) {
            (None, None) => Ok(CatalogSource::Content {
                dir: sample_content(state_dir)?,
                state_dir: state_dir.to_path_buf(),
                recheck: args.recheck,
            }),
            (Some((torrents_dir, torrents_named)), Some((data_dir, data_named))) => {
                check_dir(&torrents_dir, &torrents_named, "the .torrent files")?;
                check_dir(&data_dir, &data_named, "the torrents' content")?;
                Ok(CatalogSource::Torrents(CatalogOptions {
                    torrents_dir,
                    data_dir,
                    state_dir: state_dir.to_path_buf(),
                    hash_threads: 0,
                    verify: if args.recheck {
                        VerifyPolicy::Always
                    } else {
                        VerifyPolicy::IfChanged
                    },
                }))
            }
            _ => Err(
                "give both --torrents DIR and --data DIR (or [catalog] torrents_dir and \
                      data_dir in the config), or a content directory (`squall seed ./content`)"
                    .into(),
            ),
        }
    }

    /// The catalog, the zero-config trackers, and what was left out (the catalog load has
    /// logged each skip once already).
    fn build(&self) -> Result<(Catalog, MadeTrackers, Vec<SkippedRow>), String> {
        match self {
            CatalogSource::Content {
                dir,
                state_dir,
                recheck,
            } => zero_config_catalog(dir, state_dir, *recheck),
            CatalogSource::Torrents(opts) => {
                let bar = super::load_bar::LoadBar::new();
                let loaded = Catalog::load(opts, &|done, total| bar.update(done, total));
                drop(bar);
                let (catalog, report) = loaded.map_err(|e| {
                    format!(
                        "{e} (check --torrents and --data, or [catalog] torrents_dir and data_dir)"
                    )
                })?;
                Ok((catalog, HashMap::new(), skipped_rows(report.skipped)))
            }
        }
    }
}

pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("squall");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/state/squall");
    }
    PathBuf::from("/var/lib/squall")
}

fn load_config(path: &Path) -> Result<SeedConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    squall_engine::config_file::load(&path.display().to_string(), &text)
}

pub fn run(args: SeedArgs) -> Result<ExitCode, String> {
    let file_config = match &args.config {
        Some(p) => load_config(p)?,
        None => SeedConfig::default(),
    };
    let mut config: EngineConfig = file_config.engine.clone();
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    } else if args.config.is_none() {
        config.listen = default_listen();
    }
    if let Some(n) = args.shards {
        if n == 0 {
            return Err("--shards 0: give at least 1 (or leave it out for one per CPU)".into());
        }
        config.shards = n;
    }
    if let Some(mode) = args.serve {
        config.serve_mode = mode;
    }
    config.http = file_config.http.clone();
    if !args.http.is_empty() {
        config.http.listen = args.http.clone();
    }
    config.validate().map_err(|e| format!("config: {e}"))?;
    let mut admin_config = file_config.admin.clone();
    if let Some(a) = &args.admin {
        admin_config.listen = a.clone();
    }
    let mut dht_config = file_config.dht.clone();
    if args.dht || args.no_dht {
        dht_config.enabled = args.dht;
    }
    dht_config.validate().map_err(|e| format!("config: {e}"))?;
    let admin_addr = admin_config
        .listen_addr()
        .map_err(|e| format!("admin: {e}"))?;
    // The built-in default port may be taken (another squall, a test); that is a warning.
    // An address the operator chose must work.
    let admin_is_default = args.admin.is_none() && admin_config.listen == ADMIN_LISTEN_DEFAULT;
    let state_dir = args
        .state
        .clone()
        .or_else(|| file_config.catalog.state_dir.clone())
        .unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        format!(
            "cannot create the state directory {}: {e} (choose another with --state)",
            state_dir.display()
        )
    })?;
    // Held until `run` returns: one squall per state directory (resume files, made torrents).
    let _state_lock = squall_engine::instance::StateLock::acquire(&state_dir)?;

    let started = Instant::now();
    let source = CatalogSource::from_args(&args, &file_config, &state_dir)?;
    let (catalog, made, skipped) = source.build()?;
    if catalog.torrents().is_empty() {
        // Not an error: a service waits for the operator to add torrents and send SIGHUP
        // (a unit with Restart=on-failure would otherwise loop).
        tracing::warn!(
            skipped = skipped.len(),
            "no torrent to seed yet: add .torrent files (or content) and send SIGHUP \
             (`systemctl reload squall`); serving nothing until then"
        );
    }
    let mut source = SeedSource { source, skipped };
    tracing::info!(
        torrents = catalog.torrents().len(),
        secs = started.elapsed().as_secs_f64(),
        "catalog loaded"
    );

    let catalog = Arc::new(catalog);
    let admin = admin_addr
        .map(|listen| admin_setup(&admin_config, listen, admin_is_default, &state_dir))
        .transpose()?;
    // The API may add torrents whose content lies under the catalog's data directory (or the
    // zero-config content directory) and under `[admin] data_roots`.
    let mut data_roots = admin_config.data_roots.clone();
    match &source.source {
        CatalogSource::Torrents(opts) => data_roots.push(opts.data_dir.clone()),
        CatalogSource::Content { dir, .. } => data_roots.push(dir.clone()),
    }
    let api = admin.as_ref().map(|_| RuntimeSetup {
        state_dir: state_dir.clone(),
        data_roots,
    });
    let mut control = Control::start(
        ControlSetup {
            engine: config.clone(),
            admin,
            tracker: file_config.tracker.clone(),
            summary_secs: args.summary_secs,
            api,
        },
        catalog.clone(),
    )?;
    control.set_skipped(source.skipped.clone());
    // Handlers go in before `ready` is printed: a supervisor (or test) that sends SIGHUP as
    // soon as it reads `ready` must not hit the default action, which ends the process.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| format!("cannot install signal handler: {e}"))?;
    let mut out = std::io::stdout().lock();
    for addr in control.local_addrs() {
        let _ = writeln!(out, "listening on {addr}");
    }
    if let Some(addr) = control.admin_addr() {
        let _ = writeln!(out, "admin on {addr}");
    }
    for addr in control.http_addrs() {
        let _ = writeln!(out, "http on {addr}");
    }
    let web_seed_base = control
        .http_addrs()
        .first()
        .map(|a| format!("http://{}/", display_peer_addr(a)));
    control.start_dht(&dht_config, Some(state_dir.clone()))?;
    let _ = writeln!(out, "{}", dht_line(&dht_config, &catalog));
    let listen_addr = control.local_addrs().first().copied();
    let peer_addr = match (&args.public_addr, listen_addr) {
        (Some(public), Some(listen)) => Some(public_peer_addr(public, listen.port())?),
        (None, Some(listen)) => Some(display_peer_addr(&listen)),
        (_, None) => None,
    };
    let peer_is_loopback = peer_addr
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .is_some_and(|a| a.ip().is_loopback());
    let mut unreachable_magnets = 0usize;
    for t in catalog.torrents() {
        let trackers = made.get(&t.info_hash).cloned().unwrap_or_default();
        // The DHT finds a public torrent's seeder by the address peers see, not the magnet's.
        let in_dht = dht_config.enabled && !t.private;
        if peer_is_loopback && trackers.is_empty() && t.trackers.is_empty() && !in_dht {
            unreachable_magnets += 1;
        }
        let magnet = Magnet {
            info_hash: t.info_hash,
            display_name: Some(t.name.clone()),
            trackers,
            peers: peer_addr.iter().cloned().collect(),
        };
        // A v2-only torrent's 20-byte hash is its truncated v2 hash: it has no v1 half.
        let has_v1 = t.info_hash_v2.is_none_or(|v2| v2[..20] != t.info_hash.0);
        let uri = squall_engine::metainfo::magnet::with_v2_topic(
            magnet.to_uri(),
            &t.info_hash,
            t.info_hash_v2,
            has_v1,
        );
        let uri = match &web_seed_base {
            // BEP 19 in a magnet: a URL ending in `/` gets the torrent's name (and paths)
            // appended, so the info-hash prefix names exactly this torrent.
            Some(base) => {
                let ws = format!("{base}{}/", squall_engine::http::index::hex(&t.info_hash.0));
                format!(
                    "{uri}&ws={}",
                    squall_engine::http::index::encode_segment(&ws)
                )
            }
            None => uri,
        };
        let _ = writeln!(out, "seeding {} {} {}", t.info_hash, t.name, uri);
    }
    if unreachable_magnets > 0 {
        // Neither a tracker nor the DHT: such a link finds no peer but on this machine.
        tracing::warn!(
            "{unreachable_magnets} magnet link(s) carry only the loopback address {} and no \
             tracker: only this machine can use them. Give --public-addr ADDR (the address \
             peers reach this box at), add trackers to the torrents, or turn the DHT on \
             (--dht)",
            peer_addr.as_deref().unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "ready: {} torrent(s), {} shard(s), serve mode {}",
        catalog.torrents().len(),
        control.shard_count(),
        config.serve_mode.as_str()
    );
    let _ = out.flush();
    drop(out);
    // After the catalog loaded and the listeners accept: systemd (Type=notify) starts
    // dependants and `systemctl start` returns only now.
    super::notify::notify("READY=1");

    control.run(&stop, &reload, &mut source)?;
    super::notify::notify("STOPPING=1");
    control.shutdown()?;
    Ok(ExitCode::SUCCESS)
}

/// The admin endpoint's setup: the token from `[admin] token` (guards every route, as it always
/// did) or else from the token file (created on first start; guards `/api/v1/` changes, and
/// reads too when the listener is not loopback).
fn admin_setup(
    admin: &AdminConfig,
    listen: SocketAddr,
    optional: bool,
    state_dir: &Path,
) -> Result<AdminSetup, String> {
    let (token, reads_need_token) = match &admin.token {
        Some(t) => (t.clone(), true),
        None => {
            let path = admin
                .token_file
                .clone()
                .unwrap_or_else(|| state_dir.join(ADMIN_TOKEN_FILE));
            (
                load_or_create_token(&path).map_err(|e| format!("admin: {e}"))?,
                !listen.ip().is_loopback(),
            )
        }
    };
    Ok(AdminSetup {
        listen,
        token: Some(token),
        optional,
        reads_need_token,
        auth_failures_per_min_max: admin.auth_failures_per_min_max,
        api_body_bytes_max: admin.api_body_bytes_max,
    })
}

/// The token file's name in the state directory when `[admin] token_file` is not set.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The catalog's source and what its latest build left out.
struct SeedSource {
    source: CatalogSource,
    skipped: Vec<SkippedRow>,
}

/// SIGHUP builds the catalog again the way it was first built; torrents it adds are printed
/// like the first ones (without a magnet link).
impl CatalogRebuild for SeedSource {
    fn rebuild(&mut self) -> Result<Catalog, String> {
        let (catalog, _, skipped) = self.source.build()?;
        self.skipped = skipped;
        Ok(catalog)
    }

    fn on_added(&mut self, t: &CatalogTorrent) {
        println!("seeding {} {}", t.info_hash, t.name);
    }

    fn skipped(&self) -> Vec<SkippedRow> {
        self.skipped.clone()
    }
}

fn skipped_rows(list: Vec<(PathBuf, String)>) -> Vec<SkippedRow> {
    list.into_iter()
        .map(|(file, reason)| SkippedRow { file, reason })
        .collect()
}

/// The one line that says whether this run announces to the DHT.
fn dht_line(dht: &squall_engine::dht::DhtConfig, catalog: &Catalog) -> String {
    if !dht.enabled {
        return "dht: off (trackerless magnets will not find this seeder; --dht or [dht] \
                enabled = true to announce)"
            .to_string();
    }
    let public = squall_engine::dht::public_torrents(catalog).len();
    let private = catalog.torrents().len() - public;
    format!(
        "dht: on, announcing {public} public torrent(s) from UDP {} ({private} private not \
         announced)",
        dht.listen
    )
}

/// 0.0.0.0:6881, plus [::]:6881 when this machine has IPv6.
fn default_listen() -> Vec<SocketAddr> {
    let mut v = vec![SocketAddr::from(([0, 0, 0, 0], 6881))];
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        v.push("[::]:6881".parse().unwrap_or(v[0]));
    }
    v
}

/// `--public-addr`: an IP (the listen port is added) or IP:PORT, as the magnet's `x.pe`.
fn public_peer_addr(public: &str, listen_port: u16) -> Result<String, String> {
    if let Ok(ip) = public.trim().parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, listen_port).to_string());
    }
    squall_engine::config_file::parse_socket_addr(public)
        .map(|a| a.to_string())
        .map_err(|why| format!("--public-addr {public}: {why}"))
}

/// The address a peer on this machine can dial: a wildcard becomes loopback.
fn display_peer_addr(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => format!("127.0.0.1:{}", v4.port()),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => format!("[::1]:{}", v6.port()),
        other => other.to_string(),
    }
}

/// Zero config: one torrent per top-level entry of `content`, made once and cached in
/// `<state>/zero-config/` with a fingerprint (paths, sizes, mtimes) that says when to remake.
fn zero_config_catalog(
    content: &Path,
    state_dir: &Path,
    recheck: bool,
) -> Result<(Catalog, MadeTrackers, Vec<SkippedRow>), String> {
    let content = content.canonicalize().map_err(|e| {
        format!(
            "{}: {e} (give an existing directory to seed)",
            content.display()
        )
    })?;
    if !content.is_dir() {
        return Err(format!(
            "{}: not a directory (give a directory whose entries to seed)",
            content.display()
        ));
    }
    let cache = state_dir.join("zero-config");
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&content)
        .map_err(|e| format!("cannot list {}: {e}", content.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| !n.starts_with('.'))
                .unwrap_or(false)
        })
        .collect();
    entries.sort();
    let mut list = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |entry: &Path, reason: String| {
        tracing::warn!("skipping {}: {reason}", entry.display());
        skipped.push(SkippedRow {
            file: entry.to_path_buf(),
            reason,
        });
    };
    for entry in entries {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let listed = match list_files(&entry) {
            Ok(l) => l,
            Err(e) => {
                skip(&entry, e.to_string());
                continue;
            }
        };
        if listed.iter().map(|f| f.2).sum::<u64>() == 0 {
            skip(&entry, "no data (empty)".into());
            continue;
        }
        let fingerprint = fingerprint(&listed);
        let torrent_path = cache.join(format!("{}.torrent", sanitize(&name)));
        let print_path = cache.join(format!("{}.fingerprint", sanitize(&name)));
        let cached = std::fs::read_to_string(&print_path)
            .ok()
            .filter(|f| *f == fingerprint);
        let reuse = cached
            .and_then(|_| std::fs::read(&torrent_path).ok())
            .and_then(|b| torrent::parse(&b).ok());
        let t = match reuse {
            Some(t) => t,
            None => {
                tracing::info!("making a torrent of {} ...", entry.display());
                let opts = CreateOptions {
                    piece_length: None,
                    trackers: Vec::new(),
                    private: false,
                    comment: None,
                    web_seeds: Vec::new(),
                    created_by: format!("squall/{}", env!("CARGO_PKG_VERSION")),
                    creation_date: None,
                };
                let (t, bytes) = make_torrent(&entry, &opts, 0, &|_, _| {})
                    .map_err(|e| format!("{}: {e}", entry.display()))?;
                write_atomic(&torrent_path, &bytes)?;
                write_atomic(&print_path, fingerprint.as_bytes())?;
                t
            }
        };
        list.push((t, torrent_path));
    }
    let trackers = list
        .iter()
        .map(|(t, _)| (t.info_hash, t.trackers.iter().flatten().cloned().collect()))
        .collect();
    let verify = if recheck {
        VerifyPolicy::Always
    } else {
        VerifyPolicy::IfChanged
    };
    let opts = CatalogOptions {
        torrents_dir: cache.clone(),
        data_dir: content.clone(),
        state_dir: state_dir.to_path_buf(),
        hash_threads: 0,
        verify,
    };
    let (catalog, report) = Catalog::from_torrents(list, &opts).map_err(|e| e.to_string())?;
    skipped.extend(skipped_rows(report.skipped));
    Ok((catalog, trackers, skipped))
}

/// Bytes of the built-in sample: big enough to see throughput, small enough to make fast.
pub const SAMPLE_LEN_BYTES: usize = 64 << 20;

/// `<state>/sample/` holding one deterministic pseudo-random file (made once).
fn sample_content(state_dir: &Path) -> Result<PathBuf, String> {
    let dir = state_dir.join("sample");
    let file = dir.join("squall-sample.bin");
    let ok = std::fs::metadata(&file)
        .map(|m| m.len() == SAMPLE_LEN_BYTES as u64)
        .unwrap_or(false);
    if !ok {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        tracing::info!(
            "writing a {} MiB sample to {} ...",
            SAMPLE_LEN_BYTES >> 20,
            file.display()
        );
        let mut bytes = Vec::with_capacity(SAMPLE_LEN_BYTES);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while bytes.len() < SAMPLE_LEN_BYTES {
            // xorshift64: deterministic, so every machine makes the same sample torrent.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        write_atomic(&file, &bytes)?;
    }
    Ok(dir)
}

fn fingerprint(listed: &[(Vec<String>, PathBuf, u64)]) -> String {
    let mut s = String::new();
    for (components, disk, len) in listed {
        let mtime = std::fs::metadata(disk)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        s.push_str(&format!("{}\t{len}\t{mtime}\n", components.join("/")));
    }
    s
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    squall_engine::storage::write_atomic(path, bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addr_takes_an_ip_or_an_address() {
        // An IP gets the listen port; IP:PORT is kept (a NAT's port); a name is refused.
        assert_eq!(
            public_peer_addr("203.0.113.5", 6881).unwrap(),
            "203.0.113.5:6881"
        );
        assert_eq!(
            public_peer_addr("2001:db8::1", 6881).unwrap(),
            "[2001:db8::1]:6881"
        );
        assert_eq!(
            public_peer_addr("203.0.113.5:40000", 6881).unwrap(),
            "203.0.113.5:40000"
        );
        let err = public_peer_addr("seed.example.org", 6881).unwrap_err();
        assert!(err.starts_with("--public-addr seed.example.org"), "{err}");
    }
}
