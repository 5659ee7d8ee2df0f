//! The framed produce protocol ("wire", version 1): PutRecord and
//! PutRecords over one TCP or TLS connection with length-prefixed binary
//! frames, as Kafka's and Iggy's clients speak to their brokers. It exists
//! for cost: a unary gRPC call pays HTTP/2 stream set-up, HPACK headers,
//! flow control and protobuf on both ends (about 8 µs of broker CPU for a
//! call that does nothing); a frame here is parsed in place and answered
//! with a few bytes. The gRPC API stays the full API; this one only produces.
//!
//! # Frames
//!
//! Every frame, both ways, is `u32 length` (of what follows), `u8 kind`,
//! then the kind's body. Integers are big-endian; strings are UTF-8 with a
//! length prefix (`s8`: `u8` length, `s16`: `u16` length); `data` is
//! `u32` length then the bytes. A frame longer than the broker's limit
//! (`limits.grpc_max_message_bytes`) ends the connection with an error.
//!
//! Client to broker:
//! - `HELLO` (1), once, first: `"SBW1"`, `u16 version`, `s16 token` (empty:
//!   none; the broker authenticates it as `authorization: Bearer <token>`,
//!   or the TLS client certificate when empty).
//! - `PUT_RECORD` (2): `u64 id`, `s16 stream`, one record.
//! - `PUT_RECORDS` (3): `u64 id`, `s16 stream`, `u16 count`, `count` records.
//! - `PING` (4): `u64 id`. Answered in order like a request, but neither
//!   rate-limited nor written anywhere: the client's keepalive (a peer that
//!   does not answer is gone), and traffic that keeps an idle connection
//!   from the broker's idle timeout.
//!
//! A record is `s16 partition_key`, `s16 explicit_hash_key` (empty: none),
//! `data`.
//!
//! Broker to client:
//! - `READY` (129), the answer to `HELLO`: `u16 version`, `u32 max frame
//!   bytes`, `u32 in-flight window` (requests the broker reads ahead of
//!   their answers; beyond it, it stops reading).
//! - `RECORD` (130), PutRecord's answer: `u64 id`, `s8 shard_id`, `u64
//!   sequence_number`.
//! - `RECORDS` (131), PutRecords's answer: `u64 id`, `u16 count`, then per
//!   record in request order `u8 ok`: 1, `s8 shard_id`, `u64
//!   sequence_number`; or 0, `s8 error_code`, `u64 retry_after_ms`, `s16
//!   message`.
//! - `ERROR` (132): `u64 id` (0: the connection's, which then closes),
//!   `s8 kind` (the broker's error kind, as gRPC's `x-error-kind`), `u64
//!   retry_after_ms`, `s16 message` (which names the bad field).
//! - `PONG` (133), PING's answer: `u64 id`.
//!
//! Answers come in request order. Acknowledged means what it means on the
//! gRPC API: the broker's durability mode decides (fsynced by default).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version this code speaks.
pub const VERSION: u16 = 1;
/// The first bytes of a `HELLO` body.
pub const MAGIC: &[u8; 4] = b"SBW1";
/// The ALPN protocol of a TLS connection.
pub const ALPN: &[u8] = b"sbw/1";
/// Bytes of a frame's length prefix.
pub const LENGTH_BYTES: usize = 4;

const HELLO: u8 = 1;
const PUT_RECORD: u8 = 2;
const PUT_RECORDS: u8 = 3;
const PING: u8 = 4;
const READY: u8 = 129;
const RECORD: u8 = 130;
const RECORDS: u8 = 131;
const ERROR: u8 = 132;
const PONG: u8 = 133;

/// One record of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Routes the record (MD5) unless `explicit_hash_key` is given.
    pub partition_key: String,
    /// A decimal hash key that replaces the key's MD5.
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Bytes,
}

/// A frame from client to broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The first frame of a connection.
    Hello {
        /// The client's protocol version.
        version: u16,
        /// A bearer token, if the client has one.
        token: Option<String>,
    },
    /// One record; its failure is the request's error.
    PutRecord {
        /// Echoed in the answer.
        id: u64,
        /// The stream's name.
        stream: String,
        /// The record.
        record: Record,
    },
    /// A batch; each record succeeds or fails alone.
    PutRecords {
        /// Echoed in the answer.
        id: u64,
        /// The stream's name.
        stream: String,
        /// The records.
        records: Vec<Record>,
    },
    /// A keepalive, answered with [`Response::Pong`] in order.
    Ping {
        /// Echoed in the answer.
        id: u64,
    },
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// `shardId-NNNNNNNNNNNN`.
    pub shard_id: String,
    /// Its sequence number in the shard.
    pub sequence_number: u64,
}

/// Why one record of a batch was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// As gRPC's `PutRecordsResultEntry.error_code`.
    pub error_code: String,
    /// When a retry can succeed (0: no hint).
    pub retry_after_ms: u64,
    /// What happened, naming the shard.
    pub message: String,
}

/// A frame from broker to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer to `HELLO`.
    Ready {
        /// The broker's protocol version.
        version: u16,
        /// The largest frame the broker reads.
        max_frame_bytes: u32,
        /// Requests the broker reads ahead of their answers.
        in_flight: u32,
    },
    /// PutRecord's answer.
    Record {
        /// The request's id.
        id: u64,
        /// Where it landed.
        appended: Appended,
    },
    /// PutRecords's answer, one result per record in request order.
    Records {
        /// The request's id.
        id: u64,
        /// The results.
        results: Vec<Result<Appended, Failure>>,
    },
    /// A request failed whole, or (id 0) the connection ends.
    Error {
        /// The request's id; 0 for the connection.
        id: u64,
        /// The broker's error kind (`InvalidArgument`, `Throttled`, ...).
        kind: String,
        /// When a retry can succeed (0: no hint).
        retry_after_ms: u64,
        /// What is wrong; names the field.
        message: String,
    },
    /// PING's answer.
    Pong {
        /// The PING's id.
        id: u64,
    },
}

/// A frame that cannot be read; `field` names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The frame field, as `records[2].partition_key`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for DecodeError {}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> DecodeError {
    DecodeError { field: field.into(), reason: reason.into() }
}

/// Splits the next whole frame (its kind and body) off `buf`, or `None`
/// until one has arrived; a length over `max` is an error before any of
/// the frame is buffered.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(bad("frame length", "is 0; a frame has at least its kind"));
    }
    if len > max {
        return Err(bad("frame length", format!("{len} bytes, more than the broker's {max}")));
    }
    if buf.len() < LENGTH_BYTES + len {
        buf.reserve(LENGTH_BYTES + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_BYTES);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Reads typed fields off a frame, naming the field that runs short.
struct Reader {
    frame: Bytes,
}

impl Reader {
    fn need(&self, n: usize, field: &dyn Fn() -> String) -> Result<(), DecodeError> {
        if self.frame.len() < n {
            return Err(bad(field(), format!("frame ends {} bytes short", n - self.frame.len())));
        }
        Ok(())
    }

    fn u8(&mut self, field: &dyn Fn() -> String) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.frame.get_u8())
    }

    fn u16(&mut self, field: &dyn Fn() -> String) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.frame.get_u16())
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.frame.get_u32())
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.frame.get_u64())
    }

    fn bytes(&mut self, len: usize, field: &dyn Fn() -> String) -> Result<Bytes, DecodeError> {
        self.need(len, field)?;
        Ok(self.frame.split_to(len))
    }

    fn string(&mut self, len: usize, field: &dyn Fn() -> String) -> Result<String, DecodeError> {
        let raw = self.bytes(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| bad(field(), "is not valid UTF-8"))
    }

    fn s8(&mut self, field: &dyn Fn() -> String) -> Result<String, DecodeError> {
        let len = self.u8(field)? as usize;
        self.string(len, field)
    }

    fn s16(&mut self, field: &dyn Fn() -> String) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        self.string(len, field)
    }

    fn record(&mut self, prefix: &str) -> Result<Record, DecodeError> {
        let partition_key = self.s16(&|| format!("{prefix}partition_key"))?;
        let explicit_hash_key = self.s16(&|| format!("{prefix}explicit_hash_key"))?;
        let field = || format!("{prefix}data");
        let len = self.u32(&field)? as usize;
        let data = self.bytes(len, &field)?;
        let explicit_hash_key = (!explicit_hash_key.is_empty()).then_some(explicit_hash_key);
        Ok(Record { partition_key, explicit_hash_key, data })
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.frame.len() {
            0 => Ok(()),
            n => Err(bad("frame length", format!("{n} bytes left over after the last field"))),
        }
    }
}

fn named(name: &'static str) -> impl Fn() -> String {
    move || name.to_string()
}

impl Request {
    /// Parses one frame (as [`next_frame`] splits it); data fields share
    /// the frame's memory.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader { frame };
        let request = match r.u8(&named("kind"))? {
            HELLO => {
                let magic = r.bytes(MAGIC.len(), &named("magic"))?;
                if magic.as_ref() != MAGIC {
                    return Err(bad("magic", "is not SBW1: not a stream-broker wire client"));
                }
                let version = r.u16(&named("version"))?;
                let token = r.s16(&named("token"))?;
                Request::Hello { version, token: (!token.is_empty()).then_some(token) }
            }
            PUT_RECORD => {
                let id = r.u64(&named("id"))?;
                let stream = r.s16(&named("stream_name"))?;
                let record = r.record("")?;
                Request::PutRecord { id, stream, record }
            }
            PUT_RECORDS => {
                let id = r.u64(&named("id"))?;
                let stream = r.s16(&named("stream_name"))?;
                let count = r.u16(&named("records"))? as usize;
                let mut records = Vec::with_capacity(count.min(r.frame.len()));
                for i in 0..count {
                    records.push(r.record(&format!("records[{i}]."))?);
                }
                Request::PutRecords { id, stream, records }
            }
            PING => Request::Ping { id: r.u64(&named("id"))? },
            other => return Err(bad("kind", format!("{other} is not a request kind (1..=4)"))),
        };
        r.end()?;
        Ok(request)
    }

    /// Appends this request as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), DecodeError> {
        let start = begin(out);
        match self {
            Request::Hello { version, token } => {
                out.put_u8(HELLO);
                out.put_slice(MAGIC);
                out.put_u16(*version);
                put_s16(out, token.as_deref().unwrap_or(""), "token")?;
            }
            Request::PutRecord { id, stream, record } => {
                out.put_u8(PUT_RECORD);
                out.put_u64(*id);
                put_s16(out, stream, "stream_name")?;
                put_record(out, record, "")?;
            }
            Request::PutRecords { id, stream, records } => {
                out.put_u8(PUT_RECORDS);
                out.put_u64(*id);
                put_s16(out, stream, "stream_name")?;
                let count =
                    u16::try_from(records.len()).map_err(|_| bad("records", "more than 65,535 records in a frame"))?;
                out.put_u16(count);
                for (i, record) in records.iter().enumerate() {
                    put_record(out, record, &format!("records[{i}]."))?;
                }
            }
            Request::Ping { id } => {
                out.put_u8(PING);
                out.put_u64(*id);
            }
        }
        finish(out, start)
    }
}

impl Response {
    /// Parses one frame (as [`next_frame`] splits it).
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader { frame };
        let response = match r.u8(&named("kind"))? {
            READY => Response::Ready {
                version: r.u16(&named("version"))?,
                max_frame_bytes: r.u32(&named("max_frame_bytes"))?,
                in_flight: r.u32(&named("in_flight"))?,
            },
            RECORD => Response::Record {
                id: r.u64(&named("id"))?,
                appended: Appended {
                    shard_id: r.s8(&named("shard_id"))?,
                    sequence_number: r.u64(&named("sequence_number"))?,
                },
            },
            RECORDS => {
                let id = r.u64(&named("id"))?;
                let count = r.u16(&named("records"))? as usize;
                let mut results = Vec::with_capacity(count.min(r.frame.len()));
                for i in 0..count {
                    let field = |name: &str| format!("records[{i}].{name}");
                    let result = match r.u8(&|| field("ok"))? {
                        1 => Ok(Appended {
                            shard_id: r.s8(&|| field("shard_id"))?,
                            sequence_number: r.u64(&|| field("sequence_number"))?,
                        }),
                        0 => Err(Failure {
                            error_code: r.s8(&|| field("error_code"))?,
                            retry_after_ms: r.u64(&|| field("retry_after_ms"))?,
                            message: r.s16(&|| field("message"))?,
                        }),
                        other => return Err(bad(field("ok"), format!("{other} is neither 0 nor 1"))),
                    };
                    results.push(result);
                }
                Response::Records { id, results }
            }
            ERROR => Response::Error {
                id: r.u64(&named("id"))?,
                kind: r.s8(&named("kind"))?,
                retry_after_ms: r.u64(&named("retry_after_ms"))?,
                message: r.s16(&named("message"))?,
            },
            PONG => Response::Pong { id: r.u64(&named("id"))? },
            other => return Err(bad("kind", format!("{other} is not a response kind (129..=133)"))),
        };
        r.end()?;
        Ok(response)
    }

    /// Appends this response as one frame to `out`. Messages longer than
    /// a `u16` length are cut at a character boundary.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out);
        match self {
            Response::Ready { version, max_frame_bytes, in_flight } => {
                out.put_u8(READY);
                out.put_u16(*version);
                out.put_u32(*max_frame_bytes);
                out.put_u32(*in_flight);
            }
            Response::Record { id, appended } => {
                out.put_u8(RECORD);
                out.put_u64(*id);
                put_appended(out, appended);
            }
            Response::Records { id, results } => {
                out.put_u8(RECORDS);
                out.put_u64(*id);
                // A batch holds at most 500 records (the broker refuses more before answering).
                out.put_u16(u16::try_from(results.len()).unwrap_or(u16::MAX));
                for result in results.iter().take(u16::MAX as usize) {
                    match result {
                        Ok(appended) => {
                            out.put_u8(1);
                            put_appended(out, appended);
                        }
                        Err(f) => {
                            out.put_u8(0);
                            put_s8_cut(out, &f.error_code);
                            out.put_u64(f.retry_after_ms);
                            put_s16_cut(out, &f.message);
                        }
                    }
                }
            }
            Response::Error { id, kind, retry_after_ms, message } => {
                out.put_u8(ERROR);
                out.put_u64(*id);
                put_s8_cut(out, kind);
                out.put_u64(*retry_after_ms);
                put_s16_cut(out, message);
            }
            Response::Pong { id } => {
                out.put_u8(PONG);
                out.put_u64(*id);
            }
        }
        // A response frame is far below 4 GiB: at most 500 records of bounded fields.
        let len = (out.len() - start - LENGTH_BYTES) as u32;
        out[start..start + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
    }
}

fn begin(out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u32(0);
    start
}

fn finish(out: &mut BytesMut, start: usize) -> Result<(), DecodeError> {
    let len = u32::try_from(out.len() - start - LENGTH_BYTES).map_err(|_| {
        out.truncate(start);
        bad("frame length", "more than 4 GiB")
    })?;
    out[start..start + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_s16(out: &mut BytesMut, s: &str, field: &str) -> Result<(), DecodeError> {
    let len = u16::try_from(s.len()).map_err(|_| bad(field, format!("{} bytes, more than 65,535", s.len())))?;
    out.put_u16(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_record(out: &mut BytesMut, record: &Record, prefix: &str) -> Result<(), DecodeError> {
    put_s16(out, &record.partition_key, &format!("{prefix}partition_key"))?;
    put_s16(out, record.explicit_hash_key.as_deref().unwrap_or(""), &format!("{prefix}explicit_hash_key"))?;
    let len = u32::try_from(record.data.len()).map_err(|_| bad(format!("{prefix}data"), "more than 4 GiB"))?;
    out.put_u32(len);
    out.put_slice(&record.data);
    Ok(())
}

fn put_appended(out: &mut BytesMut, a: &Appended) {
    put_s8_cut(out, &a.shard_id);
    out.put_u64(a.sequence_number);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_s8_cut(out: &mut BytesMut, s: &str) {
    let s = cut(s, u8::MAX as usize);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn put_s16_cut(out: &mut BytesMut, s: &str) {
    let s = cut(s, u16::MAX as usize);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = Record> {
        ("\\PC{1,20}", proptest::option::of("[0-9]{1,39}"), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(partition_key, explicit_hash_key, data)| Record { partition_key, explicit_hash_key, data: data.into() },
        )
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u16>(), proptest::option::of("[A-Za-z0-9]{1,40}"))
                .prop_map(|(version, token)| Request::Hello { version, token }),
            (any::<u64>(), "[a-z-]{1,30}", record()).prop_map(|(id, stream, record)| Request::PutRecord {
                id,
                stream,
                record
            }),
            (any::<u64>(), "[a-z-]{1,30}", proptest::collection::vec(record(), 0..20))
                .prop_map(|(id, stream, records)| Request::PutRecords { id, stream, records }),
            any::<u64>().prop_map(|id| Request::Ping { id }),
        ]
    }

    fn appended() -> impl Strategy<Value = Appended> {
        ("shardId-[0-9]{12}", any::<u64>())
            .prop_map(|(shard_id, sequence_number)| Appended { shard_id, sequence_number })
    }

    fn response() -> impl Strategy<Value = Response> {
        let failure = ("[A-Za-z]{1,30}", any::<u64>(), "\\PC{0,60}")
            .prop_map(|(error_code, retry_after_ms, message)| Failure { error_code, retry_after_ms, message });
        prop_oneof![
            (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(version, max_frame_bytes, in_flight)| {
                Response::Ready { version, max_frame_bytes, in_flight }
            }),
            (any::<u64>(), appended()).prop_map(|(id, appended)| Response::Record { id, appended }),
            (
                any::<u64>(),
                proptest::collection::vec(prop_oneof![appended().prop_map(Ok), failure.prop_map(Err)], 0..20)
            )
                .prop_map(|(id, results)| Response::Records { id, results }),
            (any::<u64>(), "[A-Za-z]{1,30}", any::<u64>(), "\\PC{0,60}").prop_map(
                |(id, kind, retry_after_ms, message)| { Response::Error { id, kind, retry_after_ms, message } }
            ),
            any::<u64>().prop_map(|id| Response::Pong { id }),
        ]
    }

    proptest! {
        /// Frames written back to back, arriving in arbitrary pieces, read
        /// back as the same requests in the same order.
        #[test]
        fn requests_survive_encoding_and_any_split(
            requests in proptest::collection::vec(request(), 1..6),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = BytesMut::new();
            for r in &requests {
                r.encode(&mut wire).expect("encodes");
            }
            let mut wire = wire.freeze();
            let (mut buf, mut decoded, mut cuts) = (BytesMut::new(), Vec::new(), cuts.into_iter().cycle());
            while !wire.is_empty() {
                let n = cuts.next().expect("cycle").min(wire.len());
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(frame) = next_frame(&mut buf, 1 << 20).expect("well-formed") {
                    decoded.push(Request::decode(frame).expect("decodes"));
                }
            }
            prop_assert_eq!(decoded, requests);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn responses_survive_encoding(response in response()) {
            let mut wire = BytesMut::new();
            response.encode(&mut wire);
            let frame = next_frame(&mut wire, 1 << 20).expect("well-formed").expect("whole");
            prop_assert_eq!(Response::decode(frame).expect("decodes"), response);
        }

        /// No prefix of a frame's body decodes: a short frame always names a field.
        #[test]
        fn a_truncated_frame_is_an_error_not_a_panic(request in request(), keep in 0usize..400) {
            let mut wire = BytesMut::new();
            request.encode(&mut wire).expect("encodes");
            let body = wire.split_off(LENGTH_BYTES).freeze();
            prop_assume!(keep < body.len());
            let e = Request::decode(body.slice(..keep)).expect_err("a short frame");
            prop_assert!(e.reason.contains("short"), "{}", e);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let mut wire = BytesMut::new();
        let records = vec![
            Record { partition_key: "a".into(), explicit_hash_key: None, data: Bytes::from_static(b"x") },
            Record { partition_key: "b".into(), explicit_hash_key: None, data: Bytes::from_static(b"yy") },
        ];
        Request::PutRecords { id: 7, stream: "s".into(), records }.encode(&mut wire).expect("encodes");
        let body = wire.split_off(LENGTH_BYTES).freeze();
        // Cut inside the second record's data.
        let e = Request::decode(body.slice(..body.len() - 1)).expect_err("short");
        assert_eq!(e.field, "records[1].data");
        // A partition key that is not UTF-8: the first record's key byte.
        let mut raw = body.to_vec();
        let key_at = 1 + 8 + 2 + 1 + 2 + 2;
        assert_eq!(raw[key_at], b'a');
        raw[key_at] = 0xff;
        let e = Request::decode(raw.into()).expect_err("not UTF-8");
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("records[0].partition_key", "is not valid UTF-8"));

        let mut buf = BytesMut::from(&b"PRI * HTTP/2.0\r\n"[..]);
        let e = next_frame(&mut buf, 16 << 20).expect_err("HTTP/2 preface");
        assert_eq!(e.field, "frame length");
        let e = Request::decode(Bytes::from_static(&[9])).expect_err("kind");
        assert_eq!(e.field, "kind");
        let mut extra = BytesMut::new();
        Request::Hello { version: 1, token: None }.encode(&mut extra).expect("encodes");
        extra.put_u8(0);
        let len = (extra.len() - LENGTH_BYTES) as u32;
        extra[..4].copy_from_slice(&len.to_be_bytes());
        let frame = next_frame(&mut extra, 1 << 20).expect("ok").expect("whole");
        assert_eq!(Request::decode(frame).expect_err("trailing byte").field, "frame length");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(40_000);
        let mut wire = BytesMut::new();
        Response::Error { id: 1, kind: "Internal".into(), retry_after_ms: 0, message }.encode(&mut wire);
        let frame = next_frame(&mut wire, 1 << 20).expect("ok").expect("whole");
        let Response::Error { message, .. } = Response::decode(frame).expect("decodes") else { panic!("an error") };
        assert_eq!(message.len(), 65_534);
    }
}
