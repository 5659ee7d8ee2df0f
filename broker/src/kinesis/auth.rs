//! AWS Signature Version 4 for the Kinesis API, in two modes
//! (`kinesis.auth`):
//!
//! - **permissive**: a request must carry a well-formed SigV4
//!   `Authorization` header (or the presigned query parameters); the
//!   signature is not checked. Emulators do this; it is the development
//!   default.
//! - **strict**: the signature is recomputed with the secret of the access
//!   key named in the credential scope (`kinesis.access_keys`) and compared
//!   in constant time (`hmac`'s `verify_slice`). A request more than
//!   [`SKEW_MAX_MS`] away from the broker's clock, or signed for another
//!   region or service, is refused.
//!
//! Header and presigned-query forms are both understood, as is a payload
//! sent as `aws-chunked` (`x-amz-content-sha256:
//! STREAMING-AWS4-HMAC-SHA256-PAYLOAD`), whose chunk signatures are chained
//! from the request's signature; its decoded body is what the operation
//! reads. Errors carry AWS's names: `MissingAuthenticationTokenException`,
//! `IncompleteSignatureException`, `InvalidSignatureException`,
//! `UnrecognizedClientException`.

use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::error::KinesisError;
use crate::config::{AccessKey, KinesisAuth};

/// Largest clock difference accepted in strict mode.
pub const SKEW_MAX_MS: u64 = 5 * 60 * 1000;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const STREAMING: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
/// SigV4's URI encoding keeps only the unreserved characters.
const SIGV4_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The access key id of the credential scope.
    pub access_key_id: String,
    /// The region of the credential scope.
    pub region: String,
}

/// The signature parts of a request, from its header or its query.
#[derive(Debug)]
struct Signed {
    access_key_id: String,
    /// `yyyymmdd/region/service/aws4_request`
    scope: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    /// `X-Amz-Date` (or the `Date` header).
    amz_date: String,
    /// Presigned: the query parameters other than the signature, and how
    /// long the URL is valid.
    presigned: Option<u64>,
}

fn incomplete(message: impl Into<String>) -> KinesisError {
    KinesisError::client("IncompleteSignatureException", message)
}

fn invalid_signature(message: impl Into<String>) -> KinesisError {
    KinesisError::client("InvalidSignatureException", message)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The query parameters, percent-decoded, in request order.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn scope_parts(credential: &str) -> Result<(String, String, String, String, String), KinesisError> {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() && !date.is_empty() => {
            Ok((key.to_string(), parts[1..].join("/"), date.to_string(), region.to_string(), service.to_string()))
        }
        _ => Err(incomplete(format!(
            "Credential should be scoped to a valid region, service and date: \
             <key>/<yyyymmdd>/<region>/kinesis/aws4_request, not '{credential}'."
        ))),
    }
}

/// Reads the signature parts; permissive mode stops here.
fn parse(headers: &HeaderMap, uri: &Uri) -> Result<Signed, KinesisError> {
    let query = query_pairs(uri);
    let q = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let authorization = header(headers, "authorization");
    match (authorization, q("X-Amz-Algorithm")) {
        (Some(_), Some(_)) => Err(invalid_signature(
            "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.",
        )),
        (None, None) => {
            Err(KinesisError::client("MissingAuthenticationTokenException", "Missing Authentication Token"))
        }
        (Some(auth), None) => {
            let Some(params) = auth.strip_prefix(ALGORITHM).filter(|p| p.starts_with(' ')) else {
                return Err(incomplete(format!(
                    "Authorization header requires the {ALGORITHM} algorithm. Authorization={auth}"
                )));
            };
            let mut credential = None;
            let mut signed_headers = None;
            let mut signature = None;
            for part in params.split(',') {
                match part.trim().split_once('=') {
                    Some(("Credential", v)) => credential = Some(v),
                    Some(("SignedHeaders", v)) => signed_headers = Some(v),
                    Some(("Signature", v)) => signature = Some(v),
                    _ => {}
                }
            }
            let mut missing = Vec::new();
            for (name, v) in [("Credential", credential), ("Signature", signature), ("SignedHeaders", signed_headers)] {
                if v.is_none_or(str::is_empty) {
                    missing.push(format!("Authorization header requires '{name}' parameter."));
                }
            }
            let amz_date = header(headers, "x-amz-date").or_else(|| header(headers, "date"));
            if amz_date.is_none() {
                missing.push(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into(),
                );
            }
            if !missing.is_empty() {
                return Err(incomplete(format!("{} Authorization={auth}", missing.join(" "))));
            }
            let (access_key_id, scope, date, region, service) = scope_parts(credential.unwrap_or_default())?;
            Ok(Signed {
                access_key_id,
                scope,
                date,
                region,
                service,
                signed_headers: signed_headers.unwrap_or_default().split(';').map(str::to_string).collect(),
                signature: signature.unwrap_or_default().to_string(),
                amz_date: amz_date.unwrap_or_default().to_string(),
                presigned: None,
            })
        }
        (None, Some(algorithm)) => {
            if algorithm != ALGORITHM {
                return Err(incomplete(format!("X-Amz-Algorithm only supports {ALGORITHM}, not '{algorithm}'.")));
            }
            let mut missing = Vec::new();
            for name in ["X-Amz-Credential", "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Amz-Date"] {
                if q(name).is_none_or(str::is_empty) {
                    missing.push(format!("AWS query-string parameters must include '{name}'."));
                }
            }
            if !missing.is_empty() {
                return Err(incomplete(missing.join(" ")));
            }
            let (access_key_id, scope, date, region, service) = scope_parts(q("X-Amz-Credential").unwrap_or_default())?;
            let expires = q("X-Amz-Expires").map_or(Ok(604_800), |e| {
                e.parse::<u64>()
                    .map_err(|_| incomplete(format!("X-Amz-Expires must be a number of seconds, not '{e}'.")))
            })?;
            Ok(Signed {
                access_key_id,
                scope,
                date,
                region,
                service,
                signed_headers: q("X-Amz-SignedHeaders").unwrap_or_default().split(';').map(str::to_string).collect(),
                signature: q("X-Amz-Signature").unwrap_or_default().to_string(),
                amz_date: q("X-Amz-Date").unwrap_or_default().to_string(),
                presigned: Some(expires),
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes()).finalize().into_bytes();
    let k = hmac(&k, region.as_bytes()).finalize().into_bytes();
    let k = hmac(&k, service.as_bytes()).finalize().into_bytes();
    hmac(&k, b"aws4_request").finalize().into_bytes().to_vec()
}

/// `X-Amz-Date` (`yyyymmddThhmmssZ`) or an RFC 2822 `Date`, in ms since the epoch.
fn parse_amz_date(s: &str) -> Option<u64> {
    let ts = match s.strip_suffix('Z') {
        Some(basic) => {
            jiff::fmt::strtime::parse("%Y%m%dT%H%M%S%z", format!("{basic}+0000")).ok()?.to_timestamp().ok()?
        }
        None => jiff::fmt::rfc2822::parse(s).ok()?.timestamp(),
    };
    u64::try_from(ts.as_millisecond()).ok()
}

fn amz_date_text(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| ms.to_string(), |t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
}

/// The canonical request of SigV4.
fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed: &Signed,
    payload_hash: &str,
) -> Result<String, KinesisError> {
    let path = uri.path();
    let path = if path.is_empty() { "/" } else { path };
    let canonical_path = path
        .split('/')
        .map(|seg| utf8_percent_encode(&percent_decode_str(seg).decode_utf8_lossy(), SIGV4_SET).to_string())
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<(String, String)> = query_pairs(uri)
        .into_iter()
        .filter(|(k, _)| signed.presigned.is_none() || k != "X-Amz-Signature")
        .map(|(k, v)| (utf8_percent_encode(&k, SIGV4_SET).to_string(), utf8_percent_encode(&v, SIGV4_SET).to_string()))
        .collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in &signed.signed_headers {
        let value = if name == "host" {
            // HTTP/2 has no Host header: clients sign the :authority.
            header(headers, "host").map(str::to_string).or_else(|| uri.authority().map(|a| a.to_string()))
        } else {
            let values: Vec<&str> = headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let Some(value) = value else {
            return Err(invalid_signature(format!("The signed header '{name}' is not in the request.")));
        };
        let collapsed = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{collapsed}\n"));
    }
    Ok(format!(
        "{method}\n{canonical_path}\n{query}\n{canonical_headers}\n{}\n{payload_hash}",
        signed.signed_headers.join(";")
    ))
}

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `kinesis.auth`.
    pub mode: KinesisAuth,
    /// `kinesis.access_keys`.
    pub keys: &'a [AccessKey],
    /// `kinesis.region`.
    pub region: &'a str,
    /// The broker's clock, ms since the Unix epoch.
    pub now_ms: u64,
}

/// Checks a request's signature as `policy` says and returns who signed it
/// and the body the operation reads (decoded from `aws-chunked`).
pub fn authenticate(
    policy: Policy<'_>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Signer, Bytes), KinesisError> {
    let Policy { mode, keys, region, now_ms } = policy;
    let signed = parse(headers, uri)?;
    let content_sha = header(headers, "x-amz-content-sha256");
    let streaming = content_sha == Some(STREAMING);
    let signer = Signer { access_key_id: signed.access_key_id.clone(), region: signed.region.clone() };
    if mode == KinesisAuth::Permissive {
        let body = if streaming { decode_chunks(&body, None)? } else { body };
        return Ok((signer, body));
    }
    let Some(key) = keys.iter().find(|k| k.access_key_id == signed.access_key_id) else {
        return Err(KinesisError::client(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if signed.service != "kinesis" {
        return Err(invalid_signature(format!(
            "Credential should be scoped to correct service: 'kinesis', not '{}'.",
            signed.service
        )));
    }
    if signed.region != region {
        return Err(invalid_signature(format!(
            "Credential should be scoped to a valid region, not '{}' (this broker is {region}).",
            signed.region
        )));
    }
    let Some(at_ms) = parse_amz_date(&signed.amz_date) else {
        return Err(incomplete(format!("'{}' is not a valid X-Amz-Date (yyyyMMdd'T'HHmmss'Z').", signed.amz_date)));
    };
    if !signed.amz_date.starts_with(&signed.date) && signed.amz_date.ends_with('Z') {
        return Err(invalid_signature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'.",
            signed.date,
            &signed.amz_date[..8.min(signed.amz_date.len())]
        )));
    }
    match signed.presigned {
        Some(expires_s) if now_ms > at_ms.saturating_add(expires_s.saturating_mul(1000)) => {
            return Err(invalid_signature(format!(
                "Signature expired: the presigned request expired at {} (now {}).",
                amz_date_text(at_ms + expires_s * 1000),
                amz_date_text(now_ms)
            )));
        }
        Some(_) if at_ms > now_ms.saturating_add(SKEW_MAX_MS) => {
            return Err(invalid_signature(format!(
                "Signature not yet current: {} is still later than {} ({} + 5 min.)",
                signed.amz_date,
                amz_date_text(now_ms + SKEW_MAX_MS),
                amz_date_text(now_ms)
            )));
        }
        Some(_) => {}
        None if now_ms.abs_diff(at_ms) > SKEW_MAX_MS => {
            let (relation, bound) = if at_ms < now_ms {
                (
                    "now earlier than",
                    format!("{} ({} - 5 min.)", amz_date_text(now_ms - SKEW_MAX_MS), amz_date_text(now_ms)),
                )
            } else {
                (
                    "still later than",
                    format!("{} ({} + 5 min.)", amz_date_text(now_ms + SKEW_MAX_MS), amz_date_text(now_ms)),
                )
            };
            return Err(invalid_signature(format!("Signature expired: {} is {relation} {bound}", signed.amz_date)));
        }
        None => {}
    }
    let payload_hash = match content_sha {
        Some(h) if h == STREAMING || h == UNSIGNED => h.to_string(),
        Some(h) => {
            if !h.eq_ignore_ascii_case(&sha256_hex(&body)) {
                return Err(invalid_signature(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
            h.to_ascii_lowercase()
        }
        None => sha256_hex(&body),
    };
    let canonical = canonical_request(method, uri, headers, &signed, &payload_hash)?;
    let string_to_sign =
        format!("{ALGORITHM}\n{}\n{}\n{}", signed.amz_date, signed.scope, sha256_hex(canonical.as_bytes()));
    let key_bytes = signing_key(&key.secret_access_key, &signed.date, &signed.region, &signed.service);
    let mismatch = || {
        invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret \
             Access Key and signing method. Consult the service documentation for details.",
        )
    };
    let provided = unhex(&signed.signature).ok_or_else(mismatch)?;
    hmac(&key_bytes, string_to_sign.as_bytes()).verify_slice(&provided).map_err(|_| mismatch())?;
    let body = if streaming {
        decode_chunks(
            &body,
            Some(ChunkChain {
                key: key_bytes,
                amz_date: signed.amz_date.clone(),
                scope: signed.scope.clone(),
                previous: signed.signature.clone(),
            }),
        )?
    } else {
        body
    };
    Ok((signer, body))
}

/// What chains the signatures of an `aws-chunked` body.
struct ChunkChain {
    key: Vec<u8>,
    amz_date: String,
    scope: String,
    previous: String,
}

/// Decodes an `aws-chunked` body (`<hex size>;chunk-signature=<sig>\r\n<data>\r\n`
/// … ending with a chunk of size 0), checking each chunk's signature when
/// `chain` is given.
fn decode_chunks(body: &[u8], mut chain: Option<ChunkChain>) -> Result<Bytes, KinesisError> {
    let bad = |why: &str| KinesisError::serialization(format!("malformed aws-chunked body: {why}"));
    let empty_hash = sha256_hex(b"");
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("a chunk header without CRLF"))?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("a chunk header that is not text"))?;
        let (size, signature) = match line.split_once(';') {
            Some((size, ext)) => (size, ext.strip_prefix("chunk-signature=")),
            None => (line, None),
        };
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("a chunk size that is not hex"))?;
        rest = &rest[line_end + 2..];
        if rest.len() < size {
            return Err(bad("a chunk longer than the body"));
        }
        let data = &rest[..size];
        if let Some(chain) = chain.as_mut() {
            let signature =
                signature.ok_or_else(|| invalid_signature("An aws-chunked chunk has no chunk-signature."))?;
            let string_to_sign = format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{empty_hash}\n{}",
                chain.amz_date,
                chain.scope,
                chain.previous,
                sha256_hex(data)
            );
            let provided = unhex(signature).ok_or_else(|| invalid_signature("A chunk signature is not hex."))?;
            hmac(&chain.key, string_to_sign.as_bytes())
                .verify_slice(&provided)
                .map_err(|_| invalid_signature("A chunk signature does not match the chunk."))?;
            chain.previous = signature.to_string();
        }
        out.extend_from_slice(data);
        rest = &rest[size..];
        if size == 0 {
            return Ok(Bytes::from(out));
        }
        rest = rest.strip_prefix(b"\r\n".as_slice()).ok_or_else(|| bad("a chunk not followed by CRLF"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signs like the SDKs do, for the tests.
    fn sign(secret: &str, amz_date: &str, body: &[u8], region: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:4567".parse().expect("value"));
        h.insert("x-amz-date", amz_date.parse().expect("value"));
        h.insert("x-amz-target", "Kinesis_20131202.ListStreams".parse().expect("value"));
        h.insert("content-type", "application/x-amz-json-1.1".parse().expect("value"));
        let date = &amz_date[..8];
        let scope = format!("{date}/{region}/kinesis/aws4_request");
        let signed = Signed {
            access_key_id: "AKID".into(),
            scope: scope.clone(),
            date: date.into(),
            region: region.into(),
            service: "kinesis".into(),
            signed_headers: ["content-type", "host", "x-amz-date", "x-amz-target"].map(String::from).to_vec(),
            signature: String::new(),
            amz_date: amz_date.into(),
            presigned: None,
        };
        let uri: Uri = "/".parse().expect("uri");
        let canonical = canonical_request(&Method::POST, &uri, &h, &signed, &sha256_hex(body)).expect("canonical");
        let sts = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
        let sig = hex(&hmac(&signing_key(secret, date, region, "kinesis"), sts.as_bytes()).finalize().into_bytes());
        h.insert(
            "authorization",
            format!("{ALGORITHM} Credential=AKID/{scope}, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={sig}")
                .parse()
                .expect("value"),
        );
        h
    }

    fn keys() -> Vec<AccessKey> {
        vec![AccessKey { access_key_id: "AKID".into(), secret_access_key: "secret".into() }]
    }

    const NOW: &str = "20261128T064934Z";

    fn check(mode: KinesisAuth, h: &HeaderMap, body: &[u8], now_ms: u64) -> Result<Bytes, KinesisError> {
        let uri: Uri = "/".parse().expect("uri");
        let keys = keys();
        let policy = Policy { mode, keys: &keys, region: "us-east-1", now_ms };
        authenticate(policy, &Method::POST, &uri, h, Bytes::copy_from_slice(body)).map(|(_, b)| b)
    }

    #[test]
    fn the_aws_documentation_signing_key_example() {
        // From the AWS SigV4 documentation ("Examples of how to derive a signing key").
        let k = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
        assert_eq!(hex(&k), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }

    #[test]
    fn strict_mode_accepts_a_good_signature_and_refuses_bad_ones() {
        let now = parse_amz_date(NOW).expect("date");
        let body = br#"{"Limit":1}"#;
        let h = sign("secret", NOW, body, "us-east-1");
        check(KinesisAuth::Strict, &h, body, now).expect("good signature");
        let kind = |r: Result<Bytes, KinesisError>| r.expect_err("refused").kind;
        assert_eq!(kind(check(KinesisAuth::Strict, &h, br#"{"Limit":2}"#, now)), "InvalidSignatureException");
        let wrong = sign("not-the-secret", NOW, body, "us-east-1");
        assert_eq!(kind(check(KinesisAuth::Strict, &wrong, body, now)), "InvalidSignatureException");
        let err = check(KinesisAuth::Strict, &h, body, now + SKEW_MAX_MS + 1).expect_err("stale");
        assert!(err.message.starts_with("Signature expired"), "{}", err.message);
        let other_region = sign("secret", NOW, body, "eu-west-1");
        assert_eq!(kind(check(KinesisAuth::Strict, &other_region, body, now)), "InvalidSignatureException");
        let mut unknown = h.clone();
        let auth = unknown["authorization"].to_str().expect("text").replace("AKID/", "OTHER/");
        unknown.insert("authorization", auth.parse().expect("value"));
        assert_eq!(kind(check(KinesisAuth::Strict, &unknown, body, now)), "UnrecognizedClientException");
        check(KinesisAuth::Permissive, &wrong, body, now + 10 * SKEW_MAX_MS).expect("permissive ignores signatures");
    }

    #[test]
    fn missing_or_malformed_authorization_is_named() {
        let mut h = HeaderMap::new();
        assert_eq!(
            check(KinesisAuth::Permissive, &h, b"", 0).expect_err("none").kind,
            "MissingAuthenticationTokenException"
        );
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/kinesis/aws4_request".parse().expect("v"),
        );
        let err = check(KinesisAuth::Permissive, &h, b"", 0).expect_err("incomplete");
        assert_eq!(err.kind, "IncompleteSignatureException");
        assert!(err.message.contains("'Signature'") && err.message.contains("X-Amz-Date"), "{}", err.message);
    }

    #[test]
    fn aws_chunked_bodies_are_decoded_and_their_chunks_checked() {
        let plain = b"5;chunk-signature=00\r\nhello\r\n0;chunk-signature=00\r\n\r\n";
        assert_eq!(decode_chunks(plain, None).expect("permissive"), Bytes::from_static(b"hello"));
        let key = signing_key("secret", "20261128", "us-east-1", "kinesis");
        let scope = "20261128/us-east-1/kinesis/aws4_request";
        let sig = |prev: &str, data: &[u8]| {
            let sts =
                format!("AWS4-HMAC-SHA256-PAYLOAD\n{NOW}\n{scope}\n{prev}\n{}\n{}", sha256_hex(b""), sha256_hex(data));
            hex(&hmac(&key, sts.as_bytes()).finalize().into_bytes())
        };
        let s1 = sig("seed", b"hello");
        let s2 = sig(&s1, b"");
        let body = format!("5;chunk-signature={s1}\r\nhello\r\n0;chunk-signature={s2}\r\n\r\n");
        let chain =
            || ChunkChain { key: key.clone(), amz_date: NOW.into(), scope: scope.into(), previous: "seed".into() };
        assert_eq!(decode_chunks(body.as_bytes(), Some(chain())).expect("signed"), Bytes::from_static(b"hello"));
        let tampered = body.replace("hello", "jello");
        assert_eq!(
            decode_chunks(tampered.as_bytes(), Some(chain())).expect_err("tampered").kind,
            "InvalidSignatureException"
        );
    }
}
