//! How content is read, chosen once at start: `direct_io = "auto"` (the default), `true` or
//! `false`.
//!
//! Owns: the `DirectIo` setting (a bool or `"auto"` in TOML), finding the memory the seeder
//! may use (`MemoryBudget`: its cgroup's limit, v2 `memory.max` or v1
//! `memory.limit_in_bytes`, the tightest of every ancestor's, and `/proc/meminfo`
//! `MemAvailable`), and the rule that turns the catalog's size and that budget into a read
//! mode and a block-cache size (`choose`).
//!
//! The rule: when the catalog is larger than the memory the seeder may use, the page cache
//! cannot hold the working set of a catalog read at random, most buffered reads miss, and
//! each miss costs an io-wq worker wakeup plus reclaim of an older page (docs/benchmarks.md,
//! "Catalogs larger than RAM"): read with O_DIRECT into the hot-block cache instead, and give
//! the cache half the budget when the operator set no size. When the catalog fits, the page
//! cache serves misses without the disk: stay buffered. Must never: run on a shard thread
//! (it reads procfs and cgroupfs files), or override a `true`/`false` the operator chose.

use crate::config::{EngineConfig, ServeMode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};

/// `direct_io`: read content with O_DIRECT into the hot-block cache (`On`), through the page
/// cache (`Off`), or decide at start from the catalog's size and the memory budget (`Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectIo {
    Off,
    On,
    Auto,
}

impl Serialize for DirectIo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DirectIo::Off => s.serialize_bool(false),
            DirectIo::On => s.serialize_bool(true),
            DirectIo::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for DirectIo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DirectIo, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(DirectIo::On),
            Raw::Bool(false) => Ok(DirectIo::Off),
            Raw::Text(t) if t == "auto" => Ok(DirectIo::Auto),
            // The config loader already names the key and the value.
            Raw::Text(_) => Err(serde::de::Error::custom("expected true, false or \"auto\"")),
        }
    }
}

/// With `direct_io = "auto"` and no cache size set, the cache gets this share of the budget
/// (the rest is left to sockets, send buffers and the page cache's metadata).
pub const AUTO_CACHE_SHARE_OF_BUDGET_PCT: u64 = 50;
/// The smallest cache `auto` gives a shard (a budget too small to spare it stays buffered).
pub const AUTO_CACHE_BYTES_PER_SHARD_MIN: u64 = 16 << 20;
/// A cgroup limit at or above this is "no limit" (v1 writes 2^63 rounded down to a page).
const CGROUP_UNLIMITED_BYTES: u64 = 1 << 60;

/// The memory the seeder may use, as far as the system says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBudget {
    /// The tightest memory limit on the seeder's cgroup or its ancestors (None: no limit).
    pub cgroup_limit_bytes: Option<u64>,
    /// `/proc/meminfo` MemAvailable: free memory plus what the kernel can reclaim.
    pub mem_available_bytes: Option<u64>,
}

impl MemoryBudget {
    /// The budget of this process, read from the real /proc and /sys.
    pub fn detect() -> MemoryBudget {
        MemoryBudget::detect_under(Path::new("/"))
    }

    /// The budget as files under `root` say (`root` = "/" on a real system; a test passes a
    /// directory laid out like one: `proc/self/cgroup`, `proc/meminfo`, `sys/fs/cgroup/...`).
    pub fn detect_under(root: &Path) -> MemoryBudget {
        let cgroups = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
        let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default();
        MemoryBudget {
            cgroup_limit_bytes: cgroup_limit(root, &cgroups),
            mem_available_bytes: meminfo_field_bytes(&meminfo, "MemAvailable:"),
        }
    }

    /// The bytes the seeder may fill: the smaller of the cgroup limit and MemAvailable.
    pub fn bytes(&self) -> Option<u64> {
        match (self.cgroup_limit_bytes, self.mem_available_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What `choose` decided, and why (logged at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModeChoice {
    pub direct_io: bool,
    pub block_cache_bytes_per_shard: u64,
    pub why: String,
}

/// Resolves `setting` for a catalog of `catalog_bytes` served by `shards` shards with this
/// budget; `cache_bytes_per_shard` is the configured cache (0 = none set). `On`/`Off` are
/// returned as set. `splice`: whether serve_mode is splice (which reads through pipes and
/// the page cache: never direct).
pub fn choose(
    setting: DirectIo,
    catalog_bytes: u64,
    budget: &MemoryBudget,
    shards: usize,
    cache_bytes_per_shard: u64,
    splice: bool,
) -> ReadModeChoice {
    let keep = |direct_io: bool, why: String| ReadModeChoice {
        direct_io,
        block_cache_bytes_per_shard: cache_bytes_per_shard,
        why,
    };
    match setting {
        DirectIo::On => return keep(true, "direct_io = true".into()),
        DirectIo::Off => return keep(false, "direct_io = false".into()),
        DirectIo::Auto => {}
    }
    if splice {
        return keep(false, "splice mode reads through the page cache".into());
    }
    let Some(budget_bytes) = budget.bytes() else {
        return keep(false, "memory budget unknown: buffered".into());
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    if catalog_bytes <= budget_bytes {
        return keep(
            false,
            format!(
                "catalog {:.1} GiB fits the {:.1} GiB memory budget: buffered (page cache)",
                gib(catalog_bytes),
                gib(budget_bytes)
            ),
        );
    }
    let cache = if cache_bytes_per_shard > 0 {
        cache_bytes_per_shard
    } else {
        let share = u128::from(budget_bytes) * u128::from(AUTO_CACHE_SHARE_OF_BUDGET_PCT) / 100;
        let share = (share / shards.max(1) as u128) as u64;
        let block = u64::from(crate::BLOCK_LEN_BYTES);
        (share / block * block).min(crate::config::BLOCK_CACHE_BYTES_PER_SHARD_CEILING)
    };
    if cache < AUTO_CACHE_BYTES_PER_SHARD_MIN {
        return keep(
            false,
            format!(
                "catalog {:.1} GiB outgrows the {:.1} GiB budget, but a block cache of {} MiB \
                 per shard is too small for O_DIRECT: buffered",
                gib(catalog_bytes),
                gib(budget_bytes),
                cache >> 20
            ),
        );
    }
    ReadModeChoice {
        direct_io: true,
        block_cache_bytes_per_shard: cache,
        why: format!(
            "catalog {:.1} GiB outgrows the {:.1} GiB memory budget: O_DIRECT into a {} MiB \
             block cache per shard",
            gib(catalog_bytes),
            gib(budget_bytes),
            cache >> 20
        ),
    }
}

/// Resolves `config.direct_io = "auto"` in place for a catalog of `catalog_bytes` (with
/// `direct_io_memory_budget_bytes` as the budget when set, else `MemoryBudget::detect`), so
/// every shard is built with `On` or `Off` and the cache size that goes with it. Returns the
/// choice (to log); `On`/`Off` are left as they are.
pub fn resolve(config: &mut EngineConfig, catalog_bytes: u64) -> ReadModeChoice {
    let budget = if config.direct_io_memory_budget_bytes > 0 {
        MemoryBudget {
            cgroup_limit_bytes: Some(config.direct_io_memory_budget_bytes),
            mem_available_bytes: None,
        }
    } else {
        MemoryBudget::detect()
    };
    let choice = choose(
        config.direct_io,
        catalog_bytes,
        &budget,
        config.shard_count(),
        config.block_cache_bytes_per_shard,
        config.serve_mode == ServeMode::Splice,
    );
    if config.direct_io == DirectIo::Auto {
        config.direct_io = if choice.direct_io {
            DirectIo::On
        } else {
            DirectIo::Off
        };
        config.block_cache_bytes_per_shard = choice.block_cache_bytes_per_shard;
    }
    choice
}

/// `Key:   12345 kB` in /proc/meminfo -> bytes.
fn meminfo_field_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The tightest limit on the cgroup named in `/proc/self/cgroup` and every ancestor: v2
/// (`0::/path`, memory.max under /sys/fs/cgroup or /sys/fs/cgroup/unified) when it holds the
/// memory controller, else v1 (`N:memory:/path`, memory.limit_in_bytes).
fn cgroup_limit(root: &Path, cgroups: &str) -> Option<u64> {
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            for mount in ["sys/fs/cgroup", "sys/fs/cgroup/unified"] {
                let base = root.join(mount);
                let has_memory = std::fs::read_to_string(base.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
                if has_memory {
                    if let Some(limit) = tightest(&base, path, "memory.max") {
                        return Some(limit);
                    }
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = root.join("sys/fs/cgroup/memory");
            if let Some(limit) = tightest(&base, path, "memory.limit_in_bytes") {
                return Some(limit);
            }
        }
    }
    None
}

/// The smallest `file` from `base/path` up to `base` ("max" and huge values: no limit).
fn tightest(base: &Path, path: &str, file: &str) -> Option<u64> {
    let mut dir: PathBuf = base.join(path.trim_start_matches('/'));
    let mut best: Option<u64> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            if let Ok(v) = text.trim().parse::<u64>() {
                if v < CGROUP_UNLIMITED_BYTES {
                    best = Some(best.map_or(v, |b| b.min(v)));
                }
            }
        }
        if dir == base || !dir.pop() || !dir.starts_with(base) {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n";

    #[test]
    fn v1_limit_is_the_tightest_ancestor_and_unlimited_is_none() {
        // Proves: a v1 memory cgroup's limit is found from /proc/self/cgroup, an ancestor's
        // tighter limit wins, v1's "unlimited" (2^63 rounded) is no limit, and the budget is
        // the smaller of the limit and MemAvailable.
        let dir = tempfile::tempdir().expect("tmp");
        let r = dir.path();
        write(r, "proc/self/cgroup", "7:blkio:/\n4:memory:/a/b\n0::/\n");
        write(r, "proc/meminfo", MEMINFO);
        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
            "2147483648\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/a/b/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let b = MemoryBudget::detect_under(r);
        assert_eq!(b.cgroup_limit_bytes, Some(2 << 30));
        assert_eq!(b.mem_available_bytes, Some(20_000_000 * 1024));
        assert_eq!(b.bytes(), Some(2 << 30));
        write(
            r,
            "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let b = MemoryBudget::detect_under(r);
        assert_eq!(b.cgroup_limit_bytes, None);
        assert_eq!(b.bytes(), Some(20_000_000 * 1024));
    }

    #[test]
    fn v2_memory_max_is_used_only_where_the_controller_is() {
        // Proves: v2's memory.max is read when the hierarchy holds the memory controller
        // (here the hybrid mount /sys/fs/cgroup/unified), "max" is no limit, and a v2
        // hierarchy without the controller is ignored.
        let dir = tempfile::tempdir().expect("tmp");
        let r = dir.path();
        write(r, "proc/self/cgroup", "0::/svc/squall\n");
        write(r, "proc/meminfo", MEMINFO);
        write(r, "sys/fs/cgroup/unified/cgroup.controllers", "cpu io\n");
        write(
            r,
            "sys/fs/cgroup/unified/svc/squall/memory.max",
            "1073741824\n",
        );
        assert_eq!(MemoryBudget::detect_under(r).cgroup_limit_bytes, None);
        write(
            r,
            "sys/fs/cgroup/unified/cgroup.controllers",
            "cpu io memory\n",
        );
        assert_eq!(
            MemoryBudget::detect_under(r).cgroup_limit_bytes,
            Some(1 << 30)
        );
        write(r, "sys/fs/cgroup/unified/svc/squall/memory.max", "max\n");
        assert_eq!(MemoryBudget::detect_under(r).cgroup_limit_bytes, None);
    }

    #[test]
    fn auto_goes_direct_only_when_the_catalog_outgrows_the_budget() {
        // Proves: auto stays buffered while the catalog fits, goes direct with half the
        // budget as cache (per shard) when it does not, keeps an operator's cache size,
        // never overrides true/false, and stays buffered with splice or no known budget.
        let budget = MemoryBudget {
            cgroup_limit_bytes: Some(1 << 30),
            mem_available_bytes: Some(20 << 30),
        };
        let fits = choose(DirectIo::Auto, 512 << 20, &budget, 1, 0, false);
        assert!(!fits.direct_io, "{}", fits.why);
        assert_eq!(fits.block_cache_bytes_per_shard, 0);
        let big = choose(DirectIo::Auto, 8 << 30, &budget, 1, 0, false);
        assert!(big.direct_io, "{}", big.why);
        assert_eq!(big.block_cache_bytes_per_shard, 512 << 20);
        let two = choose(DirectIo::Auto, 8 << 30, &budget, 2, 0, false);
        assert_eq!(two.block_cache_bytes_per_shard, 256 << 20);
        let set = choose(DirectIo::Auto, 8 << 30, &budget, 1, 64 << 20, false);
        assert_eq!(
            (set.direct_io, set.block_cache_bytes_per_shard),
            (true, 64 << 20)
        );
        assert!(!choose(DirectIo::Off, 8 << 30, &budget, 1, 0, false).direct_io);
        assert!(choose(DirectIo::On, 1, &budget, 1, 1 << 20, false).direct_io);
        assert!(!choose(DirectIo::Auto, 8 << 30, &budget, 1, 0, true).direct_io);
        let unknown = MemoryBudget::default();
        assert!(!choose(DirectIo::Auto, 8 << 30, &unknown, 1, 0, false).direct_io);
        // A budget too small to spare a useful cache stays buffered.
        let tiny = MemoryBudget {
            cgroup_limit_bytes: Some(8 << 20),
            mem_available_bytes: None,
        };
        assert!(!choose(DirectIo::Auto, 8 << 30, &tiny, 1, 0, false).direct_io);
    }

    #[test]
    fn config_check_refuses_a_budget_below_the_smallest_cache() {
        // Proves: `squall config check` (EngineConfig::validate) refuses an injected budget
        // too small to be meant, naming the key, and accepts 0 (detect) and auto without a
        // cache size (auto sizes it).
        let c = EngineConfig {
            direct_io_memory_budget_bytes: 4096,
            ..EngineConfig::default()
        };
        let err = c.validate().expect_err("refused");
        assert!(err.contains("direct_io_memory_budget_bytes"), "{err}");
        assert_eq!(EngineConfig::default().direct_io, DirectIo::Auto);
        assert_eq!(EngineConfig::default().block_cache_bytes_per_shard, 0);
        EngineConfig::default()
            .validate()
            .expect("auto with no cache is valid");
    }

    #[test]
    fn resolve_turns_auto_into_a_setting_shards_can_build() {
        // Proves: resolve replaces auto with on (and the auto-sized cache) or off in the
        // config the shards get, so the result validates; true/false stay as set.
        let mut c = EngineConfig {
            direct_io_memory_budget_bytes: 1 << 30,
            shards: 1,
            ..EngineConfig::default()
        };
        let choice = resolve(&mut c, 8 << 30);
        assert!(choice.direct_io, "{}", choice.why);
        assert_eq!(
            (c.direct_io, c.block_cache_bytes_per_shard),
            (DirectIo::On, 512 << 20)
        );
        c.validate().expect("resolved direct config is valid");
        let mut c = EngineConfig {
            direct_io_memory_budget_bytes: 1 << 30,
            ..EngineConfig::default()
        };
        resolve(&mut c, 1 << 20);
        assert_eq!(
            (c.direct_io, c.block_cache_bytes_per_shard),
            (DirectIo::Off, 0)
        );
        let mut c = EngineConfig {
            direct_io: DirectIo::Off,
            direct_io_memory_budget_bytes: 1 << 30,
            ..EngineConfig::default()
        };
        resolve(&mut c, 8 << 30);
        assert_eq!(c.direct_io, DirectIo::Off);
    }

    #[test]
    fn direct_io_parses_bools_and_auto_only() {
        // Proves: the TOML value accepts true, false and "auto" and refuses anything else
        // with a message naming the choices.
        #[derive(Deserialize)]
        struct W {
            direct_io: DirectIo,
        }
        let p = |s: &str| toml::from_str::<W>(s).map(|w| w.direct_io);
        assert_eq!(p("direct_io = true").expect("true"), DirectIo::On);
        assert_eq!(p("direct_io = false").expect("false"), DirectIo::Off);
        assert_eq!(p("direct_io = \"auto\"").expect("auto"), DirectIo::Auto);
        let err = p("direct_io = \"yes\"").expect_err("refused").to_string();
        assert!(err.contains("\"auto\""), "{err}");
    }
}
