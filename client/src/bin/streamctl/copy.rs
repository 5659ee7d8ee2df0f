//! `streamctl stream copy` (alias `replay`): records of one stream, or a
//! sequence or time range of them, written into another with their keys.
//!
//! Each source shard is read in order from `--from` up to `--to`
//! (exclusive; by default the shard's end when the copy starts, so a copy
//! always ends) and produced to the target by key, so the records of one key
//! keep their order. With `--unwrap-dead-letters` each record is a
//! dead-letter envelope (what the order service writes to `<stream>-dlq`:
//! JSON with `record`, `encoding` (`utf8` or `base64`) and `partitionKey`)
//! and the original record is what gets written: this replays dead letters
//! into the stream they came from.

use std::collections::VecDeque;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::Args;
use client::{AckFuture, Admin, Producer, ProducerConfig, ShardReader};
use serde::Deserialize;
use serde_json::json;

use crate::positions::{self, At, check_shard, starts};
use crate::{CliError, Global};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The stream to read.
    source: String,
    /// The stream to write (it must exist).
    target: String,
    /// Where to start in each source shard: trim-horizon, latest, -N, @TIME (@2026-11-28T10:00:00Z, @-5m) or seq:[SHARD:]N.
    #[arg(long, value_name = "POSITION", default_value = "trim-horizon", allow_hyphen_values = true, value_parser = positions::parse_at)]
    from: At,
    /// Where to stop, exclusive: @TIME (records that arrived before it) or seq:[SHARD:]N [default: each shard's end when the copy starts].
    #[arg(long, value_name = "POSITION", allow_hyphen_values = true, value_parser = positions::parse_at)]
    to: Option<At>,
    /// Copy only this source shard: its number (2) or id (shardId-000000000002).
    #[arg(long, value_name = "SHARD", value_parser = positions::shard_id)]
    shard: Option<String>,
    /// The source holds dead-letter envelopes: write the original records they carry.
    #[arg(long)]
    unwrap_dead_letters: bool,
}

/// Where a shard's copy ends.
#[derive(Debug, Clone, Copy)]
struct End {
    /// First sequence number not copied.
    seq: u64,
    /// First arrival time not copied, if the range ends at a time.
    time_ms: Option<u64>,
}

/// A dead-letter envelope's fields that carry the original record.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetter {
    record: String,
    #[serde(default)]
    encoding: Option<String>,
    partition_key: String,
}

/// Acknowledgements awaited at once; beyond, the oldest is awaited first.
const IN_FLIGHT_MAX: usize = 4096;
/// Records per read.
const BATCH: u32 = 1000;

pub async fn run(g: &Global, args: CopyArgs) -> Result<(), CliError> {
    if args.source == args.target {
        return Err(CliError::usage("the source and the target are the same stream"));
    }
    let channel = g.channel().await?;
    let admin = Admin::from_channel(channel.clone());
    let d = admin.describe_stream(&args.source).await?;
    // Fails early, with the broker's message, if the target does not exist.
    let producer = Producer::with_channel(channel.clone(), &args.target, ProducerConfig::default()).await?;
    let only = match (&args.from, &args.shard) {
        (At::Seq { shard: Some(a), .. }, Some(b)) if a != b => {
            return Err(CliError::usage(format!("--shard {b} and --from seq:{a}:N name different shards")));
        }
        (At::Seq { shard: Some(a), .. }, _) => Some(a.clone()),
        (_, b) => b.clone(),
    };
    if let Some(s) = &only {
        check_shard(&d, s)?;
    }
    let mut copied = Vec::new();
    let mut pending: VecDeque<AckFuture> = VecDeque::new();
    let mut total = 0u64;
    for start in starts(&d, only.as_deref(), &args.from, false) {
        let snapshot_end = d.shards.iter().find(|s| s.shard_id == start.shard).map_or(0, |s| s.next_sequence_number);
        let end = match &args.to {
            None => End { seq: snapshot_end, time_ms: None },
            Some(At::Time(ms)) => End { seq: snapshot_end, time_ms: Some(*ms) },
            Some(At::Seq { shard: None, seq }) => End { seq: (*seq).min(snapshot_end), time_ms: None },
            Some(At::Seq { shard: Some(s), seq }) if *s == start.shard => {
                End { seq: (*seq).min(snapshot_end), time_ms: None }
            }
            Some(At::Seq { shard: Some(_), .. }) => End { seq: snapshot_end, time_ms: None },
            Some(_) => {
                return Err(CliError::usage("--to takes @TIME or seq:[SHARD:]N (where the copy stops, exclusive)"));
            }
        };
        let mut reader = ShardReader::open(channel.clone(), &args.source, &start.shard, start.at).await?;
        let (mut n, mut first, mut last) = (0u64, None, None);
        'shard: loop {
            let (records, _) = reader.read(BATCH).await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                if r.sequence_number >= end.seq || end.time_ms.is_some_and(|t| r.arrival_timestamp_ms >= t) {
                    break 'shard;
                }
                let (key, data) = if args.unwrap_dead_letters {
                    unwrap(&r.data).map_err(|why| {
                        CliError::failed(format!(
                            "{} at sequence number {} is not a dead letter: {why}",
                            start.shard, r.sequence_number
                        ))
                    })?
                } else {
                    (r.partition_key, r.data)
                };
                pending.push_back(producer.send(key, data).await?);
                if pending.len() >= IN_FLIGHT_MAX
                    && let Some(ack) = pending.pop_front()
                {
                    ack.await?;
                }
                first.get_or_insert(r.sequence_number);
                last = Some(r.sequence_number);
                n += 1;
            }
        }
        total += n;
        copied.push(json!({
            "shard_id": start.shard,
            "records": n,
            "first_sequence_number": first,
            "last_sequence_number": last,
        }));
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
    }
    producer.close().await?;
    if g.json {
        crate::output::print_json(&json!({
            "source": args.source,
            "target": args.target,
            "records": total,
            "shards": copied,
        }))
    } else {
        crate::output::print(&format!(
            "copied {total} record{} from {} to {}\n",
            if total == 1 { "" } else { "s" },
            args.source,
            args.target
        ))
    }
}

/// The original key and data inside a dead-letter envelope.
fn unwrap(data: &[u8]) -> Result<(String, Bytes), String> {
    let dl: DeadLetter = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let bytes = match dl.encoding.as_deref() {
        None | Some("utf8") => Bytes::from(dl.record.into_bytes()),
        Some("base64") => Bytes::from(BASE64.decode(dl.record.as_bytes()).map_err(|e| format!("record: {e}"))?),
        Some(other) => return Err(format!("unknown encoding {other:?} (utf8 or base64)")),
    };
    Ok((dl.partition_key, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_unwrap_to_their_record() {
        let text = br#"{"record":"{\"a\":1}","encoding":"utf8","partitionKey":"o-1","error":"x","attempts":3}"#;
        assert_eq!(unwrap(text), Ok(("o-1".to_string(), Bytes::from_static(br#"{"a":1}"#))));
        let bin = br#"{"record":"/wA=","encoding":"base64","partitionKey":"k"}"#;
        assert_eq!(unwrap(bin), Ok(("k".to_string(), Bytes::from_static(&[0xff, 0x00]))));
        assert!(unwrap(b"not json").is_err());
        assert!(unwrap(br#"{"record":"x","encoding":"rot13","partitionKey":"k"}"#).is_err());
    }
}
