//! The Kinesis API's wire format with hand-built requests: a CBOR round
//! trip (PutRecord, an AT_TIMESTAMP iterator with a tag-1 timestamp,
//! GetRecords), CBOR error bodies, unknown operations, oversized bodies,
//! request ids on every answer, expired iterators (on a manual clock),
//! iterators wrapped in quotes.

mod kinesis;

use std::sync::Arc;

use broker::clock::SystemClock;
use ciborium::Value;
use kinesis::{call, json};
use serde_json::json;

const CBOR: &str = "application/x-amz-cbor-1.1";
const JSON: &str = "application/x-amz-json-1.1";

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn cbor(pairs: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(pairs.into_iter().map(|(k, v)| (text(k), v)).collect());
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).expect("encode CBOR");
    out
}

fn decode(body: &[u8]) -> Value {
    ciborium::from_reader(body).expect("a CBOR answer")
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .expect("a map")
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_built_cbor_round_trip() {
    let (b, _dir) = kinesis::broker().await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    let r = call(addr, "CreateStream", CBOR, &cbor(vec![("StreamName", text("cbor")), ("ShardCount", Value::from(1))]))
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-amzn-RequestId").is_some_and(|id| id.len() == 36), "{:?}", r.headers);

    let before_ms = broker::clock::Clock::now_ms(&SystemClock);
    let payload = vec![0u8, 1, 2, 255, 254];
    let r = call(
        addr,
        "PutRecord",
        CBOR,
        &cbor(vec![("StreamName", text("cbor")), ("Data", Value::Bytes(payload.clone())), ("PartitionKey", text("k"))]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", decode(&r.body));
    assert_eq!(r.header("content-type"), Some(CBOR), "the answer is in the request's encoding");
    let put = decode(&r.body);
    let seq = get(&put, "SequenceNumber").as_text().expect("a string").to_string();
    assert_eq!(get(&put, "ShardId").as_text(), Some("shardId-000000000000"));

    // AT_TIMESTAMP with a tag-1 timestamp of integer milliseconds, as the Java SDK sends it.
    let r = call(
        addr,
        "GetShardIterator",
        CBOR,
        &cbor(vec![
            ("StreamName", text("cbor")),
            ("ShardId", text("shardId-000000000000")),
            ("ShardIteratorType", text("AT_TIMESTAMP")),
            ("Timestamp", Value::Tag(1, Box::new(Value::from(before_ms.saturating_sub(1_000))))),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", decode(&r.body));
    let it = get(&decode(&r.body), "ShardIterator").as_text().expect("iterator").to_string();

    let r = call(addr, "GetRecords", CBOR, &cbor(vec![("ShardIterator", text(&it))])).await;
    assert_eq!(r.status, 200);
    let got = decode(&r.body);
    let records = get(&got, "Records").as_array().expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(get(&records[0], "Data"), &Value::Bytes(payload), "blobs are byte strings");
    assert_eq!(get(&records[0], "SequenceNumber").as_text(), Some(seq.as_str()));
    match get(&records[0], "ApproximateArrivalTimestamp") {
        Value::Tag(1, inner) => {
            let ms = inner.as_integer().map(i128::from).expect("integer milliseconds under tag 1, never a float");
            assert!(ms as u64 >= before_ms.saturating_sub(1_000), "{ms} is milliseconds");
        }
        other => panic!("timestamps are tag 1: {other:?}"),
    }
    assert!(get(&got, "NextShardIterator").as_text().is_some());
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_named_in_the_requests_encoding() {
    let (b, _dir) = kinesis::broker().await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    let r = call(addr, "DescribeStream", CBOR, &cbor(vec![("StreamName", text("missing"))])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some(CBOR));
    assert_eq!(r.header("x-amzn-ErrorType"), Some("ResourceNotFoundException"));
    assert!(r.header("x-amzn-RequestId").is_some());
    let e = decode(&r.body);
    assert_eq!(get(&e, "__type").as_text(), Some("ResourceNotFoundException"));
    assert_eq!(get(&e, "message").as_text(), Some("Stream missing under account 000000000000 not found."));

    // A body that does not decode: SerializationException, with AWS's capital `Message`.
    let r = call(addr, "ListStreams", CBOR, &[0xff, 0x00]).await;
    assert_eq!(r.status, 400);
    let e = decode(&r.body);
    assert_eq!(get(&e, "__type").as_text(), Some("SerializationException"));
    assert!(get(&e, "Message").as_text().is_some());
    let r = call(addr, "PutRecord", JSON, br#"{"StreamName":"s","PartitionKey":"k","Data":"23456"}"#).await;
    let e: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
    assert_eq!(e["__type"], "SerializationException");
    assert!(e["Message"].as_str().is_some_and(|m| m.contains("Base64")), "{e}");

    let r = call(addr, "MakeCake", JSON, b"{}").await;
    assert_eq!(r.status, 400);
    let e: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
    assert_eq!(e["__type"], "UnknownOperationException");

    let r = kinesis::http(addr, "POST", "/", &[("x-amz-target", "Kinesis_20131202.ListStreams")], b"{}")
        .await
        .expect("answer");
    assert_eq!(r.status, 400);
    let e: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
    assert_eq!(e["__type"], "MissingAuthenticationTokenException", "{e}");
    assert!(r.header("x-amzn-RequestId").is_some(), "every answer carries a request id");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let (b, _dir) = kinesis::broker_with(|c| c.kinesis.request_bytes_max = 1024 * 1024, Arc::new(SystemClock)).await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    let big = vec![b' '; 1024 * 1024 + 1];
    let r = call(addr, "ListStreams", JSON, &big).await;
    assert_eq!(r.status, 413);
    let e: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error");
    assert!(e["Message"].as_str().is_some_and(|m| m.contains("kinesis.request_bytes_max")), "{e}");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterators_expire_after_five_minutes_and_may_be_quoted() {
    let clock = kinesis::manual_clock();
    let (b, _dir) = kinesis::broker_with(|_| {}, clock.clone()).await;
    let addr = b.kinesis_addr.expect("Kinesis API");
    assert_eq!(json(addr, "CreateStream", json!({"StreamName": "exp", "ShardCount": 1})).await.0, 200);
    let (s, _) = json(addr, "PutRecord", json!({"StreamName": "exp", "PartitionKey": "k", "Data": "aGk="})).await;
    assert_eq!(s, 200);
    let (_, it) = json(
        addr,
        "GetShardIterator",
        json!({"StreamName": "exp", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
    )
    .await;
    let it = it["ShardIterator"].as_str().expect("iterator").to_string();
    assert!(it.len() <= 512);
    let (s, got) = json(addr, "GetRecords", json!({"ShardIterator": format!("\"{it}\"")})).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["Records"][0]["Data"], "aGk=");
    // JSON timestamps are epoch seconds with a millisecond fraction, not scientific notation.
    let raw = got["Records"][0]["ApproximateArrivalTimestamp"].to_string();
    assert!(!raw.contains('e') && !raw.contains('E') && raw.parse::<f64>().is_ok(), "{raw}");
    clock.advance(300_001);
    let (s, e) = json(addr, "GetRecords", json!({"ShardIterator": it})).await;
    assert_eq!((s, e["__type"].as_str()), (400, Some("ExpiredIteratorException")), "{e}");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_can_be_switched_off() {
    let (b, _dir) = {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = broker::config::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        config.kinesis.enabled = false;
        (broker::testing::TestBroker::start_with(config, Arc::new(SystemClock)).await, dir)
    };
    assert_eq!(b.kinesis_addr, None);
    b.stop().await.expect("clean stop");
}
