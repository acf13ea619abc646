//! The dashboard at `/` in a real browser: headless Chromium (Debian `chromium`) loads it
//! while libtorrent downloads from squall, runs its scripts, and the DOM it renders shows
//! charts with several samples and the same numbers `/api/v1` and `/metrics` give. A
//! screenshot is kept under the test's output (CARGO_TARGET_TMPDIR/dashboard/).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// `chromium --headless ... URL` with a private profile; its stdout.
fn chromium(profile: &std::path::Path, extra: &[&str], url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM (`<... id="ID" ...>TEXT<`).
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("text end");
    rest[start..start + end].to_string()
}

/// The value of `attr` on the element with `id`.
fn attr_of(dom: &str, id: &str, attr: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let tag_end = at + dom[at..].find('>').expect("tag end");
    let tag_start = dom[..at].rfind('<').expect("tag start");
    let tag = &dom[tag_start..tag_end];
    let key = format!("{attr}=\"");
    let v = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} on #{id}: {tag}"))
        + key.len();
    tag[v..v + tag[v..].find('"').expect("attr end")].to_string()
}

#[test]
fn dashboard_renders_live_numbers_in_headless_chromium() {
    // During a rate-limited libtorrent download the page polls, draws its SVG charts, and
    // shows the torrent count of /api/v1, a top torrent of /stats, and uploaded bytes no
    // more than /metrics reports afterwards.
    if !tool_available("chromium", Command::new("chromium").arg("--version"))
        || !libtorrent_available()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    write_file(&content.join("film.bin"), &pattern_bytes(16 << 20, 9));
    let squall = SeedArgs::content(&content)
        .state(&tmp.path().join("state"))
        .shards(2)
        .admin()
        .start();
    let admin = squall.admin.expect("admin");
    let torrent = made_torrent(&tmp.path().join("state"), "film.bin");
    let save = tmp.path().join("save");
    let mut download = lt_command(
        Source::Torrent(&torrent),
        &save,
        &squall.peer(),
        &["--rate-limit", "1500000"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("start lt_download");
    wait_for(Duration::from_secs(20), "the download to start", || {
        let (_, body) = http_get(admin, "/stats");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["total"]["uploaded_bytes"].as_u64()? > 0).then_some(())
    });
    let url = format!("http://{admin}/");
    let profile = tmp.path().join("profile");
    let dom = chromium(
        &profile,
        &["--virtual-time-budget=6000", "--dump-dom"],
        &url,
    );
    let (_, metrics) = http_get(admin, "/metrics");
    let (_, api) = admin_request(admin, "GET", "/api/v1/torrents", None, b"");

    let samples: u32 = dom
        .split("data-samples=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("data-samples on body");
    assert!(samples >= 2, "the page polled {samples} time(s)");
    assert!(dom.contains("class=\"series\""), "no chart line drawn");
    assert!(dom.contains("class=\"bar\""), "no histogram bars drawn");
    assert_eq!(text_of(&dom, "status"), "ok");
    assert_eq!(
        text_of(&dom, "torrents-total"),
        api["total"].to_string(),
        "torrent count differs from /api/v1"
    );
    let hash = &squall.torrents[0].0;
    assert!(dom.contains(hash.as_str()), "top torrents lack {hash}");
    let shown: f64 = attr_of(&dom, "uploaded-mib", "data-bytes").parse().unwrap();
    let total = metric_sum(&metrics, "squall_uploaded_bytes_total");
    assert!(
        shown > 0.0 && shown <= total,
        "shown {shown} vs /metrics {total}"
    );
    let peers: u64 = text_of(&dom, "peers-total").parse().unwrap();
    assert!(peers >= 1, "no peer shown during the download");

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &profile,
        &[
            "--virtual-time-budget=4000",
            "--window-size=1280,1100",
            &format!("--screenshot={}", png.display()),
        ],
        &url,
    );
    let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(len > 10_000, "screenshot {} is {len} bytes", png.display());
    let _ = download.kill();
    let _ = download.wait();
}
