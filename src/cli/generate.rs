//! `squall generate man DIR` and `squall generate completions SHELL` (hidden from help, man
//! pages and completions): the man pages and shell completions that scripts/package.sh ships.
//!
//! Owns: rendering the clap definition of `main.rs` as roff (clap_mangen) and as completion
//! scripts (clap_complete). Must never: describe the command line by hand; whatever it writes
//! comes from the same `Command` that parses the arguments, so the two cannot drift apart.
//! Why a subcommand and not an xtask or build.rs: docs/architecture.md, section Packaging.

use clap::{Args, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Write one man page per command (squall.1, squall-seed.1, ...) into DIR (created if
    /// missing).
    Man { dir: PathBuf },
    /// Print the completion script for SHELL on stdout.
    Completions { shell: clap_complete::Shell },
}

/// `cmd` is the whole command line's definition (`Cli::command()`), not this subcommand's.
pub fn run(args: GenerateArgs, cmd: clap::Command) -> Result<ExitCode, String> {
    match args.what {
        What::Man { dir } => write_man_pages(cmd, &dir)?,
        What::Completions { shell } => {
            // Rendered into memory first: clap_complete panics on a failed write, and a
            // closed pipe (`| head`) is an error to report, not a crash.
            let script = completions(cmd, shell);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the {shell} completions to stdout: {e}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The completion script of `cmd` for `shell`, without hidden subcommands.
pub fn completions(cmd: clap::Command, shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = without_hidden_subcommands(cmd);
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut script);
    script
}

/// The binary this file is compiled into (squall or squall-bench, which share it).
const BIN_NAME: &str = env!("CARGO_BIN_NAME");

/// clap_complete offers hidden subcommands (`generate`, `catalog-check`) like visible ones,
/// and clap cannot remove a subcommand, so this copies the built command without them: its
/// arguments (help and version included, hence the auto flags off) and visible subcommands,
/// less the `help` subcommand, which clap makes anew from the visible ones.
fn without_hidden_subcommands(mut cmd: clap::Command) -> clap::Command {
    cmd.build();
    let mut visible = clap::Command::new(BIN_NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args(cmd.get_arguments().cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .cloned(),
        );
    if let Some(about) = cmd.get_about() {
        visible = visible.about(about.clone());
    }
    visible
}

/// One page per visible command (hidden ones, this one, get none), named as clap_mangen
/// names them (`squall-config-check.1`); the top page also says where the package puts
/// things.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create man page directory {}: {e}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_page(&cmd, dir, true)
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))
}

fn write_page(cmd: &clap::Command, dir: &Path, top: bool) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    if top {
        page.extend_from_slice(top_page_extra().as_bytes());
    }
    std::fs::write(dir.join(man.get_filename()), page)
}

/// Roff sections clap has no place for: the files of the Debian package (scripts/package.sh).
fn top_page_extra() -> &'static str {
    if BIN_NAME == "squall" {
        r#".SH FILES
.TP
.I /etc/squall/squall.toml
The configuration squall.service runs with (\fBsquall seed \-\-config\fR); check edits with
\fBsquall config check\fR.
.TP
.I /var/lib/squall
State: resume files, and the torrents \fBsquall seed\fR makes of a content directory.
.TP
.I /lib/systemd/system/squall.service
The hardened systemd unit; enable it with \fBsystemctl enable \-\-now squall\fR.
.TP
.I /usr/share/doc/squall/operations.md
Operating guide: system requirements, limits, metrics, alerts, troubleshooting.
.SH SEE ALSO
\fBsquall\-bench\fR(1), \fBsystemctl\fR(1)
"#
    } else {
        r#".SH SEE ALSO
\fBsquall\fR(1)
"#
    }
}
