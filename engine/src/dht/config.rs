//! The `[dht]` table: whether and how Squall joins the Mainline DHT (BEP 5).
//!
//! Owns: the DHT's keys, their documented defaults and their validation. Must never: resolve
//! a host name or touch the network (`squall config check` runs it offline; bootstrap names
//! are resolved by the DHT thread at start).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Default `[dht] listen`: the conventional DHT port, every IPv4 interface.
pub const DHT_LISTEN_DEFAULT: &str = "0.0.0.0:6881";

/// Default `[dht] bootstrap`: the well-known public routers (the same the `mainline` crate,
/// libtorrent and Transmission use). Tests always replace them with loopback nodes.
pub const DHT_BOOTSTRAP_DEFAULT: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];

/// Default `[dht] announce_rate_per_sec`: one announce is an iterative lookup (some tens of
/// UDP packets) plus announce_peer to the ~8 closest nodes; 50/s is about 2,000 packets/s
/// and announces 90,000 torrents per 30-minute pass.
pub const DHT_ANNOUNCE_RATE_PER_SEC_DEFAULT: u32 = 50;
/// Highest `announce_rate_per_sec` accepted: beyond it a seeder floods the DHT.
pub const DHT_ANNOUNCE_RATE_PER_SEC_CEILING: u32 = 1_000;

/// Default `[dht] reannounce_secs`: DHT nodes drop announced peers after about 30 minutes
/// (libtorrent: 45), so each torrent is announced again every 30 minutes.
pub const DHT_REANNOUNCE_SECS_DEFAULT: u64 = 1_800;
/// Bounds of `reannounce_secs`: more often than every minute is rude; less often than every
/// 2 hours leaves a torrent unfindable most of the time.
pub const DHT_REANNOUNCE_SECS_RANGE: std::ops::RangeInclusive<u64> = 60..=7_200;

/// Most bootstrap entries (each is resolved and pinged at start).
pub const DHT_BOOTSTRAP_ENTRIES_MAX: usize = 64;

/// When the node answers other nodes' queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtServerMode {
    /// As the `mainline` crate does: start as a client and answer queries once other nodes
    /// confirm this node is reachable (not firewalled).
    Adaptive,
    /// Answer queries from the start (a public address you know is reachable, or a test).
    Always,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhtConfig {
    /// Join the DHT and announce every non-private torrent. Default false in the binary (a
    /// bare `squall seed` sends nothing unasked); true in configs/default.toml.
    pub enabled: bool,
    /// UDP `ADDR:PORT` of the DHT node (IPv4: the `mainline` crate has no BEP 32). Default
    /// 0.0.0.0:6881; port 0 picks a free port.
    pub listen: String,
    /// `HOST:PORT` of the nodes to join through. Default: the public routers.
    pub bootstrap: Vec<String>,
    /// Most announces started per second (all torrents together). Default 50.
    pub announce_rate_per_sec: u32,
    /// Each torrent is announced again this often (a pass over the catalog is spread over
    /// it). Default 1800.
    pub reannounce_secs: u64,
    /// `adaptive` (default) or `always`.
    pub server_mode: DhtServerMode,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            enabled: false,
            listen: DHT_LISTEN_DEFAULT.to_string(),
            bootstrap: DHT_BOOTSTRAP_DEFAULT
                .iter()
                .map(|s| s.to_string())
                .collect(),
            announce_rate_per_sec: DHT_ANNOUNCE_RATE_PER_SEC_DEFAULT,
            reannounce_secs: DHT_REANNOUNCE_SECS_DEFAULT,
            server_mode: DhtServerMode::Adaptive,
        }
    }
}

impl DhtConfig {
    /// The UDP address to bind, refusing what the DHT node cannot use.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        let text = self.listen.trim();
        let addr: SocketAddr = text.parse().map_err(|_| {
            format!("[dht] listen = {text:?}: expected ADDR:PORT, e.g. \"{DHT_LISTEN_DEFAULT}\"")
        })?;
        if addr.is_ipv6() {
            return Err(format!(
                "[dht] listen = {text:?}: the DHT node speaks IPv4 only (the mainline crate has \
                 no BEP 32); give an IPv4 address such as \"{DHT_LISTEN_DEFAULT}\""
            ));
        }
        Ok(addr)
    }

    /// Refuses values that would flood the DHT, never announce, or cannot be bound; names
    /// the key and says what to write instead.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.announce_rate_per_sec == 0
            || self.announce_rate_per_sec > DHT_ANNOUNCE_RATE_PER_SEC_CEILING
        {
            return Err(format!(
                "[dht] announce_rate_per_sec = {}: give 1 to {DHT_ANNOUNCE_RATE_PER_SEC_CEILING} \
                 (default {DHT_ANNOUNCE_RATE_PER_SEC_DEFAULT}); to stop announcing set \
                 enabled = false",
                self.announce_rate_per_sec
            ));
        }
        if !DHT_REANNOUNCE_SECS_RANGE.contains(&self.reannounce_secs) {
            return Err(format!(
                "[dht] reannounce_secs = {}: give {} to {} (default {DHT_REANNOUNCE_SECS_DEFAULT})",
                self.reannounce_secs,
                DHT_REANNOUNCE_SECS_RANGE.start(),
                DHT_REANNOUNCE_SECS_RANGE.end()
            ));
        }
        if self.bootstrap.len() > DHT_BOOTSTRAP_ENTRIES_MAX {
            return Err(format!(
                "[dht] bootstrap = [{} entries]: at most {DHT_BOOTSTRAP_ENTRIES_MAX}",
                self.bootstrap.len()
            ));
        }
        for entry in &self.bootstrap {
            host_port(entry).map_err(|why| format!("[dht] bootstrap = {entry:?}: {why}"))?;
        }
        if self.enabled && self.bootstrap.is_empty() {
            return Err(
                "[dht] bootstrap = []: an enabled DHT needs at least one HOST:PORT to \
                 join through (leave the key out for the public routers)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` too) without resolving it.
pub fn host_port(entry: &str) -> Result<(&str, u16), String> {
    let (host, port) = entry
        .rsplit_once(':')
        .ok_or("expected HOST:PORT, e.g. \"router.bittorrent.com:6881\"")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("expected HOST:PORT with a host name or address before the colon".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_are_off() {
        // The binary's defaults send nothing unasked, yet are valid when switched on.
        let d = DhtConfig::default();
        assert!(!d.enabled);
        d.validate().unwrap();
        DhtConfig {
            enabled: true,
            ..d.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(d.server_mode, DhtServerMode::Adaptive);
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let bad = |f: &dyn Fn(&mut DhtConfig)| {
            let mut c = DhtConfig {
                enabled: true,
                ..DhtConfig::default()
            };
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.listen = "nope".into()).contains("[dht] listen"));
        assert!(bad(&|c| c.listen = "[::]:6881".into()).contains("IPv4 only"));
        assert!(bad(&|c| c.announce_rate_per_sec = 0).contains("announce_rate_per_sec = 0"));
        assert!(bad(&|c| c.reannounce_secs = 5).contains("reannounce_secs = 5"));
        assert!(bad(&|c| c.bootstrap = vec!["host".into()]).contains("HOST:PORT"));
        assert!(bad(&|c| c.bootstrap = vec!["host:0".into()]).contains("1 to 65535"));
        assert!(bad(&|c| c.bootstrap = vec![]).contains("at least one"));
        assert_eq!(host_port("[::1]:7").unwrap(), ("::1", 7));
    }
}
