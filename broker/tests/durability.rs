//! The `interval` and `never` durability modes, observed through a shard-log
//! I/O wrapper that counts `fdatasync` calls (`IoFile::sync_data`):
//!
//! - `interval`: while producers keep the shard queue full, the writer still
//!   fsyncs once per interval of the injected clock (the check runs at every
//!   commit, it is not a message that a full queue can refuse), and an idle
//!   writer with unsynced records fsyncs within an interval too.
//! - `never`: acknowledgements come without any fsync; closing syncs.
//! - Both keep every acknowledged record across a clean restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use broker::catalog::{Catalog, CreateStream};
use broker::clock::{Clock, ManualClock};
use broker::config::{BrokerConfig, DurabilityMode};
use broker::metadata::{MetadataStore, SledStore};
use bytes::Bytes;
use common::hooked_io::{Hook, HookedIo};

const T0: u64 = 1_800_000_000_000;

/// Counts every `sync_data` of a shard-log file.
#[derive(Debug, Default)]
struct Syncs(AtomicU64);

impl Hook for Syncs {
    fn before_sync(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type CountingIo = HookedIo<Syncs>;

fn sync_count(io: &CountingIo) -> u64 {
    io.0.0.load(Ordering::SeqCst)
}

fn config(dir: &Path, mode: DurabilityMode, interval_ms: u64) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    c.durability.mode = mode;
    c.durability.interval_ms = interval_ms;
    c.quotas.enforce = false;
    c
}

fn open(config: &BrokerConfig, clock: Arc<dyn Clock>, io: &CountingIo) -> Arc<Catalog> {
    let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&config.data_dir.join("meta")).expect("meta"));
    Arc::new(Catalog::open_with_io(Arc::new(config.clone()), store, clock, Arc::new(io.clone())).expect("open"))
}

/// Waits (bounded) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_mode_fsyncs_every_interval_while_the_shard_queue_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The ticker's real-time period (a minute) never elapses during the
    // test: every fsync seen here comes from the writer's own check of the
    // injected clock at commit time.
    let mut config = config(dir.path(), DurabilityMode::Interval, 60_000);
    config.limits.shard_queue_depth = 1;
    config.limits.group_commit_max_requests = 1;
    let clock = Arc::new(ManualClock::new(T0));
    let io = CountingIo::default();
    let catalog = open(&config, clock.clone(), &io);
    let stream =
        catalog.create(CreateStream { name: "s".into(), shard_count: 1, ..Default::default() }).await.expect("create");
    let shard = stream.shards()[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..8 {
        let (shard, stop, acked) = (shard.clone(), stop.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                shard.append(vec![(Bytes::from(format!("p{p}")), Bytes::from_static(b"x"))]).await.expect("append");
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Eight producers on a queue of depth one: the queue stays full.
    wait_for("the producers to get going", || acked.load(Ordering::SeqCst) >= 100).await;
    for interval in 0..20 {
        let syncs = sync_count(&io);
        clock.advance(60_000);
        // A commit may have read the clock just before the advance; the one
        // after it began later and must have fsynced before publishing.
        let end = shard.reader().expect("open shard").next_seq();
        wait_for("two more commits", || shard.reader().expect("open shard").next_seq() >= end + 2).await;
        assert!(
            sync_count(&io) > syncs,
            "interval {interval}: no fsync in a whole interval while the queue was full ({} fsyncs so far)",
            sync_count(&io)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.expect("producer");
    }
    drop(shard);
    drop(stream);
    catalog.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_mode_fsyncs_an_idle_shard_within_an_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), DurabilityMode::Interval, 50);
    let clock = Arc::new(ManualClock::new(T0));
    let io = CountingIo::default();
    let catalog = open(&config, clock.clone(), &io);
    let stream =
        catalog.create(CreateStream { name: "s".into(), shard_count: 1, ..Default::default() }).await.expect("create");
    let shard = stream.shards()[0].clone();
    let syncs = sync_count(&io);
    shard.append(vec![("k".into(), "unsynced".into())]).await.expect("append");
    // Nothing else is written; the acknowledged record is fsynced once an interval passes.
    clock.advance(50);
    wait_for("the idle writer to fsync", || sync_count(&io) > syncs).await;
    drop((shard, stream));
    catalog.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_mode_acknowledges_without_fsync_and_syncs_at_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), DurabilityMode::Never, 50);
    let clock = Arc::new(ManualClock::new(T0));
    let io = CountingIo::default();
    let catalog = open(&config, clock.clone(), &io);
    let stream =
        catalog.create(CreateStream { name: "s".into(), shard_count: 1, ..Default::default() }).await.expect("create");
    let shard = stream.shards()[0].clone();
    let syncs = sync_count(&io);
    for i in 0..200u64 {
        shard.append(vec![("k".into(), Bytes::from(format!("r{i}")))]).await.expect("append");
        clock.advance(1_000);
    }
    assert_eq!(sync_count(&io), syncs, "never mode acknowledged with an fsync");
    drop((shard, stream));
    catalog.close().await.expect("close");
    assert!(sync_count(&io) > syncs, "closing a never-mode shard syncs it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_never_modes_keep_every_acknowledged_record_across_a_clean_restart() {
    for mode in [DurabilityMode::Interval, DurabilityMode::Never] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), mode, 60_000);
        let clock = Arc::new(ManualClock::new(T0));
        let io = CountingIo::default();
        let catalog = open(&config, clock.clone(), &io);
        let stream = catalog
            .create(CreateStream { name: "s".into(), shard_count: 2, ..Default::default() })
            .await
            .expect("create");
        let mut acked = Vec::new();
        for i in 0..300u64 {
            let shard = &stream.shards()[(i % 2) as usize];
            let a = shard.append(vec![("k".into(), Bytes::from(format!("r{i}")))]).await.expect("append");
            acked.push((i % 2, a.first_seq, format!("r{i}")));
        }
        drop(stream);
        catalog.close().await.expect("close");
        drop(catalog);

        let catalog = open(&config, clock.clone(), &io);
        let stream = catalog.get("s").expect("s");
        for (shard, seq, data) in &acked {
            let batch =
                stream.shards()[*shard as usize].reader().expect("open shard").read(*seq, 1, 1 << 20).expect("read");
            assert_eq!(
                batch.records.first().map(|r| (r.seq, &r.data[..])),
                Some((*seq, data.as_bytes())),
                "{mode:?}: acknowledged record {data} at {shard}/{seq}"
            );
        }
        drop(stream);
        catalog.close().await.expect("close");
    }
}
