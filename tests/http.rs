//! End-to-end: HTTP clients we did not write (curl, aria2c, wget, libtorrent's web-seed
//! client) download from `squall seed --http` over loopback, and the bytes are compared with
//! the source. Each test skips when its tool is missing, unless SQUALL_REQUIRE_TOOLS=1.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Sum of `squall_http_responses_total` series of one status class.
fn metric_sum_with_class(page: &str, class: &str) -> f64 {
    let label = format!("class=\"{class}\"");
    page.lines()
        .filter(|l| l.starts_with("squall_http_responses_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn curl_available() -> bool {
    tool_available("curl", Command::new("curl").arg("--version"))
}

fn start_http(content: &Path, state: &Path) -> (SquallProcess, SocketAddr) {
    let squall = SeedArgs::content(content)
        .state(state)
        .shards(2)
        .admin()
        .args(&["--http", "127.0.0.1:0"])
        .start();
    let http = squall.http.expect("an `http on` line");
    (squall, http)
}

/// `curl ARGS` -> (stdout bytes, stderr text); panics when curl cannot run.
fn curl(args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl -w %{http_code}` of one request, body discarded.
fn status(args: &[&str]) -> u16 {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let (out, err) = curl(&all);
    String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: {err}"))
}

/// The response head curl printed with -D -.
fn head_of(args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-D", "-"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&curl(&all).0).to_lowercase()
}

/// curl: whole files (single and multi-file layouts, the info-hash prefix), every range form,
/// HEAD, conditional requests, keep-alive reuse, and each error status.
#[test]
fn curl_ranges_heads_conditionals_and_errors() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    standard_content(&content);
    let (squall, http) = start_http(&content, &dir.path().join("state"));
    let base = format!("http://{http}");
    let single = std::fs::read(content.join("single.bin")).unwrap();
    let b = std::fs::read(content.join("multi/sub/b.bin")).unwrap();
    let url = format!("{base}/single.bin");

    assert_eq!(curl(&[&url]).0, single, "whole single-file torrent");
    assert_eq!(curl(&[&format!("{base}/multi/sub/b.bin")]).0, b);
    let hash = &squall.torrents.iter().find(|t| t.1 == "multi").unwrap().0;
    assert_eq!(curl(&[&format!("{base}/{hash}/multi/sub/b.bin")]).0, b);
    assert_eq!(curl(&[&format!("{base}/multi/sub/empty")]).0, b"");

    // Ranges: first-last, first-, suffix, clipped last, one byte at the end.
    let len = single.len();
    for (range, want) in [
        ("0-99", &single[..100]),
        ("1000-", &single[1000..]),
        ("-777", &single[len - 777..]),
        ("2999990-99999999", &single[2_999_990..]),
        (&format!("{}-{}", len - 1, len - 1)[..], &single[len - 1..]),
    ] {
        assert_eq!(curl(&["-r", range, &url]).0, want, "range {range}");
        assert_eq!(status(&["-r", range, &url]), 206, "range {range}");
    }
    let h = head_of(&["-r", "10-19", &url]);
    assert!(
        h.contains(&format!("content-range: bytes 10-19/{len}")),
        "{h}"
    );
    assert!(
        h.contains("content-length: 10") && h.contains("accept-ranges: bytes"),
        "{h}"
    );
    // Several ranges: the whole body, 200 (documented choice).
    assert_eq!(status(&["-r", "0-1,5-6", &url]), 200);
    assert_eq!(curl(&["-r", "0-1,5-6", &url]).0, single);
    // Unsatisfiable: 416 with the length.
    assert_eq!(status(&["-r", &format!("{len}-"), &url]), 416);
    let h = head_of(&["-r", &format!("{len}-"), &url]);
    assert!(h.contains(&format!("content-range: bytes */{len}")), "{h}");

    // HEAD: the GET's head, no body.
    let (out, _) = curl(&["-I", &url]);
    let h = String::from_utf8_lossy(&out).to_lowercase();
    assert!(h.starts_with("http/1.1 200"), "{h}");
    assert!(h.contains(&format!("content-length: {len}")), "{h}");
    let etag = h
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an etag")
        .trim()
        .to_string();
    assert!(h.contains("last-modified: "), "{h}");

    // Conditionals: If-None-Match with our tag is 304; If-Range with another tag ignores Range.
    let inm = format!("If-None-Match: {etag}");
    assert_eq!(status(&["-H", &inm, &url]), 304);
    let ir = format!("If-Range: {etag}");
    assert_eq!(status(&["-H", &ir, "-r", "0-9", &url]), 206);
    assert_eq!(
        status(&["-H", "If-Range: \"other\"", "-r", "0-9", &url]),
        200
    );

    // Keep-alive: two requests, one connection.
    let (out, err) = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{num_connects} ",
        &url,
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "1 0", "{err}");

    // Errors.
    assert_eq!(status(&[&format!("{base}/nope")]), 404);
    assert_eq!(
        status(&[&format!("{base}/multi")]),
        404,
        "a directory is not a URL"
    );
    assert_eq!(status(&["-X", "POST", &url]), 405);
    assert!(head_of(&["-X", "DELETE", &url]).contains("allow: get, head"));
    assert_eq!(
        status(&["--path-as-is", &format!("{base}/multi/../single.bin")]),
        400
    );
    let long = format!("{base}/{}", "a".repeat(9000));
    assert_eq!(status(&[&long]), 414);
    let huge = format!("X-Big: {}", "b".repeat(20_000));
    assert_eq!(status(&["-H", &huge, &url]), 431);

    // Metrics: responses by class and the HTTP latency histogram (protocol="http"), and
    // `squall stats` shows the HTTP line. Shards publish once a second.
    let admin = squall.admin.expect("admin address");
    let page = wait_for(Duration::from_secs(5), "http metrics", || {
        let (_, page) = http_get(admin, "/metrics");
        let errors = metric_sum_with_class(&page, "4xx");
        (errors >= 7.0).then_some(page)
    });
    assert!(metric_sum_with_class(&page, "2xx") >= 10.0);
    assert!(metric_sum(&page, "squall_http_body_bytes_total") > single.len() as f64);
    assert!(page.contains("squall_request_latency_seconds_count{shard=\"0\",protocol=\"http\"}"));
    let stats = run_squall(
        &["stats", "--once", "--admin", &admin.to_string()],
        dir.path(),
    );
    assert!(
        output_text(&stats).contains("http: "),
        "{}",
        output_text(&stats)
    );
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// aria2c with four connections per download (`-x4 -s4`, so four concurrent ranges; `-Z`:
/// each URL its own download) and wget
/// download byte-identical files.
#[test]
fn aria2c_split_download_and_wget_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    standard_content(&content);
    let (squall, http) = start_http(&content, &dir.path().join("state"));
    if aria2c_available() {
        let out = dir.path().join("aria2");
        let status = Command::new("aria2c")
            .args([
                "-q",
                "-Z",
                "-x4",
                "-s4",
                "-k1M",
                "--allow-overwrite=true",
                "-d",
            ])
            .arg(&out)
            .arg(format!("http://{http}/single.bin"))
            .arg(format!("http://{http}/multi/a.bin"))
            .status()
            .expect("run aria2c");
        assert!(status.success());
        assert_same_tree(&content.join("single.bin"), &out.join("single.bin"));
        assert_same_tree(&content.join("multi/a.bin"), &out.join("a.bin"));
    }
    if tool_available("wget", Command::new("wget").arg("--version")) {
        let out = dir.path().join("wget.bin");
        let status = Command::new("wget")
            .args(["-q", "-O"])
            .arg(&out)
            .arg(format!("http://{http}/multi/sub/b.bin"))
            .status()
            .expect("run wget");
        assert!(status.success());
        assert_same_tree(&content.join("multi/sub/b.bin"), &out);
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// libtorrent downloads torrents whose only source is Squall's HTTP web seed (BEP 19
/// `url-list`, made with `squall make --web-seed`): no BitTorrent peer at all. The magnets
/// Squall prints carry the web seed (`ws=`), and `squall info` shows it.
#[test]
fn libtorrent_downloads_from_the_web_seed_alone() {
    if !libtorrent_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    standard_content(&content);
    let port = free_port();
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .args(&["--http", &format!("127.0.0.1:{port}")])
        .start();
    let web_seed = format!("http://127.0.0.1:{port}/");
    assert!(squall
        .magnet_of("multi")
        .contains("&ws=http%3A%2F%2F127.0.0.1%3A"));
    for name in ["single.bin", "multi"] {
        let torrent = dir.path().join(format!("{name}.torrent"));
        squall_make(&content.join(name), &torrent, &["--web-seed", &web_seed]);
        let info = run_squall(&["info", torrent.to_str().unwrap()], dir.path());
        assert!(output_text(&info).contains(&format!("web seed:     {web_seed}")));
        let save = dir.path().join(format!("dl-{name}"));
        // No --peer: the web seed in the .torrent is the only source.
        let out = Command::new(SYSTEM_PYTHON)
            .arg(LT_DOWNLOAD)
            .arg("--save")
            .arg(&save)
            .arg("--torrent")
            .arg(&torrent)
            .args(["--timeout", "90"])
            .output()
            .expect("run lt_download.py");
        assert!(
            out.status.success(),
            "{name}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&content.join(name), &save.join(name));
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// A content file cut short under Squall: the HTTP read that finds it short takes its torrent
/// out of service (as a BitTorrent read would), so the next request for it is 503, while
/// other torrents go on being served.
#[test]
fn a_file_cut_short_makes_its_torrent_answer_503() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    standard_content(&content);
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .shards(1)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    let base = format!("http://{}", squall.http.expect("an `http on` line"));
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(content.join("multi/a.bin"))
        .unwrap();
    cut.set_len(1000).unwrap();
    let url = format!("{base}/multi/a.bin");
    // The head promises bytes the file no longer has: the connection is cut after it.
    let _ = curl(&["-r", "500000-500099", "-o", "/dev/null", &url]);
    wait_for(Duration::from_secs(5), "503 for the cut torrent", || {
        (status(&[&url]) == 503).then_some(())
    });
    assert_eq!(status(&[&format!("{base}/single.bin")]), 200);
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// `squall-bench http` (the generator the nginx comparison uses) runs against the real HTTP
/// front-end: pipelined range requests all answered 206, as a quick test so the benchmark
/// cannot rot. Never timed.
#[test]
fn bench_http_generator_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    standard_content(&content);
    let (squall, http) = start_http(&content, &dir.path().join("state"));
    let SocketAddr::V4(target) = http else {
        panic!("an IPv4 http address");
    };
    let report = squall_bench::http::run(&squall_bench::http::HttpOptions {
        target,
        path: "/single.bin".into(),
        file_len_bytes: std::fs::metadata(content.join("single.bin")).unwrap().len(),
        connections: 2,
        depth: 4,
        range_bytes: 16384,
        duration_secs: 1,
        target_pid: Some(squall.child.id()),
        seed: 7,
    })
    .expect("bench run");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.requests > 0 && report.body_bytes >= report.requests * 16384 - 16384);
    assert!(report.target_cpu_secs.is_some());
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}
