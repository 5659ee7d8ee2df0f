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
//!
//! Version 2 (written now) differs from version 1 in two places: a batch
//! frame's attributes field carries the *durable length* of its segment when
//! the batch was appended (recovery uses it to tell a torn tail from damage,
//! see [`crate::recovery`]), and index files end with a CRC32 trailer. Version
//! 1 files are still read: their frames claim nothing (attributes `0`) and
//! their index files, which have no checksum, are rebuilt from the log.

use std::ops::Range;

/// First eight bytes of every file this crate writes.
pub const MAGIC: [u8; 8] = *b"SBSHLOG\0";
/// Format version written in every new file header.
pub const VERSION: u16 = 2;
/// Oldest format version this crate still reads.
pub const VERSION_MIN: u16 = 1;
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
/// Bytes of the CRC32 trailer of a version-2 index file.
pub const INDEX_TRAILER_LEN: usize = 4;
/// Smallest possible frame: the header and one record with a one-byte key.
pub const FRAME_BYTES_MIN: u32 = (FRAME_HEADER_LEN + RECORD_HEADER_LEN + 1) as u32;

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

/// Encodes the common file header with the current [`VERSION`].
pub fn encode_file_header(kind: FileKind, base_seq: u64) -> [u8; FILE_HEADER_LEN as usize] {
    encode_file_header_version(kind, base_seq, VERSION)
}

/// Encodes the common file header of a given version (tests write version-1
/// files with it to check they are still read).
pub fn encode_file_header_version(kind: FileKind, base_seq: u64, version: u16) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&version.to_le_bytes());
    h[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    // 12..16 flags, 24..28 reserved: zero in versions 1 and 2.
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header and returns its format version; the error says
/// which field is wrong.
pub fn check_file_header(buf: &[u8], kind: FileKind, base_seq: u64) -> Result<u16, String> {
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
    if !(VERSION_MIN..=VERSION).contains(&version) {
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
    Ok(version)
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
/// | 28 | 4 | durable length: bytes of the segment known synced when the batch was appended (0 in version 1) |
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
    /// Length of the segment's prefix that the last successful `fdatasync`
    /// before this batch's append covered (0 in version-1 files). Never more
    /// than the batch's own position.
    pub durable_len: u32,
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
    if !(FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&len) {
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
        durable_len: u32_at(frame, 28),
    };
    if header.record_count == 0 {
        return Err(FrameError::Invalid("batch has no records".into()));
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

/// The fixed fields of a frame to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFields {
    /// Sequence number of the first record.
    pub base_seq: u64,
    /// Arrival timestamp of the batch.
    pub timestamp_ms: u64,
    /// Number of records.
    pub count: u32,
    /// Whole frame length, from [`frame_len`].
    pub len: u32,
    /// The segment's durable length when the batch is appended.
    pub durable_len: u32,
}

/// Appends one frame to `out`. The caller has validated every record
/// (key length, sizes) and computed `len` with [`frame_len`].
pub fn encode_frame<'a>(out: &mut Vec<u8>, f: FrameFields, records: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
    let FrameFields { base_seq, timestamp_ms, count, len, durable_len } = f;
    let start = out.len();
    out.reserve(len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below.
    out.extend_from_slice(&base_seq.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&durable_len.to_le_bytes());
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
    push_trailer(&mut out);
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
    push_trailer(&mut out);
    out
}

fn push_trailer(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks an index file's header and CRC trailer and returns its entry bytes.
/// Version-1 index files carry no checksum, so they are not trusted.
fn index_body(buf: &[u8], kind: FileKind, base_seq: u64, entry_len: usize) -> Result<&[u8], String> {
    let version = check_file_header(buf, kind, base_seq)?;
    if version < 2 {
        return Err(format!("version {version} index has no checksum"));
    }
    let Some(body_end) = buf.len().checked_sub(INDEX_TRAILER_LEN).filter(|&e| e >= FILE_HEADER_LEN as usize) else {
        return Err("index file has no checksum trailer".into());
    };
    if crc32fast::hash(&buf[..body_end]) != u32_at(buf, body_end) {
        return Err("index checksum mismatch".into());
    }
    let body = &buf[FILE_HEADER_LEN as usize..body_end];
    if body.len() % entry_len != 0 {
        return Err(format!("index body of {} bytes is not whole {entry_len}-byte entries", body.len()));
    }
    Ok(body)
}

/// Decodes an offset index file: header, checksum and whole entries (the
/// caller checks the entries against the log).
pub fn decode_offset_index(buf: &[u8], base_seq: u64) -> Result<Vec<OffsetEntry>, String> {
    let body = index_body(buf, FileKind::OffsetIndex, base_seq, OFFSET_ENTRY_LEN)?;
    Ok(body
        .chunks_exact(OFFSET_ENTRY_LEN)
        .map(|c| OffsetEntry { rel_seq: u32_at(c, 0), position: u32_at(c, 4) })
        .collect())
}

/// Decodes a time index file: header, checksum and whole entries.
pub fn decode_time_index(buf: &[u8], base_seq: u64) -> Result<Vec<TimeEntry>, String> {
    let body = index_body(buf, FileKind::TimeIndex, base_seq, TIME_ENTRY_LEN)?;
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
        let f = FrameFields {
            base_seq: 42,
            timestamp_ms: 1_700_000_000_000,
            count: records.len() as u32,
            len,
            durable_len: 32,
        };
        encode_frame(&mut out, f, records.iter().copied());
        out
    }

    #[test]
    fn frame_round_trips() {
        let buf = frame(&[(b"k1", b"hello"), (b"key-two", b"")]);
        let h = check_frame(&buf).expect("valid frame");
        assert_eq!(
            h,
            FrameHeader {
                len: buf.len() as u32,
                base_seq: 42,
                timestamp_ms: 1_700_000_000_000,
                record_count: 2,
                durable_len: 32
            }
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
        assert_eq!(check_file_header(&h, FileKind::Log, 7), Ok(VERSION));
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

    #[test]
    fn every_bit_flip_of_an_index_file_is_detected() {
        let times = vec![TimeEntry { timestamp_ms: 1, rel_seq: 0 }, TimeEntry { timestamp_ms: 5, rel_seq: 9 }];
        let buf = encode_time_index(3, &times);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                assert!(decode_time_index(&damaged, 3).is_err(), "flip at byte {byte} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn version_1_headers_are_read_and_version_1_indexes_are_not_trusted() {
        let h = encode_file_header_version(FileKind::Log, 7, 1);
        assert_eq!(check_file_header(&h, FileKind::Log, 7), Ok(1));
        assert!(check_file_header(&encode_file_header_version(FileKind::Log, 7, 3), FileKind::Log, 7).is_err());
        let mut v1 = encode_file_header_version(FileKind::OffsetIndex, 7, 1).to_vec();
        v1.extend_from_slice(&[0, 0, 0, 0, 32, 0, 0, 0]);
        assert!(decode_offset_index(&v1, 7).unwrap_err().contains("no checksum"));
    }
}
