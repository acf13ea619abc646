//! scripts/latency.sh as a quick test (issue 9's latency procedure must not rot): tiny data,
//! 1 s runs, a low rate. Checks that every step ran and wrote what it promises, never speed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// squall-bench sits beside the squall binary that cargo built for this test.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_squall"))
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

#[test]
fn latency_script_measures_squall_and_the_null_seeder() {
    // Proves: latency.sh finds Squall's closed-loop maximum, runs Squall and the null seeder
    // in open loop at a fraction of it (with the bench polling), reads Squall's own latency
    // from /stats, and writes summary.json and report.html with a row for each.
    let bins = bin_dir();
    assert!(
        bins.join("squall-bench").exists(),
        "no squall-bench in {}: run `cargo test --workspace` (it builds the bench too)",
        bins.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/latency.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("SQUALL_BIN_DIR", &bins)
        .env("SQUALL_BENCH_DIR", dir.path())
        .env("SQUALL_BENCH_OUT", &out)
        .env("BENCH_SIZE_BYTES", (8u64 << 20).to_string())
        .env("DURATION", "1")
        .env("ROUNDS", "1")
        .env("FRACTION", "0.02")
        .env("SPIN_US", "200")
        .env("PEERS", "4")
        .env("DEPTH", "16")
        .output()
        .expect("run scripts/latency.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "latency.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // BENCH_SIZE_BYTES marks the results as a smoke run, kept apart from published ones.
    let smoke = PathBuf::from(format!("{}-smoke", out.display()));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(smoke.join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json parses");
    assert!(
        summary["rate_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{summary}"
    );
    for seeder in ["squall", "null"] {
        let row = &summary["seeders"][seeder];
        assert_eq!(row["rounds"], 1, "{seeder}: {summary}\n{stdout}");
        assert!(row["p99_us"].as_f64().unwrap_or(0.0) > 0.0, "{summary}");
        assert!(row["gbps"].as_f64().unwrap_or(0.0) > 0.0, "{summary}");
    }
    assert!(
        summary["seeders"]["squall"]["own_p99_us"]
            .as_f64()
            .is_some(),
        "Squall's /stats latency was not read: {summary}"
    );
    let report = std::fs::read_to_string(smoke.join("report.html")).expect("report.html");
    assert!(report.contains("squall-round1") && report.contains("null-round1"));
    assert!(stdout.contains("p99 squall / null"), "{stdout}");
}
