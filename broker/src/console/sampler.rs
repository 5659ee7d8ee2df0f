//! Rates and lag over time for the console's charts.
//!
//! Every `console.sample_interval_ms` the sampler reads each shard's quota
//! counters ([`crate::quota::Usage`], which only grow) and turns the
//! difference from the previous sample into per-second rates per shard and
//! for the whole broker; it also describes up to `console.lag_groups_max`
//! consumer groups and records their lag. Each series keeps the newest
//! `console.history_points` samples. Times come from the injected clock.
//!
//! "In" is what the write quota admitted; "out" is what admitted reads
//! (GetRecords, group polls) returned plus what SubscribeShard calls were
//! pushed; "throttled" counts write records and read calls the quota refused.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::group::GroupManager;
use crate::quota::Usage;

/// Per-second rates of one shard over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ShardRates {
    /// Records admitted for writing.
    pub write_records_per_sec: f64,
    /// Bytes admitted for writing.
    pub write_bytes_per_sec: f64,
    /// Write records refused by the quota.
    pub write_throttled_per_sec: f64,
    /// Read calls admitted.
    pub read_calls_per_sec: f64,
    /// Read calls refused by the quota.
    pub read_throttled_per_sec: f64,
    /// Records returned by reads and pushed to subscribers.
    pub read_records_per_sec: f64,
    /// Bytes returned by reads (charged to the shard's read quota).
    pub read_bytes_per_sec: f64,
    /// Bytes pushed to SubscribeShard calls (each metered by its own budget).
    pub pushed_bytes_per_sec: f64,
}

/// One sample of the whole broker's throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ThroughputPoint {
    /// When the interval ended, ms since the Unix epoch.
    pub t_ms: u64,
    /// Records in per second.
    pub records_in_per_sec: f64,
    /// Bytes in per second.
    pub bytes_in_per_sec: f64,
    /// Records out per second.
    pub records_out_per_sec: f64,
    /// Bytes out per second.
    pub bytes_out_per_sec: f64,
    /// Throttled write records plus throttled read calls, per second.
    pub throttled_per_sec: f64,
}

/// One sample of a consumer group's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagPoint {
    /// When it was taken, ms since the Unix epoch.
    pub t_ms: u64,
    /// Records behind, summed over the shards.
    pub lag_records: u64,
    /// Age of the oldest unprocessed record over the shards.
    pub lag_ms: u64,
    /// Per shard, in shard order: `[lag_records, lag_ms]`; omitted for groups
    /// of more than [`PER_SHARD_LAG_SHARDS_MAX`] shards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<[u64; 2]>>,
}

/// Largest stream whose groups keep a per-shard lag history (bounds memory:
/// groups x points x shards).
pub const PER_SHARD_LAG_SHARDS_MAX: usize = 32;

#[derive(Debug, Default)]
struct State {
    /// Counters at the previous sample, by (stream id, shard index).
    last: HashMap<(u64, u32), (u64, Usage)>,
    /// Rates over the last interval, by (stream id, shard index).
    rates: HashMap<(u64, u32), ShardRates>,
    throughput: VecDeque<ThroughputPoint>,
    /// By (stream name, group name).
    lag: HashMap<(String, String), VecDeque<LagPoint>>,
    totals: Usage,
}

/// See the module docs.
#[derive(Debug)]
pub struct Sampler {
    points_max: usize,
    lag_groups_max: usize,
    state: Mutex<State>,
}

fn per_sec(now: u64, before: u64, dt_ms: u64) -> f64 {
    now.saturating_sub(before) as f64 * 1000.0 / dt_ms as f64
}

fn push<T>(q: &mut VecDeque<T>, v: T, max: usize) {
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back(v);
}

impl Sampler {
    /// A sampler keeping `points_max` samples per series.
    pub fn new(points_max: usize, lag_groups_max: usize) -> Self {
        Self { points_max, lag_groups_max, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update replaces whole values; a panic cannot leave one torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample.
    pub async fn sample(&self, catalog: &Catalog, groups: &GroupManager) {
        let now = catalog.clock().now_ms();
        {
            let mut s = self.lock();
            let mut seen = HashMap::with_capacity(s.last.len());
            let mut point = ThroughputPoint { t_ms: now, ..Default::default() };
            let mut any_interval = false;
            let mut totals = Usage::default();
            for stream in catalog.all() {
                let id = stream.meta().id;
                for shard in &stream.shards() {
                    let u = shard.quota.usage();
                    add(&mut totals, &u);
                    let key = (id, shard.index);
                    if let Some(&(then, before)) = s.last.get(&key) {
                        let dt = now.saturating_sub(then);
                        if dt > 0 {
                            let r = ShardRates {
                                write_records_per_sec: per_sec(u.write_records, before.write_records, dt),
                                write_bytes_per_sec: per_sec(u.write_bytes, before.write_bytes, dt),
                                write_throttled_per_sec: per_sec(u.write_throttled, before.write_throttled, dt),
                                read_calls_per_sec: per_sec(u.read_calls, before.read_calls, dt),
                                read_throttled_per_sec: per_sec(u.read_throttled, before.read_throttled, dt),
                                read_records_per_sec: per_sec(
                                    u.read_records + u.pushed_records,
                                    before.read_records + before.pushed_records,
                                    dt,
                                ),
                                read_bytes_per_sec: per_sec(u.read_bytes, before.read_bytes, dt),
                                pushed_bytes_per_sec: per_sec(u.pushed_bytes, before.pushed_bytes, dt),
                            };
                            point.records_in_per_sec += r.write_records_per_sec;
                            point.bytes_in_per_sec += r.write_bytes_per_sec;
                            point.records_out_per_sec += r.read_records_per_sec;
                            point.bytes_out_per_sec += r.read_bytes_per_sec + r.pushed_bytes_per_sec;
                            point.throttled_per_sec += r.write_throttled_per_sec + r.read_throttled_per_sec;
                            s.rates.insert(key, r);
                            any_interval = true;
                        }
                    }
                    seen.insert(key, (now, u));
                }
            }
            s.rates.retain(|k, _| seen.contains_key(k));
            s.last = seen;
            s.totals = totals;
            if any_interval {
                let max = self.points_max;
                push(&mut s.throughput, point, max);
            }
        }
        let listed = groups.list(None).unwrap_or_default();
        let mut sampled = Vec::with_capacity(listed.len().min(self.lag_groups_max));
        for (stream, group) in listed.into_iter().take(self.lag_groups_max) {
            // A group deleted since the listing just has no sample.
            let Ok(info) = groups.describe(&stream, &group).await else { continue };
            let per_shard = (info.shards.len() <= PER_SHARD_LAG_SHARDS_MAX)
                .then(|| info.shards.iter().map(|s| [s.lag_records, s.lag_ms]).collect());
            let point = LagPoint {
                t_ms: now,
                lag_records: info.shards.iter().map(|s| s.lag_records).sum(),
                lag_ms: info.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0),
                shards: per_shard,
            };
            sampled.push(((stream, group), point));
        }
        let mut s = self.lock();
        let keep: Vec<(String, String)> = sampled.iter().map(|(k, _)| k.clone()).collect();
        s.lag.retain(|k, _| keep.contains(k));
        for (key, point) in sampled {
            let max = self.points_max;
            push(s.lag.entry(key).or_default(), point, max);
        }
    }

    /// The broker's throughput history, oldest first.
    pub fn throughput(&self) -> Vec<ThroughputPoint> {
        self.lock().throughput.iter().copied().collect()
    }

    /// The newest throughput sample (zeros before the second sample).
    pub fn latest(&self) -> ThroughputPoint {
        self.lock().throughput.back().copied().unwrap_or_default()
    }

    /// The counters summed over every open shard at the last sample.
    pub fn totals(&self) -> Usage {
        self.lock().totals
    }

    /// A shard's rates over the last interval (zeros before its second sample).
    pub fn shard_rates(&self, stream_id: u64, shard: u32) -> ShardRates {
        self.lock().rates.get(&(stream_id, shard)).copied().unwrap_or_default()
    }

    /// A group's lag history, oldest first (empty if it is not sampled).
    pub fn lag(&self, stream: &str, group: &str) -> Vec<LagPoint> {
        self.lock()
            .lag
            .get(&(stream.to_string(), group.to_string()))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn add(t: &mut Usage, u: &Usage) {
    t.write_records += u.write_records;
    t.write_bytes += u.write_bytes;
    t.write_throttled += u.write_throttled;
    t.read_calls += u.read_calls;
    t.read_throttled += u.read_throttled;
    t.read_records += u.read_records;
    t.read_bytes += u.read_bytes;
    t.pushed_records += u.pushed_records;
    t.pushed_bytes += u.pushed_bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_only_the_newest_points() {
        let mut q = VecDeque::new();
        for i in 0..10 {
            push(&mut q, i, 3);
        }
        assert_eq!(q.into_iter().collect::<Vec<_>>(), vec![7, 8, 9]);
    }

    #[test]
    fn rates_are_per_second_of_the_interval() {
        assert_eq!(per_sec(1500, 500, 500), 2000.0);
        assert_eq!(per_sec(5, 5, 1000), 0.0);
        assert_eq!(per_sec(3, 5, 1000), 0.0, "a counter never goes back; if it did, no negative rate");
    }
}
