//! The AWS event-stream binary framing of SubscribeToShard responses
//! (`application/vnd.amazon.eventstream`).
//!
//! A message is, big-endian: total length (u32), headers length (u32), a
//! CRC32 of those 8 bytes, the headers, the payload, and a CRC32 of
//! everything before it. A header is its name length (u8), the name, a
//! value type (7 = string), the value length (u16) and the value. The
//! CRCs are crc32fast's (IEEE), as the SDKs check them.

use bytes::{BufMut, Bytes, BytesMut};

/// A header value's type code for strings.
const STRING: u8 = 7;
/// Prelude: two lengths and their CRC.
const PRELUDE_BYTES: usize = 12;

/// Encodes one message.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let headers_len: usize = headers.iter().map(|(n, v)| 1 + n.len() + 1 + 2 + v.len()).sum();
    let total = PRELUDE_BYTES + headers_len + payload.len() + 4;
    let mut buf = BytesMut::with_capacity(total);
    // Header names and values here are short constants, far below u8 and
    // u16 limits; a payload is one event, far below 4 GiB.
    buf.put_u32(total as u32);
    buf.put_u32(headers_len as u32);
    let prelude_crc = crc32fast::hash(&buf[..8]);
    buf.put_u32(prelude_crc);
    for (name, value) in headers {
        buf.put_u8(name.len() as u8);
        buf.put_slice(name.as_bytes());
        buf.put_u8(STRING);
        buf.put_u16(value.len() as u16);
        buf.put_slice(value.as_bytes());
    }
    buf.put_slice(payload);
    let crc = crc32fast::hash(&buf);
    buf.put_u32(crc);
    buf.freeze()
}

/// An event message of `event_type` with a payload in `content_type`.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    message(&[(":event-type", event_type), (":content-type", content_type), (":message-type", "event")], payload)
}

/// A modeled exception message (`ResourceInUseException` …).
pub fn exception(exception_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    message(
        &[(":exception-type", exception_type), (":content-type", content_type), (":message-type", "exception")],
        payload,
    )
}

/// An unmodeled error message.
pub fn error(code: &str, message_text: &str) -> Bytes {
    message(&[(":error-code", code), (":error-message", message_text), (":message-type", "error")], b"")
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its length on the wire.
    pub len: usize,
}

impl Decoded {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Decodes one message from the front of `buf`, or `None` if it is not
/// whole or a CRC does not match. For clients and tests.
pub fn decode(buf: &[u8]) -> Option<Decoded> {
    let u32_at = |at: usize| buf.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let (total, headers_len) = (u32_at(0)?, u32_at(4)?);
    if buf.len() < total || crc32fast::hash(&buf[..8]) != u32_at(8)? as u32 {
        return None;
    }
    if crc32fast::hash(&buf[..total - 4]) != u32_at(total - 4)? as u32 {
        return None;
    }
    let mut headers = Vec::new();
    let mut at = PRELUDE_BYTES;
    while at < PRELUDE_BYTES + headers_len {
        let n = *buf.get(at)? as usize;
        let name = String::from_utf8(buf.get(at + 1..at + 1 + n)?.to_vec()).ok()?;
        at += 1 + n;
        if *buf.get(at)? != STRING {
            return None;
        }
        let len = u16::from_be_bytes([*buf.get(at + 1)?, *buf.get(at + 2)?]) as usize;
        let value = String::from_utf8(buf.get(at + 3..at + 3 + len)?.to_vec()).ok()?;
        at += 3 + len;
        headers.push((name, value));
    }
    Some(Decoded { headers, payload: buf.get(at..total - 4)?.to_vec(), len: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_its_crcs_are_checked() {
        let m = event("SubscribeToShardEvent", "application/x-amz-json-1.1", br#"{"Records":[]}"#);
        let d = decode(&m).expect("whole");
        assert_eq!(d.len, m.len());
        assert_eq!(d.payload, br#"{"Records":[]}"#);
        assert_eq!(d.header(":event-type"), Some("SubscribeToShardEvent"));
        assert_eq!(d.header(":message-type"), Some("event"));
        assert_eq!(u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        let mut bad = m.to_vec();
        bad[20] ^= 1;
        assert!(decode(&bad).is_none(), "a flipped bit fails the message CRC");
    }
}
