//! A consumer-group member, in the spirit of a Lambda event source mapping.
//!
//! [`Consumer::run`] polls batches from the member's shards, hands each
//! shard's batch to the handler and commits after it succeeds. A failing
//! batch is retried `max_retries` times with backoff; then its records are
//! retried one by one, and a record that still fails goes to the
//! `on_failure` hook (to dead-letter it) and is committed past, so one
//! poison record never blocks its shard. Heartbeats run in the background;
//! after a rebalance the member refreshes its lease (or rejoins if its
//! session ended) and continues; records it had not committed are delivered
//! again to whoever owns their shard (at-least-once).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Connection as Channel;
use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;
use tokio_util::sync::CancellationToken;

use crate::reader::Position;
use crate::{Error, MESSAGE_BYTES_MAX, Result, backoff, connect};

/// A handler's failure.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The group to join.
    pub group: String,
    /// Where shards without a checkpoint start (TrimHorizon, Latest or AtTimestamp).
    pub start: Position,
    /// Most records per poll.
    pub batch_size: u32,
    /// Retries of a failing batch (and then of each of its records).
    pub max_retries: u32,
    /// First retry backoff; doubles per attempt.
    pub retry_backoff: Duration,
    /// Long-poll wait when there is nothing new.
    pub poll_wait: Duration,
    /// Shown in DescribeGroup.
    pub client_id: String,
}

impl ConsumerConfig {
    /// Defaults for `group`: from the trim horizon, 100 records, 3 retries.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            start: Position::TrimHorizon,
            batch_size: 100,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            poll_wait: Duration::from_secs(1),
            client_id: format!("pid-{}", std::process::id()),
        }
    }
}

/// A record delivered to a group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its shard.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: u64,
    /// Arrival time, ms since the Unix epoch.
    pub arrival_timestamp_ms: u64,
    /// Partition key.
    pub partition_key: String,
    /// Payload.
    pub data: Bytes,
}

#[derive(Debug, Clone)]
struct Membership {
    member_id: String,
    generation: u64,
}

/// A member of a consumer group. Dropping it stops its heartbeats; its
/// shards move to others after the session timeout. [`Consumer::leave`]
/// hands them over at once.
#[derive(Debug)]
pub struct Consumer {
    client: ConsumerGroupsClient<Channel>,
    stream: String,
    config: ConsumerConfig,
    state: Arc<Mutex<Membership>>,
    heartbeat: CancellationToken,
}

fn start_of(p: Position) -> Result<pb::GroupStart> {
    Ok(match p {
        Position::TrimHorizon => pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None },
        Position::Latest => pb::GroupStart { position: pb::IteratorType::Latest as i32, timestamp_ms: None },
        Position::AtTimestamp(t) => {
            pb::GroupStart { position: pb::IteratorType::AtTimestamp as i32, timestamp_ms: Some(t) }
        }
        _ => return Err(Error::InvalidArgument("start must be TrimHorizon, Latest or AtTimestamp".into())),
    })
}

async fn join(
    client: &mut ConsumerGroupsClient<Channel>,
    stream: &str,
    config: &ConsumerConfig,
) -> Result<(Membership, u64)> {
    let r = client
        .join_group(pb::JoinGroupRequest {
            stream_name: stream.into(),
            group_name: config.group.clone(),
            start: Some(start_of(config.start)?),
            client_id: config.client_id.clone(),
        })
        .await?
        .into_inner();
    let generation = r.assignment.map_or(0, |a| a.generation);
    Ok((Membership { member_id: r.member_id, generation }, r.session_timeout_ms))
}

/// Renews the lease; rejoins if the session ended.
async fn refresh(
    client: &mut ConsumerGroupsClient<Channel>,
    stream: &str,
    config: &ConsumerConfig,
    state: &Mutex<Membership>,
) -> Result<()> {
    let member_id = lock(state).member_id.clone();
    let req = pb::HeartbeatRequest { stream_name: stream.into(), group_name: config.group.clone(), member_id };
    match client.heartbeat(req).await.map_err(Error::from) {
        Ok(r) => {
            lock(state).generation = r.into_inner().assignment.map_or(0, |a| a.generation);
            Ok(())
        }
        Err(Error::Rebalanced(_)) | Err(Error::NotFound(_)) => {
            let (m, _) = join(client, stream, config).await?;
            tracing::info!(member = %m.member_id, "session had ended; rejoined the group");
            *lock(state) = m;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn lock(m: &Mutex<Membership>) -> std::sync::MutexGuard<'_, Membership> {
    // Membership is two plain fields, replaced whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Consumer {
    /// Joins `config.group` of `stream` at `addr`.
    pub async fn join(addr: &str, stream: &str, config: ConsumerConfig) -> Result<Self> {
        Self::with_channel(connect(addr).await?, stream, config).await
    }

    /// Joins over an existing channel.
    pub async fn with_channel(channel: Channel, stream: &str, config: ConsumerConfig) -> Result<Self> {
        let mut client = ConsumerGroupsClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let (membership, session_ms) = join(&mut client, stream, &config).await?;
        let state = Arc::new(Mutex::new(membership));
        let heartbeat = CancellationToken::new();
        tokio::spawn({
            let (mut client, stream, config, state, stop) =
                (client.clone(), stream.to_string(), config.clone(), state.clone(), heartbeat.clone());
            let every = Duration::from_millis((session_ms / 3).max(100));
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.cancelled() => return,
                    }
                    if let Err(e) = refresh(&mut client, &stream, &config, &state).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
            }
        });
        Ok(Self { client, stream: stream.into(), config, state, heartbeat })
    }

    /// This member's id (it changes if the member has to rejoin).
    pub fn member_id(&self) -> String {
        lock(&self.state).member_id.clone()
    }

    /// The next records from this member's shards; empty after the long-poll
    /// wait, or when a rebalance made the member refresh its lease.
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        let m = lock(&self.state).clone();
        let req = pb::PollRequest {
            stream_name: self.stream.clone(),
            group_name: self.config.group.clone(),
            member_id: m.member_id,
            generation: m.generation,
            max_records: self.config.batch_size,
            wait_ms: self.config.poll_wait.as_millis() as u64,
        };
        match self.client.poll(req).await.map_err(Error::from) {
            Ok(r) => Ok(r
                .into_inner()
                .records
                .into_iter()
                .filter_map(|g| {
                    let r = g.record?;
                    Some(Record {
                        shard_id: g.shard_id,
                        sequence_number: r.sequence_number,
                        arrival_timestamp_ms: r.arrival_timestamp_ms,
                        partition_key: r.partition_key,
                        data: r.data,
                    })
                })
                .collect()),
            Err(Error::Rebalanced(_)) | Err(Error::NotFound(_)) => {
                refresh(&mut self.client, &self.stream, &self.config, &self.state).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Commits `sequence_number` (the last processed) on `shard_id`.
    pub async fn commit(&mut self, shard_id: &str, sequence_number: u64) -> Result<()> {
        let m = lock(&self.state).clone();
        self.client
            .commit(pb::CommitRequest {
                stream_name: self.stream.clone(),
                group_name: self.config.group.clone(),
                member_id: m.member_id,
                generation: m.generation,
                checkpoints: vec![pb::ShardCheckpoint { shard_id: shard_id.into(), sequence_number }],
            })
            .await?;
        Ok(())
    }

    /// Runs until `shutdown`: poll, handle per shard, commit; see the module docs.
    /// Returns early only on a fatal error.
    pub async fn run<H, HF, F, FF>(
        mut self,
        mut handler: H,
        mut on_failure: F,
        shutdown: CancellationToken,
    ) -> Result<()>
    where
        H: FnMut(Vec<Record>) -> HF,
        HF: Future<Output = std::result::Result<(), HandlerError>>,
        F: FnMut(Record, String) -> FF,
        FF: Future<Output = std::result::Result<(), HandlerError>>,
    {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let records = tokio::select! {
                r = self.poll() => r,
                _ = shutdown.cancelled() => break,
            };
            let records = match records {
                Ok(r) => {
                    failures = 0;
                    r
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tokio::time::sleep(
                        backoff(failures, self.config.retry_backoff, Duration::from_secs(5))
                            .max(e.retry_after().unwrap_or_default()),
                    )
                    .await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut by_shard: BTreeMap<String, Vec<Record>> = BTreeMap::new();
            for r in records {
                by_shard.entry(r.shard_id.clone()).or_default().push(r);
            }
            for (shard, batch) in by_shard {
                let last = batch.last().map(|r| r.sequence_number).expect("non-empty batch");
                self.handle(batch, &mut handler, &mut on_failure, &shutdown).await;
                if shutdown.is_cancelled() {
                    break;
                }
                match self.commit(&shard, last).await {
                    Ok(()) => {}
                    // The shard moved: its new owner resumes from the last commit.
                    Err(Error::Rebalanced(_)) => {
                        refresh(&mut self.client, &self.stream, &self.config, &self.state).await?;
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "commit failed; records will be delivered again");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.leave().await
    }

    async fn handle<H, HF, F, FF>(
        &self,
        batch: Vec<Record>,
        handler: &mut H,
        on_failure: &mut F,
        shutdown: &CancellationToken,
    ) where
        H: FnMut(Vec<Record>) -> HF,
        HF: Future<Output = std::result::Result<(), HandlerError>>,
        F: FnMut(Record, String) -> FF,
        FF: Future<Output = std::result::Result<(), HandlerError>>,
    {
        if self.attempt(batch.clone(), handler).await.is_ok() {
            return;
        }
        // Isolate the failing record(s): one by one, each with its own retries.
        for record in batch {
            if let Err(e) = self.attempt(vec![record.clone()], handler).await {
                let mut tries = 0;
                while let Err(hook) = on_failure(record.clone(), e.to_string()).await {
                    tries += 1;
                    tracing::warn!(error = %hook, "on-failure hook failed; retrying before committing past the record");
                    if shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(backoff(tries, self.config.retry_backoff, Duration::from_secs(5))).await;
                }
            }
        }
    }

    async fn attempt<H, HF>(&self, batch: Vec<Record>, handler: &mut H) -> std::result::Result<(), HandlerError>
    where
        H: FnMut(Vec<Record>) -> HF,
        HF: Future<Output = std::result::Result<(), HandlerError>>,
    {
        let mut tries = 0;
        loop {
            match handler(batch.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= self.config.max_retries => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(backoff(tries, self.config.retry_backoff, Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// Leaves the group: its shards move to the other members at once.
    pub async fn leave(mut self) -> Result<()> {
        self.heartbeat.cancel();
        let member_id = lock(&self.state).member_id.clone();
        self.client
            .leave_group(pb::LeaveGroupRequest {
                stream_name: self.stream.clone(),
                group_name: self.config.group.clone(),
                member_id,
            })
            .await?;
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.heartbeat.cancel();
    }
}
