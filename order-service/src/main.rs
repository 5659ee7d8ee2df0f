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
    /// Use this broker (host:port or http://host:port) instead of the embedded one.
    #[arg(long, env = "ORDER_SERVICE_BROKER")]
    broker: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sled=warn,h2=warn".into()),
        )
        .init();
    let args = Args::parse();
    let loaded = match &args.stack {
        Some(path) => order_service::stack::load(path, args.config.as_deref(), std::env::vars())
            .map(|(config, stack)| (config, Some(stack))),
        None => order_service::Config::load(args.config.as_deref(), std::env::vars())
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
    let ran = match stack {
        Some(stack) => order_service::run_with_stack(config, stack, listener, shutdown).await,
        None => order_service::run(config, listener, shutdown).await,
    };
    match ran {
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
