//! [`WireProducer`]: the client of the framed produce protocol ("wire v1",
//! specified in `proto::wire`), PutRecord and PutRecords over one TCP or
//! TLS connection without HTTP/2's per-call cost.
//!
//! Invariants:
//! - **One connection, two tasks.** A writer task owns the socket's write
//!   half, a reader task its read half. Clones of a `WireProducer` share
//!   them; many tasks' calls are pipelined on the one connection.
//! - **Answers find their caller.** Request ids come from one counter
//!   starting at 1 (0 is reserved for the connection's own errors). The
//!   broker answers in request order, so the reader pops a FIFO of waiters
//!   and checks that the answer's id and kind are the ones expected; a
//!   mismatch is a protocol error that fails the connection. A waiter is
//!   pushed under the same lock that queues its frame for the writer, so
//!   the FIFO's order is the frames' order on the socket, and no answer can
//!   arrive before its waiter.
//! - **Coalesced writes.** The writer takes one frame, then whatever else is
//!   already queued, up to [`COALESCE_BYTES`], and writes them with one
//!   `write_all`: many callers' frames leave in one syscall.
//! - **Bounded window.** At most READY's `in_flight` requests are
//!   outstanding: each holds a semaphore permit, stored with its waiter and
//!   released only when the answer arrives (or the connection fails), so a
//!   caller that gave up does not let the client exceed what the broker
//!   reads ahead. The frame queue therefore never holds more than
//!   `in_flight` frames.
//! - **Deadlines.** A call fails with [`Error::Unavailable`] naming the
//!   address and [`ConnectOptions::request_timeout`] when no answer came in
//!   time (counted from when the call has a connection, waiting for the
//!   window included; dialling is bounded by
//!   [`ConnectOptions::connect_timeout`]); a late answer is discarded and
//!   the connection stays. The protocol has no ping: a connection whose
//!   peer vanished without a reset is noticed only when TCP gives up on a
//!   write, and until then calls fail at their deadline.
//! - **Keepalive.** Every [`ConnectOptions::keepalive_interval`], idle or
//!   not, a `PING` goes out like a request (it takes a window slot and is
//!   answered in order); when its `PONG` has not come within
//!   [`ConnectOptions::keepalive_timeout`] the connection is failed, so a
//!   peer that vanished without a reset is noticed, and an idle connection
//!   is not closed by the broker's idle timeout. A `PONG` comes after the
//!   answers of the requests before it, so a broker whose commits stall
//!   for longer than the timeout is treated as gone too.
//! - **Failure and reconnect.** EOF, an I/O error, an undecodable frame, a
//!   protocol error, an `ERROR` frame with id 0 or an unanswered keepalive
//!   fails every waiting call
//!   with the cause and the address (an id-0 `Unauthenticated` or
//!   `PermissionDenied` as those variants, anything else as
//!   [`Error::Unavailable`]). The next call dials again. A request that may
//!   have reached the broker is never retried here: the broker may have
//!   stored it, and only the caller can decide whether a duplicate is
//!   acceptable. A request that was never queued (its session had already
//!   failed) is sent on a new connection, once.
//! - **Nothing oversize is sent.** A frame larger than READY's
//!   `max_frame_bytes` is refused before sending, as
//!   [`Error::InvalidArgument`] naming `data` or `records` and both sizes
//!   (the broker would close the connection on it, failing every other call).
//! - **Acknowledged** means what it means on the gRPC API: the broker's
//!   durability mode decides (fdatasync before the answer, by default).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::wire::{self, Appended, Failure, Record, Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{ConnectOptions, Error, RecordAck, Result, TlsOptions};

/// How many queued bytes the writer gathers into one write.
const COALESCE_BYTES: usize = 64 * 1024;

/// Largest answer frame read (answers are small; this bounds what a broken
/// peer can make the reader buffer).
const RESPONSE_BYTES_MAX: usize = crate::MESSAGE_BYTES_MAX;

/// A producer on the framed protocol; clones share the connection. See the
/// module docs.
#[derive(Clone)]
pub struct WireProducer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WireProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireProducer").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

struct Inner {
    /// `host:port`, as the caller wrote it.
    addr: String,
    options: ConnectOptions,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Request ids, shared with the keepalive task; 0 is never used.
    next_id: Arc<AtomicU64>,
    /// The live connection, replaced by the first call that finds it failed.
    session: Mutex<Option<Arc<Session>>>,
    /// One dial at a time; callers that wait for it take its session.
    dialing: tokio::sync::Mutex<()>,
    /// From the latest READY.
    in_flight: AtomicUsize,
    max_frame_bytes: AtomicUsize,
}

/// One connection and its two tasks, aborted when the last user drops it.
struct Session {
    shared: Arc<Shared>,
    max_frame_bytes: usize,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    keepalive: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        self.keepalive.abort();
    }
}

/// What the callers and the two tasks of a connection share.
struct Shared {
    addr: String,
    /// The broker's in-flight window.
    permits: Arc<Semaphore>,
    /// Set once the connection failed; read without the lock on the hot path.
    dead: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// Requests sent (or queued to be) and not answered, in frame order.
    waiters: VecDeque<Waiter>,
    /// The writer's queue; `None` once the connection failed.
    frames: Option<mpsc::Sender<Bytes>>,
    /// Why the connection failed.
    failed: Option<Error>,
}

struct Waiter {
    id: u64,
    expect: Expect,
    answer: oneshot::Sender<Result<Response>>,
    /// Held until the answer arrives: the broker's window counts this request until then.
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Record,
    Records(usize),
    Pong,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state torn: every
        // critical section is a push, a pop or a take.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the connection: every waiting call gets `cause`, later calls
    /// see it, and the writer stops once its queue is dropped.
    fn fail(&self, cause: Error) {
        let waiters = {
            let mut state = self.lock();
            if state.failed.is_some() {
                return;
            }
            state.failed = Some(cause.clone());
            state.frames = None;
            // Under the lock: a caller that finds the queue gone and asks
            // for a live session again must not get this one.
            self.dead.store(true, Ordering::Release);
            std::mem::take(&mut state.waiters)
        };
        self.permits.close();
        for w in waiters {
            // A caller that gave up dropped its receiver; nothing to tell it.
            let _ = w.answer.send(Err(cause.clone()));
        }
    }

    /// Queues `frame` (request `id`) behind a window slot; the receiver
    /// gets its answer. `Unsent`: the connection had failed first.
    async fn enqueue(
        &self,
        id: u64,
        expect: Expect,
        frame: Bytes,
    ) -> std::result::Result<oneshot::Receiver<Result<Response>>, Unsent> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Unsent)?;
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        let Some(frames) = &state.frames else { return Err(Unsent) };
        // The permit bounds the queue to the channel's capacity (the window).
        frames.try_send(frame).map_err(|_| Unsent)?;
        state.waiters.push_back(Waiter { id, expect, answer: tx, _permit: permit });
        Ok(rx)
    }

    fn failure(&self) -> Error {
        self.lock().failed.clone().unwrap_or_else(|| Error::Unavailable(format!("connection to {} failed", self.addr)))
    }

    /// Hands an answer to the oldest waiter, or says why it cannot be its.
    fn deliver(&self, id: u64, response: Response) -> std::result::Result<(), String> {
        let waiter = {
            let mut state = self.lock();
            match state.waiters.front() {
                None => return Err(format!("an answer for request {id} while none is waiting")),
                Some(w) if w.id != id => {
                    return Err(format!("an answer for request {id} where request {} was next", w.id));
                }
                Some(w) => {
                    let fits = match (&response, w.expect) {
                        (Response::Error { .. }, _) | (Response::Record { .. }, Expect::Record) => true,
                        (Response::Records { results, .. }, Expect::Records(n)) => results.len() == n,
                        (Response::Pong { .. }, Expect::Pong) => true,
                        _ => false,
                    };
                    if !fits {
                        return Err(format!(
                            "an answer to request {id} that does not fit it (expected {:?})",
                            w.expect
                        ));
                    }
                }
            }
            state.waiters.pop_front().expect("the front was just seen")
        };
        // The caller may have given up (deadline); the answer is then dropped.
        let _ = waiter.answer.send(Ok(response));
        Ok(())
    }
}

impl WireProducer {
    /// Dials `addr` (`host:port`), TLS when `options.tls` is set, sends
    /// HELLO with `options.token`, and waits for READY.
    pub async fn connect(addr: &str, options: &ConnectOptions) -> Result<Self> {
        options.validate()?;
        if addr.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "broker address {addr:?}: the wire protocol takes host:port (TLS comes from ConnectOptions::tls)"
            )));
        }
        let tls = match &options.tls {
            Some(t) => Some(tls_connector(addr, t)?),
            None => None,
        };
        let inner = Arc::new(Inner {
            addr: addr.to_string(),
            options: options.clone(),
            tls,
            next_id: Arc::new(AtomicU64::new(1)),
            session: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            max_frame_bytes: AtomicUsize::new(0),
        });
        let producer = Self { inner };
        producer.session().await?;
        Ok(producer)
    }

    /// One record; its shard and sequence number once the broker
    /// acknowledged it, or the broker's error for it.
    pub async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<RecordAck> {
        self.put_one(stream, Record { partition_key: partition_key.to_string(), explicit_hash_key: None, data }).await
    }

    /// Like [`WireProducer::put_record`], routing by `explicit_hash_key`
    /// (a decimal string) instead of the key's MD5.
    pub async fn put_record_with_hash_key(
        &self,
        stream: &str,
        partition_key: &str,
        explicit_hash_key: &str,
        data: Bytes,
    ) -> Result<RecordAck> {
        let record = Record {
            partition_key: partition_key.to_string(),
            explicit_hash_key: Some(explicit_hash_key.to_string()),
            data,
        };
        self.put_one(stream, record).await
    }

    /// A batch: per-record results in request order (a [`Failure`] for a
    /// record that failed alone), or the whole request's error.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<Record>,
    ) -> Result<Vec<std::result::Result<RecordAck, Failure>>> {
        let count = records.len();
        let request = |id| Request::PutRecords { id, stream: stream.to_string(), records };
        match self.call(request, Expect::Records(count), "records").await? {
            Response::Records { results, .. } => Ok(results.into_iter().map(|r| r.map(ack)).collect()),
            Response::Error { kind, retry_after_ms, message, .. } => Err(request_error(kind, retry_after_ms, message)),
            other => unreachable!("the reader checked the answer's kind: {other:?}"),
        }
    }

    /// The broker's in-flight window, from the latest READY.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The largest frame the broker reads, from the latest READY.
    pub fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes.load(Ordering::Relaxed)
    }

    async fn put_one(&self, stream: &str, record: Record) -> Result<RecordAck> {
        let request = |id| Request::PutRecord { id, stream: stream.to_string(), record };
        match self.call(request, Expect::Record, "data").await? {
            Response::Record { appended, .. } => Ok(ack(appended)),
            Response::Error { kind, retry_after_ms, message, .. } => Err(request_error(kind, retry_after_ms, message)),
            other => unreachable!("the reader checked the answer's kind: {other:?}"),
        }
    }

    /// Sends one request and waits for its answer (a `RECORD`, `RECORDS`
    /// or request `ERROR`, as `expect` says); `field` names what makes a
    /// frame too large.
    async fn call(&self, request: impl FnOnce(u64) -> Request, expect: Expect, field: &str) -> Result<Response> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        request(id).encode(&mut frame).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let frame = frame.freeze();
        let timeout = self.inner.options.request_timeout;
        // A frame that was never queued is safe to send on a new connection;
        // one that was queued is not (see the module docs).
        for attempt in 0..2 {
            let session = self.session().await?;
            let body = frame.len() - wire::LENGTH_BYTES;
            if body > session.max_frame_bytes {
                return Err(Error::InvalidArgument(format!(
                    "{field}: the request is {body} bytes, more than the broker's max_frame_bytes {}",
                    session.max_frame_bytes
                )));
            }
            let send = async { Ok(session.shared.enqueue(id, expect, frame.clone()).await?.await) };
            match tokio::time::timeout(timeout, send).await {
                Err(_) => {
                    return Err(Error::Unavailable(format!("{} did not answer within {timeout:?}", self.inner.addr)));
                }
                Ok(Ok(Ok(answer))) => return answer,
                // Every waiter is answered or failed before it is dropped;
                // should one be dropped silently, the request may still
                // have left, so this is the connection's failure, not a retry.
                Ok(Ok(Err(_))) => return Err(session.shared.failure()),
                Ok(Err(Unsent)) if attempt == 0 => continue,
                Ok(Err(Unsent)) => return Err(session.shared.failure()),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The live session, dialling a new one when there is none or it failed.
    async fn session(&self) -> Result<Arc<Session>> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _dialing = self.inner.dialing.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let session = Arc::new(self.dial().await?);
        self.inner.in_flight.store(session.shared.permits.available_permits(), Ordering::Relaxed);
        self.inner.max_frame_bytes.store(session.max_frame_bytes, Ordering::Relaxed);
        *self.inner.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
        Ok(session)
    }

    fn live(&self) -> Option<Arc<Session>> {
        let guard = self.inner.session.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|s| !s.shared.dead.load(Ordering::Acquire)).cloned()
    }

    async fn dial(&self) -> Result<Session> {
        let inner = &self.inner;
        let addr = inner.addr.as_str();
        let connect_timeout = inner.options.connect_timeout;
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(Error::Unavailable(format!("connecting to {addr} timed out after {connect_timeout:?}")));
            }
            Ok(Err(e)) => return Err(connect_error(addr, &e)),
            Ok(Ok(s)) => s,
        };
        // Frames are coalesced by the writer already; Nagle would only add latency.
        tcp.set_nodelay(true).map_err(|e| Error::Unavailable(format!("connection to {addr} failed: {e}")))?;
        let token = inner.options.token.as_ref().map(|t| t.expose().to_string());
        let keepalive = Keepalive {
            ids: inner.next_id.clone(),
            interval: inner.options.keepalive_interval,
            timeout: inner.options.keepalive_timeout,
        };
        let handshake = async {
            match &inner.tls {
                None => start(addr, tcp, token, keepalive).await,
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|e| tls_error(addr, &e))?;
                    start(addr, tls, token, keepalive).await
                }
            }
        };
        match tokio::time::timeout(connect_timeout, handshake).await {
            Err(_) => Err(Error::Unavailable(format!(
                "{addr} did not complete the handshake (TLS, HELLO, READY) within {connect_timeout:?}"
            ))),
            Ok(result) => result,
        }
    }
}

/// The request was not queued: its session had failed.
struct Unsent;

/// What the keepalive task of a session needs.
struct Keepalive {
    ids: Arc<AtomicU64>,
    interval: Duration,
    timeout: Duration,
}

/// The keepalive task: a `PING` every interval; one without its `PONG`
/// within the timeout fails the connection (see the module docs).
async fn keep_alive(shared: Arc<Shared>, k: Keepalive) {
    loop {
        tokio::time::sleep(k.interval).await;
        let id = k.ids.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        let ping = Request::Ping { id };
        if ping.encode(&mut frame).is_err() {
            return;
        }
        let ping = async { shared.enqueue(id, Expect::Pong, frame.freeze()).await.ok()?.await.ok()?.ok() };
        match tokio::time::timeout(k.timeout, ping).await {
            Ok(Some(_)) => {}
            // The connection failed; whoever failed it said why.
            Ok(None) => return,
            Err(_) => {
                let why = format!("{} did not answer a keepalive PING within {:?}", shared.addr, k.timeout);
                shared.fail(Error::Unavailable(why));
                return;
            }
        }
    }
}

fn ack(a: Appended) -> RecordAck {
    RecordAck { shard_id: a.shard_id, sequence_number: a.sequence_number }
}

/// Says HELLO on a fresh stream, waits for READY, and starts the two tasks.
async fn start<S>(addr: &str, stream: S, token: Option<String>, keepalive: Keepalive) -> Result<Session>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut hello = BytesMut::new();
    Request::Hello { version: wire::VERSION, token }
        .encode(&mut hello)
        .map_err(|e| Error::InvalidArgument(format!("token: {}", e.reason)))?;
    // With TLS 1.3 the broker checks a client certificate after the
    // client's side of the handshake is done: its refusal arrives here.
    let lost = |e: std::io::Error| match rustls_error(&e) {
        Some(tls) => Error::Tls(format!("TLS handshake with {addr} failed: {tls}")),
        None => Error::Unavailable(format!("connection to {addr} was lost: {e}")),
    };
    wr.write_all(&hello).await.map_err(lost)?;
    wr.flush().await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(4096);
    let frame = match read_frame(&mut rd, &mut buf).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(Error::Unavailable(format!(
                "{addr} closed the connection before READY (is it a stream-broker wire port?)"
            )));
        }
        Err(ReadError::Io(e)) => return Err(lost(e)),
        Err(ReadError::Frame(e)) => {
            return Err(Error::NotBroker(format!("{addr} is not a stream-broker wire port: its answer's {e}")));
        }
    };
    let (max_frame_bytes, in_flight) = match Response::decode(frame) {
        Ok(Response::Ready { version, max_frame_bytes, in_flight }) => {
            if version != wire::VERSION {
                return Err(Error::NotBroker(format!(
                    "{addr} speaks wire version {version}; this client speaks version {}",
                    wire::VERSION
                )));
            }
            (max_frame_bytes as usize, in_flight as usize)
        }
        Ok(Response::Error { kind, retry_after_ms, message, .. }) => {
            return Err(match request_error(kind, retry_after_ms, message) {
                Error::Unavailable(m) => Error::Unavailable(format!("{addr} refused the connection: {m}")),
                other => other,
            });
        }
        Ok(other) => return Err(Error::NotBroker(format!("{addr} answered HELLO with {other:?}, not READY"))),
        Err(e) => return Err(Error::NotBroker(format!("{addr} is not a stream-broker wire port: its answer's {e}"))),
    };
    if in_flight == 0 {
        return Err(Error::NotBroker(format!("{addr} advertised an in-flight window of 0 in READY")));
    }
    let in_flight = in_flight.min(Semaphore::MAX_PERMITS);
    let (frames, queue) = mpsc::channel(in_flight);
    let shared = Arc::new(Shared {
        addr: addr.to_string(),
        permits: Arc::new(Semaphore::new(in_flight)),
        dead: AtomicBool::new(false),
        state: Mutex::new(State { waiters: VecDeque::new(), frames: Some(frames), failed: None }),
    });
    let reader = tokio::spawn(read_answers(shared.clone(), rd, buf));
    let writer = tokio::spawn(write_frames(shared.clone(), wr, queue));
    let keepalive = tokio::spawn(keep_alive(shared.clone(), keepalive));
    Ok(Session { shared, max_frame_bytes, reader, writer, keepalive })
}

enum ReadError {
    Io(std::io::Error),
    Frame(wire::DecodeError),
}

/// The next whole frame, or `None` at a clean EOF between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::result::Result<Option<Bytes>, ReadError> {
    loop {
        if let Some(frame) = wire::next_frame(buf, RESPONSE_BYTES_MAX).map_err(ReadError::Frame)? {
            return Ok(Some(frame));
        }
        if rd.read_buf(buf).await.map_err(ReadError::Io)? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the broker closed the connection inside a frame ({} bytes of it read)", buf.len()),
            )));
        }
    }
}

/// The reader task: answers to their waiters, until the connection fails.
async fn read_answers<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R, mut buf: BytesMut) {
    let addr = shared.addr.clone();
    let cause = loop {
        let frame = match read_frame(&mut rd, &mut buf).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Error::Unavailable(format!("{addr} closed the connection")),
            Err(ReadError::Io(e)) => break Error::Unavailable(format!("connection to {addr} was lost: {e}")),
            Err(ReadError::Frame(e)) => break Error::Unavailable(format!("{addr} sent an unreadable frame: {e}")),
        };
        let response = match Response::decode(frame) {
            Ok(r) => r,
            Err(e) => break Error::Unavailable(format!("{addr} sent an unreadable frame: {e}")),
        };
        let id = match &response {
            Response::Error { id: 0, kind, message, .. } => break connection_error(&addr, kind, message),
            Response::Record { id, .. }
            | Response::Records { id, .. }
            | Response::Error { id, .. }
            | Response::Pong { id } => *id,
            Response::Ready { .. } => break Error::Unavailable(format!("protocol error: {addr} sent READY twice")),
        };
        if let Err(why) = shared.deliver(id, response) {
            break Error::Unavailable(format!("protocol error: {addr} sent {why}"));
        }
    };
    shared.fail(cause);
}

/// The writer task: one write per batch of queued frames.
async fn write_frames<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W, mut queue: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(COALESCE_BYTES);
    while let Some(first) = queue.recv().await {
        // The callers woken with this one (say by a batch of answers) queue
        // their frames when they run: let them, then write all at once.
        tokio::task::yield_now().await;
        let result = match queue.try_recv() {
            // Alone: written as it is, without a copy.
            Err(_) => write(&mut wr, &first).await,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < COALESCE_BYTES {
                    match queue.try_recv() {
                        Ok(f) => batch.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                write(&mut wr, &batch).await
            }
        };
        if let Err(e) = result {
            shared.fail(Error::Unavailable(format!("connection to {} was lost: {e}", shared.addr)));
            return;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    // TLS buffers inside the session until flushed; for TCP this is free.
    wr.flush().await
}

/// The error of a request (or HELLO) the broker refused, by its kind, as
/// the gRPC API's `x-error-kind` maps in `error.rs`.
fn request_error(kind: String, retry_after_ms: u64, message: String) -> Error {
    match kind.as_str() {
        "InvalidArgument" => Error::InvalidArgument(message),
        "StreamNotFound" | "ShardNotFound" => Error::NotFound(message),
        "Throttled" | "LimitExceeded" => Error::Throttled {
            message,
            retry_after: Duration::from_millis(if retry_after_ms == 0 { 1000 } else { retry_after_ms }),
        },
        "Unauthenticated" => Error::Unauthenticated(crate::error::unprefixed(message, "unauthenticated: ")),
        "PermissionDenied" => Error::PermissionDenied(crate::error::unprefixed(message, "permission denied: ")),
        // A closed shard (split or merged) and a full disk can pass: retryable.
        "Unavailable" | "ShardClosed" | "DiskFull" => Error::Unavailable(message),
        _ => Error::Rejected { kind, message },
    }
}

/// The error every waiting call gets when the broker ends the connection with `ERROR` id 0.
fn connection_error(addr: &str, kind: &str, message: &str) -> Error {
    match kind {
        "Unauthenticated" => Error::Unauthenticated(crate::error::unprefixed(message.to_string(), "unauthenticated: ")),
        "PermissionDenied" => {
            Error::PermissionDenied(crate::error::unprefixed(message.to_string(), "permission denied: "))
        }
        _ => Error::Unavailable(format!("{addr} closed the connection: {kind}: {message}")),
    }
}

fn connect_error(addr: &str, e: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Error::Unavailable(format!("connection refused by {addr}")),
        K::TimedOut => Error::Unavailable(format!("connecting to {addr} timed out")),
        _ => Error::Unavailable(format!("connecting to {addr} failed: {e}")),
    }
}

/// rustls's error inside an I/O error of a TLS stream, where tokio-rustls carries it.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn tls_error(addr: &str, e: &std::io::Error) -> Error {
    match rustls_error(e) {
        Some(tls) => Error::Tls(format!("TLS handshake with {addr} failed: {tls}")),
        None => Error::Unavailable(format!("TLS handshake with {addr} failed: {e}")),
    }
}

/// The TLS client of `options`, with the name the broker's certificate
/// must carry: `server_name`, or the address's host.
fn tls_connector(addr: &str, options: &TlsOptions) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>)> {
    let invalid = |field: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("{field}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&options.ca_pem) {
        let cert = cert.map_err(|e| invalid("tls.ca_pem", &e))?;
        roots.add(cert).map_err(|e| invalid("tls.ca_pem", &e))?;
    }
    if roots.is_empty() {
        return Err(Error::InvalidArgument("tls.ca_pem: no PEM certificate in it".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", &e))?
        .with_root_certificates(roots);
    let mut config = match (&options.client_cert_pem, &options.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid("tls.client_cert_pem", &e))?;
            if certs.is_empty() {
                return Err(Error::InvalidArgument("tls.client_cert_pem: no PEM certificate in it".into()));
            }
            // The key's content never appears in an error.
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| Error::InvalidArgument("tls.client_key_pem: no PEM private key in it".into()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| invalid("tls.client_cert_pem", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![wire::ALPN.to_vec()];
    let host = match &options.server_name {
        Some(name) => name.clone(),
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[').trim_end_matches(']').to_string()
        }
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| Error::InvalidArgument(format!("tls.server_name {host:?}: {e}")))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    use tokio::net::TcpListener;

    use super::*;

    /// Bounds every wait of a test, so a hang is a failure, not a stuck run.
    const WAIT: Duration = Duration::from_secs(30);

    /// One accepted connection of the fake broker.
    struct Peer<S> {
        stream: S,
        buf: BytesMut,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
        /// The next request, or `None` when the client closed the connection.
        async fn request(&mut self) -> Option<Request> {
            loop {
                if let Some(r) = self.buffered() {
                    return Some(r);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }

        /// A request already read, if a whole one is buffered.
        fn buffered(&mut self) -> Option<Request> {
            let frame = wire::next_frame(&mut self.buf, 1 << 24).expect("the client's frames are well-formed")?;
            Some(Request::decode(frame).expect("the client's frames decode"))
        }

        async fn send(&mut self, responses: &[Response]) {
            let mut out = BytesMut::new();
            for r in responses {
                r.encode(&mut out);
            }
            // The client may have gone; the test's assertions are on its side.
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.flush().await;
        }

        /// Reads HELLO and returns its token.
        async fn hello(&mut self) -> Option<String> {
            match self.request().await.expect("HELLO") {
                Request::Hello { version, token } => {
                    assert_eq!(version, wire::VERSION);
                    token
                }
                other => panic!("expected HELLO first, got {other:?}"),
            }
        }

        async fn ready(&mut self, max_frame_bytes: u32, in_flight: u32) {
            self.hello().await;
            self.send(&[Response::Ready { version: wire::VERSION, max_frame_bytes, in_flight }]).await;
        }
    }

    /// A fake broker on 127.0.0.1:0; `serve(n, peer)` handles the n-th
    /// accepted connection (from 0).
    async fn fake<F, Fut>(serve: F) -> String
    where
        F: Fn(usize, Peer<TcpStream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(n, Peer { stream, buf: BytesMut::new() }));
                n += 1;
            }
        });
        addr
    }

    fn options(request_timeout: Duration) -> ConnectOptions {
        ConnectOptions { request_timeout, connect_timeout: WAIT, ..ConnectOptions::default() }
    }

    fn appended(shard: &str, sequence_number: u64) -> Appended {
        Appended { shard_id: shard.to_string(), sequence_number }
    }

    fn number(data: &Bytes) -> u64 {
        std::str::from_utf8(data).expect("UTF-8").parse().expect("a number")
    }

    /// Answers every request in order, each record with its key as the
    /// shard and three times its data (a number) as the sequence number,
    /// writing the answers to all requests read so far at once.
    async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut peer: Peer<S>) {
        loop {
            let Some(first) = peer.request().await else { return };
            let mut answers = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next {
                answers.push(match request {
                    Request::PutRecord { id, record, .. } => {
                        Response::Record { id, appended: appended(&record.partition_key, 3 * number(&record.data)) }
                    }
                    Request::PutRecords { id, records, .. } => Response::Records {
                        id,
                        results: records.iter().map(|r| Ok(appended(&r.partition_key, 3 * number(&r.data)))).collect(),
                    },
                    Request::Ping { id } => Response::Pong { id },
                    Request::Hello { .. } => panic!("a second HELLO"),
                });
                next = peer.buffered();
            }
            peer.send(&answers).await;
        }
    }

    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
    }

    #[test]
    fn the_producer_is_shared_across_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<WireProducer>();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_are_pipelined_and_each_gets_its_own_answer() {
        let addr = fake(|_, mut peer| async move {
            peer.ready(1 << 20, 8).await;
            echo(peer).await;
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(WAIT)).await.expect("connect");
        assert_eq!((producer.in_flight(), producer.max_frame_bytes()), (8, 1 << 20));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let p = producer.clone();
            tasks.push(tokio::spawn(async move {
                if i % 10 == 0 {
                    let records = (0..3)
                        .map(|j| Record {
                            partition_key: format!("k{i}-{j}"),
                            explicit_hash_key: None,
                            data: Bytes::from((i * 10 + j).to_string()),
                        })
                        .collect();
                    let results = p.put_records("s", records).await.expect("put_records");
                    let acks: Vec<RecordAck> = results.into_iter().map(|r| r.expect("stored")).collect();
                    let want: Vec<RecordAck> = (0..3)
                        .map(|j| RecordAck { shard_id: format!("k{i}-{j}"), sequence_number: 3 * (i * 10 + j) })
                        .collect();
                    assert_eq!(acks, want);
                } else if i % 10 == 1 {
                    let ack = p
                        .put_record_with_hash_key("s", &format!("k{i}"), "42", Bytes::from(i.to_string()))
                        .await
                        .expect("put_record_with_hash_key");
                    assert_eq!((ack.shard_id, ack.sequence_number), (format!("k{i}"), 3 * i));
                } else {
                    let ack =
                        p.put_record("s", &format!("k{i}"), Bytes::from(i.to_string())).await.expect("put_record");
                    assert_eq!((ack.shard_id, ack.sequence_number), (format!("k{i}"), 3 * i));
                }
            }));
        }
        for t in tasks {
            within("a caller", t).await.expect("the caller's assertions hold");
        }
    }

    fn keepalive_options(interval: Duration, timeout: Duration) -> ConnectOptions {
        ConnectOptions { keepalive_interval: interval, keepalive_timeout: timeout, ..options(WAIT) }
    }

    #[tokio::test]
    async fn a_broker_that_stops_answering_is_dropped_by_the_keepalive() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let addr = fake(move |_, mut peer| {
            let seen_tx = seen_tx.clone();
            async move {
                peer.ready(1 << 20, 8).await;
                // Reads everything, answers nothing, keeps the connection open.
                while let Some(request) = peer.request().await {
                    let _ = seen_tx.send(request);
                }
            }
        })
        .await;
        let options = keepalive_options(Duration::from_millis(100), Duration::from_millis(300));
        let producer = WireProducer::connect(&addr, &options).await.expect("connect");
        // The call's own deadline is 30 s; the keepalive ends it first.
        let e =
            within("the put", producer.put_record("s", "k", Bytes::from_static(b"1"))).await.expect_err("no answer");
        assert!(matches!(&e, Error::Unavailable(m) if m.contains("keepalive PING")), "{e:?}");
        let mut pinged = false;
        while let Ok(request) = seen.try_recv() {
            pinged |= matches!(request, Request::Ping { .. });
        }
        assert!(pinged, "the fake saw a PING");
    }

    #[tokio::test]
    async fn an_idle_connection_is_kept_with_pings() {
        let (pings_tx, mut pings) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let addr = fake(move |_, mut peer| {
            let pings_tx = pings_tx.clone();
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                peer.ready(1 << 20, 8).await;
                while let Some(request) = peer.request().await {
                    let answer = match request {
                        Request::Ping { id } => {
                            let _ = pings_tx.send(id);
                            Response::Pong { id }
                        }
                        Request::PutRecord { id, record, .. } => {
                            Response::Record { id, appended: appended(&record.partition_key, number(&record.data)) }
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    peer.send(&[answer]).await;
                }
            }
        })
        .await;
        let options = keepalive_options(Duration::from_millis(50), Duration::from_secs(5));
        let producer = WireProducer::connect(&addr, &options).await.expect("connect");
        for _ in 0..3 {
            within("a PING while idle", pings.recv()).await.expect("the fake is running");
        }
        let ack = producer.put_record("s", "k", Bytes::from_static(b"7")).await.expect("the connection is alive");
        assert_eq!(ack.sequence_number, 7);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection throughout");
    }

    #[tokio::test]
    async fn the_window_holds_and_the_deadline_fires_when_the_broker_never_answers() {
        let (count_tx, count_rx) = oneshot::channel();
        let count_tx = Mutex::new(Some(count_tx));
        let addr = fake(move |_, mut peer| {
            let count_tx = count_tx.lock().expect("lock").take();
            async move {
                peer.ready(1 << 20, 4).await;
                let mut seen = 0;
                while peer.request().await.is_some() {
                    seen += 1;
                }
                count_tx.expect("one connection").send(seen).expect("the test waits");
            }
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(Duration::from_millis(200))).await.expect("connect");
        let calls = (0..10u64).map(|i| {
            let p = producer.clone();
            async move { p.put_record("s", "k", Bytes::from(i.to_string())).await }
        });
        for result in within("the calls", futures_join(calls)).await {
            match result {
                Err(Error::Unavailable(m)) => {
                    assert!(m.contains(&addr) && m.contains("200ms"), "names the address and the deadline: {m}")
                }
                other => panic!("expected the deadline, got {other:?}"),
            }
        }
        drop(producer);
        // Four requests filled the window; their callers gave up, but the
        // broker still counts them, so the other six never left.
        assert_eq!(within("the fake's count", count_rx).await.expect("count"), 4);
    }

    /// Runs the futures concurrently on this task and returns their outputs in order.
    async fn futures_join<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
                if slot.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *slot = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        out.into_iter().map(|v| v.expect("every future finished")).collect()
    }

    #[tokio::test]
    async fn a_late_answer_is_discarded_and_the_next_call_gets_its_own() {
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Mutex::new(Some(release_rx));
        let addr = fake(move |_, mut peer| {
            let release_rx = release_rx.lock().expect("lock").take();
            async move {
                peer.ready(1 << 20, 8).await;
                let Some(Request::PutRecord { id, .. }) = peer.request().await else { panic!("a PutRecord") };
                // Answer the first request only after its caller gave up.
                release_rx.expect("one connection").await.expect("the test releases");
                peer.send(&[Response::Record { id, appended: appended("late", 1) }]).await;
                echo(peer).await;
            }
        })
        .await;
        // Long enough that the second call's answer is never late on a loaded machine.
        let producer = WireProducer::connect(&addr, &options(Duration::from_secs(2))).await.expect("connect");
        let e = within("the first call", producer.put_record("s", "a", Bytes::from("1"))).await.expect_err("deadline");
        assert!(matches!(&e, Error::Unavailable(m) if m.contains("did not answer within 2s")), "{e}");
        release_tx.send(()).expect("the fake waits");
        // The late answer goes to nobody; this answer is the second call's own.
        let ack = within("the second call", producer.put_record("s", "b", Bytes::from("7"))).await.expect("stored");
        assert_eq!((ack.shard_id.as_str(), ack.sequence_number), ("b", 21));
    }

    #[tokio::test]
    async fn an_error_for_a_request_fails_only_that_call() {
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        let addr = fake(move |_, mut peer| {
            seen.fetch_add(1, Ordering::Relaxed);
            async move {
                peer.ready(1 << 20, 16).await;
                while let Some(request) = peer.request().await {
                    let Request::PutRecord { id, record, .. } = request else { panic!("PutRecord only") };
                    let error = |kind: &str, retry_after_ms, message: &str| Response::Error {
                        id,
                        kind: kind.into(),
                        retry_after_ms,
                        message: message.into(),
                    };
                    let answer = match record.partition_key.as_str() {
                        "bad" => error("InvalidArgument", 0, "data: 2000000 bytes, more than 1048576"),
                        "slow" => error("Throttled", 0, "shard write quota"),
                        "slower" => error("LimitExceeded", 250, "stream quota"),
                        "gone" => error("StreamNotFound", 0, "stream s"),
                        "split" => error("ShardClosed", 0, "shardId-000000000000 is closed"),
                        "full" => error("DiskFull", 0, "no space"),
                        "who" => error("PermissionDenied", 0, "permission denied: alice may not write s"),
                        "odd" => error("Damaged", 0, "segment 7"),
                        key => Response::Record { id, appended: appended(key, number(&record.data)) },
                    };
                    peer.send(&[answer]).await;
                }
            }
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(WAIT)).await.expect("connect");
        let keys = ["ok1", "bad", "slow", "slower", "gone", "split", "full", "who", "odd", "ok2"];
        let calls = keys.iter().enumerate().map(|(i, key)| producer.put_record("s", key, Bytes::from(i.to_string())));
        let results = within("the calls", futures_join(calls)).await;
        let [ok1, bad, slow, slower, gone, split, full, who, odd, ok2] = results.try_into().expect("ten results");
        assert_eq!(ok1.expect("stored").sequence_number, 0);
        assert_eq!(ok2.expect("stored").sequence_number, 9);
        assert!(matches!(bad, Err(Error::InvalidArgument(m)) if m.starts_with("data:")));
        let slow = slow.expect_err("throttled");
        assert_eq!((slow.retry_after(), slow.is_retryable()), (Some(Duration::from_millis(1000)), true));
        assert_eq!(slower.expect_err("throttled").retry_after(), Some(Duration::from_millis(250)));
        assert!(matches!(gone, Err(Error::NotFound(m)) if m == "stream s"));
        for e in [split.expect_err("closed"), full.expect_err("full")] {
            assert!(matches!(&e, Error::Unavailable(_)) && e.is_retryable(), "{e:?}");
        }
        assert!(matches!(who, Err(Error::PermissionDenied(m)) if m == "alice may not write s"));
        assert!(matches!(odd, Err(Error::Rejected { kind, message }) if kind == "Damaged" && message == "segment 7"));
        // The connection survived all of them.
        producer.put_record("s", "ok3", Bytes::from("3")).await.expect("stored");
        assert_eq!(connections.load(Ordering::Relaxed), 1);
    }

    /// Reads `n` requests, then ends the connection as `end` says.
    async fn fail_after(peer: &mut Peer<TcpStream>, n: usize, end: Option<Response>) {
        let mut ids = Vec::new();
        while ids.len() < n {
            match peer.request().await.expect("a request") {
                Request::PutRecord { id, .. } => ids.push(id),
                other => panic!("PutRecord only, got {other:?}"),
            }
        }
        match end {
            Some(Response::Record { appended, .. }) => {
                // An answer with an id nobody waits for: a protocol error.
                peer.send(&[Response::Record { id: ids[0] + 1000, appended }]).await
            }
            Some(other) => peer.send(&[other]).await,
            None => {}
        }
        // Dropping the peer closes the connection.
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_connection_fails_every_waiting_call_and_the_next_call_redials() {
        let addr = fake(|n, mut peer| async move {
            peer.ready(1 << 20, 8).await;
            let error = |kind: &str, message: &str| {
                Some(Response::Error { id: 0, kind: kind.into(), retry_after_ms: 0, message: message.into() })
            };
            match n {
                0 => fail_after(&mut peer, 3, error("Unavailable", "the broker is shutting down")).await,
                1 => fail_after(&mut peer, 3, None).await,
                2 => fail_after(&mut peer, 3, Some(Response::Record { id: 0, appended: appended("x", 1) })).await,
                3 => fail_after(&mut peer, 2, error("Unauthenticated", "unauthenticated: the token was revoked")).await,
                _ => echo(peer).await,
            }
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(WAIT)).await.expect("connect");
        let round = |n: usize| {
            let calls = (0..n).map(|i| producer.put_record("s", "k", Bytes::from(i.to_string())));
            within("a round of calls", futures_join(calls))
        };
        for e in round(3).await {
            let e = e.expect_err("the broker shut down");
            assert!(matches!(&e, Error::Unavailable(m) if m.contains(&addr) && m.contains("shutting down")), "{e:?}");
        }
        for e in round(3).await {
            let e = e.expect_err("EOF");
            assert!(matches!(&e, Error::Unavailable(m) if m == &format!("{addr} closed the connection")), "{e:?}");
        }
        for e in round(3).await {
            let e = e.expect_err("wrong id");
            assert!(matches!(&e, Error::Unavailable(m) if m.contains("protocol error") && m.contains(&addr)), "{e:?}");
        }
        for e in round(2).await {
            let e = e.expect_err("revoked");
            assert!(matches!(&e, Error::Unauthenticated(m) if m == "the token was revoked"), "{e:?}");
        }
        // A fifth connection, dialled by this call.
        let ack = producer.put_record("s", "k", Bytes::from("5")).await.expect("stored after redialling");
        assert_eq!(ack.sequence_number, 15);
    }

    #[tokio::test]
    async fn calls_that_had_not_left_go_to_the_new_connection_and_sent_ones_are_not_retried() {
        let later = Arc::new(AtomicUsize::new(0));
        let counted = later.clone();
        let addr = fake(move |n, mut peer| {
            let counted = counted.clone();
            async move {
                peer.ready(1 << 20, 2).await;
                if n == 0 {
                    // Two requests fill the window; the broker dies holding them.
                    return fail_after(&mut peer, 2, None).await;
                }
                while let Some(Request::PutRecord { id, record, .. }) = peer.request().await {
                    counted.fetch_add(1, Ordering::Relaxed);
                    peer.send(&[Response::Record { id, appended: appended("a", 3 * number(&record.data)) }]).await;
                }
            }
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(WAIT)).await.expect("connect");
        // Polled in order on one task: calls 0 and 1 take the window, 2 and 3 wait for it.
        let calls = (0..4u64).map(|i| producer.put_record("s", "k", Bytes::from(i.to_string())));
        let results = within("the calls", futures_join(calls)).await;
        for sent in &results[..2] {
            assert!(matches!(sent, Err(Error::Unavailable(m)) if m.contains("closed the connection")), "{sent:?}");
        }
        let stored: Vec<u64> =
            results[2..].iter().map(|r| r.as_ref().expect("sent on the new connection").sequence_number).collect();
        assert_eq!(stored, [6, 9]);
        assert_eq!(later.load(Ordering::Relaxed), 2, "the two requests that had left were not sent again");
    }

    #[tokio::test]
    async fn a_broker_of_another_version_is_refused() {
        let addr = fake(|_, mut peer| async move {
            peer.hello().await;
            peer.send(&[Response::Ready { version: 2, max_frame_bytes: 1 << 20, in_flight: 8 }]).await;
        })
        .await;
        let e = WireProducer::connect(&addr, &options(WAIT)).await.expect_err("version 2");
        assert!(
            matches!(&e, Error::NotBroker(m) if m.contains(&addr) && m.contains("version 2") && m.contains("version 1")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn hello_carries_the_token_and_a_refusal_is_the_brokers_error() {
        let addr = fake(|_, mut peer| async move {
            match peer.hello().await.as_deref() {
                Some("s3cret") => {
                    peer.send(&[Response::Ready { version: wire::VERSION, max_frame_bytes: 1 << 20, in_flight: 8 }])
                        .await;
                    echo(peer).await;
                }
                _ => {
                    let message = "unauthenticated: a token is required".to_string();
                    peer.send(&[Response::Error { id: 0, kind: "Unauthenticated".into(), retry_after_ms: 0, message }])
                        .await
                }
            }
        })
        .await;
        let e = WireProducer::connect(&addr, &options(WAIT)).await.expect_err("no token");
        assert!(matches!(&e, Error::Unauthenticated(m) if m == "a token is required"), "{e:?}");
        let with_token = ConnectOptions { token: Some(crate::Secret::new("s3cret")), ..options(WAIT) };
        let producer = WireProducer::connect(&addr, &with_token).await.expect("connect with the token");
        assert_eq!(producer.put_record("s", "k", Bytes::from("2")).await.expect("stored").sequence_number, 6);
    }

    #[tokio::test]
    async fn connect_errors_name_the_address() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").to_string();
        let e = WireProducer::connect(&addr, &options(WAIT)).await.expect_err("refused");
        assert!(matches!(&e, Error::Unavailable(m) if m == &format!("connection refused by {addr}")), "{e:?}");
        let e = WireProducer::connect("http://127.0.0.1:1", &options(WAIT)).await.expect_err("a URL");
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("host:port")), "{e:?}");
    }

    #[tokio::test]
    async fn an_oversize_request_is_refused_before_it_is_sent() {
        let (sizes_tx, mut sizes_rx) = mpsc::unbounded_channel();
        let addr = fake(move |_, mut peer| {
            let sizes_tx = sizes_tx.clone();
            async move {
                peer.ready(1000, 8).await;
                while let Some(request) = peer.request().await {
                    let Request::PutRecord { id, record, .. } = request else { panic!("PutRecord only") };
                    sizes_tx.send(record.data.len()).expect("the test listens");
                    peer.send(&[Response::Record { id, appended: appended("a", 1) }]).await;
                }
            }
        })
        .await;
        let producer = WireProducer::connect(&addr, &options(WAIT)).await.expect("connect");
        let big = Bytes::from(vec![b'x'; 2000]);
        let e = producer.put_record("s", "k", big.clone()).await.expect_err("oversize");
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.starts_with("data:") && m.contains("1000") && m.contains("2021 bytes")),
            "{e:?}"
        );
        let records = (0..3)
            .map(|_| Record { partition_key: "k".into(), explicit_hash_key: None, data: big.slice(..400) })
            .collect();
        let e = producer.put_records("s", records).await.expect_err("oversize");
        assert!(matches!(&e, Error::InvalidArgument(m) if m.starts_with("records:") && m.contains("1000")), "{e:?}");
        producer.put_record("s", "k", Bytes::from("small")).await.expect("a request that fits");
        // The fake reports each request before answering it, so every report is in.
        let mut sizes = Vec::new();
        while let Ok(n) = sizes_rx.try_recv() {
            sizes.push(n);
        }
        assert_eq!(sizes, [5], "only the request that fits reached the broker");
    }

    /// A CA and a certificate it signed, PEM.
    struct Pki {
        ca_pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
            let key = rcgen::KeyPair::generate().expect("CA key");
            let ca_pem = params.self_signed(&key).expect("CA").pem();
            Self { ca_pem, issuer: rcgen::Issuer::new(params, key) }
        }

        /// A certificate for `sans` (none: a client certificate) and its key, PEM.
        fn leaf(&self, sans: &[&str]) -> (String, String) {
            let params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
            let key = rcgen::KeyPair::generate().expect("leaf key");
            (params.signed_by(&key, &self.issuer).expect("leaf").pem(), key.serialize_pem())
        }
    }

    /// A fake broker behind TLS that requires a client certificate of `pki`
    /// and reports each handshake's ALPN protocol; it then answers as [`echo`].
    async fn fake_tls(pki: &Pki) -> (String, mpsc::UnboundedReceiver<Option<Vec<u8>>>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA")).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier");
        let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("server config");
        config.alpn_protocols = vec![wire::ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (alpn_tx, alpn_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, alpn_tx) = (acceptor.clone(), alpn_tx.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let _ = alpn_tx.send(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                    let mut peer = Peer { stream, buf: BytesMut::new() };
                    peer.ready(1 << 20, 8).await;
                    echo(peer).await;
                });
            }
        });
        (addr, alpn_rx)
    }

    #[tokio::test]
    async fn tls_with_a_client_certificate_and_alpn() {
        let pki = Pki::new();
        let (addr, mut alpn) = fake_tls(&pki).await;
        let (cert, key) = pki.leaf(&[]);
        let tls = TlsOptions {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            client_cert_pem: Some(cert.into_bytes()),
            client_key_pem: Some(crate::Secret::new(key)),
            server_name: None,
        };
        let producer = WireProducer::connect(&addr, &ConnectOptions { tls: Some(tls.clone()), ..options(WAIT) })
            .await
            .expect("TLS");
        assert_eq!(producer.put_record("s", "k", Bytes::from("4")).await.expect("stored").sequence_number, 12);
        assert_eq!(within("the ALPN report", alpn.recv()).await, Some(Some(wire::ALPN.to_vec())));

        // Another CA: the broker's certificate is not trusted.
        let other = TlsOptions { ca_pem: Pki::new().ca_pem.into_bytes(), ..tls.clone() };
        let e = WireProducer::connect(&addr, &ConnectOptions { tls: Some(other), ..options(WAIT) })
            .await
            .expect_err("untrusted");
        assert!(matches!(&e, Error::Tls(m) if m.contains(&addr) && m.contains("invalid peer certificate")), "{e:?}");
        // No client certificate: the broker refuses the handshake.
        let anonymous = TlsOptions { client_cert_pem: None, client_key_pem: None, ..tls };
        let e = WireProducer::connect(&addr, &ConnectOptions { tls: Some(anonymous), ..options(WAIT) })
            .await
            .expect_err("no client certificate");
        assert!(matches!(&e, Error::Tls(m) if m.contains(&addr)), "{e:?}");
    }
}
