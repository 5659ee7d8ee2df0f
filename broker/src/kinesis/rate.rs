//! Kinesis's control-plane call rates (AWS's documented per-account
//! limits, e.g. DescribeStream 10/s, CreateStream 5/s; ListShards 1000/s and
//! DescribeStreamConsumer 20/s per stream; GetShardIterator 5/s per shard),
//! as token buckets with a one-second burst on the injected clock. A call
//! over its rate gets `LimitExceededException` (GetShardIterator:
//! `ProvisionedThroughputExceededException`), which the SDKs retry.
//! Switched off with the data quotas (`quotas.enforce = false`).
//!
//! The buckets of streams and shards are created on first use; their
//! number is bounded by the broker's streams and shards (limits.max_streams,
//! limits.max_shards_per_stream) plus what a deleted stream left, which is
//! dropped when the map grows past [`BUCKETS_MAX`].

use std::collections::HashMap;
use std::sync::Mutex;

use crate::quota::Bucket;

/// Beyond this many buckets the per-stream and per-shard buckets are
/// cleared (each then starts full again, which only ever admits more).
const BUCKETS_MAX: usize = 100_000;

/// What a call is rated by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// The account.
    Account,
    /// The stream (by broker id).
    Stream,
    /// The shard (by broker stream id and index).
    Shard,
}

/// The rate of an operation: calls per second and what it is counted per;
/// `None` for data-plane calls, which the shard quotas meter.
pub fn rate_of(operation: &str) -> Option<(u64, Per)> {
    Some(match operation {
        "DescribeLimits" => (1, Per::Account),
        "DescribeStream" => (10, Per::Account),
        "DescribeStreamSummary" => (20, Per::Account),
        "UpdateShardCount" => (10, Per::Account),
        "ListShards" => (1000, Per::Stream),
        "DescribeStreamConsumer" => (20, Per::Stream),
        "GetShardIterator" => (5, Per::Shard),
        "PutRecord" | "PutRecords" | "GetRecords" | "SubscribeToShard" => return None,
        // CreateStream, DeleteStream, SplitShard, MergeShards, tags,
        // consumers, retention, monitoring, encryption, policies, modes, settings.
        _ => (5, Per::Account),
    })
}

/// The buckets, by operation and what it is counted per.
#[derive(Debug, Default)]
pub struct Rates {
    buckets: Mutex<HashMap<(&'static str, u64, u32), Bucket>>,
}

impl Rates {
    /// Takes one call of `operation` for `key` (stream id, shard index;
    /// zeros where the rate is per account), or says how long to wait.
    pub fn try_call(&self, operation: &'static str, key: (u64, u32), now_ms: u64) -> Result<(), u64> {
        let Some((per_sec, per)) = rate_of(operation) else { return Ok(()) };
        let key = match per {
            Per::Account => (operation, 0, 0),
            Per::Stream => (operation, key.0, 0),
            Per::Shard => (operation, key.0, key.1),
        };
        // The map holds plain numbers; a panic elsewhere cannot leave it inconsistent.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(&key) {
            buckets.retain(|k, _| k.1 == 0);
        }
        buckets.entry(key).or_insert_with(|| Bucket::new(per_sec, 0, now_ms)).try_take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_stream_allows_ten_a_second_per_account() {
        let r = Rates::default();
        for _ in 0..10 {
            r.try_call("DescribeStream", (1, 0), 1_000).expect("within the burst");
        }
        let wait = r.try_call("DescribeStream", (2, 0), 1_000).expect_err("the eleventh, on any stream");
        assert_eq!(wait, 100);
        r.try_call("DescribeStream", (1, 0), 1_100).expect("refilled");
        for _ in 0..5 {
            r.try_call("GetShardIterator", (1, 0), 1_000).expect("five per shard");
        }
        assert!(r.try_call("GetShardIterator", (1, 0), 1_000).is_err());
        r.try_call("GetShardIterator", (1, 1), 1_000).expect("another shard has its own");
        r.try_call("PutRecords", (1, 0), 1_000).expect("data calls are metered by the shard quotas");
    }
}
