//! The outbox relay against a broker that throttles it: every entry reaches
//! its stream once, and each order's events arrive in the order they were
//! written.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use order_service::model::{CreateOrder, DeliverOrder, FulfillOrder};
use order_service::store::{Store, Streams};
use tokio_util::sync::CancellationToken;

const ORDERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_relay_publishes_each_entry_once_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("http://{}", grpc.local_addr().expect("addr"));
    let token = CancellationToken::new();
    let broker_config =
        broker::config::BrokerConfig { data_dir: broker_dir.path().to_path_buf(), ..Default::default() };
    let broker_task = tokio::spawn(broker::server::run(
        broker_config,
        Arc::new(broker::clock::SystemClock),
        grpc,
        admin_listener,
        token.clone(),
    ));

    // A write quota far below what the relay offers: most PutRecords are
    // partly throttled, and the producer gives up on some records.
    let admin =
        eventually(Duration::from_secs(10), "the broker", || async { client::Admin::connect(&addr).await.ok() }).await;
    for name in ["o", "d", "c"] {
        let quotas = client::types::Quotas { write_records_per_sec: Some(20), ..Default::default() };
        let req = client::types::CreateStreamRequest {
            stream_name: name.into(),
            shard_count: 1,
            quota_overrides: Some(quotas),
            ..Default::default()
        };
        admin.create_stream(req).await.expect("create stream");
    }

    // Orders written in three waves, so that one order's events lie far
    // apart in the outbox and several of them are in one relay pass.
    let streams = Streams { orders: "o".into(), delivery: "d".into(), customer_service: "c".into() };
    let store = Store::open(&dir.path().join("orders"), "ordersTable", streams).expect("store");
    let req = CreateOrder { name: "n".into(), address: "a".into(), product_id: "p".into(), quantity: 1 };
    let ids: Vec<String> = (0..ORDERS).map(|_| store.create(&req, None).expect("create").0.order_id).collect();
    for id in &ids {
        store.fulfill(&FulfillOrder { order_id: id.clone(), fulfillment_id: "f".into() }).expect("fulfil");
    }
    for id in &ids {
        let d = DeliverOrder { order_id: id.clone(), delivery_company_id: "d".into(), order_review: "ok".into() };
        store.deliver(&d).expect("deliver");
    }
    assert_eq!(store.outbox_len(), ORDERS * 4);

    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(order_service::relay::run(store.clone(), addr.clone(), Arc::default(), shutdown.clone()));
    eventually(Duration::from_secs(120), "an empty outbox", || async { (store.outbox_len() == 0).then_some(()) }).await;
    shutdown.cancel();
    relay.await.expect("relay task");

    let events = stream_json(&addr, "o").await;
    let mut seen = HashSet::new();
    let mut per_order: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        let event_id = e["eventId"].as_str().expect("eventId").to_string();
        assert!(seen.insert(event_id.clone()), "event {event_id} published twice");
        per_order
            .entry(e["orderId"].as_str().expect("orderId").into())
            .or_default()
            .push(e["eventType"].as_str().expect("eventType").into());
    }
    for id in &ids {
        assert_eq!(
            per_order.get(id).map(Vec::as_slice),
            Some(&["order_placed".to_string(), "order_fulfilled".into(), "order_delivered".into()][..]),
            "events of order {id}"
        );
    }
    assert_eq!(events.len(), ORDERS * 3);
    let reviews = stream_json(&addr, "c").await;
    let review_ids: HashSet<&str> = reviews.iter().filter_map(|e| e["eventId"].as_str()).collect();
    assert_eq!((reviews.len(), review_ids.len()), (ORDERS, ORDERS), "one review per order");

    token.cancel();
    broker_task.await.expect("broker task").expect("broker stops cleanly");
}
