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
    build_with(dir, batches, false)
}

/// Like [`build`], with a sync (a group commit) after every batch when `each`.
fn build_with(dir: &Path, batches: u64, each: bool) -> u64 {
    let mut log = ShardLog::open(dir, config()).expect("open");
    for b in 0..batches {
        let seq0 = log.next_seq();
        let data: Vec<Vec<u8>> = (seq0..seq0 + 3).map(data_of).collect();
        let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"pk", data: d }).collect();
        log.append(1_000 + b, &recs).expect("append");
        if each {
            log.sync().expect("sync");
        }
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

#[test]
fn damage_in_the_last_frame_of_a_sealed_segment_is_reported_like_damage_anywhere() {
    let (dir, next, logs) = sealed_log();
    let (starts, _) = frame_starts(&logs[0]);
    let victim = *starts.last().expect("frames");
    let victim_seq = 3 * (starts.len() - 1) as u64;
    let successor_base = victim_seq + 3;
    let len_before = fs::metadata(&logs[0]).expect("stat").len();
    let mut bytes = fs::read(&logs[0]).expect("read");
    bytes[victim as usize + 33] ^= 0x01;
    fs::write(&logs[0], &bytes).expect("write");
    for _ in 0..2 {
        let mut log = ShardLog::open(dir.path(), config()).expect("damage in a sealed segment never refuses the log");
        let damage = log.recovery_report().damage.clone();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!((&damage[0].path, damage[0].position), (&logs[0], victim));
        assert_eq!(log.damage(), damage, "the reader reports what recovery found");
        assert!(log.read_only().is_none(), "damage in a sealed segment leaves the log writable");
        assert_eq!(log.next_seq(), next, "the sequence continues from the successor's base");
        let before = log.read(0, 10_000, usize::MAX).expect("records before the damage are served");
        assert_eq!(before.records.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..victim_seq).collect::<Vec<_>>());
        for from in [victim_seq, victim_seq + 2] {
            match log.read(from, 10, usize::MAX) {
                Err(Error::Corrupt { path, position, .. }) => assert_eq!((path, position), (logs[0].clone(), victim)),
                other => panic!("read at {from} must report the damage, got {other:?}"),
            }
        }
        let after = log.read(successor_base, 3, usize::MAX).expect("later segments are served");
        assert_eq!(after.records[0].seq, successor_base);
        let a = log.append(9_999, &[RecordRef { partition_key: b"k", data: &data_of(next) }]).expect("writable");
        assert_eq!(a.first_seq, next);
        log.truncate_after(next - 1).expect("undo the append");
        log.close().expect("close");
    }
    assert_eq!(fs::metadata(&logs[0]).expect("stat").len(), len_before, "a sealed segment is never cut");
}

#[test]
fn a_bit_flip_in_the_synced_part_of_the_active_segment_opens_read_only_until_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let next = build_with(dir.path(), 20, true);
    let active = segment_files(dir.path()).pop().expect("segment");
    let (starts, _) = frame_starts(&active);
    let victim = starts[5];
    let len_before = fs::metadata(&active).expect("stat").len();
    let mut bytes = fs::read(&active).expect("read");
    bytes[victim as usize + 4] ^= 0x80; // inside the CRC field
    fs::write(&active, &bytes).expect("write");
    for _ in 0..2 {
        let mut log = ShardLog::open(dir.path(), config()).expect("damage never refuses the log");
        let d = log.read_only().cloned().expect("the synced part of the active segment is damaged");
        assert_eq!((&d.path, d.position), (&active, victim));
        assert!(d.reason.contains("vouches"), "{}", d.reason);
        assert_eq!(log.recovery_report().damage, vec![d.clone()]);
        assert_eq!(log.next_seq(), next, "records after the damage are still known");
        match log.append(5_000, &[RecordRef { partition_key: b"k", data: b"x" }]) {
            Err(Error::Damaged { path, position, .. }) => assert_eq!((path, position), (active.clone(), victim)),
            other => panic!("a read-only log refuses appends, got {other:?}"),
        }
        assert!(matches!(log.truncate_after(3), Err(Error::Damaged { .. })));
        let before = log.read(0, 10_000, usize::MAX).expect("records before the damage");
        assert_eq!(before.records.len(), 15);
        assert!(matches!(log.read(15, 10, usize::MAX), Err(Error::Corrupt { position, .. }) if position == victim));
        let after = log.read(18, 10_000, usize::MAX).expect("records after the damage are served");
        assert_eq!(after.records.first().map(|r| r.seq), Some(18));
        assert_eq!(after.records.last().map(|r| r.seq), Some(next - 1));
    }
    assert_eq!(fs::metadata(&active).expect("stat").len(), len_before, "nothing is cut without an operator");

    let mut log = ShardLog::open(dir.path(), config()).expect("open");
    let reader = log.reader();
    let plan = log.repair_plan().expect("plan").expect("damage needs a repair");
    assert_eq!((plan.cut_path.clone(), plan.cut_position, plan.first_lost_seq), (active.clone(), victim, 15));
    assert_eq!(plan.records_lost, next - 15);
    assert_eq!(plan.bytes_removed, len_before - victim);
    assert!(plan.segments_removed.is_empty());
    assert_eq!(fs::metadata(&active).expect("stat").len(), len_before, "planning changes nothing");
    log.repair(&plan).expect("repair");
    assert!(log.read_only().is_none());
    assert_eq!(log.next_seq(), 15);
    assert_eq!(
        (reader.next_seq(), reader.damage()),
        (15, vec![]),
        "readers from before the repair see the repaired log"
    );
    let a = log.append(6_000, &[RecordRef { partition_key: b"k", data: &data_of(15) }]).expect("writable again");
    assert_eq!(a.first_seq, 15);
    log.close().expect("close");
    reopen_is_clean(dir.path(), 16);
    assert!(ShardLog::open(dir.path(), config()).expect("open").repair_plan().expect("plan").is_none());
}

#[test]
fn repair_of_a_damaged_sealed_segment_removes_the_segments_after_it() {
    let (dir, next, logs) = sealed_log();
    let (starts, _) = frame_starts(&logs[1]);
    let base1: u64 = logs[1].file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("base");
    let victim = starts[4];
    let mut bytes = fs::read(&logs[1]).expect("read");
    bytes[victim as usize + 50] ^= 0xff;
    fs::write(&logs[1], &bytes).expect("write");
    let mut log = ShardLog::open(dir.path(), config()).expect("open");
    let plan = log.repair_plan().expect("plan").expect("damage found by the plan's scan");
    assert_eq!((plan.cut_path.clone(), plan.cut_position, plan.first_lost_seq), (logs[1].clone(), victim, base1 + 12));
    assert_eq!(plan.segments_removed, logs[2..].to_vec());
    assert_eq!(plan.records_lost, next - base1 - 12);
    log.repair(&plan).expect("repair");
    assert_eq!(log.next_seq(), base1 + 12);
    assert_eq!(read_all(&log), (0..base1 + 12).collect::<Vec<_>>());
    drop(log);
    assert_eq!(segment_files(dir.path()), logs[..2].to_vec());
    reopen_is_clean(dir.path(), base1 + 12);
}

#[test]
fn a_lost_unsynced_page_before_an_intact_later_page_is_a_torn_tail() {
    // Power loss persisted a later page of never-synced batches but not an
    // earlier one: the later batches vouch only for bytes synced before
    // them, so the gap is not damage and everything from it goes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = ShardLog::open(dir.path(), config()).expect("open");
    let append = |log: &mut ShardLog, seq: u64| {
        let d = vec![seq as u8; 1500];
        log.append(1_000 + seq, &[RecordRef { partition_key: b"k", data: &d }]).expect("append");
    };
    for seq in 0..5 {
        append(&mut log, seq);
    }
    log.sync().expect("sync");
    for seq in 5..20 {
        append(&mut log, seq);
    }
    log.publish().expect("write without syncing");
    drop(log);
    let active = segment_files(dir.path()).pop().expect("segment");
    let (starts, end) = frame_starts(&active);
    let mut bytes = fs::read(&active).expect("read");
    bytes[starts[6] as usize..starts[9] as usize].fill(0);
    fs::write(&active, &bytes).expect("write");
    let log = ShardLog::open(dir.path(), config()).expect("a power-loss shape never refuses");
    assert!(log.read_only().is_none() && log.recovery_report().damage.is_empty(), "{:?}", log.recovery_report());
    assert_eq!(log.next_seq(), 6);
    assert_eq!(log.recovery_report().truncated_bytes, end - starts[6]);
    drop(log);
    reopen_is_clean(dir.path(), 6);
}

#[test]
fn a_lost_page_that_a_later_batch_vouches_for_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = ShardLog::open(dir.path(), config()).expect("open");
    for seq in 0..10u64 {
        let d = vec![seq as u8; 1500];
        log.append(1_000 + seq, &[RecordRef { partition_key: b"k", data: &d }]).expect("append");
        log.sync().expect("sync each");
    }
    drop(log);
    let active = segment_files(dir.path()).pop().expect("segment");
    let (starts, _) = frame_starts(&active);
    let mut bytes = fs::read(&active).expect("read");
    bytes[starts[3] as usize..starts[5] as usize].fill(0);
    fs::write(&active, &bytes).expect("write");
    let log = ShardLog::open(dir.path(), config()).expect("open");
    let d = log.read_only().expect("synced bytes were lost: read-only");
    assert_eq!(d.position, starts[3]);
    assert_eq!(log.next_seq(), 10);
}

#[test]
fn a_missing_newest_segment_refuses_instead_of_reusing_sequence_numbers() {
    let (dir, _, logs) = sealed_log();
    let newest = logs.last().expect("segments").clone();
    fs::remove_file(&newest).expect("rm newest");
    match ShardLog::open(dir.path(), config()) {
        Err(Error::Corrupt { path, reason, .. }) => {
            assert_eq!(path, logs[logs.len() - 2]);
            let missing = newest.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(reason.contains(missing), "the error names the missing successor: {reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_flipped_time_index_entry_is_caught_and_time_lookups_stay_exact() {
    let (dir, next, logs) = sealed_log();
    let timeindex = index_of(&logs[0], "timeindex");
    let mut bytes = fs::read(&timeindex).expect("read");
    // Entry 5: lower its timestamp by 2. It still increases, so only a
    // checksum can tell; without one, a lookup just before the real
    // timestamp would start at this entry and skip a batch.
    let at = FILE_HEADER_LEN as usize + 5 * format::TIME_ENTRY_LEN;
    let ts = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let prev = u64::from_le_bytes(bytes[at - 12..at - 4].try_into().expect("8 bytes"));
    assert!(ts - 2 > prev, "entries are more than two batches apart");
    bytes[at..at + 8].copy_from_slice(&(ts - 2).to_le_bytes());
    fs::write(&timeindex, &bytes).expect("write");
    let log = ShardLog::open(dir.path(), config()).expect("open");
    assert_eq!(log.recovery_report().rebuilt_indexes, vec![logs[0].clone()]);
    let want = 3 * (ts - 1 - 1_000);
    assert_eq!(log.seq_at_or_after_timestamp(ts - 1).expect("lookup"), want);
    drop(log);
    reopen_is_clean(dir.path(), next);
}

#[test]
fn version_1_files_are_read_and_appends_go_to_a_version_2_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format::file_name(0, format::FileKind::Log));
    let mut bytes = format::encode_file_header_version(format::FileKind::Log, 0, 1).to_vec();
    for seq in 0..4u64 {
        let data = data_of(seq);
        let recs = [(&b"pk"[..], &data[..])];
        let len = format::frame_len(recs.iter().copied()) as u32;
        let f = format::FrameFields { base_seq: seq, timestamp_ms: 1_000 + seq, count: 1, len, durable_len: 0 };
        format::encode_frame(&mut bytes, f, recs.iter().copied());
    }
    fs::write(&path, &bytes).expect("write v1 segment");
    let mut log = ShardLog::open(dir.path(), config()).expect("open v1");
    assert_eq!(read_all(&log), vec![0, 1, 2, 3]);
    log.append(2_000, &[RecordRef { partition_key: b"pk", data: &data_of(4) }]).expect("append");
    log.close().expect("close");
    let logs = segment_files(dir.path());
    assert_eq!(logs.len(), 2, "the version-1 segment was sealed: {logs:?}");
    let new_header = fs::read(&logs[1]).expect("read");
    assert_eq!(format::check_file_header(&new_header, format::FileKind::Log, 4), Ok(format::VERSION));
    assert_eq!(fs::read(&path).expect("read"), bytes, "the version-1 segment is untouched");
    let log = ShardLog::open(dir.path(), config()).expect("reopen");
    assert_eq!(read_all(&log), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_version_1_crash_between_index_write_and_roll_still_opens() {
    // The version-1 writer wrote a sealed segment's index files before
    // creating its successor; a crash in between left the newest segment
    // with (version-1) index files. That is not a lost successor.
    let dir = tempfile::tempdir().expect("tempdir");
    let next = build(dir.path(), 10);
    let active = segment_files(dir.path()).pop().expect("segment");
    let mut v1 = format::encode_file_header_version(format::FileKind::OffsetIndex, 0, 1).to_vec();
    v1.extend_from_slice(&[0, 0, 0, 0, 32, 0, 0, 0]);
    fs::write(index_of(&active, "index"), &v1).expect("write v1 index");
    let log = ShardLog::open(dir.path(), config()).expect("a version-1 interrupted roll opens");
    assert_eq!(log.next_seq(), next);
}
