//! The optional integrations: the delivery webhook and SMTP, against small
//! local servers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

/// An HTTP server that records each POSTed JSON body.
async fn webhook() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/deliveries",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_webhook_receives_the_fulfilled_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, mut bodies) = webhook().await;
    let mut config = test_config(dir.path());
    config.delivery_webhook_url = Some(format!("http://{hook}/deliveries"));
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let r =
        post(svc.addr, "/order/fulfill", &json!({"orderId": id, "fulfillmentId": "CakeProducer1"}).to_string()).await;
    assert_eq!(r.status, 200);
    let body = tokio::time::timeout(LIMIT, bodies.recv()).await.expect("webhook called in time").expect("body");
    assert_eq!(body["orderId"], id.as_str());
    assert_eq!(body["status"], "fulfilled");
    assert!(body["sentToDeliveryDate"].is_u64(), "{body}");
    // With a webhook, delivery is up to the company: the order stays fulfilled.
    assert_eq!(get(svc.addr, &format!("/order/{id}")).await.json()["status"], "fulfilled");
    svc.running.stop().await.expect("clean stop");
}

/// A minimal SMTP server (no TLS) that records each message's DATA.
async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 test ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            let _ = tx.send(data.take().unwrap_or_default());
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_configured_the_cake_producer_is_mailed_over_smtp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, mut mails) = smtp_server().await;
    let mut config = test_config(dir.path());
    config.smtp.host = Some("127.0.0.1".into());
    config.smtp.port = port;
    config.smtp.starttls = false;
    let svc = start(config).await;
    let id = post(svc.addr, "/order", SEED_ORDER).await.json()["orderId"].as_str().expect("id").to_string();
    let mail = tokio::time::timeout(LIMIT, mails.recv()).await.expect("mail in time").expect("mail");
    assert!(mail.contains("Subject: New cake order"), "{mail}");
    assert!(mail.contains(&id), "{mail}");
    assert!(emails(&svc.data_dir).is_empty(), "no .eml files when SMTP is configured");
    svc.running.stop().await.expect("clean stop");
}
