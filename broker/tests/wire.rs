//! The framed produce protocol (`proto::wire`) through a real listener on
//! 127.0.0.1:0, spoken byte by byte by a raw test client, so that every
//! malformed frame can be sent: acknowledged records are the ones read
//! back over gRPC, answers come in request order, a bad request fails
//! alone naming its field, a bad frame ends the connection after the
//! answers before it, and authentication, authorization and quotas are
//! the gRPC API's. Through the client library, every record acknowledged
//! before a `kill -9` of the real binary is there after the restart.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker::clock::{ManualClock, SystemClock};
use broker::config::BrokerConfig;
use broker::testing::History;
use broker::testing::TestBroker;
use bytes::{BufMut, Bytes, BytesMut};
use client::{Access, ConnectOptions, Connection, Secret, WireProducer, allow};
use common::process::Process;
use common::*;
use proto::v1 as pb;
use proto::wire::{self, Record, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(30);

/// A client that writes frames (or any bytes) and reads answers.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(broker: &TestBroker) -> Self {
        let addr = broker.wire_addr.expect("the wire listener is on by default");
        Self { stream: TcpStream::connect(addr).await.expect("connect"), buf: BytesMut::new() }
    }

    /// Opens a connection and says HELLO; the broker's READY.
    async fn hello(broker: &TestBroker, token: Option<&Secret>) -> (Self, Response) {
        let mut raw = Self::open(broker).await;
        raw.send(&[Request::Hello { version: wire::VERSION, token: token.map(|t| t.expose().to_string()) }]).await;
        let ready = raw.next().await.expect("an answer to HELLO");
        (raw, ready)
    }

    async fn send(&mut self, requests: &[Request]) {
        let mut out = BytesMut::new();
        for r in requests {
            r.encode(&mut out).expect("encodes");
        }
        self.write(&out).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next answer, or `None` once the broker closed the connection.
    async fn next(&mut self) -> Option<Response> {
        tokio::time::timeout(BOUND, async {
            loop {
                if let Some(frame) = wire::next_frame(&mut self.buf, 1 << 20).expect("a well-formed answer") {
                    return Some(Response::decode(frame).expect("an answer that decodes"));
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the broker answers or closes within the bound")
    }
}

fn record(key: &str, data: &[u8]) -> Record {
    Record { partition_key: key.into(), explicit_hash_key: None, data: Bytes::copy_from_slice(data) }
}

fn put(id: u64, stream: &str, key: &str, data: &[u8]) -> Request {
    Request::PutRecord { id, stream: stream.into(), record: record(key, data) }
}

/// The (kind, message) of an `ERROR` answer for request `id`.
fn error_of(r: Option<Response>, id: u64) -> (String, String, u64) {
    match r {
        Some(Response::Error { id: got, kind, message, retry_after_ms }) => {
            assert_eq!(got, id, "{kind}: {message}");
            (kind, message, retry_after_ms)
        }
        other => panic!("expected an ERROR for request {id}, got {other:?}"),
    }
}

fn lifted(name: &str, shards: u32) -> pb::CreateStreamRequest {
    pb::CreateStreamRequest {
        stream_name: name.into(),
        shard_count: shards,
        quota_overrides: Some(pb::Quotas {
            write_records_per_sec: Some(1_000_000),
            write_bytes_per_sec: Some(1 << 30),
            read_calls_per_sec: Some(100_000),
            read_bytes_per_sec: Some(1 << 30),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn pipelined_records_are_answered_in_order_and_read_back() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_with(&mut c, lifted("orders", 2)).await;
    let (mut raw, ready) = Raw::hello(&broker, None).await;
    let limits = BrokerConfig::default().limits;
    assert_eq!(
        ready,
        Response::Ready {
            version: wire::VERSION,
            max_frame_bytes: limits.grpc_max_message_bytes as u32,
            in_flight: limits.produce_stream_in_flight as u32,
        }
    );

    // 300 requests in one write: more than the in-flight window, so the
    // broker must stop reading and resume as answers leave.
    let mut requests: Vec<Request> =
        (1..=299u64).map(|i| put(i, "orders", &format!("key-{}", i % 17), format!("r{i}").as_bytes())).collect();
    let batch = (0..5).map(|j| record(&format!("batch-{j}"), format!("b{j}").as_bytes())).collect();
    requests.push(Request::PutRecords { id: 300, stream: "orders".into(), records: batch });
    raw.send(&requests).await;

    let mut acked: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut in_order = |shard: &str, seq: u64| {
        if let Some(prev) = last.insert(shard.to_string(), seq) {
            assert!(seq > prev, "{shard}: {seq} acknowledged after {prev}");
        }
    };
    for i in 1..=299u64 {
        match raw.next().await {
            Some(Response::Record { id, appended }) => {
                assert_eq!(id, i, "answers in request order");
                in_order(&appended.shard_id, appended.sequence_number);
                acked.insert((appended.shard_id, appended.sequence_number), format!("r{i}").into_bytes());
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    match raw.next().await {
        Some(Response::Records { id: 300, results }) => {
            assert_eq!(results.len(), 5);
            for (j, r) in results.into_iter().enumerate() {
                let a = r.expect("every record of the batch stored");
                in_order(&a.shard_id, a.sequence_number);
                acked.insert((a.shard_id, a.sequence_number), format!("b{j}").into_bytes());
            }
        }
        other => panic!("the batch: {other:?}"),
    }

    // Every acknowledged record is where its answer said, with its data.
    let mut stored = BTreeMap::new();
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let it = iterator(&mut c, "orders", shard, pb::IteratorType::TrimHorizon, None, None).await;
        for r in drain(&mut c, it, 10_000).await {
            stored.insert((shard.to_string(), r.sequence_number), r.data.to_vec());
        }
    }
    assert_eq!(stored, acked, "the shards hold exactly the acknowledged records");
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn a_bad_request_fails_alone_and_names_its_field() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_with(&mut c, lifted("orders", 1)).await;
    let (mut raw, _) = Raw::hello(&broker, None).await;
    let bad_hash = Record { explicit_hash_key: Some("not-a-number".into()), ..record("k", b"x") };
    raw.send(&[
        put(1, "orders", "", b"empty key"),
        Request::PutRecords { id: 2, stream: "orders".into(), records: vec![record("k", b"a"), bad_hash] },
        put(3, "missing", "k", b"no such stream"),
        put(4, "Bad Name!", "k", b"x"),
        Request::PutRecords { id: 5, stream: "orders".into(), records: Vec::new() },
        put(6, "orders", "k", b"fine"),
        Request::Ping { id: 7 },
    ])
    .await;
    let (kind, message, _) = error_of(raw.next().await, 1);
    assert_eq!(kind, "InvalidArgument");
    assert!(message.contains("partition_key") && !message.contains("records[0]"), "{message}");
    let (kind, message, _) = error_of(raw.next().await, 2);
    assert_eq!(kind, "InvalidArgument");
    assert!(message.contains("records[1].explicit_hash_key"), "{message}");
    let (kind, message, _) = error_of(raw.next().await, 3);
    assert_eq!(kind, "StreamNotFound");
    assert!(message.contains("missing"), "{message}");
    let (kind, message, _) = error_of(raw.next().await, 4);
    assert_eq!(kind, "InvalidArgument");
    assert!(message.contains("stream_name"), "{message}");
    let (kind, message, _) = error_of(raw.next().await, 5);
    assert_eq!(kind, "InvalidArgument");
    assert!(message.contains("records"), "{message}");
    // The connection goes on: the last request is stored.
    assert!(matches!(raw.next().await, Some(Response::Record { id: 6, .. })));
    assert_eq!(raw.next().await, Some(Response::Pong { id: 7 }), "a PING is answered in order");
    let it = iterator(&mut c, "orders", "shardId-000000000000", pb::IteratorType::TrimHorizon, None, None).await;
    let data: Vec<_> = drain(&mut c, it, 100).await.into_iter().map(|r| r.data).collect();
    assert_eq!(data, vec![Bytes::from_static(b"fine")], "nothing of a refused request was stored");
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn a_bad_frame_ends_the_connection_after_the_answers_before_it() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    create_with(&mut c, lifted("orders", 1)).await;

    // An unknown kind after a good request.
    let (mut raw, _) = Raw::hello(&broker, None).await;
    raw.send(&[put(1, "orders", "k", b"before")]).await;
    raw.write(&[0, 0, 0, 1, 9]).await;
    assert!(matches!(raw.next().await, Some(Response::Record { id: 1, .. })));
    let (kind, message, _) = error_of(raw.next().await, 0);
    assert_eq!(kind, "InvalidArgument");
    assert!(message.contains("kind"), "{message}");
    assert_eq!(raw.next().await, None, "the broker closed the connection");

    // A length over the broker's limit is refused before it is buffered.
    let (mut raw, _) = Raw::hello(&broker, None).await;
    raw.write(&u32::MAX.to_be_bytes()).await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("frame length") && message.contains("more than the broker's"), "{message}");
    assert_eq!(raw.next().await, None);

    // A record cut short names the field it ends in.
    let (mut raw, _) = Raw::hello(&broker, None).await;
    let mut frame = BytesMut::new();
    put(7, "orders", "k", b"0123456789").encode(&mut frame).expect("encodes");
    let short = frame.len() - 4;
    let mut cut = BytesMut::new();
    cut.put_u32((short - wire::LENGTH_BYTES) as u32);
    cut.extend_from_slice(&frame[wire::LENGTH_BYTES..short]);
    raw.write(&cut).await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("data") && message.contains("short"), "{message}");

    // HELLO first, once, and in a version the broker speaks.
    let mut raw = Raw::open(&broker).await;
    raw.send(&[put(1, "orders", "k", b"x")]).await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("HELLO"), "{message}");
    let mut raw = Raw::open(&broker).await;
    raw.send(&[Request::Hello { version: 99, token: None }]).await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("version") && message.contains("99"), "{message}");
    let (mut raw, _) = Raw::hello(&broker, None).await;
    raw.send(&[Request::Hello { version: wire::VERSION, token: None }]).await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("once"), "{message}");
    // Someone speaking HTTP/2 to this port.
    let mut raw = Raw::open(&broker).await;
    raw.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let (_, message, _) = error_of(raw.next().await, 0);
    assert!(message.contains("frame length"), "{message}");

    let it = iterator(&mut c, "orders", "shardId-000000000000", pb::IteratorType::TrimHorizon, None, None).await;
    let data: Vec<_> = drain(&mut c, it, 100).await.into_iter().map(|r| r.data).collect();
    assert_eq!(data, vec![Bytes::from_static(b"before")]);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn records_over_the_shard_quota_fail_alone_with_a_retry_hint() {
    // A clock that stands still: the quota does not refill during the test.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, Arc::new(ManualClock::new(1_800_000_000_000))).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "orders", 1).await;
    let (mut raw, _) = Raw::hello(&broker, None).await;
    // 1,500 records against the default 1,000 records/s of one shard.
    let requests: Vec<Request> = (0..3u64)
        .map(|b| Request::PutRecords {
            id: b + 1,
            stream: "orders".into(),
            records: (0..500).map(|i| record(&format!("k{i}"), b"x")).collect(),
        })
        .collect();
    raw.send(&requests).await;
    let (mut stored, mut throttled) = (0, 0);
    for id in 1..=3 {
        let Some(Response::Records { id: got, results }) = raw.next().await else { panic!("batch {id}") };
        assert_eq!(got, id);
        for r in results {
            match r {
                Ok(_) => stored += 1,
                Err(f) => {
                    assert_eq!(f.error_code, "ProvisionedThroughputExceeded", "{f:?}");
                    assert!(f.retry_after_ms > 0, "{f:?}");
                    throttled += 1;
                }
            }
        }
    }
    assert_eq!((stored, throttled), (1000, 500));
    // A single record over quota is PutRecord's error, with the hint.
    raw.send(&[put(9, "orders", "k", b"x")]).await;
    let (kind, _, retry_after_ms) = error_of(raw.next().await, 9);
    assert_eq!(kind, "Throttled");
    assert!(retry_after_ms > 0);
    broker.stop().await.expect("stop");
}

/// `kill -9` of the real binary while tasks put single records through
/// [`client::WireProducer`]: after a restart every acknowledged record is
/// read back at its acknowledged position with its data, checked by the
/// history checker (whose own tests show it reports loss).
#[tokio::test]
async fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path());
    let mut c = connect(p.endpoint.clone()).await;
    create(&mut c, "orders", 2).await;
    let wire_addr = p.wire_addr.expect("the wire listener").to_string();
    let producer = WireProducer::connect(&wire_addr, &ConnectOptions::default()).await.expect("connect");
    let history = Arc::new(History::new());
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (producer, history, acked) = (producer.clone(), history.clone(), acked.clone());
        tasks.spawn(async move {
            let key = format!("key-{t}");
            let mut n = 0u64;
            loop {
                n += 1;
                let data = format!("{t}-{n}");
                match producer.put_record("orders", &key, Bytes::from(data.clone())).await {
                    Ok(ack) => {
                        history.produced(&key, &ack.shard_id, ack.sequence_number, data.as_bytes());
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    // The broker died: this call may or may not have been stored.
                    Err(e) => return e,
                }
            }
        });
    }
    let started = std::time::Instant::now();
    while acked.load(Ordering::Relaxed) < 2_000 {
        assert!(started.elapsed() < BOUND, "2,000 acknowledgements within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.kill9();
    while let Some(ended) = tokio::time::timeout(BOUND, tasks.join_next()).await.expect("producers end") {
        let e = ended.expect("producer task");
        assert!(matches!(e, client::Error::Unavailable(_)), "{e:?}");
    }

    let p = Process::start(dir.path());
    let mut c = connect(p.endpoint.clone()).await;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let it = iterator(&mut c, "orders", shard, pb::IteratorType::TrimHorizon, None, None).await;
        for r in drain(&mut c, it, 10_000).await {
            history.handled("reader", 0, shard, r.sequence_number, &r.partition_key, &r.data);
        }
    }
    let report = history.check();
    println!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.acked >= 2_000, "{report}");
}

/// A broker with authentication on, and its bootstrap admin's token.
async fn secured(dir: &Path) -> (TestBroker, Secret) {
    let bootstrap = broker::auth::token::generate().expect("a random token").token;
    let file = dir.join("admin.token");
    std::fs::write(&file, format!("{bootstrap}\n")).expect("write the bootstrap token");
    let mut c = BrokerConfig { data_dir: dir.join("data"), ..BrokerConfig::default() };
    c.auth.enabled = true;
    c.auth.bootstrap_token_file = Some(file);
    c.auth.recheck_interval_ms = 200;
    c.quotas.enforce = false;
    (TestBroker::start_with(c, Arc::new(SystemClock)).await, Secret::new(bootstrap))
}

#[tokio::test]
async fn callers_are_authenticated_once_and_authorized_per_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, bootstrap) = secured(dir.path()).await;
    let options = ConnectOptions { token: Some(bootstrap.clone()), ..ConnectOptions::default() };
    let conn = Connection::open(&broker.endpoint(), &options).await.expect("connect");
    let (admin, access) = (client::Admin::from_channel(conn.clone()), Access::from_channel(conn));
    for name in ["orders", "audit"] {
        admin
            .create_stream(pb::CreateStreamRequest { stream_name: name.into(), shard_count: 1, ..Default::default() })
            .await
            .expect("create");
    }
    access.create_principal("shop", "test").await.expect("principal");
    access.add_grant(allow("shop", "record:put", "stream:orders")).await.expect("grant");
    let (info, token) = access.create_token("shop", "test", None).await.expect("token");

    // No token, or a bad one: refused at HELLO, and the connection closes.
    let (mut raw, refused) = Raw::hello(&broker, None).await;
    let (kind, _, _) = error_of(Some(refused), 0);
    assert_eq!(kind, "Unauthenticated");
    assert_eq!(raw.next().await, None);
    let (_, refused) = Raw::hello(&broker, Some(&Secret::new("sbk_nope_nope"))).await;
    assert_eq!(error_of(Some(refused), 0).0, "Unauthenticated");

    // The principal may put to one stream and not the other; the connection goes on.
    let (mut raw, ready) = Raw::hello(&broker, Some(&token)).await;
    assert!(matches!(ready, Response::Ready { .. }), "{ready:?}");
    raw.send(&[put(1, "audit", "k", b"x"), put(2, "orders", "k", b"x")]).await;
    let (kind, message, _) = error_of(raw.next().await, 1);
    assert_eq!(kind, "PermissionDenied");
    assert!(message.contains("audit"), "{message}");
    assert!(matches!(raw.next().await, Some(Response::Record { id: 2, .. })));

    // A revoked token ends the connection within the re-check interval.
    access.revoke_token(&info.id).await.expect("revoke");
    assert_eq!(error_of(raw.next().await, 0).0, "Unauthenticated");
    assert_eq!(raw.next().await, None);

    let (_, metrics) = http_get_with_token(&broker, &bootstrap).await;
    assert!(
        metrics.lines().any(|l| l.contains("listener=\"wire\"") && l.contains("unauthenticated")),
        "refusals on the wire listener are counted:\n{}",
        metrics.lines().filter(|l| l.contains("refus")).collect::<Vec<_>>().join("\n")
    );
    broker.stop().await.expect("stop");
}

/// `GET /metrics` with a bearer token.
async fn http_get_with_token(broker: &TestBroker, token: &Secret) -> (u16, String) {
    let mut s = TcpStream::connect(broker.http_addr).await.expect("connect admin port");
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.expose()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    let status = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body)
}
