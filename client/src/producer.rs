//! The producer: batches records per shard and delivers each exactly once
//! to its caller's acknowledgement future.
//!
//! Invariants:
//! - **Order per partition key.** A key always routes to one shard; each
//!   shard has at most one PutRecords in flight, and records that must be
//!   retried go back to the *front* of their shard's queue, in order. The
//!   broker throttles every record after the first throttled one in a shard
//!   batch, so a retried suffix never overtakes an accepted record.
//! - **One outcome per record.** Every `send` resolves its future exactly
//!   once: with the shard and sequence number, or with the error that ended
//!   its retries (bounded by `max_retries`, exponential backoff with full
//!   jitter, honouring the broker's retry hint).
//! - **Bounded memory.** At most `queue_records` records wait between
//!   `send` and the dispatcher; `send` waits when the queue is full.
//!
//! A retried request whose first attempt reached the broker but whose
//! answer was lost can store a record twice (as with Kinesis): the producer
//! is at-least-once across connection failures, exactly-once otherwise.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Connection;
use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Error, MESSAGE_BYTES_MAX, Result, backoff, check_key, connect, shard_for};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a record may wait for its batch to fill.
    pub linger: Duration,
    /// Most records per PutRecords (the broker allows 500).
    pub max_batch_records: usize,
    /// Most key + data bytes per PutRecords (the broker allows 5 MiB).
    pub max_batch_bytes: usize,
    /// Retries of a throttled or unavailable record before it fails.
    pub max_retries: u32,
    /// First backoff; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Records accepted by `send` but not yet taken by the dispatcher.
    pub queue_records: usize,
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
            queue_records: 10_000,
        }
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

#[derive(Debug)]
struct Item {
    key: String,
    data: Bytes,
    ack: oneshot::Sender<Result<RecordAck>>,
    attempts: u32,
}

#[derive(Debug)]
enum Msg {
    Record { shard: usize, item: Item },
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer for one stream.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    ranges: Arc<Vec<(u128, u128)>>,
    max_record_bytes: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    /// Connects to `addr` and produces to `stream`.
    pub async fn connect(addr: &str, stream: &str, config: ProducerConfig) -> Result<Self> {
        Self::with_channel(connect(addr).await?, stream, config).await
    }

    /// Produces to `stream` over an existing channel.
    pub async fn with_channel(channel: Connection, stream: &str, config: ProducerConfig) -> Result<Self> {
        if !(1..=500).contains(&config.max_batch_records) {
            return Err(Error::InvalidArgument("max_batch_records must be 1..=500".into()));
        }
        if config.max_batch_bytes == 0 || config.max_batch_bytes > 5 * 1024 * 1024 {
            return Err(Error::InvalidArgument("max_batch_bytes must be 1..=5 MiB".into()));
        }
        let mut client = StreamBrokerClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let d = client
            .describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() })
            .await?
            .into_inner()
            .stream
            .ok_or_else(|| Error::NotFound(stream.into()))?;
        let ranges = d
            .shards
            .iter()
            .map(|s| Ok((parse_key(&s.starting_hash_key)?, parse_key(&s.ending_hash_key)?)))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = mpsc::channel(config.queue_records.max(1));
        let dispatcher = Dispatcher {
            client,
            stream: stream.to_string(),
            shards: (0..ranges.len()).map(|_| ShardQueue::default()).collect(),
            config,
            outstanding: 0,
            waiters: Vec::new(),
            in_flight: JoinSet::new(),
        };
        let task = tokio::spawn(dispatcher.run(rx));
        Ok(Self { tx, ranges: Arc::new(ranges), max_record_bytes: d.max_record_bytes as usize, task })
    }

    /// Queues a record; the returned future resolves with its acknowledgement.
    /// Invalid records fail here, at once, with the reason.
    pub async fn send(&self, partition_key: impl Into<String>, data: impl Into<Bytes>) -> Result<AckFuture> {
        let (key, data) = (partition_key.into(), data.into());
        check_key(&key)?;
        let size = key.len() + data.len();
        if size > self.max_record_bytes {
            return Err(Error::InvalidArgument(format!(
                "data: record is {size} bytes (key + data), more than the stream's {}",
                self.max_record_bytes
            )));
        }
        let shard = shard_for(&key, &self.ranges);
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record { shard, item: Item { key, data, ack, attempts: 0 } })
            .await
            .map_err(|_| Error::Closed)?;
        Ok(AckFuture(rx))
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

fn parse_key(s: &str) -> Result<u128> {
    s.parse().map_err(|_| Error::Rejected { kind: "BadDescription".into(), message: format!("hash key {s:?}") })
}

#[derive(Debug, Default)]
struct ShardQueue {
    queue: VecDeque<Item>,
    bytes: usize,
    oldest: Option<Instant>,
    busy: bool,
    not_before: Option<Instant>,
}

type Sent = (usize, Vec<Item>, std::result::Result<pb::PutRecordsResponse, tonic::Status>);

struct Dispatcher {
    client: StreamBrokerClient<Connection>,
    stream: String,
    shards: Vec<ShardQueue>,
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
            for s in 0..self.shards.len() {
                if self.ready(s, now, flushing) {
                    self.send_batch(s);
                }
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
                    Some(Msg::Record { shard, item }) => {
                        let q = &mut self.shards[shard];
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
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    fn ready(&self, s: usize, now: Instant, flushing: bool) -> bool {
        let q = &self.shards[s];
        if q.busy || q.queue.is_empty() || q.not_before.is_some_and(|t| t > now) {
            return false;
        }
        flushing
            || q.queue.len() >= self.config.max_batch_records
            || q.bytes >= self.config.max_batch_bytes
            || q.oldest.is_some_and(|t| t + self.config.linger <= now)
    }

    fn next_wake(&self, flushing: bool) -> Option<Instant> {
        self.shards
            .iter()
            .filter(|q| !q.busy && !q.queue.is_empty())
            .filter_map(|q| {
                let due = if flushing { Instant::now() } else { q.oldest? + self.config.linger };
                Some(q.not_before.map_or(due, |t| t.max(due)))
            })
            .min()
    }

    fn send_batch(&mut self, s: usize) {
        let q = &mut self.shards[s];
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
                explicit_hash_key: None,
            })
            .collect();
        let req = pb::PutRecordsRequest { stream_name: self.stream.clone(), records };
        let mut client = self.client.clone();
        self.in_flight.spawn(async move {
            let r = client.put_records(req).await.map(|r| r.into_inner());
            (s, items, r)
        });
    }

    fn complete(&mut self, (s, items, result): Sent) {
        self.shards[s].busy = false;
        let mut retry = Vec::new();
        let mut hint = None;
        match result {
            Ok(resp) if resp.records.len() == items.len() => {
                for (item, r) in items.into_iter().zip(resp.records) {
                    if r.error_code.is_empty() {
                        self.finish(item, Ok(RecordAck { shard_id: r.shard_id, sequence_number: r.sequence_number }));
                    } else {
                        retry.push((item, Error::Throttled { message: r.error_message, retry_after: Duration::ZERO }));
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
                hint = e.retry_after();
                if e.is_retryable() {
                    retry.extend(items.into_iter().map(|i| (i, e.clone())));
                } else {
                    for item in items {
                        self.finish(item, Err(e.clone()));
                    }
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        let attempt = retry[0].0.attempts + 1;
        let wait = backoff(attempt, self.config.backoff_base, self.config.backoff_max).max(hint.unwrap_or_default());
        let q = &mut self.shards[s];
        q.not_before = Some(Instant::now() + wait);
        q.oldest.get_or_insert(Instant::now());
        let mut failed = Vec::new();
        for (mut item, e) in retry.into_iter().rev() {
            item.attempts += 1;
            if item.attempts > self.config.max_retries {
                failed.push((item, e));
            } else {
                q.bytes += item.key.len() + item.data.len();
                q.queue.push_front(item);
            }
        }
        for (item, e) in failed {
            self.finish(item, Err(e));
        }
    }

    fn finish(&mut self, item: Item, result: Result<RecordAck>) {
        self.outstanding -= 1;
        // The caller may have dropped its future; the record is still done.
        let _ = item.ack.send(result);
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}
