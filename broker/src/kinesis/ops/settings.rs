//! Reported settings: Enable/DisableEnhancedMonitoring,
//! Start/StopStreamEncryption, UpdateStreamMode,
//! UpdateStreamWarmThroughput, DescribeLimits, DescribeAccountSettings,
//! UpdateAccountSettings. Monitoring, encryption and warm throughput are
//! recorded and reported; data at rest is not encrypted.

use serde::{Deserialize, Serialize};

use super::super::codec::{Format, Timestamp};
use super::super::error::KinesisError;
use super::super::validate::Checks;
use super::super::{Answer, KinesisEdge, done, reply};
use super::streams::{StreamModeDetails, WarmThroughput, mode_of};
use crate::metadata::StreamMode;
use crate::service::{CommitmentStatus, SHARD_LEVEL_METRICS, Service};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct MonitoringInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    shard_level_metrics: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MonitoringOutput {
    stream_name: String,
    current_shard_level_metrics: Vec<String>,
    desired_shard_level_metrics: Vec<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: String,
}

pub(super) async fn monitoring(
    edge: &KinesisEdge,
    format: Format,
    r: MonitoringInput,
    enable: bool,
) -> Result<Answer, KinesisError> {
    let mut allowed: Vec<&str> = SHARD_LEVEL_METRICS.to_vec();
    allowed.push("ALL");
    let mut checks = Checks::default();
    checks
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("shardLevelMetrics", &r.shard_level_metrics)
        .count("shardLevelMetrics", r.shard_level_metrics.as_ref().map(Vec::len), 1, 7);
    for (i, m) in r.shard_level_metrics.iter().flatten().enumerate() {
        checks.one_of(&format!("shardLevelMetrics.{}.member", i + 1), Some(m), &allowed);
    }
    checks.finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let name = stream.meta().name;
    let change = edge
        .service
        .change_monitoring(&name, &r.shard_level_metrics.unwrap_or_default(), enable)
        .await
        .map_err(|e| edge.err(e))?;
    reply(
        format,
        &MonitoringOutput {
            stream_arn: edge.arns.stream(&name),
            stream_name: name,
            current_shard_level_metrics: change.current.into_iter().collect(),
            desired_shard_level_metrics: change.desired.into_iter().collect(),
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EncryptionInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    encryption_type: Option<String>,
    key_id: Option<String>,
}

pub(super) async fn encryption(edge: &KinesisEdge, r: EncryptionInput, start: bool) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("encryptionType", &r.encryption_type)
        .one_of("encryptionType", r.encryption_type.as_deref(), &["NONE", "KMS"])
        .required("keyId", &r.key_id)
        .length("keyId", r.key_id.as_deref(), 1, 2048)
        .finish()?;
    if r.encryption_type.as_deref() != Some("KMS") {
        return Err(KinesisError::invalid("EncryptionType must be KMS."));
    }
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let key = if start { r.key_id } else { None };
    edge.service.set_encryption(&stream.meta().name, key).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateStreamModeInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    stream_mode_details: Option<StreamModeDetails>,
    #[serde(rename = "WarmThroughputMiBps")]
    warm_throughput_mibps: Option<i64>,
}

pub(super) async fn update_stream_mode(edge: &KinesisEdge, r: UpdateStreamModeInput) -> Result<Answer, KinesisError> {
    let mode_text = r.stream_mode_details.as_ref().and_then(|d| d.stream_mode.as_deref());
    Checks::default()
        .required("streamARN", &r.stream_arn)
        .identity(None, r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("streamModeDetails", &r.stream_mode_details)
        .required("streamModeDetails.streamMode", &mode_text)
        .one_of("streamModeDetails.streamMode", mode_text, &["PROVISIONED", "ON_DEMAND"])
        .range("warmThroughputMiBps", r.warm_throughput_mibps, 0, i64::from(u32::MAX))
        .finish()?;
    let stream = edge.resolve(None, r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let mode = mode_of(r.stream_mode_details.as_ref().unwrap_or(&StreamModeDetails::default()));
    if mode == StreamMode::Provisioned && r.warm_throughput_mibps.is_some() {
        return Err(KinesisError::invalid("WarmThroughputMiBps applies to ON_DEMAND streams only."));
    }
    edge.service
        .set_stream_mode(&stream.meta().name, mode, r.warm_throughput_mibps.map(|w| w as u32))
        .await
        .map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct WarmThroughputInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_name: Option<String>,
    stream_id: Option<String>,
    #[serde(rename = "WarmThroughputMiBps")]
    warm_throughput_mibps: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WarmThroughputOutput {
    #[serde(rename = "StreamARN")]
    stream_arn: String,
    stream_name: String,
    warm_throughput: WarmThroughput,
}

pub(super) async fn update_warm_throughput(
    edge: &KinesisEdge,
    format: Format,
    r: WarmThroughputInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("warmThroughputMiBps", &r.warm_throughput_mibps)
        .range("warmThroughputMiBps", r.warm_throughput_mibps, 0, i64::from(u32::MAX))
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let name = stream.meta().name;
    let mibps = r.warm_throughput_mibps.unwrap_or_default() as u32;
    edge.service.set_warm_throughput(&name, mibps).await.map_err(|e| edge.err(e))?;
    reply(
        format,
        &WarmThroughputOutput {
            stream_arn: edge.arns.stream(&name),
            stream_name: name,
            warm_throughput: WarmThroughput { target_mibps: mibps, current_mibps: mibps },
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeLimitsOutput {
    shard_limit: u64,
    open_shard_count: u64,
    on_demand_stream_count: u64,
    on_demand_stream_count_limit: u64,
}

/// The model bounds every count of DescribeLimits to 1,000,000.
const LIMITS_MAX: u64 = 1_000_000;

pub(super) fn describe_limits(edge: &KinesisEdge, format: Format) -> Result<Answer, KinesisError> {
    let config = edge.service.catalog().config();
    let shard_limit = (config.limits.max_streams as u64)
        .saturating_mul(u64::from(config.limits.max_shards_per_stream))
        .min(LIMITS_MAX);
    let (mut open, mut on_demand) = (0u64, 0u64);
    for stream in edge.service.catalog().all() {
        open += Service::shards(&stream).iter().filter(|s| s.ending_seq.is_none()).count() as u64;
        if edge.service.attributes(&stream).map_err(|e| edge.err(e))?.mode == StreamMode::OnDemand {
            on_demand += 1;
        }
    }
    reply(
        format,
        &DescribeLimitsOutput {
            shard_limit,
            open_shard_count: open.min(LIMITS_MAX),
            on_demand_stream_count: on_demand,
            on_demand_stream_count_limit: u64::from(config.kinesis.on_demand_stream_count_limit).min(LIMITS_MAX),
        },
    )
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CommitmentOut {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earliest_allowed_end_at: Option<Timestamp>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AccountSettingsOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum_throughput_billing_commitment: Option<CommitmentOut>,
}

fn account_output(settings: crate::metadata::AccountSettings, status: CommitmentStatus) -> AccountSettingsOutput {
    let status_text = match status {
        CommitmentStatus::Enabled => "ENABLED",
        CommitmentStatus::EnabledUntilEarliestAllowedEnd => "ENABLED_UNTIL_EARLIEST_ALLOWED_END",
        CommitmentStatus::Disabled => "DISABLED",
    };
    AccountSettingsOutput {
        minimum_throughput_billing_commitment: Some(match settings.billing_commitment {
            Some(c) => CommitmentOut {
                status: status_text,
                started_at: Some(Timestamp(c.started_at_ms)),
                ended_at: c.ended_at_ms.map(Timestamp),
                earliest_allowed_end_at: Some(Timestamp(c.earliest_end_ms)),
            },
            None => {
                CommitmentOut { status: status_text, started_at: None, ended_at: None, earliest_allowed_end_at: None }
            }
        }),
    }
}

pub(super) fn describe_account_settings(edge: &KinesisEdge, format: Format) -> Result<Answer, KinesisError> {
    let (settings, status) = edge.service.account_settings().map_err(|e| edge.err(e))?;
    reply(format, &account_output(settings, status))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommitmentInput {
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateAccountSettingsInput {
    minimum_throughput_billing_commitment: Option<CommitmentInput>,
}

pub(super) async fn update_account_settings(
    edge: &KinesisEdge,
    format: Format,
    r: UpdateAccountSettingsInput,
) -> Result<Answer, KinesisError> {
    let status = r.minimum_throughput_billing_commitment.as_ref().and_then(|c| c.status.as_deref());
    Checks::default()
        .required("minimumThroughputBillingCommitment", &r.minimum_throughput_billing_commitment)
        .required("minimumThroughputBillingCommitment.status", &status)
        .one_of("minimumThroughputBillingCommitment.status", status, &["ENABLED", "DISABLED"])
        .finish()?;
    let (settings, status) =
        edge.service.set_billing_commitment(status == Some("ENABLED")).await.map_err(|e| edge.err(e))?;
    reply(format, &account_output(settings, status))
}
