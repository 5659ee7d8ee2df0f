//! `streamctl status`: the broker at a glance, as `rpk cluster health` and
//! `nats server info` give it: readiness and why not, version, durability
//! mode, disk, every stream (failed shards named) and every group's lag.

use client::types as pb;
use serde_json::{Value, json};

use crate::output::{durability_name, print, print_json, table};
use crate::time::format_rfc3339;
use crate::{CliError, Global};

pub async fn run(g: &Global) -> Result<(), CliError> {
    let admin = g.admin().await?;
    let b = admin.describe_broker().await?;
    let mut streams = Vec::new();
    for name in admin.list_streams().await? {
        match admin.describe_stream(&name).await {
            Ok(d) => streams.push(d),
            // Deleted since it was listed.
            Err(client::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut groups = Vec::new();
    for x in admin.list_groups(None).await? {
        match admin.describe_group(&x.stream_name, &x.group_name).await {
            Ok(d) => groups.push(d),
            Err(client::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let failed: Vec<(&str, &pb::ShardDescription)> = streams
        .iter()
        .flat_map(|d| d.shards.iter().filter(|s| !s.failure_kind.is_empty()).map(|s| (d.stream_name.as_str(), s)))
        .collect();
    let durability = match pb::DurabilityMode::try_from(b.durability) {
        Ok(pb::DurabilityMode::Interval) => format!("INTERVAL ({} ms)", b.durability_interval_ms),
        _ => durability_name(b.durability),
    };
    if g.json {
        return print_json(&json!({
            "broker": g.broker,
            "version": b.version,
            "ready": b.problems.is_empty(),
            "problems": b.problems,
            "durability": durability_name(b.durability),
            "durability_interval_ms": b.durability_interval_ms,
            "started_at_ms": b.started_at_ms,
            "disk_free_bytes": b.disk_free_bytes,
            "disk_watermark_bytes": b.disk_watermark_bytes,
            "streams": streams.iter().map(|d| json!({
                "name": d.stream_name,
                "shards": d.open_shard_count,
                "records": d.shards.iter().map(|s| s.records_stored).sum::<u64>(),
                "bytes": d.shards.iter().map(|s| s.bytes_stored).sum::<u64>(),
                "failed_shards": d.shards.iter().filter(|s| !s.failure_kind.is_empty()).count(),
            })).collect::<Vec<Value>>(),
            "groups": groups.iter().map(|d| json!({
                "stream_name": d.stream_name,
                "group_name": d.group_name,
                "members": d.members.len(),
                "lag_records": d.shards.iter().map(|s| s.lag_records).sum::<u64>(),
                "lag_ms": d.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0),
            })).collect::<Vec<Value>>(),
            "failed_shards": failed.iter().map(|(stream, s)| json!({
                "stream_name": stream,
                "shard_id": s.shard_id,
                "failure_kind": s.failure_kind,
                "failure": s.failure,
            })).collect::<Vec<Value>>(),
        }));
    }
    let health = if b.problems.is_empty() { "ready".to_string() } else { "NOT READY".to_string() };
    let records: u64 = streams.iter().flat_map(|d| &d.shards).map(|s| s.records_stored).sum();
    let lag: u64 = groups.iter().flat_map(|d| &d.shards).map(|s| s.lag_records).sum();
    let mut out = table(
        &[],
        &[
            vec!["broker".into(), g.broker.clone()],
            vec!["health".into(), health],
            vec!["version".into(), b.version.clone()],
            vec!["started".into(), format_rfc3339(b.started_at_ms)],
            vec!["durability".into(), durability],
            vec![
                "disk".into(),
                format!("{} bytes free (writes stop below {})", b.disk_free_bytes, b.disk_watermark_bytes),
            ],
            vec!["streams".into(), format!("{} ({records} records, {} failed shards)", streams.len(), failed.len())],
            vec!["groups".into(), format!("{} ({lag} records behind in all)", groups.len())],
        ],
    );
    for p in &b.problems {
        out.push_str(&format!("  problem: {p}\n"));
    }
    if !groups.is_empty() {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|d| {
                vec![
                    d.stream_name.clone(),
                    d.group_name.clone(),
                    d.members.len().to_string(),
                    d.shards.iter().map(|s| s.lag_records).sum::<u64>().to_string(),
                    d.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0).to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["STREAM", "GROUP", "MEMBERS", "LAG RECORDS", "LAG MS"], &rows));
    }
    print(&out)
}
