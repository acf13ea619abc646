//! Metainfo: the bencode codec, .torrent parsing and validation, creation, magnet links.
//!
//! Owns: turning untrusted .torrent bytes into a validated `Torrent`, and building new ones.
//! Must never: touch the filesystem (callers read and write files), or accept a path that
//! could escape the data root.

pub mod bencode;
pub mod create;
pub mod hash_tree;
pub mod magnet;
pub mod merkle;
pub mod torrent;

pub use magnet::Magnet;
pub use torrent::{FileEntry, InfoHash, MetaVersion, MetainfoError, Torrent};
