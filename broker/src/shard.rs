//! One shard: the single writer of its log, its read side, and its health.
//!
//! **Group commit.** Each shard has one writer fed by a bounded queue; the
//! writers run on the broker's [`WriterPool`] (plain OS threads, so
//! `fdatasync` never runs on a tokio worker, and a fixed number of them
//! however many shards there are). Whenever something is queued the writer
//! is scheduled; a pool thread drains what is queued (up to
//! `limits.group_commit_max_requests`), appends each request as its own
//! atomic batch, then commits once: in `always` mode one `fdatasync` covers them
//! all. Only after the commit returns are the requests acknowledged and the
//! new end published to readers. While one fsync runs, the next group
//! queues up; the slower the disk, the larger the groups.
//!
//! **Commit delay.** Where `fdatasync` is fast, the next group is small
//! when it starts: with 8 shards each PutRecords of 500 makes 8 commits,
//! and each `fdatasync` costs a context switch or more and tens of µs of
//! CPU, so at high rates the syncs are the largest cost. While a shard is
//! busy (at least [`BUSY_COMMITS`] commits in the previous
//! [`BUSY_WINDOW`]) in `always` mode, its writer waits, in
//! [`DELAY_STEP`] steps, up to `limits.group_commit_delay_us` for more
//! requests before it commits a group of only appends, and stops waiting
//! once [`DELAY_REQUESTS`] requests or [`DELAY_BYTES`] bytes are gathered.
//! Invariants: nothing waits on an idle shard (the first commits after a
//! quiet spell start at once); an acknowledgement waits at most the delay
//! longer than it would have; only appends wait (a trim, seal, repair or
//! close never does); the wait holds only the pool thread the shard already
//! occupies (with more busy shards than `storage.writer_threads`, that
//! thread is kept from the others for up to the delay).
//! (`stream-bench e2e --rate 412000 --pacing lockstep`: 15,500–18,600
//! `fdatasync`s per run against 36,400–37,700; see `benches/README.md`.)
//!
//! **`interval` and `never`.** A commit only publishes (`write`, no
//! `fdatasync`). In `interval` mode the writer itself checks, at every
//! commit, whether `durability.interval_ms` has passed on the injected clock
//! since its last `fdatasync` and syncs then, so a full queue cannot delay
//! the sync; a ticker only wakes an idle writer that holds unsynced records
//! (its wake-up may be dropped when the queue is full: a full queue means the
//! writer is about to commit and check anyway). `never` syncs at segment
//! roll and at close only.
//!
//! **Free space.** Before a batch is appended the writer takes its bytes
//! from the disk monitor's headroom (`disk`); a batch that does not fit
//! above the free-space watermark is refused with the retryable `DiskFull`
//! before any of it is written, and the shard stays healthy.
//!
//! **Failure.** A shard is serving, or failed with a [`FailureKind`]; no
//! failure is ever retried into an acknowledgement (a second fsync after a
//! failed one can "succeed" without the data):
//! - `Open`: the log could not be opened (an I/O error, a missing file);
//!   reads and writes are refused until an operator repairs the shard.
//! - `Damaged`: bytes of the active segment that an fsync had covered are
//!   damaged, so the log opened read-only: reads are served up to the damage
//!   (and after it), writes are refused until a repair cuts the log there.
//!   Damage in a sealed segment fails nothing: the shard keeps serving, a
//!   read that reaches the damage gets `Corrupt` naming segment and byte,
//!   and the same repair can cut there on an operator's request.
//! - `DiskFull`: a *write* failed with ENOSPC or EDQUOT. Nothing is lost by
//!   that (the kernel refused the bytes; the page cache still holds what
//!   earlier syncs made durable), but the log is poisoned. Reads are served;
//!   writes get the retryable `DiskFull`; once the disk monitor sees the
//!   disk above its watermark with room for the bytes the failed group
//!   needed, the writer drops the log and opens it anew, re-running
//!   recovery (which cuts the never-acknowledged torn tail), without a
//!   restart. (Requiring that room keeps a shard from reopening only to fail
//!   again while the disk is still full.)
//! - `Io`: a write or an fsync failed otherwise, or an fsync failed at all
//!   (even with ENOSPC). After a failed writeback the kernel may have
//!   dropped the dirty pages or marked them clean, so the page cache no
//!   longer says what is on disk: reads of what was visible are served,
//!   writes are refused until an operator repairs the shard, which drops
//!   the cached pages (`posix_fadvise(DONTNEED)`) and reopens the log.
//! - `Panicked`: the writer panicked; the panic is caught, the log dropped,
//!   and every later write refused until repaired (reopened).
//!
//! **Repair** ([`Shard::repair`]) runs on the writer thread like every other
//! change to the log: it reports a plan and, when confirmed, applies it.
//!
//! **Order.** Requests are appended in queue order, so two requests from one
//! producer to one shard keep their order when the second is submitted after
//! the first was queued.
//!
//! **Sealing** ([`Shard::seal_blocking`], for a split or merge). The seal
//! travels through the queue like an append: appends queued before it are
//! committed, the commit that covers it always fsyncs (whatever the
//! durability mode), and it answers with the log's end only after that
//! fsync. Every append queued after it is refused with the retryable
//! `ShardClosed`, so a record lands in the sealed shard only if it was
//! queued before the seal. A shard opened closed (`ShardSpec::closed`)
//! refuses appends from the start; retention and repair still run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardlog::{Appended, LogReader, LogStats, RecordRef, ShardLog, Trimmed};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::DurabilityMode;
use crate::disk::{DiskMonitor, is_out_of_space};
use crate::error::{BrokerError, Result};
use crate::quota::ShardQuota;
use crate::writer_pool::{Task, WriterPool};

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

/// Why a shard is failed; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The log could not be opened: reads and writes refused.
    Open,
    /// Synced bytes of the active segment are damaged: writes refused until repaired.
    Damaged,
    /// A write hit ENOSPC: writes refused until space returns, then the shard reopens itself.
    DiskFull,
    /// A write or fsync failed: writes refused until repaired.
    Io,
    /// The writer panicked: writes refused until repaired.
    Panicked,
}

impl FailureKind {
    /// The name shown in errors, DescribeStream and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Open => "Open",
            FailureKind::Damaged => "Damaged",
            FailureKind::DiskFull => "DiskFull",
            FailureKind::Io => "Io",
            FailureKind::Panicked => "Panicked",
        }
    }
}

/// A shard's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFailure {
    /// What failed.
    pub kind: FailureKind,
    /// The error, with paths inside the shard's directory shortened to file names.
    pub cause: String,
}

/// What [`Shard::repair`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairAction {
    /// The shard is healthy and undamaged.
    Nothing,
    /// Open the log again (re-running recovery), dropping its cached pages first; nothing is cut.
    Reopen,
    /// Cut the log at its first damage; see [`Cut`].
    Truncate,
}

/// What a truncating repair cuts, exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// The segment file cut (by name).
    pub segment: String,
    /// The byte it is cut at.
    pub position: u64,
    /// The first sequence number removed; the next append gets it.
    pub first_lost_seq: u64,
    /// Sequence numbers removed.
    pub records_lost: u64,
    /// Bytes of segment files removed.
    pub bytes_removed: u64,
    /// Newer segment files removed whole (by name).
    pub segments_removed: Vec<String>,
}

/// A repair's plan: what it would do, and exactly what it would cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// What the repair does.
    pub action: RepairAction,
    /// The failure or damage being repaired, in words.
    pub reason: String,
    /// For [`RepairAction::Truncate`], the cut.
    pub cut: Option<Cut>,
}

/// A damaged byte range of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// The segment file (by name).
    pub segment: String,
    /// The first damaged byte.
    pub position: u64,
    /// What is wrong there.
    pub reason: String,
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The result of [`Shard::repair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    /// The plan (made before anything changed).
    pub plan: RepairPlan,
    /// Whether it was applied.
    pub applied: bool,
    /// The shard's failure afterwards, if any.
    pub failure: Option<ShardFailure>,
}

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
    Heal {
        free_bytes: u64,
        reply: oneshot::Sender<bool>,
    },
    Repair {
        confirm: bool,
        reply: oneshot::Sender<Result<RepairOutcome>>,
    },
    /// Seals (`closed`) or unseals the shard; a seal answers with the end.
    Seal {
        closed: bool,
        reply: oneshot::Sender<Result<u64>>,
    },
    Close,
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteOp::Append { .. } => "Append",
            WriteOp::Tick => "Tick",
            WriteOp::Trim { .. } => "Trim",
            WriteOp::Heal { .. } => "Heal",
            WriteOp::Repair { .. } => "Repair",
            WriteOp::Seal { .. } => "Seal",
            WriteOp::Close => "Close",
        })
    }
}

/// Everything a shard needs to open.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// The stream's name (for metrics, logs and errors).
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
    /// Longest wait for more requests before a busy shard commits.
    pub commit_delay: Duration,
    /// The threads the shard's writer runs on.
    pub writers: WriterPool,
    /// Closed by a reshard: appends are refused with `ShardClosed`.
    pub closed: bool,
}

/// State shared by a shard's handle and its writer thread.
#[derive(Debug)]
struct Core {
    stream: String,
    id: String,
    dir: PathBuf,
    /// The log's read side; `None` while the log is not open.
    reader: RwLock<Option<LogReader>>,
    failure: Mutex<Option<ShardFailure>>,
    /// Dropped when the shard closes, which ends every watcher.
    visible: Mutex<Option<watch::Sender<u64>>>,
    metrics: ShardMetrics,
}

#[derive(Debug)]
struct ShardMetrics {
    next_sequence: metrics::Gauge,
    writable: metrics::Gauge,
    failed: metrics::Gauge,
    fsync_seconds: metrics::Histogram,
    /// Produce requests one fdatasync covered (the group commit's size).
    commit_batch_requests: metrics::Histogram,
}

impl ShardMetrics {
    fn new(stream: &str, shard: &str) -> Self {
        let labels = [("stream", stream.to_string()), ("shard", shard.to_string())];
        Self {
            next_sequence: metrics::gauge!("stream_broker_shard_next_sequence", &labels),
            writable: metrics::gauge!("stream_broker_shard_writable", &labels),
            failed: metrics::gauge!("stream_broker_shard_failed", &labels),
            fsync_seconds: metrics::histogram!("stream_broker_fsync_seconds"),
            commit_batch_requests: metrics::histogram!("stream_broker_commit_batch_requests"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every guarded value here is replaced whole; a panic cannot tear it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    fn failure(&self) -> Option<ShardFailure> {
        lock(&self.failure).clone()
    }

    fn reader(&self) -> Option<LogReader> {
        self.reader.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a failure unless one is recorded already (the first cause is the real one).
    fn fail(&self, kind: FailureKind, cause: String) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            tracing::error!(stream = %self.stream, shard = %self.id, kind = kind.as_str(), %cause, "shard failed");
            *f = Some(ShardFailure { kind, cause });
            self.metrics.writable.set(0.0);
            self.metrics.failed.set(1.0);
        }
    }

    /// Replaces the failure state after an open; logs changes only.
    fn set_failure(&self, failure: Option<ShardFailure>) {
        let failed = failure.is_some();
        let mut current = lock(&self.failure);
        match (current.as_ref(), failure.as_ref()) {
            (Some(_), None) => tracing::info!(stream = %self.stream, shard = %self.id, "shard serves again"),
            (old, Some(f)) if old != Some(f) => {
                tracing::error!(stream = %self.stream, shard = %self.id, kind = f.kind.as_str(), cause = %f.cause, "shard failed")
            }
            _ => {}
        }
        *current = failure;
        self.metrics.writable.set(if failed { 0.0 } else { 1.0 });
        self.metrics.failed.set(if failed { 1.0 } else { 0.0 });
    }

    fn set_reader(&self, reader: LogReader) {
        let end = reader.next_seq();
        *self.reader.write().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        self.publish(end);
    }

    fn publish(&self, end: u64) {
        self.metrics.next_sequence.set(end as f64);
        if let Some(tx) = lock(&self.visible).as_ref() {
            tx.send_replace(end);
        }
    }

    /// The error a write to this failed shard gets.
    fn refusal(&self, f: &ShardFailure, disk: &DiskMonitor) -> BrokerError {
        match f.kind {
            FailureKind::DiskFull => BrokerError::DiskFull {
                what: format!("shard {} of stream {:?} hit a full disk ({})", self.id, self.stream, f.cause),
                retry_after_ms: disk.retry_after_ms(),
            },
            kind => BrokerError::ShardFailed {
                stream: self.stream.clone(),
                shard_id: self.id.clone(),
                kind: kind.as_str(),
                cause: f.cause.clone(),
            },
        }
    }

    /// Shortens paths inside the shard's directory to file names: callers
    /// see which segment, not where the data lives.
    fn redact(&self, text: &str) -> String {
        let dir = self.dir.display().to_string();
        text.replace(&format!("{dir}/"), "").replace(&dir, "the shard directory")
    }
}

/// One shard; its log may be open, or not (a failed shard).
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
    core: Arc<Core>,
    disk: Arc<DiskMonitor>,
    queue: Queue,
    visible: watch::Receiver<u64>,
    subscribers: AtomicUsize,
    /// Set by the first `close` (or the drop), which sends the writer its `Close`.
    closing: std::sync::atomic::AtomicBool,
}

/// The writer's queue: sending schedules the writer on the pool.
#[derive(Debug, Clone)]
struct Queue {
    tx: mpsc::Sender<WriteOp>,
    slot: Arc<Slot>,
}

impl Queue {
    async fn send(&self, op: WriteOp) -> std::result::Result<(), mpsc::error::SendError<WriteOp>> {
        self.tx.send(op).await?;
        self.slot.schedule();
        Ok(())
    }

    fn blocking_send(&self, op: WriteOp) -> std::result::Result<(), mpsc::error::SendError<WriteOp>> {
        self.tx.blocking_send(op)?;
        self.slot.schedule();
        Ok(())
    }

    fn try_send(&self, op: WriteOp) -> std::result::Result<(), mpsc::error::TrySendError<WriteOp>> {
        self.tx.try_send(op)?;
        self.slot.schedule();
        Ok(())
    }
}

/// A shard's writer as the pool sees it: scheduled at most once at a time,
/// and run by one pool thread at a time (the mutex), so requests are
/// committed in queue order.
struct Slot {
    /// Queued on the pool, or running; cleared when a run has finished its
    /// step, so a request queued during the run does not schedule again
    /// (the run looks for it after the clear). Stays set once the writer
    /// has stopped: nothing is scheduled for a stopped writer.
    scheduled: std::sync::atomic::AtomicBool,
    writer: Mutex<Option<Writer>>,
    /// Set once the writer has stopped (and synced).
    finished: Mutex<bool>,
    finished_changed: std::sync::Condvar,
    pool: WriterPool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("scheduled", &self.scheduled).finish_non_exhaustive()
    }
}

impl Slot {
    fn schedule(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.pool.schedule(self.clone());
        }
    }

    /// Blocks until the writer has stopped.
    fn wait_finished(&self) {
        let mut done = lock(&self.finished);
        while !*done {
            done = self.finished_changed.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Task for Slot {
    fn run(&self) -> bool {
        let mut guard = lock(&self.writer);
        let Some(writer) = guard.as_mut() else { return false };
        if writer.step() {
            writer.finish();
            *guard = None;
            drop(guard);
            *lock(&self.finished) = true;
            self.finished_changed.notify_all();
            return false;
        }
        // Cleared only now, so that requests queued during the step's
        // fdatasync did not schedule the slot onto a second thread to block
        // on the writer. A request queued before the clear is seen by the
        // check below; one queued after it schedules the slot itself. The
        // clear is a swap, not a store: every write of the flag is then a
        // read-modify-write, so a sender's swap that read `true` is ordered
        // before this one, and its queued request before the check (a
        // plain store would let the check's loads pass it on weakly
        // ordered CPUs).
        self.scheduled.swap(false, Ordering::SeqCst);
        let more = !writer.rx.is_empty();
        drop(guard);
        more && !self.scheduled.swap(true, Ordering::SeqCst)
    }
}

/// How the writer (re)opens its log.
#[derive(Debug)]
struct Opener {
    dir: PathBuf,
    config: shardlog::Config,
    io: Arc<dyn shardlog::io::Io>,
}

impl Shard {
    /// Opens (recovering) the shard's log in `dir` and starts its writer. A
    /// log that cannot be opened does not fail the call: the shard is
    /// returned failed ([`Shard::failure`]), so one damaged shard never
    /// stops the others. Blocking: call from a blocking context.
    pub fn open(
        dir: &Path,
        spec: ShardSpec,
        quota: ShardQuota,
        clock: Arc<dyn Clock>,
        io: Arc<dyn shardlog::io::Io>,
        disk: Arc<DiskMonitor>,
    ) -> Result<Self> {
        Self::start(dir, spec, quota, clock, io, disk, None)
    }

    /// A shard that is failed from the start without touching `dir` (its
    /// directory is missing, say); [`Shard::repair`] opens it.
    pub fn failed(
        dir: &Path,
        spec: ShardSpec,
        quota: ShardQuota,
        clock: Arc<dyn Clock>,
        io: Arc<dyn shardlog::io::Io>,
        disk: Arc<DiskMonitor>,
        cause: String,
    ) -> Result<Self> {
        Self::start(dir, spec, quota, clock, io, disk, Some(cause))
    }

    fn start(
        dir: &Path,
        spec: ShardSpec,
        quota: ShardQuota,
        clock: Arc<dyn Clock>,
        io: Arc<dyn shardlog::io::Io>,
        disk: Arc<DiskMonitor>,
        failed: Option<String>,
    ) -> Result<Self> {
        let id = shard_id(spec.index);
        let (visible_tx, visible) = watch::channel(0);
        let core = Arc::new(Core {
            stream: spec.stream.clone(),
            id: id.clone(),
            dir: dir.to_path_buf(),
            reader: RwLock::new(None),
            failure: Mutex::new(None),
            visible: Mutex::new(Some(visible_tx)),
            metrics: ShardMetrics::new(&spec.stream, &id),
        });
        let opener = Opener { dir: dir.to_path_buf(), config: spec.log_config.clone(), io };
        let log = match failed {
            Some(cause) => {
                core.set_failure(Some(ShardFailure { kind: FailureKind::Open, cause }));
                None
            }
            None => open_log(&opener, &core),
        };
        let (tx, rx) = mpsc::channel(spec.queue_depth);
        let clock_now = clock.now_ms();
        let writer = Writer {
            core: core.clone(),
            log,
            opener,
            rx,
            clock,
            disk: disk.clone(),
            mode: spec.durability,
            interval_ms: spec.interval_ms,
            synced_at_ms: clock_now,
            unsynced: false,
            group_max: spec.group_max,
            group: Vec::new(),
            disk_full_need: 0,
            closed: spec.closed,
            delay: CommitDelay::new(spec.commit_delay),
        };
        let slot = Arc::new(Slot {
            scheduled: std::sync::atomic::AtomicBool::new(false),
            writer: Mutex::new(Some(writer)),
            finished: Mutex::new(false),
            finished_changed: std::sync::Condvar::new(),
            pool: spec.writers.clone(),
        });
        let queue = Queue { tx, slot };
        if spec.durability == DurabilityMode::Interval {
            spawn_ticker(queue.clone(), spec.interval_ms);
        }
        Ok(Self {
            index: spec.index,
            id,
            hash_range: spec.hash_range,
            quota,
            core,
            disk,
            queue,
            visible,
            subscribers: AtomicUsize::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
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

    /// Reads committed records; fails with `ShardFailed` while the log is not open.
    pub fn reader(&self) -> Result<LogReader> {
        self.core.reader().ok_or_else(|| {
            let f = self.failure().unwrap_or(ShardFailure { kind: FailureKind::Open, cause: "not open".into() });
            self.core.refusal(&f, &self.disk)
        })
    }

    /// Size and extent of the readable log, if it is open.
    pub fn stats(&self) -> Option<LogStats> {
        self.core.reader().map(|r| r.stats())
    }

    /// Every damaged range known so far (found when opening, or by reads since).
    pub fn damage(&self) -> Vec<DamagedRange> {
        self.core.reader().map_or_else(Vec::new, |r| {
            r.damage()
                .into_iter()
                .map(|d| DamagedRange { segment: file_name(&d.path), position: d.position, reason: d.reason })
                .collect()
        })
    }

    /// Why the shard is failed, if it is.
    pub fn failure(&self) -> Option<ShardFailure> {
        self.core.failure()
    }

    /// The error a write gets now, if the shard refuses writes.
    pub fn write_refusal(&self) -> Option<BrokerError> {
        self.failure().map(|f| self.core.refusal(&f, &self.disk))
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

    /// If the shard failed for lack of space and `free_bytes` has room for
    /// what its failed write needed, reopens its log (re-running recovery);
    /// true if it serves afterwards. Call while the disk is above its watermark.
    pub async fn heal(&self, free_bytes: u64) -> bool {
        if self.failure().is_none_or(|f| f.kind != FailureKind::DiskFull) {
            return self.failure().is_none();
        }
        let (reply, rx) = oneshot::channel();
        if self.queue.send(WriteOp::Heal { free_bytes, reply }).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Reports what a repair would do and, with `confirm`, does it.
    pub async fn repair(&self, confirm: bool) -> Result<RepairOutcome> {
        let (reply, rx) = oneshot::channel();
        self.queue.send(WriteOp::Repair { confirm, reply }).await.map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Seals the shard for a split or merge: appends queued before are
    /// committed and fsynced, later ones refused with `ShardClosed`; returns
    /// the end (the sequence number after the last record). A failed shard
    /// is not sealed and answers with its failure. Blocking: call from a
    /// blocking context.
    pub fn seal_blocking(&self) -> Result<u64> {
        self.send_seal(true)
    }

    /// Takes back a seal whose reshard was rolled back: appends are taken again. Blocking.
    pub fn unseal_blocking(&self) -> Result<()> {
        self.send_seal(false).map(|_| ())
    }

    fn send_seal(&self, closed: bool) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.queue.blocking_send(WriteOp::Seal { closed, reply }).map_err(|_| self.gone())?;
        rx.blocking_recv().map_err(|_| self.gone())?
    }

    /// Stops the writer after it has committed everything queued before,
    /// and syncs the log; ends every watcher. Blocking.
    pub fn close(&self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            // If the queue is full this waits for room: every queued request is served first.
            // An error means the writer stopped already.
            let _ = self.queue.blocking_send(WriteOp::Close);
        }
        self.queue.slot.wait_finished();
        lock(&self.core.visible).take();
    }

    fn gone(&self) -> BrokerError {
        match self.write_refusal() {
            Some(e) => e,
            None => BrokerError::Unavailable(format!("shard {} is closed", self.id)),
        }
    }
}

impl Drop for Shard {
    /// A shard dropped without `close` still stops its writer (after what
    /// is queued), so the writer's log is synced and dropped; if the queue
    /// is full the writer stops once every sender is gone.
    fn drop(&mut self) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            let _ = self.queue.try_send(WriteOp::Close);
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
fn spawn_ticker(queue: Queue, interval_ms: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A full queue means the writer is busy and will commit soon anyway.
            match queue.try_send(WriteOp::Tick) {
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
    });
}

/// Opens the log and installs its reader, or records why it cannot be opened.
fn open_log(opener: &Opener, core: &Core) -> Option<ShardLog> {
    match ShardLog::open_with_io(&opener.dir, opener.config.clone(), opener.io.clone()) {
        Ok(log) => {
            let report = log.recovery_report();
            if !report.is_clean() {
                tracing::warn!(stream = %core.stream, shard = %core.id, ?report, "shard log recovered");
            }
            core.set_reader(log.reader());
            core.set_failure(damaged(&log));
            Some(log)
        }
        Err(e) => {
            let kind = match &e {
                shardlog::Error::Io { source, .. } if is_out_of_space(source) => FailureKind::DiskFull,
                _ => FailureKind::Open,
            };
            tracing::error!(stream = %core.stream, shard = %core.id, error = %e, "cannot open the shard log");
            core.set_failure(Some(ShardFailure { kind, cause: core.redact(&e.to_string()) }));
            None
        }
    }
}

/// Asks the kernel to drop the cached pages of the shard's files, so that
/// the next open reads what is on the disk rather than pages a failed
/// writeback left behind. Best effort: a failure only means the cache stays.
fn drop_page_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if let Ok(f) = std::fs::File::open(entry.path()) {
            if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed) {
                tracing::debug!(path = %entry.path().display(), error = %e, "cannot drop cached pages");
            }
        }
    }
}

/// The failure a storage error on the write path means.
fn classify(e: &shardlog::Error) -> FailureKind {
    match e {
        // Only a refused write is harmless; a failed sync may have lost cached pages.
        shardlog::Error::Io { op, source, .. } if is_out_of_space(source) && !op.contains("sync") => {
            FailureKind::DiskFull
        }
        shardlog::Error::Damaged { .. } => FailureKind::Damaged,
        _ => FailureKind::Io,
    }
}

/// The failure of a log that opened read-only because of damage, if it did.
fn damaged(log: &ShardLog) -> Option<ShardFailure> {
    log.read_only().map(|d| ShardFailure {
        kind: FailureKind::Damaged,
        cause: format!("damage in {} at byte {}: {}; the log is read-only", file_name(&d.path), d.position, d.reason),
    })
}

struct Writer {
    core: Arc<Core>,
    log: Option<ShardLog>,
    opener: Opener,
    rx: mpsc::Receiver<WriteOp>,
    clock: Arc<dyn Clock>,
    disk: Arc<DiskMonitor>,
    mode: DurabilityMode,
    interval_ms: u64,
    /// Clock time of the last `fdatasync` (or of the open).
    synced_at_ms: u64,
    /// Whether records were published since the last `fdatasync`.
    unsynced: bool,
    group_max: usize,
    /// The group being committed (kept to reuse its allocation).
    group: Vec<WriteOp>,
    /// Bytes of the group whose write met ENOSPC: free space needed before a reopen.
    disk_full_need: u64,
    /// Sealed by a reshard: appends are refused.
    closed: bool,
    /// Waits for more requests before a commit while the shard is busy.
    delay: CommitDelay,
}

/// Commits a busy shard counts before it waits for more requests.
const BUSY_COMMITS: u32 = 20;
/// The window those commits are counted over.
const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// How often a waiting writer looks for more requests.
const DELAY_STEP: Duration = Duration::from_micros(100);
/// Requests after which a waiting writer commits at once.
const DELAY_REQUESTS: usize = 32;
/// Bytes of records after which a waiting writer commits at once.
const DELAY_BYTES: usize = 256 * 1024;

/// Whether a shard is busy enough that its writer waits for more requests
/// before a commit (see the module docs), and the wait itself.
#[derive(Debug)]
struct CommitDelay {
    max: Duration,
    window_start: Instant,
    window_commits: u32,
    busy: bool,
}

impl CommitDelay {
    fn new(max: Duration) -> Self {
        Self { max, window_start: Instant::now(), window_commits: 0, busy: false }
    }

    /// Counts a commit starting at `now`; true if it should wait for more
    /// requests (the previous full window held enough commits).
    fn commit_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= BUSY_WINDOW {
            // A window with no commit at all (a quiet spell longer than the window) is not busy.
            self.busy = elapsed < 2 * BUSY_WINDOW && self.window_commits >= BUSY_COMMITS;
            self.window_start = now;
            self.window_commits = 0;
        }
        self.window_commits += 1;
        self.busy && !self.max.is_zero()
    }

    /// Before committing `group`: if the shard is busy and the group holds
    /// only a few appends, waits (at most `max`) for more from `rx`.
    fn gather(&mut self, group: &mut Vec<WriteOp>, rx: &mut mpsc::Receiver<WriteOp>, group_max: usize) {
        let start = Instant::now();
        if !self.commit_at(start) || !group.iter().all(|op| matches!(op, WriteOp::Append { .. })) {
            return;
        }
        let mut bytes: usize = group.iter().map(append_bytes).sum();
        while group.len() < group_max.min(DELAY_REQUESTS) && bytes < DELAY_BYTES && start.elapsed() < self.max {
            std::thread::sleep(DELAY_STEP);
            while group.len() < group_max {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += append_bytes(&op);
                        let control = !matches!(op, WriteOp::Append { .. });
                        group.push(op);
                        if control {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn append_bytes(op: &WriteOp) -> usize {
    match op {
        WriteOp::Append { records, .. } => records.iter().map(|(k, d)| k.len() + d.len()).sum(),
        _ => 0,
    }
}

impl Writer {
    /// Drains what is queued (up to `group_max` requests) and commits it as
    /// one group; true once the writer must stop (a `Close`, or every
    /// sender gone).
    fn step(&mut self) -> bool {
        let mut group = std::mem::take(&mut self.group);
        let mut gone = false;
        while group.len() < self.group_max {
            match self.rx.try_recv() {
                Ok(op) => group.push(op),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if group.is_empty() {
            self.group = group;
            return gone;
        }
        if !gone && matches!(self.mode, DurabilityMode::Always) {
            self.delay.gather(&mut group, &mut self.rx, self.group_max);
        }
        // A panic drops the replies it holds (their callers see an error,
        // never an acknowledgement); the log's in-memory state is not
        // trusted after it.
        let close = match catch_unwind(AssertUnwindSafe(|| self.commit_group(&mut group))) {
            Ok(close) => close,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.log = None;
                group.clear();
                self.core.fail(FailureKind::Panicked, format!("the shard writer panicked: {what}"));
                false
            }
        };
        self.group = group;
        // Every sender gone: nothing more can come, so stop (with the
        // final sync) after this group rather than wait for a wake-up.
        close || gone
    }

    /// The last sync when the writer stops.
    fn finish(&mut self) {
        if let Some(log) = self.log.as_mut().filter(|_| self.core.failure().is_none()) {
            if let Err(e) = log.sync() {
                tracing::error!(shard = %self.core.id, error = %e, "final sync of shard log failed");
            }
        }
    }

    fn refusal(&self) -> Option<BrokerError> {
        let f = self.core.failure()?;
        Some(self.core.refusal(&f, &self.disk))
    }

    /// Appends, commits and acknowledges one group; true if a Close was seen.
    fn commit_group(&mut self, group: &mut Vec<WriteOp>) -> bool {
        let now = self.clock.now_ms();
        let mut acks = Vec::new();
        let mut trims = Vec::new();
        let mut seals = Vec::new();
        let mut close = false;
        let mut group_bytes = 0u64;
        for op in group.drain(..) {
            match op {
                WriteOp::Append { reply, .. } if self.closed => {
                    let _ = reply.send(Err(BrokerError::ShardClosed {
                        stream: self.core.stream.clone(),
                        shard_id: self.core.id.clone(),
                    }));
                }
                WriteOp::Append { records, reply } => {
                    if let Some(refused) = self.refusal() {
                        let _ = reply.send(Err(refused));
                        continue;
                    }
                    let bytes = shardlog::format::frame_len(records.iter().map(|(k, d)| (&k[..], &d[..])));
                    if let Err(full) = self.disk.take(bytes) {
                        let _ = reply.send(Err(full));
                        continue;
                    }
                    group_bytes += bytes;
                    let refs: Vec<RecordRef<'_>> =
                        records.iter().map(|(k, d)| RecordRef { partition_key: k, data: d }).collect();
                    let Some(log) = self.log.as_mut() else {
                        // Unreachable: a shard without a log is failed, refused above.
                        let _ = reply.send(Err(BrokerError::Unavailable(format!("{} is not open", self.core.id))));
                        continue;
                    };
                    match log.append(now, &refs) {
                        Ok(a) => acks.push((reply, a)),
                        Err(e) => {
                            let _ = reply.send(Err(self.append_error(e, group_bytes)));
                        }
                    }
                }
                WriteOp::Tick => {}
                WriteOp::Trim { cutoff_ms, reply } => trims.push((cutoff_ms, reply)),
                WriteOp::Heal { free_bytes, reply } => {
                    let disk_full = self.core.failure().is_some_and(|f| f.kind == FailureKind::DiskFull);
                    let healed = disk_full && free_bytes > self.disk_full_need && self.reopen();
                    let _ = reply.send(healed);
                }
                WriteOp::Repair { confirm, reply } => {
                    let _ = reply.send(self.repair(confirm));
                }
                WriteOp::Seal { closed: false, reply } => {
                    self.closed = false;
                    let _ = reply.send(Ok(0));
                }
                WriteOp::Seal { closed: true, reply } => match (self.refusal(), self.log.is_some()) {
                    (None, true) => {
                        self.closed = true;
                        seals.push(reply);
                    }
                    (refused, _) => {
                        let refused = refused.unwrap_or_else(|| BrokerError::Unavailable("log not open".into()));
                        let _ = reply.send(Err(refused));
                    }
                },
                WriteOp::Close => close = true,
            }
        }
        // A seal's end must be durable before a reshard records it, in every mode.
        let sync = !seals.is_empty()
            || match self.mode {
                DurabilityMode::Always => true,
                DurabilityMode::Interval => (self.unsynced || !acks.is_empty()) && self.interval_elapsed(),
                DurabilityMode::Never => false,
            };
        if let Some(log) = self.log.as_mut().filter(|_| !acks.is_empty() || sync) {
            let started = Instant::now();
            let committed = if sync { log.sync() } else { log.publish() };
            let committed = committed.and_then(|()| after_fsync_before_ack(&self.core.id));
            if sync {
                self.core.metrics.fsync_seconds.record(started.elapsed().as_secs_f64());
            }
            match committed {
                Ok(()) => {
                    if sync {
                        self.synced_at_ms = self.clock.now_ms();
                    }
                    self.unsynced = !sync;
                    self.core.metrics.commit_batch_requests.record(acks.len() as f64);
                    // Before the acks, so that whoever sees an ack also sees the new end.
                    let end = log.reader().next_seq();
                    self.core.publish(end);
                    for (reply, a) in acks {
                        let _ = reply.send(Ok(a));
                    }
                    for reply in seals.drain(..) {
                        let _ = reply.send(Ok(end));
                    }
                }
                Err(e) => {
                    self.fail(&e, group_bytes);
                    for (reply, _) in acks {
                        let refused = self.refusal().unwrap_or_else(|| BrokerError::Unavailable("shard failed".into()));
                        let _ = reply.send(Err(refused));
                    }
                }
            }
        }
        // Unanswered seals met a failed commit: the seal does not hold.
        if !seals.is_empty() {
            self.closed = false;
            for reply in seals {
                let refused = self.refusal().unwrap_or_else(|| BrokerError::Unavailable("shard failed".into()));
                let _ = reply.send(Err(refused));
            }
        }
        for (cutoff_ms, reply) in trims {
            let trimmed = match self.log.as_mut() {
                Some(log) => log.trim_before(cutoff_ms).map_err(|e| BrokerError::storage(&self.core.id, e)),
                None => Err(self.refusal().unwrap_or_else(|| BrokerError::Unavailable("log not open".into()))),
            };
            let _ = reply.send(trimmed);
        }
        close
    }

    /// Whether `interval_ms` has passed since the last sync. A clock that
    /// went backwards counts as elapsed: syncing early is always safe.
    fn interval_elapsed(&self) -> bool {
        let now = self.clock.now_ms();
        now < self.synced_at_ms || now - self.synced_at_ms >= self.interval_ms
    }

    fn append_error(&mut self, e: shardlog::Error, group_bytes: u64) -> BrokerError {
        match e {
            shardlog::Error::Poisoned { .. } | shardlog::Error::Io { .. } | shardlog::Error::Damaged { .. } => {
                self.fail(&e, group_bytes);
                self.refusal().unwrap_or_else(|| BrokerError::storage(&self.core.id, e))
            }
            other => BrokerError::storage(&self.core.id, other),
        }
    }

    /// Records the failure a write-path error means (the first one counts);
    /// `group_bytes` were being written.
    fn fail(&mut self, e: &shardlog::Error, group_bytes: u64) {
        let kind = classify(e);
        if kind == FailureKind::DiskFull && self.core.failure().is_none() {
            self.disk_full_need = group_bytes;
        }
        self.core.fail(kind, self.core.redact(&e.to_string()));
    }

    /// Drops the log and opens it again; true if the shard serves afterwards.
    fn reopen(&mut self) -> bool {
        let untrusted_cache = self.core.failure().is_some_and(|f| f.kind == FailureKind::Io);
        self.log = None;
        if untrusted_cache {
            drop_page_cache(&self.opener.dir);
        }
        self.log = open_log(&self.opener, &self.core);
        self.log.is_some() && self.core.failure().is_none()
    }

    /// The repair for the shard's state: a failed log that is not merely
    /// damaged is reopened (its in-memory state, or the page cache, is not
    /// trusted; reopening may find damage anew, for a second repair to cut);
    /// a damaged log is cut at its first damage.
    fn plan(&self) -> Result<(RepairPlan, Option<shardlog::RepairPlan>)> {
        if let Some(f) = self.core.failure().filter(|f| f.kind != FailureKind::Damaged) {
            let reason = format!("the shard is failed ({}): {}", f.kind.as_str(), f.cause);
            return Ok((RepairPlan { action: RepairAction::Reopen, reason, cut: None }, None));
        }
        let Some(log) = self.log.as_ref() else {
            return Err(BrokerError::Internal(format!("{} has neither a log nor a failure", self.core.id)));
        };
        let Some(p) = log.repair_plan().map_err(|e| BrokerError::storage(&self.core.id, e))? else {
            let reason = "the shard is healthy and its log undamaged".to_string();
            return Ok((RepairPlan { action: RepairAction::Nothing, reason, cut: None }, None));
        };
        let cut = Cut {
            segment: file_name(&p.cut_path),
            position: p.cut_position,
            first_lost_seq: p.first_lost_seq,
            records_lost: p.records_lost,
            bytes_removed: p.bytes_removed,
            segments_removed: p.segments_removed.iter().map(|s| file_name(s)).collect(),
        };
        let reason =
            format!("damage in {} at byte {}: {}", file_name(&p.damage.path), p.damage.position, p.damage.reason);
        Ok((RepairPlan { action: RepairAction::Truncate, reason, cut: Some(cut) }, Some(p)))
    }

    fn repair(&mut self, confirm: bool) -> Result<RepairOutcome> {
        let (plan, cut) = self.plan()?;
        let applied = confirm && plan.action != RepairAction::Nothing;
        if applied {
            tracing::warn!(stream = %self.core.stream, shard = %self.core.id, ?plan, "repairing the shard");
            match (cut, self.log.as_mut()) {
                (Some(cut), Some(log)) => {
                    log.repair(&cut).map_err(|e| BrokerError::storage(&self.core.id, e))?;
                    // The log was cut and reopened: publish its new end.
                    self.core.set_reader(log.reader());
                    self.core.set_failure(damaged(log));
                }
                _ => {
                    self.reopen();
                }
            }
        }
        Ok(RepairOutcome { plan, applied, failure: self.core.failure() })
    }
}

/// Failpoint `broker::shard::after_fsync_before_ack` (feature `failpoints`):
/// the group is committed but nothing is acknowledged yet. Configured to
/// `return`, it fails the commit like a failed fsync: the shard fails and the
/// group is answered with errors, though it is durable.
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

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(1);

    fn append(bytes: usize) -> WriteOp {
        let (reply, _) = oneshot::channel();
        WriteOp::Append { records: vec![(Bytes::from_static(b"k"), Bytes::from(vec![0u8; bytes]))], reply }
    }

    /// A delay whose window held `commits` commits, as of `t0 + BUSY_WINDOW`.
    fn after_window(commits: u32) -> (CommitDelay, Instant) {
        let mut d = CommitDelay::new(DELAY);
        let t0 = d.window_start;
        for i in 0..commits {
            assert!(!d.commit_at(t0 + Duration::from_micros(u64::from(i))), "the first window never waits");
        }
        (d, t0 + BUSY_WINDOW)
    }

    /// A delay whose window, just ended, held enough commits.
    fn busy_now() -> CommitDelay {
        CommitDelay {
            max: DELAY,
            window_start: Instant::now() - BUSY_WINDOW,
            window_commits: BUSY_COMMITS,
            busy: false,
        }
    }

    #[test]
    fn only_a_shard_busy_in_the_previous_window_waits() {
        let (mut busy, t) = after_window(BUSY_COMMITS);
        assert!(busy.commit_at(t), "20 commits in the last 100 ms: wait");
        assert!(busy.commit_at(t + Duration::from_millis(1)), "busy for the whole next window");
        let (mut quiet, t) = after_window(BUSY_COMMITS - 1);
        assert!(!quiet.commit_at(t), "19 commits: commit at once");
    }

    #[test]
    fn a_quiet_spell_ends_the_waiting() {
        let (mut d, t) = after_window(100);
        assert!(!d.commit_at(t + 2 * BUSY_WINDOW), "nothing for over a window: the first commit goes at once");
        let mut off = CommitDelay::new(Duration::ZERO);
        let t0 = off.window_start;
        for i in 0..100 {
            off.commit_at(t0 + Duration::from_micros(i));
        }
        assert!(!off.commit_at(t0 + BUSY_WINDOW), "limits.group_commit_delay_us = 0 never waits");
    }

    #[test]
    fn a_busy_shard_gathers_what_is_queued_and_stops_at_its_caps() {
        let (tx, mut rx) = mpsc::channel(1024);
        for _ in 0..40 {
            tx.try_send(append(10)).expect("queue");
        }
        let mut d = busy_now();
        let mut group = vec![append(10)];
        d.gather(&mut group, &mut rx, 1024);
        assert!(group.len() >= DELAY_REQUESTS, "gathered {}", group.len());

        // An idle shard leaves the queue to the next commit.
        let mut idle = CommitDelay::new(DELAY);
        let mut group = vec![append(10)];
        idle.gather(&mut group, &mut rx, 1024);
        assert_eq!(group.len(), 1);
    }

    #[test]
    fn a_control_request_ends_the_wait_and_is_never_delayed() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(WriteOp::Close).expect("queue");
        tx.try_send(append(10)).expect("queue");
        let mut d = busy_now();
        let mut group = vec![append(10)];
        d.gather(&mut group, &mut rx, 1024);
        assert_eq!(group.len(), 2, "stops at the close");
        assert!(matches!(group[1], WriteOp::Close));

        let mut group = vec![WriteOp::Close];
        d.gather(&mut group, &mut rx, 1024);
        assert_eq!(group.len(), 1, "a group with a control request does not wait");
    }
}
