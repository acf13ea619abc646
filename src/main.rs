//! The `squall` command line: parse, load config, call into squall-engine. No seeding logic here.

mod cli;
mod logging;

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
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, `off`, or a tracing
    /// filter such as `info,squall_engine::shard=debug`; `warning` means `warn`; anything
    /// else is refused). Default: SQUALL_LOG, else RUST_LOG, else `info`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Append log lines to FILE instead of stderr (no colour); SIGHUP reopens it, so
    /// logrotate can rename the file and signal. Final `error:` lines still go to stderr.
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<std::path::PathBuf>,
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
    /// Add, remove, pause, resume, recheck and list a running seeder's torrents (its API).
    Torrents(cli::torrents::TorrentsArgs),
    /// Write the man pages or print a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(cli::generate::GenerateArgs),
}

/// Logs go to stderr (stdout carries results: listen addresses, magnets, JSON) or to
/// `--log-file`; the level comes from --log-level, else SQUALL_LOG or RUST_LOG (e.g.
/// `SQUALL_LOG=debug`), else `info`. An unknown level is an error, not silence.
fn init_logging(cli: &Cli) -> Result<(), String> {
    let (value, source) = match (
        &cli.log_level,
        std::env::var("SQUALL_LOG"),
        std::env::var("RUST_LOG"),
    ) {
        (Some(l), _, _) => (l.clone(), "--log-level"),
        (None, Ok(l), _) => (l, "SQUALL_LOG"),
        (None, Err(_), Ok(l)) => (l, "RUST_LOG"),
        (None, Err(_), Err(_)) => ("info".to_string(), "the default"),
    };
    let filter = logging::check_filter(&value, source)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("log level `{value}` (from {source}): {e}"))?;
    let colour = cli.log_file.is_none()
        && logging::want_colour(
            logging::stderr_is_terminal(),
            std::env::var("NO_COLOR").ok().as_deref(),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    let _ = match (&cli.log_file, cli.log_format) {
        (None, LogFormat::Human) => builder.with_writer(std::io::stderr).try_init(),
        (None, LogFormat::Json) => builder.json().with_writer(std::io::stderr).try_init(),
        (Some(path), format) => {
            let file = logging::LogFile::open(path.clone())?;
            match format {
                LogFormat::Human => builder.with_writer(file).try_init(),
                LogFormat::Json => builder.json().with_writer(file).try_init(),
            }
        }
    };
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let (log_format, log_file) = (cli.log_format, cli.log_file.is_some());
    let result = match cli.command {
        Command::Make(args) => cli::make::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Seed(args) => cli::seed::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::CatalogCheck(args) => cli::catalog::run(args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Torrents(args) => cli::torrents::run(args),
        Command::Generate(args) => cli::generate::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            // In JSON the last line is a log object too; with a log file it is also kept
            // there, and stderr still tells whoever started the command.
            if log_format == LogFormat::Json || log_file {
                tracing::error!("{message}");
            }
            if log_format == LogFormat::Human || log_file {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}
