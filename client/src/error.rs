//! The client's one error type: every failure says whether retrying can help.

use std::time::Duration;

use tonic::{Code, Status};

/// A failed client operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request field was rejected; the message names it. Fatal.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The stream, shard, group or member does not exist. Fatal.
    #[error("not found: {0}")]
    NotFound(String),
    /// The stream or group exists already. Fatal.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Over quota; retry after the hint.
    #[error("throttled: {message} (retry after {retry_after:?})")]
    Throttled {
        /// What the broker said.
        message: String,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// The broker or a shard is unavailable, or the connection failed. Retryable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A shard iterator expired; get a new one (ShardReader does). Retryable.
    #[error("expired iterator: {0}")]
    ExpiredIterator(String),
    /// The position was deleted by retention. Fatal for that position.
    #[error("trimmed: {0}")]
    SequenceTrimmed(String),
    /// The member's session ended (it left or expired): rejoin. Retryable.
    #[error("group membership changed: {0}")]
    Rebalanced(String),
    /// The member acted under a shard lease it no longer holds (the shard
    /// moved to another member), or would move a checkpoint back. Drop the
    /// batch and refresh the assignment; the new owner processes it.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The operation needs an idle group. Fatal until members stop.
    #[error("group busy: {0}")]
    GroupBusy(String),
    /// Anything else the broker rejected. Fatal.
    #[error("{kind}: {message}")]
    Rejected {
        /// The broker's error kind.
        kind: String,
        /// The broker's message.
        message: String,
    },
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// The address answers, but not as a stream-broker gRPC server (for
    /// example an HTTP/1 port); the message names the address. Fatal.
    #[error("{0}")]
    NotBroker(String),
    /// A stack file is unreadable, malformed or invalid. Names the file, the
    /// line (0: the whole file) and the key. Fatal.
    #[error("{}", stack_location(.file, *.line, .key, .message))]
    InvalidStack {
        /// The file as given.
        file: String,
        /// 1-based line of the key, or 0.
        line: usize,
        /// Dotted key path (`streams[1].retentionHours`), or "".
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A stack cannot be deployed or removed as it stands (a change the
    /// broker cannot make, records that would be deleted); the message says
    /// why and what to do. Nothing was changed. Fatal.
    #[error("{0}")]
    StackRefused(String),
    /// The broker refused the caller's credentials: none where they are
    /// required, or a token that is unknown, expired or revoked. Fatal.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's principal may not do this. Fatal.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The TLS handshake failed (an untrusted or expired certificate, a
    /// wrong server name, a client certificate the broker refused). Fatal.
    #[error("{0}")]
    Tls(String),
    /// The producer's buffer is full (policy `FullBufferPolicy::FailFast`):
    /// the record was not accepted. Retry once acknowledgements free room.
    #[error("producer buffer full: {records} records and {bytes} bytes awaiting acknowledgement")]
    BufferFull {
        /// Records buffered when this record was refused.
        records: usize,
        /// Key + data bytes buffered when this record was refused.
        bytes: usize,
    },
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Throttled { .. }
                | Error::Unavailable(_)
                | Error::ExpiredIterator(_)
                | Error::Rebalanced(_)
                | Error::BufferFull { .. }
        )
    }

    /// How long to wait before retrying, when the broker said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let kind = s.metadata().get("x-error-kind").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        // A failure below gRPC (the connection) carries its cause as the
        // status's source; the top message alone ("transport error") says nothing.
        let message = match std::error::Error::source(&s) {
            Some(cause) if kind.is_empty() => {
                let causes = crate::connection::causes(cause);
                if causes.starts_with(s.message()) { causes } else { format!("{}: {causes}", s.message()) }
            }
            _ => s.message().to_string(),
        };
        if crate::connection::is_not_broker(&kind) {
            return Error::NotBroker(message);
        }
        if crate::connection::is_tls_failure(&kind) {
            return Error::Tls(message);
        }
        match (kind.as_str(), s.code()) {
            ("Throttled" | "LimitExceeded", _) | (_, Code::ResourceExhausted) => {
                let ms = s.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                Error::Throttled { message, retry_after: Duration::from_millis(ms.unwrap_or(1000)) }
            }
            ("ExpiredIterator", _) => Error::ExpiredIterator(message),
            ("SequenceTrimmed", _) => Error::SequenceTrimmed(message),
            ("UnknownMember", _) => Error::Rebalanced(message),
            ("Fenced", _) => Error::Fenced(message),
            ("GroupBusy", _) => Error::GroupBusy(message),
            (_, Code::InvalidArgument) => Error::InvalidArgument(message),
            // The broker's message names the kind already; the variant's Display adds it once.
            (_, Code::Unauthenticated) => Error::Unauthenticated(unprefixed(message, "unauthenticated: ")),
            (_, Code::PermissionDenied) => Error::PermissionDenied(unprefixed(message, "permission denied: ")),
            (_, Code::NotFound) => Error::NotFound(message),
            (_, Code::AlreadyExists) => Error::AlreadyExists(message),
            (_, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown) => {
                Error::Unavailable(message)
            }
            _ => Error::Rejected { kind: if kind.is_empty() { format!("{:?}", s.code()) } else { kind }, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Unavailable(format!("connection: {}", crate::connection::causes(&e)))
    }
}

/// `file:line: key: message`, leaving out a line of 0 and an empty key.
fn stack_location(file: &str, line: usize, key: &str, message: &str) -> String {
    let mut out = file.to_string();
    if line > 0 {
        out.push_str(&format!(":{line}"));
    }
    if !key.is_empty() {
        out.push_str(&format!(": {key}"));
    }
    format!("{out}: {message}")
}

/// Shorthand for client results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `message` without a leading `prefix`.
pub(crate) fn unprefixed(message: String, prefix: &str) -> String {
    match message.strip_prefix(prefix) {
        Some(rest) => rest.to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn statuses_map_to_typed_errors_with_retryability() {
        let mut s = Status::resource_exhausted("write quota");
        s.metadata_mut().insert("x-error-kind", MetadataValue::from_static("Throttled"));
        s.metadata_mut().insert("retry-after-ms", MetadataValue::from_static("250"));
        let e = Error::from(s);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        let e = Error::from(Status::invalid_argument("invalid records[0].partition_key: empty"));
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("partition_key")));
        assert!(!e.is_retryable());
        let mut s = Status::not_found("member gone");
        s.metadata_mut().insert("x-error-kind", MetadataValue::from_static("UnknownMember"));
        assert!(matches!(Error::from(s), Error::Rebalanced(_)));
        let mut s = Status::aborted("fenced: lease ended");
        s.metadata_mut().insert("x-error-kind", MetadataValue::from_static("Fenced"));
        let e = Error::from(s);
        assert!(matches!(e, Error::Fenced(_)) && !e.is_retryable());
        assert!(Error::from(Status::unavailable("down")).is_retryable());
        let e = Error::from(Status::unauthenticated("unauthenticated: the token was revoked"));
        assert_eq!(e.to_string(), "unauthenticated: the token was revoked", "the kind is said once");
    }
}
