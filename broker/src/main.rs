//! `stream-broker`: the daemon. Flags override the config file and the
//! `STREAM_BROKER_*` environment; see `deploy/broker.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use broker::clock::{Clock, SystemClock};
use broker::config::BrokerConfig;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A self-hosted, Kinesis-like streaming broker.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (every key is documented in deploy/broker.toml).
    #[arg(long, env = "STREAM_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (overrides `grpc_addr`).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP admin listen address (overrides `http_addr`).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Serve anonymous callers on a non-loopback address without
    /// authentication (development only; sets `auth.insecure_allow_anonymous`).
    #[arg(long)]
    insecure_allow_anonymous: bool,
    /// Kinesis API listen address (overrides `kinesis.addr`).
    #[arg(long)]
    kinesis_addr: Option<SocketAddr>,
}

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    let _failpoints = failpoints();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let env = std::env::vars().filter(|(k, _)| k != "STREAM_BROKER_CONFIG");
    let mut config = match BrokerConfig::load(args.config.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stream-broker: {e}");
            return ExitCode::from(2);
        }
    };
    config.data_dir = args.data_dir.unwrap_or(config.data_dir);
    config.grpc_addr = args.grpc_addr.unwrap_or(config.grpc_addr);
    config.http_addr = args.http_addr.unwrap_or(config.http_addr);
    config.kinesis.addr = args.kinesis_addr.unwrap_or(config.kinesis.addr);
    config.auth.insecure_allow_anonymous |= args.insecure_allow_anonymous;
    // Checked before binding, so a refused configuration never listens at all.
    let mut listeners = vec![("grpc_addr", config.grpc_addr), ("http_addr", config.http_addr)];
    if config.kinesis.enabled {
        listeners.push(("kinesis.addr", config.kinesis.addr));
    }
    if let Err(e) = config.check_exposure(&listeners) {
        eprintln!("stream-broker: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stream-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stream-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Test builds only (feature `failpoints`): configures the failpoints from
/// the `FAILPOINTS` environment variable (`name=action;…`, the `fail`
/// crate's syntax) and makes every panic abort the process, so that a
/// `panic` failpoint is a crash, whichever thread it hits.
#[cfg(feature = "failpoints")]
fn failpoints() -> fail::FailScenario<'static> {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    fail::FailScenario::setup()
}

/// The system clock, or in failpoint builds a clock that the failpoint
/// `broker::clock::offset_ms` (`return(N)`) sets N ms ahead, so that a test
/// can restart the binary a day later and see retention delete segments.
#[cfg(not(feature = "failpoints"))]
fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(feature = "failpoints")]
fn clock() -> Arc<dyn Clock> {
    #[derive(Debug)]
    struct OffsetClock;
    impl Clock for OffsetClock {
        fn now_ms(&self) -> u64 {
            let offset_ms = || -> u64 {
                fail::fail_point!("broker::clock::offset_ms", |ms: Option<String>| ms
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0));
                0
            };
            SystemClock.now_ms() + offset_ms()
        }
    }
    Arc::new(OffsetClock)
}

async fn serve(config: BrokerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| format!("grpc_addr {}: {e}", config.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| format!("http_addr {}: {e}", config.http_addr))?;
    let kinesis = match config.kinesis.enabled {
        true => Some(
            tokio::net::TcpListener::bind(config.kinesis.addr)
                .await
                .map_err(|e| format!("kinesis.addr {}: {e}", config.kinesis.addr))?,
        ),
        false => None,
    };
    let kinesis_addr = kinesis.as_ref().map(|l| l.local_addr()).transpose()?;
    // Tests and scripts that bind port 0 read the real addresses from here.
    println!(
        "stream-broker listening grpc={} http={} kinesis={}",
        grpc.local_addr()?,
        http.local_addr()?,
        kinesis_addr.map_or_else(|| "off".to_string(), |a| a.to_string())
    );
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        }
    });
    broker::server::run_with(config, clock(), broker::server::Listeners { grpc, http, kinesis }, shutdown).await?;
    Ok(())
}
