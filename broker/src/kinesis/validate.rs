//! The constraints of the Kinesis service model (botocore's `min`, `max`,
//! `pattern`, `enum` and required members), checked before an operation
//! runs and answered as AWS does: `ValidationException` with
//! "N validation error(s) detected: Value '…' at '<member>' failed to
//! satisfy constraint: Member must …", errors joined by "; ". Members are
//! named in AWS's lower camel case.
//!
//! These are the wire schema of the API, as protobuf decoding is for gRPC.
//! Where a model constraint is also a broker rule (stream names, partition
//! keys, batch sizes, GetRecords limits) the check uses the service layer's
//! rule or constant, so the rule exists once.

use super::error::KinesisError;
use crate::catalog::validate_stream_name;
use crate::service::{GET_RECORDS_LIMIT_MAX, PARTITION_KEY_CHARS, PUT_RECORDS_MAX};

/// The model's name pattern (streams, shards, consumers).
pub const NAME_PATTERN: &str = "[a-zA-Z0-9_.-]+";
/// The model's stream ARN pattern.
pub const STREAM_ARN_PATTERN: &str = r"arn:aws.*:kinesis:.*:\d{12}:stream/\S+";
/// The model's resource ARN pattern (streams and consumers).
pub const RESOURCE_ARN_PATTERN: &str = r"arn:aws.*:kinesis:.*:\d{12}:.*stream/\S+";
/// The model's consumer ARN pattern.
pub const CONSUMER_ARN_PATTERN: &str =
    r"^(arn):aws.*:kinesis:.*:\d{12}:.*stream\/[a-zA-Z0-9_.-]+\/consumer\/[a-zA-Z0-9_.-]+:[0-9]+";
/// The model's StreamId pattern.
pub const STREAM_ID_PATTERN: &str = "[a-z0-9]{20}-[a-z0-9]{3}";
/// The model's hash key pattern.
pub const HASH_KEY_PATTERN: &str = r"0|([1-9]\d{0,38})";
/// The model's sequence number pattern.
pub const SEQUENCE_NUMBER_PATTERN: &str = r"0|([1-9]\d{0,128})";
/// The model's iterator types.
pub const ITERATOR_TYPES: [&str; 5] =
    ["AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"];

/// `[a-zA-Z0-9_.-]+`
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `0|([1-9]\d{0,n-1})`
pub fn is_decimal(s: &str, digits_max: usize) -> bool {
    s == "0" || (!s.is_empty() && s.len() <= digits_max && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]{20}-[a-z0-9]{3}`
pub fn is_stream_id(s: &str) -> bool {
    let lower = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.len() == 24
        && s.as_bytes()[20] == b'-'
        && s.as_bytes()[..20].iter().all(lower)
        && s.as_bytes()[21..].iter().all(lower)
}

/// The parts of `arn:<partition>:kinesis:<region>:<account>:<resource>`
/// when the partition starts with `aws` and the account is 12 digits.
pub fn arn_parts(s: &str) -> Option<(&str, &str, &str)> {
    let mut parts = s.splitn(6, ':');
    let (arn, partition, service) = (parts.next()?, parts.next()?, parts.next()?);
    let (region, account, resource) = (parts.next()?, parts.next()?, parts.next()?);
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (arn == "arn" && partition.starts_with("aws") && service == "kinesis" && account_ok)
        .then_some((region, account, resource))
}

/// `arn:aws.*:kinesis:.*:\d{12}:stream/\S+`
pub fn is_stream_arn(s: &str) -> bool {
    arn_parts(s).is_some_and(|(_, _, r)| {
        r.strip_prefix("stream/").is_some_and(|n| !n.is_empty() && !n.contains(char::is_whitespace))
    })
}

/// `arn:aws.*:kinesis:.*:\d{12}:.*stream/\S+`
pub fn is_resource_arn(s: &str) -> bool {
    arn_parts(s).is_some_and(|(_, _, r)| {
        r.find("stream/").is_some_and(|at| {
            let rest = &r[at + "stream/".len()..];
            !rest.is_empty() && !rest.contains(char::is_whitespace)
        })
    })
}

/// The consumer ARN pattern: `…:stream/<name>/consumer/<name>:<digits>`.
pub fn is_consumer_arn(s: &str) -> bool {
    arn_parts(s).is_some_and(|(_, _, r)| {
        let Some(at) = r.find("stream/") else { return false };
        let Some((stream, consumer)) = r[at + "stream/".len()..].split_once("/consumer/") else { return false };
        let Some((name, epoch)) = consumer.rsplit_once(':') else { return false };
        is_name(stream) && is_name(name) && !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Collects model-constraint violations of one request.
#[derive(Debug, Default)]
pub struct Checks {
    errors: Vec<String>,
}

fn quote(v: &str) -> String {
    // AWS echoes the value; keep long values short.
    let short: String = v.chars().take(256).collect();
    format!("'{short}'")
}

impl Checks {
    fn fail(&mut self, value: Option<&str>, member: &str, constraint: String) {
        let value = value.map_or_else(|| "null".to_string(), quote);
        self.errors.push(format!("Value {value} at '{member}' failed to satisfy constraint: Member must {constraint}"));
    }

    /// A required member.
    pub fn required<T>(&mut self, member: &str, v: &Option<T>) -> &mut Self {
        if v.is_none() {
            self.fail(None, member, "not be null".into());
        }
        self
    }

    /// A string's length in characters.
    pub fn length(&mut self, member: &str, v: Option<&str>, min: usize, max: usize) -> &mut Self {
        if let Some(s) = v {
            let n = s.chars().count();
            if n < min {
                self.fail(Some(s), member, format!("have length greater than or equal to {min}"));
            } else if n > max {
                self.fail(Some(s), member, format!("have length less than or equal to {max}"));
            }
        }
        self
    }

    /// A string against a model pattern.
    pub fn pattern(&mut self, member: &str, v: Option<&str>, ok: fn(&str) -> bool, pattern: &str) -> &mut Self {
        if let Some(s) = v.filter(|s| !ok(s)) {
            self.fail(Some(s), member, format!("satisfy regular expression pattern: {pattern}"));
        }
        self
    }

    /// A name member (`[a-zA-Z0-9_.-]+`, 1..=128).
    pub fn name(&mut self, member: &str, v: Option<&str>) -> &mut Self {
        self.length(member, v, 1, 128).pattern(member, v, is_name, NAME_PATTERN)
    }

    /// The `StreamName` member: the catalogue's stream-name rule, in AWS's words.
    pub fn stream_name(&mut self, v: Option<&str>) -> &mut Self {
        if let Some(s) = v.filter(|s| validate_stream_name(s).is_err()) {
            if (1..=128).contains(&s.len()) {
                self.fail(Some(s), "streamName", format!("satisfy regular expression pattern: {NAME_PATTERN}"));
            } else {
                self.length("streamName", Some(s), 1, 128);
            }
        }
        self
    }

    /// `StreamName`, `StreamARN` and `StreamId` of a stream-scoped call.
    pub fn identity(&mut self, name: Option<&str>, arn: Option<&str>, id: Option<&str>) -> &mut Self {
        self.stream_name(name)
            .length("streamARN", arn, 1, 2048)
            .pattern("streamARN", arn, is_stream_arn, STREAM_ARN_PATTERN)
            .pattern("streamId", id, is_stream_id, STREAM_ID_PATTERN)
    }

    /// An integer's value.
    pub fn range(&mut self, member: &str, v: Option<i64>, min: i64, max: i64) -> &mut Self {
        if let Some(n) = v {
            let text = n.to_string();
            if n < min {
                self.fail(Some(&text), member, format!("have value greater than or equal to {min}"));
            } else if n > max {
                self.fail(Some(&text), member, format!("have value less than or equal to {max}"));
            }
        }
        self
    }

    /// A string from a fixed set.
    pub fn one_of(&mut self, member: &str, v: Option<&str>, allowed: &[&str]) -> &mut Self {
        if let Some(s) = v.filter(|s| !allowed.contains(s)) {
            self.fail(Some(s), member, format!("satisfy enum value set: [{}]", allowed.join(", ")));
        }
        self
    }

    /// The number of entries of a list or map.
    pub fn count(&mut self, member: &str, n: Option<usize>, min: usize, max: usize) -> &mut Self {
        if let Some(n) = n {
            let text = format!("[{n} entries]");
            if n < min {
                self.fail(Some(&text), member, format!("have length greater than or equal to {min}"));
            } else if n > max {
                self.fail(Some(&text), member, format!("have length less than or equal to {max}"));
            }
        }
        self
    }

    /// A partition key: the service's length rule.
    pub fn partition_key(&mut self, member: &str, v: Option<&str>) -> &mut Self {
        self.length(member, v, *PARTITION_KEY_CHARS.start(), *PARTITION_KEY_CHARS.end())
    }

    /// The number of records of a PutRecords: the service's batch rule.
    pub fn put_records_count(&mut self, n: Option<usize>) -> &mut Self {
        self.count("records", n, 1, PUT_RECORDS_MAX)
    }

    /// A GetRecords `Limit`: the service's bounds.
    pub fn get_records_limit(&mut self, v: Option<i64>) -> &mut Self {
        self.range("limit", v, 1, i64::from(GET_RECORDS_LIMIT_MAX))
    }

    /// `ValidationException` if anything failed.
    pub fn finish(&mut self) -> Result<(), KinesisError> {
        match self.errors.len() {
            0 => Ok(()),
            n => Err(KinesisError::client(
                "ValidationException",
                format!(
                    "{n} validation error{} detected: {}",
                    if n == 1 { "" } else { "s" },
                    std::mem::take(&mut self.errors).join("; ")
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages_read_as_aws_writes_them() {
        let err = Checks::default().stream_name(Some("a b")).finish().expect_err("pattern");
        assert_eq!(err.kind, "ValidationException");
        assert_eq!(
            err.message,
            "1 validation error detected: Value 'a b' at 'streamName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        );
        let err = Checks::default()
            .required("shardId", &None::<String>)
            .range("limit", Some(0), 1, 10_000)
            .finish()
            .expect_err("two");
        assert_eq!(
            err.message,
            "2 validation errors detected: Value null at 'shardId' failed to satisfy constraint: Member must not be \
             null; Value '0' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
        );
        assert!(Checks::default().stream_name(Some("ok.name-1")).finish().is_ok());
    }

    #[test]
    fn model_patterns_match_as_the_regexes_do() {
        assert!(is_stream_arn("arn:aws:kinesis:us-east-1:000000000000:stream/orders"));
        assert!(!is_stream_arn("arn:aws:kinesis:us-east-1:0000:stream/orders"));
        assert!(!is_stream_arn("arn:aws:sqs:us-east-1:000000000000:stream/orders"));
        assert!(is_consumer_arn("arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/app:1767225600"));
        assert!(!is_consumer_arn("arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/app"));
        assert!(is_resource_arn("arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/app:1"));
        assert!(is_stream_id("00000000000000000001-abc") && !is_stream_id("00000000000000000001_abc"));
        assert!(is_decimal("0", 39) && is_decimal("12", 39) && !is_decimal("012", 39) && !is_decimal("", 39));
    }
}
