//! The Kinesis-compatible HTTP edge: AWS SDKs, the aws CLI and Kinesis
//! consumers work against the broker with only an endpoint override.
//!
//! Wire: `POST /` (any path) with `X-Amz-Target: Kinesis_20131202.<Operation>`,
//! bodies in JSON 1.1 or CBOR 1.1 ([`codec`]), answered in the request's
//! encoding with `x-amzn-RequestId`; HTTP/1.1 and HTTP/2 cleartext with
//! prior knowledge on one listener (hyper-util's auto connection builder,
//! through axum). Every request is authenticated first ([`auth`]), checked
//! against the service model's constraints ([`validate`]) and metered by
//! the control-plane rates ([`rate`]); then it becomes a
//! [`crate::service::Service`] call. Errors are mapped in one place
//! ([`error`]). Callers are marked with their operation, so the resource
//! policies of the stream (and of the consumer a call names) are evaluated
//! with the grants ([`policies`], [`crate::auth::resource_policy`]).
//!
//! This module holds only the wire format: every rule of the data path and
//! the control plane lives in the service layer, shared with gRPC, so a
//! stream created on either API is the same stream, with the same quotas,
//! and a record put on one is read on the other. Sequence numbers and ids
//! are translated in [`names`].

pub mod auth;
pub mod codec;
pub mod error;
pub mod eventstream;
pub mod names;
pub mod policies;
pub mod rate;
pub mod validate;

mod ops;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use self::codec::Format;
use self::error::{KinesisError, Scope};
use self::names::Arns;
use self::rate::Rates;
use crate::config::KinesisConfig;
use crate::error::BrokerError;
use crate::service::Service;

/// The target prefix of every operation.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// The Kinesis edge's state.
#[derive(Debug)]
pub struct KinesisEdge {
    service: Service,
    config: KinesisConfig,
    arns: Arns,
    rates: Rates,
    /// Whether control-plane rates apply (`quotas.enforce`).
    rates_enforced: bool,
    request_ids: RequestIds,
    /// Where authentication and rate refusals are counted (listener `kinesis`).
    refusals: Arc<crate::listener::Refusals>,
}

/// Request ids: a random prefix per broker and a counter, in UUID form.
#[derive(Debug)]
struct RequestIds {
    prefix: [u8; 8],
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut prefix = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut prefix) {
            // Ids only need to be unique per broker run; the counter keeps them so.
            tracing::warn!(error = %e, "no randomness for request ids; using a fixed prefix");
        }
        Self { prefix, next: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let p = self.prefix;
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]
        )
    }
}

impl KinesisEdge {
    /// The Kinesis edge of `service`; gives the service's authorization
    /// the streams' resource policies.
    pub fn new(service: Service) -> Self {
        let config = service.catalog().config().kinesis.clone();
        let rates_enforced = service.catalog().config().quotas.enforce;
        let arns = Arns { region: config.region.clone(), account: config.account_id.clone() };
        service.auth().attach_policies(Arc::new(policies::Policies::new(&service, arns.clone())));
        Self {
            service,
            config,
            arns,
            rates: Rates::default(),
            rates_enforced,
            request_ids: RequestIds::new(),
            refusals: Arc::default(),
        }
    }

    /// Counts its authentication and rate refusals in `refusals` (the
    /// broker's `/metrics`), as listener `kinesis`.
    pub fn with_refusals(mut self, refusals: Arc<crate::listener::Refusals>) -> Self {
        self.refusals = refusals;
        self
    }

    fn now(&self) -> u64 {
        self.service.catalog().clock().now_ms()
    }

    fn scope(&self, data_plane: bool) -> Scope<'_> {
        Scope { account: &self.arns.account, data_plane }
    }

    /// A broker error of a control-plane call.
    fn err(&self, e: BrokerError) -> KinesisError {
        error::from_broker(e, self.scope(false))
    }

    /// A broker error of a data-plane call.
    fn data_err(&self, e: BrokerError) -> KinesisError {
        error::from_broker(e, self.scope(true))
    }

    /// Takes one call of `operation` from its rate (see [`rate`]).
    fn rate(&self, operation: &'static str, key: (u64, u32)) -> Result<(), KinesisError> {
        if !self.rates_enforced {
            return Ok(());
        }
        self.rates.try_call(operation, key, self.now()).map_err(|wait_ms| {
            let text =
                format!("Rate exceeded for {operation} under account {}; retry after {wait_ms} ms.", self.arns.account);
            if operation == "GetShardIterator" {
                KinesisError::client("ProvisionedThroughputExceededException", text)
            } else {
                KinesisError::limit(text)
            }
        })
    }
}

/// An operation's answer: a body in the request's encoding, or a stream.
pub(crate) enum Answer {
    /// HTTP 200 with this body (empty for operations without output).
    Body(Vec<u8>),
    /// HTTP 200 with an event stream.
    Events(Body),
}

/// Encodes an operation's output.
pub(crate) fn reply<T: Serialize>(format: Format, value: &T) -> Result<Answer, KinesisError> {
    Ok(Answer::Body(format.encode(value)?))
}

/// The empty answer of operations without output.
pub(crate) fn done() -> Result<Answer, KinesisError> {
    Ok(Answer::Body(Vec::new()))
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "__type")]
    kind: &'a str,
    #[serde(rename = "message")]
    message: &'a str,
}

/// AWS answers a body that does not decode with a capitalised `Message`.
#[derive(Serialize)]
struct SerializationErrorBody<'a> {
    #[serde(rename = "__type")]
    kind: &'a str,
    #[serde(rename = "Message")]
    message: &'a str,
}

fn error_response(format: Format, e: &KinesisError) -> Response {
    let body = if e.kind == "SerializationException" {
        format.encode(&SerializationErrorBody { kind: e.kind, message: &e.message })
    } else {
        format.encode(&ErrorBody { kind: e.kind, message: &e.message })
    };
    let mut response = (e.status, body.unwrap_or_default()).into_response();
    if let Ok(kind) = HeaderValue::from_str(e.kind) {
        response.headers_mut().insert("x-amzn-ErrorType", kind);
    }
    response
}

/// The router of the Kinesis API.
pub fn router(edge: Arc<KinesisEdge>) -> Router {
    Router::new().fallback(handle).with_state(edge)
}

async fn handle(State(edge): State<Arc<KinesisEdge>>, request: Request) -> Response {
    let request_id = edge.request_ids.next();
    let format = Format::of(request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
    let mut response = match edge.serve(request, format).await {
        Ok(Answer::Body(body)) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            r
        }
        Ok(Answer::Events(body)) => {
            let mut r = Response::new(body);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.amazon.eventstream"));
            r
        }
        Err(e) => {
            let mut r = error_response(format, &e);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            r
        }
    };
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", id);
    }
    response
}

impl KinesisEdge {
    async fn serve(self: &Arc<Self>, request: Request, format: Format) -> Result<Answer, KinesisError> {
        let (parts, body) = request.into_parts();
        if parts.method == Method::GET && parts.uri.path() == "/healthcheck" {
            return Ok(Answer::Body(Vec::new()));
        }
        if parts.method != Method::POST {
            return Err(KinesisError::client(
                "AccessDeniedException",
                format!("the Kinesis API takes POST requests, not {}", parts.method),
            ));
        }
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let Some(operation) = target.strip_prefix(TARGET_PREFIX).and_then(ops::known) else {
            return Err(KinesisError::client("UnknownOperationException", format!("unknown operation {target:?}")));
        };
        let body = match axum::body::to_bytes(body, self.config.request_bytes_max).await {
            Ok(b) => b,
            Err(_) => {
                return Err(KinesisError {
                    kind: "SerializationException",
                    message: format!(
                        "the request body is larger than kinesis.request_bytes_max = {} bytes",
                        self.config.request_bytes_max
                    ),
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                });
            }
        };
        let policy = auth::Policy {
            mode: self.config.auth,
            keys: &self.config.access_keys,
            region: &self.config.region,
            now_ms: self.now(),
        };
        let (signer, body): (_, Bytes) = auth::authenticate(policy, &parts.method, &parts.uri, &parts.headers, body)?;
        let caller = self
            .caller(&signer, operation, parts.extensions.get::<crate::listener::PeerInfo>())
            .map_err(|e| self.err(e))?;
        if matches!(rate::rate_of(operation), Some((_, rate::Per::Account))) {
            self.rate(operation, (0, 0))?;
        }
        crate::auth::scope(caller, self.run(operation, format, body)).await
    }

    /// Who signed a request: in strict mode the principal of the verified
    /// access key; in permissive mode (nothing verified) the client
    /// certificate's principal, if any. Refuses anonymous callers while
    /// authentication is on, and applies the principal's request rate.
    fn caller(
        &self,
        signer: &auth::Signer,
        operation: &'static str,
        peer: Option<&crate::listener::PeerInfo>,
    ) -> Result<Arc<crate::auth::Caller>, BrokerError> {
        use crate::listener::Refusal;
        let broker_auth = self.service.auth();
        let caller = match self.config.auth {
            crate::config::KinesisAuth::Strict if broker_auth.enabled() => {
                let remote = peer.and_then(|p| p.remote_addr).map(|a| a.ip());
                Ok(broker_auth.access_key_caller(&signer.access_key_id, remote))
            }
            _ => broker_auth.authenticate(None, peer),
        };
        let caller = caller
            .and_then(|c| broker_auth.require_principal(&c).map(|()| c))
            .inspect_err(|_| self.refusals.count("kinesis", Refusal::Unauthenticated))?;
        broker_auth.admit(&caller).inspect_err(|_| self.refusals.count("kinesis", Refusal::RateLimited))?;
        let kinesis = Some(crate::auth::KinesisCall { operation, consumer: None });
        Ok(Arc::new(crate::auth::Caller { kinesis, ..caller }))
    }

    /// Runs an authenticated operation under its deadline, with its metrics.
    async fn run(
        self: &Arc<Self>,
        operation: &'static str,
        format: Format,
        body: Bytes,
    ) -> Result<Answer, KinesisError> {
        let started = std::time::Instant::now();
        let deadline = self.service.request_timeout();
        let result = match operation {
            // A subscription outlives the request deadline by design.
            "SubscribeToShard" => ops::dispatch(self, operation, format, body).await,
            _ => match tokio::time::timeout(deadline, ops::dispatch(self, operation, format, body)).await {
                Ok(r) => r,
                Err(_) => Err(self.err(BrokerError::Unavailable(format!(
                    "{operation} exceeded the {} ms deadline (limits.request_timeout_ms)",
                    deadline.as_millis()
                )))),
            },
        };
        let method = ops::metric_name(operation);
        metrics::histogram!("stream_broker_request_duration_seconds", "method" => method)
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("stream_broker_request_errors_total", "method" => method).increment(1);
        }
        result
    }
}
