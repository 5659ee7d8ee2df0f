//! A consumer-group member, in the spirit of a Lambda event source mapping.
//!
//! [`Consumer::run`] polls batches from the member's shards, hands each
//! shard's batch to the handler, and after every shard of the poll was
//! handled commits the last record of each in one call. A failing batch is
//! retried `max_retries` times with backoff; then its records are retried
//! one by one, and a record that still fails goes to the `on_failure` hook
//! (to dead-letter it) and is committed past, so one poison record never
//! blocks its shard.
//!
//! What it promises, and how:
//! - **No record skipped.** The member owns its read position: each poll
//!   names, per lease, the next sequence number it wants, and the position
//!   moves only when a poll's records reach the caller. A poll whose answer
//!   is lost is simply asked for again. The broker refuses positions past
//!   what a lease was delivered.
//! - **Every handled batch is committed or redelivered.** One shard's failed
//!   or fenced commit never drops another shard's batch: a commit that fails
//!   with a retryable error stays pending and is retried before the next
//!   poll (commits are cumulative); a shard whose lease ended is reported as
//!   [`Error::Fenced`] and its records are redelivered to the shard's new
//!   owner.
//! - **Fencing holds.** A commit names the lease its records were polled
//!   under, never the member's latest view, so a member that lost a shard
//!   cannot move its checkpoint. The background heartbeat only refreshes the
//!   assignment; a member whose session ended rejoins (once, even if the
//!   heartbeat and a poll notice together) and starts over from the
//!   checkpoints.
//! - **Cooperative rebalancing.** A shard the broker revokes is no longer
//!   polled; once its handled records are committed, the next poll leaves it
//!   out, which releases it to its new owner. Shards that do not move keep
//!   being polled through a rebalance.
//! - **Leaving on the way out.** `run` returns after `shutdown` or a fatal
//!   error, and leaves the group either way, so the member's shards move at
//!   once instead of after the session timeout.
//!
//! - **Resharding.** Nothing to do here: the broker grants a split's or
//!   merge's children only after the parents' last records were committed
//!   (which `run` does like any commit), and then the parent's lease simply
//!   disappears from the assignment.
//!
//! Delivery is at-least-once: records handled but not committed before a
//! crash, a lost lease or a failed commit are delivered again.

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
    /// Most records per poll, shared among the member's shards.
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
    /// The lease of its shard it was delivered under; commits name it.
    pub lease_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseState {
    epoch: u64,
    /// The next sequence number to ask for; `None` until the lease's first poll.
    next: Option<u64>,
    revoking: bool,
}

#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: u64,
    leases: BTreeMap<String, LeaseState>,
}

impl Membership {
    /// Takes the broker's view of the assignment; positions survive for
    /// leases that did not change.
    fn apply(&mut self, a: pb::Assignment) {
        self.generation = a.generation;
        let mut leases = BTreeMap::new();
        for l in a.leases {
            let next = self.leases.get(&l.shard_id).filter(|o| o.epoch == l.lease_epoch).and_then(|o| o.next);
            leases.insert(l.shard_id, LeaseState { epoch: l.lease_epoch, next, revoking: l.revoking });
        }
        self.leases = leases;
    }
}

/// What the heartbeat task and the consumer share.
#[derive(Debug)]
struct Shared {
    client: ConsumerGroupsClient<Channel>,
    stream: String,
    config: ConsumerConfig,
    state: Mutex<Membership>,
    /// Serialises rejoins, so a member whose session ended joins once.
    rejoining: tokio::sync::Mutex<()>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        // Membership is replaced field by field without awaiting; a panic cannot tear it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn member_id(&self) -> String {
        self.lock().member_id.clone()
    }

    /// Joins; returns the membership and the group's session timeout.
    async fn join(&self) -> Result<(Membership, u64)> {
        let r = self
            .client
            .clone()
            .join_group(pb::JoinGroupRequest {
                stream_name: self.stream.clone(),
                group_name: self.config.group.clone(),
                start: Some(start_of(self.config.start)?),
                client_id: self.config.client_id.clone(),
            })
            .await?
            .into_inner();
        let mut m = Membership { member_id: r.member_id, ..Membership::default() };
        if let Some(a) = r.assignment {
            m.apply(a);
        }
        Ok((m, r.session_timeout_ms))
    }

    /// Rejoins if the member is still `stale` (its session ended).
    async fn rejoin(&self, stale: &str) -> Result<()> {
        let _one = self.rejoining.lock().await;
        if self.member_id() != stale {
            return Ok(());
        }
        let (m, _) = self.join().await?;
        tracing::info!(old = %stale, member = %m.member_id, "session had ended; rejoined the group");
        *self.lock() = m;
        Ok(())
    }

    /// Renews the session and takes the broker's assignment; rejoins if the
    /// session ended.
    async fn heartbeat(&self) -> Result<()> {
        let member_id = self.member_id();
        let req = pb::HeartbeatRequest {
            stream_name: self.stream.clone(),
            group_name: self.config.group.clone(),
            member_id: member_id.clone(),
        };
        match self.client.clone().heartbeat(req).await.map_err(Error::from) {
            Ok(r) => {
                let mut st = self.lock();
                if let (true, Some(a)) = (st.member_id == member_id, r.into_inner().assignment) {
                    st.apply(a);
                }
                Ok(())
            }
            Err(Error::Rebalanced(_)) => self.rejoin(&member_id).await,
            Err(e) => Err(e),
        }
    }
}

/// A member of a consumer group. Dropping it stops its heartbeats; its
/// shards move to others after the session timeout. [`Consumer::leave`]
/// hands them over at once.
#[derive(Debug)]
pub struct Consumer {
    shared: Arc<Shared>,
    /// Handled but not yet committed: shard -> (lease epoch, last sequence number).
    uncommitted: BTreeMap<String, (u64, u64)>,
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

impl Consumer {
    /// Joins `config.group` of `stream` at `addr`.
    pub async fn join(addr: &str, stream: &str, config: ConsumerConfig) -> Result<Self> {
        Self::with_channel(connect(addr).await?, stream, config).await
    }

    /// Joins over an existing channel.
    pub async fn with_channel(channel: Channel, stream: &str, config: ConsumerConfig) -> Result<Self> {
        let client = ConsumerGroupsClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let shared = Arc::new(Shared {
            client,
            stream: stream.to_string(),
            config,
            state: Mutex::new(Membership::default()),
            rejoining: tokio::sync::Mutex::new(()),
        });
        let (joined, session_ms) = shared.join().await?;
        *shared.lock() = joined;
        let heartbeat = CancellationToken::new();
        tokio::spawn({
            let (shared, stop) = (shared.clone(), heartbeat.clone());
            let every = Duration::from_millis((session_ms / 3).max(100));
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.cancelled() => return,
                    }
                    if let Err(e) = shared.heartbeat().await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
            }
        });
        Ok(Self { shared, uncommitted: BTreeMap::new(), heartbeat })
    }

    /// This member's id (it changes if the member has to rejoin).
    pub fn member_id(&self) -> String {
        self.shared.member_id()
    }

    /// The shards this member polls now (its leases that are not being revoked).
    pub fn shards(&self) -> Vec<String> {
        self.shared.lock().leases.iter().filter(|(_, l)| !l.revoking).map(|(s, _)| s.clone()).collect()
    }

    /// The next records from this member's shards; empty after the long-poll
    /// wait, or when the assignment changed (the next poll follows it).
    pub async fn poll(&mut self) -> Result<Vec<Record>> {
        let (member_id, shards) = {
            let st = self.shared.lock();
            let shards = st
                .leases
                .iter()
                // A revoked lease with uncommitted records is still listed, which holds it until they are committed.
                .filter(|(s, l)| !l.revoking || self.uncommitted.contains_key(*s))
                .map(|(s, l)| pb::ShardPosition {
                    shard_id: s.clone(),
                    lease_epoch: l.epoch,
                    next_sequence_number: l.next,
                })
                .collect();
            (st.member_id.clone(), shards)
        };
        let c = &self.shared.config;
        let mut req = tonic::Request::new(pb::PollRequest {
            stream_name: self.shared.stream.clone(),
            group_name: c.group.clone(),
            member_id: member_id.clone(),
            shards,
            max_records: c.batch_size,
            wait_ms: c.poll_wait.as_millis() as u64,
        });
        req.set_timeout(c.poll_wait + POLL_DEADLINE_MARGIN);
        match self.shared.client.clone().poll(req).await.map_err(Error::from) {
            Ok(r) => {
                let r = r.into_inner();
                let mut st = self.shared.lock();
                if st.member_id != member_id {
                    // Rejoined meanwhile: the old leases' records go to their new owners.
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                for b in r.shards {
                    let Some(l) = st.leases.get_mut(&b.shard_id).filter(|l| l.epoch == b.lease_epoch) else {
                        continue;
                    };
                    l.next = Some(b.next_sequence_number);
                    out.extend(b.records.into_iter().map(|r| Record {
                        shard_id: b.shard_id.clone(),
                        sequence_number: r.sequence_number,
                        arrival_timestamp_ms: r.arrival_timestamp_ms,
                        partition_key: r.partition_key,
                        data: r.data,
                        lease_epoch: b.lease_epoch,
                    }));
                }
                if let Some(a) = r.assignment {
                    st.apply(a);
                }
                Ok(out)
            }
            Err(Error::Rebalanced(_)) => {
                self.shared.rejoin(&member_id).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Commits, per shard, the last of `records` (with everything still
    /// pending from earlier commits that failed). `Err(Error::Fenced)` names
    /// the shards whose lease ended (their records go to the new owner; the
    /// other shards were committed); a retryable error leaves the commit
    /// pending for the next call.
    pub async fn commit(&mut self, records: &[Record]) -> Result<()> {
        for r in records {
            let e = self.uncommitted.entry(r.shard_id.clone()).or_insert((r.lease_epoch, r.sequence_number));
            if e.0 == r.lease_epoch {
                e.1 = e.1.max(r.sequence_number);
            } else {
                *e = (r.lease_epoch, r.sequence_number);
            }
        }
        self.commit_pending().await
    }

    async fn commit_pending(&mut self) -> Result<()> {
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let member_id = self.member_id();
        let checkpoints = self
            .uncommitted
            .iter()
            .map(|(shard_id, &(lease_epoch, sequence_number))| pb::ShardCheckpoint {
                shard_id: shard_id.clone(),
                sequence_number,
                lease_epoch,
            })
            .collect();
        let req = pb::CommitRequest {
            stream_name: self.shared.stream.clone(),
            group_name: self.shared.config.group.clone(),
            member_id: member_id.clone(),
            checkpoints,
        };
        match self.shared.client.clone().commit(req).await.map_err(Error::from) {
            Ok(r) => {
                let mut fenced = Vec::new();
                for result in r.into_inner().results {
                    self.uncommitted.remove(&result.shard_id);
                    if !result.error_kind.is_empty() {
                        fenced.push(result.error_message);
                    }
                }
                if fenced.is_empty() {
                    return Ok(());
                }
                // Learn the new assignment now rather than at the next heartbeat.
                if let Err(e) = self.shared.heartbeat().await {
                    tracing::warn!(error = %e, "refreshing the assignment failed");
                }
                Err(Error::Fenced(fenced.join("; ")))
            }
            Err(Error::Rebalanced(m)) => {
                // The member is gone, and every lease with it.
                self.uncommitted.clear();
                self.shared.rejoin(&member_id).await?;
                Err(Error::Fenced(m))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs until `shutdown`: poll, handle per shard, commit; see the module
    /// docs. Leaves the group before returning; returns early only on a
    /// fatal error.
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
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            if let Err(e) = self.commit_pending().await {
                if let Some(fatal) = self.note_commit_error(e) {
                    break Err(fatal);
                }
            }
            let polled = tokio::select! {
                r = self.poll() => r,
                _ = shutdown.cancelled() => break Ok(()),
            };
            let records = match polled {
                Ok(r) => {
                    failures = 0;
                    r
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    let wait = backoff(failures, self.shared.config.retry_backoff, Duration::from_secs(5))
                        .max(e.retry_after().unwrap_or_default());
                    tracing::warn!(error = %e, "poll failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.cancelled() => break Ok(()),
                    }
                }
                Err(e) => break Err(e),
            };
            let mut by_shard: BTreeMap<String, Vec<Record>> = BTreeMap::new();
            for r in records {
                by_shard.entry(r.shard_id.clone()).or_default().push(r);
            }
            let mut handled = Vec::with_capacity(by_shard.len());
            for (_, batch) in by_shard {
                let last = batch.last().cloned();
                if !self.handle(batch, &mut handler, &mut on_failure, &shutdown).await {
                    // Interrupted by shutdown: this and later batches are not committed.
                    break;
                }
                handled.extend(last);
            }
            if let Err(e) = self.commit(&handled).await {
                if let Some(fatal) = self.note_commit_error(e) {
                    break Err(fatal);
                }
            }
        };
        if let Err(e) = self.commit_pending().await {
            tracing::warn!(error = %e, "final commit failed; those records will be delivered again");
        }
        let left = self.leave().await;
        result.and(left)
    }

    /// Logs a commit error; returns it when it is fatal.
    fn note_commit_error(&self, e: Error) -> Option<Error> {
        match e {
            Error::Fenced(m) => {
                tracing::info!(reason = %m, "lease ended before the commit; the shard's new owner processes those records again");
                None
            }
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "commit failed; it stays pending and is retried before the next poll");
                None
            }
            e => Some(e),
        }
    }

    /// Handles one shard's batch; false if shutdown interrupted it before
    /// every record was handled or dead-lettered.
    async fn handle<H, HF, F, FF>(
        &self,
        batch: Vec<Record>,
        handler: &mut H,
        on_failure: &mut F,
        shutdown: &CancellationToken,
    ) -> bool
    where
        H: FnMut(Vec<Record>) -> HF,
        HF: Future<Output = std::result::Result<(), HandlerError>>,
        F: FnMut(Record, String) -> FF,
        FF: Future<Output = std::result::Result<(), HandlerError>>,
    {
        if self.attempt(&batch, handler).await.is_ok() {
            return true;
        }
        // Isolate the failing record(s): one by one, each with its own retries.
        for record in batch {
            if let Err(e) = self.attempt(std::slice::from_ref(&record), handler).await {
                let mut tries = 0;
                while let Err(hook) = on_failure(record.clone(), e.to_string()).await {
                    tries += 1;
                    tracing::warn!(error = %hook, "on-failure hook failed; retrying before committing past the record");
                    if shutdown.is_cancelled() {
                        return false;
                    }
                    let wait = backoff(tries, self.shared.config.retry_backoff, Duration::from_secs(5));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
        true
    }

    /// Hands the handler its own copy of `batch` (one per try: a failed
    /// try may have consumed it), retrying with backoff.
    async fn attempt<H, HF>(&self, batch: &[Record], handler: &mut H) -> std::result::Result<(), HandlerError>
    where
        H: FnMut(Vec<Record>) -> HF,
        HF: Future<Output = std::result::Result<(), HandlerError>>,
    {
        let mut tries = 0;
        loop {
            match handler(batch.to_vec()).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= self.shared.config.max_retries => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(backoff(tries, self.shared.config.retry_backoff, Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// Leaves the group: its shards move to the other members at once.
    pub async fn leave(self) -> Result<()> {
        self.heartbeat.cancel();
        let member_id = self.member_id();
        self.shared
            .client
            .clone()
            .leave_group(pb::LeaveGroupRequest {
                stream_name: self.shared.stream.clone(),
                group_name: self.shared.config.group.clone(),
                member_id,
            })
            .await?;
        Ok(())
    }
}

/// How much longer than its long-poll wait a poll may take before the
/// client gives up on it.
const POLL_DEADLINE_MARGIN: Duration = Duration::from_secs(15);

impl Drop for Consumer {
    fn drop(&mut self) {
        self.heartbeat.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, epoch: u64, revoking: bool) -> pb::ShardLease {
        pb::ShardLease { shard_id: shard.into(), lease_epoch: epoch, revoking }
    }

    #[test]
    fn positions_survive_only_for_unchanged_leases() {
        let mut m = Membership::default();
        m.apply(pb::Assignment { generation: 1, leases: vec![lease("a", 5, false), lease("b", 6, false)] });
        m.leases.get_mut("a").expect("a").next = Some(10);
        m.leases.get_mut("b").expect("b").next = Some(20);
        m.apply(pb::Assignment { generation: 2, leases: vec![lease("a", 5, true), lease("b", 9, false)] });
        assert_eq!(m.leases["a"], LeaseState { epoch: 5, next: Some(10), revoking: true });
        assert_eq!(m.leases["b"], LeaseState { epoch: 9, next: None, revoking: false }, "a new lease starts over");
        m.apply(pb::Assignment { generation: 3, leases: vec![lease("b", 9, false)] });
        assert!(!m.leases.contains_key("a"), "a released lease is forgotten");
    }
}
