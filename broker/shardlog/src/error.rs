//! The one error type of the storage engine.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in a shard log. Variants carry the context
/// an operator needs (which file, which position, which field).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A write or sync failed earlier; nothing more is written until the log is reopened.
    #[error("shard log is poisoned by an earlier I/O failure ({cause}); reopen it to recover")]
    Poisoned {
        /// The failure that poisoned the log.
        cause: String,
    },
    /// Bytes on disk are damaged somewhere recovery may not cut them away.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// The active segment is damaged in bytes that were synced: the log was
    /// opened read-only and refuses writes until it is repaired
    /// ([`ShardLog::repair`](crate::ShardLog::repair)).
    #[error("shard log is read-only: damage in {path} at byte {position}: {reason}; repair it to write again")]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A repair plan no longer matches the log (it changed since the plan was made).
    #[error("stale repair plan: {reason}")]
    StaleRepairPlan {
        /// How the log differs from the plan.
        reason: String,
    },
    /// The requested sequence number was removed by retention.
    #[error("sequence number {requested} is below the trim horizon {first}")]
    SequenceTrimmed {
        /// Requested sequence number.
        requested: u64,
        /// Oldest sequence number still stored.
        first: u64,
    },
    /// The requested sequence number has not been written (or made visible) yet.
    #[error("sequence number {requested} is beyond the end of the log {next}")]
    SequenceBeyondEnd {
        /// Requested sequence number.
        requested: u64,
        /// The next sequence number to be assigned.
        next: u64,
    },
    /// A record in an appended batch breaks a rule.
    #[error("record {index}: {field}: {reason}")]
    InvalidRecord {
        /// Position of the record in its batch.
        index: usize,
        /// `partition_key` or `data`.
        field: &'static str,
        /// The rule broken.
        reason: String,
    },
    /// An appended batch breaks a batch limit.
    #[error("batch {field}: {reason}")]
    InvalidBatch {
        /// `records` or `bytes`.
        field: &'static str,
        /// The limit broken.
        reason: String,
    },
    /// A configuration value is out of bounds.
    #[error("config {field}: {reason}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// `truncate_after` was asked to cut outside the stored range.
    #[error("cannot truncate after {seq}: stored range is {first}..{next}")]
    InvalidTruncate {
        /// Requested last sequence number to keep.
        seq: u64,
        /// Oldest stored sequence number.
        first: u64,
        /// Next sequence number to be assigned.
        next: u64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
