//! `streamctl stream`: create, list, describe, delete and copy streams,
//! change their retention, and split, merge or rescale their shards.

use clap::Subcommand;
use client::types as pb;
use serde_json::{Value, json};

use crate::copy::CopyArgs;
use crate::output::{durability_name, note_empty, print, print_json, shard_status_name, status_name, table};
use crate::time::format_rfc3339;
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum StreamCmd {
    /// Create a stream.
    Create {
        /// Stream name.
        name: String,
        /// Number of shards.
        #[arg(long, value_name = "N")]
        shards: u32,
        /// How long records are kept, in hours (24..=168; the broker's default when unset).
        #[arg(long, value_name = "H")]
        retention_hours: Option<u32>,
        /// Largest record, partition key plus data, in bytes (the broker's default when unset).
        #[arg(long, value_name = "B")]
        max_record_bytes: Option<u32>,
    },
    /// List streams with their status, shards, records, bytes and retention.
    #[command(alias = "ls")]
    List,
    /// Show a stream's settings and shards.
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and its records.
    #[command(alias = "rm")]
    Delete {
        /// Stream name.
        name: String,
    },
    /// Change a stream's retention.
    Retention {
        /// Stream name.
        name: String,
        /// New retention in hours (24..=168).
        hours: u32,
    },
    /// Split an open shard in two; the parent closes and stays readable.
    Split {
        /// Stream name.
        name: String,
        /// The shard to split (shardId-NNNNNNNNNNNN).
        shard: String,
        /// The second child's first hash key (decimal); default: the middle of the shard's range.
        #[arg(long, value_name = "HASH_KEY")]
        at: Option<u128>,
    },
    /// Merge two open shards whose hash ranges adjoin; both close.
    Merge {
        /// Stream name.
        name: String,
        /// The first shard (the child's parent).
        shard: String,
        /// The adjacent shard (the child's adjacent parent).
        adjacent: String,
    },
    /// Rescale to COUNT shards of equal hash ranges (at most double or half per call).
    Scale {
        /// Stream name.
        name: String,
        /// The open shard count wanted.
        count: u32,
    },
    /// Copy records, or a sequence or time range of them, into another
    /// stream (keys kept); replays dead letters with --unwrap-dead-letters.
    #[command(alias = "replay")]
    Copy(CopyArgs),
}

pub async fn run(g: &Global, cmd: StreamCmd) -> Result<(), CliError> {
    if let StreamCmd::Copy(args) = cmd {
        return crate::copy::run(g, args).await;
    }
    let admin = g.admin().await?;
    match cmd {
        StreamCmd::Create { name, shards, retention_hours, max_record_bytes } => {
            let req = pb::CreateStreamRequest {
                stream_name: name,
                shard_count: shards,
                retention_hours,
                quota_overrides: None,
                max_record_bytes,
            };
            let d = admin.create_stream(req).await?;
            if g.json {
                print_json(&stream_json(&d))
            } else {
                print(&format!(
                    "created stream {} with {} shard{}, retention {} h\n",
                    d.stream_name,
                    d.shards.len(),
                    if d.shards.len() == 1 { "" } else { "s" },
                    d.retention_hours
                ))
            }
        }
        StreamCmd::List => {
            let mut streams = Vec::new();
            for name in admin.list_streams().await? {
                match admin.describe_stream(&name).await {
                    Ok(d) => streams.push(d),
                    // Deleted since it was listed.
                    Err(client::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let totals = |d: &pb::StreamDescription| -> (u64, u64) {
                d.shards.iter().fold((0, 0), |(r, b), s| (r + s.records_stored, b + s.bytes_stored))
            };
            if g.json {
                let items: Vec<Value> = streams
                    .iter()
                    .map(|d| {
                        let (records, bytes) = totals(d);
                        json!({
                            "name": d.stream_name,
                            "status": status_name(d.status),
                            "shards": d.open_shard_count,
                            "records": records,
                            "bytes": bytes,
                            "retention_hours": d.retention_hours,
                            "failed_shards": d.shards.iter().filter(|s| !s.failure_kind.is_empty()).count(),
                        })
                    })
                    .collect();
                return print_json(&json!({ "streams": items }));
            }
            if streams.is_empty() {
                note_empty("streams");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = streams
                .iter()
                .map(|d| {
                    let (records, bytes) = totals(d);
                    vec![
                        d.stream_name.clone(),
                        status_name(d.status),
                        d.open_shard_count.to_string(),
                        records.to_string(),
                        bytes.to_string(),
                        format!("{} h", d.retention_hours),
                    ]
                })
                .collect();
            print(&table(&["NAME", "STATUS", "SHARDS", "RECORDS", "BYTES", "RETENTION"], &rows))
        }
        StreamCmd::Describe { name } => {
            let d = admin.describe_stream(&name).await?;
            if g.json { print_json(&stream_json(&d)) } else { print(&stream_text(&d)) }
        }
        StreamCmd::Delete { name } => {
            admin.delete_stream(&name).await?;
            if g.json { print_json(&json!({ "deleted": name })) } else { print(&format!("deleted stream {name}\n")) }
        }
        StreamCmd::Retention { name, hours } => {
            let d = admin.update_retention(&name, hours).await?;
            if g.json {
                print_json(&stream_json(&d))
            } else {
                print(&format!("stream {} now keeps records for {} h\n", d.stream_name, d.retention_hours))
            }
        }
        StreamCmd::Split { name, shard, at } => {
            let at = match at {
                Some(at) => at,
                None => {
                    let d = admin.describe_stream(&name).await?;
                    let s = d
                        .shards
                        .iter()
                        .find(|s| s.shard_id == shard)
                        .ok_or_else(|| CliError::failed(format!("stream {name} has no shard {shard}")))?;
                    let range = hash_range(s)?;
                    if range.0 == range.1 {
                        return Err(CliError::usage(format!("{shard} owns a single hash key and cannot be split")));
                    }
                    range.0 + (range.1 - range.0) / 2 + 1
                }
            };
            let d = admin.split_shard(&name, &shard, at).await?;
            reshaped(g, &d, &format!("split {shard} at hash key {at}"))
        }
        StreamCmd::Merge { name, shard, adjacent } => {
            let d = admin.merge_shards(&name, &shard, &adjacent).await?;
            reshaped(g, &d, &format!("merged {shard} and {adjacent}"))
        }
        StreamCmd::Scale { name, count } => {
            let r = admin.update_shard_count(&name, count).await?;
            let d = r.stream.unwrap_or_default();
            reshaped(g, &d, &format!("rescaled from {} to {} shards", r.current_shard_count, r.target_shard_count))
        }
        StreamCmd::Copy(_) => Ok(()),
    }
}

fn hash_range(s: &pb::ShardDescription) -> Result<(u128, u128), CliError> {
    let parse =
        |k: &str| k.parse::<u128>().map_err(|_| CliError::failed(format!("bad hash key {k:?} from the broker")));
    Ok((parse(&s.starting_hash_key)?, parse(&s.ending_hash_key)?))
}

/// After a split, merge or scale: the stream, or a line and its open shards.
fn reshaped(g: &Global, d: &pb::StreamDescription, what: &str) -> Result<(), CliError> {
    if g.json {
        return print_json(&stream_json(d));
    }
    let open: Vec<&str> = d.shards.iter().filter(|s| !s.closed).map(|s| s.shard_id.as_str()).collect();
    print(&format!("{}: {what}; open shards: {}\n", d.stream_name, open.join(", ")))
}

/// A stream description as JSON: every field the broker gives.
pub fn stream_json(d: &pb::StreamDescription) -> Value {
    let q = d.quotas.unwrap_or_default();
    let shards: Vec<Value> = d
        .shards
        .iter()
        .map(|s| {
            json!({
                "shard_id": s.shard_id,
                "starting_hash_key": s.starting_hash_key,
                "ending_hash_key": s.ending_hash_key,
                "first_sequence_number": s.first_sequence_number,
                "next_sequence_number": s.next_sequence_number,
                "records_stored": s.records_stored,
                "bytes_stored": s.bytes_stored,
                "writable": s.writable,
                "write_error": s.write_error,
                "shard_status": shard_status_name(s.shard_status),
                "failure_kind": s.failure_kind,
                "failure": s.failure,
                "parent_shard_id": (!s.parent_shard_id.is_empty()).then_some(&s.parent_shard_id),
                "adjacent_parent_shard_id": (!s.adjacent_parent_shard_id.is_empty()).then_some(&s.adjacent_parent_shard_id),
                "closed": s.closed,
                "ending_sequence_number": s.ending_sequence_number,
                "created_at_ms": s.created_at_ms,
                "damage": s.damage.iter().map(|d| json!({
                    "segment": d.segment, "position": d.position, "reason": d.reason,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "stream_name": d.stream_name,
        "stream_id": d.stream_id,
        "status": status_name(d.status),
        "retention_hours": d.retention_hours,
        "max_record_bytes": d.max_record_bytes,
        "durability": durability_name(d.durability),
        "durability_interval_ms": d.durability_interval_ms,
        "created_at_ms": d.created_at_ms,
        "open_shard_count": d.open_shard_count,
        "target_shard_count": d.target_shard_count,
        "quotas": {
            "write_records_per_sec": q.write_records_per_sec,
            "write_bytes_per_sec": q.write_bytes_per_sec,
            "read_calls_per_sec": q.read_calls_per_sec,
            "read_bytes_per_sec": q.read_bytes_per_sec,
        },
        "shards": shards,
    })
}

fn stream_text(d: &pb::StreamDescription) -> String {
    let q = d.quotas.unwrap_or_default();
    let n = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let durability = match pb::DurabilityMode::try_from(d.durability) {
        Ok(pb::DurabilityMode::Interval) => format!("INTERVAL ({} ms)", d.durability_interval_ms),
        _ => durability_name(d.durability),
    };
    let mut out = table(
        &[],
        &[
            vec!["stream".into(), d.stream_name.clone()],
            vec!["status".into(), status_name(d.status)],
            vec!["created".into(), format_rfc3339(d.created_at_ms)],
            vec!["retention".into(), format!("{} h", d.retention_hours)],
            vec!["max record".into(), format!("{} bytes", d.max_record_bytes)],
            vec!["durability".into(), durability],
            vec![
                "write quota".into(),
                format!("{} records/s, {} bytes/s per shard", n(q.write_records_per_sec), n(q.write_bytes_per_sec)),
            ],
            vec![
                "read quota".into(),
                format!("{} calls/s, {} bytes/s per shard", n(q.read_calls_per_sec), n(q.read_bytes_per_sec)),
            ],
            vec!["shards".into(), shard_counts(d)],
        ],
    );
    let rows: Vec<Vec<String>> = shard_tree(&d.shards)
        .into_iter()
        .map(|(depth, s)| {
            let state = if s.closed { "CLOSED".to_string() } else { "OPEN".to_string() };
            let status = if s.failure_kind.is_empty() {
                shard_status_name(s.shard_status)
            } else {
                format!("{} ({}: {})", shard_status_name(s.shard_status), s.failure_kind, s.failure)
            };
            let parents = match (s.parent_shard_id.as_str(), s.adjacent_parent_shard_id.as_str()) {
                ("", _) => "-".to_string(),
                (p, "") => p.to_string(),
                (p, a) => format!("{p} + {a}"),
            };
            let indent = if depth == 0 { String::new() } else { format!("{}└ ", "  ".repeat(depth - 1)) };
            vec![
                format!("{indent}{}", s.shard_id),
                state,
                parents,
                format!("{}..={}", s.starting_hash_key, s.ending_hash_key),
                s.first_sequence_number.to_string(),
                s.ending_sequence_number.unwrap_or(s.next_sequence_number).to_string(),
                s.records_stored.to_string(),
                s.bytes_stored.to_string(),
                status,
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["SHARD", "STATE", "PARENTS", "HASH RANGE", "FIRST SEQ", "NEXT/END SEQ", "RECORDS", "BYTES", "STATUS"],
            &rows,
        ));
    }
    for s in &d.shards {
        for damage in &s.damage {
            out.push_str(&format!(
                "  damage in {}: {} at byte {}: {}\n",
                s.shard_id, damage.segment, damage.position, damage.reason
            ));
        }
    }
    out
}

/// "4 open" or "4 open, 3 closed", with the target while UpdateShardCount runs.
fn shard_counts(d: &pb::StreamDescription) -> String {
    let closed = d.shards.iter().filter(|s| s.closed).count();
    let mut text = format!("{} open", d.shards.len() - closed);
    if closed > 0 {
        text.push_str(&format!(", {closed} closed"));
    }
    if d.target_shard_count > 0 {
        text.push_str(&format!(" (rescaling to {})", d.target_shard_count));
    }
    text
}

/// The shards as a tree, depth first: each shard after its parent (a merge
/// child after its first parent), roots being shards whose parent is not listed.
fn shard_tree(shards: &[pb::ShardDescription]) -> Vec<(usize, &pb::ShardDescription)> {
    let listed = |id: &str| shards.iter().any(|s| s.shard_id == id);
    let mut out = Vec::with_capacity(shards.len());
    let mut stack: Vec<(usize, &pb::ShardDescription)> =
        shards.iter().filter(|s| !listed(&s.parent_shard_id)).rev().map(|s| (0, s)).collect();
    while let Some((depth, s)) = stack.pop() {
        out.push((depth, s));
        stack.extend(shards.iter().filter(|c| c.parent_shard_id == s.shard_id).rev().map(|c| (depth + 1, c)));
    }
    out
}
