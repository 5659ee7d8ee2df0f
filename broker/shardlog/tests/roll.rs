//! A segment roll does not stall appends: the sealed segment's `fdatasync`
//! and its index files happen off the append path, and `sync` still makes
//! everything durable in log order.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use shardlog::io::{Io, IoFile, OpenMode, SimIo};
use shardlog::{Config, RecordRef, ShardLog};

/// Records which thread made each sync call.
#[derive(Debug, Clone, Default)]
struct Syncs(Arc<Mutex<Vec<(ThreadId, &'static str)>>>);

impl Syncs {
    fn note(&self, what: &'static str) {
        self.0.lock().expect("syncs").push((std::thread::current().id(), what));
    }

    fn on(&self, thread: ThreadId) -> Vec<&'static str> {
        self.0.lock().expect("syncs").iter().filter(|(t, _)| *t == thread).map(|(_, w)| *w).collect()
    }

    fn clear(&self) {
        self.0.lock().expect("syncs").clear();
    }
}

#[derive(Debug)]
struct CountingIo {
    inner: SimIo,
    syncs: Syncs,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn IoFile>,
    syncs: Syncs,
}

impl Io for CountingIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(CountingFile { inner: self.inner.open(path, mode)?, syncs: self.syncs.clone() }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.syncs.note("sync_dir");
        self.inner.sync_dir(dir)
    }
}

impl IoFile for CountingFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.note("sync_data");
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

fn config() -> Config {
    Config { segment_bytes_max: 64 * 1024, write_buffer_bytes: 4096, ..Config::default() }
}

#[test]
fn an_append_that_rolls_a_segment_makes_no_sync_call() {
    let sim = SimIo::new();
    let syncs = Syncs::default();
    let io = Arc::new(CountingIo { inner: sim.clone(), syncs: syncs.clone() });
    let mut log = ShardLog::open_with_io("/shard", config(), io).expect("open");
    let data = vec![7u8; 1000];
    let me = std::thread::current().id();
    let mut rolls = 0;
    let mut segments = log.segments();
    for _ in 0..400 {
        syncs.clear();
        log.append(1, &[RecordRef { partition_key: b"k", data: &data }]).expect("append");
        if log.segments() != segments {
            segments = log.segments();
            rolls += 1;
            assert_eq!(syncs.on(me), Vec::<&str>::new(), "roll {rolls}: the appending thread synced");
        }
    }
    assert!(rolls >= 5, "64 KiB segments roll every ~64 records; saw {rolls}");
    log.sync().expect("sync");
    let next = log.next_seq();
    drop(log);
    // Everything `sync` covered is durable, across all the rolled segments.
    sim.crash(None);
    let log = ShardLog::open_with_io("/shard", config(), Arc::new(sim)).expect("reopen");
    assert_eq!(log.next_seq(), next);
    assert!(log.recovery_report().damage.is_empty(), "{:?}", log.recovery_report());
}

/// Rolled segments whose seal has not run are after the last durable point:
/// a power loss may tear them anywhere (any subset of their pages), and
/// recovery cuts at the first torn byte and removes every later segment,
/// never reporting damage and never losing what `sync` returned for.
#[test]
fn power_loss_before_a_seal_cuts_the_torn_sealed_segment_and_everything_after() {
    let mut cut_sealed = 0;
    for seed in 0..200u64 {
        let sim = SimIo::new();
        let config = Config { background_seal: false, ..config() };
        let mut log = ShardLog::open_with_io("/shard", config.clone(), Arc::new(sim.clone())).expect("open");
        let data: Vec<u8> = (0..1000).map(|i| (i * 7 + seed as usize) as u8).collect();
        let append = |log: &mut ShardLog, n: usize| {
            for _ in 0..n {
                log.append(1, &[RecordRef { partition_key: b"k", data: &data }]).expect("append");
            }
        };
        append(&mut log, 30 + (seed as usize % 50));
        log.sync().expect("sync");
        let durable = log.durable_next_seq();
        // Seven more segments' worth, never synced: their seals wait for a
        // `sync`, except that the oldest are sealed once four wait, and that
        // seal's directory `fsync` makes the newer (unsynced) files' entries durable.
        append(&mut log, 450);
        let written = log.next_seq();
        assert!(log.segments() >= 7, "rolled without syncing");
        drop(log);
        sim.crash(Some(seed));
        let log = ShardLog::open_with_io("/shard", config.clone(), Arc::new(sim.clone())).expect("reopen");
        let report = log.recovery_report().clone();
        assert!(
            report.damage.is_empty() && report.read_only.is_none(),
            "seed {seed}: power loss is not damage: {report:?}"
        );
        let next = log.next_seq();
        assert!((durable..=written).contains(&next), "seed {seed}: recovered {next} outside {durable}..={written}");
        let got = log.read(0, 100_000, usize::MAX).expect("read all");
        assert_eq!(got.records.len() as u64, next.min(got.next_seq), "seed {seed}");
        for r in &got.records {
            let want: Vec<u8> = (0..1000).map(|i| (i * 7 + seed as usize) as u8).collect();
            assert_eq!(&r.data[..], &want[..], "seed {seed}: seq {}", r.seq);
        }
        log.verify().expect("no damage after recovery");
        if !report.removed_segments.is_empty() {
            cut_sealed += 1;
        }
        drop(log);
        let again = ShardLog::open_with_io("/shard", config, Arc::new(sim)).expect("third open");
        assert!(
            again.recovery_report().is_clean(),
            "seed {seed}: recovery is idempotent: {:?}",
            again.recovery_report()
        );
        assert_eq!(again.next_seq(), next);
    }
    assert!(cut_sealed > 10, "some crashes must tear a sealed segment and drop its successors: {cut_sealed}");
}
