//! Authentication at the listeners: a tower layer for the gRPC server and
//! an axum middleware for the admin port. Both authenticate every request
//! before a handler runs ([`Auth::authenticate`]), refuse anonymous callers
//! while authentication is on, apply the per-principal rate, count each
//! refusal on `/metrics`, and run the handler as the [`Caller`]
//! ([`super::scope`]), where the service layer authorizes it.
//!
//! Exempt, so that load balancers and orchestrators need no credentials:
//! the gRPC health service, and the admin port's `/healthz` and `/readyz`.
//! The web console (`/ui`, `/api/v1`) needs `admin:console` on `cluster`
//! (it shows every stream's records); the rest of the admin port
//! (`/metrics`) needs `admin:metrics` on `cluster`.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{self, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tonic::codegen::BoxFuture;

use super::policy::{Action, Resource};
use super::{Auth, Caller};
use crate::error::BrokerError;
use crate::grpc::status::to_status;
use crate::listener::{PeerInfo, Refusal, Refusals};

/// gRPC methods any caller may use.
const OPEN_GRPC_PREFIX: &str = "/grpc.health.v1.Health/";

/// Authenticates and rate-limits a request; the refusal, counted, otherwise.
pub(crate) fn admit(
    auth: &Auth,
    refusals: &Refusals,
    listener: &'static str,
    authorization: Option<&[u8]>,
    peer: Option<&PeerInfo>,
) -> Result<Arc<Caller>, BrokerError> {
    let caller = auth.authenticate(authorization, peer).and_then(|c| auth.require_principal(&c).map(|()| c));
    let caller = caller.inspect_err(|_| refusals.count(listener, Refusal::Unauthenticated))?;
    auth.admit(&caller).inspect_err(|_| refusals.count(listener, Refusal::RateLimited))?;
    Ok(Arc::new(caller))
}

/// The gRPC server's authentication layer.
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer {
    auth: Arc<Auth>,
    refusals: Arc<Refusals>,
}

impl GrpcAuthLayer {
    /// Authenticates with `auth`; counts refusals in `refusals` as listener `grpc`.
    pub fn new(auth: Arc<Auth>, refusals: Arc<Refusals>) -> Self {
        Self { auth, refusals }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth { inner, auth: self.auth.clone(), refusals: self.refusals.clone() }
    }
}

/// A gRPC service behind [`GrpcAuthLayer`].
#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Arc<Auth>,
    refusals: Arc<Refusals>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        // The clone is not yet ready; the ready one goes to this call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().path().starts_with(OPEN_GRPC_PREFIX) {
            return Box::pin(inner.call(req));
        }
        let admitted = admit(
            &self.auth,
            &self.refusals,
            "grpc",
            req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            req.extensions().get::<PeerInfo>(),
        );
        match admitted {
            Ok(caller) => Box::pin(super::scope(caller, inner.call(req))),
            Err(e) => {
                let response = to_status(e).into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// What the admin port's middleware needs.
#[derive(Debug, Clone)]
pub struct HttpAuth {
    /// The broker's authentication.
    pub auth: Arc<Auth>,
    /// Where refusals are counted.
    pub refusals: Arc<Refusals>,
    /// The listener's name in the counts.
    pub listener: &'static str,
}

/// The admin port's middleware: `/healthz` and `/readyz` are open; the
/// console needs `admin:console` on `cluster`, everything else
/// `admin:metrics` on `cluster`.
pub async fn admin_port(State(h): State<HttpAuth>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let admitted = admit(
        &h.auth,
        &h.refusals,
        h.listener,
        req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        req.extensions().get::<PeerInfo>(),
    );
    let caller = match admitted {
        Ok(c) => c,
        Err(e) => return refusal(e),
    };
    let path = req.uri().path();
    let console = path == "/ui" || path.starts_with("/ui/") || path.starts_with("/api/");
    let action = if console { Action::AdminConsole } else { Action::AdminMetrics };
    if let Err(e) = h.auth.authorize(&caller, action, &Resource::Cluster) {
        h.refusals.count(h.listener, Refusal::PermissionDenied);
        return refusal(e);
    }
    super::scope(caller, next.run(req)).await
}

/// An HTTP refusal: 401 with a `WWW-Authenticate` challenge, 403, or 429
/// with `Retry-After`; the body is one line saying why.
pub fn refusal(e: BrokerError) -> Response {
    let text = format!("{e}\n");
    match e {
        BrokerError::Unauthenticated(_) => {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], text).into_response()
        }
        BrokerError::PermissionDenied { .. } => (StatusCode::FORBIDDEN, text).into_response(),
        BrokerError::Throttled { retry_after_ms, .. } => {
            let secs = retry_after_ms.div_ceil(1000).max(1).to_string();
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs)], text).into_response()
        }
        other => (StatusCode::INTERNAL_SERVER_ERROR, format!("{other}\n")).into_response(),
    }
}
