//! The broker's web console with the order system running: its order API
//! (through real HTTP to a real order service and broker), and the whole
//! console end to end in a real headless Chromium driven by
//! `tests/console_ui.mjs` (playwright-core).
//!
//! The browser and playwright-core are installed by `.ci/install-browser`
//! (which `.ci/run` calls). If that script could not install them it wrote
//! why to `<target>/console-e2e/UNAVAILABLE`, and the browser test says it
//! is skipped and why; without that file a missing browser fails the test.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::post;
use broker::clock::SystemClock;
use broker::config::{BrokerConfig, ConsoleConfig};
use broker::testing::TestBroker;
use client::types::CreateStreamRequest;
use client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig};
use common::{eventually, get, post as http_post, test_config};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// A broker whose console knows the order service that `start_orders` will
/// run on `orders_listener`, and that order service.
struct System {
    broker: TestBroker,
    orders: common::Svc,
    _dir: tempfile::TempDir,
}

async fn start_system() -> System {
    start_system_with(None).await
}

async fn start_system_with(delivery_webhook_url: Option<String>) -> System {
    let dir = tempfile::tempdir().expect("tempdir");
    let orders_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let orders_addr = orders_listener.local_addr().expect("addr");
    let console = ConsoleConfig {
        mutations: true,
        sample_interval_ms: 250,
        order_service_url: format!("http://{orders_addr}"),
        ..ConsoleConfig::default()
    };
    let config = BrokerConfig { data_dir: dir.path().join("broker"), console, ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut oc = test_config(&dir.path().join("orders"));
    oc.broker = Some(broker.endpoint());
    oc.delivery_webhook_url = delivery_webhook_url;
    let data_dir = oc.data_dir.clone();
    let running = order_service::start(oc, orders_listener, CancellationToken::new()).await.expect("order service");
    let orders = common::Svc { addr: running.http_addr, running, data_dir };
    System { broker, orders, _dir: dir }
}

/// Places an order, fulfils it, and waits until the console shows every
/// step of its flow done (the simulator delivers it, customer service gets
/// the review).
async fn order_through_its_flow(sys: &System) -> String {
    let created = http_post(sys.orders.addr, "/order", common::SEED_ORDER).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["orderId"].as_str().expect("orderId").to_string();
    let fulfil = json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    let fulfilled = http_post(sys.orders.addr, "/order/fulfill", &fulfil).await;
    assert_eq!(fulfilled.status, 200, "{}", fulfilled.body);
    let admin = sys.broker.http_addr;
    eventually(LIMIT, "every step of the order's flow", || async {
        let r = get(admin, &format!("/api/v1/orders/{id}")).await;
        let v = (r.status == 200).then(|| r.json())?;
        v["steps"].as_array()?.iter().all(|s| s["done"] == true).then_some(())
    })
    .await;
    id
}

#[tokio::test]
async fn the_console_lists_orders_and_shows_one_orders_whole_flow() {
    let sys = start_system().await;
    let admin = sys.broker.http_addr;
    let id = order_through_its_flow(&sys).await;
    let second = http_post(sys.orders.addr, "/order", common::SEED_ORDER).await.json()["orderId"].clone();

    let flow = get(admin, &format!("/api/v1/orders/{id}")).await.json();
    let steps: Vec<&str> =
        flow["steps"].as_array().expect("steps").iter().map(|s| s["step"].as_str().expect("step")).collect();
    assert_eq!(steps, ["placed", "emailed", "fulfilled", "queued", "delivered", "review"]);
    let order = &flow["order"];
    assert_eq!(order["status"], "delivered");
    for (step, field) in [(0, "orderDate"), (2, "fulfillmentDate"), (3, "sentToDeliveryDate"), (4, "deliveryDate")] {
        assert_eq!(flow["steps"][step]["at_ms"], order[field], "{field}");
    }
    let types: Vec<&str> =
        flow["events"].as_array().expect("events").iter().map(|e| e["event_type"].as_str().expect("type")).collect();
    for t in ["order_placed", "order_fulfilled", "delivery_requested", "order_delivered", "review_received"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    assert!(flow["steps"][1]["detail"].as_str().expect("detail").contains("external-parties"), "{flow}");
    assert_eq!(flow["dead_letters"], json!([]));

    // Orders by status, newest first, through the console and straight from the service.
    let all = get(admin, "/api/v1/orders").await.json();
    let ids: Vec<Value> = all["orders"].as_array().expect("orders").iter().map(|o| o["orderId"].clone()).collect();
    assert_eq!(ids, vec![second.clone(), json!(id)]);
    let delivered = get(admin, "/api/v1/orders?status=delivered").await.json();
    assert_eq!(delivered["orders"].as_array().map(Vec::len), Some(1));
    let paged = get(admin, "/api/v1/orders?limit=1").await.json();
    assert_eq!(paged["orders"][0]["orderId"], second);
    let next = paged["nextCursor"].as_str().expect("a cursor").to_string();
    let rest = get(admin, &format!("/api/v1/orders?limit=1&cursor={next}")).await.json();
    assert_eq!(rest["orders"][0]["orderId"], json!(id));
    let bad = get(sys.orders.addr, "/orders?status=lost").await;
    assert_eq!((bad.status, bad.fields()), (400, vec!["status".to_string()]));
    let bad = get(admin, "/api/v1/orders?limit=0").await;
    assert_eq!((bad.status, bad.fields()), (400, vec!["limit".to_string()]), "the service's own error comes through");
    let missing = get(admin, "/api/v1/orders/0190a6c2-0000-7000-8000-000000000000").await;
    assert_eq!(missing.status, 404);
    assert_eq!(get(admin, "/api/v1/orders/..%2Fsecret").await.status, 400);

    sys.orders.running.stop().await.expect("stop the order service");
    let down = get(admin, "/api/v1/orders").await;
    assert_eq!((down.status, down.json()["error"].as_str()), (503, Some("OrderServiceUnavailable")));
    sys.broker.stop().await.expect("stop");
}

/// A delivery company whose webhook answers with a settable status and
/// remembers the event ids it was called with.
#[derive(Clone, Default)]
struct Webhook {
    status: Arc<std::sync::atomic::AtomicU16>,
    events: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn webhook(State(w): State<Webhook>, body: axum::body::Bytes) -> axum::http::StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    w.events.lock().expect("events").push(v["eventId"].as_str().unwrap_or_default().to_string());
    axum::http::StatusCode::from_u16(w.status.load(std::sync::atomic::Ordering::SeqCst)).expect("a status")
}

#[tokio::test]
async fn a_dead_letter_replayed_from_the_console_is_handled_again() {
    let hook = Webhook::default();
    hook.status.store(400, std::sync::atomic::Ordering::SeqCst);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
    let url = format!("http://{}/deliveries", listener.local_addr().expect("addr"));
    let app = Router::new().route("/deliveries", post(webhook)).with_state(hook.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sys = start_system_with(Some(url)).await;
    let admin = sys.broker.http_addr;

    // The delivery company refuses the order (400, permanent): it is dead-lettered.
    let created = http_post(sys.orders.addr, "/order", common::SEED_ORDER).await;
    let id = created.json()["orderId"].as_str().expect("orderId").to_string();
    let fulfil = json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    assert_eq!(http_post(sys.orders.addr, "/order/fulfill", &fulfil).await.status, 200);
    let letter = eventually(LIMIT, "the dead letter", || async {
        let r = get(admin, "/api/v1/dead-letters/deliveryServiceQueue-dlq").await;
        (r.status == 200).then(|| r.json()["dead_letters"][0].clone()).filter(|l| !l.is_null())
    })
    .await;
    assert!(letter["error"].as_str().expect("error").contains("400"), "{letter}");
    let first = hook.events.lock().expect("events").clone();
    assert_eq!(first.len(), 1, "one refused call: {first:?}");

    // The company is fixed; the operator replays the dead letter.
    hook.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let body = json!({"shard_id": letter["shard_id"], "sequence_number": letter["sequence_number"]}).to_string();
    let replayed =
        common::request(admin, "POST", "/api/v1/dead-letters/deliveryServiceQueue-dlq/replay", &[], body.as_bytes())
            .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    let calls = eventually(LIMIT, "the replayed event at the webhook", || async {
        let events = hook.events.lock().expect("events").clone();
        (events.len() >= 2).then_some(events)
    })
    .await;
    assert_eq!(calls[1], first[0], "the same event, handled again");
    server.abort();
    sys.orders.running.stop().await.expect("stop");
    sys.broker.stop().await.expect("stop");
}

// ---------- the browser test ----------

/// What the node script may ask the test to do.
#[derive(Clone)]
struct Control {
    endpoint: String,
    producing: Arc<tokio::sync::Mutex<Option<CancellationToken>>>,
    /// Desired and current state of the `analytics` consumer.
    consume: watch::Sender<bool>,
    consuming: watch::Receiver<bool>,
}

#[derive(serde::Deserialize)]
struct PutQuery {
    key: String,
    data: String,
    #[serde(default)]
    n: Option<u32>,
}

async fn control_put(State(c): State<Control>, Query(q): Query<PutQuery>) -> axum::Json<Value> {
    let producer = Producer::connect(&c.endpoint, "clicks", ProducerConfig::default()).await.expect("producer");
    let mut last = None;
    for _ in 0..q.n.unwrap_or(1) {
        last = Some(producer.send(q.key.clone(), q.data.clone()).await.expect("send").await.expect("ack"));
    }
    producer.close().await.expect("close");
    let a = last.expect("n >= 1");
    axum::Json(json!({"shard_id": a.shard_id, "sequence_number": a.sequence_number}))
}

async fn producer_start(State(c): State<Control>) -> &'static str {
    let token = CancellationToken::new();
    let mut slot = c.producing.lock().await;
    if slot.is_some() {
        return "already";
    }
    *slot = Some(token.clone());
    let endpoint = c.endpoint.clone();
    tokio::spawn(async move {
        let producer = Producer::connect(&endpoint, "clicks", ProducerConfig::default()).await.expect("producer");
        let mut i = 0u64;
        while !token.is_cancelled() {
            let data = json!({"page": format!("/p/{}", i % 7), "n": i}).to_string();
            producer.send(format!("visitor-{}", i % 13), data).await.expect("send").await.expect("ack");
            i += 1;
        }
        producer.close().await.expect("close");
    });
    "started"
}

async fn producer_stop(State(c): State<Control>) -> &'static str {
    if let Some(t) = c.producing.lock().await.take() {
        t.cancel();
    }
    "stopped"
}

async fn consumer_set(c: &Control, on: bool) {
    c.consume.send_replace(on);
    let mut now = c.consuming.clone();
    // The consumer loop acknowledges within one short poll.
    tokio::time::timeout(LIMIT, now.wait_for(|v| *v == on))
        .await
        .expect("the consumer follows")
        .expect("consumer alive");
}

async fn consumer_stop(State(c): State<Control>) -> &'static str {
    consumer_set(&c, false).await;
    "stopped"
}

async fn consumer_resume(State(c): State<Control>) -> &'static str {
    consumer_set(&c, true).await;
    "resumed"
}

/// The `analytics` member: polls and commits while asked to; between polls
/// it parks, still a member (its heartbeat runs on), so its lag grows.
fn run_consumer(
    mut consumer: Consumer,
    mut want: watch::Receiver<bool>,
    state: watch::Sender<bool>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let on = *want.borrow_and_update();
            state.send_replace(on);
            if stop.is_cancelled() {
                let _ = consumer.leave().await;
                return;
            }
            if !on {
                tokio::select! {
                    _ = want.changed() => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            let records = consumer.poll().await.expect("poll");
            consumer.commit(&records).await.expect("commit");
        }
    });
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("chromium")).find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_works_in_a_real_browser() {
    let e2e = target_dir().join("console-e2e");
    let playwright = e2e.join("node_modules/playwright-core");
    if let Ok(reason) = std::fs::read_to_string(e2e.join("UNAVAILABLE")) {
        eprintln!("SKIPPED: the console browser test cannot run here: {}", reason.trim());
        return;
    }
    let browser = chromium();
    assert!(
        browser.is_some() && playwright.join("package.json").is_file(),
        "the console browser test needs chromium and playwright-core in {}: run .ci/install-browser \
         (it installs both, or records why it cannot)",
        e2e.display()
    );

    let sys = start_system().await;
    let endpoint = sys.broker.endpoint();
    let admin = Admin::connect(&endpoint).await.expect("admin");
    admin
        .create_stream(CreateStreamRequest { stream_name: "clicks".into(), shard_count: 2, ..Default::default() })
        .await
        .expect("create clicks");
    // The known data set: JSON, text and binary records on two shards.
    let producer = Producer::connect(&endpoint, "clicks", ProducerConfig::default()).await.expect("producer");
    for i in 0..40 {
        producer
            .send(format!("visitor-{}", i % 13), json!({"page": format!("/p/{i}"), "n": i}).to_string())
            .await
            .expect("send")
            .await
            .expect("ack");
    }
    producer.send("plain", "just text").await.expect("send").await.expect("ack");
    producer.send("bytes", vec![0u8, 1, 2, 254, 255]).await.expect("send").await.expect("ack");
    producer.close().await.expect("close");
    // A dead letter in the order service's format.
    let dlq = Producer::connect(&endpoint, "deliveryServiceQueue-dlq", ProducerConfig::default()).await;
    let letter = json!({"record": "{\"eventType\":\"delivery_requested\"}", "encoding": "utf8", "partitionKey": "order-x",
        "shardId": "shardId-000000000000", "sequenceNumber": 3, "error": "the delivery company answered 500",
        "kind": "http_5xx", "permanent": false, "attempts": 7});
    let dlq = match dlq {
        Ok(p) => p,
        Err(_) => {
            // The order service creates its streams as it starts; wait for this one.
            eventually(LIMIT, "the dead-letter stream", || async {
                Producer::connect(&endpoint, "deliveryServiceQueue-dlq", ProducerConfig::default()).await.ok()
            })
            .await
        }
    };
    eventually(LIMIT, "the dead letter", || async { dlq.send("order-x", letter.to_string()).await.ok()?.await.ok() })
        .await;
    let order_id = order_through_its_flow(&sys).await;

    // The consumer whose lag the browser watches.
    let mut config = ConsumerConfig::new("analytics");
    config.poll_wait = Duration::from_millis(200);
    let consumer = Consumer::join(&endpoint, "clicks", config).await.expect("join");
    let (want_tx, want_rx) = watch::channel(true);
    let (state_tx, state_rx) = watch::channel(false);
    let stop_consumer = CancellationToken::new();
    run_consumer(consumer, want_rx, state_tx, stop_consumer.clone());
    let control =
        Control { endpoint: endpoint.clone(), producing: Arc::default(), consume: want_tx, consuming: state_rx };
    consumer_set(&control, true).await;
    let app = Router::new()
        .route("/put", post(control_put))
        .route("/producer/start", post(producer_start))
        .route("/producer/stop", post(producer_stop))
        .route("/consumer/stop", post(consumer_stop))
        .route("/consumer/resume", post(consumer_resume))
        .with_state(control.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind control");
    let control_addr: SocketAddr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let shots = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console_ui.mjs");
    let mut node = std::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", format!("http://{}", sys.broker.http_addr))
        .env("CONTROL_URL", format!("http://{control_addr}"))
        .env("ORDER_ID", &order_id)
        .env("CHROMIUM", browser.expect("checked above"))
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("SCREENSHOTS", &shots)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (Node.js is needed for the console browser test)");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(150) {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = producer_stop(State(control.clone())).await;
    stop_consumer.cancel();
    server.abort();
    let status = status.expect("the browser test finishes within 150 s");
    assert!(
        status.success(),
        "the browser test failed ({status}); its output is above, screenshots in {}",
        shots.display()
    );
    sys.orders.running.stop().await.expect("stop the order service");
    sys.broker.stop().await.expect("stop the broker");
}
