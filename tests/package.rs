//! The Debian package of scripts/package.sh, built from the binaries cargo made for this test
//! (no release build: docs/architecture.md, Packaging), lintian-clean, and put through its
//! life with the real dpkg and maintainer scripts: install, remove, purge. They run in a
//! copy-on-write view of this machine's root (overlayfs over `/`, upper layer on a tmpfs,
//! entered with chroot), so the host is untouched and nothing is downloaded.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where cargo put the squall (and squall-bench) binaries of this test run.
fn bin_dir() -> PathBuf {
    Path::new(squall_bin())
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs scripts/package.sh on this run's binaries into `out`; returns the .deb's path.
fn build_package(out: &Path, lint: bool) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        // The test installs nothing: a missing tool fails package.sh with its name.
        .env("SQUALL_SKIP_INSTALL", "1");
    if lint {
        cmd.arg("--lint");
    }
    let output = cmd.output().expect("run scripts/package.sh");
    assert!(
        output.status.success(),
        "package.sh failed: {}",
        output_text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("package.sh printed nothing"));
    assert!(deb.exists(), "{} missing: {stdout}", deb.display());
    deb
}

fn dpkg_architecture() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A read-write view of `/` whose writes land on a tmpfs, with /proc and /dev inside, torn
/// down (lazily, so a stuck process cannot keep it) when dropped.
struct CowRoot {
    root: PathBuf,
    mounts: Vec<PathBuf>,
    _tmpfs: TmpfsMount,
}

impl CowRoot {
    fn new(dir: &Path) -> Option<CowRoot> {
        let cow = dir.join("cow");
        let tmpfs = TmpfsMount::new(&cow, 1 << 30)?;
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir_all(cow.join(sub)).unwrap();
        }
        let root = cow.join("root");
        let mut this = CowRoot {
            root: root.clone(),
            mounts: Vec::new(),
            _tmpfs: tmpfs,
        };
        let options = format!(
            "lowerdir=/,upperdir={},workdir={}",
            cow.join("upper").display(),
            cow.join("work").display()
        );
        this.mount(&["-t", "overlay", "overlay", "-o", &options], &root);
        this.mount(&["-t", "proc", "proc"], &root.join("proc"));
        this.mount(&["--bind", "/dev"], &root.join("dev"));
        Some(this)
    }

    fn mount(&mut self, args: &[&str], target: &Path) {
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?} {}: {}",
            target.display(),
            output_text(&out)
        );
        self.mounts.push(target.to_owned());
    }

    /// A path inside the view, for reading what the package left.
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("MANWIDTH", "80")
            .output()
            .expect("run chroot")
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn package_status(&self) -> String {
        let out = self.run(&["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "squall"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for CowRoot {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

/// The files every install must have: binaries, unit, conffile, pages, completions, docs.
const PACKAGED_FILES: [&str; 14] = [
    "/usr/bin/squall",
    "/usr/bin/squall-bench",
    "/lib/systemd/system/squall.service",
    "/etc/squall/squall.toml",
    "/usr/share/man/man1/squall.1.gz",
    "/usr/share/man/man1/squall-seed.1.gz",
    "/usr/share/man/man1/squall-bench.1.gz",
    "/usr/share/bash-completion/completions/squall",
    "/usr/share/zsh/vendor-completions/_squall",
    "/usr/share/fish/vendor_completions.d/squall.fish",
    "/usr/share/doc/squall/copyright",
    "/usr/share/doc/squall/changelog.Debian.gz",
    "/usr/share/doc/squall/examples/monitoring/squall-dashboard.json",
    "/usr/share/doc/squall/examples/monitoring/squall-rules.yml",
];

/// Proves: package.sh makes squall_<Cargo.toml version>-1_<arch>.deb that lintian passes
/// (every remaining tag overridden with a reason), holding the binaries, unit, conffile, man
/// pages, completions, copyright, changelog and monitoring kit; that `dpkg -i` of it creates
/// the squall user and /var/lib/squall, runs `squall --version`, passes `systemd-analyze
/// verify` and `man`; that `dpkg -r` keeps the (edited) conffile and the state, and `dpkg -P`
/// removes both; and that the host saw none of it.
#[test]
fn deb_installs_removes_and_purges_in_a_cow_root() {
    for (tool, check) in [
        ("dpkg-deb", ["dpkg-deb", "--version"]),
        ("dpkg-shlibdeps (dpkg-dev)", ["dpkg-shlibdeps", "--version"]),
        ("strip (binutils)", ["strip", "--version"]),
        ("man (man-db)", ["man", "--version"]),
        ("systemd-analyze", ["systemd-analyze", "--version"]),
        ("lintian", ["lintian", "--version"]),
    ] {
        if !tool_available(tool, Command::new(check[0]).arg(check[1])) {
            return;
        }
    }
    if !is_root() {
        assert!(
            std::env::var("SQUALL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "this test installs the package into an overlay of / and needs root"
        );
        eprintln!("SKIP: installing the package needs root (mounts and chroot)");
        return;
    }
    assert!(
        bin_dir().join("squall-bench").exists(),
        "no squall-bench beside {}: run `cargo test --workspace` (it builds the bench too)",
        squall_bin()
    );
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(&dir.path().join("out"), true);
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("squall_{version}_{}.deb", dpkg_architecture())
    );
    let conffiles = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "/etc/squall/squall.toml"
    );

    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let Some(cow) = CowRoot::new(dir.path()) else {
        return;
    };
    if cow.package_status().starts_with("ii") {
        // A developer box with squall installed: start from a machine without it.
        cow.run_ok(&["dpkg", "--purge", "squall"]);
    }
    std::fs::copy(&deb, cow.path("/tmp/squall.deb")).unwrap();

    // Install.
    let log = cow.run_ok(&["dpkg", "--install", "/tmp/squall.deb"]);
    assert_eq!(cow.package_status(), "ii", "{log}");
    for file in PACKAGED_FILES {
        assert!(cow.path(file).is_file(), "{file} not installed");
    }
    let version_line = cow.run_ok(&["squall", "--version"]);
    assert!(
        version_line.contains(env!("CARGO_PKG_VERSION")),
        "{version_line}"
    );
    cow.run_ok(&["squall-bench", "--version"]);
    // As an operator would: create the data root the config names, then check it whole.
    cow.run_ok(&["mkdir", "-p", "/srv/squall/torrents", "/srv/squall/data"]);
    cow.run_ok(&["squall", "config", "check", "/etc/squall/squall.toml"]);
    let user = cow.run_ok(&["getent", "passwd", "squall"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{user}");
    assert_eq!(fields[5], "/var/lib/squall", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {user}");
    let state = std::fs::metadata(cow.path("/var/lib/squall")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(state.uid(), uid);
    assert_eq!(state.permissions().mode() & 0o777, 0o750);

    let unit = std::fs::read_to_string(cow.path("/lib/systemd/system/squall.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/squall seed --config /etc/squall/squall.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    let verify = cow.run(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/squall.service",
    ]);
    let verify_text = output_text(&verify);
    assert!(
        verify.status.success() && !verify_text.contains("squall.service:"),
        "systemd-analyze verify: {verify_text}"
    );

    // `man -l` on the installed page, and `man squall-seed` found through the man path.
    let page = cow.run_ok(&["man", "-l", "/usr/share/man/man1/squall.1.gz"]);
    assert!(page.contains("SYNOPSIS"), "{page}");
    let seed_page = cow.run_ok(&["man", "--warnings", "-P", "cat", "squall-seed"]);
    assert!(seed_page.contains("config"), "{seed_page}");

    // Remove: the binary goes, the edited conffile and the state stay.
    let conffile = cow.path("/etc/squall/squall.toml");
    let mut edited = std::fs::read_to_string(&conffile).unwrap();
    edited.push_str("# edited by the operator\n");
    std::fs::write(&conffile, &edited).unwrap();
    std::fs::write(cow.path("/var/lib/squall/resume.test"), b"state").unwrap();
    cow.run_ok(&["dpkg", "--remove", "squall"]);
    assert_eq!(cow.package_status(), "rc");
    assert!(!cow.path("/usr/bin/squall").exists());
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), edited);
    assert!(cow.path("/var/lib/squall/resume.test").exists());

    // Purge: config and state go; the user stays (see scripts/debian/postrm).
    cow.run_ok(&["dpkg", "--purge", "squall"]);
    assert_eq!(cow.package_status(), "", "still known to dpkg after purge");
    assert!(
        !cow.path("/etc/squall").exists(),
        "/etc/squall survived purge"
    );
    assert!(
        !cow.path("/var/lib/squall").exists(),
        "/var/lib/squall survived purge"
    );
    cow.run_ok(&["getent", "passwd", "squall"]);

    drop(cow);
    assert_eq!(
        std::fs::read("/etc/passwd").unwrap(),
        host_passwd,
        "the host's /etc/passwd changed: a maintainer script escaped the overlay"
    );
}
