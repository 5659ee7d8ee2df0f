//! Storage failures that fail one shard, and their repair:
//! - a failed fsync (EIO) makes the shard refuse writes (never retry an
//!   fsync and then acknowledge), with the cause in describe and in the
//!   metrics; it stays failed when the disk recovers (the page cache cannot
//!   be trusted), until an operator repairs it, and every acknowledged
//!   record is there afterwards;
//! - a writer that panics fails its shard visibly instead of leaving it
//!   "writable" but dead; a repair brings it back;
//! - a slow fsync holds one writer thread, not every one: requests queued
//!   behind it wait for it without taking more threads, so the other
//!   shards keep committing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

mod common;

use broker::catalog::{Catalog, CreateStream, Stream};
use broker::clock::SystemClock;
use broker::config::{BrokerConfig, StorageConfig};
use broker::error::BrokerError;
use broker::metadata::{MetadataStore, SledStore};
use broker::shard::{FailureKind, RepairAction};
use common::hooked_io::{Hook, HookedIo};
use shardlog::io::{FaultKind, FaultyIo, Io, StdIo};

#[tokio::test]
async fn a_failed_fsync_fails_only_that_shard_until_it_is_repaired() {
    // As `server::run` does first: metrics registered before a recorder exists are dropped.
    broker::telemetry::prometheus();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() });
    let faulty = FaultyIo::new(Arc::new(StdIo));
    let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&dir.path().join("meta")).expect("meta"));
    let catalog = Arc::new(
        Catalog::open_with_io(config.clone(), store.clone(), Arc::new(SystemClock), Arc::new(faulty.clone()))
            .expect("open"),
    );
    let stream =
        catalog.create(CreateStream { name: "s".into(), shard_count: 2, ..Default::default() }).await.expect("create");
    let (a, b) = (stream.shards()[0].clone(), stream.shards()[1].clone());
    a.append(vec![("k".into(), "acked".into())]).await.expect("healthy append");
    // The next data sync anywhere fails; shard a syncs first.
    faulty.fail_after(FaultKind::Sync, 0, false);
    let err = a.append(vec![("k".into(), "lost".into())]).await.expect_err("fsync failed");
    assert!(
        matches!(&err, BrokerError::ShardFailed { shard_id, kind: "Io", .. } if shard_id == "shardId-000000000000"),
        "{err}"
    );
    let again = a.append(vec![("k".into(), "later".into())]).await.expect_err("still refused");
    assert!(matches!(again, BrokerError::ShardFailed { .. }), "{again}");
    let d = broker::grpc::describe(&stream, &config);
    assert!(!d.shards[0].writable);
    assert_eq!(d.shards[0].shard_status, proto::v1::ShardStatus::ReadOnly as i32);
    assert_eq!(d.shards[0].failure_kind, "Io");
    assert!(d.shards[0].failure.contains("injected I/O fault"), "{}", d.shards[0].failure);
    assert!(
        !d.shards[0].failure.contains(&dir.path().display().to_string()),
        "no directories: {}",
        d.shards[0].failure
    );
    assert_eq!(d.shards[0].next_sequence_number, 1, "nothing after the failure became visible");
    let metrics = broker::telemetry::prometheus().render();
    assert!(
        metrics.contains("stream_broker_shard_writable{stream=\"s\",shard=\"shardId-000000000000\"} 0"),
        "metrics show the read-only shard"
    );
    assert!(metrics.contains("stream_broker_shard_failed{stream=\"s\",shard=\"shardId-000000000000\"} 1"));
    // Shard b's log is a separate file; with the disk still failing it too refuses, never acks.
    assert!(matches!(b.append(vec![("k".into(), "b".into())]).await, Err(BrokerError::ShardFailed { .. })));

    // The disk works again; the shard does not trust it by itself.
    faulty.fail_after(FaultKind::Sync, u64::MAX, false);
    assert_eq!(catalog.heal_disk_full(u64::MAX).await, 0, "an fsync failure does not heal by itself");
    assert!(matches!(a.append(vec![("k".into(), "x".into())]).await, Err(BrokerError::ShardFailed { .. })));
    let (_, dry) = catalog.repair("s", "shardId-000000000000", false).await.expect("dry run");
    assert_eq!(dry.plan.action, RepairAction::Reopen);
    assert!(!dry.applied);
    assert_eq!(dry.failure.map(|f| f.kind), Some(FailureKind::Io), "a dry run changes nothing");
    let (_, done) = catalog.repair("s", "shardId-000000000000", true).await.expect("repair");
    assert!(done.applied);
    assert_eq!(done.failure, None, "{:?}", done.failure);
    a.append(vec![("k".into(), "after repair".into())]).await.expect("writable after repair");
    let batch = a.reader().expect("open").read(0, 10, 1 << 20).expect("read");
    let data: Vec<&[u8]> = batch.records.iter().map(|r| &r.data[..]).collect();
    // As after a crash, the unacknowledged record may or may not have reached the disk.
    assert!(
        data == [&b"acked"[..], &b"after repair"[..]] || data == [&b"acked"[..], &b"lost"[..], &b"after repair"[..]],
        "{data:?}"
    );
    drop((a, b, stream));
    catalog.close().await.expect("close");
    drop(catalog);

    let catalog = Arc::new(Catalog::open(config, store, Arc::new(SystemClock)).expect("reopen on a healthy disk"));
    let a = catalog.get("s").expect("s").shards()[0].clone();
    let batch = a.reader().expect("open").read(0, 10, 1 << 20).expect("read");
    assert_eq!(batch.records.first().map(|r| &r.data[..]), Some(&b"acked"[..]), "the acknowledged record survived");
    a.append(vec![("k".into(), "after restart".into())]).await.expect("writable after reopen");
    catalog.close().await.expect("close");
}

/// A catalog on `io` (metadata in `config.data_dir`/meta) with stream `s` of two shards.
async fn open_with_two_shards(config: &Arc<BrokerConfig>, io: Arc<dyn Io>) -> (Arc<Catalog>, Arc<Stream>) {
    let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&config.data_dir.join("meta")).expect("meta"));
    let catalog = Arc::new(Catalog::open_with_io(config.clone(), store, Arc::new(SystemClock), io).expect("open"));
    let stream =
        catalog.create(CreateStream { name: "s".into(), shard_count: 2, ..Default::default() }).await.expect("create");
    (catalog, stream)
}

/// Real files, but a write panics once armed.
#[derive(Debug, Default)]
struct Panicky {
    armed: AtomicBool,
}

impl Hook for Panicky {
    fn before_write(&self) {
        assert!(!self.armed.swap(false, Ordering::SeqCst), "injected panic in the shard writer");
    }
}

#[tokio::test]
async fn a_panicking_writer_fails_its_shard_visibly_and_a_repair_brings_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() });
    let io = HookedIo::<Panicky>::default();
    let hook = io.0.clone();
    let (catalog, stream) = open_with_two_shards(&config, Arc::new(io)).await;
    let (a, b) = (stream.shards()[0].clone(), stream.shards()[1].clone());
    a.append(vec![("k".into(), "acked".into())]).await.expect("healthy append");
    hook.armed.store(true, Ordering::SeqCst);
    a.append(vec![("k".into(), "boom".into())]).await.expect_err("the writer panicked");
    let err = a.append(vec![("k".into(), "after".into())]).await.expect_err("refused");
    assert!(matches!(&err, BrokerError::ShardFailed { kind: "Panicked", .. }), "{err}");
    let d = broker::grpc::describe(&stream, &config);
    assert!(!d.shards[0].writable, "a dead writer is not reported writable");
    assert_eq!(d.shards[0].failure_kind, "Panicked");
    assert_eq!(catalog.failed_shards().len(), 1);
    b.append(vec![("k".into(), "other shard".into())]).await.expect("the other shard serves");
    assert_eq!(a.reader().expect("reads are served").next_seq(), 1);

    let (_, done) = catalog.repair("s", "shardId-000000000000", true).await.expect("repair");
    assert!(done.applied && done.failure.is_none(), "{done:?}");
    let next = a.append(vec![("k".into(), "after repair".into())]).await.expect("writable after repair");
    assert_eq!(next.first_seq, 1);
    catalog.close().await.expect("close");
}

/// Real files, but once armed the next data sync waits until released.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    /// Whether a sync is being held, and whether it may go on.
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn wait_until(&self, done: impl Fn(&(bool, bool)) -> bool) {
        let mut s = self.state.lock().expect("gate");
        while !done(&s) {
            s = self.changed.wait(s).expect("gate");
        }
    }

    fn set(&self, f: impl FnOnce(&mut (bool, bool))) {
        f(&mut self.state.lock().expect("gate"));
        self.changed.notify_all();
    }
}

impl Hook for Gate {
    fn before_sync(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.set(|s| s.0 = true);
            self.wait_until(|s| s.1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fsync_holds_one_writer_thread_and_the_other_shards_keep_committing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = StorageConfig { writer_threads: 2, ..StorageConfig::default() };
    let config = Arc::new(BrokerConfig { data_dir: dir.path().to_path_buf(), storage, ..BrokerConfig::default() });
    let io = HookedIo::<Gate>::default();
    let gate = io.0.clone();
    let (catalog, stream) = open_with_two_shards(&config, Arc::new(io)).await;
    let (a, b) = (stream.shards()[0].clone(), stream.shards()[1].clone());
    a.append(vec![("k".into(), "a0".into())]).await.expect("healthy append");
    b.append(vec![("k".into(), "b0".into())]).await.expect("healthy append");

    // Shard a's next fsync hangs (a slow disk); requests pile up behind it.
    gate.armed.store(true, Ordering::SeqCst);
    let held = tokio::spawn({
        let a = a.clone();
        async move { a.append(vec![("k".into(), "a1".into())]).await }
    });
    let g = gate.clone();
    tokio::task::spawn_blocking(move || g.wait_until(|s| s.0)).await.expect("the sync is held");
    let mut queued = Vec::new();
    for i in 2..6 {
        let ack = a.submit(vec![("k".into(), format!("a{i}").into())]).await.expect("queued behind the held sync");
        queued.push(ack);
    }
    // Two writer threads: one holds shard a's sync; shard b needs the other.
    let other = tokio::time::timeout(Duration::from_secs(10), b.append(vec![("k".into(), "b1".into())])).await;
    gate.set(|s| s.1 = true);
    let other = other.expect("shard b committed while shard a's fsync was held").expect("append");
    assert_eq!(other.first_seq, 1);

    assert_eq!(held.await.expect("task").expect("a1 acknowledged").first_seq, 1);
    for (i, ack) in queued.into_iter().enumerate() {
        let appended = ack.await.expect("answered").expect("acknowledged");
        assert_eq!(appended.first_seq, i as u64 + 2, "in queue order");
    }
    catalog.close().await.expect("close");
}
