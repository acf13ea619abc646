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
