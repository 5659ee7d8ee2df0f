//! `stream-broker`: the daemon. Flags override the config file and the
//! `STREAM_BROKER_*` environment; see `deploy/broker.toml`. Logs go to
//! stderr (`RUST_LOG`, `--log-format`); the one stdout line says where it
//! listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use broker::clock::{Clock, SystemClock};
use broker::config::BrokerConfig;
use broker::telemetry::LogFormat;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// stream-broker: a self-hosted, Kinesis-like streaming broker. Streams of
/// shards, records acknowledged only once durable, consumer groups, served
/// over gRPC; metrics and health on an HTTP admin port.
#[derive(Debug, Parser)]
#[command(name = "stream-broker", version, after_help = broker::telemetry::LOG_HELP)]
struct Args {
    /// TOML configuration file (every key is documented in deploy/broker.toml).
    #[arg(long, env = "STREAM_BROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (overrides `grpc_addr`).
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP admin listen address: /metrics, /healthz, /readyz (overrides `http_addr`).
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// Serve anonymous callers on a non-loopback address without
    /// authentication (development only; sets `auth.insecure_allow_anonymous`).
    #[arg(long)]
    insecure_allow_anonymous: bool,
    /// Kinesis API listen address (overrides `kinesis.addr`).
    #[arg(long, value_name = "ADDR")]
    kinesis_addr: Option<SocketAddr>,
    /// Framed produce protocol listen address (overrides `wire.addr`).
    #[arg(long, value_name = "ADDR")]
    wire_addr: Option<SocketAddr>,
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "STREAM_BROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    broker::allocator::configure();
    #[cfg(feature = "failpoints")]
    let _failpoints = failpoints();
    let args = Args::parse();
    broker::telemetry::init_logs(args.log_format, "info");
    // The flags' own variables are not configuration keys.
    let env = std::env::vars().filter(|(k, _)| k != "STREAM_BROKER_LOG_FORMAT");
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
    config.wire.addr = args.wire_addr.unwrap_or(config.wire.addr);
    config.auth.insecure_allow_anonymous |= args.insecure_allow_anonymous;
    // Checked before binding, so a refused configuration never listens at all.
    let mut listeners = vec![("grpc_addr", config.grpc_addr), ("http_addr", config.http_addr)];
    if config.kinesis.enabled {
        listeners.push(("kinesis.addr", config.kinesis.addr));
    }
    if config.wire.enabled {
        listeners.push(("wire.addr", config.wire.addr));
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
        .map_err(|e| format!("cannot listen on {} for gRPC (--grpc-addr, key grpc_addr): {e}", config.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|e| {
        format!("cannot listen on {} for the admin port (--http-addr, key http_addr): {e}", config.http_addr)
    })?;
    let kinesis = match config.kinesis.enabled {
        true => Some(tokio::net::TcpListener::bind(config.kinesis.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} for the Kinesis API (--kinesis-addr, key kinesis.addr; \
                 kinesis.enabled = false turns it off): {e}",
                config.kinesis.addr
            )
        })?),
        false => None,
    };
    let kinesis_addr = kinesis.as_ref().map(|l| l.local_addr()).transpose()?;
    let wire = match config.wire.enabled {
        true => Some(tokio::net::TcpListener::bind(config.wire.addr).await.map_err(|e| {
            format!(
                "cannot listen on {} for the framed produce protocol (--wire-addr, key wire.addr; \
                 wire.enabled = false turns it off): {e}",
                config.wire.addr
            )
        })?),
        false => None,
    };
    let wire_addr = wire.as_ref().map(|l| l.local_addr()).transpose()?;
    // The handlers are in place before anyone learns where the broker
    // listens, so a SIGTERM right after that line is a clean stop.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot listen for SIGINT: {e}"))?;
    // Tests and scripts that bind port 0 read the real addresses from here.
    println!(
        "stream-broker listening grpc={} http={} kinesis={} wire={}",
        grpc.local_addr()?,
        http.local_addr()?,
        kinesis_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        wire_addr.map_or_else(|| "off".to_string(), |a| a.to_string())
    );
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        }
    });
    broker::server::run_with(config, clock(), broker::server::Listeners { grpc, http, kinesis, wire }, shutdown)
        .await?;
    Ok(())
}
