//! The broker's API through real gRPC against an in-process broker on
//! 127.0.0.1:0 with real files.

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker::clock::ManualClock;
use broker::config::BrokerConfig;
use broker::routing::{HashRanges, hash_key};
use broker::testing::TestBroker;
use bytes::Bytes;
use common::*;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;

const T0: u64 = 1_800_000_000_000;

fn lifted() -> Option<pb::Quotas> {
    Some(pb::Quotas {
        write_records_per_sec: Some(1_000_000),
        write_bytes_per_sec: Some(1 << 30),
        read_calls_per_sec: Some(100_000),
        read_bytes_per_sec: Some(1 << 30),
    })
}

async fn create_lifted(client: &mut Client, name: &str, shards: u32) -> pb::StreamDescription {
    create_with(
        client,
        pb::CreateStreamRequest {
            stream_name: name.into(),
            shard_count: shards,
            quota_overrides: lifted(),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn control_plane_round_trip() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    let d = create(&mut c, "orders", 3).await;
    assert_eq!((d.stream_name.as_str(), d.shards.len(), d.retention_hours), ("orders", 3, 24));
    assert_eq!(d.durability, pb::DurabilityMode::Always as i32);
    let q = d.quotas.expect("quotas");
    assert_eq!(
        (q.write_records_per_sec, q.write_bytes_per_sec, q.read_calls_per_sec, q.read_bytes_per_sec),
        (Some(1000), Some(1 << 20), Some(5), Some(2 << 20))
    );
    assert_eq!(d.shards[0].starting_hash_key, "0");
    assert_eq!(d.shards[2].ending_hash_key, u128::MAX.to_string());
    let err = c
        .create_stream(pb::CreateStreamRequest { stream_name: "orders".into(), shard_count: 1, ..Default::default() })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    for name in ["b", "a", "c"] {
        create(&mut c, name, 1).await;
    }
    let page = c
        .list_streams(pb::ListStreamsRequest { limit: 2, exclusive_start_stream_name: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((page.stream_names, page.has_more_streams), (vec!["a".to_string(), "b".to_string()], true));
    let page = c
        .list_streams(pb::ListStreamsRequest { limit: 2, exclusive_start_stream_name: "b".into() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((page.stream_names, page.has_more_streams), (vec!["c".to_string(), "orders".to_string()], false));
    let d = c
        .update_retention(pb::UpdateRetentionRequest { stream_name: "orders".into(), retention_hours: 168 })
        .await
        .expect("retention")
        .into_inner();
    assert_eq!(d.stream.expect("stream").retention_hours, 168);
    let err = c
        .update_retention(pb::UpdateRetentionRequest { stream_name: "orders".into(), retention_hours: 169 })
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("retention_hours"));
    c.delete_stream(pb::DeleteStreamRequest { stream_name: "orders".into() }).await.expect("delete");
    let err = c.describe_stream(pb::DescribeStreamRequest { stream_name: "orders".into() }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    broker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn stream_names_are_validated_and_never_become_paths() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    for bad in ["", &"a".repeat(129), "a/b", "a\0b", "ünïcode", "../x"] {
        let err = c
            .create_stream(pb::CreateStreamRequest { stream_name: bad.into(), shard_count: 1, ..Default::default() })
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("stream_name"), "{bad:?}: {}", err.message());
    }
    for ok in [".", "..", &"a".repeat(128)] {
        create(&mut c, ok, 1).await;
        let r = put(&mut c, ok, vec![entry("k", b"v")]).await;
        assert_eq!(r.failed_record_count, 0);
    }
    // Only numeric stream ids name directories: "." and ".." touched nothing else.
    let mut entries: Vec<String> = std::fs::read_dir(broker.data_dir().join("streams"))
        .expect("streams dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|n| n.parse::<u64>().is_ok()), "{entries:?}");
    let mut top: Vec<String> = std::fs::read_dir(broker.data_dir())
        .expect("data dir")
        .map(|e| e.expect("e").file_name().into_string().expect("utf-8"))
        .collect();
    top.sort();
    assert_eq!(top, vec!["meta".to_string(), "reserve".to_string(), "streams".to_string()]);
    for (field, req) in [
        ("shard_count", pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 0, ..Default::default() }),
        (
            "retention_hours",
            pb::CreateStreamRequest {
                stream_name: "s".into(),
                shard_count: 1,
                retention_hours: Some(23),
                ..Default::default()
            },
        ),
        (
            "max_record_bytes",
            pb::CreateStreamRequest {
                stream_name: "s".into(),
                shard_count: 1,
                max_record_bytes: Some(11 << 20),
                ..Default::default()
            },
        ),
        (
            "quota_overrides.read_calls_per_sec",
            pb::CreateStreamRequest {
                stream_name: "s".into(),
                shard_count: 1,
                quota_overrides: Some(pb::Quotas { read_calls_per_sec: Some(0), ..Default::default() }),
                ..Default::default()
            },
        ),
    ] {
        let err = c.create_stream(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
}

#[tokio::test]
async fn record_validation_names_the_field() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_with(
        &mut c,
        pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 2,
            max_record_bytes: Some(4096),
            quota_overrides: lifted(),
            ..Default::default()
        },
    )
    .await;
    let emoji_256 = "😀".repeat(256);
    let ok = put(&mut c, "s", vec![entry(&"k".repeat(256), b"x"), entry(&emoji_256, b"y")]).await;
    assert_eq!(ok.failed_record_count, 0, "256 characters, even of 4 bytes each, are a valid key");
    let cases: Vec<(&str, Vec<pb::PutRecordsEntry>)> = vec![
        ("records[1].partition_key", vec![entry("k", b"x"), entry("", b"x")]),
        ("records[0].partition_key", vec![entry(&"k".repeat(257), b"x")]),
        ("records[0].partition_key", vec![entry(&"😀".repeat(257), b"x")]),
        ("records[0].data", vec![entry("k", &[0; 4096])]),
        ("records", vec![]),
        ("records", (0..501).map(|_| entry("k", b"x")).collect()),
        ("records", (0..6).map(|_| entry("k", &[0; 1 << 20])).collect()),
        (
            "records[0].explicit_hash_key",
            vec![pb::PutRecordsEntry {
                partition_key: "k".into(),
                data: Bytes::new(),
                explicit_hash_key: Some("340282366920938463463374607431768211456".into()),
            }],
        ),
        (
            "records[0].explicit_hash_key",
            vec![pb::PutRecordsEntry {
                partition_key: "k".into(),
                data: Bytes::new(),
                explicit_hash_key: Some("-1".into()),
            }],
        ),
    ];
    for (field, entries) in cases {
        let err =
            c.put_records(pb::PutRecordsRequest { stream_name: "s".into(), records: entries }).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "expected {field} in {:?}", err.message());
    }
    let err = c
        .put_record(pb::PutRecordRequest {
            stream_name: "s".into(),
            partition_key: String::new(),
            data: Bytes::new(),
            explicit_hash_key: None,
        })
        .await
        .expect_err("empty key");
    assert!(err.message().contains("invalid partition_key"), "{}", err.message());
    let err = c
        .put_records(pb::PutRecordsRequest { stream_name: "nope".into(), records: vec![entry("k", b"x")] })
        .await
        .expect_err("no stream");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn every_iterator_type_round_trips_and_pages_to_the_end() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s", 1).await;
    let shard = "shardId-000000000000";
    let mut seqs = Vec::new();
    for batch in 0..10 {
        let r =
            put(&mut c, "s", (0..100).map(|i| entry("k", format!("r{}", batch * 100 + i).as_bytes())).collect()).await;
        assert_eq!(r.failed_record_count, 0);
        seqs.extend(r.records.iter().map(|e| e.sequence_number));
    }
    assert_eq!(seqs, (0..1000).collect::<Vec<u64>>(), "dense sequence numbers in request order");
    let it = iterator(&mut c, "s", shard, pb::IteratorType::TrimHorizon, None, None).await;
    let all = drain(&mut c, it.clone(), 37).await;
    assert_eq!(all.len(), 1000);
    for (i, r) in all.iter().enumerate() {
        assert_eq!((r.sequence_number, &r.data[..]), (i as u64, format!("r{i}").as_bytes()));
    }
    let again = drain(&mut c, it, 1000).await;
    assert_eq!(again.len(), 1000, "an iterator is reusable");
    let it_at = iterator(&mut c, "s", shard, pb::IteratorType::AtSequenceNumber, Some(500), None).await;
    let at = drain(&mut c, it_at, 1000).await;
    assert_eq!(at.first().map(|r| r.sequence_number), Some(500));
    let it_after = iterator(&mut c, "s", shard, pb::IteratorType::AfterSequenceNumber, Some(500), None).await;
    let after = drain(&mut c, it_after, 1000).await;
    assert_eq!(after.first().map(|r| r.sequence_number), Some(501));
    let latest = iterator(&mut c, "s", shard, pb::IteratorType::Latest, None, None).await;
    assert!(drain(&mut c, latest.clone(), 10).await.is_empty());
    put(&mut c, "s", vec![entry("k", b"new")]).await;
    let fresh = drain(&mut c, latest, 10).await;
    assert_eq!(fresh.iter().map(|r| r.sequence_number).collect::<Vec<_>>(), vec![1000]);
    let ts = all[0].arrival_timestamp_ms;
    let it_time = iterator(&mut c, "s", shard, pb::IteratorType::AtTimestamp, None, Some(ts)).await;
    let by_time = drain(&mut c, it_time, 2000).await;
    assert_eq!(by_time.first().map(|r| r.sequence_number), Some(0));
    let err = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: shard.into(),
            iterator_type: pb::IteratorType::AtSequenceNumber as i32,
            starting_sequence_number: Some(5000),
            timestamp_ms: None,
        })
        .await
        .expect_err("beyond the end");
    assert!(err.message().contains("starting_sequence_number"));
    let err = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: shard.into(),
            iterator_type: pb::IteratorType::AtTimestamp as i32,
            starting_sequence_number: None,
            timestamp_ms: Some(u64::MAX),
        })
        .await
        .expect_err("future timestamp");
    assert!(err.message().contains("timestamp_ms"));
    let err = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: "shardId-000000000009".into(),
            iterator_type: pb::IteratorType::Latest as i32,
            ..Default::default()
        })
        .await
        .expect_err("no such shard");
    assert_eq!(err.code(), Code::NotFound);
    let err =
        c.get_records(pb::GetRecordsRequest { shard_iterator: "forged".into(), limit: 1 }).await.expect_err("forged");
    assert_eq!((err.code(), error_kind(&err)), (Code::InvalidArgument, "InvalidArgument".to_string()));
    assert!(err.message().contains("shard_iterator"));
    let fresh_it = it_for(&mut c).await;
    let err =
        c.get_records(pb::GetRecordsRequest { shard_iterator: fresh_it, limit: 10_001 }).await.expect_err("limit");
    assert!(err.message().contains("limit"));
}

async fn it_for(c: &mut Client) -> String {
    iterator(c, "s", "shardId-000000000000", pb::IteratorType::TrimHorizon, None, None).await
}

#[tokio::test]
async fn expired_iterators_and_trimmed_positions_are_distinct_errors() {
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config.clone(), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s", 1).await;
    put(&mut c, "s", vec![entry("k", b"old")]).await;
    let it = it_for(&mut c).await;
    clock.advance(300_001);
    let err = c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1 }).await.expect_err("expired");
    assert_eq!((err.code(), error_kind(&err)), (Code::FailedPrecondition, "ExpiredIterator".to_string()));
    // Two hours on, a new record rolls the segment (segments roll hourly).
    clock.advance(2 * 3_600_000);
    put(&mut c, "s", vec![entry("k", b"new")]).await;
    // 25 hours after the first record, with an iterator still at sequence 0:
    clock.advance(23 * 3_600_000);
    let stale = it_for(&mut c).await;
    drop(c);
    broker.stop().await.expect("stop");

    // One retention pass, through the same code the janitor runs.
    let store: Arc<dyn broker::metadata::MetadataStore> =
        Arc::new(broker::metadata::SledStore::open(&dir.path().join("meta")).expect("meta"));
    let catalog = Arc::new(
        tokio::task::spawn_blocking({
            let (config, clock) = (config.clone(), clock.clone());
            move || broker::catalog::Catalog::open(Arc::new(config), store, clock).expect("catalog")
        })
        .await
        .expect("join"),
    );
    catalog.enforce_retention().await;
    assert_eq!(
        catalog.get("s").expect("s").shards()[0].reader().expect("open").first_seq(),
        1,
        "the day-old segment is gone"
    );
    catalog.close().await.expect("close");
    drop(catalog);

    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let err = c.get_records(pb::GetRecordsRequest { shard_iterator: stale, limit: 10 }).await.expect_err("trimmed");
    assert_eq!((err.code(), error_kind(&err)), (Code::OutOfRange, "SequenceTrimmed".to_string()));
    let err = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: "shardId-000000000000".into(),
            iterator_type: pb::IteratorType::AtSequenceNumber as i32,
            starting_sequence_number: Some(0),
            timestamp_ms: None,
        })
        .await
        .expect_err("trimmed");
    assert_eq!(error_kind(&err), "SequenceTrimmed");
    let horizon = it_for(&mut c).await;
    let r =
        c.get_records(pb::GetRecordsRequest { shard_iterator: horizon, limit: 10 }).await.expect("read").into_inner();
    assert_eq!(r.records.iter().map(|r| &r.data[..]).collect::<Vec<_>>(), vec![&b"new"[..]]);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn subscribe_delivers_new_records_in_order_with_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.limits.subscribe_heartbeat_ms = 100;
    let broker = TestBroker::start_with(config, Arc::new(broker::clock::SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s", 1).await;
    put(&mut c, "s", vec![entry("k", b"before")]).await;
    let mut sub = c
        .subscribe_shard(pb::SubscribeShardRequest {
            stream_name: "s".into(),
            shard_id: "shardId-000000000000".into(),
            starting_position: pb::IteratorType::Latest as i32,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("heartbeat in time")
        .expect("open")
        .expect("ok");
    assert!(first.heartbeat && first.records.is_empty() && first.continuation_sequence_number == 1);
    let mut writer = c.clone();
    let producer = tokio::spawn(async move {
        for i in 0..50 {
            put(&mut writer, "s", vec![entry("k", format!("m{i}").as_bytes())]).await;
        }
    });
    let mut got = Vec::new();
    while got.len() < 50 {
        let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("ok");
        got.extend(ev.records.into_iter().map(|r| (r.sequence_number, r.data)));
    }
    producer.await.expect("producer");
    let want: Vec<(u64, Bytes)> = (0..50).map(|i| (i + 1, Bytes::from(format!("m{i}")))).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn partition_keys_route_by_md5_ranges() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s", 4).await;
    let ranges = HashRanges::new(4);
    let keys: Vec<String> = (0..10_000).map(|i| format!("customer-{i}-{}", i * 7919 % 10_007)).collect();
    let mut per_shard = [0usize; 4];
    for chunk in keys.chunks(500) {
        let r = put(&mut c, "s", chunk.iter().map(|k| entry(k, b"x")).collect()).await;
        assert_eq!(r.failed_record_count, 0);
        for (k, e) in chunk.iter().zip(&r.records) {
            let want = ranges.shard_for(hash_key(k));
            assert_eq!(e.shard_id, format!("shardId-{want:012}"), "key {k}");
            per_shard[want as usize] += 1;
        }
    }
    // Binomial(10000, 1/4): mean 2500, sd ~43; 2350..2650 is beyond 3.4 sd.
    for n in per_shard {
        assert!((2350..=2650).contains(&n), "uneven spread {per_shard:?}");
    }
    let exact = |key: u128| pb::PutRecordsEntry {
        partition_key: "ignored".into(),
        data: Bytes::new(),
        explicit_hash_key: Some(key.to_string()),
    };
    let bounds = [0, (1u128 << 126) - 1, 1u128 << 126, 3u128 << 126, u128::MAX];
    let r = put(&mut c, "s", bounds.iter().map(|&k| exact(k)).collect()).await;
    let shards: Vec<&str> = r.records.iter().map(|e| e.shard_id.as_str()).collect();
    assert_eq!(
        shards,
        vec![
            "shardId-000000000000",
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000003",
            "shardId-000000000003"
        ]
    );
}

#[tokio::test]
async fn quotas_admit_the_kinesis_rate_and_report_the_rest_as_throttled() {
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    // Offer 2000 records/s (twice the quota) for 4 s, in 100 ms steps of 200 records of 100 bytes.
    let (seconds, mut accepted, mut throttled) = (4u64, 0u64, 0u64);
    for step in 0..seconds * 10 {
        let r = put(&mut c, "s", (0..200).map(|i| entry(&format!("k{step}-{i}"), &[7; 100])).collect()).await;
        for e in &r.records {
            match e.error_code.as_str() {
                "" => accepted += 1,
                "ProvisionedThroughputExceeded" => throttled += 1,
                other => panic!("unexpected error {other}"),
            }
        }
        clock.advance(100);
    }
    assert_eq!(accepted + throttled, 200 * 10 * seconds, "every record is accounted for");
    assert!(accepted <= 1000 * (seconds + 1), "accepted {accepted}");
    assert!(accepted * 10 >= 1000 * seconds * 9, "accepted {accepted}");
    let d = c
        .describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("s");
    assert_eq!(d.shards[0].records_stored, accepted, "throttled records were not stored, accepted ones were");
    // A single PutRecord over quota is RESOURCE_EXHAUSTED with a retry hint.
    let err = loop {
        match c
            .put_record(pb::PutRecordRequest {
                stream_name: "s".into(),
                partition_key: "k".into(),
                data: Bytes::from_static(b"x"),
                explicit_hash_key: None,
            })
            .await
        {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!((err.code(), error_kind(&err)), (Code::ResourceExhausted, "Throttled".to_string()));
    let hint: u64 = err
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry hint");
    assert!((1..=1000).contains(&hint), "{hint}");
    // Reads: five calls per second.
    let it = it_for(&mut c).await;
    for _ in 0..5 {
        c.get_records(pb::GetRecordsRequest { shard_iterator: it.clone(), limit: 1 }).await.expect("within read quota");
    }
    let err = c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1 }).await.expect_err("sixth call");
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn quota_updates_apply_to_a_serving_stream_and_survive_a_restart() {
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config.clone(), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    let update = |quotas: pb::Quotas| pb::UpdateQuotasRequest { stream_name: "s".into(), quotas: Some(quotas) };
    let d = c
        .update_quotas(update(pb::Quotas { write_records_per_sec: Some(2), ..Default::default() }))
        .await
        .expect("update")
        .into_inner()
        .stream
        .expect("s");
    let q = d.quotas.expect("quotas");
    assert_eq!((q.write_records_per_sec, q.write_bytes_per_sec), (Some(2), Some(1 << 20)), "unset fields are kept");
    // The shard applies the new rate at once: two records of a burst of five pass.
    let codes = |r: pb::PutRecordsResponse| r.records.into_iter().map(|e| e.error_code).collect::<Vec<_>>();
    let r = put(&mut c, "s", (0..5).map(|i| entry(&format!("k{i}"), b"x")).collect()).await;
    let accepted = codes(r).iter().filter(|c| c.is_empty()).count();
    assert_eq!(accepted, 2, "2 records/s admits a burst of 2");

    let err = c
        .update_quotas(update(pb::Quotas { read_calls_per_sec: Some(0), ..Default::default() }))
        .await
        .expect_err("zero");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("quotas.read_calls_per_sec"), "{}", err.message());
    let err = c
        .update_quotas(update(pb::Quotas { write_bytes_per_sec: Some(1024), ..Default::default() }))
        .await
        .expect_err("below the largest record");
    assert!(err.message().contains("max_record_bytes"), "{}", err.message());
    let err = c.update_quotas(pb::UpdateQuotasRequest { stream_name: "nope".into(), quotas: None }).await;
    assert_eq!(err.expect_err("missing").code(), Code::NotFound);

    broker.stop().await.expect("clean stop");
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let d = c
        .describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("s");
    assert_eq!(d.quotas.expect("quotas").write_records_per_sec, Some(2), "the update is durable");
    let r = put(&mut c, "s", (0..5).map(|i| entry(&format!("k{i}"), b"x")).collect()).await;
    assert_eq!(codes(r).iter().filter(|c| c.is_empty()).count(), 2, "reopened shards use the stored quota");
}

#[tokio::test]
async fn produce_stream_acknowledges_every_batch_in_order() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s", 2).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = c.produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("produce").into_inner();
    let sender = tokio::spawn(async move {
        for batch_id in 0..100u64 {
            let records =
                (0..20).map(|i| entry(&format!("key-{}", i % 4), format!("{batch_id}/{i}").as_bytes())).collect();
            tx.send(pb::ProduceRequest {
                batch_id,
                batch: Some(pb::PutRecordsRequest { stream_name: "s".into(), records }),
            })
            .await
            .expect("send");
        }
        tx.send(pb::ProduceRequest {
            batch_id: 100,
            batch: Some(pb::PutRecordsRequest { stream_name: "nope".into(), records: vec![entry("k", b"x")] }),
        })
        .await
        .expect("send");
    });
    let mut last_seq = std::collections::HashMap::new();
    for want in 0..100u64 {
        let ack = acks.next().await.expect("ack").expect("ok");
        assert_eq!(ack.batch_id, want, "acks arrive in batch order");
        let result = ack.result.expect("result");
        assert_eq!(result.failed_record_count, 0);
        for e in result.records {
            let prev = last_seq.insert(e.shard_id.clone(), e.sequence_number);
            assert!(prev.is_none_or(|p| p < e.sequence_number), "per-shard order");
        }
    }
    let bad = acks.next().await.expect("ack").expect("ok");
    assert_eq!((bad.batch_id, bad.error_code.as_str()), (100, "StreamNotFound"));
    sender.await.expect("sender");
    let total: u64 = last_seq.values().map(|s| s + 1).sum();
    assert_eq!(total, 2000);
}

#[tokio::test]
async fn admin_port_serves_metrics_and_health() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "metered", 1).await;
    put(&mut c, "metered", vec![entry("k", b"v")]).await;
    let get = |path: &str| {
        let addr = broker.http_addr;
        let path = path.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut body = String::new();
            s.read_to_string(&mut body).await.expect("read");
            body
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    for name in [
        "stream_broker_records_in_total{stream=\"metered\"} 1",
        "stream_broker_bytes_in_total{stream=\"metered\"} 2",
        "stream_broker_fsync_seconds_bucket",
        "stream_broker_commit_batch_requests_bucket",
        "stream_broker_request_duration_seconds_bucket",
        "stream_broker_shard_next_sequence{stream=\"metered\",shard=\"shardId-000000000000\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
}
