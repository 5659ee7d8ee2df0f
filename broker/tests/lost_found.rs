//! The broker never deletes record data at start: stream directories without
//! a definition (metadata lost, restored from an older backup, or rolled
//! back) go to `lost+found/`, and stream ids are never reused.

mod common;

use std::path::Path;
use std::sync::Arc;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() }
}

/// Names in `dir`, sorted; none if it does not exist.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("entry").file_name().into_string().expect("utf-8")).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[tokio::test]
async fn losing_the_metadata_moves_streams_to_lost_found_and_ids_stay_fresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let a = create(&mut c, "a", 1).await;
    let b = create(&mut c, "b", 2).await;
    put(&mut c, "a", vec![entry("k", b"precious")]).await;
    broker.stop().await.expect("clean stop");
    let segment = Path::new("shardId-000000000000/00000000000000000000.log");
    let before =
        std::fs::read(dir.path().join("streams").join(a.stream_id.to_string()).join(segment)).expect("a's segment");

    std::fs::remove_dir_all(dir.path().join("meta")).expect("lose the metadata");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let fresh = create(&mut c, "c", 1).await;
    assert!(
        fresh.stream_id > a.stream_id.max(b.stream_id),
        "id {} reuses or precedes an id whose data exists ({} and {})",
        fresh.stream_id,
        a.stream_id,
        b.stream_id
    );
    broker.stop().await.expect("clean stop");

    assert_eq!(names(&dir.path().join("streams")), vec![fresh.stream_id.to_string()]);
    let found = names(&dir.path().join("lost+found"));
    assert_eq!(found.len(), 2, "both orphaned streams are kept: {found:?}");
    let a_dir = found.iter().find(|n| n.starts_with(&format!("{}-", a.stream_id))).expect("a is in lost+found");
    let after = std::fs::read(dir.path().join("lost+found").join(a_dir).join(segment)).expect("a's segment kept");
    assert_eq!(after, before, "not a byte of the orphaned stream was changed");
}

/// Copies a directory tree (the metadata store, while the broker is stopped).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[tokio::test]
async fn an_older_metadata_backup_keeps_newer_streams_and_never_reuses_their_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = tempfile::tempdir().expect("backup dir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let old = create(&mut c, "old", 1).await;
    put(&mut c, "old", vec![entry("k", b"before the backup")]).await;
    broker.stop().await.expect("clean stop");
    copy_dir(&dir.path().join("meta"), backup.path());

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let newer = create(&mut c, "newer", 1).await;
    put(&mut c, "newer", vec![entry("k", b"after the backup")]).await;
    put(&mut c, "old", vec![entry("k", b"also after")]).await;
    broker.stop().await.expect("clean stop");

    std::fs::remove_dir_all(dir.path().join("meta")).expect("lose the metadata");
    copy_dir(backup.path(), &dir.path().join("meta"));
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let names = c.list_streams(proto::v1::ListStreamsRequest::default()).await.expect("list").into_inner();
    assert_eq!(names.stream_names, vec!["old".to_string()], "the backup knows only the old stream");
    let it = iterator(&mut c, "old", "shardId-000000000000", proto::v1::IteratorType::TrimHorizon, None, None).await;
    assert_eq!(drain(&mut c, it, 100).await.len(), 2, "the old stream's files are its own, newer records too");
    let listed = c.list_lost_found(proto::v1::ListLostFoundRequest {}).await.expect("list").into_inner().entries;
    assert_eq!(listed.iter().map(|e| e.stream_id).collect::<Vec<_>>(), vec![newer.stream_id]);
    let fresh = create(&mut c, "fresh", 1).await;
    assert!(fresh.stream_id > newer.stream_id, "{} reuses an id whose data exists", fresh.stream_id);
    assert_ne!(fresh.stream_id, old.stream_id);
    broker.stop().await.expect("clean stop");
}
