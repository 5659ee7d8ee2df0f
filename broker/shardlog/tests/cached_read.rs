//! `LogReader::read_cached`: the inline read of the async paths (subscribers
//! and GetRecords) gives exactly what the blocking `read` gives, or declines.

use std::fs::File;
use std::path::Path;

use shardlog::{Config, ReadBatch, RecordRef, ShardLog};

fn records(b: &ReadBatch) -> Vec<(u64, u64, Vec<u8>, Vec<u8>)> {
    b.records.iter().map(|r| (r.seq, r.timestamp_ms, r.partition_key.to_vec(), r.data.to_vec())).collect()
}

fn evict(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("ls") {
        let file = File::open(entry.expect("entry").path()).expect("open");
        file.sync_all().expect("sync");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
    }
}

#[test]
fn a_cached_read_gives_what_a_blocking_read_gives_or_declines() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments, so reads cross rolls.
    let config = Config { segment_bytes_max: 256 * 1024, ..Config::default() };
    let mut log = ShardLog::open(dir.path(), config).expect("open");
    for i in 0..600u64 {
        let data = vec![(i % 251) as u8; 100 + (i as usize % 7) * 300];
        let key = format!("key-{i}");
        let batch =
            [RecordRef { partition_key: key.as_bytes(), data: &data }, RecordRef { partition_key: b"k", data: b"x" }];
        log.append(1_000 + i, &batch).expect("append");
        if i % 10 == 9 {
            log.sync().expect("sync");
        }
    }
    log.sync().expect("sync");
    let reader = log.reader();
    let end = reader.next_seq();
    let mut cached = 0;
    for (from, max_records, max_bytes) in [
        (0, 1, 1 << 20),
        (0, 10_000, 1 << 20),
        (17, 5, 100),
        (end - 3, 10_000, 10 << 20),
        (end, 10, 1 << 20),
        (500, 300, 64 << 10),
    ] {
        let blocking = reader.read(from, max_records, max_bytes).expect("read");
        if let Some(inline) = reader.read_cached(from, max_records, max_bytes).expect("cached read") {
            assert_eq!(records(&inline), records(&blocking), "read({from}, {max_records}, {max_bytes})");
            assert_eq!(inline.next_seq, blocking.next_seq);
            cached += 1;
        }
    }
    assert!(cached >= 5, "just-written bytes are in the page cache: only {cached} of 6 reads were served inline");
    // Errors are the same too.
    let past = reader.read_cached(end + 1, 1, 1 << 20).expect_err("beyond the end");
    assert!(matches!(past, shardlog::Error::SequenceBeyondEnd { .. }), "{past}");
    // Out of the page cache, the inline read declines and the blocking one still reads.
    evict(dir.path());
    assert!(reader.read_cached(0, 10, 1 << 20).expect("cached read").is_none(), "evicted: must decline");
    assert_eq!(reader.read(0, 10, 1 << 20).expect("read").records.len(), 10);
}

#[test]
fn a_cached_read_never_copies_more_than_a_mebibyte_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = ShardLog::open(dir.path(), Config::default()).expect("open");
    let data = vec![5u8; 1024];
    let batch: Vec<RecordRef<'_>> = (0..500).map(|_| RecordRef { partition_key: b"k", data: &data }).collect();
    for t in 0..4 {
        log.append(1_000 + t, &batch).expect("append");
    }
    log.sync().expect("sync");
    let reader = log.reader();
    // 2 MiB visible and up to 10 MiB allowed, or 1 MiB allowed plus room for headers: declined.
    assert!(reader.read_cached(0, 10_000, 10 << 20).expect("cached read").is_none(), "2 MiB: declined");
    assert!(reader.read_cached(0, 100, 1 << 20).expect("cached read").is_none(), "over 1 MiB: declined");
    // At most 512 KiB wanted: one 500 KiB batch is read inline.
    let small = reader.read_cached(0, 100, 512 << 10).expect("cached read").expect("one batch fits");
    assert_eq!(small.records.len(), 100);
}
