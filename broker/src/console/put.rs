//! The console's one write to a stream: a dead letter replayed to its
//! source. It takes the checks every produce takes: the disk watermark, the
//! partition key and record size, routing by MD5 hash range, the shard's
//! failure state and its write quota; it is acknowledged after the shard's
//! group commit (so as durable as the broker's durability mode makes it).

use bytes::Bytes;

use super::error::ApiError;
use crate::catalog::{Catalog, validate_stream_name};
use crate::error::BrokerError;
use crate::routing::hash_key;

/// Appends one record to `stream`; returns its shard and sequence number.
pub async fn put_one(catalog: &Catalog, stream: &str, key: String, data: Vec<u8>) -> Result<(String, u64), ApiError> {
    validate_stream_name(stream)?;
    let st = catalog.get(stream)?;
    catalog.disk().admit()?;
    let chars = key.chars().count();
    if !(1..=256).contains(&chars) {
        return Err(ApiError::invalid("partition_key", format!("must be 1..=256 characters, got {chars}")));
    }
    let size = key.len() + data.len();
    let max = st.meta().max_record_bytes as usize;
    if size > max {
        return Err(ApiError::invalid(
            "data",
            format!("record is {size} bytes (key + data), more than the stream's {max}"),
        ));
    }
    let shard = st.shards[st.ranges.shard_for(hash_key(&key)) as usize].clone();
    if let Some(refusal) = shard.write_refusal() {
        return Err(refusal.into());
    }
    shard.quota.try_write(size as u64, catalog.clock().now_ms()).map_err(|wait| BrokerError::Throttled {
        what: format!("write quota of {} exceeded", shard.id),
        retry_after_ms: wait,
    })?;
    let appended = shard.append(vec![(Bytes::from(key), Bytes::from(data))]).await?;
    Ok((shard.id.clone(), appended.first_seq))
}
