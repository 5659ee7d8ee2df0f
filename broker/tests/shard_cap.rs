//! The broker-wide shard cap (`limits.max_shards_total`): a create that
//! would take the broker past it is refused with an error naming the key,
//! opens nothing, and room comes back when a stream is deleted.

use std::sync::Arc;

use broker::catalog::{Catalog, CreateStream};
use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::error::BrokerError;
use broker::metadata::{MetadataStore, SledStore};

async fn open(config: BrokerConfig) -> Arc<Catalog> {
    let config = Arc::new(config);
    tokio::task::spawn_blocking(move || {
        let store: Arc<dyn MetadataStore> = Arc::new(SledStore::open(&config.data_dir.join("meta")).expect("meta"));
        Arc::new(Catalog::open(config, store, Arc::new(SystemClock)).expect("open catalog"))
    })
    .await
    .expect("join")
}

fn create(name: &str, shard_count: u32) -> CreateStream {
    CreateStream { name: name.into(), shard_count, ..CreateStream::default() }
}

#[tokio::test]
async fn a_create_past_the_broker_wide_shard_cap_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let env = [("STREAM_BROKER_LIMITS__MAX_SHARDS_TOTAL".to_string(), "10".to_string())];
    let mut config = BrokerConfig::load(None, env).expect("the key exists");
    config.data_dir = dir.path().to_path_buf();
    assert_eq!(config.limits.max_shards_total, 10);
    let catalog = open(config).await;
    catalog.create(create("a", 6)).await.expect("6 of 10");
    catalog.create(create("b", 4)).await.expect("10 of 10");
    match catalog.create(create("c", 1)).await {
        Err(BrokerError::LimitExceeded(why)) => {
            assert!(why.contains("limits.max_shards_total = 10"), "{why}");
            assert!(why.contains("10 shards"), "says how many are open: {why}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert!(catalog.get("c").is_err(), "nothing of the refused stream exists");
    catalog.delete("b").await.expect("delete");
    catalog.create(create("c", 4)).await.expect("room again after a delete");
    catalog.close().await.expect("close");
}

#[test]
fn the_shard_cap_must_be_positive() {
    let env = [("STREAM_BROKER_LIMITS__MAX_SHARDS_TOTAL".to_string(), "0".to_string())];
    let err = BrokerConfig::load(None, env).expect_err("0 shards is no broker");
    assert!(err.to_string().contains("limits.max_shards_total"), "{err}");
}
