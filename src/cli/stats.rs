//! `squall stats`: a terminal view of a running seeder, read from its admin endpoint.
//!
//! Owns: a minimal HTTP GET of `/stats` and the human table. Must never: talk to shards or
//! read anything but the admin endpoint (it works against any `squall seed --admin ADDR`).

use squall_engine::config::ADMIN_LISTEN_DEFAULT;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

/// Show live stats of a running `squall seed`: throughput, peers, latency percentiles per
/// shard, top torrents. Redrawn every second until Ctrl-C; `--once` prints one snapshot.
///
/// When the seeder's admin endpoint needs a token, put it in SQUALL_ADMIN_TOKEN.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Admin endpoint of the seeder (its `--admin` / `[admin] listen`).
    #[arg(long, value_name = "ADDR:PORT", default_value = ADMIN_LISTEN_DEFAULT)]
    pub admin: String,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Print the raw JSON of /stats instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Connect and I/O timeout for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(args: StatsArgs) -> Result<ExitCode, String> {
    let addr = resolve(&args.admin)?;
    let token = std::env::var("SQUALL_ADMIN_TOKEN").ok();
    let terminal = std::io::stdout().is_terminal();
    loop {
        let v = fetch_stats(addr, token.as_deref())?;
        let text = if args.json {
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        } else {
            render_table(&v)
        };
        let mut out = std::io::stdout().lock();
        if !args.once && terminal {
            // Clear the screen and home the cursor, so the view redraws in place.
            let _ = out.write_all(b"\x1b[2J\x1b[H");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn resolve(admin: &str) -> Result<SocketAddr, String> {
    admin
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!("--admin {admin:?}: expected ADDR:PORT, e.g. {ADMIN_LISTEN_DEFAULT}")
        })
}

/// GET /stats and parse it.
pub fn fetch_stats(addr: SocketAddr, token: Option<&str>) -> Result<serde_json::Value, String> {
    let (status, body) = super::admin_client::request(
        addr,
        token,
        "GET",
        "/stats",
        None,
        FETCH_TIMEOUT,
        &format!("is `squall seed` running with --admin {addr}?"),
    )?;
    let body = body.as_str();
    match status {
        200 => {}
        401 => {
            return Err(format!(
                "{addr}: unauthorized: set SQUALL_ADMIN_TOKEN to the seeder's [admin] token"
            ))
        }
        other => {
            return Err(format!(
                "{addr}: GET /stats answered {other}: {}",
                body.trim()
            ))
        }
    }
    serde_json::from_str(body).map_err(|e| format!("{addr}: /stats is not valid JSON: {e}"))
}

fn mib(bytes: f64) -> f64 {
    bytes / (1u64 << 20) as f64
}

/// The human table: one line per shard plus the total, then the top torrents.
pub fn render_table(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let mut out = String::new();
    let total = &v["total"];
    let _ = writeln!(
        out,
        "squall: {} shard(s), {} | throughput {:.3} Gb/s | peers {} | uploaded {:.1} MiB | blocks {}",
        u(&v["shard_count"]),
        if v["healthy"].as_bool().unwrap_or(false) { "healthy" } else { "NOT healthy" },
        f(&total["upload_bytes_per_sec"]) * 8.0 / 1e9,
        u(&total["peers_connected"]),
        mib(f(&total["uploaded_bytes"])),
        u(&total["blocks_served"]),
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:>6} {:>9} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "shard",
        "peers",
        "Gb/s",
        "uploaded MiB",
        "requests",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "disk p99"
    );
    let mut row = |label: String, s: &serde_json::Value| {
        let lat = &s["request_latency_us"];
        let _ = writeln!(
            out,
            "{:<6} {:>6} {:>9.3} {:>12.1} {:>12} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            label,
            u(&s["peers_connected"]),
            f(&s["upload_bytes_per_sec"]) * 8.0 / 1e9,
            mib(f(&s["uploaded_bytes"])),
            u(&lat["count"]),
            f(&lat["p50"]),
            f(&lat["p99"]),
            f(&lat["p999"]),
            f(&s["disk_read_latency_us"]["p99"]),
        );
    };
    for s in v["shards"].as_array().into_iter().flatten() {
        row(u(&s["shard"]).to_string(), s);
    }
    row("total".to_string(), total);
    let http = &total["http"];
    if u(&http["connections_accepted"]) > 0 {
        // The HTTP front-end (`--http`): its own line, beside the BitTorrent table.
        let r = &http["responses"];
        let lat = &http["request_latency_us"];
        let _ = writeln!(
            out,
            "\nhttp: {} request(s) (2xx {}, 3xx {}, 4xx {}, 5xx {}) | body {:.1} MiB | \
             connections {} open | latency p50 {:.0} us, p99 {:.0} us",
            u(&http["requests"]),
            u(&r["2xx"]),
            u(&r["3xx"]),
            u(&r["4xx"]),
            u(&r["5xx"]),
            mib(f(&http["body_bytes_sent"])),
            u(&http["connections_open"]),
            f(&lat["p50"]),
            f(&lat["p99"]),
        );
    }
    let top = v["top_torrents"].as_array().cloned().unwrap_or_default();
    if !top.is_empty() {
        let _ = writeln!(
            out,
            "\ntop torrents\n{:<40} {:>6} {:>12} {:>7} {:>8} {:>8}  name",
            "info-hash", "peers", "uploaded MiB", "Gb/s", "p50 us", "p99 us"
        );
        for t in &top {
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>12.1} {:>7.3} {:>8.0} {:>8.0}  {}",
                t["info_hash"].as_str().unwrap_or(""),
                u(&t["peers"]),
                mib(f(&t["uploaded_bytes"])),
                f(&t["upload_bytes_per_sec"]) * 8.0 / 1e9,
                f(&t["request_p50_us"]),
                f(&t["request_p99_us"]),
                t["name"].as_str().unwrap_or("").escape_debug(),
            );
        }
    }
    let errored = v["errored_torrents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !errored.is_empty() {
        let _ = writeln!(
            out,
            "
ERRORED torrents (requests rejected until a recheck passes)
{:<40}  name: reason",
            "info-hash"
        );
        for t in &errored {
            let _ = writeln!(
                out,
                "{:<40}  {}: {}",
                t["info_hash"].as_str().unwrap_or(""),
                t["name"].as_str().unwrap_or("").escape_debug(),
                t["reason"].as_str().unwrap_or("").escape_debug(),
            );
        }
    }
    out.push_str(&dht_line(&v["dht"]));
    out
}

/// One line about the DHT node: absent when the DHT is off.
fn dht_line(d: &serde_json::Value) -> String {
    if !d.is_object() {
        return String::new();
    }
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    if let Some(why) = d["error"].as_str() {
        return format!(
            "
dht: NOT running: {why}
"
        );
    }
    let pass = match d["last_pass_secs"].as_f64() {
        Some(s) => format!("{s:.0} s"),
        None => "not yet".to_string(),
    };
    format!(
        "
dht: {} on {} | nodes {} | torrents {} | announces ok {} failed {} | queue {} | last full pass {}
",
        if d["running"].as_bool().unwrap_or(false) {
            "running"
        } else {
            "starting"
        },
        d["listen"].as_str().unwrap_or("-"),
        u(&d["nodes"]),
        u(&d["torrents"]),
        u(&d["announces_ok"]),
        u(&d["announces_failed"]),
        u(&d["queue_len"]),
        pass,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_engine::metainfo::InfoHash;
    use squall_engine::stats::view::StatsView;
    use squall_engine::stats::{json, ShardStats};
    use std::collections::HashMap;
    use std::time::Instant;

    #[test]
    fn table_has_a_row_per_shard_total_and_top_torrents() {
        // The table reads the same JSON the endpoint serves: shard rows, a total, torrents.
        let h = InfoHash([3; 20]);
        let names = HashMap::from([(h, "movie.mkv".to_string())]);
        let mut view = StatsView::new(2, 5, names);
        for shard in 0..2 {
            let mut s = ShardStats::new(shard);
            s.accepting = true;
            s.peers_connected = 3;
            ShardStats::record_latency(&mut s.request_latency_ns, 250_000);
            let t0 = Instant::now();
            let asked = [t0 - std::time::Duration::from_micros(300)];
            s.torrent_batch_sent(h, 1 << 20, Some(&asked), t0);
            view.apply(s.snapshot(), Instant::now());
        }
        let text = render_table(&json::render(&view));
        assert!(text.contains("2 shard(s), healthy"), "{text}");
        assert!(text.contains("Gb/s   p50 us   p99 us  name"), "{text}");
        let row = text.lines().find(|l| l.contains("movie.mkv")).unwrap();
        let p50: f64 = row.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert!((250.0..=350.0).contains(&p50), "{text}");
        assert!(text.contains("\n0 ") && text.contains("\n1 ") && text.contains("\ntotal "));
        assert!(
            text.contains("movie.mkv") && text.contains(&h.to_hex()),
            "{text}"
        );
        assert!(!text.contains("ERRORED"), "{text}");
        view.set_errored(vec![squall_engine::plane::ErroredRow {
            info_hash: h,
            name: "movie.mkv".into(),
            reason: "file /d/movie.mkv: short read (0 of 16384 bytes)".into(),
            since: std::time::SystemTime::now(),
        }]);
        let text = render_table(&json::render(&view));
        assert!(
            text.contains("ERRORED") && text.contains("file /d/movie.mkv: short read"),
            "{text}"
        );
        assert!(!text.contains("dht:"), "DHT off: no line\n{text}");
        view.set_dht(Some(squall_engine::dht::DhtStats {
            running: true,
            nodes: 12,
            announces_ok: 5,
            ..Default::default()
        }));
        let text = render_table(&json::render(&view));
        assert!(
            text.contains("dht: running") && text.contains("nodes 12") && text.contains("ok 5"),
            "{text}"
        );
    }
}
