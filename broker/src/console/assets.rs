//! The console's page, script and style sheet, compiled into the binary
//! from `broker/ui/` (plain HTML, CSS and JavaScript: nothing is built, so
//! the files in the repository are exactly what is served).
//!
//! Every answer carries a Content-Security-Policy that allows only this
//! origin (no external fonts, scripts or frames) and `no-cache`, so a
//! browser picks up a new broker's console at once.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// The policy: scripts, styles, images and requests from this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `GET /ui`: the single page; the part after `#` picks the view.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/{file}`: the script and the style sheet.
pub async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "style.css" => asset("text/css; charset=utf-8", STYLE_CSS),
        "index.html" => asset("text/html; charset=utf-8", INDEX_HTML),
        _ => ApiError::not_found(format!("no console file {file:?}")).into_response(),
    }
}
