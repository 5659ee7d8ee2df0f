//! Enhanced fan-out consumers: RegisterStreamConsumer,
//! DescribeStreamConsumer, ListStreamConsumers, DeregisterStreamConsumer.
//! A consumer's ARN carries its registration second, so the ARN of a
//! deregistered consumer never names a new one of the same name.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::super::codec::{Format, Timestamp};
use super::super::error::KinesisError;
use super::super::names::PageToken;
use super::super::validate::{CONSUMER_ARN_PATTERN, Checks, is_consumer_arn};
use super::super::{Answer, KinesisEdge, done, reply};
use crate::catalog::Stream;
use crate::metadata::ConsumerMeta;
use crate::service::ConsumerStatus;

/// Default page of ListStreamConsumers.
const LIST_CONSUMERS_DEFAULT: usize = 100;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConsumerOut {
    consumer_name: String,
    #[serde(rename = "ConsumerARN")]
    consumer_arn: String,
    consumer_status: &'static str,
    consumer_creation_timestamp: Timestamp,
    #[serde(rename = "StreamARN", skip_serializing_if = "Option::is_none")]
    stream_arn: Option<String>,
}

fn consumer_out(
    edge: &KinesisEdge,
    stream: &str,
    c: &ConsumerMeta,
    status: &'static str,
    with_stream: bool,
) -> ConsumerOut {
    ConsumerOut {
        consumer_name: c.name.clone(),
        consumer_arn: edge.arns.consumer(stream, &c.name, c.created_at_ms),
        consumer_status: status,
        consumer_creation_timestamp: Timestamp(c.created_at_ms),
        stream_arn: with_stream.then(|| edge.arns.stream(stream)),
    }
}

fn status_name(s: ConsumerStatus) -> &'static str {
    match s {
        ConsumerStatus::Creating => "CREATING",
        ConsumerStatus::Active => "ACTIVE",
    }
}

impl KinesisEdge {
    /// The stream and consumer a call names by `ConsumerARN`, or by
    /// `StreamARN` and `ConsumerName`.
    pub(super) fn consumer(
        &self,
        stream_arn: Option<&str>,
        name: Option<&str>,
        consumer_arn: Option<&str>,
    ) -> Result<(Arc<Stream>, ConsumerMeta), KinesisError> {
        let (stream, consumer) = match (consumer_arn, stream_arn, name) {
            (Some(arn), _, _) => {
                let (stream_name, consumer, secs) = self.arns.consumer_parts(arn)?;
                let stream = self.service.stream(stream_name).map_err(|e| self.err(e))?;
                let c = self.service.consumer(&stream, consumer).map_err(|e| self.err(e))?;
                if c.created_at_ms / 1000 != secs {
                    return Err(KinesisError::not_found(format!(
                        "Consumer {arn} under account {} not found (a consumer of that name was registered later).",
                        self.arns.account
                    )));
                }
                (stream, c)
            }
            (None, Some(stream_arn), Some(name)) => {
                let stream = self.resolve(None, Some(stream_arn), None)?;
                let c = self.service.consumer(&stream, name).map_err(|e| self.err(e))?;
                (stream, c)
            }
            _ => {
                return Err(KinesisError::invalid(
                    "Either ConsumerARN, or StreamARN and ConsumerName, should be provided.",
                ));
            }
        };
        Ok((stream, consumer))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RegisterInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    consumer_name: Option<String>,
    stream_id: Option<String>,
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterOutput {
    consumer: ConsumerOut,
}

pub(super) async fn register(edge: &KinesisEdge, format: Format, r: RegisterInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .required("streamARN", &r.stream_arn)
        .required("consumerName", &r.consumer_name)
        .identity(None, r.stream_arn.as_deref(), r.stream_id.as_deref())
        .name("consumerName", r.consumer_name.as_deref())
        .count("tags", r.tags.as_ref().map(BTreeMap::len), 1, 200)
        .finish()?;
    let stream = edge.resolve(None, r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let name = stream.meta().name;
    let c = edge
        .service
        .register_consumer(&name, r.consumer_name.as_deref().unwrap_or_default(), r.tags.unwrap_or_default())
        .await
        .map_err(|e| edge.err(e))?;
    reply(format, &RegisterOutput { consumer: consumer_out(edge, &name, &c, "CREATING", false) })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ConsumerIdentity {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    consumer_name: Option<String>,
    #[serde(rename = "ConsumerARN")]
    consumer_arn: Option<String>,
    stream_id: Option<String>,
}

impl ConsumerIdentity {
    fn check(&self) -> Result<(), KinesisError> {
        Checks::default()
            .identity(None, self.stream_arn.as_deref(), self.stream_id.as_deref())
            .name("consumerName", self.consumer_name.as_deref())
            .length("consumerARN", self.consumer_arn.as_deref(), 1, 2048)
            .pattern("consumerARN", self.consumer_arn.as_deref(), is_consumer_arn, CONSUMER_ARN_PATTERN)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeOutput {
    consumer_description: ConsumerOut,
}

pub(super) fn describe(edge: &KinesisEdge, format: Format, r: ConsumerIdentity) -> Result<Answer, KinesisError> {
    r.check()?;
    let (stream, c) = edge.consumer(r.stream_arn.as_deref(), r.consumer_name.as_deref(), r.consumer_arn.as_deref())?;
    let meta = stream.meta();
    edge.rate("DescribeStreamConsumer", (meta.id, 0))?;
    let status = status_name(edge.service.consumer_status(&c));
    reply(format, &DescribeOutput { consumer_description: consumer_out(edge, &meta.name, &c, status, true) })
}

pub(super) async fn deregister(edge: &KinesisEdge, r: ConsumerIdentity) -> Result<Answer, KinesisError> {
    r.check()?;
    let (stream, c) = edge.consumer(r.stream_arn.as_deref(), r.consumer_name.as_deref(), r.consumer_arn.as_deref())?;
    edge.service.deregister_consumer(&stream.meta().name, &c.name).await.map_err(|e| edge.err(e))?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListInput {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    stream_creation_timestamp: Option<Timestamp>,
    stream_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListOutput {
    consumers: Vec<ConsumerOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

pub(super) fn list(edge: &KinesisEdge, format: Format, r: ListInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .required("streamARN", &r.stream_arn)
        .identity(None, r.stream_arn.as_deref(), r.stream_id.as_deref())
        .length("nextToken", r.next_token.as_deref(), 1, 1_048_576)
        .range("maxResults", r.max_results, 1, 10_000)
        .finish()?;
    let stream = edge.resolve(None, r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let meta = stream.meta();
    if let Some(ts) = r.stream_creation_timestamp {
        if ts.0 / 1000 != meta.created_at_ms / 1000 {
            return Err(KinesisError::not_found(format!(
                "Stream {} created at the given StreamCreationTimestamp not found.",
                meta.name
            )));
        }
    }
    let now = edge.now();
    let (after, limit) = match &r.next_token {
        Some(t) => {
            let token = PageToken::decode(t, "consumers", now)?;
            if token.stream_id != meta.id {
                return Err(KinesisError::invalid("NextToken belongs to another stream's consumer list."));
            }
            (Some(token.after), r.max_results.map_or(token.limit as usize, |m| m as usize))
        }
        None => (None, r.max_results.map_or(LIST_CONSUMERS_DEFAULT, |m| m as usize)),
    };
    let attrs = edge.service.attributes(&stream).map_err(|e| edge.err(e))?;
    // Consumers are listed in registration order; a token holds the last name returned.
    let skip = match &after {
        Some(name) => attrs.consumers.iter().position(|c| &c.name == name).map_or(attrs.consumers.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<&ConsumerMeta> = attrs.consumers.iter().skip(skip).take(limit).collect();
    let more = attrs.consumers.len() > skip + page.len();
    let next_token = more.then(|| {
        PageToken {
            list: "consumers".into(),
            stream_id: meta.id,
            after: page.last().map(|c| c.name.clone()).unwrap_or_default(),
            limit: limit as u32,
            issued_ms: now,
        }
        .encode()
    });
    let consumers = page
        .into_iter()
        .map(|c| consumer_out(edge, &meta.name, c, status_name(edge.service.consumer_status(c)), false))
        .collect();
    reply(format, &ListOutput { consumers, next_token })
}
