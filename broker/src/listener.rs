//! Every listener's front door (broker gRPC, the admin port, the order
//! API): accepts TCP connections under a cap, runs the TLS handshake when
//! the listener has TLS, and watches each connection for idleness. The
//! connections come out of [`incoming`] as [`Conn`]s, which tonic serves
//! directly and [`serve_http`] serves with hyper's HTTP/1 limits.
//!
//! Limits, each refused connection or request counted in [`Refusals`]:
//! - **Connections**: at most `max_connections` open (handshaking ones
//!   included); beyond it a connection is closed at once.
//! - **Handshake**: a TLS handshake must finish within `handshake_timeout`
//!   (a client that opens a connection and sends nothing holds a slot only
//!   this long); a failed one (plaintext to a TLS port, a certificate the
//!   client CA does not sign, no certificate where one is required) closes
//!   the connection.
//! - **Idle**: a connection with no byte read or written for `idle_timeout`
//!   is closed. gRPC clients ping (keepalive) and subscriptions send
//!   heartbeats, so only abandoned connections reach it.
//! - **HTTP** ([`serve_http`], HTTP/1.1 and HTTP/2): request headers must
//!   arrive within `header_read_timeout` and fit in `max_header_bytes` (431
//!   otherwise); an HTTP/2 connection carries at most
//!   [`HTTP2_STREAMS_MAX`] requests at once.
//!
//! Handshakes run in their own tasks, so a slow client never delays the
//! accept loop or another client's handshake.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::auth::tls::{ServerTls, subject_common_name};

/// Why a connection or a request was refused, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// `max_connections` were open.
    Connections,
    /// The TLS handshake failed.
    Handshake,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// No byte moved for the idle timeout.
    Idle,
    /// HTTP request headers did not arrive in time.
    HeaderTimeout,
    /// HTTP request headers were too large.
    HeaderTooLarge,
    /// No credentials, or bad, expired or revoked ones.
    Unauthenticated,
    /// Authenticated, but not allowed.
    PermissionDenied,
    /// The principal's request rate was exceeded.
    RateLimited,
}

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Handshake => "tls_handshake",
            Refusal::HandshakeTimeout => "tls_handshake_timeout",
            Refusal::Idle => "idle_timeout",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::PermissionDenied => "permission_denied",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// Refusal counts of one process, by listener and reason; rendered on
/// `/metrics` as `<prefix>_refusals_total{listener="…",reason="…"}`.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<(&'static str, Refusal), u64>>,
}

impl Refusals {
    /// Counts one refusal on `listener`.
    pub fn count(&self, listener: &'static str, reason: Refusal) {
        // Plain counters, each updated whole: a panic cannot leave one torn.
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((listener, reason)).or_default() += 1;
    }

    /// How many of `reason` on `listener` so far.
    pub fn get(&self, listener: &'static str, reason: Refusal) -> u64 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).get(&(listener, reason)).copied().unwrap_or(0)
    }

    /// Prometheus text for the counts, under `<prefix>_refusals_total`.
    pub fn render(&self, prefix: &str) -> String {
        let name = format!("{prefix}_refusals_total");
        let mut out = format!(
            "# HELP {name} Connections and requests refused by a listener's limits or its authentication.\n\
             # TYPE {name} counter\n"
        );
        for ((listener, reason), n) in self.counts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!("{name}{{listener=\"{listener}\",reason=\"{}\"}} {n}\n", reason.as_str()));
        }
        out
    }
}

/// The limits and TLS of one listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The listener's name in metrics and logs (`grpc`, `admin`, `orders`).
    pub name: &'static str,
    /// Open connections at most.
    pub max_connections: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// TLS, when the listener has it.
    pub tls: Option<Arc<ServerTls>>,
}

/// Who is on the other end of a connection; handlers find it in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's subject common name.
    pub certificate_principal: Option<String>,
}

/// Accepts connections on `listener` until `shutdown` fires; see the module docs.
pub fn incoming(
    listener: TcpListener,
    config: ListenerConfig,
    refusals: Arc<Refusals>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(16);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (e.g. EMFILE) must not stop the listener.
                    tracing::warn!(listener = config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Without TCP_NODELAY, Nagle and delayed ACKs add tens of ms to small responses.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(listener = config.name, error = %e, "cannot set TCP_NODELAY");
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refusals.count(config.name, Refusal::Connections);
                continue;
            };
            let (tx, config, refusals) = (tx.clone(), config.clone(), refusals.clone());
            tokio::spawn(async move {
                if let Some(conn) = establish(stream, remote, permit, &config, &refusals).await {
                    // The server stopped taking connections: it is shutting down.
                    let _ = tx.send(conn).await;
                }
            });
        }
    });
    rx
}

/// The TLS handshake (when the listener has TLS), bounded in time.
async fn establish(
    stream: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    config: &ListenerConfig,
    refusals: &Arc<Refusals>,
) -> Option<Conn> {
    let Some(tls) = &config.tls else {
        let peer = PeerInfo { remote_addr: Some(remote), tls: false, certificate_principal: None };
        return Some(Conn::new(Io::Plain(stream), peer, permit, config, refusals));
    };
    let stream = match tokio::time::timeout(config.handshake_timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refusals.count(config.name, Refusal::Handshake);
            tracing::debug!(listener = config.name, %remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            refusals.count(config.name, Refusal::HandshakeTimeout);
            return None;
        }
    };
    let principal = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| subject_common_name(c));
    let peer = PeerInfo { remote_addr: Some(remote), tls: true, certificate_principal: principal };
    Some(Conn::new(Io::Tls(Box::new(stream)), peer, permit, config, refusals))
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: its stream, who is on the other end, its slot
/// under the connection cap, and its idle watch.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
    idle_timeout: Duration,
    last_active: Instant,
    idle: Pin<Box<Sleep>>,
    listener: &'static str,
    refusals: Arc<Refusals>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!("stream_broker_connections").decrement(1.0);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("listener", &self.listener).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Conn {
    fn new(
        io: Io,
        peer: PeerInfo,
        permit: OwnedSemaphorePermit,
        config: &ListenerConfig,
        refusals: &Arc<Refusals>,
    ) -> Self {
        let now = Instant::now();
        metrics::gauge!("stream_broker_connections").increment(1.0);
        Self {
            io,
            peer,
            idle_timeout: config.idle_timeout,
            last_active: now,
            idle: Box::pin(tokio::time::sleep_until(now + config.idle_timeout)),
            listener: config.name,
            refusals: refusals.clone(),
            _permit: permit,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Called while the stream is pending: an error once the connection
    /// has been idle for the timeout. The timer is re-armed lazily, so a
    /// busy connection costs one clock read per I/O, not a timer reset.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_active + self.idle_timeout;
            if Instant::now() >= deadline {
                self.refusals.count(self.listener, Refusal::Idle);
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle"));
            }
            self.idle.as_mut().reset(deadline);
        }
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Pending => this.check_idle(cx).map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
            ready => {
                this.last_active = Instant::now();
                ready
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Conn {
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            // A peer that stops reading stalls our writes: that is idleness too.
            Poll::Pending => self.check_idle(cx).map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
            ready => {
                self.last_active = Instant::now();
                ready
            }
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Concurrent requests on one HTTP/2 connection to an HTTP listener.
pub const HTTP2_STREAMS_MAX: u32 = 32;

/// ALPN protocols of the HTTP listeners.
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// HTTP limits of [`serve_http`].
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest request head (hyper's read buffer; at least 8192).
    pub max_header_bytes: usize,
}

/// Serves `router` over HTTP/1.1 and HTTP/2 on the connections of `conns` until
/// `shutdown` fires, then lets each connection finish its request.
/// The router's requests carry the connection's [`PeerInfo`].
pub async fn serve_http(
    mut conns: mpsc::Receiver<Conn>,
    router: axum::Router,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    shutdown: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            c = conns.recv() => match c {
                Some(c) => c,
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let (router, refusals, shutdown) = (router.clone(), refusals.clone(), shutdown.clone());
        running.spawn(serve_connection(conn, router, limits, refusals, shutdown));
    }
    while running.join_next().await.is_some() {}
}

async fn serve_connection(
    conn: Conn,
    router: axum::Router,
    limits: HttpLimits,
    refusals: Arc<Refusals>,
    shutdown: CancellationToken,
) {
    let (peer, listener) = (conn.peer.clone(), conn.listener);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        async move { tower::Service::call(&mut router, req).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        // The header block limit of HTTP/1 applies to HTTP/2 too (it fits u32: at most 1 MiB).
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Some(e) = result.as_ref().err().and_then(|e| e.downcast_ref::<hyper::Error>()) {
        if e.is_parse_too_large() {
            refusals.count(listener, Refusal::HeaderTooLarge);
        } else if e.is_timeout() {
            refusals.count(listener, Refusal::HeaderTimeout);
        }
    }
}
