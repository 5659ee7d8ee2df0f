//! Test helpers: a service on 127.0.0.1:0 with its embedded broker, raw
//! HTTP/1.1 over TCP, stream reads through `client::ShardReader`, and
//! bounded polling.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use order_service::{Config, Running};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `fields` of an error body.
    pub fn fields(&self) -> Vec<String> {
        self.json()["fields"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect to the service");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    // A server may answer (413) before reading the whole body; ignore write errors then.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Resp { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(addr, "POST", path, &[], body.as_bytes()).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

pub const SEED_ORDER: &str = r#"{"name":"marcia","address":"somewhere","productId":"productId11","quantity":"10"}"#;

/// A configuration for tests: everything on 127.0.0.1:0, short delays.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        broker_grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        broker_admin_addr: "127.0.0.1:0".parse().expect("addr"),
        delivery_simulator_delay_ms: 100,
        consumer_retry_backoff_ms: 20,
        consumer_retry_backoff_max_ms: 200,
        ..Config::default()
    }
}

/// A running service and its data directory.
pub struct Svc {
    pub running: Running,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

pub async fn start(config: Config) -> Svc {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let data_dir = config.data_dir.clone();
    let running = order_service::start(config, listener, CancellationToken::new()).await.expect("service starts");
    Svc { addr: running.http_addr, running, data_dir }
}

/// Polls `f` every 20 ms until it returns Some, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `.eml` files in the service's email directory.
pub fn emails(data_dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(dir) = std::fs::read_dir(data_dir.join("emails")) else { return Vec::new() };
    let mut v: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (p, text)
        })
        .collect();
    v.sort();
    v
}

/// Every record of `stream` (its first shard) up to now, as text.
pub async fn read_stream(broker: &str, stream: &str) -> Vec<String> {
    read_stream_as(broker, &client::ConnectOptions::default(), stream).await
}

/// [`read_stream`] with these connection options (TLS, a token).
pub async fn read_stream_as(broker: &str, options: &client::ConnectOptions, stream: &str) -> Vec<String> {
    let Ok(channel) = client::Connection::open(broker, options).await else { return Vec::new() };
    let admin = client::Admin::from_channel(channel.clone());
    let Ok(d) = admin.describe_stream(stream).await else { return Vec::new() };
    let Some(shard) = d.shards.first() else { return Vec::new() };
    let mut reader = client::ShardReader::open(channel, stream, &shard.shard_id, client::Position::TrimHorizon)
        .await
        .expect("reader");
    let mut out = Vec::new();
    loop {
        let (records, behind) = reader.read(1000).await.expect("read");
        let empty = records.is_empty();
        out.extend(records.into_iter().map(|r| String::from_utf8_lossy(&r.data).to_string()));
        if empty || behind == 0 {
            return out;
        }
    }
}

/// Records of `stream` parsed as JSON.
pub async fn stream_json(broker: &str, stream: &str) -> Vec<Value> {
    read_stream(broker, stream).await.iter().filter_map(|s| serde_json::from_str(s).ok()).collect()
}

/// A port on 127.0.0.1 that nothing listens on (until a test binds it).
pub async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// How long a fake server holds an answer while waiting for a concurrent
/// second request; only a bound, never the thing a test waits for.
pub const HOLD_MAX: Duration = Duration::from_secs(2);

/// Waits until `count()` reaches `want` (woken by `arrived`) or [`HOLD_MAX`] passed.
async fn hold(arrived: &tokio::sync::Notify, count: impl Fn() -> usize, want: usize) {
    let deadline = Instant::now() + HOLD_MAX;
    loop {
        let notified = arrived.notified();
        tokio::pin!(notified);
        // Registered before the count is read, so an arrival in between still wakes us.
        notified.as_mut().enable();
        if count() >= want || Instant::now() >= deadline {
            return;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// Messages a fake SMTP server received, and its RCPT TO commands.
#[derive(Debug, Default)]
pub struct SmtpLog {
    pub messages: std::sync::Mutex<Vec<String>>,
    pub rcpts: std::sync::atomic::AtomicUsize,
    pub arrived: tokio::sync::Notify,
}

impl SmtpLog {
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("log").clone()
    }
    pub fn rcpts(&self) -> usize {
        self.rcpts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a fake SMTP server does besides accepting mail.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmtpBehaviour {
    /// Answer a message's final "." only once this many messages arrived
    /// (or after [`HOLD_MAX`]), so that concurrent senders overlap.
    pub hold_for: usize,
    /// The reply to RCPT TO instead of "250 ok" (e.g. a permanent 550).
    pub rcpt_reply: Option<&'static str>,
}

/// A minimal SMTP server (no TLS) on `listener`.
pub fn smtp_server_on(listener: TcpListener, behaviour: SmtpBehaviour) -> std::sync::Arc<SmtpLog> {
    use tokio::io::AsyncBufReadExt;
    let log = std::sync::Arc::new(SmtpLog::default());
    let shared = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let log = shared.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                let _ = w.write_all(b"220 test ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            log.messages.lock().expect("log").push(data.take().unwrap_or_default());
                            log.arrived.notify_waiters();
                            hold(&log.arrived, || log.messages.lock().expect("log").len(), behaviour.hold_for).await;
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "EHLO" | "HELO" => "250 test".to_string(),
                        "RCPT" => {
                            log.rcpts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            behaviour.rcpt_reply.unwrap_or("250 ok").to_string()
                        }
                        "DATA" => {
                            data = Some(String::new());
                            "354 go ahead".to_string()
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => "250 ok".to_string(),
                    };
                    let _ = w.write_all(format!("{reply}\r\n").as_bytes()).await;
                }
            });
        }
    });
    log
}

/// A fake SMTP server on a fresh port.
pub async fn smtp_server(behaviour: SmtpBehaviour) -> (u16, std::sync::Arc<SmtpLog>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    (port, smtp_server_on(l, behaviour))
}

/// Calls a fake webhook received: each JSON body with the status it got.
#[derive(Default)]
pub struct HookLog {
    pub calls: std::sync::Mutex<Vec<(Value, u16)>>,
    pub arrived: tokio::sync::Notify,
}

impl HookLog {
    pub fn calls(&self) -> Vec<(Value, u16)> {
        self.calls.lock().expect("log").clone()
    }
    /// Bodies answered with a 2xx.
    pub fn accepted(&self) -> Vec<Value> {
        self.calls().into_iter().filter(|(_, s)| (200..300).contains(s)).map(|(b, _)| b).collect()
    }
}

/// A webhook at `http://<addr>/deliveries` that answers `status(call_index)`,
/// holding each answer until `hold_for` calls arrived (or [`HOLD_MAX`]).
pub async fn webhook_server(
    hold_for: usize,
    status: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> (SocketAddr, std::sync::Arc<HookLog>) {
    let log = std::sync::Arc::new(HookLog::default());
    let status = std::sync::Arc::new(status);
    let shared = log.clone();
    let app = axum::Router::new().route(
        "/deliveries",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (log, status) = (shared.clone(), status.clone());
            async move {
                let code = {
                    let mut calls = log.calls.lock().expect("log");
                    let code = status(calls.len());
                    calls.push((v, code));
                    code
                };
                log.arrived.notify_waiters();
                hold(&log.arrived, || log.calls.lock().expect("log").len(), hold_for).await;
                axum::http::StatusCode::from_u16(code).expect("status code")
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, log)
}

/// The value of a `/metrics` sample line, 0 when absent.
pub async fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let body = get(addr, "/metrics").await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
