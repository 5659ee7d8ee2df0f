//! SubscribeToShard: a registered consumer's subscription, answered as an
//! AWS event stream ([`super::super::eventstream`]): an `initial-response`
//! event, then `SubscribeToShardEvent`s carrying records,
//! `ContinuationSequenceNumber` and `MillisBehindLatest` (heartbeats have no
//! records), until the subscription's lifetime ends (5 minutes by default),
//! the client goes away or a newer subscription of the same consumer takes
//! over (which ends this one with a `ResourceInUseException` event).
//!
//! The body is pulled by hyper only as fast as the client reads, so the
//! subscription's memory stays within the service's per-subscription
//! buffer bound. Works over HTTP/2 (as the Java SDK uses it) and HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::super::codec::{Format, Timestamp};
use super::super::error::KinesisError;
use super::super::eventstream;
use super::super::names::Sequence;
use super::super::validate::{
    CONSUMER_ARN_PATTERN, Checks, ITERATOR_TYPES, SEQUENCE_NUMBER_PATTERN, is_consumer_arn, is_decimal,
};
use super::super::{Answer, KinesisEdge};
use super::data::{ChildShard, RecordOut, encryption_type, records_out, starting_position};
use crate::service::{Service, SubscribeEvent};

/// Exceptions the event stream models; others travel as unmodeled errors.
const MODELED: [&str; 3] = ["ResourceNotFoundException", "ResourceInUseException", "InternalFailureException"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartingPositionInput {
    r#type: Option<String>,
    sequence_number: Option<String>,
    timestamp: Option<Timestamp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SubscribeInput {
    #[serde(rename = "ConsumerARN")]
    consumer_arn: Option<String>,
    stream_id: Option<String>,
    shard_id: Option<String>,
    starting_position: Option<StartingPositionInput>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SubscribeToShardEvent {
    records: Vec<RecordOut>,
    continuation_sequence_number: String,
    millis_behind_latest: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_shards: Option<Vec<ChildShard>>,
}

#[derive(Serialize)]
struct ExceptionPayload<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct Empty {}

fn is_sequence_number(s: &str) -> bool {
    is_decimal(s, 129)
}

pub(super) async fn subscribe_to_shard(
    edge: &Arc<KinesisEdge>,
    format: Format,
    r: SubscribeInput,
) -> Result<Answer, KinesisError> {
    let position = r.starting_position.as_ref();
    let kind = position.and_then(|p| p.r#type.as_deref());
    let sequence = position.and_then(|p| p.sequence_number.as_deref());
    Checks::default()
        .required("consumerARN", &r.consumer_arn)
        .length("consumerARN", r.consumer_arn.as_deref(), 1, 2048)
        .pattern("consumerARN", r.consumer_arn.as_deref(), is_consumer_arn, CONSUMER_ARN_PATTERN)
        .identity(None, None, r.stream_id.as_deref())
        .required("shardId", &r.shard_id)
        .name("shardId", r.shard_id.as_deref())
        .required("startingPosition", &r.starting_position)
        .required("startingPosition.type", &kind)
        .one_of("startingPosition.type", kind, &ITERATOR_TYPES)
        .pattern("startingPosition.sequenceNumber", sequence, is_sequence_number, SEQUENCE_NUMBER_PATTERN)
        .finish()?;
    let (stream, consumer) = edge.consumer(None, None, r.consumer_arn.as_deref())?;
    let shard_id = r.shard_id.unwrap_or_default();
    let shard = Service::shard_of(&stream, &shard_id).map_err(|e| edge.err(e))?;
    let start = starting_position(
        edge,
        &stream,
        &shard_id,
        kind.unwrap_or_default(),
        sequence,
        position.and_then(|p| p.timestamp),
    )?;
    let events =
        edge.service.subscribe_consumer(&stream, &consumer.name, &shard_id, start).await.map_err(|e| edge.err(e))?;
    let stream_id = stream.meta().id;
    let encrypted = encryption_type(edge, &stream) == "KMS";
    let content_type = format.content_type();
    let initial = eventstream::event("initial-response", content_type, &format.encode(&Empty {})?);
    let edge = edge.clone();
    let index = shard.index;
    let frames = ReceiverStream::new(events).map(move |event| -> Result<Bytes, Infallible> {
        Ok(match event {
            Ok(e) => frame(format, stream_id, index, encrypted, e),
            Err(e) => {
                let k = edge.err(e);
                let modeled = if k.kind == "InternalFailure" { "InternalFailureException" } else { k.kind };
                if MODELED.contains(&modeled) {
                    let payload = format.encode(&ExceptionPayload { message: &k.message }).unwrap_or_default();
                    eventstream::exception(modeled, content_type, &payload)
                } else {
                    eventstream::error(k.kind, &k.message)
                }
            }
        })
    });
    let body = tokio_stream::once(Ok(initial)).chain(frames);
    Ok(Answer::Events(Body::from_stream(body)))
}

/// One subscription event as a `SubscribeToShardEvent` message.
fn frame(format: Format, stream_id: u64, shard: u32, encrypted: bool, e: SubscribeEvent) -> Bytes {
    let event = SubscribeToShardEvent {
        continuation_sequence_number: Sequence::before(stream_id, shard, e.continuation_sequence_number),
        millis_behind_latest: e.millis_behind_latest,
        records: records_out(stream_id, shard, e.records, encrypted),
        child_shards: None,
    };
    match format.encode(&event) {
        Ok(payload) => eventstream::event("SubscribeToShardEvent", format.content_type(), &payload),
        Err(e) => eventstream::error("InternalFailure", &e.message),
    }
}
