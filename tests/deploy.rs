//! Deployment artefacts: every shipped config passes `squall config check`, bad configs are
//! refused with a position, the systemd unit verifies, and install.sh's dry run is sane.

mod common;

use common::*;
use std::process::Command;

/// Every configs/*.toml passes `squall config check --syntax-only` (exit 0): they name the
/// directories of an installed box (/srv/squall), not of this checkout.
#[test]
fn shipped_configs_pass_config_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(squall_bin())
                .args(["config", "check", "--syntax-only"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected default, large-catalog and bench configs"
    );
}

/// A typo is refused with exit 1, the line and column, and a suggestion; `config default`
/// prints a config that itself passes the check.
#[test]
fn config_check_explains_mistakes_and_default_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[engine]\nshards = 1\nidle_timeout_sec = 5\n").unwrap();
    let out = Command::new(squall_bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3, column 1") && err.contains("did you mean `idle_timeout_secs`"),
        "{err}"
    );

    let out = Command::new(squall_bin())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = dir.path().join("default.toml");
    std::fs::write(&good, &out.stdout).unwrap();
    let out = Command::new(squall_bin())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The systemd unit passes `systemd-analyze verify` (with ExecStart pointed at the built
/// binary, since the test does not install it).
#[test]
fn systemd_unit_verifies() {
    if !tool_available(
        "systemd-analyze",
        Command::new("systemd-analyze").arg("--version"),
    ) {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/squall.service"
    ))
    .unwrap();
    for needed in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadOnlyPaths=",
        "StateDirectory=",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "CapabilityBoundingSet=\n",
        "User=squall",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("squall.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/squall", squall_bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("squall.service:"),
        "systemd-analyze: {text}"
    );
}

/// install.sh --dry-run changes nothing and names every step, honouring --prefix.
#[test]
fn install_dry_run_lists_steps() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .args(["--dry-run", "--no-build", "--prefix"])
        .arg(&prefix)
        .env("SYSTEMD_DIR", dir.path().join("systemd"))
        .env("CONFIG_DIR", dir.path().join("etc"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}/bin/squall", prefix.display())),
        "{text}"
    );
    assert!(
        text.contains("squall.service") && text.contains("squall.toml"),
        "{text}"
    );
    assert!(!prefix.exists(), "a dry run must not create anything");
}
