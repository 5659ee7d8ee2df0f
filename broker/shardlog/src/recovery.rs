//! Opening a shard directory after a clean stop or a crash.
//!
//! What may be damaged, and what is done about it:
//!
//! - **The tail of the active (last) segment** may be torn: a crash can leave
//!   a partly written batch, garbage or zeroes after the last batch that was
//!   synced. The whole active segment is scanned with CRC checks; at the first
//!   invalid batch the file is cut back to the end of the last valid one. This
//!   only removes bytes that were never acknowledged: the writer acknowledges
//!   nothing before `fdatasync`, and a synced batch is whole.
//! - **Damage before the tail** (an invalid batch followed by a valid batch
//!   that continues the sequence) is not a torn write; cutting there would
//!   drop acknowledged records. Opening fails with [`Error::Corrupt`].
//! - **Sealed segments** were synced in full before their successor was
//!   created, so they are never cut. Their index files are checked
//!   structurally and the batches after the last index entry are CRC-checked
//!   to reach the file's end exactly; any mismatch rebuilds both indexes from
//!   the log, and an invalid batch found while rebuilding is
//!   [`Error::Corrupt`]. Every read checks the CRC of what it returns, so
//!   damage deeper inside a sealed segment is reported when it is read (and
//!   [`ShardLog::verify`](crate::ShardLog::verify) finds it on demand).
//! - **A segment file shorter than its header** can only be the newest
//!   segment, created by a roll that crashed before its header was synced;
//!   it holds no records and its header is rewritten.
//! - **Index files whose log is gone** are leftovers of a retention delete
//!   that crashed half-way, and are removed.
//!
//! Recovery is idempotent: a second open of a recovered directory changes
//! nothing (the tests reopen every damaged log twice to check this).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result, io_err};
use crate::format::{self, FILE_HEADER_LEN, FileKind};
use crate::io::{Io, IoFile, OpenMode};
use crate::segment::{IndexBuilder, ScanEnd, Segment, SegmentIndex, scan_frames};

/// What recovery found and did when a log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after opening.
    pub segments: usize,
    /// Bytes cut from the tail of the active segment.
    pub truncated_bytes: u64,
    /// Where the active segment was cut, with the reason the bytes there were invalid.
    pub truncated_at: Option<(PathBuf, u64, String)>,
    /// Segments whose index files were rebuilt from the log.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Segment files whose header was rewritten (an interrupted roll).
    pub repaired_headers: Vec<PathBuf>,
    /// Index files without a log that were removed.
    pub removed_orphans: Vec<PathBuf>,
    /// Files in the directory that this crate does not own, left untouched.
    pub ignored_files: Vec<String>,
}

impl RecoveryReport {
    /// True when opening needed no repair of any kind.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.rebuilt_indexes.is_empty()
            && self.repaired_headers.is_empty()
            && self.removed_orphans.is_empty()
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
}

/// Chunk size for sequential scans during recovery.
const SCAN_CHUNK: usize = 4 * 1024 * 1024;

pub(crate) fn path_of(dir: &Path, base_seq: u64, kind: FileKind) -> PathBuf {
    dir.join(format::file_name(base_seq, kind))
}

/// Lists the directory, removes orphaned index files and returns the
/// segments' base sequence numbers in order.
pub(crate) fn list_segments(io: &dyn Io, dir: &Path, report: &mut RecoveryReport) -> Result<Vec<u64>> {
    let names = io.list_dir(dir).map_err(io_err("list", dir))?;
    let mut kinds: BTreeMap<u64, Vec<FileKind>> = BTreeMap::new();
    for name in names {
        match format::parse_file_name(&name) {
            Some((base, kind)) => kinds.entry(base).or_default().push(kind),
            None => report.ignored_files.push(name),
        }
    }
    report.ignored_files.sort();
    let mut bases = Vec::new();
    let mut removed = false;
    for (base, ks) in kinds {
        if ks.contains(&FileKind::Log) {
            bases.push(base);
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
    Ok(bases)
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

fn read_header(file: &dyn IoFile, path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut header = vec![0u8; len.min(FILE_HEADER_LEN) as usize];
    file.read_exact_at(&mut header, 0).map_err(io_err("read header", path))?;
    Ok(header)
}

fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt { path: path.to_path_buf(), position, reason: reason.into() }
}

/// Scans a whole segment from its header, building its index.
struct FullScan {
    end: ScanEnd,
    index: SegmentIndex,
    indexer: IndexBuilder,
    valid_len: u64,
    next_seq: u64,
    first_ts: Option<u64>,
    max_ts: Option<u64>,
}

fn full_scan(file: &dyn IoFile, path: &Path, base_seq: u64, len: u64, config: &Config) -> Result<FullScan> {
    let mut index = SegmentIndex::default();
    let mut indexer = IndexBuilder::new(config.index_interval_bytes);
    let (mut valid_len, mut next_seq, mut first_ts, mut max_ts) = (FILE_HEADER_LEN, base_seq, None, None);
    let end = scan_frames(file, FILE_HEADER_LEN, len, base_seq, SCAN_CHUNK, |pos, h, _| {
        let rel = u32::try_from(h.base_seq - base_seq).unwrap_or(u32::MAX);
        if let Some(entries) = indexer.observe(rel, pos, u64::from(h.len), h.timestamp_ms) {
            index.push(entries);
        }
        valid_len = pos + u64::from(h.len);
        next_seq = h.next_seq();
        first_ts.get_or_insert(h.timestamp_ms);
        max_ts = Some(h.timestamp_ms);
        true
    })
    .map_err(io_err("scan segment", path))?;
    Ok(FullScan { end, index, indexer, valid_len, next_seq, first_ts, max_ts })
}

/// Opens a segment that has a successor. Never modifies its log file.
pub(crate) fn open_sealed(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    config: &Config,
    report: &mut RecoveryReport,
) -> Result<Found> {
    let path = path_of(dir, base_seq, FileKind::Log);
    let file = io.open(&path, OpenMode::Existing).map_err(io_err("open segment", &path))?;
    let len = file.size().map_err(io_err("stat segment", &path))?;
    let header = read_header(file.as_ref(), &path, len)?;
    format::check_file_header(&header, FileKind::Log, base_seq).map_err(|r| corrupt(&path, 0, r))?;
    if len == FILE_HEADER_LEN {
        let segment = Arc::new(Segment::new(base_seq, path, file, SegmentIndex::default()));
        return Ok(Found { segment, len, next_seq: base_seq, first_ts: None, max_ts: None });
    }
    if let Some(found) = load_indexes(io, dir, base_seq, &path, &file, len)? {
        return Ok(found);
    }
    let scan = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    match scan.end {
        ScanEnd::Clean { .. } => {}
        ScanEnd::Bad { pos, reason } => return Err(corrupt(&path, pos, format!("sealed segment: {reason}"))),
        ScanEnd::Stopped => unreachable!("the full scan visitor never stops"),
    }
    write_indexes(io, dir, base_seq, &scan.index)?;
    report.rebuilt_indexes.push(path.clone());
    let segment = Arc::new(Segment::new(base_seq, path, file, scan.index));
    Ok(Found { segment, len, next_seq: scan.next_seq, first_ts: scan.first_ts, max_ts: scan.max_ts })
}

/// Loads and checks a sealed segment's index files. `None` means they are
/// missing or inconsistent and must be rebuilt; I/O errors other than a
/// missing file are returned.
fn load_indexes(
    io: &dyn Io,
    dir: &Path,
    base_seq: u64,
    path: &Path,
    file: &Arc<dyn IoFile>,
    len: u64,
) -> Result<Option<Found>> {
    // No index can have more entries than the log has batches.
    let batches_max = len / (format::FRAME_HEADER_LEN + format::RECORD_HEADER_LEN + 1) as u64 + 1;
    let read = |kind: FileKind, entry_len: usize| -> Result<Option<Vec<u8>>> {
        let p = path_of(dir, base_seq, kind);
        let f = match io.open(&p, OpenMode::Existing) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open index", &p)(e)),
        };
        let n = f.size().map_err(io_err("stat index", &p))?;
        if n > FILE_HEADER_LEN + batches_max * entry_len as u64 {
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

/// Writes a sealed segment's index files and makes them durable, so the
/// next open does not have to rebuild them.
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

/// Opens the newest segment: full CRC scan, torn-tail repair, index rebuilt in memory.
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
    if let Err(reason) = format::check_file_header(&header, FileKind::Log, base_seq) {
        if len > FILE_HEADER_LEN {
            return Err(corrupt(&path, 0, reason));
        }
        // A roll crashed before the header was durable: no record can be here.
        file.set_len(0).map_err(io_err("truncate segment", &path))?;
        file.write_all_at(&format::encode_file_header(FileKind::Log, base_seq), 0)
            .map_err(io_err("write segment header", &path))?;
        file.sync_data().map_err(io_err("sync segment", &path))?;
        report.repaired_headers.push(path.clone());
        return Ok(empty_active(base_seq, path, file, config));
    }
    let scan = full_scan(file.as_ref(), &path, base_seq, len, config)?;
    match scan.end {
        ScanEnd::Clean { .. } => {}
        ScanEnd::Bad { pos, reason } => {
            if let Some(valid_at) = find_valid_frame_after(file.as_ref(), &path, pos, len)? {
                return Err(corrupt(
                    &path,
                    pos,
                    format!(
                        "{reason}; a valid batch follows at byte {valid_at}, so this is not a torn tail and nothing was cut"
                    ),
                ));
            }
            file.set_len(scan.valid_len).map_err(io_err("truncate torn tail", &path))?;
            file.sync_data().map_err(io_err("sync segment", &path))?;
            report.truncated_bytes += len - scan.valid_len;
            report.truncated_at = Some((path.clone(), scan.valid_len, reason));
        }
        ScanEnd::Stopped => unreachable!("the full scan visitor never stops"),
    }
    let found = Found {
        segment: Arc::new(Segment::new(base_seq, path, file, scan.index)),
        len: scan.valid_len,
        next_seq: scan.next_seq,
        first_ts: scan.first_ts,
        max_ts: scan.max_ts,
    };
    Ok(FoundActive { found, indexer: scan.indexer })
}

fn empty_active(base_seq: u64, path: PathBuf, file: Arc<dyn IoFile>, config: &Config) -> FoundActive {
    FoundActive {
        found: Found {
            segment: Arc::new(Segment::new(base_seq, path, file, SegmentIndex::default())),
            len: FILE_HEADER_LEN,
            next_seq: base_seq,
            first_ts: None,
            max_ts: None,
        },
        indexer: IndexBuilder::new(config.index_interval_bytes),
    }
}

/// Looks for a valid batch anywhere after the invalid bytes at `bad_pos`.
/// Finding one means the damage is not a torn tail.
fn find_valid_frame_after(file: &dyn IoFile, path: &Path, bad_pos: u64, len: u64) -> Result<Option<u64>> {
    let rest_len = len - bad_pos;
    if rest_len > crate::config::SEGMENT_BYTES_MAX_LIMIT + u64::from(format::FRAME_BYTES_MAX) {
        return Err(corrupt(path, bad_pos, "active segment is larger than any segment this format writes"));
    }
    let mut rest = vec![0u8; rest_len as usize];
    file.read_exact_at(&mut rest, bad_pos).map_err(io_err("read segment tail", path))?;
    let min = (format::FRAME_HEADER_LEN + format::RECORD_HEADER_LEN + 1) as u32;
    for off in 1..rest.len().saturating_sub(3) {
        // A cheap bound check first: only a plausible length is worth a CRC.
        let tail = &rest[off..];
        let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if len < min || len > format::FRAME_BYTES_MAX || len as usize > tail.len() {
            continue;
        }
        if format::check_frame(tail).is_ok() {
            return Ok(Some(bad_pos + off as u64));
        }
    }
    Ok(None)
}
