//! The message browser's reads: one shard's records newest first, or
//! forward from the oldest record, a sequence number or a time; optionally
//! only those with one partition key (a search, which scans a bounded
//! number of records and says where to go on); as JSON or as a JSON-lines
//! download.
//!
//! Bounds: a read returns at most `limit` (at most `console.records_max`)
//! records of at most [`RESPONSE_BYTES_MAX`] key + data bytes (always at
//! least one record, however large); memory holds one read chunk plus the
//! answer. Reads go through the shard's reader without its read quota.

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shardlog::{LogReader, Record};

use super::api::{AppState, blocking, query};
use super::error::ApiError;
use crate::error::BrokerError;
use crate::shard::parse_shard_id;

/// Most key + data bytes one answer carries.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Records per read while scanning.
const CHUNK_RECORDS: usize = 1000;
/// Bytes per read while scanning.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Records per page when the query names no limit.
const LIMIT_DEFAULT: usize = 50;

/// The query of `GET /api/v1/streams/{stream}/shards/{shard}/records`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    start: Option<String>,
    sequence: Option<u64>,
    timestamp_ms: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
    key: Option<String>,
    to_sequence: Option<u64>,
    to_timestamp_ms: Option<u64>,
    format: Option<String>,
}

/// A record as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// Its sequence number.
    pub sequence_number: u64,
    /// When the broker appended it, ms since the Unix epoch.
    pub arrival_timestamp_ms: u64,
    /// Its partition key (UTF-8, checked on the way in).
    pub partition_key: String,
    /// Its data, base64 (standard alphabet, padded).
    pub data_base64: String,
    /// Length of the data.
    pub data_bytes: usize,
}

impl RecordView {
    /// The view of a stored record.
    pub fn of(r: &Record) -> Self {
        Self {
            sequence_number: r.seq,
            arrival_timestamp_ms: r.timestamp_ms,
            partition_key: String::from_utf8_lossy(&r.partition_key).into_owned(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&r.data),
            data_bytes: r.data.len(),
        }
    }
}

/// A page of records.
#[derive(Debug, Serialize)]
pub struct Page {
    stream: String,
    shard_id: String,
    first_sequence_number: u64,
    next_sequence_number: u64,
    /// `newest_first` or `oldest_first`.
    order: &'static str,
    records: Vec<RecordView>,
    /// Newest first: pass as `before` for the next (older) page; none at the trim horizon.
    older_before: Option<u64>,
    /// Oldest first: where the next page (or the search) goes on.
    next_sequence: Option<u64>,
    /// Oldest first: whether the range end was reached.
    end_reached: bool,
    /// A search: records looked at.
    scanned: u64,
}

fn size(r: &Record) -> usize {
    r.partition_key.len() + r.data.len()
}

enum Start {
    Newest { before: Option<u64> },
    From(u64),
}

/// A shard's records, as the query asks; blocking.
pub fn read_page(
    reader: &LogReader,
    shard_id: &str,
    q: &RecordsQuery,
    records_max: usize,
    scan_max: usize,
) -> Result<(Page, Vec<Record>), ApiError> {
    let (first, next) = (reader.first_seq(), reader.next_seq());
    let limit = match q.limit {
        None => LIMIT_DEFAULT.min(records_max),
        Some(n) if (1..=records_max).contains(&n) => n,
        Some(n) => return Err(ApiError::invalid("limit", format!("must be 1..={records_max}, got {n}"))),
    };
    let storage = |e| ApiError::from(BrokerError::storage(shard_id, e));
    let start = match q.start.as_deref().unwrap_or("newest") {
        "newest" => Start::Newest { before: q.before },
        "oldest" => Start::From(first),
        "sequence" => {
            let seq = q.sequence.ok_or_else(|| ApiError::invalid("sequence", "required when start=sequence"))?;
            if seq < first {
                return Err(BrokerError::SequenceTrimmed { shard_id: shard_id.into(), requested: seq, first }.into());
            }
            if seq > next {
                return Err(BrokerError::SequenceBeyondEnd {
                    field: "sequence",
                    shard_id: shard_id.into(),
                    requested: seq,
                    next,
                }
                .into());
            }
            Start::From(seq)
        }
        "timestamp" => {
            let ts =
                q.timestamp_ms.ok_or_else(|| ApiError::invalid("timestamp_ms", "required when start=timestamp"))?;
            Start::From(reader.seq_at_or_after_timestamp(ts).map_err(storage)?)
        }
        other => {
            return Err(ApiError::invalid(
                "start",
                format!("{other:?} is not one of \"newest\", \"oldest\", \"sequence\", \"timestamp\""),
            ));
        }
    };
    if q.before.is_some() && !matches!(start, Start::Newest { .. }) {
        return Err(ApiError::invalid("before", "only with start=newest"));
    }
    let page = |order, records: &[Record]| Page {
        stream: String::new(),
        shard_id: shard_id.to_string(),
        first_sequence_number: first,
        next_sequence_number: next,
        order,
        records: records.iter().map(RecordView::of).collect(),
        older_before: None,
        next_sequence: None,
        end_reached: false,
        scanned: 0,
    };
    match start {
        Start::Newest { before } => {
            if q.key.is_some() {
                return Err(ApiError::invalid("key", "a search runs forward: start at oldest, a sequence or a time"));
            }
            let upper = before.unwrap_or(next).min(next);
            let lower = upper.saturating_sub(limit as u64).max(first);
            // Keep the newest records that fit the byte budget.
            let mut window: VecDeque<Record> = VecDeque::new();
            let mut bytes = 0usize;
            let mut at = lower;
            while at < upper {
                let batch = reader.read(at, (upper - at) as usize, CHUNK_BYTES).map_err(storage)?;
                if batch.records.is_empty() {
                    break;
                }
                at = batch.next_seq;
                for r in batch.records.into_iter().filter(|r| r.seq < upper) {
                    bytes += size(&r);
                    window.push_back(r);
                    while bytes > RESPONSE_BYTES_MAX && window.len() > 1 {
                        if let Some(old) = window.pop_front() {
                            bytes -= size(&old);
                        }
                    }
                }
            }
            let oldest = window.front().map_or(upper, |r| r.seq);
            let mut records: Vec<Record> = window.into_iter().collect();
            records.reverse();
            let mut p = page("newest_first", &records);
            p.older_before = (oldest > first).then_some(oldest);
            Ok((p, records))
        }
        Start::From(from) => {
            let to = match (q.to_sequence, q.to_timestamp_ms) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::invalid("to_sequence", "give to_sequence or to_timestamp_ms, not both"));
                }
                (Some(s), None) => s.min(next),
                (None, Some(ts)) => reader.seq_at_or_after_timestamp(ts).map_err(storage)?,
                (None, None) => next,
            };
            let key = q.key.as_deref().map(str::as_bytes);
            let mut out = Vec::new();
            let (mut bytes, mut scanned, mut at) = (0usize, 0u64, from);
            'scan: while at < to && (key.is_none() || (scanned as usize) < scan_max) {
                let want =
                    if key.is_some() { CHUNK_RECORDS.min(scan_max - scanned as usize) } else { limit - out.len() };
                let batch = reader.read(at, want.min((to - at) as usize), CHUNK_BYTES).map_err(storage)?;
                if batch.records.is_empty() {
                    break;
                }
                for r in batch.records {
                    if r.seq >= to {
                        break 'scan;
                    }
                    if key.is_some_and(|k| r.partition_key.as_ref() != k) {
                        scanned += 1;
                        at = r.seq + 1;
                        continue;
                    }
                    if out.len() >= limit || (!out.is_empty() && bytes + size(&r) > RESPONSE_BYTES_MAX) {
                        break 'scan;
                    }
                    scanned += 1;
                    bytes += size(&r);
                    at = r.seq + 1;
                    out.push(r);
                }
            }
            let mut p = page("oldest_first", &out);
            p.next_sequence = Some(at);
            p.end_reached = at >= to;
            p.scanned = if key.is_some() { scanned } else { 0 };
            Ok((p, out))
        }
    }
}

/// `GET /api/v1/streams/{stream}/shards/{shard}/records`
pub async fn records(
    State(s): State<AppState>,
    Path((stream, shard)): Path<(String, String)>,
    q: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let jsonl = match q.format.as_deref().unwrap_or("json") {
        "json" => false,
        "jsonl" => true,
        other => return Err(ApiError::invalid("format", format!("{other:?} is not \"json\" or \"jsonl\""))),
    };
    let a = s.console.attached()?;
    crate::catalog::validate_stream_name(&stream)?;
    let st = a.catalog.get(&stream)?;
    let index = parse_shard_id(&shard)
        .ok_or_else(|| ApiError::invalid("shard_id", format!("{shard:?} is not of the form shardId-NNNNNNNNNNNN")))?;
    let sh = st
        .shard(index)
        .ok_or_else(|| BrokerError::ShardNotFound { stream: stream.clone(), shard_id: shard.clone() })?;
    let reader = sh.reader()?;
    let (records_max, scan_max) = (s.console.config.records_max, s.console.config.scan_records_max);
    let id = sh.id.clone();
    let (mut page, raw) = blocking(move || read_page(&reader, &id, &q, records_max, scan_max)).await?;
    page.stream = stream.clone();
    if !jsonl {
        return Ok(axum::Json(page).into_response());
    }
    let mut body = Vec::new();
    for r in &raw {
        serde_json::to_writer(&mut body, &RecordView::of(r))
            .map_err(|e| ApiError::from(BrokerError::Internal(e.to_string())))?;
        body.push(b'\n');
    }
    let (lo, hi) = match (raw.iter().map(|r| r.seq).min(), raw.iter().map(|r| r.seq).max()) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (0, 0),
    };
    let file = format!("{stream}-{shard}-{lo}-{hi}.jsonl");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file}\"")),
        ],
        Body::from(body),
    )
        .into_response())
}
