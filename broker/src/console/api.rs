//! The console API's broker pages: overview, throughput, streams and
//! consumer groups, with the changes they allow (create a stream, change
//! its retention, reset a group). Field names are snake_case; sizes in
//! bytes, times in ms since the Unix epoch, hash keys as decimal strings
//! (they do not fit a JSON number).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Console;
use super::error::ApiError;
use crate::catalog::{CreateStream, Stream};
use crate::config::DurabilityMode;
use crate::group::{GroupInfo, ResetTo};
use crate::http::Readiness;
use crate::metadata::StartPosition;
use crate::shard::{FailureKind, Shard, parse_shard_id};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The console.
    pub console: Arc<Console>,
    /// The broker's readiness (for the overview).
    pub readiness: Arc<Readiness>,
}

/// A JSON answer or an API error.
pub type ApiResult<T = Value> = Result<Json<T>, ApiError>;

/// Parses a JSON request body; the error names the body and quotes serde's
/// reason, which names the field.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e))
}

/// The query string, or a 400 naming it.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::invalid("query", e.body_text()))
}

/// Runs blocking work (log reads) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(crate::error::BrokerError::Unavailable(format!("blocking task failed: {e}"))))?
}

fn durability_name(mode: DurabilityMode) -> &'static str {
    match mode {
        DurabilityMode::Always => "always",
        DurabilityMode::Interval => "interval",
        DurabilityMode::Never => "never",
    }
}

/// A shard's status as DescribeStream names it.
fn shard_status(s: &Shard) -> &'static str {
    match (s.failure(), s.stats()) {
        (None, _) => "serving",
        (Some(f), _) if f.kind == FailureKind::DiskFull => "disk_full",
        (Some(_), Some(_)) => "read_only",
        (Some(_), None) => "failed",
    }
}

/// `GET /api/v1/overview`
pub async fn overview(State(s): State<AppState>) -> ApiResult {
    let c = &s.console;
    let a = c.attached()?;
    let disk = a.catalog.disk().last();
    let streams = a.catalog.all();
    let mut shards = 0usize;
    let mut data_bytes = 0u64;
    for stream in &streams {
        let held = stream.shards();
        shards += held.len();
        data_bytes += held.iter().filter_map(|s| s.stats()).map(|st| st.bytes).sum::<u64>();
    }
    let failed: Vec<Value> = a
        .catalog
        .failed_shards()
        .into_iter()
        .map(|f| json!({"stream": f.stream, "shard_id": f.shard_id, "kind": f.failure.kind.as_str(), "cause": f.failure.cause}))
        .collect();
    let problems = s.readiness.problems();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": problems.is_empty(),
        "problems": problems,
        "durability": {"mode": durability_name(c.broker.durability.mode), "interval_ms": c.broker.durability.interval_ms},
        "quotas_enforced": c.broker.quotas_enforced,
        "mutations_enabled": c.config.mutations,
        "orders_enabled": c.orders.enabled(),
        "sample_interval_ms": c.config.sample_interval_ms,
        "disk": {
            "free_bytes": disk.free_bytes,
            "total_bytes": disk.total_bytes,
            "used_bytes": disk.total_bytes.saturating_sub(disk.free_bytes),
            "watermark_bytes": disk.watermark_bytes,
            "full": disk.full,
            "reserve_present": disk.reserve_present,
            "data_bytes": data_bytes,
        },
        "streams": streams.len(),
        "shards": shards,
        "groups": a.groups.list(None)?.len(),
        "failed_shards": failed,
        "throughput": c.sampler.latest(),
        "totals": c.sampler.totals(),
    })))
}

/// `GET /api/v1/throughput`
pub async fn throughput(State(s): State<AppState>) -> ApiResult {
    s.console.attached()?;
    Ok(Json(json!({
        "interval_ms": s.console.config.sample_interval_ms,
        "points": s.console.sampler.throughput(),
    })))
}

fn stream_summary(c: &Console, stream: &Stream) -> Value {
    let meta = stream.meta();
    let (mut records, mut bytes, mut failed) = (0u64, 0u64, 0usize);
    let (mut rin, mut bin, mut rout, mut bout) = (0.0, 0.0, 0.0, 0.0);
    for shard in &stream.shards() {
        if let Some(st) = shard.stats() {
            records += st.next_seq - st.first_seq;
            bytes += st.bytes;
        }
        if shard.failure().is_some() {
            failed += 1;
        }
        let r = c.sampler.shard_rates(meta.id, shard.index);
        rin += r.write_records_per_sec;
        bin += r.write_bytes_per_sec;
        rout += r.read_records_per_sec;
        bout += r.read_bytes_per_sec + r.pushed_bytes_per_sec;
    }
    json!({
        "name": meta.name,
        "id": meta.id,
        "shard_count": stream.shards().len(),
        "open_shards": stream.layout().open_count(),
        "failed_shards": failed,
        "retention_hours": meta.retention_hours,
        "records": records,
        "bytes": bytes,
        "created_at_ms": meta.created_at_ms,
        "rates": {
            "records_in_per_sec": rin,
            "bytes_in_per_sec": bin,
            "records_out_per_sec": rout,
            "bytes_out_per_sec": bout,
        },
    })
}

/// `GET /api/v1/streams`
pub async fn streams(State(s): State<AppState>) -> ApiResult {
    let a = s.console.attached()?;
    let list: Vec<Value> = a.catalog.all().iter().map(|st| stream_summary(&s.console, st)).collect();
    Ok(Json(json!({ "streams": list })))
}

fn fraction(rate: f64, quota: u64) -> f64 {
    if quota == 0 { 0.0 } else { rate / quota as f64 }
}

fn shard_view(
    c: &Console,
    stream_id: u64,
    quotas: &crate::quota::QuotaValues,
    shard: &Shard,
    info: Option<&crate::metadata::ShardMeta>,
) -> Value {
    let stats = shard.stats();
    let failure = shard.failure();
    let r = c.sampler.shard_rates(stream_id, shard.index);
    let write_used = fraction(r.write_records_per_sec, quotas.write_records_per_sec)
        .max(fraction(r.write_bytes_per_sec, quotas.write_bytes_per_sec));
    let read_used = fraction(r.read_calls_per_sec, quotas.read_calls_per_sec)
        .max(fraction(r.read_bytes_per_sec, quotas.read_bytes_per_sec));
    json!({
        "shard_id": shard.id,
        "index": shard.index,
        "state": if info.is_some_and(|m| !m.is_open()) { "closed" } else { "open" },
        "parent_shard_id": info.and_then(|m| m.parent).map(crate::shard::shard_id),
        "adjacent_parent_shard_id": info.and_then(|m| m.adjacent_parent).map(crate::shard::shard_id),
        "ending_sequence_number": info.and_then(|m| match m.state {
            crate::metadata::ShardState::Closed { ending_seq, .. } => Some(ending_seq),
            _ => None,
        }),
        "status": shard_status(shard),
        "failure": failure.map(|f| json!({"kind": f.kind.as_str(), "cause": f.cause})),
        "damage": shard.damage().into_iter().map(|d| json!({"segment": d.segment, "position": d.position, "reason": d.reason})).collect::<Vec<_>>(),
        "starting_hash_key": shard.hash_range.0.to_string(),
        "ending_hash_key": shard.hash_range.1.to_string(),
        "first_sequence_number": stats.map(|s| s.first_seq),
        "next_sequence_number": stats.map(|s| s.next_seq),
        "records": stats.map_or(0, |s| s.next_seq - s.first_seq),
        "bytes": stats.map_or(0, |s| s.bytes),
        "last_arrival_ms": stats.and_then(|s| s.last_timestamp_ms),
        "rates": r,
        "write_quota_used": write_used,
        "read_quota_used": read_used,
        "usage": shard.quota.usage(),
    })
}

/// `GET /api/v1/streams/{stream}`
pub async fn stream(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let c = &s.console;
    let a = c.attached()?;
    crate::catalog::validate_stream_name(&name)?;
    let stream = a.catalog.get(&name)?;
    let meta = stream.meta();
    let layout = stream.layout();
    let shards: Vec<Value> =
        layout.shards().map(|sh| shard_view(c, meta.id, &meta.quotas, sh, layout.info(sh.index))).collect();
    let groups: Vec<String> = a.groups.list(Some(&name))?.into_iter().map(|(_, g)| g).collect();
    let mut out = stream_summary(c, &stream);
    let extra = json!({
        "max_record_bytes": meta.max_record_bytes,
        "quotas": meta.quotas,
        "quotas_enforced": c.broker.quotas_enforced,
        "durability": durability_name(c.broker.durability.mode),
        "shards": shards,
        "groups": groups,
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    Ok(Json(out))
}

/// `POST /api/v1/streams` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    shard_count: u32,
    #[serde(default)]
    retention_hours: Option<u32>,
}

/// `POST /api/v1/streams`
pub async fn create_stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.console.check_mutation(&headers)?;
    let a = s.console.attached()?;
    let b: CreateBody = parse_body(&body)?;
    let req = CreateStream {
        name: b.name,
        shard_count: b.shard_count,
        retention_hours: b.retention_hours,
        ..CreateStream::default()
    };
    let stream = a.service.create_stream(req).await?;
    tracing::info!(stream = %stream.meta().name, "stream created from the console");
    Ok((StatusCode::CREATED, Json(stream_summary(&s.console, &stream))))
}

/// The checks every change to a stream makes first: mutations on and from
/// this origin, the broker attached, the stream's name valid, the body's JSON.
fn stream_change<'a, B: DeserializeOwned>(
    s: &'a AppState,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(&'a super::Attached, B), ApiError> {
    s.console.check_mutation(headers)?;
    let a = s.console.attached()?;
    crate::catalog::validate_stream_name(name)?;
    Ok((a, parse_body(body)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    retention_hours: u32,
}

/// `PUT /api/v1/streams/{stream}/retention`
pub async fn update_retention(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (a, b): (_, RetentionBody) = stream_change(&s, &name, &headers, &body)?;
    let stream = a.service.update_retention(&name, b.retention_hours).await?;
    tracing::info!(stream = %name, retention_hours = b.retention_hours, "retention changed from the console");
    Ok(Json(stream_summary(&s.console, &stream)))
}

/// `POST /api/v1/streams/{stream}/split` body: the shard, and where its
/// second child starts (decimal; the middle of its range when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    shard_id: String,
    #[serde(default)]
    new_starting_hash_key: Option<String>,
}

/// `POST /api/v1/streams/{stream}/split`: SplitShard.
pub async fn split_shard(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (a, b): (_, SplitBody) = stream_change(&s, &name, &headers, &body)?;
    let at = match b.new_starting_hash_key {
        Some(k) => k,
        None => {
            let stream = a.catalog.get(&name)?;
            let shard = stream.shard_by_id("shard_id", &b.shard_id)?;
            let (lo, hi) = shard.hash_range;
            if lo == hi {
                return Err(ApiError::invalid(
                    "shard_id",
                    format!("{} owns one hash key and cannot be split", b.shard_id),
                ));
            }
            (lo + (hi - lo) / 2 + 1).to_string()
        }
    };
    let stream = a.service.split_shard(&name, &b.shard_id, &at).await?;
    tracing::info!(stream = %name, shard = %b.shard_id, at = %at, "shard split from the console");
    Ok(Json(stream_summary(&s.console, &stream)))
}

/// `POST /api/v1/streams/{stream}/merge` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    shard_id: String,
    adjacent_shard_id: String,
}

/// `POST /api/v1/streams/{stream}/merge`: MergeShards.
pub async fn merge_shards(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (a, b): (_, MergeBody) = stream_change(&s, &name, &headers, &body)?;
    let stream = a.service.merge_shards(&name, &b.shard_id, &b.adjacent_shard_id).await?;
    tracing::info!(stream = %name, shard = %b.shard_id, adjacent = %b.adjacent_shard_id, "shards merged from the console");
    Ok(Json(stream_summary(&s.console, &stream)))
}

/// `POST /api/v1/streams/{stream}/scale` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    target_shard_count: u32,
}

/// `POST /api/v1/streams/{stream}/scale`: UpdateShardCount (uniform).
pub async fn scale_stream(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let (a, b): (_, ScaleBody) = stream_change(&s, &name, &headers, &body)?;
    let scaled = a.service.update_shard_count(&name, b.target_shard_count).await?;
    tracing::info!(stream = %name, from = scaled.from, target = scaled.target, "stream rescaled from the console");
    Ok(Json(stream_summary(&s.console, &scaled.stream)))
}

fn start_view(p: StartPosition) -> Value {
    match p {
        StartPosition::TrimHorizon => json!({"position": "trim_horizon"}),
        StartPosition::Latest => json!({"position": "latest"}),
        StartPosition::AtTimestamp(ts) => json!({"position": "at_timestamp", "timestamp_ms": ts}),
    }
}

/// A consumer group in the list.
#[derive(Debug, Serialize)]
pub struct GroupSummary {
    stream: String,
    group: String,
    generation: u64,
    members: usize,
    shards: usize,
    lag_records: u64,
    lag_ms: u64,
}

fn group_summary(info: &GroupInfo) -> GroupSummary {
    GroupSummary {
        stream: info.stream.clone(),
        group: info.meta.name.clone(),
        generation: info.generation,
        members: info.members.len(),
        shards: info.shards.len(),
        lag_records: info.shards.iter().map(|s| s.lag_records).sum(),
        lag_ms: info.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0),
    }
}

/// `GET /api/v1/groups`
pub async fn groups(State(s): State<AppState>) -> ApiResult {
    let a = s.console.attached()?;
    let mut out = Vec::new();
    for (stream, group) in a.groups.list(None)? {
        // A group deleted since the listing is simply left out.
        if let Ok(info) = a.groups.describe(&stream, &group).await {
            out.push(group_summary(&info));
        }
    }
    Ok(Json(json!({ "groups": out })))
}

/// `GET /api/v1/streams/{stream}/groups/{group}`
pub async fn group(State(s): State<AppState>, Path((stream, group)): Path<(String, String)>) -> ApiResult {
    let c = &s.console;
    let a = c.attached()?;
    let info = a.groups.describe(&stream, &group).await?;
    let shard_name = crate::shard::shard_id;
    let members: Vec<Value> = info
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "last_heartbeat_age_ms": m.last_heartbeat_age_ms,
                "leases": m.leases.iter().map(|l| json!({"shard_id": shard_name(l.shard), "epoch": l.epoch, "revoking": l.revoking})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let shards: Vec<Value> = info
        .shards
        .iter()
        .map(|sh| {
            json!({
                "shard_id": shard_name(sh.shard),
                "owner": sh.owner,
                "epoch": sh.epoch,
                "revoking": sh.revoking,
                "checkpoint": sh.checkpoint,
                "lag_records": sh.lag_records,
                "lag_ms": sh.lag_ms,
            })
        })
        .collect();
    let summary = group_summary(&info);
    Ok(Json(json!({
        "stream": info.stream,
        "group": info.meta.name,
        "start": start_view(info.meta.start),
        "created_at_ms": info.meta.created_at_ms,
        "generation": info.generation,
        "session_timeout_ms": a.groups.session_timeout_ms(),
        "lag_records": summary.lag_records,
        "lag_ms": summary.lag_ms,
        "members": members,
        "shards": shards,
        "sample_interval_ms": c.config.sample_interval_ms,
        "history": c.sampler.lag(&stream, &group),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    to: String,
    #[serde(default)]
    timestamp_ms: Option<u64>,
    #[serde(default)]
    shard_id: Option<String>,
    #[serde(default)]
    sequence_number: Option<u64>,
}

/// `POST /api/v1/streams/{stream}/groups/{group}/reset`
pub async fn reset_group(
    State(s): State<AppState>,
    Path((stream, group)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<GroupSummary> {
    s.console.check_mutation(&headers)?;
    let a = s.console.attached()?;
    let b: ResetBody = parse_body(&body)?;
    let to = match b.to.as_str() {
        "trim_horizon" => ResetTo::TrimHorizon,
        "latest" => ResetTo::Latest,
        "timestamp" => ResetTo::AtTimestamp(
            b.timestamp_ms.ok_or_else(|| ApiError::invalid("timestamp_ms", "required when to is \"timestamp\""))?,
        ),
        "sequence" => {
            let id = b.shard_id.ok_or_else(|| ApiError::invalid("shard_id", "required when to is \"sequence\""))?;
            let shard = parse_shard_id(&id).ok_or_else(|| {
                ApiError::invalid("shard_id", format!("{id:?} is not of the form shardId-NNNNNNNNNNNN"))
            })?;
            let seq = b
                .sequence_number
                .ok_or_else(|| ApiError::invalid("sequence_number", "required when to is \"sequence\""))?;
            ResetTo::AtSequence { shard, seq }
        }
        other => {
            return Err(ApiError::invalid(
                "to",
                format!("{other:?} is not one of \"trim_horizon\", \"latest\", \"timestamp\", \"sequence\""),
            ));
        }
    };
    // Through the service, which authorizes group:admin for the caller.
    let info = a.service.reset_group(&stream, &group, to).await?;
    tracing::info!(%stream, %group, ?to, "group reset from the console");
    Ok(Json(group_summary(&info)))
}

/// Any other `/api/v1/...` path.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no console API at {}", uri.path()))
}
