//! Positions and shard ids as people type them, shared by `tail --from`,
//! `group reset --to` and `stream copy --from/--to`, like kcat's `-o` and
//! rpk's `--offset`:
//!
//! | text | meaning |
//! |---|---|
//! | `trim-horizon` | the oldest stored record of each shard |
//! | `latest` | records that arrive from now on |
//! | `-N` | the last N records of each shard |
//! | `@2026-11-28T10:00:00Z` | the first record at or after that time (any RFC 3339 offset) |
//! | `@-5m` | the first record at or after 5 minutes ago |
//! | `seq:N` | sequence number N of each shard (or of `--shard`) |
//! | `seq:SHARD:N` | sequence number N of one shard |
//!
//! A shard is `2` or `shardId-000000000002`.

use client::Position;
use client::types as pb;

use crate::CliError;
use crate::time::{now_ms, parse_duration, parse_rfc3339};

/// A parsed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    TrimHorizon,
    Latest,
    /// The last N records of each shard.
    Last(u64),
    /// ms since the Unix epoch.
    Time(u64),
    /// A sequence number, of one shard or of each.
    Seq {
        shard: Option<String>,
        seq: u64,
    },
}

const FORMS: &str = "trim-horizon, latest, -N (the last N of each shard), @TIME (@2026-11-28T10:00:00Z or @-5m) \
                     or seq:[SHARD:]N";

/// Parses a position (see the module docs).
pub fn parse_at(s: &str) -> Result<At, String> {
    match s {
        "trim-horizon" => return Ok(At::TrimHorizon),
        "latest" => return Ok(At::Latest),
        _ => {}
    }
    if let Some(n) = s.strip_prefix('-') {
        return match n.parse::<u64>() {
            Ok(n) if n > 0 => Ok(At::Last(n)),
            _ => Err(format!("{s:?}: -N needs a count of at least 1, like -10")),
        };
    }
    if let Some(t) = s.strip_prefix('@') {
        if let Some(ago) = t.strip_prefix('-') {
            let d = parse_duration(ago)?;
            return Ok(At::Time(now_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))));
        }
        return parse_rfc3339(t).map(At::Time);
    }
    if let Some(rest) = s.strip_prefix("seq:") {
        let (shard, n) = match rest.rsplit_once(':') {
            Some((shard, n)) => (Some(shard_id(shard)?), n),
            None => (None, rest),
        };
        let seq = n.parse().map_err(|_| format!("{s:?}: seq:[SHARD:]N needs a sequence number, got {n:?}"))?;
        return Ok(At::Seq { shard, seq });
    }
    Err(format!("{s:?} is not a position: use {FORMS}"))
}

/// `2` → `shardId-000000000002`; a full id is kept.
pub fn shard_id(s: &str) -> Result<String, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(format!("shardId-{n:012}"));
    }
    match s.strip_prefix("shardId-") {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a shard: use its number (2) or its id (shardId-000000000002)")),
    }
}

/// Checks that `shard` is one of the stream's shards.
pub fn check_shard(d: &pb::StreamDescription, shard: &str) -> Result<(), CliError> {
    if d.shards.iter().any(|s| s.shard_id == shard) {
        return Ok(());
    }
    let range = match (d.shards.first(), d.shards.last()) {
        (Some(a), Some(b)) if a.shard_id != b.shard_id => format!("{}..{}", a.shard_id, b.shard_id),
        (Some(a), _) => a.shard_id.clone(),
        _ => "none".into(),
    };
    Err(CliError::usage(format!("stream {} has no shard {shard} (its shards: {range})", d.stream_name)))
}

/// One shard to read: where its reader starts, and the first sequence
/// number to print (above the start when the start was past the end).
#[derive(Debug, Clone)]
pub struct ShardStart {
    pub shard: String,
    pub at: Position,
    pub print_from: u64,
}

/// Where each shard of `d` starts for `from`, limited to `only`; says on
/// stderr when a start is past a shard's end.
pub fn starts(d: &pb::StreamDescription, only: Option<&str>, from: &At, follow: bool) -> Vec<ShardStart> {
    let mut out = Vec::new();
    for s in d.shards.iter().filter(|s| only.is_none_or(|o| o == s.shard_id)) {
        let (first, next) = (s.first_sequence_number, s.next_sequence_number);
        let (at, print_from) = match *from {
            At::TrimHorizon => (Position::TrimHorizon, 0),
            At::Latest => (Position::Latest, 0),
            At::Last(n) => (Position::AtSequence(next.saturating_sub(n).max(first)), 0),
            At::Time(ms) => (Position::AtTimestamp(ms), 0),
            At::Seq { seq, .. } if seq > next => {
                let then = if follow { "waiting for it" } else { "nothing to read there" };
                eprintln!(
                    "streamctl: seq:{seq} is past the end of {} (its next sequence number is {next}); {then}",
                    s.shard_id
                );
                if !follow {
                    continue;
                }
                (Position::AtSequence(next), seq)
            }
            At::Seq { seq, .. } => (Position::AtSequence(seq), 0),
        };
        out.push(ShardStart { shard: s.shard_id.clone(), at, print_from });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(parse_at("trim-horizon"), Ok(At::TrimHorizon));
        assert_eq!(parse_at("latest"), Ok(At::Latest));
        assert_eq!(parse_at("-10"), Ok(At::Last(10)));
        assert_eq!(parse_at("@1970-01-01T00:00:01Z"), Ok(At::Time(1000)));
        assert_eq!(parse_at("seq:7"), Ok(At::Seq { shard: None, seq: 7 }));
        assert_eq!(parse_at("seq:2:7"), Ok(At::Seq { shard: Some("shardId-000000000002".into()), seq: 7 }));
        assert_eq!(
            parse_at("seq:shardId-000000000001:42"),
            Ok(At::Seq { shard: Some("shardId-000000000001".into()), seq: 42 })
        );
        let Ok(At::Time(ago)) = parse_at("@-5m") else { panic!("@-5m is a time") };
        let expected = now_ms() - 300_000;
        assert!(ago <= expected && ago + 60_000 > expected, "{ago} is about five minutes ago");
        for bad in ["", "-0", "-x", "@yesterday", "@-soon", "seq:x", "seq:bad:1", "ts:2024-01-01T00:00:00Z", "sideways"]
        {
            assert!(parse_at(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn shard_ids_take_numbers() {
        assert_eq!(shard_id("2").as_deref(), Ok("shardId-000000000002"));
        assert_eq!(shard_id("shardId-000000000002").as_deref(), Ok("shardId-000000000002"));
        assert!(shard_id("shard-2").is_err());
        assert!(shard_id("shardId-").is_err());
    }
}
