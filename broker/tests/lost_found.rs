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
