//! PutRecord and PutRecords: validation, routing, write quotas, queueing to
//! the shard writers, and the per-record results.
//!
//! A batch is checked whole before anything is queued (count, total bytes,
//! every key and hash key, every record's size), so a bad request changes
//! nothing. Then each record is admitted by its shard's write quota or
//! fails alone; records of a failed shard fail alone with its error; a disk
//! below the free-space watermark refuses the whole call.
//!
//! A batch routes with one layout of its stream (one snapshot, taken once);
//! a shard that a split or merge sealed after that refuses the records
//! queued to it with the retryable `ShardClosed`, so a record lands in the
//! parent before its close or in a child, never in both.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{PUT_RECORDS_BYTES_MAX, PUT_RECORDS_MAX, PutEntry, PutRecordResult, Service, validate_partition_key};
use crate::auth::policy::{Action, Resource};
use crate::catalog::{Stream, validate_stream_name};
use crate::error::{BrokerError, Result};
use crate::routing::{hash_key, parse_explicit_hash_key};
use crate::shard::{NewRecord, shard_id};

/// Why one record of a batch was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFailureKind {
    /// Its shard's write quota was exhausted; retry after the hint.
    Throttled,
    /// The disk is below its free-space watermark; retry after the hint.
    DiskFull,
    /// Its shard is failed and needs an operator.
    ShardFailed,
    /// A split or merge closed the shard it was routed to while it was
    /// queued; retry: it routes to a child.
    ShardClosed,
    /// Its shard's writer failed the batch for another reason.
    ShardUnavailable,
}

impl RecordFailureKind {
    /// The code both edges answer with (Kinesis's `ErrorCode` where it has one).
    pub fn error_code(self) -> &'static str {
        match self {
            RecordFailureKind::Throttled => "ProvisionedThroughputExceeded",
            RecordFailureKind::DiskFull => "DiskFull",
            RecordFailureKind::ShardFailed => "ShardFailed",
            RecordFailureKind::ShardClosed => "ShardClosed",
            RecordFailureKind::ShardUnavailable => "ShardUnavailable",
        }
    }
}

/// One record of a batch that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// Why.
    pub kind: RecordFailureKind,
    /// A message naming the shard.
    pub message: String,
    /// When a retry can succeed (throttled records; 0 otherwise).
    pub retry_after_ms: u64,
}

/// The per-record results of a PutRecords call, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecordsResult {
    /// How many records failed.
    pub failed_record_count: u32,
    /// One result per request record, in request order.
    pub records: Vec<std::result::Result<PutRecordResult, RecordFailure>>,
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

/// What the put path needs of a stream on every call, kept so a call does
/// not clone the stream's definition or look its counters up in the
/// metrics registry (both showed in the per-call profile).
#[derive(Debug, Clone)]
struct PutStream {
    /// The stream these facts are of: a stream deleted and created again
    /// under the same name is another `Arc` (a held `Weak` keeps the old
    /// allocation, so the address cannot be reused).
    stream: Weak<Stream>,
    max_record_bytes: u32,
    bytes_in: metrics::Counter,
    records_in: metrics::Counter,
    throttled: metrics::Counter,
}

/// [`PutStream`]s by stream name.
#[derive(Debug, Default)]
pub(super) struct PutStreams(RwLock<HashMap<String, PutStream>>);

impl PutStreams {
    fn get(&self, stream: &Arc<Stream>, name: &str) -> PutStream {
        let cached = self.0.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some(p) = cached.filter(|p| std::ptr::eq(p.stream.as_ptr(), Arc::as_ptr(stream))) {
            return p;
        }
        let meta = stream.meta();
        let labels = [("stream", meta.name.clone())];
        let p = PutStream {
            stream: Arc::downgrade(stream),
            max_record_bytes: meta.max_record_bytes,
            bytes_in: metrics::counter!("stream_broker_bytes_in_total", &labels),
            records_in: metrics::counter!("stream_broker_records_in_total", &labels),
            throttled: metrics::counter!("stream_broker_throttled_records_total", &labels),
        };
        let mut all = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Streams come and go; forget the deleted ones whenever a new one is cached.
        all.retain(|_, p| p.stream.strong_count() > 0);
        all.insert(name.to_string(), p.clone());
        p
    }
}

/// A PutRecords batch whose shard batches are queued; [`PendingPut::wait`]
/// waits for their acknowledgements. Queueing and waiting are split so a
/// produce stream can queue its next batch while this one commits.
pub struct PendingPut {
    records_in: metrics::Counter,
    outcome: Vec<Outcome>,
    acks: HashMap<u32, oneshot::Receiver<Result<shardlog::Appended>>>,
    refusals: HashMap<u32, BrokerError>,
}

impl std::fmt::Debug for PendingPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPut").field("records", &self.outcome.len()).finish_non_exhaustive()
    }
}

/// The per-record failure of a shard's error.
fn record_failure(e: &BrokerError) -> RecordFailure {
    let kind = match e {
        BrokerError::DiskFull { .. } => RecordFailureKind::DiskFull,
        BrokerError::ShardFailed { .. } => RecordFailureKind::ShardFailed,
        BrokerError::ShardClosed { .. } => RecordFailureKind::ShardClosed,
        _ => RecordFailureKind::ShardUnavailable,
    };
    // The message of a disk-full error carries its own retry hint.
    RecordFailure { kind, message: e.to_string(), retry_after_ms: 0 }
}

impl Service {
    /// Validates, routes, applies quotas and queues a PutRecords batch.
    /// Records over quota fail alone; once a shard throttles a record, its
    /// later records in the same batch are throttled too, which keeps each
    /// shard's accepted records in request order. Records routed to a failed
    /// shard fail alone with its error; a disk below the free-space
    /// watermark refuses the whole call.
    pub async fn submit_put(&self, stream_name: &str, entries: Vec<PutEntry>) -> Result<PendingPut> {
        self.authorize(Action::RecordPut, &Resource::stream(stream_name))?;
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
        let facts = self.puts.get(&stream, stream_name);
        let layout = stream.layout();
        let mut routed = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            validate_partition_key(&e.partition_key)
                .map_err(|r| BrokerError::invalid(format!("records[{i}].partition_key"), r))?;
            let size = e.partition_key.len() + e.data.len();
            if size > facts.max_record_bytes as usize {
                return Err(BrokerError::invalid(
                    format!("records[{i}].data"),
                    format!("record is {size} bytes (key + data), more than the stream's {}", facts.max_record_bytes),
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
        // Whether each shard of the batch refuses writes, asked once per shard.
        let mut refusing: HashMap<u32, bool> = HashMap::new();
        let (mut bytes_in, mut throttled) = (0u64, 0u64);
        for (e, (shard, size)) in entries.into_iter().zip(routed) {
            let target = layout.shard(shard).ok_or_else(|| BrokerError::Internal("a route to no shard".into()))?;
            let refused = *refusing.entry(shard).or_insert_with(|| match target.write_refusal() {
                Some(refusal) => {
                    refusals.insert(shard, refusal);
                    true
                }
                None => false,
            });
            if refused {
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
        facts.bytes_in.increment(bytes_in);
        if throttled > 0 {
            facts.throttled.increment(throttled);
        }
        Ok(PendingPut { records_in: facts.records_in, outcome, acks, refusals })
    }

    /// PutRecords: queues the batch and waits for its per-record results.
    pub async fn put_records(&self, stream_name: &str, entries: Vec<PutEntry>) -> Result<PutRecordsResult> {
        Ok(self.submit_put(stream_name, entries).await?.wait().await)
    }

    /// PutRecord: one record, whose failure is the call's error. Fields are
    /// named without the `records[0].` prefix of a batch.
    pub async fn put_record(&self, stream_name: &str, entry: PutEntry) -> Result<PutRecordResult> {
        self.submit_put_record(stream_name, entry).await?.wait_one().await
    }

    /// PutRecord's queueing half; [`PendingPut::wait_one`] waits for it.
    pub async fn submit_put_record(&self, stream_name: &str, entry: PutEntry) -> Result<PendingPut> {
        self.submit_put(stream_name, vec![entry]).await.map_err(unprefix)
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

impl PendingPut {
    /// Waits for the one record of a PutRecord: where it landed, or the
    /// error its shard answered with.
    pub async fn wait_one(mut self) -> Result<PutRecordResult> {
        match self.outcome.pop() {
            Some(Outcome::Queued { shard, offset }) => {
                let ack = self.acks.remove(&shard).ok_or_else(|| BrokerError::Internal("no ack".into()))?;
                let a = ack.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("shard writer stopped".into())))?;
                self.records_in.increment(1);
                Ok(PutRecordResult { shard, shard_id: shard_id(shard), sequence_number: a.first_seq + offset })
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
    pub async fn wait(self) -> PutRecordsResult {
        let mut appended = HashMap::with_capacity(self.acks.len());
        for (shard, ack) in self.acks {
            let r = ack.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("shard writer stopped".into())));
            appended.insert(shard, r);
        }
        let mut resp = PutRecordsResult { failed_record_count: 0, records: Vec::with_capacity(self.outcome.len()) };
        let mut records_in = 0u64;
        // Each shard's id is formatted once per batch, not once per record.
        let mut ids: HashMap<u32, String> = HashMap::with_capacity(appended.len());
        for o in self.outcome {
            let entry = match o {
                Outcome::Queued { shard, offset } => match &appended[&shard] {
                    Ok(a) => {
                        records_in += 1;
                        let shard_id = ids.entry(shard).or_insert_with(|| shard_id(shard)).clone();
                        Ok(PutRecordResult { shard, shard_id, sequence_number: a.first_seq + offset })
                    }
                    Err(e) => Err(record_failure(e)),
                },
                Outcome::Refused { shard } => Err(record_failure(&self.refusals[&shard])),
                Outcome::Throttled { shard, retry_after_ms } => Err(RecordFailure {
                    kind: RecordFailureKind::Throttled,
                    message: format!("write quota of {} exceeded; retry after {retry_after_ms} ms", shard_id(shard)),
                    retry_after_ms,
                }),
            };
            if entry.is_err() {
                resp.failed_record_count += 1;
            }
            resp.records.push(entry);
        }
        self.records_in.increment(records_in);
        resp
    }
}
