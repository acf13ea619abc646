//! The catalog-load progress bar: torrents examined / total, drawn on stderr when it is a
//! terminal (a million-torrent first start or a slow-path restart takes long enough to
//! wonder whether anything happens).
//!
//! Owns: drawing only. Must never: draw when stderr is not a terminal (logs, pipes, systemd),
//! or slow the load (it is called from every load worker: indicatif rate-limits drawing).

use std::io::IsTerminal;

/// A bar for `Catalog::load`'s `LoadProgress` callback; `None` when stderr is not a terminal.
pub struct LoadBar {
    bar: Option<indicatif::ProgressBar>,
}

impl LoadBar {
    pub fn new() -> LoadBar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "loading torrents {bar:40} {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        LoadBar { bar }
    }

    /// The `LoadProgress` callback: (torrents examined, torrents total).
    pub fn update(&self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(total as u64) {
                bar.set_length(total as u64);
            }
            bar.set_position(done as u64);
        }
    }
}

impl Drop for LoadBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
