//! The order HTTP API. Every error, an unknown route (404) or method (405)
//! included, answers with `{"error":"<kind>","message":"…","fields":[…]}`;
//! server faults are logged and answered without internals.
//!
//! - `POST /order` creates (idempotent with an `Idempotency-Key` header);
//! - `POST /order/fulfill` fulfils; repeated with the same `fulfillmentId`
//!   it answers 200 with the order as it is now, with another one 409;
//! - `POST /order/delivered` marks delivered;
//! - `GET /order/{id}` and `GET /orders?status=&limit=&cursor=` read;
//! - `/healthz` (the process answers), `/readyz` (see [`crate::ready`]) and
//!   `/metrics` (every metric `order_service_*`, see `docs/metrics.md`).
//!
//! With `[apiAuth] mode = "broker-token"` ([`crate::api_auth`]) every route
//! but `/healthz` and `/readyz` needs `authorization: Bearer <broker API
//! token>` whose principal the broker allows, on the configured streams:
//!
//! | route | needs |
//! |---|---|
//! | `POST /order` | `record:put` on `stream:<orderStreamName>` |
//! | `POST /order/fulfill` | `record:put` on `stream:<orderStreamName>` and `stream:<deliveryQueueName>` |
//! | `POST /order/delivered` | `record:put` on `stream:<orderStreamName>` and `stream:<customerServiceQueueName>` |
//! | `GET /order/{id}`, `GET /orders` | `record:get` on `stream:<orderStreamName>` |
//! | `GET /metrics` | `admin:metrics` on `cluster` |
//!
//! A route needs a write on every stream its effect reaches (the event it
//! publishes, and the queue the order goes to next), so a caller can cause
//! through the API only writes it could make itself. No or a malformed
//! header, or a bad, expired or revoked token: 401 with `WWW-Authenticate:
//! Bearer`; a principal without a grant: 403 naming the action and the
//! resource; over the principal's broker request rate: 429 with
//! `Retry-After`; the broker unreachable: 503. 401, 403 and 429 are counted
//! in `order_service_refusals_total{listener="orders"}`. Unknown routes answer
//! 404 and 405 without a check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api_auth::{ApiAuth, ApiRoute, Denied};
use crate::model::{CreateOrder, DeliverOrder, FulfillOrder, Invalid, Order, Status};
use crate::ready::Readiness;
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
    /// When the relay last made progress (published an entry, or found the
    /// outbox empty), in ms since the Unix epoch; 0 before its first pass.
    pub outbox_progress_ms: AtomicU64,
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

    /// Records that the relay made progress now.
    pub fn outbox_progressed(&self) {
        self.outbox_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// How long `pending` outbox entries have waited without any being
    /// published; zero when none wait.
    pub fn outbox_stalled(&self, pending: usize) -> std::time::Duration {
        let since = self.outbox_progress_ms.load(Ordering::Relaxed);
        if pending == 0 || since == 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(now_ms().saturating_sub(since))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The order store.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` checks.
    pub ready: Arc<Readiness>,
    /// Who may call; `None`: everyone.
    pub auth: Option<Arc<ApiAuth>>,
}

/// The router, with the body limit; each protected route checks its
/// caller first (see the module docs).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let guard = |route: ApiRoute| {
        axum::middleware::from_fn_with_state((state.clone(), route), |State((s, route)), req, next| {
            authorize(s, route, req, next)
        })
    };
    Router::new()
        .route("/order", post(create).route_layer(guard(ApiRoute::Place)))
        .route("/order/fulfill", post(fulfill).route_layer(guard(ApiRoute::Fulfil)))
        .route("/order/delivered", post(delivered).route_layer(guard(ApiRoute::Deliver)))
        .route("/order/{order_id}", get(get_order).route_layer(guard(ApiRoute::Read)))
        .route("/orders", get(list_orders).route_layer(guard(ApiRoute::Read)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics).route_layer(guard(ApiRoute::Metrics)))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Runs the request only if its caller may use `route`; refusals are
/// counted, and a 401 carries `WWW-Authenticate: Bearer`.
async fn authorize(
    s: AppState,
    route: ApiRoute,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(auth) = &s.auth else {
        return next.run(req).await;
    };
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match auth.check(authorization, route).await {
        Ok(principal) => {
            tracing::debug!(%principal, ?route, "order API caller allowed");
            next.run(req).await
        }
        Err(denied) => {
            let refusal = match &denied {
                Denied::Missing | Denied::Malformed | Denied::BadToken(_) => {
                    Some(broker::listener::Refusal::Unauthenticated)
                }
                Denied::Forbidden { .. } => Some(broker::listener::Refusal::PermissionDenied),
                Denied::Throttled(_) => Some(broker::listener::Refusal::RateLimited),
                Denied::Unavailable(_) => None,
            };
            if let Some(r) = refusal {
                s.metrics.refusals.count(LISTENER, r);
            }
            ApiError::from(denied).into_response()
        }
    }
}

/// The order API's name in `order_service_refusals_total{listener}`.
const LISTENER: &str = "orders";

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        let message = d.to_string();
        match d {
            Denied::Missing => ApiError {
                challenge: Some("Bearer"),
                fields: vec!["authorization".into()],
                ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            },
            Denied::Malformed => ApiError {
                challenge: Some("Bearer error=\"invalid_request\""),
                fields: vec!["authorization".into()],
                ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_authorization", message)
            },
            Denied::BadToken(_) => ApiError {
                challenge: Some("Bearer error=\"invalid_token\""),
                fields: vec!["authorization".into()],
                ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
            },
            Denied::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            Denied::Throttled(wait) => ApiError {
                retry_after_secs: Some(wait.as_secs().max(1)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            },
            Denied::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication_unavailable",
                "the broker that checks API tokens cannot be reached; try again later",
            ),
        }
    }
}

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// `WWW-Authenticate` of a 401.
    #[serde(skip)]
    challenge: Option<&'static str>,
    /// `Retry-After` of a 429, in whole seconds.
    #[serde(skip)]
    retry_after_secs: Option<u64>,
    error: &'static str,
    message: String,
    fields: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self { status, error, message: message.into(), fields: Vec::new(), challenge: None, retry_after_secs: None }
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what} failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; try again later")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self)).into_response();
        if let Some(c) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static(c));
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
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
    // A repeat is committed too: the first request may still be committing.
    let (order, changed) = durably(&s.store, "fulfil task", move |st| st.fulfill(&req)).await?;
    if changed {
        Metrics::inc(&s.metrics.orders_fulfilled);
    }
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

/// Most orders one `GET /orders` returns.
pub const LIST_LIMIT_MAX: usize = 500;
/// Most orders one `GET /orders` looks at (a page filtered by a rare status
/// may come back short, with a cursor to go on).
pub const LIST_SCAN_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page of `GET /orders`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderPage {
    orders: Vec<Order>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn field_error(status: StatusCode, field: &str, message: String) -> ApiError {
    ApiError { fields: vec![field.into()], ..ApiError::new(status, "invalid_query", message) }
}

/// `GET /orders?status=&limit=&cursor=`: orders newest first.
async fn list_orders(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some("placed") => Some(Status::Placed),
        Some("fulfilled") => Some(Status::Fulfilled),
        Some("delivered") => Some(Status::Delivered),
        Some(other) => {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "status",
                format!("status {other:?} is not one of placed, fulfilled, delivered"),
            ));
        }
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => 50,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=LIST_LIMIT_MAX).contains(&n) => n,
            _ => {
                return Err(field_error(
                    StatusCode::BAD_REQUEST,
                    "limit",
                    format!("limit {l:?} must be 1..={LIST_LIMIT_MAX}"),
                ));
            }
        },
    };
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let store = s.store.clone();
    let (orders, next_cursor) =
        tokio::task::spawn_blocking(move || store.list(status, limit, cursor.as_deref(), LIST_SCAN_MAX))
            .await
            .map_err(|e| ApiError::internal("list task", e))??;
    Ok(Json(OrderPage { orders, next_cursor }))
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let stalled = s.metrics.outbox_stalled(s.store.outbox_len());
    let problems = s.ready.problems(&s.store, stalled).await;
    if problems.is_empty() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = String::from("not ready\n");
    for p in problems {
        body.push_str(&p);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.metrics;
    let counters = [
        (
            "order_service_orders_created_total",
            "Orders created (replays of an Idempotency-Key not counted).",
            &m.orders_created,
        ),
        ("order_service_orders_fulfilled_total", "Orders fulfilled (repeats not counted).", &m.orders_fulfilled),
        ("order_service_orders_delivered_total", "Orders delivered.", &m.orders_delivered),
        ("order_service_emails_sent_total", "Emails sent or written as .eml files.", &m.emails_sent),
        ("order_service_dead_lettered_total", "Records sent to a dead-letter stream.", &m.dead_lettered),
        ("order_service_events_published_total", "Outbox entries published to the broker.", &m.events_published),
    ];
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    out.push_str(&format!(
        "# HELP order_service_build_info Always 1; the label is the service's release.\n\
         # TYPE order_service_build_info gauge\norder_service_build_info{{version=\"{version}\"}} 1\n"
    ));
    for (name, help, c) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", c.load(Ordering::Relaxed)));
    }
    let pending = s.store.outbox_len();
    out.push_str(&format!(
        "# HELP order_service_outbox_pending Outbox entries waiting for the broker.\n\
         # TYPE order_service_outbox_pending gauge\norder_service_outbox_pending {pending}\n"
    ));
    out.push_str(&format!(
        "# HELP order_service_outbox_stalled_seconds How long entries have waited without any being published.\n\
         # TYPE order_service_outbox_stalled_seconds gauge\norder_service_outbox_stalled_seconds {}\n",
        m.outbox_stalled(pending).as_secs()
    ));
    m.handler_retries.render(
        &mut out,
        "order_service_handler_retries_total",
        "Transient consumer failures, each followed by a retry of the record.",
        "counter",
    );
    m.handler_permanent_failures.render(
        &mut out,
        "order_service_handler_permanent_failures_total",
        "Permanent consumer failures, dead-lettered without a retry.",
        "counter",
    );
    m.consumer_blocked.render(
        &mut out,
        "order_service_consumer_blocked",
        "1 while the group's shard waits to retry a record that failed transiently.",
        "gauge",
    );
    out.push_str(&m.refusals.render("order_service"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
