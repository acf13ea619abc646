//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hex|base32>&dn=<name>&tr=<url>&x.pe=<addr>`.
//!
//! Owns: parsing and formatting magnet URIs. Must never: panic on any input.

use super::torrent::InfoHash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub display_name: Option<String>,
    pub trackers: Vec<String>,
    /// `x.pe` peer addresses (host:port) to dial directly.
    pub peers: Vec<String>,
}
