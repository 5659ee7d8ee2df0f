//! SubscribeShard: pushes a shard's records to one subscriber, as
//! [`SubscribeEvent`]s on a bounded channel that an edge encodes.
//!
//! **Limits.** A subscription holds a slot of its shard
//! (`limits.subscribers_per_shard`) and a reservation of
//! `limits.subscription_buffer_bytes` from the broker-wide
//! `limits.subscription_buffer_bytes_total`; both are given back when the
//! call ends, however it ends. It reads on its own [`ReadBudget`] of the
//! stream's `read_bytes_per_sec` and ends after
//! `limits.subscription_lifetime_ms` with a `resubscribe` event carrying its
//! continuation.
//!
//! **Memory.** A subscriber that stops reading holds at most: one event in
//! the channel (capacity 1), one in the task's pending send, and what the
//! edge and HTTP/2 buffer of the event being written (at most one encoded
//! event, since hyper polls the body only when the stream has window). An event
//! carries at most a quarter of the reservation, so the reservation covers
//! them; a single record larger than that travels alone. Records are copied
//! out of the log's read buffer into one allocation per event, so a queued
//! event never pins a whole read chunk or batch frame. A read itself needs
//! a whole batch frame in memory (its CRC covers the frame; a PutRecords
//! batch can be 5 MiB), so at most `limits.subscription_reads_concurrent`
//! subscription reads run at once, broker-wide.
//!
//! **Consumers.** A subscription of a registered consumer (Kinesis's
//! SubscribeToShard) is one per consumer and shard: a second call within
//! [`TAKEOVER_AFTER_MS`] of the running one is refused with `InUse`, a later
//! one takes over and the running one ends with `InUse`; deregistering the
//! consumer ends its subscriptions with `ConsumerNotFound`.
//!
//! **Authorization.** While authentication is on, a task beside each
//! subscription re-checks its caller's credential and `record:get` grant
//! every `auth.recheck_interval_ms`; losing either ends the subscription
//! with that error as its last event.
//!
//! **Order.** One task per subscription reads and sends in sequence order;
//! `continuation_sequence_number` is always the sequence number after the
//! last record sent.
//!
//! **Shard end.** A subscription to a shard that a split or merge closed
//! ends, once it sent the shard's last record, with an event that has
//! `shard_ended` and names the children; it wakes on the stream's layout
//! swap as well as on new records, so a shard closed while subscribed ends
//! the subscription too. (A shard is listed closed only after it was
//! sealed, so its end is final by then.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ChildShard, Record, Service, StartingPosition, child_shards};
use crate::auth::policy::{Action, Resource};
use crate::catalog::{Stream, validate_stream_name};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};
use crate::quota::ReadBudget;
use crate::shard::{Shard, SubscriberSlot};

/// One event of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeEvent {
    /// Records in sequence order; empty for a heartbeat or the last event.
    pub records: Vec<Record>,
    /// Where a new subscription continues: the sequence number after the
    /// last record sent.
    pub continuation_sequence_number: u64,
    /// How far the last record is behind the shard's newest, 0 at the end.
    pub millis_behind_latest: u64,
    /// Nothing arrived for `limits.subscribe_heartbeat_ms`.
    pub heartbeat: bool,
    /// The subscription's lifetime is over: the last event; subscribe
    /// again from `continuation_sequence_number`.
    pub resubscribe: bool,
    /// The shard is closed and every record was sent: the last event;
    /// `child_shards` says where its keys continue.
    pub shard_ended: bool,
    /// With `shard_ended`: the shard's children.
    pub child_shards: Vec<ChildShard>,
}

/// A running subscription's events; the channel ends when the
/// subscription does. An `Err` is the last item.
pub type Subscription = mpsc::Receiver<Result<SubscribeEvent>>;

/// A consumer's subscription to a shard is refused within this long of the
/// running one's start, and takes it over after.
pub const TAKEOVER_AFTER_MS: u64 = 5_000;

/// (stream id, consumer name, shard index)
type ConsumerShard = (u64, String, u32);

/// Why a subscription is being ended from outside, and the signal.
#[derive(Debug, Default)]
struct EndSignal {
    token: CancellationToken,
    reason: Mutex<Option<BrokerError>>,
}

impl EndSignal {
    fn end(&self, reason: BrokerError) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.token.cancel();
    }

    fn reason(&self) -> BrokerError {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| BrokerError::Unavailable("the subscription was ended".into()))
    }
}

#[derive(Debug)]
struct Claimed {
    id: u64,
    started_ms: u64,
    end: Arc<EndSignal>,
}

/// The running subscriptions of registered consumers, one per consumer and shard.
#[derive(Debug, Default)]
pub(crate) struct ConsumerSubscriptions {
    running: Mutex<HashMap<ConsumerShard, Claimed>>,
    next_id: AtomicU64,
}

impl ConsumerSubscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConsumerShard, Claimed>> {
        // The map holds plain values; a panic elsewhere cannot leave it inconsistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `key` at `now_ms`, taking over a subscription older than
    /// [`TAKEOVER_AFTER_MS`].
    fn claim(self: &Arc<Self>, key: ConsumerShard, now_ms: u64) -> Result<Claim> {
        let mut running = self.lock();
        if let Some(old) = running.get(&key) {
            let age = now_ms.saturating_sub(old.started_ms);
            if age < TAKEOVER_AFTER_MS {
                return Err(BrokerError::in_use(format!(
                    "consumer {} already has a subscription to shard {} that started {age} ms ago; \
                     a new one may take it over {TAKEOVER_AFTER_MS} ms after it started",
                    key.1,
                    crate::shard::shard_id(key.2)
                )));
            }
            old.end.end(BrokerError::in_use(format!(
                "a newer subscription of consumer {} to shard {} took this one over",
                key.1,
                crate::shard::shard_id(key.2)
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(EndSignal::default());
        running.insert(key.clone(), Claimed { id, started_ms: now_ms, end: end.clone() });
        Ok(Claim { registry: self.clone(), key, id, end })
    }

    /// Ends every consumer subscription of a deleted stream.
    pub(crate) fn end_stream(&self, stream_id: u64) {
        for (key, claimed) in self.lock().iter() {
            if key.0 == stream_id {
                claimed.end.end(BrokerError::StreamNotFound { name: format!("(id {stream_id}, deleted)") });
            }
        }
    }

    /// Ends every subscription of a consumer (it was deregistered).
    pub(crate) fn end_consumer(&self, stream_id: u64, consumer: &str) {
        for (key, claimed) in self.lock().iter() {
            if key.0 == stream_id && key.1 == consumer {
                claimed.end.end(BrokerError::ConsumerNotFound {
                    stream: format!("(id {stream_id})"),
                    consumer: consumer.to_string(),
                });
            }
        }
    }
}

/// A consumer's claim on a shard, released when its subscription ends.
#[derive(Debug)]
struct Claim {
    registry: Arc<ConsumerSubscriptions>,
    key: ConsumerShard,
    id: u64,
    end: Arc<EndSignal>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut running = self.registry.lock();
        if running.get(&self.key).is_some_and(|c| c.id == self.id) {
            running.remove(&self.key);
        }
    }
}

/// Memory accounted per record of an event beyond its key and data (the
/// `Record` struct, the key's `String`); bounds the records of an event.
const RECORD_OVERHEAD_BYTES: usize = 256;

/// The broker-wide budget of subscription memory: buffers and reads.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    free: Arc<Semaphore>,
    per_subscription: usize,
    total: usize,
    reads: Arc<Semaphore>,
}

impl BufferBudget {
    /// `total` bytes shared by subscriptions of `per_subscription` bytes
    /// each, and `reads` concurrent reads.
    pub fn new(total: usize, per_subscription: usize, reads: usize) -> Self {
        metrics::gauge!("stream_broker_subscription_buffer_bytes_limit").set(per_subscription as f64);
        metrics::gauge!("stream_broker_subscription_buffer_bytes_total_limit").set(total as f64);
        Self { free: Arc::new(Semaphore::new(total)), per_subscription, total, reads: Arc::new(Semaphore::new(reads)) }
    }

    /// Reserves one subscription's buffer, or refuses with a retry hint.
    /// `/metrics` reports the bytes reserved
    /// (`stream_broker_subscription_buffer_bytes_reserved`) next to the
    /// per-subscription and broker-wide limits.
    pub fn reserve(&self) -> Result<BufferReservation> {
        // The configuration bounds a subscription's buffer to 16 MiB, far below u32::MAX.
        let n = u32::try_from(self.per_subscription).unwrap_or(u32::MAX);
        let permit = self.free.clone().try_acquire_many_owned(n).map_err(|_| {
            metrics::counter!("stream_broker_subscriptions_refused_total").increment(1);
            BrokerError::Throttled {
                what: format!(
                    "the broker's subscription buffers are all in use (limits.subscription_buffer_bytes_total = {}, \
                     {} per subscription)",
                    self.total, self.per_subscription
                ),
                retry_after_ms: 1_000,
            }
        })?;
        metrics::gauge!("stream_broker_subscription_buffer_bytes_reserved").increment(self.per_subscription as f64);
        Ok(BufferReservation { _permit: permit, bytes: self.per_subscription })
    }
}

/// One subscription's share of the broker-wide buffer budget; dropping it
/// gives the bytes back.
#[derive(Debug)]
pub struct BufferReservation {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for BufferReservation {
    fn drop(&mut self) {
        metrics::gauge!("stream_broker_subscription_buffer_bytes_reserved").decrement(self.bytes as f64);
    }
}

impl Service {
    /// SubscribeShard: takes a subscriber slot of the shard and a buffer
    /// reservation, then pushes events from `start` until the subscriber
    /// goes away, the broker shuts down, the shard closes or
    /// `limits.subscription_lifetime_ms` passes.
    pub async fn subscribe(&self, stream_name: &str, shard_id: &str, start: StartingPosition) -> Result<Subscription> {
        self.authorize(Action::RecordGet, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        let stream = self.catalog.get(stream_name)?;
        let shard = Self::shard_of(&stream, shard_id)?;
        self.start_subscription(&stream, shard, start, None).await
    }

    /// SubscribeToShard of a registered consumer: as [`Service::subscribe`],
    /// for an ACTIVE consumer, one subscription per consumer and shard (see
    /// the module docs).
    pub async fn subscribe_consumer(
        &self,
        stream: &Arc<crate::catalog::Stream>,
        consumer: &str,
        shard_id: &str,
        start: StartingPosition,
    ) -> Result<Subscription> {
        self.authorize(Action::RecordGet, &Resource::stream(&stream.meta().name))?;
        let c = self.consumer(stream, consumer)?;
        if self.consumer_status(&c) != super::attributes::ConsumerStatus::Active {
            return Err(BrokerError::in_use(format!("consumer {consumer} is not ACTIVE yet; retry shortly")));
        }
        let shard = Self::shard_of(stream, shard_id)?;
        let claim = self.subscriptions.claim((stream.meta().id, consumer.to_string(), shard.index), self.now())?;
        self.start_subscription(stream, shard, start, Some(claim)).await
    }

    async fn start_subscription(
        &self,
        stream: &Arc<crate::catalog::Stream>,
        shard: Arc<Shard>,
        start: StartingPosition,
        claim: Option<Claim>,
    ) -> Result<Subscription> {
        let limits = &self.catalog.config().limits;
        let pos = self.resolve_start(&shard, start).await?;
        let max = limits.subscribers_per_shard;
        let slot = shard.try_add_subscriber(max).ok_or_else(|| {
            BrokerError::LimitExceeded(format!("{} has limits.subscribers_per_shard = {max} subscribers", shard.id))
        })?;
        let buffer = self.buffers.reserve()?;
        let meta = stream.meta();
        // Outside signals end the subscription with a reason: a consumer's
        // takeover or deregistration, and the caller losing its token or grant.
        let ended = claim.as_ref().map_or_else(|| Arc::new(EndSignal::default()), |c| c.end.clone());
        let done = CancellationToken::new();
        if self.auth.enabled() {
            let (auth, caller, end, done) = (self.auth.clone(), crate::auth::current(), ended.clone(), done.clone());
            let checks = [(Action::RecordGet, Resource::stream(&meta.name))];
            tokio::spawn(async move {
                tokio::select! {
                    lost = auth.watch(&caller, &checks) => end.end(lost),
                    _ = done.cancelled() => {}
                }
            });
        }
        // One event queued: with the one being sent, the reservation covers them.
        let (tx, rx) = mpsc::channel(1);
        let now = self.now();
        let running = Running {
            shard,
            layout: stream.watch_layout(),
            source: stream.clone(),
            stream: meta.name,
            pos,
            budget: ReadBudget::new(meta.quotas.read_bytes_per_sec, self.catalog.config().quotas.enforce, now),
            clock: self.catalog.clock().clone(),
            ends_at_ms: now.saturating_add(limits.subscription_lifetime_ms),
            heartbeat: Duration::from_millis(limits.subscribe_heartbeat_ms),
            event_bytes_max: limits.subscription_buffer_bytes / 4,
            budget_shared: self.buffers.clone(),
            tx,
            shutdown: self.shutdown.clone(),
            ended: Some(ended),
            _watch: done.drop_guard(),
            _claim: claim,
            _slot: slot,
            _buffer: buffer,
        };
        tokio::spawn(running.run());
        Ok(rx)
    }
}

/// One running subscription; [`Running::run`] ends when the client
/// goes away, the broker shuts down, the shard closes or the lifetime ends.
struct Running {
    shard: Arc<Shard>,
    /// The shard's stream, for its layout (is the shard closed, its children).
    source: Arc<Stream>,
    /// Changes when the stream's layout is swapped.
    layout: tokio::sync::watch::Receiver<u64>,
    stream: String,
    /// The next sequence number to send.
    pos: u64,
    budget: ReadBudget,
    clock: Arc<dyn Clock>,
    ends_at_ms: u64,
    heartbeat: Duration,
    event_bytes_max: usize,
    budget_shared: BufferBudget,
    tx: mpsc::Sender<Result<SubscribeEvent>>,
    shutdown: CancellationToken,
    /// Ends the subscription from outside, with the reason as its last
    /// event: a consumer's takeover or deregistration, or the caller losing
    /// its token or grant.
    ended: Option<Arc<EndSignal>>,
    /// A consumer's claim on the shard; dropping it releases the claim.
    _claim: Option<Claim>,
    /// Dropping it stops the task that re-checks the caller's grants.
    _watch: tokio_util::sync::DropGuard,
    /// Held for the life of the call; dropping it frees the shard's slot.
    _slot: SubscriberSlot,
    /// Held for the life of the call; dropping it returns the reservation.
    _buffer: BufferReservation,
}

impl Running {
    async fn run(mut self) {
        let active = metrics::gauge!("stream_broker_subscriptions");
        active.increment(1.0);
        self.serve().await;
        active.decrement(1.0);
        // The slot and the buffer reservation are released here, with `self`.
    }

    async fn serve(&mut self) {
        let mut end = self.shard.watch_end();
        let mut last_sent = Instant::now();
        let mut behind_ms = 0;
        loop {
            let now = self.clock.now_ms();
            if now >= self.ends_at_ms {
                let last = SubscribeEvent {
                    records: Vec::new(),
                    continuation_sequence_number: self.pos,
                    millis_behind_latest: behind_ms,
                    heartbeat: false,
                    resubscribe: true,
                    shard_ended: false,
                    child_shards: Vec::new(),
                };
                let _ = self.tx.send(Ok(last)).await;
                return;
            }
            let available = *end.borrow_and_update();
            // How long the read budget keeps us from reading available records.
            let mut throttled = None;
            if self.pos < available {
                match self.budget.wait_ms(now) {
                    0 => {
                        let event = self.read(available).await;
                        let failed = event.is_err();
                        if let Ok(ev) = &event {
                            behind_ms = ev.millis_behind_latest;
                        }
                        if self.tx.send(event).await.is_err() || failed {
                            return;
                        }
                        last_sent = Instant::now();
                        continue;
                    }
                    wait => throttled = Some(Duration::from_millis(wait)),
                }
            } else {
                behind_ms = 0;
                let layout = self.source.layout();
                let closed_end =
                    layout.is_closed(self.shard.index).then(|| self.shard.reader().map_or(available, |r| r.next_seq()));
                if closed_end.is_some_and(|end| self.pos >= end) {
                    let last = SubscribeEvent {
                        records: Vec::new(),
                        continuation_sequence_number: self.pos,
                        millis_behind_latest: 0,
                        heartbeat: false,
                        resubscribe: false,
                        shard_ended: true,
                        child_shards: child_shards(&layout, self.shard.index),
                    };
                    let _ = self.tx.send(Ok(last)).await;
                    return;
                }
            }
            let beat_at = last_sent + self.heartbeat;
            let lifetime_left = Duration::from_millis(self.ends_at_ms.saturating_sub(now));
            let sleep_until = beat_at.min(Instant::now() + lifetime_left.min(throttled.unwrap_or(Duration::MAX)));
            tokio::select! {
                changed = end.changed(), if throttled.is_none() => if changed.is_err() {
                    let closed = BrokerError::Unavailable(format!("{} closed", self.shard.id));
                    let _ = self.tx.send(Err(closed)).await;
                    return;
                },
                _ = tokio::time::sleep_until(sleep_until) => if Instant::now() >= beat_at {
                    let beat = SubscribeEvent {
                        records: Vec::new(),
                        continuation_sequence_number: self.pos,
                        millis_behind_latest: behind_ms,
                        heartbeat: true,
                        resubscribe: false,
                        shard_ended: false,
                        child_shards: Vec::new(),
                    };
                    if self.tx.send(Ok(beat)).await.is_err() {
                        return;
                    }
                    last_sent = Instant::now();
                },
                changed = self.layout.changed() => if changed.is_err() {
                    // The stream is gone; its shards close and end the call above.
                    return;
                },
                _ = self.tx.closed() => return,
                _ = self.shutdown.cancelled() => return,
                _ = ended(&self.ended) => {
                    let reason = self.ended.as_ref().map_or_else(
                        || BrokerError::Unavailable("the subscription was ended".into()),
                        |e| e.reason(),
                    );
                    let _ = self.tx.send(Err(reason)).await;
                    return;
                }
            }
        }
    }

    /// Reads the next event from `pos` and charges it to the budget.
    async fn read(&mut self, available: u64) -> Result<SubscribeEvent> {
        // Never closed: the semaphore lives as long as the budget.
        let _reading = self.budget_shared.reads.acquire().await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let reader = self.shard.reader()?;
        let (pos, max_bytes) = (self.pos, self.event_bytes_max);
        let max_records = (max_bytes / RECORD_OVERHEAD_BYTES).max(1);
        // At the tail the page cache holds what is read: read it here. Only a
        // read that would wait for the disk goes to a blocking thread.
        let read = match reader.read_cached(pos, max_records, max_bytes) {
            Ok(Some(batch)) => Ok((compact(&batch.records), batch.next_seq)),
            Ok(None) => tokio::task::spawn_blocking(move || {
                reader.read(pos, max_records, max_bytes).map(|batch| (compact(&batch.records), batch.next_seq))
            })
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?,
            Err(e) => Err(e),
        };
        let (records, next_seq) =
            read.map_err(|e| BrokerError::from_read(e, &self.shard.id, "starting_sequence_number"))?;
        let now = self.clock.now_ms();
        let bytes: u64 = records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum();
        self.budget.charge(bytes, now);
        self.shard.quota.count_pushed(records.len() as u64, bytes);
        let behind = if next_seq >= available {
            0
        } else {
            records.last().map_or(0, |r| now.saturating_sub(r.arrival_timestamp_ms))
        };
        metrics::counter!("stream_broker_records_out_total", "stream" => self.stream.clone())
            .increment(records.len() as u64);
        metrics::counter!("stream_broker_bytes_out_total", "stream" => self.stream.clone()).increment(bytes);
        self.pos = next_seq;
        Ok(SubscribeEvent {
            records,
            continuation_sequence_number: next_seq,
            millis_behind_latest: behind,
            heartbeat: false,
            resubscribe: false,
            shard_ended: false,
            child_shards: Vec::new(),
        })
    }
}

/// Resolves when the subscription is ended from outside; never without a signal.
async fn ended(signal: &Option<Arc<EndSignal>>) {
    match signal {
        Some(s) => s.token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The records as API records whose data share one buffer of exactly their
/// size, instead of slices that keep the log's read buffer alive.
fn compact(records: &[shardlog::Record]) -> Vec<Record> {
    let mut buf = BytesMut::with_capacity(records.iter().map(|r| r.data.len()).sum());
    for r in records {
        buf.extend_from_slice(&r.data);
    }
    let mut buf = buf.freeze();
    records
        .iter()
        .map(|r| Record {
            sequence_number: r.seq,
            arrival_timestamp_ms: r.timestamp_ms,
            // Keys were checked as UTF-8 on the way in and are CRC-protected on disk.
            partition_key: String::from_utf8_lossy(&r.partition_key).into_owned(),
            data: buf.split_to(r.data.len()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_records_own_exactly_their_bytes() {
        let chunk = bytes::Bytes::from(vec![9u8; 1 << 20]);
        let records: Vec<shardlog::Record> = (0..3)
            .map(|i| shardlog::Record {
                seq: i,
                timestamp_ms: 5,
                partition_key: bytes::Bytes::from_static(b"k"),
                data: chunk.slice(i as usize * 10..i as usize * 10 + 4),
            })
            .collect();
        let out = compact(&records);
        assert_eq!(
            out.iter().map(|r| (r.sequence_number, &r.data[..])).collect::<Vec<_>>(),
            vec![(0, &[9u8; 4][..]), (1, &[9; 4][..]), (2, &[9; 4][..])]
        );
        drop(records);
        // Only the 12 copied bytes are referenced, not the 1 MiB chunk.
        assert!(chunk.is_unique(), "the read chunk is no longer referenced");
    }

    #[test]
    fn the_budget_refuses_beyond_its_total_and_frees_on_drop() {
        let b = BufferBudget::new(3 * 1024, 1024, 1);
        let held: Vec<_> = (0..3).map(|_| b.reserve().expect("fits")).collect();
        let err = b.reserve().expect_err("full");
        assert!(matches!(&err, BrokerError::Throttled { retry_after_ms: 1_000, .. }), "{err}");
        assert!(err.to_string().contains("limits.subscription_buffer_bytes_total = 3072"), "{err}");
        drop(held);
        let _again = b.reserve().expect("free again");
    }
}
