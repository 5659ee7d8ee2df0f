//! The 39 operations of the Kinesis model: request and response shapes
//! (members named exactly as in the model) and their mapping onto the
//! service layer.

mod consumers;
mod data;
mod settings;
mod streams;
mod subscribe;
mod tags;

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::codec::Format;
use super::error::KinesisError;
use super::names::stream_id_number;
use super::{Answer, KinesisEdge};
use crate::catalog::Stream;

/// Every operation of the model, as named in `X-Amz-Target`.
const OPERATIONS: [&str; 39] = [
    "AddTagsToStream",
    "CreateStream",
    "DecreaseStreamRetentionPeriod",
    "DeleteResourcePolicy",
    "DeleteStream",
    "DeregisterStreamConsumer",
    "DescribeAccountSettings",
    "DescribeLimits",
    "DescribeStream",
    "DescribeStreamConsumer",
    "DescribeStreamSummary",
    "DisableEnhancedMonitoring",
    "EnableEnhancedMonitoring",
    "GetRecords",
    "GetResourcePolicy",
    "GetShardIterator",
    "IncreaseStreamRetentionPeriod",
    "ListShards",
    "ListStreamConsumers",
    "ListStreams",
    "ListTagsForResource",
    "ListTagsForStream",
    "MergeShards",
    "PutRecord",
    "PutRecords",
    "PutResourcePolicy",
    "RegisterStreamConsumer",
    "RemoveTagsFromStream",
    "SplitShard",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "SubscribeToShard",
    "TagResource",
    "UntagResource",
    "UpdateAccountSettings",
    "UpdateMaxRecordSize",
    "UpdateShardCount",
    "UpdateStreamMode",
    "UpdateStreamWarmThroughput",
];

/// The operation's static name, if the model has it.
pub(super) fn known(name: &str) -> Option<&'static str> {
    OPERATIONS.iter().copied().find(|op| *op == name)
}

/// The request-metric label of an operation: `Kinesis.<Operation>`, apart
/// from the gRPC methods of the same names.
pub(super) fn metric_name(operation: &'static str) -> &'static str {
    const NAMES: [&str; 39] = [
        "Kinesis.AddTagsToStream",
        "Kinesis.CreateStream",
        "Kinesis.DecreaseStreamRetentionPeriod",
        "Kinesis.DeleteResourcePolicy",
        "Kinesis.DeleteStream",
        "Kinesis.DeregisterStreamConsumer",
        "Kinesis.DescribeAccountSettings",
        "Kinesis.DescribeLimits",
        "Kinesis.DescribeStream",
        "Kinesis.DescribeStreamConsumer",
        "Kinesis.DescribeStreamSummary",
        "Kinesis.DisableEnhancedMonitoring",
        "Kinesis.EnableEnhancedMonitoring",
        "Kinesis.GetRecords",
        "Kinesis.GetResourcePolicy",
        "Kinesis.GetShardIterator",
        "Kinesis.IncreaseStreamRetentionPeriod",
        "Kinesis.ListShards",
        "Kinesis.ListStreamConsumers",
        "Kinesis.ListStreams",
        "Kinesis.ListTagsForResource",
        "Kinesis.ListTagsForStream",
        "Kinesis.MergeShards",
        "Kinesis.PutRecord",
        "Kinesis.PutRecords",
        "Kinesis.PutResourcePolicy",
        "Kinesis.RegisterStreamConsumer",
        "Kinesis.RemoveTagsFromStream",
        "Kinesis.SplitShard",
        "Kinesis.StartStreamEncryption",
        "Kinesis.StopStreamEncryption",
        "Kinesis.SubscribeToShard",
        "Kinesis.TagResource",
        "Kinesis.UntagResource",
        "Kinesis.UpdateAccountSettings",
        "Kinesis.UpdateMaxRecordSize",
        "Kinesis.UpdateShardCount",
        "Kinesis.UpdateStreamMode",
        "Kinesis.UpdateStreamWarmThroughput",
    ];
    OPERATIONS.iter().position(|op| *op == operation).map_or("Kinesis", |i| NAMES[i])
}

/// Runs one operation.
pub(super) async fn dispatch(
    edge: &Arc<KinesisEdge>,
    operation: &'static str,
    format: Format,
    body: Bytes,
) -> Result<Answer, KinesisError> {
    if let Some(caller) = consumer_caller(edge, operation, format, &body) {
        return crate::auth::scope(caller, run(edge, operation, format, body)).await;
    }
    run(edge, operation, format, body).await
}

/// How a call names a consumer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NamesConsumer {
    #[serde(rename = "ConsumerARN")]
    consumer_arn: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    consumer_name: Option<String>,
}

/// For the operations on one consumer, the caller marked with that
/// consumer, whose resource policy then applies too; `None` for the
/// others, and for bodies that do not name one (the operation reports that).
fn consumer_caller(
    edge: &KinesisEdge,
    operation: &str,
    format: Format,
    body: &[u8],
) -> Option<Arc<crate::auth::Caller>> {
    if !matches!(operation, "SubscribeToShard" | "DescribeStreamConsumer" | "DeregisterStreamConsumer") {
        return None;
    }
    let names: NamesConsumer = format.decode(body).ok()?;
    let (stream, consumer) = match (&names.consumer_arn, &names.stream_arn, &names.consumer_name) {
        (Some(arn), _, _) => edge.arns.consumer_parts(arn).ok().map(|(s, c, _)| (s, c))?,
        (None, Some(arn), Some(name)) => (edge.arns.stream_name(arn).ok()?, name.as_str()),
        _ => return None,
    };
    let caller = crate::auth::current();
    let call = crate::auth::KinesisCall {
        operation: caller.kinesis.as_ref()?.operation,
        consumer: Some((stream.into(), consumer.into())),
    };
    Some(Arc::new(crate::auth::Caller { kinesis: Some(call), ..(*caller).clone() }))
}

async fn run(
    edge: &Arc<KinesisEdge>,
    operation: &'static str,
    format: Format,
    body: Bytes,
) -> Result<Answer, KinesisError> {
    let e = edge.as_ref();
    match operation {
        "PutRecord" => data::put_record(e, format, decode(format, &body)?).await,
        "PutRecords" => data::put_records(e, format, decode(format, &body)?).await,
        "GetShardIterator" => data::get_shard_iterator(e, format, decode(format, &body)?).await,
        "GetRecords" => data::get_records(e, format, decode(format, &body)?).await,
        "SubscribeToShard" => subscribe::subscribe_to_shard(edge, format, decode(format, &body)?).await,
        "CreateStream" => streams::create_stream(e, decode(format, &body)?).await,
        "DeleteStream" => streams::delete_stream(e, decode(format, &body)?).await,
        "DescribeStream" => streams::describe_stream(e, format, decode(format, &body)?),
        "DescribeStreamSummary" => streams::describe_stream_summary(e, format, decode(format, &body)?),
        "ListStreams" => streams::list_streams(e, format, decode(format, &body)?),
        "ListShards" => streams::list_shards(e, format, decode(format, &body)?),
        "IncreaseStreamRetentionPeriod" => streams::change_retention(e, decode(format, &body)?, true).await,
        "DecreaseStreamRetentionPeriod" => streams::change_retention(e, decode(format, &body)?, false).await,
        "UpdateMaxRecordSize" => streams::update_max_record_size(e, decode(format, &body)?).await,
        "SplitShard" => streams::split_shard(e, decode(format, &body)?).await,
        "MergeShards" => streams::merge_shards(e, decode(format, &body)?).await,
        "UpdateShardCount" => streams::update_shard_count(e, format, decode(format, &body)?).await,
        "AddTagsToStream" => tags::add_tags_to_stream(e, decode(format, &body)?).await,
        "RemoveTagsFromStream" => tags::remove_tags_from_stream(e, decode(format, &body)?).await,
        "ListTagsForStream" => tags::list_tags_for_stream(e, format, decode(format, &body)?),
        "TagResource" => tags::tag_resource(e, decode(format, &body)?).await,
        "UntagResource" => tags::untag_resource(e, decode(format, &body)?).await,
        "ListTagsForResource" => tags::list_tags_for_resource(e, format, decode(format, &body)?),
        "PutResourcePolicy" => tags::put_resource_policy(e, decode(format, &body)?).await,
        "GetResourcePolicy" => tags::get_resource_policy(e, format, decode(format, &body)?),
        "DeleteResourcePolicy" => tags::delete_resource_policy(e, decode(format, &body)?).await,
        "RegisterStreamConsumer" => consumers::register(e, format, decode(format, &body)?).await,
        "DescribeStreamConsumer" => consumers::describe(e, format, decode(format, &body)?),
        "ListStreamConsumers" => consumers::list(e, format, decode(format, &body)?),
        "DeregisterStreamConsumer" => consumers::deregister(e, decode(format, &body)?).await,
        "EnableEnhancedMonitoring" => settings::monitoring(e, format, decode(format, &body)?, true).await,
        "DisableEnhancedMonitoring" => settings::monitoring(e, format, decode(format, &body)?, false).await,
        "StartStreamEncryption" => settings::encryption(e, decode(format, &body)?, true).await,
        "StopStreamEncryption" => settings::encryption(e, decode(format, &body)?, false).await,
        "UpdateStreamMode" => settings::update_stream_mode(e, decode(format, &body)?).await,
        "UpdateStreamWarmThroughput" => settings::update_warm_throughput(e, format, decode(format, &body)?).await,
        "DescribeLimits" => settings::describe_limits(e, format),
        "DescribeAccountSettings" => settings::describe_account_settings(e, format),
        "UpdateAccountSettings" => settings::update_account_settings(e, format, decode(format, &body)?).await,
        other => Err(KinesisError::client("UnknownOperationException", format!("unknown operation {other}"))),
    }
}

fn decode<T: DeserializeOwned>(format: Format, body: &[u8]) -> Result<T, KinesisError> {
    format.decode(body)
}

impl KinesisEdge {
    /// The stream a call names by `StreamName`, `StreamARN` or `StreamId`
    /// (any of them; those given must agree).
    fn resolve(&self, name: Option<&str>, arn: Option<&str>, id: Option<&str>) -> Result<Arc<Stream>, KinesisError> {
        let from_arn = arn.map(|a| self.arns.stream_name(a)).transpose()?;
        let named = match (name, from_arn) {
            (Some(n), Some(a)) if n != a => {
                return Err(KinesisError::invalid(format!(
                    "StreamName {n} and StreamARN {} name different streams",
                    arn.unwrap_or_default()
                )));
            }
            (Some(n), _) | (None, Some(n)) => Some(n),
            (None, None) => None,
        };
        let by_id = match id {
            Some(id) => {
                let stream = stream_id_number(id)
                    .and_then(|n| self.service.stream_by_id(n).ok())
                    .filter(|s| super::names::stream_id(&s.meta()) == id)
                    .ok_or_else(|| {
                        KinesisError::not_found(format!(
                            "Stream with id {id} under account {} not found.",
                            self.arns.account
                        ))
                    })?;
                Some(stream)
            }
            None => None,
        };
        match (named, by_id) {
            (Some(n), Some(s)) if s.meta().name != n => {
                Err(KinesisError::invalid(format!("StreamId {} does not name stream {n}", id.unwrap_or_default())))
            }
            (_, Some(s)) => Ok(s),
            (Some(n), None) => self.service.stream(n).map_err(|e| self.err(e)),
            (None, None) => Err(KinesisError::invalid("Either StreamName or StreamARN should be provided.")),
        }
    }
}
