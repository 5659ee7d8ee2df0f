//! The producer: batches records per shard, retries what the broker says
//! may succeed later, and resolves every record's acknowledgement once,
//! within a bounded buffer. Each promise below is broken on purpose in
//! `tests/producer.rs`.
//!
//! - **Bounded buffer.** A record holds room from the moment `send` accepts
//!   it until its acknowledgement resolves, wherever it is meanwhile:
//!   waiting for its batch, queued for a retry, or in a request. At most
//!   [`ProducerConfig::buffer_records_max`] records and
//!   [`ProducerConfig::buffer_bytes_max`] key + data bytes hold room at once
//!   ([`Producer::buffered`]). When a record does not fit, `send` waits for
//!   room ([`FullBufferPolicy::Block`]) or returns [`Error::BufferFull`] at
//!   once ([`FullBufferPolicy::FailFast`]); so an outage or throttling makes
//!   callers wait or fail, never the buffer grow. Besides the records'
//!   bytes, memory is a few hundred bytes per buffered record (its future,
//!   its queue slot, its key) and one encoded request per shard in flight
//!   (at most `max_batch_bytes` each); `benches`' `producer-memory` measures it.
//! - **Order per partition key.** Records queue per shard of the
//!   producer's shard map, and a key routes to one queue; each queue has at
//!   most one PutRecords in flight, and records that must be retried go
//!   back to the *front* of their queue, in order. The broker throttles
//!   every record after the first throttled one in a shard batch, and fails
//!   a shard's whole batch together, so a retried suffix never overtakes a
//!   stored record.
//! - **Resharding.** The broker routes every record itself, so a stale map
//!   only batches less well; a record that raced a split or merge fails with
//!   the retryable `ShardClosed`. Either that, or an acknowledgement from a
//!   shard the map does not know, makes the producer fetch the shard map
//!   again (DescribeStream). The queues of shards that closed are retired:
//!   their records move, in order, to the *front* of the queues of the
//!   shards that now own their keys, and those queues send nothing until
//!   every retired queue whose range they overlap has no request in flight
//!   and nothing queued, so a key's records still reach the broker in order.
//! - **Retry only what may succeed.** A record the broker throttled
//!   (`ProvisionedThroughputExceeded`) is retried no sooner than the
//!   broker's `retry_after_ms` (plus up to `backoff_base` of jitter); one
//!   whose shard was unavailable, or whose whole request failed as
//!   unavailable or throttled, after exponential backoff with full jitter.
//!   Any other per-record code resolves the record at once with
//!   [`Error::Rejected`] carrying the broker's code; any other whole-request
//!   error with its own kind. After `max_retries` retries a record resolves
//!   with the last error.
//! - **One outcome per record.** Every accepted record's future resolves
//!   exactly once: with the shard and sequence number, or with an error.
//!
//! A retried request whose first attempt reached the broker but whose
//! answer was lost (a broken connection, a missed deadline) can store a
//! record twice, as with Kinesis: delivery is at-least-once across
//! connection failures, exactly-once otherwise.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Connection, Error, MESSAGE_BYTES_MAX, Result, backoff, check_key, connect, hash_key, jitter};

/// What `send` does when a record does not fit the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullBufferPolicy {
    /// Wait until acknowledgements free room (backpressure).
    Block,
    /// Return [`Error::BufferFull`] at once; the caller may retry later.
    FailFast,
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a record may wait for its batch to fill. Default 10 ms.
    pub linger: Duration,
    /// Most records per PutRecords (the broker allows 500). Default 500.
    pub max_batch_records: usize,
    /// Most key + data bytes per PutRecords (the broker allows 5 MiB). Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Retries of a retryable failure before the record fails with it. Default 10.
    pub max_retries: u32,
    /// First backoff; doubles per attempt. Also the jitter added to a
    /// broker's retry hint. Default 50 ms.
    pub backoff_base: Duration,
    /// Longest backoff. Default 5 s.
    pub backoff_max: Duration,
    /// Most records accepted by `send` and not yet resolved. Default 10 000.
    pub buffer_records_max: usize,
    /// Most key + data bytes of records accepted by `send` and not yet
    /// resolved; also the largest record `send` accepts. Default 32 MiB.
    pub buffer_bytes_max: usize,
    /// What `send` does when the buffer is full. Default [`FullBufferPolicy::Block`].
    pub when_full: FullBufferPolicy,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(10),
            max_batch_records: 500,
            max_batch_bytes: 4 * 1024 * 1024,
            max_retries: 10,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            buffer_records_max: 10_000,
            buffer_bytes_max: 32 * 1024 * 1024,
            when_full: FullBufferPolicy::Block,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        if !(1..=500).contains(&self.max_batch_records) {
            return bad("max_batch_records must be 1..=500");
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > 5 * 1024 * 1024 {
            return bad("max_batch_bytes must be 1..=5 MiB");
        }
        // The semaphores and the channel hold at most MAX_PERMITS.
        if !(1..=Semaphore::MAX_PERMITS / 2).contains(&self.buffer_records_max) {
            return bad("buffer_records_max must be positive");
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.buffer_bytes_max) {
            return bad("buffer_bytes_max must be positive");
        }
        Ok(())
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAck {
    /// Its shard.
    pub shard_id: String,
    /// Its sequence number in the shard.
    pub sequence_number: u64,
}

/// Resolves when a sent record is acknowledged or finally fails.
#[derive(Debug)]
pub struct AckFuture(oneshot::Receiver<Result<RecordAck>>);

impl Future for AckFuture {
    type Output = Result<RecordAck>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// The buffer's room: permits for records and bytes, and exact counts of
/// what is held (a waiting `Block` send may hold part of its bytes'
/// permits, which the counts leave out).
#[derive(Debug)]
struct Budget {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    held_records: AtomicUsize,
    held_bytes: AtomicUsize,
}

/// One record's room in the buffer, given back when the record is dropped,
/// which is after its outcome was sent.
#[derive(Debug)]
struct Room {
    _records: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    bytes: usize,
    budget: Arc<Budget>,
}

impl Drop for Room {
    fn drop(&mut self) {
        self.budget.held_records.fetch_sub(1, Ordering::Relaxed);
        self.budget.held_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Budget {
    fn held(&self) -> (usize, usize) {
        (self.held_records.load(Ordering::Relaxed), self.held_bytes.load(Ordering::Relaxed))
    }

    /// Room for one record of `bytes`, by `policy`.
    async fn reserve(self: &Arc<Self>, bytes: usize, policy: FullBufferPolicy) -> Result<Room> {
        let n = u32::try_from(bytes)
            .map_err(|_| Error::InvalidArgument(format!("data: record is {bytes} bytes, more than 4 GiB")))?;
        let (records, room) = match policy {
            // The semaphores are never closed, so acquiring only fails if the producer is gone.
            FullBufferPolicy::Block => {
                let r = self.records.clone().acquire_owned().await.map_err(|_| Error::Closed)?;
                (r, self.bytes.clone().acquire_many_owned(n).await.map_err(|_| Error::Closed)?)
            }
            FullBufferPolicy::FailFast => {
                let full = || {
                    let (records, bytes) = self.held();
                    Error::BufferFull { records, bytes }
                };
                let r = self.records.clone().try_acquire_owned().map_err(|_| full())?;
                (r, self.bytes.clone().try_acquire_many_owned(n).map_err(|_| full())?)
            }
        };
        self.held_records.fetch_add(1, Ordering::Relaxed);
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(Room { _records: records, _bytes: room, bytes, budget: self.clone() })
    }
}

#[derive(Debug)]
struct Item {
    key: String,
    explicit_hash_key: Option<u128>,
    data: Bytes,
    ack: oneshot::Sender<Result<RecordAck>>,
    attempts: u32,
    _room: Room,
}

impl Item {
    /// Where the record routes: its explicit hash key, else the MD5 of its key.
    fn hash(&self) -> u128 {
        self.explicit_hash_key.unwrap_or_else(|| hash_key(&self.key))
    }
}

#[derive(Debug)]
enum Msg {
    Record { hash: u128, item: Item },
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer for one stream.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    max_record_bytes: usize,
    buffer_bytes_max: usize,
    when_full: FullBufferPolicy,
    budget: Arc<Budget>,
    throttled: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Flush requests the channel holds beside the records (more wait).
const FLUSH_SLOTS: usize = 64;

impl Producer {
    /// Connects to `addr` and produces to `stream`.
    pub async fn connect(addr: &str, stream: &str, config: ProducerConfig) -> Result<Self> {
        Self::with_channel(connect(addr).await?, stream, config).await
    }

    /// Produces to `stream` over an existing connection.
    pub async fn with_channel(channel: Connection, stream: &str, config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        let mut client = StreamBrokerClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let d = describe(&mut client, stream).await?;
        let routes = routes_of(&d)?;
        let budget = Arc::new(Budget {
            records: Arc::new(Semaphore::new(config.buffer_records_max)),
            bytes: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            held_records: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
        });
        // Every record in the channel holds room, so a record that got room
        // never waits for a slot; the channel allocates slots as they fill.
        let (tx, rx) = mpsc::channel(config.buffer_records_max + FLUSH_SLOTS);
        let (buffer_bytes_max, when_full) = (config.buffer_bytes_max, config.when_full);
        let throttled = Arc::new(AtomicU64::new(0));
        let mut dispatcher = Dispatcher {
            throttled: throttled.clone(),
            client,
            stream: stream.to_string(),
            queues: BTreeMap::new(),
            routes: Vec::new(),
            stale: false,
            refresh_not_before: None,
            refreshing: JoinSet::new(),
            config,
            outstanding: 0,
            waiters: Vec::new(),
            in_flight: JoinSet::new(),
        };
        dispatcher.install(routes);
        let task = tokio::spawn(dispatcher.run(rx));
        Ok(Self {
            tx,
            max_record_bytes: d.max_record_bytes as usize,
            buffer_bytes_max,
            when_full,
            budget,
            throttled,
            task,
        })
    }

    /// Accepts a record into the buffer; the returned future resolves with
    /// its acknowledgement. Invalid records fail here, at once, with the
    /// reason. When the buffer is full this waits for room or fails with
    /// [`Error::BufferFull`], by [`ProducerConfig::when_full`].
    pub async fn send(&self, partition_key: impl Into<String>, data: impl Into<Bytes>) -> Result<AckFuture> {
        self.enqueue(partition_key.into(), None, data.into()).await
    }

    /// Like [`Producer::send`], but routed by `explicit_hash_key` instead of
    /// the MD5 of the key: the record goes to the shard whose hash range
    /// holds it (Kinesis's `ExplicitHashKey`). Records with one explicit
    /// hash key keep their order like records with one partition key.
    pub async fn send_with_hash_key(
        &self,
        partition_key: impl Into<String>,
        explicit_hash_key: u128,
        data: impl Into<Bytes>,
    ) -> Result<AckFuture> {
        self.enqueue(partition_key.into(), Some(explicit_hash_key), data.into()).await
    }

    /// Records the broker throttled so far (each retry of a throttled
    /// record counts once): a progress display can say the quota is the limit.
    pub fn throttled_records(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    async fn enqueue(&self, key: String, explicit_hash_key: Option<u128>, data: Bytes) -> Result<AckFuture> {
        check_key(&key)?;
        let size = key.len() + data.len();
        if size > self.max_record_bytes {
            return Err(Error::InvalidArgument(format!(
                "data: record is {size} bytes (key + data), more than the stream's {}",
                self.max_record_bytes
            )));
        }
        if size > self.buffer_bytes_max {
            return Err(Error::InvalidArgument(format!(
                "data: record is {size} bytes (key + data), more than buffer_bytes_max {}",
                self.buffer_bytes_max
            )));
        }
        let room = self.budget.reserve(size, self.when_full).await?;
        let hash = explicit_hash_key.unwrap_or_else(|| hash_key(&key));
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record { hash, item: Item { key, explicit_hash_key, data, ack, attempts: 0, _room: room } })
            .await
            .map_err(|_| Error::Closed)?;
        Ok(AckFuture(rx))
    }

    /// Records, and their key + data bytes, accepted by `send` and not yet
    /// resolved. Never more than the configured caps.
    pub fn buffered(&self) -> (usize, usize) {
        self.budget.held()
    }

    /// Sends everything queued now, without waiting for batches to fill, and
    /// waits until no record is outstanding.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Flushes, then stops the producer.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        drop(self.tx);
        self.task.await.map_err(|_| Error::Closed)
    }
}

async fn describe(client: &mut StreamBrokerClient<Connection>, stream: &str) -> Result<pb::StreamDescription> {
    client
        .describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() })
        .await?
        .into_inner()
        .stream
        .ok_or_else(|| Error::NotFound(stream.into()))
}

/// The open shards' routes, by first hash key.
fn routes_of(d: &pb::StreamDescription) -> Result<Vec<Route>> {
    let mut routes = d
        .shards
        .iter()
        .filter(|s| !s.closed)
        .map(|s| {
            Ok(Route {
                start: parse_key(&s.starting_hash_key)?,
                end: parse_key(&s.ending_hash_key)?,
                shard: s.shard_id.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    routes.sort_by_key(|r| r.start);
    if routes.is_empty() {
        return Err(Error::Rejected { kind: "BadDescription".into(), message: "a stream without open shards".into() });
    }
    Ok(routes)
}

fn parse_key(s: &str) -> Result<u128> {
    s.parse().map_err(|_| Error::Rejected { kind: "BadDescription".into(), message: format!("hash key {s:?}") })
}

/// An open shard of the producer's map.
#[derive(Debug, Clone)]
struct Route {
    start: u128,
    end: u128,
    shard: String,
}

#[derive(Debug, Default)]
struct ShardQueue {
    queue: VecDeque<Item>,
    bytes: usize,
    oldest: Option<Instant>,
    busy: bool,
    not_before: Option<Instant>,
    /// The hash range its shard owns (or owned).
    range: (u128, u128),
    /// Its shard closed: it takes no new records and goes once drained.
    retired: bool,
    /// Retired queues whose ranges overlap this one: it sends nothing until they are gone.
    after: BTreeSet<String>,
}

impl ShardQueue {
    fn push_front(&mut self, item: Item) {
        self.bytes += item.key.len() + item.data.len();
        self.oldest.get_or_insert(Instant::now());
        self.queue.push_front(item);
    }
}

type Sent = (String, Vec<Item>, std::result::Result<pb::PutRecordsResponse, tonic::Status>);

struct Dispatcher {
    throttled: Arc<AtomicU64>,
    client: StreamBrokerClient<Connection>,
    stream: String,
    /// Queues by shard id: those of the map's open shards and retired ones still draining.
    queues: BTreeMap<String, ShardQueue>,
    /// The map's open shards by first hash key; they cover the hash space.
    routes: Vec<Route>,
    /// The map needs fetching again.
    stale: bool,
    /// After a failed fetch, when to try again.
    refresh_not_before: Option<Instant>,
    refreshing: JoinSet<Result<pb::StreamDescription>>,
    config: ProducerConfig,
    outstanding: usize,
    waiters: Vec<oneshot::Sender<()>>,
    in_flight: JoinSet<Sent>,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut open = true;
        loop {
            let flushing = !self.waiters.is_empty() || !open;
            let now = Instant::now();
            self.start_refresh(now);
            let ready: Vec<String> = self.queues.keys().filter(|s| self.ready(s, now, flushing)).cloned().collect();
            for s in ready {
                self.send_batch(&s);
            }
            if self.outstanding == 0 {
                for w in self.waiters.drain(..) {
                    let _ = w.send(());
                }
                if !open {
                    return;
                }
            }
            let wake = self.next_wake(flushing);
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record { hash, item }) => {
                        let shard = self.route(hash);
                        let q = self.queues.entry(shard).or_default();
                        q.bytes += item.key.len() + item.data.len();
                        q.oldest.get_or_insert(Instant::now());
                        q.queue.push_back(item);
                        self.outstanding += 1;
                    }
                    Some(Msg::Flush(w)) => self.waiters.push(w),
                    None => open = false,
                },
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(sent) => self.complete(sent),
                        Err(e) => tracing::error!(error = %e, "producer request task failed"),
                    }
                }
                Some(fetched) = self.refreshing.join_next(), if !self.refreshing.is_empty() => {
                    match fetched.map_err(|e| Error::Unavailable(e.to_string())).and_then(|d| d).and_then(|d| routes_of(&d)) {
                        Ok(routes) => self.install(routes),
                        Err(e) => {
                            tracing::warn!(error = %e, "refreshing the shard map failed; retrying");
                            self.stale = true;
                            self.refresh_not_before = Some(Instant::now() + backoff(1, self.config.backoff_base, self.config.backoff_max));
                        }
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// The queue of the open shard that owns `hash`.
    fn route(&self, hash: u128) -> String {
        // The routes start at 0 and cover the hash space, so one starts at or before `hash`.
        let i = self.routes.partition_point(|r| r.start <= hash);
        self.routes[i.max(1) - 1].shard.clone()
    }

    /// Fetches the shard map if it is stale and no fetch runs.
    fn start_refresh(&mut self, now: Instant) {
        if !self.stale || !self.refreshing.is_empty() || self.refresh_not_before.is_some_and(|t| t > now) {
            return;
        }
        self.stale = false;
        let (mut client, stream) = (self.client.clone(), self.stream.clone());
        self.refreshing.spawn(async move { describe(&mut client, &stream).await });
    }

    /// Takes a new shard map: queues of shards that left it retire, their
    /// queued records move to the front of the queues that own their keys
    /// now, and those queues wait for the retired ones (see the module docs).
    fn install(&mut self, routes: Vec<Route>) {
        self.refresh_not_before = None;
        for r in &routes {
            let q = self.queues.entry(r.shard.clone()).or_default();
            q.range = (r.start, r.end);
        }
        let open: BTreeSet<&str> = routes.iter().map(|r| r.shard.as_str()).collect();
        let retiring: Vec<String> = self
            .queues
            .iter()
            .filter(|(s, q)| !q.retired && !open.contains(s.as_str()))
            .map(|(s, _)| s.clone())
            .collect();
        self.routes = routes;
        let mut moved = Vec::new();
        for s in retiring {
            if let Some(q) = self.queues.get_mut(&s) {
                q.retired = true;
                q.bytes = 0;
                q.oldest = None;
                moved.extend(q.queue.drain(..));
            }
        }
        // Every open queue waits for every retired one that owned part of its
        // range (also one retired by an earlier map and still draining).
        let retired: Vec<(String, (u128, u128))> =
            self.queues.iter().filter(|(_, q)| q.retired).map(|(s, q)| (s.clone(), q.range)).collect();
        for q in self.queues.values_mut().filter(|q| !q.retired) {
            let overlapping = retired.iter().filter(|(_, r)| q.range.0 <= r.1 && r.0 <= q.range.1);
            q.after = overlapping.map(|(s, _)| s.clone()).collect();
        }
        // The moved records keep their order per key: each retired queue holds
        // its own keys, and they go ahead of anything routed with the new map.
        self.requeue_front(moved);
        self.drop_drained();
    }

    /// Puts records, oldest first, at the front of the queues their keys route to now.
    fn requeue_front(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            let shard = self.route(item.hash());
            self.queues.entry(shard).or_default().push_front(item);
        }
    }

    /// Removes retired queues with nothing queued or in flight, and releases the queues waiting for them.
    fn drop_drained(&mut self) {
        let gone: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.retired && !q.busy && q.queue.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        for s in gone {
            self.queues.remove(&s);
            for q in self.queues.values_mut() {
                q.after.remove(&s);
            }
        }
    }

    fn ready(&self, s: &str, now: Instant, flushing: bool) -> bool {
        let Some(q) = self.queues.get(s) else { return false };
        if q.busy || q.queue.is_empty() || !q.after.is_empty() || q.not_before.is_some_and(|t| t > now) {
            return false;
        }
        flushing
            || q.queue.len() >= self.config.max_batch_records
            || q.bytes >= self.config.max_batch_bytes
            || q.oldest.is_some_and(|t| t + self.config.linger <= now)
    }

    fn next_wake(&self, flushing: bool) -> Option<Instant> {
        let sends =
            self.queues.values().filter(|q| !q.busy && !q.queue.is_empty() && q.after.is_empty()).filter_map(|q| {
                let due = if flushing { Instant::now() } else { q.oldest? + self.config.linger };
                Some(q.not_before.map_or(due, |t| t.max(due)))
            });
        let refresh = self.refresh_not_before.filter(|_| self.stale && self.refreshing.is_empty());
        sends.chain(refresh).min()
    }

    fn send_batch(&mut self, s: &str) {
        let Some(q) = self.queues.get_mut(s) else { return };
        let mut items = Vec::new();
        let mut bytes = 0;
        while let Some(front) = q.queue.front() {
            let size = front.key.len() + front.data.len();
            if !items.is_empty()
                && (items.len() == self.config.max_batch_records || bytes + size > self.config.max_batch_bytes)
            {
                break;
            }
            bytes += size;
            items.push(q.queue.pop_front().expect("front exists"));
        }
        q.bytes -= bytes;
        q.oldest = (!q.queue.is_empty()).then(Instant::now);
        q.busy = true;
        let records = items
            .iter()
            .map(|i| pb::PutRecordsEntry {
                partition_key: i.key.clone(),
                data: i.data.clone(),
                explicit_hash_key: i.explicit_hash_key.map(|h| h.to_string()),
            })
            .collect();
        let req = pb::PutRecordsRequest { stream_name: self.stream.clone(), records };
        let mut client = self.client.clone();
        let shard = s.to_string();
        self.in_flight.spawn(async move {
            let r = client.put_records(req).await.map(|r| r.into_inner());
            (shard, items, r)
        });
    }

    fn complete(&mut self, (s, items, result): Sent) {
        if let Some(q) = self.queues.get_mut(&s) {
            q.busy = false;
        }
        let mut retry = Vec::new();
        let mut hint = Duration::ZERO;
        match result {
            Ok(resp) if resp.records.len() == items.len() => {
                for (item, r) in items.into_iter().zip(resp.records) {
                    if r.error_code.is_empty() {
                        // An acknowledgement from a shard the map does not know: the stream was resharded.
                        if !self.routes.iter().any(|route| route.shard == r.shard_id) {
                            self.stale = true;
                        }
                        self.finish(item, Ok(RecordAck { shard_id: r.shard_id, sequence_number: r.sequence_number }));
                        continue;
                    }
                    if r.error_code == "ShardClosed" {
                        self.stale = true;
                    }
                    match record_error(r) {
                        (e, true) => {
                            hint = hint.max(e.retry_after().unwrap_or_default());
                            retry.push((item, e));
                        }
                        (e, false) => self.finish(item, Err(e)),
                    }
                }
            }
            Ok(resp) => {
                let e = Error::Rejected {
                    kind: "BadResponse".into(),
                    message: format!("{} results for {} records", resp.records.len(), items.len()),
                };
                for item in items {
                    self.finish(item, Err(e.clone()));
                }
            }
            Err(status) => {
                let e = Error::from(status);
                if matches!(e, Error::Throttled { .. } | Error::Unavailable(_)) {
                    hint = e.retry_after().unwrap_or_default();
                    retry.extend(items.into_iter().map(|i| (i, e.clone())));
                } else {
                    for item in items {
                        self.finish(item, Err(e.clone()));
                    }
                }
            }
        }
        if !retry.is_empty() {
            let throttled = retry.iter().filter(|(_, e)| matches!(e, Error::Throttled { .. })).count();
            self.throttled.fetch_add(throttled as u64, Ordering::Relaxed);
            self.retry(&s, retry, hint);
        }
        self.drop_drained();
    }

    /// Puts failed records back, oldest first, ahead of everything queued
    /// after them: in their own queue, or, if it retired meanwhile, in the
    /// queues their keys route to now.
    fn retry(&mut self, s: &str, retry: Vec<(Item, Error)>, hint: Duration) {
        let attempt = retry[0].0.attempts + 1;
        // A hint says when the quota admits the record: sooner is wasted.
        let wait = if hint.is_zero() {
            backoff(attempt, self.config.backoff_base, self.config.backoff_max)
        } else {
            hint + jitter(self.config.backoff_base)
        };
        let not_before = Some(Instant::now() + wait);
        let mut again = Vec::new();
        let mut failed = Vec::new();
        for (mut item, e) in retry {
            item.attempts += 1;
            if item.attempts > self.config.max_retries {
                failed.push((item, e));
            } else {
                again.push(item);
            }
        }
        let retired = self.queues.get(s).is_none_or(|q| q.retired);
        if retired {
            let targets: BTreeSet<String> = again.iter().map(|i| self.route(i.hash())).collect();
            self.requeue_front(again);
            for t in targets {
                if let Some(q) = self.queues.get_mut(&t) {
                    q.not_before = q.not_before.max(not_before);
                }
            }
        } else if let Some(q) = self.queues.get_mut(s) {
            q.not_before = not_before;
            for item in again.into_iter().rev() {
                q.push_front(item);
            }
        }
        for (item, e) in failed {
            self.finish(item, Err(e));
        }
    }

    fn finish(&mut self, item: Item, result: Result<RecordAck>) {
        self.outstanding -= 1;
        let Item { ack, _room: room, .. } = item;
        // Room frees before the outcome is seen: a resolved record holds none.
        drop(room);
        // The caller may have dropped its future; the record is still done.
        let _ = ack.send(result);
    }
}

/// Per-record codes that can succeed on a later attempt; `InternalFailure`
/// is Kinesis's retryable code, `ShardClosed` a split or merge that the
/// record raced (it routes to a child next time). (`ShardFailed` is not:
/// the shard needs an operator's repair.)
const RETRYABLE_CODES: [&str; 4] = ["ShardUnavailable", "Unavailable", "InternalFailure", "ShardClosed"];

/// The error a failed record's result stands for, and whether to retry it.
fn record_error(r: pb::PutRecordsResultEntry) -> (Error, bool) {
    let (code, message) = (r.error_code, r.error_message);
    if code == "ProvisionedThroughputExceeded" || code == "DiskFull" {
        // Both clear by themselves; the broker says when to look again.
        (Error::Throttled { message, retry_after: Duration::from_millis(r.retry_after_ms) }, true)
    } else if RETRYABLE_CODES.contains(&code.as_str()) {
        (Error::Unavailable(format!("{code}: {message}")), true)
    } else {
        (Error::Rejected { kind: code, message }, false)
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(code: &str, retry_after_ms: u64) -> pb::PutRecordsResultEntry {
        pb::PutRecordsResultEntry {
            error_code: code.into(),
            error_message: "m".into(),
            retry_after_ms,
            ..Default::default()
        }
    }

    #[test]
    fn record_errors_are_retried_only_when_they_may_pass() {
        let (e, retry) = record_error(entry("ProvisionedThroughputExceeded", 120));
        assert!(retry);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(120)));
        let (e, retry) = record_error(entry("ShardUnavailable", 0));
        assert!(retry && matches!(&e, Error::Unavailable(m) if m.starts_with("ShardUnavailable")), "{e:?}");
        let (e, retry) = record_error(entry("ValidationError", 0));
        assert!(!retry);
        assert!(matches!(e, Error::Rejected { kind, .. } if kind == "ValidationError"));
    }

    #[test]
    fn bad_settings_are_named() {
        for (config, field) in [
            (ProducerConfig { buffer_records_max: 0, ..Default::default() }, "buffer_records_max"),
            (ProducerConfig { buffer_bytes_max: 0, ..Default::default() }, "buffer_bytes_max"),
            (ProducerConfig { max_batch_records: 501, ..Default::default() }, "max_batch_records"),
        ] {
            match config.validate() {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
