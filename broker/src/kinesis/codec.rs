//! The two body encodings of the Kinesis API: `application/x-amz-json-1.1`
//! and `application/x-amz-cbor-1.1`, through serde with the same member
//! names. The answer uses the request's encoding.
//!
//! Blobs ([`Blob`]) are base64 strings in JSON and byte strings in CBOR.
//! Timestamps ([`Timestamp`]) are epoch seconds with a millisecond fraction
//! in JSON (a plain decimal, never scientific notation) and CBOR tag 1 over
//! integer epoch milliseconds in CBOR, as the AWS SDK for Java sends them;
//! on input a float or seconds are accepted too. The two encodings are told
//! apart by serde's `is_human_readable` (true for JSON, false for CBOR).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::KinesisError;

/// The JSON content type.
pub const JSON: &str = "application/x-amz-json-1.1";
/// The CBOR content type.
pub const CBOR: &str = "application/x-amz-cbor-1.1";

/// Milliseconds values of a CBOR or JSON timestamp at or above this are
/// read as milliseconds, below as seconds (1e11 s is in the year 5138; 1e11
/// ms is in 1973).
const MILLIS_FROM: f64 = 1e11;

/// A request's body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-amz-json-1.1` (and anything that is not CBOR).
    Json,
    /// `application/x-amz-cbor-1.1`.
    Cbor,
}

impl Format {
    /// The encoding a `Content-Type` asks for.
    pub fn of(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.trim().to_ascii_lowercase().starts_with(CBOR) => Self::Cbor,
            _ => Self::Json,
        }
    }

    /// The `Content-Type` of an answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Cbor => CBOR,
        }
    }

    /// Decodes a request body; an empty body is an empty structure.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, KinesisError> {
        let empty_json: &[u8] = b"{}";
        let empty_cbor: &[u8] = &[0xa0];
        let body = match (body.is_empty(), self) {
            (true, Self::Json) => empty_json,
            (true, Self::Cbor) => empty_cbor,
            (false, _) => body,
        };
        match self {
            Self::Json => serde_json::from_slice(body).map_err(|e| KinesisError::serialization(e.to_string())),
            Self::Cbor => ciborium::from_reader(body).map_err(|e| KinesisError::serialization(e.to_string())),
        }
    }

    /// Encodes an answer.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, KinesisError> {
        match self {
            Self::Json => serde_json::to_vec(value).map_err(|e| KinesisError::internal(format!("JSON encoding: {e}"))),
            Self::Cbor => {
                let mut out = Vec::new();
                ciborium::into_writer(value, &mut out)
                    .map_err(|e| KinesisError::internal(format!("CBOR encoding: {e}")))?;
                Ok(out)
            }
        }
    }
}

/// A blob member (`Data`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Bytes);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&STANDARD.encode(&self.0)) } else { s.serialize_bytes(&self.0) }
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a blob (base64 in JSON, a byte string in CBOR)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        if v.len() % 4 != 0 {
            return Err(E::custom(format!(
                "'{v:.32}' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes \
                 but found: {}",
                v.len()
            )));
        }
        STANDARD
            .decode(v)
            .map(|b| Blob(Bytes::from(b)))
            .map_err(|e| E::custom(format!("'{v:.32}' can not be converted to a Blob: {e}")))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(Bytes::from(v)))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() { d.deserialize_str(BlobVisitor) } else { d.deserialize_bytes(BlobVisitor) }
    }
}

/// A timestamp member, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // Seconds with the millisecond fraction; for epoch times f64 has
            // the digits, and serde_json writes such values without exponent.
            s.serialize_f64(self.0 as f64 / 1000.0)
        } else {
            ciborium::tag::Required::<u64, 1>(self.0).serialize(s)
        }
    }
}

/// A number as JSON or CBOR may carry it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

impl Number {
    /// Milliseconds: values below [`MILLIS_FROM`] are seconds.
    fn millis(self, unit_is_seconds: bool) -> Result<u64, String> {
        let v = match self {
            Number::Unsigned(v) => v as f64,
            Number::Signed(v) => v as f64,
            Number::Float(v) => v,
            Number::Text(t) => t.trim().parse::<f64>().map_err(|_| format!("{t:?} is not an epoch time"))?,
        };
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{v} is not an epoch time"));
        }
        let ms = if unit_is_seconds || v < MILLIS_FROM { v * 1000.0 } else { v };
        Ok(ms.round() as u64)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // JSON 1.1 timestamps are epoch seconds.
            Number::deserialize(d)?.millis(true).map(Timestamp).map_err(de::Error::custom)
        } else {
            // CBOR: tag 1 (or untagged) over integer milliseconds from the
            // Java SDK, seconds from RFC 8949 encoders.
            let ciborium::tag::Captured(_, n) = ciborium::tag::Captured::<Number>::deserialize(d)?;
            n.millis(false).map(Timestamp).map_err(de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Shape {
        data: Blob,
        timestamp: Timestamp,
    }

    #[test]
    fn json_blobs_are_base64_and_times_are_seconds_without_exponent() {
        let v = Shape { data: Blob(Bytes::from_static(b"hi")), timestamp: Timestamp(1_767_225_600_123) };
        let text = String::from_utf8(Format::Json.encode(&v).expect("encode")).expect("utf-8");
        assert_eq!(text, r#"{"Data":"aGk=","Timestamp":1767225600.123}"#);
        assert_eq!(Format::Json.decode::<Shape>(text.as_bytes()).expect("decode"), v);
        let whole: Shape = Format::Json.decode(br#"{"Data":"","Timestamp":1767225600}"#).expect("integer seconds");
        assert_eq!(whole.timestamp, Timestamp(1_767_225_600_000));
        let err = Format::Json.decode::<Shape>(br#"{"Data":"23456","Timestamp":1}"#).expect_err("bad base64");
        assert!(err.message.contains("multiple of 4"), "{}", err.message);
        assert_eq!(err.kind, "SerializationException");
    }

    #[test]
    fn cbor_blobs_are_bytes_and_times_are_tag_1_milliseconds() {
        let v = Shape { data: Blob(Bytes::from_static(&[0, 255])), timestamp: Timestamp(1_767_225_600_123) };
        let bytes = Format::Cbor.encode(&v).expect("encode");
        // "Data" then a byte string 0x42 0x00 0xff; "Timestamp" then tag 1 (0xc1) over an integer (0x1b).
        assert!(bytes.windows(3).any(|w| w == [0x42, 0x00, 0xff]), "{bytes:x?}");
        let at = bytes.iter().position(|&b| b == 0xc1).expect("tag 1");
        assert_eq!(bytes[at + 1], 0x1b, "integer milliseconds, never a float under tag 1");
        assert_eq!(Format::Cbor.decode::<Shape>(&bytes).expect("decode"), v);
        // A float of seconds under tag 1, as RFC 8949 encoders write it.
        let mut rfc = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![
                (ciborium::Value::Text("Data".into()), ciborium::Value::Bytes(vec![1])),
                (
                    ciborium::Value::Text("Timestamp".into()),
                    ciborium::Value::Tag(1, Box::new(ciborium::Value::Float(1_767_225_600.5))),
                ),
            ]),
            &mut rfc,
        )
        .expect("encode");
        assert_eq!(Format::Cbor.decode::<Shape>(&rfc).expect("decode").timestamp, Timestamp(1_767_225_600_500));
    }

    #[test]
    fn an_empty_body_is_an_empty_structure() {
        #[derive(Deserialize)]
        struct Empty {}
        Format::Json.decode::<Empty>(b"").expect("json");
        Format::Cbor.decode::<Empty>(b"").expect("cbor");
    }
}
