//! `streamctl group`: list, describe and reset consumer groups.

use clap::Subcommand;
use client::types as pb;

use crate::output::{arr, iterator_name, jstr, note_empty, obj, opt_num, print, table};
use crate::time::{format_rfc3339, parse_rfc3339};
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List consumer groups.
    #[command(alias = "ls")]
    List {
        /// Only the groups of this stream.
        #[arg(long, value_name = "S")]
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
        /// trim-horizon, latest, ts:RFC3339 or seq:SHARD_ID:N.
        #[arg(long, value_name = "POSITION", value_parser = parse_reset)]
        to: ResetTo,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    TrimHorizon,
    Latest,
    Ts(u64),
    Seq { shard: String, seq: u64 },
}

fn parse_reset(s: &str) -> Result<ResetTo, String> {
    match s {
        "trim-horizon" => Ok(ResetTo::TrimHorizon),
        "latest" => Ok(ResetTo::Latest),
        _ => {
            if let Some(rest) = s.strip_prefix("seq:") {
                let (shard, n) = rest.rsplit_once(':').ok_or("expected seq:SHARD_ID:N")?;
                let seq = n.parse().map_err(|_| format!("seq:SHARD_ID:N needs a sequence number, got {n:?}"))?;
                if shard.is_empty() {
                    return Err("expected seq:SHARD_ID:N".into());
                }
                Ok(ResetTo::Seq { shard: shard.into(), seq })
            } else if let Some(t) = s.strip_prefix("ts:") {
                parse_rfc3339(t).map(ResetTo::Ts)
            } else {
                Err("expected trim-horizon, latest, ts:RFC3339 or seq:SHARD_ID:N".into())
            }
        }
    }
}

pub async fn run(g: &Global, cmd: GroupCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        GroupCmd::List { stream } => {
            let groups = admin.list_groups(stream.as_deref()).await?;
            if g.json {
                let items = groups
                    .iter()
                    .map(|x| obj(&[("stream_name", jstr(&x.stream_name)), ("group_name", jstr(&x.group_name))]));
                return print(&format!("{}\n", obj(&[("groups", arr(items))])));
            }
            if groups.is_empty() {
                note_empty("groups");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = groups.into_iter().map(|x| vec![x.stream_name, x.group_name]).collect();
            print(&table(&["STREAM", "GROUP"], &rows))
        }
        GroupCmd::Describe { stream, group } => {
            let d = admin.describe_group(&stream, &group).await?;
            print_group(g, &d)
        }
        GroupCmd::Reset { stream, group, to } => {
            let mut req = pb::ResetGroupRequest { stream_name: stream, group_name: group, ..Default::default() };
            match to {
                ResetTo::TrimHorizon => req.position = pb::IteratorType::TrimHorizon as i32,
                ResetTo::Latest => req.position = pb::IteratorType::Latest as i32,
                ResetTo::Ts(ms) => {
                    req.position = pb::IteratorType::AtTimestamp as i32;
                    req.timestamp_ms = Some(ms);
                }
                ResetTo::Seq { shard, seq } => {
                    req.position = pb::IteratorType::AtSequenceNumber as i32;
                    req.sequence_number = Some(seq);
                    req.shard_id = shard;
                }
            }
            let d = admin.reset_group(req).await?;
            print_group(g, &d)
        }
    }
}

fn print_group(g: &Global, d: &pb::GroupDescription) -> Result<(), CliError> {
    if g.json { print(&format!("{}\n", group_json(d))) } else { print(&group_text(d)) }
}

fn start_text(start: Option<&pb::GroupStart>) -> (String, Option<u64>) {
    start.map_or(("-".into(), None), |s| (iterator_name(s.position), s.timestamp_ms))
}

fn group_json(d: &pb::GroupDescription) -> String {
    let (position, ts) = start_text(d.start.as_ref());
    let members = d.members.iter().map(|m| {
        obj(&[
            ("member_id", jstr(&m.member_id)),
            ("client_id", jstr(&m.client_id)),
            (
                "leases",
                arr(m.leases.iter().map(|l| {
                    obj(&[
                        ("shard_id", jstr(&l.shard_id)),
                        ("lease_epoch", l.lease_epoch.to_string()),
                        ("revoking", l.revoking.to_string()),
                    ])
                })),
            ),
            ("last_heartbeat_age_ms", m.last_heartbeat_age_ms.to_string()),
        ])
    });
    let shards = d.shards.iter().map(|s| {
        obj(&[
            ("shard_id", jstr(&s.shard_id)),
            ("owner_member_id", if s.owner_member_id.is_empty() { "null".into() } else { jstr(&s.owner_member_id) }),
            ("lease_epoch", s.lease_epoch.to_string()),
            ("revoking", s.revoking.to_string()),
            ("checkpoint", if s.has_checkpoint { s.checkpoint.to_string() } else { "null".into() }),
            ("lag_records", s.lag_records.to_string()),
            ("lag_ms", s.lag_ms.to_string()),
        ])
    });
    obj(&[
        ("stream_name", jstr(&d.stream_name)),
        ("group_name", jstr(&d.group_name)),
        ("start", obj(&[("position", jstr(&position)), ("timestamp_ms", opt_num(ts))])),
        ("generation", d.generation.to_string()),
        ("session_timeout_ms", d.session_timeout_ms.to_string()),
        ("members", arr(members)),
        ("shards", arr(shards)),
    ])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_positions_parse() {
        assert_eq!(
            parse_reset("seq:shardId-000000000001:42"),
            Ok(ResetTo::Seq { shard: "shardId-000000000001".into(), seq: 42 })
        );
        assert!(parse_reset("seq:42").is_err());
    }
}
