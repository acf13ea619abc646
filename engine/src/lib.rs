//! squall-engine: everything that seeds.
//!
//! Dependency direction is one way (see docs/architecture.md):
//! `shard -> wire, ring, storage, catalog, stats`; `catalog -> metainfo, storage`;
//! nothing below imports `shard`. `wire` and `metainfo` are pure: bytes in, typed values out.

pub mod catalog;
pub mod config;
pub mod config_file;
pub mod control;
pub mod keyhash;
pub mod make;
pub mod metainfo;
pub mod net;
pub mod plane;
pub mod ring;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod tracker;
pub mod wire;
