//! Test support for this and other crates (and `stream-bench`):
//! [`TestBroker`], an in-process broker with real gRPC and HTTP on
//! `127.0.0.1:0` and real files in a temporary directory;
//! [`history::History`], a checker of delivery guarantees (lost, skipped,
//! reordered, corrupted and duplicate records); and
//! [`proxy::FaultyProxy`], a TCP proxy that cuts connections and drops
//! responses on the way to a broker that may restart elsewhere.

pub mod history;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::BrokerConfig;
use crate::error::Result;

pub use history::{Anomaly, History, Report};
pub use proxy::{Faults, FaultyProxy, ProxyStats};

/// A running in-process broker. Stop it with [`TestBroker::stop`]; dropping
/// it cancels the broker without waiting.
#[derive(Debug)]
pub struct TestBroker {
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP admin address.
    pub http_addr: SocketAddr,
    /// Kinesis API address (`None` when `kinesis.enabled` is false).
    pub kinesis_addr: Option<SocketAddr>,
    /// Framed produce protocol address (`None` when `wire.enabled` is false).
    pub wire_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// A broker with default settings in a fresh temporary directory.
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temporary directory for the test broker");
        let config = BrokerConfig { data_dir: temp.path().to_path_buf(), ..BrokerConfig::default() };
        let mut b = Self::start_with(config, Arc::new(SystemClock)).await;
        b._temp = Some(temp);
        b
    }

    /// A broker with this configuration and clock; the addresses in
    /// `config` are ignored (every listener binds `127.0.0.1:0`).
    pub async fn start_with(config: BrokerConfig, clock: Arc<dyn Clock>) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC listener");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP listener");
        let kinesis = match config.kinesis.enabled {
            true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind Kinesis listener")),
            false => None,
        };
        let wire = match config.wire.enabled {
            true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind wire listener")),
            false => None,
        };
        let (grpc_addr, http_addr) = (grpc.local_addr().expect("addr"), http.local_addr().expect("addr"));
        let kinesis_addr = kinesis.as_ref().map(|l| l.local_addr().expect("addr"));
        let wire_addr = wire.as_ref().map(|l| l.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let data_dir = config.data_dir.clone();
        let listeners = crate::server::Listeners { grpc, http, kinesis, wire };
        let task = tokio::spawn(crate::server::run_with(config, clock, listeners, shutdown.clone()));
        Self { grpc_addr, http_addr, kinesis_addr, wire_addr, data_dir, shutdown, task: Some(task), _temp: None }
    }

    /// `http://127.0.0.1:port` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:port` of the Kinesis API, for AWS SDKs' endpoint override.
    pub fn kinesis_endpoint(&self) -> Option<String> {
        self.kinesis_addr.map(|a| format!("http://{a}"))
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Shuts the broker down cleanly and returns how `run` ended.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("stop is called once");
        task.await.expect("broker task did not panic")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
