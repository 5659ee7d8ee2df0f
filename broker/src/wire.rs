//! The framed produce listener: PutRecord and PutRecords in
//! [`proto::wire`]'s length-prefixed frames on their own port
//! (`wire.addr`), for producers that send one record per call. A unary
//! gRPC call costs the broker about 8 µs of CPU in HTTP/2 and tonic before
//! any work (a health check measures it); here a request is parsed in
//! place from the connection's read buffer and answered with a few bytes,
//! and the answers a group commit releases leave in one write.
//!
//! The same rules as the gRPC API, through the same code:
//! - **Connections** come from [`crate::listener::incoming`]: the
//!   connection cap, the TLS handshake (ALPN `sbw/1`, the client
//!   certificate's principal), the idle timeout; refusals counted under the
//!   listener `wire`.
//! - **Authentication** once per connection, on `HELLO`: its token is
//!   checked as `authorization: Bearer <token>` (or the client certificate
//!   when it has none); anonymous callers are refused while authentication
//!   is on. The credential is checked again every `auth.recheck_interval_ms`
//!   ([`Auth::watch`]), so a revoked token ends the connection.
//! - **Per request** (`PING` excepted: it is answered in order and
//!   nothing else): the principal's rate ([`Auth::admit`]), then
//!   [`Service::submit_put`], which authorizes `record:put` on the stream,
//!   validates every field (errors name it), routes, applies the shard's
//!   write quota and queues to the shard writer. An answer is written only
//!   after [`crate::service::PendingPut`] resolved, that is after the shard
//!   writer's `fdatasync` in the default durability mode.
//! - **Limits**: a frame longer than `limits.grpc_max_message_bytes` ends
//!   the connection before it is buffered; at most
//!   `limits.produce_stream_in_flight` requests are read ahead of their
//!   answers, then the connection is not read until an answer is written
//!   (TCP pushes back on the client); each waits at most
//!   `limits.request_timeout_ms`.
//!
//! Invariants: answers leave in request order (one FIFO per connection);
//! a request that fails alone gets an `ERROR` with its id and the
//! connection goes on; a frame that cannot be read, a second `HELLO`, or a
//! lost credential gets an `ERROR` with id 0, after the answers of every
//! request before it, and the connection closes. On shutdown a connection
//! stops reading, answers what it has queued, and closes.

use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::wire::{self, Appended, Failure, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Caller};
use crate::error::{BrokerError, Result};
use crate::listener::{Conn, PeerInfo, Refusal, Refusals};
use crate::service::{PendingPut, PutEntry, PutRecordsResult, Service, record_call, within};

/// Answers gathered before they are written even if more are ready.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The first read buffer of a connection; it grows to a whole frame.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// What the listener needs of the broker.
#[derive(Debug, Clone)]
pub struct WireEdge {
    service: Service,
    refusals: Arc<Refusals>,
}

/// One request between the reader and the writer of a connection.
enum Queued {
    Record {
        id: u64,
        started: Instant,
        pending: Result<PendingPut>,
    },
    Records {
        id: u64,
        started: Instant,
        pending: Result<PendingPut>,
    },
    /// A PING's answer.
    Pong {
        id: u64,
    },
    /// A request that failed before it was queued.
    Failed {
        id: u64,
        error: BrokerError,
    },
    /// The connection ends with this error, after the answers before it.
    Fatal(BrokerError),
}

impl WireEdge {
    /// The listener of `service`, counting refusals in `refusals`.
    pub fn new(service: Service, refusals: Arc<Refusals>) -> Self {
        Self { service, refusals }
    }

    /// Serves connections until `shutdown` fires and the open ones have
    /// answered what they queued.
    pub async fn serve(self: Arc<Self>, mut conns: mpsc::Receiver<Conn>, shutdown: CancellationToken) {
        let mut open = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                conn = conns.recv() => match conn {
                    Some(conn) => {
                        open.spawn(self.clone().connection(conn));
                    }
                    None => break,
                },
                Some(_) = open.join_next(), if !open.is_empty() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        while open.join_next().await.is_some() {}
    }

    async fn connection(self: Arc<Self>, conn: Conn) {
        let peer = conn.peer().clone();
        let (mut rd, mut wr) = tokio::io::split(conn);
        let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
        let limits = &self.service.catalog().config().limits;
        let (max_frame, in_flight) = (limits.grpc_max_message_bytes, limits.produce_stream_in_flight);
        let handshake = Duration::from_millis(limits.handshake_timeout_ms);
        let hello = tokio::time::timeout(handshake, self.hello(&mut rd, &mut buf, &peer, max_frame)).await;
        let caller = match hello.unwrap_or_else(|_| {
            self.refusals.count("wire", Refusal::HandshakeTimeout);
            Err(BrokerError::Unauthenticated(format!("no HELLO within {} ms", handshake.as_millis())))
        }) {
            Ok(c) => c,
            Err(e) => {
                let _ = write_now(&mut wr, &error(0, &e)).await;
                return;
            }
        };
        let ready = Response::Ready {
            version: wire::VERSION,
            max_frame_bytes: u32::try_from(max_frame).unwrap_or(u32::MAX),
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
        };
        if write_now(&mut wr, &ready).await.is_err() {
            return;
        }
        let (tx, rx) = mpsc::channel(in_flight);
        let writer = tokio::spawn(answer(wr, rx, self.service.request_timeout()));
        crate::auth::scope(caller.clone(), self.read_requests(rd, buf, &caller, tx, max_frame)).await;
        let _ = writer.await;
    }

    /// Reads `HELLO` and authenticates its caller.
    async fn hello(
        &self,
        rd: &mut (impl AsyncReadExt + Unpin),
        buf: &mut BytesMut,
        peer: &PeerInfo,
        max_frame: usize,
    ) -> Result<Arc<Caller>> {
        let frame = loop {
            if let Some(frame) = wire::next_frame(buf, max_frame).map_err(invalid)? {
                break frame;
            }
            let n = rd.read_buf(buf).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            if n == 0 {
                return Err(BrokerError::Unavailable("the client closed the connection before HELLO".into()));
            }
        };
        let token = match Request::decode(frame).map_err(invalid)? {
            Request::Hello { version: wire::VERSION, token } => token,
            Request::Hello { version, .. } => {
                return Err(BrokerError::invalid(
                    "version",
                    format!("{version} is not a version this broker speaks ({})", wire::VERSION),
                ));
            }
            _ => return Err(BrokerError::invalid("kind", "the first frame must be HELLO")),
        };
        let authorization = token.map(|t| format!("Bearer {t}"));
        crate::auth::layer::admit(
            self.service.auth(),
            &self.refusals,
            "wire",
            authorization.as_deref().map(str::as_bytes),
            Some(peer),
        )
    }

    /// Reads requests and queues them until the client stops, a frame is
    /// bad, the credential is lost or the broker shuts down.
    async fn read_requests(
        &self,
        mut rd: impl AsyncReadExt + Unpin,
        mut buf: BytesMut,
        caller: &Caller,
        tx: mpsc::Sender<Queued>,
        max_frame: usize,
    ) {
        let auth: &Auth = self.service.auth();
        let mut lost = pin!(auth.watch(caller, &[]));
        loop {
            loop {
                let frame = match wire::next_frame(&mut buf, max_frame) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Queued::Fatal(invalid(e))).await;
                        return;
                    }
                };
                let queued = match self.request(frame, caller).await {
                    Ok(q) => q,
                    Err(fatal) => {
                        let _ = tx.send(Queued::Fatal(fatal)).await;
                        return;
                    }
                };
                if tx.send(queued).await.is_err() {
                    return;
                }
            }
            let read = tokio::select! {
                r = rd.read_buf(&mut buf) => r,
                e = &mut lost => {
                    let _ = tx.send(Queued::Fatal(e)).await;
                    return;
                }
                _ = self.service.shutdown().cancelled() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Queues one request; `Err` ends the connection.
    async fn request(&self, frame: Bytes, caller: &Caller) -> Result<Queued> {
        let started = Instant::now();
        Ok(match Request::decode(frame).map_err(invalid)? {
            Request::Hello { .. } => return Err(BrokerError::invalid("kind", "HELLO is sent once, first")),
            Request::Ping { id } => Queued::Pong { id },
            Request::PutRecord { id, stream, record } => match self.admit(caller) {
                Ok(()) => {
                    let pending = self.service.submit_put_record(&stream, entry(record)).await;
                    Queued::Record { id, started, pending }
                }
                Err(error) => Queued::Failed { id, error },
            },
            Request::PutRecords { id, stream, records } => match self.admit(caller) {
                Ok(()) => {
                    let pending = self.service.submit_put(&stream, records.into_iter().map(entry).collect()).await;
                    Queued::Records { id, started, pending }
                }
                Err(error) => Queued::Failed { id, error },
            },
        })
    }

    /// Takes one request from the caller's rate.
    fn admit(&self, caller: &Caller) -> Result<()> {
        self.service.auth().admit(caller).inspect_err(|_| self.refusals.count("wire", Refusal::RateLimited))
    }
}

fn entry(r: wire::Record) -> PutEntry {
    PutEntry { partition_key: r.partition_key, data: r.data, explicit_hash_key: r.explicit_hash_key }
}

fn invalid(e: wire::DecodeError) -> BrokerError {
    BrokerError::invalid(e.field, e.reason)
}

fn error(id: u64, e: &BrokerError) -> Response {
    let retry_after_ms = e.retry_after_ms().unwrap_or(0);
    let message = match e.kind() {
        "Internal" => {
            tracing::error!(error = %e, "internal error");
            "internal error; see the broker log".to_string()
        }
        _ => e.to_string(),
    };
    Response::Error { id, kind: e.kind().to_string(), retry_after_ms, message }
}

async fn write_now(wr: &mut (impl AsyncWriteExt + Unpin), response: &Response) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    response.encode(&mut out);
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Writes the answers in request order. An answer that is ready when the
/// one before it was written joins it in the same write; before waiting for
/// one that is not, what is gathered is written, so no answer waits for a
/// later request's commit.
async fn answer(mut wr: impl AsyncWriteExt + Unpin, mut rx: mpsc::Receiver<Queued>, deadline: Duration) {
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES);
    let mut next = rx.recv().await;
    while let Some(queued) = next {
        let fatal = matches!(queued, Queued::Fatal(_));
        let mut resolving = pin!(resolve(queued, deadline));
        let response = match std::future::poll_fn(|cx| Poll::Ready(resolving.as_mut().poll(cx))).await {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                resolving.await
            }
        };
        response.encode(&mut out);
        if fatal {
            let _ = flush(&mut wr, &mut out).await;
            break;
        }
        next = match rx.try_recv() {
            Ok(q) if out.len() < WRITE_BATCH_BYTES => Some(q),
            Ok(q) => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                Some(q)
            }
            Err(_) => {
                if flush(&mut wr, &mut out).await.is_err() {
                    return;
                }
                rx.recv().await
            }
        };
    }
    let _ = wr.shutdown().await;
}

async fn flush(wr: &mut (impl AsyncWriteExt + Unpin), out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await?;
    out.clear();
    wr.flush().await
}

/// The answer to one queued request, once its records are acknowledged.
async fn resolve(queued: Queued, deadline: Duration) -> Response {
    match queued {
        Queued::Record { id, started, pending } => {
            let outcome = match pending {
                Ok(p) => within("wire.PutRecord", deadline, p.wait_one()).await,
                Err(e) => Err(e),
            };
            record_call("wire.PutRecord", started, outcome.is_err());
            match outcome {
                Ok(r) => Response::Record {
                    id,
                    appended: Appended { shard_id: r.shard_id, sequence_number: r.sequence_number },
                },
                Err(e) => error(id, &e),
            }
        }
        Queued::Records { id, started, pending } => {
            let outcome = match pending {
                Ok(p) => within("wire.PutRecords", deadline, async { Ok(p.wait().await) }).await,
                Err(e) => Err(e),
            };
            record_call("wire.PutRecords", started, outcome.is_err());
            match outcome {
                Ok(r) => Response::Records { id, results: results(r) },
                Err(e) => error(id, &e),
            }
        }
        Queued::Failed { id, error: e } => error(id, &e),
        Queued::Pong { id } => Response::Pong { id },
        Queued::Fatal(e) => error(0, &e),
    }
}

fn results(r: PutRecordsResult) -> Vec<std::result::Result<Appended, Failure>> {
    r.records
        .into_iter()
        .map(|entry| match entry {
            Ok(a) => Ok(Appended { shard_id: a.shard_id, sequence_number: a.sequence_number }),
            Err(f) => Err(Failure {
                error_code: f.kind.error_code().to_string(),
                retry_after_ms: f.retry_after_ms,
                message: f.message,
            }),
        })
        .collect()
}
