//! Opening a shard directory after a clean stop or a crash.
//!
//! The rule is **same damage, same outcome**: wherever invalid bytes are
//! found, opening either cuts them because they provably were never
//! acknowledged (a torn tail), or records them as [`Damage`] and serves
//! everything else. Damage never makes the whole log refuse to open; the
//! only refusals are inconsistencies between files that no cut can explain
//! (a missing segment in the middle or at the end, overlapping segments).
//!
//! - **The tail of the active (last) segment** may be torn: after a power
//!   loss, any subset of the pages written since the last `fdatasync` may
//!   have reached the disk, in any order, so a zeroed or stale gap can be
//!   followed by an intact later page. Every version-2 batch carries its
//!   segment's *durable length* at the time it was appended: the bytes the
//!   last successful `fdatasync` had covered. At the first invalid byte `P`,
//!   the rest of the segment is searched (streamed, with bounded work, see
//!   [`find_next_frame`]) for valid batches later in the sequence; `D` is the
//!   largest durable length any of them claims. If `P >= D`, nothing from
//!   `P` on was ever synced, so nothing there was acknowledged: the file is
//!   cut at `P` (`ftruncate` + `fdatasync`). If `P < D`, bytes that an
//!   `fdatasync` covered are damaged: that is real damage, the segment is
//!   left untouched, recorded as [`Damage`], and the log opens
//!   **read-only** (appends fail with [`Error::Damaged`]) until repaired.
//! - **The residual window.** Damage inside the last synced group (bytes
//!   synced by the last successful `fdatasync`, with no later batch on disk
//!   to vouch for them) cannot be told from a torn write without an extra
//!   write per commit; it is cut like a torn tail. A later batch, once it
//!   reaches the disk, closes the window for everything before it.
//! - **Version-1 active segments** carry no durable lengths; for them any
//!   valid batch later in the sequence after the first invalid byte makes
//!   the damage real (read-only), as before version 2.
//! - **Rolled segments may be torn too.** A roll does not sync on the
//!   append path (see [`crate::seal`]): a sealed segment is proven synced
//!   once its index files are written (a seal writes them only after the
//!   segment's `fdatasync`, and seals run in roll order), or once any newer
//!   segment holds a batch claiming a durable length above 0 (`sync` counts
//!   a segment durable only after every older one is synced). Every segment
//!   after the last proven point is treated as the active segment's tail
//!   is: at its first byte that nothing vouches for (an invalid header, an
//!   invalid batch no later batch of it vouches past, or an end short of
//!   its successor's base) it is cut, every newer segment is removed, and it
//!   becomes the active segment. Kept segments there are `fdatasync`ed (and
//!   get index files) before the log opens, so appends may vouch for them.
//! - **Proven sealed segments** are never cut. Their index files carry a
//!   CRC and are checked structurally, and the batches after the last index
//!   entry are CRC-checked to reach the file's end exactly; any mismatch
//!   rebuilds both indexes from the log. Damage found while rebuilding (in
//!   any frame, the last one included) is recorded as [`Damage`]: the batches
//!   before it and the valid batches after it are indexed and served, a read
//!   that reaches it fails with [`Error::Corrupt`] naming file and byte, and
//!   the segment's end in the sequence is its successor's base. Damage
//!   deeper inside a segment whose indexes load cleanly is reported by the
//!   read that reaches it (every read checks the CRC of what it returns)
//!   and by [`ShardLog::verify`](crate::ShardLog::verify).
//! - **A segment file whose header is short or invalid** while no batch of
//!   it claims a durable length was created by a roll that never synced it:
//!   it holds nothing acknowledged, its header is rewritten and newer
//!   segments are removed. With a vouching batch, an invalid header is
//!   damage (read-only, as above).
//! - **Index files whose log is gone** are leftovers of a retention delete
//!   that crashed half-way, and are removed.
//! - **A last segment with index files** was sealed, so its successor
//!   existed and is gone: opening refuses with [`Error::Corrupt`] naming the
//!   missing file rather than reuse its sequence numbers. (A seal writes the
//!   sealed segment's index files only after a directory `fsync` made the
//!   successor's entry durable, and
//!   every removal takes index files away before segment files, so no crash
//!   leaves this state. Version-1 index files are let through: the version-1
//!   writer wrote them before creating the successor.)
//!
//! Recovery is idempotent: a second open of a recovered directory changes
//! nothing (the tests reopen every damaged log twice to check this).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result, io_err};
use crate::format::{self, FILE_HEADER_LEN, FileKind, FrameHeader};
use crate::io::{Io, IoFile, OpenMode};
use crate::segment::{Chunk, IndexBuilder, ScanEnd, Search, Segment, SegmentIndex, find_next_frame, scan_frames};

/// A damaged byte range found in a segment file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Damage {
    /// The damaged segment file.
    pub path: PathBuf,
    /// Byte position of the first invalid byte.
    pub position: u64,
    /// What is wrong there.
    pub reason: String,
}

impl Damage {
    /// The error a read reaching this damage returns.
    pub fn to_error(&self) -> Error {
        Error::Corrupt { path: self.path.clone(), position: self.position, reason: self.reason.clone() }
    }
}

/// What recovery found and did when a log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after opening.
    pub segments: usize,
    /// Bytes cut from the tail of the active segment.
    pub truncated_bytes: u64,
    /// Where the active segment was cut, with the reason the bytes there were invalid.
    pub truncated_at: Option<(PathBuf, u64, String)>,
    /// Damage found and left in place (see the module docs), in log order.
    pub damage: Vec<Damage>,
    /// Set when the active segment is damaged in its synced part: the log is read-only.
    pub read_only: Option<Damage>,
    /// Segments whose index files were rebuilt from the log.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Segment files whose header was rewritten (an interrupted roll).
    pub repaired_headers: Vec<PathBuf>,
    /// Index files without a log that were removed.
    pub removed_orphans: Vec<PathBuf>,
    /// Segments after a torn one, removed: they followed bytes that were
    /// never synced, so nothing in them was acknowledged as durable.
    pub removed_segments: Vec<PathBuf>,
    /// Files in the directory that this crate does not own, left untouched.
    pub ignored_files: Vec<String>,
}

impl RecoveryReport {
    /// True when opening needed no repair of any kind and found no damage.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.damage.is_empty()
            && self.rebuilt_indexes.is_empty()
            && self.repaired_headers.is_empty()
            && self.removed_orphans.is_empty()
            && self.removed_segments.is_empty()
    }
}

/// State of a segment as found on disk.
#[derive(Debug)]
pub(crate) struct Found {
    pub segment: Arc<Segment>,
    pub len: u64,
    pub next_seq: u64,
    pub first_ts: Option<u64>,
    pub max_ts: Option<u64>,
}

/// The active segment as found on disk, with the index builder positioned
/// after its last batch so appends continue the same indexing rhythm.
#[derive(Debug)]
pub(crate) struct FoundActive {
    pub found: Found,
    pub indexer: IndexBuilder,
    /// Format version of the segment file.
    pub version: u16,
    /// Damage in the synced part: the log must not be written.
    pub damage: Option<Damage>,
}

/// Chunk size for sequential scans during recovery.
const SCAN_CHUNK: Chunk = Chunk::fixed(4 * 1024 * 1024);

pub(crate) fn path_of(dir: &Path, base_seq: u64, kind: FileKind) -> PathBuf {
    dir.join(format::file_name(base_seq, kind))
}

/// The segments of a directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Base sequence numbers of the segment files, in order.
    pub bases: Vec<u64>,
    /// Bases that have an offset or time index file.
    pub indexed: BTreeSet<u64>,
}

/// Lists the directory, removes orphaned index files and returns the
/// segments' base sequence numbers in order.
pub(crate) fn list_segments(io: &dyn Io, dir: &Path, report: &mut RecoveryReport) -> Result<Listing> {
    let names = io.list_dir(dir).map_err(io_err("list", dir))?;
    let mut kinds: BTreeMap<u64, Vec<FileKind>> = BTreeMap::new();
    for name in names {
        match format::parse_file_name(&name) {
            Some((base, kind)) => kinds.entry(base).or_default().push(kind),
            None => report.ignored_files.push(name),
        }
    }
    report.ignored_files.sort();
    let mut listing = Listing::default();
    let mut removed = false;
    for (base, ks) in kinds {
        if ks.contains(&FileKind::Log) {
            listing.bases.push(base);
            if ks.len() > 1 {
                listing.indexed.insert(base);
            }
            continue;
        }
        for kind in ks {
            let path = path_of(dir, base, kind);
            io.remove_file(&path).map_err(io_err("remove orphaned index", &path))?;
            report.removed_orphans.push(path);
            removed = true;
        }
    }
    if removed {
        io.sync_dir(dir).map_err(io_err("sync dir", dir))?;
    }
    Ok(listing)
}

/// Creates an empty segment file whose header is durable, and makes its
/// directory entry durable.
pub(crate) fn create_segment(io: &dyn Io, dir: &Path, base_seq: u64) -> Result<Arc<dyn IoFile>> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::CreateNew).map_err(io_err("create segment", &path))?;
    file.write_all_at(&format::encode_file_header(FileKind::Log, base_seq), 0)
        .map_err(io_err("write segment header", &path))?;
    file.sync_data().map_err(io_err("sync segment header", &path))?;
    io.sync_dir(dir).map_err(io_err("sync dir", dir))?;
    Ok(file)
}

/// Creates a segment file with its header written but nothing synced:
/// the roll's half that stays on the append path. The seal job of the
/// segment before it makes the directory entry durable; the header becomes
/// durable with the first `sync` of the new segment (until then recovery
/// treats a torn header as never written, see the module docs).
pub(crate) fn create_segment_unsynced(io: &dyn Io, dir: &Path, base_seq: u64) -> Result<Arc<dyn IoFile>> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::CreateNew).map_err(io_err("create segment", &path))?;
    crate::failpoint!("shardlog::roll::after_create", &path);
    file.write_all_at(&format::encode_file_header(FileKind::Log, base_seq), 0)
        .map_err(io_err("write segment header", &path))?;
    Ok(file)
}

fn read_header(file: &dyn IoFile, path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut header = vec![0u8; len.min(FILE_HEADER_LEN) as usize];
    file.read_exact_at(&mut header, 0).map_err(io_err("read header", path))?;
    Ok(header)
}

fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt { path: path.to_path_buf(), position, reason: reason.into() }
}

fn damage(path: &Path, position: u64, reason: impl Into<String>) -> Damage {
    Damage { path: path.to_path_buf(), position, reason: reason.into() }
}

/// The state of a scan over a segment's valid frames, with the index built so far.
#[derive(Debug, Clone)]
struct FullScan {
    index: SegmentIndex,
    indexer: IndexBuilder,
    /// End of the last valid frame.
    valid_len: u64,
    /// One past the last valid frame's last sequence number.
    next_seq: u64,
    first_ts: Option<u64>,
    max_ts: Option<u64>,
    /// The largest durable length a valid frame claims.
    claim_max: u64,
}

impl FullScan {
    fn new(base_seq: u64, config: &Config) -> Self {
        Self {
            index: SegmentIndex::default(),
            indexer: IndexBuilder::new(config.index_interval_bytes),
            valid_len: FILE_HEADER_LEN,
            next_seq: base_seq,
            first_ts: None,
            max_ts: None,
            claim_max: 0,
        }
    }

    fn observe(&mut self, base_seq: u64, pos: u64, h: &FrameHeader) {
        let rel = u32::try_from(h.base_seq - base_seq).unwrap_or(u32::MAX);
        if let Some(entries) = self.indexer.observe(rel, pos, u64::from(h.len), h.timestamp_ms) {
            self.index.push(entries);
        }
        self.valid_len = pos + u64::from(h.len);
        self.next_seq = h.next_seq();
        self.first_ts.get_or_insert(h.timestamp_ms);
        self.max_ts = Some(h.timestamp_ms);
        self.claim_max = self.claim_max.max(u64::from(h.durable_len));
    }
}

/// Where a scan from the header first stopped at invalid bytes.
#[derive(Debug, Clone)]
struct Bad {
    pos: u64,
    next_seq: u64,
    reason: String,
}

/// Scans a segment from its header up to the first invalid bytes.
fn full_scan(
    file: &dyn IoFile,
    path: &Path,
    base_seq: u64,
    len: u64,
    config: &Config,
) -> Result<(FullScan, Option<Bad>)> {
    let mut scan = FullScan::new(base_seq, config);
    let end = scan_frames(file, FILE_HEADER_LEN, len, base_seq, SCAN_CHUNK, |pos, h, _| {
        scan.observe(base_seq, pos, h);
        true
    })
    .map_err(io_err("scan segment", path))?;
    let bad = match end {
        ScanEnd::Clean { .. } => None,
        ScanEnd::Bad { pos, next_seq, reason } => Some(Bad { pos, next_seq, reason }),
        ScanEnd::Stopped => unreachable!("the full scan visitor never stops"),
    };
    Ok((scan, bad))
}

/// What lies after the first invalid bytes of a segment.
#[derive(Debug, Default)]
struct AfterDamage {
    /// Every invalid range start, the first included, with its reason.
    damage: Vec<(u64, String)>,
    /// Valid frames found after the first invalid bytes.
    frames: u64,
    /// The largest durable length those frames claim.
    claim_max: u64,
    /// The search ran out of budget: what follows is unknown.
    exhausted: bool,
}

/// From the first invalid bytes on, finds every later valid frame that
/// continues the sequence (resynchronising after each invalid range),
/// indexing them into `scan`. The search work is bounded (see
/// [`find_next_frame`]): a few passes over the bytes after the damage plus
/// one largest frame.
fn scan_after_damage(
    file: &dyn IoFile,
    path: &Path,
    base_seq: u64,
    len: u64,
    scan: &mut FullScan,
    first: &Bad,
) -> Result<AfterDamage> {
    let mut after = AfterDamage { damage: vec![(first.pos, first.reason.clone())], ..AfterDamage::default() };
    let mut budget = 4 * (len - first.pos) + u64::from(format::FRAME_BYTES_MAX);
    let seq_max = base_seq.saturating_add(u64::from(u32::MAX));
    let (mut bad_pos, mut expected) = (first.pos, first.next_seq);
    loop {
        let found = match find_next_frame(file, bad_pos, len, expected, seq_max, &mut budget)
            .map_err(io_err("search segment", path))?
        {
            Search::Found(f) => f,
            Search::None => return Ok(after),
            Search::Exhausted => {
                after.exhausted = true;
                return Ok(after);
            }
        };
        scan.indexer.force_next();
        let end = scan_frames(file, found.pos, len, found.header.base_seq, SCAN_CHUNK, |pos, h, _| {
            scan.observe(base_seq, pos, h);
            after.frames += 1;
            after.claim_max = after.claim_max.max(u64::from(h.durable_len));
            true
        })
        .map_err(io_err("scan segment", path))?;
        match end {
            ScanEnd::Clean { .. } => return Ok(after),
            ScanEnd::Bad { pos, next_seq, reason } => {
                after.damage.push((pos, reason));
                (bad_pos, expected) = (pos, next_seq);
            }
            ScanEnd::Stopped => unreachable!("the scan visitor never stops"),
        }
    }
}

/// Opens a segment that has a successor starting at `successor_base`.
/// Never modifies its log file.
pub(crate) fn open_sealed(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    successor_base: u64,
    config: &Config,
    report: &mut RecoveryReport,
) -> Result<Found> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let header = read_header(file.as_ref(), &path, len)?;
    let header_damage = format::check_file_header(&header, FileKind::Log, base_seq).err();
    if header_damage.is_none() && len == FILE_HEADER_LEN {
        let segment = Arc::new(Segment::new(base_seq, path, file, SegmentIndex::default()));
        return Ok(Found { segment, len, next_seq: base_seq, first_ts: None, max_ts: None });
    }
    if header_damage.is_none() {
        if let Some(found) = load_indexes(io, dir, base_seq, &path, &file, len)? {
            return Ok(found);
        }
    }
    sealed_scanned(io, dir, base_seq, successor_base, config, report, path, file, len, header_damage)
}

/// Opens a sealed segment whose index files were proven to be written
/// (they load and check out): `None` if they do not.
pub(crate) fn open_indexed(io: &dyn Io, dir: &Path, base_seq: u64) -> Result<Option<Found>> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let header = read_header(file.as_ref(), &path, len)?;
    if format::check_file_header(&header, FileKind::Log, base_seq).is_err() || len <= FILE_HEADER_LEN {
        return Ok(None);
    }
    load_indexes(io, dir, base_seq, &path, &file, len)
}

/// The rest of [`open_sealed`] after its index files did not load: a full
/// scan, damage reported (nothing cut), indexes rebuilt when there is none.
#[allow(clippy::too_many_arguments)]
fn sealed_scanned(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    successor_base: u64,
    config: &Config,
    report: &mut RecoveryReport,
    path: PathBuf,
    file: Arc<dyn IoFile>,
    len: u64,
    header_damage: Option<String>,
) -> Result<Found> {
    if header_damage.is_none() && len == FILE_HEADER_LEN {
        let segment = Arc::new(Segment::new(base_seq, path, file, SegmentIndex::default()));
        return Ok(Found { segment, len, next_seq: base_seq, first_ts: None, max_ts: None });
    }
    let (mut scan, bad) = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    let mut damages = Vec::new();
    if let Some(reason) = header_damage {
        damages.push(damage(&path, 0, format!("sealed segment file header: {reason}")));
    }
    if let Some(bad) = bad {
        let after = scan_after_damage(file.as_ref(), &path, base_seq, len, &mut scan, &bad)?;
        damages.extend(
            after.damage.into_iter().map(|(pos, reason)| damage(&path, pos, format!("sealed segment: {reason}"))),
        );
    }
    if damages.is_empty() {
        // Index files vouch that their segment is synced (see `seal`): make it so first.
        file.sync_data().map_err(io_err("sync segment", &path))?;
        write_indexes(io, dir, base_seq, &scan.index)?;
        report.rebuilt_indexes.push(path.clone());
        let segment = Arc::new(Segment::new(base_seq, path, file, scan.index));
        return Ok(Found { segment, len, next_seq: scan.next_seq, first_ts: scan.first_ts, max_ts: scan.max_ts });
    }
    // The records in the damaged ranges are unknown; the successor's base
    // says where this segment's sequence ended. Index files are not written,
    // so every open finds and reports the damage again.
    if scan.next_seq > successor_base {
        return Err(corrupt(
            &path,
            scan.valid_len,
            format!("segment holds sequence {} but its successor starts at {successor_base}", scan.next_seq - 1),
        ));
    }
    report.damage.extend(damages);
    let segment = Arc::new(Segment::new(base_seq, path, file, scan.index));
    Ok(Found { segment, len, next_seq: successor_base, first_ts: scan.first_ts, max_ts: scan.max_ts })
}

/// Loads and checks a sealed segment's index files. `None` means they are
/// missing, fail their checksum or are inconsistent with the log, and must
/// be rebuilt; I/O errors other than a missing file are returned.
fn load_indexes(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    path: &Path,
    file: &Arc<dyn IoFile>,
    len: u64,
) -> Result<Option<Found>> {
    // No index can have more entries than the log has batches.
    let batches_max = len / u64::from(format::FRAME_BYTES_MIN) + 1;
    let read = |kind: FileKind, entry_len: usize| -> Result<Option<Vec<u8>>> {
        let p = path_of(dir, base_seq, kind);
        let f = match io.open(&p, OpenMode::Existing) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open index", &p)(e)),
        };
        let n = f.size().map_err(io_err("stat index", &p))?;
        if n > FILE_HEADER_LEN + batches_max * entry_len as u64 + format::INDEX_TRAILER_LEN as u64 {
            return Ok(None);
        }
        let mut buf = vec![0u8; n as usize];
        f.read_exact_at(&mut buf, 0).map_err(io_err("read index", &p))?;
        Ok(Some(buf))
    };
    let (Some(offsets), Some(times)) =
        (read(FileKind::OffsetIndex, format::OFFSET_ENTRY_LEN)?, read(FileKind::TimeIndex, format::TIME_ENTRY_LEN)?)
    else {
        return Ok(None);
    };
    let (Ok(offsets), Ok(times)) =
        (format::decode_offset_index(&offsets, base_seq), format::decode_time_index(&times, base_seq))
    else {
        return Ok(None);
    };
    let index = SegmentIndex { offsets, times };
    if index.check(len).is_err() {
        return Ok(None);
    }
    // Batches after the last entry must be valid and end exactly at the file's end.
    let last = *index.offsets.last().expect("check() ensures an entry");
    let mut max_ts = None;
    let end = scan_frames(
        file.as_ref(),
        u64::from(last.position),
        len,
        base_seq + u64::from(last.rel_seq),
        SCAN_CHUNK,
        |_, h, _| {
            max_ts = Some(h.timestamp_ms);
            true
        },
    )
    .map_err(io_err("scan segment tail", path))?;
    let ScanEnd::Clean { next_seq } = end else { return Ok(None) };
    if index.times.last().map(|t| t.timestamp_ms) > max_ts {
        return Ok(None);
    }
    let first_ts = index.times.first().map(|t| t.timestamp_ms);
    let segment = Arc::new(Segment::new(base_seq, path.to_path_buf(), file.clone(), index));
    Ok(Some(Found { segment, len, next_seq, first_ts, max_ts }))
}

/// Writes a sealed segment's index files and makes them durable (each file
/// `fdatasync`ed, then the directory `fsync`ed), so the next open does not
/// have to rebuild them.
pub(crate) fn write_indexes(io: &dyn Io, dir: &Path, base_seq: u64, index: &SegmentIndex) -> Result<()> {
    for (kind, bytes) in [
        (FileKind::OffsetIndex, format::encode_offset_index(base_seq, &index.offsets)),
        (FileKind::TimeIndex, format::encode_time_index(base_seq, &index.times)),
    ] {
        let p = path_of(dir, base_seq, kind);
        let f = io.open(&p, OpenMode::CreateTruncate).map_err(io_err("create index", &p))?;
        f.write_all_at(&bytes, 0).map_err(io_err("write index", &p))?;
        f.sync_data().map_err(io_err("sync index", &p))?;
    }
    io.sync_dir(dir).map_err(io_err("sync dir", dir))
}

/// Refuses a directory whose last segment has index files: it was sealed,
/// so its successor existed and is gone (see the module docs). Version-1
/// index files are the exception: the version-1 writer wrote them before
/// creating the successor, so a crash in between left exactly this state.
pub(crate) fn check_not_sealed(io: &dyn Io, dir: &Path, base_seq: u64, config: &Config) -> Result<()> {
    for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
        let p = path_of(dir, base_seq, kind);
        let Ok(f) = io.open(&p, OpenMode::Existing) else { continue };
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if f.read_exact_at(&mut header, 0).is_ok() && format::check_file_header(&header, kind, base_seq) == Ok(1) {
            return Ok(());
        }
    }
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let (scan, _) = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    let missing = path_of(dir, scan.next_seq, FileKind::Log);
    Err(corrupt(
        &path,
        0,
        format!(
            "the newest segment has index files, so it was sealed, but its successor {} is missing; \
             refusing to reuse sequence numbers from {}",
            missing.display(),
            scan.next_seq
        ),
    ))
}

/// Opens the newest segment: full CRC scan, torn-tail repair or damage
/// report, index rebuilt in memory. A writable result has been `fdatasync`ed,
/// so its whole length is durable.
pub(crate) fn open_active(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    config: &Config,
    report: &mut RecoveryReport,
) -> Result<FoundActive> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let header = read_header(file.as_ref(), &path, len)?;
    let version = match format::check_file_header(&header, FileKind::Log, base_seq) {
        Ok(version) if version < format::VERSION && len == FILE_HEADER_LEN => {
            // An empty version-1 segment: rewrite its header so appends
            // write version-2 frames into a version-2 file.
            rewrite_header(file.as_ref(), &path, base_seq)?;
            format::VERSION
        }
        Ok(version) => version,
        Err(_) if len <= FILE_HEADER_LEN => {
            // A roll crashed before the header was durable: no record can be here.
            rewrite_header(file.as_ref(), &path, base_seq)?;
            report.repaired_headers.push(path.clone());
            return Ok(empty_active(base_seq, path, file, config));
        }
        Err(reason) => {
            let (mut scan, bad) = full_scan(file.as_ref(), &path, base_seq, len, config)?;
            let mut after = AfterDamage::default();
            if let Some(bad) = &bad {
                after = scan_after_damage(file.as_ref(), &path, base_seq, len, &mut scan, bad)?;
            }
            if scan.claim_max.max(after.claim_max) == 0 {
                // No frame vouches that anything of the segment was ever
                // synced (a roll writes the header without syncing it): a
                // torn new segment. Nothing in it was acknowledged as durable.
                rewrite_header(file.as_ref(), &path, base_seq)?;
                report.truncated_bytes += len - FILE_HEADER_LEN;
                report.truncated_at = Some((path.clone(), 0, format!("file header: {reason}")));
                report.repaired_headers.push(path.clone());
                return Ok(empty_active(base_seq, path, file, config));
            }
            // A frame vouches for synced bytes, the header included: damage.
            let d = damage(&path, 0, format!("active segment file header: {reason}"));
            report.damage.push(d.clone());
            report.damage.extend(after.damage.into_iter().map(|(pos, r)| damage(&path, pos, r)));
            report.read_only = Some(d.clone());
            return Ok(active_of(base_seq, path, file, scan, format::VERSION_MIN, Some(d)));
        }
    };
    let (mut scan, bad) = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    if let Some(bad) = bad {
        let before = scan.clone();
        let after = scan_after_damage(file.as_ref(), &path, base_seq, len, &mut scan, &bad)?;
        let torn = !after.exhausted && if version >= 2 { after.claim_max <= bad.pos } else { after.frames == 0 };
        if !torn {
            let why = if after.exhausted {
                "the search for later batches ran out of budget, so the bytes cannot be proven unacknowledged"
                    .to_string()
            } else if version >= 2 {
                format!("a later batch vouches that the segment was synced up to byte {}", after.claim_max)
            } else {
                "a valid later batch follows in a version-1 segment".to_string()
            };
            let d = damage(
                &path,
                bad.pos,
                format!("{}; {why}, so this is not a torn tail and nothing was cut", bad.reason),
            );
            report.damage.push(d.clone());
            report.damage.extend(after.damage.into_iter().skip(1).map(|(pos, r)| damage(&path, pos, r)));
            report.read_only = Some(d.clone());
            return Ok(active_of(base_seq, path, file, scan, version, Some(d)));
        }
        scan = before;
        file.set_len(scan.valid_len).map_err(io_err("truncate torn tail", &path))?;
        report.truncated_bytes += len - scan.valid_len;
        report.truncated_at = Some((path.clone(), scan.valid_len, bad.reason));
    }
    // Bytes that survived a crash may still be only in the page cache;
    // `fdatasync` them before the first append claims them as durable.
    file.sync_data().map_err(io_err("sync segment", &path))?;
    Ok(active_of(base_seq, path, file, scan, version, None))
}

fn rewrite_header(file: &dyn IoFile, path: &Path, base_seq: u64) -> Result<()> {
    file.set_len(0).map_err(io_err("truncate segment", path))?;
    file.write_all_at(&format::encode_file_header(FileKind::Log, base_seq), 0)
        .map_err(io_err("write segment header", path))?;
    file.sync_data().map_err(io_err("sync segment", path))
}

fn active_of(
    base_seq: u64,
    path: PathBuf,
    file: Arc<dyn IoFile>,
    scan: FullScan,
    version: u16,
    damage: Option<Damage>,
) -> FoundActive {
    FoundActive {
        found: Found {
            segment: Arc::new(Segment::new(base_seq, path, file, scan.index)),
            len: scan.valid_len,
            next_seq: scan.next_seq,
            first_ts: scan.first_ts,
            max_ts: scan.max_ts,
        },
        indexer: scan.indexer,
        version,
        damage,
    }
}

fn empty_active(base_seq: u64, path: PathBuf, file: Arc<dyn IoFile>, config: &Config) -> FoundActive {
    active_of(base_seq, path, file, FullScan::new(base_seq, config), format::VERSION, None)
}

/// A segment after the last proven durable point, read in full, to decide
/// whether its invalid bytes (or its missing end) can only be unsynced.
#[derive(Debug)]
pub(crate) struct Scanned {
    path: PathBuf,
    file: Arc<dyn IoFile>,
    base_seq: u64,
    len: u64,
    /// The file header's format version, or why it is invalid.
    header: std::result::Result<u16, String>,
    /// Valid frames before the first invalid byte.
    scan: FullScan,
    bad: Option<Bad>,
    after: AfterDamage,
    /// The largest durable length any valid frame of the segment claims.
    /// A claim above zero vouches that every older segment was synced
    /// (`ShardLog::sync` counts a segment durable only after every older one is).
    pub claim_max: u64,
}

/// Where and why a torn segment is cut.
#[derive(Debug, Clone)]
pub(crate) struct TornCut {
    /// The byte the segment is cut at; `0` rewrites its header (it is left empty).
    pub position: u64,
    pub reason: String,
}

/// Reads a segment in full (and what follows its first invalid bytes).
pub(crate) fn scan_segment(io: &dyn Io, dir: &Path, base_seq: u64, config: &Config) -> Result<Scanned> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let header_bytes = read_header(file.as_ref(), &path, len)?;
    let header = format::check_file_header(&header_bytes, FileKind::Log, base_seq);
    let (scan, bad) = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    let mut claim_max = scan.claim_max;
    let mut after = AfterDamage::default();
    if let Some(b) = &bad {
        let mut more = scan.clone();
        after = scan_after_damage(file.as_ref(), &path, base_seq, len, &mut more, b)?;
        claim_max = claim_max.max(after.claim_max);
    }
    Ok(Scanned { path, file, base_seq, len, header, scan, bad, after, claim_max })
}

impl Scanned {
    /// Where this segment must be cut if nothing older vouches for it:
    /// bytes that no valid frame of the segment claims were synced. `None`
    /// if it is whole (and continues into `successor_base`, if it has a
    /// successor) or its damage covers synced bytes.
    pub fn torn(&self, successor_base: Option<u64>) -> Option<TornCut> {
        let version = match &self.header {
            Err(reason) if self.len <= FILE_HEADER_LEN || self.claim_max == 0 => {
                return Some(TornCut { position: 0, reason: format!("file header: {reason}") });
            }
            Err(_) => return None,
            Ok(v) => *v,
        };
        if let Some(bad) = &self.bad {
            let unsynced = !self.after.exhausted
                && if version >= 2 { self.after.claim_max <= bad.pos } else { self.after.frames == 0 };
            return unsynced.then(|| TornCut { position: bad.pos, reason: bad.reason.clone() });
        }
        match successor_base {
            Some(next) if self.scan.next_seq < next => Some(TornCut {
                position: self.len,
                reason: format!(
                    "the segment ends at sequence {}, its successor starts at {next}: the rest was never synced",
                    self.scan.next_seq
                ),
            }),
            _ => None,
        }
    }
}

/// Cuts a torn segment after the last durable point and removes every
/// newer segment (`later`, oldest first), so the log ends at the cut and
/// the cut segment becomes the active one. Index files go first (then a
/// directory `fsync`), newer segment files newest first (a directory
/// `fsync` after each), then the cut (`ftruncate` or a rewritten header,
/// `fdatasync`): a crash at any step leaves a state the next open cuts the
/// same way.
pub(crate) fn cut_torn(
    io: &dyn Io,
    dir: &Path,
    s: Scanned,
    cut: TornCut,
    later: &[u64],
    config: &Config,
    report: &mut RecoveryReport,
) -> Result<FoundActive> {
    for &base in std::iter::once(&s.base_seq).chain(later) {
        for kind in [FileKind::OffsetIndex, FileKind::TimeIndex] {
            let p = path_of(dir, base, kind);
            match io.remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err("remove index", &p)(e)),
                _ => {}
            }
        }
    }
    io.sync_dir(dir).map_err(io_err("sync dir", dir))?;
    for &base in later.iter().rev() {
        let p = path_of(dir, base, FileKind::Log);
        let bytes = io.open(&p, OpenMode::Existing).and_then(|f| f.size()).unwrap_or(0);
        io.remove_file(&p).map_err(io_err("remove segment", &p))?;
        io.sync_dir(dir).map_err(io_err("sync dir", dir))?;
        report.truncated_bytes += bytes;
        report.removed_segments.push(p);
    }
    report.truncated_bytes += s.len.saturating_sub(cut.position.max(FILE_HEADER_LEN));
    report.truncated_at = Some((s.path.clone(), cut.position, cut.reason));
    if cut.position == 0 {
        rewrite_header(s.file.as_ref(), &s.path, s.base_seq)?;
        report.repaired_headers.push(s.path.clone());
        return Ok(empty_active(s.base_seq, s.path, s.file, config));
    }
    if cut.position < s.len {
        s.file.set_len(cut.position).map_err(io_err("truncate torn segment", &s.path))?;
    }
    s.file.sync_data().map_err(io_err("sync segment", &s.path))?;
    let version = s.header.unwrap_or(format::VERSION);
    Ok(active_of(s.base_seq, s.path, s.file, s.scan, version, None))
}
