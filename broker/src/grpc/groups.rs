//! The ConsumerGroups gRPC edge: maps messages onto the group calls of
//! [`crate::service`] and [`crate::group::GroupManager`].

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::consumer_groups_server::ConsumerGroups;
use tonic::{Request, Response, Status};

use super::{to_record, unary};
use crate::error::{BrokerError, Result};
use crate::group::{Assignment, CommitShard, GroupInfo, LeaseView, PollShard};
use crate::metadata::StartPosition;
use crate::service::{IteratorKind, POLL_WAIT_MS_MAX, PollRequest, Service, StartingPosition};
use crate::shard::{parse_shard_id, shard_id};

/// The ConsumerGroups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    service: Service,
}

impl GroupsService {
    /// The group edge of `service`; unary calls other than Poll get its request deadline.
    pub fn new(service: Service) -> Self {
        Self { service }
    }

    fn deadline(&self) -> Duration {
        self.service.request_timeout()
    }
}

/// A group position type; `None` for one outside `allowed` or unknown,
/// which the caller rejects with its own field name.
fn kind_of(position: i32) -> Option<IteratorKind> {
    match pb::IteratorType::try_from(position) {
        Ok(pb::IteratorType::TrimHorizon) => Some(IteratorKind::TrimHorizon),
        Ok(pb::IteratorType::Latest) => Some(IteratorKind::Latest),
        Ok(pb::IteratorType::AtSequenceNumber) => Some(IteratorKind::AtSequenceNumber),
        Ok(pb::IteratorType::AfterSequenceNumber) => Some(IteratorKind::AfterSequenceNumber),
        Ok(pb::IteratorType::AtTimestamp) => Some(IteratorKind::AtTimestamp),
        Ok(pb::IteratorType::Unspecified) | Err(_) => None,
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
    let start = match pb::IteratorType::try_from(s.position) {
        // An unset position is the oldest record.
        Ok(pb::IteratorType::Unspecified) => None,
        _ => Some(StartingPosition {
            kind: kind_of(s.position).ok_or_else(|| {
                BrokerError::invalid("start.position", "must be TRIM_HORIZON, LATEST or AT_TIMESTAMP")
            })?,
            sequence_number: None,
            timestamp_ms: s.timestamp_ms,
        }),
    };
    Service::group_start(start)
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
            let joined =
                self.service.join_group(&r.stream_name, &r.group_name, start_of(r.start)?, &r.client_id).await?;
            Ok(pb::JoinGroupResponse {
                member_id: joined.member_id.clone(),
                assignment: Some(assignment(joined)),
                session_timeout_ms: self.service.groups().session_timeout_ms(),
            })
        })
        .await
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        unary("Heartbeat", self.deadline(), async {
            let a = self.service.heartbeat_group(&r.stream_name, &r.group_name, &r.member_id).await?;
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
            self.service.leave_group(&r.stream_name, &r.group_name, &r.member_id).await?;
            Ok(pb::LeaveGroupResponse {})
        })
        .await
    }

    async fn poll(&self, req: Request<pb::PollRequest>) -> Result<Response<pb::PollResponse>, Status> {
        let r = req.into_inner();
        let wait = r.wait_ms;
        unary("Poll", self.deadline() + Duration::from_millis(POLL_WAIT_MS_MAX), async {
            let shards: Vec<PollShard> = r
                .shards
                .into_iter()
                .map(|p| PollShard { shard_id: p.shard_id, epoch: p.lease_epoch, next: p.next_sequence_number })
                .collect();
            let polled = self
                .service
                .poll_group(PollRequest {
                    stream_name: r.stream_name,
                    group_name: r.group_name,
                    member_id: r.member_id,
                    shards,
                    max_records: (r.max_records != 0).then_some(r.max_records),
                    wait_ms: wait,
                })
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
            let cps: Vec<CommitShard> = r
                .checkpoints
                .into_iter()
                .map(|c| CommitShard { shard_id: c.shard_id, seq: c.sequence_number, epoch: c.lease_epoch })
                .collect();
            let results = self.service.commit_group(&r.stream_name, &r.group_name, &r.member_id, &cps).await?;
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
            let info = self.service.describe_group(&r.stream_name, &r.group_name).await?;
            Ok(pb::DescribeGroupResponse { group: Some(describe(info, self.service.groups().session_timeout_ms())) })
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
            let groups = self.service.list_groups(stream)?;
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
            let kind = kind_of(r.position).ok_or_else(|| {
                BrokerError::invalid("position", "must be TRIM_HORIZON, LATEST, AT_TIMESTAMP or AT_SEQUENCE_NUMBER")
            })?;
            let start = StartingPosition { kind, sequence_number: r.sequence_number, timestamp_ms: r.timestamp_ms };
            let to = Service::group_reset(start, parse_shard_id(&r.shard_id))?;
            let info = self.service.reset_group(&r.stream_name, &r.group_name, to).await?;
            Ok(pb::ResetGroupResponse { group: Some(describe(info, self.service.groups().session_timeout_ms())) })
        })
        .await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let r = req.into_inner();
        unary("DeleteGroup", self.deadline(), async {
            self.service.delete_group(&r.stream_name, &r.group_name).await?;
            Ok(pb::DeleteGroupResponse {})
        })
        .await
    }
}
