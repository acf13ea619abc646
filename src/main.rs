//! The `squall` command line: parse, load config, call into squall-engine. No seeding logic here.

mod cli;

use clap::{Parser, Subcommand};
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
}

/// Logs go to stderr (stdout carries results: listen addresses, magnets, JSON); the level
/// comes from SQUALL_LOG or RUST_LOG (e.g. `SQUALL_LOG=debug`), default `info`.
fn init_logging() {
    let filter = std::env::var("SQUALL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Make(args) => cli::make::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Seed(args) => cli::seed::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::CatalogCheck(args) => cli::catalog::run(args),
        Command::Stats(args) => cli::stats::run(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
