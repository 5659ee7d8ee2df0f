//! The one place that maps broker errors to Kinesis errors: the AWS error
//! name (`__type`), the HTTP status and the message.
//!
//! Client errors are HTTP 400 with exactly the AWS names, because the SDKs
//! decide what to retry by name and status: `ProvisionedThroughputExceededException`
//! and `LimitExceededException` (400) are retried as throttling. A failed
//! shard, corrupt data and internal errors are `InternalFailure` (500, which
//! SDKs retry); an unavailable shard or a full disk is `ServiceUnavailable`
//! (503, retried). Internal errors are logged in full and answered with a
//! generic message. Request fields are named as the Kinesis API names them.

use axum::http::StatusCode;

use crate::error::BrokerError;

/// A Kinesis error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisError {
    /// The AWS error name, sent as `__type`.
    pub kind: &'static str,
    /// The message.
    pub message: String,
    /// The HTTP status.
    pub status: StatusCode,
}

impl KinesisError {
    /// An error of `kind` with HTTP 400.
    pub fn client(kind: &'static str, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), status: StatusCode::BAD_REQUEST }
    }

    /// `InvalidArgumentException`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::client("InvalidArgumentException", message)
    }

    /// `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client("ResourceNotFoundException", message)
    }

    /// `ResourceInUseException`.
    pub fn in_use(message: impl Into<String>) -> Self {
        Self::client("ResourceInUseException", message)
    }

    /// `LimitExceededException`.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::client("LimitExceededException", message)
    }

    /// `SerializationException`: the body does not decode.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::client("SerializationException", message)
    }

    /// `InternalFailure` (500); `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "Kinesis API internal error");
        Self {
            kind: "InternalFailure",
            message: "internal error; see the broker log".into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Context for naming resources in messages: `under account <id>`.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The account id.
    pub account: &'a str,
    /// Whether the call is a data-plane read or write (throttling is
    /// `ProvisionedThroughputExceededException` there, `LimitExceededException` elsewhere).
    pub data_plane: bool,
}

/// The Kinesis name of a request field named in the service layer's
/// snake_case (`records[3].partition_key` -> `Records[3].PartitionKey`).
pub fn field_name(field: &str) -> String {
    let renamed = match field {
        "timestamp_ms" => return "Timestamp".into(),
        "retention_hours" => return "RetentionPeriodHours".into(),
        "max_record_bytes" => return "MaxRecordSizeInKiB".into(),
        "iterator_type" => return "ShardIteratorType".into(),
        "shard_level_metrics" => return "ShardLevelMetrics".into(),
        "warm_throughput_mibps" => return "WarmThroughputMiBps".into(),
        other => other,
    };
    let mut out = String::with_capacity(renamed.len());
    let mut upper = true;
    for c in renamed.chars() {
        match c {
            '_' => upper = true,
            '.' | '[' | ']' => {
                out.push(c);
                upper = c != ']';
            }
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// Converts a broker error to the Kinesis error a client sees.
pub fn from_broker(e: BrokerError, scope: Scope<'_>) -> KinesisError {
    let account = scope.account;
    match e {
        BrokerError::InvalidArgument { field, reason } => {
            KinesisError::invalid(format!("{}: {reason}", field_name(&field)))
        }
        BrokerError::StreamNotFound { name } => {
            KinesisError::not_found(format!("Stream {name} under account {account} not found."))
        }
        BrokerError::StreamExists { name } => {
            KinesisError::in_use(format!("Stream {name} under account {account} already exists."))
        }
        BrokerError::ShardNotFound { stream, shard_id } => KinesisError::not_found(format!(
            "Shard {shard_id} in stream {stream} under account {account} does not exist"
        )),
        BrokerError::ConsumerNotFound { stream, consumer } => KinesisError::not_found(format!(
            "Consumer {consumer} of stream {stream} under account {account} not found."
        )),
        BrokerError::GroupNotFound { .. } | BrokerError::UnknownMember { .. } => KinesisError::not_found(e.to_string()),
        BrokerError::ResourceInUse { what } => KinesisError::in_use(what),
        BrokerError::GroupBusy { .. } | BrokerError::Fenced { .. } => KinesisError::in_use(e.to_string()),
        BrokerError::Throttled { .. } if scope.data_plane => {
            KinesisError::client("ProvisionedThroughputExceededException", format!("Rate exceeded: {e}"))
        }
        BrokerError::Throttled { .. } | BrokerError::LimitExceeded(_) => KinesisError::limit(e.to_string()),
        BrokerError::ExpiredIterator { age_ms } => KinesisError::client(
            "ExpiredIteratorException",
            format!(
                "Iterator expired. The iterator was created {age_ms} milliseconds ago, which is further in the past \
                 than the tolerated delay of 300000 milliseconds."
            ),
        ),
        BrokerError::SequenceTrimmed { .. } | BrokerError::SequenceBeyondEnd { .. } => {
            KinesisError::invalid(e.to_string())
        }
        // A shard closed by a split or merge while the record was queued:
        // retried (the SDKs retry 503), it routes to a child.
        BrokerError::DiskFull { .. }
        | BrokerError::StorageIo { .. }
        | BrokerError::Unavailable(_)
        | BrokerError::ShardClosed { .. } => {
            KinesisError { kind: "ServiceUnavailable", message: e.to_string(), status: StatusCode::SERVICE_UNAVAILABLE }
        }
        BrokerError::ShardFailed { .. } | BrokerError::Corrupt { .. } => {
            KinesisError { kind: "InternalFailure", message: e.to_string(), status: StatusCode::INTERNAL_SERVER_ERROR }
        }
        // AWS answers unknown or revoked credentials with this name, and a
        // missing grant with AccessDeniedException; SDKs retry neither.
        BrokerError::Unauthenticated(m) => KinesisError::client("UnrecognizedClientException", m),
        BrokerError::PermissionDenied { .. } => KinesisError::client("AccessDeniedException", e.to_string()),
        BrokerError::Internal(_) | BrokerError::Metadata(_) | BrokerError::Io { .. } | BrokerError::Tls(_) => {
            KinesisError::internal(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: Scope<'static> = Scope { account: "000000000000", data_plane: true };

    #[test]
    fn fields_are_named_as_kinesis_names_them() {
        assert_eq!(field_name("stream_name"), "StreamName");
        assert_eq!(field_name("records[3].partition_key"), "Records[3].PartitionKey");
        assert_eq!(field_name("records[0].explicit_hash_key"), "Records[0].ExplicitHashKey");
        assert_eq!(field_name("timestamp_ms"), "Timestamp");
        assert_eq!(field_name("limit"), "Limit");
    }

    #[test]
    fn throttling_is_named_so_sdks_retry_it() {
        let t = || BrokerError::Throttled {
            what: "write quota of shardId-000000000000 exceeded".into(),
            retry_after_ms: 5,
        };
        let e = from_broker(t(), SCOPE);
        assert_eq!((e.kind, e.status), ("ProvisionedThroughputExceededException", StatusCode::BAD_REQUEST));
        let e = from_broker(t(), Scope { data_plane: false, ..SCOPE });
        assert_eq!((e.kind, e.status), ("LimitExceededException", StatusCode::BAD_REQUEST));
        let e = from_broker(BrokerError::StreamNotFound { name: "orders".into() }, SCOPE);
        assert_eq!(e.message, "Stream orders under account 000000000000 not found.");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = from_broker(BrokerError::Metadata("sled at /secret/path".into()), SCOPE);
        assert_eq!((e.kind, e.status), ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!e.message.contains("/secret"));
    }
}
