//! The broker's service layer: every rule of the data path and the control
//! plane, independent of any wire format. The gRPC edge (`grpc`) and the
//! Kinesis HTTP edge (`kinesis`) only decode their requests into the types
//! of this module, call [`Service`], and encode what it returns; neither
//! edge calls the other, and no limit, validation or quota is written
//! outside this layer (and the catalogue and shards below it).
//!
//! Invariants kept here:
//! - **Validation names the field** with the proto's snake_case path
//!   (`records[3].partition_key`); an edge may render the path in its own
//!   spelling but never re-checks the value.
//! - **Routing is Kinesis's** (MD5 of the partition key, or the explicit
//!   hash key, into the stream's hash ranges; see [`crate::routing`]).
//! - **Quotas are charged once per record or read**, before a write is
//!   queued and after a read returns, on the shard's token buckets.
//! - **Order.** Records of one shard in one batch are acknowledged in
//!   request order: once a shard throttles a record, its later records in
//!   the same batch are throttled too.
//! - **No storage type leaves this layer**: edges see [`Record`],
//!   [`PutRecordResult`] and [`crate::BrokerError`], never `shardlog` types.
//!
//! Errors are [`crate::BrokerError`], the broker's one error enum, which
//! carries no transport meaning; each edge maps it in one module.

mod attributes;
mod control;
mod put;
mod read;
mod subscribe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use attributes::{
    CONSUMERS_CREATING_MAX, CONSUMERS_PER_STREAM_MAX, CommitmentStatus, ConsumerStatus, MonitoringChange,
    ON_DEMAND_SHARD_COUNT, SHARD_LEVEL_METRICS, TAGS_MAX, validate_consumer_name, validate_tags,
};
pub use control::{CommitCheckpoint, GroupBatch, GroupPolled, LIST_STREAMS_LIMIT_MAX, PollRequest, RepairResult};
pub use put::{PendingPut, PutRecordsResult, RecordFailure, RecordFailureKind};
pub use subscribe::{BufferBudget, SubscribeEvent, Subscription, TAKEOVER_AFTER_MS};

use crate::catalog::{Catalog, CreateStream, Stream};
use crate::error::{BrokerError, Result};
use crate::group::GroupManager;
use crate::iterator::IteratorSigner;
use crate::metadata::StreamMode;
use crate::shard::{Shard, parse_shard_id};

/// Most records in one PutRecords request.
pub const PUT_RECORDS_MAX: usize = 500;
/// Most key + data bytes in one PutRecords request.
pub const PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Most records one GetRecords call returns.
pub const GET_RECORDS_LIMIT_MAX: u32 = 10_000;
/// Most key + data bytes one GetRecords call returns.
pub const GET_RECORDS_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Partition keys are 1..=256 Unicode characters.
pub const PARTITION_KEY_CHARS: std::ops::RangeInclusive<usize> = 1..=256;
/// Longest long-poll of a consumer group poll.
pub const POLL_WAIT_MS_MAX: u64 = 30_000;

/// A record to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutEntry {
    /// 1..=256 Unicode characters; routes the record unless
    /// `explicit_hash_key` is given.
    pub partition_key: String,
    /// The payload.
    pub data: Bytes,
    /// A decimal hash key in `[0, 2^128)` that replaces the key's MD5.
    pub explicit_hash_key: Option<String>,
}

/// Where one put record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecordResult {
    /// The shard's index in its stream.
    pub shard: u32,
    /// The shard's id, `shardId-NNNNNNNNNNNN`.
    pub shard_id: String,
    /// The record's sequence number in its shard.
    pub sequence_number: u64,
}

/// A stored record as both edges show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number in its shard.
    pub sequence_number: u64,
    /// Arrival time, ms since the Unix epoch.
    pub arrival_timestamp_ms: u64,
    /// The partition key.
    pub partition_key: String,
    /// The payload.
    pub data: Bytes,
}

impl From<shardlog::Record> for Record {
    fn from(r: shardlog::Record) -> Self {
        Self {
            sequence_number: r.seq,
            arrival_timestamp_ms: r.timestamp_ms,
            // Keys were checked as UTF-8 on the way in and are CRC-protected on disk.
            partition_key: String::from_utf8_lossy(&r.partition_key).into_owned(),
            data: r.data,
        }
    }
}

/// The kinds of starting position of an iterator or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IteratorKind {
    /// The oldest stored record.
    TrimHorizon,
    /// After the newest record.
    Latest,
    /// At `sequence_number`.
    AtSequenceNumber,
    /// Just after `sequence_number`.
    AfterSequenceNumber,
    /// The first record that arrived at or after `timestamp_ms`.
    AtTimestamp,
}

/// Where an iterator or a subscription starts, as a request states it;
/// [`Service`] checks that the fields its kind needs are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartingPosition {
    /// The kind.
    pub kind: IteratorKind,
    /// For the sequence-number kinds.
    pub sequence_number: Option<u64>,
    /// For `AtTimestamp`, ms since the Unix epoch.
    pub timestamp_ms: Option<u64>,
}

/// The answer of a GetRecords call.
#[derive(Debug, Clone)]
pub struct GetRecordsResult {
    /// The records, in sequence order.
    pub records: Vec<Record>,
    /// A fresh iterator at the next record.
    pub next_shard_iterator: String,
    /// How far the last returned record is behind the shard's newest, 0 at the end.
    pub millis_behind_latest: u64,
    /// The stream the iterator reads.
    pub stream: Arc<Stream>,
    /// The shard the iterator reads.
    pub shard: u32,
}

/// A CreateStream with the attributes of the Kinesis API.
#[derive(Debug, Clone, Default)]
pub struct CreateStreamWith {
    /// The stream; `shard_count` is replaced for an on-demand stream.
    pub stream: CreateStream,
    /// Provisioned or on-demand.
    pub mode: StreamMode,
    /// Its tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// An on-demand stream's warm throughput target, MiB/s.
    pub warm_throughput_mibps: Option<u32>,
}

/// One shard of a stream as the APIs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    /// Its index in the stream.
    pub index: u32,
    /// `shardId-NNNNNNNNNNNN`.
    pub shard_id: String,
    /// Inclusive hash key range.
    pub hash_range: (u128, u128),
    /// The shard it was split from or merged into it, if any.
    pub parent: Option<u32>,
    /// The other shard of a merge, if any.
    pub adjacent_parent: Option<u32>,
    /// Oldest stored sequence number (0 while the log cannot be read).
    pub first_seq: u64,
    /// The next sequence number to be written.
    pub next_seq: u64,
    /// The last sequence number of a closed shard.
    pub ending_seq: Option<u64>,
}

/// The transport-neutral broker service, shared by every edge.
#[derive(Debug, Clone)]
pub struct Service {
    catalog: Arc<Catalog>,
    groups: Arc<GroupManager>,
    signer: IteratorSigner,
    shutdown: CancellationToken,
    buffers: BufferBudget,
    /// Serialises read-modify-writes of stream attributes and account settings.
    attributes_lock: Arc<tokio::sync::Mutex<()>>,
    subscriptions: Arc<subscribe::ConsumerSubscriptions>,
}

impl Service {
    /// A service over `catalog` and `groups`; streaming calls (produce
    /// streams, subscriptions) end when `shutdown` fires.
    pub fn new(
        catalog: Arc<Catalog>,
        groups: Arc<GroupManager>,
        signer: IteratorSigner,
        shutdown: CancellationToken,
    ) -> Self {
        let limits = &catalog.config().limits;
        let buffers = BufferBudget::new(
            limits.subscription_buffer_bytes_total,
            limits.subscription_buffer_bytes,
            limits.subscription_reads_concurrent,
        );
        Self {
            catalog,
            groups,
            signer,
            shutdown,
            buffers,
            attributes_lock: Arc::default(),
            subscriptions: Arc::default(),
        }
    }

    /// The stream catalogue.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The consumer groups.
    pub fn groups(&self) -> &Arc<GroupManager> {
        &self.groups
    }

    /// Fires when streaming calls must end.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The deadline of a unary call (`limits.request_timeout_ms`).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.catalog.config().limits.request_timeout_ms)
    }

    fn now(&self) -> u64 {
        self.catalog.clock().now_ms()
    }

    /// The shard `shard_id` of `stream`.
    pub fn shard_of(stream: &Stream, shard_id: &str) -> Result<Arc<Shard>> {
        let index = parse_shard_id(shard_id).ok_or_else(|| {
            BrokerError::invalid("shard_id", format!("{shard_id:?} is not of the form shardId-NNNNNNNNNNNN"))
        })?;
        stream
            .shards
            .get(index as usize)
            .cloned()
            .ok_or_else(|| BrokerError::ShardNotFound { stream: stream.meta().name, shard_id: shard_id.to_string() })
    }

    /// Every shard of `stream`, in index order.
    pub fn shards(stream: &Stream) -> Vec<ShardView> {
        stream
            .shards
            .iter()
            .map(|s| {
                let stats = s.stats().unwrap_or_default();
                ShardView {
                    index: s.index,
                    shard_id: s.id.clone(),
                    hash_range: s.hash_range,
                    parent: None,
                    adjacent_parent: None,
                    first_seq: stats.first_seq,
                    next_seq: stats.next_seq,
                    ending_seq: None,
                }
            })
            .collect()
    }
}

/// Runs one unary call under `deadline`, with its latency and errors in the
/// metrics (`stream_broker_request_duration_seconds`,
/// `stream_broker_request_errors_total`, labelled by `method`).
pub async fn call<T>(name: &'static str, deadline: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
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
    result
}

/// Checks a partition key's length in characters.
fn validate_partition_key(key: &str) -> std::result::Result<(), String> {
    let chars = key.chars().count();
    if PARTITION_KEY_CHARS.contains(&chars) { Ok(()) } else { Err(format!("must be 1..=256 characters, got {chars}")) }
}
