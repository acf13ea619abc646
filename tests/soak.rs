//! The soak run (scripts/soak.sh 60) as a test, only when SQUALL_SOAK=1 (CI sets it): the
//! default test run stays fast.

use std::process::Command;

/// Proves (with SQUALL_SOAK=1): 60 s of honest downloads, bench load and hostile peers leave
/// squall alive with fds and RSS within 10% of their post-warm-up level.
#[test]
fn soak_60s() {
    if std::env::var("SQUALL_SOAK")
        .map(|v| v != "1")
        .unwrap_or(true)
    {
        eprintln!("SKIP: soak (set SQUALL_SOAK=1 to run scripts/soak.sh 60)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.sh");
    let status = Command::new("bash")
        .args([script, "60"])
        .status()
        .expect("run scripts/soak.sh");
    assert!(status.success(), "scripts/soak.sh 60 failed");
}
