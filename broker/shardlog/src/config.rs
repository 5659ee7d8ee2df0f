//! Limits and tuning of one shard log, with documented defaults.

use crate::error::Error;
use crate::format::FRAME_BYTES_MAX;

/// Configuration of a [`ShardLog`](crate::ShardLog). Every limit is named and
/// checked by [`Config::validate`], which names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A segment is rolled before a batch would take it past this size (a
    /// batch larger than this gets a segment of its own). Default 128 MiB;
    /// at most 1 GiB, so positions (at most this plus one 64 MiB frame) fit
    /// the index's u32.
    pub segment_bytes_max: u64,
    /// A segment is rolled when a batch arrives this long after the
    /// segment's first batch, so retention can free data at a steady pace.
    /// Default one hour.
    pub segment_age_max_ms: u64,
    /// An offset- and time-index entry is written at the first batch of a
    /// segment and then at the first batch after every this many bytes.
    /// Default 4 KiB: a read skips at most that much (plus one batch).
    pub index_interval_bytes: u32,
    /// Largest record, partition key plus data. Default 1 MiB, at most 10 MiB.
    pub record_bytes_max: u32,
    /// Most records in one appended batch. Default 10,000.
    pub batch_records_max: u32,
    /// Largest appended batch as encoded on disk. Default 16 MiB, at most
    /// the format's hard frame bound of 64 MiB.
    pub batch_bytes_max: u32,
    /// Appended batches are gathered in memory up to this many bytes before
    /// a write call, which writes up to the last 64 KiB boundary of the
    /// file (or the largest power of two below a smaller buffer) and keeps
    /// the rest; `sync` and `publish` always write everything first.
    /// Default 256 KiB.
    pub write_buffer_bytes: usize,
    /// A rolled segment is synced (`fdatasync`) and gets its index files on
    /// a short-lived background thread of the log, so the append that
    /// rolled does not wait for a whole segment's write-back. Off: that
    /// work waits for the next `sync`, `close`, retention pass or
    /// truncation (or a roll, once 4 segments wait), on the caller's thread;
    /// deterministic, for tests. Default on.
    pub background_seal: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            segment_bytes_max: 128 * 1024 * 1024,
            segment_age_max_ms: 60 * 60 * 1000,
            index_interval_bytes: 4096,
            record_bytes_max: 1024 * 1024,
            batch_records_max: 10_000,
            batch_bytes_max: 16 * 1024 * 1024,
            write_buffer_bytes: 256 * 1024,
            background_seal: true,
        }
    }
}

/// Upper bound of [`Config::segment_bytes_max`].
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 1024 * 1024 * 1024;
/// Upper bound of [`Config::record_bytes_max`].
pub const RECORD_BYTES_MAX_LIMIT: u32 = 10 * 1024 * 1024;

impl Config {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if !(64 * 1024..=SEGMENT_BYTES_MAX_LIMIT).contains(&self.segment_bytes_max) {
            return bad("segment_bytes_max", format!("{} is outside 64 KiB..=1 GiB", self.segment_bytes_max));
        }
        if self.segment_age_max_ms == 0 {
            return bad("segment_age_max_ms", "must be positive".into());
        }
        if !(64..=16 * 1024 * 1024).contains(&self.index_interval_bytes) {
            return bad("index_interval_bytes", format!("{} is outside 64..=16 MiB", self.index_interval_bytes));
        }
        if !(1..=RECORD_BYTES_MAX_LIMIT).contains(&self.record_bytes_max) {
            return bad("record_bytes_max", format!("{} is outside 1..=10 MiB", self.record_bytes_max));
        }
        if self.batch_records_max == 0 {
            return bad("batch_records_max", "must be positive".into());
        }
        if !(1..=FRAME_BYTES_MAX).contains(&self.batch_bytes_max) {
            return bad("batch_bytes_max", format!("{} is outside 1..=64 MiB", self.batch_bytes_max));
        }
        if self.write_buffer_bytes > 64 * 1024 * 1024 {
            return bad("write_buffer_bytes", format!("{} exceeds 64 MiB", self.write_buffer_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, Config)> = vec![
            ("segment_bytes_max", Config { segment_bytes_max: 10, ..Config::default() }),
            ("segment_age_max_ms", Config { segment_age_max_ms: 0, ..Config::default() }),
            ("index_interval_bytes", Config { index_interval_bytes: 1, ..Config::default() }),
            ("record_bytes_max", Config { record_bytes_max: 11 * 1024 * 1024, ..Config::default() }),
            ("batch_records_max", Config { batch_records_max: 0, ..Config::default() }),
            ("batch_bytes_max", Config { batch_bytes_max: u32::MAX, ..Config::default() }),
            ("write_buffer_bytes", Config { write_buffer_bytes: usize::MAX, ..Config::default() }),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
