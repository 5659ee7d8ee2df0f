//! The HTTP admin port: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (streams are open and the broker is not
//! shutting down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

#[derive(Clone)]
struct AdminState {
    ready: Arc<AtomicBool>,
}

/// The admin router; `ready` is flipped by the server as it starts and stops.
pub fn router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(|| async { crate::telemetry::prometheus().render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { ready })
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
