//! SubscribeShard limits through real gRPC: each subscription's own byte
//! rate, the cap on subscriptions per shard, the maximum lifetime with its
//! continuation, and the broker-wide budget for subscription buffers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::ManualClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

const T0: u64 = 1_800_000_000_000;
const SHARD: &str = "shardId-000000000000";

type Events = tonic::Streaming<pb::SubscribeShardEvent>;

fn quotas(read_bytes_per_sec: u64) -> Option<pb::Quotas> {
    Some(pb::Quotas {
        write_records_per_sec: Some(1_000_000),
        write_bytes_per_sec: Some(1 << 30),
        read_calls_per_sec: Some(100_000),
        read_bytes_per_sec: Some(read_bytes_per_sec),
    })
}

async fn create_stream(c: &mut Client, read_bytes_per_sec: u64) {
    create_with(
        c,
        pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            quota_overrides: quotas(read_bytes_per_sec),
            ..Default::default()
        },
    )
    .await;
}

async fn subscribe(c: &mut Client, position: pb::IteratorType, seq: Option<u64>) -> Result<Events, tonic::Status> {
    c.subscribe_shard(pb::SubscribeShardRequest {
        stream_name: "s".into(),
        shard_id: SHARD.into(),
        starting_position: position as i32,
        starting_sequence_number: seq,
        timestamp_ms: None,
    })
    .await
    .map(|r| r.into_inner())
}

/// The next event, within a generous bound; `None` when the call ended cleanly.
async fn next(sub: &mut Events) -> Option<pb::SubscribeShardEvent> {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an event or the end within 30 s")
        .map(|r| r.expect("event"))
}

fn record_bytes(ev: &pb::SubscribeShardEvent) -> u64 {
    ev.records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum()
}

fn heartbeat_config(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    config.limits.subscribe_heartbeat_ms = 50;
    config
}

#[tokio::test]
async fn a_subscription_reads_at_most_its_own_byte_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let broker = TestBroker::start_with(heartbeat_config(dir.path()), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let rate = 64 * 1024u64;
    create_stream(&mut c, rate).await;
    let total = 40u64;
    put(&mut c, "s", (0..total).map(|_| entry("k", &[7; 8192])).collect()).await;
    let mut sub = subscribe(&mut c, pb::IteratorType::TrimHorizon, None).await.expect("subscribe");
    // A subscription may overshoot its balance by one event (bytes are
    // charged after the read), and events are at most 64 KiB.
    let slack = 64 * 1024 + 8193;
    let (mut bytes, mut seqs) = (0u64, Vec::new());
    for second in 0..20u64 {
        // Records until the subscription stalls: two heartbeats in a row
        // while the clock stands still.
        let mut idle = 0;
        while idle < 2 && (seqs.len() as u64) < total {
            let ev = next(&mut sub).await.expect("open");
            if ev.records.is_empty() {
                idle += 1;
            } else {
                idle = 0;
                bytes += record_bytes(&ev);
                seqs.extend(ev.records.iter().map(|r| r.sequence_number));
            }
        }
        // `second` seconds of refill on top of a full one-second bucket.
        assert!(
            bytes <= rate * (second + 1) + slack,
            "after {second} s: {bytes} bytes read, more than {rate} B/s allows"
        );
        if seqs.len() as u64 == total {
            break;
        }
        clock.advance(1_000);
    }
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "every record, in order, once");
    // A second subscription has its own budget: it is not slowed by the first.
    let mut other = subscribe(&mut c, pb::IteratorType::TrimHorizon, None).await.expect("subscribe");
    let ev = next(&mut other).await.expect("open");
    assert!(!ev.records.is_empty(), "the second subscriber reads at once");
}

#[tokio::test]
async fn the_21st_subscription_to_a_shard_is_refused_until_one_ends() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_stream(&mut c, 2 << 20).await;
    let mut subs = Vec::new();
    for _ in 0..20 {
        subs.push(subscribe(&mut c, pb::IteratorType::Latest, None).await.expect("one of the first 20"));
    }
    let err = subscribe(&mut c, pb::IteratorType::Latest, None).await.expect_err("the 21st");
    assert_eq!((err.code(), error_kind(&err)), (Code::ResourceExhausted, "LimitExceeded".to_string()));
    assert!(err.message().contains("subscribers_per_shard = 20"), "{}", err.message());
    drop(subs.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match subscribe(&mut c, pb::IteratorType::Latest, None).await {
            Ok(s) => {
                subs.push(s);
                break;
            }
            Err(e) => {
                assert_eq!(error_kind(&e), "LimitExceeded");
                assert!(Instant::now() < deadline, "the cancelled subscription's slot was never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_subscription_ends_after_its_lifetime_and_resumes_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let broker = TestBroker::start_with(heartbeat_config(dir.path()), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create_stream(&mut c, 1 << 30).await;
    for _ in 0..4 {
        put(&mut c, "s", (0..500).map(|_| entry("k", &[1; 1024])).collect()).await;
    }
    let mut sub = subscribe(&mut c, pb::IteratorType::TrimHorizon, None).await.expect("subscribe");
    let mut seqs: Vec<u64> = Vec::new();
    let first = next(&mut sub).await.expect("open");
    seqs.extend(first.records.iter().map(|r| r.sequence_number));
    // Five minutes on the broker's clock: the subscription has reached its lifetime.
    clock.advance(300_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = first;
    while let Some(ev) = next(&mut sub).await {
        assert!(Instant::now() < deadline, "the subscription did not end after its lifetime");
        seqs.extend(ev.records.iter().map(|r| r.sequence_number));
        last = ev;
    }
    assert!(last.resubscribe, "the last event says to resubscribe: {last:?}");
    let continuation = last.continuation_sequence_number;
    assert_eq!(continuation, seqs.last().map_or(0, |s| s + 1), "the continuation follows the last record sent");
    put(&mut c, "s", (0..500).map(|_| entry("k", &[2; 1024])).collect()).await;
    let mut sub = subscribe(&mut c, pb::IteratorType::AtSequenceNumber, Some(continuation)).await.expect("resubscribe");
    while seqs.len() < 2500 {
        let ev = next(&mut sub).await.expect("open");
        assert!(!ev.resubscribe, "a fresh subscription does not end at once");
        seqs.extend(ev.records.iter().map(|r| r.sequence_number));
    }
    assert_eq!(seqs, (0..2500).collect::<Vec<_>>(), "no gap and no duplicate across the resubscribe");
}

#[tokio::test]
async fn subscriptions_beyond_the_broker_buffer_budget_are_refused_with_a_retry_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.limits.subscription_buffer_bytes = 256 * 1024;
    config.limits.subscription_buffer_bytes_total = 3 * 256 * 1024;
    let broker = TestBroker::start_with(config, Arc::new(broker::clock::SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create_stream(&mut c, 2 << 20).await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(subscribe(&mut c, pb::IteratorType::Latest, None).await.expect("within the budget"));
    }
    let err = subscribe(&mut c, pb::IteratorType::Latest, None).await.expect_err("beyond the budget");
    assert_eq!((err.code(), error_kind(&err)), (Code::ResourceExhausted, "Throttled".to_string()));
    assert!(err.message().contains("limits.subscription_buffer_bytes_total"), "{}", err.message());
    assert!(err.metadata().get("retry-after-ms").is_some(), "a retry hint");
    // A cancelled subscription gives its reservation back.
    drop(subs.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscribe(&mut c, pb::IteratorType::Latest, None).await.is_err() {
        assert!(Instant::now() < deadline, "the cancelled subscription's buffer was never returned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
