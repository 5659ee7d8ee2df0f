//! The console's order-system pages: orders by status (read from the order
//! service's HTTP API at `console.order_service_url`), one order's flow, and
//! dead-letter streams with a replay.
//!
//! **An order's flow** joins the order as the order service stores it (its
//! dates) with the broker's own evidence: the events whose partition key is
//! the order id in the `console.order_streams` (found by routing the key to
//! its shard and scanning forward from the order's date, at most
//! `console.scan_records_max` records per stream), and, for each event,
//! whether every consumer group of its stream has checkpointed past it.
//! "Emailed" is the `order_placed` event processed by the order stream's
//! groups (the email is their side effect; its time is not recorded).
//!
//! **Dead letters** are the records of every stream named `<source>-dlq`.
//! A dead letter in the order service's format (a JSON object with
//! `record`, `encoding`, `partitionKey`, `error`, `kind`, `attempts`, …)
//! shows its error; a replay appends its original record (decoded) with its
//! partition key to `<source>` through the service's PutRecord (the same
//! checks, quota and acknowledgement as any produce); any other record is
//! replayed as it is.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use shardlog::Record;

use super::api::{ApiResult, AppState, blocking, parse_body, query};
use super::error::ApiError;
use super::records::RecordView;
use crate::catalog::Catalog;
use crate::error::BrokerError;
use crate::routing::hash_key;
use crate::service::{PutEntry, PutRecordResult};
use crate::shard::parse_shard_id;

/// The suffix of a dead-letter stream's name.
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";
/// How long the order service may take to answer.
const ORDER_SERVICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from the order service.
const ORDER_SERVICE_BODY_MAX: usize = 4 * 1024 * 1024;
/// How far before an order's date its events are looked for (clocks of
/// the order service and the broker may differ a little).
const FLOW_CLOCK_SLACK_MS: u64 = 60_000;

/// A client of the order service's HTTP API.
#[derive(Debug)]
pub struct OrderClient {
    base: Option<String>,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl OrderClient {
    /// A client of `base_url`; empty means no order service.
    pub fn new(base_url: &str) -> Self {
        let base = (!base_url.is_empty()).then(|| base_url.trim_end_matches('/').to_string());
        Self { base, http: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// Whether an order service is configured.
    pub fn enabled(&self) -> bool {
        self.base.is_some()
    }

    /// GETs `path_and_query` from the order service.
    async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), ApiError> {
        let base = self.base.as_ref().ok_or_else(|| {
            ApiError::orders_unavailable("no order service is configured (console.order_service_url)")
        })?;
        let url = format!("{base}{path_and_query}");
        let unavailable = |why: String| ApiError::orders_unavailable(format!("GET {url}: {why}"));
        let uri: hyper::Uri = url.parse().map_err(|e| unavailable(format!("{e}")))?;
        let resp = tokio::time::timeout(ORDER_SERVICE_TIMEOUT, self.http.get(uri))
            .await
            .map_err(|_| unavailable(format!("no answer within {} s", ORDER_SERVICE_TIMEOUT.as_secs())))?
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            ORDER_SERVICE_TIMEOUT,
            Limited::new(resp.into_body(), ORDER_SERVICE_BODY_MAX).collect(),
        )
        .await
        .map_err(|_| unavailable("the answer did not finish in time".into()))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
        Ok((status, body))
    }
}

fn json_answer(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/v1/orders?status=&limit=&cursor=`: the order service's
/// `GET /orders`, answered as it answers.
pub async fn orders(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let path = match q {
        Some(q) if !q.is_empty() => format!("/orders?{q}"),
        _ => "/orders".to_string(),
    };
    let (status, body) = s.console.orders.get(&path).await?;
    Ok(json_answer(status, body))
}

/// An order id as the order service makes them (a UUID); anything else
/// never reaches it.
fn check_order_id(id: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(ApiError::invalid("order_id", format!("{id:?} is not an order id")))
    }
}

/// An event found for an order.
#[derive(Debug, Clone)]
struct Found {
    stream: String,
    shard_id: String,
    record: RecordView,
    envelope: Value,
    processed_by: Vec<String>,
    pending_in: Vec<String>,
}

impl Found {
    fn event_type(&self) -> &str {
        self.envelope.get("eventType").and_then(Value::as_str).unwrap_or("")
    }

    fn view(&self) -> Value {
        json!({
            "stream": self.stream,
            "shard_id": self.shard_id,
            "sequence_number": self.record.sequence_number,
            "arrival_timestamp_ms": self.record.arrival_timestamp_ms,
            "event_type": self.event_type(),
            "event_id": self.envelope.get("eventId"),
            "occurred_at_ms": self.envelope.get("occurredAt"),
            "processed_by": self.processed_by,
            "pending_in": self.pending_in,
        })
    }
}

/// The records with partition key `key` in `stream`, from `from_ms` on,
/// scanning at most `scan_max` per shard; none if the stream does not exist.
/// Every kept shard whose hash range holds the key is read, parents before
/// children (a key's records move to a child at a split or merge).
async fn find_by_key(
    catalog: &Catalog,
    stream: &str,
    key: &str,
    from_ms: u64,
    scan_max: usize,
) -> Result<Vec<(String, Record)>, ApiError> {
    let Ok(st) = catalog.get(stream) else { return Ok(Vec::new()) };
    let layout = st.layout();
    let hash = hash_key(key);
    let shards: Vec<_> =
        layout.shards().filter(|sh| layout.info(sh.index).is_some_and(|m| m.covers(hash))).cloned().collect();
    let mut out = Vec::new();
    for shard in shards {
        let Ok(reader) = shard.reader() else { continue };
        let (id, key) = (shard.id.clone(), key.as_bytes().to_vec());
        let found = blocking(move || {
            let storage = |e| ApiError::from(BrokerError::storage(&id, e));
            let mut at = reader.seq_at_or_after_timestamp(from_ms).map_err(storage)?.max(reader.first_seq());
            let end = reader.next_seq();
            let (mut scanned, mut out) = (0usize, Vec::new());
            while at < end && scanned < scan_max {
                let batch = reader.read(at, (scan_max - scanned).min(1000), 4 * 1024 * 1024).map_err(storage)?;
                if batch.records.is_empty() {
                    break;
                }
                scanned += batch.records.len();
                at = batch.next_seq;
                out.extend(
                    batch
                        .records
                        .into_iter()
                        .filter(|r| r.partition_key.as_ref() == key.as_slice())
                        .map(|r| (id.clone(), r)),
                );
            }
            Ok(out)
        })
        .await?;
        out.extend(found);
    }
    Ok(out)
}

/// `GET /api/v1/orders/{order_id}`: the order, its flow, its events and dead letters.
pub async fn order(State(s): State<AppState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    check_order_id(&order_id)?;
    let (status, body) = s.console.orders.get(&format!("/order/{order_id}")).await?;
    if !status.is_success() {
        return Ok(json_answer(status, body));
    }
    let order: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::orders_unavailable(format!("the order service answered with invalid JSON: {e}")))?;
    let a = s.console.attached()?;
    let date = |k: &str| order.get(k).and_then(Value::as_u64);
    let from_ms = date("orderDate").unwrap_or(0).saturating_sub(FLOW_CLOCK_SLACK_MS);
    let scan_max = s.console.config.scan_records_max;
    let mut events: Vec<Found> = Vec::new();
    let mut dead: Vec<Value> = Vec::new();
    for stream in &s.console.config.order_streams {
        let groups = a.groups.list(Some(stream)).unwrap_or_default();
        let mut checkpoints: Vec<(String, Vec<Option<u64>>)> = Vec::new();
        for (_, g) in &groups {
            if let Ok(info) = a.groups.describe(stream, g).await {
                checkpoints.push((g.clone(), info.shards.iter().map(|sh| sh.checkpoint).collect()));
            }
        }
        for (shard_id, r) in find_by_key(&a.catalog, stream, &order_id, from_ms, scan_max).await? {
            let index = parse_shard_id(&shard_id).unwrap_or(0) as usize;
            let (mut processed_by, mut pending_in) = (Vec::new(), Vec::new());
            for (g, cps) in &checkpoints {
                if cps.get(index).copied().flatten().is_some_and(|cp| cp > r.seq) {
                    processed_by.push(g.clone());
                } else {
                    pending_in.push(g.clone());
                }
            }
            events.push(Found {
                stream: stream.clone(),
                shard_id,
                envelope: serde_json::from_slice(&r.data).unwrap_or(Value::Null),
                record: RecordView::of(&r),
                processed_by,
                pending_in,
            });
        }
        let dlq = format!("{stream}{DEAD_LETTER_SUFFIX}");
        for (shard_id, r) in find_by_key(&a.catalog, &dlq, &order_id, from_ms, scan_max).await? {
            dead.push(dead_letter_view(&dlq, &shard_id, &r));
        }
    }
    events.sort_by_key(|e| (e.record.arrival_timestamp_ms, e.stream.clone(), e.record.sequence_number));
    let first = |t: &str| events.iter().find(|e| e.event_type() == t);
    let handled = |e: Option<&Found>| e.is_some_and(|e| e.pending_in.is_empty() && !e.processed_by.is_empty());
    let step = |name: &str, done: bool, at: Option<u64>, detail: String, ev: Option<&Found>| json!({"step": name, "done": done, "at_ms": at, "detail": detail, "event": ev.map(Found::view)});
    let placed = first("order_placed");
    let queued = first("delivery_requested");
    let review = first("review_received");
    let groups_of = |e: Option<&Found>| e.map(|e| e.processed_by.join(", ")).unwrap_or_default();
    let steps = vec![
        step("placed", date("orderDate").is_some(), date("orderDate"), "order stored (status placed)".into(), placed),
        step(
            "emailed",
            handled(placed),
            None,
            if handled(placed) {
                format!("order_placed processed by {}", groups_of(placed))
            } else {
                "waiting for the order stream's consumers".into()
            },
            placed,
        ),
        step(
            "fulfilled",
            date("fulfillmentDate").is_some(),
            date("fulfillmentDate"),
            "fulfilled by the cake producer".into(),
            first("order_fulfilled"),
        ),
        step(
            "queued",
            date("sentToDeliveryDate").is_some(),
            date("sentToDeliveryDate"),
            "enqueued for the delivery company".into(),
            queued,
        ),
        step(
            "delivered",
            date("deliveryDate").is_some(),
            date("deliveryDate"),
            "delivered".into(),
            first("order_delivered"),
        ),
        step(
            "review",
            handled(review),
            review.and_then(|e| e.envelope.get("date").and_then(Value::as_u64)),
            match review {
                Some(e) if handled(review) => {
                    format!("review sent to customer service ({})", e.processed_by.join(", "))
                }
                Some(_) => "review waiting for customer service".into(),
                None => "no review yet".into(),
            },
            review,
        ),
    ];
    Ok(Json(json!({
        "order": order,
        "steps": steps,
        "events": events.iter().map(Found::view).collect::<Vec<_>>(),
        "dead_letters": dead,
    }))
    .into_response())
}

/// A dead letter as the console shows it.
fn dead_letter_view(stream: &str, shard_id: &str, r: &Record) -> Value {
    let raw = RecordView::of(r);
    let parsed: Option<Value> = serde_json::from_slice(&r.data).ok().filter(|v: &Value| v.get("error").is_some());
    let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).cloned().unwrap_or(Value::Null);
    json!({
        "stream": stream,
        "shard_id": shard_id,
        "sequence_number": raw.sequence_number,
        "arrival_timestamp_ms": raw.arrival_timestamp_ms,
        "partition_key": raw.partition_key,
        "error": field("error"),
        "kind": field("kind"),
        "permanent": field("permanent"),
        "attempts": field("attempts"),
        "source_shard_id": field("shardId"),
        "source_sequence_number": field("sequenceNumber"),
        "payload": field("record"),
        "encoding": field("encoding"),
        "data_base64": raw.data_base64,
    })
}

/// The original record a dead letter holds: (partition key, data).
fn original(r: &Record) -> Result<(String, Vec<u8>), ApiError> {
    let pk = String::from_utf8_lossy(&r.partition_key).into_owned();
    let Some(v) = serde_json::from_slice::<Value>(&r.data).ok().filter(|v| v.get("error").is_some()) else {
        return Ok((pk, r.data.to_vec()));
    };
    let key = v.get("partitionKey").and_then(Value::as_str).map_or(pk, str::to_string);
    let payload = v.get("record").and_then(Value::as_str).unwrap_or_default();
    let data = match v.get("encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(payload).map_err(|e| {
            ApiError::invalid("record", format!("the dead letter's base64 payload does not decode: {e}"))
        })?,
        _ => payload.as_bytes().to_vec(),
    };
    Ok((key, data))
}

/// `GET /api/v1/dead-letters`
pub async fn dead_letter_streams(State(s): State<AppState>) -> ApiResult {
    let a = s.console.attached()?;
    let mut out = Vec::new();
    for st in a.catalog.all() {
        let name = st.meta().name;
        let Some(source) = name.strip_suffix(DEAD_LETTER_SUFFIX) else { continue };
        let stats: Vec<_> = st.shards().iter().filter_map(|sh| sh.stats()).collect();
        out.push(json!({
            "stream": name,
            "source": source,
            "source_exists": a.catalog.get(source).is_ok(),
            "records": stats.iter().map(|s| s.next_seq - s.first_seq).sum::<u64>(),
            "bytes": stats.iter().map(|s| s.bytes).sum::<u64>(),
            "newest_arrival_ms": stats.iter().filter_map(|s| s.last_timestamp_ms).max(),
        }));
    }
    Ok(Json(json!({ "streams": out, "mutations_enabled": s.console.config.mutations })))
}

/// The query of `GET /api/v1/dead-letters/{stream}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/dead-letters/{stream}`: the newest dead letters of every shard, newest first.
pub async fn dead_letters(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    q: Result<Query<DeadLettersQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let a = s.console.attached()?;
    if !stream.ends_with(DEAD_LETTER_SUFFIX) {
        return Err(ApiError::invalid(
            "stream",
            format!("{stream:?} is not a dead-letter stream (<source>{DEAD_LETTER_SUFFIX})"),
        ));
    }
    crate::catalog::validate_stream_name(&stream)?;
    let max = s.console.config.records_max;
    let limit = match q.limit {
        None => 100.min(max),
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => return Err(ApiError::invalid("limit", format!("must be 1..={max}, got {n}"))),
    };
    let st = a.catalog.get(&stream)?;
    let mut all: Vec<Value> = Vec::new();
    for sh in &st.shards() {
        let Ok(reader) = sh.reader() else { continue };
        let (id, name) = (sh.id.clone(), stream.clone());
        let views = blocking(move || {
            let storage = |e| ApiError::from(BrokerError::storage(&id, e));
            let next = reader.next_seq();
            let mut at = next.saturating_sub(limit as u64).max(reader.first_seq());
            let mut out = Vec::new();
            while at < next {
                let batch = reader.read(at, (next - at) as usize, 4 * 1024 * 1024).map_err(storage)?;
                if batch.records.is_empty() {
                    break;
                }
                at = batch.next_seq;
                out.extend(batch.records.iter().map(|r| dead_letter_view(&name, &id, r)));
            }
            Ok(out)
        })
        .await?;
        all.extend(views);
    }
    all.sort_by_key(|v| std::cmp::Reverse(v["arrival_timestamp_ms"].as_u64().unwrap_or(0)));
    all.truncate(limit);
    Ok(Json(json!({
        "stream": stream,
        "source": stream.strip_suffix(DEAD_LETTER_SUFFIX),
        "mutations_enabled": s.console.config.mutations,
        "dead_letters": all,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    shard_id: String,
    sequence_number: u64,
}

/// `POST /api/v1/dead-letters/{stream}/replay`: appends the dead letter's
/// original record to its source stream.
pub async fn replay(
    State(s): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    s.console.check_mutation(&headers)?;
    let a = s.console.attached()?;
    let b: ReplayBody = parse_body(&body)?;
    let source = stream
        .strip_suffix(DEAD_LETTER_SUFFIX)
        .ok_or_else(|| ApiError::invalid("stream", format!("{stream:?} is not a dead-letter stream")))?
        .to_string();
    crate::catalog::validate_stream_name(&stream)?;
    let st = a.catalog.get(&stream)?;
    let index = parse_shard_id(&b.shard_id).ok_or_else(|| {
        ApiError::invalid("shard_id", format!("{:?} is not of the form shardId-NNNNNNNNNNNN", b.shard_id))
    })?;
    let sh = st
        .shard(index)
        .ok_or_else(|| BrokerError::ShardNotFound { stream: stream.clone(), shard_id: b.shard_id.clone() })?;
    let reader = sh.reader()?;
    let (id, seq) = (sh.id.clone(), b.sequence_number);
    let record = blocking(move || {
        let batch =
            reader.read(seq, 1, 1).map_err(|e| ApiError::from(BrokerError::from_read(e, &id, "sequence_number")))?;
        batch
            .records
            .into_iter()
            .next()
            .filter(|r| r.seq == seq)
            .ok_or_else(|| ApiError::invalid("sequence_number", format!("{seq} is not a record of {id}")))
    })
    .await?;
    let (key, data) = original(&record)?;
    let entry = PutEntry { partition_key: key, data: data.into(), explicit_hash_key: None };
    let put = crate::service::call("ConsoleReplay", a.service.request_timeout(), a.service.put_record(&source, entry));
    let PutRecordResult { shard_id, sequence_number, .. } = put.await?;
    tracing::info!(dead_letters = %stream, %source, %shard_id, sequence_number, "dead letter replayed from the console");
    Ok(Json(json!({"stream": source, "shard_id": shard_id, "sequence_number": sequence_number})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, data: &[u8]) -> Record {
        Record {
            seq: 3,
            timestamp_ms: 7,
            partition_key: Bytes::copy_from_slice(key.as_bytes()),
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_dead_letter_gives_back_its_original_record() {
        let text = json!({"record": "{\"a\":1}", "encoding": "utf8", "partitionKey": "o-1", "error": "boom", "kind": "bad_data"});
        let r = record("o-1", &serde_json::to_vec(&text).expect("json"));
        assert_eq!(original(&r).expect("decodes"), ("o-1".to_string(), b"{\"a\":1}".to_vec()));

        let b64 = json!({"record": "AAH/", "encoding": "base64", "partitionKey": "k", "error": "x"});
        let r = record("k", &serde_json::to_vec(&b64).expect("json"));
        assert_eq!(original(&r).expect("decodes").1, vec![0, 1, 255]);

        let raw = record("k", b"not json");
        assert_eq!(original(&raw).expect("raw"), ("k".to_string(), b"not json".to_vec()));

        let bad = json!({"record": "***", "encoding": "base64", "error": "x"});
        assert!(original(&record("k", &serde_json::to_vec(&bad).expect("json"))).is_err());
    }

    #[test]
    fn order_ids_are_checked_before_they_reach_the_order_service() {
        assert!(check_order_id("0190a6c2-7b1e-7c3d-8e4f-123456789abc").is_ok());
        for bad in ["", "../secret", "a/b", "a?b=c", &"a".repeat(65)] {
            assert!(check_order_id(bad).is_err(), "{bad:?}");
        }
    }
}
