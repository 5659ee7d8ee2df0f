//! One segment: a log file plus its sparse offset and time indexes.
//!
//! A [`Segment`] is shared between the single writer and any number of
//! readers. Its file is only ever appended to by the writer (or cut by
//! `truncate_after`); readers use positional reads bounded by the visible
//! length the writer published, so they never see a partly written batch.
//!
//! Index invariants (checked when an index file is loaded, relied on by
//! lookups):
//! - the first offset entry is `(0, FILE_HEADER_LEN)`: the first batch is
//!   always indexed; relative sequences and positions strictly increase;
//! - every time entry sits at a batch that also has an offset entry, the first
//!   time entry is the first batch, and timestamps strictly increase.
//!
//! Batch timestamps never decrease within a log (the writer clamps them), so
//! the last time entry older than a target is a safe place to start a scan
//! for the first batch at or after it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::format::{self, FILE_HEADER_LEN, FRAME_HEADER_LEN, FrameError, FrameHeader, OffsetEntry, TimeEntry};
use crate::io::IoFile;

/// A segment's file and indexes, shared by the writer and readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_seq: u64,
    pub path: PathBuf,
    pub file: Arc<dyn IoFile>,
    index: RwLock<SegmentIndex>,
}

impl Segment {
    pub fn new(base_seq: u64, path: PathBuf, file: Arc<dyn IoFile>, index: SegmentIndex) -> Self {
        Self { base_seq, path, file, index: RwLock::new(index) }
    }

    pub fn index(&self) -> RwLockReadGuard<'_, SegmentIndex> {
        // The index holds plain vectors that are valid after any panic; keep serving.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn index_mut(&self) -> RwLockWriteGuard<'_, SegmentIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The in-memory sparse indexes of a segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// The indexed batch at or before `seq`: its base sequence and file position.
    pub fn floor(&self, base_seq: u64, seq: u64) -> (u64, u64) {
        let rel = seq.saturating_sub(base_seq).min(u64::from(u32::MAX)) as u32;
        match self.offsets.partition_point(|e| e.rel_seq <= rel) {
            0 => (base_seq, FILE_HEADER_LEN),
            i => {
                let e = self.offsets[i - 1];
                (base_seq + u64::from(e.rel_seq), u64::from(e.position))
            }
        }
    }

    /// Where to start scanning for the first batch with a timestamp at or
    /// after `timestamp_ms`: the last indexed batch older than it, or the
    /// first batch.
    pub fn time_floor(&self, base_seq: u64, timestamp_ms: u64) -> (u64, u64) {
        match self.times.partition_point(|e| e.timestamp_ms < timestamp_ms) {
            0 => (base_seq, FILE_HEADER_LEN),
            i => self.floor(base_seq, base_seq + u64::from(self.times[i - 1].rel_seq)),
        }
    }

    /// Checks the invariants in the module docs against a log of `log_len` bytes.
    pub fn check(&self, log_len: u64) -> Result<(), String> {
        let first = self.offsets.first().ok_or("offset index is empty")?;
        if first.rel_seq != 0 || u64::from(first.position) != FILE_HEADER_LEN {
            return Err("offset index does not start at the first batch".into());
        }
        for w in self.offsets.windows(2) {
            if w[1].rel_seq <= w[0].rel_seq || w[1].position <= w[0].position {
                return Err("offset index entries do not increase".into());
            }
        }
        if self.offsets.last().is_some_and(|e| u64::from(e.position) >= log_len) {
            return Err("offset index points past the end of the log".into());
        }
        let first_time = self.times.first().ok_or("time index is empty")?;
        if first_time.rel_seq != 0 {
            return Err("time index does not start at the first batch".into());
        }
        for w in self.times.windows(2) {
            if w[1].timestamp_ms <= w[0].timestamp_ms || w[1].rel_seq <= w[0].rel_seq {
                return Err("time index entries do not increase".into());
            }
        }
        for t in &self.times {
            if self.offsets.binary_search_by_key(&t.rel_seq, |e| e.rel_seq).is_err() {
                return Err("time index entry is not at an indexed batch".into());
            }
        }
        Ok(())
    }
}

/// Decides which batches get index entries, identically when appending and
/// when rebuilding an index from the log.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    interval_bytes: u64,
    /// Bytes since the last entry; `None` before the first batch.
    bytes_since_entry: Option<u64>,
    last_time_ms: Option<u64>,
}

/// The entries one batch adds to an index.
pub(crate) type NewEntries = (OffsetEntry, Option<TimeEntry>);

impl IndexBuilder {
    pub fn new(interval_bytes: u32) -> Self {
        Self { interval_bytes: u64::from(interval_bytes), bytes_since_entry: None, last_time_ms: None }
    }

    /// Makes the next observed batch get an entry: the first valid batch
    /// after damage must be indexed so reads can start there.
    pub fn force_next(&mut self) {
        self.bytes_since_entry = None;
    }

    /// Records a batch of `len` bytes at `position`; returns the entries it
    /// gets, if it is due one.
    pub fn observe(&mut self, rel_seq: u32, position: u64, len: u64, timestamp_ms: u64) -> Option<NewEntries> {
        let due = self.bytes_since_entry.is_none_or(|n| n >= self.interval_bytes);
        self.bytes_since_entry = Some(if due { len } else { self.bytes_since_entry.unwrap_or(0) + len });
        if !due {
            return None;
        }
        let position = u32::try_from(position).expect("segment positions fit u32 (segment_bytes_max <= 1 GiB)");
        let time = self.last_time_ms.is_none_or(|t| t < timestamp_ms).then(|| {
            self.last_time_ms = Some(timestamp_ms);
            TimeEntry { timestamp_ms, rel_seq }
        });
        Some((OffsetEntry { rel_seq, position }, time))
    }
}

impl SegmentIndex {
    /// Adds the entries [`IndexBuilder::observe`] returned.
    pub fn push(&mut self, (offset, time): NewEntries) {
        self.offsets.push(offset);
        self.times.extend(time);
    }
}

/// How a scan over frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte up to the end was whole, valid frames.
    Clean { next_seq: u64 },
    /// The visitor asked to stop after the frame ending at `pos`.
    Stopped,
    /// The bytes at `pos` are not a valid frame continuing the sequence,
    /// which would have started at `next_seq`.
    Bad { pos: u64, next_seq: u64, reason: String },
}

/// How many bytes a scan reads at a time: `min` first (so a small read stays
/// small), doubling on every refill up to `max` (so a long scan makes few
/// calls). A frame longer than the current size is read whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    pub min: usize,
    pub max: usize,
}

impl Chunk {
    pub const fn fixed(n: usize) -> Self {
        Self { min: n, max: n }
    }
}

/// Checks what a frame's header claims about its place in the segment: a
/// version-2 batch vouches only for bytes synced before it was appended, so
/// its durable length lies between the file header and its own position.
fn check_claim(h: &FrameHeader, pos: u64) -> Result<(), String> {
    let d = u64::from(h.durable_len);
    if d != 0 && (d < FILE_HEADER_LEN || d > pos) {
        return Err(format!("batch claims durable length {d}, outside {FILE_HEADER_LEN}..={pos}"));
    }
    Ok(())
}

/// Reads and validates whole frames from `start` to `end`, in order, checking
/// that each continues the sequence from `expected_seq`. The visitor sees each
/// valid frame's position, header and bytes (a slice of a shared buffer, so
/// records can be handed out without copying) and returns `false` to stop.
///
/// Reads follow [`Chunk`], or one whole frame if it is larger, and never
/// extend past `end`; no frame longer than [`format::FRAME_BYTES_MAX`] or
/// than the bytes left before `end` is ever allocated for.
pub(crate) fn scan_frames(
    file: &dyn IoFile,
    start: u64,
    end: u64,
    expected_seq: u64,
    chunk: Chunk,
    visit: impl FnMut(u64, &FrameHeader, &Bytes) -> bool,
) -> std::io::Result<ScanEnd> {
    scan_frames_with(file, start, end, expected_seq, chunk, ReadFrom::Disk, visit)
}

/// Where [`scan_frames_with`] may take its bytes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// Any read, waiting for the disk if it must.
    Disk,
    /// Only reads of at most [`CACHED_READ_BYTES_MAX`] that the page cache
    /// holds whole ([`IoFile::read_vec_at_cached`]); any other read ends
    /// the scan with `WouldBlock`.
    Cache,
}

/// Largest single read a [`ReadFrom::Cache`] scan makes: it runs on an
/// async thread, so one read may hold that thread for one memory copy of
/// this size and no more (a subscriber at the tail reads what one or a few
/// group commits wrote, far less).
pub(crate) const CACHED_READ_BYTES_MAX: usize = 1 << 20;

/// [`scan_frames`], reading as `from` allows.
pub(crate) fn scan_frames_with(
    file: &dyn IoFile,
    start: u64,
    end: u64,
    mut expected_seq: u64,
    chunk: Chunk,
    from: ReadFrom,
    mut visit: impl FnMut(u64, &FrameHeader, &Bytes) -> bool,
) -> std::io::Result<ScanEnd> {
    let mut buf = Bytes::new();
    let mut buf_start = start;
    let mut pos = start;
    let mut next_chunk = chunk.min;
    while pos < end {
        let off = (pos - buf_start) as usize;
        match format::check_frame(&buf[off..]) {
            Ok(h) if h.base_seq != expected_seq => {
                return Ok(ScanEnd::Bad {
                    pos,
                    next_seq: expected_seq,
                    reason: format!("batch has base sequence {}, expected {expected_seq}", h.base_seq),
                });
            }
            Ok(h) => {
                if let Err(reason) = check_claim(&h, pos) {
                    return Ok(ScanEnd::Bad { pos, next_seq: expected_seq, reason });
                }
                let frame = buf.slice(off..off + h.len as usize);
                expected_seq = h.next_seq();
                pos += u64::from(h.len);
                if !visit(pos - u64::from(h.len), &h, &frame) {
                    return Ok(ScanEnd::Stopped);
                }
            }
            Err(FrameError::Incomplete { needed }) => {
                let left = end - pos;
                if (buf.len() - off) as u64 >= left {
                    return Ok(ScanEnd::Bad {
                        pos,
                        next_seq: expected_seq,
                        reason: format!("incomplete batch in the last {left} bytes"),
                    });
                }
                let want = (next_chunk.max(needed.unwrap_or(0) as usize).max(FRAME_HEADER_LEN) as u64).min(left);
                next_chunk = next_chunk.saturating_mul(2).min(chunk.max);
                let read = match from {
                    ReadFrom::Disk => Some(file.read_vec_at(want as usize, pos)?),
                    ReadFrom::Cache if want as usize <= CACHED_READ_BYTES_MAX => {
                        file.read_vec_at_cached(want as usize, pos)?
                    }
                    ReadFrom::Cache => None,
                };
                let Some(read) = read else { return Err(std::io::ErrorKind::WouldBlock.into()) };
                buf = Bytes::from(read);
                buf_start = pos;
            }
            Err(FrameError::Invalid(reason)) => return Ok(ScanEnd::Bad { pos, next_seq: expected_seq, reason }),
        }
    }
    Ok(ScanEnd::Clean { next_seq: expected_seq })
}

/// A valid frame found by [`find_next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundFrame {
    pub pos: u64,
    pub header: FrameHeader,
}

/// How [`find_next_frame`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    Found(FoundFrame),
    /// No valid frame anywhere before `end`.
    None,
    /// The work budget ran out first: nothing can be concluded.
    Exhausted,
}

/// Bytes the search reads per window; candidate frames are read separately.
const SEARCH_WINDOW: usize = 1024 * 1024;

/// Looks for the first whole, CRC-valid frame starting after `from` (at
/// `from + 1` or later, before `end`) whose base sequence lies in
/// `min_seq ..= max_seq` and whose durable-length claim fits its position.
///
/// The bytes are streamed in [`SEARCH_WINDOW`] windows, so memory is one
/// window plus one candidate frame (at most [`format::FRAME_BYTES_MAX`], and
/// never more than the bytes left). Every offset is first checked cheaply
/// (length bounds, sequence range, record count, claim, first key length);
/// random bytes almost never pass that, so the CRC is rarely computed. The
/// CRC work is bounded by `*budget` bytes, shared across calls: once it is
/// spent the search gives up with [`Search::Exhausted`] rather than spend
/// quadratic time on adversarial bytes.
pub(crate) fn find_next_frame(
    file: &dyn IoFile,
    from: u64,
    end: u64,
    min_seq: u64,
    max_seq: u64,
    budget: &mut u64,
) -> std::io::Result<Search> {
    let probe_len = FRAME_HEADER_LEN + format::RECORD_HEADER_LEN;
    let mut window = Vec::new();
    let mut window_start = from + 1;
    while window_start + probe_len as u64 <= end {
        let want = (SEARCH_WINDOW as u64).min(end - window_start) as usize;
        window.resize(want, 0);
        file.read_exact_at(&mut window, window_start)?;
        // Offsets whose probe fits in this window; the next window starts at the first that did not.
        let offsets = want + 1 - probe_len;
        for off in 0..offsets {
            let pos = window_start + off as u64;
            if !plausible(&window[off..off + probe_len], pos, end, min_seq, max_seq) {
                continue;
            }
            let len = u64::from(u32::from_le_bytes([window[off], window[off + 1], window[off + 2], window[off + 3]]));
            if *budget < len {
                return Ok(Search::Exhausted);
            }
            *budget -= len;
            let mut frame = vec![0u8; len as usize];
            file.read_exact_at(&mut frame, pos)?;
            if let Ok(header) = format::check_frame(&frame) {
                return Ok(Search::Found(FoundFrame { pos, header }));
            }
        }
        window_start += offsets as u64;
    }
    Ok(Search::None)
}

/// The cheap checks [`find_next_frame`] makes before computing a CRC.
fn plausible(probe: &[u8], pos: u64, end: u64, min_seq: u64, max_seq: u64) -> bool {
    let u32_at = |at: usize| u32::from_le_bytes([probe[at], probe[at + 1], probe[at + 2], probe[at + 3]]);
    let len = u32_at(0);
    if !(format::FRAME_BYTES_MIN..=format::FRAME_BYTES_MAX).contains(&len) || pos + u64::from(len) > end {
        return false;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&probe[8..16]);
    let base_seq = u64::from_le_bytes(seq);
    if !(min_seq..=max_seq).contains(&base_seq) {
        return false;
    }
    let count = u32_at(24);
    let records_max = (len as usize - FRAME_HEADER_LEN) / (format::RECORD_HEADER_LEN + 1);
    if count == 0 || count as usize > records_max {
        return false;
    }
    let claim = u64::from(u32_at(28));
    if claim != 0 && (claim < FILE_HEADER_LEN || claim > pos) {
        return false;
    }
    let key_len = u16::from_le_bytes([probe[FRAME_HEADER_LEN], probe[FRAME_HEADER_LEN + 1]]) as usize;
    (1..=format::PARTITION_KEY_BYTES_MAX).contains(&key_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(entries: &[(u32, u32)], times: &[(u64, u32)]) -> SegmentIndex {
        SegmentIndex {
            offsets: entries.iter().map(|&(rel_seq, position)| OffsetEntry { rel_seq, position }).collect(),
            times: times.iter().map(|&(timestamp_ms, rel_seq)| TimeEntry { timestamp_ms, rel_seq }).collect(),
        }
    }

    #[test]
    fn floor_finds_the_indexed_batch_at_or_before() {
        let idx = index_with(&[(0, 32), (10, 5000), (25, 9000)], &[(1, 0)]);
        assert_eq!(idx.floor(100, 100), (100, 32));
        assert_eq!(idx.floor(100, 109), (100, 32));
        assert_eq!(idx.floor(100, 110), (110, 5000));
        assert_eq!(idx.floor(100, 1_000), (125, 9000));
    }

    #[test]
    fn time_floor_starts_before_the_target() {
        let idx = index_with(&[(0, 32), (10, 5000), (25, 9000)], &[(100, 0), (200, 10), (300, 25)]);
        assert_eq!(idx.time_floor(0, 50), (0, 32));
        assert_eq!(idx.time_floor(0, 100), (0, 32));
        assert_eq!(idx.time_floor(0, 201), (10, 5000));
        assert_eq!(idx.time_floor(0, 10_000), (25, 9000));
    }

    #[test]
    fn check_rejects_each_broken_invariant() {
        let good = index_with(&[(0, 32), (10, 5000)], &[(1, 0), (2, 10)]);
        assert!(good.check(6000).is_ok());
        assert!(good.check(5000).unwrap_err().contains("past the end"));
        assert!(index_with(&[(1, 32)], &[(1, 1)]).check(100).is_err());
        assert!(index_with(&[(0, 32), (0, 40)], &[(1, 0)]).check(100).is_err());
        assert!(index_with(&[(0, 32), (5, 40)], &[(1, 0), (1, 5)]).check(100).is_err());
        assert!(index_with(&[(0, 32), (5, 40)], &[(1, 0), (2, 4)]).check(100).is_err());
    }

    #[test]
    fn builder_indexes_first_batch_and_every_interval() {
        let mut idx = SegmentIndex::default();
        let mut b = IndexBuilder::new(100);
        let mut pos = FILE_HEADER_LEN;
        for i in 0..10u32 {
            if let Some(e) = b.observe(i, pos, 60, 1_000 + u64::from(i / 4)) {
                idx.push(e);
            }
            pos += 60;
        }
        let rels: Vec<u32> = idx.offsets.iter().map(|e| e.rel_seq).collect();
        assert_eq!(rels, vec![0, 2, 4, 6, 8]);
        let times: Vec<(u64, u32)> = idx.times.iter().map(|t| (t.timestamp_ms, t.rel_seq)).collect();
        assert_eq!(times, vec![(1000, 0), (1001, 4), (1002, 8)]);
        assert!(idx.check(pos).is_ok());
    }
}
