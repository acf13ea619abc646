//! Operability of the real binary as an operator meets it: one instance per port and per
//! state directory, logs fit for files and log shippers, catalog health that monitoring sees,
//! start-up with an empty catalog and systemd readiness.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One small file seeded from a catalog: (torrents dir, data dir).
fn small_catalog(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let torrents = dir.join("torrents");
    write_file(&data.join("a.bin"), &pattern_bytes(100_000, 7));
    make_catalog_torrent(&data.join("a.bin"), &torrents, "a", "16K");
    (torrents, data)
}

/// `squall seed --torrents T --data D --state S --listen L --admin off`, not yet spawned
/// (for tests that need a fixed port, an environment or the exit status).
fn seed_command(torrents: &Path, data: &Path, state: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(squall_bin());
    cmd.args(["seed", "--torrents"])
        .arg(torrents)
        .arg("--data")
        .arg(data)
        .arg("--state")
        .arg(state)
        .args(["--listen", listen, "--admin", "off"]);
    cmd
}

/// A second squall on the port of a running one is refused, naming the port and the PID of
/// the first (its SO_REUSEPORT listeners would otherwise share the port silently); a second
/// squall on the same state directory is refused naming the lock holder.
#[test]
fn second_instance_on_the_same_port_or_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (torrents, data) = small_catalog(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Spawned by hand: `SquallProcess` adds `--listen 127.0.0.1:0`, and this one needs the
    // fixed port alone.
    let mut first = seed_command(&torrents, &data, &dir.path().join("state1"), &listen)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let stdout = std::io::BufReader::new(first.stdout.take().unwrap());
    let ready = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .any(|l| l.starts_with("ready:"));
    assert!(ready, "the first squall did not start");
    let first = KillOnDrop(first);

    let second = seed_command(&torrents, &data, &dir.path().join("state2"), &listen)
        .output()
        .unwrap();
    let text = output_text(&second);
    assert_eq!(second.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("port {port} is already in use")),
        "{text}"
    );
    assert!(text.contains(&format!("PID {pid}")), "{text}");
    assert!(!text.contains("ready:"), "{text}");

    let third = seed_command(&torrents, &data, &dir.path().join("state1"), "127.0.0.1:0")
        .output()
        .unwrap();
    let text = output_text(&third);
    assert_eq!(third.status.code(), Some(1), "{text}");
    assert!(
        text.contains("another squall") && text.contains(&format!("PID {pid}")),
        "{text}"
    );
    drop(first);
}

/// Zero-config content with one good file and one empty directory (skipped at every build).
fn content_with_a_skip(dir: &Path) -> std::path::PathBuf {
    let content = dir.join("content");
    write_file(&content.join("good.bin"), &pattern_bytes(60_000, 3));
    std::fs::create_dir_all(content.join("hollow")).unwrap();
    content
}

/// Logs captured from a pipe carry no ANSI escapes; in JSON every stderr line is one JSON
/// object, the torrent-making and skip lines included, and each skip is logged once.
#[test]
fn logs_on_a_pipe_have_no_colour_and_json_is_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let content = content_with_a_skip(dir.path());
    let state = dir.path().join("state");
    let seed = |format: &str, level: &str, state: &Path| {
        stderr_of_run(
            &[
                "--log-format",
                format,
                "--log-level",
                level,
                "seed",
                content.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--state",
                state.to_str().unwrap(),
            ],
            3,
        )
    };
    let json = seed("json", "info", &state);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    assert!(json.contains("making a torrent of"), "{json}");
    assert_eq!(json.matches("hollow").count(), 1, "one skip line: {json}");

    // `warning` is `warn`: the skip warning still shows, the info lines do not; no colour.
    let human = seed("human", "warning", &dir.path().join("state2"));
    assert!(
        !human.contains('\u{1b}'),
        "ANSI escape on a pipe: {human:?}"
    );
    assert_eq!(human.matches("hollow").count(), 1, "{human}");
    assert!(!human.contains("making a torrent"), "{human}");
}

/// An unknown level is refused (exit 2) with the list of valid ones, whether it comes from
/// --log-level or SQUALL_LOG, instead of silently turning every log line off.
#[test]
fn unknown_log_level_is_refused_with_the_valid_ones() {
    let out = Command::new(squall_bin())
        .args(["--log-level", "verbose", "config", "default"])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("unknown log level `verbose` (from --log-level)")
            && text.contains("error, warn, info, debug, trace, off"),
        "{text}"
    );
    let out = Command::new(squall_bin())
        .args(["config", "default"])
        .env("SQUALL_LOG", "loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(output_text(&out).contains("(from SQUALL_LOG)"));
}

/// `--log-file`: lines go to the file, not stderr; after logrotate renames it and sends
/// SIGHUP, squall opens the path again and goes on writing there.
#[test]
fn log_file_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (torrents, data) = small_catalog(dir.path());
    let log = dir.path().join("squall.log");
    let squall = SeedArgs::catalog(&torrents, &data)
        .state(&dir.path().join("state"))
        .args(&["--admin", "off", "--log-file", log.to_str().unwrap()])
        .start();
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(first.contains("catalog loaded"), "{first}");
    assert!(!first.contains('\u{1b}'));
    std::fs::rename(&log, dir.path().join("squall.log.1")).unwrap();
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    let reopened = wait_for(Duration::from_secs(10), "the log file reopened", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("catalog reloaded"))
    });
    assert!(!reopened.contains("catalog loaded"), "{reopened}");
    assert!(squall
        .stderr_lines
        .try_iter()
        .all(|l| !l.contains("catalog")));
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// Catalog health reaches monitoring: a torrent whose file is missing is skipped, listed in
/// /stats with its file and reason, counted in `squall_torrents{state}` and makes /health 503
/// "degraded" (200 with `?strict=0`); a corrupted one is `incomplete` (served in part, not
/// degraded). Restoring the file and sending SIGHUP brings /health back to 200.
#[test]
fn health_follows_a_missing_file_and_its_return() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    let good = pattern_bytes(100_000, 1);
    let gone = pattern_bytes(80_000, 2);
    let mut bent = pattern_bytes(90_000, 3);
    write_file(&data.join("good.bin"), &good);
    write_file(&data.join("gone.bin"), &gone);
    write_file(&data.join("bent.bin"), &bent);
    for name in ["good", "gone", "bent"] {
        make_catalog_torrent(&data.join(format!("{name}.bin")), &torrents, name, "16K");
    }
    std::fs::remove_file(data.join("gone.bin")).unwrap();
    bent[40_000] ^= 0xff;
    write_file(&data.join("bent.bin"), &bent);
    let squall = SeedArgs::catalog(&torrents, &data)
        .state(&dir.path().join("state"))
        .shards(1)
        .admin()
        .start();
    let admin = squall.admin.expect("admin endpoint");
    let states = |page: &str| -> Vec<f64> {
        ["seeding", "skipped", "errored", "incomplete"]
            .iter()
            .map(|s| metric_sum_with_label(page, "squall_torrents", "state", s))
            .collect()
    };
    let (status, body) = wait_for(Duration::from_secs(10), "shards to report", || {
        Some(http_get(admin, "/health")).filter(|(_, b)| !b.starts_with("starting"))
    });
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("degraded") && body.contains("gone.torrent"),
        "{body}"
    );
    assert_eq!(http_get(admin, "/health?strict=0").0, 200);
    let page = http_get(admin, "/metrics").1;
    assert_eq!(states(&page), vec![1.0, 1.0, 0.0, 1.0], "{page}");
    assert_eq!(metric_sum(&page, "squall_build_info"), 1.0);
    assert!(metric_sum(&page, "squall_process_start_time_seconds") > 1.6e9);
    let stats: serde_json::Value = serde_json::from_str(&http_get(admin, "/stats").1).unwrap();
    assert_eq!(stats["status"], "degraded");
    let skipped = stats["skipped_torrents"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{stats}");
    assert!(skipped[0]["file"]
        .as_str()
        .unwrap()
        .ends_with("gone.torrent"));
    assert!(!skipped[0]["reason"].as_str().unwrap().is_empty());

    write_file(&data.join("gone.bin"), &gone);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    wait_for(
        Duration::from_secs(20),
        "/health 200 after the file returned",
        || (http_get(admin, "/health").0 == 200).then_some(()),
    );
    let page = http_get(admin, "/metrics").1;
    assert_eq!(states(&page), vec![2.0, 0.0, 0.0, 1.0], "{page}");
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// Sum of a metric's samples carrying `key="value"`.
fn metric_sum_with_label(page: &str, name: &str, key: &str, value: &str) -> f64 {
    let label = format!("{key}=\"{value}\"");
    let prefix = format!("{name}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// An empty catalog is not an error: squall starts, says it waits, and serves the torrents
/// added before a SIGHUP; a unit with Restart=on-failure no longer loops.
#[test]
fn empty_catalog_starts_and_serves_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let torrents = dir.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let squall = SeedArgs::catalog(&torrents, &data)
        .state(&dir.path().join("state"))
        .shards(1)
        .admin()
        .start();
    assert!(squall.torrents.is_empty());
    let admin = squall.admin.expect("admin endpoint");
    let seeding = || {
        let v: serde_json::Value = serde_json::from_str(&http_get(admin, "/stats").1).unwrap();
        v["torrents"]["seeding"].as_u64().unwrap_or(0)
    };
    assert_eq!(seeding(), 0);
    write_file(&data.join("late.bin"), &pattern_bytes(70_000, 9));
    make_catalog_torrent(&data.join("late.bin"), &torrents, "late", "16K");
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(squall.child.id() as i32, libc::SIGHUP) };
    wait_for(
        Duration::from_secs(20),
        "the added torrent to be seeded",
        || (seeding() == 1).then_some(()),
    );
    let warned: Vec<String> = squall.stderr_lines.try_iter().collect();
    assert!(
        warned.iter().any(|l| l.contains("no torrent to seed yet")),
        "{warned:?}"
    );
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// Type=notify readiness: with NOTIFY_SOCKET naming a unix datagram socket, squall sends
/// READY=1 once it serves (and STOPPING=1 when asked to stop), as systemd-notify would.
#[test]
fn notify_socket_receives_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (torrents, data) = small_catalog(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let child = seed_command(&torrents, &data, &dir.path().join("state"), "127.0.0.1:0")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(_guard.0.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Config and flag mistakes are told in words a person can act on: no Rust type names, the
/// out-of-range port by number, a duplicate key with both lines, a missing directory by the
/// key or flag that named it.
#[test]
fn config_errors_are_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let (code, err) = config_check(text);
        assert_eq!(code, Some(1), "{err}");
        err
    };
    let err = check("[engine]\nshards = \"two\"\n");
    assert!(
        err.contains("line 2") && err.contains("expected a whole number, got the text \"two\""),
        "{err}"
    );
    assert!(!err.contains("usize"), "{err}");
    let err = check("[engine]\nlisten = [\"0.0.0.0:68810\"]\n");
    assert!(err.contains("port 68810 is out of range 0-65535"), "{err}");
    let err = check("[engine]\nshards = 1\nshards = 2\n");
    assert!(
        err.contains("line 3") && err.contains("first set on line 2"),
        "{err}"
    );
    let missing = dir.path().join("no-such-dir");
    let err = check(&format!(
        "[catalog]\ntorrents_dir = {:?}\n",
        missing.to_str().unwrap()
    ));
    assert!(
        err.contains("line 2")
            && err.contains("[catalog] torrents_dir")
            && err.contains("no such directory"),
        "{err}"
    );

    let out = run_squall(&["seed", "--listen", "0.0.0.0:68810"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(output_text(&out).contains("port 68810 is out of range 0-65535"));
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = run_squall(
        &[
            "seed",
            "--torrents",
            missing.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--state",
            dir.path().join("state").to_str().unwrap(),
        ],
        dir.path(),
    );
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "--torrents {}: no such directory",
            missing.display()
        )),
        "{text}"
    );
}

/// Magnets point where peers can reach the box: `--public-addr` goes into `x.pe`; without it
/// a loopback-only magnet with no tracker is printed with a warning saying so.
#[test]
fn magnets_use_public_addr_and_warn_when_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("m.bin"), &pattern_bytes(40_000, 5));
    let warned = |squall: &SquallProcess| {
        // The warning comes before `ready`; give the stderr reader a moment to catch up.
        std::thread::sleep(Duration::from_millis(300));
        squall
            .stderr_lines
            .try_iter()
            .any(|l| l.contains("only this machine can use them"))
    };
    let local = SeedArgs::content(&content)
        .state(&dir.path().join("state1"))
        .args(&["--admin", "off"])
        .start();
    let magnet = &local.torrents[0].2;
    assert!(magnet.contains("x.pe=127.0.0.1"), "{magnet}");
    assert!(warned(&local));
    drop(local);
    let public = SeedArgs::content(&content)
        .state(&dir.path().join("state2"))
        .args(&["--admin", "off", "--public-addr", "192.0.2.7"])
        .start();
    let magnet = &public.torrents[0].2;
    let port = public.addr.port();
    assert!(
        magnet.contains(&format!("x.pe=192.0.2.7%3A{port}")),
        "{magnet}"
    );
    assert!(!warned(&public));
}
