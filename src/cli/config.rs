//! `squall config check FILE` and `squall config default`.

use std::path::PathBuf;
use std::process::ExitCode;

/// The fully commented default configuration (also shipped as configs/default.toml).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../configs/default.toml");

/// Check a config file, or print the default one.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and validate FILE, and check that the `[catalog]` directories it names exist
    /// and can be read: exit 0 when it is good, else print what is wrong, where (line and
    /// column) and what was expected, and exit 1.
    Check {
        /// TOML config file.
        file: PathBuf,
        /// Check only the text (keys, types, values), not the directories it names: for a
        /// config written for another machine (e.g. configs/ in a checkout).
        #[arg(long)]
        syntax_only: bool,
    },
    /// Print the default configuration, every key with its default and meaning.
    Default,
}

pub fn run(args: ConfigArgs) -> Result<ExitCode, String> {
    match args.command {
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file, syntax_only } => {
            let label = file.display().to_string();
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{label}: cannot read: {e}"))?;
            let config = squall_engine::config_file::load(&label, &text)?;
            // Relative directories are taken from where `config check` runs, as `squall seed`
            // would take them.
            if !syntax_only {
                squall_engine::config_file::check_paths(&label, &text, &config)?;
            }
            println!("{label}: ok");
            Ok(ExitCode::SUCCESS)
        }
    }
}
