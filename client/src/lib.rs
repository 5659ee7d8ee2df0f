//! `client`: the Rust library for stream-broker.
//!
//! - [`Admin`]: every stream and consumer-group operation.
//! - [`Producer`]: batches records per shard within a bounded buffer
//!   (blocking or failing fast when full), retries only what the broker
//!   says may pass (no sooner than its hint), keeps each partition key's
//!   order, and resolves every record exactly once.
//! - [`Consumer`]: a consumer-group member that heartbeats in the
//!   background, hands batches to a handler, commits after it succeeds, and
//!   isolates a failing record to an on-failure hook instead of blocking its
//!   shard.
//! - [`ShardReader`]: reads one shard through iterators, renewing them.
//! - [`stack`]: a declarative stack file of streams and groups, diffed
//!   against a broker, deployed and removed (`streamctl stack`).
//! - [`Connection`]: how all of them reach a broker, with deadlines,
//!   keepalive, TLS, credentials, and errors that name the address and
//!   the cause.
//! - [`Access`]: principals, API tokens and grants; who am I.
//! - [`WireProducer`]: PutRecord and PutRecords on the broker's framed
//!   produce protocol (one pipelined TCP or TLS connection, far less broker
//!   CPU per call than unary gRPC).
//!
//! Errors are one enum, [`Error`], with [`Error::is_retryable`]; retries
//! wait by one schedule, [`Backoff`].
//!
//! ```no_run
//! # async fn demo() -> client::Result<()> {
//! let producer = client::Producer::connect("127.0.0.1:7470", "orders", client::ProducerConfig::default()).await?;
//! let ack = producer.send("order-42", "a cake").await?.await?;
//! println!("stored in {} at {}", ack.shard_id, ack.sequence_number);
//! producer.close().await
//! # }
//! ```

mod access;
mod admin;
mod connection;
mod consumer;
mod error;
mod producer;
mod reader;
pub mod stack;
mod wire;

pub use access::{Access, allow, deny};
pub use admin::Admin;
pub use connection::{ConnectOptions, Connection, Secret, TlsOptions, connect};
pub use consumer::{Consumer, ConsumerConfig, HandlerError, Record};
pub use error::{Error, Result};
pub use producer::{AckFuture, FullBufferPolicy, Producer, ProducerConfig, RecordAck};
/// The wire types, for descriptions returned by [`Admin`].
pub use proto::v1 as types;
pub use reader::{Position, ShardReader};
pub use wire::WireProducer;

use md5::{Digest, Md5};

/// Default broker address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7470";
/// Largest gRPC message the client sends or accepts.
pub(crate) const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Kinesis routing: MD5 of the key as a big-endian u128 (the record goes to
/// the open shard whose inclusive hash range holds it).
pub(crate) fn hash_key(key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(key.as_bytes()).into())
}

/// Checks a partition key as the broker will: 1..=256 characters.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let n = key.chars().count();
    if (1..=256).contains(&n) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("partition_key must be 1..=256 characters, got {n}")))
    }
}

/// A small xorshift source for backoff jitter.
pub(crate) fn jitter(max: std::time::Duration) -> std::time::Duration {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9e37_79b9, |d| d.as_nanos() as u64) | 1
    ));
    let r = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    let ms = max.as_millis().max(1) as u64;
    std::time::Duration::from_millis(r % ms)
}

/// Exponential backoff with full jitter: attempt 1 waits up to `base`, doubling, capped at `cap`.
pub(crate) fn backoff(attempt: u32, base: std::time::Duration, cap: std::time::Duration) -> std::time::Duration {
    jitter(Backoff::delay(attempt, base, cap))
}

/// Capped exponential backoff, the one retry schedule of this crate and of
/// the order service: `base`, `2·base`, `4·base`, … up to `max`.
/// [`Backoff::next_delay`] gives the schedule itself; [`Backoff::next_jittered`]
/// a uniformly random wait below it ("full jitter"), for many clients
/// retrying against one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: std::time::Duration,
    max: std::time::Duration,
    attempts: u32,
}

impl Backoff {
    /// A schedule starting at `base` and doubling up to `max`.
    pub fn new(base: std::time::Duration, max: std::time::Duration) -> Self {
        Self { base, max, attempts: 0 }
    }

    /// The wait before retry number `attempt` (1 for the first): `base`
    /// doubled `attempt - 1` times, at most `max`.
    pub fn delay(attempt: u32, base: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
        base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(max)
    }

    /// Counts an attempt and returns the wait before the next one.
    pub fn next_delay(&mut self) -> std::time::Duration {
        self.attempts = self.attempts.saturating_add(1);
        Self::delay(self.attempts, self.base, self.max)
    }

    /// Like [`Backoff::next_delay`], but a random wait below it.
    pub fn next_jittered(&mut self) -> std::time::Duration {
        jitter(self.next_delay())
    }

    /// Attempts counted since the start or the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts the schedule again at `base` (after a success).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_stays_below() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let waits: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 300, 300, 300]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        for _ in 0..100 {
            assert!(b.next_jittered() <= Duration::from_millis(300));
        }
        assert_eq!(Backoff::delay(u32::MAX, Duration::from_secs(1), Duration::from_secs(5)), Duration::from_secs(5));
    }
}
