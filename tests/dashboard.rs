//! The dashboard at `/` in a real browser: headless Chromium (Debian `chromium`), driven over
//! the W3C WebDriver protocol by `chromedriver` (Debian `chromium-driver`), loads it while
//! libtorrent downloads from squall. The test waits until the SVG charts are drawn (polling
//! for their elements), reads the numbers the page shows and checks them against `/api/v1`,
//! `/stats` and `/metrics` fetched right after (within the drift of a live figure), and saves
//! WebDriver's screenshot as CARGO_TARGET_TMPDIR/dashboard/dashboard.png (printed).
//!
//! The WebDriver client is a few functions over std's TcpStream (loopback HTTP/1.1 + JSON):
//! no crate, nothing beyond 127.0.0.1.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One WebDriver command: `method path` with a JSON body; the answer's `value`. Panics on a
/// WebDriver error (the message says what the browser refused).
fn wd(driver: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect_timeout(&driver, Duration::from_secs(5)).expect("chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let body = read_answer(&mut s);
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        v["value"]["error"].is_null(),
        "WebDriver {method} {path}: {}",
        v["value"]
    );
    v["value"].clone()
}

/// One HTTP answer's body: chromedriver keeps the connection open whatever the request
/// says, so the body is read to its Content-Length (or its last chunk), not to EOF.
fn read_answer(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            match length {
                Some(n) if body.len() >= n => return body[..n].to_string(),
                None if head.contains("transfer-encoding: chunked")
                    && body.ends_with("0\r\n\r\n") =>
                {
                    return unchunk(body)
                }
                _ => {}
            }
        }
        let n = s.read(&mut buf).expect("chromedriver answer");
        if n == 0 {
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (_, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
            return body.to_string();
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// A chunked HTTP body, joined.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Standard base64 (WebDriver's screenshot encoding) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let mut acc = 0u32;
        for (i, s) in chunk.iter().enumerate() {
            acc |= u32::from(*s) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    _child: KillOnDrop,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = KillOnDrop(child);
        wait_for(Duration::from_secs(20), "chromedriver to listen", || {
            TcpStream::connect(addr).ok()?;
            (wd(addr, "GET", "/status", None)["ready"] == true).then_some(())
        });
        Driver {
            _child: child,
            addr,
        }
    }

    /// A new headless Chromium session with a private profile; its id.
    fn session(&self, profile: &std::path::Path) -> String {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--window-size=1280,1100",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = wd(self.addr, "POST", "/session", Some(&caps));
        v["sessionId"].as_str().expect("sessionId").to_string()
    }

    fn call(&self, session: &str, method: &str, what: &str, body: Option<&Value>) -> Value {
        wd(
            self.addr,
            method,
            &format!("/session/{session}/{what}"),
            body,
        )
    }

    /// Elements matching a CSS selector (WebDriver element references).
    fn find_all(&self, session: &str, css: &str) -> Vec<Value> {
        let q = json!({ "using": "css selector", "value": css });
        self.call(session, "POST", "elements", Some(&q))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The rendered text of the element with `id`.
    fn text(&self, session: &str, id: &str) -> String {
        let q = json!({ "using": "css selector", "value": format!("#{id}") });
        let el = self.call(session, "POST", "element", Some(&q));
        let handle = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element reference")
            .to_string();
        self.call(session, "GET", &format!("element/{handle}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn script(&self, session: &str, script: &str) -> Value {
        let q = json!({ "script": script, "args": [] });
        self.call(session, "POST", "execute/sync", Some(&q))
    }
}

/// |a - b| within `rel` of the larger plus `slack`: two reads of one live figure.
fn close(a: f64, b: f64, rel: f64, slack: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + slack
}

#[test]
fn dashboard_shows_live_numbers_in_chromium_over_webdriver() {
    // During a rate-limited libtorrent download the page, in a real browser, draws its SVG
    // charts and shows: the torrent count of /api/v1, the torrent in its top table with the
    // Gb/s and request p50/p99 /api/v1 gives for it, uploaded bytes and peers that /metrics
    // confirms, and request latency close to /stats. A screenshot is saved.
    if !tool_available("chromium", Command::new("chromium").arg("--version"))
        || !tool_available(
            "chromedriver",
            Command::new("chromedriver").arg("--version"),
        )
        || !libtorrent_available()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    write_file(&content.join("film.bin"), &pattern_bytes(32 << 20, 9));
    let squall = SeedArgs::content(&content)
        .state(&tmp.path().join("state"))
        .shards(2)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let hash = squall.torrents[0].0.clone();
    let torrent = made_torrent(&tmp.path().join("state"), "film.bin");
    let save = tmp.path().join("save");
    let download = lt_command(
        Source::Torrent(&torrent),
        &save,
        &squall.peer(),
        &["--rate-limit", "1500000"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start lt_download");
    let _download = KillOnDrop(download);
    wait_for(Duration::from_secs(20), "the download to start", || {
        let (_, body) = http_get(admin, "/stats");
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["total"]["uploaded_bytes"].as_u64()? > 0).then_some(())
    });

    let driver = Driver::start();
    let session = driver.session(&tmp.path().join("profile"));
    driver.call(
        &session,
        "POST",
        "url",
        Some(&json!({ "url": format!("http://{admin}/") })),
    );
    // Rendered: both line charts hold a series, the histogram its bars, the top table our
    // torrent, after a few polls (a line needs two samples to be more than a dot).
    wait_for(Duration::from_secs(30), "the charts to render", || {
        let lines = driver.find_all(&session, "svg polyline.series").len();
        let bars = driver.find_all(&session, "#chart-buckets rect.bar").len();
        let samples = driver.script(&session, "return +document.body.dataset.samples;");
        let rows = driver.find_all(&session, "#top-torrents tr").len();
        (lines >= 3 && bars >= 1 && samples.as_u64()? >= 3 && rows >= 2).then_some(())
    });
    // A live figure moves between reads: bracket the page's last poll with one read of the
    // torrent from /api/v1 before it (the page polls again within a second) and one after.
    let one = format!("/api/v1/torrents/{hash}");
    let (_, api_before) = admin_request(admin, "GET", &one, None, b"");
    std::thread::sleep(Duration::from_millis(1200));
    let shown_uploaded = driver.script(
        &session,
        "return +document.getElementById('uploaded-mib').dataset.bytes;",
    );
    let top = driver.script(
        &session,
        "return [...document.querySelectorAll('#top-torrents tr')].slice(1)\
         .map((r) => [...r.cells].map((c) => c.textContent));",
    );
    let status = driver.text(&session, "status");
    let torrents_total = driver.text(&session, "torrents-total");
    let peers_total = driver.text(&session, "peers-total");
    let req_p50: f64 = driver.text(&session, "req-p50").parse().unwrap();
    let gbps_total: f64 = driver.text(&session, "throughput-gbps").parse().unwrap();
    // The same figures from the endpoints, right after the page's last poll.
    let (_, metrics) = http_get(admin, "/metrics");
    let (_, stats) = http_get(admin, "/stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let (_, api) = admin_request(admin, "GET", &one, None, b"");
    let (_, list) = admin_request(admin, "GET", "/api/v1/torrents", None, b"");

    assert_eq!(status, "ok");
    assert_eq!(torrents_total, list["total"].to_string(), "torrent count");
    let row = top
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == hash.as_str())
        .unwrap_or_else(|| panic!("top torrents lack {hash}: {top}"))
        .clone();
    let cell = |i: usize| -> f64 { row[i].as_str().unwrap().parse().unwrap() };
    // Shown within `rel` (plus `slack`) of the /api/v1 value before or after the page's poll.
    let matches = |shown: f64, key: &str, scale: f64, rel: f64, slack: f64| {
        let (a, b) = (
            api_before[key].as_f64().unwrap() * scale,
            api[key].as_f64().unwrap() * scale,
        );
        assert!(
            close(shown, a, rel, slack) || close(shown, b, rel, slack),
            "{key}: shown {shown}, /api/v1 {a} before and {b} after"
        );
    };
    matches(cell(4), "upload_bytes_per_sec", 8.0 / 1e9, 0.5, 0.005);
    assert!(cell(4) > 0.0, "a live download shows a rate: {row}");
    let (api_p50, api_p99) = (
        api["request_p50_us"].as_f64().unwrap(),
        api["request_p99_us"].as_f64().unwrap(),
    );
    assert!(api_p50 > 0.0 && api_p99 >= api_p50, "{api}");
    matches(cell(5), "request_p50_us", 1.0, 0.5, 20.0);
    matches(cell(6), "request_p99_us", 1.0, 0.5, 20.0);
    // Uploaded bytes only grow: what the page showed is at most what /metrics says now, and
    // at most a few seconds of the 1.5 MB/s download behind it.
    let shown = shown_uploaded.as_f64().unwrap();
    let total = metric_sum(&metrics, "squall_uploaded_bytes_total");
    assert!(
        shown > 0.0 && shown <= total && total - shown < 8e6,
        "uploaded shown {shown} vs /metrics {total}"
    );
    let peers: f64 = peers_total.parse().unwrap();
    assert!(peers >= 1.0, "no peer shown during the download");
    assert_eq!(
        peers,
        metric_sum(&metrics, "squall_peers_connected"),
        "peers vs /metrics"
    );
    let stats_p50 = stats["total"]["request_latency_us"]["p50"]
        .as_f64()
        .unwrap();
    assert!(
        close(req_p50, stats_p50, 0.5, 20.0),
        "request p50 shown {req_p50} vs /stats {stats_p50}"
    );
    // The total rate is the shards' one-second rates: under libtorrent's bursty limiter a
    // second may carry 0 or several times the mean, so two reads a second apart agree only
    // within a burst. What must hold: the page's current value is in its own chart, the
    // chart saw the download, and the page and /stats are of the same unit and order
    // (the limit is 0.012 Gb/s; a bytes-for-bits or per-ms slip would be 8x or 1000x).
    let chart_max: f64 = driver
        .script(
            &session,
            "return document.querySelector('#chart-throughput text').textContent;",
        )
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("throughput chart scale");
    assert!(
        gbps_total <= chart_max + 1e-3,
        "{gbps_total} above its chart's {chart_max}"
    );
    assert!(
        chart_max > 0.0 && chart_max < 0.1,
        "chart max {chart_max} Gb/s"
    );
    let stats_gbps = stats["total"]["upload_bytes_per_sec"].as_f64().unwrap() * 8.0 / 1e9;
    assert!(
        close(gbps_total, stats_gbps, 0.0, 0.05),
        "throughput shown {gbps_total} vs /stats {stats_gbps}"
    );

    let shot = driver.call(&session, "GET", "screenshot", None);
    let png = base64_decode(shot.as_str().expect("screenshot base64"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("dashboard screenshot: {}", path.display());
    wd(driver.addr, "DELETE", &format!("/session/{session}"), None);
}

#[test]
fn base64_decodes_what_webdriver_sends() {
    // The screenshot decoder: padding, and every alphabet character.
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("+/8A"), vec![0xfb, 0xff, 0x00]);
}
