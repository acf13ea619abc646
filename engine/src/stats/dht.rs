//! The DHT's process-level numbers in `/stats` (JSON `"dht"`) and `/metrics` (`squall_dht_*`).
//!
//! Owns: the names and shapes of the DHT's series. Must never: run on a shard, or appear
//! per shard (one DHT node serves the whole process).

use crate::dht::DhtStats;
use serde_json::{json, Value};
use std::fmt::Write;

/// `"dht": null` when the DHT is off, else its numbers.
pub fn json(dht: Option<&DhtStats>) -> Value {
    let Some(d) = dht else { return Value::Null };
    json!({
        "running": d.running,
        "error": d.error,
        "listen": d.local_addr.map(|a| a.to_string()),
        "node_id": d.node_id,
        "public_ip": d.public_ip.map(|a| a.to_string()),
        "nodes": d.nodes,
        "torrents": d.torrents,
        "announces_ok": d.announces_ok,
        "announces_failed": d.announces_failed,
        "queue_len": d.queue_len,
        "in_flight": d.in_flight,
        "passes": d.passes,
        "last_pass_secs": d.last_pass_secs,
    })
}

/// Nothing when the DHT is off (absent series, not zeros).
pub fn prometheus(out: &mut String, dht: Option<&DhtStats>) {
    let Some(d) = dht else { return };
    let series: [(&str, &str, &str, f64); 8] = [
        (
            "squall_dht_up",
            "gauge",
            "1 while the DHT node runs; 0 when it could not start (see the log).",
            u8::from(d.running) as f64,
        ),
        (
            "squall_dht_nodes",
            "gauge",
            "Good nodes in the DHT routing table.",
            d.nodes as f64,
        ),
        (
            "squall_dht_torrents",
            "gauge",
            "Public torrents announced to the DHT each pass.",
            d.torrents as f64,
        ),
        (
            "squall_dht_announces_ok_total",
            "counter",
            "DHT announces stored on at least one node.",
            d.announces_ok as f64,
        ),
        (
            "squall_dht_announces_failed_total",
            "counter",
            "DHT announces no node stored (timeout, no close nodes, errors).",
            d.announces_failed as f64,
        ),
        (
            "squall_dht_announce_queue",
            "gauge",
            "Torrents of the current DHT pass not yet announced.",
            d.queue_len as f64,
        ),
        (
            "squall_dht_announces_in_flight",
            "gauge",
            "DHT announces under way.",
            d.in_flight as f64,
        ),
        (
            "squall_dht_last_pass_seconds",
            "gauge",
            "How long the last full DHT pass over the catalog took (0 before the first ends).",
            d.last_pass_secs.unwrap_or(0.0),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_means_absent_and_on_means_every_series() {
        assert_eq!(json(None), Value::Null);
        let mut out = String::new();
        prometheus(&mut out, None);
        assert!(out.is_empty());
        let d = DhtStats {
            running: true,
            nodes: 7,
            announces_ok: 3,
            last_pass_secs: Some(1.5),
            ..DhtStats::default()
        };
        prometheus(&mut out, Some(&d));
        assert!(out.contains("\nsquall_dht_nodes 7\n"), "{out}");
        assert!(out.contains("\nsquall_dht_announces_ok_total 3\n"));
        assert!(out.contains("\nsquall_dht_last_pass_seconds 1.5\n"));
        assert_eq!(json(Some(&d))["nodes"], 7);
    }
}
