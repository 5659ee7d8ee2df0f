//! TLS on the gRPC and admin listeners, through the real client: a trusted
//! certificate works; an untrusted CA, an expired certificate, a wrong
//! server name and plaintext to a TLS port fail with errors that say so;
//! mutual TLS refuses clients without a certificate from the client CA; and
//! a certificate reloaded on SIGHUP is served to new connections while an
//! established connection keeps producing without an error. The framed
//! produce port speaks (mutual) TLS with the same certificate.
//! Certificates are generated at test time (rcgen); no key is committed.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::auth::tls::ClientAuth;
use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::types as pb;
use client::{Admin, ConnectOptions, Connection, Error, TlsOptions, WireProducer};
use common::certs::{Ca, Files};
use common::process::Process;

const BOUND: Duration = Duration::from_secs(30);

fn tls_config(dir: &Path, files: &Files) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: dir.join("data"), ..BrokerConfig::default() };
    c.tls.cert_file = Some(files.cert.clone());
    c.tls.key_file = Some(files.key.clone());
    c
}

fn options(ca_pem: &str) -> ConnectOptions {
    ConnectOptions {
        tls: Some(TlsOptions { ca_pem: ca_pem.as_bytes().to_vec(), ..TlsOptions::default() }),
        ..ConnectOptions::default()
    }
}

/// Connects and lists streams: the first call that needs the handshake.
async fn list(addr: &str, options: &ConnectOptions) -> client::Result<Vec<String>> {
    let conn = tokio::time::timeout(BOUND, Connection::open(addr, options)).await.expect("connect is bounded")?;
    tokio::time::timeout(BOUND, Admin::from_channel(conn).list_streams()).await.expect("the call is bounded")
}

fn assert_tls_error(e: &Error, cause: &str) {
    let text = e.to_string();
    assert!(matches!(e, Error::Tls(_)), "a TLS error, not {e:?}");
    assert!(text.contains("TLS handshake with"), "{text}");
    assert!(text.contains(cause), "names the cause {cause:?}: {text}");
    assert!(!e.is_retryable(), "a certificate problem does not pass by itself: {e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_certificate_serves_and_bad_ones_fail_with_their_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let files = ca.server().write(dir.path(), "server", &ca);
    let b = TestBroker::start_with(tls_config(dir.path(), &files), Arc::new(SystemClock)).await;
    let port = b.grpc_addr.port();
    let by_name = format!("https://localhost:{port}");
    let by_ip = format!("https://127.0.0.1:{port}");

    let admin = Admin::from_channel(Connection::open(&by_name, &options(&ca.pem)).await.expect("connect"));
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create over TLS");
    assert_eq!(list(&by_ip, &options(&ca.pem)).await.expect("the IP address is in the certificate"), vec!["s"]);
    let bare = format!("127.0.0.1:{port}");
    assert_eq!(list(&bare, &options(&ca.pem)).await.expect("host:port with TLS options is https"), vec!["s"]);

    let other = Ca::new("someone else's CA");
    let e = list(&by_name, &options(&other.pem)).await.expect_err("an untrusted CA");
    assert_tls_error(&e, "UnknownIssuer");

    let wrong_name = ConnectOptions {
        tls: Some(TlsOptions {
            ca_pem: ca.pem.as_bytes().to_vec(),
            server_name: Some("broker.example.com".into()),
            ..TlsOptions::default()
        }),
        ..ConnectOptions::default()
    };
    let e = list(&by_name, &wrong_name).await.expect_err("the certificate does not name broker.example.com");
    assert_tls_error(&e, "not valid for name");

    let e = list(&format!("http://127.0.0.1:{port}"), &ConnectOptions::default()).await.expect_err("plaintext");
    assert!(e.is_retryable() || matches!(e, Error::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("https://"), "the error suggests TLS: {e}");
    let (_, metrics) = common::https_get(b.http_addr, "/metrics", &ca.pem).await;
    assert!(
        metrics.contains(r#"stream_broker_refusals_total{listener="grpc",reason="tls_handshake"}"#),
        "failed handshakes are counted: {metrics}"
    );
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let files = ca.expired_server().write(dir.path(), "server", &ca);
    let b = TestBroker::start_with(tls_config(dir.path(), &files), Arc::new(SystemClock)).await;
    let e = list(&format!("https://localhost:{}", b.grpc_addr.port()), &options(&ca.pem))
        .await
        .expect_err("expired in 2001");
    assert_tls_error(&e, "expired");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_and_kinesis_ports_speak_tls_and_refuse_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test CA");
    let files = ca.server().write(dir.path(), "server", &ca);
    let b = TestBroker::start_with(tls_config(dir.path(), &files), Arc::new(SystemClock)).await;
    let (code, body) = common::https_get(b.http_addr, "/healthz", &ca.pem).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let plain = tokio::time::timeout(BOUND, common::try_http_get(b.http_addr, "/healthz"))
        .await
        .expect("a plaintext request ends instead of hanging");
    assert!(plain.is_none(), "plaintext to the TLS admin port gets no HTTP answer: {plain:?}");
    let kinesis = b.kinesis_addr.expect("the Kinesis API is on by default");
    let (code, _) = common::https_get(kinesis, "/healthcheck", &ca.pem).await;
    assert_eq!(code, 200, "the Kinesis API over TLS");
    let plain = tokio::time::timeout(BOUND, common::try_http_get(kinesis, "/healthcheck")).await.expect("bounded");
    assert!(plain.is_none(), "plaintext to the TLS Kinesis port gets no HTTP answer: {plain:?}");
    b.stop().await.expect("stop");
}

/// A broker that requires a client certificate from its client CA (the
/// admin port in plaintext, so tests read `/metrics` without one): the
/// broker, the server CA and the client CA.
async fn mutual_tls_broker(dir: &Path) -> (TestBroker, Ca, Ca) {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let files = ca.server().write(dir, "server", &ca);
    let mut config = tls_config(dir, &files);
    config.tls.client_ca_file = Some(clients.write(dir, "clients.pem"));
    config.tls.client_auth = ClientAuth::Required;
    config.tls.admin = false;
    (TestBroker::start_with(config, Arc::new(SystemClock)).await, ca, clients)
}

/// Trusts `ca` and presents `leaf`.
fn with_cert(ca: &Ca, leaf: common::certs::Leaf) -> ConnectOptions {
    ConnectOptions {
        tls: Some(TlsOptions {
            ca_pem: ca.pem.as_bytes().to_vec(),
            client_cert_pem: Some(leaf.cert_pem.into_bytes()),
            client_key_pem: Some(client::Secret::new(leaf.key_pem)),
            server_name: None,
        }),
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, ca, clients) = mutual_tls_broker(dir.path()).await;
    let addr = format!("https://localhost:{}", b.grpc_addr.port());
    list(&addr, &with_cert(&ca, clients.client("order-relay"))).await.expect("a certificate from the client CA");
    let e = list(&addr, &options(&ca.pem)).await.expect_err("no client certificate");
    assert!(matches!(e, Error::Tls(_) | Error::Unavailable(_)), "{e:?}");
    let stranger = Ca::new("a stranger's CA");
    let e =
        list(&addr, &with_cert(&ca, stranger.client("order-relay"))).await.expect_err("a certificate from another CA");
    assert!(matches!(e, Error::Tls(_) | Error::Unavailable(_)), "{e:?}");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wire_port_speaks_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, ca, clients) = mutual_tls_broker(dir.path()).await;
    let with_cert = with_cert(&ca, clients.client("order-relay"));
    let admin = Admin::from_channel(
        Connection::open(&format!("https://localhost:{}", b.grpc_addr.port()), &with_cert).await.expect("connect"),
    );
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create over TLS");
    let wire = format!("localhost:{}", b.wire_addr.expect("the wire listener").port());
    let producer = WireProducer::connect(&wire, &with_cert).await.expect("a certificate from the client CA");
    let ack = producer.put_record("s", "k", bytes::Bytes::from_static(b"over TLS")).await.expect("put over TLS");
    assert_eq!((ack.shard_id.as_str(), ack.sequence_number), ("shardId-000000000000", 0));

    let e = async { WireProducer::connect(&wire, &options(&ca.pem)).await?.put_record("s", "k", "x".into()).await }
        .await
        .expect_err("no client certificate");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    let e = WireProducer::connect(&wire, &ConnectOptions::default()).await.expect_err("plaintext to a TLS port");
    assert!(matches!(e, Error::Unavailable(_) | Error::NotBroker(_)), "{e:?}");
    let (_, metrics) = common::http_get(b.http_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"stream_broker_refusals_total{listener="wire",reason="tls_handshake"}"#),
        "failed handshakes on the wire port are counted: {metrics}"
    );
    b.stop().await.expect("stop");
}

/// Waits, bounded, for an observable condition.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces a file the way a deployment does: write aside, then rename.
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_reloaded_on_sighup_serves_new_connections_while_established_ones_keep_producing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = old_ca.server().write(dir.path(), "server", &old_ca);
    let env = [
        ("STREAM_BROKER_TLS__CERT_FILE", files.cert.to_str().expect("utf-8")),
        ("STREAM_BROKER_TLS__KEY_FILE", files.key.to_str().expect("utf-8")),
        ("STREAM_BROKER_TLS__ADMIN", "false"),
    ];
    let p = Process::start_with_env(&dir.path().join("data"), &env);
    let addr = format!("https://localhost:{}", p.grpc_addr.port());
    let conn = Connection::open(&addr, &options(&old_ca.pem)).await.expect("connect with the old CA");
    let admin = Admin::from_channel(conn.clone());
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 2, ..Default::default() })
        .await
        .expect("create");

    // Load: 4 producers on the established connection until told to stop.
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..4 {
        let (mut c, acked, failed, stop) = (admin.streams(), acked.clone(), failed.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let records = (0..10).map(|i| common::entry(&format!("k{p}-{i}"), format!("p{p}-{n}").as_bytes()));
                let req = pb::PutRecordsRequest { stream_name: "s".into(), records: records.collect() };
                match c.put_records(req).await {
                    Ok(r) if r.get_ref().failed_record_count == 0 => acked.fetch_add(10, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }));
    }
    wait_for("the producers are acknowledged", || acked.load(Ordering::Relaxed) >= 200).await;

    let e = list(&addr, &options(&new_ca.pem)).await.expect_err("the new CA is not served yet");
    assert_tls_error(&e, "UnknownIssuer");
    let leaf = new_ca.server();
    replace(&files.key, &leaf.key_pem);
    replace(&files.cert, &leaf.cert_pem);
    let status = std::process::Command::new("kill").args(["-HUP", &p.pid().to_string()]).status().expect("send SIGHUP");
    assert!(status.success());
    let deadline = Instant::now() + BOUND;
    loop {
        match list(&addr, &options(&new_ca.pem)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the reloaded certificate is served within {BOUND:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_reload = acked.load(Ordering::Relaxed);
    wait_for("the established connection keeps producing after the reload", || {
        acked.load(Ordering::Relaxed) >= at_reload + 200
    })
    .await;
    stop.cancel();
    for t in producers {
        t.await.expect("producer");
    }
    // The old connection was never re-dialled: a new dial with the old CA now fails.
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no produce failed across the reload");
    let e = list(&addr, &options(&old_ca.pem)).await.expect_err("the old certificate is gone for new connections");
    assert_tls_error(&e, "UnknownIssuer");
    println!(
        "tls reload: {} records acknowledged, {} after the reload, 0 failures",
        acked.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed) - at_reload
    );
}
