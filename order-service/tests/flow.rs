//! The whole order flow through real HTTP and a real in-process broker:
//! emails, the delivery queue, the simulator, customer service, the
//! dead-letter stream, and crash safety of the outbox.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

async fn order_state(svc: &Svc, id: &str, status: &str) -> Value {
    eventually(LIMIT, &format!("order {id} to be {status}"), || async {
        let o = get(svc.addr, &format!("/order/{id}")).await.json();
        (o["status"] == status).then_some(o)
    })
    .await
}

async fn email_with(svc: &Svc, needle: &str) -> String {
    eventually(LIMIT, &format!("an email containing {needle}"), || async {
        emails(&svc.data_dir).into_iter().map(|(_, t)| t).find(|t| t.contains(needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_placed_to_delivered_with_every_notification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let broker = svc.running.broker_addr.clone();
    let order = post(svc.addr, "/order", SEED_ORDER).await.json();
    let id = order["orderId"].as_str().expect("id").to_string();

    // The cake producer gets a readable email.
    let eml = email_with(&svc, &id).await;
    assert!(eml.contains("Subject: New cake order"), "{eml}");
    assert!(eml.contains("From: cakeorderingsystem@example.com"), "{eml}");
    assert!(eml.contains("To: cakeproducer@example.com"), "{eml}");
    for part in ["marcia", "somewhere", "productId11", "Quantity:   10"] {
        assert!(eml.contains(part), "{part} missing in {eml}");
    }

    let r =
        post(svc.addr, "/order/fulfill", &json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The delivery queue gets the full order, stamped sentToDeliveryDate.
    let queued = eventually(LIMIT, "a delivery queue record", || async {
        stream_json(&broker, "deliveryServiceQueue").await.into_iter().next()
    })
    .await;
    assert_eq!(queued["orderId"], id.as_str());
    assert!(queued["eventId"].is_string());
    assert_eq!(queued["order"]["fulfillmentId"], "CakeProducer1");
    assert!(queued["order"]["sentToDeliveryDate"].is_u64(), "{queued}");

    // The simulator delivers it.
    let done = order_state(&svc, &id, "delivered").await;
    for f in ["orderDate", "fulfillmentDate", "sentToDeliveryDate", "deliveryDate"] {
        assert!(done[f].is_u64(), "{f} missing: {done}");
    }
    assert_eq!(done["deliveryCompanyId"], "DeliveryCo1");
    assert!(done["orderReview"].is_string());

    // Customer service gets the review on its queue and by email.
    let review = eventually(LIMIT, "a customer-service record", || async {
        stream_json(&broker, "customerServiceQueue").await.into_iter().next()
    })
    .await;
    assert_eq!(review["orderId"], id.as_str());
    assert_eq!(review["orderReview"], done["orderReview"]);
    assert!(review["date"].is_u64() && review["eventId"].is_string());
    let eml = email_with(&svc, "Subject: Order review").await;
    assert!(eml.contains("To: customerservice@example.com") && eml.contains(&id), "{eml}");

    // The order stream tells the whole story, once each.
    let events = eventually(LIMIT, "three order events", || async {
        let ev = stream_json(&broker, "order-events").await;
        (ev.len() >= 3).then_some(ev)
    })
    .await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["eventType"].as_str()).collect();
    assert_eq!(types, ["order_placed", "order_fulfilled", "order_delivered"]);
    assert_eq!(emails(&svc.data_dir).len(), 2);
    let m = get(svc.addr, "/metrics").await.body;
    for line in
        ["orders_created_total 1", "orders_fulfilled_total 1", "orders_delivered_total 1", "emails_sent_total 2"]
    {
        assert!(m.contains(line), "{line} in {m}");
    }
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_course_notes_names_work_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.order_stream_name = "ordersStream".into();
    config.order_table_name = "orders_v2".into();
    config.cake_producer_email = "bakery@example.org".into();
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let eml = email_with(&svc, &id).await;
    assert!(eml.contains("To: bakery@example.org"), "{eml}");
    let events = stream_json(&svc.running.broker_addr, "ordersStream").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["orderId"], id.as_str());
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_the_next_record_is_processed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let broker = svc.running.broker_addr.clone();
    // Wait until the service created its streams.
    eventually(LIMIT, "the order stream", || async {
        client::Admin::connect(&broker).await.ok()?.describe_stream("order-events").await.ok()
    })
    .await;
    let producer =
        client::Producer::connect(&broker, "order-events", client::ProducerConfig::default()).await.expect("producer");
    producer.send("poison", "{this is not json").await.expect("send").await.expect("ack");
    producer.close().await.expect("close");
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    email_with(&svc, &id).await;
    let dead = eventually(LIMIT, "a dead-letter record", || async {
        stream_json(&broker, "order-events-dlq").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["record"], "{this is not json");
    assert_eq!(dead["partitionKey"], "poison");
    assert!(dead["shardId"].is_string() && dead["sequenceNumber"].is_u64());
    assert!(dead["error"].as_str().is_some_and(|e| e.contains("envelope")), "{dead}");
    assert_eq!(emails(&svc.data_dir).len(), 1);
    assert!(get(svc.addr, "/metrics").await.body.contains("dead_lettered_total 1"));
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_taken_while_the_broker_is_down_are_published_once_it_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let grpc = free_port().await;
    let mut config = test_config(dir.path());
    config.broker = Some(format!("http://{grpc}"));
    let svc = start(config.clone()).await;

    // The broker is down: the order is stored, its event waits in the outbox.
    let r = post(svc.addr, "/order", SEED_ORDER).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["orderId"].as_str().expect("id").to_string();
    assert_eq!(get(svc.addr, &format!("/order/{id}")).await.status, 200);
    assert!(get(svc.addr, "/metrics").await.body.contains("outbox_pending 1"));
    assert!(emails(&svc.data_dir).is_empty());

    // Restart the service while the broker is still down: the outbox survives.
    svc.running.stop().await.expect("clean stop");
    let svc = start(config.clone()).await;
    assert!(get(svc.addr, "/metrics").await.body.contains("outbox_pending 1"));

    // Now the broker comes up on that address.
    let listener = tokio::net::TcpListener::bind(grpc).await.expect("bind the broker's port");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let token = CancellationToken::new();
    let broker_config =
        broker::config::BrokerConfig { data_dir: broker_dir.path().to_path_buf(), ..Default::default() };
    let broker_task = tokio::spawn(broker::server::run(
        broker_config,
        Arc::new(broker::clock::SystemClock),
        listener,
        admin,
        token.clone(),
    ));

    email_with(&svc, &id).await;
    eventually(LIMIT, "an empty outbox", || async {
        get(svc.addr, "/metrics").await.body.contains("outbox_pending 0").then_some(())
    })
    .await;

    // One more order after a second restart proves the consumer caught up;
    // the first order still has exactly one event and one email.
    svc.running.stop().await.expect("clean stop");
    let svc = start(config).await;
    let id2 = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    email_with(&svc, &id2).await;
    let events = stream_json(&svc.running.broker_addr, "order-events").await;
    let ids: Vec<&str> = events.iter().filter_map(|e| e["orderId"].as_str()).collect();
    assert_eq!(ids, [id.as_str(), id2.as_str()]);
    assert_eq!(emails(&svc.data_dir).len(), 2);
    svc.running.stop().await.expect("clean stop");
    token.cancel();
    broker_task.await.expect("broker task").expect("broker stops cleanly");
}
