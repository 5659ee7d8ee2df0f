//! Resharding under failpoints (feature `failpoints`):
//! - a split paused at a failpoint leaves the stream UPDATING, and a second
//!   split or merge is refused with `ResourceInUse` meanwhile;
//! - an injected error before the swap rolls the split back: old layout,
//!   ACTIVE, writes go on, no index reused;
//! - `kill -9` (a failpoint `panic`, which aborts the failpoint build) at
//!   every step of a split and of a merge, with producers running, then a
//!   power loss (`powerfs`, unsynced writes dropped): the restarted broker
//!   has the old layout (a crash before the intent was durable) or the new
//!   one (any later crash), never a mix, its open shards cover the hash
//!   space exactly once, and every acknowledged record reads back once, in
//!   order per key across parents and children.
//!
//! Run with `cargo test -p broker --features failpoints --test reshard_failpoints`.

mod common;
mod powerloss;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use bytes::Bytes;
use powerfs::LossMode;
use powerloss::{Acked, check, read_all, start_broker};
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tonic::transport::Channel;

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";
const HALF: u128 = 1 << 127;

type Client = StreamBrokerClient<Channel>;

fn split_req(shard: &str, at: u128) -> pb::SplitShardRequest {
    pb::SplitShardRequest { stream_name: "s".into(), shard_id: shard.into(), new_starting_hash_key: at.to_string() }
}

async fn describe(c: &mut Client) -> pb::StreamDescription {
    c.describe_stream(pb::DescribeStreamRequest { stream_name: "s".into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("description")
}

/// The open shards (sorted by range) after checking they cover the hash space exactly once.
fn open_shards(d: &pb::StreamDescription) -> Vec<String> {
    let mut open: Vec<(u128, u128, String)> = d
        .shards
        .iter()
        .filter(|s| !s.closed)
        .map(|s| {
            (s.starting_hash_key.parse().expect("key"), s.ending_hash_key.parse().expect("key"), s.shard_id.clone())
        })
        .collect();
    open.sort();
    assert_eq!((open[0].0, open[open.len() - 1].1), (0, u128::MAX), "{open:?}");
    for w in open.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "gap or overlap: {open:?}");
    }
    open.into_iter().map(|o| o.2).collect()
}

/// Serialises the tests that configure the process-wide failpoint registry.
static FAILPOINTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reshard_during_one_is_refused_and_the_stream_is_updating() {
    let _one = FAILPOINTS.lock().await;
    let broker = TestBroker::start().await;
    let mut c = common::connect(broker.endpoint()).await;
    common::create(&mut c, "s", 2).await;
    fail::cfg("broker::reshard::after_children", "pause").expect("failpoint");
    let first = tokio::spawn({
        let mut c = c.clone();
        async move { c.split_shard(split_req(S0, HALF / 2)).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while describe(&mut c).await.status != pb::StreamStatus::Updating as i32 {
        assert!(Instant::now() < deadline, "the stream never showed UPDATING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = c.split_shard(split_req(S1, HALF + 1)).await.expect_err("a second split");
    assert_eq!((e.code(), common::error_kind(&e)), (tonic::Code::FailedPrecondition, "ResourceInUse".into()), "{e}");
    assert!(e.message().contains("UPDATING") && e.message().contains("split of shardId-000000000000"), "{e}");
    let e = c
        .merge_shards(pb::MergeShardsRequest {
            stream_name: "s".into(),
            shard_id: S0.into(),
            adjacent_shard_id: S1.into(),
        })
        .await
        .expect_err("a merge");
    assert_eq!(common::error_kind(&e), "ResourceInUse", "{e}");
    // Writes go on while it is UPDATING.
    let r = common::put(&mut c, "s", vec![common::entry_at(HALF, b"during")]).await;
    assert_eq!(r.failed_record_count, 0);
    fail::remove("broker::reshard::after_children");
    let d = first.await.expect("task").expect("the first split finishes").into_inner().stream.expect("d");
    assert_eq!(d.status, pb::StreamStatus::Active as i32);
    assert_eq!(open_shards(&d), ["shardId-000000000002", "shardId-000000000003", S1]);
    c.split_shard(split_req(S1, HALF + 1)).await.expect("once ACTIVE, a split is taken");
    drop(c);
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_the_swap_rolls_the_split_back() {
    let _one = FAILPOINTS.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = common::connect(broker.endpoint()).await;
    let id = common::create(&mut c, "s", 1).await.stream_id;
    common::put(&mut c, "s", vec![common::entry_at(0, b"a")]).await;
    for point in ["broker::reshard::after_children", "broker::reshard::after_seal"] {
        fail::cfg(point, "return").expect("failpoint");
        let e = c.split_shard(split_req(S0, HALF)).await.expect_err("an injected error");
        fail::remove(point);
        // The failpoint fails like the metadata store: an internal error.
        assert_eq!(e.code(), tonic::Code::Internal, "{point}: {e}");
        let d = describe(&mut c).await;
        assert_eq!(d.status, pb::StreamStatus::Active as i32, "{point}");
        assert_eq!(d.shards.iter().map(|s| s.shard_id.as_str()).collect::<Vec<_>>(), [S0], "{point}: the old layout");
        let r = common::put(&mut c, "s", vec![common::entry_at(0, b"b")]).await;
        assert_eq!(
            (r.failed_record_count, r.records[0].shard_id.as_str()),
            (0, S0),
            "{point}: the parent takes writes"
        );
        let dirs: Vec<String> = std::fs::read_dir(dir.path().join(format!("streams/{id}")))
            .expect("stream dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(dirs, [S0], "{point}: the rolled-back children's directories are gone");
    }
    let d = c.split_shard(split_req(S0, HALF)).await.expect("split").into_inner().stream.expect("d");
    assert_eq!(open_shards(&d), ["shardId-000000000005", "shardId-000000000006"], "rolled-back indexes are not reused");
    drop(c);
    broker.stop().await.expect("stop");
}

/// Producers that own their keys (so the list is in send order per key),
/// putting records and putting again those refused as `ShardClosed`, until
/// the broker stops answering.
fn spawn_producers(endpoint: &str, n: usize) -> Vec<tokio::task::JoinHandle<Vec<Acked>>> {
    (0..n)
        .map(|p| {
            let endpoint = endpoint.to_string();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(channel) = Channel::from_shared(endpoint).expect("uri").connect().await else { return acked };
                let mut c = StreamBrokerClient::new(channel);
                for n in 0u64.. {
                    let mut batch: Vec<(String, Vec<u8>)> =
                        (0..10).map(|i| (format!("key-{p}-{i}"), format!("p{p}-n{n}-{i}").into_bytes())).collect();
                    while !batch.is_empty() {
                        let records = batch
                            .iter()
                            .map(|(k, d)| pb::PutRecordsEntry {
                                partition_key: k.clone(),
                                data: Bytes::copy_from_slice(d),
                                explicit_hash_key: None,
                            })
                            .collect();
                        let req = pb::PutRecordsRequest { stream_name: "s".into(), records };
                        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(20), c.put_records(req)).await else {
                            return acked;
                        };
                        let mut again = Vec::new();
                        for (e, (key, data)) in r.into_inner().records.into_iter().zip(batch) {
                            match e.error_code.as_str() {
                                "" => acked.push(Acked { key, shard_id: e.shard_id, seq: e.sequence_number, data }),
                                "ShardClosed" => again.push((key, data)),
                                _ => return acked,
                            }
                        }
                        batch = again;
                    }
                }
                acked
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Split,
    Merge,
}

/// One crash: the broker starts with `failpoint`, producers run, the op
/// aborts the broker at the failpoint; power is cut; the restarted broker
/// must show the expected layout and every acknowledged record.
async fn crash_case(op: Op, failpoint: &str, action: &str, new_layout: bool) {
    let case = format!("{op:?} at {failpoint}={action}");
    let (fs, dir) = powerloss::mount_with_data();
    let b = start_broker(&dir, &[]);
    let mut c = powerloss::connect(&b.endpoint).await;
    powerloss::create_stream(&mut c, "s", 2).await;
    drop(c);
    b.kill9();
    powerloss::sync_tree(&dir);

    let spec = format!("{failpoint}={action}");
    let mut b = start_broker(&dir, &[("FAILPOINTS", spec.as_str())]);
    let producers = spawn_producers(&b.endpoint, 3);
    let mut c = powerloss::connect(&b.endpoint).await;
    // Some records first, so the parents have something to close over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while describe(&mut c).await.shards.iter().map(|s| s.next_sequence_number).sum::<u64>() < 300 {
        assert!(Instant::now() < deadline, "{case}: the producers stored nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = match op {
        Op::Split => c.split_shard(split_req(S0, HALF / 2)).await.map(|_| ()),
        Op::Merge => c
            .merge_shards(pb::MergeShardsRequest {
                stream_name: "s".into(),
                shard_id: S0.into(),
                adjacent_shard_id: S1.into(),
            })
            .await
            .map(|_| ()),
    };
    assert!(result.is_err(), "{case}: the failpoint aborts the broker during the call");
    let status = b.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("{case}: never fired"));
    assert!(!status.success(), "{case}: {status}");
    drop(b);
    let mut acked = Vec::new();
    for p in producers {
        acked.extend(p.await.expect("producer"));
    }
    fs.power_loss(LossMode::DropUnsynced);

    let mut b = start_broker(&dir, &[]);
    let (mut c, _) = powerloss::first_answer(&mut b, "s").await;
    let d = describe(&mut c).await;
    assert_eq!(d.status, pb::StreamStatus::Active as i32, "{case}: the start finished the reshard");
    let expected: &[&str] = match (op, new_layout) {
        (_, false) => &[S0, S1],
        (Op::Split, true) => &["shardId-000000000002", "shardId-000000000003", S1],
        (Op::Merge, true) => &["shardId-000000000002"],
    };
    assert_eq!(open_shards(&d), expected, "{case}: the old or the new layout, never a mix");
    for s in d.shards.iter().filter(|s| s.closed) {
        assert_eq!(
            Some(s.next_sequence_number),
            s.ending_sequence_number,
            "{case}: {} took records after closing",
            s.shard_id
        );
    }
    // Shards are read in index order, parents before children.
    let read = read_all(&mut c, "s").await;
    let r = check(&acked, &read, "reader");
    assert!(r.is_clean() && r.duplicates_within_stream == 0, "{case}: after a crash and a power loss:\n{r}");
    assert!(!acked.is_empty(), "{case}: nothing was acknowledged");
    // The stream takes writes and reshards again.
    let e =
        c.put_records(pb::PutRecordsRequest { stream_name: "s".into(), records: vec![common::entry("after", b"x")] });
    assert_eq!(e.await.expect("put").into_inner().failed_record_count, 0, "{case}");
    let open = open_shards(&d);
    c.split_shard(split_req(&open[0], 1)).await.unwrap_or_else(|e| panic!("{case}: a split after the restart: {e}"));
    println!("{case}: {} acknowledged records, all read back; layout {:?}", acked.len(), open);
}

/// Every step of one split or merge, and whether a crash there leaves the
/// new layout after a restart. Each persist is evaluated twice: the intent
/// first, the closing write second (`1*off->panic` fires at the second).
const STEPS: &[(&str, &str, bool)] = &[
    ("broker::reshard::before_persist", "panic", false),
    ("broker::reshard::after_persist", "panic", true),
    ("broker::reshard::after_children", "panic", true),
    ("broker::reshard::after_seal", "panic", true),
    ("broker::reshard::after_swap", "panic", true),
    ("broker::reshard::before_persist", "1*off->panic", true),
    ("broker::reshard::after_persist", "1*off->panic", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_split_or_merge_leaves_the_old_or_the_new_layout_and_every_record() {
    for op in [Op::Split, Op::Merge] {
        for &(failpoint, action, new_layout) in STEPS {
            crash_case(op, failpoint, action, new_layout).await;
        }
    }
}
