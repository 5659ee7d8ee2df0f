//! The gRPC edge: converts `proto` messages to domain calls and back.
//! Validation of request fields happens here or in the catalogue, and every
//! rejection names the field; errors become statuses only in [`status`].

pub mod groups;
pub mod message_limit;
pub mod status;
mod subscribe;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::stream_broker_server::StreamBroker;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::{Catalog, CreateStream, Layout, Stream as BrokerStream, validate_stream_name};
use crate::config::DurabilityMode;
use crate::error::{BrokerError, Result};
use crate::iterator::{IteratorSigner, Position};
use crate::metadata::{ShardMeta, ShardState, StreamStatus};
use crate::quota::ReadBudget;
use crate::routing::{hash_key, parse_explicit_hash_key};
use crate::shard::{FailureKind, NewRecord, RepairAction, Shard, shard_id};
use status::to_status;

/// Most records in one PutRecords request.
pub const PUT_RECORDS_MAX: usize = 500;
/// Most key + data bytes in one PutRecords request.
pub const PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Most records one GetRecords call returns.
pub const GET_RECORDS_LIMIT_MAX: u32 = 10_000;
/// Most key + data bytes one GetRecords call returns.
pub const GET_RECORDS_BYTES_MAX: usize = 10 * 1024 * 1024;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcService {
    catalog: Arc<Catalog>,
    groups: Arc<crate::group::GroupManager>,
    signer: IteratorSigner,
    shutdown: CancellationToken,
    buffers: subscribe::BufferBudget,
}

impl GrpcService {
    /// A service over `catalog`; streaming calls end when `shutdown` fires.
    pub fn new(
        catalog: Arc<Catalog>,
        groups: Arc<crate::group::GroupManager>,
        signer: IteratorSigner,
        shutdown: CancellationToken,
    ) -> Self {
        let limits = &catalog.config().limits;
        let buffers = subscribe::BufferBudget::new(
            limits.subscription_buffer_bytes_total,
            limits.subscription_buffer_bytes,
            limits.subscription_reads_concurrent,
        );
        Self { catalog, groups, signer, shutdown, buffers }
    }

    fn now(&self) -> u64 {
        self.catalog.clock().now_ms()
    }

    async fn unary<T>(&self, name: &'static str, f: impl Future<Output = Result<T>>) -> Result<Response<T>, Status> {
        unary(name, Duration::from_millis(self.catalog.config().limits.request_timeout_ms), f).await
    }

    fn shard_of(stream: &BrokerStream, shard_id: &str) -> Result<Arc<Shard>> {
        stream.shard_by_id("shard_id", shard_id)
    }

    /// The first sequence number a reader starting at this position gets.
    async fn resolve_start(
        &self,
        shard: &Shard,
        kind: i32,
        sequence_number: Option<u64>,
        timestamp_ms: Option<u64>,
    ) -> Result<u64> {
        let reader = shard.reader()?;
        let (first, next) = (reader.first_seq(), reader.next_seq());
        let at = |field: &'static str, seq: Option<u64>, offset: u64| -> Result<u64> {
            let seq = seq.ok_or_else(|| BrokerError::invalid(field, "required for this iterator type"))?;
            let start = seq.saturating_add(offset);
            if start < first {
                return Err(BrokerError::SequenceTrimmed { shard_id: shard.id.clone(), requested: seq, first });
            }
            if start > next {
                return Err(BrokerError::SequenceBeyondEnd { field, shard_id: shard.id.clone(), requested: seq, next });
            }
            Ok(start)
        };
        match pb::IteratorType::try_from(kind) {
            Ok(pb::IteratorType::TrimHorizon) => Ok(first),
            Ok(pb::IteratorType::Latest) => Ok(next),
            Ok(pb::IteratorType::AtSequenceNumber) => at("starting_sequence_number", sequence_number, 0),
            Ok(pb::IteratorType::AfterSequenceNumber) => at("starting_sequence_number", sequence_number, 1),
            Ok(pb::IteratorType::AtTimestamp) => {
                let ts =
                    timestamp_ms.ok_or_else(|| BrokerError::invalid("timestamp_ms", "required for AT_TIMESTAMP"))?;
                if ts > self.now() {
                    return Err(BrokerError::invalid("timestamp_ms", format!("{ts} is in the future")));
                }
                let id = shard.id.clone();
                tokio::task::spawn_blocking(move || reader.seq_at_or_after_timestamp(ts))
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?
                    .map_err(|e| BrokerError::storage(&id, e))
            }
            _ => Err(BrokerError::invalid("iterator_type", format!("{kind} is not a known iterator type"))),
        }
    }

    /// Validates, routes, applies quotas and queues a PutRecords batch.
    /// Records over quota fail alone; once a shard throttles a record, its
    /// later records in the same batch are throttled too, which keeps each
    /// shard's accepted records in request order. Records routed to a failed
    /// shard fail alone with its error; a disk below the free-space
    /// watermark refuses the whole call. The whole batch routes with one
    /// layout; a shard that a reshard sealed after that refuses the records
    /// queued to it with the retryable `ShardClosed`.
    async fn submit_put(&self, stream_name: &str, entries: Vec<pb::PutRecordsEntry>) -> Result<PendingPut> {
        validate_stream_name(stream_name)?;
        let stream = self.catalog.get(stream_name)?;
        self.catalog.disk().admit()?;
        if entries.is_empty() || entries.len() > PUT_RECORDS_MAX {
            return Err(BrokerError::invalid("records", format!("must hold 1..=500 records, got {}", entries.len())));
        }
        let total: usize = entries.iter().map(|e| e.partition_key.len() + e.data.len()).sum();
        if total > PUT_RECORDS_BYTES_MAX {
            return Err(BrokerError::invalid("records", format!("{total} bytes of keys and data, more than 5 MiB")));
        }
        let meta = stream.meta();
        let layout = stream.layout();
        let mut routed = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            validate_partition_key(&e.partition_key)
                .map_err(|r| BrokerError::invalid(format!("records[{i}].partition_key"), r))?;
            let size = e.partition_key.len() + e.data.len();
            if size > meta.max_record_bytes as usize {
                return Err(BrokerError::invalid(
                    format!("records[{i}].data"),
                    format!("record is {size} bytes (key + data), more than the stream's {}", meta.max_record_bytes),
                ));
            }
            let hash = match &e.explicit_hash_key {
                Some(k) => parse_explicit_hash_key(k)
                    .map_err(|r| BrokerError::invalid(format!("records[{i}].explicit_hash_key"), r))?,
                None => hash_key(&e.partition_key),
            };
            routed.push((layout.route(hash).index, size));
        }
        let now = self.now();
        let mut outcome: Vec<Outcome> = Vec::with_capacity(entries.len());
        let mut groups: HashMap<u32, Vec<NewRecord>> = HashMap::new();
        let mut throttled_shards: HashMap<u32, u64> = HashMap::new();
        let mut refusals: HashMap<u32, BrokerError> = HashMap::new();
        let (mut bytes_in, mut throttled) = (0u64, 0u64);
        for (e, (shard, size)) in entries.into_iter().zip(routed) {
            let target = layout.shard(shard).ok_or_else(|| BrokerError::Internal("a route to no shard".into()))?;
            if let Some(refusal) = target.write_refusal() {
                refusals.entry(shard).or_insert(refusal);
                outcome.push(Outcome::Refused { shard });
                continue;
            }
            let quota = &target.quota;
            let admitted = match throttled_shards.get(&shard) {
                Some(&wait) => Err(wait),
                None => quota.try_write(size as u64, now),
            };
            match admitted {
                Ok(()) => {
                    let group = groups.entry(shard).or_default();
                    outcome.push(Outcome::Queued { shard, offset: group.len() as u64 });
                    group.push((Bytes::from(e.partition_key), e.data));
                    bytes_in += size as u64;
                }
                Err(wait) => {
                    throttled_shards.entry(shard).or_insert(wait);
                    outcome.push(Outcome::Throttled { shard, retry_after_ms: wait });
                    throttled += 1;
                }
            }
        }
        let mut acks = HashMap::with_capacity(groups.len());
        for (shard, records) in groups {
            let target = layout.shard(shard).ok_or_else(|| BrokerError::Internal("a route to no shard".into()))?;
            acks.insert(shard, target.submit(records).await?);
        }
        let labels = [("stream", meta.name.clone())];
        metrics::counter!("stream_broker_bytes_in_total", &labels).increment(bytes_in);
        if throttled > 0 {
            metrics::counter!("stream_broker_throttled_records_total", &labels).increment(throttled);
        }
        Ok(PendingPut { stream, outcome, acks, refusals })
    }
}

/// Runs a unary handler under a deadline, with its latency and errors in the metrics.
pub(crate) async fn unary<T>(
    name: &'static str,
    deadline: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(BrokerError::Unavailable(format!("{name} exceeded the {} ms deadline", deadline.as_millis()))),
    };
    metrics::histogram!("stream_broker_request_duration_seconds", "method" => name)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("stream_broker_request_errors_total", "method" => name).increment(1);
    }
    result.map(Response::new).map_err(to_status)
}

/// Kinesis partition keys are 1..=256 Unicode characters.
fn validate_partition_key(key: &str) -> std::result::Result<(), String> {
    let chars = key.chars().count();
    if (1..=256).contains(&chars) { Ok(()) } else { Err(format!("must be 1..=256 characters, got {chars}")) }
}

enum Outcome {
    Queued {
        shard: u32,
        offset: u64,
    },
    Throttled {
        shard: u32,
        retry_after_ms: u64,
    },
    /// The shard refused before queueing (it is failed).
    Refused {
        shard: u32,
    },
}

/// A PutRecords batch whose shard batches are queued.
struct PendingPut {
    stream: Arc<BrokerStream>,
    outcome: Vec<Outcome>,
    acks: HashMap<u32, oneshot::Receiver<Result<shardlog::Appended>>>,
    refusals: HashMap<u32, BrokerError>,
}

/// The per-record error code of a shard's failure.
fn record_error_code(e: &BrokerError) -> &'static str {
    match e {
        BrokerError::DiskFull { .. } | BrokerError::ShardFailed { .. } | BrokerError::ShardClosed { .. } => e.kind(),
        _ => "ShardUnavailable",
    }
}

impl PendingPut {
    /// Waits for the one record of a PutRecord: its sequence number, or the
    /// error its shard answered with.
    async fn wait_one(mut self) -> Result<pb::PutRecordResponse> {
        match self.outcome.pop() {
            Some(Outcome::Queued { shard, offset }) => {
                let ack = self.acks.remove(&shard).ok_or_else(|| BrokerError::Internal("no ack".into()))?;
                let a = ack.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("shard writer stopped".into())))?;
                Ok(pb::PutRecordResponse { shard_id: shard_id(shard), sequence_number: a.first_seq + offset })
            }
            Some(Outcome::Throttled { shard, retry_after_ms }) => Err(BrokerError::Throttled {
                what: format!("write quota of {} exceeded", shard_id(shard)),
                retry_after_ms,
            }),
            Some(Outcome::Refused { shard }) => Err(self
                .refusals
                .remove(&shard)
                .unwrap_or_else(|| BrokerError::Unavailable("shard refused the write".into()))),
            None => Err(BrokerError::Internal("PutRecord without a record".into())),
        }
    }

    /// Waits for every shard batch and builds the per-record results.
    async fn wait(self) -> pb::PutRecordsResponse {
        let mut appended = HashMap::with_capacity(self.acks.len());
        for (shard, ack) in self.acks {
            let r = ack.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("shard writer stopped".into())));
            appended.insert(shard, r);
        }
        let mut resp =
            pb::PutRecordsResponse { failed_record_count: 0, records: Vec::with_capacity(self.outcome.len()) };
        let mut records_in = 0u64;
        for o in self.outcome {
            let entry = match o {
                Outcome::Queued { shard, offset } => match &appended[&shard] {
                    Ok(a) => {
                        records_in += 1;
                        pb::PutRecordsResultEntry {
                            shard_id: shard_id(shard),
                            sequence_number: a.first_seq + offset,
                            ..Default::default()
                        }
                    }
                    Err(e) => pb::PutRecordsResultEntry {
                        error_code: record_error_code(e).into(),
                        error_message: e.to_string(),
                        ..Default::default()
                    },
                },
                Outcome::Refused { shard } => {
                    let e = &self.refusals[&shard];
                    pb::PutRecordsResultEntry {
                        error_code: record_error_code(e).into(),
                        error_message: e.to_string(),
                        ..Default::default()
                    }
                }
                Outcome::Throttled { shard, retry_after_ms } => pb::PutRecordsResultEntry {
                    error_code: "ProvisionedThroughputExceeded".into(),
                    error_message: format!(
                        "write quota of {} exceeded; retry after {retry_after_ms} ms",
                        shard_id(shard)
                    ),
                    retry_after_ms,
                    ..Default::default()
                },
            };
            if !entry.error_code.is_empty() {
                resp.failed_record_count += 1;
            }
            resp.records.push(entry);
        }
        metrics::counter!("stream_broker_records_in_total", "stream" => self.stream.meta().name).increment(records_in);
        resp
    }
}

fn durability_of(mode: DurabilityMode) -> pb::DurabilityMode {
    match mode {
        DurabilityMode::Always => pb::DurabilityMode::Always,
        DurabilityMode::Interval => pb::DurabilityMode::Interval,
        DurabilityMode::Never => pb::DurabilityMode::Never,
    }
}

/// A shard's status as the API shows it.
fn shard_status(s: &Shard) -> pb::ShardStatus {
    match (s.failure(), s.stats()) {
        (None, _) => pb::ShardStatus::Serving,
        (Some(f), _) if f.kind == FailureKind::DiskFull => pb::ShardStatus::DiskFull,
        (Some(_), Some(_)) => pb::ShardStatus::ReadOnly,
        (Some(_), None) => pb::ShardStatus::Failed,
    }
}

/// The description of one shard as the API shows it; `info` is its place
/// in the stream's shard tree.
pub fn describe_shard(s: &Shard, info: Option<&ShardMeta>) -> pb::ShardDescription {
    let stats = s.stats().unwrap_or_default();
    let failure = s.failure();
    let ending = info.and_then(|i| match i.state {
        ShardState::Closed { ending_seq, .. } => Some(ending_seq),
        _ => None,
    });
    pb::ShardDescription {
        shard_id: s.id.clone(),
        starting_hash_key: s.hash_range.0.to_string(),
        ending_hash_key: s.hash_range.1.to_string(),
        first_sequence_number: stats.first_seq,
        next_sequence_number: stats.next_seq,
        bytes_stored: stats.bytes,
        records_stored: stats.next_seq - stats.first_seq,
        writable: failure.is_none() && ending.is_none(),
        write_error: failure.as_ref().map(|f| format!("{}: {}", f.kind.as_str(), f.cause)).unwrap_or_default(),
        shard_status: shard_status(s) as i32,
        failure_kind: failure.as_ref().map(|f| f.kind.as_str().to_string()).unwrap_or_default(),
        failure: failure.map(|f| f.cause).unwrap_or_default(),
        damage: s
            .damage()
            .into_iter()
            .map(|d| pb::DamagedRange { segment: d.segment, position: d.position, reason: d.reason })
            .collect(),
        parent_shard_id: info.and_then(|i| i.parent).map(shard_id).unwrap_or_default(),
        adjacent_parent_shard_id: info.and_then(|i| i.adjacent_parent).map(shard_id).unwrap_or_default(),
        closed: ending.is_some(),
        ending_sequence_number: ending,
        created_at_ms: info.map_or(0, |i| i.created_at_ms),
    }
}

/// The shards made from `index`, as GetRecords and SubscribeShard name them at a closed shard's end.
pub fn child_shards(layout: &Layout, index: u32) -> Vec<pb::ChildShard> {
    layout
        .children(index)
        .into_iter()
        .map(|c| pb::ChildShard {
            shard_id: shard_id(c.index),
            parent_shard_ids: c.parents().map(shard_id).collect(),
            starting_hash_key: c.starting_hash_key.to_string(),
            ending_hash_key: c.ending_hash_key.to_string(),
        })
        .collect()
}

/// The description of a stream as the API shows it.
pub fn describe(stream: &BrokerStream, config: &crate::config::BrokerConfig) -> pb::StreamDescription {
    let meta = stream.meta();
    let layout = stream.layout();
    let shards = layout.shards().map(|s| describe_shard(s, layout.info(s.index))).collect();
    let q = meta.quotas;
    let status = match meta.status {
        StreamStatus::Creating => pb::StreamStatus::Creating,
        StreamStatus::Active => pb::StreamStatus::Active,
        StreamStatus::Deleting => pb::StreamStatus::Deleting,
        StreamStatus::Updating => pb::StreamStatus::Updating,
    };
    let target_shard_count = match meta.reshard.map(|r| r.target) {
        Some(crate::metadata::ReshardTarget::Scale { target, .. }) => target,
        _ => 0,
    };
    pb::StreamDescription {
        stream_name: meta.name,
        stream_id: meta.id,
        status: status as i32,
        retention_hours: meta.retention_hours,
        quotas: Some(pb::Quotas {
            write_records_per_sec: Some(q.write_records_per_sec),
            write_bytes_per_sec: Some(q.write_bytes_per_sec),
            read_calls_per_sec: Some(q.read_calls_per_sec),
            read_bytes_per_sec: Some(q.read_bytes_per_sec),
        }),
        max_record_bytes: meta.max_record_bytes,
        durability: durability_of(config.durability.mode) as i32,
        durability_interval_ms: config.durability.interval_ms,
        created_at_ms: meta.created_at_ms,
        shards,
        open_shard_count: layout.open_count() as u32,
        target_shard_count,
    }
}

pub(crate) fn to_record(r: shardlog::Record) -> pb::Record {
    pb::Record {
        sequence_number: r.seq,
        arrival_timestamp_ms: r.timestamp_ms,
        // Keys were checked as UTF-8 on the way in and are CRC-protected on disk.
        partition_key: String::from_utf8_lossy(&r.partition_key).into_owned(),
        data: r.data,
    }
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StreamBroker for GrpcService {
    async fn create_stream(
        &self,
        req: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::CreateStreamResponse>, Status> {
        let r = req.into_inner();
        self.unary("CreateStream", async {
            let q = r.quota_overrides.unwrap_or_default();
            let stream = self
                .catalog
                .create(CreateStream {
                    name: r.stream_name,
                    shard_count: r.shard_count,
                    retention_hours: r.retention_hours,
                    write_records_per_sec: q.write_records_per_sec,
                    write_bytes_per_sec: q.write_bytes_per_sec,
                    read_calls_per_sec: q.read_calls_per_sec,
                    read_bytes_per_sec: q.read_bytes_per_sec,
                    max_record_bytes: r.max_record_bytes,
                })
                .await?;
            Ok(pb::CreateStreamResponse { stream: Some(describe(&stream, self.catalog.config())) })
        })
        .await
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let r = req.into_inner();
        self.unary("DeleteStream", async {
            validate_stream_name(&r.stream_name)?;
            let id = self.catalog.get(&r.stream_name)?.meta().id;
            self.catalog.delete(&r.stream_name).await?;
            // Groups die with their stream; a crash before this line is cleaned up at the next start.
            self.groups.remove_stream(id).await?;
            Ok(pb::DeleteStreamResponse {})
        })
        .await
    }

    async fn describe_stream(
        &self,
        req: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::DescribeStreamResponse>, Status> {
        let r = req.into_inner();
        self.unary("DescribeStream", async {
            validate_stream_name(&r.stream_name)?;
            let stream = self.catalog.get(&r.stream_name)?;
            Ok(pb::DescribeStreamResponse { stream: Some(describe(&stream, self.catalog.config())) })
        })
        .await
    }

    async fn list_streams(
        &self,
        req: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let r = req.into_inner();
        self.unary("ListStreams", async {
            let limit = match r.limit {
                0 => 100,
                1..=1000 => r.limit as usize,
                n => return Err(BrokerError::invalid("limit", format!("must be 1..=1000, got {n}"))),
            };
            let (stream_names, has_more_streams) = self.catalog.list(limit, &r.exclusive_start_stream_name);
            Ok(pb::ListStreamsResponse { stream_names, has_more_streams })
        })
        .await
    }

    async fn update_retention(
        &self,
        req: Request<pb::UpdateRetentionRequest>,
    ) -> Result<Response<pb::UpdateRetentionResponse>, Status> {
        let r = req.into_inner();
        self.unary("UpdateRetention", async {
            validate_stream_name(&r.stream_name)?;
            let stream = self.catalog.update_retention(&r.stream_name, r.retention_hours).await?;
            Ok(pb::UpdateRetentionResponse { stream: Some(describe(&stream, self.catalog.config())) })
        })
        .await
    }

    async fn split_shard(
        &self,
        req: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        let r = req.into_inner();
        self.unary("SplitShard", async {
            let stream = self.catalog.split_shard(&r.stream_name, &r.shard_id, &r.new_starting_hash_key).await?;
            Ok(pb::SplitShardResponse { stream: Some(describe(&stream, self.catalog.config())) })
        })
        .await
    }

    async fn merge_shards(
        &self,
        req: Request<pb::MergeShardsRequest>,
    ) -> Result<Response<pb::MergeShardsResponse>, Status> {
        let r = req.into_inner();
        self.unary("MergeShards", async {
            let stream = self.catalog.merge_shards(&r.stream_name, &r.shard_id, &r.adjacent_shard_id).await?;
            Ok(pb::MergeShardsResponse { stream: Some(describe(&stream, self.catalog.config())) })
        })
        .await
    }

    async fn update_shard_count(
        &self,
        req: Request<pb::UpdateShardCountRequest>,
    ) -> Result<Response<pb::UpdateShardCountResponse>, Status> {
        let r = req.into_inner();
        self.unary("UpdateShardCount", async {
            match pb::ScalingType::try_from(r.scaling_type) {
                Ok(pb::ScalingType::UniformScaling | pb::ScalingType::Unspecified) => {}
                _ => return Err(BrokerError::invalid("scaling_type", "must be UNIFORM_SCALING")),
            }
            let scaled = self.catalog.update_shard_count(&r.stream_name, r.target_shard_count).await?;
            Ok(pb::UpdateShardCountResponse {
                current_shard_count: scaled.from,
                target_shard_count: scaled.target,
                stream: Some(describe(&scaled.stream, self.catalog.config())),
            })
        })
        .await
    }

    async fn put_record(&self, req: Request<pb::PutRecordRequest>) -> Result<Response<pb::PutRecordResponse>, Status> {
        let r = req.into_inner();
        self.unary("PutRecord", async {
            let entry = pb::PutRecordsEntry {
                partition_key: r.partition_key,
                data: r.data,
                explicit_hash_key: r.explicit_hash_key,
            };
            self.submit_put(&r.stream_name, vec![entry]).await.map_err(unprefix)?.wait_one().await
        })
        .await
    }

    async fn put_records(
        &self,
        req: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let r = req.into_inner();
        self.unary("PutRecords", async { Ok(self.submit_put(&r.stream_name, r.records).await?.wait().await) }).await
    }

    type ProduceStream = EventStream<pb::ProduceResponse>;

    async fn produce(
        &self,
        req: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = req.into_inner();
        let in_flight = self.catalog.config().limits.produce_stream_in_flight;
        let (out_tx, out_rx) = mpsc::channel(in_flight);
        let message_max = self.catalog.config().limits.grpc_max_message_bytes;
        // Err: the inbound stream failed (a message that does not decode or is too large).
        let (pending_tx, mut pending_rx) = mpsc::channel::<Result<(u64, Result<PendingPut>), Status>>(in_flight);
        let svc = self.clone();
        // Reader: queues each batch in arrival order, so acks for one shard follow request order.
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = svc.shutdown.cancelled() => break,
                };
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        // Ends the call with the error, after the acks of the batches before it.
                        let _ = pending_tx.send(Err(message_limit::explain(status, message_max))).await;
                        break;
                    }
                };
                let batch = req.batch.unwrap_or_default();
                let pending = svc.submit_put(&batch.stream_name, batch.records).await;
                if pending_tx.send(Ok((req.batch_id, pending))).await.is_err() {
                    break;
                }
            }
        });
        // Acknowledger: waits for each batch in order.
        tokio::spawn(async move {
            while let Some(item) = pending_rx.recv().await {
                let (batch_id, pending) = match item {
                    Ok(batch) => batch,
                    Err(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        break;
                    }
                };
                let resp = match pending {
                    Ok(p) => pb::ProduceResponse { batch_id, result: Some(p.wait().await), ..Default::default() },
                    Err(e) => pb::ProduceResponse {
                        batch_id,
                        error_code: e.kind().into(),
                        error_message: to_status(e).message().to_string(),
                        ..Default::default()
                    },
                };
                if out_tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_shard_iterator(
        &self,
        req: Request<pb::GetShardIteratorRequest>,
    ) -> Result<Response<pb::GetShardIteratorResponse>, Status> {
        let r = req.into_inner();
        self.unary("GetShardIterator", async {
            validate_stream_name(&r.stream_name)?;
            let stream = self.catalog.get(&r.stream_name)?;
            let shard = Self::shard_of(&stream, &r.shard_id)?;
            let seq = self.resolve_start(&shard, r.iterator_type, r.starting_sequence_number, r.timestamp_ms).await?;
            let pos = Position { stream_id: stream.meta().id, shard: shard.index, seq };
            Ok(pb::GetShardIteratorResponse { shard_iterator: self.signer.issue(pos, self.now()) })
        })
        .await
    }

    async fn get_records(
        &self,
        req: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<pb::GetRecordsResponse>, Status> {
        let r = req.into_inner();
        self.unary("GetRecords", async {
            let now = self.now();
            let pos = self.signer.open(&r.shard_iterator, now)?;
            let limit = match r.limit {
                0 => GET_RECORDS_LIMIT_MAX,
                1..=GET_RECORDS_LIMIT_MAX => r.limit,
                n => return Err(BrokerError::invalid("limit", format!("must be 1..=10000, got {n}"))),
            };
            let stream = self.catalog.get_by_id(pos.stream_id).ok_or_else(|| BrokerError::StreamNotFound {
                name: format!("(the iterator's stream, id {}, was deleted)", pos.stream_id),
            })?;
            // A shard removed by retention after the iterator was issued.
            let shard = stream.shard(pos.shard).ok_or_else(|| BrokerError::ShardNotFound {
                stream: stream.meta().name,
                shard_id: shard_id(pos.shard),
            })?;
            // Before the reader: a shard listed closed was sealed first, so its end is final.
            let layout = stream.layout();
            let closed = layout.is_closed(pos.shard);
            shard.quota.try_read_call(now).map_err(|wait| BrokerError::Throttled {
                what: format!("read quota of {} exceeded", shard.id),
                retry_after_ms: wait,
            })?;
            let reader = shard.reader()?;
            let end = reader.next_seq();
            let batch =
                tokio::task::spawn_blocking(move || reader.read(pos.seq, limit as usize, GET_RECORDS_BYTES_MAX))
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?
                    .map_err(|e| BrokerError::from_read(e, &shard.id, "shard_iterator"))?;
            let bytes: u64 = batch.records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum();
            shard.quota.charge_read(bytes, now);
            let behind = if batch.next_seq >= end {
                0
            } else {
                batch.records.last().map_or(0, |r| now.saturating_sub(r.timestamp_ms))
            };
            let name = stream.meta().name;
            metrics::counter!("stream_broker_records_out_total", "stream" => name.clone())
                .increment(batch.records.len() as u64);
            metrics::counter!("stream_broker_bytes_out_total", "stream" => name).increment(bytes);
            let next = Position { seq: batch.next_seq, ..pos };
            // At a closed shard's end there is no next iterator; the children are where its keys continue.
            let (next_shard_iterator, child_shards) = if closed && batch.next_seq >= end {
                (String::new(), child_shards(&layout, pos.shard))
            } else {
                (self.signer.issue(next, now), Vec::new())
            };
            Ok(pb::GetRecordsResponse {
                records: batch.records.into_iter().map(to_record).collect(),
                next_shard_iterator,
                millis_behind_latest: behind,
                child_shards,
            })
        })
        .await
    }

    type SubscribeShardStream = EventStream<pb::SubscribeShardEvent>;

    async fn subscribe_shard(
        &self,
        req: Request<pb::SubscribeShardRequest>,
    ) -> Result<Response<Self::SubscribeShardStream>, Status> {
        let r = req.into_inner();
        let limits = &self.catalog.config().limits;
        let setup = async {
            validate_stream_name(&r.stream_name)?;
            let stream = self.catalog.get(&r.stream_name)?;
            let shard = Self::shard_of(&stream, &r.shard_id)?;
            let start =
                self.resolve_start(&shard, r.starting_position, r.starting_sequence_number, r.timestamp_ms).await?;
            let max = limits.subscribers_per_shard;
            let slot = shard.try_add_subscriber(max).ok_or_else(|| {
                BrokerError::LimitExceeded(format!("{} has limits.subscribers_per_shard = {max} subscribers", shard.id))
            })?;
            let buffer = self.buffers.reserve()?;
            Ok((stream, shard, start, slot, buffer))
        };
        let (source, shard, pos, slot, buffer) = setup.await.map_err(to_status)?;
        let meta = source.meta();
        // One event queued: with the one being sent, the reservation covers them.
        let (tx, rx) = mpsc::channel(1);
        let now = self.now();
        let subscription = subscribe::Subscription {
            shard,
            layout: source.watch_layout(),
            source,
            stream: meta.name,
            pos,
            budget: ReadBudget::new(meta.quotas.read_bytes_per_sec, self.catalog.config().quotas.enforce, now),
            clock: self.catalog.clock().clone(),
            ends_at_ms: now.saturating_add(limits.subscription_lifetime_ms),
            heartbeat: Duration::from_millis(limits.subscribe_heartbeat_ms),
            event_bytes_max: limits.subscription_buffer_bytes / 4,
            budget_shared: self.buffers.clone(),
            tx,
            shutdown: self.shutdown.clone(),
            _slot: slot,
            _buffer: buffer,
        };
        tokio::spawn(subscription.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn repair_shard(
        &self,
        req: Request<pb::RepairShardRequest>,
    ) -> Result<Response<pb::RepairShardResponse>, Status> {
        let r = req.into_inner();
        self.unary("RepairShard", async {
            validate_stream_name(&r.stream_name)?;
            let (stream, outcome) = self.catalog.repair(&r.stream_name, &r.shard_id, r.confirm).await?;
            let shard = Self::shard_of(&stream, &r.shard_id)?;
            let plan = outcome.plan;
            let cut = plan.cut.unwrap_or_default();
            Ok(pb::RepairShardResponse {
                plan: Some(pb::RepairPlan {
                    action: match plan.action {
                        RepairAction::Nothing => pb::RepairAction::Nothing,
                        RepairAction::Reopen => pb::RepairAction::Reopen,
                        RepairAction::Truncate => pb::RepairAction::Truncate,
                    } as i32,
                    reason: plan.reason,
                    segment: cut.segment,
                    cut_position: cut.position,
                    first_lost_sequence_number: cut.first_lost_seq,
                    records_lost: cut.records_lost,
                    bytes_removed: cut.bytes_removed,
                    segments_removed: cut.segments_removed,
                }),
                applied: outcome.applied,
                shard: Some(describe_shard(&shard, stream.layout().info(shard.index))),
            })
        })
        .await
    }

    async fn list_lost_found(
        &self,
        _req: Request<pb::ListLostFoundRequest>,
    ) -> Result<Response<pb::ListLostFoundResponse>, Status> {
        self.unary("ListLostFound", async {
            let catalog = self.catalog.clone();
            let entries = tokio::task::spawn_blocking(move || catalog.lost_found())
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))??;
            Ok(pb::ListLostFoundResponse { entries: entries.into_iter().map(lost_found_entry).collect() })
        })
        .await
    }

    async fn purge_lost_found(
        &self,
        req: Request<pb::PurgeLostFoundRequest>,
    ) -> Result<Response<pb::PurgeLostFoundResponse>, Status> {
        let r = req.into_inner();
        self.unary("PurgeLostFound", async {
            let removed = self.catalog.purge_lost_found(&r.name).await?;
            Ok(pb::PurgeLostFoundResponse { removed: Some(lost_found_entry(removed)) })
        })
        .await
    }
}

fn lost_found_entry(e: crate::catalog::LostFound) -> pb::LostFoundEntry {
    pb::LostFoundEntry {
        name: e.name,
        stream_id: e.stream_id,
        moved_at_ms: e.moved_at_ms,
        bytes: e.bytes,
        shard_ids: e.shards,
    }
}

/// PutRecord has one record, so its field is not `records[0]…`.
fn unprefix(e: BrokerError) -> BrokerError {
    match e {
        BrokerError::InvalidArgument { field, reason } => BrokerError::InvalidArgument {
            field: field.strip_prefix("records[0].").map(str::to_string).unwrap_or(field),
            reason,
        },
        other => other,
    }
}
