//! Bounds on the I/O a read or a recovery does, measured through a counting
//! `Io` wrapper (bytes, not wall time, so the tests hold on a loaded machine).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shardlog::io::{Io, IoFile, OpenMode, SimIo, StdIo};
use shardlog::{Config, RecordRef, ShardLog};

/// Counts the bytes read through it, the reads, and the largest single read.
#[derive(Debug, Clone)]
struct CountingIo {
    inner: Arc<dyn Io>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    bytes: AtomicU64,
    reads: AtomicU64,
    largest: AtomicU64,
}

impl Counts {
    fn reset(&self) {
        self.bytes.store(0, Ordering::SeqCst);
        self.reads.store(0, Ordering::SeqCst);
        self.largest.store(0, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn IoFile>,
    counts: Arc<Counts>,
}

impl Io for CountingIo {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(CountingFile { inner: self.inner.open(path, mode)?, counts: self.counts.clone() }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl IoFile for CountingFile {
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        self.counts.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.counts.reads.fetch_add(1, Ordering::SeqCst);
        self.counts.largest.fetch_max(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_at(buf, pos)
    }
    fn read_vec_at_cached(&self, len: usize, pos: u64) -> std::io::Result<Option<Vec<u8>>> {
        self.counts.bytes.fetch_add(len as u64, Ordering::SeqCst);
        self.counts.reads.fetch_add(1, Ordering::SeqCst);
        self.counts.largest.fetch_max(len as u64, Ordering::SeqCst);
        self.inner.read_vec_at_cached(len, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

fn counting(sim: &SimIo) -> (Arc<dyn Io>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    (Arc::new(CountingIo { inner: Arc::new(sim.clone()), counts: counts.clone() }), counts)
}

#[test]
fn reading_one_record_reads_tens_of_kib_not_max_bytes() {
    let sim = SimIo::new();
    let (io, counts) = counting(&sim);
    let config = Config { segment_bytes_max: 256 << 20, ..Config::default() };
    let mut log = ShardLog::open_with_io("/shard", config, io).expect("open");
    let data = vec![7u8; 1024];
    for i in 0..20_000u64 {
        log.append(1_000 + i, &[RecordRef { partition_key: b"k", data: &data }]).expect("append");
    }
    log.sync().expect("sync");
    for from in [0u64, 777, 10_000, 19_999] {
        counts.reset();
        let got = log.read(from, 1, 10 << 20).expect("read");
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.records[0].seq, from);
        let read = counts.bytes.load(Ordering::SeqCst);
        assert!(read <= 64 * 1024, "read({from}, 1, 10 MiB) read {read} bytes");
    }
    counts.reset();
    let got = log.read(0, 5_000, 10 << 20).expect("a large read still works");
    assert_eq!(got.records.len(), 5_000);
    let read = counts.bytes.load(Ordering::SeqCst);
    assert!(read < 2 * 5_000 * 1100, "a large read reads about what it returns, got {read}");
}

#[test]
fn a_reader_at_the_tail_gets_every_new_batch_with_one_read() {
    let sim = SimIo::new();
    let (io, counts) = counting(&sim);
    let mut log = ShardLog::open_with_io("/shard", Config::default(), io).expect("open");
    let data = vec![3u8; 1024];
    let batch: Vec<RecordRef<'_>> = (0..60).map(|_| RecordRef { partition_key: b"k", data: &data }).collect();
    log.append(1_000, &batch).expect("append");
    log.sync().expect("sync");
    let from = log.next_seq();
    // What a group commit of several producers' requests leaves: a few
    // batches of about 60 KiB each, larger than a small first read.
    for t in 0..4 {
        log.append(1_001 + t, &batch).expect("append");
    }
    log.sync().expect("sync");
    counts.reset();
    let got = log.read(from, 10_000, 10 << 20).expect("read");
    assert_eq!(got.records.len(), 240);
    assert_eq!(got.next_seq, from + 240);
    let reads = counts.reads.load(Ordering::SeqCst);
    let bytes = counts.bytes.load(Ordering::SeqCst);
    assert_eq!(reads, 1, "the tail read took {reads} reads ({bytes} bytes) for 4 batches");
    assert!(bytes < 4 * 62 * 1024, "the tail read read {bytes} bytes for 4 batches of 60 KiB");
}

#[test]
fn a_cached_read_far_behind_declines_before_reading_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counts = Arc::new(Counts::default());
    let io: Arc<dyn Io> = Arc::new(CountingIo { inner: Arc::new(StdIo), counts: counts.clone() });
    let mut log = ShardLog::open_with_io(dir.path(), Config::default(), io).expect("open");
    let data = vec![1u8; 1024];
    let batch: Vec<RecordRef<'_>> = (0..100).map(|_| RecordRef { partition_key: b"k", data: &data }).collect();
    for t in 0..40 {
        log.append(1_000 + t, &batch).expect("append");
    }
    log.sync().expect("sync");
    let reader = log.reader();
    counts.reset();
    // 4 MiB visible after the start and 10 MiB allowed: not a read for an
    // async thread. (1,500 records wanted: a blocking read would start small
    // and double its reads, so a late refusal would come after 2 MiB.)
    assert!(reader.read_cached(0, 1_500, 10 << 20).expect("cached read").is_none());
    assert_eq!(counts.reads.load(Ordering::SeqCst), 0, "declined only after reading");
    // Near the end it reads, once.
    let got = reader.read_cached(3_900, 10_000, 10 << 20).expect("cached read").expect("just written: cached");
    assert_eq!(got.records.len(), 100);
    assert_eq!(counts.reads.load(Ordering::SeqCst), 1);
}

#[test]
fn a_64_mib_random_tail_is_searched_in_bounded_streaming_reads() {
    let sim = SimIo::new();
    {
        let mut log = ShardLog::open_with_io("/shard", Config::default(), Arc::new(sim.clone())).expect("open");
        for i in 0..10u64 {
            log.append(1_000 + i, &[RecordRef { partition_key: b"k", data: &[i as u8; 500] }]).expect("append");
        }
        log.close().expect("close");
    }
    let path = Path::new("/shard/00000000000000000000.log");
    let valid_len = sim.read_file(path).expect("segment").len() as u64;
    let tail_len = 64u64 << 20;
    let file = sim.open(path, OpenMode::Existing).expect("open segment");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for i in 0..tail_len >> 20 {
        // Vary each MiB so the tail has no period a search could exploit.
        let mut c = chunk.clone();
        let at = (i as usize * 7919) % c.len();
        c[at] ^= 0x5a;
        file.write_all_at(&c, valid_len + (i << 20)).expect("write tail");
    }
    file.sync_data().expect("sync");
    let (io, counts) = counting(&sim);
    let log = ShardLog::open_with_io("/shard", Config::default(), io).expect("a random tail never refuses");
    assert_eq!(log.next_seq(), 10);
    assert_eq!(log.recovery_report().truncated_bytes, tail_len);
    let read = counts.bytes.load(Ordering::SeqCst);
    let largest = counts.largest.load(Ordering::SeqCst);
    assert!(read <= 3 * tail_len, "recovery read {read} bytes for a {tail_len}-byte tail");
    assert!(largest <= 4 << 20, "recovery read {largest} bytes at once: not streamed");
}
