//! Crash safety of stream create and delete: whatever step a crash
//! interrupts, the next start leaves no half-made stream, deletes nothing
//! but what a delete had committed to, and keeps every other orphaned
//! directory in `lost+found/`. Each interrupted state is built by hand,
//! exactly as a crash between two steps of `Catalog::create` /
//! `Catalog::delete` leaves it.

use std::sync::Arc;

use broker::catalog::{Catalog, CreateStream};
use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::metadata::{MetadataStore, SledStore, StreamMeta, StreamStatus};
use broker::quota::QuotaValues;

fn meta(name: &str, id: u64, status: StreamStatus) -> StreamMeta {
    StreamMeta {
        id,
        name: name.into(),
        shards: broker::layout::initial(2, 0),
        next_shard_index: 2,
        reshard: None,
        scalings_ms: Vec::new(),
        retention_hours: 24,
        quotas: QuotaValues::KINESIS,
        max_record_bytes: 1 << 20,
        status,
        created_at_ms: 0,
    }
}

async fn open(config: &BrokerConfig) -> Arc<Catalog> {
    let config = Arc::new(config.clone());
    tokio::task::spawn_blocking(move || {
        let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&config.data_dir.join("meta")).expect("meta"));
        Arc::new(Catalog::open(config, store, Arc::new(SystemClock)).expect("open catalog"))
    })
    .await
    .expect("join")
}

fn stream_dirs(config: &BrokerConfig) -> Vec<String> {
    dirs(&config.data_dir.join("streams"))
}

fn dirs(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn interrupted_creates_go_to_lost_found_and_interrupted_deletes_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let catalog = open(&config).await;
    let kept = catalog
        .create(CreateStream { name: "kept".into(), shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    let doomed = catalog
        .create(CreateStream { name: "doomed".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    kept.shards()[0].append(vec![("k".into(), "v".into())]).await.expect("append");
    let (kept_id, doomed_id) = (kept.meta().id, doomed.meta().id);
    drop((kept, doomed));
    catalog.close().await.expect("close");
    let store = catalog.store().clone();
    // Crash states: a create that had written its definition and one shard
    // directory; a delete that had marked the stream but removed nothing;
    // a directory whose definition was already removed.
    store.put_stream(&meta("half-made", 900, StreamStatus::Creating)).expect("put");
    std::fs::create_dir_all(dir.path().join("streams/900/shardId-000000000000")).expect("mkdir");
    store.put_stream(&meta("doomed", doomed_id, StreamStatus::Deleting)).expect("put");
    std::fs::create_dir_all(dir.path().join("streams/901/shardId-000000000000")).expect("mkdir");
    std::fs::write(dir.path().join("streams/901/shardId-000000000000/00000000000000000000.log"), b"orphan")
        .expect("write");
    drop(store);
    drop(catalog);

    let catalog = open(&config).await;
    let names: Vec<String> = catalog.all().iter().map(|s| s.meta().name).collect();
    assert_eq!(names, vec!["kept".to_string()]);
    assert_eq!(stream_dirs(&config), vec![kept_id.to_string()], "no orphaned files remain among the streams");
    let found: Vec<String> = dirs(&dir.path().join("lost+found"))
        .into_iter()
        .map(|n| n.split_once('-').expect("<id>-<ms>").0.to_string())
        .collect();
    assert_eq!(found, vec!["900".to_string(), "901".to_string()], "orphans are kept, not deleted");
    assert!(
        dir.path().join("lost+found").read_dir().expect("lost+found").any(|e| e
            .expect("entry")
            .path()
            .join("shardId-000000000000/00000000000000000000.log")
            .exists()),
        "the orphan's log is kept"
    );
    let defs: Vec<String> = catalog.store().streams().expect("defs").into_iter().map(|m| m.name).collect();
    assert_eq!(defs, vec!["kept".to_string()], "no half-made definitions remain");
    let kept = catalog.get("kept").expect("kept");
    assert_eq!(kept.shards()[0].reader().expect("open").next_seq(), 1, "the surviving stream kept its record");
    let again = catalog
        .create(CreateStream { name: "doomed".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("name is free");
    assert!(again.meta().id > 901, "ids are never reused, not even those of lost+found directories");
    catalog.delete("doomed").await.expect("delete");
    assert_eq!(stream_dirs(&config), vec![kept_id.to_string()]);
    catalog.close().await.expect("close");
}
