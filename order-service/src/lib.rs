//! The cake-shop order system on stream-broker: the HTTP order API
//! ([`api`]), the order table with its transactional outbox ([`store`]), the
//! relay that publishes the outbox ([`relay`]), and the consumer groups
//! that notify the cake producer, the delivery company and customer service
//! ([`consumers`]). By default the broker runs in the same process.
//!
//! [`start`] wires everything and returns a handle; [`run`] runs until the
//! shutdown token fires. `main.rs` only parses flags and calls [`run`] (or
//! [`start_with_stack`] for `--stack`, see [`stack`]).

pub mod access;
pub mod api;
pub mod api_auth;
pub mod config;
pub mod consumers;
pub mod email;
pub mod failure;
pub mod http_client;
pub mod model;
pub mod ready;
pub mod relay;
pub mod stack;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The order store failed.
    #[error("order store: {0}")]
    Store(#[from] store::StoreError),
    /// Email setup failed.
    #[error("email: {0}")]
    Email(#[from] email::EmailError),
    /// A socket or file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The embedded broker failed.
    #[error("embedded broker: {0}")]
    Broker(String),
    /// The stack file is invalid or does not declare what the service uses.
    #[error(transparent)]
    Stack(#[from] client::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    /// Where the order API listens.
    pub http_addr: SocketAddr,
    /// The broker the service uses (the embedded one's gRPC address, or `--broker`).
    pub broker_addr: String,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    server: JoinHandle<()>,
    broker: Option<(CancellationToken, JoinHandle<broker::Result<()>>)>,
}

impl Running {
    /// Runs until the shutdown token fires, then stops in order: the API,
    /// the relay and consumers, then the embedded broker.
    pub async fn wait(mut self) -> Result<(), Error> {
        self.shutdown.cancelled().await;
        let served = self.server.await;
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "a service task failed");
            }
        }
        if let Some((token, task)) = self.broker.take() {
            token.cancel();
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Broker(e.to_string())),
                Err(e) => return Err(Error::Broker(e.to_string())),
            }
        }
        served.map_err(|e| Error::Broker(format!("order API task: {e}")))
    }

    /// Fires the shutdown token and waits for the stop.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Runs the service on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    start(config, listener, shutdown).await?.wait().await
}

/// Starts everything and returns at once; the API answers even while the
/// broker is unreachable (events wait in the outbox).
pub async fn start(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<Running, Error> {
    start_with_stack(config, None, listener, shutdown).await
}

/// [`start`]; with a stack, the service creates the stack's streams and
/// groups (checked against `config` first) instead of one-shard streams.
pub async fn start_with_stack(
    config: Config,
    stack: Option<client::stack::Stack>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    config.validate()?;
    if let Some(stack) = &stack {
        stack::check(stack, &config)?;
    }
    let http_addr = listener.local_addr().map_err(io("order API address"))?;
    check_exposure(&config, http_addr)?;
    let api_tls = match config.tls.files() {
        Some(files) => Some(Arc::new(
            broker::auth::tls::ServerTls::load(files, broker::listener::HTTP_ALPN)
                .map_err(|e| Error::Config(config::ConfigError::invalid("tls", e.to_string())))?,
        )),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io(format!("create {}", config.data_dir.display())))?;

    let mut broker_task = None;
    let broker = match &config.broker {
        Some(addr) => access::BrokerAccess::from_config(&config, addr.clone())?,
        None => {
            let grpc = TcpListener::bind(config.broker_grpc_addr).await.map_err(io(format!(
                "cannot listen on {} for the embedded broker's gRPC (--broker-grpc-addr, key brokerGrpcAddr)",
                config.broker_grpc_addr
            )))?;
            let admin = TcpListener::bind(config.broker_admin_addr).await.map_err(io(format!(
                "cannot listen on {} for the embedded broker's metrics (--broker-admin-addr, key brokerAdminAddr)",
                config.broker_admin_addr
            )))?;
            let addr = grpc.local_addr().map_err(io("broker address"))?;
            // The embedded broker's console shows this service's orders.
            let console = broker::config::ConsoleConfig {
                order_service_url: format!("http://{}", reachable(http_addr)),
                order_streams: [
                    &config.order_stream_name,
                    &config.delivery_queue_name,
                    &config.customer_service_queue_name,
                ]
                .map(String::clone)
                .to_vec(),
                ..Default::default()
            };
            let broker_config = broker::config::BrokerConfig {
                data_dir: config.data_dir.join("broker"),
                grpc_addr: addr,
                http_addr: admin.local_addr().map_err(io("broker admin address"))?,
                console,
                ..Default::default()
            };
            let token = CancellationToken::new();
            let clock = Arc::new(broker::clock::SystemClock);
            let task = tokio::spawn(broker::server::run(broker_config, clock, grpc, admin, token.clone()));
            broker_task = Some((token, task));
            tracing::info!(%addr, "embedded broker started");
            access::BrokerAccess::anonymous(format!("http://{addr}"))
        }
    };
    let broker_addr = broker.addr.clone();
    let api_auth = api_auth::ApiAuth::from_config(&config, broker.clone()).map(Arc::new);
    let simulator_token = match &config.api_auth.delivery_simulator_token_file {
        // The error names the key and the file, never the content.
        Some(path) => Some(
            client::Secret::from_file(path)
                .map_err(|e| config::ConfigError::invalid("apiAuth.deliverySimulatorTokenFile", e.to_string()))?,
        ),
        None => None,
    };

    let streams = store::Streams {
        orders: config.order_stream_name.clone(),
        delivery: config.delivery_queue_name.clone(),
        customer_service: config.customer_service_queue_name.clone(),
    };
    let db_dir = config.data_dir.join("orders");
    let table = config.order_table_name.clone();
    let store = tokio::task::spawn_blocking(move || store::Store::open(&db_dir, &table, streams))
        .await
        .map_err(|e| Error::Broker(format!("store task: {e}")))??;
    let metrics = Arc::new(api::Metrics::default());
    let mailer = email::Mailer::new(&config.smtp, config.data_dir.join("emails"))?;

    let group_names = consumers::groups(&config).iter().map(|g| g.name).collect();
    let ready = Arc::new(ready::Readiness::new(broker.clone(), stream_names(&config), group_names));
    let mut tasks = JoinSet::new();
    match stack {
        Some(stack) => tasks.spawn(stack::ensure(broker.clone(), Arc::new(stack), ready.clone(), shutdown.clone())),
        None => tasks.spawn(ensure_streams(broker.clone(), ready.clone(), shutdown.clone())),
    };
    tasks.spawn(relay::run(store.clone(), broker.clone(), metrics.clone(), shutdown.clone()));
    let ctx = Arc::new(consumers::Ctx {
        store: store.clone(),
        mailer,
        config: config.clone(),
        metrics: metrics.clone(),
        broker,
        self_url: format!("http://{}", reachable(http_addr)),
        http: http_client::HttpClient::default(),
        simulator_token,
    });
    consumers::spawn_all(ctx, &shutdown, &mut tasks, ready.clone());

    let app =
        api::router(api::AppState { store, metrics: metrics.clone(), ready, auth: api_auth }, config.max_body_bytes);
    tasks.spawn(broker::auth::tls::reload_on_sighup(api_tls.iter().cloned().collect(), shutdown.clone()));
    let conns = broker::listener::incoming(
        listener,
        broker::listener::ListenerConfig {
            name: "orders",
            max_connections: config.max_connections,
            handshake_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            tls: api_tls,
        },
        metrics.refusals.clone(),
        shutdown.clone(),
    );
    let limits = broker::listener::HttpLimits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        max_header_bytes: config.max_header_bytes,
    };
    let server =
        tokio::spawn(broker::listener::serve_http(conns, app, limits, metrics.refusals.clone(), shutdown.clone()));
    tracing::info!(%http_addr, broker = %broker_addr, "order service started");
    Ok(Running { http_addr, broker_addr, shutdown, tasks, server, broker: broker_task })
}

/// The address to call a listener on: a wildcard listen address is called on 127.0.0.1.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = if addr.ip().is_unspecified() { [127, 0, 0, 1].into() } else { addr.ip() };
    SocketAddr::new(ip, addr.port())
}

/// Refuses to serve the order API to anonymous callers on a non-loopback
/// address (no `apiAuth.mode`) unless `insecureAllowAnonymous` is set (then
/// it warns).
fn check_exposure(config: &Config, http_addr: SocketAddr) -> Result<(), Error> {
    if http_addr.ip().is_loopback() || config.api_auth.mode != config::ApiAuthMode::None {
        return Ok(());
    }
    if !config.insecure_allow_anonymous {
        return Err(Error::Config(config::ConfigError::invalid(
            "httpAddr",
            format!(
                "{http_addr} is not a loopback address and the order API has no authentication: \
                 set apiAuth.mode = \"broker-token\" (--api-auth broker-token), or for development only \
                 insecureAllowAnonymous (--insecure-allow-anonymous)"
            ),
        )));
    }
    tracing::warn!(%http_addr, "serving the order API to anonymous callers on a non-loopback address");
    Ok(())
}

/// Every stream the service uses, dead-letter streams included.
pub fn stream_names(c: &Config) -> Vec<String> {
    consumers::groups(c).into_iter().flat_map(|g| [g.stream, g.dead_letter]).collect()
}

/// Creates the streams (1 shard each, as the `setup` principal) once the
/// broker is reachable (an existing stream is fine), then lets the
/// consumers join.
async fn ensure_streams(broker: access::BrokerAccess, ready: Arc<ready::Readiness>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match create_streams(&broker, ready.streams()).await {
            Ok(()) => {
                ready.set_streams_created();
                return;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "creating the streams failed; retrying");
                if relay::wait(relay::backoff(failures).max(Duration::from_millis(100)), &shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn create_streams(broker: &access::BrokerAccess, names: &[String]) -> client::Result<()> {
    let admin = client::Admin::from_channel(broker.connect(access::SETUP).await?);
    for name in names {
        let req =
            client::types::CreateStreamRequest { stream_name: name.clone(), shard_count: 1, ..Default::default() };
        match admin.create_stream(req).await {
            Ok(_) | Err(client::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_api_is_anonymous_on_loopback_only_unless_allowed() {
        let mut c = Config::default();
        check_exposure(&c, "127.0.0.1:8080".parse().expect("addr")).expect("loopback");
        let e = check_exposure(&c, "10.0.0.7:8080".parse().expect("addr")).expect_err("exposed");
        let text = e.to_string();
        assert!(
            text.contains("httpAddr") && text.contains("10.0.0.7:8080") && text.contains("--insecure-allow-anonymous"),
            "{text}"
        );
        assert!(text.contains("apiAuth.mode"), "{text}");
        c.insecure_allow_anonymous = true;
        check_exposure(&c, "10.0.0.7:8080".parse().expect("addr")).expect("explicitly allowed");
        c.insecure_allow_anonymous = false;
        c.api_auth.mode = config::ApiAuthMode::BrokerToken;
        check_exposure(&c, "10.0.0.7:8080".parse().expect("addr")).expect("authenticated");
    }
}
