//! Connections: deadlines, errors that name the address and the cause, and
//! surviving a broker restart on the same address.

mod common;

use std::time::Duration;

use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::types as pb;
use client::{Admin, ConnectOptions, Connection, Error, Producer, ProducerConfig};
use common::{HANG, rebind, run_broker};

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

/// Connects and lists streams: the first call that has to reach a broker.
async fn list_at(addr: &str) -> client::Result<Vec<String>> {
    let admin = Admin::connect(addr).await?;
    admin.list_streams().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_port_is_named_with_refused() {
    let addr = closed_port().await;
    let e = tokio::time::timeout(HANG, list_at(&addr)).await.expect("fails instead of hanging").expect_err("no broker");
    let text = e.to_string();
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(text.contains("refused"), "names the cause: {text}");
    assert!(e.is_retryable(), "a refused connection may succeed later: {e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_that_never_answers_fails_within_the_deadline() {
    // Accepts connections (the kernel completes the handshake into the
    // backlog) but never reads or writes a byte.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let e = tokio::time::timeout(HANG, list_at(&addr))
        .await
        .expect("the request deadline ends the call instead of a hang")
        .expect_err("nothing answered");
    let text = e.to_string();
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(e.is_retryable(), "{e:?}");
    drop(silent);
}

/// A bare HTTP/1 server: answers every connection with a 400 and closes it.
async fn http1_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ =
                    s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_that_never_completes_fails_within_the_connect_deadline() {
    // A listener with a backlog of one that never accepts: once its queue
    // is full, the kernel drops further SYNs and a connect stays pending.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let full = socket.listen(1).expect("listen");
    let addr = full.local_addr().expect("addr");
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => queued.push(s),
            Ok(Err(e)) => panic!("connect to the full listener: {e}"),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let options = ConnectOptions { connect_timeout: Duration::from_millis(500), ..ConnectOptions::default() };
    let e = tokio::time::timeout(HANG, Connection::open(&addr.to_string(), &options))
        .await
        .expect("the connect deadline ends the dial instead of a hang")
        .expect_err("nothing accepts");
    assert!(e.to_string().contains(&format!("connecting to {addr} timed out")), "{e}");
    assert!(e.is_retryable(), "{e:?}");
    drop((full, queued));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_port_is_not_taken_for_a_broker() {
    let addr = http1_server().await;
    let e = tokio::time::timeout(HANG, list_at(&addr)).await.expect("fails instead of hanging").expect_err("not gRPC");
    let text = e.to_string();
    assert!(text.contains(&format!("{addr} is not a stream-broker gRPC port (it answered HTTP/1)")), "{text}");
    assert!(matches!(e, Error::NotBroker(_)), "a wrong port stays wrong: {e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_brokers_http_port_is_not_taken_for_its_grpc_port() {
    let b = TestBroker::start().await;
    // The admin port answers HTTP/2 too, but not gRPC.
    let addr = b.http_addr.to_string();
    let e = tokio::time::timeout(HANG, list_at(&addr)).await.expect("fails instead of hanging").expect_err("not gRPC");
    let text = e.to_string();
    assert!(text.contains(&format!("{addr} is not a stream-broker gRPC port")), "{text}");
    assert!(!e.is_retryable(), "a wrong port stays wrong: {e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_host_is_named() {
    let e = tokio::time::timeout(HANG, list_at("brokr.invalid:7470"))
        .await
        .expect("fails instead of hanging")
        .expect_err("no such host");
    let text = e.to_string();
    assert!(text.contains("cannot resolve host brokr.invalid"), "{text}");
    assert!(matches!(e, Error::Unavailable(_)), "DNS may recover: {e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_survives_a_broker_restart_on_the_same_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let first = run_broker(dir.path(), grpc, BrokerConfig::default()).await;
    let admin = Admin::connect(&addr.to_string()).await.expect("admin");
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    let config = ProducerConfig { max_retries: 1000, backoff_max: Duration::from_millis(200), ..Default::default() };
    let producer = Producer::connect(&addr.to_string(), "s", config).await.expect("producer");
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push((i, producer.send(format!("k{}", i % 4), format!("{i}")).await.expect("send")));
    }
    for (_, ack) in acks.drain(..) {
        ack.await.expect("acknowledged before the restart");
    }

    first.stop().await;
    // Sent while the broker is down: the producer's connection is broken.
    for i in 20..40 {
        acks.push((i, producer.send(format!("k{}", i % 4), format!("{i}")).await.expect("send while down")));
    }
    let grpc = rebind(addr).await;
    let second = run_broker(dir.path(), grpc, BrokerConfig::default()).await;
    for (i, ack) in acks {
        tokio::time::timeout(HANG, ack)
            .await
            .expect("acknowledged within the bound")
            .unwrap_or_else(|e| panic!("record {i} failed across the restart: {e}"));
    }
    producer.close().await.expect("close");
    let d = admin.describe_stream("s").await.expect("the admin's connection reconnects too");
    let stored: u64 = d.shards.iter().map(|s| s.next_sequence_number).sum();
    assert!(stored >= 40, "every record stored (at least once): {stored}");
    second.stop().await;
}

/// A TCP proxy to `upstream` that forwards until frozen, then swallows
/// everything in both directions; reports when the client closes its side.
async fn freezing_proxy(
    upstream: std::net::SocketAddr,
) -> (String, tokio::sync::watch::Sender<bool>, tokio::sync::mpsc::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    let (closed_tx, closed) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.expect("upstream");
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (f1, f2, closed_tx) = (frozen.clone(), frozen.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = closed_tx.send(()).await;
                            return;
                        }
                        Ok(n) if !*f1.borrow() => {
                            let _ = sw.write_all(&buf[..n]).await;
                        }
                        Ok(_) => {}
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !*f2.borrow() {
                        let _ = cw.write_all(&buf[..n]).await;
                    }
                }
            });
        }
    });
    (addr, freeze, closed)
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_closes_an_idle_connection_whose_peer_went_silent() {
    let b = TestBroker::start().await;
    let (addr, freeze, mut closed) = freezing_proxy(b.grpc_addr).await;
    let options = ConnectOptions {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let admin = Admin::from_channel(Connection::open(&addr, &options).await.expect("open"));
    admin.list_streams().await.expect("works through the proxy");
    freeze.send(true).expect("freeze");
    // Idle from here on: only keepalive can notice that nothing answers.
    tokio::time::timeout(HANG, closed.recv())
        .await
        .expect("the client closes a connection whose PINGs go unanswered")
        .expect("proxy running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_is_exempt_from_the_request_deadline() {
    let b = TestBroker::start().await;
    let admin = Admin::connect(&b.endpoint()).await.expect("admin");
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 1, ..Default::default() })
        .await
        .expect("create");
    let joined = admin
        .groups()
        .join_group(pb::JoinGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            start: None,
            client_id: "test".into(),
        })
        .await
        .expect("join")
        .into_inner();
    // Only the poll goes through the connection with a short deadline.
    let options = ConnectOptions { request_timeout: Duration::from_millis(300), ..ConnectOptions::default() };
    let mut groups = Admin::from_channel(Connection::open(&b.endpoint(), &options).await.expect("open")).groups();
    // An empty shard: the poll waits its full 1.5 s, five request deadlines.
    let shards = joined
        .assignment
        .map(|a| {
            a.leases
                .into_iter()
                .map(|l| pb::ShardPosition {
                    shard_id: l.shard_id,
                    lease_epoch: l.lease_epoch,
                    next_sequence_number: None,
                })
                .collect()
        })
        .unwrap_or_default();
    let poll = groups
        .poll(pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: joined.member_id,
            shards,
            max_records: 10,
            wait_ms: 1500,
        })
        .await
        .map_err(Error::from)
        .expect("a long poll outlives the request deadline");
    assert!(poll.into_inner().shards.is_empty());
    // A unary call is still bounded: against a silent port it fails.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let admin = Admin::from_channel(Connection::open(&addr, &options).await.expect("open"));
    let e = tokio::time::timeout(HANG, admin.list_streams()).await.expect("bounded").expect_err("silent");
    assert!(e.to_string().contains("did not answer within 300ms"), "{e}");
}
