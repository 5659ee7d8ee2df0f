//! Tags and resource policies: AddTagsToStream, RemoveTagsFromStream,
//! ListTagsForStream, TagResource, UntagResource, ListTagsForResource,
//! Put/Get/DeleteResourcePolicy. A resource ARN names a stream or one of
//! its consumers. Policies are checked whole when put and evaluated on
//! Kinesis calls (`crate::auth::resource_policy`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::super::codec::Format;
use super::super::error::KinesisError;
use super::super::validate::{Checks, RESOURCE_ARN_PATTERN, is_resource_arn};
use super::super::{Answer, KinesisEdge, done, reply};
use crate::catalog::Stream;

/// Default page of ListTagsForStream.
const LIST_TAGS_DEFAULT: usize = 10;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AddTagsInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

pub(super) async fn add_tags_to_stream(edge: &KinesisEdge, r: AddTagsInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("tags", &r.tags)
        .count("tags", r.tags.as_ref().map(BTreeMap::len), 1, 200)
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    edge.service.add_tags(&stream.meta().name, r.tags.unwrap_or_default()).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RemoveTagsInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    tag_keys: Option<Vec<String>>,
}

pub(super) async fn remove_tags_from_stream(edge: &KinesisEdge, r: RemoveTagsInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("tagKeys", &r.tag_keys)
        .count("tagKeys", r.tag_keys.as_ref().map(Vec::len), 1, 50)
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    edge.service.remove_tags(&stream.meta().name, &r.tag_keys.unwrap_or_default()).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListTagsForStreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    exclusive_start_tag_key: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsForStreamOutput {
    tags: Vec<Tag>,
    has_more_tags: bool,
}

pub(super) fn list_tags_for_stream(
    edge: &KinesisEdge,
    format: Format,
    r: ListTagsForStreamInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .length("exclusiveStartTagKey", r.exclusive_start_tag_key.as_deref(), 1, 128)
        .range("limit", r.limit, 1, 50)
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let attrs = edge.service.attributes(&stream).map_err(|e| edge.err(e))?;
    let limit = r.limit.map_or(LIST_TAGS_DEFAULT, |l| l as usize);
    let start = r.exclusive_start_tag_key.unwrap_or_default();
    let mut rest = attrs.tags.into_iter().filter(|(k, _)| start.is_empty() || *k > start);
    let tags: Vec<Tag> = rest.by_ref().take(limit).map(|(key, value)| Tag { key, value }).collect();
    let has_more_tags = rest.next().is_some();
    reply(format, &ListTagsForStreamOutput { tags, has_more_tags })
}

/// The stream and, for a consumer ARN, the consumer a resource ARN names.
fn resource(edge: &KinesisEdge, arn: &str) -> Result<(Arc<Stream>, Option<String>), KinesisError> {
    let (stream_name, consumer) = edge.arns.resource_parts(arn)?;
    match consumer {
        None => Ok((edge.resolve(Some(stream_name), None, None)?, None)),
        Some(_) => {
            let (stream, c) = edge.consumer(None, None, Some(arn))?;
            Ok((stream, Some(c.name)))
        }
    }
}

fn check_resource(arn: &Option<String>, stream_id: Option<&str>) -> Checks {
    let mut c = Checks::default();
    c.required("resourceARN", arn)
        .length("resourceARN", arn.as_deref(), 1, 2048)
        .pattern("resourceARN", arn.as_deref(), is_resource_arn, RESOURCE_ARN_PATTERN)
        .identity(None, None, stream_id);
    c
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TagResourceInput {
    tags: Option<BTreeMap<String, String>>,
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    stream_id: Option<String>,
}

pub(super) async fn tag_resource(edge: &KinesisEdge, r: TagResourceInput) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref())
        .required("tags", &r.tags)
        .count("tags", r.tags.as_ref().map(BTreeMap::len), 1, 200)
        .finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    let name = stream.meta().name;
    let tags = r.tags.unwrap_or_default();
    match consumer {
        Some(c) => edge.service.tag_consumer(&name, &c, tags).await,
        None => edge.service.add_tags(&name, tags).await,
    }
    .map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UntagResourceInput {
    tag_keys: Option<Vec<String>>,
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    stream_id: Option<String>,
}

pub(super) async fn untag_resource(edge: &KinesisEdge, r: UntagResourceInput) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref())
        .required("tagKeys", &r.tag_keys)
        .count("tagKeys", r.tag_keys.as_ref().map(Vec::len), 1, 50)
        .finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    let name = stream.meta().name;
    let keys = r.tag_keys.unwrap_or_default();
    match consumer {
        Some(c) => edge.service.untag_consumer(&name, &c, &keys).await,
        None => edge.service.remove_tags(&name, &keys).await,
    }
    .map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ResourceInput {
    #[serde(rename = "ResourceARN")]
    resource_arn: Option<String>,
    stream_id: Option<String>,
    policy: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsForResourceOutput {
    tags: Vec<Tag>,
}

pub(super) fn list_tags_for_resource(
    edge: &KinesisEdge,
    format: Format,
    r: ResourceInput,
) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref()).finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    let tags = match consumer {
        Some(c) => edge.service.consumer(&stream, &c).map_err(|e| edge.err(e))?.tags,
        None => edge.service.attributes(&stream).map_err(|e| edge.err(e))?.tags,
    };
    reply(
        format,
        &ListTagsForResourceOutput { tags: tags.into_iter().map(|(key, value)| Tag { key, value }).collect() },
    )
}

pub(super) async fn put_resource_policy(edge: &KinesisEdge, r: ResourceInput) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref()).required("policy", &r.policy).finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    edge.service
        .put_policy(&stream.meta().name, consumer.as_deref(), r.policy.unwrap_or_default())
        .await
        .map_err(|e| edge.err(e))?;
    done()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GetResourcePolicyOutput {
    policy: String,
}

pub(super) fn get_resource_policy(
    edge: &KinesisEdge,
    format: Format,
    r: ResourceInput,
) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref()).finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    let policy = match consumer {
        Some(c) => edge.service.consumer(&stream, &c).map_err(|e| edge.err(e))?.policy,
        None => edge.service.attributes(&stream).map_err(|e| edge.err(e))?.policy,
    };
    // A resource without a policy has the empty policy document.
    reply(format, &GetResourcePolicyOutput { policy: policy.unwrap_or_else(|| "{}".into()) })
}

pub(super) async fn delete_resource_policy(edge: &KinesisEdge, r: ResourceInput) -> Result<Answer, KinesisError> {
    check_resource(&r.resource_arn, r.stream_id.as_deref()).finish()?;
    let (stream, consumer) = resource(edge, r.resource_arn.as_deref().unwrap_or_default())?;
    edge.service.delete_policy(&stream.meta().name, consumer.as_deref()).await.map_err(|e| edge.err(e))?;
    done()
}
