//! Says which setting a too-large message ran into.
//!
//! tonic checks each message's length prefix against the decoding limit
//! before reading the message, and answers OUT_OF_RANGE "decoded message
//! length too large" without naming our configuration. For unary calls that
//! status is produced before any handler runs, so [`MessageLimitHint`]
//! wraps a generated service and rewrites it in the (trailers-only)
//! response headers; streaming handlers call [`explain`] on the status
//! their inbound stream yields.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// The start of tonic's message for a request above the decoding limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// `status`, or when it is tonic's "message too large" error, the same code
/// with a message that names `limits.grpc_max_message_bytes` and its value.
pub fn explain(status: Status, limit: usize) -> Status {
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
        return status;
    }
    let found = status
        .message()
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map_or_else(String::new, |n| format!(" of {n} bytes"));
    Status::new(
        Code::OutOfRange,
        format!(
            "request message{found} is larger than limits.grpc_max_message_bytes = {limit} bytes \
             (split the batch, or raise the limit in the broker's configuration)"
        ),
    )
}

/// A generated service whose "message too large" statuses name the limit.
#[derive(Debug, Clone)]
pub struct MessageLimitHint<S> {
    inner: S,
    limit: usize,
}

impl<S> MessageLimitHint<S> {
    /// Wraps `inner`, whose decoding limit is `limit` bytes.
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: NamedService> NamedService for MessageLimitHint<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for MessageLimitHint<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(req);
        let limit = self.limit;
        Box::pin(async move {
            let mut response = response.await?;
            // Only a trailers-only error response carries the status in its headers.
            let too_large = Status::from_header_map(response.headers())
                .filter(|s| s.code() == Code::OutOfRange && s.message().starts_with(TONIC_TOO_LARGE));
            if let Some(status) = too_large {
                if let Err(e) = explain(status, limit).add_header(response.headers_mut()) {
                    tracing::warn!(error = %e, "cannot rewrite a message-size status");
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_message_is_replaced_with_the_setting() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 17825808 bytes, the limit is: 16777216 bytes",
        );
        let e = explain(s, 16_777_216);
        assert_eq!(e.code(), Code::OutOfRange);
        assert_eq!(
            e.message(),
            "request message of 17825808 bytes is larger than limits.grpc_max_message_bytes = 16777216 bytes \
             (split the batch, or raise the limit in the broker's configuration)"
        );
        let other = explain(Status::out_of_range("sequence trimmed"), 1);
        assert_eq!(other.message(), "sequence trimmed");
    }
}
