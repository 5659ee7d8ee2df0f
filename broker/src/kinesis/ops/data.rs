//! The data plane: PutRecord, PutRecords, GetShardIterator, GetRecords.

use serde::{Deserialize, Serialize};

use super::super::codec::{Blob, Format, Timestamp};
use super::super::error::KinesisError;
use super::super::names::{Sequence, SequenceText};
use super::super::validate::{self, Checks, HASH_KEY_PATTERN, ITERATOR_TYPES, SEQUENCE_NUMBER_PATTERN};
use super::super::{Answer, KinesisEdge, reply};
use crate::catalog::Stream;
use crate::service::{IteratorKind, PutEntry, RecordFailureKind, Service, StartingPosition};
use crate::shard::parse_shard_id;

/// `NONE`, or `KMS` once StartStreamEncryption recorded a key.
pub(super) fn encryption_type(edge: &KinesisEdge, stream: &Stream) -> &'static str {
    match edge.service.attributes(stream) {
        Ok(a) if a.encryption_key_id.is_some() => "KMS",
        _ => "NONE",
    }
}

fn is_hash_key(s: &str) -> bool {
    validate::is_decimal(s, 39)
}

fn is_sequence_number(s: &str) -> bool {
    validate::is_decimal(s, 129)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PutRecordInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    data: Option<Blob>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    sequence_number_for_ordering: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordOutput {
    shard_id: String,
    sequence_number: String,
    encryption_type: &'static str,
}

pub(super) async fn put_record(edge: &KinesisEdge, format: Format, r: PutRecordInput) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("data", &r.data)
        .required("partitionKey", &r.partition_key)
        .partition_key("partitionKey", r.partition_key.as_deref())
        .pattern("explicitHashKey", r.explicit_hash_key.as_deref(), is_hash_key, HASH_KEY_PATTERN)
        .pattern(
            "sequenceNumberForOrdering",
            r.sequence_number_for_ordering.as_deref(),
            is_sequence_number,
            SEQUENCE_NUMBER_PATTERN,
        )
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let name = stream.meta().name;
    if let Some(s) = r.sequence_number_for_ordering.as_deref().filter(|s| Sequence::parse(s).is_none()) {
        return Err(KinesisError::invalid(format!(
            "ExclusiveMinimumSequenceNumber {s} used in PutRecord on stream {name} under account {} is invalid.",
            edge.arns.account
        )));
    }
    let entry = PutEntry {
        partition_key: r.partition_key.unwrap_or_default(),
        data: r.data.unwrap_or_default().0,
        explicit_hash_key: r.explicit_hash_key,
    };
    let put = edge.service.put_record(&name, entry).await.map_err(|e| edge.data_err(e))?;
    reply(
        format,
        &PutRecordOutput {
            shard_id: put.shard_id,
            sequence_number: Sequence::record(stream.meta().id, put.shard, put.sequence_number),
            encryption_type: encryption_type(edge, &stream),
        },
    )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsEntry {
    data: Option<Blob>,
    explicit_hash_key: Option<String>,
    partition_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PutRecordsInput {
    records: Option<Vec<PutRecordsEntry>>,
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
}

/// One record's result; the sequence number inline and the shard id
/// borrowed, so a stored record's result allocates nothing.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsResultEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<SequenceText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsOutput<'a> {
    failed_record_count: u32,
    records: Vec<PutRecordsResultEntry<'a>>,
    encryption_type: &'static str,
}

pub(super) async fn put_records(
    edge: &KinesisEdge,
    format: Format,
    r: PutRecordsInput,
) -> Result<Answer, KinesisError> {
    let mut checks = Checks::default();
    checks
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("records", &r.records)
        .put_records_count(r.records.as_ref().map(Vec::len));
    for (i, e) in r.records.iter().flatten().enumerate() {
        // Member names are made only for a record that fails a check (a
        // batch has up to 500 records; formatting three names each showed
        // in the put path's profile).
        let key_ok = e
            .partition_key
            .as_deref()
            .is_some_and(|k| crate::service::PARTITION_KEY_CHARS.contains(&k.chars().count()));
        if e.data.is_some() && key_ok && e.explicit_hash_key.as_deref().is_none_or(is_hash_key) {
            continue;
        }
        let member = |m: &str| format!("records.{}.member.{m}", i + 1);
        checks
            .required(&member("data"), &e.data)
            .required(&member("partitionKey"), &e.partition_key)
            .partition_key(&member("partitionKey"), e.partition_key.as_deref())
            .pattern(&member("explicitHashKey"), e.explicit_hash_key.as_deref(), is_hash_key, HASH_KEY_PATTERN);
    }
    checks.finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let meta = stream.meta();
    let entries = r
        .records
        .unwrap_or_default()
        .into_iter()
        .map(|e| PutEntry {
            partition_key: e.partition_key.unwrap_or_default(),
            data: e.data.unwrap_or_default().0,
            explicit_hash_key: e.explicit_hash_key,
        })
        .collect();
    let result = edge.service.put_records(&meta.name, entries).await.map_err(|e| edge.data_err(e))?;
    let account = &edge.arns.account;
    let records: Vec<_> = result
        .records
        .iter()
        .map(|entry| match entry {
            Ok(ok) => PutRecordsResultEntry {
                sequence_number: Some(Sequence::record_text(meta.id, ok.shard, ok.sequence_number)),
                shard_id: Some(&ok.shard_id),
                error_code: None,
                error_message: None,
            },
            Err(f) => {
                let (code, message) = match f.kind {
                    RecordFailureKind::Throttled => (
                        "ProvisionedThroughputExceededException",
                        format!("Rate exceeded for stream {} under account {account}: {}", meta.name, f.message),
                    ),
                    _ => ("InternalFailure", format!("Internal Service Failure: {}", f.message)),
                };
                PutRecordsResultEntry {
                    sequence_number: None,
                    shard_id: None,
                    error_code: Some(code),
                    error_message: Some(message),
                }
            }
        })
        .collect();
    // A stored record's result is about 110 bytes in either encoding
    // (52-digit sequence number, 20-character shard id, two member names).
    let size = 64 + 112 * records.len();
    let output = PutRecordsOutput {
        failed_record_count: result.failed_record_count,
        records,
        encryption_type: encryption_type(edge, &stream),
    };
    Ok(Answer::Body(format.encode_sized(&output, size)?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct GetShardIteratorInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
    shard_id: Option<String>,
    shard_iterator_type: Option<String>,
    starting_sequence_number: Option<String>,
    timestamp: Option<Timestamp>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorOutput {
    shard_iterator: String,
}

/// The service's starting position for a Kinesis iterator type and
/// sequence number, checked against the stream and shard it is used on.
pub(super) fn starting_position(
    edge: &KinesisEdge,
    stream: &Stream,
    shard_id: &str,
    kind: &str,
    sequence_number: Option<&str>,
    timestamp: Option<Timestamp>,
) -> Result<StartingPosition, KinesisError> {
    let decoded = match sequence_number {
        None => None,
        Some(s) => {
            let seq = Sequence::parse(s).ok_or_else(|| {
                KinesisError::invalid(format!(
                    "Invalid StartingSequenceNumber. {s} is not a sequence number this broker issued."
                ))
            })?;
            let meta = stream.meta();
            let wanted = parse_shard_id(shard_id);
            if seq.stream_id != meta.id || Some(seq.shard) != wanted {
                return Err(KinesisError::invalid(format!(
                    "Invalid StartingSequenceNumber. It encodes {} of stream id {}, while it was used in a call to \
                     {shard_id} of stream {} (id {}).",
                    crate::shard::shard_id(seq.shard),
                    seq.stream_id,
                    meta.name,
                    meta.id
                )));
            }
            Some(seq)
        }
    };
    let kind = match (kind, decoded) {
        ("TRIM_HORIZON", _) => IteratorKind::TrimHorizon,
        ("LATEST", _) => IteratorKind::Latest,
        ("AT_TIMESTAMP", _) => IteratorKind::AtTimestamp,
        ("AT_SEQUENCE_NUMBER", _) => IteratorKind::AtSequenceNumber,
        // After a position marker (a continuation) is at the record it precedes.
        ("AFTER_SEQUENCE_NUMBER", Some(Sequence { record: false, .. })) => IteratorKind::AtSequenceNumber,
        ("AFTER_SEQUENCE_NUMBER", _) => IteratorKind::AfterSequenceNumber,
        (other, _) => {
            return Err(
                edge.err(crate::BrokerError::invalid("iterator_type", format!("{other} is not an iterator type")))
            );
        }
    };
    Ok(StartingPosition { kind, sequence_number: decoded.map(|s| s.offset), timestamp_ms: timestamp.map(|t| t.0) })
}

pub(super) async fn get_shard_iterator(
    edge: &KinesisEdge,
    format: Format,
    r: GetShardIteratorInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .identity(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())
        .required("shardId", &r.shard_id)
        .name("shardId", r.shard_id.as_deref())
        .required("shardIteratorType", &r.shard_iterator_type)
        .one_of("shardIteratorType", r.shard_iterator_type.as_deref(), &ITERATOR_TYPES)
        .pattern(
            "startingSequenceNumber",
            r.starting_sequence_number.as_deref(),
            is_sequence_number,
            SEQUENCE_NUMBER_PATTERN,
        )
        .finish()?;
    let stream = edge.resolve(r.stream_name.as_deref(), r.stream_arn.as_deref(), r.stream_id.as_deref())?;
    let shard_id = r.shard_id.unwrap_or_default();
    let shard = Service::shard_of(&stream, &shard_id).map_err(|e| edge.data_err(e))?;
    edge.rate("GetShardIterator", (stream.meta().id, shard.index))?;
    let kind = r.shard_iterator_type.unwrap_or_default();
    let start = starting_position(edge, &stream, &shard_id, &kind, r.starting_sequence_number.as_deref(), r.timestamp)?;
    let shard_iterator =
        edge.service.get_shard_iterator(&stream.meta().name, &shard_id, start).await.map_err(|e| edge.data_err(e))?;
    reply(format, &GetShardIteratorOutput { shard_iterator })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct GetRecordsInput {
    shard_iterator: Option<String>,
    limit: Option<i64>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    stream_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RecordOut {
    pub sequence_number: String,
    pub approximate_arrival_timestamp: Timestamp,
    pub data: Blob,
    pub partition_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_type: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HashKeyRange {
    pub starting_hash_key: String,
    pub ending_hash_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ChildShard {
    pub shard_id: String,
    pub parent_shards: Vec<String>,
    pub hash_key_range: HashKeyRange,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsOutput {
    records: Vec<RecordOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_shard_iterator: Option<String>,
    millis_behind_latest: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_shards: Option<Vec<ChildShard>>,
}

/// Child shards in Kinesis form.
pub(super) fn child_shards_out(children: Vec<crate::service::ChildShard>) -> Vec<ChildShard> {
    children
        .into_iter()
        .map(|c| ChildShard {
            shard_id: c.shard_id,
            parent_shards: c.parent_shard_ids,
            hash_key_range: HashKeyRange {
                starting_hash_key: c.starting_hash_key.to_string(),
                ending_hash_key: c.ending_hash_key.to_string(),
            },
        })
        .collect()
}

/// Records in Kinesis form.
pub(super) fn records_out(
    stream_id: u64,
    shard: u32,
    records: Vec<crate::service::Record>,
    encrypted: bool,
) -> Vec<RecordOut> {
    records
        .into_iter()
        .map(|r| RecordOut {
            sequence_number: Sequence::record(stream_id, shard, r.sequence_number),
            approximate_arrival_timestamp: Timestamp(r.arrival_timestamp_ms),
            data: Blob(r.data),
            partition_key: r.partition_key,
            encryption_type: encrypted.then_some("KMS"),
        })
        .collect()
}

pub(super) async fn get_records(
    edge: &KinesisEdge,
    format: Format,
    r: GetRecordsInput,
) -> Result<Answer, KinesisError> {
    Checks::default()
        .required("shardIterator", &r.shard_iterator)
        .length("shardIterator", r.shard_iterator.as_deref(), 1, 512)
        .get_records_limit(r.limit)
        .identity(None, r.stream_arn.as_deref(), r.stream_id.as_deref())
        .finish()?;
    let token = r.shard_iterator.unwrap_or_default();
    // AWS accepts an iterator wrapped in double quotes (as some tools copy it).
    let token = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(&token);
    let limit = r.limit.map(|l| l as u32);
    let got = edge.service.get_records(token, limit).await.map_err(|e| edge.data_err(e))?;
    let meta = got.stream.meta();
    if r.stream_arn.is_some() || r.stream_id.is_some() {
        let named = edge.resolve(None, r.stream_arn.as_deref(), r.stream_id.as_deref())?;
        if named.meta().id != meta.id {
            return Err(KinesisError::invalid(format!(
                "the shard iterator belongs to stream {}, not to the stream the request names",
                meta.name
            )));
        }
    }
    let encrypted = encryption_type(edge, &got.stream) == "KMS";
    reply(
        format,
        &GetRecordsOutput {
            records: records_out(meta.id, got.shard, got.records, encrypted),
            next_shard_iterator: got.next_shard_iterator,
            millis_behind_latest: got.millis_behind_latest,
            // At a closed shard's end (no next iterator): where its keys went.
            child_shards: (!got.child_shards.is_empty()).then(|| child_shards_out(got.child_shards)),
        },
    )
}
