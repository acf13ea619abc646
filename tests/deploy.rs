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
    let Some(unit) = unit_if_systemd_analyze() else {
        return;
    };
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
        "Type=notify",
        "SystemCallFilter=@system-service",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "UMask=0077",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_unit_for_test(dir.path(), &unit);
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

/// `systemd-analyze security` rates the unit's exposure at 2.0 or less (it was 3.2 before the
/// syscall filter, ProtectProc, ProcSubset, UMask, PrivateMounts and RemoveIPC).
#[test]
fn systemd_unit_exposure_is_at_most_two() {
    let Some(unit) = unit_if_systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_unit_for_test(dir.path(), &unit);
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for squall.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(level <= 2.0, "exposure {level}: {text}");
}

/// install.sh --destdir stages every file under DESTDIR with the real paths inside them: the
/// binary, the unit pointing at PREFIX, the config 0640 naming the data root, and the data
/// directories 0750. `--help` prints the usage.
#[test]
fn install_into_destdir_and_help() {
    use std::os::unix::fs::PermissionsExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("stage");
    let out = Command::new("bash")
        .arg(script)
        .args(["--destdir"])
        .arg(&dest)
        .args(["--bin", squall_bin()])
        .env_remove("SYSTEMD_DIR")
        .env_remove("CONFIG_DIR")
        .env_remove("DATA_ROOT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/squall"), 0o755);
    assert_eq!(mode("etc/squall/squall.toml"), 0o640);
    assert_eq!(mode("srv/squall/torrents"), 0o750);
    assert_eq!(mode("srv/squall/data"), 0o750);
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/squall.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/squall seed"),
        "{unit}"
    );
    assert!(
        !unit.contains(dest.to_str().unwrap()),
        "DESTDIR leaked into the unit"
    );
    let config = std::fs::read_to_string(dest.join("etc/squall/squall.toml")).unwrap();
    assert!(
        config.contains("torrents_dir = \"/srv/squall/torrents\""),
        "{config}"
    );

    let help = Command::new("bash")
        .arg(script)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success() && text.starts_with("Installs Squall"),
        "{text}"
    );
    assert!(
        text.contains("Usage: scripts/install.sh") && text.contains("--destdir"),
        "{text}"
    );
}

/// configs/squall.service, or None (a SKIP) when systemd-analyze is missing.
fn unit_if_systemd_analyze() -> Option<String> {
    if !tool_available(
        "systemd-analyze",
        Command::new("systemd-analyze").arg("--version"),
    ) {
        return None;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/squall.service");
    Some(std::fs::read_to_string(path).unwrap())
}

/// The unit written into `dir` with ExecStart pointed at the built binary (not installed).
fn write_unit_for_test(dir: &std::path::Path, unit: &str) -> std::path::PathBuf {
    let path = dir.join("squall.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/squall", squall_bin())).unwrap();
    path
}
