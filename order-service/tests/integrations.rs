//! The optional integrations: the delivery webhook and SMTP, against small
//! local servers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_webhook_receives_the_fulfilled_order_with_its_event_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, calls) = webhook_server(0, |_| 200).await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let r =
        post(svc.addr, "/order/fulfill", &json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string()).await;
    assert_eq!(r.status, 200);
    let body = eventually(LIMIT, "the webhook call", || async { calls.accepted().into_iter().next() }).await;
    assert_eq!(body["orderId"], id.as_str());
    assert_eq!(body["status"], "fulfilled");
    assert_eq!(body["fulfillmentId"], "CakeProducer1");
    assert!(body["sentToDeliveryDate"].is_u64(), "{body}");
    // The receiver can deduplicate on the event id of the delivery request.
    let queued = stream_json(&svc.running.broker_addr, "deliveryServiceQueue").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(body["eventId"].is_string(), "{body}");
    assert_eq!(body["eventId"], queued[0]["eventId"], "{body}");
    // With a webhook, delivery is up to the company: the order stays fulfilled.
    assert_eq!(get(svc.addr, &format!("/order/{id}")).await.json()["status"], "fulfilled");
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_configured_the_cake_producer_is_mailed_over_smtp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, smtp) = smtp_server(SmtpBehaviour::default()).await;
    let mut config = test_config(dir.path());
    config.smtp.host = Some("127.0.0.1".into());
    config.smtp.port = port;
    config.smtp.starttls = false;
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let mail = eventually(LIMIT, "the mail", || async { smtp.messages().into_iter().next() }).await;
    assert!(mail.contains("Subject: New cake order"), "{mail}");
    assert!(mail.contains(&id), "{mail}");
    // A message sent again for the same event can be recognised by its id.
    let placed = stream_json(&svc.running.broker_addr, "order-events").await;
    let event_id = placed[0]["eventId"].as_str().expect("eventId");
    assert!(mail.contains(&format!("Message-ID: <{event_id}@order-service>")), "{mail}");
    assert!(emails(&svc.data_dir).is_empty(), "no .eml files when SMTP is configured");
    svc.running.stop().await.expect("clean stop");
}
