//! A full disk, on a size-limited filesystem: a tmpfs this test mounts. It
//! needs root; when it cannot mount, it fails with that reason rather than
//! pass without testing anything.
//!
//! - The free-space watermark refuses writes with the retryable `DiskFull`
//!   before ENOSPC can tear a segment; reads and group commits keep working;
//!   writes resume by themselves once space is freed; the broker restarts on
//!   a full disk and serves reads; every acknowledged record survives.
//! - With the watermark off, a write that meets real ENOSPC poisons only its
//!   shard, which reopens itself (re-running recovery) once space returns.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;
use tonic::Code;

const MIB: u64 = 1 << 20;
const SHARDS: [&str; 2] = ["shardId-000000000000", "shardId-000000000001"];

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(&mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs root to mount a tmpfs at {}: {}",
            mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { mnt, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a file still open somewhere cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Fills the filesystem of `path` completely, to the last byte.
fn fill(path: &Path) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("ballast file");
    for chunk in [MIB as usize, 4096, 1] {
        let buf = vec![0xbbu8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

/// Fills the filesystem of `path` until `leave` bytes are free.
fn fill_to(path: &Path, leave: u64) {
    let free = free_bytes(path.parent().expect("parent"));
    assert!(free > leave, "only {free} bytes free, cannot leave {leave}");
    let f = std::fs::File::create(path).expect("ballast file");
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, free - leave).expect("fallocate ballast");
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) -> Duration {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

fn config(data_dir: &Path, min_free_bytes: u64, reserve_bytes: u64) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: data_dir.to_path_buf(), ..BrokerConfig::default() };
    c.quotas.enforce = false;
    c.storage.segment_bytes_max = MIB;
    c.storage.min_free_bytes = min_free_bytes;
    c.storage.reserve_bytes = reserve_bytes;
    c.storage.free_space_check_interval_ms = 50;
    c
}

/// Acknowledged records: (shard, sequence number) -> data.
type Acked = BTreeMap<(String, u64), Vec<u8>>;

fn record(i: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; len];
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// Puts one batch of `n` records of `len` bytes; records what was acknowledged.
/// Ok(failed record codes) or Err(the status of a refused call).
async fn put_batch(
    c: &mut Client,
    next: &mut u32,
    n: u32,
    len: usize,
    acked: &mut Acked,
) -> Result<Vec<String>, tonic::Status> {
    let records: Vec<Vec<u8>> = (0..n).map(|k| record(*next + k, len)).collect();
    *next += n;
    let entries = records.iter().enumerate().map(|(k, r)| entry(&format!("key-{k}-{}", r[0]), r)).collect();
    let resp = c.put_records(pb::PutRecordsRequest { stream_name: "s".into(), records: entries }).await?.into_inner();
    let mut failed = Vec::new();
    for (r, data) in resp.records.into_iter().zip(records) {
        if r.error_code.is_empty() {
            acked.insert((r.shard_id, r.sequence_number), data);
        } else {
            failed.push(r.error_code);
        }
    }
    Ok(failed)
}

async fn assert_all_present(c: &mut Client, acked: &Acked) {
    let mut stored = Acked::new();
    for shard in SHARDS {
        let it = iterator(c, "s", shard, pb::IteratorType::TrimHorizon, None, None).await;
        for r in drain(c, it, 1000).await {
            stored.insert((shard.to_string(), r.sequence_number), r.data.to_vec());
        }
    }
    for (k, v) in acked {
        assert_eq!(stored.get(k), Some(v), "acknowledged record {k:?} is missing or changed");
    }
}

fn refused_with_disk_full(s: &tonic::Status) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(error_kind(s), "DiskFull", "{s:?}");
    let retry = s.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|ms| ms > 0), "a retry hint: {s:?}");
}

fn shard_statuses(d: &pb::StreamDescription) -> Vec<i32> {
    d.shards.iter().map(|s| s.shard_status).collect()
}

#[tokio::test]
async fn the_watermark_refuses_writes_before_enospc_and_they_resume_when_space_returns() {
    let fs = Tmpfs::mount(64 * MIB);
    let data_dir = fs.mnt.join("data");
    let config = config(&data_dir, 12 * MIB, 4 * MIB);
    let broker = TestBroker::start_with(config.clone(), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 2).await;
    let mut groups = ConsumerGroupsClient::connect(broker.endpoint()).await.expect("groups client");
    let joined = groups
        .join_group(pb::JoinGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            start: Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None }),
            client_id: "test".into(),
        })
        .await
        .expect("join")
        .into_inner();
    assert!(data_dir.join("reserve").exists(), "the broker keeps a reserve file");

    // Leave 8 MiB above the watermark, then produce until it refuses.
    let ballast = fs.mnt.join("ballast");
    fill_to(&ballast, 20 * MIB);
    let (mut acked, mut next) = (Acked::new(), 0u32);
    let refusal = loop {
        assert!(next < 100_000, "the watermark never refused a write");
        match put_batch(&mut c, &mut next, 8, 32 << 10, &mut acked).await {
            Ok(failed) => assert!(failed.iter().all(|code| code == "DiskFull"), "{failed:?}"),
            Err(status) => break status,
        }
    };
    refused_with_disk_full(&refusal);
    assert!(free_bytes(&fs.mnt) >= 8 * MIB, "writes stopped well before ENOSPC: {} free", free_bytes(&fs.mnt));
    assert!(acked.len() > 100, "{} records were accepted before the watermark", acked.len());
    let d = c.describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() }).await.expect("describe");
    let d = d.into_inner().stream.expect("description");
    assert_eq!(shard_statuses(&d), vec![pb::ShardStatus::Serving as i32; 2], "the watermark fails no shard");
    // Readiness follows the periodic free-space check, which may run a
    // moment after the writer refused by its own exact accounting.
    wait_until("/readyz reports the watermark", || async {
        let (code, body) = http_get(broker.http_addr, "/readyz").await;
        code == 503 && body.contains("free-space watermark")
    })
    .await;

    // Reads and group commits keep working.
    assert_all_present(&mut c, &acked).await;
    let assignment = joined.assignment.expect("assignment");
    let shards = assignment
        .leases
        .iter()
        .map(|l| pb::ShardPosition {
            shard_id: l.shard_id.clone(),
            lease_epoch: l.lease_epoch,
            next_sequence_number: None,
        })
        .collect();
    let polled = groups
        .poll(pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: joined.member_id.clone(),
            shards,
            max_records: 1000,
            wait_ms: 0,
        })
        .await
        .expect("a group poll below the watermark")
        .into_inner();
    let checkpoints = polled
        .shards
        .iter()
        .filter_map(|s| {
            let last = s.records.last()?;
            Some(pb::ShardCheckpoint {
                shard_id: s.shard_id.clone(),
                sequence_number: last.sequence_number,
                lease_epoch: s.lease_epoch,
            })
        })
        .collect::<Vec<_>>();
    assert!(!checkpoints.is_empty());
    let committed = groups
        .commit(pb::CommitRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: joined.member_id.clone(),
            checkpoints,
        })
        .await
        .expect("a group commit below the watermark")
        .into_inner();
    assert!(committed.results.iter().all(|r| r.error_kind.is_empty()), "{committed:?}");

    // Space returns: writes resume without a restart.
    std::fs::remove_file(&ballast).expect("free the space");
    let waited = wait_until("writes resume by themselves", || {
        let mut c = c.clone();
        let (mut next, mut acked) = (next, acked.clone());
        async move { matches!(put_batch(&mut c, &mut next, 1, 100, &mut acked).await, Ok(f) if f.is_empty()) }
    })
    .await;
    println!("first write accepted {waited:?} after the space was freed");
    let mut resumed = 0;
    while resumed < 50 {
        if put_batch(&mut c, &mut next, 1, 1000, &mut acked).await.expect("accepted").is_empty() {
            resumed += 1;
        }
    }
    let (code, body) = http_get(broker.http_addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");

    // Fill the disk to the last byte, restart on it: reads served, writes refused.
    fill(&ballast);
    broker.stop().await.expect("clean stop on a full disk");
    let broker = TestBroker::start_with(config.clone(), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    assert_all_present(&mut c, &acked).await;
    let refused = put_batch(&mut c, &mut next, 1, 100, &mut acked).await.expect_err("a full disk refuses writes");
    refused_with_disk_full(&refused);
    let (code, _) = http_get(broker.http_addr, "/readyz").await;
    assert_eq!(code, 503);

    std::fs::remove_file(&ballast).expect("free the space");
    wait_until("writes resume after a start on a full disk", || {
        let mut c = c.clone();
        let (mut next, mut acked) = (next, acked.clone());
        async move { matches!(put_batch(&mut c, &mut next, 1, 100, &mut acked).await, Ok(f) if f.is_empty()) }
    })
    .await;
    put_batch(&mut c, &mut next, 4, 100, &mut acked).await.expect("accepted");
    broker.stop().await.expect("clean stop");

    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    assert_all_present(&mut c, &acked).await;
    broker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn enospc_poisons_only_the_write_and_the_shard_reopens_itself_when_space_returns() {
    let fs = Tmpfs::mount(32 * MIB);
    let data_dir = fs.mnt.join("data");
    // Watermark and reserve off, so a write really meets ENOSPC.
    let config = config(&data_dir, 0, 0);
    let broker = TestBroker::start_with(config.clone(), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 2).await;
    let (mut acked, mut next) = (Acked::new(), 0u32);
    for _ in 0..10 {
        assert!(put_batch(&mut c, &mut next, 4, 1000, &mut acked).await.expect("accepted").is_empty());
    }

    let ballast = fs.mnt.join("ballast");
    fill(&ballast);
    let failed = put_batch(&mut c, &mut next, 4, 64 << 10, &mut acked).await.expect("per-record results");
    assert!(!failed.is_empty() && failed.iter().all(|code| code == "DiskFull"), "{failed:?}");
    let d = c.describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() }).await.expect("describe");
    let d = d.into_inner().stream.expect("description");
    assert!(
        shard_statuses(&d).contains(&(pb::ShardStatus::DiskFull as i32)),
        "a shard that met ENOSPC says so: {:?}",
        d.shards
    );
    let single = c
        .put_record(pb::PutRecordRequest {
            stream_name: "s".into(),
            partition_key: "k".into(),
            data: vec![1u8; 64 << 10].into(),
            explicit_hash_key: Some("0".into()),
        })
        .await;
    let single = single.expect_err("no space");
    refused_with_disk_full(&single);
    assert_all_present(&mut c, &acked).await;
    let (code, body) = http_get(broker.http_addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("DiskFull"), "{body}");

    std::fs::remove_file(&ballast).expect("free the space");
    wait_until("the poisoned shard reopens by itself", || {
        let mut c = c.clone();
        async move {
            let d = c.describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() }).await.expect("describe");
            shard_statuses(&d.into_inner().stream.expect("description")) == vec![pb::ShardStatus::Serving as i32; 2]
        }
    })
    .await;
    for _ in 0..10 {
        assert!(put_batch(&mut c, &mut next, 4, 64 << 10, &mut acked).await.expect("accepted").is_empty());
    }
    assert_all_present(&mut c, &acked).await;
    broker.stop().await.expect("clean stop");
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    assert_all_present(&mut c, &acked).await;
    broker.stop().await.expect("clean stop");
}
