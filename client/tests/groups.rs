//! Consumer groups through the client `Consumer`, as users run them, against
//! a real in-process broker: no record skipped across rebalances, fencing
//! that holds, sticky cooperative assignment, fair polls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::types as pb;
use client::{Admin, Consumer, ConsumerConfig, Record};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

async fn broker(session_timeout_ms: u64) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.groups.session_timeout_ms = session_timeout_ms;
    config.quotas.enforce = false;
    (TestBroker::start_with(config, Arc::new(SystemClock)).await, dir)
}

/// Creates `s` with `shards` shards and puts `per_shard` records on each
/// (routed by explicit hash key); returns (shard id, seq) of all of them.
async fn fill(admin: &Admin, shards: u32, per_shard: &[u32]) -> BTreeSet<(String, u64)> {
    let d = admin
        .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: shards, ..Default::default() })
        .await
        .expect("create stream");
    let mut all = BTreeSet::new();
    let mut streams = admin.streams();
    for (s, shard) in d.shards.iter().enumerate() {
        let mut left = per_shard[s];
        while left > 0 {
            let n = left.min(500);
            left -= n;
            let records = (0..n)
                .map(|i| pb::PutRecordsEntry {
                    partition_key: format!("k{s}-{i}"),
                    data: format!("{s}:{i}").into_bytes().into(),
                    explicit_hash_key: Some(shard.starting_hash_key.clone()),
                })
                .collect();
            let r = streams
                .put_records(pb::PutRecordsRequest { stream_name: "s".into(), records })
                .await
                .expect("put")
                .into_inner();
            assert_eq!(r.failed_record_count, 0);
            all.extend(r.records.into_iter().map(|e| (e.shard_id, e.sequence_number)));
        }
    }
    all
}

fn config(name: &str) -> ConsumerConfig {
    ConsumerConfig {
        batch_size: 1000,
        poll_wait: Duration::from_millis(200),
        client_id: name.into(),
        ..ConsumerConfig::new("g")
    }
}

/// Every handling: (member, shard, seq).
type Handled = Arc<Mutex<Vec<(String, String, u64)>>>;

fn handled_set(h: &Handled) -> BTreeSet<(String, u64)> {
    h.lock().expect("lock").iter().map(|(_, s, q)| (s.clone(), *q)).collect()
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn owners(admin: &Admin) -> BTreeMap<String, String> {
    let d = admin.describe_group("s", "g").await.expect("describe group");
    d.shards.into_iter().map(|s| (s.shard_id, s.owner_member_id)).collect()
}

/// Runs a member whose handler records every record; returns its task.
fn run_member(
    consumer: Consumer,
    name: &str,
    handled: Handled,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<client::Result<()>> {
    let name = name.to_string();
    tokio::spawn(consumer.run(
        move |records: Vec<Record>| {
            let (handled, name) = (handled.clone(), name.clone());
            async move {
                let mut h = handled.lock().expect("lock");
                h.extend(records.into_iter().map(|r| (name.clone(), r.shard_id, r.sequence_number)));
                Ok(())
            }
        },
        |_, _| async { Ok(()) },
        stop,
    ))
}

/// Defect 1: a commit that fails (here: refused after a rebalance) must not
/// drop the batches of the member's other shards from the same poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_during_handling_skips_no_record() {
    let (broker, _dir) = broker(10_000).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    let all = fill(&admin, 4, &[50, 50, 50, 50]).await;
    let handled: Handled = Arc::default();
    let (b_joined, first_batch) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = Consumer::join(&broker.endpoint(), "s", config("a")).await.expect("a joins");
    let stop = CancellationToken::new();
    let a_task = tokio::spawn({
        let (handled, b_joined, first_batch) = (handled.clone(), b_joined.clone(), first_batch.clone());
        let mut first = true;
        a.run(
            move |records: Vec<Record>| {
                let (handled, b_joined, first_batch) = (handled.clone(), b_joined.clone(), first_batch.clone());
                let wait = std::mem::take(&mut first);
                async move {
                    if wait {
                        // Hold the first batch until another member has joined.
                        first_batch.notify_one();
                        b_joined.notified().await;
                    }
                    let mut h = handled.lock().expect("lock");
                    h.extend(records.into_iter().map(|r| ("a".to_string(), r.shard_id, r.sequence_number)));
                    Ok(())
                }
            },
            |_, _| async { Ok(()) },
            stop.clone(),
        )
    });
    first_batch.notified().await;
    let b = Consumer::join(&broker.endpoint(), "s", config("b")).await.expect("b joins");
    b_joined.notify_one();
    let b_task = run_member(b, "b", handled.clone(), stop.clone());
    until("every record is handled", Duration::from_secs(30), async || handled_set(&handled).is_superset(&all)).await;
    stop.cancel();
    a_task.await.expect("a").expect("a ran without error");
    b_task.await.expect("b").expect("b ran without error");
}

/// Defect 3: a member that lost a shard while handling it cannot commit it,
/// and the consumer carries on (no "invalid argument" after an ordinary
/// rebalance).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_lost_a_shard_cannot_commit_it_and_carries_on() {
    let (broker, _dir) = broker(1_500).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    let all = fill(&admin, 2, &[20, 20]).await;
    let handled: Handled = Arc::default();
    let (release, held) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = Consumer::join(&broker.endpoint(), "s", config("a")).await.expect("a joins");
    let stop = CancellationToken::new();
    let a_task = tokio::spawn({
        let (handled, release, held) = (handled.clone(), release.clone(), held.clone());
        let mut first = true;
        a.run(
            move |records: Vec<Record>| {
                let (handled, release, held) = (handled.clone(), release.clone(), held.clone());
                let wait = std::mem::take(&mut first);
                async move {
                    if wait {
                        held.notify_one();
                        release.notified().await;
                    }
                    let mut h = handled.lock().expect("lock");
                    h.extend(records.into_iter().map(|r| ("a".to_string(), r.shard_id, r.sequence_number)));
                    Ok(())
                }
            },
            |_, _| async { Ok(()) },
            stop.clone(),
        )
    });
    held.notified().await;
    // b joins and gets a share while a is busy; a's heartbeats go on meanwhile.
    let a_id = admin.describe_group("s", "g").await.expect("describe").members[0].member_id.clone();
    let b = Consumer::join(&broker.endpoint(), "s", config("b")).await.expect("b joins");
    let b_id = b.member_id();
    let b_task = run_member(b, "b", handled.clone(), stop.clone());
    until("b owns a shard", Duration::from_secs(20), async || owners(&admin).await.values().any(|o| *o == b_id)).await;
    // a's background heartbeat runs after the rebalance (it must not undo fencing).
    let since = Instant::now();
    until("a heartbeats after the rebalance", Duration::from_secs(20), async || {
        let d = admin.describe_group("s", "g").await.expect("describe");
        d.members
            .iter()
            .any(|m| m.member_id == a_id && u128::from(m.last_heartbeat_age_ms) < since.elapsed().as_millis())
    })
    .await;
    release.notify_one();
    until("every record is handled", Duration::from_secs(30), async || handled_set(&handled).is_superset(&all)).await;
    until("the group caught up", Duration::from_secs(30), async || {
        let d = admin.describe_group("s", "g").await.expect("describe");
        d.shards.iter().all(|s| s.lag_records == 0)
    })
    .await;
    assert!(!a_task.is_finished(), "a keeps running after losing a shard: {:?}", a_task.await);
    stop.cancel();
    a_task.await.expect("a").expect("a ran without error");
    b_task.await.expect("b").expect("b ran without error");
}

/// Defect 4: assignment is sticky (an early leaver moves only its own
/// shards) and cooperative (a moving shard is never handled by two members
/// at once).
#[tokio::test(flavor = "multi_thread")]
async fn an_early_leaver_moves_only_its_own_shards() {
    let (broker, _dir) = broker(10_000).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    fill(&admin, 6, &[0; 6]).await;
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        members.push(Consumer::join(&broker.endpoint(), "s", config(name)).await.expect("join"));
    }
    let ids: Vec<String> = members.iter().map(Consumer::member_id).collect();
    // Idle members release revoked shards when they poll.
    let mut polls = Vec::new();
    let stop = CancellationToken::new();
    for (m, name) in members.into_iter().zip(["a", "b", "c"]) {
        polls.push(run_member(m, name, Handled::default(), stop.clone()));
    }
    let settled = |want: usize| {
        let admin = admin.clone();
        async move {
            let o = owners(&admin).await;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for owner in o.values() {
                *counts.entry(owner.clone()).or_default() += 1;
            }
            (counts.len() == want && counts.values().all(|&n| n == 6 / want) && !counts.contains_key("")).then_some(o)
        }
    };
    until("three members own two shards each", Duration::from_secs(20), async || settled(3).await.is_some()).await;
    let before = settled(3).await.expect("settled");
    // The first joiner leaves.
    polls.remove(0).abort();
    let leaver = &ids[0];
    admin
        .groups()
        .leave_group(pb::LeaveGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: leaver.clone(),
        })
        .await
        .expect("leave");
    until("two members own three shards each", Duration::from_secs(20), async || settled(2).await.is_some()).await;
    let after = settled(2).await.expect("settled");
    let moved: Vec<&String> = before.keys().filter(|s| before[*s] != after[*s]).collect();
    let leavers: Vec<&String> = before.keys().filter(|s| before[*s] == *leaver).collect();
    assert_eq!(moved, leavers, "only the leaver's shards moved: before {before:?}, after {after:?}");
    stop.cancel();
    for p in polls {
        p.await.expect("member").expect("member ran without error");
    }
}

/// Defect 4, cooperative part: while shards move to a joining member, no
/// shard is ever inside two members' handlers at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_moving_shard_is_never_handled_by_two_members_at_once() {
    let (broker, _dir) = broker(10_000).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    let all = fill(&admin, 4, &[300, 300, 300, 300]).await;
    let active: Arc<Mutex<HashMap<String, BTreeSet<String>>>> = Arc::default();
    let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let handled: Handled = Arc::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let consumer = Consumer::join(&broker.endpoint(), "s", ConsumerConfig { batch_size: 40, ..config(name) })
            .await
            .expect("join");
        let (active, overlaps, handled, name) = (active.clone(), overlaps.clone(), handled.clone(), name.to_string());
        tasks.push(tokio::spawn(consumer.run(
            move |records: Vec<Record>| {
                let (active, overlaps, handled, name) =
                    (active.clone(), overlaps.clone(), handled.clone(), name.clone());
                async move {
                    let shard = records[0].shard_id.clone();
                    {
                        let mut a = active.lock().expect("lock");
                        let inside = a.entry(shard.clone()).or_default();
                        if !inside.is_empty() {
                            overlaps.lock().expect("lock").push(format!("{shard}: {name} with {inside:?}"));
                        }
                        inside.insert(name.clone());
                    }
                    // Slow handling, so joins happen while batches are in flight.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    handled
                        .lock()
                        .expect("lock")
                        .extend(records.iter().map(|r| (name.clone(), r.shard_id.clone(), r.sequence_number)));
                    active.lock().expect("lock").entry(shard).or_default().remove(&name);
                    Ok(())
                }
            },
            |_, _| async { Ok(()) },
            stop.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    until("every record is handled", Duration::from_secs(60), async || handled_set(&handled).is_superset(&all)).await;
    stop.cancel();
    for t in tasks {
        t.await.expect("member").expect("member ran without error");
    }
    let overlaps = overlaps.lock().expect("lock");
    assert!(overlaps.is_empty(), "shards handled by two members at once: {overlaps:?}");
}

/// Defect 5: one poll shares its records among the member's shards; a
/// backlogged shard does not starve the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlogged_shard_does_not_starve_the_others() {
    let (broker, _dir) = broker(10_000).await;
    let admin = Admin::connect(&broker.endpoint()).await.expect("admin");
    fill(&admin, 4, &[5_000, 10, 10, 10]).await;
    let mut consumer =
        Consumer::join(&broker.endpoint(), "s", ConsumerConfig { batch_size: 100, ..config("a") }).await.expect("join");
    let mut records = Vec::new();
    for _ in 0..10 {
        records = consumer.poll().await.expect("poll");
        if !records.is_empty() {
            break;
        }
    }
    let shards: BTreeSet<&str> = records.iter().map(|r| r.shard_id.as_str()).collect();
    assert_eq!(shards.len(), 4, "the first poll serves every shard with records, got {shards:?}");
    assert!(records.len() <= 100);
    consumer.leave().await.expect("leave");
}
