//! The shard log: one writer ([`ShardLog`]) and any number of readers
//! ([`LogReader`]) over a directory of segments.
//!
//! Invariants:
//! - **Dense sequences.** Sequence numbers are assigned by the log, start at
//!   0 and increase by one per record with no gaps, across segments; segment
//!   `k + 1` starts exactly where segment `k` ends.
//! - **Atomic batches.** A batch is one frame with one CRC; after a crash it
//!   is wholly readable or wholly absent.
//! - **Acknowledge after sync.** `append` only buffers and writes; a batch is
//!   durable once a later `sync` returns `Ok`. A failed write or sync
//!   poisons the log: every later `append`, `sync` and `publish` fails until
//!   the log is reopened, so a batch whose bytes may not have reached the disk
//!   is never reported durable (a second fsync after a failed one can
//!   "succeed" without the data, see fsyncgate).
//! - **Readers see only published batches.** `sync` (or, for non-durable
//!   modes, `publish`) moves the visible end; readers never read past it, so
//!   they never see a batch that a crash could take back (when the owner uses
//!   `sync`), nor a half-written one.
//! - **A roll does not stall appends.** It creates the next segment file
//!   (header written, nothing synced) and queues the sealed segment's
//!   `fdatasync` and index files as a seal job ([`crate::seal`]), run off
//!   the append path. `sync` counts anything durable only once every older
//!   segment is synced, so the durable point moves in log order, and only
//!   a sealed segment has index files.
//! - **Every batch says how far its segment was durable** when it was
//!   appended (the length the last successful `sync` covered, `0` before
//!   the first `sync` of a rolled segment), so recovery can tell bytes that
//!   were never synced from damaged synced bytes, in this segment and older
//!   ones (see [`crate::recovery`]).
//! - **Damage is reported, not fatal.** Reads stop at damaged bytes with
//!   [`Error::Corrupt`] naming file and byte, and serve everything else; a
//!   log whose active segment is damaged in its synced part is read-only
//!   ([`Error::Damaged`]) until [`ShardLog::repair`] cuts at the damage.
//! - **Retention follows time, not appends.** [`ShardLog::trim_before`]
//!   also rolls and deletes an active segment whose newest record is older
//!   than the cutoff, so an idle shard does not keep expired records.
//! - **Timestamps never decrease.** A batch's timestamp is the later of the
//!   caller's and the previous batch's, so time lookups can binary-search.
//!   "Previous" means in the log: a log opened (or truncated) with no
//!   record left, every one trimmed by retention or lost unsynced in a
//!   crash, has no previous batch, and the next append takes the caller's
//!   time as it is. The file format keeps no timestamp outside the frames.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::config::Config;
use crate::error::{Error, Result, io_err};
use crate::format::{self, FILE_HEADER_LEN, FileKind};
use crate::io::{Io, StdIo};
use crate::recovery::{self, Damage, Found, FoundActive, RecoveryReport, path_of};
use crate::seal::{SealJob, Sealer};
use crate::segment::{
    CACHED_READ_BYTES_MAX, Chunk, IndexBuilder, ReadFrom, ScanEnd, Segment, SegmentIndex, scan_frames, scan_frames_with,
};

/// A record to append: the partition key (UTF-8, 1–256 characters) and the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Partition key bytes; must be valid UTF-8 of 1–256 characters.
    pub partition_key: &'a [u8],
    /// The record's payload.
    pub data: &'a [u8],
}

/// A stored record. `partition_key` and `data` share the buffer they were
/// read into; cloning them never copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number in its shard.
    pub seq: u64,
    /// Arrival time, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Partition key as appended.
    pub partition_key: Bytes,
    /// Payload as appended.
    pub data: Bytes,
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the batch's first record.
    pub first_seq: u64,
    /// One past the batch's last sequence number.
    pub next_seq: u64,
    /// The timestamp stored for the batch (the caller's, or the previous
    /// batch's if the caller's clock went backwards).
    pub timestamp_ms: u64,
}

/// The result of a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records in sequence order, starting at the requested sequence number.
    pub records: Vec<Record>,
    /// Where the next read should start.
    pub next_seq: u64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Segments deleted.
    pub segments: usize,
    /// Bytes of log deleted.
    pub bytes: u64,
    /// The trim horizon after the pass.
    pub first_seq: u64,
}

/// Size and extent of the readable log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Oldest readable sequence number (the trim horizon).
    pub first_seq: u64,
    /// One past the newest readable sequence number.
    pub next_seq: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes in the readable part of the segment files.
    pub bytes: u64,
    /// Arrival time of the newest readable record.
    pub last_timestamp_ms: Option<u64>,
}

/// What [`ShardLog::repair`] would do: cut the log at its first damage.
/// Making a plan changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// The first damage in log order, where the cut happens.
    pub damage: Damage,
    /// The segment file that is cut (it becomes the active segment).
    pub cut_path: PathBuf,
    /// The byte the segment is cut at (a damaged file header is rewritten,
    /// leaving the segment empty).
    pub cut_position: u64,
    /// The first sequence number removed; the next append gets it.
    pub first_lost_seq: u64,
    /// Sequence numbers removed: from `first_lost_seq` to the log's end,
    /// readable or inside damaged ranges (their records are unknown).
    pub records_lost: u64,
    /// Bytes of segment files removed.
    pub bytes_removed: u64,
    /// Whole segment files removed (newer than the cut one).
    pub segments_removed: Vec<PathBuf>,
}

/// What readers may see of a segment.
#[derive(Debug, Clone)]
struct Visible {
    segment: Arc<Segment>,
    len: u64,
    next_seq: u64,
    max_ts: Option<u64>,
}

/// Shared between the writer and its readers. The lock is held only to copy
/// or update these few fields, never across I/O.
#[derive(Debug)]
struct Shared {
    segments: RwLock<Vec<Visible>>,
    /// Damage found when opening and by reads since, each once.
    damage: Mutex<Vec<Damage>>,
}

impl Shared {
    fn note_damage(&self, d: &Damage) {
        // A plain vector is consistent after any panic; keep recording.
        let mut known = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|k| k.path == d.path && k.position == d.position) {
            known.push(d.clone());
        }
    }

    fn corrupt(&self, path: &Path, position: u64, reason: String) -> Error {
        let d = Damage { path: path.to_path_buf(), position, reason };
        self.note_damage(&d);
        d.to_error()
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Visible>> {
        // Updates are single assignments of plain values; a panic cannot leave them half-done.
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Visible>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The segment being appended to, as the writer knows it (including bytes
/// not yet visible to readers).
#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    len: u64,
    /// Bytes of the segment covered by the last successful `fdatasync`;
    /// every appended batch records it.
    durable_len: u64,
    /// Format version of the segment file; an older one is rolled before appending.
    version: u16,
    first_ts: Option<u64>,
    max_ts: Option<u64>,
    indexer: IndexBuilder,
}

impl Active {
    fn from_found(f: FoundActive) -> Self {
        Self {
            segment: f.found.segment,
            len: f.found.len,
            durable_len: f.found.len,
            version: f.version,
            first_ts: f.found.first_ts,
            max_ts: f.found.max_ts,
            indexer: f.indexer,
        }
    }
}

/// The writer of one shard's log. There is exactly one per directory; it is
/// `Send` but not shared. Readers come from [`ShardLog::reader`].
#[derive(Debug)]
pub struct ShardLog {
    dir: PathBuf,
    config: Config,
    io: Arc<dyn Io>,
    shared: Arc<Shared>,
    active: Active,
    /// Encoded batches not yet written to the active segment; they end at `active.len`.
    pending: Vec<u8>,
    next_seq: u64,
    durable_next_seq: u64,
    last_ts: u64,
    poisoned: Option<String>,
    /// Damage in the synced part of the active segment: no writes until repaired.
    damaged: Option<Damage>,
    report: RecoveryReport,
    /// Rolled segments waiting for their `fdatasync` and index files.
    sealer: Sealer,
    /// Final states of segments rolled since the last publish, oldest first:
    /// readers see them (and the active segment after them) at the next
    /// `publish` or `sync`.
    sealed_unpublished: Vec<Visible>,
}

impl ShardLog {
    /// Opens (creating if needed) the log in `dir` on the real filesystem,
    /// recovering from any crash. See [`crate::recovery`] for what is repaired.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Self> {
        Self::open_with_io(dir, config, Arc::new(StdIo))
    }

    /// Opens the log through the given I/O implementation.
    pub fn open_with_io(dir: impl AsRef<Path>, config: Config, io: Arc<dyn Io>) -> Result<Self> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        io.create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
        let mut report = RecoveryReport::default();
        let listing = recovery::list_segments(io.as_ref(), &dir, &mut report)?;
        let mut bases = listing.bases;
        if bases.is_empty() {
            recovery::create_segment(io.as_ref(), &dir, 0)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                io.sync_dir(parent).map_err(io_err("sync dir", parent))?;
            }
            bases.push(0);
        }
        let (&active_base, sealed) = bases.split_last().expect("at least one segment exists");
        if listing.indexed.contains(&active_base) {
            recovery::check_not_sealed(io.as_ref(), &dir, active_base, &config)?;
        }
        // Index files are written only after their segment (and every older
        // one) was synced: the newest sealed segment whose indexes load is
        // the last proven durable point. Segments after it were rolled
        // without a sync on the append path and may be torn.
        let mut indexed = Vec::with_capacity(sealed.len());
        for &base in sealed {
            indexed.push(recovery::open_indexed(io.as_ref(), &dir, base)?);
        }
        let tail_start = indexed.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        let mut scanned = Vec::new();
        if tail_start < sealed.len() {
            for &base in &bases[tail_start..] {
                scanned.push(Some(recovery::scan_segment(io.as_ref(), &dir, base, &config)?));
            }
        }
        // A frame claiming a durable length vouches for every older segment.
        let vouched = scanned.iter().rposition(|s| s.as_ref().is_some_and(|s| s.claim_max > 0)).map(|j| tail_start + j);
        let mut visible = Vec::with_capacity(bases.len());
        let mut expected = sealed.first().copied();
        let mut cut_active = None;
        for (i, &base) in sealed.iter().enumerate() {
            let successor = bases[i + 1];
            let proven = i < tail_start || vouched.is_some_and(|j| i < j);
            if !proven {
                let s = scanned[i - tail_start].take().expect("each tail segment is scanned once");
                if let Some(cut) = s.torn(Some(successor)) {
                    let found = recovery::cut_torn(io.as_ref(), &dir, s, cut, &bases[i + 1..], &config, &mut report)?;
                    cut_active = Some(found);
                    break;
                }
            }
            let found = match indexed[i].take() {
                Some(found) => found,
                None => recovery::open_sealed(io.as_ref(), &dir, base, successor, &config, &mut report)?,
            };
            check_continuity(&found, expected)?;
            expected = Some(found.next_seq);
            visible.push(visible_of(&found));
        }
        let active = match cut_active {
            Some(active) => active,
            None => {
                let last = scanned.last_mut().and_then(Option::take);
                match last.and_then(|s| s.torn(None).map(|cut| (s, cut))) {
                    // Nothing older vouches for the active segment's invalid bytes: cut them.
                    Some((s, cut)) if vouched.is_none_or(|j| j < bases.len() - 1) => {
                        recovery::cut_torn(io.as_ref(), &dir, s, cut, &[], &config, &mut report)?
                    }
                    _ => recovery::open_active(io.as_ref(), &dir, active_base, &config, &mut report)?,
                }
            }
        };
        check_continuity(&active.found, expected)?;
        visible.push(visible_of(&active.found));
        report.segments = visible.len();
        let next_seq = active.found.next_seq;
        let last_ts = visible.iter().filter_map(|v| v.max_ts).max().unwrap_or(0);
        let damaged = active.damage.clone();
        let shared = Shared { segments: RwLock::new(visible), damage: Mutex::new(report.damage.clone()) };
        let config_background = config.background_seal;
        Ok(Self {
            dir,
            config,
            io,
            shared: Arc::new(shared),
            active: Active::from_found(active),
            pending: Vec::new(),
            next_seq,
            durable_next_seq: next_seq,
            last_ts,
            poisoned: None,
            damaged,
            report,
            sealer: Sealer::new(config_background),
            sealed_unpublished: Vec::new(),
        })
    }

    /// What recovery found and did when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A handle for reading from other threads.
    pub fn reader(&self) -> LogReader {
        LogReader { shared: self.shared.clone() }
    }

    /// The sequence number the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// One past the last record known to be durable.
    pub fn durable_next_seq(&self) -> u64 {
        self.durable_next_seq
    }

    /// Segment files the writer has, the active one included (readers may
    /// not see the newest ones before the next `publish` or `sync`).
    pub fn segments(&self) -> usize {
        let visible = self.shared.read();
        let last = visible.last().map(|v| v.segment.base_seq);
        let newer = self.sealed_unpublished.iter().map(|v| v.segment.base_seq).chain([self.active.segment.base_seq]);
        visible.len() + newer.filter(|&b| Some(b) > last).count()
    }

    /// The oldest stored sequence number (the trim horizon).
    pub fn first_seq(&self) -> u64 {
        self.reader().first_seq()
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The damage that makes the log read-only, if any (see [`Error::Damaged`]).
    pub fn read_only(&self) -> Option<&Damage> {
        self.damaged.as_ref()
    }

    /// Every damaged range known so far: found when opening, or by reads and
    /// [`verify`](Self::verify) since.
    pub fn damage(&self) -> Vec<Damage> {
        self.reader().damage()
    }

    /// Appends one batch with the given arrival time. The batch is buffered
    /// or written, not yet durable nor visible: call [`sync`](Self::sync)
    /// (or [`publish`](Self::publish)) before acknowledging it.
    pub fn append(&mut self, timestamp_ms: u64, records: &[RecordRef<'_>]) -> Result<Appended> {
        self.check_writable()?;
        crate::failpoint!("shardlog::append::before", &self.active.segment.path);
        let count = self.validate_batch(records)?;
        let len = format::frame_len(records.iter().map(|r| (r.partition_key, r.data)));
        if len > u64::from(self.config.batch_bytes_max) {
            return Err(Error::InvalidBatch {
                field: "bytes",
                reason: format!(
                    "batch encodes to {len} bytes, more than batch_bytes_max {}",
                    self.config.batch_bytes_max
                ),
            });
        }
        let timestamp_ms = timestamp_ms.max(self.last_ts);
        if self.should_roll(len, count, timestamp_ms) {
            self.roll()?;
        }
        let base_seq = self.next_seq;
        let position = self.active.len;
        let rel_seq = u32::try_from(base_seq - self.active.segment.base_seq)
            .expect("should_roll keeps relative sequences within u32");
        let fields = format::FrameFields {
            base_seq,
            timestamp_ms,
            count,
            len: len as u32,
            durable_len: u32::try_from(self.active.durable_len).expect("segment positions fit u32 (FORMAT.md)"),
        };
        format::encode_frame(&mut self.pending, fields, records.iter().map(|r| (r.partition_key, r.data)));
        if let Some(entries) = self.active.indexer.observe(rel_seq, position, len, timestamp_ms) {
            self.active.segment.index_mut().push(entries);
        }
        self.active.len += len;
        self.active.first_ts.get_or_insert(timestamp_ms);
        self.active.max_ts = Some(timestamp_ms);
        self.next_seq += u64::from(count);
        self.last_ts = timestamp_ms;
        if self.pending.len() >= self.config.write_buffer_bytes {
            self.flush_aligned()?;
        }
        Ok(Appended { first_seq: base_seq, next_seq: self.next_seq, timestamp_ms })
    }

    /// Writes buffered batches, makes everything appended so far durable
    /// (`fdatasync`) and visible to readers. One call covers every batch
    /// appended since the last: this is the group commit.
    ///
    /// Segments rolled since the last `sync` are synced by their seal jobs
    /// (see [`crate::seal`]); the active segment's `fdatasync` runs while
    /// they finish, and only when both are done does anything count as
    /// durable, so the durable point moves in log order.
    pub fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        self.flush_pending()?;
        if self.durable_next_seq != self.next_seq || self.active.durable_len != self.active.len {
            let r = self.sync_active();
            self.fail_on_err(r, "sync segment")?;
            let sealed = self.sealer.wait_synced();
            self.fail_on_err(sealed, "sync sealed segment")?;
            self.active.durable_len = self.active.len;
            self.durable_next_seq = self.next_seq;
        }
        self.publish_written();
        Ok(())
    }

    /// `fdatasync`s the active segment. Its bytes count as durable only
    /// once every older segment is synced too (see [`sync`](Self::sync)).
    fn sync_active(&mut self) -> Result<()> {
        crate::failpoint!("shardlog::sync::after_write_before_fsync", &self.active.segment.path);
        let path = &self.active.segment.path;
        self.active.segment.file.sync_data().map_err(io_err("sync segment", path))?;
        crate::failpoint!("shardlog::sync::after_fsync", path);
        Ok(())
    }

    /// Writes buffered batches and makes them visible to readers without
    /// making them durable, for the broker's `interval` and `never` modes.
    pub fn publish(&mut self) -> Result<()> {
        self.check_poisoned()?;
        self.flush_pending()?;
        self.publish_written();
        Ok(())
    }

    /// Syncs and closes the log, once every rolled segment's index files are written.
    pub fn close(mut self) -> Result<()> {
        self.sync()?;
        let sealed = self.sealer.wait_done();
        self.fail_on_err(sealed, "seal segment")
    }

    /// Blocks until every rolled segment is synced and has its index files.
    pub fn wait_sealed(&mut self) -> Result<()> {
        let sealed = self.sealer.wait_done();
        self.fail_on_err(sealed, "seal segment")
    }

    /// Reads up to `max_records` records (and about `max_bytes` of keys and
    /// data, but always at least one record if any is available) from `from_seq`.
    pub fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        self.reader().read(from_seq, max_records, max_bytes)
    }

    /// The first visible sequence number whose arrival time is at or after `timestamp_ms`.
    pub fn seq_at_or_after_timestamp(&self, timestamp_ms: u64) -> Result<u64> {
        self.reader().seq_at_or_after_timestamp(timestamp_ms)
    }

    /// Retention: deletes whole segments whose newest record is older than
    /// `cutoff_ms`, oldest first. An expired active segment is rolled first
    /// (its records synced, an empty successor made durable at `next_seq`)
    /// and then deleted too, so an idle shard does not keep expired records;
    /// sequence numbers never go back, and afterwards `first_seq == next_seq`.
    pub fn trim_before(&mut self, cutoff_ms: u64) -> Result<Trimmed> {
        // Timestamps never decrease, so an expired active segment means every
        // sealed one is expired too and the deletion below takes them all.
        let active_expired = self.active.len > FILE_HEADER_LEN
            && self.active.max_ts.is_some_and(|t| t < cutoff_ms)
            && self.damaged.is_none();
        if active_expired {
            self.check_poisoned()?;
            self.roll()?;
        }
        let expired_in = |visible: &[Visible]| {
            let sealed = visible.len() - 1;
            visible[..sealed].iter().take_while(|v| v.max_ts.is_none_or(|t| t < cutoff_ms)).cloned().collect::<Vec<_>>()
        };
        if !active_expired && expired_in(&self.shared.read()).is_empty() {
            return Ok(Trimmed { segments: 0, bytes: 0, first_seq: self.first_seq() });
        }
        // Removals take segments whose seal jobs may still run: they finish first.
        self.wait_sealed()?;
        self.publish_sealed();
        let expired = expired_in(&self.shared.read());
        if expired.is_empty() {
            return Ok(Trimmed { segments: 0, bytes: 0, first_seq: self.first_seq() });
        }
        // Oldest first, log before its indexes, a directory `fsync` after
        // each segment (so no file system can persist the removals out of
        // order): whatever a crash interrupts leaves a contiguous suffix of
        // segments and, at worst, orphaned index files that the next open
        // removes. Readers keep their open handles, so a segment stays
        // readable until it leaves the list below.
        let mut bytes = 0;
        for v in &expired {
            bytes += v.len;
            remove_if_present(self.io.as_ref(), &v.segment.path)?;
            crate::failpoint!("shardlog::retention::after_unlink", &v.segment.path);
            for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
                remove_if_present(self.io.as_ref(), &path_of(&self.dir, v.segment.base_seq, kind))?;
            }
            self.io.sync_dir(&self.dir).map_err(io_err("sync dir", &self.dir))?;
        }
        self.shared.write().drain(..expired.len());
        Ok(Trimmed { segments: expired.len(), bytes, first_seq: self.first_seq() })
    }

    /// Repair: removes every record after `seq`, so the next append gets
    /// `seq + 1`. A batch that straddles the cut is rewritten with its
    /// records up to `seq`. Readers racing with a truncation may see an error.
    pub fn truncate_after(&mut self, seq: u64) -> Result<()> {
        self.check_writable()?;
        let new_next = seq.saturating_add(1);
        let first = self.first_seq();
        if new_next < first || new_next > self.next_seq {
            return Err(Error::InvalidTruncate { seq, first, next: self.next_seq });
        }
        if new_next == self.next_seq {
            return Ok(());
        }
        self.sync()?;
        self.wait_sealed()?;
        let result = self.cut(new_next);
        self.fail_on_err(result, "truncate")
    }

    fn cut(&mut self, new_next: u64) -> Result<()> {
        let segments: Vec<Visible> = self.shared.read().clone();
        let target = segments.partition_point(|v| v.segment.base_seq <= new_next) - 1;
        self.remove_after(&segments, target)?;
        {
            // What was known about the cut and removed segments no longer holds.
            let mut known = self.shared.damage.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|d| segments[target..].iter().all(|v| v.segment.path != d.path));
        }
        let keep = &segments[target].segment;
        let file_len = keep.file.size().map_err(io_err("stat segment", &keep.path))?;
        let (start_seq, start_pos) = keep.index().floor(keep.base_seq, new_next);
        let mut cut: Option<(u64, Option<Vec<u8>>)> = None;
        let end =
            scan_frames(keep.file.as_ref(), start_pos, file_len, start_seq, Chunk::fixed(1 << 20), |pos, h, frame| {
                if h.next_seq() <= new_next {
                    return true;
                }
                let rewrite = (h.base_seq < new_next).then(|| {
                    let keep_n = (new_next - h.base_seq) as u32;
                    let kept: Vec<(&[u8], &[u8])> =
                        format::records(frame, keep_n).map(|(k, d)| (&frame[k], &frame[d])).collect();
                    let len = format::frame_len(kept.iter().copied()) as u32;
                    let mut out = Vec::with_capacity(len as usize);
                    // The rewritten batch sits where the old one did, so the old claim still holds.
                    let fields = format::FrameFields {
                        base_seq: h.base_seq,
                        timestamp_ms: h.timestamp_ms,
                        count: keep_n,
                        len,
                        durable_len: h.durable_len,
                    };
                    format::encode_frame(&mut out, fields, kept.into_iter());
                    out
                });
                cut = Some((pos, rewrite));
                false
            })
            .map_err(io_err("scan segment", &keep.path))?;
        match (end, cut) {
            (ScanEnd::Stopped, Some((pos, rewrite))) => {
                keep.file.set_len(pos).map_err(io_err("truncate segment", &keep.path))?;
                if let Some(frame) = rewrite {
                    keep.file.write_all_at(&frame, pos).map_err(io_err("rewrite batch", &keep.path))?;
                }
            }
            (ScanEnd::Clean { .. }, None) => {}
            (ScanEnd::Bad { pos, reason, .. }, _) => {
                return Err(self.shared.corrupt(&keep.path, pos, reason));
            }
            (end, cut) => unreachable!("scan ended {end:?} with cut {cut:?}"),
        }
        keep.file.sync_data().map_err(io_err("sync segment", &keep.path))?;
        let mut report = RecoveryReport::default();
        let found = recovery::open_active(self.io.as_ref(), &self.dir, keep.base_seq, &self.config, &mut report)?;
        if let Some(d) = found.damage {
            return Err(d.to_error());
        }
        debug_assert_eq!(found.found.next_seq, new_next, "the cut keeps exactly the records up to seq");
        {
            let mut visible = self.shared.write();
            visible.truncate(target);
            visible.push(visible_of(&found.found));
            // As a reopen would: the clamp continues from what remains.
            self.last_ts = visible.iter().filter_map(|v| v.max_ts).max().unwrap_or(0);
        }
        self.next_seq = found.found.next_seq;
        self.durable_next_seq = self.next_seq;
        self.active = Active::from_found(found);
        Ok(())
    }

    /// Removes every segment after `segments[target]` and the index files of
    /// `segments[target..]`, so `segments[target]` can become the active one.
    /// Index files go first (then a directory `fsync`), segment files newest
    /// first (a directory `fsync` after each): a crash at any point leaves a
    /// contiguous prefix of segments whose last one has no index files.
    fn remove_after(&self, segments: &[Visible], target: usize) -> Result<()> {
        for v in &segments[target..] {
            for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
                remove_if_present(self.io.as_ref(), &path_of(&self.dir, v.segment.base_seq, kind))?;
            }
        }
        self.io.sync_dir(&self.dir).map_err(io_err("sync dir", &self.dir))?;
        for v in segments[target + 1..].iter().rev() {
            remove_if_present(self.io.as_ref(), &v.segment.path)?;
            self.io.sync_dir(&self.dir).map_err(io_err("sync dir", &self.dir))?;
        }
        Ok(())
    }

    /// Reads every visible batch and checks its CRC; returns the first damage found.
    pub fn verify(&self) -> Result<()> {
        self.reader().verify()
    }

    /// What [`repair`](Self::repair) would do, or `None` if the log has no
    /// damage. Reads (and CRC-checks) every segment up to the first damage;
    /// changes nothing.
    pub fn repair_plan(&self) -> Result<Option<RepairPlan>> {
        let segments: Vec<Visible> = self.shared.read().clone();
        let Some((i, pos, first_lost_seq, reason)) = first_damage(&segments, &self.shared)? else {
            return Ok(None);
        };
        let v = &segments[i];
        let file_len = v.segment.file.size().map_err(io_err("stat segment", &v.segment.path))?;
        let cut_position = pos.max(FILE_HEADER_LEN);
        let mut bytes_removed = file_len.saturating_sub(cut_position);
        let mut segments_removed = Vec::new();
        for later in &segments[i + 1..] {
            bytes_removed += later.segment.file.size().map_err(io_err("stat segment", &later.segment.path))?;
            segments_removed.push(later.segment.path.clone());
        }
        Ok(Some(RepairPlan {
            damage: Damage { path: v.segment.path.clone(), position: pos, reason },
            cut_path: v.segment.path.clone(),
            cut_position,
            first_lost_seq,
            records_lost: self.next_seq.max(self.reader().next_seq()) - first_lost_seq,
            bytes_removed,
            segments_removed,
        }))
    }

    /// Applies a plan from [`repair_plan`](Self::repair_plan): removes the
    /// newer segments, cuts the damaged one at the damage (a damaged file
    /// header is rewritten), makes it all durable (`fdatasync` of the file,
    /// `fsync` of the directory) and reopens the log, which is then writable
    /// and continues at `first_lost_seq`. Records from there on are lost:
    /// this is an operator's decision. Fails with [`Error::StaleRepairPlan`]
    /// if the log changed since the plan was made.
    pub fn repair(&mut self, plan: &RepairPlan) -> Result<()> {
        let current = self.repair_plan()?;
        if current.as_ref() != Some(plan) {
            return Err(Error::StaleRepairPlan { reason: format!("the log now plans {current:?}") });
        }
        if self.damaged.is_none() {
            self.sync()?;
            self.wait_sealed()?;
        }
        let segments: Vec<Visible> = self.shared.read().clone();
        let target = segments.iter().position(|v| v.segment.path == plan.cut_path).expect("the plan names a segment");
        self.remove_after(&segments, target)?;
        let keep = &segments[target].segment;
        let file = keep.file.as_ref();
        if plan.damage.position < FILE_HEADER_LEN {
            file.set_len(0).map_err(io_err("truncate segment", &keep.path))?;
            file.write_all_at(&format::encode_file_header(FileKind::Log, keep.base_seq), 0)
                .map_err(io_err("write segment header", &keep.path))?;
        } else {
            file.set_len(plan.cut_position).map_err(io_err("truncate segment", &keep.path))?;
        }
        file.sync_data().map_err(io_err("sync segment", &keep.path))?;
        let fresh = Self::open_with_io(&self.dir, self.config.clone(), self.io.clone())?;
        // Readers handed out before the repair keep working: they share
        // `self.shared`, which takes the reopened log's state.
        *self.shared.write() = fresh.shared.read().clone();
        *self.shared.damage.lock().unwrap_or_else(|e| e.into_inner()) = fresh.damage();
        let shared = self.shared.clone();
        *self = Self { shared, ..fresh };
        Ok(())
    }

    fn validate_batch(&self, records: &[RecordRef<'_>]) -> Result<u32> {
        if records.is_empty() {
            return Err(Error::InvalidBatch { field: "records", reason: "a batch needs at least one record".into() });
        }
        if records.len() > self.config.batch_records_max as usize {
            return Err(Error::InvalidBatch {
                field: "records",
                reason: format!(
                    "{} records, more than batch_records_max {}",
                    records.len(),
                    self.config.batch_records_max
                ),
            });
        }
        for (index, r) in records.iter().enumerate() {
            validate_record(index, r, self.config.record_bytes_max)?;
        }
        Ok(records.len() as u32)
    }

    fn should_roll(&self, len: u64, count: u32, timestamp_ms: u64) -> bool {
        if self.active.len == FILE_HEADER_LEN {
            return false;
        }
        if self.active.version < format::VERSION {
            // A version-1 segment holds only version-1 frames; new batches go to a new file.
            return true;
        }
        let records_after = self.next_seq - self.active.segment.base_seq + u64::from(count);
        self.active.len + len > self.config.segment_bytes_max
            || self.active.first_ts.is_some_and(|t| timestamp_ms.saturating_sub(t) >= self.config.segment_age_max_ms)
            || records_after > u64::from(u32::MAX)
    }

    /// Seals the active segment and starts a new one. Only the new file is
    /// created here (its header written, nothing synced); the sealed
    /// segment's `fdatasync` and index files are a seal job (see
    /// [`crate::seal`]), so an append that rolls does not wait for the disk.
    /// Readers see the roll at the next `publish` or `sync`.
    fn roll(&mut self) -> Result<()> {
        self.flush_pending()?;
        let created = recovery::create_segment_unsynced(self.io.as_ref(), &self.dir, self.next_seq);
        let file = self.fail_on_err(created, "create segment")?;
        let path = path_of(&self.dir, self.next_seq, FileKind::Log);
        let segment = Arc::new(Segment::new(self.next_seq, path, file, SegmentIndex::default()));
        let fresh = Active {
            segment,
            len: FILE_HEADER_LEN,
            // Nothing of the new segment is synced, and older segments may not be either.
            durable_len: 0,
            version: format::VERSION,
            first_ts: None,
            max_ts: None,
            indexer: IndexBuilder::new(self.config.index_interval_bytes),
        };
        let old = std::mem::replace(&mut self.active, fresh);
        let index = old.segment.index().clone();
        self.sealed_unpublished.push(Visible {
            segment: old.segment.clone(),
            len: old.len,
            next_seq: self.next_seq,
            max_ts: old.max_ts,
        });
        let job = SealJob { io: self.io.clone(), dir: self.dir.clone(), segment: old.segment, index };
        let queued = self.sealer.push(job);
        self.fail_on_err(queued, "seal segment")
    }

    /// Writes every buffered batch (before a sync, a publish or a roll).
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let position = self.active.len - self.pending.len() as u64;
        let r = self.active.segment.file.write_all_at(&self.pending, position);
        self.fail_on_err(r, "write segment")?;
        self.pending.clear();
        Ok(())
    }

    /// Writes the buffered bytes up to the last multiple of
    /// [`write_align`] in the file and keeps the rest buffered (less than
    /// one alignment unit, so the buffer stays within `write_buffer_bytes`
    /// plus one unit plus one batch). A write that starts and ends on
    /// 64 KiB boundaries lets the page cache take it in large folios: `dd
    /// bs=1M` ran at 6.2 GB/s aligned and 5.6 GB/s starting at byte 1,000
    /// on this project's ext4 (kernel 6.18), and the appends of the
    /// no-sync benchmark were such unaligned half-MiB writes.
    fn flush_aligned(&mut self) -> Result<()> {
        let align = write_align(self.config.write_buffer_bytes);
        let start = self.active.len - self.pending.len() as u64;
        let end = self.active.len / align * align;
        if end <= start {
            return Ok(());
        }
        let n = (end - start) as usize;
        let r = self.active.segment.file.write_all_at(&self.pending[..n], start);
        self.fail_on_err(r, "write segment")?;
        self.pending.drain(..n);
        Ok(())
    }

    fn publish_written(&mut self) {
        debug_assert!(self.pending.is_empty(), "publish only what is written");
        let active = Visible {
            segment: self.active.segment.clone(),
            len: self.active.len,
            next_seq: self.next_seq,
            max_ts: self.active.max_ts,
        };
        let mut visible = self.shared.write();
        for v in self.sealed_unpublished.drain(..).chain([active]) {
            let last = visible.last_mut().expect("the log always has a segment");
            if last.segment.base_seq == v.segment.base_seq {
                *last = v;
            } else {
                visible.push(v);
            }
        }
    }

    /// Makes rolled (and now synced) segments visible, without publishing
    /// anything of the active segment that readers do not see yet.
    fn publish_sealed(&mut self) {
        let mut visible = self.shared.write();
        for v in self.sealed_unpublished.drain(..) {
            let last = visible.last_mut().expect("the log always has a segment");
            if last.segment.base_seq == v.segment.base_seq {
                *last = v;
            } else {
                visible.push(v);
            }
        }
        let base = self.active.segment.base_seq;
        if visible.last().is_some_and(|v| v.segment.base_seq != base) {
            visible.push(Visible {
                segment: self.active.segment.clone(),
                len: FILE_HEADER_LEN,
                next_seq: base,
                max_ts: None,
            });
        }
    }

    /// Fails if the log is poisoned, or a seal job failed since the last check (which poisons it).
    fn check_poisoned(&mut self) -> Result<()> {
        if self.poisoned.is_none() {
            let sealed = self.sealer.take_failure();
            self.fail_on_err(sealed, "seal segment")?;
        }
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    fn check_writable(&mut self) -> Result<()> {
        self.check_poisoned()?;
        match &self.damaged {
            Some(d) => Err(Error::Damaged { path: d.path.clone(), position: d.position, reason: d.reason.clone() }),
            None => Ok(()),
        }
    }

    /// Poisons the log on any failure of a write-path operation.
    fn fail_on_err<T, E: Into<ErrorSource>>(&mut self, r: std::result::Result<T, E>, op: &'static str) -> Result<T> {
        r.map_err(|e| {
            let err = match e.into() {
                ErrorSource::Io(source) => Error::Io { op, path: self.active.segment.path.clone(), source },
                ErrorSource::Log(err) => err,
            };
            self.poisoned = Some(err.to_string());
            err
        })
    }
}

/// Either kind of failure a write-path step can return.
enum ErrorSource {
    Io(std::io::Error),
    Log(Error),
}

impl From<std::io::Error> for ErrorSource {
    fn from(e: std::io::Error) -> Self {
        ErrorSource::Io(e)
    }
}

impl From<Error> for ErrorSource {
    fn from(e: Error) -> Self {
        ErrorSource::Log(e)
    }
}

fn remove_if_present(io: &dyn Io, path: &Path) -> Result<()> {
    match io.remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove index", path)(e)),
        _ => Ok(()),
    }
}

/// Finds the first damage in log order: the segment's index in `segments`,
/// the damaged byte, the first sequence number there, and the reason.
fn first_damage(segments: &[Visible], shared: &Shared) -> Result<Option<(usize, u64, u64, String)>> {
    for (i, v) in segments.iter().enumerate() {
        let header_damage = {
            let known = shared.damage.lock().unwrap_or_else(|e| e.into_inner());
            known.iter().find(|d| d.path == v.segment.path && d.position == 0).cloned()
        };
        if let Some(d) = header_damage {
            return Ok(Some((i, 0, v.segment.base_seq, d.reason)));
        }
        let end = scan_frames(
            v.segment.file.as_ref(),
            FILE_HEADER_LEN,
            v.len,
            v.segment.base_seq,
            VERIFY_CHUNK,
            |_, _, _| true,
        )
        .map_err(io_err("read segment", &v.segment.path))?;
        match end {
            ScanEnd::Bad { pos, next_seq, reason } => {
                shared.note_damage(&Damage { path: v.segment.path.clone(), position: pos, reason: reason.clone() });
                return Ok(Some((i, pos, next_seq, reason)));
            }
            ScanEnd::Clean { next_seq } if next_seq != v.next_seq => {
                let reason = format!("segment ends at sequence {next_seq}, its successor starts at {}", v.next_seq);
                return Ok(Some((i, v.len, next_seq, reason)));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Chunk size of whole-log scans.
const VERIFY_CHUNK: Chunk = Chunk::fixed(4 << 20);

fn visible_of(f: &Found) -> Visible {
    Visible { segment: f.segment.clone(), len: f.len, next_seq: f.next_seq, max_ts: f.max_ts }
}

fn check_continuity(found: &Found, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(e) if e != found.segment.base_seq => Err(Error::Corrupt {
            path: found.segment.path.clone(),
            position: 0,
            reason: format!(
                "segment starts at sequence {}, but the previous segment ends at {e}",
                found.segment.base_seq
            ),
        }),
        _ => Ok(()),
    }
}

/// The alignment of the append path's writes: the largest power of two
/// not above `write_buffer_bytes`, at most 64 KiB (1 for an unbuffered log).
fn write_align(write_buffer_bytes: usize) -> u64 {
    let unit = write_buffer_bytes.clamp(1, 64 * 1024);
    1 << unit.ilog2()
}

/// Checks one record against the format's and the configuration's limits.
pub fn validate_record(index: usize, r: &RecordRef<'_>, record_bytes_max: u32) -> Result<()> {
    let bad = |field, reason: String| Err(Error::InvalidRecord { index, field, reason });
    if r.partition_key.is_empty() {
        return bad("partition_key", "must not be empty".into());
    }
    if r.partition_key.len() > format::PARTITION_KEY_BYTES_MAX {
        return bad("partition_key", format!("{} bytes is more than 256 characters can take", r.partition_key.len()));
    }
    let Ok(key) = std::str::from_utf8(r.partition_key) else {
        return bad("partition_key", "must be valid UTF-8".into());
    };
    // A key of at most 256 bytes has at most 256 characters: only longer ones are counted.
    let chars = if key.len() <= format::PARTITION_KEY_CHARS_MAX { key.len() } else { key.chars().count() };
    if chars > format::PARTITION_KEY_CHARS_MAX {
        return bad("partition_key", format!("{chars} characters, more than 256"));
    }
    let size = r.partition_key.len() + r.data.len();
    if size > record_bytes_max as usize {
        return bad(
            "data",
            format!("record is {size} bytes (key + data), more than record_bytes_max {record_bytes_max}"),
        );
    }
    Ok(())
}

/// Reads a shard log from any thread, concurrently with its writer.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// How many segments one read may cross; a read stops early at that bound
/// and the caller continues from `next_seq`.
const READ_SEGMENTS_MAX: usize = 2;

/// Smallest first read of a scan for `read` and time lookups.
const READ_CHUNK_MIN: usize = 16 * 1024;

/// Bytes `read` expects per record when it sizes its first read.
const READ_BYTES_PER_RECORD: usize = 1024;

/// The largest single read of a `read` asked for `max_bytes`: room for a
/// batch's header and keys beyond the data, within sane bounds.
fn read_bytes_max(max_bytes: usize) -> usize {
    max_bytes.saturating_add(64 * 1024).clamp(READ_CHUNK_MIN, 16 << 20)
}

impl LogReader {
    /// The oldest readable sequence number (the trim horizon).
    pub fn first_seq(&self) -> u64 {
        self.shared.read()[0].segment.base_seq
    }

    /// Every damaged range known so far: found when the log was opened, or
    /// by reads and [`verify`](Self::verify) since. Reads that reach one fail
    /// with [`Error::Corrupt`]; everything else is served.
    pub fn damage(&self) -> Vec<Damage> {
        self.shared.damage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One past the newest readable sequence number.
    pub fn next_seq(&self) -> u64 {
        self.shared.read().last().map_or(0, |v| v.next_seq)
    }

    /// Size and extent of the readable log.
    pub fn stats(&self) -> LogStats {
        let segments = self.shared.read();
        LogStats {
            first_seq: segments[0].segment.base_seq,
            next_seq: segments.last().map_or(0, |v| v.next_seq),
            segments: segments.len(),
            bytes: segments.iter().map(|v| v.len).sum(),
            last_timestamp_ms: segments.iter().rev().find_map(|v| v.max_ts),
        }
    }

    /// See [`ShardLog::read`].
    pub fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        Ok(self.read_from(from_seq, max_records, max_bytes, ReadFrom::Disk)?.expect("a disk read always reads"))
    }

    /// As [`read`](Self::read), but only from the page cache and without
    /// blocking: `Ok(None)` when a read would wait for the disk or may copy
    /// more than 1 MiB (decided before reading anything), and then the
    /// caller reads with `read` on a blocking thread. A subscriber at the
    /// tail reads what was just written, which the page cache holds, so it
    /// needs no thread hop. Every other answer, errors included, is what
    /// `read` would give.
    pub fn read_cached(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<Option<ReadBatch>> {
        self.read_from(from_seq, max_records, max_bytes, ReadFrom::Cache)
    }

    fn read_from(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
        from: ReadFrom,
    ) -> Result<Option<ReadBatch>> {
        let window: Vec<Visible> = {
            let segments = self.shared.read();
            let first = segments[0].segment.base_seq;
            let next = segments.last().map_or(0, |v| v.next_seq);
            if from_seq < first {
                return Err(Error::SequenceTrimmed { requested: from_seq, first });
            }
            if from_seq > next {
                return Err(Error::SequenceBeyondEnd { requested: from_seq, next });
            }
            let i = segments.partition_point(|v| v.segment.base_seq <= from_seq) - 1;
            segments[i..].iter().take(READ_SEGMENTS_MAX).cloned().collect()
        };
        // A read from the cache is for a reader near the end: one that may
        // copy more than a mebibyte (far behind, with a large `max_bytes`)
        // declines before reading anything rather than part-way through.
        if from == ReadFrom::Cache {
            let visible: u64 = window
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let start = if i == 0 { v.segment.index().floor(v.segment.base_seq, from_seq).1 } else { 0 };
                    v.len.saturating_sub(start)
                })
                .sum();
            if visible.min(read_bytes_max(max_bytes) as u64) > CACHED_READ_BYTES_MAX as u64 {
                return Ok(None);
            }
        }
        let mut out = ReadBatch { records: Vec::new(), next_seq: from_seq };
        let mut bytes = 0usize;
        for v in &window {
            if out.records.len() >= max_records {
                break;
            }
            if out.next_seq >= v.next_seq {
                continue;
            }
            let (start_seq, start_pos) = v.segment.index().floor(v.segment.base_seq, out.next_seq);
            // A reader near the end (everything visible after the start is at
            // most twice what it wants, counting 1 KiB per record) reads all
            // of it with one `pread`: a subscriber at the tail gets a group
            // commit's batches at once instead of re-reading each batch that
            // outgrew a small first read. Otherwise start small (one index
            // interval and a few records fit) and grow only while the read
            // keeps wanting more, so a read of one record neither reads nor
            // allocates `max_bytes`.
            let max = read_bytes_max(max_bytes);
            let left = usize::try_from(v.len - start_pos).unwrap_or(usize::MAX);
            let wanted = (max_records - out.records.len()).saturating_mul(READ_BYTES_PER_RECORD);
            let first = if left <= wanted.saturating_mul(2).min(max) { left } else { READ_CHUNK_MIN };
            let chunk = Chunk { min: first.clamp(READ_CHUNK_MIN, max), max };
            let mut full = false;
            let scan =
                scan_frames_with(v.segment.file.as_ref(), start_pos, v.len, start_seq, chunk, from, |_, h, frame| {
                    if h.next_seq() <= out.next_seq {
                        return true;
                    }
                    for (i, (k, d)) in format::records(frame, h.record_count).enumerate() {
                        let seq = h.base_seq + i as u64;
                        if seq < out.next_seq {
                            continue;
                        }
                        let size = k.len() + d.len();
                        if out.records.len() >= max_records || (!out.records.is_empty() && bytes + size > max_bytes) {
                            full = true;
                            return false;
                        }
                        bytes += size;
                        out.records.push(Record {
                            seq,
                            timestamp_ms: h.timestamp_ms,
                            partition_key: frame.slice(k),
                            data: frame.slice(d),
                        });
                        out.next_seq = seq + 1;
                    }
                    true
                });
            let end = match scan {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && from == ReadFrom::Cache => return Ok(None),
                other => other.map_err(io_err("read segment", &v.segment.path))?,
            };
            if let ScanEnd::Bad { pos, reason, .. } = end {
                // Hand out what was read before the damage; the read that
                // starts at the damaged batch reports it.
                let err = self.shared.corrupt(&v.segment.path, pos, reason);
                if !out.records.is_empty() {
                    break;
                }
                return Err(err);
            }
            if full {
                break;
            }
        }
        Ok(Some(out))
    }

    /// See [`ShardLog::seq_at_or_after_timestamp`]. A timestamp after the
    /// newest record gives the visible end (where the next record will be).
    pub fn seq_at_or_after_timestamp(&self, timestamp_ms: u64) -> Result<u64> {
        let v = {
            let segments = self.shared.read();
            // Segments are few; a linear search stays correct around the
            // empty segment a roll leaves at the end.
            match segments.iter().find(|v| v.max_ts.is_some_and(|t| t >= timestamp_ms)) {
                Some(v) => v.clone(),
                None => return Ok(segments.last().map_or(0, |v| v.next_seq)),
            }
        };
        let (start_seq, start_pos) = v.segment.index().time_floor(v.segment.base_seq, timestamp_ms);
        let mut found = None;
        let end = scan_frames(
            v.segment.file.as_ref(),
            start_pos,
            v.len,
            start_seq,
            Chunk { min: READ_CHUNK_MIN, max: 1 << 20 },
            |_, h, _| {
                if h.timestamp_ms >= timestamp_ms {
                    found = Some(h.base_seq);
                    return false;
                }
                true
            },
        )
        .map_err(io_err("read segment", &v.segment.path))?;
        if let ScanEnd::Bad { pos, reason, .. } = end {
            return Err(self.shared.corrupt(&v.segment.path, pos, reason));
        }
        Ok(found.unwrap_or(v.next_seq))
    }

    /// See [`ShardLog::verify`].
    pub fn verify(&self) -> Result<()> {
        let segments: Vec<Visible> = self.shared.read().clone();
        for v in segments {
            let end = scan_frames(
                v.segment.file.as_ref(),
                FILE_HEADER_LEN,
                v.len,
                v.segment.base_seq,
                VERIFY_CHUNK,
                |_, _, _| true,
            )
            .map_err(io_err("read segment", &v.segment.path))?;
            if let ScanEnd::Bad { pos, reason, .. } = end {
                return Err(self.shared.corrupt(&v.segment.path, pos, reason));
            }
        }
        // A damaged file header is the one damage a frame scan cannot see.
        if let Some(d) = self.damage().into_iter().find(|d| d.position == 0) {
            return Err(d.to_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimIo;

    fn small() -> Config {
        Config {
            segment_bytes_max: 64 * 1024,
            index_interval_bytes: 256,
            write_buffer_bytes: 1024,
            batch_bytes_max: 64 * 1024,
            ..Config::default()
        }
    }

    fn open(io: &SimIo, config: Config) -> ShardLog {
        ShardLog::open_with_io("/shard", config, Arc::new(io.clone())).expect("open")
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
    }

    /// Appends `batches` batches of `per` records with 100-byte payloads, one ms apart.
    fn fill(log: &mut ShardLog, batches: u64, per: u64, t0: u64) {
        for b in 0..batches {
            let seq0 = log.next_seq();
            let data: Vec<Vec<u8>> = (0..per).map(|i| payload(seq0 + i, 100)).collect();
            let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"pk", data: d }).collect();
            log.append(t0 + b, &recs).expect("append");
        }
    }

    fn seqs(batch: &ReadBatch) -> Vec<u64> {
        batch.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn appends_write_whole_64k_units_and_a_sync_writes_the_rest() {
        let io = SimIo::new();
        let mut log = open(&io, Config::default());
        let data = vec![7u8; 1000];
        let recs: Vec<RecordRef<'_>> = (0..100).map(|_| RecordRef { partition_key: b"pk", data: &data }).collect();
        let mut written = Vec::new();
        for t in 0..20 {
            log.append(t, &recs).expect("append");
            written.push(log.active.segment.file.size().expect("size"));
        }
        assert!(written.iter().any(|&n| n > FILE_HEADER_LEN), "a full buffer is written before a sync: {written:?}");
        for n in &written {
            assert!(*n == FILE_HEADER_LEN || n % (64 * 1024) == 0, "a write ended off a 64 KiB boundary: {written:?}");
        }
        log.sync().expect("sync");
        assert_eq!(log.active.segment.file.size().expect("size"), log.active.len, "sync writes every buffered byte");
        let read = log.read(0, 10_000, usize::MAX).expect("read");
        assert_eq!(read.records.len(), 2000);
        assert!(read.records.iter().all(|r| r.data[..] == data[..]));
    }

    #[test]
    fn write_alignment_follows_the_buffer_up_to_64k() {
        assert_eq!(write_align(0), 1);
        assert_eq!(write_align(1024), 1024);
        assert_eq!(write_align(3000), 2048);
        assert_eq!(write_align(256 * 1024), 64 * 1024);
    }

    #[test]
    fn appended_records_read_back_from_any_position() {
        let io = SimIo::new();
        let mut log = open(&io, small());
        fill(&mut log, 150, 7, 1_000);
        log.sync().expect("sync");
        assert!(log.reader().stats().segments > 1, "64 KiB segments must have rolled");
        for from in [0, 1, 6, 7, 100, 349, 700, 1049] {
            let got = log.read(from, 1000, usize::MAX).expect("read");
            assert_eq!(seqs(&got).first().copied(), Some(from));
            assert!(got.next_seq > from, "a read crosses into the next segment");
            for r in &got.records {
                assert_eq!(&r.data[..], &payload(r.seq, 100)[..], "seq {}", r.seq);
                assert_eq!(r.timestamp_ms, 1_000 + r.seq / 7);
            }
        }
        let mut all = Vec::new();
        let mut from = 0;
        while from < 1050 {
            let got = log.read(from, 1000, usize::MAX).expect("read");
            all.extend(seqs(&got));
            from = got.next_seq;
        }
        assert_eq!(all, (0..1050).collect::<Vec<_>>());
    }

    #[test]
    fn limits_bound_a_read_but_one_record_always_fits() {
        let io = SimIo::new();
        let mut log = open(&io, small());
        fill(&mut log, 4, 10, 1);
        log.sync().expect("sync");
        assert_eq!(seqs(&log.read(3, 5, usize::MAX).expect("read")), vec![3, 4, 5, 6, 7]);
        assert_eq!(seqs(&log.read(3, 100, 250).expect("read")), vec![3, 4], "102 bytes each (key + data)");
        assert_eq!(seqs(&log.read(3, 100, 1).expect("read")), vec![3]);
        let end = log.read(40, 10, 100).expect("read at end");
        assert!(end.records.is_empty());
        assert_eq!(end.next_seq, 40);
    }

    #[test]
    fn nothing_is_visible_before_sync_or_publish() {
        let io = SimIo::new();
        let mut log = open(&io, small());
        let reader = log.reader();
        fill(&mut log, 3, 2, 1);
        assert_eq!(reader.next_seq(), 0);
        assert!(matches!(reader.read(1, 10, 100), Err(Error::SequenceBeyondEnd { requested: 1, next: 0 })));
        log.publish().expect("publish");
        assert_eq!(reader.next_seq(), 6);
        assert_eq!(log.durable_next_seq(), 0, "publish does not make anything durable");
        fill(&mut log, 1, 1, 5);
        log.sync().expect("sync");
        assert_eq!((reader.next_seq(), log.durable_next_seq()), (7, 7));
    }

    #[test]
    fn timestamps_never_go_backwards_and_time_lookup_finds_the_first_at_or_after() {
        let io = SimIo::new();
        let mut log = open(&io, small());
        let stamps = [100u64, 100, 105, 103, 200, 150, 400];
        for (i, &ts) in stamps.iter().enumerate() {
            let data = payload(i as u64, 3000);
            let a = log.append(ts, &[RecordRef { partition_key: b"k", data: &data }]).expect("append");
            assert_eq!(a.timestamp_ms, stamps[..=i].iter().copied().max().unwrap_or(0));
        }
        log.sync().expect("sync");
        // Stored: 100 100 105 105 200 200 400 at seqs 0..7.
        for (ts, want) in [(0, 0), (100, 0), (101, 2), (105, 2), (106, 4), (200, 4), (201, 6), (400, 6), (401, 7)] {
            assert_eq!(log.seq_at_or_after_timestamp(ts).expect("lookup"), want, "ts {ts}");
        }
    }

    #[test]
    fn segments_roll_by_age() {
        let io = SimIo::new();
        let mut log = open(&io, Config { segment_age_max_ms: 1_000, ..small() });
        fill(&mut log, 3, 1, 0);
        fill(&mut log, 1, 1, 999);
        assert_eq!(log.reader().stats().segments, 1);
        fill(&mut log, 1, 1, 1_000);
        log.sync().expect("sync");
        assert_eq!(log.reader().stats().segments, 2);
        let names = io.list_dir(Path::new("/shard")).expect("ls");
        assert!(names.contains(&"00000000000000000004.log".to_string()), "{names:?}");
    }

    #[test]
    fn retention_deletes_only_old_sealed_segments() {
        let io = SimIo::new();
        let mut log = open(&io, Config { segment_age_max_ms: 10, ..small() });
        for t in 0..5u64 {
            fill(&mut log, 10, 1, t * 10);
        }
        log.sync().expect("sync");
        assert_eq!(log.reader().stats().segments, 5);
        let t = log.trim_before(25).expect("trim");
        assert_eq!((t.segments, t.first_seq), (2, 20), "segments ending at ts 9 and 19 are older than 25");
        assert!(matches!(log.read(19, 1, 1), Err(Error::SequenceTrimmed { requested: 19, first: 20 })));
        assert_eq!(seqs(&log.read(20, 1, 1).expect("read")), vec![20]);
        let t = log.trim_before(41).expect("trim");
        assert_eq!((t.segments, t.first_seq), (2, 40), "the active segment holds a record at ts 49");
        let t = log.trim_before(u64::MAX).expect("trim everything");
        assert_eq!((t.segments, t.first_seq), (1, 50), "an expired active segment is rolled and deleted");
        assert_eq!((log.first_seq(), log.next_seq()), (50, 50), "sequence numbers never go back");
        assert_eq!(log.reader().stats().segments, 1);
        let names = io.list_dir(Path::new("/shard")).expect("ls");
        assert_eq!(names, vec!["00000000000000000050.log".to_string()]);
        assert!(matches!(log.read(49, 1, 1), Err(Error::SequenceTrimmed { requested: 49, first: 50 })));
        fill(&mut log, 1, 1, 100);
        log.sync().expect("sync");
        drop(log);
        let log = open(&io, small());
        assert_eq!((log.first_seq(), log.next_seq()), (50, 51));
    }

    #[test]
    fn an_idle_expired_active_segment_is_removed_crash_safely_at_every_step() {
        use crate::io::{FaultKind, FaultyIo};
        for kind in [FaultKind::Write, FaultKind::Sync] {
            for after in 0..12 {
                let sim = SimIo::new();
                let faulty = FaultyIo::new(Arc::new(sim.clone()));
                let mut log = ShardLog::open_with_io("/shard", small(), Arc::new(faulty.clone())).expect("open");
                fill(&mut log, 5, 2, 100);
                log.sync().expect("sync");
                faulty.fail_after(kind, after, false);
                let trimmed = log.trim_before(1_000);
                drop(log);
                sim.crash(Some(after + 1));
                let log = open(&sim, small());
                let (first, next) = (log.first_seq(), log.next_seq());
                assert_eq!(next, 10, "{kind:?} after {after}: no record lost or invented ({trimmed:?})");
                assert!(first == 0 || first == 10, "{kind:?} after {after}: all or nothing, got first {first}");
                if trimmed.is_ok() {
                    assert_eq!(first, 10, "{kind:?} after {after}: a successful trim is durable");
                }
                if first == 0 {
                    assert_eq!(seqs(&log.read(0, 100, usize::MAX).expect("read")), (0..10).collect::<Vec<_>>());
                }
                assert!(log.recovery_report().damage.is_empty());
            }
        }
    }

    #[test]
    fn truncate_after_cuts_inside_a_batch_and_across_segments() {
        let io = SimIo::new();
        let mut log = open(&io, small());
        fill(&mut log, 200, 5, 7);
        log.sync().expect("sync");
        let segments_before = log.reader().stats().segments;
        log.truncate_after(12).expect("truncate mid-batch");
        assert_eq!(log.next_seq(), 13);
        assert_eq!(log.reader().stats().segments, 1);
        assert!(segments_before > 1);
        let got = log.read(0, 100, usize::MAX).expect("read");
        assert_eq!(seqs(&got), (0..13).collect::<Vec<_>>());
        fill(&mut log, 1, 2, 9);
        log.sync().expect("sync");
        drop(log);
        let log = open(&io, small());
        assert!(log.recovery_report().is_clean(), "{:?}", log.recovery_report());
        let got = log.read(10, 100, usize::MAX).expect("read");
        assert_eq!(seqs(&got), vec![10, 11, 12, 13, 14]);
        assert_eq!(&got.records[3].data[..], &payload(13, 100)[..]);
        let mut log = log;
        assert!(matches!(log.truncate_after(15), Err(Error::InvalidTruncate { .. })));
    }

    #[test]
    fn bad_records_and_batches_name_the_field() {
        let io = SimIo::new();
        let mut log = open(&io, Config { record_bytes_max: 1100, batch_records_max: 3, ..small() });
        let long_key = "k".repeat(257);
        let emoji_key = "😀".repeat(256);
        let too_many_emoji = "😀".repeat(257);
        let big = vec![0u8; 1100];
        let cases: Vec<(&[u8], &[u8], &str)> = vec![
            (b"", b"x", "partition_key"),
            (long_key.as_bytes(), b"x", "partition_key"),
            (too_many_emoji.as_bytes(), b"x", "partition_key"),
            (&[0xff, 0xfe], b"x", "partition_key"),
            (b"k", &big, "data"),
        ];
        for (key, data, field) in cases {
            let ok = RecordRef { partition_key: b"fine", data: b"x" };
            match log.append(1, &[ok, RecordRef { partition_key: key, data }]) {
                Err(Error::InvalidRecord { index: 1, field: f, .. }) => assert_eq!(f, field),
                other => panic!("key {key:?}: expected InvalidRecord on {field}, got {other:?}"),
            }
        }
        assert!(log.append(1, &[RecordRef { partition_key: emoji_key.as_bytes(), data: b"x" }]).is_ok());
        assert!(matches!(log.append(1, &[]), Err(Error::InvalidBatch { field: "records", .. })));
        let r = RecordRef { partition_key: b"k", data: b"x" };
        assert!(matches!(log.append(1, &[r; 4]), Err(Error::InvalidBatch { field: "records", .. })));
        let mut log = open(&SimIo::new(), Config { batch_bytes_max: 100, ..small() });
        let r = RecordRef { partition_key: b"k", data: &[0; 40] };
        assert!(matches!(log.append(1, &[r, r]), Err(Error::InvalidBatch { field: "bytes", .. })));
        assert_eq!(log.next_seq(), 0, "rejected batches assign no sequence numbers");
    }
}
