//! `streamctl group`: list, describe, reset and delete consumer groups.

use clap::Subcommand;
use client::Admin;
use client::types as pb;
use serde_json::{Value, json};

use crate::output::{iterator_name, note_empty, print, print_json, table};
use crate::positions::{self, At, check_shard};
use crate::time::format_rfc3339;
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List consumer groups with their members and lag.
    #[command(alias = "ls")]
    List {
        /// Only the groups of this stream.
        #[arg(long, value_name = "STREAM")]
        stream: Option<String>,
    },
    /// Show a group's members, checkpoints and lag.
    Describe {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
    /// Move a group's checkpoints (only while it has no live member).
    Reset {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
        /// trim-horizon, latest, -N (the last N of each shard), @TIME (@2026-11-28T10:00:00Z, @-5m) or seq:[SHARD:]N.
        #[arg(long, value_name = "POSITION", allow_hyphen_values = true, value_parser = positions::parse_at)]
        to: At,
        /// Move only this shard: its number (2) or id (shardId-000000000002).
        #[arg(long, value_name = "SHARD", value_parser = positions::shard_id)]
        shard: Option<String>,
    },
    /// Delete a group and its checkpoints (only while it has no live member).
    #[command(alias = "rm")]
    Delete {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
}

pub async fn run(g: &Global, cmd: GroupCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        GroupCmd::List { stream } => {
            let mut groups = Vec::new();
            for x in admin.list_groups(stream.as_deref()).await? {
                match admin.describe_group(&x.stream_name, &x.group_name).await {
                    Ok(d) => groups.push(d),
                    // Deleted since it was listed.
                    Err(client::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if g.json {
                let items: Vec<Value> = groups
                    .iter()
                    .map(|d| {
                        json!({
                            "stream_name": d.stream_name,
                            "group_name": d.group_name,
                            "members": d.members.len(),
                            "lag_records": lag_records(d),
                            "lag_ms": lag_ms(d),
                        })
                    })
                    .collect();
                return print_json(&json!({ "groups": items }));
            }
            if groups.is_empty() {
                note_empty("groups");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|d| {
                    vec![
                        d.stream_name.clone(),
                        d.group_name.clone(),
                        d.members.len().to_string(),
                        lag_records(d).to_string(),
                        lag_ms(d).to_string(),
                    ]
                })
                .collect();
            print(&table(&["STREAM", "GROUP", "MEMBERS", "LAG RECORDS", "LAG MS"], &rows))
        }
        GroupCmd::Describe { stream, group } => {
            let d = admin.describe_group(&stream, &group).await?;
            print_group(g, &d)
        }
        GroupCmd::Reset { stream, group, to, shard } => {
            let mut last = None;
            for req in reset_requests(&admin, &stream, &group, to, shard).await? {
                last = Some(admin.reset_group(req).await?);
            }
            match last {
                Some(d) => print_group(g, &d),
                None => Err(CliError::failed(format!("stream {stream} has no shards to reset"))),
            }
        }
        GroupCmd::Delete { stream, group } => {
            admin.delete_group(&stream, &group).await?;
            if g.json {
                print_json(&json!({ "deleted": { "stream_name": stream, "group_name": group } }))
            } else {
                print(&format!("deleted group {group} of stream {stream}\n"))
            }
        }
    }
}

/// The ResetGroup calls that move `group` to `to`: one for a position the
/// broker resolves per shard itself, one per shard for `-N` and `--shard`.
async fn reset_requests(
    admin: &Admin,
    stream: &str,
    group: &str,
    to: At,
    shard: Option<String>,
) -> Result<Vec<pb::ResetGroupRequest>, CliError> {
    let base = pb::ResetGroupRequest { stream_name: stream.into(), group_name: group.into(), ..Default::default() };
    let at_seq = |shard_id: &str, seq: u64| pb::ResetGroupRequest {
        position: pb::IteratorType::AtSequenceNumber as i32,
        sequence_number: Some(seq),
        shard_id: shard_id.into(),
        ..base.clone()
    };
    let one = match (&to, &shard) {
        (At::Seq { shard: Some(a), .. }, Some(b)) if a != b => {
            return Err(CliError::usage(format!("--shard {b} and --to seq:{a}:N name different shards")));
        }
        (At::Seq { shard: Some(a), seq }, _) | (At::Seq { shard: None, seq }, Some(a)) => {
            return Ok(vec![at_seq(a, *seq)]);
        }
        (At::Seq { shard: None, .. }, None) => {
            return Err(CliError::usage("--to seq:N moves one shard: name it, seq:SHARD:N, or add --shard"));
        }
        (At::Time(_), Some(_)) => {
            return Err(CliError::usage("--to @TIME moves every shard; leave out --shard"));
        }
        (At::TrimHorizon, None) => {
            Some(pb::ResetGroupRequest { position: pb::IteratorType::TrimHorizon as i32, ..base.clone() })
        }
        (At::Latest, None) => Some(pb::ResetGroupRequest { position: pb::IteratorType::Latest as i32, ..base.clone() }),
        (At::Time(ms), None) => Some(pb::ResetGroupRequest {
            position: pb::IteratorType::AtTimestamp as i32,
            timestamp_ms: Some(*ms),
            ..base.clone()
        }),
        _ => None,
    };
    if let Some(req) = one {
        return Ok(vec![req]);
    }
    // Per shard: -N, or trim-horizon/latest of one shard.
    let d = admin.describe_stream(stream).await?;
    if let Some(s) = &shard {
        check_shard(&d, s)?;
    }
    Ok(d.shards
        .iter()
        .filter(|s| shard.as_ref().is_none_or(|only| *only == s.shard_id))
        .map(|s| {
            let seq = match to {
                At::Last(n) => s.next_sequence_number.saturating_sub(n).max(s.first_sequence_number),
                At::Latest => s.next_sequence_number,
                _ => s.first_sequence_number,
            };
            at_seq(&s.shard_id, seq)
        })
        .collect())
}

fn lag_records(d: &pb::GroupDescription) -> u64 {
    d.shards.iter().map(|s| s.lag_records).sum()
}

fn lag_ms(d: &pb::GroupDescription) -> u64 {
    d.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0)
}

fn print_group(g: &Global, d: &pb::GroupDescription) -> Result<(), CliError> {
    if g.json { print_json(&group_json(d)) } else { print(&group_text(d)) }
}

fn start_text(start: Option<&pb::GroupStart>) -> (String, Option<u64>) {
    start.map_or(("-".into(), None), |s| (iterator_name(s.position), s.timestamp_ms))
}

pub fn group_json(d: &pb::GroupDescription) -> Value {
    let (position, ts) = start_text(d.start.as_ref());
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "leases": m.leases.iter().map(|l| json!({
                    "shard_id": l.shard_id, "lease_epoch": l.lease_epoch, "revoking": l.revoking,
                })).collect::<Vec<_>>(),
                "last_heartbeat_age_ms": m.last_heartbeat_age_ms,
            })
        })
        .collect();
    let shards: Vec<Value> = d
        .shards
        .iter()
        .map(|s| {
            json!({
                "shard_id": s.shard_id,
                "owner_member_id": (!s.owner_member_id.is_empty()).then_some(&s.owner_member_id),
                "lease_epoch": s.lease_epoch,
                "revoking": s.revoking,
                "checkpoint": s.has_checkpoint.then_some(s.checkpoint),
                "lag_records": s.lag_records,
                "lag_ms": s.lag_ms,
            })
        })
        .collect();
    json!({
        "stream_name": d.stream_name,
        "group_name": d.group_name,
        "start": { "position": position, "timestamp_ms": ts },
        "generation": d.generation,
        "session_timeout_ms": d.session_timeout_ms,
        "lag_records": lag_records(d),
        "members": members,
        "shards": shards,
    })
}

fn group_text(d: &pb::GroupDescription) -> String {
    let (position, ts) = start_text(d.start.as_ref());
    let start = match ts {
        Some(ms) => format!("{position} {}", format_rfc3339(ms)),
        None => position,
    };
    let lag: u64 = d.shards.iter().map(|s| s.lag_records).sum();
    let mut out = table(
        &[],
        &[
            vec!["group".into(), d.group_name.clone()],
            vec!["stream".into(), d.stream_name.clone()],
            vec!["start".into(), start],
            vec!["generation".into(), d.generation.to_string()],
            vec!["session timeout".into(), format!("{} ms", d.session_timeout_ms)],
            vec!["members".into(), d.members.len().to_string()],
            vec!["lag".into(), format!("{lag} records")],
        ],
    );
    if !d.members.is_empty() {
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    m.client_id.clone(),
                    if m.leases.is_empty() {
                        "-".into()
                    } else {
                        let shards: Vec<String> = m
                            .leases
                            .iter()
                            .map(|l| if l.revoking { format!("{} (revoking)", l.shard_id) } else { l.shard_id.clone() })
                            .collect();
                        shards.join(",")
                    },
                    format!("{} ms", m.last_heartbeat_age_ms),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["MEMBER", "CLIENT", "SHARDS", "HEARTBEAT AGE"], &rows));
    }
    if !d.shards.is_empty() {
        let rows: Vec<Vec<String>> = d
            .shards
            .iter()
            .map(|s| {
                vec![
                    s.shard_id.clone(),
                    match (s.owner_member_id.is_empty(), s.revoking) {
                        (true, _) => "-".into(),
                        (false, false) => s.owner_member_id.clone(),
                        (false, true) => format!("{} (revoking)", s.owner_member_id),
                    },
                    if s.has_checkpoint { s.checkpoint.to_string() } else { "-".into() },
                    s.lag_records.to_string(),
                    s.lag_ms.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["SHARD", "OWNER", "CHECKPOINT", "LAG RECORDS", "LAG MS"], &rows));
    }
    out
}
