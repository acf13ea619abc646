//! squall-engine: everything that seeds.
//!
//! Two planes (see docs/architecture.md): `shard` (with `ring`) is the data plane, one thread
//! per core; `control` (the control loop, seeder, health, admin endpoint, extras loader,
//! driving `tracker`) runs beside it and never on it. They share only the messages of
//! `plane`, over bounded channels.
//!
//! Dependency direction is one way: `control -> shard, tracker, stats, plane`;
//! `shard -> wire, ring, storage, catalog, stats, plane`; `catalog -> metainfo, storage`;
//! nothing below imports `shard`, and `shard` and `stats` never import `control`. `wire` and
//! `metainfo` are pure: bytes in, typed values out.

// serde_json's json! macro recurses once per field: the per-shard /stats object has many.
#![recursion_limit = "256"]

pub mod catalog;
pub mod config;
pub mod config_file;
pub mod control;
pub mod dht;
pub mod http;
pub mod instance;
pub mod keyhash;
pub mod make;
pub mod metainfo;
pub mod net;
pub mod plane;
pub mod read_mode;
pub mod ring;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod tracker;
pub mod wire;

/// The block length every mainstream client requests (BEP 3's de-facto 16 KiB; BEP 52's merkle
/// leaf). The one constant for it: config defaults, the block cache, v2 trees use this.
pub const BLOCK_LEN_BYTES: u32 = 16 * 1024;

/// Ends the process at once in debug builds (tests, `cargo run`): for invariant audits
/// whose failure must fail the test that ran the binary, where a panic on a shard thread
/// would only be logged. Release builds log and go on.
pub fn abort_in_debug_builds(what: &str) {
    if cfg!(debug_assertions) {
        eprintln!("{what} failed: aborting (debug build)");
        std::process::abort();
    }
}
