//! The control plane (streams, repair, lost+found) and the consumer-group
//! calls, with the request checks that belong to neither the catalogue nor
//! the group manager: list and poll bounds, and group start positions.

use std::sync::Arc;
use std::time::Duration;

use super::{IteratorKind, POLL_WAIT_MS_MAX, Record, Service, StartingPosition};
use crate::auth::policy::{Action, Resource};
use crate::catalog::{CreateStream, LostFound, QuotaUpdate, Scaling, Stream, validate_stream_name};
use crate::error::{BrokerError, Result};
use crate::group::{Assignment, CommitShard, GroupInfo, PollShard, ResetTo};
use crate::metadata::{ShardMeta, StartPosition};
use crate::shard::{RepairOutcome, Shard};

/// Default page of ListStreams.
const LIST_STREAMS_LIMIT_DEFAULT: usize = 100;
/// Largest page of ListStreams (Kinesis's bound).
pub const LIST_STREAMS_LIMIT_MAX: u32 = 10_000;
/// Default records of a group poll.
const POLL_RECORDS_DEFAULT: usize = 1000;
/// Most records of a group poll.
const POLL_RECORDS_MAX: u32 = 10_000;

/// A repaired (or inspected) shard.
#[derive(Debug)]
pub struct RepairResult {
    /// The shard after the call.
    pub shard: Arc<Shard>,
    /// Its place in the stream's shard tree.
    pub info: Option<ShardMeta>,
    /// The plan, and whether it was applied.
    pub outcome: RepairOutcome,
}

/// A consumer-group poll as a request states it.
#[derive(Debug, Clone)]
pub struct PollRequest {
    /// The stream.
    pub stream_name: String,
    /// The group.
    pub group_name: String,
    /// The polling member.
    pub member_id: String,
    /// Where each lease continues.
    pub shards: Vec<PollShard>,
    /// Most records; `None` for the default of 1000.
    pub max_records: Option<u32>,
    /// Longest wait for records, at most 30,000 ms.
    pub wait_ms: u64,
}

/// Records of one lease delivered by a poll.
#[derive(Debug, Clone)]
pub struct GroupBatch {
    /// Shard index.
    pub shard: u32,
    /// The lease they were delivered under.
    pub epoch: u64,
    /// The records, in order.
    pub records: Vec<Record>,
    /// Where the next poll of the lease continues.
    pub next_seq: u64,
    /// Age of the newest returned record when the shard has more, else 0.
    pub millis_behind_latest: u64,
}

/// What a group poll returns.
#[derive(Debug, Clone)]
pub struct GroupPolled {
    /// Shards that returned records.
    pub batches: Vec<GroupBatch>,
    /// The member's assignment after the poll.
    pub assignment: Assignment,
}

/// A checkpoint as a commit request states it.
pub type CommitCheckpoint = CommitShard;

impl Service {
    /// CreateStream: durable and serving on return. The catalogue checks
    /// the name, shard count, retention, quotas and record size.
    pub async fn create_stream(&self, req: CreateStream) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamCreate, &Resource::stream(&req.name))?;
        self.catalog.create(req).await
    }

    /// DeleteStream: the stream, its records, its consumer groups, its
    /// attributes and registered consumers.
    pub async fn delete_stream(&self, stream_name: &str) -> Result<()> {
        self.authorize(Action::StreamDelete, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        let id = self.catalog.get(stream_name)?.meta().id;
        self.catalog.delete(stream_name).await?;
        // Groups die with their stream; a crash before this line is cleaned up at the next start.
        self.groups.remove_stream(id).await?;
        self.subscriptions.end_stream(id);
        // Ids are never reused, so attributes left by a crash here are never read again.
        self.catalog.store().remove_stream_attributes(id)
    }

    /// UpdateMaxRecordSize: a stream's largest record, key + data.
    pub async fn update_max_record_bytes(&self, stream_name: &str, max_record_bytes: u32) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        self.catalog.update_max_record_bytes(stream_name, max_record_bytes).await
    }

    /// The stream with this name.
    pub fn stream(&self, stream_name: &str) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamDescribe, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        self.catalog.get(stream_name)
    }

    /// ListStreams: up to `limit` (default 100, at most 10,000) names after
    /// `exclusive_start`, and whether more follow. Only streams the caller
    /// may describe are listed, so a page may hold fewer than `limit`.
    pub fn list_streams(&self, limit: Option<u32>, exclusive_start: &str) -> Result<(Vec<String>, bool)> {
        let caller = crate::auth::current();
        self.auth.require_principal(&caller)?;
        let limit = match limit {
            None => LIST_STREAMS_LIMIT_DEFAULT,
            Some(n @ 1..=LIST_STREAMS_LIMIT_MAX) => n as usize,
            Some(n) => return Err(BrokerError::invalid("limit", format!("must be 1..=10000, got {n}"))),
        };
        let (mut names, more) = self.catalog.list(limit, exclusive_start);
        names.retain(|n| self.auth.allows(&caller, Action::StreamDescribe, &Resource::stream(n)));
        Ok((names, more))
    }

    /// Changes a stream's retention (the catalogue checks the bounds).
    pub async fn update_retention(&self, stream_name: &str, retention_hours: u32) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        self.catalog.update_retention(stream_name, retention_hours).await
    }

    /// Changes a serving stream's per-shard quotas; unset fields keep their value.
    pub async fn update_quotas(&self, stream_name: &str, update: QuotaUpdate) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        validate_stream_name(stream_name)?;
        self.catalog.update_quotas(stream_name, update).await
    }

    /// SplitShard: `shard_id` closes, two children take `[start,
    /// new_starting_hash_key - 1]` and `[new_starting_hash_key, end]`
    /// (decimal); returns once they serve.
    pub async fn split_shard(
        &self,
        stream_name: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        self.catalog.split_shard(stream_name, shard_id, new_starting_hash_key).await
    }

    /// MergeShards: two open shards with adjoining ranges close and one
    /// child takes both; returns once it serves.
    pub async fn merge_shards(
        &self,
        stream_name: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        self.catalog.merge_shards(stream_name, shard_id, adjacent_shard_id).await
    }

    /// UpdateShardCount with UNIFORM_SCALING (the only scaling type);
    /// returns once the new shards serve.
    pub async fn update_shard_count(&self, stream_name: &str, target_shard_count: u32) -> Result<Scaling> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        self.catalog.update_shard_count(stream_name, target_shard_count).await
    }

    /// A shard's repair plan, applied with `confirm`.
    pub async fn repair_shard(&self, stream_name: &str, shard_id: &str, confirm: bool) -> Result<RepairResult> {
        self.authorize(Action::AdminRepair, &Resource::Cluster)?;
        validate_stream_name(stream_name)?;
        let (stream, outcome) = self.catalog.repair(stream_name, shard_id, confirm).await?;
        let shard = Self::shard_of(&stream, shard_id)?;
        let info = stream.layout().info(shard.index).cloned();
        Ok(RepairResult { shard, info, outcome })
    }

    /// The directories in `lost+found/`.
    pub async fn lost_found(&self) -> Result<Vec<LostFound>> {
        self.authorize(Action::AdminRepair, &Resource::Cluster)?;
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || catalog.lost_found())
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?
    }

    /// Removes one directory from `lost+found/`.
    pub async fn purge_lost_found(&self, name: &str) -> Result<LostFound> {
        self.authorize(Action::AdminRepair, &Resource::Cluster)?;
        self.catalog.purge_lost_found(name).await
    }

    /// A group's start for shards without a checkpoint; `None` is the
    /// oldest record. Only TRIM_HORIZON, LATEST and AT_TIMESTAMP apply.
    pub fn group_start(start: Option<StartingPosition>) -> Result<StartPosition> {
        let Some(start) = start else { return Ok(StartPosition::TrimHorizon) };
        match start.kind {
            IteratorKind::TrimHorizon => Ok(StartPosition::TrimHorizon),
            IteratorKind::Latest => Ok(StartPosition::Latest),
            IteratorKind::AtTimestamp => Ok(StartPosition::AtTimestamp(
                start
                    .timestamp_ms
                    .ok_or_else(|| BrokerError::invalid("start.timestamp_ms", "required for AT_TIMESTAMP"))?,
            )),
            IteratorKind::AtSequenceNumber | IteratorKind::AfterSequenceNumber => {
                Err(BrokerError::invalid("start.position", "must be TRIM_HORIZON, LATEST or AT_TIMESTAMP"))
            }
        }
    }

    /// Where a reset moves a group: every shard (TRIM_HORIZON, LATEST,
    /// AT_TIMESTAMP) or one shard (AT_SEQUENCE_NUMBER with `shard`).
    pub fn group_reset(start: StartingPosition, shard: Option<u32>) -> Result<ResetTo> {
        match start.kind {
            IteratorKind::TrimHorizon => Ok(ResetTo::TrimHorizon),
            IteratorKind::Latest => Ok(ResetTo::Latest),
            IteratorKind::AtTimestamp => Ok(ResetTo::AtTimestamp(
                start.timestamp_ms.ok_or_else(|| BrokerError::invalid("timestamp_ms", "required for AT_TIMESTAMP"))?,
            )),
            IteratorKind::AtSequenceNumber => Ok(ResetTo::AtSequence {
                shard: shard.ok_or_else(|| BrokerError::invalid("shard_id", "required for AT_SEQUENCE_NUMBER"))?,
                seq: start
                    .sequence_number
                    .ok_or_else(|| BrokerError::invalid("sequence_number", "required for AT_SEQUENCE_NUMBER"))?,
            }),
            IteratorKind::AfterSequenceNumber => Err(BrokerError::invalid(
                "position",
                "must be TRIM_HORIZON, LATEST, AT_TIMESTAMP or AT_SEQUENCE_NUMBER",
            )),
        }
    }

    /// A group poll: checks its bounds and turns stored records into
    /// [`Record`]s. Needs `group:read` on the group and `record:get` on the
    /// stream, checked again while it waits.
    pub async fn poll_group(&self, r: PollRequest) -> Result<GroupPolled> {
        let checks = group_reader(&r.stream_name, &r.group_name);
        for (action, resource) in &checks {
            self.authorize(*action, resource)?;
        }
        let max = match r.max_records {
            None => POLL_RECORDS_DEFAULT,
            Some(n @ 1..=POLL_RECORDS_MAX) => n as usize,
            Some(n) => return Err(BrokerError::invalid("max_records", format!("must be 1..=10000, got {n}"))),
        };
        if r.wait_ms > POLL_WAIT_MS_MAX {
            return Err(BrokerError::invalid("wait_ms", format!("must be 0..=30000, got {}", r.wait_ms)));
        }
        let wait = Duration::from_millis(r.wait_ms);
        let poll = self.groups.poll(&r.stream_name, &r.group_name, &r.member_id, &r.shards, max, wait);
        let polled = self.guarded(&checks, poll).await?;
        Ok(GroupPolled {
            batches: polled
                .batches
                .into_iter()
                .map(|b| GroupBatch {
                    shard: b.shard,
                    epoch: b.epoch,
                    records: b.records.into_iter().map(Into::into).collect(),
                    next_seq: b.next_seq,
                    millis_behind_latest: b.millis_behind_latest,
                })
                .collect(),
            assignment: polled.assignment,
        })
    }

    /// A group commit of at least one checkpoint; one result per checkpoint.
    pub async fn commit_group(
        &self,
        stream_name: &str,
        group_name: &str,
        member_id: &str,
        checkpoints: &[CommitCheckpoint],
    ) -> Result<Vec<Result<()>>> {
        self.authorize(Action::GroupCommit, &Resource::group(stream_name, group_name))?;
        if checkpoints.is_empty() {
            return Err(BrokerError::invalid("checkpoints", "at least one checkpoint"));
        }
        self.groups.commit(stream_name, group_name, member_id, checkpoints).await
    }

    /// JoinGroup: a member of `group_name` on `stream_name`, creating the
    /// group (starting at `start`) on its first join.
    pub async fn join_group(
        &self,
        stream_name: &str,
        group_name: &str,
        start: StartPosition,
        client_id: &str,
    ) -> Result<Assignment> {
        for (action, resource) in group_reader(stream_name, group_name) {
            self.authorize(action, &resource)?;
        }
        self.groups.join(stream_name, group_name, start, client_id).await
    }

    /// Heartbeat: keeps a member's session and returns its assignment.
    pub async fn heartbeat_group(&self, stream_name: &str, group_name: &str, member_id: &str) -> Result<Assignment> {
        self.authorize(Action::GroupRead, &Resource::group(stream_name, group_name))?;
        self.groups.heartbeat(stream_name, group_name, member_id).await
    }

    /// LeaveGroup: the member's shards move to the others at once.
    pub async fn leave_group(&self, stream_name: &str, group_name: &str, member_id: &str) -> Result<()> {
        self.authorize(Action::GroupRead, &Resource::group(stream_name, group_name))?;
        self.groups.leave(stream_name, group_name, member_id).await
    }

    /// DescribeGroup: members, leases, checkpoints and lag.
    pub async fn describe_group(&self, stream_name: &str, group_name: &str) -> Result<GroupInfo> {
        self.authorize(Action::GroupRead, &Resource::group(stream_name, group_name))?;
        self.groups.describe(stream_name, group_name).await
    }

    /// ListGroups: the groups of one stream or all, those the caller may read.
    pub fn list_groups(&self, stream_name: Option<&str>) -> Result<Vec<(String, String)>> {
        let caller = crate::auth::current();
        self.auth.require_principal(&caller)?;
        let mut groups = self.groups.list(stream_name)?;
        groups.retain(|(s, g)| self.auth.allows(&caller, Action::GroupRead, &Resource::group(s, g)));
        Ok(groups)
    }

    /// ResetGroup: moves a group without live members; its description after.
    pub async fn reset_group(&self, stream_name: &str, group_name: &str, to: ResetTo) -> Result<GroupInfo> {
        self.authorize(Action::GroupAdmin, &Resource::group(stream_name, group_name))?;
        self.groups.reset(stream_name, group_name, to).await?;
        self.groups.describe(stream_name, group_name).await
    }

    /// DeleteGroup: a group without live members and its checkpoints.
    pub async fn delete_group(&self, stream_name: &str, group_name: &str) -> Result<()> {
        self.authorize(Action::GroupAdmin, &Resource::group(stream_name, group_name))?;
        self.groups.delete(stream_name, group_name).await
    }
}

/// What reading through a group needs: `group:read` on the group and
/// `record:get` on its stream (as Kafka needs Group:Read and Topic:Read).
fn group_reader(stream_name: &str, group_name: &str) -> [(Action, Resource); 2] {
    [(Action::GroupRead, Resource::group(stream_name, group_name)), (Action::RecordGet, Resource::stream(stream_name))]
}
