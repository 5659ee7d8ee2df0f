//! Byte-surgery recovery tests on real files: damage a closed log the way a
//! crash or a bad disk would, reopen it, and check exactly what survives;
//! then reopen once more and check that recovery has nothing left to do.

use std::fs;
use std::path::{Path, PathBuf};

use shardlog::format::{self, FILE_HEADER_LEN};
use shardlog::{Config, Error, RecordRef, ShardLog};

fn config() -> Config {
    Config { segment_bytes_max: 64 * 1024, index_interval_bytes: 512, write_buffer_bytes: 4096, ..Config::default() }
}

fn data_of(seq: u64) -> Vec<u8> {
    format!("record-{seq:06}-").repeat(1 + (seq % 5) as usize).into_bytes()
}

/// Writes `batches` batches of 3 records, syncs and closes.
fn build(dir: &Path, batches: u64) -> u64 {
    let mut log = ShardLog::open(dir, config()).expect("open");
    for b in 0..batches {
        let seq0 = log.next_seq();
        let data: Vec<Vec<u8>> = (seq0..seq0 + 3).map(data_of).collect();
        let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"pk", data: d }).collect();
        log.append(1_000 + b, &recs).expect("append");
    }
    let next = log.next_seq();
    log.close().expect("close");
    next
}

/// Reads everything and checks each record's content; returns the sequence numbers.
fn read_all(log: &ShardLog) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut from = log.first_seq();
    loop {
        let got = log.read(from, 10_000, usize::MAX).expect("read");
        if got.records.is_empty() {
            return seqs;
        }
        for r in &got.records {
            assert_eq!(r.data, data_of(r.seq), "content of seq {}", r.seq);
            seqs.push(r.seq);
        }
        from = got.next_seq;
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// Start positions of the frames in a log file, and the end of the last.
fn frame_starts(file: &Path) -> (Vec<u64>, u64) {
    let bytes = fs::read(file).expect("read log");
    let mut pos = FILE_HEADER_LEN as usize;
    let mut starts = Vec::new();
    while pos < bytes.len() {
        let h = format::check_frame(&bytes[pos..]).expect("pristine log has valid frames");
        starts.push(pos as u64);
        pos += h.len as usize;
    }
    (starts, pos as u64)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn reopen_is_clean(dir: &Path, expect_next: u64) {
    let log = ShardLog::open(dir, config()).expect("second open");
    assert!(log.recovery_report().is_clean(), "second open repaired again: {:?}", log.recovery_report());
    assert_eq!(log.next_seq(), expect_next);
}

#[test]
fn cutting_the_last_batch_at_every_byte_keeps_exactly_the_batches_before() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let next = build(pristine.path(), 12);
    let active = segment_files(pristine.path()).pop().expect("a segment");
    let (starts, end) = frame_starts(&active);
    let last = *starts.last().expect("frames");
    let kept = next - 3;
    for cut in last..end {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let file = dir.path().join(active.file_name().expect("name"));
        fs::OpenOptions::new().write(true).open(&file).expect("open").set_len(cut).expect("cut");
        let log = ShardLog::open(dir.path(), config()).expect("recover");
        assert_eq!(log.recovery_report().truncated_bytes, cut - last, "cut at {cut}");
        assert_eq!(read_all(&log), (0..kept).collect::<Vec<_>>(), "cut at {cut}");
        drop(log);
        reopen_is_clean(dir.path(), kept);
        assert_eq!(fs::metadata(&file).expect("stat").len(), last, "file cut back to the last whole batch");
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut_away() {
    for garbage in [vec![0xA5u8; 40], (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let next = build(dir.path(), 12);
        let active = segment_files(dir.path()).pop().expect("segment");
        let len = fs::metadata(&active).expect("stat").len();
        let mut bytes = fs::read(&active).expect("read");
        bytes.extend_from_slice(&garbage);
        fs::write(&active, &bytes).expect("write");
        let log = ShardLog::open(dir.path(), config()).expect("recover");
        assert_eq!(log.recovery_report().truncated_bytes, garbage.len() as u64);
        assert_eq!(read_all(&log), (0..next).collect::<Vec<_>>());
        drop(log);
        reopen_is_clean(dir.path(), next);
        assert_eq!(fs::metadata(&active).expect("stat").len(), len);
    }
}

#[test]
fn zeroed_last_page_loses_only_the_batches_it_touches() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 80);
    let active = segment_files(dir.path()).pop().expect("segment");
    let (starts, end) = frame_starts(&active);
    let zero_from = end - 4096;
    let mut bytes = fs::read(&active).expect("read");
    bytes[zero_from as usize..].fill(0);
    fs::write(&active, &bytes).expect("write");
    // Batches wholly before the zeroed page survive; the first touched one and all after go.
    let first_touched = starts.iter().position(|&s| {
        let next = starts.iter().find(|&&n| n > s).copied().unwrap_or(end);
        next > zero_from
    });
    let first_touched = first_touched.expect("the page touches a batch");
    let base_of_active: u64 = active.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("base");
    let kept = base_of_active + 3 * first_touched as u64;
    let log = ShardLog::open(dir.path(), config()).expect("recover");
    assert_eq!(log.recovery_report().truncated_bytes, end - starts[first_touched]);
    assert_eq!(read_all(&log), (0..kept).collect::<Vec<_>>());
    drop(log);
    reopen_is_clean(dir.path(), kept);
}

/// A log with at least two sealed segments.
fn sealed_log() -> (tempfile::TempDir, u64, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let next = build(dir.path(), 900);
    let logs = segment_files(dir.path());
    assert!(logs.len() >= 3, "need sealed segments, got {logs:?}");
    (dir, next, logs)
}

fn index_of(log_path: &Path, ext: &str) -> PathBuf {
    log_path.with_extension(ext)
}

#[test]
fn index_pointing_past_the_log_is_rebuilt() {
    let (dir, next, logs) = sealed_log();
    let index = index_of(&logs[0], "index");
    let mut bytes = fs::read(&index).expect("read index");
    let log_len = fs::metadata(&logs[0]).expect("stat").len() as u32;
    bytes.extend_from_slice(&100_000u32.to_le_bytes());
    bytes.extend_from_slice(&(log_len + 4096).to_le_bytes());
    fs::write(&index, &bytes).expect("write index");
    let log = ShardLog::open(dir.path(), config()).expect("recover");
    assert_eq!(log.recovery_report().rebuilt_indexes, vec![logs[0].clone()]);
    assert_eq!(log.recovery_report().truncated_bytes, 0);
    assert_eq!(read_all(&log), (0..next).collect::<Vec<_>>());
    drop(log);
    reopen_is_clean(dir.path(), next);
}

#[test]
fn missing_or_ragged_indexes_are_rebuilt() {
    for (ext, damage) in [("index", "delete"), ("timeindex", "delete"), ("index", "ragged"), ("timeindex", "ragged")] {
        let (dir, next, logs) = sealed_log();
        let index = index_of(&logs[1], ext);
        if damage == "delete" {
            fs::remove_file(&index).expect("rm index");
        } else {
            let mut bytes = fs::read(&index).expect("read");
            bytes.extend_from_slice(&[7u8; 10]);
            fs::write(&index, bytes).expect("write");
        }
        let log = ShardLog::open(dir.path(), config()).expect("recover");
        assert_eq!(log.recovery_report().rebuilt_indexes, vec![logs[1].clone()], "{ext} {damage}");
        assert_eq!(read_all(&log), (0..next).collect::<Vec<_>>());
        let ts_lookup = log.seq_at_or_after_timestamp(1_000 + 150).expect("lookup");
        assert_eq!(ts_lookup, 150 * 3, "time index works after a rebuild");
        drop(log);
        reopen_is_clean(dir.path(), next);
        assert!(index.exists());
    }
}

#[test]
fn a_bit_flip_inside_a_sealed_segment_is_reported_never_cut() {
    let (dir, next, logs) = sealed_log();
    let (starts, _) = frame_starts(&logs[0]);
    let victim = starts[starts.len() / 2];
    let victim_seq = 3 * (starts.len() / 2) as u64;
    let len_before = fs::metadata(&logs[0]).expect("stat").len();
    let mut bytes = fs::read(&logs[0]).expect("read");
    bytes[victim as usize + 40] ^= 0x10;
    fs::write(&logs[0], &bytes).expect("write");
    for _ in 0..2 {
        let log = ShardLog::open(dir.path(), config()).expect("open does not cut or refuse a sealed segment");
        assert!(log.recovery_report().is_clean());
        assert_eq!(log.next_seq(), next, "nothing was cut");
        match log.read(victim_seq, 10, usize::MAX) {
            Err(Error::Corrupt { path, position, .. }) => assert_eq!((path, position), (logs[0].clone(), victim)),
            other => panic!("damaged batch must be reported, got {other:?}"),
        }
        let before = log.read(0, 10_000, usize::MAX).expect("records before the damage are returned");
        assert_eq!(before.records.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..victim_seq).collect::<Vec<_>>());
        assert_eq!(before.next_seq, victim_seq, "the next read starts at the damage and reports it");
        let after = log.read(victim_seq + 3, 3, usize::MAX).expect("records after the damage are still readable");
        assert_eq!(after.records[0].seq, victim_seq + 3);
        assert!(matches!(log.verify(), Err(Error::Corrupt { position, .. }) if position == victim));
    }
    assert_eq!(fs::metadata(&logs[0]).expect("stat").len(), len_before);
}

#[test]
fn damage_in_the_tail_of_a_sealed_segment_refuses_to_open() {
    let (dir, _, logs) = sealed_log();
    let (starts, _) = frame_starts(&logs[0]);
    let victim = *starts.last().expect("frames");
    let len_before = fs::metadata(&logs[0]).expect("stat").len();
    let mut bytes = fs::read(&logs[0]).expect("read");
    bytes[victim as usize + 33] ^= 0x01;
    fs::write(&logs[0], &bytes).expect("write");
    for _ in 0..2 {
        match ShardLog::open(dir.path(), config()) {
            Err(Error::Corrupt { path, position, .. }) => assert_eq!((path, position), (logs[0].clone(), victim)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(fs::metadata(&logs[0]).expect("stat").len(), len_before, "a sealed segment is never cut");
}

#[test]
fn a_bit_flip_before_the_tail_of_the_active_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 20);
    let active = segment_files(dir.path()).pop().expect("segment");
    let (starts, _) = frame_starts(&active);
    let victim = starts[5];
    let len_before = fs::metadata(&active).expect("stat").len();
    let mut bytes = fs::read(&active).expect("read");
    bytes[victim as usize + 4] ^= 0x80; // inside the CRC field
    fs::write(&active, &bytes).expect("write");
    for _ in 0..2 {
        match ShardLog::open(dir.path(), config()) {
            Err(Error::Corrupt { position, reason, .. }) => {
                assert_eq!(position, victim);
                assert!(reason.contains("valid batch follows"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(
        fs::metadata(&active).expect("stat").len(),
        len_before,
        "acknowledged batches after the damage are kept"
    );
}

#[test]
fn an_interrupted_roll_leaves_a_headerless_segment_that_is_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let next = build(dir.path(), 10);
    let torn = dir.path().join(format::file_name(next, format::FileKind::Log));
    fs::write(&torn, [b'S', b'B']).expect("partial header");
    let mut log = ShardLog::open(dir.path(), config()).expect("recover");
    assert_eq!(log.recovery_report().repaired_headers, vec![torn.clone()]);
    assert_eq!(read_all(&log), (0..next).collect::<Vec<_>>());
    let a = log.append(5_000, &[RecordRef { partition_key: b"k", data: &data_of(next) }]).expect("append");
    assert_eq!(a.first_seq, next);
    log.close().expect("close");
    reopen_is_clean(dir.path(), next + 1);
}

#[test]
fn orphaned_index_files_are_removed_and_strangers_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let next = build(dir.path(), 10);
    let orphan = dir.path().join(format::file_name(999_999, format::FileKind::OffsetIndex));
    fs::write(&orphan, b"left by an interrupted retention delete").expect("write");
    fs::write(dir.path().join("README.txt"), b"not ours").expect("write");
    let log = ShardLog::open(dir.path(), config()).expect("open");
    assert_eq!(log.recovery_report().removed_orphans, vec![orphan.clone()]);
    assert_eq!(log.recovery_report().ignored_files, vec!["README.txt".to_string()]);
    assert!(!orphan.exists());
    assert!(dir.path().join("README.txt").exists());
    drop(log);
    reopen_is_clean(dir.path(), next);
}

#[test]
fn a_missing_middle_segment_is_a_gap_not_a_silent_skip() {
    let (dir, _, logs) = sealed_log();
    fs::remove_file(&logs[1]).expect("rm");
    match ShardLog::open(dir.path(), config()) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("previous segment ends"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
