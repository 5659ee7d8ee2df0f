//! Helpers shared by the client's integration tests: a broker that can be
//! stopped and restarted on the same address, the broker's throttling
//! counter, and a scripted fake broker for answers a real one never gives.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use client::types as pb;
use proto::v1::stream_broker_server::{StreamBroker, StreamBrokerServer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// Longest any single step may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(60);

/// A broker serving a data directory on a listener the test bound.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<broker::error::Result<()>>,
}

/// Runs a broker on `grpc` with `config` (its data directory is `dir`).
pub async fn run_broker(dir: &Path, grpc: tokio::net::TcpListener, config: BrokerConfig) -> Running {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let config = BrokerConfig { data_dir: dir.to_path_buf(), ..config };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(broker::server::run(config, Arc::new(SystemClock), grpc, http, shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    /// Shuts the broker down and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(HANG, self.task).await.expect("broker stops").expect("no panic").expect("clean stop");
    }
}

/// Binds `addr` again once the old listener has let go of it.
pub async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + HANG;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Records of `stream` the in-process brokers throttled so far (the
/// process-wide `stream_broker_throttled_records_total`).
pub fn throttled_records(stream: &str) -> u64 {
    let text = broker::telemetry::prometheus().render();
    let label = format!("stream_broker_throttled_records_total{{stream=\"{stream}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&label)).map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// How the fake broker answers one record: its key and how many times it
/// was sent before (0 on the first attempt).
pub type Script = dyn Fn(&str, usize) -> pb::PutRecordsResultEntry + Send + Sync;

/// A fake broker whose DescribeStream shows [`Fake::set_shards`] (one open
/// shard covering every key at first); PutRecords answers each record by
/// the script and logs every attempt.
pub struct Fake {
    script: Box<Script>,
    /// Every PutRecords: when it arrived and its keys, in order.
    pub attempts: Mutex<Vec<(Instant, Vec<String>)>>,
    shards: Mutex<Vec<pb::ShardDescription>>,
    /// DescribeStream calls so far.
    pub describes: std::sync::atomic::AtomicUsize,
}

/// A shard of a fake's map.
pub fn fake_shard(id: &str, start: u128, end: u128, closed: bool) -> pb::ShardDescription {
    pb::ShardDescription {
        shard_id: id.into(),
        starting_hash_key: start.to_string(),
        ending_hash_key: end.to_string(),
        closed,
        ..Default::default()
    }
}

impl Fake {
    /// Serves a fake on `127.0.0.1:0`; returns it and its address.
    pub async fn start(script: Box<Script>) -> (Arc<Fake>, String) {
        let fake = Arc::new(Fake {
            script,
            attempts: Mutex::new(Vec::new()),
            shards: Mutex::new(vec![fake_shard("shardId-000000000000", 0, u128::MAX, false)]),
            describes: std::sync::atomic::AtomicUsize::new(0),
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let service = StreamBrokerServer::from_arc(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        (fake, addr)
    }

    /// What DescribeStream shows from now on.
    pub fn set_shards(&self, shards: Vec<pb::ShardDescription>) {
        *self.shards.lock().expect("lock") = shards;
    }

    /// How many PutRecords calls carried `key`.
    pub fn attempts_of(&self, key: &str) -> Vec<Instant> {
        let log = self.attempts.lock().expect("lock");
        log.iter().filter(|(_, keys)| keys.iter().any(|k| k == key)).map(|(t, _)| *t).collect()
    }
}

/// A stored record's result entry.
pub fn stored(seq: u64) -> pb::PutRecordsResultEntry {
    pb::PutRecordsResultEntry { shard_id: "shardId-000000000000".into(), sequence_number: seq, ..Default::default() }
}

/// A failed record's result entry.
pub fn failed(code: &str, message: &str, retry_after_ms: u64) -> pb::PutRecordsResultEntry {
    pb::PutRecordsResultEntry {
        error_code: code.into(),
        error_message: message.into(),
        retry_after_ms,
        ..Default::default()
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl StreamBroker for Fake {
    async fn create_stream(
        &self,
        _: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::CreateStreamResponse>, Status> {
        unimplemented()
    }
    async fn delete_stream(
        &self,
        _: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        unimplemented()
    }
    async fn describe_stream(
        &self,
        r: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::DescribeStreamResponse>, Status> {
        self.describes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stream = pb::StreamDescription {
            stream_name: r.into_inner().stream_name,
            shards: self.shards.lock().expect("lock").clone(),
            max_record_bytes: 1024 * 1024,
            ..Default::default()
        };
        Ok(Response::new(pb::DescribeStreamResponse { stream: Some(stream) }))
    }
    async fn list_streams(
        &self,
        _: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        unimplemented()
    }
    async fn update_retention(
        &self,
        _: Request<pb::UpdateRetentionRequest>,
    ) -> Result<Response<pb::UpdateRetentionResponse>, Status> {
        unimplemented()
    }
    async fn update_quotas(
        &self,
        _: Request<pb::UpdateQuotasRequest>,
    ) -> Result<Response<pb::UpdateQuotasResponse>, Status> {
        unimplemented()
    }
    async fn split_shard(&self, _: Request<pb::SplitShardRequest>) -> Result<Response<pb::SplitShardResponse>, Status> {
        unimplemented()
    }
    async fn merge_shards(
        &self,
        _: Request<pb::MergeShardsRequest>,
    ) -> Result<Response<pb::MergeShardsResponse>, Status> {
        unimplemented()
    }
    async fn update_shard_count(
        &self,
        _: Request<pb::UpdateShardCountRequest>,
    ) -> Result<Response<pb::UpdateShardCountResponse>, Status> {
        unimplemented()
    }
    async fn put_record(&self, _: Request<pb::PutRecordRequest>) -> Result<Response<pb::PutRecordResponse>, Status> {
        unimplemented()
    }
    async fn put_records(&self, r: Request<pb::PutRecordsRequest>) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let keys: Vec<String> = r.into_inner().records.into_iter().map(|e| e.partition_key).collect();
        let records: Vec<_> = {
            let mut log = self.attempts.lock().expect("lock");
            let entries = keys
                .iter()
                .map(|k| {
                    let before = log.iter().filter(|(_, ks)| ks.contains(k)).count();
                    (self.script)(k, before)
                })
                .collect();
            log.push((Instant::now(), keys));
            entries
        };
        let failed_record_count = records.iter().filter(|e| !e.error_code.is_empty()).count() as u32;
        Ok(Response::new(pb::PutRecordsResponse { failed_record_count, records }))
    }
    type ProduceStream = BoxStream<pb::ProduceResponse>;
    async fn produce(
        &self,
        _: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        unimplemented()
    }
    async fn get_shard_iterator(
        &self,
        _: Request<pb::GetShardIteratorRequest>,
    ) -> Result<Response<pb::GetShardIteratorResponse>, Status> {
        unimplemented()
    }
    async fn get_records(&self, _: Request<pb::GetRecordsRequest>) -> Result<Response<pb::GetRecordsResponse>, Status> {
        unimplemented()
    }
    type SubscribeShardStream = BoxStream<pb::SubscribeShardEvent>;
    async fn repair_shard(
        &self,
        _: Request<pb::RepairShardRequest>,
    ) -> Result<Response<pb::RepairShardResponse>, Status> {
        unimplemented()
    }
    async fn list_lost_found(
        &self,
        _: Request<pb::ListLostFoundRequest>,
    ) -> Result<Response<pb::ListLostFoundResponse>, Status> {
        unimplemented()
    }
    async fn purge_lost_found(
        &self,
        _: Request<pb::PurgeLostFoundRequest>,
    ) -> Result<Response<pb::PurgeLostFoundResponse>, Status> {
        unimplemented()
    }
    async fn describe_broker(
        &self,
        _: Request<pb::DescribeBrokerRequest>,
    ) -> Result<Response<pb::DescribeBrokerResponse>, Status> {
        unimplemented()
    }
    async fn subscribe_shard(
        &self,
        _: Request<pb::SubscribeShardRequest>,
    ) -> Result<Response<Self::SubscribeShardStream>, Status> {
        unimplemented()
    }
}
