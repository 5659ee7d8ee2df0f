//! The console API's errors as HTTP: every error answers
//! `{"error":"<kind>","message":"…","field":"…"}` (`field` only when one
//! input is at fault). This is the only place that picks console status
//! codes; internal errors are logged in full and answered generically.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::BrokerError;

/// An error answer of the console API.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// A stable kind: a [`BrokerError::kind`] or one of the console's own.
    error: &'static str,
    /// What went wrong, for people.
    message: String,
    /// The request field at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self { status, error, message: message.into(), field: None }
    }

    /// A bad request naming its field.
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        Self {
            message: format!("invalid {field}: {reason}"),
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", "")
        }
    }

    /// The broker has not opened its catalogue yet.
    pub fn starting() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the broker is starting")
    }

    /// Mutations are off in the configuration.
    pub fn mutations_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "MutationsDisabled",
            "the console is read-only; set console.mutations = true to allow changes",
        )
    }

    /// A mutating call without a JSON body.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "a change needs a JSON body with Content-Type: application/json",
        )
    }

    /// A mutating call from another site.
    pub fn forbidden_origin(origin: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "ForbiddenOrigin",
            format!("a change must come from the console's own page, not from {origin:?}"),
        )
    }

    /// No such route.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", what)
    }

    /// The order service is not configured or did not answer.
    pub fn orders_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "OrderServiceUnavailable", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::InvalidArgument { field, .. } => {
                return Self {
                    field: Some(field.clone()),
                    ..Self::new(StatusCode::BAD_REQUEST, e.kind(), e.to_string())
                };
            }
            BrokerError::StreamNotFound { .. }
            | BrokerError::ShardNotFound { .. }
            | BrokerError::ConsumerNotFound { .. }
            | BrokerError::GroupNotFound { .. }
            | BrokerError::UnknownMember { .. } => StatusCode::NOT_FOUND,
            BrokerError::StreamExists { .. }
            | BrokerError::GroupBusy { .. }
            | BrokerError::Fenced { .. }
            | BrokerError::ResourceInUse { .. } => StatusCode::CONFLICT,
            BrokerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            BrokerError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            BrokerError::Throttled { .. } | BrokerError::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            BrokerError::SequenceTrimmed { .. } | BrokerError::SequenceBeyondEnd { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            BrokerError::ExpiredIterator { .. } => StatusCode::BAD_REQUEST,
            BrokerError::ShardFailed { .. }
            | BrokerError::ShardClosed { .. }
            | BrokerError::DiskFull { .. }
            | BrokerError::StorageIo { .. }
            | BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            // Named on purpose (no catch-all): a new kind must be given a status here.
            BrokerError::Tls(_) | BrokerError::Internal(_) | BrokerError::Metadata(_) | BrokerError::Io { .. } => {
                tracing::error!(error = %e, "console call failed");
                return Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "internal error; see the broker log");
            }
        };
        Self::new(status, e.kind(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_keep_their_kind_and_field_and_hide_internals() {
        let e = ApiError::from(BrokerError::invalid("retention_hours", "must be 24..=168, got 3"));
        assert_eq!(
            (e.status, e.error, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, "InvalidArgument", Some("retention_hours"))
        );
        let e = ApiError::from(BrokerError::StreamNotFound { name: "x".into() });
        assert_eq!((e.status, e.error), (StatusCode::NOT_FOUND, "StreamNotFound"));
        let e = ApiError::from(BrokerError::GroupBusy { group: "g".into(), members: 1 });
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e = ApiError::from(BrokerError::Metadata("sled failed at /secret/path".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("/secret"), "{}", e.message);
    }
}
