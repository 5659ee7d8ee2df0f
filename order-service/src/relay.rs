//! The outbox relay: publishes outbox entries and deletes each one only
//! after the broker acknowledged it. While the broker is unreachable it
//! retries with capped exponential backoff; when the outbox is empty it
//! waits for the store's notification of a new commit.
//!
//! Invariants:
//! - **Only durable changes are published.** A pass commits the store
//!   (`fdatasync`) after reading its entries and before sending them, so no
//!   event announces a change that a power loss could still undo.
//! - **Each (stream, partition key) has at most one entry in flight.** A
//!   pass sends only the oldest pending entry of each key, and waits for
//!   every acknowledgement it started, successful or not, before the next
//!   pass; so an order's next event is sent only after the broker stored the
//!   one before it, whatever the producer does when some records fail (it
//!   may store a later batch after giving up on an earlier one). An order's
//!   events therefore reach each stream in the order they were written.
//! - **A producer is never dropped with records of ours in flight**, so no
//!   background send can race the next pass's send of the same entry.
//!
//! Delivery is at least once: a crash after the acknowledgement and before
//! the delete, or an acknowledgement lost on the network after the broker
//! stored the record, publishes that entry again, and consumers deduplicate
//! on the envelope's `eventId`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use client::{AckFuture, Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

use crate::api::Metrics;
use crate::store::{OutboxEntry, Store};

/// First wait after a failed pass; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between attempts while the broker is unavailable.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Outbox entries read per pass.
const PASS_ENTRIES_MAX: usize = 100;

/// The wait after `failures` failures in a row: 100 ms doubling to 2 s, by
/// the client's one retry schedule.
pub(crate) fn backoff(failures: u32) -> Duration {
    client::Backoff::delay(failures, BACKOFF_BASE, BACKOFF_MAX)
}

struct Publisher {
    broker: crate::access::BrokerAccess,
    producers: HashMap<String, Producer>,
}

impl Publisher {
    /// Queues an entry on its stream's producer; the future resolves with the acknowledgement.
    async fn send(&mut self, entry: &OutboxEntry) -> client::Result<AckFuture> {
        if !self.producers.contains_key(&entry.stream) {
            let config = ProducerConfig { linger: Duration::ZERO, max_retries: 2, ..ProducerConfig::default() };
            let channel = self.broker.connect(crate::access::RELAY).await?;
            let producer = Producer::with_channel(channel, &entry.stream, config).await?;
            self.producers.insert(entry.stream.clone(), producer);
        }
        let producer = self.producers.get(&entry.stream).expect("inserted above");
        producer.send(entry.partition_key.clone(), entry.data.clone().into_bytes()).await
    }

    /// Closes every producer (each flushes first; the relay calls this only
    /// when it has no acknowledgement outstanding), so the next send
    /// connects afresh: the broker may have restarted.
    async fn reset(&mut self) {
        for (stream, producer) in self.producers.drain() {
            if let Err(e) = producer.close().await {
                tracing::debug!(error = %e, %stream, "closing a producer after a failure");
            }
        }
    }
}

/// Runs until `shutdown`, publishing as the broker principal of [`crate::access::RELAY`].
pub async fn run(
    store: Store,
    broker: impl Into<crate::access::BrokerAccess>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut publisher = Publisher { broker: broker.into(), producers: HashMap::new() };
    let mut failures = 0u32;
    metrics.outbox_progressed();
    loop {
        let notified = store.outbox_changed.notified();
        if shutdown.is_cancelled() {
            return;
        }
        let batch = match store.outbox_head(PASS_ENTRIES_MAX) {
            Ok(b) if b.is_empty() => {
                metrics.outbox_progressed();
                tokio::select! {
                    _ = notified => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            Ok(b) => store.commit().await.map(|()| b),
            Err(e) => Err(e),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading or committing the outbox failed");
                failures += 1;
                if wait(backoff(failures), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        // The oldest pending entry of each key, in outbox order.
        let mut keys = HashSet::new();
        let mut pending = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (key, entry) in &batch {
            if !keys.insert((entry.stream.as_str(), entry.partition_key.as_str())) {
                continue;
            }
            match publisher.send(entry).await {
                Ok(ack) => pending.push((key.clone(), &entry.stream, ack)),
                Err(e) => {
                    failed = Some((e.to_string(), entry.stream.clone()));
                    break;
                }
            }
        }
        // Every acknowledgement, even after a failure: none stays in flight.
        // (At shutdown the records in flight may still be stored; their
        // entries stay in the outbox and are published again after the
        // restart, ahead of anything later.)
        let mut progressed = false;
        for (key, stream, ack) in pending {
            let acked = tokio::select! {
                r = ack => r,
                _ = shutdown.cancelled() => return,
            };
            match acked.map_err(|e| e.to_string()).and_then(|_| store.outbox_remove(&key).map_err(|e| e.to_string())) {
                Ok(()) => {
                    progressed = true;
                    Metrics::inc(&metrics.events_published);
                    metrics.outbox_progressed();
                }
                Err(e) => {
                    failed.get_or_insert((e, stream.clone()));
                }
            }
        }
        match failed {
            None => failures = 0,
            Some((e, stream)) => {
                // A throttled pass that still stored something retries soon;
                // only passes that store nothing back off further.
                failures = if progressed { 1 } else { failures + 1 };
                tracing::warn!(error = %e, %stream, failures, "publishing an outbox entry failed; retrying");
                publisher.reset().await;
                if wait(backoff(failures), &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `d` unless shut down first; true when shut down.
pub(crate) async fn wait(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
