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

use std::collections::HashMap;
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

use crate::auth::Auth;
use crate::auth::policy::{Action, Resource};
use crate::catalog::{Catalog, CreateStream, Layout, Stream};
use crate::error::{BrokerError, Result};
use crate::group::GroupManager;
use crate::iterator::IteratorSigner;
use crate::metadata::{ShardState, StreamMode};
use crate::shard::{Shard, shard_id};

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

/// A shard made from another by a split or merge, as the end of a closed
/// shard names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildShard {
    /// `shardId-NNNNNNNNNNNN`.
    pub shard_id: String,
    /// Its parents' ids (one for a split, two for a merge).
    pub parent_shard_ids: Vec<String>,
    /// First hash key it owns.
    pub starting_hash_key: u128,
    /// Last hash key it owns.
    pub ending_hash_key: u128,
}

/// The shards made from shard `index` of `layout`.
pub fn child_shards(layout: &Layout, index: u32) -> Vec<ChildShard> {
    layout
        .children(index)
        .into_iter()
        .map(|c| ChildShard {
            shard_id: shard_id(c.index),
            parent_shard_ids: c.parents().map(shard_id).collect(),
            starting_hash_key: c.starting_hash_key,
            ending_hash_key: c.ending_hash_key,
        })
        .collect()
}

/// The answer of a GetRecords call.
#[derive(Debug, Clone)]
pub struct GetRecordsResult {
    /// The records, in sequence order.
    pub records: Vec<Record>,
    /// A fresh iterator at the next record; `None` once the records reach
    /// the end of a closed shard (then `child_shards` says where to go on).
    pub next_shard_iterator: Option<String>,
    /// At the end of a closed shard: its children. Empty otherwise.
    pub child_shards: Vec<ChildShard>,
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
    /// A closed shard's end: the sequence number after its last record.
    pub ending_seq: Option<u64>,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When a split or merge closed it.
    pub closed_at_ms: Option<u64>,
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
    /// Counts stored attribute changes (see [`Service::attributes_counter`]).
    attributes_version: Arc<std::sync::atomic::AtomicU64>,
    subscriptions: Arc<subscribe::ConsumerSubscriptions>,
    /// Per-stream facts and metric handles the put path needs on every call.
    puts: Arc<put::PutStreams>,
    /// Who may do what; every public operation asks it first.
    auth: Arc<Auth>,
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
            attributes_version: Arc::default(),
            subscriptions: Arc::default(),
            puts: Arc::default(),
            auth: Auth::disabled(),
        }
    }

    /// The service with `auth` deciding who may do what (without it, every
    /// caller may do everything).
    pub fn with_auth(mut self, auth: Arc<Auth>) -> Self {
        self.auth = auth;
        self
    }

    /// Who may do what.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// Whether the caller of the current request ([`crate::auth::current`])
    /// may do `action` on `resource`. Every operation of this layer calls
    /// it before it looks anything up, so a refused caller learns nothing
    /// about what exists.
    pub fn authorize(&self, action: Action, resource: &Resource) -> Result<()> {
        self.auth.authorize(&crate::auth::current(), action, resource)
    }

    /// Runs `work` (a long wait) until it ends or the current caller loses
    /// any of `checks`, checked every `auth.recheck_interval_ms`.
    pub async fn guarded<T>(&self, checks: &[(Action, Resource)], work: impl Future<Output = Result<T>>) -> Result<T> {
        let caller = crate::auth::current();
        tokio::select! {
            r = work => r,
            e = self.auth.watch(&caller, checks) => Err(e),
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

    /// The kept (open or closed) shard `shard_id` of `stream`.
    pub fn shard_of(stream: &Stream, shard_id: &str) -> Result<Arc<Shard>> {
        stream.shard_by_id("shard_id", shard_id)
    }

    /// Every kept (open or closed) shard of `stream`, in index order.
    pub fn shards(stream: &Stream) -> Vec<ShardView> {
        let layout = stream.layout();
        layout
            .tree()
            .iter()
            .filter(|m| m.is_kept())
            .map(|m| {
                let stats = layout.shard(m.index).and_then(|s| s.stats()).unwrap_or_default();
                let (ending_seq, closed_at_ms) = match m.state {
                    ShardState::Closed { ending_seq, closed_at_ms } => (Some(ending_seq), Some(closed_at_ms)),
                    _ => (None, None),
                };
                ShardView {
                    index: m.index,
                    shard_id: shard_id(m.index),
                    hash_range: (m.starting_hash_key, m.ending_hash_key),
                    parent: m.parent,
                    adjacent_parent: m.adjacent_parent,
                    first_seq: stats.first_seq,
                    next_seq: stats.next_seq,
                    ending_seq,
                    created_at_ms: m.created_at_ms,
                    closed_at_ms,
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
    let result = within(name, deadline, f).await;
    record_call(name, started, result.is_err());
    result
}

/// `f`, or `Unavailable` naming `name` once `deadline` has passed.
pub(crate) async fn within<T>(name: &str, deadline: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(deadline, f).await.unwrap_or_else(|_| {
        Err(BrokerError::Unavailable(format!("{name} exceeded the {} ms deadline", deadline.as_millis())))
    })
}

/// A call of `name` that started at `started` ended now: its latency and,
/// when it `failed`, its error in the metrics.
pub(crate) fn record_call(name: &'static str, started: std::time::Instant, failed: bool) {
    duration_histogram(name).record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!("stream_broker_request_errors_total", "method" => name).increment(1);
    }
}

/// The request-duration histogram of a method. Handles are looked up in the
/// recorder once per method, not on every call (a registry lookup per call
/// showed in the per-call profile).
fn duration_histogram(name: &'static str) -> metrics::Histogram {
    static HANDLES: std::sync::OnceLock<std::sync::RwLock<HashMap<&'static str, metrics::Histogram>>> =
        std::sync::OnceLock::new();
    let handles = HANDLES.get_or_init(Default::default);
    if let Some(h) = handles.read().unwrap_or_else(|e| e.into_inner()).get(name) {
        return h.clone();
    }
    let h = metrics::histogram!("stream_broker_request_duration_seconds", "method" => name);
    handles.write().unwrap_or_else(|e| e.into_inner()).insert(name, h.clone());
    h
}

/// Checks a partition key's length in characters.
fn validate_partition_key(key: &str) -> std::result::Result<(), String> {
    let chars = key.chars().count();
    if PARTITION_KEY_CHARS.contains(&chars) { Ok(()) } else { Err(format!("must be 1..=256 characters, got {chars}")) }
}
