//! Streams created on either API are the same streams: records put over
//! the Kinesis HTTP API are read over gRPC, and the reverse, in the same
//! order, and Kinesis sequence numbers name the gRPC offsets; a consumer
//! group over gRPC and a Kinesis reader over HTTP consume one stream.

mod common;
mod kinesis;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::kinesis::names::Sequence;
use client::{Consumer, ConsumerConfig};
use kinesis::json;
use proto::v1 as pb;
use serde_json::{Value, json};

/// Reads a shard over the Kinesis API from TRIM_HORIZON to its end: (sequence number, key, data).
async fn kinesis_read(addr: std::net::SocketAddr, stream: &str, shard: &str) -> Vec<(String, String, Vec<u8>)> {
    let (s, it) = json(
        addr,
        "GetShardIterator",
        json!({"StreamName": stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
    )
    .await;
    assert_eq!(s, 200, "{it}");
    let mut it = it["ShardIterator"].as_str().expect("iterator").to_string();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, r) = json(addr, "GetRecords", json!({"ShardIterator": it})).await;
        assert_eq!(s, 200, "{r}");
        let records = r["Records"].as_array().expect("records");
        for x in records {
            out.push((
                x["SequenceNumber"].as_str().expect("seq").to_string(),
                x["PartitionKey"].as_str().expect("key").to_string(),
                STANDARD.decode(x["Data"].as_str().expect("data")).expect("base64"),
            ));
        }
        if records.is_empty() && r["MillisBehindLatest"] == 0 {
            return out;
        }
        it = r["NextShardIterator"].as_str().expect("next").to_string();
        assert!(Instant::now() < deadline, "the Kinesis reader never caught up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_on_one_api_are_read_on_the_other_in_order() {
    // Both APIs share each shard's read quota of 5 calls per second; this
    // test reads each shard several times, so quotas are off.
    let (b, _dir) =
        kinesis::broker_with(|c| c.quotas.enforce = false, std::sync::Arc::new(broker::clock::SystemClock)).await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    let mut grpc = common::connect(b.endpoint()).await;
    // Created over gRPC, written over both.
    common::create(&mut grpc, "both", 2).await;
    let http_entries: Vec<Value> = (0..40)
        .map(|i| json!({"PartitionKey": format!("k{}", i % 4), "Data": STANDARD.encode(format!("http-{i}"))}))
        .collect();
    let (s, put) = json(addr, "PutRecords", json!({"StreamName": "both", "Records": http_entries})).await;
    assert_eq!((s, put["FailedRecordCount"].as_u64()), (200, Some(0)), "{put}");
    let grpc_put = common::put(
        &mut grpc,
        "both",
        (0..40).map(|i| common::entry(&format!("k{}", i % 4), format!("grpc-{i}").as_bytes())).collect(),
    )
    .await;
    assert_eq!(grpc_put.failed_record_count, 0);

    let desc = grpc
        .describe_stream(pb::DescribeStreamRequest { stream_name: "both".into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("description");
    for shard in &desc.shards {
        let it = common::iterator(&mut grpc, "both", &shard.shard_id, pb::IteratorType::TrimHorizon, None, None).await;
        let over_grpc = common::drain(&mut grpc, it, 1000).await;
        let over_http = kinesis_read(addr, "both", &shard.shard_id).await;
        assert_eq!(over_grpc.len(), over_http.len());
        assert!(!over_grpc.is_empty(), "both shards got records");
        for (g, (seq, key, data)) in over_grpc.iter().zip(&over_http) {
            let decoded = Sequence::parse(seq).expect("a Kinesis sequence number of this broker");
            assert_eq!(decoded.offset, g.sequence_number, "the Kinesis form names the gRPC offset");
            assert!(decoded.record);
            assert_eq!((key, &data[..]), (&g.partition_key, &g.data[..]));
        }
        let seqs: Vec<&String> = over_http.iter().map(|r| &r.0).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing as strings");
    }
    // Per key, the HTTP records come before the gRPC ones, each in put order.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for shard in &desc.shards {
        for (_, key, data) in kinesis_read(addr, "both", &shard.shard_id).await {
            by_key.entry(key).or_default().push(String::from_utf8(data).expect("utf-8"));
        }
    }
    for (key, values) in by_key {
        let k: usize = key[1..].parse().expect("key index");
        let want: Vec<String> = (0..40)
            .filter(|i| i % 4 == k)
            .map(|i| format!("http-{i}"))
            .chain((0..40).filter(|i| i % 4 == k).map(|i| format!("grpc-{i}")))
            .collect();
        assert_eq!(values, want, "key {key}");
    }
    // A PutRecord over HTTP answers with the sequence number gRPC reads it at.
    let (_, one) = json(addr, "PutRecord", json!({"StreamName": "both", "PartitionKey": "k0", "Data": "b25l"})).await;
    let seq = Sequence::parse(one["SequenceNumber"].as_str().expect("seq")).expect("ours");
    let shard = one["ShardId"].as_str().expect("shard");
    let it =
        common::iterator(&mut grpc, "both", shard, pb::IteratorType::AtSequenceNumber, Some(seq.offset), None).await;
    let got = common::drain(&mut grpc, it, 1).await;
    assert_eq!(&got[0].data[..], b"one");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_consumer_group_and_a_kinesis_reader_share_a_stream() {
    let (b, _dir) = kinesis::broker().await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    // Created over Kinesis this time.
    assert_eq!(json(addr, "CreateStream", json!({"StreamName": "shared", "ShardCount": 2})).await.0, 200);
    let entries: Vec<Value> = (0..60)
        .map(|i| json!({"PartitionKey": format!("order-{i}"), "Data": STANDARD.encode(format!("{i}"))}))
        .collect();
    let (s, put) = json(addr, "PutRecords", json!({"StreamName": "shared", "Records": entries})).await;
    assert_eq!((s, put["FailedRecordCount"].as_u64()), (200, Some(0)));

    let mut consumer = Consumer::join(&b.endpoint(), "shared", ConsumerConfig::new("notifier")).await.expect("join");
    let mut from_group: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while from_group.len() < 60 {
        let records = consumer.poll().await.expect("poll");
        from_group.extend(records.iter().map(|r| String::from_utf8(r.data.to_vec()).expect("utf-8")));
        consumer.commit(&records).await.expect("commit");
        assert!(Instant::now() < deadline, "the group got {} of 60 records", from_group.len());
    }
    let mut from_kinesis: Vec<String> = Vec::new();
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        from_kinesis.extend(
            kinesis_read(addr, "shared", shard).await.into_iter().map(|(_, _, d)| String::from_utf8(d).expect("utf-8")),
        );
    }
    from_group.sort();
    from_kinesis.sort();
    let mut want: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(from_group, want, "the group got every record once");
    assert_eq!(from_kinesis, want, "and so did the Kinesis reader, independently");
    consumer.leave().await.expect("leave");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_share_each_shards_quotas() {
    // On a manual clock the write bucket only refills when the test says so.
    let clock = kinesis::manual_clock();
    let (b, _dir) = kinesis::broker_with(|_| {}, clock.clone()).await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    let mut grpc = common::connect(b.endpoint()).await;
    common::create(&mut grpc, "quota", 1).await;
    // 1 MiB over gRPC empties the shard's 1 MiB/s write bucket...
    let big = vec![7u8; 1024 * 1024 - 1];
    let r = common::put(&mut grpc, "quota", vec![common::entry("k", &big)]).await;
    assert_eq!(r.failed_record_count, 0);
    // ...so a Kinesis put is throttled, with the name the SDKs retry.
    let (s, e) = json(addr, "PutRecord", json!({"StreamName": "quota", "PartitionKey": "k", "Data": "aGk="})).await;
    assert_eq!((s, e["__type"].as_str()), (400, Some("ProvisionedThroughputExceededException")), "{e}");
    clock.advance(1_000);
    let (s, ok) = json(addr, "PutRecord", json!({"StreamName": "quota", "PartitionKey": "k", "Data": "aGk="})).await;
    assert_eq!(s, 200, "{ok}");
    b.stop().await.expect("clean stop");
}
