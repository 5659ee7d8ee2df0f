//! The one place that maps broker errors to gRPC statuses.
//!
//! Every status carries the error's kind in `x-error-kind`; a throttled call
//! also carries `retry-after-ms`. Internal errors are logged in full and
//! answered with a generic message.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::BrokerError;

/// Converts a broker error to the status a client sees.
pub fn to_status(e: BrokerError) -> Status {
    let code = match &e {
        BrokerError::InvalidArgument { .. } => Code::InvalidArgument,
        BrokerError::StreamNotFound { .. }
        | BrokerError::ShardNotFound { .. }
        | BrokerError::GroupNotFound { .. }
        | BrokerError::UnknownMember { .. } => Code::NotFound,
        BrokerError::GroupBusy { .. } => Code::FailedPrecondition,
        BrokerError::Fenced { .. } => Code::Aborted,
        BrokerError::StreamExists { .. } => Code::AlreadyExists,
        BrokerError::Throttled { .. } | BrokerError::LimitExceeded(_) => Code::ResourceExhausted,
        BrokerError::ExpiredIterator { .. } => Code::FailedPrecondition,
        BrokerError::SequenceTrimmed { .. } | BrokerError::SequenceBeyondEnd { .. } => Code::OutOfRange,
        BrokerError::ShardReadOnly { .. } | BrokerError::Unavailable(_) => Code::Unavailable,
        BrokerError::Storage(_) | BrokerError::Metadata(_) | BrokerError::Io { .. } => Code::Internal,
    };
    let message = if code == Code::Internal {
        tracing::error!(error = %e, "internal error");
        "internal error; see the broker log".to_string()
    } else {
        e.to_string()
    };
    let mut status = Status::new(code, message);
    status.metadata_mut().insert("x-error-kind", MetadataValue::from_static(e.kind()));
    if let BrokerError::Throttled { retry_after_ms, .. } = e {
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
    fn internal_errors_do_not_leak() {
        let s = to_status(BrokerError::Metadata("sled exploded at /secret/path".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/secret/path"));
    }
}
