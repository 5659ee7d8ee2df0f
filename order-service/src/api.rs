//! The order HTTP API. Every error answers with
//! `{"error":"<kind>","message":"…","fields":[…]}`; server faults are logged
//! and answered without internals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::model::{CreateOrder, DeliverOrder, FulfillOrder, Invalid, Order};
use crate::store::{Store, StoreError};

/// Counters shown on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Orders created (replays not counted).
    pub orders_created: AtomicU64,
    /// Orders fulfilled.
    pub orders_fulfilled: AtomicU64,
    /// Orders delivered.
    pub orders_delivered: AtomicU64,
    /// Emails sent or written.
    pub emails_sent: AtomicU64,
    /// Records sent to a dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Outbox entries published.
    pub events_published: AtomicU64,
    /// Transient handler failures retried, by (group, kind).
    pub handler_retries: Labeled,
    /// Permanent handler failures (dead-lettered at once), by (group, kind).
    pub handler_permanent_failures: Labeled,
    /// 1 while a group's shard waits to retry a record, by (group, "").
    pub consumer_blocked: Labeled,
    /// Connections and requests the API's limits or authentication refused.
    pub refusals: Arc<broker::listener::Refusals>,
}

/// Values by (group, kind); groups and kinds are a few fixed names.
#[derive(Debug, Default)]
pub struct Labeled(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Labeled {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, &'static str), u64>> {
        // Plain counters, each updated whole: a panic cannot leave one torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one.
    pub fn inc(&self, group: &'static str, kind: &'static str) {
        *self.map().entry((group, kind)).or_default() += 1;
    }

    /// Sets a gauge.
    pub fn set(&self, group: &'static str, kind: &'static str, value: u64) {
        self.map().insert((group, kind), value);
    }

    /// Prometheus text lines, `name{group="…",kind="…"} value` (no kind label when empty).
    fn render(&self, out: &mut String, name: &str, help: &str, kind_of_metric: &str) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind_of_metric}\n"));
        for ((group, kind), v) in self.map().iter() {
            if kind.is_empty() {
                out.push_str(&format!("{name}{{group=\"{group}\"}} {v}\n"));
            } else {
                out.push_str(&format!("{name}{{group=\"{group}\",kind=\"{kind}\"}} {v}\n"));
            }
        }
    }
}

impl Metrics {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The order store.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The router, with the body limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/order", post(create))
        .route("/order/fulfill", post(fulfill))
        .route("/order/delivered", post(delivered))
        .route("/order/{order_id}", get(get_order))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
    fields: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self { status, error, message: message.into(), fields: Vec::new() }
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what} failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; try again later")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Json(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", m),
            Invalid::UnknownFields(f) => ApiError {
                message: format!("unknown field(s): {}", f.join(", ")),
                fields: f,
                ..ApiError::new(StatusCode::BAD_REQUEST, "unknown_fields", "")
            },
            Invalid::Fields(f) => ApiError {
                message: f.iter().map(|(k, why)| format!("{k} {why}")).collect::<Vec<_>>().join("; "),
                fields: f.into_iter().map(|(k, _)| k).collect(),
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "")
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "order_not_found", format!("order {id} not found"))
            }
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "invalid_transition", m),
            StoreError::IdempotencyMismatch => ApiError {
                fields: vec!["Idempotency-Key".into()],
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "the Idempotency-Key was already used with a different request",
                )
            },
            StoreError::Db(m) => ApiError::internal("storage", m),
        }
    }
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the request body could not be read")
        }
    })
}

/// Runs a store change and its durable commit on the blocking pool; the
/// answer is given only after the commit (concurrent requests share one
/// `fdatasync`).
async fn durably<T: Send + 'static>(
    store: &Store,
    what: &str,
    change: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let value = change(&store)?;
        store.commit_blocking()?;
        Ok::<_, StoreError>(value)
    })
    .await
    .map_err(|e| ApiError::internal(what, e))?;
    Ok(result?)
}

async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|c| c.is_ascii_graphic()) => Some(k.to_string()),
            _ => {
                return Err(ApiError {
                    fields: vec!["Idempotency-Key".into()],
                    ..ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_header",
                        "Idempotency-Key must be 1..=255 visible ASCII characters",
                    )
                });
            }
        },
    };
    let req = CreateOrder::parse(&body(b)?)?;
    // A replay is committed too: the first request may still be committing.
    let (order, created) = durably(&s.store, "create task", move |st| st.create(&req, key.as_deref())).await?;
    if created {
        Metrics::inc(&s.metrics.orders_created);
    }
    let location = format!("/order/{}", order.order_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(order)).into_response())
}

async fn fulfill(State(s): State<AppState>, b: Result<Bytes, BytesRejection>) -> Result<Json<Order>, ApiError> {
    let req = FulfillOrder::parse(&body(b)?)?;
    let order = durably(&s.store, "fulfil task", move |st| st.fulfill(&req)).await?;
    Metrics::inc(&s.metrics.orders_fulfilled);
    Ok(Json(order))
}

async fn delivered(State(s): State<AppState>, b: Result<Bytes, BytesRejection>) -> Result<Json<Order>, ApiError> {
    let req = DeliverOrder::parse(&body(b)?)?;
    let order = durably(&s.store, "deliver task", move |st| st.deliver(&req)).await?;
    Metrics::inc(&s.metrics.orders_delivered);
    Ok(Json(order))
}

async fn get_order(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    match s.store.get(&id)? {
        Some(o) => Ok(Json(o)),
        None => Err(StoreError::NotFound(id).into()),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.metrics;
    let counters = [
        ("orders_created_total", "Orders created.", &m.orders_created),
        ("orders_fulfilled_total", "Orders fulfilled.", &m.orders_fulfilled),
        ("orders_delivered_total", "Orders delivered.", &m.orders_delivered),
        ("emails_sent_total", "Emails sent or written as .eml files.", &m.emails_sent),
        ("dead_lettered_total", "Records sent to a dead-letter stream.", &m.dead_lettered),
        ("events_published_total", "Outbox entries published to the broker.", &m.events_published),
    ];
    let mut out = String::new();
    for (name, help, c) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", c.load(Ordering::Relaxed)));
    }
    out.push_str(&format!(
        "# HELP outbox_pending Outbox entries waiting for the broker.\n# TYPE outbox_pending gauge\noutbox_pending {}\n",
        s.store.outbox_len()
    ));
    m.handler_retries.render(
        &mut out,
        "handler_retries_total",
        "Transient consumer failures, each followed by a retry of the record.",
        "counter",
    );
    m.handler_permanent_failures.render(
        &mut out,
        "handler_permanent_failures_total",
        "Permanent consumer failures, dead-lettered without a retry.",
        "counter",
    );
    m.consumer_blocked.render(
        &mut out,
        "consumer_blocked",
        "1 while the group's shard waits to retry a record that failed transiently.",
        "gauge",
    );
    out.push_str(&m.refusals.render("order_service"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
