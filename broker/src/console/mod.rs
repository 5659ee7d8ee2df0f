//! The web console: a single-page UI at `/ui` and the JSON API it reads at
//! `/api/v1` (documented in `docs/console-api.md`), both on the admin port.
//!
//! Invariants:
//! - **In-process, through the domain APIs.** Every answer comes from the
//!   service layer ([`crate::service::Service`]), the catalogue, the
//!   consumer-group manager and the shards' readers, never from an edge's
//!   handlers, so the console shows, and changes, exactly what clients do.
//! - **Read-only unless configured.** Calls that change anything (create a
//!   stream, change retention, reset a group, replay a dead letter) answer
//!   403 unless `console.mutations` is true. They also need a JSON body
//!   (`Content-Type: application/json`, which a cross-site HTML form cannot
//!   send) and, when the browser names an `Origin`, one whose host is the
//!   admin port's. With `auth.enabled` the console needs `admin:console` on
//!   `cluster` (it shows every stream's records), and each change is
//!   authorized as the caller's own (`stream:create`, ...).
//! - **Bounded.** A message-browser read returns at most
//!   `console.records_max` records and [`records::RESPONSE_BYTES_MAX`] bytes;
//!   a partition-key search scans at most `console.scan_records_max`
//!   records and says where to go on; histories keep
//!   `console.history_points` samples. Console reads are not charged to
//!   the shards' read quotas, so looking never throttles a consumer.
//! - **Assets are in the binary** (`include_str!`, see [`assets`]): the
//!   console needs no files, build step or network at run time, and loads
//!   no external fonts or scripts.
//! - **Errors** are mapped to HTTP in one place, [`error`].

mod api;
mod assets;
pub mod error;
mod orders;
mod records;
pub mod sampler;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{BrokerConfig, ConsoleConfig};
use crate::group::GroupManager;
use crate::http::Readiness;
use crate::service::Service;
use error::ApiError;
use sampler::Sampler;

/// The console's state: its configuration, the sampler, and the broker's
/// catalogue and groups once they are open.
#[derive(Debug)]
pub struct Console {
    config: ConsoleConfig,
    broker: BrokerView,
    attached: OnceLock<Attached>,
    sampler: Sampler,
    orders: orders::OrderClient,
}

/// What the overview shows of the broker's own configuration.
#[derive(Debug, Clone)]
struct BrokerView {
    durability: crate::config::DurabilityConfig,
    quotas_enforced: bool,
}

#[derive(Debug)]
pub(crate) struct Attached {
    service: Service,
    catalog: Arc<Catalog>,
    groups: Arc<GroupManager>,
}

impl Console {
    /// A console for a broker with this configuration; it answers 503
    /// until [`Console::attach`].
    pub fn new(config: &BrokerConfig) -> Self {
        let c = config.console.clone();
        Self {
            sampler: Sampler::new(c.history_points, c.lag_groups_max),
            orders: orders::OrderClient::new(&c.order_service_url),
            broker: BrokerView { durability: config.durability.clone(), quotas_enforced: config.quotas.enforce },
            config: c,
            attached: OnceLock::new(),
        }
    }

    /// Gives the console the broker's service (with its open catalogue and
    /// groups), and starts the sampler, which stops when `shutdown` fires.
    pub fn attach(self: &Arc<Self>, service: Service, shutdown: CancellationToken) {
        let (catalog, groups) = (service.catalog().clone(), service.groups().clone());
        if self.attached.set(Attached { service, catalog, groups }).is_err() {
            return;
        }
        let this = self.clone();
        let every = std::time::Duration::from_millis(self.config.sample_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Some(a) = this.attached.get() {
                    this.sampler.sample(&a.catalog, &a.groups).await;
                }
            }
        });
    }

    fn attached(&self) -> Result<&Attached, ApiError> {
        self.attached.get().ok_or_else(ApiError::starting)
    }

    /// Refuses a mutating call unless mutations are on, the body is JSON and
    /// the browser's `Origin` (if any) is this host.
    fn check_mutation(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.config.mutations {
            return Err(ApiError::mutations_disabled());
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
            if host.is_empty() || origin_host != host {
                return Err(ApiError::forbidden_origin(origin));
            }
        }
        Ok(())
    }
}

/// The console's routes: `/ui` and `/api/v1/...`. Empty when disabled.
pub fn router(console: Arc<Console>, readiness: Arc<Readiness>) -> Router {
    if !console.config.enabled {
        return Router::new();
    }
    let state = api::AppState { console, readiness };
    Router::new()
        .route("/ui", get(assets::index))
        .route("/ui/", get(assets::index))
        .route("/ui/{file}", get(assets::file))
        .route("/api/v1/overview", get(api::overview))
        .route("/api/v1/throughput", get(api::throughput))
        .route("/api/v1/streams", get(api::streams).post(api::create_stream))
        .route("/api/v1/streams/{stream}", get(api::stream))
        .route("/api/v1/streams/{stream}/retention", put(api::update_retention))
        .route("/api/v1/streams/{stream}/split", post(api::split_shard))
        .route("/api/v1/streams/{stream}/merge", post(api::merge_shards))
        .route("/api/v1/streams/{stream}/scale", post(api::scale_stream))
        .route("/api/v1/streams/{stream}/shards/{shard}/records", get(records::records))
        .route("/api/v1/groups", get(api::groups))
        .route("/api/v1/streams/{stream}/groups/{group}", get(api::group))
        .route("/api/v1/streams/{stream}/groups/{group}/reset", post(api::reset_group))
        .route("/api/v1/dead-letters", get(orders::dead_letter_streams))
        .route("/api/v1/dead-letters/{stream}", get(orders::dead_letters))
        .route("/api/v1/dead-letters/{stream}/replay", post(orders::replay))
        .route("/api/v1/orders", get(orders::orders))
        .route("/api/v1/orders/{order_id}", get(orders::order))
        .route("/api/v1/{*rest}", get(api::not_found).post(api::not_found).put(api::not_found))
        .with_state(state)
}
