//! The byte layout of segment, offset-index and time-index files.
//!
//! `FORMAT.md` beside this crate is the byte table; this module is its only
//! implementation. Every integer is little-endian. Every file starts with the
//! same 32-byte header (magic, version, file kind, base sequence, CRC), so a
//! file can never be mistaken for another kind or another segment.
//!
//! A log file is the header followed by batch frames. A frame carries its own
//! length and a CRC32 over everything after the CRC field, so a reader can
//! tell a whole, valid frame from a torn or damaged one without any other
//! file. Decoding bounds every length read from disk by [`FRAME_BYTES_MAX`]
//! and by the bytes actually present before it trusts it.

use std::ops::Range;

/// First eight bytes of every file this crate writes.
pub const MAGIC: [u8; 8] = *b"SBSHLOG\0";
/// Format version written in every file header.
pub const VERSION: u16 = 1;
/// Length of the common file header.
pub const FILE_HEADER_LEN: u64 = 32;
/// Length of a batch frame's fixed header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Length of a record's fixed header inside a frame (key length + data length).
pub const RECORD_HEADER_LEN: usize = 6;
/// Hard upper bound of one frame, independent of configuration, so that a
/// lowered configured limit never makes already-written batches unreadable.
pub const FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// A partition key is 1–256 Unicode scalar values: at most 1024 bytes of UTF-8.
pub const PARTITION_KEY_CHARS_MAX: usize = 256;
/// Byte bound that follows from [`PARTITION_KEY_CHARS_MAX`].
pub const PARTITION_KEY_BYTES_MAX: usize = PARTITION_KEY_CHARS_MAX * 4;
/// Bytes per offset-index entry: relative sequence u32 + file position u32.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes per time-index entry: timestamp u64 + relative sequence u32.
pub const TIME_ENTRY_LEN: usize = 12;

/// What a file holds; stored in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FileKind {
    /// `{base:020}.log`: batch frames.
    Log = 1,
    /// `{base:020}.index`: sparse sequence -> file position.
    OffsetIndex = 2,
    /// `{base:020}.timeindex`: sparse timestamp -> sequence.
    TimeIndex = 3,
}

impl FileKind {
    /// File-name extension for this kind.
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Log => "log",
            FileKind::OffsetIndex => "index",
            FileKind::TimeIndex => "timeindex",
        }
    }
}

/// The name of a segment's file of the given kind: `{base:020}.{ext}`.
pub fn file_name(base_seq: u64, kind: FileKind) -> String {
    format!("{base_seq:020}.{}", kind.extension())
}

/// Parses a file name written by [`file_name`]; anything else is `None`.
pub fn parse_file_name(name: &str) -> Option<(u64, FileKind)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match ext {
        "log" => FileKind::Log,
        "index" => FileKind::OffsetIndex,
        "timeindex" => FileKind::TimeIndex,
        _ => return None,
    };
    Some((stem.parse().ok()?, kind))
}

/// Encodes the common file header.
pub fn encode_file_header(kind: FileKind, base_seq: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    // 12..16 flags, 24..28 reserved: zero in version 1.
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header; the error says which field is wrong.
pub fn check_file_header(buf: &[u8], kind: FileKind, base_seq: u64) -> Result<(), String> {
    if buf.len() < FILE_HEADER_LEN as usize {
        return Err(format!("file header is {} bytes, expected {FILE_HEADER_LEN}", buf.len()));
    }
    if buf[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32_at(buf, 28);
    if crc32fast::hash(&buf[0..28]) != crc {
        return Err("file header CRC mismatch".into());
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let found_kind = u16::from_le_bytes([buf[10], buf[11]]);
    if found_kind != kind as u16 {
        return Err(format!("file kind {found_kind}, expected {}", kind as u16));
    }
    let found_base = u64_at(buf, 16);
    if found_base != base_seq {
        return Err(format!("header base sequence {found_base} does not match file name {base_seq}"));
    }
    Ok(())
}

/// The fixed header of a batch frame.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | frame length in bytes, this field included |
/// | 4 | 4 | CRC32 over bytes 8..frame length |
/// | 8 | 8 | base sequence (first record's) |
/// | 16 | 8 | arrival timestamp, ms since the Unix epoch |
/// | 24 | 4 | record count (>= 1) |
/// | 28 | 4 | attributes (0 in version 1) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whole frame length, header included.
    pub len: u32,
    /// Sequence number of the first record.
    pub base_seq: u64,
    /// Arrival timestamp shared by every record of the batch.
    pub timestamp_ms: u64,
    /// Number of records in the batch.
    pub record_count: u32,
}

impl FrameHeader {
    /// One past the last sequence number in the batch.
    pub fn next_seq(&self) -> u64 {
        self.base_seq + u64::from(self.record_count)
    }
}

/// Why bytes at a position are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than the frame needs; at the end of a file this is a torn tail.
    Incomplete {
        /// Bytes the frame needs, when the length field was readable and sane.
        needed: Option<u32>,
    },
    /// The bytes are there but are not a valid frame.
    Invalid(String),
}

/// Reads and bounds the length field of a frame starting at `buf[0]`.
pub fn peek_frame_len(buf: &[u8]) -> Result<u32, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Incomplete { needed: None });
    }
    let len = u32_at(buf, 0);
    if (len as usize) < FRAME_HEADER_LEN + RECORD_HEADER_LEN + 1 || len > FRAME_BYTES_MAX {
        return Err(FrameError::Invalid(format!("frame length {len} out of bounds")));
    }
    Ok(len)
}

/// Validates the whole frame at the start of `buf`: bounds, CRC and record
/// structure. Only a frame that passes is ever decoded further.
pub fn check_frame(buf: &[u8]) -> Result<FrameHeader, FrameError> {
    let len = peek_frame_len(buf)?;
    if buf.len() < len as usize {
        return Err(FrameError::Incomplete { needed: Some(len) });
    }
    let frame = &buf[..len as usize];
    let crc = u32_at(frame, 4);
    if crc32fast::hash(&frame[8..]) != crc {
        return Err(FrameError::Invalid("batch CRC mismatch".into()));
    }
    let header = FrameHeader {
        len,
        base_seq: u64_at(frame, 8),
        timestamp_ms: u64_at(frame, 16),
        record_count: u32_at(frame, 24),
    };
    if header.record_count == 0 {
        return Err(FrameError::Invalid("batch has no records".into()));
    }
    if u32_at(frame, 28) != 0 {
        return Err(FrameError::Invalid("unknown batch attributes".into()));
    }
    let mut pos = FRAME_HEADER_LEN;
    for i in 0..header.record_count {
        match record_ranges(frame, pos) {
            Some((_, _, end)) => pos = end,
            None => return Err(FrameError::Invalid(format!("record {i} overruns its batch"))),
        }
    }
    if pos != frame.len() {
        return Err(FrameError::Invalid("bytes after the last record".into()));
    }
    Ok(header)
}

/// Key and data ranges of the record at `pos` in a frame, and where the next
/// record starts; `None` if it does not fit.
fn record_ranges(frame: &[u8], pos: usize) -> Option<(Range<usize>, Range<usize>, usize)> {
    let head = frame.get(pos..pos + RECORD_HEADER_LEN)?;
    let key_len = u16::from_le_bytes([head[0], head[1]]) as usize;
    let data_len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
    if key_len == 0 || key_len > PARTITION_KEY_BYTES_MAX {
        return None;
    }
    let key_start = pos + RECORD_HEADER_LEN;
    let data_start = key_start + key_len;
    let end = data_start.checked_add(data_len)?;
    if end > frame.len() {
        return None;
    }
    Some((key_start..data_start, data_start..end, end))
}

/// Iterates the (key, data) ranges of a frame that [`check_frame`] accepted.
pub fn records(frame: &[u8], count: u32) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
    let mut pos = FRAME_HEADER_LEN;
    (0..count).map_while(move |_| {
        let (key, data, end) = record_ranges(frame, pos)?;
        pos = end;
        Some((key, data))
    })
}

/// Bytes a batch with these records occupies on disk.
pub fn frame_len<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    records.fold(FRAME_HEADER_LEN as u64, |n, (k, d)| n + (RECORD_HEADER_LEN + k.len() + d.len()) as u64)
}

/// Appends one frame to `out`. The caller has validated every record
/// (key length, sizes) and computed `len` with [`frame_len`].
pub fn encode_frame<'a>(
    out: &mut Vec<u8>,
    base_seq: u64,
    timestamp_ms: u64,
    count: u32,
    len: u32,
    records: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) {
    let start = out.len();
    out.reserve(len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below.
    out.extend_from_slice(&base_seq.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (key, data) in records {
        debug_assert!(!key.is_empty() && key.len() <= PARTITION_KEY_BYTES_MAX);
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(data);
    }
    assert_eq!(out.len() - start, len as usize, "frame length was computed from other records");
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One offset-index entry: the batch starting at `base + rel_seq` begins at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Sequence number relative to the segment's base.
    pub rel_seq: u32,
    /// Byte position of the batch in the log file.
    pub position: u32,
}

/// One time-index entry: the batch starting at `base + rel_seq` arrived at `timestamp_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Arrival time of the batch.
    pub timestamp_ms: u64,
    /// Sequence number relative to the segment's base.
    pub rel_seq: u32,
}

/// Encodes an offset index file: header then entries.
pub fn encode_offset_index(base_seq: u64, entries: &[OffsetEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN as usize + entries.len() * OFFSET_ENTRY_LEN);
    out.extend_from_slice(&encode_file_header(FileKind::OffsetIndex, base_seq));
    for e in entries {
        out.extend_from_slice(&e.rel_seq.to_le_bytes());
        out.extend_from_slice(&e.position.to_le_bytes());
    }
    out
}

/// Encodes a time index file: header then entries.
pub fn encode_time_index(base_seq: u64, entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN as usize + entries.len() * TIME_ENTRY_LEN);
    out.extend_from_slice(&encode_file_header(FileKind::TimeIndex, base_seq));
    for e in entries {
        out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&e.rel_seq.to_le_bytes());
    }
    out
}

/// Decodes an offset index file; structural checks only (the caller checks
/// the entries against the log).
pub fn decode_offset_index(buf: &[u8], base_seq: u64) -> Result<Vec<OffsetEntry>, String> {
    check_file_header(buf, FileKind::OffsetIndex, base_seq)?;
    let body = &buf[FILE_HEADER_LEN as usize..];
    if body.len() % OFFSET_ENTRY_LEN != 0 {
        return Err(format!("offset index body of {} bytes is not whole entries", body.len()));
    }
    Ok(body
        .chunks_exact(OFFSET_ENTRY_LEN)
        .map(|c| OffsetEntry { rel_seq: u32_at(c, 0), position: u32_at(c, 4) })
        .collect())
}

/// Decodes a time index file; structural checks only.
pub fn decode_time_index(buf: &[u8], base_seq: u64) -> Result<Vec<TimeEntry>, String> {
    check_file_header(buf, FileKind::TimeIndex, base_seq)?;
    let body = &buf[FILE_HEADER_LEN as usize..];
    if body.len() % TIME_ENTRY_LEN != 0 {
        return Err(format!("time index body of {} bytes is not whole entries", body.len()));
    }
    Ok(body
        .chunks_exact(TIME_ENTRY_LEN)
        .map(|c| TimeEntry { timestamp_ms: u64_at(c, 0), rel_seq: u32_at(c, 8) })
        .collect())
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let len = frame_len(records.iter().copied()) as u32;
        let mut out = Vec::new();
        encode_frame(&mut out, 42, 1_700_000_000_000, records.len() as u32, len, records.iter().copied());
        out
    }

    #[test]
    fn frame_round_trips() {
        let buf = frame(&[(b"k1", b"hello"), (b"key-two", b"")]);
        let h = check_frame(&buf).expect("valid frame");
        assert_eq!(
            h,
            FrameHeader { len: buf.len() as u32, base_seq: 42, timestamp_ms: 1_700_000_000_000, record_count: 2 }
        );
        let recs: Vec<_> = records(&buf, 2).map(|(k, d)| (&buf[k], &buf[d])).collect();
        assert_eq!(recs, vec![(&b"k1"[..], &b"hello"[..]), (&b"key-two"[..], &b""[..])]);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let buf = frame(&[(b"k", b"some data here")]);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(check_frame(&damaged).is_err(), "flip at byte {byte} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_or_invalid() {
        let buf = frame(&[(b"k", b"abcdefgh"), (b"k2", b"ijkl")]);
        for cut in 0..buf.len() {
            assert!(check_frame(&buf[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn absurd_length_is_rejected_before_use() {
        let mut buf = frame(&[(b"k", b"v")]);
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(check_frame(&buf), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn file_header_checks_each_field() {
        let h = encode_file_header(FileKind::Log, 7);
        assert!(check_file_header(&h, FileKind::Log, 7).is_ok());
        assert!(check_file_header(&h, FileKind::OffsetIndex, 7).unwrap_err().contains("kind"));
        assert!(check_file_header(&h, FileKind::Log, 8).unwrap_err().contains("base sequence"));
        let mut bad = h;
        bad[0] = b'X';
        assert!(check_file_header(&bad, FileKind::Log, 7).unwrap_err().contains("magic"));
        assert!(check_file_header(&h[..10], FileKind::Log, 7).is_err());
    }

    #[test]
    fn file_names_round_trip_and_reject_strangers() {
        assert_eq!(file_name(5, FileKind::Log), "00000000000000000005.log");
        assert_eq!(parse_file_name("00000000000000000005.timeindex"), Some((5, FileKind::TimeIndex)));
        assert_eq!(parse_file_name("5.log"), None);
        assert_eq!(parse_file_name("0000000000000000000x.log"), None);
        assert_eq!(parse_file_name("00000000000000000005.log.tmp"), None);
    }

    #[test]
    fn index_files_round_trip() {
        let offs = vec![OffsetEntry { rel_seq: 0, position: 32 }, OffsetEntry { rel_seq: 9, position: 4200 }];
        assert_eq!(decode_offset_index(&encode_offset_index(3, &offs), 3).expect("decode"), offs);
        let times = vec![TimeEntry { timestamp_ms: 1, rel_seq: 0 }, TimeEntry { timestamp_ms: 5, rel_seq: 9 }];
        assert_eq!(decode_time_index(&encode_time_index(3, &times), 3).expect("decode"), times);
        let mut short = encode_offset_index(3, &offs);
        short.extend_from_slice(&[1, 2, 3]);
        assert!(decode_offset_index(&short, 3).is_err());
    }
}
