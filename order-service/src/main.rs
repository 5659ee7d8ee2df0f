//! `order-service`: parses flags and configuration, then runs
//! [`order_service::run`] until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The cake-shop order service. Without `--broker` it runs the broker in-process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML; see deploy/order-service.toml).
    #[arg(long, env = "ORDER_SERVICE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (orders, emails, embedded broker).
    #[arg(long, env = "ORDER_SERVICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Order API listen address.
    #[arg(long, env = "ORDER_SERVICE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Use this broker (host:port, http://host:port or https://host:port) instead of the embedded one.
    #[arg(long, env = "ORDER_SERVICE_BROKER")]
    broker: Option<String>,
    /// Serve the order API to anonymous callers on a non-loopback address (development only).
    #[arg(long)]
    insecure_allow_anonymous: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sled=warn,h2=warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match order_service::Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
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
    config.insecure_allow_anonymous |= args.insecure_allow_anonymous;
    let listener = match tokio::net::TcpListener::bind(config.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("order-service: bind {}: {e}", config.http_addr);
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    match order_service::run(config, listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
