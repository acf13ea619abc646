//! The runtime catalog API (`/api/v1/` on the admin endpoint) and its client `squall
//! torrents`, end to end with the real binary: add -> verified -> seeding -> downloaded by
//! libtorrent -> removed -> refused; the token; persistence across a restart; concurrent
//! adds; malformed and oversized uploads.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A seeder on an empty catalog (`--torrents` dir with nothing in it) whose API may add
/// content under `<dir>/data`.
struct ApiBox {
    dir: PathBuf,
    squall: SquallProcess,
}

impl ApiBox {
    fn start(dir: &Path, config: Option<&str>) -> ApiBox {
        for d in ["torrents", "data", "state", "made"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let mut args = SeedArgs::catalog(&dir.join("torrents"), &dir.join("data"))
            .state(&dir.join("state"))
            .shards(1)
            .admin();
        if let Some(text) = config {
            args = args.config(&write_config(dir, text));
        }
        ApiBox {
            dir: dir.to_path_buf(),
            squall: args.start(),
        }
    }

    fn admin(&self) -> SocketAddr {
        self.squall.admin.expect("admin endpoint")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("state/admin.token"))
            .expect("token file")
            .trim()
            .to_string()
    }

    /// Writes `data/NAME` (`len` pattern bytes) and `made/NAME.torrent`; returns (hash, path).
    fn content(&self, name: &str, len: usize, seed: u64) -> (String, PathBuf) {
        let file = self.dir.join("data").join(name);
        write_file(&file, &pattern_bytes(len, seed));
        let torrent = self.dir.join("made").join(format!("{name}.torrent"));
        (
            squall_make(&file, &torrent, &["--piece-length", "64K"]),
            torrent,
        )
    }

    fn api(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        admin_request(self.admin(), method, path, Some(&self.token()), body)
    }

    fn add_path(&self) -> String {
        format!("/api/v1/torrents?data={}", self.dir.join("data").display())
    }

    fn state_of(&self, hash: &str) -> Option<String> {
        let (code, v) = self.api("GET", &format!("/api/v1/torrents/{hash}"), b"");
        (code == 200).then(|| v["state"].as_str().unwrap_or("").to_string())
    }

    fn wait_state(&self, hash: &str, want: &str) {
        wait_for(Duration::from_secs(30), &format!("{hash} {want}"), || {
            (self.state_of(hash).as_deref() == Some(want)).then_some(())
        });
    }

    fn total(&self) -> u64 {
        let (code, v) = self.api("GET", "/api/v1/torrents", b"");
        assert_eq!(code, 200, "{v}");
        v["total"].as_u64().expect("total")
    }

    /// `squall torrents ARGS --admin ADDR --state STATE`.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(squall_bin())
            .arg("torrents")
            .args(args)
            .args(["--admin", &self.admin().to_string()])
            .arg("--state")
            .arg(self.dir.join("state"))
            .output()
            .expect("run squall torrents")
    }
}

#[test]
fn api_round_trip_add_seed_download_remove_refused() {
    // `squall torrents add` uploads a .torrent; it verifies and seeds; libtorrent downloads
    // it byte for byte; `rm` drops it (content untouched) and a handshake for it is refused.
    let tmp = tempfile::tempdir().unwrap();
    let b = ApiBox::start(tmp.path(), None);
    let (hash, torrent) = b.content("movie.bin", 3 << 20, 7);
    let out = b.cli(&[
        "add",
        torrent.to_str().unwrap(),
        "--data",
        b.dir.join("data").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains(&hash), "{}", output_text(&out));
    b.wait_state(&hash, "seeding");
    let ls = b.cli(&["ls"]);
    let text = output_text(&ls);
    assert!(
        ls.status.success() && text.contains(&hash) && text.contains("seeding"),
        "{text}"
    );
    let ls_json = b.cli(&["ls", "--json", "--status", "seeding"]);
    let rows: serde_json::Value = serde_json::from_slice(&ls_json.stdout).expect("ls --json");
    assert_eq!(rows[0]["info_hash"], hash.as_str(), "{rows}");
    assert!(handshake_accepted(b.squall.addr, &hash));
    if libtorrent_available() {
        let save = tmp.path().join("download");
        let r = lt_download(Source::Torrent(&torrent), &save, &b.squall.peer(), &[]);
        assert!(r.ok, "{}", r.json);
        assert_same_tree(&b.dir.join("data/movie.bin"), &save.join("movie.bin"));
    }
    let out = b.cli(&["rm", &hash]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Its peers drain first (none are left here), then it is gone.
    assert_eq!(b.state_of(&hash).as_deref(), Some("draining"));
    wait_for(Duration::from_secs(10), "the drain to end", || {
        b.state_of(&hash).is_none().then_some(())
    });
    wait_for(Duration::from_secs(5), "the shards to drop it", || {
        (!handshake_accepted(b.squall.addr, &hash)).then_some(())
    });
    assert!(b.dir.join("data/movie.bin").exists(), "content must stay");
    let again = b.cli(&["rm", &hash]);
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("404"),
        "{}",
        output_text(&again)
    );
}

#[test]
fn api_needs_the_token_and_refusals_change_nothing() {
    // Without the token or with a wrong one a change is 401 and nothing changes; reads are
    // open on loopback; failures are counted in /metrics; the token file is mode 0600.
    let tmp = tempfile::tempdir().unwrap();
    let b = ApiBox::start(tmp.path(), None);
    let (_, torrent) = b.content("a.bin", 200_000, 1);
    let bytes = std::fs::read(&torrent).unwrap();
    let admin = b.admin();
    let (code, v) = admin_request(admin, "POST", &b.add_path(), None, &bytes);
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    let (code, _) = admin_request(admin, "POST", &b.add_path(), Some("wrong"), &bytes);
    assert_eq!(code, 401);
    let (code, v) = admin_request(admin, "GET", "/api/v1/torrents", None, b"");
    assert_eq!((code, v["total"].as_u64()), (200, Some(0)), "{v}");
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(metric_sum(&metrics, "squall_admin_auth_failures_total") >= 2.0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.dir.join("state/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, v) = b.api("POST", &b.add_path(), &bytes);
    assert_eq!(code, 202, "{v}");
    assert_eq!(b.total(), 1);
}

#[test]
fn api_changes_survive_a_restart() {
    // An added torrent and a paused one come back after SIGTERM and a new start on the same
    // state directory, and a SIGHUP reload keeps them.
    let tmp = tempfile::tempdir().unwrap();
    let b = ApiBox::start(tmp.path(), None);
    let (kept, kept_t) = b.content("kept.bin", 300_000, 2);
    let (paused, paused_t) = b.content("paused.bin", 300_000, 3);
    for t in [&kept_t, &paused_t] {
        let (code, v) = b.api("POST", &b.add_path(), &std::fs::read(t).unwrap());
        assert_eq!(code, 202, "{v}");
    }
    b.wait_state(&kept, "seeding");
    b.wait_state(&paused, "seeding");
    let (code, v) = b.api("POST", &format!("/api/v1/torrents/{paused}/pause"), b"");
    assert_eq!((code, v["state"].as_str()), (200, Some("paused")), "{v}");
    let ApiBox { dir, squall } = b;
    assert_eq!(squall.terminate().0, Some(0));
    let b = ApiBox::start(&dir, None);
    b.wait_state(&kept, "seeding");
    b.wait_state(&paused, "paused");
    assert!(handshake_accepted(b.squall.addr, &kept));
    assert!(!handshake_accepted(b.squall.addr, &paused));
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(b.squall.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(800));
    b.wait_state(&kept, "seeding");
    b.wait_state(&paused, "paused");
    assert_eq!(b.total(), 2);
}

#[test]
fn concurrent_adds_all_land() {
    // Eight clients add eight torrents at once: every add is accepted and every torrent ends
    // up seeding, each listed once.
    let tmp = tempfile::tempdir().unwrap();
    let b = ApiBox::start(tmp.path(), None);
    let made: Vec<(String, PathBuf)> = (0..8)
        .map(|i| b.content(&format!("c{i}.bin"), 100_000 + i * 1000, i as u64))
        .collect();
    let (admin, token, path) = (b.admin(), b.token(), b.add_path());
    let handles: Vec<_> = made
        .iter()
        .map(|(_, t)| {
            let bytes = std::fs::read(t).unwrap();
            let (token, path) = (token.clone(), path.clone());
            std::thread::spawn(move || admin_request(admin, "POST", &path, Some(&token), &bytes))
        })
        .collect();
    for h in handles {
        let (code, v) = h.join().unwrap();
        assert_eq!(code, 202, "{v}");
    }
    for (hash, _) in &made {
        b.wait_state(hash, "seeding");
    }
    assert_eq!(b.total(), 8);
}

#[test]
fn malformed_and_out_of_bounds_uploads_are_refused() {
    // A garbage .torrent is 400, a data directory outside the allowed roots 403, an unknown
    // hash 404, a body over [admin] api_body_bytes_max 413: each a JSON error, none changes
    // the list.
    let tmp = tempfile::tempdir().unwrap();
    let b = ApiBox::start(tmp.path(), Some("[admin]\napi_body_bytes_max = 4096\n"));
    let (code, v) = b.api("POST", &b.add_path(), b"d8:announce3:xyzi42e");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a valid .torrent"),
        "{v}"
    );
    let (_, torrent) = b.content("small.bin", 50_000, 4);
    let bytes = std::fs::read(&torrent).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let path = format!("/api/v1/torrents?data={}", outside.path().display());
    let (code, v) = b.api("POST", &path, &bytes);
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("allowed roots"),
        "{v}"
    );
    let (code, v) = b.api("POST", &b.add_path(), &vec![b'd'; 10_000]);
    assert_eq!(code, 413, "{v}");
    let (code, v) = b.api(
        "DELETE",
        &format!("/api/v1/torrents/{}", "ab".repeat(20)),
        b"",
    );
    assert_eq!(code, 404, "{v}");
    let (code, _) = b.api("POST", "/api/v1/torrents/nothex/pause", b"");
    assert_eq!(code, 400);
    assert_eq!(b.total(), 0);
    let (code, v) = b.api("POST", &b.add_path(), &bytes);
    assert_eq!(code, 202, "{v}");
}
