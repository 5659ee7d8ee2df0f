//! The order service's security wiring: the order API over TLS (plaintext
//! refused and counted), the service publishing to a broker over TLS, the
//! order flow under the least-privilege principals of deploy/stack.toml,
//! and the order API's bearer tokens (broker API tokens checked with the
//! broker's CheckAccess as the caller): missing, malformed, bad, expired
//! and revoked tokens, missing grants, and the broker down. Certificates
//! are generated at test time (rcgen).

#[path = "../../broker/tests/common/certs.rs"]
mod certs;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use certs::Ca;
use common::*;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

/// One HTTPS/1.1 request (server name `localhost`, trusting `ca_pem`):
/// status and body.
async fn https(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(broker::auth::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_api_serves_tls_and_refuses_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let files = ca.server().write(dir.path(), "api", &ca);
    let mut config = test_config(&dir.path().join("data"));
    config.tls.cert_file = Some(files.cert);
    config.tls.key_file = Some(files.key);
    let svc = start(config).await;
    let (status, body) = https(svc.addr, &ca.pem, "POST", "/order", &[], SEED_ORDER).await;
    assert_eq!(status, 201, "{body}");
    let plain = tokio::time::timeout(LIMIT, async {
        let mut s = tokio::net::TcpStream::connect(svc.addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        raw
    })
    .await
    .expect("plaintext ends instead of hanging");
    assert!(!plain.starts_with(b"HTTP/"), "no HTTP answer in plaintext: {:?}", String::from_utf8_lossy(&plain));
    let (_, metrics) = https(svc.addr, &ca.pem, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains(r#"order_service_refusals_total{listener="orders",reason="tls_handshake"} 1"#),
        "{metrics}"
    );
    svc.running.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_publishes_to_a_broker_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let files = ca.server().write(dir.path(), "broker", &ca);
    let mut bc = BrokerConfig { data_dir: dir.path().join("broker"), ..BrokerConfig::default() };
    bc.tls.cert_file = Some(files.cert);
    bc.tls.key_file = Some(files.key);
    let b = TestBroker::start_with(bc, Arc::new(SystemClock)).await;
    let broker = format!("https://localhost:{}", b.grpc_addr.port());
    let mut config = test_config(&dir.path().join("data"));
    config.broker = Some(broker.clone());
    config.broker_tls.ca_file = Some(files.ca.clone());
    let svc = start(config).await;
    let order = post(svc.addr, "/order", SEED_ORDER).await.json();
    let id = order["orderId"].as_str().expect("id").to_string();
    let options = client::ConnectOptions {
        tls: Some(client::TlsOptions::from_files(&files.ca, None, None, None).expect("CA")),
        ..client::ConnectOptions::default()
    };
    eventually(LIMIT, "the order_placed event on the TLS broker", || async {
        read_stream_as(&broker, &options, "order-events").await.into_iter().find(|r| r.contains(&id))
    })
    .await;
    svc.running.stop().await.expect("stop");
    b.stop().await.expect("stop broker");
}

/// A broker configuration with authentication on, its data and a
/// bootstrap admin token file in a new directory; the admin token.
fn secured_broker_config() -> (tempfile::TempDir, BrokerConfig, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_token = broker::auth::token::generate().expect("token").token;
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, &admin_token).expect("write");
    let mut bc = BrokerConfig { data_dir: dir.path().join("broker"), ..BrokerConfig::default() };
    bc.auth.enabled = true;
    bc.auth.bootstrap_token_file = Some(admin_file);
    (dir, bc, admin_token)
}

/// A broker with authentication on and deploy/stack.toml deployed on it
/// by the bootstrap admin; tokens for any principal; a service
/// configuration whose parts run as the stack's principals.
struct Stack {
    b: TestBroker,
    broker: String,
    admin: client::Admin,
    admin_options: client::ConnectOptions,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        Self::start_tls(None).await
    }

    /// With `tls`, the broker serves TLS (every port) and is called by
    /// `https://localhost:<port>` trusting the files' CA.
    async fn start_tls(tls: Option<&certs::Files>) -> Self {
        let (dir, mut bc, admin_token) = secured_broker_config();
        if let Some(f) = tls {
            bc.tls.cert_file = Some(f.cert.clone());
            bc.tls.key_file = Some(f.key.clone());
        }
        let b = TestBroker::start_with(bc, Arc::new(SystemClock)).await;
        let broker = match tls {
            Some(_) => format!("https://localhost:{}", b.grpc_addr.port()),
            None => format!("http://{}", b.grpc_addr),
        };
        let admin_options = client::ConnectOptions {
            token: Some(client::Secret::new(admin_token)),
            tls: tls.map(|f| client::TlsOptions::from_files(&f.ca, None, None, None).expect("CA")),
            ..client::ConnectOptions::default()
        };
        let admin =
            client::Admin::from_channel(client::Connection::open(&broker, &admin_options).await.expect("admin"));
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stack.toml");
        let stack = client::stack::Stack::load(&shipped).expect("deploy/stack.toml");
        client::stack::deploy(&admin, &stack).await.expect("deploy the stack with its principals");
        Self { b, broker, admin, admin_options, dir }
    }

    /// A new token of `principal`, living `ttl` (`None`: no expiry).
    async fn token(&self, principal: &str, ttl: Option<Duration>) -> client::Secret {
        self.admin.access().create_token(principal, "test", ttl).await.expect("token").1
    }

    /// A token of `principal` in a file.
    async fn token_file(&self, principal: &str) -> std::path::PathBuf {
        let token = self.token(principal, None).await;
        let file = self.dir.path().join(format!("{principal}.token"));
        std::fs::write(&file, token.expose()).expect("write");
        file
    }

    /// The service on this broker, each part as its own principal; with
    /// `api_auth`, the order API takes broker tokens (decisions cached
    /// for `ttl_ms`) and the delivery simulator calls it as `courier`.
    async fn config(&self, api_auth: bool, ttl_ms: u64) -> order_service::Config {
        let mut config = test_config(&self.dir.path().join("data"));
        config.broker = Some(self.broker.clone());
        let c = &mut config.broker_credentials;
        c.setup_token_file = Some(self.token_file("setup").await);
        c.relay_token_file = Some(self.token_file("relay").await);
        c.external_parties_token_file = Some(self.token_file("external-parties").await);
        c.delivery_company_token_file = Some(self.token_file("delivery-company").await);
        c.customer_service_token_file = Some(self.token_file("customer-service").await);
        if api_auth {
            config.api_auth.mode = order_service::config::ApiAuthMode::BrokerToken;
            config.api_auth.cache_ttl_ms = ttl_ms;
            config.api_auth.delivery_simulator_token_file = Some(self.token_file("courier").await);
        }
        config
    }
}

fn bearer(t: &client::Secret) -> String {
    format!("Bearer {}", t.expose())
}

async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&client::Secret>, body: &str) -> Resp {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(addr, method, path, &headers, body.as_bytes()).await
}

/// A 401 in the API's error shape, with its challenge, never echoing `secret`.
fn assert_unauthenticated(r: &Resp, error: &str, secret: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(r.json()["error"], error, "{what}: {}", r.body);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{what}: {:?}", r.headers);
    assert!(secret.is_empty() || !r.body.contains(secret), "{what}: the token is echoed: {}", r.body);
}

/// The whole order flow against a broker with authentication on, the
/// service's parts running as the least-privilege principals of
/// deploy/stack.toml (deployed with `client::stack::deploy` as the
/// bootstrap admin), each by its own token, and the order API's callers by
/// theirs: the storefront places and reads, the cake producer fulfils, the
/// delivery simulator delivers as the courier. Each is refused what it
/// does not need, on the API and on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_runs_as_the_stack_files_least_privilege_principals() {
    let s = Stack::start().await;
    let broker = s.broker.clone();
    let config = s.config(true, 2_000).await;
    let storefront = s.token("storefront", None).await;
    let producer = s.token("cake-producer", None).await;
    let svc = start(config).await;
    let r = call(svc.addr, "POST", "/order", Some(&storefront), SEED_ORDER).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["orderId"].as_str().expect("id").to_string();
    let fulfil = serde_json::json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    eventually(LIMIT, "the new-order email (external-parties read order-events)", || async {
        emails(&svc.data_dir).into_iter().find(|(_, e)| e.contains(&id))
    })
    .await;
    let r = call(svc.addr, "POST", "/order/fulfill", Some(&storefront), &fulfil).await;
    assert_eq!(r.status, 403, "the storefront may not fulfil: {}", r.body);
    let m = r.json()["message"].as_str().expect("message").to_string();
    assert!(m.contains("record:put") && m.contains("stream:deliveryServiceQueue"), "{m}");
    let r = call(svc.addr, "POST", "/order/fulfill", Some(&producer), &fulfil).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(LIMIT, "the review email (the simulator delivered as courier; customer-service ran)", || async {
        emails(&svc.data_dir).into_iter().find(|(_, e)| e.contains("Subject: Order review") && e.contains(&id))
    })
    .await;
    let r = call(svc.addr, "GET", &format!("/order/{id}"), Some(&storefront), "").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("delivered")), "{}", r.body);
    let r = call(svc.addr, "GET", "/metrics", Some(&storefront), "").await;
    assert_eq!(r.status, 403, "the storefront may not read /metrics: {}", r.body);
    let events = eventually(LIMIT, "three order events", || async {
        let ev = read_stream_as(&broker, &s.admin_options, "order-events").await;
        (ev.len() >= 3).then_some(ev)
    })
    .await;
    assert!(events.iter().all(|e| e.contains(&id)), "{events:?}");
    svc.running.stop().await.expect("stop");

    // Each part is refused what it does not need.
    let denied = |r: client::Result<()>, what: &str| match r {
        Err(client::Error::PermissionDenied(_)) => {}
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    };
    let as_role = |role: &'static str| {
        let broker = broker.clone();
        let token = s.token(role, None);
        async move {
            let options = client::ConnectOptions { token: Some(token.await), ..Default::default() };
            client::Admin::from_channel(client::Connection::open(&broker, &options).await.expect("c"))
        }
    };
    let put = |stream: &str| client::types::PutRecordsRequest {
        stream_name: stream.into(),
        records: vec![client::types::PutRecordsEntry {
            partition_key: "k".into(),
            data: bytes::Bytes::from_static(b"x"),
            explicit_hash_key: None,
        }],
    };
    let iterator = |stream: &str| client::types::GetShardIteratorRequest {
        stream_name: stream.into(),
        shard_id: "shardId-000000000000".into(),
        iterator_type: client::types::IteratorType::TrimHorizon as i32,
        ..Default::default()
    };
    let relay = as_role("relay").await;
    let read = relay.streams().get_shard_iterator(iterator("order-events")).await;
    denied(read.map(drop).map_err(client::Error::from), "relay reads order-events");
    let dlq = relay.streams().put_records(put("order-events-dlq")).await;
    denied(dlq.map(drop).map_err(client::Error::from), "relay writes a dead-letter stream");
    let external = as_role("external-parties").await;
    let forged = external.streams().put_records(put("order-events")).await;
    denied(forged.map(drop).map_err(client::Error::from), "external-parties writes order-events");
    let other = external.streams().get_shard_iterator(iterator("customerServiceQueue")).await;
    denied(other.map(drop).map_err(client::Error::from), "external-parties reads another queue");
    denied(external.delete_group("order-events", "external-parties").await, "external-parties deletes its group");
    let setup = as_role("setup").await;
    denied(setup.delete_stream("order-events").await, "setup deletes a stream");
    denied(setup.update_retention("order-events", 48).await.map(drop), "setup changes retention");
    let e = setup.access().list_principals().await.map(drop);
    denied(e, "setup manages principals");
    let courier = as_role("courier").await;
    let read = courier.streams().get_shard_iterator(iterator("order-events")).await;
    denied(read.map(drop).map_err(client::Error::from), "the courier reads order-events");
    s.b.stop().await.expect("stop broker");
}

/// With API tokens on, every protected route refuses a caller without a
/// token, with a malformed header, with a token the broker does not know,
/// with an expired token, and a principal without the grant (403 naming
/// the action and resource); `/healthz` and `/readyz` stay open; each
/// refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_api_refuses_anonymous_bad_expired_and_ungranted_callers() {
    let s = Stack::start().await;
    let svc = start(s.config(true, 2_000).await).await;
    let fulfil = r#"{"orderId":"x","fulfillmentId":"CakeProducer1"}"#;
    let deliver = r#"{"orderId":"x","deliveryCompanyId":"D1","orderReview":"ok"}"#;
    let routes = [
        ("POST", "/order", SEED_ORDER),
        ("POST", "/order/fulfill", fulfil),
        ("POST", "/order/delivered", deliver),
        ("GET", "/order/x", ""),
        ("GET", "/orders", ""),
        ("GET", "/metrics", ""),
    ];
    let fake = client::Secret::new(broker::auth::token::generate().expect("token").token);
    for (method, path, body) in routes {
        let r = call(svc.addr, method, path, None, body).await;
        assert_unauthenticated(&r, "unauthenticated", "", &format!("{method} {path} anonymous"));
        for malformed in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "sbk_x"] {
            let r = request(svc.addr, method, path, &[("authorization", malformed)], body.as_bytes()).await;
            assert_unauthenticated(&r, "invalid_authorization", "", &format!("{method} {path} {malformed:?}"));
        }
        let r = call(svc.addr, method, path, Some(&fake), body).await;
        assert_unauthenticated(&r, "invalid_token", fake.expose(), &format!("{method} {path} unknown token"));
    }
    assert_eq!(get(svc.addr, "/healthz").await.status, 200);
    assert_ne!(get(svc.addr, "/readyz").await.status, 401);

    let short = s.token("storefront", Some(Duration::from_millis(1))).await;
    let r = eventually(LIMIT, "a 1 ms token refused as expired", || async {
        let r = call(svc.addr, "POST", "/order", Some(&short), SEED_ORDER).await;
        (r.status == 401).then_some(r)
    })
    .await;
    assert_unauthenticated(&r, "invalid_token", short.expose(), "expired");
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("expired")), "{}", r.body);

    s.admin.access().create_principal("nobody", "no grants").await.expect("principal");
    let nobody = s.token("nobody", None).await;
    let r = call(svc.addr, "POST", "/order", Some(&nobody), SEED_ORDER).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("forbidden")), "{}", r.body);
    let m = r.json()["message"].as_str().expect("message").to_string();
    assert!(m.contains("nobody") && m.contains("record:put") && m.contains("stream:order-events"), "{m}");
    assert!(!r.body.contains(nobody.expose()), "{}", r.body);

    let prometheus = s.token("prometheus", None).await;
    let page = call(svc.addr, "GET", "/metrics", Some(&prometheus), "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let count = |reason: &str| {
        let sample = format!("order_service_refusals_total{{listener=\"orders\",reason=\"{reason}\"}} ");
        page.body.lines().find_map(|l| l.strip_prefix(&sample)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(count("unauthenticated"), 6 * 6 + 1, "{}", page.body);
    assert_eq!(count("permission_denied"), 1, "{}", page.body);
    assert!(!page.body.contains(prometheus.expose()));
    svc.running.stop().await.expect("stop");
    s.b.stop().await.expect("stop broker");
}

/// A revoked token stops working within the decision cache's time to
/// live; with the broker down, a request whose decision is not cached is
/// answered 503, never let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_within_the_cache_ttl_and_a_down_broker_allows_nothing() {
    let s = Stack::start().await;
    let svc = start(s.config(true, 300).await).await;
    let storefront = s.token("storefront", None).await;
    let r = call(svc.addr, "POST", "/order", Some(&storefront), SEED_ORDER).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = s.admin.access().list_tokens(Some("storefront")).await.expect("tokens");
    let id = id.iter().find(|t| t.revoked_at_ms == 0).expect("the live token").id.clone();
    s.admin.access().revoke_token(&id).await.expect("revoke");
    let r = eventually(LIMIT, "the revoked token refused", || async {
        let r = call(svc.addr, "POST", "/order", Some(&storefront), SEED_ORDER).await;
        (r.status != 201).then_some(r)
    })
    .await;
    assert_unauthenticated(&r, "invalid_token", storefront.expose(), "revoked");
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("revoked")), "{}", r.body);

    let producer = s.token("cake-producer", None).await;
    s.b.stop().await.expect("stop broker");
    let r = call(svc.addr, "GET", "/orders", Some(&producer), "").await;
    assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("authentication_unavailable")), "{}", r.body);
    assert!(!r.body.contains(producer.expose()), "{}", r.body);
    svc.running.stop().await.expect("stop");
}

/// The order flow with TLS and authentication on everywhere: the broker
/// serves TLS with auth on, the service reaches it over TLS as its
/// least-privilege principals, the order API serves TLS and takes broker
/// tokens, and the delivery company (a webhook, then the test as
/// `courier`) marks the order delivered over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_passes_with_tls_and_authentication_on() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let broker_files = ca.server().write(certs_dir.path(), "broker", &ca);
    let api_files = ca.server().write(certs_dir.path(), "api", &ca);
    let s = Stack::start_tls(Some(&broker_files)).await;
    let mut config = s.config(true, 2_000).await;
    config.broker_tls.ca_file = Some(broker_files.ca.clone());
    config.tls.cert_file = Some(api_files.cert);
    config.tls.key_file = Some(api_files.key);
    // The built-in simulator calls the API over plain HTTP; a webhook stands in.
    config.api_auth.delivery_simulator_token_file = None;
    let (hook, log) = webhook_server(1, |_| 200).await;
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let svc = start(config).await;
    let (storefront, producer, courier) =
        (s.token("storefront", None).await, s.token("cake-producer", None).await, s.token("courier", None).await);

    let (status, body) = https(svc.addr, &ca.pem, "POST", "/order", &[], SEED_ORDER).await;
    assert_eq!(status, 401, "anonymous over TLS: {body}");
    let (status, body) =
        https(svc.addr, &ca.pem, "POST", "/order", &[("authorization", &bearer(&storefront))], SEED_ORDER).await;
    assert_eq!(status, 201, "{body}");
    let order: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let id = order["orderId"].as_str().expect("id").to_string();
    let fulfil = serde_json::json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    let (status, body) =
        https(svc.addr, &ca.pem, "POST", "/order/fulfill", &[("authorization", &bearer(&producer))], &fulfil).await;
    assert_eq!(status, 200, "{body}");
    eventually(LIMIT, "the fulfilled order at the delivery webhook", || async {
        log.accepted().into_iter().find(|v| v["orderId"] == id.as_str())
    })
    .await;
    let deliver = serde_json::json!({"orderId": id, "deliveryCompanyId": "D1", "orderReview": "on time"}).to_string();
    let (status, body) =
        https(svc.addr, &ca.pem, "POST", "/order/delivered", &[("authorization", &bearer(&courier))], &deliver).await;
    assert_eq!(status, 200, "{body}");
    eventually(LIMIT, "the review email (customer-service read its queue over TLS)", || async {
        emails(&svc.data_dir).into_iter().find(|(_, e)| e.contains("Subject: Order review") && e.contains(&id))
    })
    .await;
    svc.running.stop().await.expect("stop");
    s.b.stop().await.expect("stop broker");
}

/// A caller over its principal's broker request rate (each check that
/// misses the decision cache is one broker request) gets 429 with a
/// `Retry-After`, counted as rate_limited; another principal is not held
/// back. (No stack deploy here: its many calls would exceed the small rate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_principals_rate_gets_429() {
    let (dir, mut bc, admin_token) = secured_broker_config();
    bc.auth.requests_per_sec_per_principal = 5;
    let b = TestBroker::start_with(bc, Arc::new(SystemClock)).await;
    let admin_token = client::Secret::new(admin_token);
    let options = client::ConnectOptions { token: Some(admin_token.clone()), ..Default::default() };
    let access = client::Access::from_channel(
        client::Connection::open(&format!("http://{}", b.grpc_addr), &options).await.expect("admin"),
    );
    access.create_principal("reader", "").await.expect("principal");
    access.add_grant(client::allow("reader", "record:get", "stream:order-events")).await.expect("grant");
    let (_, reader) = access.create_token("reader", "", None).await.expect("token");

    let mut config = test_config(&dir.path().join("data"));
    config.broker = Some(format!("http://{}", b.grpc_addr));
    config.api_auth.mode = order_service::config::ApiAuthMode::BrokerToken;
    // A 1 ms cache: (almost) every request asks the broker.
    config.api_auth.cache_ttl_ms = 1;
    config.delivery_webhook_url = Some("http://127.0.0.1:9/deliveries".into());
    let svc = start(config).await;
    let mut throttled = None;
    for _ in 0..100 {
        let r = call(svc.addr, "GET", "/orders", Some(&reader), "").await;
        if r.status != 200 {
            throttled = Some(r);
            break;
        }
    }
    let r = throttled.expect("100 checks at once exceed 5 per second");
    assert_eq!((r.status, r.json()["error"].as_str()), (429, Some("rate_limited")), "{}", r.body);
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n >= 1)), "{:?}", r.headers);
    assert!(!r.body.contains(reader.expose()), "{}", r.body);
    let page = call(svc.addr, "GET", "/metrics", Some(&admin_token), "").await;
    assert_eq!(page.status, 200, "another principal has its own rate: {}", page.body);
    assert!(
        page.body.contains(r#"order_service_refusals_total{listener="orders",reason="rate_limited"} 1"#),
        "{}",
        page.body
    );
    svc.running.stop().await.expect("stop");
    b.stop().await.expect("stop broker");
}
