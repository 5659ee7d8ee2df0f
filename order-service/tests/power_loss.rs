//! Power-loss test of the real `order-service` binary (with its embedded
//! broker) on `powerfs`, a FUSE filesystem that keeps only what was
//! fsynced: power is cut right after `POST /order` answers 201, and the
//! order must be there after the restart.
//!
//! Needs FUSE (`/dev/fuse`, root); without it the test fails and says so.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use powerfs::{LossMode, PowerFs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The service process; killed on drop.
struct Service {
    child: Child,
    addr: SocketAddr,
}

impl Service {
    /// Starts the service on `data_dir` and waits for its "listening" line
    /// on stdout, which names the HTTP address.
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env("ORDER_SERVICE_DATA_DIR", data_dir)
            .env("ORDER_SERVICE_HTTP_ADDR", "127.0.0.1:0")
            .env("ORDER_SERVICE_BROKER_GRPC_ADDR", "127.0.0.1:0")
            .env("ORDER_SERVICE_BROKER_ADMIN_ADDR", "127.0.0.1:0")
            .env("ORDER_SERVICE_DELIVERY_SIMULATOR_DELAY_MS", "100")
            .env("RUST_LOG", "info,sled=warn,h2=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn order-service");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            if out.read_line(&mut line).expect("read the service's log") == 0 {
                let status = child.wait().expect("reap");
                panic!("order-service exited before it started: {status}");
            }
            if line.starts_with("order-service listening ") {
                addr = line.split_whitespace().find_map(|w| w.strip_prefix("http=")?.parse().ok());
            }
        }
        // Keep draining stdout so the service never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self { child, addr: addr.expect("checked by the loop") }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; returns status, headers and body. Retries the
/// connection for up to 30 s (the service may still be opening its stores).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = None;
    for _ in 0..300 {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut s = stream.expect("the service accepts connections within 30 s");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write request");
    s.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 30 s")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    (status, head.to_string(), body.to_string())
}

fn sync_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sync_tree(&path);
        } else {
            File::open(&path).and_then(|f| f.sync_all()).expect("fsync file");
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync directory");
}

const ORDER: &str = r#"{"name":"marcia","address":"somewhere","productId":"productId11","quantity":"10"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_answered_201_survives_a_power_loss() {
    let fs = PowerFs::mount().unwrap_or_else(|e| panic!("power-loss tests cannot run here: {e}"));
    let dir = fs.path().join("data");
    std::fs::create_dir(&dir).expect("mkdir data");
    File::open(fs.path()).and_then(|d| d.sync_all()).expect("fsync the mount root");

    // The service's setup (stores, streams) has been there for a while:
    // made durable by a sync of the whole tree, so only the order is tested.
    let svc = Service::start(&dir);
    let (status, _, _) = request(svc.addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    svc.kill9();
    sync_tree(&dir);
    fs.power_loss(LossMode::DropUnsynced);

    let mut failures = Vec::new();
    const TRIALS: usize = 3;
    for t in 0..TRIALS {
        let svc = Service::start(&dir);
        let (status, head, body) = request(svc.addr, "POST", "/order", ORDER).await;
        assert_eq!(status, 201, "POST /order: {body}");
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .expect("201 names the order in Location")
            .trim()
            .to_string();
        svc.kill9();
        fs.power_loss(LossMode::DropUnsynced);

        let svc = Service::start(&dir);
        let (status, _, body) = request(svc.addr, "GET", &location, "").await;
        if status != 200 {
            failures.push(format!("trial {t}: {location} answered 201, then {status} after a power loss: {body}"));
        }
        svc.kill9();
    }
    assert!(failures.is_empty(), "{} failures in {TRIALS} trials:\n{}", failures.len(), failures.join("\n"));
}
