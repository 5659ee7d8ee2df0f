//! The cake-shop order system on stream-broker: the HTTP order API
//! ([`api`]), the order table with its transactional outbox ([`store`]), the
//! relay that publishes the outbox ([`relay`]), and the consumer groups
//! that notify the cake producer, the delivery company and customer service
//! ([`consumers`]). By default the broker runs in the same process.
//!
//! [`start`] wires everything and returns a handle; [`run`] runs until the
//! shutdown token fires. `main.rs` only parses flags and calls [`run`].

pub mod access;
pub mod api;
pub mod config;
pub mod consumers;
pub mod email;
pub mod failure;
pub mod http_client;
pub mod model;
pub mod relay;
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
    config.validate()?;
    let http_addr = listener.local_addr().map_err(io("order API address"))?;
    check_exposure(&config, http_addr)?;
    let api_tls = match config.tls.files() {
        Some(files) => Some(Arc::new(
            broker::auth::tls::ServerTls::load(files, broker::listener::HTTP_ALPN)
                .map_err(|e| Error::Config(config::ConfigError(e.to_string())))?,
        )),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(io(format!("create {}", config.data_dir.display())))?;

    let mut broker_task = None;
    let broker = match &config.broker {
        Some(addr) => access::BrokerAccess::from_config(&config, addr.clone())?,
        None => {
            let grpc = TcpListener::bind(config.broker_grpc_addr)
                .await
                .map_err(io(format!("bind broker gRPC {}", config.broker_grpc_addr)))?;
            let admin = TcpListener::bind(config.broker_admin_addr)
                .await
                .map_err(io(format!("bind broker admin {}", config.broker_admin_addr)))?;
            let addr = grpc.local_addr().map_err(io("broker address"))?;
            let broker_config = broker::config::BrokerConfig {
                data_dir: config.data_dir.join("broker"),
                grpc_addr: addr,
                http_addr: admin.local_addr().map_err(io("broker admin address"))?,
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

    let mut tasks = JoinSet::new();
    tasks.spawn(ensure_streams(broker.clone(), stream_names(&config), shutdown.clone()));
    tasks.spawn(relay::run(store.clone(), broker.clone(), metrics.clone(), shutdown.clone()));
    let self_ip = if http_addr.ip().is_unspecified() { [127, 0, 0, 1].into() } else { http_addr.ip() };
    let ctx = Arc::new(consumers::Ctx {
        store: store.clone(),
        mailer,
        config: config.clone(),
        metrics: metrics.clone(),
        broker,
        self_url: format!("http://{}", SocketAddr::new(self_ip, http_addr.port())),
        http: http_client::HttpClient::default(),
    });
    consumers::spawn_all(ctx, &shutdown, &mut tasks);

    let app = api::router(api::AppState { store, metrics: metrics.clone() }, config.max_body_bytes);
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

/// Refuses to serve the order API to anonymous callers on a non-loopback
/// address unless `insecureAllowAnonymous` is set (then it warns).
fn check_exposure(config: &Config, http_addr: SocketAddr) -> Result<(), Error> {
    if http_addr.ip().is_loopback() {
        return Ok(());
    }
    if !config.insecure_allow_anonymous {
        return Err(Error::Config(config::ConfigError(format!(
            "httpAddr {http_addr} is not a loopback address and the order API has no authentication: \
             configure it, or for development only set insecureAllowAnonymous (--insecure-allow-anonymous)"
        ))));
    }
    tracing::warn!(%http_addr, "serving the order API to anonymous callers on a non-loopback address");
    Ok(())
}

/// Every stream the service uses, dead-letter streams included.
pub fn stream_names(c: &Config) -> Vec<String> {
    consumers::groups(c).into_iter().flat_map(|g| [g.stream, g.dead_letter]).collect()
}

/// Creates the streams (1 shard each, as the `setup` principal) once the
/// broker is reachable; an existing stream is fine.
async fn ensure_streams(broker: access::BrokerAccess, names: Vec<String>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match create_streams(&broker, &names).await {
            Ok(()) => return,
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
        assert!(text.contains("httpAddr 10.0.0.7:8080") && text.contains("--insecure-allow-anonymous"), "{text}");
        c.insecure_allow_anonymous = true;
        check_exposure(&c, "10.0.0.7:8080".parse().expect("addr")).expect("explicitly allowed");
    }

    /// `deploy/stack.toml` describes what the service creates and runs: its
    /// values must be the code's.
    #[test]
    fn the_stack_file_matches_the_streams_and_groups_the_service_uses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/stack.toml");
        let text = std::fs::read_to_string(path).expect("deploy/stack.toml");
        let stack: toml::Table = toml::from_str(&text).expect("valid TOML");
        let tables = |key: &str| stack[key].as_array().expect("array of tables").clone();
        let text_of =
            |t: &toml::Value, key: &str| t[key].as_str().unwrap_or_else(|| panic!("{key} in {t}")).to_string();
        let config = Config::default();

        let mut streams: Vec<(String, i64)> =
            tables("streams").iter().map(|t| (text_of(t, "name"), t["shards"].as_integer().expect("shards"))).collect();
        let mut expected: Vec<(String, i64)> = stream_names(&config).into_iter().map(|n| (n, 1)).collect();
        streams.sort();
        expected.sort();
        assert_eq!(streams, expected, "[[streams]] name and shards");

        let groups: Vec<consumers::GroupSpec> = tables("groups")
            .iter()
            .map(|t| consumers::GroupSpec {
                name: consumers::groups(&config)
                    .iter()
                    .map(|g| g.name)
                    .find(|n| *n == text_of(t, "name"))
                    .unwrap_or_else(|| panic!("the code has no group {}", text_of(t, "name"))),
                stream: text_of(t, "stream"),
                batch_size: u32::try_from(t["batchSize"].as_integer().expect("batchSize")).expect("u32"),
                dead_letter: text_of(t, "deadLetter"),
            })
            .collect();
        assert_eq!(groups, consumers::groups(&config), "[[groups]] name, stream, batchSize, deadLetter");
    }
}
