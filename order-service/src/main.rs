//! `order-service`: parses flags and configuration, then runs
//! [`order_service::start`] until Ctrl-C or SIGTERM. Logs go to stderr
//! (`RUST_LOG`, `--log-format`); the one stdout line says where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use broker::telemetry::LogFormat;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// order-service: the cake-shop order system on stream-broker. An HTTP order
/// API, an outbox relay and three consumer groups; without --broker it runs
/// the broker in the same process.
#[derive(Debug, Parser)]
#[command(name = "order-service", version, after_help = broker::telemetry::LOG_HELP)]
struct Args {
    /// Configuration file (TOML; see deploy/order-service.toml).
    #[arg(long, env = "ORDER_SERVICE_CONFIG")]
    config: Option<PathBuf>,
    /// Stack file (see deploy/stack.toml): settings from its
    /// [services.order-service] table (under --config), and the streams and
    /// groups to create.
    #[arg(long, env = "ORDER_SERVICE_STACK")]
    stack: Option<PathBuf>,
    /// Data directory (orders, emails, embedded broker).
    #[arg(long, env = "ORDER_SERVICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Order API listen address.
    #[arg(long, env = "ORDER_SERVICE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Use this broker (host:port, http://host:port or https://host:port) instead of the embedded one.
    #[arg(long, env = "ORDER_SERVICE_BROKER")]
    broker: Option<String>,
    /// The embedded broker's gRPC listen address (key brokerGrpcAddr).
    #[arg(long, value_name = "ADDR")]
    broker_grpc_addr: Option<SocketAddr>,
    /// The embedded broker's admin listen address, /metrics and /readyz (key brokerAdminAddr).
    #[arg(long, value_name = "ADDR")]
    broker_admin_addr: Option<SocketAddr>,
    /// Log lines as text or as JSON objects.
    #[arg(long, env = "ORDER_SERVICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve the order API to anonymous callers on a non-loopback address (development only).
    #[arg(long)]
    insecure_allow_anonymous: bool,
    /// Who may call the order API (key apiAuth.mode): none, or broker-token
    /// (`authorization: Bearer <broker API token>`, needs --broker).
    #[arg(long, value_name = "MODE", value_parser = ["none", "broker-token"])]
    api_auth: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // As `stream-broker` does, for the broker this process may embed.
    broker::allocator::configure();
    let args = Args::parse();
    broker::telemetry::init_logs(args.log_format, "info,sled=warn,h2=warn");
    // The flags' own variables are not configuration keys.
    let env = std::env::vars().filter(|(k, _)| k != "ORDER_SERVICE_LOG_FORMAT");
    let loaded = match &args.stack {
        Some(path) => {
            order_service::stack::load(path, args.config.as_deref(), env).map(|(config, stack)| (config, Some(stack)))
        }
        None => order_service::Config::load(args.config.as_deref(), env)
            .map(|config| (config, None))
            .map_err(order_service::Error::from),
    };
    let (mut config, stack) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("order-service: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if args.broker.is_some() {
        config.broker = args.broker;
    }
    config.broker_grpc_addr = args.broker_grpc_addr.unwrap_or(config.broker_grpc_addr);
    config.broker_admin_addr = args.broker_admin_addr.unwrap_or(config.broker_admin_addr);
    config.insecure_allow_anonymous |= args.insecure_allow_anonymous;
    match args.api_auth.as_deref() {
        Some("broker-token") => config.api_auth.mode = order_service::config::ApiAuthMode::BrokerToken,
        Some(_) => config.api_auth.mode = order_service::config::ApiAuthMode::None,
        None => {}
    }
    let listener = match tokio::net::TcpListener::bind(config.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "order-service: cannot listen on {} for the order API (--http-addr, key httpAddr): {e}",
                config.http_addr
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    // The handlers are in place before the service says where it listens,
    // so a SIGTERM right after that line is a clean stop.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("order-service: cannot listen for SIGTERM and SIGINT: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    let running = match order_service::start_with_stack(config, stack, listener, shutdown).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("order-service: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Scripts and tests that bind port 0 read the real addresses from here.
    println!("order-service listening http={} broker={}", running.http_addr, running.broker_addr);
    match running.wait().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
