//! Consumer groups across a reshard, through the raw group protocol: a
//! child is leased to no one until its parent (both parents, for a merge)
//! was read to its end and checkpointed there; lag counts a closed parent
//! the group has not finished; a group whose position is already at a
//! closed shard's end moves on to the children by itself. (The same
//! through `client::Consumer` members under load is `reshard_chaos.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;
use tonic::transport::Channel;

type Groups = ConsumerGroupsClient<Channel>;

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const S2: &str = "shardId-000000000002";
const S3: &str = "shardId-000000000003";
const HALF: u128 = 1 << 127;

async fn broker() -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = false;
    config.groups.session_timeout_ms = 60_000;
    (TestBroker::start_with(config, Arc::new(SystemClock)).await, dir)
}

async fn groups(endpoint: String) -> Groups {
    ConsumerGroupsClient::new(Channel::from_shared(endpoint).expect("uri").connect().await.expect("connect"))
}

async fn join(g: &mut Groups, start: pb::IteratorType) -> pb::JoinGroupResponse {
    g.join_group(pb::JoinGroupRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        start: Some(pb::GroupStart { position: start as i32, timestamp_ms: None }),
        client_id: "test".into(),
    })
    .await
    .expect("join")
    .into_inner()
}

fn leased(a: &pb::Assignment) -> Vec<String> {
    a.leases.iter().filter(|l| !l.revoking).map(|l| l.shard_id.clone()).collect()
}

/// Polls the member's leases (positions as given) without waiting.
async fn poll(g: &mut Groups, member: &str, a: &pb::Assignment, next: &[(String, u64)]) -> pb::PollResponse {
    let shards = a
        .leases
        .iter()
        .filter(|l| !l.revoking)
        .map(|l| pb::ShardPosition {
            shard_id: l.shard_id.clone(),
            lease_epoch: l.lease_epoch,
            next_sequence_number: next.iter().find(|(s, _)| *s == l.shard_id).map(|(_, n)| *n),
        })
        .collect();
    g.poll(pb::PollRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        member_id: member.into(),
        shards,
        max_records: 1000,
        wait_ms: 0,
    })
    .await
    .expect("poll")
    .into_inner()
}

async fn commit(g: &mut Groups, member: &str, a: &pb::Assignment, shard: &str, seq: u64) {
    let epoch = a.leases.iter().find(|l| l.shard_id == shard).expect("leased").lease_epoch;
    let r = g
        .commit(pb::CommitRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: member.into(),
            checkpoints: vec![pb::ShardCheckpoint { shard_id: shard.into(), sequence_number: seq, lease_epoch: epoch }],
        })
        .await
        .expect("commit")
        .into_inner();
    assert!(r.results[0].error_kind.is_empty(), "commit of {shard} {seq}: {:?}", r.results[0]);
}

async fn heartbeat(g: &mut Groups, member: &str) -> pb::Assignment {
    g.heartbeat(pb::HeartbeatRequest { stream_name: "s".into(), group_name: "g".into(), member_id: member.into() })
        .await
        .expect("heartbeat")
        .into_inner()
        .assignment
        .expect("assignment")
}

async fn describe_group(g: &mut Groups) -> pb::GroupDescription {
    g.describe_group(pb::DescribeGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect("describe group")
        .into_inner()
        .group
        .expect("group")
}

fn group_shard<'a>(d: &'a pb::GroupDescription, id: &str) -> &'a pb::GroupShard {
    d.shards.iter().find(|s| s.shard_id == id).unwrap_or_else(|| panic!("{id} not in {d:?}"))
}

#[tokio::test]
async fn a_child_is_leased_only_after_its_parent_is_checkpointed_at_its_end() {
    let (broker, _dir) = broker().await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    put(&mut c, "s", (0..6u8).map(|i| entry_at(u128::from(i) << 124, &[i])).collect()).await;
    let mut g = groups(broker.endpoint()).await;
    let joined = join(&mut g, pb::IteratorType::TrimHorizon).await;
    let member = joined.member_id.clone();
    let a = joined.assignment.expect("assignment");
    assert_eq!(leased(&a), [S0]);
    // Half of the parent is read, then the stream splits.
    let first = poll(&mut g, &member, &a, &[]).await;
    assert_eq!(first.shards[0].records.len(), 6);
    let split = c
        .split_shard(pb::SplitShardRequest {
            stream_name: "s".into(),
            shard_id: S0.into(),
            new_starting_hash_key: HALF.to_string(),
        })
        .await;
    split.expect("split");
    put(&mut c, "s", vec![entry_at(0, b"child-low"), entry_at(HALF, b"child-high")]).await;
    commit(&mut g, &member, &a, S0, 2).await;

    let a = heartbeat(&mut g, &member).await;
    assert_eq!(leased(&a), [S0], "the children wait while the parent is unfinished");
    let d = describe_group(&mut g).await;
    let parent = group_shard(&d, S0);
    assert!(parent.closed && !parent.finished, "{parent:?}");
    assert_eq!(parent.lag_records, 3, "lag counts the closed parent's unprocessed records");
    for child in [S1, S2] {
        let s = group_shard(&d, child);
        assert_eq!(s.waiting_for_shard_ids, [S0], "{child}");
        assert!(s.owner_member_id.is_empty() && s.lag_records == 1, "{s:?}");
    }
    // Even a poll that names a child (with a made-up lease) reads nothing from it.
    let forged = pb::Assignment {
        generation: a.generation,
        leases: vec![pb::ShardLease { shard_id: S1.into(), lease_epoch: 1, revoking: false }],
    };
    assert!(poll(&mut g, &member, &forged, &[]).await.shards.is_empty());

    // The rest of the parent, committed at its end: it is finished, and the children are leased.
    let more = poll(&mut g, &member, &a, &[(S0.into(), 3)]).await;
    assert_eq!(more.shards[0].records.len(), 3);
    commit(&mut g, &member, &a, S0, 5).await;
    let a = heartbeat(&mut g, &member).await;
    assert_eq!(leased(&a), [S1, S2]);
    let d = describe_group(&mut g).await;
    assert!(group_shard(&d, S0).finished && group_shard(&d, S0).lag_records == 0);
    let children = poll(&mut g, &member, &a, &[]).await;
    let mut got: Vec<(String, Vec<u8>)> =
        children.shards.iter().map(|s| (s.shard_id.clone(), s.records[0].data.to_vec())).collect();
    got.sort();
    assert_eq!(got, [(S1.to_string(), b"child-low".to_vec()), (S2.to_string(), b"child-high".to_vec())]);
    drop(c);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn a_merge_child_waits_for_both_parents() {
    let (broker, _dir) = broker().await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 2).await;
    put(&mut c, "s", vec![entry_at(0, b"left"), entry_at(HALF, b"right")]).await;
    c.merge_shards(pb::MergeShardsRequest {
        stream_name: "s".into(),
        shard_id: S0.into(),
        adjacent_shard_id: S1.into(),
    })
    .await
    .expect("merge");
    let mut g = groups(broker.endpoint()).await;
    let joined = join(&mut g, pb::IteratorType::TrimHorizon).await;
    let member = joined.member_id.clone();
    let a = joined.assignment.expect("assignment");
    assert_eq!(leased(&a), [S0, S1]);
    poll(&mut g, &member, &a, &[]).await;
    commit(&mut g, &member, &a, S0, 0).await;
    let a = heartbeat(&mut g, &member).await;
    assert_eq!(leased(&a), [S1], "one parent finished is not enough");
    assert_eq!(group_shard(&describe_group(&mut g).await, S2).waiting_for_shard_ids, [S1]);
    commit(&mut g, &member, &a, S1, 0).await;
    assert_eq!(leased(&heartbeat(&mut g, &member).await), [S2]);
    drop(c);
    broker.stop().await.expect("stop");
}

/// A LATEST group's position in a closed parent is its end: it finishes the
/// parent when it first polls it, without a commit, and reads the children
/// from their first record (they were created after the group).
#[tokio::test]
async fn a_group_at_a_closed_shards_end_moves_on_to_the_children_by_itself() {
    let (broker, _dir) = broker().await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 1).await;
    put(&mut c, "s", vec![entry_at(0, b"old")]).await;
    let mut g = groups(broker.endpoint()).await;
    let joined = join(&mut g, pb::IteratorType::Latest).await;
    let member = joined.member_id.clone();
    let a = joined.assignment.expect("assignment");
    c.split_shard(pb::SplitShardRequest {
        stream_name: "s".into(),
        shard_id: S0.into(),
        new_starting_hash_key: HALF.to_string(),
    })
    .await
    .expect("split");
    put(&mut c, "s", vec![entry_at(1, b"new")]).await;
    let polled = poll(&mut g, &member, &a, &[]).await;
    assert!(polled.shards.is_empty(), "nothing after LATEST in the parent");
    let a = polled.assignment.expect("assignment");
    assert_eq!(leased(&a), [S1, S2], "the parent finished at its end by itself");
    let children = poll(&mut g, &member, &a, &[]).await;
    assert_eq!(children.shards.len(), 1);
    assert_eq!((children.shards[0].shard_id.as_str(), &children.shards[0].records[0].data[..]), (S1, &b"new"[..]));
    // A later merge of the (empty) S2 with S1: S2 is finished by its first poll, S1 by a commit.
    c.merge_shards(pb::MergeShardsRequest {
        stream_name: "s".into(),
        shard_id: S1.into(),
        adjacent_shard_id: S2.into(),
    })
    .await
    .expect("merge");
    commit(&mut g, &member, &a, S1, 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = heartbeat(&mut g, &member).await;
        if leased(&a) == [S3] {
            break;
        }
        poll(&mut g, &member, &a, &[]).await;
        assert!(std::time::Instant::now() < deadline, "the merge child was never leased: {a:?}");
    }
    drop(c);
    broker.stop().await.expect("stop");
}
