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
//!
//! **Blob buffer.** While [`Format::decode`] runs, the blobs of that one
//! body are written into one buffer (a thread-local, set for the duration
//! of the synchronous decode) and each [`Blob`] is a `Bytes` slice of it: a
//! PutRecords of 500 records makes one allocation for its data, not 500
//! (the per-blob `Vec`s and their frees were the largest share of the put
//! path's allocator time). The buffer never outgrows its body's size, so a
//! slice pins at most one request body's worth of memory, as gRPC's
//! zero-copy `bytes` fields do. Outside a decode, a blob gets its own
//! allocation.

use std::cell::RefCell;

use base64::engine::general_purpose::STANDARD;
use base64::{DecodeSliceError, Engine};
use bytes::{Bytes, BytesMut};
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
        // Base64 takes 4 characters for 3 bytes; CBOR byte strings are
        // their bytes plus a header.
        let blob_bytes_max = match self {
            Self::Json => body.len() / 4 * 3,
            Self::Cbor => body.len(),
        };
        let _scope = BlobScope::enter(blob_bytes_max);
        match self {
            Self::Json => serde_json::from_slice(body).map_err(|e| KinesisError::serialization(e.to_string())),
            Self::Cbor => ciborium::from_reader(body).map_err(|e| KinesisError::serialization(e.to_string())),
        }
    }

    /// Encodes an answer.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, KinesisError> {
        self.encode_sized(value, 0)
    }

    /// Encodes an answer into a buffer of `capacity` bytes to start with
    /// (a large answer's size known in advance saves growing it by doubling).
    pub fn encode_sized<T: Serialize>(self, value: &T, capacity: usize) -> Result<Vec<u8>, KinesisError> {
        let mut out = Vec::with_capacity(capacity);
        match self {
            Self::Json => serde_json::to_writer(&mut out, value)
                .map_err(|e| KinesisError::internal(format!("JSON encoding: {e}")))?,
            Self::Cbor => ciborium::into_writer(value, &mut out)
                .map_err(|e| KinesisError::internal(format!("CBOR encoding: {e}")))?,
        }
        Ok(out)
    }
}

/// The blob buffer of the body being decoded on this thread (see the module docs).
struct BlobBuffer {
    buf: BytesMut,
    /// What the body's blobs can take at most; reserved on the first blob,
    /// so a body without blobs allocates nothing.
    bytes_max: usize,
}

thread_local! {
    static BLOBS: RefCell<Option<BlobBuffer>> = const { RefCell::new(None) };
}

/// Installs a blob buffer for one decode; dropping it restores the one before.
struct BlobScope(Option<BlobBuffer>);

impl BlobScope {
    fn enter(bytes_max: usize) -> Self {
        let fresh = BlobBuffer { buf: BytesMut::new(), bytes_max };
        Self(BLOBS.with(|b| b.borrow_mut().replace(fresh)))
    }
}

impl Drop for BlobScope {
    fn drop(&mut self) {
        let before = self.0.take();
        BLOBS.with(|b| *b.borrow_mut() = before);
    }
}

/// `len` bytes written by `write` into the current blob buffer (or a fresh
/// allocation outside a decode); `write` answers how many it wrote.
fn blob_with<E>(len: usize, write: impl FnOnce(&mut [u8]) -> Result<usize, E>) -> Result<Bytes, E> {
    BLOBS.with(|b| match b.borrow_mut().as_mut() {
        Some(blobs) => {
            if blobs.buf.capacity() < len {
                blobs.buf.reserve(blobs.bytes_max.max(len));
            }
            blobs.bytes_max = blobs.bytes_max.saturating_sub(len);
            blobs.buf.resize(len, 0);
            let written = write(&mut blobs.buf)?;
            blobs.buf.truncate(written);
            // The written bytes leave the buffer; its spare capacity stays for the next blob.
            Ok(blobs.buf.split().freeze())
        }
        None => {
            let mut own = vec![0; len];
            let written = write(&mut own)?;
            own.truncate(written);
            Ok(Bytes::from(own))
        }
    })
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
        let decoded = blob_with(base64::decoded_len_estimate(v.len()), |out| STANDARD.decode_slice(v, out));
        decoded.map(Blob).map_err(|e| {
            let e = match e {
                DecodeSliceError::DecodeError(e) => e.to_string(),
                // The estimate is an upper bound of the decoded length.
                DecodeSliceError::OutputSliceTooSmall => "the decoded length exceeds its estimate".to_string(),
            };
            E::custom(format!("'{v:.32}' can not be converted to a Blob: {e}"))
        })
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        blob_with(v.len(), |out| {
            out.copy_from_slice(v);
            Ok(v.len())
        })
        .map(Blob)
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

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Batch {
        records: Vec<Shape>,
    }

    #[test]
    fn every_blob_of_a_body_keeps_its_own_bytes_in_the_shared_buffer() {
        let datas: Vec<Vec<u8>> = vec![vec![], b"a".to_vec(), (0..=255).collect(), vec![7; 3000], b"xy".to_vec()];
        let batch = |format: Format| {
            let records: Vec<Shape> =
                datas.iter().map(|d| Shape { data: Blob(Bytes::from(d.clone())), timestamp: Timestamp(1) }).collect();
            #[derive(Serialize)]
            #[serde(rename_all = "PascalCase")]
            struct Out<'a> {
                records: &'a [Shape],
            }
            format.encode(&Out { records: &records }).expect("encode")
        };
        for format in [Format::Json, Format::Cbor] {
            let decoded: Batch = format.decode(&batch(format)).expect("decode");
            let got: Vec<&[u8]> = decoded.records.iter().map(|r| &r.data.0[..]).collect();
            let want: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
            assert_eq!(got, want, "{format:?}");
            // One allocation: each non-empty blob starts where the one before it ends.
            for pair in decoded.records[1..].windows(2) {
                let (a, b) = (&pair[0].data.0, &pair[1].data.0);
                assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr(), "{format:?}: blobs share one buffer");
            }
        }
        // A JSON string with an escaped '/' (as some encoders write base64) decodes the same.
        let escaped: Shape = Format::Json.decode(br#"{"Data":"\/w==","Timestamp":1}"#).expect("escaped");
        assert_eq!(&escaped.data.0[..], &[0xff]);
        // Outside a decode a blob gets its own allocation.
        let alone: Blob = serde_json::from_str(r#""aGk=""#).expect("alone");
        assert_eq!(&alone.0[..], b"hi");
    }

    #[test]
    fn a_bad_base64_blob_is_named_as_the_base64_decoder_names_it() {
        let err = Format::Json.decode::<Shape>(br#"{"Data":"a!==","Timestamp":1}"#).expect_err("bad symbol");
        let cause = STANDARD.decode("a!==").expect_err("bad symbol").to_string();
        assert!(err.message.starts_with(&format!("'a!==' can not be converted to a Blob: {cause}")), "{}", err.message);
    }

    #[test]
    fn an_empty_body_is_an_empty_structure() {
        #[derive(Deserialize)]
        struct Empty {}
        Format::Json.decode::<Empty>(b"").expect("json");
        Format::Cbor.decode::<Empty>(b"").expect("cbor");
    }
}
