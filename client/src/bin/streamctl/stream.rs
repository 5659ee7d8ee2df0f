//! `streamctl stream`: create, list, describe, delete and copy streams
//! and change their retention.

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
                            "shards": d.shards.len(),
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
                        d.shards.len().to_string(),
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
        StreamCmd::Copy(_) => Ok(()),
    }
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
            vec!["shards".into(), d.shards.len().to_string()],
        ],
    );
    let rows: Vec<Vec<String>> = d
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard_id.clone(),
                format!("{}..={}", s.starting_hash_key, s.ending_hash_key),
                s.first_sequence_number.to_string(),
                s.next_sequence_number.to_string(),
                s.records_stored.to_string(),
                s.bytes_stored.to_string(),
                if s.failure_kind.is_empty() {
                    shard_status_name(s.shard_status)
                } else {
                    format!("{} ({}: {})", shard_status_name(s.shard_status), s.failure_kind, s.failure)
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["SHARD", "HASH RANGE", "FIRST SEQ", "NEXT SEQ", "RECORDS", "BYTES", "STATUS"], &rows));
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
