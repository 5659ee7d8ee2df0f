//! The order service's security wiring: the order API over TLS (plaintext
//! refused and counted) and the service publishing to a broker over TLS.
//! Certificates are generated at test time (rcgen).

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

/// The whole order flow against a broker with authentication on, the
/// service's parts running as the least-privilege principals of
/// deploy/stack.toml (deployed with `client::stack::deploy` as the
/// bootstrap admin), each by its own token; and each part refused what it
/// does not need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_runs_as_the_stack_files_least_privilege_principals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin_token = broker::auth::token::generate().expect("token").token;
    let admin_file = dir.path().join("admin.token");
    std::fs::write(&admin_file, &admin_token).expect("write");
    let mut bc = BrokerConfig { data_dir: dir.path().join("broker"), ..BrokerConfig::default() };
    bc.auth.enabled = true;
    bc.auth.bootstrap_token_file = Some(admin_file);
    let b = TestBroker::start_with(bc, Arc::new(SystemClock)).await;
    let broker = format!("http://{}", b.grpc_addr);
    let as_token = |t: &client::Secret| client::ConnectOptions { token: Some(t.clone()), ..Default::default() };
    let admin_options = as_token(&client::Secret::new(admin_token));
    let admin = client::Admin::from_channel(client::Connection::open(&broker, &admin_options).await.expect("admin"));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stack.toml");
    let stack = client::stack::Stack::load(&shipped).expect("deploy/stack.toml");
    client::stack::deploy(&admin, &stack).await.expect("deploy the stack with its principals");

    let mut config = test_config(&dir.path().join("data"));
    config.broker = Some(broker.clone());
    let mut tokens = std::collections::BTreeMap::new();
    for role in ["setup", "relay", "external-parties", "delivery-company", "customer-service"] {
        let (_, token) = admin.access().create_token(role, "test", None).await.expect("token");
        let file = dir.path().join(format!("{role}.token"));
        std::fs::write(&file, token.expose()).expect("write");
        let c = &mut config.broker_credentials;
        let slot = match role {
            "setup" => &mut c.setup_token_file,
            "relay" => &mut c.relay_token_file,
            "external-parties" => &mut c.external_parties_token_file,
            "delivery-company" => &mut c.delivery_company_token_file,
            _ => &mut c.customer_service_token_file,
        };
        *slot = Some(file);
        tokens.insert(role, token);
    }
    let svc = start(config).await;
    let order = post(svc.addr, "/order", SEED_ORDER).await.json();
    let id = order["orderId"].as_str().expect("id").to_string();
    let fulfil = serde_json::json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string();
    eventually(LIMIT, "the new-order email (external-parties read order-events)", || async {
        emails(&svc.data_dir).into_iter().find(|(_, e)| e.contains(&id))
    })
    .await;
    let r = post(svc.addr, "/order/fulfill", &fulfil).await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(LIMIT, "the review email (delivery-company and customer-service ran)", || async {
        emails(&svc.data_dir).into_iter().find(|(_, e)| e.contains("Subject: Order review") && e.contains(&id))
    })
    .await;
    let events = eventually(LIMIT, "three order events", || async {
        let ev = read_stream_as(&broker, &admin_options, "order-events").await;
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
    let as_role = |role: &str| {
        let options = as_token(&tokens[role]);
        let broker = broker.clone();
        async move { client::Admin::from_channel(client::Connection::open(&broker, &options).await.expect("c")) }
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
    b.stop().await.expect("stop broker");
}
