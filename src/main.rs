//! The `squall` command line: parse, load config, call into squall-engine. No seeding logic here.

mod cli;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Squall: a thread-per-core io_uring BitTorrent seeding appliance.
///
/// Quick start: `squall seed ./my-content` makes a torrent of each top-level file or
/// directory (cached in the state directory, never written into the content) and seeds them.
#[derive(Parser, Debug)]
#[command(name = "squall", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `human` (default) or `json` (one object per line, for log
    /// shippers). Also SQUALL_LOG_FORMAT.
    #[arg(long, global = true, value_enum, env = "SQUALL_LOG_FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such
    /// as `squall_engine::shard=debug`). Default: SQUALL_LOG, else RUST_LOG, else `info`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a .torrent from a file or directory.
    Make(cli::make::MakeArgs),
    /// Show what a .torrent contains (human summary or --json).
    Info(cli::info::InfoArgs),
    /// Seed torrents: a content directory (zero config) or a catalog of .torrent files.
    Seed(cli::seed::SeedArgs),
    /// Check a config file (`config check FILE`) or print the defaults (`config default`).
    Config(cli::config::ConfigArgs),
    /// Hash every piece of a torrent's content and report bad or missing pieces.
    Verify(cli::verify::VerifyArgs),
    /// Load a catalog and report counts, time and memory (measurement tool).
    #[command(name = "catalog-check", hide = true)]
    CatalogCheck(cli::catalog::CatalogCheckArgs),
    /// Live view of a running seeder (throughput, peers, latency, top torrents).
    Stats(cli::stats::StatsArgs),
    /// Write the man pages or print a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(cli::generate::GenerateArgs),
}

/// Logs go to stderr (stdout carries results: listen addresses, magnets, JSON); the level
/// comes from --log-level, else SQUALL_LOG or RUST_LOG (e.g. `SQUALL_LOG=debug`), else `info`.
fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("SQUALL_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    let result = match cli.command {
        Command::Make(args) => cli::make::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Seed(args) => cli::seed::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::CatalogCheck(args) => cli::catalog::run(args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Generate(args) => cli::generate::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
