//! One damaged shard must not stop the broker: every other shard and stream
//! is served, the damaged shard is reported (DescribeStream, `/metrics`,
//! `/readyz`) and refuses with an error naming the stream, shard and cause.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;

const SHARD0: &str = "shardId-000000000000";
const SHARD1: &str = "shardId-000000000001";

fn config(dir: &Path) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    c.quotas.enforce = false;
    c
}

fn segment(dir: &Path, stream_id: u64, shard: &str) -> PathBuf {
    dir.join("streams").join(stream_id.to_string()).join(shard).join("00000000000000000000.log")
}

/// Flips one byte of `path` at `pos`.
fn flip(path: &Path, pos: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[pos as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write segment");
}

#[tokio::test]
async fn a_damaged_shard_is_reported_and_everything_else_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "good", 1).await;
    let bad = create(&mut c, "bad", 2).await;
    // Three acknowledged batches in shard 0 of `bad` (hash 0 routes there),
    // each its own frame; note where each ends.
    let seg = segment(dir.path(), bad.stream_id, SHARD0);
    let mut ends = Vec::new();
    for i in 0..3u8 {
        let r = put(&mut c, "bad", vec![entry_at(0, &[i; 1000])]).await;
        assert_eq!(r.failed_record_count, 0);
        ends.push(std::fs::metadata(&seg).expect("segment").len());
    }
    put(&mut c, "bad", vec![entry_at(u128::MAX, b"shard one")]).await;
    put(&mut c, "good", vec![entry("k", b"good one")]).await;
    broker.stop().await.expect("clean stop");

    // Damage the middle batch: valid batches on both sides, so it is not a torn tail.
    flip(&seg, (ends[0] + ends[1]) / 2);

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let names = c.list_streams(pb::ListStreamsRequest::default()).await.expect("broker serves").into_inner();
    assert_eq!(names.stream_names, vec!["bad".to_string(), "good".to_string()]);
    // The other stream and the other shard serve reads and writes.
    let it = iterator(&mut c, "good", SHARD0, pb::IteratorType::TrimHorizon, None, None).await;
    assert_eq!(drain(&mut c, it, 100).await.len(), 1);
    assert_eq!(put(&mut c, "good", vec![entry("k", b"good two")]).await.failed_record_count, 0);
    let it = iterator(&mut c, "bad", SHARD1, pb::IteratorType::TrimHorizon, None, None).await;
    assert_eq!(drain(&mut c, it, 100).await.len(), 1);
    assert_eq!(put(&mut c, "bad", vec![entry_at(u128::MAX, b"shard one again")]).await.failed_record_count, 0);
    broker.stop().await.expect("clean stop");
}
