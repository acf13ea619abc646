//! What monitoring sees of the catalog beside the shards' counters: torrents by state, the
//! torrents a load left out (skipped) and why, tracker announce results, build and start time,
//! and the verdict /health gives from them.
//!
//! Owns: those values as the control loop last set them, and `Health`, the one place that
//! decides "ok", "starting", "not accepting" or "degraded". Must never: be written by a shard
//! or do I/O: the control loop sets it (from the catalog, the health monitor and the tracker
//! manager) and the admin thread reads it behind the view's lock.

use crate::plane::ErroredRow;
use std::path::PathBuf;
use std::time::SystemTime;

/// Reasons /health lists at most; the rest are counted ("... and N more").
pub const HEALTH_REASONS_MAX: usize = 10;

/// A torrent a catalog load left out: its file (.torrent, or the content entry in zero
/// config) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    pub file: PathBuf,
    pub reason: String,
}

/// Catalog torrents by state; each torrent counts once. `errored` wins over the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TorrentStates {
    /// Every piece verified, no content fault.
    pub seeding: u64,
    /// Left out by the last load (not served).
    pub skipped: u64,
    /// A content file failed while serving (not served until a recheck passes).
    pub errored: u64,
    /// Some pieces failed verification; the rest are served.
    pub incomplete: u64,
}

impl TorrentStates {
    /// (label, count) in exposition order.
    pub fn labelled(&self) -> [(&'static str, u64); 4] {
        [
            ("seeding", self.seeding),
            ("skipped", self.skipped),
            ("errored", self.errored),
            ("incomplete", self.incomplete),
        ]
    }
}

/// Announce results since start, summed over every tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerAnnounces {
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Clone)]
pub struct CatalogHealth {
    pub states: TorrentStates,
    pub skipped: Vec<SkippedRow>,
    pub announces: TrackerAnnounces,
    /// When this process started (Unix seconds), for `squall_process_start_time_seconds`.
    pub process_start_secs: f64,
}

impl Default for CatalogHealth {
    fn default() -> Self {
        CatalogHealth {
            states: TorrentStates::default(),
            skipped: Vec::new(),
            announces: TrackerAnnounces::default(),
            process_start_secs: process_start_secs(),
        }
    }
}

/// The /health verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Not every shard has reported yet.
    Starting,
    /// A shard stopped accepting connections.
    NotAccepting,
    /// Serving, but some torrents are not: one line per errored or skipped torrent.
    Degraded(Vec<String>),
}

impl Health {
    /// Liveness first (a dead listener matters more than a missing file), then the catalog.
    pub fn judge(
        complete: bool,
        accepting: bool,
        errored: &[ErroredRow],
        skipped: &[SkippedRow],
    ) -> Health {
        if !complete {
            return Health::Starting;
        }
        if !accepting {
            return Health::NotAccepting;
        }
        if errored.is_empty() && skipped.is_empty() {
            return Health::Ok;
        }
        let reasons = errored
            .iter()
            .map(|e| format!("errored {} ({}): {}", e.name, e.info_hash, e.reason))
            .chain(
                skipped
                    .iter()
                    .map(|s| format!("skipped {}: {}", s.file.display(), s.reason)),
            )
            .collect();
        Health::Degraded(reasons)
    }

    /// The plain-text body /health answers with: the verdict word first, then the reasons
    /// (at most `HEALTH_REASONS_MAX`).
    pub fn body(&self) -> String {
        match self {
            Health::Ok => "ok\n".into(),
            Health::Starting => "starting: not every shard has reported\n".into(),
            Health::NotAccepting => "a shard is not accepting\n".into(),
            Health::Degraded(reasons) => {
                let mut out = format!(
                    "degraded: {} torrent(s) not served (alive; /health?strict=0 answers 200)\n",
                    reasons.len()
                );
                for r in reasons.iter().take(HEALTH_REASONS_MAX) {
                    out.push_str(r);
                    out.push('\n');
                }
                if reasons.len() > HEALTH_REASONS_MAX {
                    out.push_str(&format!(
                        "... and {} more (see /stats)\n",
                        reasons.len() - HEALTH_REASONS_MAX
                    ));
                }
                out
            }
        }
    }
}

/// Process start as Unix seconds: /proc/self/stat's start time (clock ticks after boot) plus
/// /proc/stat's boot time, as Prometheus' process collector computes it; now when /proc
/// cannot tell.
pub fn process_start_secs() -> f64 {
    let from_proc = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let after = &stat[stat.rfind(')')? + 1..];
        // Field 22 (starttime) is the 20th after the name (state is field 3).
        let ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| btime + ticks / hz as f64)
    };
    from_proc().unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::InfoHash;

    #[test]
    fn health_is_degraded_by_errored_or_skipped_and_bounded() {
        // Liveness problems come first; errored and skipped torrents make it degraded with
        // one reason each; the body lists at most HEALTH_REASONS_MAX of them.
        assert_eq!(Health::judge(false, true, &[], &[]), Health::Starting);
        assert_eq!(Health::judge(true, false, &[], &[]), Health::NotAccepting);
        assert_eq!(Health::judge(true, true, &[], &[]), Health::Ok);
        let errored = vec![ErroredRow {
            info_hash: InfoHash([1; 20]),
            name: "film".into(),
            reason: "file /d/film.mkv: missing".into(),
            since: SystemTime::now(),
        }];
        let skipped: Vec<SkippedRow> = (0..12)
            .map(|i| SkippedRow {
                file: PathBuf::from(format!("/t/{i}.torrent")),
                reason: "content missing".into(),
            })
            .collect();
        let h = Health::judge(true, true, &errored, &skipped);
        let body = h.body();
        assert!(body.starts_with("degraded: 13 torrent(s)"), "{body}");
        assert!(
            body.contains("errored film") && body.contains("/d/film.mkv"),
            "{body}"
        );
        assert!(
            body.contains("skipped /t/0.torrent: content missing"),
            "{body}"
        );
        assert!(body.contains("... and 3 more"), "{body}");
        assert_eq!(body.lines().count(), 1 + HEALTH_REASONS_MAX + 1);
    }

    #[test]
    fn process_start_is_in_the_past_and_recent() {
        // Read from /proc: before now, and not before the machine could have booted a year ago.
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = process_start_secs();
        assert!(
            start <= now + 1.0 && start > now - 365.0 * 86_400.0,
            "{start} {now}"
        );
    }
}
