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
//!
//! Small writes are coalesced. hyper answers each HTTP/2 request from its
//! own task, and the connection task, woken by the first answer, runs
//! before the others (tokio's LIFO slot) and wrote each answer with its
//! own `writev`: 68,209 of them for about 80,000 unary `PutRecord` calls.
//! A [`Conn`] keeps writes up to [`COALESCE_WRITE_MAX`] in a buffer; on
//! the first flush with something buffered it wakes its own task and
//! yields once, which puts the connection behind the tasks already woken
//! (the rest of a group commit's answers), then writes everything at once.
//! Invariant: bytes reach the socket in the order they were written, and
//! nothing stays buffered once a flush or shutdown has returned `Ready`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::auth::tls::{ServerTls, subject_common_name};

/// Writes up to this size wait in the connection's buffer for the next
/// flush; larger ones (record batches) go to the socket directly.
const COALESCE_WRITE_MAX: usize = 16 * 1024;

/// The most a connection buffers for coalescing (reported in `/metrics`).
pub(crate) const COALESCE_BUFFER_BYTES: usize = 64 * 1024;

/// Why a connection or a request was refused, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// `max_connections` were open.
    Connections,
    /// The TLS handshake failed.
    Handshake,
    /// The TLS handshake (or the wire protocol's HELLO) did not finish in time.
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
    /// Small writes waiting for the next flush (see [`COALESCE_WRITE_MAX`]).
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_pos: usize,
    /// The current flush already let the other woken tasks run once.
    flush_yielded: bool,
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
            out: Vec::new(),
            out_pos: 0,
            flush_yielded: false,
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
        if this.coalesce(&[std::io::IoSlice::new(buf)]) {
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_drain(cx))?;
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
        if this.coalesce(bufs) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        ready!(this.poll_drain(cx))?;
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
        let this = &mut *self;
        if this.out_pos < this.out.len() {
            if !this.flush_yielded {
                // Let the tasks already woken add their frames first (a
                // task that wakes itself runs after them), then write them
                // all with one system call.
                this.flush_yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_drain(cx))?;
        }
        this.flush_yielded = false;
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Conn {
    /// Copies a small write into the coalescing buffer; false when it must
    /// go to the socket itself (large, or the buffer is full).
    fn coalesce(&mut self, bufs: &[std::io::IoSlice<'_>]) -> bool {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 || len > COALESCE_WRITE_MAX || self.out.len() + len > COALESCE_BUFFER_BYTES {
            return false;
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        self.last_active = Instant::now();
        true
    }

    /// Writes the coalescing buffer out, in order, before anything else.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.out_pos < self.out.len() {
            let pending = &self.out[self.out_pos..];
            let polled = match &mut self.io {
                Io::Plain(s) => Pin::new(s).poll_write(cx, pending),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, pending),
            };
            match ready!(self.after_write(cx, polled))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => self.out_pos += n,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        // A burst may grow the buffer to its bound; an idle connection keeps less.
        self.out.shrink_to(COALESCE_WRITE_MAX);
        Poll::Ready(Ok(()))
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ListenerConfig {
            name: "test",
            max_connections: 4,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls: None,
        };
        let mut conns = incoming(listener, config, Arc::new(Refusals::default()), CancellationToken::new());
        let client = TcpStream::connect(addr).await.expect("connect");
        (conns.recv().await.expect("accepted"), client)
    }

    /// Small writes wait for the flush, large ones pass them by on the
    /// socket only after them: every byte arrives, in write order.
    #[tokio::test]
    async fn coalesced_writes_arrive_whole_and_in_order_at_flush_and_shutdown() {
        let (mut conn, mut client) = pair().await;
        let mut expected = Vec::new();
        for round in 0..50u32 {
            for i in 0..20u32 {
                let small = vec![(round * 20 + i) as u8; 1 + (i as usize * 37) % 300];
                conn.write_all(&small).await.expect("small write");
                expected.extend_from_slice(&small);
            }
            let (a, b) = (vec![b'a'; 10], vec![b'b'; 5000]);
            let n = conn
                .write_vectored(&[std::io::IoSlice::new(&a), std::io::IoSlice::new(&b)])
                .await
                .expect("vectored write");
            expected.extend_from_slice(&[a, b].concat()[..n]);
            if round % 7 == 0 {
                let large = vec![round as u8; 100_000];
                conn.write_all(&large).await.expect("large write");
                expected.extend_from_slice(&large);
            }
            if round % 5 == 4 {
                conn.flush().await.expect("flush");
            }
        }
        conn.flush().await.expect("flush");
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("everything written before the flush");
        assert!(got == expected, "bytes reordered or changed");

        conn.write_all(b"last words").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read to the end");
        assert_eq!(rest, b"last words", "shutdown writes what was buffered");
    }
}
