//! Authentication and authorization through the real APIs: gRPC (the
//! client library), the admin port (HTTP) and the Kinesis API (HTTP,
//! strict SigV4 with access keys mapped to principals).
//!
//! - Every gRPC method the protos declare refuses an anonymous caller while
//!   authentication is on (the health service excepted), as do `/metrics`
//!   and the Kinesis API.
//! - The principals × actions × resources matrix (exact names, prefixes,
//!   an explicit deny, a stream that does not exist) against a table
//!   written out by hand, through gRPC, HTTP and the Kinesis API.
//! - Tokens: malformed, unknown, expired and revoked ones are refused; a
//!   revocation ends a running subscription, Produce stream and group long
//!   poll within the re-check interval.
//! - Mutual TLS names the principal; the per-principal rate refuses with a
//!   retry hint; everything refused is counted on `/metrics`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::{AccessKey, BrokerConfig, KinesisAuth};
use broker::testing::TestBroker;
use client::types as pb;
use client::{Access, Admin, ConnectOptions, Connection, Error, Secret, allow, deny};
use common::process::Process;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const BOUND: Duration = Duration::from_secs(30);

/// A broker with authentication on, and its bootstrap admin's token.
struct Secured {
    b: TestBroker,
    bootstrap: Secret,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start(tweak: impl FnOnce(&mut BrokerConfig, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = broker::auth::token::generate().expect("a random token").token;
        let file = dir.path().join("admin.token");
        std::fs::write(&file, format!("{bootstrap}\n")).expect("write the bootstrap token");
        let mut c = BrokerConfig { data_dir: dir.path().join("data"), ..BrokerConfig::default() };
        c.auth.enabled = true;
        c.auth.bootstrap_token_file = Some(file);
        c.auth.recheck_interval_ms = 200;
        c.quotas.enforce = false;
        tweak(&mut c, dir.path());
        let b = TestBroker::start_with(c, Arc::new(SystemClock)).await;
        Self { b, bootstrap: Secret::new(bootstrap), _dir: dir }
    }

    fn addr(&self) -> String {
        format!("http://{}", self.b.grpc_addr)
    }

    async fn conn(&self, token: Option<&Secret>) -> Connection {
        let options = ConnectOptions { token: token.cloned(), ..ConnectOptions::default() };
        Connection::open(&self.addr(), &options).await.expect("connect")
    }

    async fn admin(&self) -> (Admin, Access) {
        let c = self.conn(Some(&self.bootstrap)).await;
        (Admin::from_channel(c.clone()), Access::from_channel(c))
    }

    /// A principal with these grants, and a token for it.
    async fn principal(&self, name: &str, grants: &[pb::Grant]) -> Secret {
        let (_, access) = self.admin().await;
        access.create_principal(name, "test").await.expect("create principal");
        for g in grants {
            assert!(access.add_grant(g.clone()).await.expect("grant"));
        }
        access.create_token(name, "test", None).await.expect("token").1
    }

    async fn metrics(&self) -> String {
        let (code, body) =
            http(self.b.http_addr, "GET", "/metrics", &[("authorization", &bearer(&self.bootstrap))], b"").await;
        assert_eq!(code, 200, "{body}");
        body
    }
}

fn bearer(t: &Secret) -> String {
    format!("Bearer {}", t.expose())
}

/// One HTTP/1.1 request; status and body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut raw)).await.expect("answer within the bound").expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Every gRPC method of a proto file, as `/package.Service/Method`.
fn methods(proto: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut service = "";
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap_or_default().trim();
            out.push(format!("/streambroker.v1.{service}/{name}"));
        }
    }
    out
}

fn is_permission_denied(e: &Error) -> bool {
    matches!(e, Error::PermissionDenied(_))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_anonymous_call_is_refused_when_authentication_is_on() {
    let s = Secured::start(|_, _| {}).await;
    let mut paths = methods(include_str!("../../proto/proto/streambroker/v1/broker.proto"));
    paths.extend(methods(include_str!("../../proto/proto/streambroker/v1/access.proto")));
    assert!(paths.len() >= 30, "the protos declare the API: {paths:?}");
    let channel = tonic::transport::Channel::from_shared(s.addr()).expect("uri").connect().await.expect("connect");
    for path in &paths {
        // The refusal comes before any decoding, so one message type does for every method.
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let codec = tonic_prost::ProstCodec::<pb::ListStreamsRequest, pb::ListStreamsResponse>::default();
        let at: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
        let status = grpc
            .unary(tonic::Request::new(pb::ListStreamsRequest::default()), at, codec)
            .await
            .expect_err(&format!("{path} refuses an anonymous caller"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{path}: {status:?}");
    }
    // The health service stays open, for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: "streambroker.v1.StreamBroker".into() })
        .await
        .expect("health check without credentials")
        .into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // The admin port: health open, metrics closed.
    assert_eq!(http(s.b.http_addr, "GET", "/healthz", &[], b"").await.0, 200);
    let (code, body) = http(s.b.http_addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 401, "{body}");
    // The Kinesis API (permissive signatures name no principal).
    let kinesis = s.b.kinesis_addr.expect("Kinesis API");
    let (code, body) = kinesis_call(kinesis, "ListStreams", "{}", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("UnrecognizedClientException"), "{body}");
    let metrics = s.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"stream_broker_refusals_total{listener="grpc",reason="unauthenticated"}"#))
        .unwrap_or_else(|| panic!("refusals counted: {metrics}"));
    let counted: usize = line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("a count");
    assert_eq!(counted, paths.len(), "{line}");
    for (listener, n) in [("admin", 1), ("kinesis", 1)] {
        let want = format!(r#"stream_broker_refusals_total{{listener="{listener}",reason="unauthenticated"}} {n}"#);
        assert!(metrics.lines().any(|l| l == want), "{want} in {metrics}");
    }
    s.b.stop().await.expect("stop");
}

/// `ListStreams`-style Kinesis call: with `key` as (id, secret) signed in
/// strict SigV4, else with a well-formed but unverified signature.
async fn kinesis_call(
    addr: std::net::SocketAddr,
    operation: &str,
    body: &str,
    key: Option<(&str, &str)>,
) -> (u16, String) {
    let host = addr.to_string();
    let target = format!("Kinesis_20131202.{operation}");
    let amz_date = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let scope = format!("{date}/us-east-1/kinesis/aws4_request");
    let (id, secret) = key.unwrap_or(("AKIDANONYMOUS", "unused"));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let canonical = format!(
        "POST\n/\n\nhost:{host}\nx-amz-date:{amz_date}\nx-amz-target:{target}\n\nhost;x-amz-date;x-amz-target\n{}",
        hex(&Sha256::digest(body.as_bytes()))
    );
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let mut k = mac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in ["us-east-1", "kinesis", "aws4_request"] {
        k = mac(&k, part.as_bytes());
    }
    let signature = hex(&mac(&k, to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={id}/{scope}, SignedHeaders=host;x-amz-date;x-amz-target, Signature={signature}"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST / HTTP/1.1\r\nhost: {host}\r\nx-amz-date: {amz_date}\r\nx-amz-target: {target}\r\n\
         content-type: application/x-amz-json-1.1\r\nauthorization: {authorization}\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut raw)).await.expect("answer").expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The resources of the matrix: an exact name, a name matched by prefix,
/// a stream nobody but ops and admin has a grant for, and one that does not exist.
const RESOURCES: [&str; 4] = ["orders", "orders-eu", "other", "ghost"];

/// The expected table, by hand: for each principal and action, A (allowed)
/// or D (denied) on each of [`RESOURCES`] (one letter for cluster actions).
/// `stream:delete` runs last, since an allowed delete removes the stream.
const EXPECTED: &[(&str, &str, &str)] = &[
    // writer: record:put on stream:orders (exact); describing is implied.
    ("writer", "stream:create", "DDDD"),
    ("writer", "stream:describe", "ADDD"),
    ("writer", "stream:configure", "DDDD"),
    ("writer", "record:put", "ADDD"),
    ("writer", "record:get", "DDDD"),
    ("writer", "group:read", "DDDD"),
    ("writer", "group:commit", "DDDD"),
    ("writer", "group:admin", "DDDD"),
    ("writer", "admin:repair", "D"),
    ("writer", "admin:auth", "D"),
    ("writer", "admin:metrics", "D"),
    ("writer", "admin:console", "D"),
    ("writer", "stream:delete", "DDDD"),
    // reader: record:get on stream:orders*, group:read on group:orders*,
    // group:commit on group:orders-eu/*.
    ("reader", "stream:create", "DDDD"),
    ("reader", "stream:describe", "AADD"),
    ("reader", "stream:configure", "DDDD"),
    ("reader", "record:put", "DDDD"),
    ("reader", "record:get", "AADD"),
    ("reader", "group:read", "AADD"),
    ("reader", "group:commit", "DADD"),
    ("reader", "group:admin", "DDDD"),
    ("reader", "admin:repair", "D"),
    ("reader", "admin:auth", "D"),
    ("reader", "admin:metrics", "D"),
    ("reader", "admin:console", "D"),
    ("reader", "stream:delete", "DDDD"),
    // ops: stream:* on stream:*, but deny stream:delete on stream:orders;
    // group:admin on group:other/*; admin:metrics.
    ("ops", "stream:create", "AAAA"),
    ("ops", "stream:describe", "AAAA"),
    ("ops", "stream:configure", "AAAA"),
    ("ops", "record:put", "DDDD"),
    ("ops", "record:get", "DDDD"),
    ("ops", "group:read", "DDDD"),
    ("ops", "group:commit", "DDDD"),
    ("ops", "group:admin", "DDAD"),
    ("ops", "admin:repair", "D"),
    ("ops", "admin:auth", "D"),
    ("ops", "admin:metrics", "A"),
    ("ops", "admin:console", "D"),
    ("ops", "stream:delete", "DAAA"),
    // nobody: a principal without grants.
    ("nobody", "stream:create", "DDDD"),
    ("nobody", "stream:describe", "DDDD"),
    ("nobody", "stream:configure", "DDDD"),
    ("nobody", "record:put", "DDDD"),
    ("nobody", "record:get", "DDDD"),
    ("nobody", "group:read", "DDDD"),
    ("nobody", "group:commit", "DDDD"),
    ("nobody", "group:admin", "DDDD"),
    ("nobody", "admin:repair", "D"),
    ("nobody", "admin:auth", "D"),
    ("nobody", "admin:metrics", "D"),
    ("nobody", "admin:console", "D"),
    ("nobody", "stream:delete", "DDDD"),
    // admin: the bootstrap token, allowed everything.
    ("admin", "stream:create", "AAAA"),
    ("admin", "stream:describe", "AAAA"),
    ("admin", "stream:configure", "AAAA"),
    ("admin", "record:put", "AAAA"),
    ("admin", "record:get", "AAAA"),
    ("admin", "group:read", "AAAA"),
    ("admin", "group:commit", "AAAA"),
    ("admin", "group:admin", "AAAA"),
    ("admin", "admin:repair", "A"),
    ("admin", "admin:auth", "A"),
    ("admin", "admin:metrics", "A"),
    ("admin", "admin:console", "A"),
    ("admin", "stream:delete", "AAAA"),
];

/// Runs `action` on `resource` as `token` through gRPC (and HTTP for
/// `admin:metrics`, only HTTP for `admin:console`): A when the broker let it through (whatever else
/// happened: a missing stream, an existing one), D when it answered
/// PERMISSION_DENIED.
async fn attempt(s: &Secured, token: &Secret, action: &str, resource: &str) -> char {
    let conn = s.conn(Some(token)).await;
    let admin = Admin::from_channel(conn.clone());
    let verdict = |r: Result<(), Error>| match r {
        Err(e) if is_permission_denied(&e) => 'D',
        Err(Error::Unauthenticated(m)) => panic!("{action} on {resource}: the token was refused: {m}"),
        _ => 'A',
    };
    let stream = resource.to_string();
    match action {
        "stream:create" => verdict(
            admin
                .create_stream(pb::CreateStreamRequest { stream_name: stream, shard_count: 1, ..Default::default() })
                .await
                .map(drop),
        ),
        "stream:describe" => verdict(admin.describe_stream(&stream).await.map(drop)),
        "stream:configure" => {
            // Every call that changes a stream's settings or shards: they
            // must agree. Arguments the broker refuses after authorizing
            // (an unknown shard, zero shards) keep an allowed call harmless.
            let calls = [
                verdict(admin.update_retention(&stream, 24).await.map(drop)),
                verdict(admin.update_quotas(&stream, pb::Quotas::default()).await.map(drop)),
                verdict(admin.split_shard(&stream, "shardId-000000000099", 1).await.map(drop)),
                verdict(admin.merge_shards(&stream, "shardId-000000000098", "shardId-000000000099").await.map(drop)),
                verdict(admin.update_shard_count(&stream, 0).await.map(drop)),
            ];
            agree("stream:configure", &stream, &calls)
        }
        "stream:delete" => verdict(admin.delete_stream(&stream).await),
        "record:put" => {
            let req = pb::PutRecordsRequest { stream_name: stream, records: vec![common::entry("k", b"matrix")] };
            verdict(admin.streams().put_records(req).await.map(drop).map_err(Error::from))
        }
        "record:get" => {
            let req = pb::GetShardIteratorRequest {
                stream_name: stream,
                shard_id: "shardId-000000000000".into(),
                iterator_type: pb::IteratorType::TrimHorizon as i32,
                ..Default::default()
            };
            verdict(admin.streams().get_shard_iterator(req).await.map(drop).map_err(Error::from))
        }
        "group:read" => verdict(admin.describe_group(&stream, "g").await.map(drop)),
        "group:commit" => {
            let req = pb::CommitRequest {
                stream_name: stream,
                group_name: "g".into(),
                member_id: "not-a-member".into(),
                checkpoints: vec![pb::ShardCheckpoint {
                    shard_id: "shardId-000000000000".into(),
                    sequence_number: 0,
                    lease_epoch: 1,
                }],
            };
            verdict(admin.groups().commit(req).await.map(drop).map_err(Error::from))
        }
        "group:admin" => {
            let req = pb::ResetGroupRequest {
                stream_name: stream,
                group_name: "g".into(),
                position: pb::IteratorType::TrimHorizon as i32,
                ..Default::default()
            };
            verdict(admin.reset_group(req).await.map(drop))
        }
        "admin:repair" => verdict(admin.list_lost_found().await.map(drop)),
        "admin:auth" => verdict(Access::from_channel(conn).list_principals().await.map(drop)),
        "admin:metrics" => {
            let scrape = match http(s.b.http_addr, "GET", "/metrics", &[("authorization", &bearer(token))], b"").await.0
            {
                200 => 'A',
                403 => 'D',
                other => panic!("/metrics answered {other}"),
            };
            let broker = verdict(admin.describe_broker().await.map(drop));
            agree("admin:metrics", "cluster", &[scrape, broker])
        }
        "admin:console" => {
            let auth = [("authorization", bearer(token))];
            let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut verdicts = Vec::new();
            for path in ["/api/v1/streams", "/api/v1/overview", "/ui"] {
                verdicts.push(match http(s.b.http_addr, "GET", path, &headers, b"").await.0 {
                    200 => 'A',
                    403 => 'D',
                    other => panic!("{path} answered {other}"),
                });
            }
            agree("admin:console", "cluster", &verdicts)
        }
        other => panic!("no call for {other}"),
    }
}

/// The one verdict of several calls that need the same action; a call
/// that decides otherwise than the rest is a hole (or a wrong refusal).
fn agree(action: &str, resource: &str, verdicts: &[char]) -> char {
    assert!(verdicts.iter().all(|v| *v == verdicts[0]), "{action} on {resource}: the calls disagree: {verdicts:?}");
    verdicts[0]
}

/// Strict SigV4 on the Kinesis API with these (access key id, secret,
/// principal) triples.
fn strict_kinesis(c: &mut BrokerConfig, keys: &[(&str, &str, &str)]) {
    c.kinesis.auth = KinesisAuth::Strict;
    c.kinesis.access_keys = keys
        .iter()
        .map(|(id, secret, _)| AccessKey { access_key_id: id.to_string(), secret_access_key: secret.to_string() })
        .collect();
    c.auth.access_key_principals = keys.iter().map(|(id, _, p)| (id.to_string(), p.to_string())).collect();
}

/// The same through the Kinesis API, for the actions it has.
async fn kinesis_attempt(addr: std::net::SocketAddr, key: (&str, &str), action: &str, stream: &str) -> Option<char> {
    let (operation, body) = match action {
        "stream:create" => ("CreateStream", format!(r#"{{"StreamName":"{stream}","ShardCount":1}}"#)),
        "stream:describe" => ("DescribeStreamSummary", format!(r#"{{"StreamName":"{stream}"}}"#)),
        "stream:configure" => {
            ("IncreaseStreamRetentionPeriod", format!(r#"{{"StreamName":"{stream}","RetentionPeriodHours":48}}"#))
        }
        "record:put" => ("PutRecord", format!(r#"{{"StreamName":"{stream}","Data":"bWF0cml4","PartitionKey":"k"}}"#)),
        "record:get" => (
            "GetShardIterator",
            format!(
                r#"{{"StreamName":"{stream}","ShardId":"shardId-000000000000","ShardIteratorType":"TRIM_HORIZON"}}"#
            ),
        ),
        _ => return None,
    };
    let (code, answer) = kinesis_call(addr, operation, &body, Some(key)).await;
    assert!(!answer.contains("UnrecognizedClientException") && !answer.contains("Signature"), "{answer}");
    Some(if code == 400 && answer.contains("AccessDeniedException") { 'D' } else { 'A' })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_principal_action_resource_matrix_matches_the_table_on_grpc_http_and_kinesis() {
    let keys: Vec<(&str, &str, &str)> = vec![
        ("AKIAWRITER000000", "writer-secret", "writer"),
        ("AKIAREADER000000", "reader-secret", "reader"),
        ("AKIAOPS000000000", "ops-secret", "ops"),
        ("AKIANOBODY000000", "nobody-secret", "nobody"),
    ];
    let s = Secured::start(|c, _| strict_kinesis(c, &keys)).await;
    let (admin, _) = s.admin().await;
    for name in ["orders", "orders-eu", "other"] {
        admin
            .create_stream(pb::CreateStreamRequest { stream_name: name.into(), shard_count: 1, ..Default::default() })
            .await
            .expect("create");
        // A group to read, commit to and reset: joined once, then left.
        let start = Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None });
        let join =
            pb::JoinGroupRequest { stream_name: name.into(), group_name: "g".into(), start, client_id: "setup".into() };
        let member = admin.groups().join_group(join).await.expect("join").into_inner().member_id;
        let leave = pb::LeaveGroupRequest { stream_name: name.into(), group_name: "g".into(), member_id: member };
        admin.groups().leave_group(leave).await.expect("leave");
    }
    let mut tokens: BTreeMap<&str, Secret> = BTreeMap::new();
    tokens.insert("writer", s.principal("writer", &[allow("writer", "record:put", "stream:orders")]).await);
    tokens.insert(
        "reader",
        s.principal(
            "reader",
            &[
                allow("reader", "record:get", "stream:orders*"),
                allow("reader", "group:read", "group:orders*"),
                allow("reader", "group:commit", "group:orders-eu/*"),
            ],
        )
        .await,
    );
    tokens.insert(
        "ops",
        s.principal(
            "ops",
            &[
                allow("ops", "stream:*", "stream:*"),
                deny("ops", "stream:delete", "stream:orders"),
                allow("ops", "group:admin", "group:other/*"),
                allow("ops", "admin:metrics", "cluster"),
            ],
        )
        .await,
    );
    tokens.insert("nobody", s.principal("nobody", &[]).await);
    tokens.insert("admin", s.bootstrap.clone());

    let run = |last: bool| EXPECTED.iter().filter(move |(_, a, _)| (*a == "stream:delete") == last);
    let mut observed = Vec::new();
    let mut cells = 0;
    for pass in [false, true] {
        for (principal, action, expected) in run(pass) {
            let targets: Vec<&str> = if action.starts_with("admin:") { vec!["cluster"] } else { RESOURCES.to_vec() };
            let mut got = String::new();
            for r in &targets {
                got.push(attempt(&s, &tokens[principal], action, r).await);
                cells += 1;
            }
            observed.push(format!("{principal} {action} {got}"));
            assert_eq!(&got, expected, "gRPC/HTTP: {principal} {action} on {targets:?}");
        }
        if !pass {
            // The Kinesis API decides by the same rules (before anything is deleted).
            let kinesis = s.b.kinesis_addr.expect("Kinesis API");
            for (id, secret, principal) in &keys {
                for (p, action, expected) in EXPECTED.iter().filter(|(p, _, _)| p == principal) {
                    let mut got = String::new();
                    for r in RESOURCES {
                        match kinesis_attempt(kinesis, (id, secret), action, r).await {
                            Some(v) => got.push(v),
                            None => break,
                        }
                    }
                    if !got.is_empty() {
                        cells += got.len();
                        assert_eq!(&got, expected, "Kinesis: {p} {action} on {RESOURCES:?}");
                    }
                }
            }
        }
    }
    println!("authorization matrix: {cells} cells matched the table\n{}", observed.join("\n"));
    let metrics = s.metrics().await;
    assert!(metrics.contains("stream_broker_permission_denied_total"), "denials are counted: {metrics}");
    s.b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_expired_and_revoked_tokens_are_refused_with_their_reason() {
    let s = Secured::start(|_, _| {}).await;
    let (admin, access) = s.admin().await;
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    access.create_principal("app", "").await.expect("principal");
    access.add_grant(allow("app", "stream:describe", "stream:s")).await.expect("grant");
    let addr = s.addr();
    let describe = |token: Secret| {
        let addr = addr.clone();
        async move {
            let c = Connection::open(&addr, &ConnectOptions { token: Some(token), ..ConnectOptions::default() })
                .await
                .expect("connect");
            Admin::from_channel(c).describe_stream("s").await
        }
    };
    let (info, good) = access.create_token("app", "", None).await.expect("token");
    describe(good.clone()).await.expect("a good token works");

    let refused = |r: client::Result<pb::StreamDescription>, why: &str| match r {
        Err(Error::Unauthenticated(m)) => assert!(m.contains(why), "{why}: {m}"),
        other => panic!("{why}: {other:?}"),
    };
    refused(describe(Secret::new("not-a-token")).await, "not valid");
    let forged = format!("{}X", &good.expose()[..good.expose().len() - 1]);
    refused(describe(Secret::new(forged)).await, "not valid");
    let unknown = broker::auth::token::generate().expect("token").token;
    refused(describe(Secret::new(unknown)).await, "not valid");

    let (_, short) = access.create_token("app", "", Some(Duration::from_millis(1))).await.expect("token");
    let deadline = Instant::now() + BOUND;
    loop {
        match describe(short.clone()).await {
            Err(Error::Unauthenticated(m)) => {
                assert!(m.contains("expired"), "{m}");
                break;
            }
            other => assert!(Instant::now() < deadline, "a 1 ms token expires: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    access.revoke_token(&info.id).await.expect("revoke");
    refused(describe(good).await, "revoked");
    let listed = access.list_tokens(Some("app")).await.expect("list");
    assert!(listed.iter().any(|t| t.id == info.id && t.revoked_at_ms > 0), "{listed:?}");
    s.b.stop().await.expect("stop");
}

/// Waits for `f` to resolve, bounded; the value and how long it took.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let v = tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("{what} within {BOUND:?}"));
    (v, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_ends_its_subscription_produce_stream_and_long_poll() {
    let s = Secured::start(|_, _| {}).await;
    let (admin, access) = s.admin().await;
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    access.create_principal("app", "").await.expect("principal");
    for (a, r) in [("record:*", "stream:s"), ("group:*", "group:s/*")] {
        access.add_grant(allow("app", a, r)).await.expect("grant");
    }
    let (info, token) = access.create_token("app", "", None).await.expect("token");
    let app = Admin::from_channel(s.conn(Some(&token)).await);

    // A subscription, an idle Produce stream and a group long poll, all running.
    let req = pb::SubscribeShardRequest {
        stream_name: "s".into(),
        shard_id: "shardId-000000000000".into(),
        starting_position: pb::IteratorType::Latest as i32,
        ..Default::default()
    };
    let mut events = app.streams().subscribe_shard(req).await.expect("subscribe").into_inner();
    let (produce_tx, produce_rx) = tokio::sync::mpsc::channel::<pb::ProduceRequest>(1);
    let mut acks = app
        .streams()
        .produce(tokio_stream::wrappers::ReceiverStream::new(produce_rx))
        .await
        .expect("produce")
        .into_inner();
    let batch = pb::PutRecordsRequest { stream_name: "s".into(), records: vec![common::entry("k", b"before")] };
    produce_tx.send(pb::ProduceRequest { batch_id: 1, batch: Some(batch) }).await.expect("send");
    let ack = acks.message().await.expect("ack").expect("an ack");
    assert!(ack.error_code.is_empty(), "{ack:?}");
    let start = Some(pb::GroupStart { position: pb::IteratorType::Latest as i32, timestamp_ms: None });
    let join = pb::JoinGroupRequest { stream_name: "s".into(), group_name: "g".into(), start, client_id: "t".into() };
    let joined = app.groups().join_group(join).await.expect("join").into_inner();
    let lease = joined.assignment.expect("assignment").leases[0].clone();
    let mut groups = app.groups();
    let poll = tokio::spawn(async move {
        let req = pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: joined.member_id,
            shards: vec![pb::ShardPosition {
                shard_id: lease.shard_id,
                lease_epoch: lease.lease_epoch,
                next_sequence_number: None,
            }],
            max_records: 10,
            // Nothing arrives: without the revocation this waits its full 30 s.
            wait_ms: 30_000,
        };
        groups.poll(req).await
    });
    // The subscription delivers the record put before the revocation.
    let first = tokio::time::timeout(BOUND, events.message()).await.expect("an event").expect("ok").expect("event");
    assert!(first.records.iter().any(|r| &r.data[..] == b"before") || first.heartbeat, "{first:?}");

    access.revoke_token(&info.id).await.expect("revoke");
    let (ended, took) = bounded("the subscription ends", async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    let status = ended.expect_err("the subscription ends with an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    println!("subscription ended {took:?} after the revocation (auth.recheck_interval_ms = 200)");
    let (ended, took) = bounded("the idle Produce stream ends", acks.message()).await;
    let status = ended.expect_err("the produce stream ends with an error");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    println!("produce stream ended {took:?} after the subscription");
    let (polled, took) = bounded("the long poll ends", poll).await;
    let status = polled.expect("poll task").expect_err("the long poll ends with an error, not after its wait");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    println!("long poll ended {took:?} after the produce stream");
    s.b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_removed_mid_subscription_ends_it_with_permission_denied() {
    let s = Secured::start(|_, _| {}).await;
    let (admin, access) = s.admin().await;
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    let token = s.principal("app", &[allow("app", "record:get", "stream:s")]).await;
    let app = Admin::from_channel(s.conn(Some(&token)).await);
    let req = pb::SubscribeShardRequest {
        stream_name: "s".into(),
        shard_id: "shardId-000000000000".into(),
        starting_position: pb::IteratorType::Latest as i32,
        ..Default::default()
    };
    let mut events = app.streams().subscribe_shard(req).await.expect("subscribe").into_inner();
    assert!(access.remove_grant(allow("app", "record:get", "stream:s")).await.expect("remove"));
    let (ended, _) = bounded("the subscription ends", async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert_eq!(ended.expect_err("ends").code(), tonic::Code::PermissionDenied);
    s.b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_names_the_principal_and_whoami_says_how() {
    let ca = common::certs::Ca::new("server CA");
    let clients = common::certs::Ca::new("client CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = ca.server().write(dir.path(), "server", &ca);
    let clients_file = clients.write(dir.path(), "clients.pem");
    let s = Secured::start(|c, _| {
        c.tls.cert_file = Some(files.cert.clone());
        c.tls.key_file = Some(files.key.clone());
        c.tls.client_ca_file = Some(clients_file.clone());
    })
    .await;
    let https = format!("https://localhost:{}", s.b.grpc_addr.port());
    let tls = |leaf: Option<&common::certs::Leaf>| client::TlsOptions {
        ca_pem: ca.pem.as_bytes().to_vec(),
        client_cert_pem: leaf.map(|l| l.cert_pem.clone().into_bytes()),
        client_key_pem: leaf.map(|l| Secret::new(l.key_pem.clone())),
        server_name: None,
    };
    let admin_opts =
        ConnectOptions { tls: Some(tls(None)), token: Some(s.bootstrap.clone()), ..ConnectOptions::default() };
    let admin = Access::from_channel(Connection::open(&https, &admin_opts).await.expect("admin"));
    let me = admin.who_am_i().await.expect("whoami");
    assert_eq!((me.principal.as_str(), me.credential.as_str(), me.super_user), ("admin", "bootstrap", true));
    admin.create_principal("reader", "").await.expect("principal");
    admin.add_grant(allow("reader", "stream:describe", "stream:*")).await.expect("grant");

    let leaf = clients.client("reader");
    let opts = ConnectOptions { tls: Some(tls(Some(&leaf))), ..ConnectOptions::default() };
    let conn = Connection::open(&https, &opts).await.expect("mutual TLS");
    let me = Access::from_channel(conn.clone()).who_am_i().await.expect("whoami");
    assert_eq!((me.principal.as_str(), me.credential.as_str()), ("reader", "certificate"));
    assert_eq!(me.grants.len(), 1, "{me:?}");
    Admin::from_channel(conn.clone()).list_streams().await.expect("describe is granted");
    let e = Access::from_channel(conn).list_principals().await.expect_err("not an admin");
    assert!(is_permission_denied(&e), "{e:?}");
    // Without a certificate or token: anonymous, refused.
    let anon = Connection::open(&https, &ConnectOptions { tls: Some(tls(None)), ..ConnectOptions::default() })
        .await
        .expect("TLS without a client certificate (optional)");
    let e = Access::from_channel(anon).who_am_i().await.expect_err("anonymous");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    s.b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_request_rate_is_throttled_with_a_hint_and_counted() {
    let s = Secured::start(|c, _| c.auth.requests_per_sec_per_principal = 5).await;
    let token = s.principal("chatty", &[allow("chatty", "stream:describe", "stream:*")]).await;
    let admin = Admin::from_channel(s.conn(Some(&token)).await);
    let mut throttled = None;
    for _ in 0..50 {
        if let Err(e) = admin.list_streams().await {
            throttled = Some(e);
            break;
        }
    }
    let e = throttled.expect("50 calls at once exceed 5 per second");
    assert!(matches!(e, Error::Throttled { .. }) && e.retry_after().is_some(), "{e:?}");
    assert!(e.to_string().contains("requests_per_sec_per_principal"), "{e}");
    // Another principal is not held back by this one's rate.
    let (other, _) = s.admin().await;
    other.list_streams().await.expect("the admin has its own bucket");
    let metrics = s.metrics().await;
    assert!(metrics.contains(r#"stream_broker_refusals_total{listener="grpc",reason="rate_limited"}"#), "{metrics}");
    s.b.stop().await.expect("stop");
}

/// The README's one command (`stream-broker --data-dir ...`, loopback,
/// nothing configured): anonymous callers may do everything, and WhoAmI
/// says authentication is off.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_on_loopback_needs_no_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = common::process::Process::start(dir.path());
    let conn = Connection::open(&p.endpoint, &ConnectOptions::default()).await.expect("connect");
    let me = Access::from_channel(conn.clone()).who_am_i().await.expect("whoami without credentials");
    assert!(!me.authentication_enabled && me.principal.is_empty() && me.credential == "anonymous", "{me:?}");
    let admin = Admin::from_channel(conn);
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("an anonymous caller creates a stream");
    let put = pb::PutRecordsRequest { stream_name: "s".into(), records: vec![common::entry("k", b"hello")] };
    admin.streams().put_records(put).await.expect("and writes");
    let it = pb::GetShardIteratorRequest {
        stream_name: "s".into(),
        shard_id: "shardId-000000000000".into(),
        iterator_type: pb::IteratorType::TrimHorizon as i32,
        ..Default::default()
    };
    let it = admin.streams().get_shard_iterator(it).await.expect("and reads").into_inner().shard_iterator;
    let got = admin
        .streams()
        .get_records(pb::GetRecordsRequest { shard_iterator: it, ..Default::default() })
        .await
        .expect("records")
        .into_inner();
    assert_eq!(got.records.iter().map(|r| r.data.as_ref()).collect::<Vec<_>>(), vec![&b"hello"[..]]);
    // Principals can be prepared before authentication is turned on.
    let access = Access::from_channel(Connection::open(&p.endpoint, &ConnectOptions::default()).await.expect("c"));
    access.create_principal("later", "").await.expect("an anonymous caller manages principals");
    let names: Vec<String> = access.list_principals().await.expect("list").into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["later"]);
    p.terminate();
}

/// Starts the binary with gRPC on 0.0.0.0 and `env`; `Ok(grpc port)` once
/// it listens, `Err(stderr)` when it exits instead.
fn start_exposed(dir: &Path, env: &[(&str, &str)]) -> Result<(std::process::Child, u16), String> {
    use std::io::{BufRead, BufReader, Read};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stream-broker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STREAM_BROKER_") {
            cmd.env_remove(k);
        }
    }
    let data = dir.join("data");
    let mut child = cmd
        .args(["--data-dir", data.to_str().expect("utf-8"), "--grpc-addr", "0.0.0.0:0"])
        .args(["--http-addr", "127.0.0.1:0", "--kinesis-addr", "127.0.0.1:0", "--wire-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stream-broker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
    match line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")) {
        Some(addr) => Ok((child, addr.parse::<std::net::SocketAddr>().expect("address").port())),
        None => {
            let mut err = String::new();
            child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
            child.wait().expect("reap");
            Err(err)
        }
    }
}

/// Off loopback the binary needs authentication on (or the explicit
/// insecure flag); with it on, anonymous calls are refused and the
/// bootstrap token works.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_address_needs_authentication_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = start_exposed(dir.path(), &[]).map(|_| ()).expect_err("anonymous on 0.0.0.0 is refused");
    assert!(
        err.contains("grpc_addr") && err.contains("auth.enabled") && err.contains("--insecure-allow-anonymous"),
        "{err}"
    );

    let bootstrap = broker::auth::token::generate().expect("token").token;
    let file = dir.path().join("admin.token");
    std::fs::write(&file, &bootstrap).expect("write");
    let env = [
        ("STREAM_BROKER_AUTH__ENABLED", "true"),
        ("STREAM_BROKER_AUTH__BOOTSTRAP_TOKEN_FILE", file.to_str().expect("utf-8")),
    ];
    let (mut child, port) = start_exposed(dir.path(), &env).expect("with authentication on, 0.0.0.0 is fine");
    let endpoint = format!("http://127.0.0.1:{port}");
    let anon = Connection::open(&endpoint, &ConnectOptions::default()).await.expect("connect");
    let e = Admin::from_channel(anon).list_streams().await.expect_err("anonymous");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let options = ConnectOptions { token: Some(Secret::new(bootstrap)), ..ConnectOptions::default() };
    let me = Access::from_channel(Connection::open(&endpoint, &options).await.expect("connect"))
        .who_am_i()
        .await
        .expect("whoami");
    assert_eq!((me.principal.as_str(), me.credential.as_str(), me.super_user), ("admin", "bootstrap", true));
    child.kill().expect("kill");
    child.wait().expect("reap");
}

/// `auth.super_users` are allowed everything without a grant; others are not.
#[tokio::test(flavor = "multi_thread")]
async fn a_super_user_is_allowed_everything_without_grants() {
    let s = Secured::start(|c, _| c.auth.super_users = vec!["root".into()]).await;
    let root = s.principal("root", &[]).await;
    let other = s.principal("other", &[]).await;
    let access = Access::from_channel(s.conn(Some(&root)).await);
    let me = access.who_am_i().await.expect("whoami");
    assert!(me.super_user && me.grants.is_empty(), "{me:?}");
    access.list_principals().await.expect("a super-user manages access");
    let create = pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() };
    Admin::from_channel(s.conn(Some(&root)).await).create_stream(create.clone()).await.expect("and creates streams");
    let e = Admin::from_channel(s.conn(Some(&other)).await).create_stream(create).await.expect_err("not a super-user");
    assert!(is_permission_denied(&e), "{e:?}");
    s.b.stop().await.expect("stop");
}

/// A bootstrap token file that is missing or too short stops the start,
/// naming the key and never the file's content.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_bootstrap_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.token");
    std::fs::write(&short, "tooshort-secret").expect("write");
    for (file, why) in [(short, "at least 32 characters"), (dir.path().join("missing"), "cannot read")] {
        let mut c = BrokerConfig { data_dir: dir.path().join("data"), ..BrokerConfig::default() };
        c.auth.enabled = true;
        c.auth.bootstrap_token_file = Some(file);
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let token = tokio_util::sync::CancellationToken::new();
        let e = broker::server::run(c, Arc::new(SystemClock), grpc, http, token).await.expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("auth.bootstrap_token_file") && text.contains(why), "{text}");
        assert!(!text.contains("tooshort-secret"), "{text}");
    }
}

/// With `console.mutations` on, the console's changes are the caller's own:
/// `admin:console` opens the console, and each change needs its action's
/// grant (a refusal is 403, never an internal error).
#[tokio::test(flavor = "multi_thread")]
async fn console_changes_are_authorized_as_the_callers_own() {
    let s = Secured::start(|c, _| c.console.mutations = true).await;
    let (admin, _) = s.admin().await;
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    let start = Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None });
    let join = pb::JoinGroupRequest { stream_name: "s".into(), group_name: "g".into(), start, client_id: "c".into() };
    let member = admin.groups().join_group(join).await.expect("join").into_inner().member_id;
    let leave = pb::LeaveGroupRequest { stream_name: "s".into(), group_name: "g".into(), member_id: member };
    admin.groups().leave_group(leave).await.expect("leave");
    let viewer = s.principal("viewer", &[allow("viewer", "admin:console", "cluster")]).await;
    let auth = bearer(&viewer);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let create = br#"{"name":"t","shard_count":1}"#;
    let reset = br#"{"to":"latest"}"#;
    let (code, body) = http(s.b.http_addr, "POST", "/api/v1/streams", &headers, create).await;
    assert_eq!(code, 403, "creating needs stream:create: {body}");
    assert!(body.contains("stream:create"), "{body}");
    let (code, body) = http(s.b.http_addr, "POST", "/api/v1/streams/s/groups/g/reset", &headers, reset).await;
    assert_eq!(code, 403, "resetting needs group:admin: {body}");
    assert!(body.contains("group:admin"), "{body}");

    let (_, access) = s.admin().await;
    access.add_grant(allow("viewer", "stream:create", "stream:t")).await.expect("grant");
    access.add_grant(allow("viewer", "group:admin", "group:s/g")).await.expect("grant");
    let (code, body) = http(s.b.http_addr, "POST", "/api/v1/streams", &headers, create).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(s.b.http_addr, "POST", "/api/v1/streams/s/groups/g/reset", &headers, reset).await;
    assert_eq!(code, 200, "{body}");
    s.b.stop().await.expect("stop");
}

/// Kinesis resource policies are evaluated with the grants, for Kinesis
/// calls only: a policy's allow admits a principal without a grant, its
/// deny refuses one with a grant, what it does not say is left to the
/// grants, a consumer's own policy applies to calls naming the consumer,
/// and a policy the broker could not enforce whole is refused naming the
/// element.
#[tokio::test(flavor = "multi_thread")]
async fn kinesis_resource_policies_allow_and_deny_together_with_the_grants() {
    let keys = [
        ("AKIAROOT00000000", "root-secret", "root"),
        ("AKIAWRITER000000", "writer-secret", "writer"),
        ("AKIAGUEST0000000", "guest-secret", "guest"),
    ];
    let s = Secured::start(|c, _| {
        c.auth.super_users = vec!["root".into()];
        strict_kinesis(c, &keys);
    })
    .await;
    let kinesis = s.b.kinesis_addr.expect("Kinesis API");
    let writer_token = s.principal("writer", &[allow("writer", "record:put", "stream:orders")]).await;
    s.principal("guest", &[]).await;
    let key = |who: &str| keys.iter().find(|k| k.2 == who).map(|k| (k.0, k.1)).expect("a key");
    let call = |who: &'static str, operation: &'static str, body: serde_json::Value| async move {
        kinesis_call(kinesis, operation, &body.to_string(), Some(key(who))).await
    };
    let verdict = |(code, body): (u16, String)| match code {
        200 => 'A',
        400 if body.contains("AccessDeniedException") => 'D',
        _ => panic!("neither allowed nor denied: {code} {body}"),
    };
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/orders";
    let put = || serde_json::json!({"StreamName": "orders", "Data": "cG9saWN5", "PartitionKey": "k"});
    let iterator = || serde_json::json!({"StreamName": "orders", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"});
    let (code, body) = call("root", "CreateStream", serde_json::json!({"StreamName": "orders", "ShardCount": 1})).await;
    assert_eq!(code, 200, "{body}");
    let active = Instant::now();
    loop {
        let (_, body) = call("root", "DescribeStreamSummary", serde_json::json!({"StreamName": "orders"})).await;
        if body.contains("ACTIVE") {
            break;
        }
        assert!(active.elapsed() < BOUND, "the stream never became ACTIVE: {body}");
        tokio::task::yield_now().await;
    }

    // Grants alone.
    assert_eq!(verdict(call("writer", "PutRecord", put()).await), 'A');
    assert_eq!(verdict(call("guest", "PutRecord", put()).await), 'D');

    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "guest-writes", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::000000000000:user/guest"},
             "Action": "kinesis:Put*", "Resource": arn},
            {"Sid": "writer-stops", "Effect": "Deny", "Principal": {"AWS": ["arn:aws:iam::000000000000:user/writer"]},
             "Action": ["kinesis:PutRecord"], "Resource": "arn:aws:kinesis:*:*:stream/ord*"},
        ]
    });
    let (code, body) =
        call("root", "PutResourcePolicy", serde_json::json!({"ResourceARN": arn, "Policy": policy.to_string()})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        verdict(call("guest", "PutRecord", put()).await),
        'A',
        "the policy's allow admits a principal without grants"
    );
    assert_eq!(
        verdict(
            call(
                "guest",
                "PutRecords",
                serde_json::json!({"StreamName": "orders", "Records": [{"Data": "eA==", "PartitionKey": "k"}]})
            )
            .await
        ),
        'A'
    );
    assert_eq!(verdict(call("guest", "GetShardIterator", iterator()).await), 'D', "an action the policy does not name");
    assert_eq!(verdict(call("writer", "PutRecord", put()).await), 'D', "the policy's deny beats the writer's grant");
    // Resource policies belong to the Kinesis API: over gRPC the writer's grant decides.
    let producer = client::Producer::with_channel(s.conn(Some(&writer_token)).await, "orders", Default::default())
        .await
        .expect("producer");
    producer.send("k", bytes::Bytes::from_static(b"grpc")).await.expect("queued").await.expect("put over gRPC");

    // What cannot be enforced whole is not stored.
    let conditional = serde_json::json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*",
        "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]});
    let (code, body) =
        call("root", "PutResourcePolicy", serde_json::json!({"ResourceARN": arn, "Policy": conditional.to_string()}))
            .await;
    assert!(
        code == 400 && body.contains("InvalidArgumentException") && body.contains("Statement[0].Condition"),
        "{body}"
    );
    assert_eq!(verdict(call("writer", "PutRecord", put()).await), 'D', "the stored policy still applies");

    let (code, body) = call("root", "DeleteResourcePolicy", serde_json::json!({"ResourceARN": arn})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(verdict(call("writer", "PutRecord", put()).await), 'A', "deleted: the grants decide again");
    assert_eq!(verdict(call("guest", "PutRecord", put()).await), 'D');

    // A consumer's own policy applies to the calls that name it.
    let (code, body) =
        call("root", "RegisterStreamConsumer", serde_json::json!({"StreamARN": arn, "ConsumerName": "fan-out"})).await;
    assert_eq!(code, 200, "{body}");
    let consumer_arn = serde_json::from_str::<serde_json::Value>(&body).expect("JSON")["Consumer"]["ConsumerARN"]
        .as_str()
        .expect("a consumer ARN")
        .to_string();
    let describe = || serde_json::json!({"ConsumerARN": consumer_arn});
    assert_eq!(verdict(call("guest", "DescribeStreamConsumer", describe()).await), 'D');
    let consumer_policy = serde_json::json!({"Statement": {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::000000000000:user/guest"},
        "Action": "kinesis:DescribeStreamConsumer", "Resource": consumer_arn}});
    let (code, body) = call(
        "root",
        "PutResourcePolicy",
        serde_json::json!({"ResourceARN": consumer_arn, "Policy": consumer_policy.to_string()}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(verdict(call("guest", "DescribeStreamConsumer", describe()).await), 'A');
    assert_eq!(
        verdict(call("guest", "DescribeStreamSummary", serde_json::json!({"StreamName": "orders"})).await),
        'D',
        "the consumer's policy covers the consumer only"
    );
    s.b.stop().await.expect("stop");
}

/// Secrets never leave the broker: with debug logging on, neither the
/// bootstrap token, a principal's token, a bad token a client presented,
/// nor a Kinesis secret key appears in the log, in `/metrics`, or in the
/// errors the callers get back.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_metrics_or_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = broker::auth::token::generate().expect("a random token").token;
    std::fs::write(dir.path().join("admin.token"), format!("{bootstrap}\n")).expect("write");
    let secret_key = "kinesis-secret-key-that-must-not-leak-0123456789";
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nenabled = true\nbootstrap_token_file = {:?}\naccess_key_principals = {{ AKIASECRETTEST00 = \"kin\" }}\n\
             [kinesis]\nauth = \"strict\"\naccess_keys = [{{ access_key_id = \"AKIASECRETTEST00\", secret_access_key = \"{secret_key}\" }}]\n",
            dir.path().join("admin.token")
        ),
    )
    .expect("write config");
    let log = dir.path().join("broker.log");
    let b = Process::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[("RUST_LOG", "debug")],
        std::fs::File::create(&log).expect("log file").into(),
    );
    let (grpc, admin_http, kinesis) = (b.grpc_addr, b.http_addr, b.kinesis_addr.expect("Kinesis API"));
    let open = |token: Option<&str>| {
        let options = ConnectOptions { token: token.map(Secret::new), ..ConnectOptions::default() };
        async move { Connection::open(&format!("http://{grpc}"), &options).await.expect("connect") }
    };
    let access = Access::from_channel(open(Some(&bootstrap)).await);
    access.create_principal("kin", "test").await.expect("principal");
    let (_, token) = access.create_token("kin", "test", None).await.expect("token");
    let token = token.expose().to_string();
    let mut errors = String::new();
    // The principal's own token, working (no grant: refused with a reason).
    let e = Admin::from_channel(open(Some(&token)).await).list_streams().await;
    errors.push_str(&format!("{e:?}\n"));
    // A made-up token, and one cut short.
    let bad = format!("{}x", &token[..token.len() - 1]);
    for presented in [bad.as_str(), &token[..20]] {
        let e = Admin::from_channel(open(Some(presented)).await).list_streams().await.expect_err("refused");
        errors.push_str(&format!("{e:?} {e}\n"));
    }
    // Kinesis: signed right, and signed with a wrong secret.
    let (code, body) = kinesis_call(kinesis, "ListStreams", "{}", Some(("AKIASECRETTEST00", secret_key))).await;
    assert_eq!(code, 200, "signed right; no grant, so an empty list: {body}");
    errors.push_str(&body);
    let wrong = format!("{secret_key}-wrong");
    let (_, body) = kinesis_call(kinesis, "ListStreams", "{}", Some(("AKIASECRETTEST00", &wrong))).await;
    errors.push_str(&body);
    let (_, metrics) =
        http(admin_http, "GET", "/metrics", &[("authorization", &format!("Bearer {bootstrap}"))], b"").await;
    let (_, refused) = http(admin_http, "GET", "/metrics", &[("authorization", &format!("Bearer {bad}"))], b"").await;
    errors.push_str(&refused);
    assert!(b.terminate().success(), "a clean stop");
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert!(logged.contains("DEBUG"), "the broker logged at debug level: {logged}");
    for (what, text) in [("the log", &logged), ("/metrics", &metrics), ("the errors", &errors)] {
        for (name, secret) in [
            ("bootstrap token", bootstrap.as_str()),
            ("token", &token),
            ("bad token", &bad),
            ("secret key", secret_key),
        ] {
            // The token's id prefix is public (it names the token in listings); its secret part is not.
            let secret_part = &secret[secret.len() - 16..];
            assert!(!text.contains(secret_part), "{name} appears in {what}:\n{text}");
        }
    }
}

/// CheckAccess answers for the caller itself, by the rule that authorizes
/// every call: allowed with the grant, not without (and a deny wins); a
/// forwarded token is answered for its own principal, not the
/// connection's; anonymous, malformed and revoked tokens are
/// UNAUTHENTICATED; a bad action or resource names the field.
#[tokio::test(flavor = "multi_thread")]
async fn check_access_answers_for_the_caller_itself() {
    let s = Secured::start(|_, _| {}).await;
    let token = s.principal("shop", &[allow("shop", "record:put", "stream:orders*")]).await;
    let (_, admin) = s.admin().await;
    admin.add_grant(deny("shop", "record:put", "stream:orders-dlq")).await.expect("deny");
    let shop = Access::from_channel(s.conn(Some(&token)).await);
    let answer = |r: client::Result<pb::CheckAccessResponse>| {
        let r = r.expect("check access");
        assert!(r.authentication_enabled, "{r:?}");
        (r.principal, r.allowed)
    };
    assert_eq!(answer(shop.check_access("record:put", "stream:orders").await), ("shop".into(), true));
    assert_eq!(answer(shop.check_access("record:get", "stream:orders").await), ("shop".into(), false));
    assert_eq!(answer(shop.check_access("record:put", "stream:orders-dlq").await), ("shop".into(), false));
    assert_eq!(answer(shop.check_access("admin:metrics", "cluster").await), ("shop".into(), false));
    // The admin's connection, asking with the shop's token, hears about the shop.
    assert_eq!(answer(admin.check_access_as(&token, "record:put", "stream:orders").await), ("shop".into(), true));
    assert_eq!(answer(admin.check_access("record:get", "group:orders/g").await), ("admin".into(), true));
    let e = shop.check_access("record:jump", "stream:orders").await.expect_err("bad action");
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("action")), "{e:?}");
    let e = shop.check_access("record:put", "stream:orders*").await.expect_err("a pattern");
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("resource")), "{e:?}");
    let anon = Access::from_channel(s.conn(None).await);
    let e = anon.check_access("record:put", "stream:orders").await.expect_err("anonymous");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let e = admin.check_access_as(&Secret::new("sbk_nope_nope"), "record:put", "stream:orders").await;
    assert!(matches!(e, Err(Error::Unauthenticated(_))), "{e:?}");
    let id = admin.list_tokens(Some("shop")).await.expect("tokens")[0].id.clone();
    admin.revoke_token(&id).await.expect("revoke");
    let e = shop.check_access("record:put", "stream:orders").await.expect_err("revoked");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    s.b.stop().await.expect("stop");
}
