//! Kinesis names of broker things: ARNs, stream ids, sequence numbers and
//! page tokens.
//!
//! **Sequence numbers.** The broker numbers the records of a shard 0, 1, 2,
//! … (the gRPC API shows these offsets). The Kinesis API shows them as
//! 52-digit decimals `4 <stream id:20> <shard index:10> <offset:20> <k>`:
//! `k` = 1 for the record at `offset`, `k` = 0 for the position just before
//! it (a continuation, or the start of an empty range). Within a shard they
//! strictly increase with the offset and compare the same as numbers (as
//! KCL compares them, with `BigInteger`) and as strings (all have 52
//! digits); each decodes back to its stream, shard and offset, so a
//! sequence number from another shard or a deleted stream is refused.
//!
//! **Page tokens** (`NextToken`) carry the position after the last item
//! returned, the stream and the issue time; they expire after 300 s
//! (`ExpiredNextTokenException`), as AWS's do.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::error::KinesisError;
use super::validate::arn_parts;
use crate::metadata::StreamMeta;

/// How long a page token is valid.
pub const NEXT_TOKEN_TTL_MS: u64 = 300_000;
/// Digits of a sequence number.
const SEQ_DIGITS: usize = 52;

/// A consumer named by an ARN: its name and registration second.
pub type ConsumerRef<'a> = (&'a str, u64);

/// Region and account of every ARN.
#[derive(Debug, Clone)]
pub struct Arns {
    /// The region.
    pub region: String,
    /// The 12-digit account id.
    pub account: String,
}

impl Arns {
    /// `arn:aws:kinesis:<region>:<account>:stream/<name>`
    pub fn stream(&self, name: &str) -> String {
        format!("arn:aws:kinesis:{}:{}:stream/{name}", self.region, self.account)
    }

    /// `<stream ARN>/consumer/<name>:<creation epoch seconds>`
    pub fn consumer(&self, stream: &str, name: &str, created_at_ms: u64) -> String {
        format!("{}/consumer/{name}:{}", self.stream(stream), created_at_ms / 1000)
    }

    /// The resource part of an ARN of this region and account, or
    /// `ResourceNotFoundException` for another one.
    fn resource<'a>(&self, arn: &'a str) -> Result<&'a str, KinesisError> {
        let Some((region, account, resource)) = arn_parts(arn) else {
            return Err(KinesisError::invalid(format!("{arn} is not a Kinesis ARN")));
        };
        if region != self.region || account != self.account {
            return Err(KinesisError::not_found(format!(
                "{arn} is not in this broker's region {} and account {} (kinesis.region, kinesis.account_id)",
                self.region, self.account
            )));
        }
        Ok(resource)
    }

    /// The stream name of a stream ARN.
    pub fn stream_name<'a>(&self, arn: &'a str) -> Result<&'a str, KinesisError> {
        let resource = self.resource(arn)?;
        resource.strip_prefix("stream/").ok_or_else(|| KinesisError::invalid(format!("{arn} is not a stream ARN")))
    }

    /// The stream name, consumer name and creation seconds of a consumer ARN.
    pub fn consumer_parts<'a>(&self, arn: &'a str) -> Result<(&'a str, &'a str, u64), KinesisError> {
        let bad = || KinesisError::invalid(format!("{arn} is not a consumer ARN"));
        let resource = self.resource(arn)?.strip_prefix("stream/").ok_or_else(bad)?;
        let (stream, consumer) = resource.split_once("/consumer/").ok_or_else(bad)?;
        let (name, secs) = consumer.rsplit_once(':').ok_or_else(bad)?;
        Ok((stream, name, secs.parse().map_err(|_| bad())?))
    }

    /// A resource ARN: a stream, or a consumer of one.
    pub fn resource_parts<'a>(&self, arn: &'a str) -> Result<(&'a str, Option<ConsumerRef<'a>>), KinesisError> {
        if arn.contains("/consumer/") {
            let (stream, consumer, secs) = self.consumer_parts(arn)?;
            Ok((stream, Some((consumer, secs))))
        } else {
            Ok((self.stream_name(arn)?, None))
        }
    }
}

/// The `StreamId` of a stream: its broker id in 20 digits, a dash and three
/// base-36 characters of its creation second.
pub fn stream_id(meta: &StreamMeta) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = (meta.created_at_ms / 1000) % (36 * 36 * 36);
    let mut suffix = [b'0'; 3];
    for c in suffix.iter_mut().rev() {
        *c = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    format!("{:020}-{}", meta.id, String::from_utf8_lossy(&suffix))
}

/// The broker id a `StreamId` names (check it against [`stream_id`]).
pub fn stream_id_number(id: &str) -> Option<u64> {
    id.get(..20).filter(|d| d.bytes().all(|b| b.is_ascii_digit())).and_then(|d| d.parse().ok())
}

/// Writes `v` in decimal over all of `out`, left-padded with zeros (`out`
/// is at least the digits of `v`: 20 for a u64, 10 for a u32).
fn put_padded(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A sequence number's text, held inline: a PutRecords answer has one per
/// record, and a `String` each was an allocation per record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SequenceText([u8; SEQ_DIGITS]);

impl SequenceText {
    /// The 52 digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written (see `Sequence::text`), so this
        // cannot fail; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for SequenceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SequenceText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A decoded sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// The stream's broker id.
    pub stream_id: u64,
    /// The shard's index.
    pub shard: u32,
    /// The record offset in the shard.
    pub offset: u64,
    /// The record at `offset` (true) or the position just before it.
    pub record: bool,
}

impl Sequence {
    /// The sequence number of the record at `offset`.
    pub fn record(stream_id: u64, shard: u32, offset: u64) -> String {
        Self::record_text(stream_id, shard, offset).as_str().to_string()
    }

    /// [`Sequence::record`] without an allocation.
    pub fn record_text(stream_id: u64, shard: u32, offset: u64) -> SequenceText {
        Self::text(stream_id, shard, offset, b'1')
    }

    /// The position just before `offset`: after every record below it,
    /// before the record at it.
    pub fn before(stream_id: u64, shard: u32, offset: u64) -> String {
        Self::text(stream_id, shard, offset, b'0').as_str().to_string()
    }

    /// `4`, the three zero-padded fields, then `last` (an ASCII digit).
    /// Written digit by digit: a PutRecords answer has one per record, and
    /// `format!`'s padding was a visible share of the Kinesis put path's profile.
    fn text(stream_id: u64, shard: u32, offset: u64, last: u8) -> SequenceText {
        let mut out = [b'0'; SEQ_DIGITS];
        out[0] = b'4';
        put_padded(&mut out[1..21], stream_id);
        put_padded(&mut out[21..31], u64::from(shard));
        put_padded(&mut out[31..51], offset);
        out[SEQ_DIGITS - 1] = last;
        SequenceText(out)
    }

    /// Decodes a sequence number of this broker.
    pub fn parse(s: &str) -> Option<Self> {
        let d = s.as_bytes();
        if d.len() != SEQ_DIGITS || d[0] != b'4' || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let record = match d[SEQ_DIGITS - 1] {
            b'0' => false,
            b'1' => true,
            _ => return None,
        };
        Some(Self {
            stream_id: s[1..21].parse().ok()?,
            shard: s[21..31].parse().ok()?,
            offset: s[31..51].parse().ok()?,
            record,
        })
    }
}

/// What a page token continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    /// Which listing: `shards`, `streams` or `consumers`.
    pub list: String,
    /// The stream (0 for stream listings).
    pub stream_id: u64,
    /// The last item returned.
    pub after: String,
    /// The page size asked for first.
    pub limit: u32,
    /// Issue time, ms since the Unix epoch.
    pub issued_ms: u64,
}

impl PageToken {
    /// The token's text.
    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a token of listing `list`, checking its age.
    pub fn decode(text: &str, list: &str, now_ms: u64) -> Result<Self, KinesisError> {
        let bad =
            || KinesisError::invalid(format!("NextToken {text:.40} is not a token this broker issued for {list}"));
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if token.list != list {
            return Err(bad());
        }
        let age = now_ms.saturating_sub(token.issued_ms);
        if age > NEXT_TOKEN_TTL_MS {
            return Err(KinesisError::client(
                "ExpiredNextTokenException",
                format!("The NextToken expired: it was issued {age} ms ago; tokens last {NEXT_TOKEN_TTL_MS} ms."),
            ));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip_and_order_within_a_shard() {
        let a = Sequence::record(7, 2, 41);
        let b = Sequence::before(7, 2, 42);
        let c = Sequence::record(7, 2, 42);
        let d = Sequence::record(7, 2, 1_000_000);
        assert_eq!(a.len(), 52);
        assert!(a < b && b < c && c < d, "as strings");
        // Equal lengths without leading zeros: numeric order is string order.
        assert!([&b, &c, &d].iter().all(|s| s.len() == a.len()), "as numbers too");
        assert_eq!(Sequence::parse(&c), Some(Sequence { stream_id: 7, shard: 2, offset: 42, record: true }));
        assert_eq!(Sequence::parse(&b), Some(Sequence { stream_id: 7, shard: 2, offset: 42, record: false }));
        for bad in ["", "0", "49590338271490256608559692538361571095921575989136588898", &a[..51]] {
            assert_eq!(Sequence::parse(bad), None, "{bad}");
        }
        for (stream, shard, offset) in [(0, 0, 0), (7, 2, 41), (u64::MAX, u32::MAX, u64::MAX), (10, 100, 1000)] {
            let formatted = format!("4{stream:020}{shard:010}{offset:020}1");
            assert_eq!(Sequence::record(stream, shard, offset), formatted);
            assert_eq!(Sequence::record_text(stream, shard, offset).as_str(), formatted);
            assert_eq!(Sequence::before(stream, shard, offset), format!("{}0", &formatted[..51]));
        }
    }

    #[test]
    fn arns_name_the_configured_region_and_account() {
        let arns = Arns { region: "us-east-1".into(), account: "000000000000".into() };
        let arn = arns.stream("orders");
        assert_eq!(arn, "arn:aws:kinesis:us-east-1:000000000000:stream/orders");
        assert_eq!(arns.stream_name(&arn).expect("ours"), "orders");
        let other = arn.replace("us-east-1", "eu-west-1");
        assert_eq!(arns.stream_name(&other).expect_err("theirs").kind, "ResourceNotFoundException");
        let consumer = arns.consumer("orders", "app", 1_767_225_600_999);
        assert_eq!(arns.consumer_parts(&consumer).expect("parts"), ("orders", "app", 1_767_225_600));
    }

    #[test]
    fn page_tokens_expire() {
        let t = PageToken { list: "shards".into(), stream_id: 3, after: "x".into(), limit: 2, issued_ms: 1_000 };
        let text = t.encode();
        assert_eq!(PageToken::decode(&text, "shards", 1_000 + NEXT_TOKEN_TTL_MS).expect("fresh"), t);
        assert_eq!(
            PageToken::decode(&text, "shards", 1_001 + NEXT_TOKEN_TTL_MS).expect_err("old").kind,
            "ExpiredNextTokenException"
        );
        assert_eq!(
            PageToken::decode(&text, "streams", 1_000).expect_err("other list").kind,
            "InvalidArgumentException"
        );
    }
}
