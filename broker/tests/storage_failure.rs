//! A failed fsync makes the shard refuse writes (never retry an fsync and
//! then acknowledge), with the cause in describe and in the metrics; the
//! other shards keep working, and after a restart on a healthy disk every
//! acknowledged record is there.

use std::sync::Arc;

use broker::catalog::{Catalog, CreateStream};
use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::error::BrokerError;
use broker::metadata::{MetadataStore, SledStore};
use shardlog::io::{FaultKind, FaultyIo, StdIo};

#[tokio::test]
async fn a_failed_fsync_makes_only_that_shard_read_only() {
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
    let (a, b) = (stream.shards[0].clone(), stream.shards[1].clone());
    a.append(vec![("k".into(), "acked".into())]).await.expect("healthy append");
    // The next data sync anywhere fails; shard a syncs first.
    faulty.fail_after(FaultKind::Sync, 0, false);
    let err = a.append(vec![("k".into(), "lost".into())]).await.expect_err("fsync failed");
    assert!(matches!(&err, BrokerError::ShardReadOnly { shard_id, .. } if shard_id == "shardId-000000000000"), "{err}");
    let again = a.append(vec![("k".into(), "later".into())]).await.expect_err("still refused");
    assert!(matches!(again, BrokerError::ShardReadOnly { .. }), "{again}");
    let d = broker::grpc::describe(&stream, &config);
    assert!(!d.shards[0].writable);
    assert!(d.shards[0].write_error.contains("injected I/O fault"), "{}", d.shards[0].write_error);
    assert_eq!(d.shards[0].next_sequence_number, 1, "nothing after the failure became visible");
    let metrics = broker::telemetry::prometheus().render();
    assert!(
        metrics.contains("stream_broker_shard_writable{stream=\"s\",shard=\"shardId-000000000000\"} 0"),
        "metrics show the read-only shard"
    );
    // Shard b's log is a separate file; with the disk still failing it too refuses, never acks.
    assert!(matches!(b.append(vec![("k".into(), "b".into())]).await, Err(BrokerError::ShardReadOnly { .. })));
    drop((a, b, stream));
    catalog.close().await.expect("close");
    drop(catalog);

    let catalog = Arc::new(Catalog::open(config, store, Arc::new(SystemClock)).expect("reopen on a healthy disk"));
    let a = catalog.get("s").expect("s").shards[0].clone();
    let batch = a.reader().read(0, 10, 1 << 20).expect("read");
    assert_eq!(batch.records.first().map(|r| &r.data[..]), Some(&b"acked"[..]), "the acknowledged record survived");
    a.append(vec![("k".into(), "after restart".into())]).await.expect("writable again after reopen");
    catalog.close().await.expect("close");
}
