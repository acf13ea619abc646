//! Benchmark scenarios (`configs/bench/*.toml`): what data a scenario needs and how its
//! swarm behaves. `scripts/compare.sh` reads `[data]` through `squall-bench scenario-data`
//! and runs `[run]` through `squall-bench scenario`.
//!
//! Owns: the TOML schema and its validation.
//! Must never: know about any particular seeder.

use serde::Deserialize;

use crate::peer::{Pattern, Verify};
use crate::RunOptions;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub data: DataSpec,
    pub run: RunSpec,
    /// How compare.sh runs every seeder (memory budget, cold start); absent: unconstrained.
    #[serde(default)]
    pub seeder: SeederSpec,
}

/// The conditions every seeder of a scenario runs under, the same for all (`cold`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeederSpec {
    /// Run the seeder in a memory cgroup of this many bytes (page cache included).
    pub memory_limit_bytes: Option<u64>,
    /// Drop the page cache (`vm.drop_caches`) once the seeder is ready, before each run.
    #[serde(default)]
    pub drop_caches: bool,
    /// Also run fio (io_uring, O_DIRECT, random piece-size reads over the same files at the
    /// swarm's queue depth) as the disk's ceiling row.
    #[serde(default)]
    pub fio_ceiling: bool,
}

/// The content: `torrents` single-file torrents of `size_bytes` each (pattern content).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub torrents: u32,
    pub size_bytes: u64,
    pub piece_length_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub peers: usize,
    pub depth: usize,
    pub duration_secs: u64,
    #[serde(default)]
    pub warmup_secs: u64,
    #[serde(default = "default_pattern")]
    pub pattern: String,
    #[serde(default = "default_verify")]
    pub verify: String,
    pub rate_per_sec: Option<f64>,
    #[serde(default)]
    pub hop: bool,
    pub leave_after_bytes: Option<u64>,
    /// Churn: open-loop arrivals per second; `peers` is then the max-concurrent-peers limit.
    pub join_rate_per_sec: Option<f64>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Poll instead of sleeping within this many us of a due timer (see `--spin-us`).
    #[serde(default)]
    pub spin_us: u64,
}

fn default_pattern() -> String {
    "random".into()
}
fn default_verify() -> String {
    "sample".into()
}
fn default_threads() -> usize {
    1
}

pub fn parse_pattern(s: &str) -> Result<Pattern, String> {
    match s {
        "sequential" => Ok(Pattern::Sequential),
        "random" => Ok(Pattern::Random),
        "zipf" => Ok(Pattern::Zipf),
        _ => Err(format!(
            "pattern {s:?}: expected sequential, random or zipf"
        )),
    }
}

pub fn parse_verify(s: &str) -> Result<Verify, String> {
    match s {
        "full" => Ok(Verify::Full),
        "sample" => Ok(Verify::Sample),
        "off" => Ok(Verify::Off),
        _ => Err(format!("verify {s:?}: expected full, sample or off")),
    }
}

pub fn load(path: &std::path::Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s: Scenario = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if s.data.torrents == 0 || s.data.size_bytes == 0 || s.data.piece_length_bytes == 0 {
        return Err(format!("{}: [data] values must be > 0", path.display()));
    }
    parse_pattern(&s.run.pattern)?;
    parse_verify(&s.run.verify)?;
    Ok(s)
}

impl RunSpec {
    /// Applies this scenario's swarm settings to `opts`.
    pub fn apply(&self, opts: &mut RunOptions) -> Result<(), String> {
        opts.peers = self.peers;
        opts.depth = self.depth;
        opts.duration_secs = self.duration_secs;
        opts.warmup_secs = self.warmup_secs;
        opts.pattern = parse_pattern(&self.pattern)?;
        opts.verify = parse_verify(&self.verify)?;
        opts.rate_per_sec = self.rate_per_sec;
        opts.hop = self.hop;
        opts.leave_after_bytes = self.leave_after_bytes;
        opts.join_rate_per_sec = self.join_rate_per_sec;
        opts.threads = self.threads;
        opts.spin_us = self.spin_us;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads_and_applies() {
        // Proves: each configs/bench/*.toml parses under deny_unknown_fields and applies to
        // RunOptions (a renamed key fails here, not in the middle of compare.sh), and the
        // scenarios keep the properties their comments promise.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/bench");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("configs/bench") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let sc = load(&path).unwrap_or_else(|e| panic!("{e}"));
            let target = "127.0.0.1:1".parse().expect("addr");
            let mut opts = RunOptions::new(target, Vec::new());
            sc.run.apply(&mut opts).expect("apply");
            match sc.name.as_str() {
                "churn" => {
                    assert_eq!(opts.join_rate_per_sec, Some(200.0));
                    assert_eq!(opts.leave_after_bytes, Some(1 << 20));
                }
                "open-loop" => {
                    // Same swarm as hot, at a fixed offered load, with the bench polling.
                    assert_eq!((opts.peers, opts.depth), (32, 64));
                    assert_eq!(opts.rate_per_sec, Some(54_000.0));
                    assert_eq!(opts.spin_us, 1000);
                }
                "cold" => {
                    // Larger than the seeder's memory budget, started from disk, with the
                    // disk's own ceiling (fio) beside the seeders.
                    let budget = sc.seeder.memory_limit_bytes.expect("cold has a budget");
                    let catalog = u64::from(sc.data.torrents) * sc.data.size_bytes;
                    assert!(
                        catalog >= 4 * budget,
                        "catalog {catalog} vs budget {budget}"
                    );
                    assert!(sc.seeder.drop_caches && sc.seeder.fio_ceiling);
                    assert_eq!((opts.peers, opts.depth), (256, 16));
                }
                "many-peers" => {
                    assert_eq!(opts.peers, 5000);
                    assert_eq!(opts.verify, Verify::Full);
                    assert!(opts.rate_per_sec.is_some());
                }
                _ => {}
            }
            names.push(sc.name);
        }
        names.sort();
        assert_eq!(
            names,
            ["catalog", "churn", "cold", "hot", "many-peers", "open-loop"]
        );
    }
}
