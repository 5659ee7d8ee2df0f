//! Assembles and runs the broker: metadata, catalogue, gRPC, Kinesis and
//! admin HTTP servers, retention janitor, free-space watch, and the
//! shutdown sequence.
//!
//! Start on a full disk: before the metadata store opens, the disk monitor
//! gives back the reserve file if free space is below its size, so sled can
//! write what it needs to open; the shards open read-only in effect (writes
//! are refused below the watermark) and reads are served.
//!
//! Free-space watch: every `storage.free_space_check_interval_ms` the disk
//! monitor measures free space (giving back or recreating the reserve), and
//! while the disk is above its watermark every shard that failed for lack of
//! space is reopened, so writes resume without a restart.
//!
//! Shutdown (on the token): mark not ready, stop accepting connections,
//! end streaming calls, let in-flight unary calls finish within
//! `limits.shutdown_grace_ms`, stop the janitor, stop every shard writer
//! (each commits what is queued and fsyncs), flush the metadata store.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::consumer_groups_server::ConsumerGroupsServer;
use proto::v1::stream_broker_server::StreamBrokerServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::auth::layer::{GrpcAuthLayer, HttpAuth};
use crate::auth::store::AuthStore;
use crate::auth::tls::ServerTls;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::disk::DiskMonitor;
use crate::error::{BrokerError, Result};
use crate::group::GroupManager;
use crate::grpc::GrpcService;
use crate::grpc::access::AccessService;
use crate::grpc::groups::GroupsService;
use crate::grpc::message_limit::MessageLimitHint;
use crate::http::Readiness;
use crate::iterator::IteratorSigner;
use crate::kinesis::KinesisEdge;
use crate::listener::{HttpLimits, ListenerConfig, Refusals};
use crate::metadata::{MetadataStore, SledStore};
use crate::service::Service;
use crate::wire::WireEdge;
use proto::v1::access_control_server::AccessControlServer;

/// The listeners of a broker, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC API.
    pub grpc: TcpListener,
    /// The HTTP admin endpoints (metrics, health).
    pub http: TcpListener,
    /// The Kinesis-compatible HTTP API; `None` runs without it.
    pub kinesis: Option<TcpListener>,
    /// The framed produce protocol; `None` runs without it.
    pub wire: Option<TcpListener>,
}

/// Runs a broker until `shutdown` fires, on gRPC and admin listeners the
/// caller bound, without the Kinesis API.
pub async fn run(
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    run_with(config, clock, Listeners { grpc, http, kinesis: None, wire: None }, shutdown).await
}

/// Runs a broker until `shutdown` fires, on listeners the caller bound.
pub async fn run_with(
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let Listeners { grpc, http, kinesis, wire } = listeners;
    crate::telemetry::prometheus();
    let addr = |l: &TcpListener, key: &str| {
        l.local_addr().map_err(|source| BrokerError::Io { context: format!("{key} address"), source })
    };
    let (grpc_addr, http_addr) = (addr(&grpc, "grpc_addr")?, addr(&http, "http_addr")?);
    let mut bound = vec![("grpc_addr", grpc_addr), ("http_addr", http_addr)];
    if let Some(k) = &kinesis {
        bound.push(("kinesis.addr", addr(k, "kinesis.addr")?));
    }
    if let Some(w) = &wire {
        bound.push(("wire.addr", addr(w, "wire.addr")?));
    }
    config.check_exposure(&bound).map_err(|e| BrokerError::invalid(e.key.clone().unwrap_or_default(), e.message))?;
    // One certificate for every listener; each has its own ALPN list.
    let (grpc_tls, admin_tls, kinesis_tls, wire_tls) = match config.tls.files() {
        Some(files) => {
            let grpc_tls = Arc::new(ServerTls::load(files.clone(), &[b"h2"])?);
            let admin_tls = config
                .tls
                .admin
                .then(|| ServerTls::load(files.clone(), crate::listener::HTTP_ALPN))
                .transpose()?
                .map(Arc::new);
            let kinesis_tls = Arc::new(ServerTls::load(files.clone(), crate::listener::HTTP_ALPN)?);
            let wire_tls = Arc::new(ServerTls::load(files, &[proto::wire::ALPN])?);
            (Some(grpc_tls), admin_tls, Some(kinesis_tls), Some(wire_tls))
        }
        None => (None, None, None, None),
    };
    let reloader = tokio::spawn(crate::auth::tls::reload_on_sighup(
        [grpc_tls.clone(), admin_tls.clone(), kinesis_tls.clone(), wire_tls.clone()].into_iter().flatten().collect(),
        shutdown.clone(),
    ));
    let auth = Arc::new(Auth::new(&config.auth, clock.clone())?);
    if config.auth.enabled && kinesis.is_some() && config.kinesis.auth == crate::config::KinesisAuth::Permissive {
        tracing::warn!(
            "kinesis.auth = \"permissive\" does not verify signatures, so with authentication on the Kinesis API \
             accepts only client certificates; set kinesis.auth = \"strict\" for access keys"
        );
    }
    let config = Arc::new(config);
    let refusals = Arc::new(Refusals::default());
    let readiness = Arc::new(Readiness::default());
    let console = Arc::new(crate::console::Console::new(&config));
    let limits = &config.limits;
    let admin = tokio::spawn({
        let http_auth = HttpAuth { auth: auth.clone(), refusals: refusals.clone(), listener: "admin" };
        let router = crate::http::router(readiness.clone(), console.clone(), refusals.clone())
            .layer(axum::middleware::from_fn_with_state(http_auth, crate::auth::layer::admin_port));
        let conns = crate::listener::incoming(
            http,
            ListenerConfig {
                name: "admin",
                max_connections: limits.http_max_connections,
                handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
                tls: admin_tls,
            },
            refusals.clone(),
            shutdown.clone(),
        );
        let http_limits = HttpLimits {
            header_read_timeout: Duration::from_millis(limits.handshake_timeout_ms),
            max_header_bytes: limits.http_max_header_bytes,
        };
        crate::listener::serve_http(conns, router, http_limits, refusals.clone(), shutdown.clone())
    });

    let meta_dir = config.data_dir.join("meta");
    let (catalog, secret, auth_store) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || -> Result<_> {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::Io {
                context: format!("create {}", config.data_dir.display()),
                source,
            })?;
            let disk = Arc::new(DiskMonitor::new(&config));
            match disk.maintain() {
                Ok(d) if d.full => tracing::warn!(
                    free_bytes = d.free_bytes,
                    watermark_bytes = d.watermark_bytes,
                    "starting on a full disk: reads are served, writes refused until space is freed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot measure free space"),
            }
            let sled = SledStore::open(&meta_dir).map_err(|e| {
                let free = disk.last().free_bytes;
                if free < 1024 * 1024 {
                    // sled writes to open; without a reserve to give back, a full disk stops it.
                    BrokerError::Metadata(format!(
                        "{e}: the data disk has {free} bytes free and no reserve file to give back \
                         (storage.reserve_bytes); free some space and start again"
                    ))
                } else {
                    e
                }
            })?;
            // Principals, tokens and grants live in the same durable database.
            let auth_store = AuthStore::open(sled.durable())?;
            let store: Arc<dyn MetadataStore> = Arc::new(sled);
            let secret = store.iterator_secret()?;
            let io = Arc::new(shardlog::io::StdIo);
            Ok((Arc::new(Catalog::open_with(config, store, clock, io, disk)?), secret, auth_store))
        }
    })
    .await
    .map_err(|e| BrokerError::Unavailable(e.to_string()))??;
    tracing::info!(streams = catalog.all().len(), grpc = %grpc_addr, tls = grpc_tls.is_some(), "broker ready");
    readiness.attach(catalog.clone());
    auth.attach(Arc::new(auth_store));

    let disk_watch = tokio::spawn({
        let catalog = catalog.clone();
        let token = shutdown.clone();
        let every = Duration::from_millis(config.storage.free_space_check_interval_ms);
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = token.cancelled() => return,
                }
                let disk = catalog.disk().clone();
                match tokio::task::spawn_blocking(move || disk.maintain()).await {
                    Ok(Ok(d)) if !d.full => {
                        catalog.heal_disk_full(d.free_bytes).await;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure free space"),
                    Err(e) => tracing::error!(error = %e, "free-space check failed"),
                }
            }
        }
    });

    let janitor = tokio::spawn({
        let catalog = catalog.clone();
        let token = shutdown.clone();
        let every = Duration::from_millis(config.retention.check_interval_ms);
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => catalog.enforce_retention().await,
                    _ = token.cancelled() => return,
                }
            }
        }
    });

    let groups = Arc::new(
        tokio::task::spawn_blocking({
            let (catalog, timeout) = (catalog.clone(), config.groups.session_timeout_ms);
            move || GroupManager::open(catalog, timeout)
        })
        .await
        .map_err(|e| BrokerError::Unavailable(e.to_string()))??,
    );
    let sweeper = tokio::spawn({
        let (groups, token) = (groups.clone(), shutdown.clone());
        let every = Duration::from_millis((config.groups.session_timeout_ms / 4).min(1000));
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => groups.expire_sessions().await,
                    _ = token.cancelled() => return,
                }
            }
        }
    });
    let exporter = tokio::spawn(crate::telemetry::run_exporter(
        catalog.clone(),
        groups.clone(),
        Duration::from_millis(config.metrics.export_interval_ms),
        shutdown.clone(),
    ));
    let streams_token = CancellationToken::new();
    let service = Service::new(catalog.clone(), groups, IteratorSigner::new(secret), streams_token.clone())
        .with_auth(auth.clone());
    console.attach(service.clone(), shutdown.clone());
    let groups_service = GroupsService::new(service.clone());
    let kinesis_task = kinesis.map(|listener| {
        let edge = Arc::new(KinesisEdge::new(service.clone()).with_refusals(refusals.clone()));
        let conns = crate::listener::incoming(
            listener,
            ListenerConfig {
                name: "kinesis",
                max_connections: config.limits.max_connections,
                handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
                tls: kinesis_tls,
            },
            refusals.clone(),
            shutdown.clone(),
        );
        let http_limits = HttpLimits {
            header_read_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
            max_header_bytes: config.limits.http_max_header_bytes,
        };
        let router = crate::kinesis::router(edge);
        tokio::spawn(crate::listener::serve_http(conns, router, http_limits, refusals.clone(), shutdown.clone()))
    });
    let wire_task = wire.map(|listener| {
        let conns = crate::listener::incoming(
            listener,
            ListenerConfig {
                name: "wire",
                max_connections: config.limits.max_connections,
                handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
                tls: wire_tls,
            },
            refusals.clone(),
            shutdown.clone(),
        );
        let edge = Arc::new(WireEdge::new(service.clone(), refusals.clone()));
        tokio::spawn(edge.serve(conns, shutdown.clone()))
    });
    let service = GrpcService::new(service);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<StreamBrokerServer<GrpcService>>().await;
    let max = config.limits.grpc_max_message_bytes;
    // What one connection may make the broker buffer: HTTP/2 flow control
    // lets a client send at most the connection window before the broker
    // reads, and each call at most its stream window (hyper's defaults,
    // named here so /metrics can report them).
    metrics::gauge!("stream_broker_connection_receive_window_bytes").set(f64::from(CONNECTION_WINDOW_BYTES));
    metrics::gauge!("stream_broker_stream_receive_window_bytes").set(f64::from(STREAM_WINDOW_BYTES));
    metrics::gauge!("stream_broker_connection_write_buffer_bytes_max")
        .set(crate::listener::COALESCE_BUFFER_BYTES as f64);
    metrics::gauge!("stream_broker_connections_max").set(config.limits.max_connections as f64);
    let conns = crate::listener::incoming(
        grpc,
        ListenerConfig {
            name: "grpc",
            max_connections: config.limits.max_connections,
            handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
            tls: grpc_tls,
        },
        refusals.clone(),
        shutdown.clone(),
    );
    let access = AccessService::new(auth.clone(), catalog.clock().clone(), config.limits.request_timeout_ms);
    let grpc_server = tonic::transport::Server::builder()
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .http2_max_header_list_size(config.limits.grpc_max_header_bytes)
        .layer(GrpcAuthLayer::new(auth.clone(), refusals.clone()))
        .add_service(health_service)
        .add_service(AccessControlServer::new(access))
        .add_service(MessageLimitHint::new(
            StreamBrokerServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max),
            max,
        ))
        .add_service(MessageLimitHint::new(
            ConsumerGroupsServer::new(groups_service).max_decoding_message_size(max).max_encoding_message_size(max),
            max,
        ))
        .serve_with_incoming_shutdown(
            ReceiverStream::new(conns).map(Ok::<_, std::io::Error>),
            shutdown.clone().cancelled_owned(),
        );
    let mut grpc_task = tokio::spawn(grpc_server);
    readiness.set_serving(true);

    shutdown.cancelled().await;
    readiness.set_serving(false);
    health_reporter.set_not_serving::<StreamBrokerServer<GrpcService>>().await;
    streams_token.cancel();
    let grace = Duration::from_millis(config.limits.shutdown_grace_ms);
    match tokio::time::timeout(grace, &mut grpc_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight calls did not finish in time; closing them");
            grpc_task.abort();
        }
    }
    if let Some(task) = kinesis_task {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Kinesis API server task failed"),
            Err(_) => tracing::warn!("Kinesis API requests did not finish in time; closing them"),
        }
    }
    if let Some(task) = wire_task {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "framed produce listener task failed"),
            Err(_) => tracing::warn!("framed produce requests did not finish in time; closing them"),
        }
    }
    let _ = janitor.await;
    let _ = sweeper.await;
    let _ = exporter.await;
    let _ = disk_watch.await;
    catalog.close().await?;
    if let Err(e) = admin.await {
        tracing::warn!(error = %e, "admin server failed");
    }
    let _ = reloader.await;
    tracing::info!("broker stopped");
    Ok(())
}

/// HTTP/2 receive window of a connection: unread bytes a client may send.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 receive window of one call.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// Largest HTTP/2 frame a client may send. At hyper's default of 16 KiB a
/// 512 KiB PutRecords arrives as 32 DATA frames, each read and accounted
/// separately; 256 KiB cuts that to 2. The receive windows above still
/// bound what a connection can make the broker buffer.
const MAX_FRAME_BYTES: u32 = 256 * 1024;
