//! Crash safety of resharding at the catalogue: each interrupted state is
//! built by hand, exactly as a crash between two steps of a split leaves it
//! (see `broker::layout` for the protocol), and the next start must finish
//! the split without losing a record; a sealed shard refuses appends that
//! were routed to it before the split; shard directories the definition
//! does not name are kept in lost+found, and an expired shard's directory
//! left by a crash is removed.

use std::sync::Arc;

use broker::catalog::{Catalog, CreateStream};
use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::error::BrokerError;
use broker::layout;
use broker::metadata::{MetadataStore, Reshard, ReshardTarget, ShardState, SledStore, StreamMeta, StreamStatus};

const HALF: u128 = 1 << 127;

async fn open(config: &BrokerConfig) -> Arc<Catalog> {
    let config = Arc::new(config.clone());
    tokio::task::spawn_blocking(move || {
        let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&config.data_dir.join("meta")).expect("meta"));
        Arc::new(Catalog::open(config, store, Arc::new(SystemClock)).expect("open catalog"))
    })
    .await
    .expect("join")
}

/// A catalogue with stream `s` of one shard holding `records` records.
async fn with_records(config: &BrokerConfig, records: u8) -> Arc<Catalog> {
    let catalog = open(config).await;
    let s =
        catalog.create(CreateStream { name: "s".into(), shard_count: 1, ..Default::default() }).await.expect("create");
    for i in 0..records {
        s.shards()[0].append(vec![("k".into(), vec![i].into())]).await.expect("append");
    }
    catalog
}

async fn close(catalog: Arc<Catalog>) {
    catalog.close().await.expect("close");
}

/// The definition of a split of shard 0 at `HALF` that was recorded (step 1
/// of the protocol) and not finished.
fn interrupted_split(mut meta: StreamMeta) -> StreamMeta {
    let step = layout::plan_split(&meta, 0, HALF, meta.created_at_ms).expect("plan");
    meta.next_shard_index = 3;
    meta.reshard = Some(Reshard { target: ReshardTarget::Split { shard: 0, at: HALF }, step: Some(step) });
    meta.status = StreamStatus::Updating;
    layout::check(&meta).expect("a state the protocol can leave");
    meta
}

fn read_all(catalog: &Catalog, shard: usize) -> Vec<u8> {
    let s = catalog.get("s").expect("s");
    let r = s.shards()[shard].reader().expect("open");
    r.read(r.first_seq(), 1000, 1 << 20).expect("read").records.iter().map(|r| r.data[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_queued_to_a_shard_that_a_split_sealed_is_refused_as_shard_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let catalog = with_records(&config, 3).await;
    // Routed before the split: the handle of the parent.
    let parent = catalog.get("s").expect("s").shards()[0].clone();
    catalog.split_shard("s", "shardId-000000000000", &HALF.to_string()).await.expect("split");
    match parent.append(vec![("k".into(), "late".into())]).await {
        Err(BrokerError::ShardClosed { shard_id, .. }) => assert_eq!(shard_id, "shardId-000000000000"),
        other => panic!("an append after the seal: {other:?}"),
    }
    let meta = catalog.get("s").expect("s").meta();
    assert_eq!(
        layout::find(&meta, 0).map(|s| s.state).map(|s| matches!(s, ShardState::Closed { ending_seq: 3, .. })),
        Some(true),
        "{meta:?}"
    );
    assert_eq!(parent.stats().expect("open").next_seq, 3, "nothing was appended after the close");
    close(catalog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_interrupted_before_its_children_existed_is_finished_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let catalog = with_records(&config, 4).await;
    let store = catalog.store().clone();
    let meta = catalog.get("s").expect("s").meta();
    close(catalog).await;
    store.put_stream(&interrupted_split(meta)).expect("put");
    drop(store);

    let catalog = open(&config).await;
    let s = catalog.get("s").expect("s");
    let meta = s.meta();
    assert_eq!(meta.status, StreamStatus::Active);
    assert_eq!(meta.reshard, None);
    layout::check(&meta).expect("consistent");
    assert!(matches!(layout::find(&meta, 0).expect("parent").state, ShardState::Closed { ending_seq: 4, .. }));
    assert_eq!(layout::open_shards(&meta).iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(read_all(&catalog, 0), [0, 1, 2, 3], "the parent keeps its records");
    assert_eq!(s.layout().route(0).id, "shardId-000000000001");
    assert_eq!(s.layout().route(HALF).id, "shardId-000000000002");
    let stored = catalog.store().streams().expect("defs");
    assert_eq!(stored[0], meta, "the finished split is durable");
    close(catalog).await;
}

/// A crash after the swap: the children had taken (and acknowledged)
/// records before the closing write. The start keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_interrupted_after_its_children_took_records_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let catalog = with_records(&config, 2).await;
    let store = catalog.store().clone();
    let meta = catalog.get("s").expect("s").meta();
    close(catalog).await;
    let id = meta.id;
    store.put_stream(&interrupted_split(meta)).expect("put");
    drop(store);
    for (child, n) in [("shardId-000000000001", 3u8), ("shardId-000000000002", 1)] {
        let mut log =
            shardlog::ShardLog::open(dir.path().join(format!("streams/{id}/{child}")), config.shardlog_config(1 << 20))
                .expect("child log");
        for i in 0..n {
            log.append(1, &[shardlog::RecordRef { partition_key: b"k", data: &[100 + i] }]).expect("append");
        }
        log.sync().expect("sync");
    }

    let catalog = open(&config).await;
    let meta = catalog.get("s").expect("s").meta();
    assert_eq!((meta.status, meta.reshard.is_none()), (StreamStatus::Active, true));
    assert!(matches!(layout::find(&meta, 0).expect("parent").state, ShardState::Closed { ending_seq: 2, .. }));
    assert_eq!(read_all(&catalog, 0), [0, 1]);
    assert_eq!(read_all(&catalog, 1), [100, 101, 102], "the first child's acknowledged records are kept");
    assert_eq!(read_all(&catalog, 2), [100]);
    close(catalog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_shard_directories_go_to_lost_found_and_expired_ones_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let catalog = with_records(&config, 1).await;
    catalog.split_shard("s", "shardId-000000000000", &HALF.to_string()).await.expect("split");
    let store = catalog.store().clone();
    let mut meta = catalog.get("s").expect("s").meta();
    close(catalog).await;
    // Retention expired the parent, and a crash came before its directory went.
    layout::expire(&mut meta, 0);
    store.put_stream(&meta).expect("put");
    drop(store);
    let stream_dir = dir.path().join(format!("streams/{}", meta.id));
    assert!(stream_dir.join("shardId-000000000000").exists());
    // A directory no definition names (a rolled-back metadata store, say).
    std::fs::create_dir_all(stream_dir.join("shardId-000000000007")).expect("mkdir");
    std::fs::write(stream_dir.join("shardId-000000000007/00000000000000000000.log"), b"keep me").expect("write");

    let catalog = open(&config).await;
    assert!(!stream_dir.join("shardId-000000000000").exists(), "the expired shard's directory is removed");
    assert!(!stream_dir.join("shardId-000000000007").exists());
    let kept = catalog.lost_found().expect("lost+found");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0].stream_id, kept[0].shards.clone()), (meta.id, vec!["shardId-000000000007".to_string()]));
    let s = catalog.get("s").expect("s");
    assert_eq!(
        s.shards().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["shardId-000000000001", "shardId-000000000002"]
    );
    assert_eq!(s.layout().tree().len(), 3, "the expired parent stays in the tree while its children name it");
    close(catalog).await;
}
