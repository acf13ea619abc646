//! squall-bench CLI: parse arguments, call into the library, print and write reports.
//!
//! Owns: argument parsing and exit codes (1 when any piece failed verification or the run
//! could not start).
//! Must never: contain benchmark logic; everything measurable lives in the library.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand};
use squall_bench::{report, scenario, RunOptions, RunReport};

// The same `generate` subcommand as squall's (man pages, completions for the .deb), one source
// file for both binaries rather than a crate of its own for ~40 lines.
#[path = "../../src/cli/generate.rs"]
mod generate;

#[derive(Parser)]
#[command(
    name = "squall-bench",
    version,
    about = "Capacity benchmark for BitTorrent seeders"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a seeder with a synthetic swarm.
    Run(RunArgs),
    /// Run a scenario file (configs/bench/*.toml) against a seeder.
    Scenario {
        file: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Override the scenario's duration.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Print a scenario's [data] as shell variables (for scripts/compare.sh).
    ScenarioData { file: PathBuf },
    /// Serve requests from memory (pattern content, no disk): the bench's own ceiling.
    NullSeeder {
        #[arg(long)]
        listen: SocketAddrV4,
        #[arg(long = "torrent")]
        torrent: Vec<PathBuf>,
        #[arg(long)]
        torrents: Option<PathBuf>,
    },
    /// Write SIZE bytes of the content the null seeder serves (so torrents made from it verify).
    GenContent {
        #[arg(long)]
        size_bytes: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Combine JSON results into one HTML report: LABEL=FILE.json ...
    Report {
        #[arg(long)]
        title: String,
        #[arg(long)]
        out: PathBuf,
        runs: Vec<String>,
    },
    /// RC4 alone over BYTES on one thread: CPU seconds per GB (the cipher's own cost, for
    /// comparing an --encrypt run with a plaintext one).
    Rc4Cost {
        #[arg(long, default_value_t = 2_000_000_000)]
        bytes: u64,
    },
    /// Write the man pages or print a shell's completions (for packaging).
    /// HTTP range-request load (pipelined keep-alive GETs of random ranges of one file),
    /// for comparing Squall's `--http` with nginx; prints one JSON line with requests/s,
    /// Gb/s, this generator's CPU seconds and the target's CPU seconds per GB.
    Http(HttpArgs),
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

#[derive(Args)]
struct HttpArgs {
    /// The HTTP server, IPv4 ADDR:PORT.
    #[arg(long)]
    target: SocketAddrV4,
    /// URL path of the file (e.g. /data.bin).
    #[arg(long)]
    path: String,
    /// The file's length in bytes (ranges are drawn inside it).
    #[arg(long)]
    file_len: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests in flight per connection (pipelined).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Bytes per range request.
    #[arg(long, default_value_t = 16384)]
    range_bytes: u64,
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// The server's PID, to report its CPU seconds per GB.
    #[arg(long)]
    target_pid: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct Common {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long = "torrent")]
    torrent: Vec<PathBuf>,
    #[arg(long)]
    torrents: Option<PathBuf>,
    /// Write the result as one JSON object.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Measure this process's CPU time (utime + stime) over the run.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Source addresses for the peers, e.g. 127.0.0.2-127.0.0.250.
    #[arg(long)]
    source_ips: Option<String>,
    /// Event-loop threads (default: the scenario's, or 1).
    #[arg(long)]
    threads: Option<usize>,
    /// Poll instead of sleeping when the next request (or dial) is due within this many
    /// microseconds. Keeps the bench's own timer and wake-up costs out of open-loop
    /// latency; each thread then keeps a core busy, so give it cores of its own (default:
    /// the scenario's, or 0 = always sleep).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Peers speak MSE/PE with RC4 only (as clients set to "require encryption"): the
    /// seeder's encrypted path, same swarm.
    #[arg(long)]
    encrypt: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 32)]
    peers: usize,
    #[arg(long, default_value_t = 64)]
    depth: usize,
    #[arg(long, default_value_t = 8)]
    duration: u64,
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Open loop: total requests per second (latency from intended send time).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "random")]
    pattern: String,
    #[arg(long, default_value = "full")]
    verify: String,
    /// After a full walk of its torrent a peer reconnects to a random other torrent.
    #[arg(long)]
    hop: bool,
    /// A peer leaves after this many bytes; a new one replaces it at once (or, with
    /// --join-rate, it is gone and frees its slot).
    #[arg(long)]
    leave_after_bytes: Option<u64>,
    /// Churn: new peers arrive at exactly this rate per second (open loop); --peers is then
    /// the max-concurrent-peers limit and arrivals beyond it are dropped and counted.
    #[arg(long)]
    join_rate: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("squall-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn torrents_of(
    common: &Common,
) -> Result<Vec<Arc<squall_engine::metainfo::torrent::Torrent>>, String> {
    let mut out = Vec::new();
    for p in &common.torrent {
        out.push(squall_bench::load_torrent(p)?);
    }
    if let Some(dir) = &common.torrents {
        out.extend(squall_bench::load_torrent_dir(dir)?);
    }
    Ok(out)
}

fn options_of(common: &Common) -> Result<RunOptions, String> {
    let mut opts = RunOptions::new(common.target, torrents_of(common)?);
    if let Some(s) = &common.source_ips {
        opts.source_ips = squall_bench::parse_ip_range(s)?;
    }
    opts.target_pid = common.target_pid;
    opts.encrypt = common.encrypt;
    Ok(opts)
}

fn finish(common: &Common, label: &str, r: RunReport) -> Result<ExitCode, String> {
    print!("{}", r.human());
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &common.report {
        let page = report::html(label, &[(label.to_string(), r.clone())]);
        std::fs::write(path, page).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if r.bad_pieces > 0 {
        eprintln!(
            "squall-bench: {} pieces failed SHA-1 verification",
            r.bad_pieces
        );
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn real_main(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Run(a) => {
            let mut opts = options_of(&a.common)?;
            opts.peers = a.peers;
            opts.depth = a.depth;
            opts.duration_secs = a.duration;
            opts.warmup_secs = a.warmup;
            opts.rate_per_sec = a.rate;
            opts.pattern = scenario::parse_pattern(&a.pattern)?;
            opts.verify = scenario::parse_verify(&a.verify)?;
            opts.hop = a.hop;
            opts.leave_after_bytes = a.leave_after_bytes;
            opts.join_rate_per_sec = a.join_rate;
            opts.threads = a.common.threads.unwrap_or(1);
            opts.spin_us = a.common.spin_us.unwrap_or(0);
            let label = format!("squall-bench run {}", a.common.target);
            let r = squall_bench::run(opts)?;
            finish(&a.common, &label, r)
        }
        Cmd::Scenario {
            file,
            common,
            duration,
        } => {
            let sc = scenario::load(&file)?;
            let mut opts = options_of(&common)?;
            sc.run.apply(&mut opts)?;
            if let Some(d) = duration {
                opts.duration_secs = d;
            }
            if let Some(t) = common.threads {
                opts.threads = t;
            }
            if let Some(s) = common.spin_us {
                opts.spin_us = s;
            }
            let label = format!("scenario {} -> {}", sc.name, common.target);
            let r = squall_bench::run(opts)?;
            finish(&common, &label, r)
        }
        Cmd::ScenarioData { file } => {
            let sc = scenario::load(&file)?;
            println!(
                "SC_NAME={} SC_TORRENTS={} SC_SIZE_BYTES={} SC_PIECE_LENGTH_BYTES={} \
                 SC_PEERS={} SC_DEPTH={} SC_MEMORY_LIMIT_BYTES={} SC_DROP_CACHES={} \
                 SC_FIO_CEILING={}",
                sc.name,
                sc.data.torrents,
                sc.data.size_bytes,
                sc.data.piece_length_bytes,
                sc.run.peers,
                sc.run.depth,
                sc.seeder.memory_limit_bytes.unwrap_or(0),
                u8::from(sc.seeder.drop_caches),
                u8::from(sc.seeder.fio_ceiling)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::NullSeeder {
            listen,
            torrent,
            torrents,
        } => {
            let mut list = Vec::new();
            for p in &torrent {
                list.push(squall_bench::load_torrent(p)?);
            }
            if let Some(dir) = &torrents {
                list.extend(squall_bench::load_torrent_dir(dir)?);
            }
            let seeder = squall_bench::NullSeeder::bind(listen, list)?;
            println!("listening on {}", seeder.local_addr());
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // Register the flag only; the loop notices it within 100 ms.
                let _ = signal_flag(sig, stop.clone());
            }
            let s = seeder.serve(stop)?;
            println!(
                "null seeder: {} connections, {} blocks, {} bytes",
                s.connections, s.blocks, s.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Http(a) => {
            let report = squall_bench::http::run(&squall_bench::http::HttpOptions {
                target: a.target,
                path: a.path,
                file_len_bytes: a.file_len,
                connections: a.connections,
                depth: a.depth,
                range_bytes: a.range_bytes,
                duration_secs: a.duration,
                target_pid: a.target_pid,
                seed: a.seed,
            })?;
            let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            println!("{line}");
            Ok(if report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::GenContent { size_bytes, out } => {
            let f = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            squall_bench::content::write_content(&mut w, size_bytes)
                .and_then(|_| std::io::Write::flush(&mut w))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate(args) => generate::run(args, Cli::command()),
        Cmd::Rc4Cost { bytes } => {
            let cpu = squall_bench::mse::rc4_cpu_secs_per_gb(bytes);
            println!("rc4_cpu_secs_per_gb {cpu:.4}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { title, out, runs } => {
            let mut list = Vec::new();
            for spec in &runs {
                let (label, file) = spec
                    .split_once('=')
                    .ok_or_else(|| format!("{spec:?}: expected LABEL=FILE.json"))?;
                let text =
                    std::fs::read_to_string(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
                let r: RunReport =
                    serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
                list.push((label.to_string(), r));
            }
            std::fs::write(&out, report::html(&title, &list))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn signal_flag(sig: libc::c_int, flag: Arc<AtomicBool>) -> Result<(), String> {
    signal_hook::flag::register(sig, flag)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
