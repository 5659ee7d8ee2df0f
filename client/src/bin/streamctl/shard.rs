//! `streamctl shard repair`: what repairing a failed or damaged shard would
//! do, and with `--yes`, doing it.

use clap::Subcommand;
use client::types as pb;

use serde_json::{Value, json};

use crate::output::{print, print_json, repair_action_name, shard_status_name, table};
use crate::positions;
use crate::{CliError, Global};

#[derive(Debug, Subcommand)]
pub enum ShardCmd {
    /// Show what repairing a shard would do; with --yes, do it. A damaged
    /// log is cut at its first damage (every record from there on is lost);
    /// a failed shard's log is opened again. Without --yes nothing changes
    /// and the exit status is 1.
    Repair {
        /// Stream name.
        stream: String,
        /// Shard: its number (2) or id (shardId-000000000002).
        #[arg(value_parser = positions::shard_id)]
        shard: String,
        /// Required: accept that records after the first damage are cut.
        #[arg(long, required = true)]
        truncate_after_damage: bool,
        /// Apply the plan (otherwise only print it).
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(g: &Global, cmd: ShardCmd) -> Result<(), CliError> {
    let admin = g.admin().await?;
    match cmd {
        ShardCmd::Repair { stream, shard, truncate_after_damage: _, yes } => {
            let r = admin.repair_shard(&stream, &shard, yes).await?;
            let plan = r.plan.clone().unwrap_or_default();
            if g.json {
                print_json(&repair_json(&stream, &r))?;
            } else {
                print(&repair_text(&stream, &shard, &r))?;
            }
            if !yes && plan.action != pb::RepairAction::Nothing as i32 {
                return Err(CliError::failed("dry run: nothing was changed; run again with --yes to apply this plan"));
            }
            Ok(())
        }
    }
}

fn repair_json(stream: &str, r: &pb::RepairShardResponse) -> Value {
    let p = r.plan.clone().unwrap_or_default();
    let shard = r.shard.clone().unwrap_or_default();
    json!({
        "stream_name": stream,
        "shard_id": shard.shard_id,
        "applied": r.applied,
        "action": repair_action_name(p.action),
        "reason": p.reason,
        "segment": p.segment,
        "cut_position": p.cut_position,
        "first_lost_sequence_number": p.first_lost_sequence_number,
        "records_lost": p.records_lost,
        "bytes_removed": p.bytes_removed,
        "segments_removed": p.segments_removed,
        "shard_status": shard_status_name(shard.shard_status),
        "failure": shard.failure,
    })
}

fn repair_text(stream: &str, shard: &str, r: &pb::RepairShardResponse) -> String {
    let p = r.plan.clone().unwrap_or_default();
    let mut rows = vec![
        vec!["shard".into(), format!("{shard} of stream {stream}")],
        vec!["reason".into(), p.reason.clone()],
        vec!["action".into(), repair_action_name(p.action)],
    ];
    if p.action == pb::RepairAction::Truncate as i32 {
        let removed = if p.segments_removed.is_empty() { "none".into() } else { p.segments_removed.join(", ") };
        rows.extend([
            vec!["cut".into(), format!("{} at byte {}", p.segment, p.cut_position)],
            vec!["first lost".into(), format!("sequence number {}", p.first_lost_sequence_number)],
            vec!["records lost".into(), p.records_lost.to_string()],
            vec!["bytes removed".into(), p.bytes_removed.to_string()],
            vec!["segments removed".into(), removed],
        ]);
    }
    if let Some(s) = &r.shard {
        let status = if s.failure.is_empty() {
            shard_status_name(s.shard_status)
        } else {
            format!("{} ({}: {})", shard_status_name(s.shard_status), s.failure_kind, s.failure)
        };
        rows.push(vec![if r.applied { "status now".into() } else { "status".into() }, status]);
    }
    rows.push(vec!["applied".into(), if r.applied { "yes".into() } else { "no (dry run)".into() }]);
    table(&[], &rows)
}
