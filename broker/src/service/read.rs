//! Reading: starting positions, shard iterators and GetRecords.
//!
//! A starting position resolves to the first sequence number a reader gets;
//! positions below the trim horizon or beyond the end are errors, never a
//! silent skip. GetRecords takes one read call from the shard's quota
//! before reading and charges the bytes it returns after. At the end of a
//! shard that a split or merge closed it returns no next iterator and the
//! children (a shard is listed closed only after it was sealed, so its end
//! is final by then).

use super::{
    GET_RECORDS_BYTES_MAX, GET_RECORDS_LIMIT_MAX, GetRecordsResult, IteratorKind, Service, StartingPosition,
    child_shards,
};
use crate::auth::policy::{Action, Resource};
use crate::catalog::validate_stream_name;
use crate::error::{BrokerError, Result};
use crate::iterator::Position;
use crate::shard::{Shard, shard_id};

impl Service {
    /// The first sequence number a reader starting at `start` gets.
    pub async fn resolve_start(&self, shard: &Shard, start: StartingPosition) -> Result<u64> {
        let reader = shard.reader()?;
        let (first, next) = (reader.first_seq(), reader.next_seq());
        let at = |field: &'static str, seq: Option<u64>, offset: u64| -> Result<u64> {
            let seq = seq.ok_or_else(|| BrokerError::invalid(field, "required for this iterator type"))?;
            let start = seq.saturating_add(offset);
            if start < first {
                return Err(BrokerError::SequenceTrimmed { shard_id: shard.id.clone(), requested: seq, first });
            }
            if start > next {
                return Err(BrokerError::SequenceBeyondEnd { field, shard_id: shard.id.clone(), requested: seq, next });
            }
            Ok(start)
        };
        match start.kind {
            IteratorKind::TrimHorizon => Ok(first),
            IteratorKind::Latest => Ok(next),
            IteratorKind::AtSequenceNumber => at("starting_sequence_number", start.sequence_number, 0),
            IteratorKind::AfterSequenceNumber => at("starting_sequence_number", start.sequence_number, 1),
            IteratorKind::AtTimestamp => {
                let ts = start
                    .timestamp_ms
                    .ok_or_else(|| BrokerError::invalid("timestamp_ms", "required for AT_TIMESTAMP"))?;
                if ts > self.now() {
                    return Err(BrokerError::invalid("timestamp_ms", format!("{ts} is in the future")));
                }
                let id = shard.id.clone();
                tokio::task::spawn_blocking(move || reader.seq_at_or_after_timestamp(ts))
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?
                    .map_err(|e| BrokerError::storage(&id, e))
            }
        }
    }

    /// GetShardIterator: a signed iterator at `start` of `shard_id`.
    pub async fn get_shard_iterator(
        &self,
        stream_name: &str,
        shard_id: &str,
        start: StartingPosition,
    ) -> Result<String> {
        self.authorize(Action::RecordGet, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        let stream = self.catalog.get(stream_name)?;
        let shard = Self::shard_of(&stream, shard_id)?;
        let seq = self.resolve_start(&shard, start).await?;
        let pos = Position { stream_id: stream.meta().id, shard: shard.index, seq };
        Ok(self.signer.issue(pos, self.now()))
    }

    /// GetRecords: up to `limit` (default and most 10,000) records and
    /// 10 MiB from the iterator's position, and a fresh iterator after them.
    pub async fn get_records(&self, shard_iterator: &str, limit: Option<u32>) -> Result<GetRecordsResult> {
        let now = self.now();
        let pos = self.signer.open(shard_iterator, now)?;
        let limit = match limit {
            None => GET_RECORDS_LIMIT_MAX,
            Some(n @ 1..=GET_RECORDS_LIMIT_MAX) => n,
            Some(n) => return Err(BrokerError::invalid("limit", format!("must be 1..=10000, got {n}"))),
        };
        let stream = self.catalog.get_by_id(pos.stream_id).ok_or_else(|| BrokerError::StreamNotFound {
            name: format!("(the iterator's stream, id {}, was deleted)", pos.stream_id),
        })?;
        // The iterator is signed, so it names a real stream; reading it needs the same grant as opening it.
        self.authorize(Action::RecordGet, &Resource::stream(&stream.meta().name))?;
        // A shard that retention removed after the iterator was issued.
        let shard = stream
            .shard(pos.shard)
            .ok_or_else(|| BrokerError::ShardNotFound { stream: stream.meta().name, shard_id: shard_id(pos.shard) })?;
        // Before the reader: a shard listed closed was sealed first, so its end is final.
        let layout = stream.layout();
        let closed = layout.is_closed(pos.shard);
        shard.quota.try_read_call(now).map_err(|wait| BrokerError::Throttled {
            what: format!("read quota of {} exceeded", shard.id),
            retry_after_ms: wait,
        })?;
        let reader = shard.reader()?;
        let end = reader.next_seq();
        // Read here when the page cache holds the bytes (a consumer near the
        // tail); only a read that would wait for the disk takes a blocking thread.
        let batch = match reader.read_cached(pos.seq, limit as usize, GET_RECORDS_BYTES_MAX) {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => {
                tokio::task::spawn_blocking(move || reader.read(pos.seq, limit as usize, GET_RECORDS_BYTES_MAX))
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))?
            }
            Err(e) => Err(e),
        }
        .map_err(|e| BrokerError::from_read(e, &shard.id, "shard_iterator"))?;
        let bytes: u64 = batch.records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum();
        shard.quota.charge_read(batch.records.len() as u64, bytes, now);
        let behind = if batch.next_seq >= end {
            0
        } else {
            batch.records.last().map_or(0, |r| now.saturating_sub(r.timestamp_ms))
        };
        let name = stream.meta().name;
        metrics::counter!("stream_broker_records_out_total", "stream" => name.clone())
            .increment(batch.records.len() as u64);
        metrics::counter!("stream_broker_bytes_out_total", "stream" => name).increment(bytes);
        let next = Position { seq: batch.next_seq, ..pos };
        let (next_shard_iterator, child_shards) = if closed && batch.next_seq >= end {
            (None, child_shards(&layout, pos.shard))
        } else {
            (Some(self.signer.issue(next, now)), Vec::new())
        };
        Ok(GetRecordsResult {
            records: batch.records.into_iter().map(Into::into).collect(),
            next_shard_iterator,
            child_shards,
            millis_behind_latest: behind,
            stream,
            shard: pos.shard,
        })
    }
}
