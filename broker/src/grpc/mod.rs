//! The gRPC edge: converts `proto` messages to [`crate::service`] calls and
//! their results back. Every rule (validation, routing, quotas) lives in the
//! service; this module only maps fields, and errors become statuses only in
//! [`status`].

pub mod access;
pub mod groups;
pub mod message_limit;
pub mod status;

use std::pin::Pin;
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::stream_broker_server::StreamBroker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::{CreateStream, QuotaUpdate, Stream as BrokerStream};
use crate::config::DurabilityMode;
use crate::error::{BrokerError, Result};
use crate::metadata::{ReshardTarget, ShardMeta, ShardState, StreamStatus};
use crate::service::{
    self, IteratorKind, PendingPut, PutEntry, PutRecordsResult, Service, StartingPosition, SubscribeEvent,
};
use crate::shard::{FailureKind, RepairAction, Shard, shard_id};
use status::to_status;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcService {
    service: Service,
    /// When this edge was made: the broker's start, for DescribeBroker.
    started_at_ms: u64,
}

impl GrpcService {
    /// The gRPC edge of `service`.
    pub fn new(service: Service) -> Self {
        let started_at_ms = service.catalog().clock().now_ms();
        Self { service, started_at_ms }
    }

    async fn unary<T>(&self, name: &'static str, f: impl Future<Output = Result<T>>) -> Result<Response<T>, Status> {
        unary(name, self.service.request_timeout(), f).await
    }
}

/// Runs a unary handler under a deadline, with its latency and errors in
/// the metrics, and maps the outcome to a response or a status.
pub(crate) async fn unary<T>(
    name: &'static str,
    deadline: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    service::call(name, deadline, f).await.map(Response::new).map_err(to_status)
}

/// A request's iterator type and fields as a starting position; an unknown
/// type is rejected naming `iterator_type`.
fn starting_position(kind: i32, sequence_number: Option<u64>, timestamp_ms: Option<u64>) -> Result<StartingPosition> {
    let kind = match pb::IteratorType::try_from(kind) {
        Ok(pb::IteratorType::TrimHorizon) => IteratorKind::TrimHorizon,
        Ok(pb::IteratorType::Latest) => IteratorKind::Latest,
        Ok(pb::IteratorType::AtSequenceNumber) => IteratorKind::AtSequenceNumber,
        Ok(pb::IteratorType::AfterSequenceNumber) => IteratorKind::AfterSequenceNumber,
        Ok(pb::IteratorType::AtTimestamp) => IteratorKind::AtTimestamp,
        _ => return Err(BrokerError::invalid("iterator_type", format!("{kind} is not a known iterator type"))),
    };
    Ok(StartingPosition { kind, sequence_number, timestamp_ms })
}

fn put_entry(e: pb::PutRecordsEntry) -> PutEntry {
    PutEntry { partition_key: e.partition_key, data: e.data, explicit_hash_key: e.explicit_hash_key }
}

fn put_records_response(r: PutRecordsResult) -> pb::PutRecordsResponse {
    pb::PutRecordsResponse {
        failed_record_count: r.failed_record_count,
        records: r
            .records
            .into_iter()
            .map(|entry| match entry {
                Ok(ok) => pb::PutRecordsResultEntry {
                    shard_id: ok.shard_id,
                    sequence_number: ok.sequence_number,
                    ..Default::default()
                },
                Err(f) => pb::PutRecordsResultEntry {
                    error_code: f.kind.error_code().into(),
                    error_message: f.message,
                    retry_after_ms: f.retry_after_ms,
                    ..Default::default()
                },
            })
            .collect(),
    }
}

fn subscribe_event(e: SubscribeEvent) -> pb::SubscribeShardEvent {
    pb::SubscribeShardEvent {
        records: e.records.into_iter().map(to_record).collect(),
        continuation_sequence_number: e.continuation_sequence_number,
        millis_behind_latest: e.millis_behind_latest,
        heartbeat: e.heartbeat,
        resubscribe: e.resubscribe,
        shard_ended: e.shard_ended,
        child_shards: e.child_shards.into_iter().map(child_shard).collect(),
    }
}

fn child_shard(c: service::ChildShard) -> pb::ChildShard {
    pb::ChildShard {
        shard_id: c.shard_id,
        parent_shard_ids: c.parent_shard_ids,
        starting_hash_key: c.starting_hash_key.to_string(),
        ending_hash_key: c.ending_hash_key.to_string(),
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

/// The description of a stream as the API shows it: its kept shards (open
/// and closed) in shard-id order.
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
        Some(ReshardTarget::Scale { target, .. }) => target,
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

pub(crate) fn to_record(r: service::Record) -> pb::Record {
    pb::Record {
        sequence_number: r.sequence_number,
        arrival_timestamp_ms: r.arrival_timestamp_ms,
        partition_key: r.partition_key,
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
                .service
                .create_stream(CreateStream {
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
            Ok(pb::CreateStreamResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
        })
        .await
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let r = req.into_inner();
        self.unary("DeleteStream", async {
            self.service.delete_stream(&r.stream_name).await?;
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
            let stream = self.service.stream(&r.stream_name)?;
            Ok(pb::DescribeStreamResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
        })
        .await
    }

    async fn list_streams(
        &self,
        req: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let r = req.into_inner();
        self.unary("ListStreams", async {
            let limit = (r.limit != 0).then_some(r.limit);
            let (stream_names, has_more_streams) = self.service.list_streams(limit, &r.exclusive_start_stream_name)?;
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
            let stream = self.service.update_retention(&r.stream_name, r.retention_hours).await?;
            Ok(pb::UpdateRetentionResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
        })
        .await
    }

    async fn update_quotas(
        &self,
        req: Request<pb::UpdateQuotasRequest>,
    ) -> Result<Response<pb::UpdateQuotasResponse>, Status> {
        let r = req.into_inner();
        self.unary("UpdateQuotas", async {
            let q = r.quotas.unwrap_or_default();
            let update = QuotaUpdate {
                write_records_per_sec: q.write_records_per_sec,
                write_bytes_per_sec: q.write_bytes_per_sec,
                read_calls_per_sec: q.read_calls_per_sec,
                read_bytes_per_sec: q.read_bytes_per_sec,
            };
            let stream = self.service.update_quotas(&r.stream_name, update).await?;
            Ok(pb::UpdateQuotasResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
        })
        .await
    }

    async fn split_shard(
        &self,
        req: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        let r = req.into_inner();
        self.unary("SplitShard", async {
            let stream = self.service.split_shard(&r.stream_name, &r.shard_id, &r.new_starting_hash_key).await?;
            Ok(pb::SplitShardResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
        })
        .await
    }

    async fn merge_shards(
        &self,
        req: Request<pb::MergeShardsRequest>,
    ) -> Result<Response<pb::MergeShardsResponse>, Status> {
        let r = req.into_inner();
        self.unary("MergeShards", async {
            let stream = self.service.merge_shards(&r.stream_name, &r.shard_id, &r.adjacent_shard_id).await?;
            Ok(pb::MergeShardsResponse { stream: Some(describe(&stream, self.service.catalog().config())) })
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
            let scaled = self.service.update_shard_count(&r.stream_name, r.target_shard_count).await?;
            Ok(pb::UpdateShardCountResponse {
                current_shard_count: scaled.from,
                target_shard_count: scaled.target,
                stream: Some(describe(&scaled.stream, self.service.catalog().config())),
            })
        })
        .await
    }

    async fn put_record(&self, req: Request<pb::PutRecordRequest>) -> Result<Response<pb::PutRecordResponse>, Status> {
        let r = req.into_inner();
        self.unary("PutRecord", async {
            let entry =
                PutEntry { partition_key: r.partition_key, data: r.data, explicit_hash_key: r.explicit_hash_key };
            let put = self.service.put_record(&r.stream_name, entry).await?;
            Ok(pb::PutRecordResponse { shard_id: put.shard_id, sequence_number: put.sequence_number })
        })
        .await
    }

    async fn put_records(
        &self,
        req: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let r = req.into_inner();
        self.unary("PutRecords", async {
            let entries = r.records.into_iter().map(put_entry).collect();
            Ok(put_records_response(self.service.put_records(&r.stream_name, entries).await?))
        })
        .await
    }

    type ProduceStream = EventStream<pb::ProduceResponse>;

    async fn produce(
        &self,
        req: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = req.into_inner();
        let limits = &self.service.catalog().config().limits;
        let in_flight = limits.produce_stream_in_flight;
        let (out_tx, out_rx) = mpsc::channel(in_flight);
        let message_max = limits.grpc_max_message_bytes;
        // Err: the inbound stream failed (a message that does not decode or is too large).
        let (pending_tx, mut pending_rx) = mpsc::channel::<Result<(u64, Result<PendingPut>), Status>>(in_flight);
        let svc = self.service.clone();
        // Each batch is authorized as it is submitted; between batches the
        // caller's credential is checked every auth.recheck_interval_ms, so a
        // revoked token ends an idle stream too.
        let caller = crate::auth::current();
        // Reader: queues each batch in arrival order, so acks for one shard follow request order.
        tokio::spawn(crate::auth::scope(caller.clone(), async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = svc.shutdown().cancelled() => break,
                    lost = svc.auth().watch(&caller, &[]) => {
                        let _ = pending_tx.send(Err(to_status(lost))).await;
                        break;
                    }
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
                let entries = batch.records.into_iter().map(put_entry).collect();
                let pending = svc.submit_put(&batch.stream_name, entries).await;
                if pending_tx.send(Ok((req.batch_id, pending))).await.is_err() {
                    break;
                }
            }
        }));
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
                    Ok(p) => pb::ProduceResponse {
                        batch_id,
                        result: Some(put_records_response(p.wait().await)),
                        ..Default::default()
                    },
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
            let start = starting_position(r.iterator_type, r.starting_sequence_number, r.timestamp_ms)?;
            let shard_iterator = self.service.get_shard_iterator(&r.stream_name, &r.shard_id, start).await?;
            Ok(pb::GetShardIteratorResponse { shard_iterator })
        })
        .await
    }

    async fn get_records(
        &self,
        req: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<pb::GetRecordsResponse>, Status> {
        let r = req.into_inner();
        self.unary("GetRecords", async {
            let limit = (r.limit != 0).then_some(r.limit);
            let got = self.service.get_records(&r.shard_iterator, limit).await?;
            Ok(pb::GetRecordsResponse {
                records: got.records.into_iter().map(to_record).collect(),
                next_shard_iterator: got.next_shard_iterator.unwrap_or_default(),
                millis_behind_latest: got.millis_behind_latest,
                child_shards: got.child_shards.into_iter().map(child_shard).collect(),
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
        let setup = async {
            let start = starting_position(r.starting_position, r.starting_sequence_number, r.timestamp_ms)?;
            self.service.subscribe(&r.stream_name, &r.shard_id, start).await
        };
        let events = setup.await.map_err(to_status)?;
        let events = ReceiverStream::new(events).map(|e| e.map(subscribe_event).map_err(to_status));
        Ok(Response::new(Box::pin(events)))
    }

    async fn repair_shard(
        &self,
        req: Request<pb::RepairShardRequest>,
    ) -> Result<Response<pb::RepairShardResponse>, Status> {
        let r = req.into_inner();
        self.unary("RepairShard", async {
            let repaired = self.service.repair_shard(&r.stream_name, &r.shard_id, r.confirm).await?;
            let plan = repaired.outcome.plan;
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
                applied: repaired.outcome.applied,
                shard: Some(describe_shard(&repaired.shard, repaired.info.as_ref())),
            })
        })
        .await
    }

    async fn list_lost_found(
        &self,
        _req: Request<pb::ListLostFoundRequest>,
    ) -> Result<Response<pb::ListLostFoundResponse>, Status> {
        self.unary("ListLostFound", async {
            let entries = self.service.lost_found().await?;
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
            let removed = self.service.purge_lost_found(&r.name).await?;
            Ok(pb::PurgeLostFoundResponse { removed: Some(lost_found_entry(removed)) })
        })
        .await
    }

    async fn describe_broker(
        &self,
        _req: Request<pb::DescribeBrokerRequest>,
    ) -> Result<Response<pb::DescribeBrokerResponse>, Status> {
        self.unary("DescribeBroker", async {
            // The same facts as /metrics (disk, stream count, problems).
            self.service
                .authorize(crate::auth::policy::Action::AdminMetrics, &crate::auth::policy::Resource::Cluster)?;
            let catalog = self.service.catalog();
            let config = catalog.config();
            let disk = catalog.disk().last();
            Ok(pb::DescribeBrokerResponse {
                version: env!("CARGO_PKG_VERSION").into(),
                durability: durability_of(config.durability.mode) as i32,
                durability_interval_ms: config.durability.interval_ms,
                stream_count: u32::try_from(catalog.all().len()).unwrap_or(u32::MAX),
                problems: crate::http::problems(catalog),
                disk_free_bytes: disk.free_bytes,
                disk_watermark_bytes: disk.watermark_bytes,
                started_at_ms: self.started_at_ms,
            })
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
