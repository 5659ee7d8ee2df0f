//! The consumers' delivery guarantees against small local receivers: one
//! side effect per event when two deliveries of it run at once, transient
//! failures retried while the shard waits, permanent ones dead-lettered at
//! once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use order_service::consumers::{self, Ctx};
use order_service::model::{Envelope, event_type};
use order_service::store::{Store, Streams};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

fn streams() -> Streams {
    Streams {
        orders: "order-events".into(),
        delivery: "deliveryServiceQueue".into(),
        customer_service: "customerServiceQueue".into(),
    }
}

/// Handler context without a service around it: the store in `dir`, no broker
/// (nothing here dead-letters).
fn ctx(dir: &std::path::Path, config: order_service::Config) -> Arc<Ctx> {
    let store = Store::open(&dir.join("orders"), "ordersTable", streams()).expect("store");
    let mailer = order_service::email::Mailer::new(&config.smtp, dir.join("emails")).expect("mailer");
    Arc::new(Ctx {
        store,
        mailer,
        config,
        metrics: Arc::default(),
        broker: "http://127.0.0.1:9".into(),
        self_url: "http://127.0.0.1:9".into(),
        http: Default::default(),
        simulator_token: None,
    })
}

fn record(env: &Envelope) -> client::Record {
    client::Record {
        shard_id: "shardId-000000000000".into(),
        sequence_number: 7,
        arrival_timestamp_ms: 0,
        partition_key: env.order_id.clone(),
        data: serde_json::to_vec(env).expect("encode").into(),
        lease_epoch: 1,
    }
}

/// Runs two deliveries of `env` to `group` at the same time.
async fn twice_at_once(ctx: &Arc<Ctx>, group: &'static str, env: &Envelope) {
    let stop = CancellationToken::new();
    let a = consumers::handle_batch(ctx.clone(), group, vec![record(env)], stop.clone());
    let b = consumers::handle_batch(ctx.clone(), group, vec![record(env)], stop.clone());
    let (a, b) = tokio::time::timeout(LIMIT, async { tokio::join!(a, b) }).await.expect("both handled in time");
    a.expect("first delivery");
    b.expect("second delivery");
}

fn order() -> order_service::model::Order {
    order_service::model::Order::placed(
        "0190d1e8-0000-7000-8000-000000000001".into(),
        "marcia".into(),
        "somewhere".into(),
        "productId11".into(),
        10,
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_deliveries_of_one_event_send_one_email() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server holds its answer until a second message arrives (or 2 s),
    // so both deliveries are in flight together if both send.
    let (port, smtp) = smtp_server(SmtpBehaviour { hold_for: 2, ..Default::default() }).await;
    let mut config = test_config(dir.path());
    config.smtp.host = Some("127.0.0.1".into());
    config.smtp.port = port;
    config.smtp.starttls = false;
    let ctx = ctx(dir.path(), config);
    let env = Envelope::about(event_type::ORDER_PLACED, &order(), 1);
    twice_at_once(&ctx, consumers::EXTERNAL_PARTIES, &env).await;
    assert_eq!(smtp.messages().len(), 1, "{:?}", smtp.messages());
    // A third, later delivery is a no-op too.
    twice_at_once(&ctx, consumers::EXTERNAL_PARTIES, &env).await;
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_deliveries_of_one_event_call_the_webhook_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, calls) = webhook_server(2, |_| 200).await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let ctx = ctx(dir.path(), config);
    let env = Envelope::about(event_type::DELIVERY_REQUESTED, &order(), 1);
    twice_at_once(&ctx, consumers::DELIVERY_COMPANY, &env).await;
    assert_eq!(calls.calls().len(), 1, "{:?}", calls.calls());
}

async fn fulfilled_order(svc: &Svc) -> String {
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let r =
        post(svc.addr, "/order/fulfill", &json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    id
}

const DELIVERY_BLOCKED: &str = r#"order_service_consumer_blocked{group="delivery-company"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_two_seconds_gets_the_order_once_and_nothing_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outage_ends = Arc::new(std::sync::OnceLock::<Instant>::new());
    let ends = outage_ends.clone();
    let (hook, calls) = webhook_server(0, move |_| {
        let end = *ends.get_or_init(|| Instant::now() + Duration::from_secs(2));
        if Instant::now() < end { 503 } else { 200 }
    })
    .await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let svc = start(config).await;
    let id = fulfilled_order(&svc).await;
    // While the webhook fails, the group's shard is blocked and says so.
    eventually(LIMIT, "the delivery group blocked", || async {
        (metric(svc.addr, DELIVERY_BLOCKED).await == 1).then_some(())
    })
    .await;
    let body = eventually(LIMIT, "an accepted webhook call", || async { calls.accepted().into_iter().next() }).await;
    assert_eq!(body["orderId"], id.as_str());
    eventually(LIMIT, "the delivery group unblocked", || async {
        (metric(svc.addr, DELIVERY_BLOCKED).await == 0).then_some(())
    })
    .await;
    let retries =
        metric(svc.addr, r#"order_service_handler_retries_total{group="delivery-company",kind="server_error"}"#).await;
    assert!(retries >= 1, "retries counted: {}", get(svc.addr, "/metrics").await.body);
    assert_eq!(calls.accepted().len(), 1, "delivered once: {:?}", calls.calls());
    assert!(calls.calls().iter().all(|(b, _)| b["eventId"] == body["eventId"]), "one event: {:?}", calls.calls());
    assert!(stream_json(&svc.running.broker_addr, "deliveryServiceQueue-dlq").await.is_empty());
    assert_eq!(metric(svc.addr, "order_service_dead_lettered_total").await, 0);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_400_dead_letters_the_order_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, calls) = webhook_server(0, |_| 400).await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let svc = start(config).await;
    let id = fulfilled_order(&svc).await;
    let dead = eventually(LIMIT, "a dead-letter record", || async {
        stream_json(&svc.running.broker_addr, "deliveryServiceQueue-dlq").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["partitionKey"], id.as_str());
    assert!(dead["error"].as_str().is_some_and(|e| e.contains("400")), "{dead}");
    assert_eq!((dead["permanent"].clone(), dead["attempts"].clone()), (json!(true), json!(1)), "{dead}");
    assert_eq!(calls.calls().len(), 1, "no retry of a 400: {:?}", calls.calls());
    let permanent =
        metric(svc.addr, r#"order_service_handler_permanent_failures_total{group="delivery-company",kind="rejected"}"#)
            .await;
    assert_eq!(permanent, 1, "{}", get(svc.addr, "/metrics").await.body);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_transiently_past_its_budget_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, calls) = webhook_server(0, |_| 503).await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    config.consumer_retry_budget_ms = 300;
    let svc = start(config).await;
    let id = fulfilled_order(&svc).await;
    let dead = eventually(LIMIT, "a dead-letter record", || async {
        stream_json(&svc.running.broker_addr, "deliveryServiceQueue-dlq").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["partitionKey"], id.as_str());
    assert_eq!((dead["permanent"].clone(), dead["kind"].clone()), (json!(false), json!("server_error")), "{dead}");
    assert!(dead["error"].as_str().is_some_and(|e| e.contains("still failing") && e.contains("503")), "{dead}");
    let attempts = dead["attempts"].as_u64().expect("attempts");
    assert!(attempts >= 2, "{dead}");
    assert_eq!(calls.calls().len() as u64, attempts, "{dead}");
    eventually(LIMIT, "the delivery group unblocked", || async {
        (metric(svc.addr, DELIVERY_BLOCKED).await == 0).then_some(())
    })
    .await;
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_refusing_connections_for_a_while_gets_the_mail_once_it_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp_addr = free_port().await;
    let mut config = test_config(dir.path());
    config.smtp.host = Some("127.0.0.1".into());
    config.smtp.port = smtp_addr.port();
    config.smtp.starttls = false;
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let refused = r#"order_service_handler_retries_total{group="external-parties",kind="unreachable"}"#;
    eventually(LIMIT, "retries while SMTP refuses connections", || async {
        (metric(svc.addr, refused).await >= 3).then_some(())
    })
    .await;
    assert_eq!(metric(svc.addr, r#"order_service_consumer_blocked{group="external-parties"}"#).await, 1);
    let smtp = smtp_server_on(tokio::net::TcpListener::bind(smtp_addr).await.expect("bind SMTP"), Default::default());
    let mail = eventually(LIMIT, "the mail", || async { smtp.messages().into_iter().next() }).await;
    assert!(mail.contains(&id), "{mail}");
    assert!(stream_json(&svc.running.broker_addr, "order-events-dlq").await.is_empty());
    assert_eq!(smtp.messages().len(), 1);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_rejecting_the_recipient_dead_letters_the_mail_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rejecting = SmtpBehaviour { rcpt_reply: Some("550 5.1.1 no such mailbox"), ..Default::default() };
    let (port, smtp) = smtp_server(rejecting).await;
    let mut config = test_config(dir.path());
    config.smtp.host = Some("127.0.0.1".into());
    config.smtp.port = port;
    config.smtp.starttls = false;
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let dead = eventually(LIMIT, "a dead-letter record", || async {
        stream_json(&svc.running.broker_addr, "order-events-dlq").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["partitionKey"], id.as_str());
    assert!(dead["error"].as_str().is_some_and(|e| e.contains("550")), "{dead}");
    assert_eq!(smtp.rcpts(), 1, "no retry of a permanent SMTP error");
    svc.running.stop().await.expect("clean stop");
}
