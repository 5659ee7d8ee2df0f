//! `stream-bench suite --quick` end to end: every benchmark of the suite
//! runs at a token size and its output is complete and well-formed. No
//! speed is asserted (the machine is shared; speeds are for the full run).

use std::collections::BTreeSet;
use std::process::Command;

/// Every benchmark the suite must report, as row-id prefixes.
const SECTIONS: [&str; 10] =
    ["storage.", "produce.", "e2e.", "scale.", "groups.", "getrecords.", "percall.", "idle.", "recovery.", "orders."];

#[test]
fn quick_suite_reports_every_benchmark_with_its_disk_reference() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let out = scratch.path().join("out");
    let data = scratch.path().join("data");
    let run = Command::new(env!("CARGO_BIN_EXE_stream-bench"))
        .args(["--dir", data.to_str().expect("utf-8"), "--allow-tmpfs", "suite", "--quick"])
        .args(["--out", out.to_str().expect("utf-8")])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stream-bench suite --quick");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "suite failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("suite.json")).expect("suite.json")).expect("JSON");
    assert_eq!(json["quick"], true);
    let disk = &json["disk"];
    for key in [
        "dd_fdatasync_mb_per_sec",
        "dd_nosync_mb_per_sec",
        "sync_4k_append_p50_ms",
        "sync_4k_append_p99_ms",
        "sync_4k_overwrite_p50_ms",
    ] {
        let v = disk[key].as_f64().unwrap_or_else(|| panic!("disk.{key} missing: {disk}"));
        assert!(v.is_finite() && v > 0.0, "disk.{key} = {v}");
    }
    assert!(json["durability"].as_str().is_some_and(|d| d.starts_with("always")), "{}", json["durability"]);
    let rows = json["rows"].as_array().expect("rows");
    let mut ids = BTreeSet::new();
    for row in rows {
        let id = row["id"].as_str().expect("id").to_string();
        assert!(ids.insert(id.clone()), "row {id} twice");
        let v = row["value"].as_f64().unwrap_or_else(|| panic!("{id}: value {}", row["value"]));
        assert!(v.is_finite() && v >= 0.0, "{id}: value {v}");
        for text in ["name", "unit", "load", "timestamps"] {
            assert!(row[text].as_str().is_some_and(|t| !t.is_empty()), "{id}: {text} missing");
        }
        // A ratio is there exactly when the row names what it is a ratio of.
        assert_eq!(row["disk_ratio"].is_null(), row["disk_ratio_of"].is_null(), "{id}");
        if let Some(r) = row["disk_ratio"].as_f64() {
            assert!(r.is_finite() && r >= 0.0, "{id}: ratio {r}");
        }
        assert!(row["met"].is_null(), "{id}: a quick run judges no target");
    }
    for section in SECTIONS {
        assert!(ids.iter().any(|id| id.starts_with(section)), "no {section}* row in {ids:?}");
    }
    for id in [
        "storage.no_sync.mb_per_sec",
        "storage.sync_per_batch.mb_per_sec",
        "produce.100B.1sh.unary.records_per_sec",
        "produce.1024B.8sh.batched.records_per_sec",
        "e2e.50pct.p99_ms",
        "e2e.50pct.p999_ms",
        "e2e.50pct.even.p99_ms",
        "e2e.50pct.cores_busy",
        "e2e.50pct.fsync_over_25ms",
        "percall.health.broker_us_per_call",
        "percall.unary.broker_us_per_call",
        "percall.stream.broker_us_per_call",
        "percall.wire.broker_us_per_call",
        "percall.wire.records_per_sec",
        "groups.drain_4x8.records_per_sec",
        "getrecords.mb_per_sec",
        "orders.p99_ms",
    ] {
        assert!(ids.contains(id), "{id} missing from {ids:?}");
    }
    // Every record of the produce -> subscriber runs arrived.
    for row in rows.iter().filter(|r| r["id"].as_str().is_some_and(|id| id.ends_with("delivered_ratio"))) {
        assert_eq!(row["value"].as_f64(), Some(1.0), "{row}");
    }

    // The Markdown table has one line per row, and the same on stdout.
    let md = std::fs::read_to_string(out.join("suite.md")).expect("suite.md");
    assert!(md.contains("| benchmark | figure | vs disk | target | load (in flight) | timestamps |"), "{md}");
    let table_rows =
        md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| benchmark") && !l.starts_with("| ---")).count();
    assert_eq!(table_rows, rows.len(), "{md}");
    assert!(stdout.contains(&md), "stdout carries the table");
}

/// Without a `stream-broker` next to it, the suite starts `stream-bench
/// serve` with the broker's own flags; it must take all of them and print
/// the broker's listening line.
#[test]
fn the_serve_fallback_takes_the_flags_of_stream_broker() {
    use std::io::{BufRead, BufReader};
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stream-bench"))
        .args(["serve", "--data-dir", scratch.path().to_str().expect("utf-8")])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--kinesis-addr", "127.0.0.1:0"])
        .args(["--wire-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stream-bench serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the listening line");
    child.kill().expect("stop stream-bench serve");
    let out = child.wait_with_output().expect("wait for stream-bench serve");
    assert!(
        line.starts_with("stream-broker listening grpc=127.0.0.1:")
            && line.contains(" kinesis=")
            && line.contains(" wire=127.0.0.1:"),
        "listening line {line:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
