//! The client library against a real in-process broker over gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::clock::ManualClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::types as pb;
use client::{Admin, Consumer, ConsumerConfig, Error, Position, Producer, ProducerConfig, ShardReader};
use tokio_util::sync::CancellationToken;

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

#[tokio::test(flavor = "multi_thread")]
async fn producer_keeps_key_order_under_throttling_and_acks_each_record_once() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    // 100 records/s per shard: 600 records over 2 shards must be throttled and retried.
    let quotas = pb::Quotas { write_records_per_sec: Some(100), ..Default::default() };
    stream(&admin, "s", 2, Some(quotas)).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        max_batch_records: 50,
        max_retries: 50,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.endpoint(), "s", config).await.expect("producer");
    let mut pending = Vec::new();
    for i in 0..600u32 {
        let key = format!("key-{}", i % 6);
        pending.push((key.clone(), i, producer.send(key, format!("{i}")).await.expect("queued")));
    }
    let mut per_key: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (key, i, ack) in pending {
        let ack = ack.await.expect("acknowledged despite throttling");
        assert!(seen.insert((ack.shard_id.clone(), ack.sequence_number)), "one record, one position");
        per_key.entry(key).or_default().push((ack.sequence_number, i.to_string()));
    }
    producer.close().await.expect("close");
    for (key, acks) in &per_key {
        assert!(acks.windows(2).all(|w| w[0].0 < w[1].0), "{key}: sequence numbers follow send order");
    }
    // Read back: per key, the stored order is the send order, and nothing is stored twice.
    let channel = client::connect(&broker.endpoint()).await.expect("channel");
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    let mut total = 0;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let mut reader = ShardReader::open(channel.clone(), "s", shard, Position::TrimHorizon).await.expect("reader");
        loop {
            let (records, behind) = reader.read(1000).await.expect("read");
            total += records.len();
            for r in &records {
                stored
                    .entry(r.partition_key.clone())
                    .or_default()
                    .push(String::from_utf8(r.data.to_vec()).expect("utf-8"));
            }
            if records.is_empty() || behind == 0 && records.len() < 1000 {
                break;
            }
        }
    }
    assert_eq!(total, 600, "every record stored exactly once");
    for (key, acks) in per_key {
        let sent: Vec<String> = acks.into_iter().map(|(_, v)| v).collect();
        assert_eq!(stored[&key], sent, "{key}: stored in send order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn producer_rejects_invalid_records_at_once() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    admin
        .create_stream(pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            max_record_bytes: Some(2048),
            ..Default::default()
        })
        .await
        .expect("create");
    let producer = Producer::connect(&broker.endpoint(), "s", ProducerConfig::default()).await.expect("producer");
    match producer.send("", "x").await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("partition_key"), "{m}"),
        other => panic!("empty key accepted: {other:?}"),
    }
    match producer.send("k".repeat(257), "x").await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("partition_key")),
        other => panic!("long key accepted: {other:?}"),
    }
    match producer.send("k", vec![0u8; 2048]).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("data"), "{m}"),
        other => panic!("oversized record accepted: {other:?}"),
    }
    assert!(matches!(
        Producer::connect(&broker.endpoint(), "nope", ProducerConfig::default()).await,
        Err(Error::NotFound(_))
    ));
    producer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_commits_after_success_and_isolates_a_poison_record() {
    let broker = TestBroker::start().await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    stream(&admin, "s", 2, None).await;
    let producer = Producer::connect(&broker.endpoint(), "s", ProducerConfig::default()).await.expect("producer");
    let mut acks = Vec::new();
    for i in 0..40 {
        let body = if i == 17 { "poison".to_string() } else { format!("ok-{i}") };
        acks.push(producer.send(format!("k{i}"), body).await.expect("send"));
    }
    for a in acks {
        a.await.expect("ack");
    }
    producer.close().await.expect("close");

    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let dead = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let config = ConsumerConfig {
        max_retries: 1,
        retry_backoff: Duration::from_millis(5),
        poll_wait: Duration::from_millis(100),
        ..ConsumerConfig::new("g")
    };
    let consumer = Consumer::join(&broker.endpoint(), "s", config).await.expect("join");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (handled, dead, shutdown) = (handled.clone(), dead.clone(), shutdown.clone());
        consumer.run(
            move |batch| {
                let handled = handled.clone();
                async move {
                    if batch.iter().any(|r| &r.data[..] == b"poison") {
                        return Err("cannot digest poison".into());
                    }
                    handled
                        .lock()
                        .expect("lock")
                        .extend(batch.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()));
                    Ok(())
                }
            },
            move |record, error| {
                let dead = dead.clone();
                async move {
                    dead.lock().expect("lock").push((String::from_utf8_lossy(&record.data).into_owned(), error));
                    Ok(())
                }
            },
            shutdown,
        )
    });
    // Wait (bounded) for the group to process everything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = admin.describe_group("s", "g").await.expect("describe");
        if d.shards.iter().all(|s| s.has_checkpoint && s.lag_records == 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "consumer did not catch up: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    run.await.expect("run task").expect("run ends cleanly");
    let mut handled = handled.lock().expect("lock").clone();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 39, "every healthy record was handled");
    assert!(!handled.contains(&"poison".to_string()));
    let dead = dead.lock().expect("lock").clone();
    assert_eq!(
        dead,
        vec![("poison".to_string(), "cannot digest poison".to_string())],
        "the poison record went to the hook once"
    );
    let d = admin.describe_group("s", "g").await.expect("describe");
    assert!(d.members.is_empty(), "run left the group on shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_reader_renews_an_expired_iterator() {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    stream(&admin, "s", 1, None).await;
    let producer = Producer::connect(&broker.endpoint(), "s", ProducerConfig::default()).await.expect("producer");
    for i in 0..3 {
        producer.send("k", format!("r{i}")).await.expect("send").await.expect("ack");
    }
    let channel = client::connect(&broker.endpoint()).await.expect("channel");
    let mut reader =
        ShardReader::open(channel, "s", "shardId-000000000000", Position::TrimHorizon).await.expect("reader");
    let (first, _) = reader.read(2).await.expect("read");
    assert_eq!(first.iter().map(|r| r.sequence_number).collect::<Vec<_>>(), vec![0, 1]);
    clock.advance(6 * 60 * 1000);
    producer.send("k", "r3").await.expect("send").await.expect("ack");
    let (rest, _) = reader.read(10).await.expect("read after the iterator expired");
    assert_eq!(
        rest.iter().map(|r| r.sequence_number).collect::<Vec<_>>(),
        vec![2, 3],
        "continues exactly where it stopped"
    );
    producer.close().await.expect("close");
}
