//! The producer's promises, each broken on purpose: bounded buffering
//! (block or fail fast), retrying only what is retryable and no sooner than
//! the broker's hint, and one outcome per record in key order.

mod common;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::types as pb;
use client::{Admin, Error, FullBufferPolicy, Producer, ProducerConfig};
use common::{Fake, HANG, failed, fake_shard, rebind, run_broker, stored, throttled_records};

/// A stream with one or more shards and optional quota overrides.
async fn stream(admin: &Admin, name: &str, shards: u32, quotas: Option<pb::Quotas>) {
    admin
        .create_stream(pb::CreateStreamRequest {
            stream_name: name.into(),
            shard_count: shards,
            quota_overrides: quotas,
            ..Default::default()
        })
        .await
        .expect("create stream");
}

/// A broker on a port the test owns, so it can come back on the same address.
struct Restartable {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    running: Option<common::Running>,
}

impl Restartable {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = grpc.local_addr().expect("addr");
        let running = Some(run_broker(dir.path(), grpc, BrokerConfig::default()).await);
        Self { dir, addr, running }
    }

    async fn stop(&mut self) {
        self.running.take().expect("running").stop().await;
    }

    async fn restart(&mut self) {
        let grpc = rebind(self.addr).await;
        self.running = Some(run_broker(self.dir.path(), grpc, BrokerConfig::default()).await);
    }
}

/// Sent records wait for a broker that is down: nothing resolves, so the
/// buffer stays exactly as full as the sends made it.
fn patient(buffer_records_max: usize, buffer_bytes_max: usize, when_full: FullBufferPolicy) -> ProducerConfig {
    ProducerConfig {
        buffer_records_max,
        buffer_bytes_max,
        when_full,
        max_retries: 10_000,
        backoff_max: Duration::from_millis(100),
        ..ProducerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_blocks_while_the_buffer_is_full_and_resumes_when_room_frees() {
    let mut b = Restartable::start().await;
    let addr = b.addr.to_string();
    stream(&Admin::connect(&addr).await.expect("admin"), "s", 2, None).await;
    let producer =
        Producer::connect(&addr, "s", patient(10, 1 << 20, FullBufferPolicy::Block)).await.expect("producer");
    b.stop().await;

    let mut acks = Vec::new();
    for i in 0..10 {
        let send = producer.send(format!("k{}", i % 3), format!("{i:03}"));
        acks.push(tokio::time::timeout(HANG, send).await.expect("room for ten").expect("accepted"));
    }
    // Key "kN" (2 bytes) + data (3 bytes) per record.
    assert_eq!(producer.buffered(), (10, 50));
    let last = {
        let mut eleventh = pin!(producer.send("k1", "010"));
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut eleventh).await.is_err(),
            "the eleventh send waits while ten records are buffered"
        );
        assert_eq!(producer.buffered(), (10, 50), "the waiting send took no room");
        b.restart().await;
        tokio::time::timeout(HANG, eleventh).await.expect("room frees once the broker is back").expect("accepted")
    };
    acks.push(last);
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = tokio::time::timeout(HANG, ack).await.expect("resolves").expect("acknowledged");
        let key = format!("k{}", i % 3);
        let prev = last_seq.insert(key.clone(), ack.sequence_number);
        assert!(prev.is_none_or(|p| p < ack.sequence_number), "{key}: stored in send order");
    }
    producer.flush().await.expect("flush");
    assert_eq!(producer.buffered(), (0, 0));
    producer.close().await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_fast_refuses_at_the_byte_cap_and_the_record_cap() {
    let mut b = Restartable::start().await;
    let addr = b.addr.to_string();
    stream(&Admin::connect(&addr).await.expect("admin"), "s", 1, None).await;
    // Bytes bind first: ten 100-byte records fill 1000 bytes.
    let by_bytes =
        Producer::connect(&addr, "s", patient(100, 1000, FullBufferPolicy::FailFast)).await.expect("producer");
    // Records bind first: five small records.
    let by_records =
        Producer::connect(&addr, "s", patient(5, 1 << 20, FullBufferPolicy::FailFast)).await.expect("producer");
    match by_bytes.send("k", vec![0u8; 1001]).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("buffer_bytes_max"), "{m}"),
        other => panic!("a record larger than the buffer was accepted: {other:?}"),
    }
    b.stop().await;

    let mut acks = Vec::new();
    for _ in 0..10 {
        acks.push(by_bytes.send("k", vec![7u8; 99]).await.expect("room"));
    }
    let refused = tokio::time::timeout(HANG, by_bytes.send("k", vec![7u8; 99])).await.expect("at once");
    match refused {
        Err(e @ Error::BufferFull { records: 10, bytes: 1000 }) => assert!(e.is_retryable()),
        other => panic!("the byte cap was not enforced: {other:?}"),
    }
    for i in 0..5 {
        acks.push(by_records.send(format!("k{i}"), "x").await.expect("room"));
    }
    let refused = tokio::time::timeout(HANG, by_records.send("k9", "x")).await.expect("at once");
    assert!(matches!(refused, Err(Error::BufferFull { records: 5, .. })), "{refused:?}");
    assert_eq!(by_bytes.buffered(), (10, 1000));
    assert_eq!(by_records.buffered(), (5, 15), "five records of key \"kN\" and one byte");

    b.restart().await;
    for ack in acks {
        tokio::time::timeout(HANG, ack).await.expect("resolves").expect("acknowledged");
    }
    by_records.send("k9", "x").await.expect("room again").await.expect("acknowledged");
    by_bytes.close().await.expect("close");
    by_records.close().await.expect("close");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn under_throttling_the_buffer_stays_within_its_caps_and_keys_keep_their_order() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    // 200 records/s per shard: 600 records over 2 shards take over a second.
    stream(&admin, "s", 2, Some(pb::Quotas { write_records_per_sec: Some(200), ..Default::default() })).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        max_batch_records: 50,
        max_retries: 1000,
        buffer_records_max: 40,
        buffer_bytes_max: 400,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(Producer::connect(&broker.endpoint(), "s", config).await.expect("producer"));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (producer, done) = (producer.clone(), done.clone());
        async move {
            let mut peak = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let (r, b) = producer.buffered();
                peak = (peak.0.max(r), peak.1.max(b));
                tokio::task::yield_now().await;
            }
            peak
        }
    });
    let mut pending = Vec::new();
    for i in 0..600u32 {
        let key = format!("key-{}", i % 6);
        // 5 + 3 bytes: at most 50 records fit the byte cap, so the record cap binds.
        pending.push((key.clone(), producer.send(key, format!("{:03}", i % 1000)).await.expect("queued")));
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (key, ack) in pending {
        let ack = tokio::time::timeout(HANG, ack).await.expect("resolves").expect("acknowledged despite throttling");
        assert!(seen.insert((ack.shard_id.clone(), ack.sequence_number)), "one record, one position");
        let prev = last.insert(key.clone(), ack.sequence_number);
        assert!(prev.is_none_or(|p| p < ack.sequence_number), "{key}: sequence numbers follow send order");
    }
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    assert!(peak.0 <= 40 && peak.1 <= 400, "buffer exceeded its caps: {peak:?}");
    assert!(peak.0 > 0, "the sampler saw the buffer in use");
    Arc::into_inner(producer).expect("sole owner").close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_record_is_retried_no_sooner_than_the_hint() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    // One record per second: every record after the first is throttled,
    // with a hint of up to a second. The stream name is unique in this
    // process, whose brokers share one metrics registry.
    let name = "hint-honoured";
    stream(&admin, name, 1, Some(pb::Quotas { write_records_per_sec: Some(1), ..Default::default() })).await;
    // Backoff alone would retry within a millisecond.
    let config = ProducerConfig {
        linger: Duration::ZERO,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        max_retries: 10_000,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.endpoint(), name, config).await.expect("producer");
    let records = 4;
    let mut acks = Vec::new();
    for i in 0..records {
        acks.push(producer.send("k", format!("{i}")).await.expect("queued"));
    }
    for ack in acks {
        tokio::time::timeout(HANG, ack).await.expect("resolves").expect("acknowledged");
    }
    producer.close().await.expect("close");
    // A retry that waits out the hint finds a token, so each attempt after
    // a throttle stores at least one record: a handful of throttled
    // attempts, where retrying on backoff alone makes hundreds.
    let throttled = throttled_records(name);
    eprintln!("{throttled} throttled attempts for {records} records");
    assert!(throttled >= 1, "the quota throttled");
    assert!(throttled <= 4 * records, "{throttled} throttled attempts for {records} records");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_retryable_record_error_reaches_the_caller_with_the_brokers_code_at_once() {
    let (fake, addr) = Fake::start(Box::new(|key, attempt| match key {
        "bad" => failed("KMSAccessDenied", "the key is disabled", 0),
        // Retryable, and retried: fails once, then is stored.
        "flaky" if attempt == 0 => failed("ShardUnavailable", "shard is read-only", 0),
        _ => stored(attempt as u64),
    }))
    .await;
    let config = ProducerConfig { linger: Duration::from_millis(20), ..ProducerConfig::default() };
    let producer = Producer::connect(&addr, "s", config).await.expect("producer");
    let good = producer.send("good", "1").await.expect("queued");
    let bad = producer.send("bad", "2").await.expect("queued");
    let flaky = producer.send("flaky", "3").await.expect("queued");
    let bad = tokio::time::timeout(HANG, bad).await.expect("resolves");
    match bad {
        Err(Error::Rejected { kind, message }) => {
            assert_eq!(kind, "KMSAccessDenied");
            assert!(message.contains("disabled"), "{message}");
        }
        other => panic!("a non-retryable error was not surfaced with its code: {other:?}"),
    }
    tokio::time::timeout(HANG, good).await.expect("resolves").expect("stored");
    tokio::time::timeout(HANG, flaky).await.expect("resolves").expect("stored on the retry");
    producer.close().await.expect("close");
    assert_eq!(fake.attempts_of("bad").len(), 1, "not retried");
    assert_eq!(fake.attempts_of("flaky").len(), 2, "retried once");
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_report_the_last_error_after_waiting_each_hint() {
    let hint = Duration::from_millis(150);
    let (fake, addr) = Fake::start(Box::new(move |_, attempt| {
        failed("ProvisionedThroughputExceeded", &format!("attempt {attempt} over quota"), hint.as_millis() as u64)
    }))
    .await;
    let config = ProducerConfig {
        max_retries: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&addr, "s", config).await.expect("producer");
    let ack = producer.send("k", "x").await.expect("queued");
    match tokio::time::timeout(HANG, ack).await.expect("resolves") {
        Err(Error::Throttled { message, retry_after }) => {
            assert!(message.contains("attempt 3 over quota"), "the last error: {message}");
            assert_eq!(retry_after, hint, "with the broker's hint");
        }
        other => panic!("exhausted retries did not report the last throttle: {other:?}"),
    }
    let attempts = fake.attempts_of("k");
    assert_eq!(attempts.len(), 4, "the first attempt and three retries");
    // A lower bound only: a loaded machine makes the gaps longer, never shorter.
    for w in attempts.windows(2) {
        assert!(w[1] - w[0] >= hint, "retried {:?} after a {hint:?} hint", w[1] - w[0]);
    }
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_request_rejection_fails_its_records_with_its_kind() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    stream(&admin, "s", 1, None).await;
    let producer = Producer::connect(&broker.endpoint(), "s", ProducerConfig::default()).await.expect("producer");
    admin.delete_stream("s").await.expect("delete");
    let ack = producer.send("k", "x").await.expect("queued");
    match tokio::time::timeout(HANG, ack).await.expect("resolves at once, not after retries") {
        Err(Error::NotFound(m)) => assert!(m.contains('s'), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(producer.buffered(), (0, 0));
    producer.close().await.expect("close");
}

/// A batch that raced a split fails with the retryable `ShardClosed`: the
/// producer fetches the shard map again, and the records go out again on
/// the queues of the children that own their keys now, each request
/// holding one child's keys only.
#[tokio::test(flavor = "multi_thread")]
async fn records_that_race_a_split_are_retried_on_the_refreshed_shard_map() {
    const HALF: u128 = 1 << 127;
    let (fake, addr) = Fake::start(Box::new(|_, attempt| match attempt {
        0 => failed("ShardClosed", "shardId-000000000000 is closed (split or merged)", 0),
        n => stored(n as u64),
    }))
    .await;
    let config = ProducerConfig {
        linger: Duration::from_millis(50),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&addr, "s", config).await.expect("producer");
    assert_eq!(fake.describes.load(Ordering::SeqCst), 1);
    // The split happens after the producer read the map.
    fake.set_shards(vec![
        fake_shard("shardId-000000000000", 0, u128::MAX, true),
        fake_shard("shardId-000000000001", 0, HALF - 1, false),
        fake_shard("shardId-000000000002", HALF, u128::MAX, false),
    ]);
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let mut acks = Vec::new();
    for k in &keys {
        acks.push(producer.send(k.clone(), "v").await.expect("queued"));
    }
    for ack in acks {
        tokio::time::timeout(HANG, ack).await.expect("resolves").expect("ShardClosed is retried until stored");
    }
    producer.close().await.expect("close");
    assert!(fake.describes.load(Ordering::SeqCst) >= 2, "the producer fetched the shard map again");
    let log = fake.attempts.lock().expect("lock");
    assert_eq!(log[0].1.len(), keys.len(), "before the refresh every key went out in one request");
    let low = |k: &str| broker::routing::hash_key(k) < HALF;
    for (_, sent) in log.iter().skip(1) {
        assert!(
            sent.iter().all(|k| low(k)) || sent.iter().all(|k| !low(k)),
            "after the refresh a request holds one child's keys: {sent:?}"
        );
    }
    assert!(keys.iter().any(|k| low(k)) && keys.iter().any(|k| !low(k)), "the keys cover both children");
}
