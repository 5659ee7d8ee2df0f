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
//! - [`Connection`]: how all of them reach a broker, with deadlines,
//!   keepalive, and errors that name the address and the cause.
//!
//! Errors are one enum, [`Error`], with [`Error::is_retryable`].
//!
//! ```no_run
//! # async fn demo() -> client::Result<()> {
//! let producer = client::Producer::connect("127.0.0.1:7470", "orders", client::ProducerConfig::default()).await?;
//! let ack = producer.send("order-42", "a cake").await?.await?;
//! println!("stored in {} at {}", ack.shard_id, ack.sequence_number);
//! producer.close().await
//! # }
//! ```

mod admin;
mod connection;
mod consumer;
mod error;
mod producer;
mod reader;

pub use admin::Admin;
pub use connection::{ConnectOptions, Connection, Secret, TlsOptions, connect};
pub use consumer::{Consumer, ConsumerConfig, HandlerError, Record};
pub use error::{Error, Result};
pub use producer::{AckFuture, FullBufferPolicy, Producer, ProducerConfig, RecordAck};
/// The wire types, for descriptions returned by [`Admin`].
pub use proto::v1 as types;
pub use reader::{Position, ShardReader};

use md5::{Digest, Md5};

/// Default broker address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7470";
/// Largest gRPC message the client sends or accepts.
pub(crate) const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Kinesis routing: MD5 of the key as a big-endian u128, and the shard whose
/// inclusive hash range holds it.
pub(crate) fn shard_for(key: &str, ranges: &[(u128, u128)]) -> usize {
    let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
    ranges.iter().position(|&(lo, hi)| lo <= hash && hash <= hi).unwrap_or(0)
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
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    jitter(exp.min(cap))
}
