//! Support for the Kinesis API tests: the real clients (boto3, the aws CLI,
//! the AWS SDK for JavaScript v3) installed by `.ci/kinesis-deps` under
//! `<target dir>/kinesis-deps`, run against an in-process broker; and a
//! minimal HTTP/1.1 client for hand-built requests (CBOR, raw errors).
//!
//! If the clients are not installed, the tests install them (running the
//! script), and fail with its output if that fails: a missing client never
//! passes silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::{Clock, ManualClock, SystemClock};
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest a client script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The access key the clients sign with (strict-mode tests configure it).
pub const ACCESS_KEY_ID: &str = "AKIDKINESISTEST";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "kinesis-test-secret";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target directory this test binary was built in.
fn target_dir() -> PathBuf {
    // <target>/debug/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("the binary lives in <target>/<profile>/deps").to_path_buf()
}

/// `<target>/kinesis-deps`, installed by `.ci/kinesis-deps` if needed.
pub fn deps() -> PathBuf {
    let dest = target_dir().join("kinesis-deps");
    let out = Command::new(repo().join(".ci/kinesis-deps"))
        .arg(&dest)
        .stdin(Stdio::null())
        .output()
        .expect("run .ci/kinesis-deps");
    assert!(
        out.status.success(),
        "installing the Kinesis test clients failed (.ci/kinesis-deps {}): {}\n{}",
        dest.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

/// A manual clock at the current time.
pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

/// A broker with default settings and its Kinesis API.
pub async fn broker() -> (TestBroker, tempfile::TempDir) {
    broker_with(|_| {}, Arc::new(SystemClock)).await
}

/// A broker whose configuration `tweak` adjusts, on `clock`.
pub async fn broker_with(
    tweak: impl FnOnce(&mut BrokerConfig),
    clock: Arc<dyn Clock>,
) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.kinesis.consumer_activation_ms = 200;
    tweak(&mut config);
    let b = TestBroker::start_with(config, clock).await;
    wait_ready(b.kinesis_addr.expect("the Kinesis API is on")).await;
    (b, dir)
}

/// Waits until the Kinesis listener answers.
async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http(addr, "GET", "/healthcheck", &[], b"").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the Kinesis API did not come up within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client script printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Panics with the script's output unless it succeeded.
    pub fn expect_ok(self, what: &str) -> String {
        assert!(self.ok, "{what} failed\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self.stdout
    }
}

/// Runs `cmd` to its end, killing it after [`SCRIPT_TIMEOUT`]. A script
/// line `ADVANCE <ms>` moves `clock` forward (the script then reads
/// `done`, or `no-clock` when the broker runs on the system clock), so
/// time-based rules are tested without sleeping.
async fn run(mut cmd: Command, clock: Option<Arc<ManualClock>>) -> Ran {
    tokio::task::spawn_blocking(move || {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn client");
        let (out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
        let mut stdin = child.stdin.take().expect("stdin");
        let out_reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                let Ok(line) = line else { break };
                if let Some(ms) = line.strip_prefix("ADVANCE ").and_then(|ms| ms.trim().parse::<u64>().ok()) {
                    let answer = match &clock {
                        Some(c) => {
                            c.advance(ms);
                            "done\n"
                        }
                        None => "no-clock\n",
                    };
                    let _ = std::io::Write::write_all(&mut stdin, answer.as_bytes());
                    let _ = std::io::Write::flush(&mut stdin);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut err, &mut s).ok();
            s
        });
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for client") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, mut stderr) = (out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
        if status.is_none() {
            stderr.push_str(&format!("\n(killed after {} s)", SCRIPT_TIMEOUT.as_secs()));
        }
        Ran { ok: status.is_some_and(|s| s.success()), stdout, stderr }
    })
    .await
    .expect("client runner")
}

/// The environment every AWS client gets: fixed credentials and region,
/// the endpoint override, and no configuration files or instance metadata.
fn aws_env(cmd: &mut Command, endpoint: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KINESIS", endpoint)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("KINESIS_ENDPOINT", endpoint);
}

/// Runs `broker/tests/kinesis/boto3_suite.py <case>` against `endpoint`,
/// whose broker runs on `clock` if it is a manual one.
pub async fn boto3(endpoint: &str, case: &str, clock: Option<Arc<ManualClock>>) -> Ran {
    let deps = deps();
    let mut cmd = Command::new(deps.join("venv/bin/python"));
    cmd.arg(repo().join("broker/tests/kinesis/boto3_suite.py")).arg(case);
    aws_env(&mut cmd, endpoint);
    run(cmd, clock).await
}

/// Runs `broker/tests/kinesis/awscli_suite.sh` with the venv's `aws`.
pub async fn awscli(endpoint: &str) -> Ran {
    let deps = deps();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("broker/tests/kinesis/awscli_suite.sh"));
    aws_env(&mut cmd, endpoint);
    let path = format!("{}:{}", deps.join("venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path);
    run(cmd, None).await
}

/// Runs `broker/tests/kinesis/<script>` with node, resolving modules from
/// the installed `node_modules`.
pub async fn node(endpoint: &str, script: &str, args: &[&str]) -> Ran {
    let deps = deps();
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("broker/tests/kinesis").join(script)).args(args);
    aws_env(&mut cmd, endpoint);
    cmd.env("NODE_PATH", deps.join("node/node_modules"));
    run(cmd, None).await
}

/// An HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the
/// response body is read to its `Content-Length` or to the end.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no response within 60 s"))??;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[(end + 4 + size).min(b.len())..];
    }
    out
}

/// A well-formed (unverified in permissive mode) SigV4 header.
pub const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDKINESISTEST/20260101/us-east-1/kinesis/aws4_request, \
     SignedHeaders=host;x-amz-date;x-amz-target, Signature=0000000000000000000000000000000000000000000000000000000000000000";

/// A Kinesis call in `content_type` with a permissive-mode signature.
pub async fn call(addr: std::net::SocketAddr, operation: &str, content_type: &str, body: &[u8]) -> HttpResponse {
    let target = format!("Kinesis_20131202.{operation}");
    http(
        addr,
        "POST",
        "/",
        &[
            ("x-amz-target", &target),
            ("content-type", content_type),
            ("x-amz-date", "20260101T000000Z"),
            ("authorization", AUTHORIZATION),
        ],
        body,
    )
    .await
    .expect("Kinesis call")
}

/// A JSON Kinesis call; the body as JSON.
pub async fn json(addr: std::net::SocketAddr, operation: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = call(addr, operation, "application/x-amz-json-1.1", body.to_string().as_bytes()).await;
    let value =
        if r.body.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&r.body).expect("JSON answer") };
    (r.status, value)
}
