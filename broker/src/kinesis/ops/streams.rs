//! Streams and shards: CreateStream, DeleteStream, DescribeStream,
//! DescribeStreamSummary, ListStreams, ListShards, retention,
//! UpdateMaxRecordSize, and the resharding operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::super::codec::{Format, Timestamp};
use super::super::error::KinesisError;
use super::super::names::{PageToken, Sequence, stream_id};
use super::super::validate::Checks;
use super::super::{Answer, KinesisEdge, done, reply};
use super::data::{HashKeyRange, encryption_type};
use crate::catalog::{CreateStream, Stream};
use crate::metadata::{StreamAttributes, StreamMode, StreamStatus};
use crate::service::{CreateStreamWith, LIST_STREAMS_LIMIT_MAX, Service, ShardView};

const STREAM_MODES: [&str; 2] = ["PROVISIONED", "ON_DEMAND"];
/// Default page of DescribeStream.
const DESCRIBE_STREAM_LIMIT_DEFAULT: usize = 100;
/// Default page of ListShards.
const LIST_SHARDS_LIMIT_DEFAULT: usize = 1000;
const SHARD_FILTERS: [&str; 6] =
    ["AFTER_SHARD_ID", "AT_TRIM_HORIZON", "FROM_TRIM_HORIZON", "AT_LATEST", "AT_TIMESTAMP", "FROM_TIMESTAMP"];

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StreamModeDetails {
    pub stream_mode: Option<String>,
}

pub(super) fn mode_name(mode: StreamMode) -> &'static str {
    match mode {
        StreamMode::Provisioned => "PROVISIONED",
        StreamMode::OnDemand => "ON_DEMAND",
    }
}

pub(super) fn mode_of(details: &StreamModeDetails) -> StreamMode {
    match details.stream_mode.as_deref() {
        Some("ON_DEMAND") => StreamMode::OnDemand,
        _ => StreamMode::Provisioned,
    }
}

fn status_name(status: StreamStatus) -> &'static str {
    match status {
        StreamStatus::Creating => "CREATING",
        StreamStatus::Active => "ACTIVE",
        StreamStatus::Deleting => "DELETING",
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateStreamInput {
    stream_name: Option<String>,
    shard_count: Option<i64>,
    stream_mode_details: Option<StreamModeDetails>,
    tags: Option<BTreeMap<String, String>>,
    #[serde(rename = "WarmThroughputMiBps")]
    warm_throughput_mibps: Option<i64>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

pub(super) async fn create_stream(edge: &KinesisEdge, r: CreateStreamInput) -> Result<Answer, KinesisError> {
    let mode_text = r.stream_mode_details.as_ref().and_then(|d| d.stream_mode.as_deref());
    Checks::default()
        .required("streamName", &r.stream_name)
        .stream_name(r.stream_name.as_deref())
        .range("shardCount", r.shard_count, 1, i64::from(u32::MAX))
        .one_of("streamModeDetails.streamMode", mode_text, &STREAM_MODES)
        .count("tags", r.tags.as_ref().map(BTreeMap::len), 1, 200)
        .range("warmThroughputMiBps", r.warm_throughput_mibps, 0, i64::from(u32::MAX))
        .range("maxRecordSizeInKiB", r.max_record_size_in_kib, 1024, 10240)
        .finish()?;
    // On-demand when the mode says so, or when no shard count is given.
    let mode = match (mode_text, r.shard_count) {
        (Some("ON_DEMAND"), _) | (None, None) => StreamMode::OnDemand,
        (_, Some(_)) => StreamMode::Provisioned,
        (Some(_), None) => {
            return Err(KinesisError::invalid("ShardCount is required for a PROVISIONED stream."));
        }
    };
    let create = CreateStreamWith {
        stream: CreateStream {
            name: r.stream_name.unwrap_or_default(),
            shard_count: r.shard_count.unwrap_or_default() as u32,
            max_record_bytes: r.max_record_size_in_kib.map(|k| k as u32 * 1024),
            ..CreateStream::default()
        },
        mode,
        tags: r.tags.unwrap_or_default(),
        warm_throughput_mibps: r.warm_throughput_mibps.map(|w| w as u32),
    };
    edge.service.create_stream_with(create).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DeleteStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    enforce_consumer_deletion: Option<bool>,
}

pub(super) async fn delete_stream(edge: &KinesisEdge, r: DeleteStreamInput) -> Result<Answer, KinesisError> {
    Checks::default().identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref()).finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    edge.service
        .delete_stream_with(&stream.meta().name, r.enforce_consumer_deletion.unwrap_or(false))
        .await
        .map_err(|e| edge.err(e))?;
    done()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SequenceNumberRange {
    starting_sequence_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ending_sequence_number: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ShardOut {
    shard_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_shard_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adjacent_parent_shard_id: Option<String>,
    hash_key_range: HashKeyRange,
    sequence_number_range: SequenceNumberRange,
}

fn shard_out(stream_id: u64, s: ShardView) -> ShardOut {
    ShardOut {
        parent_shard_id: s.parent.map(crate::shard::shard_id),
        adjacent_parent_shard_id: s.adjacent_parent.map(crate::shard::shard_id),
        hash_key_range: HashKeyRange {
            starting_hash_key: s.hash_range.0.to_string(),
            ending_hash_key: s.hash_range.1.to_string(),
        },
        sequence_number_range: SequenceNumberRange {
            // Every shard log numbers its records from 0.
            starting_sequence_number: Sequence::before(stream_id, s.index, 0),
            ending_sequence_number: s.ending_seq.map(|e| Sequence::record(stream_id, s.index, e)),
        },
        shard_id: s.shard_id,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EnhancedMetrics {
    shard_level_metrics: Vec<String>,
}

fn enhanced_monitoring(a: &StreamAttributes) -> Vec<EnhancedMetrics> {
    vec![EnhancedMetrics { shard_level_metrics: a.shard_level_metrics.iter().cloned().collect() }]
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DescribeStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    limit: Option<i64>,
    exclusive_start_shard_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StreamDescription {
    stream_name: String,
    #[serde(rename = "StreamARN")]
    stream_arn: String,
    stream_status: &'static str,
    stream_mode_details: StreamModeDetails,
    shards: Vec<ShardOut>,
    has_more_shards: bool,
    retention_period_hours: u32,
    stream_creation_timestamp: Timestamp,
    enhanced_monitoring: Vec<EnhancedMetrics>,
    encryption_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamOutput {
    stream_description: StreamDescription,
}

/// The shard index an `ExclusiveStartShardId` starts after (shard ids
/// sort as their indexes do; an id that is not a shard id sorts as text).
fn after_shard(shards: Vec<ShardView>, exclusive_start: Option<&str>) -> impl Iterator<Item = ShardView> {
    let start = exclusive_start.map(str::to_string);
    shards.into_iter().filter(move |s| start.as_deref().is_none_or(|x| s.shard_id.as_str() > x))
}

pub(super) fn describe_stream(
    edge: &KinesisEdge,
    format: Format,
    r: DescribeStreamInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .range("limit", r.limit, 1, 10_000)
        .name("exclusiveStartShardId", r.exclusive_start_shard_id.as_deref())
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let meta = stream.meta();
    let attrs = edge.service.attributes(&stream).map_err(|e| edge.err(e))?;
    let limit = r.limit.map_or(DESCRIBE_STREAM_LIMIT_DEFAULT, |l| l as usize);
    let mut shards = after_shard(Service::shards(&stream), r.exclusive_start_shard_id.as_deref());
    let page: Vec<ShardOut> = shards.by_ref().take(limit).map(|s| shard_out(meta.id, s)).collect();
    let has_more_shards = shards.next().is_some();
    reply(
        format,
        &DescribeStreamOutput {
            stream_description: StreamDescription {
                stream_arn: edge.arns.stream(&meta.name),
                stream_status: status_name(meta.status),
                stream_mode_details: StreamModeDetails { stream_mode: Some(mode_name(attrs.mode).into()) },
                shards: page,
                has_more_shards,
                retention_period_hours: meta.retention_hours,
                stream_creation_timestamp: Timestamp(meta.created_at_ms),
                enhanced_monitoring: enhanced_monitoring(&attrs),
                encryption_type: encryption_type(edge, &stream),
                key_id: attrs.encryption_key_id.clone(),
                stream_name: meta.name,
            },
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StreamIdentity {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_id: Option<String>,
}

impl StreamIdentity {
    pub fn check(&self) -> Result<(), KinesisError> {
        Checks::default()
            .identity(self.stream_name.as_deref(), self.stream_arn.as_deref(), self.stream_id.as_deref())
            .finish()
    }

    pub fn resolve(&self, edge: &KinesisEdge) -> Result<std::sync::Arc<Stream>, KinesisError> {
        edge.resolve(self.stream_name.as_deref(), self.stream_arn.as_deref(), self.stream_id.as_deref())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct WarmThroughput {
    #[serde(rename = "TargetMiBps")]
    pub target_mibps: u32,
    #[serde(rename = "CurrentMiBps")]
    pub current_mibps: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StreamDescriptionSummary {
    stream_name: String,
    #[serde(rename = "StreamARN")]
    stream_arn: String,
    stream_id: String,
    stream_status: &'static str,
    stream_mode_details: StreamModeDetails,
    retention_period_hours: u32,
    stream_creation_timestamp: Timestamp,
    enhanced_monitoring: Vec<EnhancedMetrics>,
    encryption_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    open_shard_count: u32,
    consumer_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_throughput: Option<WarmThroughput>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamSummaryOutput {
    stream_description_summary: StreamDescriptionSummary,
}

pub(super) fn describe_stream_summary(
    edge: &KinesisEdge,
    format: Format,
    r: StreamIdentity,
) -> Result<Answer, KinesisError> {
    r.check()?;
    let stream = r.resolve(edge)?;
    let meta = stream.meta();
    let attrs = edge.service.attributes(&stream).map_err(|e| edge.err(e))?;
    let open = Service::shards(&stream).iter().filter(|s| s.ending_seq.is_none()).count() as u32;
    reply(
        format,
        &DescribeStreamSummaryOutput {
            stream_description_summary: StreamDescriptionSummary {
                stream_arn: edge.arns.stream(&meta.name),
                stream_id: stream_id(&meta),
                stream_status: status_name(meta.status),
                stream_mode_details: StreamModeDetails { stream_mode: Some(mode_name(attrs.mode).into()) },
                retention_period_hours: meta.retention_hours,
                stream_creation_timestamp: Timestamp(meta.created_at_ms),
                enhanced_monitoring: enhanced_monitoring(&attrs),
                encryption_type: encryption_type(edge, &stream),
                key_id: attrs.encryption_key_id.clone(),
                open_shard_count: open,
                consumer_count: attrs.consumers.len() as u32,
                warm_throughput: attrs
                    .warm_throughput_mibps
                    .map(|w| WarmThroughput { target_mibps: w, current_mibps: w }),
                max_record_size_in_kib: meta.max_record_bytes / 1024,
                stream_name: meta.name,
            },
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListStreamsInput {
    limit: Option<i64>,
    exclusive_start_stream_name: Option<String>,
    next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StreamSummary {
    stream_name: String,
    #[serde(rename = "StreamARN")]
    stream_arn: String,
    stream_status: &'static str,
    stream_mode_details: StreamModeDetails,
    stream_creation_timestamp: Timestamp,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsOutput {
    stream_names: Vec<String>,
    has_more_streams: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
    stream_summaries: Vec<StreamSummary>,
}

pub(super) fn list_streams(edge: &KinesisEdge, format: Format, r: ListStreamsInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .range("limit", r.limit, 1, i64::from(LIST_STREAMS_LIMIT_MAX))
        .stream_name(r.exclusive_start_stream_name.as_deref())
        .length("nextToken", r.next_token.as_deref(), 1, 1_048_576)
        .finish()?;
    let now = edge.now();
    let (start, limit) = match (&r.next_token, &r.exclusive_start_stream_name) {
        (Some(_), Some(_)) => {
            return Err(KinesisError::invalid("NextToken and ExclusiveStartStreamName cannot be provided together."));
        }
        (Some(t), None) => {
            let token = PageToken::decode(t, "streams", now)?;
            (token.after, r.limit.map_or(Some(token.limit), |l| Some(l as u32)))
        }
        (None, start) => (start.clone().unwrap_or_default(), r.limit.map(|l| l as u32)),
    };
    let (names, has_more) = edge.service.list_streams(limit, &start).map_err(|e| edge.err(e))?;
    let mut summaries = Vec::with_capacity(names.len());
    for name in &names {
        // A stream deleted since the listing is left out of the summaries.
        let Ok(stream) = edge.service.stream(name) else { continue };
        let meta = stream.meta();
        let mode = edge.service.attributes(&stream).map(|a| a.mode).unwrap_or_default();
        summaries.push(StreamSummary {
            stream_arn: edge.arns.stream(name),
            stream_status: status_name(meta.status),
            stream_mode_details: StreamModeDetails { stream_mode: Some(mode_name(mode).into()) },
            stream_creation_timestamp: Timestamp(meta.created_at_ms),
            stream_name: meta.name,
        });
    }
    let next_token = has_more.then(|| {
        PageToken {
            list: "streams".into(),
            stream_id: 0,
            after: names.last().cloned().unwrap_or_default(),
            limit: limit.unwrap_or(100),
            issued_ms: now,
        }
        .encode()
    });
    reply(
        format,
        &ListStreamsOutput { stream_names: names, has_more_streams: has_more, next_token, stream_summaries: summaries },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    r#type: Option<String>,
    shard_id: Option<String>,
    timestamp: Option<Timestamp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListShardsInput {
    stream_name: Option<String>,
    next_token: Option<String>,
    exclusive_start_shard_id: Option<String>,
    max_results: Option<i64>,
    stream_creation_timestamp: Option<Timestamp>,
    shard_filter: Option<ShardFilter>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsOutput {
    shards: Vec<ShardOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

pub(super) fn list_shards(edge: &KinesisEdge, format: Format, r: ListShardsInput) -> Result<Answer, KinesisError> {
    let filter_type = r.shard_filter.as_ref().and_then(|f| f.r#type.as_deref());
    let mut checks = Checks::default();
    checks
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .length("nextToken", r.next_token.as_deref(), 1, 1_048_576)
        .name("exclusiveStartShardId", r.exclusive_start_shard_id.as_deref())
        .range("maxResults", r.max_results, 1, 10_000);
    if let Some(f) = &r.shard_filter {
        checks
            .required("shardFilter.type", &f.r#type)
            .one_of("shardFilter.type", filter_type, &SHARD_FILTERS)
            .name("shardFilter.shardId", f.shard_id.as_deref());
    }
    checks.finish()?;
    let now = edge.now();
    let named = r.stream_name.is_some() || r.stream_arn.is_some() || r.stream_id.is_some();
    let (stream, after, limit) = match &r.next_token {
        Some(_) if r.stream_name.is_some() => {
            return Err(KinesisError::invalid("NextToken and StreamName cannot be provided together."));
        }
        Some(_) if r.exclusive_start_shard_id.is_some() || r.stream_creation_timestamp.is_some() => {
            return Err(KinesisError::invalid(
                "NextToken cannot be provided together with ExclusiveStartShardId or StreamCreationTimestamp.",
            ));
        }
        Some(t) => {
            let token = PageToken::decode(t, "shards", now)?;
            let stream = edge.service.stream_by_id(token.stream_id).map_err(|e| edge.err(e))?;
            let limit = r.max_results.map_or(token.limit as usize, |m| m as usize);
            (stream, Some(token.after), limit)
        }
        None if !named => return Err(KinesisError::invalid("Either NextToken or StreamName should be provided.")),
        None => {
            let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
            let limit = r.max_results.map_or(LIST_SHARDS_LIMIT_DEFAULT, |m| m as usize);
            (stream, r.exclusive_start_shard_id.clone(), limit)
        }
    };
    let meta = stream.meta();
    edge.rate("ListShards", (meta.id, 0))?;
    if let Some(ts) = r.stream_creation_timestamp {
        if ts.0 / 1000 != meta.created_at_ms / 1000 {
            return Err(KinesisError::not_found(format!(
                "Stream {} under account {} created at the given StreamCreationTimestamp not found.",
                meta.name, edge.arns.account
            )));
        }
    }
    let mut shards = Service::shards(&stream);
    if let Some(f) = &r.shard_filter {
        shards = filter_shards(shards, f, now)?;
    }
    let mut rest = after_shard(shards, after.as_deref()).peekable();
    let page: Vec<ShardView> = rest.by_ref().take(limit).collect();
    let next_token = rest.peek().is_some().then(|| {
        PageToken {
            list: "shards".into(),
            stream_id: meta.id,
            after: page.last().map(|s| s.shard_id.clone()).unwrap_or_default(),
            limit: limit as u32,
            issued_ms: now,
        }
        .encode()
    });
    let shards = page.into_iter().map(|s| shard_out(meta.id, s)).collect();
    reply(format, &ListShardsOutput { shards, next_token })
}

/// The shards a `ShardFilter` selects. Shards are open unless a reshard
/// closed them (`ending_seq`).
fn filter_shards(shards: Vec<ShardView>, f: &ShardFilter, now: u64) -> Result<Vec<ShardView>, KinesisError> {
    let kind = f.r#type.as_deref().unwrap_or_default();
    let shards = match kind {
        "AFTER_SHARD_ID" => {
            let Some(after) = f.shard_id.as_deref() else {
                return Err(KinesisError::invalid("ShardFilter AFTER_SHARD_ID requires ShardId."));
            };
            shards.into_iter().filter(|s| s.shard_id.as_str() > after).collect()
        }
        "AT_LATEST" => shards.into_iter().filter(|s| s.ending_seq.is_none()).collect(),
        "AT_TIMESTAMP" | "FROM_TIMESTAMP" => {
            let Some(ts) = f.timestamp else {
                return Err(KinesisError::invalid(format!("ShardFilter {kind} requires Timestamp.")));
            };
            if ts.0 > now {
                return Err(KinesisError::invalid("ShardFilter Timestamp is in the future."));
            }
            // Every shard still listed was open at or after any retained time.
            shards
        }
        // AT_TRIM_HORIZON, FROM_TRIM_HORIZON: every shard with retained records.
        _ => shards,
    };
    Ok(shards)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RetentionInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    retention_period_hours: Option<i64>,
}

pub(super) async fn change_retention(
    edge: &KinesisEdge,
    r: RetentionInput,
    increase: bool,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("retentionPeriodHours", &r.retention_period_hours)
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let meta = stream.meta();
    let hours = r.retention_period_hours.unwrap_or_default();
    let current = i64::from(meta.retention_hours);
    if increase && hours < current {
        return Err(KinesisError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {} can not be shorter than existing retention \
             period ({current} hours). Use DecreaseStreamRetentionPeriod API.",
            meta.name
        )));
    }
    if !increase && hours > current {
        return Err(KinesisError::invalid(format!(
            "Requested retention period ({hours} hours) for stream {} can not be longer than existing retention \
             period ({current} hours). Use IncreaseStreamRetentionPeriod API.",
            meta.name
        )));
    }
    let hours = u32::try_from(hours).map_err(|_| {
        KinesisError::invalid(format!(
            "Minimum allowed retention period is 24 hours. Requested retention period ({hours} hours) is too short."
        ))
    })?;
    edge.service.update_retention(&meta.name, hours).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateMaxRecordSizeInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

pub(super) async fn update_max_record_size(
    edge: &KinesisEdge,
    r: UpdateMaxRecordSizeInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("maxRecordSizeInKiB", &r.max_record_size_in_kib)
        .range("maxRecordSizeInKiB", r.max_record_size_in_kib, 1024, 10240)
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let bytes = r.max_record_size_in_kib.unwrap_or_default() as u32 * 1024;
    edge.service.update_max_record_bytes(&stream.meta().name, bytes).await.map_err(|e| edge.err(e))?;
    done()
}

/// SplitShard, MergeShards and UpdateShardCount need the resharding
/// operations of the catalogue, which this broker does not have yet.
pub(super) fn resharding(_edge: &KinesisEdge, operation: &str) -> Result<Answer, KinesisError> {
    Err(KinesisError::invalid(format!(
        "{operation} is not available yet: this broker cannot reshard streams (split, merge, scale) yet"
    )))
}
