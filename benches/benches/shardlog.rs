//! Criterion micro benchmarks of the `shardlog` storage engine.
//!
//! - `append/{no_sync,sync_per_batch}/{100B,1KiB}x{1,100,500}`: batched appends
//!   (100 B or 1 KiB of data plus a 9-byte key per record) to a fresh log per
//!   sample, with 1 GiB segments so that no sample rolls a segment (the
//!   `shardlog_targets` program measures appends with 128 MiB rolls).
//!   `no_sync` publishes about every MiB, as the broker does in its
//!   non-durable modes; `sync_per_batch` calls `sync()` after every batch.
//! - `read/sequential_1KiB`: reads a pre-filled log of 200,000 records of
//!   1 KiB from the start to the end with `read(from, 1000, 1 MiB)`.
//! - `recovery/open_torn`: opens a shard of about 1 GiB of sealed 128 MiB
//!   segments plus an active segment whose last batch was cut in half; the
//!   torn file is restored (outside the measurement) before every open.
//!   `recovery/open_clean` reopens the same shard after it was repaired.
//!
//! Scratch files live under the target directory's tmp folder and are
//! removed at the end. All figures are hot-cache: nothing is dropped from
//! the page cache.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use benches::{BENCH_TIMESTAMP_MS, RecordSet, TornShard, scratch_dir};
use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardlog::{Config, RecordRef, ShardLog};

const SCRATCH: &str = env!("CARGO_TARGET_TMPDIR");

/// `publish()` after about this many record bytes in the `no_sync` variant.
const PUBLISH_EVERY_BYTES: usize = 1 << 20;

/// The append benchmarks' configuration: the defaults, but segments of
/// 1 GiB, so that no measured sample rolls a segment (a roll syncs the whole
/// 128 MiB segment; `shardlog_targets` measures appends with rolls).
fn append_config() -> Config {
    Config { segment_bytes_max: shardlog::SEGMENT_BYTES_MAX_LIMIT, ..Config::default() }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for (label, data_len) in [("100B", 100usize), ("1KiB", 1024)] {
        for batch_len in [1usize, 100, 500] {
            // Enough distinct records for at least 8 different batches.
            let set = RecordSet::new((batch_len * 8).max(1024), data_len);
            let batches = set.batches(batch_len);
            let batch_bytes = set.record_bytes() * batch_len;
            group.throughput(Throughput::ElementsAndBytes { elements: batch_len as u64, bytes: batch_bytes as u64 });
            let param = format!("{label}x{batch_len}");
            group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
            group.bench_function(BenchmarkId::new("no_sync", &param), |b| {
                append_samples(b, &batches, batch_bytes, false)
            });
            // About fsync-bound: few samples, short measurement.
            group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
            group.bench_function(BenchmarkId::new("sync_per_batch", &param), |b| {
                append_samples(b, &batches, batch_bytes, true)
            });
        }
    }
    group.finish();
}

/// One sample: `iters` batches (of `batch_bytes` keys and data each) appended
/// to a fresh log, opened and removed outside the measurement. Without
/// `durable`, `publish()` runs about every MiB and once at the end; with it,
/// `sync()` runs after every batch.
fn append_samples(b: &mut Bencher<'_>, batches: &[Vec<RecordRef<'_>>], batch_bytes: usize, durable: bool) {
    let dir = scratch_dir(SCRATCH, "shardlog-append-").expect("create a scratch dir");
    let mut log = ShardLog::open(dir.path().join("shard"), append_config()).expect("open a fresh log");
    b.iter_custom(|iters| {
        let mut unpublished = 0usize;
        let start = Instant::now();
        for i in 0..iters as usize {
            let batch = &batches[i % batches.len()];
            log.append(BENCH_TIMESTAMP_MS, batch).expect("append");
            if durable {
                log.sync().expect("sync");
                continue;
            }
            unpublished += batch_bytes;
            if unpublished >= PUBLISH_EVERY_BYTES {
                log.publish().expect("publish");
                unpublished = 0;
            }
        }
        if !durable {
            log.publish().expect("publish");
        }
        start.elapsed()
    });
    drop(log);
    drop(dir);
}

/// Records in the pre-filled log of the `read` group.
const READ_RECORDS: usize = 200_000;

fn read(c: &mut Criterion) {
    let set = RecordSet::new(4_000, 1024);
    let batches = set.batches(500);
    let dir = scratch_dir(SCRATCH, "shardlog-read-").expect("create a scratch dir");
    let mut log = ShardLog::open(dir.path().join("shard"), Config::default()).expect("open a fresh log");
    for i in 0..READ_RECORDS / 500 {
        log.append(BENCH_TIMESTAMP_MS, &batches[i % batches.len()]).expect("append");
    }
    log.sync().expect("sync");
    let end = log.next_seq();
    assert_eq!(end, READ_RECORDS as u64);

    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::ElementsAndBytes {
        elements: READ_RECORDS as u64,
        bytes: (READ_RECORDS * set.record_bytes()) as u64,
    });
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.bench_function("sequential_1KiB", |b| {
        b.iter(|| {
            let (mut from, mut records, mut bytes) = (0u64, 0usize, 0usize);
            while from < end {
                let batch = log.read(from, 1000, 1 << 20).expect("read");
                records += batch.records.len();
                bytes += batch.records.iter().map(|r| r.partition_key.len() + r.data.len()).sum::<usize>();
                from = batch.next_seq;
            }
            assert_eq!(records, READ_RECORDS);
            black_box(bytes)
        });
    });
    group.finish();
    drop(log);
    drop(dir);
}

fn recovery(c: &mut Criterion) {
    let shard = TornShard::build(Path::new(SCRATCH), Config::default(), 1 << 30, 4 << 20).expect("build a torn shard");
    eprintln!(
        "recovery: {} sealed segments, {} bytes sealed, active {} bytes synced + {} torn bytes",
        shard.sealed_segments,
        shard.sealed_bytes,
        shard.active_synced_bytes,
        shard.active_torn_bytes - shard.active_synced_bytes,
    );
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("open_torn", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                shard.restore_torn().expect("restore the torn active segment");
                let start = Instant::now();
                let log = ShardLog::open(&shard.shard_dir, shard.config.clone()).expect("recover");
                total += start.elapsed();
                let report = log.recovery_report();
                assert!(report.truncated_bytes > 0, "a torn tail must be cut: {report:?}");
                assert_eq!(log.next_seq(), shard.records, "every synced record survives");
            }
            total
        });
    });
    // Repair the shard once (it is torn if `open_torn` was filtered out): from here on every open is clean.
    drop(ShardLog::open(&shard.shard_dir, shard.config.clone()).expect("recover"));
    group.bench_function("open_clean", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let log = ShardLog::open(&shard.shard_dir, shard.config.clone()).expect("reopen");
                total += start.elapsed();
                assert_eq!(log.recovery_report().truncated_bytes, 0, "a recovered shard needs no repair");
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, append, read, recovery);
criterion_main!(benches);
