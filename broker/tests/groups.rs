//! The consumer-group protocol through real gRPC: lease fencing, positions
//! that may not skip, validation, session expiry, reset and delete. (Group
//! behaviour as users run it, through `client::Consumer`, is tested in
//! `client/tests/groups.rs` and `group_chaos.rs`.)

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;
use tonic::Code;
use tonic::transport::Channel;

type Groups = ConsumerGroupsClient<Channel>;

async fn groups(endpoint: String) -> Groups {
    ConsumerGroupsClient::new(Channel::from_shared(endpoint).expect("uri").connect().await.expect("connect"))
}

async fn broker_with_session(timeout_ms: u64) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.groups.session_timeout_ms = timeout_ms;
    config.quotas.enforce = false;
    (TestBroker::start_with(config, Arc::new(SystemClock)).await, dir)
}

async fn join(g: &mut Groups, client_id: &str) -> pb::JoinGroupResponse {
    g.join_group(pb::JoinGroupRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        start: Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None }),
        client_id: client_id.into(),
    })
    .await
    .expect("join")
    .into_inner()
}

async fn describe_group(g: &mut Groups) -> pb::GroupDescription {
    g.describe_group(pb::DescribeGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect("describe group")
        .into_inner()
        .group
        .expect("group")
}

fn poll_req(member_id: &str, shards: Vec<pb::ShardPosition>, max_records: u32, wait_ms: u64) -> pb::PollRequest {
    pb::PollRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        member_id: member_id.into(),
        shards,
        max_records,
        wait_ms,
    }
}

fn positions(a: &pb::Assignment) -> Vec<pb::ShardPosition> {
    a.leases
        .iter()
        .filter(|l| !l.revoking)
        .map(|l| pb::ShardPosition {
            shard_id: l.shard_id.clone(),
            lease_epoch: l.lease_epoch,
            next_sequence_number: None,
        })
        .collect()
}

fn commit_req(member_id: &str, shard: &str, seq: u64, epoch: u64) -> pb::CommitRequest {
    pb::CommitRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        member_id: member_id.into(),
        checkpoints: vec![pb::ShardCheckpoint { shard_id: shard.into(), sequence_number: seq, lease_epoch: epoch }],
    }
}

async fn heartbeat(g: &mut Groups, member_id: &str) -> Result<pb::Assignment, tonic::Status> {
    let r = g
        .heartbeat(pb::HeartbeatRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: member_id.into(),
        })
        .await?;
    Ok(r.into_inner().assignment.expect("assignment"))
}

#[tokio::test]
async fn leases_fence_positions_and_commits() {
    let (broker, _dir) = broker_with_session(10_000).await;
    let mut c = connect(broker.endpoint()).await;
    let d = create(&mut c, "s", 2).await;
    for shard in &d.shards {
        let entries = (0..10)
            .map(|i| pb::PutRecordsEntry {
                partition_key: format!("k{i}"),
                data: b"v".to_vec().into(),
                explicit_hash_key: Some(shard.starting_hash_key.clone()),
            })
            .collect();
        put(&mut c, "s", entries).await;
    }
    let mut g = groups(broker.endpoint()).await;
    let a = join(&mut g, "a").await;
    let a_lease = a.assignment.expect("assignment");
    assert_eq!(a_lease.leases.len(), 2, "the only member holds both shards");
    let polled = g.poll(poll_req(&a.member_id, positions(&a_lease), 100, 0)).await.expect("poll").into_inner();
    assert_eq!(polled.shards.iter().map(|s| s.records.len()).sum::<usize>(), 20);
    let s0 = polled.shards.iter().find(|s| s.shard_id == "shardId-000000000000").expect("shard 0");
    assert_eq!(s0.next_sequence_number, 10);
    let epoch0 = s0.lease_epoch;

    // A position past what the lease delivered would skip records.
    let skip = pb::ShardPosition { shard_id: s0.shard_id.clone(), lease_epoch: epoch0, next_sequence_number: Some(11) };
    let err = g.poll(poll_req(&a.member_id, vec![skip], 10, 0)).await.expect_err("skipping position");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("shards[0].next_sequence_number"), "{}", err.message());
    // A lease the member was never granted (a "future" epoch) reads nothing,
    // and the answer carries the real lease.
    let future =
        pb::ShardPosition { shard_id: s0.shard_id.clone(), lease_epoch: epoch0 + 1000, next_sequence_number: None };
    let r = g.poll(poll_req(&a.member_id, vec![future], 10, 0)).await.expect("poll").into_inner();
    assert!(r.shards.is_empty(), "a future lease is delivered nothing: {r:?}");
    let real = r.assignment.expect("assignment");
    assert!(real.leases.iter().any(|l| l.shard_id == s0.shard_id && l.lease_epoch == epoch0), "{real:?}");
    // A lost response is simply asked for again: the same position returns the same records.
    let again = pb::ShardPosition { shard_id: s0.shard_id.clone(), lease_epoch: epoch0, next_sequence_number: Some(4) };
    let r = g.poll(poll_req(&a.member_id, vec![again], 3, 0)).await.expect("re-poll").into_inner();
    let seqs: Vec<u64> = r.shards[0].records.iter().map(|r| r.sequence_number).collect();
    assert_eq!(seqs, vec![4, 5, 6]);

    // A commit may not cover what was not delivered, nor name a wrong lease.
    let err = g.commit(commit_req(&a.member_id, "shardId-000000000000", 10, epoch0)).await.expect_err("undelivered");
    assert!(err.message().contains("checkpoints[0].sequence_number"), "{}", err.message());
    let r = g.commit(commit_req(&a.member_id, "shardId-000000000000", 3, epoch0 + 1000)).await.expect("commit");
    assert_eq!(r.into_inner().results[0].error_kind, "Fenced", "a lease that is not the member's is fenced");
    let r = g.commit(commit_req(&a.member_id, "shardId-000000000000", 5, epoch0)).await.expect("commit");
    assert_eq!(r.into_inner().results[0].error_kind, "");
    let r = g.commit(commit_req(&a.member_id, "shardId-000000000000", 2, epoch0)).await.expect("commit");
    let back = &r.into_inner().results[0];
    assert_eq!(back.error_kind, "Fenced");
    assert!(back.error_message.contains("back"), "{}", back.error_message);

    // b joins: one shard is revoked from a, which keeps the other.
    let b = join(&mut g, "b").await;
    assert!(b.assignment.expect("assignment").leases.is_empty(), "b waits until a releases");
    let a_now = heartbeat(&mut g, &a.member_id).await.expect("heartbeat");
    let revoked: Vec<&pb::ShardLease> = a_now.leases.iter().filter(|l| l.revoking).collect();
    assert_eq!(revoked.len(), 1, "{a_now:?}");
    let (kept, gone) = {
        let k = a_now.leases.iter().find(|l| !l.revoking).expect("kept");
        (k.clone(), revoked[0].clone())
    };
    // a may still commit the revoked shard until it releases it.
    let gone_polled = polled.shards.iter().find(|s| s.shard_id == gone.shard_id).expect("polled");
    let r = g.commit(commit_req(&a.member_id, &gone.shard_id, 6, gone_polled.lease_epoch)).await.expect("commit");
    assert_eq!(r.into_inner().results[0].error_kind, "", "a revoking lease may still commit");
    // Polling only the kept shard releases the revoked one to b.
    let kept_pos = pb::ShardPosition {
        shard_id: kept.shard_id.clone(),
        lease_epoch: kept.lease_epoch,
        next_sequence_number: None,
    };
    g.poll(poll_req(&a.member_id, vec![kept_pos], 100, 0)).await.expect("poll");
    let b_now = heartbeat(&mut g, &b.member_id).await.expect("heartbeat");
    assert_eq!(b_now.leases.len(), 1);
    assert_eq!(b_now.leases[0].shard_id, gone.shard_id);
    assert!(b_now.leases[0].lease_epoch > gone.lease_epoch, "a new grant gets a new epoch");
    // a's old lease can no longer commit; b starts after the checkpoint a committed.
    let r = g.commit(commit_req(&a.member_id, &gone.shard_id, 8, gone.lease_epoch)).await.expect("commit");
    assert_eq!(r.into_inner().results[0].error_kind, "Fenced");
    let r = g.poll(poll_req(&b.member_id, positions(&b_now), 100, 0)).await.expect("poll").into_inner();
    assert_eq!(r.shards[0].records.first().map(|r| r.sequence_number), Some(7));

    let err = g
        .reset_group(pb::ResetGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            position: pb::IteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect_err("members are live");
    assert_eq!(error_kind(&err), "GroupBusy");
    for m in [&a.member_id, &b.member_id] {
        g.leave_group(pb::LeaveGroupRequest { stream_name: "s".into(), group_name: "g".into(), member_id: m.clone() })
            .await
            .expect("leave");
    }
    let reset = g
        .reset_group(pb::ResetGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            position: pb::IteratorType::Latest as i32,
            ..Default::default()
        })
        .await
        .expect("reset")
        .into_inner()
        .group
        .expect("group");
    assert!(reset.shards.iter().all(|s| s.has_checkpoint && s.lag_records == 0), "{reset:?}");
    let reset = g
        .reset_group(pb::ResetGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            position: pb::IteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("reset back")
        .into_inner()
        .group
        .expect("group");
    assert_eq!(reset.shards.iter().map(|s| s.lag_records).sum::<u64>(), 20, "reset may move checkpoints backwards");
    let listed =
        g.list_groups(pb::ListGroupsRequest { stream_name: String::new() }).await.expect("list").into_inner().groups;
    assert_eq!(listed.len(), 1);
    g.delete_group(pb::DeleteGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect("delete group");
    assert_eq!(describe_err(&mut g).await, "GroupNotFound");
}

/// A member paused past its session (a zombie) can neither read nor commit;
/// its shard went to the live member.
#[tokio::test]
async fn a_zombie_can_neither_poll_nor_commit() {
    let (broker, _dir) = broker_with_session(600).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    put(&mut c, "s", (0..5).map(|i| entry(&format!("k{i}"), b"v")).collect()).await;
    let mut g = groups(broker.endpoint()).await;
    let zombie = join(&mut g, "zombie").await;
    let z_lease = zombie.assignment.expect("assignment");
    let polled = g.poll(poll_req(&zombie.member_id, positions(&z_lease), 100, 0)).await.expect("poll").into_inner();
    assert_eq!(polled.shards[0].records.len(), 5);
    let live = join(&mut g, "live").await;
    // The zombie stops heartbeating; the live member keeps its session and
    // gets the shard once the zombie's session ends.
    let deadline = Instant::now() + Duration::from_secs(20);
    let live_lease = loop {
        let a = heartbeat(&mut g, &live.member_id).await.expect("heartbeat");
        if let Some(l) = a.leases.first() {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "the zombie's shard never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = g
        .commit(commit_req(&zombie.member_id, "shardId-000000000000", 4, polled.shards[0].lease_epoch))
        .await
        .expect_err("zombie commit");
    assert_eq!(error_kind(&err), "UnknownMember");
    let err = g.poll(poll_req(&zombie.member_id, positions(&z_lease), 100, 0)).await.expect_err("zombie poll");
    assert_eq!(error_kind(&err), "UnknownMember");
    let d = describe_group(&mut g).await;
    assert!(!d.shards[0].has_checkpoint, "the zombie moved nothing: {d:?}");
    let pos = vec![pb::ShardPosition {
        shard_id: live_lease.shard_id.clone(),
        lease_epoch: live_lease.lease_epoch,
        next_sequence_number: None,
    }];
    let r = g.poll(poll_req(&live.member_id, pos, 100, 0)).await.expect("poll").into_inner();
    assert_eq!(r.shards[0].records.len(), 5, "the live member gets every record the zombie did not commit");
}

async fn describe_err(g: &mut Groups) -> String {
    let err = g
        .describe_group(pb::DescribeGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect_err("gone");
    error_kind(&err)
}

#[tokio::test]
async fn a_long_poll_wakes_when_records_arrive() {
    let (broker, _dir) = broker_with_session(10_000).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    let mut g = groups(broker.endpoint()).await;
    let a = join(&mut g, "a").await;
    let shards = positions(&a.assignment.expect("lease"));
    let mut poller = g.clone();
    let member_id = a.member_id.clone();
    let started = Instant::now();
    let poll =
        tokio::spawn(
            async move { poller.poll(poll_req(&member_id, shards, 10, 20_000)).await.expect("poll").into_inner() },
        );
    put(&mut c, "s", vec![entry("k", b"wake up")]).await;
    let got = poll.await.expect("poll task");
    assert_eq!(got.shards[0].records.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "woke on arrival, not at the deadline");
}

/// Group polls are metered like GetRecords against the shard's shared read
/// quota (calls per second): a throttled shard delivers nothing until its
/// bucket refills on the broker's clock, and GetRecords shares the bucket.
#[tokio::test]
async fn polls_are_metered_against_the_shards_read_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(broker::clock::ManualClock::new(1_700_000_000_000));
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let quotas = pb::Quotas { read_calls_per_sec: Some(1), ..Default::default() };
    create_with(
        &mut c,
        pb::CreateStreamRequest {
            stream_name: "s".into(),
            shard_count: 1,
            quota_overrides: Some(quotas),
            ..Default::default()
        },
    )
    .await;
    put(&mut c, "s", (0..30).map(|i| entry(&format!("k{i}"), b"v")).collect()).await;
    let mut g = groups(broker.endpoint()).await;
    let a = join(&mut g, "a").await;
    let lease = a.assignment.expect("assignment").leases.remove(0);
    let at = |next: Option<u64>| {
        vec![pb::ShardPosition {
            shard_id: lease.shard_id.clone(),
            lease_epoch: lease.lease_epoch,
            next_sequence_number: next,
        }]
    };
    let first = g.poll(poll_req(&a.member_id, at(None), 10, 0)).await.expect("poll").into_inner();
    assert_eq!(first.shards[0].records.len(), 10, "the bucket holds one call");
    let second = g.poll(poll_req(&a.member_id, at(Some(10)), 10, 0)).await.expect("poll").into_inner();
    assert!(second.shards.is_empty(), "the second call in the same second is throttled: {second:?}");
    let it = iterator(&mut c, "s", &lease.shard_id, pb::IteratorType::TrimHorizon, None, None).await;
    let err = c
        .get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1 })
        .await
        .expect_err("GetRecords shares the bucket the poll emptied");
    assert_eq!(error_kind(&err), "Throttled");
    clock.advance(1_000);
    let third = g.poll(poll_req(&a.member_id, at(Some(10)), 10, 0)).await.expect("poll").into_inner();
    assert_eq!(third.shards[0].records.first().map(|r| r.sequence_number), Some(10), "after the refill it continues");
}
