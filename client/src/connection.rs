//! The one way the client reaches a broker: [`Connection`], used by
//! [`Admin`](crate::Admin), [`Producer`](crate::Producer),
//! [`Consumer`](crate::Consumer), [`ShardReader`](crate::ShardReader) and
//! `streamctl`.
//!
//! A `Connection` is a tonic `Channel` (one HTTP/2 connection, cheap to
//! clone) behind a thin service that keeps these promises, each tested in
//! `tests/connection.rs`:
//! - **Connect deadline.** Dialling a broker (TCP) gives up after
//!   [`ConnectOptions::connect_timeout`].
//! - **Request deadline.** Every call fails after
//!   [`ConnectOptions::request_timeout`] unless the caller set a deadline of
//!   its own. The long poll (`Poll`) and the streaming calls (`Produce`,
//!   `SubscribeShard`) are exempt: they wait on purpose, and keepalive
//!   watches their connection instead.
//! - **Keepalive.** HTTP/2 PINGs every [`ConnectOptions::keepalive_interval`],
//!   idle or not; a connection whose peer leaves a PING unanswered for
//!   [`ConnectOptions::keepalive_timeout`] is closed.
//! - **Reconnect.** A call on a broken connection fails with
//!   [`Error::Unavailable`]; the next call dials again (tonic reconnects
//!   lazily), so a broker restarted on the same address is reached again.
//!   The waiting between attempts is the caller's: the producer and the
//!   consumer back off with jitter before they retry.
//! - **Errors name the address and the cause**: "connection refused by
//!   127.0.0.1:7470", "cannot resolve host brokr", "127.0.0.1:7471 did not
//!   answer within 10s", "127.0.0.1:8080 is not a stream-broker gRPC port
//!   (it answered HTTP/1)", "TLS handshake with broker:7470 failed: invalid
//!   peer certificate: UnknownIssuer".
//! - **TLS** ([`ConnectOptions::tls`], or an `https://` address): rustls
//!   with the ring provider; the broker's certificate must chain to the
//!   given CA and name the host (or [`TlsOptions::server_name`]); a client
//!   certificate is sent when given (mutual TLS).
//! - **Credentials.** With [`ConnectOptions::token`], every call carries
//!   `authorization: Bearer <token>` (marked sensitive, so HPACK never
//!   indexes it). Neither the token nor a key appears in `Debug` output.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderValue};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{Error, Result};

/// Calls that wait on purpose and so get no request deadline.
const UNBOUNDED_METHODS: [&str; 3] = [
    "/streambroker.v1.ConsumerGroups/Poll",
    "/streambroker.v1.StreamBroker/Produce",
    "/streambroker.v1.StreamBroker/SubscribeShard",
];

/// The gRPC deadline header (milliseconds, at most 8 digits).
const GRPC_TIMEOUT: &str = "grpc-timeout";
const GRPC_TIMEOUT_MS_MAX: u128 = 99_999_999;

/// How long the HTTP/1 probe of a failed first call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A credential: compared and cloned like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file (the whole file, surrounding whitespace
    /// trimmed); the error names the file, never its content.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(Error::InvalidArgument(format!("{} is empty", path.display())));
        }
        Ok(Self(value.to_string()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// TLS settings of a [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// PEM CA certificates the broker's certificate must chain to
    /// (required: no system store is read; pass the system bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`, for a public CA).
    pub ca_pem: Vec<u8>,
    /// PEM client certificate chain, for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM private key of the client certificate.
    pub client_key_pem: Option<Secret>,
    /// The name the broker's certificate must carry, when it is not the
    /// address's host (for example when dialling by IP address).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Reads the CA and, when given, the client certificate and key files.
    pub fn from_files(
        ca_file: &std::path::Path,
        client_cert_file: Option<&std::path::Path>,
        client_key_file: Option<&std::path::Path>,
        server_name: Option<String>,
    ) -> Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", p.display())))
        };
        let key = match client_key_file {
            Some(p) => Some(Secret::new(
                String::from_utf8(read(p)?)
                    .map_err(|_| Error::InvalidArgument(format!("{} is not a PEM file", p.display())))?,
            )),
            None => None,
        };
        Ok(Self {
            ca_pem: read(ca_file)?,
            client_cert_pem: client_cert_file.map(read).transpose()?,
            client_key_pem: key,
            server_name,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.ca_pem.is_empty() {
            return Err(Error::InvalidArgument("tls.ca_pem: the broker's CA certificate is required".into()));
        }
        if self.client_cert_pem.is_some() != self.client_key_pem.is_some() {
            return Err(Error::InvalidArgument(
                "tls.client_cert_pem and tls.client_key_pem: give both or neither".into(),
            ));
        }
        Ok(())
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let (Some(cert), Some(key)) = (&self.client_cert_pem, &self.client_key_pem) {
            c = c.identity(Identity::from_pem(cert, key.expose()));
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        c
    }
}

/// How a [`Connection`] dials and watches a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Longest a TCP connect may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Deadline of a call that is not a long poll or a stream. Default 10 s,
    /// well above a healthy broker's answer (milliseconds) and below its own
    /// 30 s handler deadline, so a hung broker shows as an error, not a hang.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive PINGs, sent while idle too. Default 20 s.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed. Default 10 s.
    pub keepalive_timeout: Duration,
    /// TLS; required for an `https://` address, and turns a bare
    /// `host:port` into `https://`. Default none (plaintext).
    pub tls: Option<TlsOptions>,
    /// A bearer token sent with every call. Default none (anonymous, or
    /// the client certificate's principal).
    pub token: Option<Secret>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            tls: None,
            token: None,
        }
    }
}

impl ConnectOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::InvalidArgument(format!("{name} must be positive")));
            }
        }
        if self.request_timeout.as_millis() > GRPC_TIMEOUT_MS_MAX {
            return Err(Error::InvalidArgument(format!("request_timeout must be at most {GRPC_TIMEOUT_MS_MAX} ms")));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

/// A connection to one broker; clones share it. See the module docs.
#[derive(Debug, Clone)]
pub struct Connection {
    channel: Channel,
    peer: Arc<Peer>,
}

#[derive(Debug)]
struct Peer {
    /// `host:port`, as the caller wrote it.
    addr: String,
    request_timeout: HeaderValue,
    request_timeout_text: String,
    /// Whether this address ever answered gRPC: then a failure is an outage,
    /// never a wrong port.
    answered_grpc: AtomicBool,
    /// Whether the connection is TLS.
    tls: bool,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
}

impl Connection {
    /// Dials `addr` (`host:port` or `http://host:port`) with `options`.
    pub async fn open(addr: &str, options: &ConnectOptions) -> Result<Self> {
        options.validate()?;
        let (scheme, host_port) = match addr.split_once("://") {
            Some((scheme, rest)) => (scheme, rest.trim_end_matches('/')),
            None if options.tls.is_some() => ("https", addr),
            None => ("http", addr),
        };
        match (scheme, &options.tls) {
            ("http", None) | ("https", Some(_)) => {}
            ("http", Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "broker address {addr:?} says http:// but TLS options are set; use https:// or host:port"
                )));
            }
            ("https", None) => {
                return Err(Error::InvalidArgument(format!(
                    "broker address {addr:?} is https:// but no CA certificate is given (ConnectOptions::tls, \
                     streamctl --ca-file)"
                )));
            }
            _ => return Err(Error::InvalidArgument(format!("broker address {addr:?}: scheme must be http or https"))),
        }
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))
            .map_err(|e| Error::InvalidArgument(format!("broker address {addr:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = &options.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| Error::InvalidArgument(format!("TLS options for {addr:?}: {}", causes(&e))))?;
        }
        let authorization = match &options.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| Error::InvalidArgument("token: must be printable ASCII".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let ms = options.request_timeout.as_millis();
        let peer = Arc::new(Peer {
            addr: host_port.to_string(),
            // Digits and a unit letter are always a valid header value.
            request_timeout: HeaderValue::from_str(&format!("{ms}m")).expect("ASCII digits"),
            request_timeout_text: format!("{:?}", options.request_timeout),
            answered_grpc: AtomicBool::new(false),
            tls: options.tls.is_some(),
            authorization,
        });
        match endpoint.connect().await {
            Ok(channel) => Ok(Self { channel, peer }),
            Err(e) => {
                let classified = peer.classify(&e, Deadline::Ours);
                Err(Error::from(peer.failure(classified).await))
            }
        }
    }

    /// The address this connection dials, as `host:port`.
    pub fn addr(&self) -> &str {
        &self.peer.addr
    }
}

/// Dials `addr` with the default [`ConnectOptions`].
pub async fn connect(addr: &str) -> Result<Connection> {
    Connection::open(addr, &ConnectOptions::default()).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Ours,
    Callers,
    None,
}

impl Service<http::Request<Body>> for Connection {
    type Response = http::Response<Body>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        // This fails only if the channel's worker stopped; connection
        // failures come back from `call`, where they are described.
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let deadline = if req.headers().contains_key(GRPC_TIMEOUT) {
            Deadline::Callers
        } else if UNBOUNDED_METHODS.contains(&req.uri().path()) {
            Deadline::None
        } else {
            req.headers_mut().insert(GRPC_TIMEOUT, self.peer.request_timeout.clone());
            Deadline::Ours
        };
        // A call that carries its own credentials (`Access::check_access_as`)
        // keeps them; the connection's token is the default.
        if let Some(auth) = &self.peer.authorization
            && !req.headers().contains_key(http::header::AUTHORIZATION)
        {
            req.headers_mut().insert(http::header::AUTHORIZATION, auth.clone());
        }
        let peer = self.peer.clone();
        let call = self.channel.call(req);
        Box::pin(async move {
            match call.await {
                Ok(resp) if is_grpc(&resp) => {
                    peer.answered_grpc.store(true, Ordering::Relaxed);
                    Ok(resp)
                }
                Ok(resp) => Err(peer.not_grpc(&format!("HTTP status {} without gRPC", resp.status().as_u16())).into()),
                Err(e) => {
                    let classified = peer.classify(&e, deadline);
                    Err(peer.failure(classified).await.into())
                }
            }
        })
    }
}

fn is_grpc(resp: &http::Response<Body>) -> bool {
    resp.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Peer {
    /// The status for a response that is not gRPC: a wrong port, unless
    /// this address answered gRPC before (then a proxy or a restart is in
    /// the way, which may pass).
    fn not_grpc(&self, answered: &str) -> Status {
        if self.answered_grpc.load(Ordering::Relaxed) {
            return Status::unavailable(format!("{} answered {answered}", self.addr));
        }
        let mut s =
            Status::unimplemented(format!("{} is not a stream-broker gRPC port (it answered {answered})", self.addr));
        s.metadata_mut().insert("x-error-kind", MetadataValue::from_static(NOT_BROKER));
        s
    }

    /// Describes a transport failure by its address and its cause; takes
    /// what [`Peer::classify`] made of it.
    async fn failure(&self, classified: std::result::Result<Status, String>) -> Status {
        let unclear = match classified {
            Ok(status) => return status,
            Err(message) => message,
        };
        // A broken or garbled exchange with an address that never answered
        // gRPC: see whether it speaks HTTP/1, the most common wrong port.
        if !self.answered_grpc.load(Ordering::Relaxed) {
            if !self.tls && answers_http1(&self.addr).await {
                return self.not_grpc("HTTP/1");
            }
            if !self.tls {
                return Status::unavailable(format!(
                    "{unclear} (if the broker uses TLS, connect with https:// and its CA certificate)"
                ));
            }
        }
        Status::unavailable(unclear)
    }

    /// The status for a failure whose cause is certain, or the message for
    /// one that may also mean a wrong port.
    fn classify(&self, e: &(dyn StdError + 'static), deadline: Deadline) -> std::result::Result<Status, String> {
        let addr = &self.addr;
        if sources(e).any(|c| c.is::<tonic::TimeoutExpired>()) {
            return Ok(Status::deadline_exceeded(match deadline {
                Deadline::Callers | Deadline::None => format!("{addr} did not answer before the call's deadline"),
                Deadline::Ours => format!("{addr} did not answer within {}", self.request_timeout_text),
            }));
        }
        // hyper-util's connector reports a failed lookup as "dns error".
        if sources(e).any(|c| c.to_string() == "dns error") {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let cause = sources(e).last().map(ToString::to_string).unwrap_or_default();
            return Ok(Status::unavailable(format!("cannot resolve host {host}: {cause}")));
        }
        if let Some(io) = sources(e).find_map(|c| c.downcast_ref::<std::io::Error>()) {
            use std::io::ErrorKind as K;
            // tokio-rustls carries rustls's error inside the I/O error, not as its source.
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                let mut s = Status::unavailable(format!("TLS handshake with {addr} failed: {tls}"));
                s.metadata_mut().insert("x-error-kind", MetadataValue::from_static(TLS_FAILED));
                return Ok(s);
            }
            return match io.kind() {
                K::ConnectionRefused => Ok(Status::unavailable(format!("connection refused by {addr}"))),
                K::TimedOut => Ok(Status::unavailable(format!("connecting to {addr} timed out"))),
                // An HTTP/1 server answers the HTTP/2 preface and hangs up.
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    Err(format!("connection to {addr} was lost: {io}"))
                }
                _ => Ok(Status::unavailable(format!("connection to {addr} failed: {io}"))),
            };
        }
        Err(format!("connection to {addr} failed: {}", causes(e)))
    }
}

const NOT_BROKER: &str = "NotBroker";
const TLS_FAILED: &str = "Tls";

/// Whether `addr` answers the HTTP/2 client preface with an HTTP/1 response.
async fn answers_http1(addr: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.ok()?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/")
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Some(true)))
}

/// An error and its sources, joined by ": ", without the repeats that
/// wrapping layers add.
pub(crate) fn causes(e: &(dyn StdError + 'static)) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in sources(e) {
        let text = c.to_string();
        if out.last() != Some(&text) {
            out.push(text);
        }
    }
    out.join(": ")
}

/// An error followed by its sources.
fn sources<'a>(e: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// Whether a status carries this module's "not a broker" verdict.
pub(crate) fn is_not_broker(kind: &str) -> bool {
    kind == NOT_BROKER
}

/// Whether a status carries this module's "TLS handshake failed" verdict.
pub(crate) fn is_tls_failure(kind: &str) -> bool {
    kind == TLS_FAILED
}
