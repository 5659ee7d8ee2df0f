//! The one place that maps broker errors to gRPC statuses.
//!
//! Every status carries the error's kind in `x-error-kind`; a throttled call
//! and a write refused for lack of disk space also carry `retry-after-ms`.
//! Internal errors are logged in full and answered with a generic message.
//!
//! Storage failures are split by what the caller can do: a full disk is
//! `RESOURCE_EXHAUSTED` (retry; writes resume by themselves), a failed shard
//! is `FAILED_PRECONDITION` (an operator must repair it), corrupt bytes are
//! `DATA_LOSS` (that range is gone; the rest is served), an I/O error is
//! `UNAVAILABLE`.
//!
//! A write to a shard that a reshard just closed is `UNAVAILABLE` with kind
//! `ShardClosed` (retry after refreshing the shard map); a reshard that
//! meets a running one, or a closed shard, is `FAILED_PRECONDITION` with
//! kind `ResourceInUse`.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::BrokerError;

/// Converts a broker error to the status a client sees.
pub fn to_status(e: BrokerError) -> Status {
    let code = match &e {
        BrokerError::InvalidArgument { .. } => Code::InvalidArgument,
        BrokerError::StreamNotFound { .. }
        | BrokerError::ShardNotFound { .. }
        | BrokerError::ConsumerNotFound { .. }
        | BrokerError::GroupNotFound { .. }
        | BrokerError::UnknownMember { .. } => Code::NotFound,
        BrokerError::GroupBusy { .. } | BrokerError::ResourceInUse { .. } => Code::FailedPrecondition,
        // Retryable: the client routes again with a refreshed shard map.
        BrokerError::ShardClosed { .. } => Code::Unavailable,
        BrokerError::Fenced { .. } => Code::Aborted,
        BrokerError::StreamExists { .. } => Code::AlreadyExists,
        BrokerError::Throttled { .. } | BrokerError::LimitExceeded(_) | BrokerError::DiskFull { .. } => {
            Code::ResourceExhausted
        }
        BrokerError::ExpiredIterator { .. } => Code::FailedPrecondition,
        BrokerError::SequenceTrimmed { .. } | BrokerError::SequenceBeyondEnd { .. } => Code::OutOfRange,
        BrokerError::ShardFailed { .. } => Code::FailedPrecondition,
        BrokerError::Corrupt { .. } => Code::DataLoss,
        BrokerError::StorageIo { .. } | BrokerError::Unavailable(_) => Code::Unavailable,
        BrokerError::Unauthenticated(_) => Code::Unauthenticated,
        BrokerError::PermissionDenied { .. } => Code::PermissionDenied,
        BrokerError::Internal(_) | BrokerError::Metadata(_) | BrokerError::Io { .. } | BrokerError::Tls(_) => {
            Code::Internal
        }
    };
    let message = if code == Code::Internal {
        tracing::error!(error = %e, "internal error");
        "internal error; see the broker log".to_string()
    } else {
        e.to_string()
    };
    let mut status = Status::new(code, message);
    status.metadata_mut().insert("x-error-kind", MetadataValue::from_static(e.kind()));
    if let Some(retry_after_ms) = e.retry_after_ms() {
        status.metadata_mut().insert("retry-after-ms", MetadataValue::from(retry_after_ms));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_carries_kind_and_retry_hint() {
        let s = to_status(BrokerError::Throttled { what: "write quota".into(), retry_after_ms: 120 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("x-error-kind").map(|v| v.to_str().ok()), Some(Some("Throttled")));
        assert_eq!(s.metadata().get("retry-after-ms").map(|v| v.to_str().ok()), Some(Some("120")));
    }

    #[test]
    fn storage_failures_are_split_by_what_the_caller_can_do() {
        let full = to_status(BrokerError::DiskFull { what: "disk below watermark".into(), retry_after_ms: 500 });
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(full.metadata().get("x-error-kind").map(|v| v.to_str().ok()), Some(Some("DiskFull")));
        assert_eq!(full.metadata().get("retry-after-ms").map(|v| v.to_str().ok()), Some(Some("500")));
        let corrupt = BrokerError::storage(
            "shardId-000000000000",
            shardlog::Error::Corrupt {
                path: "/secret/data/streams/3/shardId-000000000000/00000000000000000000.log".into(),
                position: 4242,
                reason: "CRC mismatch".into(),
            },
        );
        let s = to_status(corrupt);
        assert_eq!(s.code(), Code::DataLoss);
        assert!(s.message().contains("00000000000000000000.log") && s.message().contains("4242"), "{}", s.message());
        assert!(!s.message().contains("/secret"), "{}", s.message());
        let io = BrokerError::storage(
            "shardId-000000000001",
            shardlog::Error::Io { op: "read", path: "/secret/x.log".into(), source: std::io::Error::other("EIO") },
        );
        let s = to_status(io);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("/secret"), "{}", s.message());
        let failed = BrokerError::ShardFailed {
            stream: "orders".into(),
            shard_id: "shardId-000000000002".into(),
            kind: "Damaged",
            cause: "damage at byte 7".into(),
        };
        let s = to_status(failed);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("orders") && s.message().contains("shardId-000000000002"), "{}", s.message());
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let s = to_status(BrokerError::Metadata("sled exploded at /secret/path".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/secret/path"));
    }
}
