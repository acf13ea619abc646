//! JSON rendering of the merged stats (`GET /stats`, read by `squall stats`).
//!
//! Owns: the JSON shape: `{ "version", "process_start_time_secs", "shard_count", "healthy"
//! (every shard accepting), "status" ("ok" | "starting" | "not_accepting" | "degraded", as
//! /health), "torrents": {seeding, skipped, errored, incomplete}, "skipped_torrents": [{file,
//! reason}], "tracker_announces": {ok, failed}, "total": SHARD, "shards": [SHARD...],
//! "top_torrents": [...], "errored_torrents": [{info_hash, name, reason, since}], "dht": null
//! | {...} }` (`since`: Unix seconds; `dht`: see `super::dht`), latencies as percentiles in
//! microseconds. Must never: run on a shard.
//!
//! Shape of one SHARD object (the total has `"shard": null`):
//! `uploaded_bytes`, `upload_bytes_per_sec`, `blocks_served`, `peers_connected`,
//! `peers_accepted`, `accepting`, `fixed_buffers`, `fixed_files`, `registered_ring_fd`, `direct_io`, `page_cache_sends_on`, `multishot_recv`, `recv_buffers_exhausted`, `direct_reads`, `direct_read_fallbacks`, `direct_open_failures`, `readaheads`, `page_cache_sends`, `map_failures`, `page_cache_send_faults`, `maps_over_budget`, `mapped_bytes`, `recv_buffer_bytes`, `peers_closed{reason: n}`, `requests_rejected{reason: n}`, `encrypted_connections`, `encrypted_bytes`, `encryption_plaintext_redials`, `encryption_failures{reason: n}`,
//! the limit counters under their `ShardStats` names, and `request_latency_us`,
//! `disk_read_latency_us`, `handshake_latency_us`, each
//! `{count, p50, p90, p99, p999, max, mean}`, and `http`: the HTTP front-end's
//! `{connections_accepted, connections_open, connections_refused, requests, responses{2xx,
//! 3xx, 4xx, 5xx}, body_bytes_sent, page_cache_sends, buffer_sends, closed{reason: n},
//! request_latency_us}`.

use super::catalog_health::Health;
use super::view::StatsView;
use super::{CloseReason, RejectReason, ShardStats};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Percentiles of a nanosecond histogram, in microseconds (0 when empty).
pub fn latency_us(h: &Histogram<u64>) -> Value {
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64 / 1000.0
        }
    };
    json!({
        "count": h.len(),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        "mean": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    })
}

fn shard_json(s: &ShardStats, shard: Option<usize>, upload_bytes_per_sec: f64) -> Value {
    let closed: Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(s.closed_count(*r))))
        .collect();
    let rejected: Map<String, Value> = RejectReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(s.rejected_count(*r))))
        .collect();
    json!({
        "shard": shard,
        "accepting": s.accepting,
        "fixed_buffers": s.fixed_buffers,
        "fixed_files": s.fixed_files,
        "registered_ring_fd": s.registered_ring_fd,
        "direct_io": s.direct_io,
        "page_cache_sends_on": s.page_cache_sends_on,
        "multishot_recv": s.multishot_recv,
        "uploaded_bytes": s.uploaded_bytes,
        "upload_bytes_per_sec": upload_bytes_per_sec,
        "blocks_served": s.blocks_served,
        "peers_connected": s.peers_connected,
        "peers_accepted": s.peers_accepted,
        "peers_closed": closed,
        "requests_rejected": rejected,
        "accept_errors": s.accept_errors,
        "ring_enter_errors": s.ring_enter_errors,
        "ring_push_failures": s.ring_push_failures,
        "buffer_pool_exhausted": s.buffer_pool_exhausted,
        "send_slots_per_ip_limited": s.send_slots_per_ip_limited,
        "send_slots_per_prefix_limited": s.send_slots_per_prefix_limited,
        "open_files_limit_hit": s.open_files_limit_hit,
        "zc_sends_copied": s.zc_sends_copied,
        "zc_sends_zerocopy": s.zc_sends_zerocopy,
        "zc_connections_switched_to_copy": s.zc_connections_switched_to_copy,
        "disk_errors": s.disk_errors,
        "block_cache": {
            "hits": s.block_cache_hits,
            "misses": s.block_cache_misses,
            "busy": s.block_cache_busy,
            "full": s.block_cache_full,
            "evictions": s.block_cache_evictions,
            "bytes_used": s.block_cache_bytes_used,
        },
        "direct_reads": s.direct_reads,
        "direct_read_fallbacks": s.direct_read_fallbacks,
        "direct_open_failures": s.direct_open_failures,
        "readaheads": s.readaheads,
        "page_cache_sends": s.page_cache_sends,
        "map_failures": s.map_failures,
        "page_cache_send_faults": s.page_cache_send_faults,
        "maps_over_budget": s.maps_over_budget,
        "mapped_bytes": s.mapped_bytes,
        "recv_buffer_bytes": s.recv_buffer_bytes,
        "recv_buffers_exhausted": s.recv_buffers_exhausted,
        "metadata_pieces_served": s.metadata_pieces_served,
        "encrypted_connections": s.encrypted_connections,
        "encryption_plaintext_redials": s.encryption_plaintext_redials,
        "encrypted_bytes": s.encrypted_bytes,
        "encryption_failures": super::MseError::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), json!(s.encryption_failures[r.index()])))
            .collect::<Map<String, Value>>(),
        "extras_loads_refused": s.extras_loads_refused,
        "stats_snapshots_dropped": s.stats_snapshots_dropped,
        "health_reports_dropped": s.health_reports_dropped,
        "request_latency_us": latency_us(&s.request_latency_ns),
        "disk_read_latency_us": latency_us(&s.disk_read_latency_ns),
        "handshake_latency_us": latency_us(&s.handshake_latency_ns),
        "zc_notification_latency_us": latency_us(&s.zc_notification_latency_ns),
        "http": http_json(&s.http),
    })
}

/// The HTTP front-end's counters (`stats::http`).
fn http_json(h: &crate::stats::http::HttpStats) -> Value {
    json!({
        "connections_accepted": h.connections_accepted,
        "connections_open": h.connections_open,
        "connections_refused": h.connections_refused,
        "requests": h.requests(),
        "responses": {"2xx": h.responses_2xx, "3xx": h.responses_3xx, "4xx": h.responses_4xx, "5xx": h.responses_5xx},
        "body_bytes_sent": h.body_bytes_sent,
        "page_cache_sends": h.page_cache_sends,
        "buffer_sends": h.buffer_sends,
        "closed": {"idle_timeout": h.closed_idle, "request_timeout": h.closed_request_timeout, "send_stalled": h.closed_send_stalled, "error": h.closed_error},
        "request_latency_us": latency_us(&h.request_latency_ns),
    })
}

/// The whole view as one JSON document.
pub fn render(view: &StatsView) -> Value {
    let shards: Vec<Value> = view
        .shards()
        .map(|s| shard_json(&s.stats, Some(s.stats.shard), s.upload_bytes_per_sec))
        .collect();
    let top: Vec<Value> = view
        .top_torrents()
        .into_iter()
        .map(|t| {
            json!({
                "info_hash": t.info_hash.to_hex(),
                "name": t.name,
                "uploaded_bytes": t.uploaded_bytes,
                "peers": t.peers,
                "upload_bytes_per_sec": t.upload_bytes_per_sec,
                "request_p50_us": t.request_p50_us,
                "request_p99_us": t.request_p99_us,
            })
        })
        .collect();
    let errored: Vec<Value> = view
        .errored()
        .iter()
        .map(|e| {
            json!({
                "info_hash": e.info_hash.to_hex(),
                "name": e.name,
                "reason": e.reason,
                "since": e.since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            })
        })
        .collect();
    let health = view.catalog_health();
    let skipped: Vec<Value> = health
        .skipped
        .iter()
        .map(|s| json!({ "file": s.file.display().to_string(), "reason": s.reason }))
        .collect();
    let torrents: Map<String, Value> = health
        .states
        .labelled()
        .iter()
        .map(|(state, n)| (state.to_string(), json!(n)))
        .collect();
    let status = match view.health() {
        Health::Ok => "ok",
        Health::Starting => "starting",
        Health::NotAccepting => "not_accepting",
        Health::Degraded(_) => "degraded",
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "process_start_time_secs": health.process_start_secs,
        "shard_count": view.shard_count(),
        "healthy": view.healthy(),
        "status": status,
        "torrents": torrents,
        "skipped_torrents": skipped,
        "tracker_announces": { "ok": health.announces.ok, "failed": health.announces.failed },
        "total": shard_json(&view.total(), None, view.upload_bytes_per_sec()),
        "shards": shards,
        "top_torrents": top,
        "errored_torrents": errored,
        "dht": super::dht::json(view.dht()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    #[test]
    fn percentiles_in_microseconds_per_shard_and_total() {
        // p99 of 100 samples 1..=100 ms is ~99 ms = ~99000 us; the total merges both shards.
        let mut view = StatsView::new(2, 3, HashMap::new());
        for shard in 0..2 {
            let mut s = ShardStats::new(shard);
            s.accepting = true;
            for ms in 1..=100u64 {
                ShardStats::record_latency(&mut s.request_latency_ns, ms * 1_000_000);
            }
            view.apply(s.snapshot(), Instant::now());
        }
        let v = render(&view);
        let p99 = v["total"]["request_latency_us"]["p99"].as_f64().unwrap();
        assert!((98_000.0..=100_100.0).contains(&p99), "{p99}");
        assert_eq!(v["total"]["request_latency_us"]["count"], 200);
        assert_eq!(v["shards"].as_array().unwrap().len(), 2);
        assert_eq!(v["shards"][1]["request_latency_us"]["count"], 100);
        assert_eq!(v["healthy"], true);
        assert_eq!(v["total"]["disk_read_latency_us"]["p50"], 0.0);
        assert_eq!(v["total"]["peers_closed"]["idle_timeout"], 0);
    }
}
