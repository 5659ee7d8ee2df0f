//! Retention of an idle shard: records older than the stream's retention
//! disappear even when nothing is appended after them (the storage engine
//! rolls and deletes an expired active segment), and sequence numbers never
//! go back. Time moves through an injected clock; the janitor runs every
//! few milliseconds and the test waits for its effect in a bounded loop.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::ManualClock;
use broker::config::{BrokerConfig, RetentionConfig};
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;

const T0: u64 = 1_800_000_000_000;
const SHARD: &str = "shardId-000000000000";

async fn trim_horizon(c: &mut Client) -> Vec<pb::Record> {
    let it = iterator(c, "s", SHARD, pb::IteratorType::TrimHorizon, None, None).await;
    drain(c, it, 1_000).await
}

/// Records from TRIM_HORIZON, or `None` if retention removed the iterator's
/// position between the two calls (the janitor runs concurrently).
async fn trim_horizon_racing_retention(c: &mut Client) -> Option<Vec<pb::Record>> {
    let it = iterator(c, "s", SHARD, pb::IteratorType::TrimHorizon, None, None).await;
    match c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1_000 }).await {
        Ok(r) => Some(r.into_inner().records),
        Err(s) if error_kind(&s) == "SequenceTrimmed" => None,
        Err(s) => panic!("get records: {s}"),
    }
}

#[tokio::test]
async fn an_idle_shard_loses_its_expired_records_and_keeps_counting() {
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        retention: RetentionConfig { check_interval_ms: 10 },
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    // The clock stands still while the test polls, so quota buckets would never refill.
    let quotas = pb::Quotas {
        write_records_per_sec: Some(1_000_000),
        write_bytes_per_sec: Some(1 << 30),
        read_calls_per_sec: Some(100_000),
        read_bytes_per_sec: Some(1 << 30),
    };
    let req = pb::CreateStreamRequest {
        stream_name: "s".into(),
        shard_count: 1,
        quota_overrides: Some(quotas),
        ..Default::default()
    };
    create_with(&mut c, req).await;
    put(&mut c, "s", (0..5).map(|i| entry("k", format!("old-{i}").as_bytes())).collect()).await;
    let old = trim_horizon(&mut c).await;
    assert_eq!(old.len(), 5);
    let last_old = old.last().map(|r| r.sequence_number).expect("records");

    // A day and an hour later, with nothing appended since: the records are past retention.
    clock.advance(25 * 3_600_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = trim_horizon_racing_retention(&mut c).await;
        if left.as_ref().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after expiry TRIM_HORIZON still returns expired records of an idle shard: {:?}",
            left.map(|l| l.len())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    put(&mut c, "s", vec![entry("k", b"new")]).await;
    let new = trim_horizon(&mut c).await;
    assert_eq!(new.len(), 1);
    assert_eq!(&new[0].data[..], b"new");
    assert!(new[0].sequence_number > last_old, "sequence numbers never go back");
    drop(c);
    broker.stop().await.expect("stop");
}
