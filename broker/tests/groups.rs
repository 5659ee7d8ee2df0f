//! Consumer groups through real gRPC: leases, rebalancing on join, leave and
//! session expiry, fencing by generation, durable checkpoints, at-least-once.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
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

/// What all members processed: (shard, seq) -> times processed.
type Processed = Arc<Mutex<HashMap<(String, u64), u32>>>;

/// A member loop: heartbeat, poll, process, commit; ends when its session is gone.
async fn member(endpoint: String, name: String, processed: Processed, stop: tokio_util::sync::CancellationToken) {
    let mut g = groups(endpoint).await;
    let joined = join(&mut g, &name).await;
    let member_id = joined.member_id;
    let mut generation = joined.assignment.expect("assignment").generation;
    let mut last_beat = Instant::now();
    while !stop.is_cancelled() {
        if last_beat.elapsed() > Duration::from_millis(200) {
            match g
                .heartbeat(pb::HeartbeatRequest {
                    stream_name: "s".into(),
                    group_name: "g".into(),
                    member_id: member_id.clone(),
                })
                .await
            {
                Ok(r) => generation = r.into_inner().assignment.expect("assignment").generation,
                Err(_) => return,
            }
            last_beat = Instant::now();
        }
        let poll = g
            .poll(pb::PollRequest {
                stream_name: "s".into(),
                group_name: "g".into(),
                member_id: member_id.clone(),
                generation,
                max_records: 50,
                wait_ms: 100,
            })
            .await;
        let records = match poll {
            Ok(r) => r.into_inner().records,
            Err(s) if error_kind(&s) == "StaleGeneration" => {
                last_beat = Instant::now() - Duration::from_secs(1);
                continue;
            }
            Err(_) => return,
        };
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        {
            let mut p = processed.lock().expect("lock");
            for r in &records {
                let seq = r.record.as_ref().expect("record").sequence_number;
                *p.entry((r.shard_id.clone(), seq)).or_default() += 1;
                last.insert(r.shard_id.clone(), seq);
            }
        }
        if !last.is_empty() {
            let checkpoints = last
                .into_iter()
                .map(|(shard_id, sequence_number)| pb::ShardCheckpoint { shard_id, sequence_number })
                .collect();
            let commit = g
                .commit(pb::CommitRequest {
                    stream_name: "s".into(),
                    group_name: "g".into(),
                    member_id: member_id.clone(),
                    generation,
                    checkpoints,
                })
                .await;
            if let Err(s) = commit {
                assert!(["StaleGeneration", "UnknownMember"].contains(&error_kind(&s).as_str()), "commit failed: {s}");
            }
        }
    }
    let _ = g.leave_group(pb::LeaveGroupRequest { stream_name: "s".into(), group_name: "g".into(), member_id }).await;
}

/// Waits (bounded) until the group has `members` members owning all shards evenly.
async fn settled(g: &mut Groups, members: usize, within: Duration) -> pb::GroupDescription {
    let deadline = Instant::now() + within;
    loop {
        let d = match g
            .describe_group(pb::DescribeGroupRequest { stream_name: "s".into(), group_name: "g".into() })
            .await
        {
            Ok(r) => r.into_inner().group.expect("group"),
            // The members are still starting: the first join creates the group.
            Err(s) if error_kind(&s) == "GroupNotFound" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(s) => panic!("describe group: {s}"),
        };
        let live: HashSet<&str> = d.members.iter().map(|m| m.member_id.as_str()).collect();
        let owned = d.shards.iter().all(|s| live.contains(s.owner_member_id.as_str()));
        let counts: Vec<usize> = d.members.iter().map(|m| m.shard_ids.len()).collect();
        let even = counts.iter().max().zip(counts.iter().min()).is_some_and(|(a, b)| a - b <= 1);
        if d.members.len() == members && owned && even {
            return d;
        }
        assert!(Instant::now() < deadline, "group did not settle to {members} members: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn members_share_shards_and_a_killed_members_shards_move_on() {
    let (broker, _dir) = broker_with_session(1_000).await;
    let ep = broker.endpoint();
    let mut c = connect(ep.clone()).await;
    create(&mut c, "s", 4).await;
    let mut g = groups(ep.clone()).await;
    let processed: Processed = Arc::default();
    let mut produced = 0u64;
    let produce = |c: &mut Client, round: u64| {
        let mut c = c.clone();
        async move {
            let entries = (0..100).map(|i| entry(&format!("key-{round}-{i}"), b"payload")).collect();
            put(&mut c, "s", entries).await.failed_record_count
        }
    };

    let mut tasks = Vec::new();
    let mut kills = Vec::new();
    for i in 0..3 {
        let token = tokio_util::sync::CancellationToken::new();
        tasks.push(tokio::spawn(member(ep.clone(), format!("m{i}"), processed.clone(), token.clone())));
        kills.push(token);
    }
    let d = settled(&mut g, 3, Duration::from_secs(10)).await;
    let mut owners: Vec<&str> = d.shards.iter().map(|s| s.owner_member_id.as_str()).collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 3, "three members share four shards: {d:?}");
    for round in 0..5 {
        assert_eq!(produce(&mut c, round).await, 0);
        produced += 100;
    }
    // A fourth and a fifth member join, then leave cleanly.
    let extra: Vec<_> = (3..5)
        .map(|i| {
            let token = tokio_util::sync::CancellationToken::new();
            (tokio::spawn(member(ep.clone(), format!("m{i}"), processed.clone(), token.clone())), token)
        })
        .collect();
    settled(&mut g, 5, Duration::from_secs(10)).await;
    for round in 5..10 {
        assert_eq!(produce(&mut c, round).await, 0);
        produced += 100;
    }
    for (task, token) in extra {
        token.cancel();
        task.await.expect("member");
    }
    settled(&mut g, 3, Duration::from_secs(10)).await;
    // Kill member 0: it stops without leaving; its session must expire.
    tasks.remove(0).abort();
    let killed_at = Instant::now();
    let d = settled(&mut g, 2, Duration::from_millis(1_000 + 2_000)).await;
    assert!(killed_at.elapsed() <= Duration::from_millis(3_000), "rebalance took {:?}", killed_at.elapsed());
    assert!(d.shards.iter().all(|s| !s.owner_member_id.is_empty()));
    for round in 10..15 {
        assert_eq!(produce(&mut c, round).await, 0);
        produced += 100;
    }
    // Everything produced is processed (bounded wait), then the members stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = describe_group(&mut g).await;
        if d.shards.iter().map(|s| s.lag_records).sum::<u64>() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "group did not catch up: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in kills {
        k.cancel();
    }
    for t in tasks {
        t.await.expect("member");
    }
    let d = describe_group(&mut g).await;
    let p = processed.lock().expect("lock");
    let mut total = 0;
    for shard in &d.shards {
        let end = shard.checkpoint;
        assert!(shard.has_checkpoint);
        for seq in 0..end {
            assert!(p.contains_key(&(shard.shard_id.clone(), seq)), "{} seq {seq} was skipped", shard.shard_id);
        }
        total += end;
    }
    assert_eq!(total, produced, "every produced record was processed and committed");
    let duplicates = p.values().filter(|&&n| n > 1).count();
    // Only records a member had received but not committed when its shard
    // moved come again: at most one poll (50 records) per rebalance, and
    // there were 8 (three joins, two more joins, two leaves, one expiry).
    assert!(duplicates <= 8 * 50, "{duplicates} duplicates");
}

#[tokio::test]
async fn a_stale_member_cannot_commit_or_poll() {
    let (broker, _dir) = broker_with_session(10_000).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "s", 2).await;
    put(&mut c, "s", (0..10).map(|i| entry(&format!("k{i}"), b"v")).collect()).await;
    let mut g = groups(broker.endpoint()).await;
    let a = join(&mut g, "a").await;
    let a_gen = a.assignment.expect("lease").generation;
    let polled = g
        .poll(pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: a.member_id.clone(),
            generation: a_gen,
            max_records: 100,
            wait_ms: 0,
        })
        .await
        .expect("poll")
        .into_inner();
    assert_eq!(polled.records.len(), 10, "a owns both shards");
    let last = polled
        .records
        .iter()
        .filter(|r| r.shard_id == "shardId-000000000000")
        .map(|r| r.record.as_ref().expect("r").sequence_number)
        .max()
        .expect("records on shard 0");
    // b joins: a new generation; a has not heard of it.
    let b = join(&mut g, "b").await;
    let b_gen = b.assignment.expect("lease").generation;
    assert!(b_gen > a_gen);
    let commit = |member: &str, generation: u64, shard: &str, seq: u64| pb::CommitRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        member_id: member.into(),
        generation,
        checkpoints: vec![pb::ShardCheckpoint { shard_id: shard.into(), sequence_number: seq }],
    };
    let err = g.commit(commit(&a.member_id, a_gen, "shardId-000000000000", last)).await.expect_err("stale commit");
    assert_eq!((err.code(), error_kind(&err)), (Code::FailedPrecondition, "StaleGeneration".to_string()));
    let err = g
        .poll(pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: a.member_id.clone(),
            generation: a_gen,
            max_records: 1,
            wait_ms: 0,
        })
        .await
        .expect_err("stale poll");
    assert_eq!(error_kind(&err), "StaleGeneration");
    let d = describe_group(&mut g).await;
    assert!(d.shards.iter().all(|s| !s.has_checkpoint), "the stale commit moved nothing: {d:?}");
    // With the new generation, a may commit only its own shard, within the log, forward.
    let lease = g
        .heartbeat(pb::HeartbeatRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: a.member_id.clone(),
        })
        .await
        .expect("hb")
        .into_inner()
        .assignment
        .expect("lease");
    assert_eq!(lease.generation, b_gen);
    let mine = lease.shard_ids[0].clone();
    let theirs = if mine == "shardId-000000000000" { "shardId-000000000001" } else { "shardId-000000000000" };
    let err = g.commit(commit(&a.member_id, b_gen, theirs, 0)).await.expect_err("not leased");
    assert!(err.message().contains("checkpoints[0].shard_id"), "{}", err.message());
    let err = g.commit(commit(&a.member_id, b_gen, &mine, 1_000)).await.expect_err("past the end");
    assert!(err.message().contains("past the end"), "{}", err.message());
    g.commit(commit(&a.member_id, b_gen, &mine, 1)).await.expect("commit");
    let err = g.commit(commit(&a.member_id, b_gen, &mine, 0)).await.expect_err("backwards");
    assert!(err.message().contains("back"), "{}", err.message());
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
    assert_eq!(reset.shards.iter().map(|s| s.lag_records).sum::<u64>(), 10, "reset may move checkpoints backwards");
    let listed =
        g.list_groups(pb::ListGroupsRequest { stream_name: String::new() }).await.expect("list").into_inner().groups;
    assert_eq!(listed.len(), 1);
    g.delete_group(pb::DeleteGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect("delete group");
    assert_eq!(describe_err(&mut g).await, "GroupNotFound");
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
    let generation = a.assignment.expect("lease").generation;
    let mut poller = g.clone();
    let member_id = a.member_id.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        poller
            .poll(pb::PollRequest {
                stream_name: "s".into(),
                group_name: "g".into(),
                member_id,
                generation,
                max_records: 10,
                wait_ms: 20_000,
            })
            .await
            .expect("poll")
            .into_inner()
    });
    put(&mut c, "s", vec![entry("k", b"wake up")]).await;
    let got = poll.await.expect("poll task");
    assert_eq!(got.records.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "woke on arrival, not at the deadline");
}
