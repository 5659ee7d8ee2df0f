//! A small plain-HTTP client (hyper-util's pooled legacy client) for the
//! delivery webhook and the delivery simulator.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self { inner: Client::builder(TokioExecutor::new()).build_http() }
    }
}

/// A request that got no HTTP answer: no connection, a broken one, or no
/// answer within the timeout. (A URL that cannot make a request is refused
/// by the configuration check before any request is made.)
#[derive(Debug, thiserror::Error)]
#[error("POST {url}: {message}")]
pub struct HttpError {
    url: String,
    message: String,
    timed_out: bool,
}

impl HttpError {
    /// Whether the request timed out (rather than failing to connect or breaking).
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }
}

impl HttpClient {
    /// POSTs a JSON body, with `authorization: Bearer <bearer>` when given;
    /// returns the status code.
    pub async fn post_json(&self, url: &str, body: Vec<u8>, bearer: Option<&client::Secret>) -> Result<u16, HttpError> {
        let err = |message: String, timed_out| HttpError { url: url.into(), message, timed_out };
        let mut req = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err(e.to_string(), false))?;
        if let Some(token) = bearer {
            // The error never shows the value.
            let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| err("the token is not printable ASCII".into(), false))?;
            v.set_sensitive(true);
            req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
        }
        let resp = tokio::time::timeout(TIMEOUT, self.inner.request(req))
            .await
            .map_err(|_| err(format!("no answer within {} s", TIMEOUT.as_secs()), true))?
            .map_err(|e| err(e.to_string(), false))?;
        Ok(resp.status().as_u16())
    }
}
