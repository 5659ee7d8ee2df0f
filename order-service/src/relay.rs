//! The outbox relay: publishes outbox entries in order and deletes each one
//! only after the broker acknowledged it. While the broker is unreachable it
//! retries with capped exponential backoff; when the outbox is empty it
//! waits for the store's notification of a new commit.
//!
//! Delivery is at least once: a crash after the acknowledgement and before
//! the delete publishes that entry again, and consumers deduplicate on the
//! envelope's `eventId`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use client::{AckFuture, Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

use crate::api::Metrics;
use crate::store::{OutboxEntry, Store};

/// Longest wait between attempts while the broker is unavailable.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential backoff from 50 ms, capped.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50).saturating_mul(1 << failures.min(8)).min(BACKOFF_MAX)
}

struct Publisher {
    addr: String,
    producers: HashMap<String, Producer>,
}

impl Publisher {
    /// Queues an entry on its stream's producer; the future resolves with the acknowledgement.
    async fn send(&mut self, entry: &OutboxEntry) -> client::Result<AckFuture> {
        if !self.producers.contains_key(&entry.stream) {
            let config = ProducerConfig { linger: Duration::ZERO, max_retries: 2, ..ProducerConfig::default() };
            let producer = Producer::connect(&self.addr, &entry.stream, config).await?;
            self.producers.insert(entry.stream.clone(), producer);
        }
        let producer = self.producers.get(&entry.stream).expect("inserted above");
        producer.send(entry.partition_key.clone(), entry.data.clone().into_bytes()).await
    }
}

/// Runs until `shutdown`.
pub async fn run(store: Store, addr: String, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut publisher = Publisher { addr, producers: HashMap::new() };
    let mut failures = 0u32;
    loop {
        let notified = store.outbox_changed.notified();
        if shutdown.is_cancelled() {
            return;
        }
        let batch = match store.outbox_head(100) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                failures += 1;
                if wait(backoff(failures), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        // Send the whole head in outbox order, then take the acknowledgements
        // in the same order. The producer keeps each partition key's order,
        // and the first failure ends the pass, so no entry is removed before
        // every entry ahead of it was acknowledged.
        let mut acks = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (key, entry) in &batch {
            match publisher.send(entry).await {
                Ok(ack) => acks.push((key.clone(), ack)),
                Err(e) => {
                    failed = Some((e.to_string(), entry.stream.clone()));
                    break;
                }
            }
        }
        for ((key, ack), (_, entry)) in acks.into_iter().zip(&batch) {
            let acked = tokio::select! {
                r = ack => r,
                _ = shutdown.cancelled() => return,
            };
            match acked.map_err(|e| e.to_string()).and_then(|_| store.outbox_remove(&key).map_err(|e| e.to_string())) {
                Ok(()) => {
                    failures = 0;
                    Metrics::inc(&metrics.events_published);
                }
                Err(e) => {
                    failed = Some((e, entry.stream.clone()));
                    break;
                }
            }
        }
        if let Some((e, stream)) = failed {
            failures += 1;
            tracing::warn!(error = %e, %stream, failures, "publishing an outbox entry failed; retrying");
            // Reconnect from scratch: the broker may have restarted.
            publisher.producers.clear();
            if wait(backoff(failures), &shutdown).await {
                return;
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
