//! The ConsumerGroups gRPC edge.

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::consumer_groups_server::ConsumerGroups;
use tonic::{Request, Response, Status};

use super::{to_record, unary};
use crate::error::{BrokerError, Result};
use crate::group::{Assignment, CommitShard, GroupInfo, GroupManager, LeaseView, PollShard, ResetTo};
use crate::metadata::StartPosition;
use crate::shard::{parse_shard_id, shard_id};

/// Longest long-poll.
const POLL_WAIT_MS_MAX: u64 = 30_000;

/// The ConsumerGroups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    groups: Arc<GroupManager>,
    request_timeout_ms: u64,
}

impl GroupsService {
    /// A service over `groups`; unary calls other than Poll get `request_timeout_ms`.
    pub fn new(groups: Arc<GroupManager>, request_timeout_ms: u64) -> Self {
        Self { groups, request_timeout_ms }
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn leases(leases: Vec<LeaseView>) -> Vec<pb::ShardLease> {
    leases
        .into_iter()
        .map(|l| pb::ShardLease { shard_id: shard_id(l.shard), lease_epoch: l.epoch, revoking: l.revoking })
        .collect()
}

fn assignment(a: Assignment) -> pb::Assignment {
    pb::Assignment { generation: a.generation, leases: leases(a.leases) }
}

fn start_of(s: Option<pb::GroupStart>) -> Result<StartPosition> {
    let s = s.unwrap_or_default();
    match pb::IteratorType::try_from(s.position) {
        Ok(pb::IteratorType::TrimHorizon) | Ok(pb::IteratorType::Unspecified) => Ok(StartPosition::TrimHorizon),
        Ok(pb::IteratorType::Latest) => Ok(StartPosition::Latest),
        Ok(pb::IteratorType::AtTimestamp) => Ok(StartPosition::AtTimestamp(
            s.timestamp_ms.ok_or_else(|| BrokerError::invalid("start.timestamp_ms", "required for AT_TIMESTAMP"))?,
        )),
        _ => Err(BrokerError::invalid("start.position", "must be TRIM_HORIZON, LATEST or AT_TIMESTAMP")),
    }
}

fn start_to_pb(s: StartPosition) -> pb::GroupStart {
    match s {
        StartPosition::TrimHorizon => {
            pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None }
        }
        StartPosition::Latest => pb::GroupStart { position: pb::IteratorType::Latest as i32, timestamp_ms: None },
        StartPosition::AtTimestamp(ts) => {
            pb::GroupStart { position: pb::IteratorType::AtTimestamp as i32, timestamp_ms: Some(ts) }
        }
    }
}

fn describe(info: GroupInfo, session_timeout_ms: u64) -> pb::GroupDescription {
    pb::GroupDescription {
        stream_name: info.stream,
        group_name: info.meta.name,
        start: Some(start_to_pb(info.meta.start)),
        generation: info.generation,
        members: info
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                leases: leases(m.leases),
                last_heartbeat_age_ms: m.last_heartbeat_age_ms,
            })
            .collect(),
        shards: info
            .shards
            .into_iter()
            .map(|s| pb::GroupShard {
                shard_id: shard_id(s.shard),
                owner_member_id: s.owner.unwrap_or_default(),
                lease_epoch: s.epoch,
                revoking: s.revoking,
                checkpoint: s.checkpoint.unwrap_or(0),
                has_checkpoint: s.checkpoint.is_some(),
                lag_records: s.lag_records,
                lag_ms: s.lag_ms,
                closed: s.closed,
                finished: s.finished,
                waiting_for_shard_ids: s.waiting_for.into_iter().map(shard_id).collect(),
            })
            .collect(),
        session_timeout_ms,
    }
}

#[tonic::async_trait]
impl ConsumerGroups for GroupsService {
    async fn join_group(&self, req: Request<pb::JoinGroupRequest>) -> Result<Response<pb::JoinGroupResponse>, Status> {
        let r = req.into_inner();
        unary("JoinGroup", self.deadline(), async {
            let joined = self.groups.join(&r.stream_name, &r.group_name, start_of(r.start)?, &r.client_id).await?;
            Ok(pb::JoinGroupResponse {
                member_id: joined.member_id.clone(),
                assignment: Some(assignment(joined)),
                session_timeout_ms: self.groups.session_timeout_ms(),
            })
        })
        .await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        unary("Heartbeat", self.deadline(), async {
            let a = self.groups.heartbeat(&r.stream_name, &r.group_name, &r.member_id).await?;
            Ok(pb::HeartbeatResponse { assignment: Some(assignment(a)) })
        })
        .await
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let r = req.into_inner();
        unary("LeaveGroup", self.deadline(), async {
            self.groups.leave(&r.stream_name, &r.group_name, &r.member_id).await?;
            Ok(pb::LeaveGroupResponse {})
        })
        .await
    }

    async fn poll(&self, req: Request<pb::PollRequest>) -> Result<Response<pb::PollResponse>, Status> {
        let r = req.into_inner();
        let wait = r.wait_ms;
        unary("Poll", self.deadline() + Duration::from_millis(POLL_WAIT_MS_MAX), async {
            let max = match r.max_records {
                0 => 1000,
                1..=10_000 => r.max_records as usize,
                n => return Err(BrokerError::invalid("max_records", format!("must be 1..=10000, got {n}"))),
            };
            if wait > POLL_WAIT_MS_MAX {
                return Err(BrokerError::invalid("wait_ms", format!("must be 0..=30000, got {wait}")));
            }
            let shards: Vec<PollShard> = r
                .shards
                .into_iter()
                .map(|p| PollShard { shard_id: p.shard_id, epoch: p.lease_epoch, next: p.next_sequence_number })
                .collect();
            let polled = self
                .groups
                .poll(&r.stream_name, &r.group_name, &r.member_id, &shards, max, Duration::from_millis(wait))
                .await?;
            Ok(pb::PollResponse {
                shards: polled
                    .batches
                    .into_iter()
                    .map(|b| pb::ShardRecords {
                        shard_id: shard_id(b.shard),
                        lease_epoch: b.epoch,
                        records: b.records.into_iter().map(to_record).collect(),
                        next_sequence_number: b.next_seq,
                        millis_behind_latest: b.millis_behind_latest,
                    })
                    .collect(),
                assignment: Some(assignment(polled.assignment)),
            })
        })
        .await
    }

    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let r = req.into_inner();
        unary("Commit", self.deadline(), async {
            if r.checkpoints.is_empty() {
                return Err(BrokerError::invalid("checkpoints", "at least one checkpoint"));
            }
            let cps: Vec<CommitShard> = r
                .checkpoints
                .into_iter()
                .map(|c| CommitShard { shard_id: c.shard_id, seq: c.sequence_number, epoch: c.lease_epoch })
                .collect();
            let results = self.groups.commit(&r.stream_name, &r.group_name, &r.member_id, &cps).await?;
            Ok(pb::CommitResponse {
                results: cps
                    .into_iter()
                    .zip(results)
                    .map(|(c, r)| match r {
                        Ok(()) => pb::CommitResult { shard_id: c.shard_id, ..Default::default() },
                        Err(e) => pb::CommitResult {
                            shard_id: c.shard_id,
                            error_kind: e.kind().to_string(),
                            error_message: e.to_string(),
                        },
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn describe_group(
        &self,
        req: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let r = req.into_inner();
        unary("DescribeGroup", self.deadline(), async {
            let info = self.groups.describe(&r.stream_name, &r.group_name).await?;
            Ok(pb::DescribeGroupResponse { group: Some(describe(info, self.groups.session_timeout_ms())) })
        })
        .await
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let r = req.into_inner();
        unary("ListGroups", self.deadline(), async {
            let stream = (!r.stream_name.is_empty()).then_some(r.stream_name.as_str());
            let groups = self.groups.list(stream)?;
            Ok(pb::ListGroupsResponse {
                groups: groups
                    .into_iter()
                    .map(|(stream_name, group_name)| pb::GroupName { stream_name, group_name })
                    .collect(),
            })
        })
        .await
    }

    async fn reset_group(
        &self,
        req: Request<pb::ResetGroupRequest>,
    ) -> Result<Response<pb::ResetGroupResponse>, Status> {
        let r = req.into_inner();
        unary("ResetGroup", self.deadline(), async {
            let to = match pb::IteratorType::try_from(r.position) {
                Ok(pb::IteratorType::TrimHorizon) => ResetTo::TrimHorizon,
                Ok(pb::IteratorType::Latest) => ResetTo::Latest,
                Ok(pb::IteratorType::AtTimestamp) => ResetTo::AtTimestamp(
                    r.timestamp_ms.ok_or_else(|| BrokerError::invalid("timestamp_ms", "required for AT_TIMESTAMP"))?,
                ),
                Ok(pb::IteratorType::AtSequenceNumber) => ResetTo::AtSequence {
                    shard: parse_shard_id(&r.shard_id)
                        .ok_or_else(|| BrokerError::invalid("shard_id", "required for AT_SEQUENCE_NUMBER"))?,
                    seq: r
                        .sequence_number
                        .ok_or_else(|| BrokerError::invalid("sequence_number", "required for AT_SEQUENCE_NUMBER"))?,
                },
                _ => {
                    return Err(BrokerError::invalid(
                        "position",
                        "must be TRIM_HORIZON, LATEST, AT_TIMESTAMP or AT_SEQUENCE_NUMBER",
                    ));
                }
            };
            self.groups.reset(&r.stream_name, &r.group_name, to).await?;
            let info = self.groups.describe(&r.stream_name, &r.group_name).await?;
            Ok(pb::ResetGroupResponse { group: Some(describe(info, self.groups.session_timeout_ms())) })
        })
        .await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let r = req.into_inner();
        unary("DeleteGroup", self.deadline(), async {
            self.groups.delete(&r.stream_name, &r.group_name).await?;
            Ok(pb::DeleteGroupResponse {})
        })
        .await
    }
}
