//! Per-shard quotas as token buckets with a one-second burst, read on the
//! injected clock.
//!
//! Writes take one record token and the record's bytes together, so a
//! record is either wholly admitted or throttled. The write-byte bucket holds
//! at least the stream's largest record, so a full bucket always admits one
//! record of the maximum size (the catalogue refuses new streams whose
//! largest record exceeds their write-byte quota; this keeps streams stored
//! before that rule writable).
//!
//! A GetRecords call (and a consumer-group Poll, which is metered the same
//! way) takes one call token from the shard's shared bucket and needs a
//! positive byte balance; its bytes are charged after the read, possibly
//! into debt, which then delays later reads (as Kinesis throttles calls
//! after a large response). A SubscribeShard call has its own
//! [`ReadBudget`] instead, like a Kinesis enhanced fan-out consumer.

use std::sync::Mutex;

/// Per-shard quota values (enforcement is switched as a whole by `quotas.enforce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaValues {
    /// Records per second in.
    pub write_records_per_sec: u64,
    /// Key + data bytes per second in.
    pub write_bytes_per_sec: u64,
    /// GetRecords calls per second.
    pub read_calls_per_sec: u64,
    /// Key + data bytes per second out through GetRecords, shared by the
    /// shard's readers; each SubscribeShard call has its own budget of it.
    pub read_bytes_per_sec: u64,
}

impl QuotaValues {
    /// Kinesis's defaults: 1000 records/s and 1 MiB/s in, 5 calls/s and 2 MiB/s out.
    pub const KINESIS: QuotaValues = QuotaValues {
        write_records_per_sec: 1000,
        write_bytes_per_sec: 1024 * 1024,
        read_calls_per_sec: 5,
        read_bytes_per_sec: 2 * 1024 * 1024,
    };
}

/// A token bucket on the injected clock, refilled continuously.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate_per_ms: f64,
    capacity: f64,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket refilled at `rate_per_sec`, holding one second of it or
    /// `capacity_min`, whichever is more.
    pub(crate) fn new(rate_per_sec: u64, capacity_min: u64, now_ms: u64) -> Self {
        let capacity = rate_per_sec.max(capacity_min) as f64;
        Self { rate_per_ms: rate_per_sec as f64 / 1000.0, capacity, tokens: capacity, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.capacity);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Milliseconds until `n` tokens are available (0 if they are).
    fn wait_ms(&self, n: f64) -> u64 {
        if self.tokens >= n { 0 } else { ((n - self.tokens) / self.rate_per_ms).ceil().max(1.0) as u64 }
    }

    /// Takes one token at `now_ms`, or says how long until one is there.
    pub(crate) fn try_take(&mut self, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        match self.wait_ms(1.0) {
            0 => {
                self.tokens -= 1.0;
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

#[derive(Debug)]
struct Buckets {
    write_records: Bucket,
    write_bytes: Bucket,
    read_calls: Bucket,
    read_bytes: Bucket,
}

/// The quota state of one shard.
#[derive(Debug)]
pub struct ShardQuota {
    enforced: bool,
    buckets: Mutex<Buckets>,
}

impl ShardQuota {
    /// Full buckets at `now_ms` for a stream whose records are at most
    /// `record_bytes_max` (key + data). With `enforced` false every request passes.
    pub fn new(values: QuotaValues, record_bytes_max: u32, enforced: bool, now_ms: u64) -> Self {
        Self {
            enforced,
            buckets: Mutex::new(Buckets {
                write_records: Bucket::new(values.write_records_per_sec, 0, now_ms),
                write_bytes: Bucket::new(values.write_bytes_per_sec, u64::from(record_bytes_max), now_ms),
                read_calls: Bucket::new(values.read_calls_per_sec, 0, now_ms),
                read_bytes: Bucket::new(values.read_bytes_per_sec, 0, now_ms),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // Buckets are plain numbers; a panic elsewhere cannot leave them inconsistent.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one record of `bytes`, or says how long to wait.
    pub fn try_write(&self, bytes: u64, now_ms: u64) -> Result<(), u64> {
        if !self.enforced {
            return Ok(());
        }
        let mut b = self.lock();
        b.write_records.refill(now_ms);
        b.write_bytes.refill(now_ms);
        let wait = b.write_records.wait_ms(1.0).max(b.write_bytes.wait_ms(bytes as f64));
        if wait > 0 {
            return Err(wait);
        }
        b.write_records.tokens -= 1.0;
        b.write_bytes.tokens -= bytes as f64;
        Ok(())
    }

    /// Admits one read call (GetRecords or a group Poll), or says how long
    /// to wait; charge the bytes it returned with [`ShardQuota::charge_read`].
    pub fn try_read_call(&self, now_ms: u64) -> Result<(), u64> {
        if !self.enforced {
            return Ok(());
        }
        let mut b = self.lock();
        b.read_calls.refill(now_ms);
        b.read_bytes.refill(now_ms);
        let wait = b.read_calls.wait_ms(1.0).max(b.read_bytes.wait_ms(f64::MIN_POSITIVE));
        if wait > 0 {
            return Err(wait);
        }
        b.read_calls.tokens -= 1.0;
        Ok(())
    }

    /// Charges the bytes a read returned.
    pub fn charge_read(&self, bytes: u64, now_ms: u64) {
        if self.enforced {
            let mut b = self.lock();
            b.read_bytes.refill(now_ms);
            b.read_bytes.tokens -= bytes as f64;
        }
    }
}

/// The read budget of one SubscribeShard call: its own bucket of
/// `read_bytes_per_sec` with a one-second burst. A read needs a positive
/// balance; its bytes are charged after it, possibly into debt.
#[derive(Debug)]
pub struct ReadBudget {
    bytes: Option<Bucket>,
}

impl ReadBudget {
    /// A full budget at `now_ms`; with `enforced` false it never throttles.
    pub fn new(read_bytes_per_sec: u64, enforced: bool, now_ms: u64) -> Self {
        Self { bytes: enforced.then(|| Bucket::new(read_bytes_per_sec, 0, now_ms)) }
    }

    /// Milliseconds until the next read may start (0: now).
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.bytes.as_mut().map_or(0, |b| {
            b.refill(now_ms);
            b.wait_ms(f64::MIN_POSITIVE)
        })
    }

    /// Charges the bytes a read returned.
    pub fn charge(&mut self, bytes: u64, now_ms: u64) {
        if let Some(b) = self.bytes.as_mut() {
            b.refill(now_ms);
            b.tokens -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_admitted_at_the_quota_rate_with_a_one_second_burst() {
        let q = ShardQuota::new(QuotaValues::KINESIS, 1 << 20, true, 0);
        // Offer 2000 records/s of 100 bytes for 5 s in 10 ms steps.
        let mut admitted = 0u64;
        for step in 0..500u64 {
            for _ in 0..20 {
                if q.try_write(100, step * 10).is_ok() {
                    admitted += 1;
                }
            }
        }
        // At most quota * (seconds + 1 burst), at least 90% of quota * seconds.
        assert!(admitted <= 1000 * 6, "{admitted}");
        assert!(admitted >= 4500, "{admitted}");
    }

    #[test]
    fn byte_quota_limits_large_records_and_hints_the_wait() {
        let q = ShardQuota::new(QuotaValues::KINESIS, 1 << 20, true, 0);
        assert!(q.try_write(1024 * 1024, 0).is_ok(), "the burst admits one 1 MiB record");
        let wait = q.try_write(512 * 1024, 0).expect_err("bucket is empty");
        assert_eq!(wait, 500, "half a MiB refills in half a second");
        assert!(q.try_write(512 * 1024, 500).is_ok());
    }

    #[test]
    fn read_bytes_debt_delays_later_calls() {
        let q = ShardQuota::new(QuotaValues::KINESIS, 1 << 20, true, 0);
        q.try_read_call(0).expect("first call");
        q.charge_read(10 * 1024 * 1024, 0);
        let wait = q.try_read_call(0).expect_err("in debt");
        assert!((4000..=4100).contains(&wait), "8 MiB of debt at 2 MiB/s: {wait}");
        assert!(q.try_read_call(4100).is_ok());
    }

    #[test]
    fn five_calls_per_second() {
        let q = ShardQuota::new(QuotaValues::KINESIS, 1 << 20, true, 0);
        for _ in 0..5 {
            q.try_read_call(0).expect("burst of five");
        }
        assert_eq!(q.try_read_call(0), Err(200));
    }

    #[test]
    fn unenforced_quota_admits_everything() {
        let q = ShardQuota::new(QuotaValues::KINESIS, 1 << 20, false, 0);
        for _ in 0..10_000 {
            q.try_write(1 << 20, 0).expect("not enforced");
        }
    }

    #[test]
    fn a_full_bucket_admits_one_record_of_the_maximum_size() {
        // A stream stored before create refused records above the byte quota.
        let q = ShardQuota::new(QuotaValues::KINESIS, 2 << 20, true, 0);
        assert!(q.try_write(2 << 20, 0).is_ok(), "a full bucket admits the largest record");
        let wait = q.try_write(2 << 20, 0).expect_err("empty");
        assert_eq!(wait, 2000, "2 MiB at 1 MiB/s: the hint can be met");
        assert!(q.try_write(2 << 20, wait).is_ok());
        // The rate stays 1 MiB/s: over 10 s at most the burst plus 10 MiB pass.
        let mut admitted = 0u64;
        for ms in (wait..wait + 10_000).step_by(10) {
            if q.try_write(64 * 1024, ms).is_ok() {
                admitted += 64 * 1024;
            }
        }
        assert!(admitted <= 10 << 20, "{admitted}");
    }

    #[test]
    fn a_read_budget_admits_its_rate_and_carries_debt() {
        let mut b = ReadBudget::new(2 << 20, true, 0);
        assert_eq!(b.wait_ms(0), 0);
        b.charge(6 << 20, 0);
        assert_eq!(b.wait_ms(0), 2000, "4 MiB of debt at 2 MiB/s");
        assert_eq!(b.wait_ms(1000), 1000);
        assert_eq!(b.wait_ms(2001), 0);
        let mut free = ReadBudget::new(1, false, 0);
        free.charge(1 << 30, 0);
        assert_eq!(free.wait_ms(0), 0, "not enforced");
    }
}
