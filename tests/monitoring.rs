//! The monitoring kit (configs/monitoring/): the Prometheus rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`: series in, alerts out), every metric the
//! rules and the Grafana dashboard name is one a running squall really exports, and every
//! alert has its section in docs/operations.md.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/configs/monitoring/squall-rules.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/configs/monitoring/squall-rules.test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/configs/monitoring/squall-dashboard.json"
);
const OPERATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");

fn promtool_available() -> bool {
    tool_available(
        "promtool (prometheus)",
        Command::new("promtool").arg("--version"),
    )
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}",
        output_text(&out)
    );
}

/// Proves: the rules file is valid Prometheus rules (syntax, PromQL, templates).
#[test]
fn rules_pass_promtool_check() {
    if !promtool_available() {
        return;
    }
    promtool(&["check", "rules", RULES]);
}

/// Proves: each alert fires on the series it is written for, not before its `for`, and not on
/// healthy series; the latency recording rules compute the p99 from the buckets.
#[test]
fn rule_unit_tests_fire_each_alert() {
    if !promtool_available() {
        return;
    }
    promtool(&["test", "rules", RULE_TESTS]);
}

/// Identifiers in PromQL-ish text: metric names, recording-rule names (with colons), labels,
/// functions. Quoted label values are words too, which is harmless: none starts `squall_`.
fn identifiers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every string in a JSON document (expressions, template queries, descriptions).
fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// (metric names, recording-rule names) referenced by `text`.
fn references(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for word in identifiers(text) {
        if word.contains(':') && word.contains("squall_") {
            recorded.insert(word);
        } else if word.starts_with("squall_") {
            metrics.insert(word);
        }
    }
    (metrics, recorded)
}

/// The names of `/metrics`: every sample's name and every family named in # TYPE.
fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split(' ').next().unwrap_or("").to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Proves: every `squall_*` name in the dashboard and the rules is exported by a real squall
/// (scraped from its /metrics once its shards reported), every recording-rule name the
/// dashboard or the alerts use is recorded by the rules, and the dashboard is valid JSON
/// whose panels all query something. The squall runs with its DHT on, on loopback only (the
/// `squall_dht_*` series exist only while the DHT is enabled), so the DHT panels and alerts
/// are checked against real names too.
#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = 0;
    for panel in panels {
        match panel["type"].as_str() {
            Some("row") | Some("text") => continue,
            _ => {}
        }
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "{}: no targets", panel["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{}: empty expr",
                panel["title"]
            );
        }
        queried += 1;
    }
    assert!(queried >= 15, "only {queried} panels query anything");
    let mut strings = Vec::new();
    json_strings(&dashboard, &mut strings);
    let (dash_metrics, dash_recorded) = references(&strings.join("\n"));

    let rules = std::fs::read_to_string(RULES).unwrap();
    let (rule_metrics, rule_recorded) = references(&rules);
    let defined: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(defined.len() >= 4, "recording rules: {defined:?}");
    for name in dash_recorded.iter().chain(&rule_recorded) {
        assert!(
            defined.contains(name),
            "{name} is used but no rule records it"
        );
    }
    assert!(
        dash_metrics.len() >= 10 && rule_metrics.len() >= 5,
        "suspiciously few metric names: {dash_metrics:?} {rule_metrics:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    write_file(&content.join("one.bin"), &pattern_bytes(100_000, 23));
    // The DHT on loopback only: its node listens on 127.0.0.1 and bootstraps from a local UDP
    // socket that never answers, so nothing leaves the machine and the node stays up with an
    // empty routing table.
    let silent_node = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let bootstrap = silent_node.local_addr().unwrap();
    assert!(bootstrap.ip().is_loopback());
    let config = write_config(
        dir.path(),
        &format!(
            "[dht]\nenabled = true\nlisten = \"127.0.0.1:0\"\nbootstrap = [\"{bootstrap}\"]\n"
        ),
    );
    let squall = SeedArgs::content(&content)
        .state(&dir.path().join("state"))
        .shards(2)
        .config(&config)
        .admin()
        .start();
    let admin = squall.admin.expect("no `admin on ADDR` line");
    // Per-shard series appear with the shards' first snapshots (sent every second), the DHT's
    // once the control loop has seen its node.
    let page = wait_for(Duration::from_secs(15), "per-shard and DHT metrics", || {
        let (status, page) = http_get(admin, "/metrics");
        (status == 200
            && page.contains("squall_shard_accepting{")
            && page.contains("\nsquall_dht_up 1\n"))
        .then_some(page)
    });
    let exported = exported_names(&page);
    let missing: Vec<&String> = dash_metrics
        .iter()
        .chain(&rule_metrics)
        .filter(|n| !exported.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the monitoring kit but not exported by squall: {missing:?}"
    );
    // Tracker, catalog, build and DHT health are in the kit (dashboard and alerts).
    for name in [
        "squall_tracker_announces_total",
        "squall_torrents",
        "squall_build_info",
        "squall_process_start_time_seconds",
        "squall_dht_up",
        "squall_dht_nodes",
        "squall_ring_push_failures_total",
    ] {
        assert!(dash_metrics.contains(name), "{name}: not on the dashboard");
    }
    for name in [
        "squall_tracker_announces_total",
        "squall_torrents",
        "squall_dht_up",
        "squall_dht_nodes",
        "squall_ring_push_failures_total",
    ] {
        assert!(rule_metrics.contains(name), "{name}: no alert uses it");
    }
    let (code, _) = squall.terminate();
    assert_eq!(code, Some(0));
}

/// Proves: docs/operations.md has a section for every alert (the annotations link to it by
/// its anchor) that says what to do.
#[test]
fn every_alert_has_a_runbook_section() {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let docs = std::fs::read_to_string(OPERATIONS).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for alert in alerts {
        let heading = format!("#### {alert}\n");
        let at = docs
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/operations.md has no `{}`", heading.trim()));
        let section = &docs[at + heading.len()..];
        let section = &section[..section.find("\n#").unwrap_or(section.len())];
        assert!(
            section.contains("What to do"),
            "{alert}: its section does not say what to do"
        );
        assert!(
            rules.contains(&format!("docs/operations.md#{}", alert.to_lowercase())),
            "{alert}: no annotation links to its section"
        );
    }
}
