//! Prometheus text exposition (format 0.0.4) of the merged stats.
//!
//! Owns: metric names, HELP/TYPE lines, label escaping, and the fixed latency buckets derived
//! from the hdrhistograms. Must never: run on a shard (it allocates and formats freely).
//!
//! Hand-written rather than the `prometheus`/`prometheus-client` crates: those keep their own
//! registries of atomics that the data path would have to update, while our numbers already
//! live in per-shard snapshots; rendering them is ~200 lines of formatting with no new
//! dependency. Counters and histograms carry a `shard` label (sum them in PromQL for the
//! total); per-torrent series are the top N torrents only (`stats_top_torrents`).

use super::view::StatsView;
use super::{CloseReason, RejectReason, ShardStats};
use hdrhistogram::Histogram;
use std::fmt::Write;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram bucket upper bounds: (nanoseconds, `le` label in seconds).
pub const LATENCY_BUCKETS: [(u64, &str); 17] = [
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Escapes a label value: backslash, double quote and newline (the format's only escapes).
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A per-shard counter or gauge read from each shard's snapshot.
fn per_shard(
    out: &mut String,
    view: &StatsView,
    name: &str,
    kind: &str,
    help: &str,
    value: fn(&ShardStats) -> u64,
) {
    header(out, name, kind, help);
    for s in view.shards() {
        let _ = writeln!(
            out,
            "{name}{{shard=\"{}\"}} {}",
            s.stats.shard,
            value(&s.stats)
        );
    }
}

fn histogram(out: &mut String, view: &StatsView, name: &str, help: &str, pick: HistogramPick) {
    header(out, name, "histogram", help);
    histogram_series(out, view, name, "", pick);
}

/// One histogram's series per shard, with `labels` (`key="value",` each) before `le`.
fn histogram_series(
    out: &mut String,
    view: &StatsView,
    name: &str,
    labels: &str,
    pick: HistogramPick,
) {
    for s in view.shards() {
        let h = pick(&s.stats);
        let shard = s.stats.shard;
        for (ns, le) in LATENCY_BUCKETS {
            let count = if h.is_empty() {
                0
            } else {
                h.count_between(0, ns)
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",{labels}le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",{labels}le=\"+Inf\"}} {}",
            h.len()
        );
        // hdrhistogram keeps no exact sum: mean x count is within its 3-digit precision.
        let sum_secs = if h.is_empty() {
            0.0
        } else {
            h.mean() * h.len() as f64 / 1e9
        };
        let labels = labels.trim_end_matches(',');
        let sep = if labels.is_empty() { "" } else { "," };
        let _ = writeln!(
            out,
            "{name}_sum{{shard=\"{shard}\"{sep}{labels}}} {sum_secs}"
        );
        let _ = writeln!(
            out,
            "{name}_count{{shard=\"{shard}\"{sep}{labels}}} {}",
            h.len()
        );
    }
}

type HistogramPick = fn(&ShardStats) -> &Histogram<u64>;

/// (name, type, help, value) of one per-shard series.
type PerShardMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

/// The HTTP front-end's counters (`stats::http`), per shard.
fn http_metrics(o: &mut String, view: &StatsView) {
    let name = "squall_http_responses_total";
    header(o, name, "counter", "HTTP responses by status class.");
    for s in view.shards() {
        let h = &s.stats.http;
        for (class, n) in [
            ("2xx", h.responses_2xx),
            ("3xx", h.responses_3xx),
            ("4xx", h.responses_4xx),
            ("5xx", h.responses_5xx),
        ] {
            let shard = s.stats.shard;
            let _ = writeln!(o, "{name}{{shard=\"{shard}\",class=\"{class}\"}} {n}");
        }
    }
    let name = "squall_http_closed_total";
    header(
        o,
        name,
        "counter",
        "HTTP connections closed by a deadline or an error.",
    );
    for s in view.shards() {
        let h = &s.stats.http;
        for (reason, n) in [
            ("idle_timeout", h.closed_idle),
            ("request_timeout", h.closed_request_timeout),
            ("send_stalled", h.closed_send_stalled),
            ("error", h.closed_error),
        ] {
            let shard = s.stats.shard;
            let _ = writeln!(o, "{name}{{shard=\"{shard}\",reason=\"{reason}\"}} {n}");
        }
    }
    let counters: [PerShardMetric; 6] = [
        ("squall_http_body_bytes_total", "counter", "HTTP response body bytes handed to the kernel.", |s| s.http.body_bytes_sent),
        ("squall_http_connections_accepted_total", "counter", "HTTP connections accepted.", |s| s.http.connections_accepted),
        ("squall_http_connections_refused_total", "counter", "HTTP connections refused at accept (per-IP/prefix admission shared with peers, or http.connections_per_shard_max).", |s| s.http.connections_refused),
        ("squall_http_connections", "gauge", "HTTP connections open.", |s| s.http.connections_open),
        ("squall_http_page_cache_sends_total", "counter", "HTTP body chunks sent straight from a file's page-cache mapping.", |s| s.http.page_cache_sends),
        ("squall_http_buffer_sends_total", "counter", "HTTP body chunks read into a send-pool buffer first.", |s| s.http.buffer_sends),
    ];
    for (name, kind, help, value) in counters {
        per_shard(o, view, name, kind, help, value);
    }
}

/// Build, start time, catalog torrents by state and tracker announce results.
fn catalog_metrics(o: &mut String, view: &StatsView) {
    let health = view.catalog_health();
    header(
        o,
        "squall_build_info",
        "gauge",
        "Always 1; the version label says which build runs.",
    );
    let _ = writeln!(
        o,
        "squall_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );
    header(
        o,
        "squall_process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
    );
    let _ = writeln!(
        o,
        "squall_process_start_time_seconds {}",
        health.process_start_secs
    );
    header(
        o,
        "squall_torrents",
        "gauge",
        "Catalog torrents by state: seeding (complete), incomplete (some pieces failed verification; the rest are served), errored (a content file failed; not served until a recheck passes), skipped (left out by the last catalog load; see /stats).",
    );
    for (state, n) in health.states.labelled() {
        let _ = writeln!(o, "squall_torrents{{state=\"{state}\"}} {n}");
    }
    header(
        o,
        "squall_tracker_announces_total",
        "counter",
        "Tracker announces by result (ok, failed), every tracker and torrent summed.",
    );
    for (result, n) in [
        ("ok", health.announces.ok),
        ("failed", health.announces.failed),
    ] {
        let _ = writeln!(
            o,
            "squall_tracker_announces_total{{result=\"{result}\"}} {n}"
        );
    }
}

/// Renders every metric of `view`.
pub fn render(view: &StatsView) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let o = &mut out;
    catalog_metrics(o, view);
    header(o, "squall_shards", "gauge", "Shard threads configured.");
    let _ = writeln!(o, "squall_shards {}", view.shard_count());
    header(
        o,
        "squall_resume_write_errors_total",
        "counter",
        "Catalog loads whose resume state could not be written (e.g. the state disk is full).",
    );
    let _ = writeln!(
        o,
        "squall_resume_write_errors_total {}",
        crate::catalog::resume::write_failures_total()
    );
    per_shard(
        o,
        view,
        "squall_shard_accepting",
        "gauge",
        "1 when the shard accepts connections on every listener.",
        |s| u64::from(s.accepting),
    );
    per_shard(
        o,
        view,
        "squall_shard_fixed_buffers",
        "gauge",
        "1 when the shard's buffer pool is registered with io_uring; 0 after the fallback to plain buffers (RLIMIT_MEMLOCK).",
        |s| u64::from(s.fixed_buffers),
    );
    per_shard(
        o,
        view,
        "squall_shard_fixed_files",
        "gauge",
        "1 when the shard reads content files through io_uring fixed-file slots (fixed_files); 0 when off, in splice mode, or refused by the kernel.",
        |s| u64::from(s.fixed_files),
    );
    per_shard(
        o,
        view,
        "squall_shard_registered_ring_fd",
        "gauge",
        "1 when the shard's io_uring fd is registered (register_ring_fd); 0 when off or refused by the kernel.",
        |s| u64::from(s.registered_ring_fd),
    );
    per_shard(
        o,
        view,
        "squall_shard_direct_io",
        "gauge",
        "1 when the shard reads content with O_DIRECT into its block cache (direct_io); 0 when off.",
        |s| u64::from(s.direct_io),
    );
    per_shard(
        o,
        view,
        "squall_shard_page_cache_sends",
        "gauge",
        "1 when the shard sends blocks already in the page cache straight from file mappings (page_cache_sends); 0 when off, or ruled out by direct_io or splice mode.",
        |s| u64::from(s.page_cache_sends_on),
    );
    per_shard(
        o,
        view,
        "squall_shard_multishot_recv",
        "gauge",
        "1 when the shard receives with multishot recvs from a provided-buffer ring (multishot_recv); 0 when off or refused by the kernel.",
        |s| u64::from(s.multishot_recv),
    );
    per_shard(
        o,
        view,
        "squall_uploaded_bytes_total",
        "counter",
        "Payload bytes of piece messages handed to the kernel.",
        |s| s.uploaded_bytes,
    );
    per_shard(
        o,
        view,
        "squall_blocks_served_total",
        "counter",
        "Blocks (piece messages) served.",
        |s| s.blocks_served,
    );
    per_shard(
        o,
        view,
        "squall_peers_connected",
        "gauge",
        "Peers connected now.",
        |s| s.peers_connected,
    );
    per_shard(
        o,
        view,
        "squall_peers_accepted_total",
        "counter",
        "Connections accepted.",
        |s| s.peers_accepted,
    );
    header(
        o,
        "squall_peers_closed_total",
        "counter",
        "Peers closed, by reason.",
    );
    for s in view.shards() {
        for r in CloseReason::ALL {
            let _ = writeln!(
                o,
                "squall_peers_closed_total{{shard=\"{}\",reason=\"{}\"}} {}",
                s.stats.shard,
                r.as_str(),
                s.stats.closed_count(r)
            );
        }
    }
    header(
        o,
        "squall_requests_rejected_total",
        "counter",
        "Block requests not served, by reason.",
    );
    for s in view.shards() {
        for r in RejectReason::ALL {
            let _ = writeln!(
                o,
                "squall_requests_rejected_total{{shard=\"{}\",reason=\"{}\"}} {}",
                s.stats.shard,
                r.as_str(),
                s.stats.rejected_count(r)
            );
        }
    }
    per_shard(
        o,
        view,
        "squall_accept_errors_total",
        "counter",
        "accept(2) failures (e.g. EMFILE).",
        |s| s.accept_errors,
    );
    per_shard(
        o,
        view,
        "squall_ring_enter_errors_total",
        "counter",
        "io_uring_enter failures retried as transient (EAGAIN, ENOMEM).",
        |s| s.ring_enter_errors,
    );
    per_shard(
        o,
        view,
        "squall_ring_push_failures_total",
        "counter",
        "Submissions the ring could not queue; their ops completed as cancelled.",
        |s| s.ring_push_failures,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_hits_total",
        "counter",
        "Blocks sent from the hot-block cache, with no disk read.",
        |s| s.block_cache_hits,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_misses_total",
        "counter",
        "Cacheable blocks that were not in the hot-block cache.",
        |s| s.block_cache_misses,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_busy_total",
        "counter",
        "Blocks served uncached because another send was filling their cache entry.",
        |s| s.block_cache_busy,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_full_total",
        "counter",
        "Blocks served uncached because every cache entry was in use by a send.",
        |s| s.block_cache_full,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_evictions_total",
        "counter",
        "Hot-block cache entries evicted (CLOCK).",
        |s| s.block_cache_evictions,
    );
    per_shard(
        o,
        view,
        "squall_direct_reads_total",
        "counter",
        "Block reads (file extents) done with O_DIRECT into the block cache (direct_io).",
        |s| s.direct_reads,
    );
    per_shard(
        o,
        view,
        "squall_direct_read_fallbacks_total",
        "counter",
        "Block reads done through the page cache while direct_io is on: unaligned extents, file tails, blocks the cache could not take, files without O_DIRECT.",
        |s| s.direct_read_fallbacks,
    );
    per_shard(
        o,
        view,
        "squall_direct_open_failures_total",
        "counter",
        "Content files whose O_DIRECT open failed (direct_io); they are read through the page cache.",
        |s| s.direct_open_failures,
    );
    per_shard(
        o,
        view,
        "squall_readaheads_total",
        "counter",
        "Readahead hints (fadvise WILLNEED for the rest of a piece) issued (piece_readahead).",
        |s| s.readaheads,
    );
    per_shard(
        o,
        view,
        "squall_page_cache_sends_total",
        "counter",
        "Blocks sent straight from a file mapping because their pages were in the page cache (page_cache_sends): one copy instead of a read and a send.",
        |s| s.page_cache_sends,
    );
    per_shard(
        o,
        view,
        "squall_map_failures_total",
        "counter",
        "Content files that could not be mapped for page_cache_sends (e.g. vm.max_map_count reached); they are read instead.",
        |s| s.map_failures,
    );
    per_shard(
        o,
        view,
        "squall_page_cache_send_faults_total",
        "counter",
        "Sends from a file mapping that faulted (-EFAULT: the file shrank under the mapping); the peer is closed as on a disk error.",
        |s| s.page_cache_send_faults,
    );
    per_shard(
        o,
        view,
        "squall_maps_over_budget_total",
        "counter",
        "Content files read instead of mapped because files in use held page_cache_map_bytes_max (page_cache_sends).",
        |s| s.maps_over_budget,
    );
    per_shard(
        o,
        view,
        "squall_mapped_bytes",
        "gauge",
        "Total length of the content files the shard keeps mapped for page_cache_sends (at most page_cache_map_bytes_max).",
        |s| s.mapped_bytes,
    );
    per_shard(
        o,
        view,
        "squall_recv_buffer_bytes",
        "gauge",
        "Receive-buffer bytes the shard's peers hold beyond the first 4 KiB of each (partial large messages; at most recv_buffer_bytes_per_shard_max).",
        |s| s.recv_buffer_bytes,
    );
    per_shard(
        o,
        view,
        "squall_recv_buffers_exhausted_total",
        "counter",
        "Multishot recvs ended because the shard's receive buffer ring was empty (re-armed at once; raise recv_buffers_per_shard if it climbs).",
        |s| s.recv_buffers_exhausted,
    );
    per_shard(
        o,
        view,
        "squall_block_cache_bytes_used",
        "gauge",
        "Bytes of the hot-block cache holding blocks.",
        |s| s.block_cache_bytes_used,
    );
    per_shard(
        o,
        view,
        "squall_buffer_pool_exhausted_total",
        "counter",
        "Times a peer waited because every send buffer slot was in use.",
        |s| s.buffer_pool_exhausted,
    );
    per_shard(
        o,
        view,
        "squall_send_slots_per_ip_limited_total",
        "counter",
        "Times a peer waited because its source (IPv4 address, IPv6 /64) held \
         send_slots_per_ip_max send slots.",
        |s| s.send_slots_per_ip_limited,
    );
    per_shard(
        o,
        view,
        "squall_send_slots_per_prefix_limited_total",
        "counter",
        "Times a peer waited because its network (IPv4 /24, IPv6 /48) held \
         send_slots_per_prefix_max send slots.",
        |s| s.send_slots_per_prefix_limited,
    );
    per_shard(
        o,
        view,
        "squall_open_files_limit_hit_total",
        "counter",
        "Times the per-shard open-file cache was full of files in use.",
        |s| s.open_files_limit_hit,
    );
    header(
        o,
        "squall_zerocopy_sends_total",
        "counter",
        "Zero-copy sends by what the kernel reported: copied or zerocopy.",
    );
    for s in view.shards() {
        for (result, v) in [
            ("copied", s.stats.zc_sends_copied),
            ("zerocopy", s.stats.zc_sends_zerocopy),
        ] {
            let _ = writeln!(
                o,
                "squall_zerocopy_sends_total{{shard=\"{}\",result=\"{result}\"}} {v}",
                s.stats.shard
            );
        }
    }
    per_shard(
        o,
        view,
        "squall_zerocopy_connections_switched_total",
        "counter",
        "Connections switched from zerocopy to copy sends because the kernel copied.",
        |s| s.zc_connections_switched_to_copy,
    );
    per_shard(
        o,
        view,
        "squall_disk_errors_total",
        "counter",
        "Failed or short disk reads and file opens.",
        |s| s.disk_errors,
    );
    per_shard(
        o,
        view,
        "squall_metadata_pieces_served_total",
        "counter",
        "BEP 9 metadata pieces served.",
        |s| s.metadata_pieces_served,
    );
    per_shard(
        o,
        view,
        "squall_encrypted_connections_total",
        "counter",
        "MSE/PE connections that finished the handshake with RC4.",
        |s| s.encrypted_connections,
    );
    per_shard(
        o,
        view,
        "squall_encryption_plaintext_redials_total",
        "counter",
        "Dial-outs redialed in plaintext under encryption = prefer after the peer ended the MSE handshake.",
        |s| s.encryption_plaintext_redials,
    );
    per_shard(
        o,
        view,
        "squall_encrypted_bytes_total",
        "counter",
        "Bytes encrypted (sent) and decrypted (received) with RC4.",
        |s| s.encrypted_bytes,
    );
    header(
        o,
        "squall_encryption_failures_total",
        "counter",
        "MSE/PE handshakes that failed, by reason (the peer was closed).",
    );
    for s in view.shards() {
        for r in super::MseError::ALL {
            let _ = writeln!(
                o,
                "squall_encryption_failures_total{{shard=\"{}\",reason=\"{}\"}} {}",
                s.stats.shard,
                r.as_str(),
                s.stats.encryption_failures[r.index()]
            );
        }
    }
    per_shard(
        o,
        view,
        "squall_extras_loads_refused_total",
        "counter",
        "Loads of a torrent's info dictionary or v2 trees refused (queue full) or timed out; \
         the waiting peers got rejects.",
        |s| s.extras_loads_refused,
    );
    header(
        o,
        "squall_torrents_errored",
        "gauge",
        "Torrents errored now (a content file failed; their requests are rejected until a recheck passes).",
    );
    let _ = writeln!(o, "squall_torrents_errored {}", view.errored().len());
    per_shard(
        o,
        view,
        "squall_health_reports_dropped_total",
        "counter",
        "Content-fault reports dropped because the channel to the control thread was full (retried).",
        |s| s.health_reports_dropped,
    );
    per_shard(
        o,
        view,
        "squall_stats_snapshots_dropped_total",
        "counter",
        "Stats snapshots dropped because the channel to the control thread was full.",
        |s| s.stats_snapshots_dropped,
    );
    // One family, two protocols: BitTorrent (request parsed -> its block handed to the
    // kernel) and HTTP (request parsed -> the whole response handed to the kernel).
    let name = "squall_request_latency_seconds";
    header(
        o,
        name,
        "histogram",
        "Request parsed to its answer handed to the kernel (BitTorrent: the block; HTTP: the whole response).",
    );
    histogram_series(o, view, name, "protocol=\"bittorrent\",", |s| {
        &s.request_latency_ns
    });
    histogram_series(o, view, name, "protocol=\"http\",", |s| {
        &s.http.request_latency_ns
    });
    http_metrics(o, view);
    histogram(
        o,
        view,
        "squall_disk_read_latency_seconds",
        "Disk read submitted to completed.",
        |s| &s.disk_read_latency_ns,
    );
    histogram(
        o,
        view,
        "squall_handshake_latency_seconds",
        "Connection accepted to handshake answered.",
        |s| &s.handshake_latency_ns,
    );
    histogram(
        o,
        view,
        "squall_zc_notification_latency_seconds",
        "Zerocopy mode: request parsed to the send's zero-copy notification.",
        |s| &s.zc_notification_latency_ns,
    );
    let top = view.top_torrents();
    header(
        o,
        "squall_torrent_uploaded_bytes_total",
        "counter",
        "Payload bytes uploaded per torrent (top N torrents by uploaded bytes only).",
    );
    for t in &top {
        let _ = writeln!(
            o,
            "squall_torrent_uploaded_bytes_total{{info_hash=\"{}\",name=\"{}\"}} {}",
            t.info_hash.to_hex(),
            escape_label(&t.name),
            t.uploaded_bytes
        );
    }
    header(
        o,
        "squall_torrent_peers",
        "gauge",
        "Peers connected per torrent (top N torrents by uploaded bytes only).",
    );
    for t in &top {
        let _ = writeln!(
            o,
            "squall_torrent_peers{{info_hash=\"{}\",name=\"{}\"}} {}",
            t.info_hash.to_hex(),
            escape_label(&t.name),
            t.peers
        );
    }
    header(
        o,
        "squall_torrent_upload_bytes_per_second",
        "gauge",
        "Recent upload rate per torrent (top N torrents by uploaded bytes only).",
    );
    for t in &top {
        let _ = writeln!(
            o,
            "squall_torrent_upload_bytes_per_second{{info_hash=\"{}\",name=\"{}\"}} {}",
            t.info_hash.to_hex(),
            escape_label(&t.name),
            t.upload_bytes_per_sec
        );
    }
    header(
        o,
        "squall_torrent_request_latency_seconds",
        "gauge",
        "Request latency percentiles per torrent since start (top N torrents only; log buckets, +-11%).",
    );
    for t in &top {
        for (q, us) in [("0.5", t.request_p50_us), ("0.99", t.request_p99_us)] {
            let _ = writeln!(
                o,
                "squall_torrent_request_latency_seconds{{info_hash=\"{}\",name=\"{}\",quantile=\"{q}\"}} {}",
                t.info_hash.to_hex(),
                escape_label(&t.name),
                us / 1e6
            );
        }
    }
    super::dht::prometheus(o, view.dht());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::InfoHash;
    use std::collections::HashMap;
    use std::time::Instant;

    type Sample = (String, Vec<(String, String)>, f64);

    /// (name, labels, value) of every sample line; panics on a malformed line.
    fn parse(text: &str) -> Vec<Sample> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    (name.to_string(), parse_labels(body))
                }
            };
            samples.push((name, labels, value));
        }
        samples
    }

    fn parse_labels(body: &str) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'));
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value") {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("dangling escape"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        labels
    }

    fn sample_view() -> StatsView {
        let h = InfoHash([0xab; 20]);
        let mut names = HashMap::new();
        names.insert(h, "we\"ird\\name\nx".to_string());
        let mut view = StatsView::new(2, 5, names);
        for shard in 0..2 {
            let mut s = ShardStats::new(shard);
            s.accepting = true;
            s.uploaded_bytes = 1000 * (shard as u64 + 1);
            s.closed(CloseReason::IdleTimeout);
            for ns in [
                20_000u64,
                70_000,
                300_000,
                2_000_000,
                20_000_000_000,
                90_000_000_000,
            ] {
                ShardStats::record_latency(&mut s.request_latency_ns, ns);
            }
            s.torrent_uploaded(h, 500);
            s.torrent_peers(h, 1);
            view.apply(s.snapshot(), Instant::now());
        }
        view
    }

    #[test]
    fn histograms_are_cumulative_and_inf_equals_count() {
        // Every bucket series is monotone in `le`, and +Inf equals _count, per shard.
        let text = render(&sample_view());
        let samples = parse(&text);
        for name in [
            "squall_request_latency_seconds",
            "squall_disk_read_latency_seconds",
            "squall_handshake_latency_seconds",
            "squall_zc_notification_latency_seconds",
        ] {
            for shard in ["0", "1"] {
                let has_shard = |l: &Vec<(String, String)>| {
                    l.iter().any(|(k, v)| k == "shard" && v == shard)
                        && !l.iter().any(|(k, v)| k == "protocol" && v == "http")
                };
                let buckets: Vec<(String, f64)> = samples
                    .iter()
                    .filter(|(n, l, _)| *n == format!("{name}_bucket") && has_shard(l))
                    .map(|(_, l, v)| {
                        let le = l.iter().find(|(k, _)| k == "le").unwrap().1.clone();
                        (le, *v)
                    })
                    .collect();
                assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
                for pair in buckets.windows(2) {
                    assert!(pair[0].1 <= pair[1].1, "{name} not cumulative: {pair:?}");
                }
                let count = samples
                    .iter()
                    .find(|(n, l, _)| *n == format!("{name}_count") && has_shard(l))
                    .unwrap()
                    .2;
                let inf = buckets.last().unwrap();
                assert_eq!(inf.0, "+Inf");
                assert_eq!(inf.1, count);
            }
        }
        // The request histogram: 20us and 70us fall at or below 100us; 20s and the clamped
        // 60s only in +Inf.
        let b = |le: &str| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == "squall_request_latency_seconds_bucket"
                        && l.iter().any(|(k, v)| k == "le" && v == le)
                })
                .unwrap()
                .2
        };
        assert_eq!(b("0.00005"), 1.0);
        assert_eq!(b("0.0001"), 2.0);
        assert_eq!(b("10"), 4.0);
        assert_eq!(b("+Inf"), 6.0);
    }

    #[test]
    fn counters_labels_and_escaping() {
        // Counters are per shard, every name has HELP and TYPE, and label values escape.
        let text = render(&sample_view());
        let samples = parse(&text);
        let total: f64 = samples
            .iter()
            .filter(|(n, _, _)| n == "squall_uploaded_bytes_total")
            .map(|(_, _, v)| v)
            .sum();
        assert_eq!(total, 3000.0);
        let t = samples
            .iter()
            .find(|(n, _, _)| n == "squall_torrent_uploaded_bytes_total")
            .unwrap();
        assert_eq!(t.2, 1000.0);
        assert!(t.1.contains(&("name".into(), "we\"ird\\name\nx".into())));
        let peers = samples
            .iter()
            .find(|(n, _, _)| n == "squall_torrent_peers")
            .unwrap();
        assert_eq!(peers.2, 2.0);
        for (name, _, _) in &samples {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
        for required in [
            "squall_peers_connected",
            "squall_peers_accepted_total",
            "squall_blocks_served_total",
            "squall_peers_closed_total",
            "squall_requests_rejected_total",
            "squall_buffer_pool_exhausted_total",
            "squall_stats_snapshots_dropped_total",
            "squall_health_reports_dropped_total",
        ] {
            assert!(samples.iter().any(|(n, _, _)| n == required), "{required}");
        }
    }

    #[test]
    fn errored_torrents_gauge_counts_the_monitor_rows() {
        // The gauge is the number of rows the health monitor last handed the view.
        let mut view = sample_view();
        let gauge = |v: &StatsView| {
            parse(&render(v))
                .into_iter()
                .find(|(n, _, _)| n == "squall_torrents_errored")
                .unwrap()
                .2
        };
        assert_eq!(gauge(&view), 0.0);
        view.set_errored(vec![crate::plane::ErroredRow {
            info_hash: InfoHash([1; 20]),
            name: "a".into(),
            reason: "file /d/a: short read".into(),
            since: std::time::SystemTime::now(),
        }]);
        assert_eq!(gauge(&view), 1.0);
        let json = crate::stats::json::render(&view);
        assert_eq!(
            json["errored_torrents"][0]["reason"],
            "file /d/a: short read"
        );
        assert_eq!(
            json["errored_torrents"][0]["info_hash"],
            InfoHash([1; 20]).to_hex()
        );
    }

    #[test]
    fn catalog_states_announces_build_and_start_time() {
        // Torrents by state, announce results, build info and start time are exposed as the
        // control loop set them, in JSON too (with the skipped torrents' files and reasons).
        use crate::stats::catalog_health::{SkippedRow, TorrentStates, TrackerAnnounces};
        let mut view = sample_view();
        {
            let h = view.catalog_health_mut();
            h.states = TorrentStates {
                seeding: 3,
                skipped: 1,
                errored: 0,
                incomplete: 2,
            };
            h.announces = TrackerAnnounces { ok: 7, failed: 4 };
            h.skipped = vec![SkippedRow {
                file: "/t/x.torrent".into(),
                reason: "missing".into(),
            }];
        }
        let samples = parse(&render(&view));
        let value = |name: &str, label: (&str, &str)| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l.contains(&(label.0.into(), label.1.into())))
                .map(|s| s.2)
        };
        assert_eq!(value("squall_torrents", ("state", "seeding")), Some(3.0));
        assert_eq!(value("squall_torrents", ("state", "skipped")), Some(1.0));
        assert_eq!(value("squall_torrents", ("state", "errored")), Some(0.0));
        assert_eq!(value("squall_torrents", ("state", "incomplete")), Some(2.0));
        assert_eq!(
            value("squall_tracker_announces_total", ("result", "ok")),
            Some(7.0)
        );
        assert_eq!(
            value("squall_tracker_announces_total", ("result", "failed")),
            Some(4.0)
        );
        assert_eq!(
            value("squall_build_info", ("version", env!("CARGO_PKG_VERSION"))),
            Some(1.0)
        );
        let start = samples
            .iter()
            .find(|(n, _, _)| n == "squall_process_start_time_seconds")
            .unwrap()
            .2;
        assert!(start > 1.6e9, "{start}");
        let json = crate::stats::json::render(&view);
        assert_eq!(json["skipped_torrents"][0]["file"], "/t/x.torrent");
        assert_eq!(json["torrents"]["incomplete"], 2);
        assert_eq!(json["tracker_announces"]["failed"], 4);
        assert_eq!(json["status"], "degraded");
    }
}
