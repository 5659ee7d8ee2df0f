//! `streamctl stream`: create, list, describe, delete streams and change
//! their retention.

use clap::Subcommand;
use client::types as pb;

use crate::output::{
    arr, durability_name, jstr, note_empty, obj, opt_num, print, shard_status_name, status_name, table,
};
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
        /// How long records are kept (24..=168; the broker's default when unset).
        #[arg(long, value_name = "H")]
        retention_hours: Option<u32>,
        /// Largest record, partition key plus data (the broker's default when unset).
        #[arg(long, value_name = "B")]
        max_record_bytes: Option<u32>,
    },
    /// List streams.
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
}

pub async fn run(g: &Global, cmd: StreamCmd) -> Result<(), CliError> {
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
                print(&format!("{}\n", stream_json(&d)))
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
            let names = admin.list_streams().await?;
            if g.json {
                return print(&format!("{}\n", obj(&[("streams", arr(names.iter().map(|n| jstr(n))))])));
            }
            let mut rows = Vec::new();
            for name in names {
                match admin.describe_stream(&name).await {
                    Ok(d) => {
                        let records: u64 = d.shards.iter().map(|s| s.records_stored).sum();
                        let bytes: u64 = d.shards.iter().map(|s| s.bytes_stored).sum();
                        rows.push(vec![
                            name,
                            status_name(d.status),
                            d.shards.len().to_string(),
                            records.to_string(),
                            bytes.to_string(),
                            format!("{} h", d.retention_hours),
                        ]);
                    }
                    // Deleted since it was listed.
                    Err(client::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if rows.is_empty() {
                note_empty("streams");
                return Ok(());
            }
            print(&table(&["NAME", "STATUS", "SHARDS", "RECORDS", "BYTES", "RETENTION"], &rows))
        }
        StreamCmd::Describe { name } => {
            let d = admin.describe_stream(&name).await?;
            if g.json { print(&format!("{}\n", stream_json(&d))) } else { print(&stream_text(&d)) }
        }
        StreamCmd::Delete { name } => {
            admin.delete_stream(&name).await?;
            if g.json {
                print(&format!("{}\n", obj(&[("deleted", jstr(&name))])))
            } else {
                print(&format!("deleted stream {name}\n"))
            }
        }
        StreamCmd::Retention { name, hours } => {
            let d = admin.update_retention(&name, hours).await?;
            if g.json {
                print(&format!("{}\n", stream_json(&d)))
            } else {
                print(&format!("stream {} now keeps records for {} h\n", d.stream_name, d.retention_hours))
            }
        }
    }
}

fn stream_json(d: &pb::StreamDescription) -> String {
    let q = d.quotas.unwrap_or_default();
    let shards = d.shards.iter().map(|s| {
        obj(&[
            ("shard_id", jstr(&s.shard_id)),
            ("starting_hash_key", jstr(&s.starting_hash_key)),
            ("ending_hash_key", jstr(&s.ending_hash_key)),
            ("first_sequence_number", s.first_sequence_number.to_string()),
            ("next_sequence_number", s.next_sequence_number.to_string()),
            ("records_stored", s.records_stored.to_string()),
            ("bytes_stored", s.bytes_stored.to_string()),
            ("writable", s.writable.to_string()),
            ("write_error", jstr(&s.write_error)),
            ("shard_status", jstr(&shard_status_name(s.shard_status))),
            ("failure_kind", jstr(&s.failure_kind)),
            ("failure", jstr(&s.failure)),
            (
                "damage",
                arr(s.damage.iter().map(|d| {
                    obj(&[
                        ("segment", jstr(&d.segment)),
                        ("position", d.position.to_string()),
                        ("reason", jstr(&d.reason)),
                    ])
                })),
            ),
        ])
    });
    obj(&[
        ("stream_name", jstr(&d.stream_name)),
        ("stream_id", d.stream_id.to_string()),
        ("status", jstr(&status_name(d.status))),
        ("retention_hours", d.retention_hours.to_string()),
        ("max_record_bytes", d.max_record_bytes.to_string()),
        ("durability", jstr(&durability_name(d.durability))),
        ("durability_interval_ms", d.durability_interval_ms.to_string()),
        ("created_at_ms", d.created_at_ms.to_string()),
        (
            "quotas",
            obj(&[
                ("write_records_per_sec", opt_num(q.write_records_per_sec)),
                ("write_bytes_per_sec", opt_num(q.write_bytes_per_sec)),
                ("read_calls_per_sec", opt_num(q.read_calls_per_sec)),
                ("read_bytes_per_sec", opt_num(q.read_bytes_per_sec)),
            ]),
        ),
        ("shards", arr(shards)),
    ])
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
