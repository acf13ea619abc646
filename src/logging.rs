//! Logging set-up for every subcommand: level filter, format, colour, and the log file.
//!
//! Owns: checking `--log-level` (and SQUALL_LOG / RUST_LOG) against the levels tracing knows,
//! deciding colour (only on a terminal, never with NO_COLOR), and `--log-file` with reopen on
//! SIGHUP (for logrotate's rename-then-HUP). Must never: print log lines itself (everything
//! goes through the tracing subscriber, so `--log-format json` stays one object per line) or
//! lose a line because a reopen failed (the old file is kept and the failure is reported).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// The level names a filter may use (`warning` is accepted and means `warn`).
pub const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a level or filter and returns it with `warning` spelled `warn`. A bare word must be
/// a level: `verbose` or `warnings` would otherwise be read as a target name and silence
/// every log line. `source` names where the value came from, for the message.
pub fn check_filter(value: &str, source: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for directive in value.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let (target, level) = match directive.rsplit_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        let level = match level.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_string(),
            l if LEVELS.contains(&l) => l.to_string(),
            _ => {
                return Err(format!(
                    "unknown log level `{level}` (from {source}): use one of {}, or a filter \
                     such as `info,squall_engine::shard=debug` (`warning` means `warn`)",
                    LEVELS.join(", ")
                ))
            }
        };
        out.push(match target {
            Some(t) => format!("{t}={level}"),
            None => level,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "empty log level (from {source}): use one of {}",
            LEVELS.join(", ")
        ));
    }
    Ok(out.join(","))
}

/// Colour only for a person at a terminal: not in files, pipes or journald, and never when
/// NO_COLOR is set to anything non-empty (https://no-color.org).
pub fn want_colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// A log file opened for appending, opened again at the next line after SIGHUP, so logrotate
/// can rename it and signal.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    reopen: Arc<AtomicBool>,
}

fn open_log(path: &PathBuf) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl LogFile {
    /// Opens `path` and registers SIGHUP to reopen it.
    pub fn open(path: PathBuf) -> Result<LogFile, String> {
        let file = open_log(&path).map_err(|e| {
            format!(
                "--log-file {}: cannot open for appending: {e} (check the directory exists and is writable)",
                path.display()
            )
        })?;
        let reopen = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, reopen.clone())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        Ok(LogFile {
            path,
            file: Mutex::new(file),
            reopen,
        })
    }

    fn write_line(&self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if self.reopen.swap(false, Ordering::Relaxed) {
            match open_log(&self.path) {
                Ok(f) => *file = f,
                Err(e) => {
                    // Keep writing to the old file; say so in it and on stderr once.
                    let note = format!(
                        "squall: cannot reopen the log file {}: {e}; still writing to the old one\n",
                        self.path.display()
                    );
                    let _ = file.write_all(note.as_bytes());
                    eprint!("{note}");
                }
            }
        }
        file.write_all(buf)?;
        Ok(buf.len())
    }
}

pub struct LogFileWriter<'a>(&'a LogFile);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_line(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self)
    }
}

/// True when stderr is a terminal (for `want_colour`).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_are_checked() {
        // Known levels pass (any case), `warning` becomes `warn`, filters keep their targets,
        // and a bare unknown word is refused with the list of levels.
        assert_eq!(check_filter("INFO", "x").unwrap(), "info");
        assert_eq!(check_filter("warning", "x").unwrap(), "warn");
        assert_eq!(
            check_filter("info, squall_engine::shard=warning", "x").unwrap(),
            "info,squall_engine::shard=warn"
        );
        let err = check_filter("verbose", "--log-level").unwrap_err();
        assert!(
            err.contains("`verbose`")
                && err.contains("--log-level")
                && err.contains("error, warn, info, debug, trace, off"),
            "{err}"
        );
        assert!(check_filter("squall=loud", "x").is_err());
        assert!(check_filter(" , ", "x").is_err());
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        // Pipes, files and journald get no escapes; NO_COLOR turns them off at a terminal.
        assert!(want_colour(true, None));
        assert!(want_colour(true, Some("")));
        assert!(!want_colour(true, Some("1")));
        assert!(!want_colour(false, None));
    }
}
