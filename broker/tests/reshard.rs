//! Resharding through the gRPC API against an in-process broker: splits and
//! merges close their parents and open children that take their ranges,
//! the open shards cover the hash space exactly once, a closed shard takes
//! no writes and ends reads with its children, puts racing a split land
//! exactly once, UpdateShardCount scales uniformly within AWS's bounds and
//! rate, the tree survives a restart, and retention removes a closed parent
//! while its children stay.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::{ManualClock, SystemClock};
use broker::config::{BrokerConfig, RetentionConfig};
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use tokio_stream::StreamExt;

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const S2: &str = "shardId-000000000002";
const S3: &str = "shardId-000000000003";
const S4: &str = "shardId-000000000004";
const HALF: u128 = 1 << 127;

fn lifted() -> pb::Quotas {
    pb::Quotas {
        write_records_per_sec: Some(1_000_000),
        write_bytes_per_sec: Some(1 << 30),
        read_calls_per_sec: Some(100_000),
        read_bytes_per_sec: Some(1 << 30),
    }
}

async fn stream(c: &mut Client, name: &str, shards: u32) -> pb::StreamDescription {
    let req = pb::CreateStreamRequest {
        stream_name: name.into(),
        shard_count: shards,
        quota_overrides: Some(lifted()),
        ..Default::default()
    };
    create_with(c, req).await
}

async fn describe(c: &mut Client, name: &str) -> pb::StreamDescription {
    c.describe_stream(pb::DescribeStreamRequest { stream_name: name.into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("description")
}

async fn split(c: &mut Client, name: &str, shard: &str, at: u128) -> Result<pb::StreamDescription, tonic::Status> {
    let req = pb::SplitShardRequest {
        stream_name: name.into(),
        shard_id: shard.into(),
        new_starting_hash_key: at.to_string(),
    };
    c.split_shard(req).await.map(|r| r.into_inner().stream.expect("description"))
}

async fn merge(c: &mut Client, name: &str, a: &str, b: &str) -> Result<pb::StreamDescription, tonic::Status> {
    let req = pb::MergeShardsRequest { stream_name: name.into(), shard_id: a.into(), adjacent_shard_id: b.into() };
    c.merge_shards(req).await.map(|r| r.into_inner().stream.expect("description"))
}

fn key(s: &str) -> u128 {
    s.parse().expect("hash key")
}

fn shard<'a>(d: &'a pb::StreamDescription, id: &str) -> &'a pb::ShardDescription {
    d.shards.iter().find(|s| s.shard_id == id).unwrap_or_else(|| panic!("{id} is not listed: {d:?}"))
}

/// The open shards' ranges cover [0, 2^128) exactly once; returns them in hash order.
fn open_ranges(d: &pb::StreamDescription) -> Vec<(u128, u128, String)> {
    let mut open: Vec<(u128, u128, String)> = d
        .shards
        .iter()
        .filter(|s| !s.closed)
        .map(|s| (key(&s.starting_hash_key), key(&s.ending_hash_key), s.shard_id.clone()))
        .collect();
    open.sort();
    assert_eq!(open.first().map(|r| r.0), Some(0), "the open shards start at 0: {open:?}");
    assert_eq!(open.last().map(|r| r.1), Some(u128::MAX), "the open shards end at 2^128 - 1: {open:?}");
    for w in open.windows(2) {
        assert_eq!(w[0].1.checked_add(1), Some(w[1].0), "gap or overlap between {} and {}", w[0].2, w[1].2);
    }
    assert_eq!(d.open_shard_count as usize, open.len());
    open
}

/// Every record of a shard from its trim horizon, and the child shards named at its end (if it is closed).
async fn read_shard(c: &mut Client, name: &str, shard: &str) -> (Vec<pb::Record>, Option<Vec<pb::ChildShard>>) {
    let mut it = iterator(c, name, shard, pb::IteratorType::TrimHorizon, None, None).await;
    let mut out = Vec::new();
    loop {
        let r = c
            .get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1000 })
            .await
            .expect("get records")
            .into_inner();
        let n = r.records.len();
        out.extend(r.records);
        if r.next_shard_iterator.is_empty() {
            return (out, Some(r.child_shards));
        }
        assert!(r.child_shards.is_empty(), "children only at the end");
        if n == 0 {
            return (out, None);
        }
        it = r.next_shard_iterator;
    }
}

fn status_kind(s: &tonic::Status) -> (tonic::Code, String) {
    (s.code(), error_kind(s))
}

#[tokio::test]
async fn a_split_closes_the_parent_and_its_children_take_its_range() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 2).await;
    let before = put(&mut c, "s", (0..4u8).map(|i| entry_at(HALF / 4 * u128::from(i), &[i])).collect()).await;
    assert_eq!(before.failed_record_count, 0);

    let quarter = HALF / 2;
    let d = split(&mut c, "s", S0, quarter).await.expect("split");
    assert_eq!(d.status, pb::StreamStatus::Active as i32, "ACTIVE once the split returns");
    assert_eq!(d.shards.iter().map(|s| s.shard_id.as_str()).collect::<Vec<_>>(), [S0, S1, S2, S3]);
    let parent = shard(&d, S0);
    assert!(parent.closed && !parent.writable, "{parent:?}");
    assert_eq!(parent.ending_sequence_number, Some(4), "the parent closes after its 4 records");
    for (child, range) in [(S2, (0, quarter - 1)), (S3, (quarter, HALF - 1))] {
        let s = shard(&d, child);
        assert_eq!((key(&s.starting_hash_key), key(&s.ending_hash_key)), range, "{child}");
        assert_eq!(s.parent_shard_id, S0);
        assert!(s.adjacent_parent_shard_id.is_empty() && !s.closed && s.next_sequence_number == 0);
    }
    let open = open_ranges(&d);
    assert_eq!(open.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(), [S2, S3, S1]);

    // Writes to the parent's range go to the children, with their own sequence numbers.
    let after = put(&mut c, "s", vec![entry_at(1, b"low"), entry_at(quarter, b"high"), entry_at(HALF, b"other")]).await;
    let placed: Vec<(String, u64)> = after.records.iter().map(|r| (r.shard_id.clone(), r.sequence_number)).collect();
    assert_eq!(placed, [(S2.into(), 0), (S3.into(), 0), (S1.into(), 0)]);

    // The parent reads to its end, then names its children and gives no next iterator.
    let (records, children) = read_shard(&mut c, "s", S0).await;
    assert_eq!(records.iter().map(|r| r.data[0]).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let children = children.expect("a closed shard's end names its children");
    assert_eq!(
        children.iter().map(|c| (c.shard_id.as_str(), c.parent_shard_ids.clone())).collect::<Vec<_>>(),
        [(S2, vec![S0.to_string()]), (S3, vec![S0.to_string()])]
    );
    // LATEST on a closed shard is its end: no records, the children at once.
    let latest = iterator(&mut c, "s", S0, pb::IteratorType::Latest, None, None).await;
    let r = c.get_records(pb::GetRecordsRequest { shard_iterator: latest, limit: 10 }).await.expect("get").into_inner();
    assert!(r.records.is_empty() && r.next_shard_iterator.is_empty() && r.child_shards.len() == 2);
    // An open shard never ends.
    assert_eq!(read_shard(&mut c, "s", S2).await.1, None);

    // A closed shard cannot be split or merged again; bad keys name their field.
    let e = split(&mut c, "s", S0, 5).await.expect_err("closed");
    assert_eq!(status_kind(&e), (tonic::Code::FailedPrecondition, "ResourceInUse".into()), "{e}");
    assert!(e.message().contains("closed"), "{e}");
    let e = merge(&mut c, "s", S0, S1).await.expect_err("closed");
    assert_eq!(error_kind(&e), "ResourceInUse", "{e}");
    for (at, why) in [("0", "at the first key"), ("340282366920938463463374607431768211456", "beyond 2^128")] {
        let req =
            pb::SplitShardRequest { stream_name: "s".into(), shard_id: S1.into(), new_starting_hash_key: at.into() };
        let e = c.split_shard(req).await.expect_err(why);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{why}: {e}");
        assert!(e.message().contains("new_starting_hash_key"), "{why}: {e}");
    }
    let e = split(&mut c, "s", "shardId-000000000099", 5).await.expect_err("no such shard");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    drop(c);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn a_merge_joins_adjacent_shards_and_refuses_others() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 3).await;
    let e = merge(&mut c, "s", S0, S2).await.expect_err("not adjacent");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("adjacent_shard_id") && e.message().contains("not adjacent"), "{e}");
    let e = merge(&mut c, "s", S1, S1).await.expect_err("itself");
    assert!(e.message().contains("adjacent_shard_id"), "{e}");
    put(&mut c, "s", vec![entry_at(0, b"a"), entry_at(u128::MAX, b"z")]).await;

    // The adjacent shard may be named first: the child records both as given.
    let d = merge(&mut c, "s", S2, S1).await.expect("merge");
    let child = shard(&d, S3);
    assert_eq!((child.parent_shard_id.as_str(), child.adjacent_parent_shard_id.as_str()), (S2, S1));
    assert_eq!(key(&child.starting_hash_key), key(&shard(&d, S1).starting_hash_key));
    assert_eq!(child.ending_hash_key, u128::MAX.to_string());
    assert!(shard(&d, S1).closed && shard(&d, S2).closed && !shard(&d, S0).closed);
    assert_eq!(open_ranges(&d).iter().map(|r| r.2.as_str()).collect::<Vec<_>>(), [S0, S3]);
    let (_, children) = read_shard(&mut c, "s", S2).await;
    let children = children.expect("closed");
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].parent_shard_ids, [S2, S1]);
    let r = put(&mut c, "s", vec![entry_at(u128::MAX, b"z2")]).await;
    assert_eq!((r.records[0].shard_id.as_str(), r.records[0].sequence_number), (S3, 0));
    drop(c);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn update_shard_count_scales_uniformly_within_awss_bounds_and_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.reshard.scalings_max = 3;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 2).await;
    let scale = |target: u32| pb::UpdateShardCountRequest {
        stream_name: "s".into(),
        target_shard_count: target,
        scaling_type: pb::ScalingType::UniformScaling as i32,
    };
    for (target, why) in [(5, "more than double"), (0, "zero")] {
        let e = c.update_shard_count(scale(target)).await.expect_err(why);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{why}: {e}");
        assert!(e.message().contains("target_shard_count"), "{why}: {e}");
    }
    for (from, target) in [(2, 3), (3, 6), (6, 3)] {
        let r = c.update_shard_count(scale(target)).await.expect("scale").into_inner();
        assert_eq!((r.current_shard_count, r.target_shard_count), (from, target));
        let d = r.stream.expect("description");
        assert_eq!(d.status, pb::StreamStatus::Active as i32);
        let open = open_ranges(&d);
        let uniform = broker::routing::HashRanges::new(target);
        let ranges: Vec<(u128, u128)> = open.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(ranges, (0..target).map(|i| uniform.range(i)).collect::<Vec<_>>(), "{from} -> {target}");
    }
    let e = c.update_shard_count(scale(1)).await.expect_err("less than half");
    assert!(e.message().contains("less than half"), "{e}");
    let e = c.update_shard_count(scale(4)).await.expect_err("a fourth scaling");
    assert_eq!(error_kind(&e), "LimitExceeded", "{e}");
    assert!(e.message().contains("reshard.scalings_max = 3"), "{e}");
    drop(c);
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn a_subscription_to_a_shard_that_closes_ends_with_its_children() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 1).await;
    put(&mut c, "s", vec![entry_at(0, b"before")]).await;
    let req = pb::SubscribeShardRequest {
        stream_name: "s".into(),
        shard_id: S0.into(),
        starting_position: pb::IteratorType::TrimHorizon as i32,
        starting_sequence_number: None,
        timestamp_ms: None,
    };
    let mut events = c.subscribe_shard(req).await.expect("subscribe").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("an event").expect("open");
    assert_eq!(first.expect("event").records.len(), 1);
    let mut admin = connect(broker.endpoint()).await;
    split(&mut admin, "s", S0, HALF).await.expect("split");
    let last = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("the subscription ends within 30 s of the split")
            .expect("a last event")
            .expect("not an error");
        if !ev.heartbeat {
            break ev;
        }
    };
    assert!(last.shard_ended && last.records.is_empty(), "{last:?}");
    assert_eq!(last.child_shards.iter().map(|c| c.shard_id.as_str()).collect::<Vec<_>>(), [S1, S2]);
    assert_eq!(last.continuation_sequence_number, 1);
    let end = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("the call ends");
    assert!(end.is_none(), "the call ends with OK after the last event: {end:?}");
    // A new subscription at the end of the closed shard ends at once.
    let req = pb::SubscribeShardRequest {
        stream_name: "s".into(),
        shard_id: S0.into(),
        starting_position: pb::IteratorType::Latest as i32,
        starting_sequence_number: None,
        timestamp_ms: None,
    };
    let mut events = c.subscribe_shard(req).await.expect("subscribe").into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("event").expect("some");
    assert!(ev.expect("ok").shard_ended);
    drop((c, admin));
    broker.stop().await.expect("stop");
}

/// Producers put to the parent's range while it is split: every record is
/// acknowledged once or refused with the retryable `ShardClosed` (and then
/// put again), and reading every shard finds each acknowledged record once,
/// where its acknowledgement says, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_racing_a_split_land_in_the_parent_or_a_child_exactly_once() {
    let broker = TestBroker::start().await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 1).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut producers = Vec::new();
    for p in 0..4u128 {
        let (endpoint, stop) = (broker.endpoint(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut c = connect(endpoint).await;
            let (mut acked, mut closed, mut n) = (Vec::new(), 0u64, 0u128);
            while !stop.is_cancelled() || n < 200 {
                // Spread over the whole hash space: every shard of every layout gets records.
                let batch: Vec<(u128, String)> = (0..20)
                    .map(|i| {
                        (
                            (p << 64 | (n * 20 + i)).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                            format!("p{p}-{n}-{i}"),
                        )
                    })
                    .collect();
                let mut pending = batch;
                while !pending.is_empty() {
                    let r = put(&mut c, "s", pending.iter().map(|(h, d)| entry_at(*h, d.as_bytes())).collect()).await;
                    let mut again = Vec::new();
                    for (e, rec) in r.records.into_iter().zip(pending) {
                        match e.error_code.as_str() {
                            "" => acked.push((e.shard_id, e.sequence_number, rec.1)),
                            "ShardClosed" => {
                                closed += 1;
                                again.push(rec);
                            }
                            other => panic!("unexpected per-record error {other}: {}", e.error_message),
                        }
                    }
                    pending = again;
                }
                n += 1;
            }
            (acked, closed)
        }));
    }
    // Split while they put: the parent, then each child, then merge two back.
    let mut admin = connect(broker.endpoint()).await;
    while describe(&mut admin, "s").await.shards[0].next_sequence_number < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    split(&mut admin, "s", S0, HALF).await.expect("split");
    split(&mut admin, "s", S1, HALF / 2).await.expect("split");
    split(&mut admin, "s", S2, HALF + HALF / 2).await.expect("split");
    merge(&mut admin, "s", S4, "shardId-000000000005").await.expect("merge");
    stop.cancel();
    let (mut acked, mut closed) = (Vec::new(), 0);
    for p in producers {
        let (a, c) = p.await.expect("producer");
        acked.extend(a);
        closed += c;
    }
    let d = describe(&mut admin, "s").await;
    open_ranges(&d);
    for s in d.shards.iter().filter(|s| s.closed) {
        assert_eq!(
            Some(s.next_sequence_number),
            s.ending_sequence_number,
            "{}: nothing is appended after a shard closes",
            s.shard_id
        );
    }
    let mut stored: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for s in &d.shards {
        for r in read_shard(&mut admin, "s", &s.shard_id).await.0 {
            let data = String::from_utf8(r.data.to_vec()).expect("utf-8");
            stored.entry(data).or_default().push((s.shard_id.clone(), r.sequence_number));
        }
    }
    let mut by_data: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (shard, seq, data) in &acked {
        assert!(by_data.insert(data.clone(), (shard.clone(), *seq)).is_none(), "{data} acknowledged twice");
    }
    for (data, at) in &by_data {
        assert_eq!(stored.get(data), Some(&vec![at.clone()]), "{data}: stored once, where its acknowledgement says");
    }
    assert_eq!(stored.len(), by_data.len(), "nothing is stored that was not acknowledged");
    println!(
        "{} records acknowledged across 3 splits and a merge; {closed} refused as ShardClosed and put again",
        acked.len()
    );
    drop((c, admin));
    broker.stop().await.expect("stop");
}

#[tokio::test]
async fn the_shard_tree_and_every_record_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config.clone(), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    stream(&mut c, "s", 2).await;
    put(&mut c, "s", vec![entry_at(0, b"a"), entry_at(HALF, b"b")]).await;
    split(&mut c, "s", S0, HALF / 2).await.expect("split");
    put(&mut c, "s", vec![entry_at(0, b"c"), entry_at(HALF - 1, b"d")]).await;
    merge(&mut c, "s", S3, S1).await.expect("merge");
    put(&mut c, "s", vec![entry_at(HALF, b"e")]).await;
    let before = describe(&mut c, "s").await;
    drop(c);
    broker.stop().await.expect("stop");

    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let after = describe(&mut c, "s").await;
    assert_eq!(after, before, "the same tree, ends and records after a restart");
    let mut all = Vec::new();
    for s in &after.shards {
        all.extend(read_shard(&mut c, "s", &s.shard_id).await.0.into_iter().map(|r| r.data[0]));
    }
    all.sort_unstable();
    assert_eq!(all, b"abcde");
    // Indexes are never reused: the next split gets the next ones.
    let d = split(&mut c, "s", S2, 5).await.expect("split");
    assert!(d.shards.iter().any(|s| s.shard_id == "shardId-000000000005"), "{d:?}");
    drop(c);
    broker.stop().await.expect("stop");
}

/// A day and an hour after a split, retention has removed the parent's
/// records and the parent itself; its children stay, still naming it.
#[tokio::test]
async fn retention_removes_a_closed_parent_and_keeps_its_children() {
    const T0: u64 = 1_800_000_000_000;
    let clock = Arc::new(ManualClock::new(T0));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        retention: RetentionConfig { check_interval_ms: 10 },
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start_with(config, clock.clone()).await;
    let mut c = connect(broker.endpoint()).await;
    let id = stream(&mut c, "s", 1).await.stream_id;
    put(&mut c, "s", (0..5u8).map(|i| entry_at(u128::from(i), &[i])).collect()).await;
    split(&mut c, "s", S0, HALF).await.expect("split");
    let parent_dir = dir.path().join(format!("streams/{id}/{S0}"));
    assert!(parent_dir.exists());
    clock.advance(25 * 3_600_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let d = loop {
        let d = describe(&mut c, "s").await;
        if !d.shards.iter().any(|s| s.shard_id == S0) {
            break d;
        }
        assert!(Instant::now() < deadline, "30 s after expiry the closed parent is still listed: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(d.shards.iter().map(|s| s.shard_id.as_str()).collect::<Vec<_>>(), [S1, S2]);
    assert!(d.shards.iter().all(|s| s.parent_shard_id == S0 && !s.closed), "children keep naming their parent");
    open_ranges(&d);
    assert!(!parent_dir.exists(), "the parent's files are gone");
    let e = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: S0.into(),
            iterator_type: pb::IteratorType::TrimHorizon as i32,
            starting_sequence_number: None,
            timestamp_ms: None,
        })
        .await
        .expect_err("the parent is gone");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let r = put(&mut c, "s", vec![entry_at(0, b"new")]).await;
    assert_eq!((r.records[0].shard_id.as_str(), r.failed_record_count), (S1, 0), "the children still serve");
    drop(c);
    broker.stop().await.expect("stop");
}
