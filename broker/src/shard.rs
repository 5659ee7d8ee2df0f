//! One shard: the single writer of its log, and its read side.
//!
//! **Group commit.** Each shard has one writer thread (a plain OS thread:
//! `fdatasync` never runs on a tokio worker) fed by a bounded queue. The
//! writer takes the first queued request, drains whatever else is queued (up
//! to `limits.group_commit_max_requests`), appends each as its own atomic
//! batch, then commits once: in `always` mode one `fdatasync` covers them
//! all. Only after the commit returns are the requests acknowledged and the
//! new end published to readers. While one fsync runs, the next group
//! queues up; the slower the disk, the larger the groups.
//!
//! **Failure.** If a write or fsync fails, the log is poisoned: every
//! request of that group and every later one gets `ShardReadOnly`, nothing
//! is acknowledged, and the shard reports itself unwritable until restart
//! (never retry an fsync and then acknowledge).
//!
//! **Order.** Requests are appended in queue order, so two requests from one
//! producer to one shard keep their order when the second is submitted after
//! the first was queued.
//!
//! **`interval` and `never`.** A commit only publishes (`write`, no
//! `fdatasync`). In `interval` mode the writer itself checks, at every
//! commit, whether `durability.interval_ms` has passed on the injected clock
//! since its last `fdatasync` and syncs then, so a full queue cannot delay
//! the sync; a ticker only wakes an idle writer that holds unsynced records
//! (its wake-up may be dropped when the queue is full: a full queue means the
//! writer is about to commit and check anyway). `never` syncs at segment
//! roll and at close only.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use shardlog::{Appended, LogReader, RecordRef, ShardLog, Trimmed};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::DurabilityMode;
use crate::error::{BrokerError, Result};
use crate::quota::ShardQuota;

/// Kinesis-style shard id for shard `index`.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses a shard id made by [`shard_id`].
pub fn parse_shard_id(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("shardId-")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// A record to append: partition key and data.
pub type NewRecord = (Bytes, Bytes);

enum WriteOp {
    Append {
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    /// Wakes an idle writer so that it checks its `interval` deadline.
    Tick,
    Trim {
        cutoff_ms: u64,
        reply: oneshot::Sender<Result<Trimmed>>,
    },
    Close,
}

/// Whether the shard still accepts writes.
#[derive(Debug, Default)]
pub struct ShardHealth {
    write_error: Mutex<Option<String>>,
}

impl ShardHealth {
    /// The failure that made the shard read-only, if any.
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn fail(&self, cause: String) {
        self.write_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(cause);
    }
}

/// Everything a shard needs to open.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// The stream's name (for metrics and logs).
    pub stream: String,
    /// Shard index in its stream.
    pub index: u32,
    /// Inclusive hash key range.
    pub hash_range: (u128, u128),
    /// Storage settings.
    pub log_config: shardlog::Config,
    /// When acknowledged means durable.
    pub durability: DurabilityMode,
    /// fsync period in `interval` mode.
    pub interval_ms: u64,
    /// Queue depth before producers wait.
    pub queue_depth: usize,
    /// Most requests per group commit.
    pub group_max: usize,
}

/// One open shard.
#[derive(Debug)]
pub struct Shard {
    /// Index in the stream.
    pub index: u32,
    /// `shardId-…`.
    pub id: String,
    /// Inclusive hash key range.
    pub hash_range: (u128, u128),
    /// Quota buckets.
    pub quota: ShardQuota,
    /// Write health.
    pub health: Arc<ShardHealth>,
    reader: LogReader,
    queue: mpsc::Sender<WriteOp>,
    visible: watch::Receiver<u64>,
    subscribers: AtomicUsize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteOp::Append { .. } => "Append",
            WriteOp::Tick => "Tick",
            WriteOp::Trim { .. } => "Trim",
            WriteOp::Close => "Close",
        })
    }
}

impl Shard {
    /// Opens (recovering) the shard's log in `dir` and starts its writer.
    /// Blocking: call from a blocking context.
    pub fn open(
        dir: &Path,
        spec: ShardSpec,
        quota: ShardQuota,
        clock: Arc<dyn Clock>,
        io: Arc<dyn shardlog::io::Io>,
    ) -> Result<Self> {
        let log = ShardLog::open_with_io(dir, spec.log_config.clone(), io)?;
        let report = log.recovery_report();
        if !report.is_clean() {
            tracing::warn!(stream = %spec.stream, shard = spec.index, ?report, "shard log recovered");
        }
        let reader = log.reader();
        let (visible_tx, visible) = watch::channel(reader.next_seq());
        let (queue, rx) = mpsc::channel(spec.queue_depth);
        let health = Arc::new(ShardHealth::default());
        let id = shard_id(spec.index);
        let synced_at_ms = clock.now_ms();
        let writer = Writer {
            shard_id: id.clone(),
            log,
            rx,
            visible_tx,
            health: health.clone(),
            clock,
            mode: spec.durability,
            interval_ms: spec.interval_ms,
            synced_at_ms,
            unsynced: false,
            group_max: spec.group_max,
            metrics: WriterMetrics::new(&spec.stream, &id),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-writer-{}", spec.index))
            .spawn(move || writer.run())
            .map_err(|e| BrokerError::Io { context: "spawn shard writer".into(), source: e })?;
        if spec.durability == DurabilityMode::Interval {
            spawn_ticker(queue.clone(), spec.interval_ms);
        }
        Ok(Self {
            index: spec.index,
            id,
            hash_range: spec.hash_range,
            quota,
            health,
            reader,
            queue,
            visible,
            subscribers: AtomicUsize::new(0),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues a batch for the writer; the receiver yields the acknowledgement
    /// once the batch is committed. Waits while the queue is full.
    pub async fn submit(&self, records: Vec<NewRecord>) -> Result<oneshot::Receiver<Result<Appended>>> {
        let (reply, ack) = oneshot::channel();
        self.queue.send(WriteOp::Append { records, reply }).await.map_err(|_| self.gone())?;
        Ok(ack)
    }

    /// Appends a batch and waits for its acknowledgement.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Appended> {
        let ack = self.submit(records).await?;
        ack.await.map_err(|_| self.gone())?
    }

    /// Retention: asks the writer to delete sealed segments older than `cutoff_ms`.
    pub async fn trim(&self, cutoff_ms: u64) -> Result<Trimmed> {
        let (reply, rx) = oneshot::channel();
        self.queue.send(WriteOp::Trim { cutoff_ms, reply }).await.map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Reads committed records.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Watches the end of the committed log.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.visible.clone()
    }

    /// Takes a subscriber slot if fewer than `max` are taken.
    pub fn try_add_subscriber(self: &Arc<Self>, max: usize) -> Option<SubscriberSlot> {
        let taken =
            self.subscribers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_ok();
        taken.then(|| SubscriberSlot(self.clone()))
    }

    /// Stops the writer after it has committed everything queued before,
    /// and syncs the log. Blocking.
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // If the queue is full this waits for room: every queued request is served first.
            let _ = self.queue.blocking_send(WriteOp::Close);
            if handle.join().is_err() {
                tracing::error!(shard = %self.id, "shard writer panicked");
            }
        }
    }

    fn gone(&self) -> BrokerError {
        match self.health.write_error() {
            Some(cause) => BrokerError::ShardReadOnly { shard_id: self.id.clone(), cause },
            None => BrokerError::Unavailable(format!("shard {} is closed", self.id)),
        }
    }
}

/// A taken subscriber slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SubscriberSlot(Arc<Shard>);

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// In `interval` mode, wakes the writer every `interval_ms` until it stops,
/// so that records acknowledged just before the shard went idle are synced.
fn spawn_ticker(queue: mpsc::Sender<WriteOp>, interval_ms: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A full queue means the writer is busy: it checks its deadline at its next commit.
            match queue.try_send(WriteOp::Tick) {
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
    });
}

#[derive(Debug)]
struct WriterMetrics {
    fsync_seconds: metrics::Histogram,
    group_requests: metrics::Histogram,
    next_sequence: metrics::Gauge,
    writable: metrics::Gauge,
}

impl WriterMetrics {
    fn new(stream: &str, shard: &str) -> Self {
        let labels = [("stream", stream.to_string()), ("shard", shard.to_string())];
        Self {
            fsync_seconds: metrics::histogram!("stream_broker_fsync_seconds"),
            group_requests: metrics::histogram!("stream_broker_group_commit_requests"),
            next_sequence: metrics::gauge!("stream_broker_shard_next_sequence", &labels),
            writable: metrics::gauge!("stream_broker_shard_writable", &labels),
        }
    }
}

struct Writer {
    shard_id: String,
    log: ShardLog,
    rx: mpsc::Receiver<WriteOp>,
    visible_tx: watch::Sender<u64>,
    health: Arc<ShardHealth>,
    clock: Arc<dyn Clock>,
    mode: DurabilityMode,
    interval_ms: u64,
    /// Clock time of the last `fdatasync` (or of the open).
    synced_at_ms: u64,
    /// Whether records were published since the last `fdatasync`.
    unsynced: bool,
    group_max: usize,
    metrics: WriterMetrics,
}

impl Writer {
    fn run(mut self) {
        self.metrics.writable.set(1.0);
        self.metrics.next_sequence.set(self.log.next_seq() as f64);
        let mut group = Vec::with_capacity(self.group_max);
        while let Some(first) = self.rx.blocking_recv() {
            group.push(first);
            while group.len() < self.group_max {
                match self.rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            if self.commit_group(&mut group) {
                break;
            }
        }
        if let Err(e) = self.log.sync() {
            tracing::error!(error = %e, "final sync of shard log failed");
        }
    }

    /// Appends, commits and acknowledges one group; true if a Close was seen.
    fn commit_group(&mut self, group: &mut Vec<WriteOp>) -> bool {
        let now = self.clock.now_ms();
        let mut acks = Vec::new();
        let mut trims = Vec::new();
        let mut close = false;
        for op in group.drain(..) {
            match op {
                WriteOp::Append { records, reply } => {
                    let refs: Vec<RecordRef<'_>> =
                        records.iter().map(|(k, d)| RecordRef { partition_key: k, data: d }).collect();
                    match self.log.append(now, &refs) {
                        Ok(a) => acks.push((reply, a)),
                        Err(e) => {
                            let _ = reply.send(Err(self.append_error(e)));
                        }
                    }
                }
                WriteOp::Tick => {}
                WriteOp::Trim { cutoff_ms, reply } => trims.push((cutoff_ms, reply)),
                WriteOp::Close => close = true,
            }
        }
        let sync = match self.mode {
            DurabilityMode::Always => true,
            DurabilityMode::Interval => (self.unsynced || !acks.is_empty()) && self.interval_elapsed(),
            DurabilityMode::Never => false,
        };
        if !acks.is_empty() || sync {
            let started = Instant::now();
            let committed = if sync { self.log.sync() } else { self.log.publish() };
            let committed = committed.and_then(|()| after_fsync_before_ack(&self.shard_id));
            if sync {
                self.metrics.fsync_seconds.record(started.elapsed().as_secs_f64());
            }
            match committed {
                Ok(()) => {
                    if sync {
                        self.synced_at_ms = self.clock.now_ms();
                    }
                    self.unsynced = !sync;
                    self.metrics.group_requests.record(acks.len() as f64);
                    for (reply, a) in acks {
                        let _ = reply.send(Ok(a));
                    }
                    let end = self.log.reader().next_seq();
                    self.metrics.next_sequence.set(end as f64);
                    self.visible_tx.send_replace(end);
                }
                Err(e) => {
                    let cause = self.fail(&e);
                    for (reply, _) in acks {
                        let _ = reply.send(Err(self.read_only(&cause)));
                    }
                }
            }
        }
        for (cutoff_ms, reply) in trims {
            let _ = reply.send(self.log.trim_before(cutoff_ms).map_err(BrokerError::from));
        }
        close
    }

    /// Whether `interval_ms` has passed since the last sync. A clock that
    /// went backwards counts as elapsed: syncing early is always safe.
    fn interval_elapsed(&self) -> bool {
        let now = self.clock.now_ms();
        now < self.synced_at_ms || now - self.synced_at_ms >= self.interval_ms
    }

    fn append_error(&mut self, e: shardlog::Error) -> BrokerError {
        match e {
            shardlog::Error::Poisoned { .. } | shardlog::Error::Io { .. } => {
                let cause = self.fail(&e);
                self.read_only(&cause)
            }
            shardlog::Error::InvalidRecord { index, field, reason } => {
                BrokerError::invalid(format!("records[{index}].{field}"), reason)
            }
            shardlog::Error::InvalidBatch { field, reason } => {
                BrokerError::invalid(format!("records ({field})"), reason)
            }
            other => BrokerError::Storage(other),
        }
    }

    /// Marks the shard read-only after a storage failure; returns the cause.
    fn fail(&mut self, e: &shardlog::Error) -> String {
        let cause = self.log.poisoned().map_or_else(|| e.to_string(), str::to_string);
        if self.health.write_error().is_none() {
            tracing::error!(shard = %self.shard_id, error = %cause, "shard log failed; the shard refuses writes until restart");
            self.metrics.writable.set(0.0);
        }
        self.health.fail(cause.clone());
        cause
    }

    fn read_only(&self, cause: &str) -> BrokerError {
        BrokerError::ShardReadOnly { shard_id: self.shard_id.clone(), cause: cause.to_string() }
    }
}

/// Failpoint `broker::shard::after_fsync_before_ack` (feature `failpoints`):
/// the group is committed but nothing is acknowledged yet. Configured to
/// `return`, it fails the commit like a failed fsync: the shard turns
/// read-only and the group is answered with errors, though it is durable.
#[cfg(feature = "failpoints")]
fn after_fsync_before_ack(shard_id: &str) -> shardlog::Result<()> {
    fail::fail_point!("broker::shard::after_fsync_before_ack", |_| Err(shardlog::Error::Io {
        op: "broker::shard::after_fsync_before_ack",
        path: std::path::PathBuf::from(shard_id),
        source: std::io::Error::other("injected by failpoint"),
    }));
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
fn after_fsync_before_ack(_shard_id: &str) -> shardlog::Result<()> {
    Ok(())
}
