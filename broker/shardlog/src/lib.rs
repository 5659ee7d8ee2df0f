//! `shardlog`: the storage engine of stream-broker.
//!
//! One [`ShardLog`] owns one directory and keeps one shard's records as a
//! segmented, append-only log: `{base:020}.log` segment files with a sparse
//! offset index (`.index`) and time index (`.timeindex`) each. Every batch is
//! one CRC-protected frame; `FORMAT.md` documents the bytes.
//!
//! The crate is synchronous and uses only `std` (plus `bytes` and
//! `crc32fast`): the broker decides when to [`ShardLog::sync`], so it can
//! group-commit many producers' batches under one `fdatasync`, and it runs
//! this code off its async reactor. All disk access goes through the [`io`]
//! seam, so tests inject faults and simulate power loss; with the
//! `failpoints` feature (tests only) named failpoints of the `fail` crate
//! can also fail, panic or delay the write path at chosen steps.
//!
//! Damage on disk never stops the whole log: [`recovery`] cuts what was
//! provably never acknowledged and reports the rest as [`Damage`]; reads
//! serve everything around it, and [`ShardLog::repair`] cuts at it on an
//! operator's request.
//!
//! ```
//! use shardlog::{Config, RecordRef, ShardLog};
//! let dir = tempfile::tempdir()?;
//! let mut log = ShardLog::open(dir.path(), Config::default())?;
//! let appended = log.append(1_700_000_000_000, &[RecordRef { partition_key: b"order-1", data: b"cake" }])?;
//! log.sync()?; // durable and visible: now it may be acknowledged
//! let batch = log.read(appended.first_seq, 10, 1 << 20)?;
//! assert_eq!(&batch.records[0].data[..], b"cake");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// A named failpoint (the `fail` crate) that, when configured to `return`,
/// makes the enclosing function fail with an injected I/O error on `$path`.
/// Compiled in only with the `failpoints` feature; otherwise it is nothing.
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal, $path:expr) => {
        fail::fail_point!($name, |_| {
            Err(crate::error::Error::Io {
                op: $name,
                path: std::path::PathBuf::from($path),
                source: std::io::Error::other("injected by failpoint"),
            })
        })
    };
}
#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal, $path:expr) => {};
}
pub(crate) use failpoint;

mod config;
mod error;
pub mod format;
pub mod io;
mod log;
pub mod recovery;
mod seal;
mod segment;

pub use config::{Config, RECORD_BYTES_MAX_LIMIT, SEGMENT_BYTES_MAX_LIMIT};
pub use error::{Error, Result};
pub use log::{
    Appended, LogReader, LogStats, ReadBatch, Record, RecordRef, RepairPlan, ShardLog, Trimmed, validate_record,
};
pub use recovery::{Damage, RecoveryReport};
