//! One module per subcommand. Each exposes `XArgs` (clap) and `run(XArgs) -> Result<ExitCode, String>`;
//! the `String` error is printed as `error: ...` and must say what was wrong, where, and what to do.

pub mod admin_client;
pub mod catalog;
pub mod config;
pub mod generate;
pub mod info;
pub mod load_bar;
pub mod make;
pub mod notify;
pub mod seed;
pub mod stats;
pub mod torrents;
pub mod verify;
