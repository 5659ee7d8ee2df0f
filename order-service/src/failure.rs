//! Why a consumer could not handle a record, and whether trying again can
//! help.
//!
//! - **Transient**: the other side or our disk may recover. Connection
//!   refused or reset, timeouts, HTTP 5xx, 408 and 429, SMTP 4xx replies,
//!   local storage errors. The record is retried with capped exponential
//!   backoff while its shard waits.
//! - **Permanent**: the same record will fail the same way. Undecodable or
//!   incomplete events, other HTTP 4xx (and 3xx: redirects are not
//!   followed), SMTP 5xx replies, messages that cannot be built. The record
//!   is dead-lettered at once.
//!
//! Each failure also has a `kind`, the label it is counted under in
//! `/metrics`.

use crate::email::EmailError;
use crate::http_client::HttpError;
use crate::store::StoreError;

/// Transient or permanent; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying.
    Transient,
    /// Dead-letter at once.
    Permanent,
}

/// The metric label of a failure.
pub mod kind {
    /// Could not connect, or the connection broke.
    pub const UNREACHABLE: &str = "unreachable";
    /// No answer in time.
    pub const TIMEOUT: &str = "timeout";
    /// The server answered that it cannot serve now (HTTP 5xx, 408, 429; SMTP 4xx).
    pub const SERVER_ERROR: &str = "server_error";
    /// Our own store or disk failed.
    pub const LOCAL: &str = "local";
    /// Another delivery of the same event is being handled right now.
    pub const IN_PROGRESS: &str = "in_progress";
    /// The server refused the request (HTTP 4xx, SMTP 5xx).
    pub const REJECTED: &str = "rejected";
    /// The record or its event cannot be handled as it is.
    pub const BAD_DATA: &str = "bad_data";
}

/// A failed attempt at a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Retry or dead-letter.
    pub class: Class,
    /// One of [`kind`].
    pub kind: &'static str,
    /// What happened, for logs and the dead-letter record.
    pub message: String,
}

impl Failure {
    /// A failure worth retrying.
    pub fn transient(kind: &'static str, message: impl Into<String>) -> Self {
        Self { class: Class::Transient, kind, message: message.into() }
    }

    /// A failure to dead-letter at once.
    pub fn permanent(kind: &'static str, message: impl Into<String>) -> Self {
        Self { class: Class::Permanent, kind, message: message.into() }
    }

    /// Bad input: permanent.
    pub fn bad_data(message: impl Into<String>) -> Self {
        Self::permanent(kind::BAD_DATA, message)
    }

    /// Classifies an HTTP status: `Ok` for 2xx.
    pub fn from_status(status: u16, what: &str) -> Result<(), Failure> {
        let message = || format!("{what} answered {status}");
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => Err(Self::transient(kind::SERVER_ERROR, message())),
            _ => Err(Self::permanent(kind::REJECTED, message())),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            // The event names an order this store does not have: retrying
            // cannot create it.
            StoreError::NotFound(_) => Self::bad_data(e.to_string()),
            _ => Self::transient(kind::LOCAL, e.to_string()),
        }
    }
}

impl From<HttpError> for Failure {
    fn from(e: HttpError) -> Self {
        let kind = if e.is_timeout() { kind::TIMEOUT } else { kind::UNREACHABLE };
        Self::transient(kind, e.to_string())
    }
}

impl From<EmailError> for Failure {
    fn from(e: EmailError) -> Self {
        let message = e.to_string();
        match e {
            EmailError::Message(_) => Self::bad_data(message),
            EmailError::Io { .. } => Self::transient(kind::LOCAL, message),
            EmailError::Smtp(e) if e.is_permanent() => Self::permanent(kind::REJECTED, message),
            EmailError::Smtp(e) if e.is_transient() => Self::transient(kind::SERVER_ERROR, message),
            EmailError::Smtp(e) if e.is_timeout() => Self::transient(kind::TIMEOUT, message),
            // Connection, network, TLS and protocol errors: the server or
            // the path to it may recover.
            EmailError::Smtp(_) => Self::transient(kind::UNREACHABLE, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified() {
        assert_eq!(Failure::from_status(204, "hook"), Ok(()));
        for s in [500, 502, 503, 504, 408, 429] {
            assert_eq!(Failure::from_status(s, "hook").expect_err("fails").class, Class::Transient, "{s}");
        }
        for s in [301, 400, 401, 404, 409, 422] {
            let f = Failure::from_status(s, "hook").expect_err("fails");
            assert_eq!((f.class, f.kind), (Class::Permanent, kind::REJECTED), "{s}");
            assert!(f.message.contains(&s.to_string()), "{f}");
        }
    }

    #[test]
    fn store_errors_are_transient_except_a_missing_order() {
        assert_eq!(Failure::from(StoreError::Db("disk".into())).class, Class::Transient);
        assert_eq!(Failure::from(StoreError::NotFound("o".into())).class, Class::Permanent);
    }
}
