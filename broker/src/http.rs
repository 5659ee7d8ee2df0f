//! The HTTP admin port: `/metrics` (Prometheus text), `/healthz` (the
//! process answers), `/readyz`, and the web console (`/ui`, `/api/v1`, see
//! [`crate::console`]).
//!
//! `/readyz` answers 200 only while the broker serves everything it holds:
//! it is started and not shutting down, no shard is failed, and the data
//! disk is above its free-space watermark. Otherwise it answers 503 with one
//! line per reason, naming every failed shard, so an operator (or a load
//! balancer's log) sees what is wrong without reading the broker's log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::catalog::Catalog;
use crate::listener::Refusals;

/// What `/readyz` looks at.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    catalog: OnceLock<Arc<Catalog>>,
}

impl Readiness {
    /// Marks the broker started (true) or shutting down (false).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Gives readiness the catalogue once it is open.
    pub fn attach(&self, catalog: Arc<Catalog>) {
        let _ = self.catalog.set(catalog);
    }

    /// Why the broker is not ready, one reason per entry; empty when ready.
    pub fn problems(&self) -> Vec<String> {
        match self.catalog.get() {
            Some(c) if self.serving.load(Ordering::SeqCst) => problems(c),
            _ => vec!["the broker is starting or shutting down".into()],
        }
    }
}

/// Why a started broker over `catalog` is not ready (failed shards, a full
/// data disk), one reason per entry; empty when ready.
pub fn problems(catalog: &Catalog) -> Vec<String> {
    let mut out: Vec<String> = catalog
        .failed_shards()
        .into_iter()
        .map(|f| {
            format!("shard {}/{} is failed ({}): {}", f.stream, f.shard_id, f.failure.kind.as_str(), f.failure.cause)
        })
        .collect();
    let disk = catalog.disk();
    if disk.is_full() {
        let d = disk.last();
        out.push(format!(
            "the data disk is below its free-space watermark ({} bytes free, {} needed): writes are refused",
            d.free_bytes, d.watermark_bytes
        ));
    }
    out
}

/// The admin router; `readiness` is updated by the server as it starts and
/// stops; `/metrics` adds the listeners' refusal counts.
pub fn router(readiness: Arc<Readiness>, console: Arc<crate::console::Console>, refusals: Arc<Refusals>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                let mut page = crate::telemetry::prometheus().render();
                page.push_str(&refusals.render("stream_broker"));
                page
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness.clone())
        .merge(crate::console::router(console, readiness))
}

async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, String) {
    let problems = r.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let mut body = String::from("not ready\n");
        for p in problems {
            body.push_str(&p);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}
