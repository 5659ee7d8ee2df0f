//! The order API through real HTTP: validation, the state machine,
//! idempotent create, GET, error bodies, metrics.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_201_with_the_order_and_get_returns_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let r = post(svc.addr, "/order", SEED_ORDER).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let order = r.json();
    let id = order["orderId"].as_str().expect("orderId").to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).expect("uuid").get_version_num(), 7);
    assert_eq!(order["quantity"], json!(10));
    assert_eq!(order["status"], "placed");
    assert_eq!(order["name"], "marcia");
    assert!(order["orderDate"].as_u64().is_some());
    assert!(order.get("fulfillmentId").is_none(), "absent fields are omitted: {order}");
    assert_eq!(r.header("location"), Some(format!("/order/{id}").as_str()));
    let g = get(svc.addr, &format!("/order/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json(), order);
    let missing = get(svc.addr, "/order/no-such-order").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "order_not_found");
    assert_eq!(get(svc.addr, "/healthz").await.status, 200);
    let m = get(svc.addr, "/metrics").await;
    assert!(m.body.contains("orders_created_total 1"), "{}", m.body);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let order = |q: &str| format!(r#"{{"name":"a","address":"b","productId":"c","quantity":{q}}}"#);
    let big = format!(r#"{{"name":"{}","address":"b","productId":"c","quantity":1}}"#, "x".repeat(70 * 1024));
    let cases: Vec<(String, u16, &str, Vec<&str>)> = vec![
        (r#"{"address":"b","productId":"c","quantity":1}"#.into(), 422, "validation_failed", vec!["name"]),
        (r#"{"name":"","address":"b","productId":"c","quantity":1}"#.into(), 422, "validation_failed", vec!["name"]),
        (r#"{"name":"  ","address":"b","productId":"c","quantity":1}"#.into(), 422, "validation_failed", vec!["name"]),
        (
            r#"{"name":5,"address":["b"],"productId":"c","quantity":1}"#.into(),
            422,
            "validation_failed",
            vec!["name", "address"],
        ),
        (
            r#"{"name":"a","address":"b","productId":null,"quantity":1}"#.into(),
            422,
            "validation_failed",
            vec!["productId"],
        ),
        (order(r#""0""#), 422, "validation_failed", vec!["quantity"]),
        (order(r#""-1""#), 422, "validation_failed", vec!["quantity"]),
        (order(r#""abc""#), 422, "validation_failed", vec!["quantity"]),
        (order("1000000000000"), 422, "validation_failed", vec!["quantity"]),
        (order("0"), 422, "validation_failed", vec!["quantity"]),
        (order("2.5"), 422, "validation_failed", vec!["quantity"]),
        (
            r#"{"name":"a","address":"b","productId":"c","quantity":1,"eventType":"x"}"#.into(),
            400,
            "unknown_fields",
            vec!["eventType"],
        ),
        ("{not json".into(), 400, "invalid_json", vec![]),
        ("[1,2]".into(), 400, "invalid_json", vec![]),
        (big, 413, "payload_too_large", vec![]),
    ];
    for (body, status, kind, fields) in cases {
        let r = post(svc.addr, "/order", &body).await;
        let short: String = body.chars().take(80).collect();
        assert_eq!(r.status, status, "{short}: {}", r.body);
        assert_eq!(r.json()["error"], kind, "{short}");
        assert!(r.json()["message"].is_string(), "{short}");
        assert_eq!(r.fields(), fields, "{short}");
    }
    // The other endpoints name their fields too.
    let r = post(svc.addr, "/order/fulfill", r#"{"orderId":"x","fullfillmentId":"typo"}"#).await;
    assert_eq!((r.status, r.fields()), (400, vec!["fullfillmentId".to_string()]));
    let r = post(svc.addr, "/order/fulfill", r#"{"orderId":"x"}"#).await;
    assert_eq!((r.status, r.fields()), (422, vec!["fulfillmentId".to_string()]));
    let r = post(svc.addr, "/order/delivered", r#"{"orderId":"x","orderReview":2}"#).await;
    assert_eq!((r.status, r.fields()), (422, vec!["deliveryCompanyId".to_string(), "orderReview".to_string()]));
    let r = request(svc.addr, "POST", "/order", &[("Idempotency-Key", "")], SEED_ORDER.as_bytes()).await;
    assert_eq!((r.status, r.fields()), (400, vec!["Idempotency-Key".to_string()]));
    // Nothing was created by any of them.
    assert!(get(svc.addr, "/metrics").await.body.contains("orders_created_total 0"));
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_machine_rejects_illegal_transitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // Keep the simulator from delivering during this test.
    config.delivery_simulator_delay_ms = 60_000;
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let deliver = json!({"orderId": id, "deliveryCompanyId": "deliveryCompanyId1", "orderReview": "2"}).to_string();
    let r = post(svc.addr, "/order/delivered", &deliver).await;
    assert_eq!((r.status, r.json()["error"].clone()), (409, json!("invalid_transition")), "{}", r.body);
    let fulfil = json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    let r = post(svc.addr, "/order/fulfill", &fulfil).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "fulfilled");
    assert_eq!(r.json()["fulfillmentId"], "CakeProducer1");
    assert!(r.json()["fulfillmentDate"].as_u64().is_some());
    let first = r.json();
    // A repeat with the same fulfillmentId is answered with the order as it is.
    let r = post(svc.addr, "/order/fulfill", &fulfil).await;
    assert_eq!(r.status, 200, "fulfil twice: {}", r.body);
    assert_eq!(r.json(), first);
    let other = json!({"orderId": id, "fulfillmentId": "CakeProducer2"}).to_string();
    let r = post(svc.addr, "/order/fulfill", &other).await;
    assert_eq!((r.status, r.json()["error"].clone()), (409, json!("invalid_transition")), "{}", r.body);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("CakeProducer1")), "{}", r.body);
    assert_eq!(metric(svc.addr, "order_service_orders_fulfilled_total").await, 1, "a repeat is not counted");
    let unknown = json!({"orderId": "0190d1e8-0000-7000-8000-000000000000", "fulfillmentId": "CakeProducer1"});
    let r = post(svc.addr, "/order/fulfill", &unknown.to_string()).await;
    assert_eq!((r.status, r.json()["error"].clone()), (404, json!("order_not_found")));
    let r = post(svc.addr, "/order/delivered", &deliver).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(svc.addr, "/order/delivered", &deliver).await;
    assert_eq!(r.status, 409, "deliver twice: {}", r.body);
    let r = post(svc.addr, "/order/fulfill", &fulfil).await;
    assert_eq!(r.status, 200, "the same fulfilment after delivery: {}", r.body);
    assert_eq!(r.json()["status"], "delivered", "the order as it is now");
    let r = post(svc.addr, "/order/fulfill", &other).await;
    assert_eq!(r.status, 409, "another fulfilment after delivery: {}", r.body);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_with_the_same_idempotency_key_creates_one_order_and_one_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let key = [("Idempotency-Key", "retry-me-1")];
    let a = request(svc.addr, "POST", "/order", &key, SEED_ORDER.as_bytes()).await;
    let b = request(svc.addr, "POST", "/order", &key, SEED_ORDER.as_bytes()).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.json(), b.json());
    let other = SEED_ORDER.replace("\"10\"", "\"11\"");
    let c = request(svc.addr, "POST", "/order", &key, other.as_bytes()).await;
    assert_eq!((c.status, c.json()["error"].clone()), (422, json!("idempotency_key_reused")));
    let d = post(svc.addr, "/order", SEED_ORDER).await;
    assert_ne!(d.json()["orderId"], a.json()["orderId"]);
    let id = a.json()["orderId"].clone();
    // Both orders' events get published; the keyed one exactly once.
    let events = eventually(Duration::from_secs(20), "two order_placed events", || async {
        let ev = stream_json(&svc.running.broker_addr, "order-events").await;
        (ev.len() >= 2).then_some(ev)
    })
    .await;
    let placed_for_a = events.iter().filter(|e| e["orderId"] == id && e["eventType"] == "order_placed").count();
    assert_eq!(placed_for_a, 1, "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    let e = &events[0];
    assert_eq!(e["version"], 1);
    assert!(e["eventId"].is_string() && e["occurredAt"].is_u64());
    assert_eq!(e["order"]["orderId"], e["orderId"]);
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json_and_orders_list_in_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.delivery_simulator_delay_ms = 60_000;
    let svc = start(config).await;
    let r = get(svc.addr, "/order/fulfill").await;
    assert_eq!((r.status, r.json()["error"].clone()), (405, json!("method_not_allowed")), "{}", r.body);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("GET")), "{}", r.body);
    let r = get(svc.addr, "/no/such/route").await;
    assert_eq!((r.status, r.json()["error"].clone()), (404, json!("not_found")), "{}", r.body);

    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string());
    }
    let fulfil = json!({"orderId": ids[1], "fulfillmentId": "CakeProducer1"}).to_string();
    assert_eq!(post(svc.addr, "/order/fulfill", &fulfil).await.status, 200);

    // Pages of two, newest first, until no cursor.
    let mut seen = Vec::new();
    let mut path = "/orders?limit=2".to_string();
    loop {
        let page = get(svc.addr, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let body = page.json();
        let orders = body["orders"].as_array().expect("orders").clone();
        assert!(orders.len() <= 2);
        seen.extend(orders.iter().map(|o| o["orderId"].as_str().expect("id").to_string()));
        match body["nextCursor"].as_str() {
            Some(c) => path = format!("/orders?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().cloned().collect::<Vec<_>>());
    let placed = get(svc.addr, "/orders?status=placed").await.json();
    assert_eq!(placed["orders"].as_array().expect("orders").len(), 4);
    let fulfilled = get(svc.addr, "/orders?status=fulfilled").await.json();
    assert_eq!(fulfilled["orders"][0]["orderId"], ids[1].as_str());
    assert_eq!(fulfilled["nextCursor"], json!(null));
    for (query, field) in [("status=lost", "status"), ("limit=0", "limit"), ("limit=x", "limit")] {
        let r = get(svc.addr, &format!("/orders?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.fields(), vec![field.to_string()], "{query}");
    }
    svc.running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_streams_and_groups_and_names_an_unreachable_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    eventually(Duration::from_secs(60), "ready", || async {
        let r = get(svc.addr, "/readyz").await;
        (r.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(svc.addr, "/healthz").await.status, 200);
    svc.running.stop().await.expect("clean stop");

    // An external broker that is not there: alive, not ready, and why.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    let gone = free_port().await;
    config.broker = Some(gone.to_string());
    let svc = start(config).await;
    let r = get(svc.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains(&format!("the broker at {gone}")), "{}", r.body);
    assert!(r.body.contains("consumer groups not joined yet: external-parties"), "{}", r.body);
    assert_eq!(get(svc.addr, "/healthz").await.status, 200, "liveness only");
    svc.running.stop().await.expect("clean stop");
}

/// docs/metrics.md's order-service table and `/metrics` list the same
/// metrics, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_metrics_md_lists_exactly_the_metrics_on_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = start(test_config(dir.path())).await;
    let page = get(svc.addr, "/metrics").await.body;
    let on_page: std::collections::BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect();
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
        .expect("docs/metrics.md");
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `order_service_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("order_service_{name}"))
        .collect();
    assert_eq!(on_page, documented, "left: /metrics, right: docs/metrics.md");
    svc.running.stop().await.expect("stop");
}
