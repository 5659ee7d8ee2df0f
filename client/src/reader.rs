//! A low-level reader of one shard through shard iterators. At the end of a
//! shard that a split or merge closed, the broker returns no next iterator
//! and names the children: [`ShardReader::children`] has them, and further
//! reads return nothing.

use crate::{Connection, Error, MESSAGE_BYTES_MAX, Result};
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest stored record.
    TrimHorizon,
    /// Records arriving from now on.
    Latest,
    /// At this sequence number.
    AtSequence(u64),
    /// After this sequence number.
    AfterSequence(u64),
    /// The first record at or after this time (ms since the Unix epoch).
    AtTimestamp(u64),
}

/// Reads one shard, renewing its iterator when it expires and waiting out
/// read throttling (a bounded number of times).
#[derive(Debug)]
pub struct ShardReader {
    client: StreamBrokerClient<Connection>,
    stream: String,
    shard_id: String,
    start: Position,
    iterator: String,
    next_seq: Option<u64>,
    /// Set once a read reached the end of the closed shard.
    children: Option<Vec<pb::ChildShard>>,
}

/// Throttled reads are retried this many times before the error is returned.
const THROTTLE_RETRIES: u32 = 20;

impl ShardReader {
    /// Opens a reader of `shard_id` at `start`.
    pub async fn open(channel: Connection, stream: &str, shard_id: &str, start: Position) -> Result<Self> {
        let client = StreamBrokerClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let mut r = Self {
            client,
            stream: stream.into(),
            shard_id: shard_id.into(),
            start,
            iterator: String::new(),
            next_seq: None,
            children: None,
        };
        r.iterator = r.issue(start).await?;
        Ok(r)
    }

    async fn issue(&mut self, at: Position) -> Result<String> {
        let (kind, seq, ts) = match at {
            Position::TrimHorizon => (pb::IteratorType::TrimHorizon, None, None),
            Position::Latest => (pb::IteratorType::Latest, None, None),
            Position::AtSequence(s) => (pb::IteratorType::AtSequenceNumber, Some(s), None),
            Position::AfterSequence(s) => (pb::IteratorType::AfterSequenceNumber, Some(s), None),
            Position::AtTimestamp(t) => (pb::IteratorType::AtTimestamp, None, Some(t)),
        };
        let r = self
            .client
            .get_shard_iterator(pb::GetShardIteratorRequest {
                stream_name: self.stream.clone(),
                shard_id: self.shard_id.clone(),
                iterator_type: kind as i32,
                starting_sequence_number: seq,
                timestamp_ms: ts,
            })
            .await?;
        Ok(r.into_inner().shard_iterator)
    }

    /// The next records (up to `limit`), and how far behind the shard's end
    /// they are in ms; nothing once the end of a closed shard was reached.
    pub async fn read(&mut self, limit: u32) -> Result<(Vec<pb::Record>, u64)> {
        if self.children.is_some() {
            return Ok((Vec::new(), 0));
        }
        let mut throttled = 0;
        loop {
            let req = pb::GetRecordsRequest { shard_iterator: self.iterator.clone(), limit };
            match self.client.get_records(req).await.map_err(Error::from) {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.next_shard_iterator.is_empty() {
                        self.children = Some(r.child_shards);
                    }
                    self.iterator = r.next_shard_iterator;
                    if let Some(last) = r.records.last() {
                        self.next_seq = Some(last.sequence_number + 1);
                    }
                    return Ok((r.records, r.millis_behind_latest));
                }
                Err(Error::ExpiredIterator(_)) => {
                    let at = self.next_seq.map_or(self.start, Position::AtSequence);
                    self.iterator = self.issue(at).await?;
                }
                Err(e @ Error::Throttled { .. }) if throttled < THROTTLE_RETRIES => {
                    throttled += 1;
                    tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The sequence number after the last record returned, once any was.
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// Once a read reached the end of a closed shard: the shards its hash
    /// range continues in (read them after this one to keep each key's order).
    pub fn children(&self) -> Option<&[pb::ChildShard]> {
        self.children.as_deref()
    }
}
