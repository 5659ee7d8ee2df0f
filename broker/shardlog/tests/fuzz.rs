//! Decoder fuzzing on stable Rust, with proptest: arbitrary and mutated
//! bytes go into the batch-frame decoder, the index decoders, the file
//! header decoder and whole-directory recovery. None may panic or hang, and
//! no frame whose CRC does not match may ever be accepted.
//!
//! The CI run is short. The long runs (at least a million cases for each
//! decoder) are ignored by default:
//! `cargo test -p shardlog --release --test fuzz -- --ignored`.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use shardlog::format::{self, FILE_HEADER_LEN, FileKind, FrameFields};
use shardlog::io::{Io, OpenMode, SimIo};
use shardlog::{Config, Error, RecordRef, ShardLog};

fn valid_frame(records: &[(Vec<u8>, Vec<u8>)], base_seq: u64, durable_len: u32) -> Vec<u8> {
    let recs = || records.iter().map(|(k, d)| (&k[..], &d[..]));
    let len = format::frame_len(recs()) as u32;
    let mut out = Vec::new();
    let f = FrameFields { base_seq, timestamp_ms: 1_700_000_000_000, count: records.len() as u32, len, durable_len };
    format::encode_frame(&mut out, f, recs());
    out
}

/// What an accepted frame must satisfy: its CRC matches its bytes and its
/// records tile it exactly.
fn check_accepted(buf: &[u8]) {
    if let Ok(h) = format::check_frame(buf) {
        let frame = &buf[..h.len as usize];
        let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        assert_eq!(crc32fast::hash(&frame[8..]), crc, "accepted a frame whose CRC does not match");
        assert!(h.record_count >= 1);
        assert_eq!(format::records(frame, h.record_count).count(), h.record_count as usize);
    }
}

fn records() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec((prop::collection::vec(any::<u8>(), 1..20), prop::collection::vec(any::<u8>(), 0..200)), 1..6)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Append { bytes: Vec<u8> },
    ZeroRange { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), 1usize..4096).prop_map(|(at, len)| Mutation::ZeroRange { at, len }),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let n = buf.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if !buf.is_empty() {
                buf[at % n] ^= 1 << bit;
            }
        }
        Mutation::Set { at, byte } => {
            if !buf.is_empty() {
                buf[at % n] = *byte;
            }
        }
        Mutation::Truncate { at } => buf.truncate(at % n),
        Mutation::Append { bytes } => buf.extend_from_slice(bytes),
        Mutation::ZeroRange { at, len } => {
            let start = at % n;
            let end = (start + len).min(buf.len());
            if start < end {
                buf[start..end].fill(0);
            }
        }
    }
}

fn frame_decoder_cases(cases: u32) {
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..300), |bytes| {
            check_accepted(&bytes);
            let _ = format::peek_frame_len(&bytes);
            Ok(())
        })
        .expect("arbitrary bytes");
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&(records(), prop::collection::vec(mutation(), 1..4)), |(recs, muts)| {
            let original = valid_frame(&recs, 7, 32);
            let mut buf = original.clone();
            for m in &muts {
                apply(&mut buf, m);
            }
            check_accepted(&buf);
            if buf != original && buf.len() >= original.len() && buf[..original.len()] != original[..] {
                // A changed frame body can only pass if its CRC was recomputed, which no mutation does.
                prop_assert!(format::check_frame(&buf).is_err(), "accepted a mutated frame");
            }
            Ok(())
        })
        .expect("mutated frames");
}

fn index_and_header_decoder_cases(cases: u32) {
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&(prop::collection::vec(any::<u8>(), 0..200), any::<u64>()), |(bytes, base)| {
            let _ = format::decode_offset_index(&bytes, base);
            let _ = format::decode_time_index(&bytes, base);
            let _ = format::check_file_header(&bytes, FileKind::Log, base);
            Ok(())
        })
        .expect("arbitrary index bytes");
    let entries = prop::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 0..30);
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&(entries, prop::collection::vec(mutation(), 1..3)), |(entries, muts)| {
            let offs: Vec<format::OffsetEntry> =
                entries.iter().map(|&(rel_seq, position, _)| format::OffsetEntry { rel_seq, position }).collect();
            let times: Vec<format::TimeEntry> =
                entries.iter().map(|&(rel_seq, _, timestamp_ms)| format::TimeEntry { timestamp_ms, rel_seq }).collect();
            for (original, is_offsets) in
                [(format::encode_offset_index(9, &offs), true), (format::encode_time_index(9, &times), false)]
            {
                let mut buf = original.clone();
                for m in &muts {
                    apply(&mut buf, m);
                }
                let accepted = if is_offsets {
                    format::decode_offset_index(&buf, 9).is_ok()
                } else {
                    format::decode_time_index(&buf, 9).is_ok()
                };
                prop_assert!(!accepted || buf == original, "accepted a damaged index file");
                let header = format::check_file_header(
                    &buf,
                    if is_offsets { FileKind::OffsetIndex } else { FileKind::TimeIndex },
                    9,
                );
                prop_assert!(
                    header.is_err() || buf[..FILE_HEADER_LEN as usize] == original[..FILE_HEADER_LEN as usize]
                );
            }
            Ok(())
        })
        .expect("mutated index files");
}

#[test]
fn frame_decoder_short() {
    frame_decoder_cases(2_000);
}

#[test]
#[ignore = "long run"]
fn frame_decoder_long() {
    frame_decoder_cases(1_000_000);
}

#[test]
fn index_and_header_decoders_short() {
    index_and_header_decoder_cases(2_000);
}

#[test]
#[ignore = "long run"]
fn index_and_header_decoders_long() {
    index_and_header_decoder_cases(1_000_000);
}

// Whole-directory recovery.

fn small() -> Config {
    Config { segment_bytes_max: 64 * 1024, index_interval_bytes: 256, write_buffer_bytes: 1024, ..Config::default() }
}

fn data_of(seq: u64) -> Vec<u8> {
    vec![(seq % 251) as u8; 50 + (seq % 400) as usize]
}

/// A synced log of three or more segments on a simulated disk.
fn pristine() -> (SimIo, u64) {
    let io = SimIo::new();
    let mut log = ShardLog::open_with_io("/s", small(), Arc::new(io.clone())).expect("open");
    for b in 0..160u64 {
        let seq0 = log.next_seq();
        let data: Vec<Vec<u8>> = (seq0..seq0 + 2).map(data_of).collect();
        let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"k", data: d }).collect();
        log.append(1_000 + b, &recs).expect("append");
        if b % 3 == 0 {
            log.sync().expect("sync");
        }
    }
    let next = log.next_seq();
    log.close().expect("close");
    (io, next)
}

#[derive(Debug, Clone)]
enum DirMutation {
    Bytes { file: usize, m: Mutation },
    ZeroPage { file: usize, page: usize },
    DuplicateFrame { file: usize, frame: usize },
}

fn dir_mutation() -> impl Strategy<Value = DirMutation> {
    prop_oneof![
        (any::<usize>(), mutation()).prop_map(|(file, m)| DirMutation::Bytes { file, m }),
        (any::<usize>(), any::<usize>()).prop_map(|(file, page)| DirMutation::ZeroPage { file, page }),
        (any::<usize>(), any::<usize>()).prop_map(|(file, frame)| DirMutation::DuplicateFrame { file, frame }),
    ]
}

fn rewrite(io: &SimIo, path: &Path, bytes: &[u8]) {
    let f = io.open(path, OpenMode::CreateTruncate).expect("open for surgery");
    f.write_all_at(bytes, 0).expect("write");
    f.sync_data().expect("sync");
}

fn mutate_dir(io: &SimIo, muts: &[DirMutation]) {
    let mut names = io.list_dir(Path::new("/s")).expect("ls");
    names.sort();
    for m in muts {
        let (file, what) = match m {
            DirMutation::Bytes { file, .. }
            | DirMutation::ZeroPage { file, .. }
            | DirMutation::DuplicateFrame { file, .. } => (names[file % names.len()].clone(), m),
        };
        let path = Path::new("/s").join(&file);
        let mut bytes = io.read_file(&path).expect("file");
        match what {
            DirMutation::Bytes { m, .. } => apply(&mut bytes, m),
            DirMutation::ZeroPage { page, .. } => {
                let pages = bytes.len().div_ceil(4096).max(1);
                let start = (page % pages) * 4096;
                let end = (start + 4096).min(bytes.len());
                if start < end {
                    bytes[start..end].fill(0);
                }
            }
            DirMutation::DuplicateFrame { frame, .. } => {
                let mut pos = FILE_HEADER_LEN as usize;
                let mut frames = Vec::new();
                while let Ok(h) = format::check_frame(bytes.get(pos..).unwrap_or_default()) {
                    frames.push(pos..pos + h.len as usize);
                    pos += h.len as usize;
                }
                if !frames.is_empty() {
                    let r = frames[frame % frames.len()].clone();
                    let copy = bytes[r.clone()].to_vec();
                    bytes.splice(r.end..r.end, copy);
                }
            }
        }
        rewrite(io, &path, &bytes);
    }
}

/// Opens the damaged directory: it may refuse only with `Corrupt` (for
/// inconsistencies between files); if it opens, every record it returns is
/// exactly one that was written.
fn check_recovery(io: &SimIo, next: u64) -> Result<(), TestCaseError> {
    match ShardLog::open_with_io("/s", small(), Arc::new(io.clone())) {
        Err(Error::Corrupt { .. }) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("open failed with {e}"))),
        Ok(log) => {
            prop_assert!(log.next_seq() <= next, "recovered more records than were written");
            let mut from = log.first_seq();
            let end = log.reader().next_seq();
            let mut reads = 0;
            while from < end {
                reads += 1;
                prop_assert!(reads < 10_000, "reads make no progress");
                match log.read(from, 1_000, usize::MAX) {
                    Ok(got) => {
                        for r in &got.records {
                            prop_assert_eq!(&r.data[..], &data_of(r.seq)[..], "seq {} has other bytes", r.seq);
                        }
                        from = if got.records.is_empty() { from + 1 } else { got.next_seq };
                    }
                    Err(Error::Corrupt { .. }) => from += 1,
                    Err(e) => return Err(TestCaseError::fail(format!("read {from}: {e}"))),
                }
            }
        }
    }
    Ok(())
}

fn recovery_cases(cases: u32) {
    let (io, next) = pristine();
    let mut runner = TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&prop::collection::vec(dir_mutation(), 1..4), |muts| {
            let copy = io.snapshot();
            mutate_dir(&copy, &muts);
            check_recovery(&copy, next)?;
            check_recovery(&copy, next)
        })
        .expect("mutated directories");
}

#[test]
fn recovery_of_mutated_directories_short() {
    recovery_cases(150);
}

#[test]
#[ignore = "long run"]
fn recovery_of_mutated_directories_long() {
    recovery_cases(1_000_000);
}
