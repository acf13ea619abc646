//! The `[http]` table: the HTTP front-end's listen addresses and every bound it enforces, with
//! documented defaults (docs/operations.md, section HTTP).
//!
//! Owns: `HttpConfig` and its validation. Must never: let a value through that makes an
//! unbounded buffer or a timeout of zero.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// HTTP serving (web seeds, BEP 19, and plain range downloads). Off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Addresses to serve HTTP on; every shard binds each with SO_REUSEPORT. Default []: off.
    pub listen: Vec<SocketAddr>,
    /// Longest request line (method, target, version) in bytes; longer is 414. Default 8192.
    pub request_line_bytes_max: usize,
    /// Largest request head (request line and headers) in bytes; larger is 431. Default 16384.
    pub header_bytes_max: usize,
    /// Most header fields in one request; more is 431. Default 64.
    pub header_count_max: usize,
    /// A connection with no request in progress and nothing to send is closed after this.
    /// Default 60.
    pub idle_timeout_secs: u64,
    /// A request head must arrive whole within this many seconds of its first byte
    /// (slowloris); else 408 and close. Default 10.
    pub request_timeout_secs: u64,
    /// HTTP connections per shard. Default 4096.
    pub connections_per_shard_max: usize,
    /// Bytes of a response body handed to one send (from the file's page-cache mapping, or
    /// read into a buffer slot). Default 1 MiB.
    pub send_chunk_bytes_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Vec::new(),
            request_line_bytes_max: 8192,
            header_bytes_max: 16384,
            header_count_max: 64,
            idle_timeout_secs: 60,
            request_timeout_secs: 10,
            connections_per_shard_max: 4096,
            send_chunk_bytes_max: 1 << 20,
        }
    }
}

impl HttpConfig {
    /// Whether HTTP serving is on.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// Refuses zero bounds and a head limit below the line limit; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            (
                "http.request_line_bytes_max",
                self.request_line_bytes_max as u64,
            ),
            ("http.header_bytes_max", self.header_bytes_max as u64),
            ("http.header_count_max", self.header_count_max as u64),
            ("http.idle_timeout_secs", self.idle_timeout_secs),
            ("http.request_timeout_secs", self.request_timeout_secs),
            (
                "http.connections_per_shard_max",
                self.connections_per_shard_max as u64,
            ),
            (
                "http.send_chunk_bytes_max",
                self.send_chunk_bytes_max as u64,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} = 0: must be at least 1"));
            }
        }
        if self.header_bytes_max < self.request_line_bytes_max {
            return Err(format!(
                "http.header_bytes_max = {}: must be at least http.request_line_bytes_max ({})",
                self.header_bytes_max, self.request_line_bytes_max
            ));
        }
        // Connection indexes share the 24-bit peer field of an op token.
        if self.connections_per_shard_max > crate::ring::token::PEER_INDEX_MAX as usize {
            return Err(format!(
                "http.connections_per_shard_max = {}: at most {}",
                self.connections_per_shard_max,
                crate::ring::token::PEER_INDEX_MAX
            ));
        }
        if self.send_chunk_bytes_max > 64 << 20 {
            return Err(format!(
                "http.send_chunk_bytes_max = {}: at most 67108864 (64 MiB)",
                self.send_chunk_bytes_max
            ));
        }
        if self.header_bytes_max > 1 << 20 {
            return Err(format!(
                "http.header_bytes_max = {}: at most 1048576 (each connection may hold this much)",
                self.header_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_off() {
        // Proves: the shipped defaults validate, and HTTP is off until an address is given.
        let c = HttpConfig::default();
        c.validate().unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn zero_bounds_name_the_key() {
        // Proves: a zero bound is refused with the key in the message.
        let c = HttpConfig {
            header_count_max: 0,
            ..HttpConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("http.header_count_max"));
        let c = HttpConfig {
            header_bytes_max: 10,
            ..HttpConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("http.header_bytes_max"));
        let c = HttpConfig {
            send_chunk_bytes_max: 1 << 30,
            ..HttpConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .contains("http.send_chunk_bytes_max"));
    }
}
