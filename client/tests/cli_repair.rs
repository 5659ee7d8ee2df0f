//! `streamctl shard repair` and `streamctl lost-found` against an in-process
//! broker whose files were damaged between two starts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::Admin;
use client::types as pb;
use serde_json::Value;

/// Runs streamctl against `addr`: exit code, stdout, stderr.
async fn streamctl(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--broker".to_string(), addr.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_streamctl"))
            .env_remove("STREAMCTL_BROKER")
            .env("STREAMCTL_CONFIG", "/nonexistent/streamctl.toml")
            .args(&all)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run streamctl");
        let code = out.status.code().unwrap_or_else(|| panic!("streamctl {all:?} timed out or was killed"));
        (code, String::from_utf8(out.stdout).expect("utf-8"), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .expect("streamctl runner")
}

fn config(dir: &Path) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    c.quotas.enforce = false;
    c
}

async fn put(admin: &Admin, data: &[u8]) {
    let r = admin
        .streams()
        .put_records(pb::PutRecordsRequest {
            stream_name: "s".into(),
            records: vec![pb::PutRecordsEntry {
                partition_key: "k".into(),
                data: data.to_vec().into(),
                explicit_hash_key: None,
            }],
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(r.failed_record_count, 0);
}

#[tokio::test]
async fn repair_prints_the_cut_and_needs_yes_and_lost_found_lists_and_purges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("connect");
    let d = admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    let seg = dir.path().join(format!("streams/{}/shardId-000000000000/00000000000000000000.log", d.stream_id));
    let mut ends = Vec::new();
    for i in 0..3u8 {
        put(&admin, &[i; 1000]).await;
        ends.push(std::fs::metadata(&seg).expect("segment").len());
    }
    broker.stop().await.expect("stop");
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[((ends[0] + ends[1]) / 2) as usize] ^= 0x5a;
    std::fs::write(&seg, bytes).expect("damage");
    // A stream directory nobody defines: the next start keeps it in lost+found.
    std::fs::create_dir_all(dir.path().join("streams/999/shardId-000000000000")).expect("orphan");
    std::fs::write(dir.path().join("streams/999/shardId-000000000000/00000000000000000000.log"), [7u8; 100])
        .expect("orphan log");

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let addr = broker.endpoint();
    let admin = Admin::connect(&addr).await.expect("connect");
    let (code, text, _) = streamctl(&addr, &["stream", "describe", "s"]).await;
    assert_eq!(code, 0);
    assert!(text.contains("READ_ONLY (Damaged"), "{text}");
    assert!(text.contains(&format!("damage in shardId-000000000000: 00000000000000000000.log at byte {}", ends[0])));
    let (_, json, _) = streamctl(&addr, &["stream", "describe", "s", "--json"]).await;
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["shards"][0]["shard_status"], "READ_ONLY");
    assert_eq!(v["shards"][0]["damage"][0]["position"], ends[0]);

    let (code, _, err) = streamctl(&addr, &["shard", "repair", "s", "shardId-000000000000"]).await;
    assert_eq!(code, 2, "the flag that accepts data loss is required: {err}");
    let (code, plan, err) =
        streamctl(&addr, &["shard", "repair", "s", "shardId-000000000000", "--truncate-after-damage"]).await;
    assert_eq!(code, 1, "a dry run exits non-zero: {err}");
    assert!(err.contains("dry run") && err.contains("--yes"), "{err}");
    for want in [
        "TRUNCATE".to_string(),
        format!("00000000000000000000.log at byte {}", ends[0]),
        "sequence number 1".into(),
        "records lost      2".into(),
        format!("bytes removed     {}", ends[2] - ends[0]),
        "no (dry run)".into(),
    ] {
        assert!(plan.contains(&want), "{want:?} missing in\n{plan}");
    }
    let (_, json, _) = streamctl(&addr, &["stream", "describe", "s", "--json"]).await;
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["shards"][0]["shard_status"], "READ_ONLY", "a dry run changes nothing");

    let (code, done, err) = streamctl(
        &addr,
        &["shard", "repair", "s", "shardId-000000000000", "--truncate-after-damage", "--yes", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&done).expect("json");
    assert_eq!((v["applied"].as_bool(), v["action"].as_str()), (Some(true), Some("TRUNCATE")));
    assert_eq!((v["first_lost_sequence_number"].as_u64(), v["records_lost"].as_u64()), (Some(1), Some(2)));
    assert_eq!(v["shard_status"], "SERVING");
    put(&admin, b"after repair").await;

    let (code, json, _) = streamctl(&addr, &["lost-found", "list", "--json"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).expect("json");
    let entries = v["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!((entries[0]["stream_id"].as_u64(), entries[0]["bytes"].as_u64()), (Some(999), Some(100)));
    let name = entries[0]["name"].as_str().expect("name").to_string();
    let (code, text, _) = streamctl(&addr, &["lost-found", "list"]).await;
    assert_eq!(code, 0);
    assert!(text.contains(&name), "{text}");
    let (code, _, err) = streamctl(&addr, &["lost-found", "purge", &name]).await;
    assert_eq!(code, 1);
    assert!(err.contains("would delete") && err.contains("--yes"), "{err}");
    assert!(dir.path().join("lost+found").join(&name).exists(), "nothing is deleted without --yes");
    let (code, _, err) = streamctl(&addr, &["lost-found", "purge", "../streams", "--yes"]).await;
    assert_eq!(code, 2, "only listed names can be purged: {err}");
    let (code, out, err) = streamctl(&addr, &["lost-found", "purge", &name, "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("deleted {name}")), "{out}");
    assert!(!dir.path().join("lost+found").join(&name).exists());
    assert!(admin.list_lost_found().await.expect("list").is_empty());
    broker.stop().await.expect("stop");
}
