//! Errors that used to come back as INTERNAL or without the limit they hit,
//! through real gRPC: a partition key that is not UTF-8, a message above
//! `limits.grpc_max_message_bytes`, a read beyond the end of a shard that
//! lost its unsynced tail in a power failure; and a stream whose largest
//! record does not fit its write-byte quota.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker::clock::ManualClock;
use broker::config::{BrokerConfig, DurabilityMode};
use broker::testing::TestBroker;
use bytes::Bytes;
use common::*;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

const T0: u64 = 1_800_000_000_000;
const SHARD: &str = "shardId-000000000000";

fn lifted() -> Option<pb::Quotas> {
    Some(pb::Quotas {
        write_records_per_sec: Some(1_000_000),
        write_bytes_per_sec: Some(1 << 30),
        read_calls_per_sec: Some(100_000),
        read_bytes_per_sec: Some(1 << 30),
    })
}

async fn create_lifted(c: &mut Client, name: &str) {
    create_with(
        c,
        pb::CreateStreamRequest {
            stream_name: name.into(),
            shard_count: 1,
            quota_overrides: lifted(),
            ..Default::default()
        },
    )
    .await;
}

// Wire twins of the produce messages with `bytes` keys, so that a test can
// send what a well-behaved client library never would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawEntry {
    #[prost(bytes = "vec", tag = "1")]
    partition_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawPutRecords {
    #[prost(string, tag = "1")]
    stream_name: String,
    #[prost(message, repeated, tag = "2")]
    records: Vec<RawEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawPutRecord {
    #[prost(string, tag = "1")]
    stream_name: String,
    #[prost(bytes = "vec", tag = "2")]
    partition_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawProduce {
    #[prost(uint64, tag = "1")]
    batch_id: u64,
    #[prost(message, optional, tag = "2")]
    batch: Option<RawPutRecords>,
}

async fn raw_client(endpoint: &str) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(endpoint.to_string()).expect("uri").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc
}

fn path(method: &str) -> PathAndQuery {
    format!("/streambroker.v1.StreamBroker/{method}").parse().expect("path")
}

async fn raw_unary<Req, Resp>(endpoint: &str, method: &str, req: Req) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    let mut grpc = raw_client(endpoint).await;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(tonic::Request::new(req), path(method), codec).await.map(|r| r.into_inner())
}

fn raw_entry(key: &[u8]) -> RawEntry {
    RawEntry { partition_key: key.to_vec(), data: b"d".to_vec() }
}

#[tokio::test]
async fn a_partition_key_that_is_not_utf8_is_an_invalid_argument_naming_the_record() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s").await;
    let bad = b"ok-\xff-key";
    let batch = RawPutRecords {
        stream_name: "s".into(),
        records: vec![raw_entry(b"fine"), raw_entry(b"also fine"), raw_entry(bad), raw_entry(b"k")],
    };
    let err = raw_unary::<_, pb::PutRecordsResponse>(&broker.endpoint(), "PutRecords", batch.clone())
        .await
        .expect_err("not UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("records[2].partition_key"), "{}", err.message());
    assert!(err.message().contains("UTF-8"), "{}", err.message());

    let one = RawPutRecord { stream_name: "s".into(), partition_key: bad.to_vec(), data: b"d".to_vec() };
    let err = raw_unary::<_, pb::PutRecordResponse>(&broker.endpoint(), "PutRecord", one).await.expect_err("not UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("invalid partition_key"), "{}", err.message());

    let mut grpc = raw_client(&broker.endpoint()).await;
    let requests = tokio_stream::iter(vec![RawProduce { batch_id: 1, batch: Some(batch) }]);
    let codec = tonic_prost::ProstCodec::<RawProduce, pb::ProduceResponse>::default();
    let mut acks =
        grpc.streaming(tonic::Request::new(requests), path("Produce"), codec).await.expect("call").into_inner();
    let err = tokio::time::timeout(Duration::from_secs(30), acks.next())
        .await
        .expect("an answer within 30 s")
        .expect("the call ends with an error, not silently")
        .expect_err("not UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("batch.records[2].partition_key"), "{}", err.message());

    // Nothing was stored.
    let d = c.describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() }).await.expect("describe");
    assert_eq!(d.into_inner().stream.expect("s").shards[0].records_stored, 0);
}

#[tokio::test]
async fn a_message_above_the_limit_names_the_limit_and_its_key() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s").await;
    let huge = Bytes::from(vec![0u8; 17 << 20]);
    let big = || pb::PutRecordsRequest {
        stream_name: "s".into(),
        records: vec![pb::PutRecordsEntry { partition_key: "k".into(), data: huge.clone(), explicit_hash_key: None }],
    };
    let err = c.put_records(big()).await.expect_err("17 MiB");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    for part in ["limits.grpc_max_message_bytes", "16777216"] {
        assert!(err.message().contains(part), "{part} missing from {:?}", err.message());
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::ProduceRequest { batch_id: 7, batch: Some(big()) }).await.expect("send");
    let mut acks = c.produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("produce").into_inner();
    let err = tokio::time::timeout(Duration::from_secs(30), acks.next())
        .await
        .expect("an answer within 30 s")
        .expect("the call ends with an error, not silently")
        .expect_err("17 MiB");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("limits.grpc_max_message_bytes"), "{:?}", err.message());
    drop(tx);
    // The connection is still usable for well-sized requests.
    let r = put(&mut c, "s", vec![entry("k", b"small")]).await;
    assert_eq!(r.failed_record_count, 0);
}

fn shard_dir(data_dir: &Path) -> PathBuf {
    let streams = data_dir.join("streams");
    let stream = std::fs::read_dir(&streams).expect("streams").next().expect("one stream").expect("entry").path();
    stream.join(SHARD)
}

fn file_sizes(dir: &Path) -> HashMap<PathBuf, u64> {
    std::fs::read_dir(dir)
        .expect("shard dir")
        .map(|e| {
            let e = e.expect("entry");
            (e.path(), e.metadata().expect("metadata").len())
        })
        .collect()
}

/// What a power failure does to files whose tail was never fsynced: each
/// file goes back to its size at `before`, files created since vanish.
fn lose_unsynced_tail(dir: &Path, before: &HashMap<PathBuf, u64>) {
    for (path, _) in file_sizes(dir) {
        match before.get(&path) {
            Some(&len) => {
                std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len)).expect("truncate")
            }
            None => std::fs::remove_file(&path).expect("remove"),
        }
    }
}

#[tokio::test]
async fn reads_beyond_the_end_left_by_a_power_failure_are_out_of_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.durability.mode = DurabilityMode::Never;
    let broker = TestBroker::start_with(config.clone(), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create_lifted(&mut c, "s").await;
    put(&mut c, "s", (0..10).map(|i| entry("k", format!("r{i}").as_bytes())).collect()).await;
    drop(c);
    broker.stop().await.expect("stop");
    let synced = file_sizes(&shard_dir(dir.path()));

    let broker = TestBroker::start_with(config.clone(), clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    put(&mut c, "s", (10..20).map(|i| entry("k", format!("r{i}").as_bytes())).collect()).await;
    let it = iterator(&mut c, "s", SHARD, pb::IteratorType::AtSequenceNumber, Some(15), None).await;
    drop(c);
    broker.stop().await.expect("stop");
    lose_unsynced_tail(&shard_dir(dir.path()), &synced);

    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let check = |what: &str, err: tonic::Status, field: &str| {
        assert_eq!((err.code(), error_kind(&err)), (Code::OutOfRange, "SequenceBeyondEnd".to_string()), "{what}");
        for part in [field, "15", SHARD, "10"] {
            assert!(err.message().contains(part), "{what}: {part} missing from {:?}", err.message());
        }
    };
    let err = c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 10 }).await.expect_err("beyond");
    check("GetRecords", err, "shard_iterator");
    let err = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: SHARD.into(),
            iterator_type: pb::IteratorType::AtSequenceNumber as i32,
            starting_sequence_number: Some(15),
            timestamp_ms: None,
        })
        .await
        .expect_err("beyond");
    check("GetShardIterator", err, "starting_sequence_number");
    let err = c
        .subscribe_shard(pb::SubscribeShardRequest {
            stream_name: "s".into(),
            shard_id: SHARD.into(),
            starting_position: pb::IteratorType::AtSequenceNumber as i32,
            starting_sequence_number: Some(15),
            timestamp_ms: None,
        })
        .await
        .expect_err("beyond");
    check("SubscribeShard", err, "starting_sequence_number");
    // The shard's real end is still a valid position.
    let it = iterator(&mut c, "s", SHARD, pb::IteratorType::AtSequenceNumber, Some(10), None).await;
    let r = c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 10 }).await.expect("at the end");
    assert!(r.into_inner().records.is_empty());
}

#[tokio::test]
async fn a_largest_record_above_the_write_byte_quota_is_refused_at_create() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    let err = c
        .create_stream(pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            max_record_bytes: Some(2 << 20),
            quota_overrides: Some(pb::Quotas { write_bytes_per_sec: Some(1 << 20), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect_err("a 2 MiB record can never pass a 1 MiB/s bucket");
    assert_eq!(err.code(), Code::InvalidArgument);
    for part in ["max_record_bytes", "2097152", "write_bytes_per_sec", "1048576"] {
        assert!(err.message().contains(part), "{part} missing from {:?}", err.message());
    }
    // With the default quota (1 MiB/s) too.
    let err = c
        .create_stream(pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            max_record_bytes: Some(10 << 20),
            ..Default::default()
        })
        .await
        .expect_err("10 MiB over the default 1 MiB/s");
    assert!(err.message().contains("max_record_bytes"), "{}", err.message());
    // A quota that fits the record is fine.
    create_with(
        &mut c,
        pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            max_record_bytes: Some(2 << 20),
            quota_overrides: Some(pb::Quotas { write_bytes_per_sec: Some(2 << 20), ..Default::default() }),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test]
async fn a_maximum_size_record_is_admitted_once_the_bucket_refills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    assert_eq!(put(&mut c, "s", vec![entry("k", &[0; 4096])]).await.failed_record_count, 0);
    // Key and data together are exactly the stream's 1 MiB maximum.
    let max = || entry("k", &vec![1u8; (1 << 20) - 1]);
    let r = put(&mut c, "s", vec![max()]).await;
    assert_eq!(r.records[0].error_code, "ProvisionedThroughputExceeded", "4 KiB of the bucket are used");
    // One second refills the whole bucket.
    clock.advance(1_000);
    let r = put(&mut c, "s", vec![max()]).await;
    assert_eq!(r.failed_record_count, 0, "{:?}", r.records[0]);
}
