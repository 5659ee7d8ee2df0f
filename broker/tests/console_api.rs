//! The console's JSON API (`/api/v1`, docs/console-api.md) through real
//! HTTP against a real in-process broker, with data put and consumed
//! through the real client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use broker::clock::SystemClock;
use broker::config::{BrokerConfig, ConsoleConfig};
use broker::testing::TestBroker;
use bytes::Bytes;
use client::types::CreateStreamRequest;
use client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let resp = client.request(req.body(Full::new(bytes)).expect("request")).await.expect("HTTP answer");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, None, &[]).await
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let a = get(addr, path).await;
    assert_eq!(a.status, 200, "GET {path}: {}", String::from_utf8_lossy(&a.body));
    a.json()
}

async fn change(addr: SocketAddr, method: &str, path: &str, body: Value) -> Answer {
    request(addr, method, path, Some(body), &[("content-type", "application/json")]).await
}

async fn broker(console: ConsoleConfig) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), console, ..BrokerConfig::default() };
    config.quotas.enforce = false;
    let b = TestBroker::start_with(config, std::sync::Arc::new(SystemClock)).await;
    let addr = b.http_addr;
    eventually("the broker to be ready", || async { (get(addr, "/readyz").await.status == 200).then_some(()) }).await;
    (b, dir)
}

fn fast(mutations: bool) -> ConsoleConfig {
    ConsoleConfig { mutations, sample_interval_ms: 100, ..ConsoleConfig::default() }
}

async fn create(endpoint: &str, name: &str, shards: u32) {
    let admin = Admin::connect(endpoint).await.expect("admin");
    let req = CreateStreamRequest { stream_name: name.into(), shard_count: shards, ..Default::default() };
    admin.create_stream(req).await.expect("create stream");
}

/// Waits (bounded) until `f` gives Some.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn overview_streams_and_records_show_what_was_put() {
    let (b, _dir) = broker(fast(false)).await;
    let addr = b.http_addr;
    create(&b.endpoint(), "orders", 2).await;
    let producer = Producer::connect(&b.endpoint(), "orders", ProducerConfig::default()).await.expect("producer");
    let mut acks = Vec::new();
    for i in 0..20 {
        let data = json!({"n": i, "item": "cake"}).to_string();
        acks.push(producer.send(format!("key-{}", i % 5), data).await.expect("send").await.expect("ack"));
    }
    producer.close().await.expect("close");

    let o = get_json(addr, "/api/v1/overview").await;
    assert_eq!(o["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!((o["streams"].as_u64(), o["shards"].as_u64()), (Some(1), Some(2)));
    assert_eq!(o["durability"]["mode"], "always");
    assert_eq!(o["ready"], true);
    assert_eq!(o["failed_shards"], json!([]));
    assert_eq!((o["mutations_enabled"].as_bool(), o["orders_enabled"].as_bool()), (Some(false), Some(false)));
    assert!(o["disk"]["total_bytes"].as_u64() > Some(0) && o["disk"]["data_bytes"].as_u64() > Some(0), "{o}");

    let list = get_json(addr, "/api/v1/streams").await;
    assert_eq!(list["streams"][0]["name"], "orders");
    assert_eq!(list["streams"][0]["records"], 20);

    let admin = Admin::connect(&b.endpoint()).await.expect("admin");
    let described = admin.describe_stream("orders").await.expect("describe");
    let st = get_json(addr, "/api/v1/streams/orders").await;
    let shards = st["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    for (mine, theirs) in shards.iter().zip(&described.shards) {
        assert_eq!(mine["shard_id"], theirs.shard_id);
        assert_eq!(mine["starting_hash_key"], theirs.starting_hash_key, "hash keys are decimal strings");
        assert_eq!(mine["ending_hash_key"], theirs.ending_hash_key);
        assert_eq!(mine["next_sequence_number"], theirs.next_sequence_number);
        assert_eq!((mine["state"].as_str(), mine["status"].as_str()), (Some("open"), Some("serving")));
    }

    // The message browser: one shard, newest first, then older.
    let shard = acks[0].shard_id.clone();
    let mine: Vec<_> = acks.iter().filter(|a| a.shard_id == shard).collect();
    let path = format!("/api/v1/streams/orders/shards/{shard}/records");
    let page = get_json(addr, &format!("{path}?limit=3")).await;
    assert_eq!(page["order"], "newest_first");
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["sequence_number"].as_u64().expect("seq"))
        .collect();
    let newest: Vec<u64> = mine.iter().rev().take(3).map(|a| a.sequence_number).collect();
    assert_eq!(seqs, newest);
    let before = page["older_before"].as_u64().expect("an older page");
    let older = get_json(addr, &format!("{path}?limit=100&before={before}")).await;
    assert_eq!(older["records"].as_array().expect("records").len(), mine.len() - 3);
    assert_eq!(older["older_before"], Value::Null, "the trim horizon ends the pages");

    // Oldest first, from a sequence, from a time; data decodes to what was sent.
    let first = get_json(addr, &format!("{path}?start=oldest&limit=1")).await;
    let r = &first["records"][0];
    let data =
        base64::engine::general_purpose::STANDARD.decode(r["data_base64"].as_str().expect("b64")).expect("decodes");
    let v: Value = serde_json::from_slice(&data).expect("the JSON that was sent");
    assert_eq!(v["item"], "cake");
    assert_eq!(first["next_sequence"], mine[0].sequence_number + 1);
    let from = get_json(addr, &format!("{path}?start=sequence&sequence={}&limit=2", mine[1].sequence_number)).await;
    assert_eq!(from["records"][0]["sequence_number"], mine[1].sequence_number);
    let at = r["arrival_timestamp_ms"].as_u64().expect("time");
    let by_time = get_json(addr, &format!("{path}?start=timestamp&timestamp_ms={at}&limit=1")).await;
    assert_eq!(by_time["records"][0]["sequence_number"], mine[0].sequence_number);

    // Search by partition key within a range.
    let key = r["partition_key"].as_str().expect("key").to_string();
    let expect: Vec<u64> = {
        let all = get_json(addr, &format!("{path}?start=oldest&limit=1000")).await;
        all["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|x| x["partition_key"] == key.as_str())
            .map(|x| x["sequence_number"].as_u64().expect("seq"))
            .collect()
    };
    let found = get_json(addr, &format!("{path}?start=oldest&key={key}&limit=100")).await;
    let got: Vec<u64> = found["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|x| x["sequence_number"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, expect);
    assert!(
        found["end_reached"].as_bool().expect("flag") && found["scanned"].as_u64() == Some(mine.len() as u64),
        "{found}"
    );
    let upto = expect[1];
    let ranged = get_json(addr, &format!("{path}?start=oldest&key={key}&to_sequence={upto}")).await;
    assert_eq!(ranged["records"].as_array().expect("records").len(), 1, "to_sequence is exclusive");

    // JSON lines.
    let dl = get(addr, &format!("{path}?start=oldest&limit=1000&format=jsonl")).await;
    assert_eq!(dl.status, 200);
    assert_eq!(dl.headers["content-type"], "application/x-ndjson");
    assert!(
        dl.headers["content-disposition"]
            .to_str()
            .expect("ascii")
            .starts_with("attachment; filename=\"orders-shardId-")
    );
    let lines: Vec<Value> = std::str::from_utf8(&dl.body)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), mine.len());
    assert_eq!(lines[0]["sequence_number"], mine[0].sequence_number);

    // Errors name what is wrong.
    let bad = get(addr, &format!("{path}?limit=0")).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("limit")));
    let bad = get(addr, &format!("{path}?start=sequence")).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("sequence")));
    let bad = get(addr, &format!("{path}?start=sequence&sequence=999999")).await;
    assert_eq!((bad.status, bad.json()["error"].as_str()), (416, Some("SequenceBeyondEnd")));
    let bad = get(addr, &format!("{path}?colour=blue")).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("query")));
    let missing = get(addr, "/api/v1/streams/nope").await;
    assert_eq!((missing.status, missing.json()["error"].as_str()), (404, Some("StreamNotFound")));
    let missing = get(addr, "/api/v1/streams/orders/shards/shardId-000000000009/records").await;
    assert_eq!((missing.status, missing.json()["error"].as_str()), (404, Some("ShardNotFound")));
    assert_eq!(get(addr, "/api/v1/nothing/here").await.status, 404);
    b.stop().await.expect("stop");
}

#[tokio::test]
async fn rates_follow_a_running_producer_and_readers() {
    let (b, _dir) = broker(fast(false)).await;
    let addr = b.http_addr;
    create(&b.endpoint(), "hot", 1).await;
    let producer = Producer::connect(&b.endpoint(), "hot", ProducerConfig::default()).await.expect("producer");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                producer.send(format!("k{sent}"), vec![7u8; 100]).await.expect("send").await.expect("ack");
                sent += 1;
            }
            producer.close().await.expect("close");
            sent
        }
    });
    let point = eventually("a throughput sample with records in", || async {
        let t = get_json(addr, "/api/v1/throughput").await;
        t["points"]
            .as_array()
            .expect("points")
            .iter()
            .rev()
            .find(|p| p["records_in_per_sec"].as_f64() > Some(0.0))
            .cloned()
    })
    .await;
    assert!(point["bytes_in_per_sec"].as_f64() >= point["records_in_per_sec"].as_f64().map(|r| r * 102.0), "{point}");
    let shard = eventually("per-shard write rate", || async {
        let st = get_json(addr, "/api/v1/streams/hot").await;
        let sh = st["shards"][0].clone();
        (sh["rates"]["write_records_per_sec"].as_f64() > Some(0.0)).then_some(sh)
    })
    .await;
    assert!(shard["write_quota_used"].as_f64() > Some(0.0), "{shard}");
    stop.cancel();
    let sent = running.await.expect("producer task");

    // A group reads everything: records out appear, in the totals too.
    let mut consumer = Consumer::join(&b.endpoint(), "hot", ConsumerConfig::new("readers")).await.expect("join");
    let mut read = 0u64;
    while read < sent {
        let records = consumer.poll().await.expect("poll");
        read += records.len() as u64;
        consumer.commit(&records).await.expect("commit");
    }
    eventually("records out", || async {
        let o = get_json(addr, "/api/v1/overview").await;
        (o["totals"]["read_records"].as_u64() >= Some(sent)).then_some(())
    })
    .await;
    let o = get_json(addr, "/api/v1/overview").await;
    assert_eq!(o["totals"]["write_records"], sent);
    consumer.leave().await.expect("leave");
    b.stop().await.expect("stop");
}

async fn group(addr: SocketAddr) -> Value {
    get_json(addr, "/api/v1/streams/jobs/groups/workers").await
}

#[tokio::test]
async fn group_lag_rises_while_its_consumer_is_stopped_and_falls_when_it_resumes() {
    let (b, _dir) = broker(fast(true)).await;
    let addr = b.http_addr;
    create(&b.endpoint(), "jobs", 2).await;
    let mut consumer = Consumer::join(&b.endpoint(), "jobs", ConsumerConfig::new("workers")).await.expect("join");
    let listed = get_json(addr, "/api/v1/groups").await;
    assert_eq!(listed["groups"][0]["group"], "workers");
    assert_eq!(listed["groups"][0]["members"], 1);

    // The consumer is stopped (joined, not polling): lag rises to what was put.
    let producer = Producer::connect(&b.endpoint(), "jobs", ProducerConfig::default()).await.expect("producer");
    for i in 0..30 {
        producer.send(format!("job-{i}"), "x").await.expect("send").await.expect("ack");
    }
    producer.close().await.expect("close");
    let g = eventually("lag of 30 in the history", || async {
        let g = group(addr).await;
        g["history"].as_array().expect("history").last().is_some_and(|p| p["lag_records"] == 30).then_some(g)
    })
    .await;
    assert_eq!(g["lag_records"], 30);
    assert!(g["lag_ms"].as_u64() > Some(0), "the oldest unprocessed record has an age: {g}");
    assert_eq!(g["members"][0]["member_id"], consumer.member_id());
    let per_shard: u64 =
        g["shards"].as_array().expect("shards").iter().map(|s| s["lag_records"].as_u64().expect("lag")).sum();
    assert_eq!(per_shard, 30);
    let last = g["history"].as_array().expect("history").last().cloned().expect("a point");
    assert_eq!(last["shards"].as_array().expect("per-shard lag").len(), 2);

    // A reset while the member lives is refused.
    let busy = change(addr, "POST", "/api/v1/streams/jobs/groups/workers/reset", json!({"to": "latest"})).await;
    assert_eq!((busy.status, busy.json()["error"].as_str()), (409, Some("GroupBusy")));

    // It resumes: lag falls to zero and the checkpoints reach the shards' ends.
    let mut done = 0;
    while done < 30 {
        let records = consumer.poll().await.expect("poll");
        done += records.len();
        consumer.commit(&records).await.expect("commit");
    }
    let g = eventually("lag back to 0 in the history", || async {
        let g = group(addr).await;
        g["history"].as_array().expect("history").last().is_some_and(|p| p["lag_records"] == 0).then_some(g)
    })
    .await;
    let st = get_json(addr, "/api/v1/streams/jobs").await;
    for (cp, sh) in g["shards"].as_array().expect("shards").iter().zip(st["shards"].as_array().expect("shards")) {
        assert_eq!(cp["checkpoint"], sh["next_sequence_number"]);
    }
    let peak = g["history"].as_array().expect("history").iter().map(|p| p["lag_records"].as_u64().expect("lag")).max();
    assert_eq!(peak, Some(30), "the history keeps the rise");

    // Without a member, a reset to the trim horizon brings the lag back.
    consumer.leave().await.expect("leave");
    let reset = change(addr, "POST", "/api/v1/streams/jobs/groups/workers/reset", json!({"to": "trim_horizon"})).await;
    assert_eq!(reset.status, 200, "{}", String::from_utf8_lossy(&reset.body));
    assert_eq!(reset.json()["lag_records"], 30);
    let bad = change(addr, "POST", "/api/v1/streams/jobs/groups/workers/reset", json!({"to": "sequence"})).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("shard_id")));
    b.stop().await.expect("stop");
}

#[tokio::test]
async fn changes_need_the_configuration_a_json_body_and_the_console_origin() {
    let (ro, _d1) = broker(fast(false)).await;
    let refused = change(ro.http_addr, "POST", "/api/v1/streams", json!({"name": "x", "shard_count": 1})).await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (403, Some("MutationsDisabled")));
    let refused =
        change(ro.http_addr, "POST", "/api/v1/streams/x/split", json!({"shard_id": "shardId-000000000000"})).await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (403, Some("MutationsDisabled")));
    assert_eq!(get_json(ro.http_addr, "/api/v1/streams").await["streams"], json!([]));
    ro.stop().await.expect("stop");

    let (b, _d2) = broker(fast(true)).await;
    let addr = b.http_addr;
    let form = request(
        addr,
        "POST",
        "/api/v1/streams",
        Some(json!({"name": "x", "shard_count": 1})),
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(form.status, 415, "a body a cross-site form could send is refused");
    let origin = format!("http://{addr}");
    let foreign = request(
        addr,
        "POST",
        "/api/v1/streams",
        Some(json!({"name": "x", "shard_count": 1})),
        &[("content-type", "application/json"), ("origin", "http://evil.example")],
    )
    .await;
    assert_eq!((foreign.status, foreign.json()["error"].as_str()), (403, Some("ForbiddenOrigin")));
    let created = request(
        addr,
        "POST",
        "/api/v1/streams",
        Some(json!({"name": "made-here", "shard_count": 3, "retention_hours": 48})),
        &[("content-type", "application/json"), ("origin", origin.as_str())],
    )
    .await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let st = get_json(addr, "/api/v1/streams/made-here").await;
    assert_eq!((st["open_shards"].as_u64(), st["retention_hours"].as_u64()), (Some(3), Some(48)));
    let again = change(addr, "POST", "/api/v1/streams", json!({"name": "made-here", "shard_count": 1})).await;
    assert_eq!((again.status, again.json()["error"].as_str()), (409, Some("StreamExists")));
    let bad = change(addr, "POST", "/api/v1/streams", json!({"name": "a b", "shard_count": 1})).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("stream_name")));
    let bad = change(addr, "POST", "/api/v1/streams", json!({"name": "y"})).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["message"].as_str().expect("message").contains("shard_count"), "{}", bad.json());

    let changed = change(addr, "PUT", "/api/v1/streams/made-here/retention", json!({"retention_hours": 72})).await;
    assert_eq!(changed.status, 200);
    assert_eq!(get_json(addr, "/api/v1/streams/made-here").await["retention_hours"], 72);
    let bad = change(addr, "PUT", "/api/v1/streams/made-here/retention", json!({"retention_hours": 2})).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("retention_hours")));

    // Resharding: a split in the middle, a merge of the children, a rescale;
    // the shard tree shows the closed parents and the children's parents.
    let split =
        change(addr, "POST", "/api/v1/streams/made-here/split", json!({"shard_id": "shardId-000000000000"})).await;
    assert_eq!(split.status, 200, "{}", String::from_utf8_lossy(&split.body));
    assert_eq!(split.json()["open_shards"], 4);
    let st = get_json(addr, "/api/v1/streams/made-here").await;
    let shard = |id: &str| st["shards"].as_array().expect("shards").iter().find(|s| s["shard_id"] == id).cloned();
    let parent = shard("shardId-000000000000").expect("the parent stays listed");
    assert_eq!((parent["state"].as_str(), parent["ending_sequence_number"].as_u64()), (Some("closed"), Some(0)));
    for child in ["shardId-000000000003", "shardId-000000000004"] {
        let c = shard(child).expect("a child");
        assert_eq!((c["state"].as_str(), c["parent_shard_id"].as_str()), (Some("open"), Some("shardId-000000000000")));
    }
    let again =
        change(addr, "POST", "/api/v1/streams/made-here/split", json!({"shard_id": "shardId-000000000000"})).await;
    assert_eq!(again.status / 100, 4, "a closed shard cannot be split: {}", String::from_utf8_lossy(&again.body));
    let merged = change(
        addr,
        "POST",
        "/api/v1/streams/made-here/merge",
        json!({"shard_id": "shardId-000000000003", "adjacent_shard_id": "shardId-000000000004"}),
    )
    .await;
    assert_eq!(merged.status, 200, "{}", String::from_utf8_lossy(&merged.body));
    assert_eq!(merged.json()["open_shards"], 3);
    let m = get_json(addr, "/api/v1/streams/made-here").await;
    let child =
        m["shards"].as_array().expect("shards").iter().find(|s| s["shard_id"] == "shardId-000000000005").cloned();
    let child = child.expect("the merge child");
    assert_eq!(
        (child["parent_shard_id"].as_str(), child["adjacent_parent_shard_id"].as_str()),
        (Some("shardId-000000000003"), Some("shardId-000000000004"))
    );
    let scaled = change(addr, "POST", "/api/v1/streams/made-here/scale", json!({"target_shard_count": 6})).await;
    assert_eq!((scaled.status, scaled.json()["open_shards"].as_u64()), (200, Some(6)));
    let bad = change(addr, "POST", "/api/v1/streams/made-here/scale", json!({"target_shard_count": 13})).await;
    assert_eq!((bad.status, bad.json()["field"].as_str()), (400, Some("target_shard_count")));
    b.stop().await.expect("stop");
}

#[tokio::test]
async fn dead_letters_show_their_errors_and_replay_to_their_source() {
    let (b, _dir) = broker(fast(true)).await;
    let addr = b.http_addr;
    create(&b.endpoint(), "payments", 1).await;
    create(&b.endpoint(), "payments-dlq", 1).await;
    let dlq = Producer::connect(&b.endpoint(), "payments-dlq", ProducerConfig::default()).await.expect("producer");
    let letter = json!({
        "record": "{\"amount\":12}", "encoding": "utf8", "partitionKey": "pay-7", "shardId": "shardId-000000000000",
        "sequenceNumber": 41, "error": "card declined", "kind": "permanent_http", "permanent": true, "attempts": 1,
    });
    let ack = dlq.send("pay-7", letter.to_string()).await.expect("send").await.expect("ack");
    dlq.close().await.expect("close");

    let list = get_json(addr, "/api/v1/dead-letters").await;
    assert_eq!(
        list["streams"],
        json!([{"stream": "payments-dlq", "source": "payments", "source_exists": true, "records": 1,
        "bytes": list["streams"][0]["bytes"], "newest_arrival_ms": list["streams"][0]["newest_arrival_ms"]}])
    );
    let d = get_json(addr, "/api/v1/dead-letters/payments-dlq").await;
    let entry = &d["dead_letters"][0];
    assert_eq!((entry["error"].as_str(), entry["kind"].as_str()), (Some("card declined"), Some("permanent_http")));
    assert_eq!((entry["attempts"].as_u64(), entry["source_sequence_number"].as_u64()), (Some(1), Some(41)));
    assert_eq!(entry["payload"], "{\"amount\":12}");

    let replayed = change(
        addr,
        "POST",
        "/api/v1/dead-letters/payments-dlq/replay",
        json!({"shard_id": ack.shard_id, "sequence_number": ack.sequence_number}),
    )
    .await;
    assert_eq!(replayed.status, 200, "{}", String::from_utf8_lossy(&replayed.body));
    let r = replayed.json();
    assert_eq!(r["stream"], "payments");
    let page = get_json(addr, "/api/v1/streams/payments/shards/shardId-000000000000/records").await;
    let rec = &page["records"][0];
    assert_eq!(
        (rec["sequence_number"].clone(), rec["partition_key"].as_str()),
        (r["sequence_number"].clone(), Some("pay-7"))
    );
    let data =
        base64::engine::general_purpose::STANDARD.decode(rec["data_base64"].as_str().expect("b64")).expect("b64");
    assert_eq!(data, b"{\"amount\":12}", "the original record, not the dead letter");
    let nothing = change(
        addr,
        "POST",
        "/api/v1/dead-letters/payments-dlq/replay",
        json!({"shard_id": ack.shard_id, "sequence_number": 5}),
    )
    .await;
    assert_eq!(nothing.status, 416, "{}", String::from_utf8_lossy(&nothing.body));
    let not_dlq = get(addr, "/api/v1/dead-letters/payments").await;
    assert_eq!((not_dlq.status, not_dlq.json()["field"].as_str()), (400, Some("stream")));
    b.stop().await.expect("stop");
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_under_a_strict_policy_and_can_be_turned_off() {
    let (b, _dir) = broker(fast(false)).await;
    let page = get(b.http_addr, "/ui").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].to_str().expect("ascii").starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let html = String::from_utf8(page.body.to_vec()).expect("utf-8");
    assert!(html.contains("/ui/app.js") && !html.contains("https://"), "no external resources");
    let js = get(b.http_addr, "/ui/app.js").await;
    assert_eq!(
        (js.status, js.headers["content-type"].to_str().expect("ascii")),
        (200, "text/javascript; charset=utf-8")
    );
    assert_eq!(get(b.http_addr, "/ui/style.css").await.status, 200);
    assert_eq!(get(b.http_addr, "/ui/secret.txt").await.status, 404);
    assert_eq!(get(b.http_addr, "/orders-unconfigured").await.status, 404);
    let orders = get(b.http_addr, "/api/v1/orders").await;
    assert_eq!((orders.status, orders.json()["error"].as_str()), (503, Some("OrderServiceUnavailable")));
    b.stop().await.expect("stop");

    let (off, _d) = broker(ConsoleConfig { enabled: false, ..ConsoleConfig::default() }).await;
    assert_eq!(get(off.http_addr, "/ui").await.status, 404);
    assert_eq!(get(off.http_addr, "/api/v1/overview").await.status, 404);
    assert_eq!(get(off.http_addr, "/healthz").await.status, 200);
    off.stop().await.expect("stop");
}
