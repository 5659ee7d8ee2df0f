//! Per-key order across resharding, end to end through the real client:
//! `client::Producer` lanes produce continuously on many keys while the
//! stream is split, merged and rescaled again and again, and a consumer
//! group of several `client::Consumer` members (joining and leaving as it
//! goes) handles everything. Every acknowledged produce and every handled
//! record goes into a [`History`], whose checker must report nothing lost,
//! nothing skipped, no key out of produce order (within a shard and across
//! a parent and its children), and no record handled twice by one member
//! under one lease (duplicates only from redelivery to another lease).
//!
//! `reshard_chaos_long` runs for five minutes with member churn:
//! `cargo test -p broker --release --test reshard_chaos -- --ignored --nocapture`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::{History, TestBroker};
use client::{Admin, Consumer, ConsumerConfig, HandlerError, Producer, ProducerConfig, Record};
use proto::v1 as pb;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const STREAM: &str = "chaos";
const GROUP: &str = "g";
const LANES: usize = 3;
const KEYS_PER_LANE: u64 = 24;
const OPEN_MAX: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// How long production and resharding last.
    chaos: Duration,
    /// Pause between reshards.
    every: Duration,
    /// Members join and leave during the chaos.
    churn: bool,
    seed: u64,
}

#[derive(Debug, Default)]
struct Counts {
    splits: AtomicU64,
    merges: AtomicU64,
    scalings: AtomicU64,
    produce_failures: AtomicU64,
    acks_from_children: AtomicU64,
    member_joins: AtomicU64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sends unique records on this lane's keys until `stop`; acknowledgements
/// are awaited in send order, so each key's records enter the history in
/// send order.
async fn produce(lane: usize, endpoint: String, history: Arc<History>, counts: Arc<Counts>, stop: CancellationToken) {
    let config = ProducerConfig { linger: Duration::from_millis(5), ..ProducerConfig::default() };
    let producer = Producer::connect(&endpoint, STREAM, config).await.expect("producer");
    let mut pending = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..4 {
            let key = format!("lane{lane}-key{}", n % KEYS_PER_LANE);
            let data = format!("lane {lane} record {n} key {key}");
            let ack = producer.send(key.clone(), data.clone()).await.expect("the producer accepts records");
            pending.push_back((key, data, ack));
            n += 1;
        }
        while pending.len() > 200 {
            settle(pending.pop_front().expect("non-empty"), &history, &counts).await;
        }
    }
    while let Some(p) = pending.pop_front() {
        settle(p, &history, &counts).await;
    }
    producer.close().await.expect("close the producer");
}

async fn settle((key, data, ack): (String, String, client::AckFuture), history: &History, counts: &Counts) {
    match ack.await {
        Ok(a) => {
            if a.shard_id.as_str() > "shardId-000000000001" {
                counts.acks_from_children.fetch_add(1, Ordering::Relaxed);
            }
            history.produced(&key, &a.shard_id, a.sequence_number, data.as_bytes());
        }
        Err(e) => {
            eprintln!("a record failed: {e}");
            counts.produce_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Member {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// A member running the real `Consumer::run`, recording every handled record.
async fn member(name: String, endpoint: String, history: Arc<History>, counts: Arc<Counts>) -> Member {
    let mut config = ConsumerConfig::new(GROUP);
    config.client_id = name.clone();
    config.poll_wait = Duration::from_millis(200);
    let consumer = Consumer::join(&endpoint, STREAM, config).await.expect("join");
    counts.member_joins.fetch_add(1, Ordering::Relaxed);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let handler = move |records: Vec<Record>| {
            for r in &records {
                history.handled(&name, r.lease_epoch, &r.shard_id, r.sequence_number, &r.partition_key, &r.data);
            }
            std::future::ready(Ok::<(), HandlerError>(()))
        };
        let on_failure = |_: Record, _: String| std::future::ready(Ok::<(), HandlerError>(()));
        consumer.run(handler, on_failure, stop).await.expect("Consumer::run");
    });
    Member { shutdown, task }
}

async fn leave(m: Member) {
    m.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), m.task).await.expect("a member stops").expect("member task");
}

/// One random reshard of the stream as it is now.
async fn reshard(admin: &Admin, rng: &mut Rng, counts: &Counts) {
    let d = admin.describe_stream(STREAM).await.expect("describe");
    let mut open: Vec<&pb::ShardDescription> = d.shards.iter().filter(|s| !s.closed).collect();
    open.sort_by_key(|s| s.starting_hash_key.parse::<u128>().expect("hash key"));
    let key = |k: &str| k.parse::<u128>().expect("hash key");
    match rng.next() % 5 {
        0 | 1 if open.len() < OPEN_MAX => {
            let s = open[(rng.next() % open.len() as u64) as usize];
            let (lo, hi) = (key(&s.starting_hash_key), key(&s.ending_hash_key));
            admin.split_shard(STREAM, &s.shard_id, lo + (hi - lo) / 2 + 1).await.expect("split");
            counts.splits.fetch_add(1, Ordering::Relaxed);
        }
        2 | 3 if open.len() > 1 => {
            let i = (rng.next() % (open.len() as u64 - 1)) as usize;
            admin.merge_shards(STREAM, &open[i].shard_id, &open[i + 1].shard_id).await.expect("merge");
            counts.merges.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            let n = open.len() as u64;
            let target = (n.div_ceil(2) + rng.next() % (2 * n - n.div_ceil(2) + 1)).clamp(1, OPEN_MAX as u64) as u32;
            admin.update_shard_count(STREAM, target).await.expect("scale");
            counts.scalings.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(s: Scenario) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = false;
    config.groups.session_timeout_ms = 30_000;
    config.reshard.scalings_max = 1_000;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let endpoint = broker.endpoint();
    let admin = Admin::connect(&endpoint).await.expect("admin");
    admin
        .create_stream(pb::CreateStreamRequest { stream_name: STREAM.into(), shard_count: 2, ..Default::default() })
        .await
        .expect("create");
    let (history, counts) = (Arc::new(History::new()), Arc::new(Counts::default()));
    let mut members = VecDeque::new();
    for i in 0..3 {
        members.push_back(member(format!("m{i}"), endpoint.clone(), history.clone(), counts.clone()).await);
    }
    let stop = CancellationToken::new();
    let lanes: Vec<_> = (0..LANES)
        .map(|lane| tokio::spawn(produce(lane, endpoint.clone(), history.clone(), counts.clone(), stop.clone())))
        .collect();
    let mut rng = Rng(s.seed | 1);
    let started = Instant::now();
    let mut next_member = 3;
    while started.elapsed() < s.chaos {
        tokio::time::sleep(s.every).await;
        reshard(&admin, &mut rng, &counts).await;
        if s.churn && rng.next() % 3 == 0 {
            if members.len() > 2 && rng.next() % 2 == 0 {
                leave(members.pop_front().expect("a member")).await;
            } else if members.len() < 5 {
                let name = format!("m{next_member}");
                next_member += 1;
                members.push_back(member(name, endpoint.clone(), history.clone(), counts.clone()).await);
            }
        }
    }
    stop.cancel();
    for lane in lanes {
        lane.await.expect("producer lane");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = history.unhandled();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} acknowledged records unhandled 120 s after production stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in members {
        leave(m).await;
    }
    let report = history.check();
    let c = &counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{:.0} s: {} splits, {} merges, {} scalings, {} member joins; {} acknowledged ({} from shards made by a \
         reshard), {} duplicates\n{report}",
        started.elapsed().as_secs_f64(),
        get(&c.splits),
        get(&c.merges),
        get(&c.scalings),
        get(&c.member_joins),
        report.acked,
        get(&c.acks_from_children),
        report.duplicates
    );
    assert_eq!(get(&c.produce_failures), 0, "every record is acknowledged: a racing reshard only re-routes");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.duplicates_within_stream, 0, "duplicates only from redelivery:\n{report}");
    assert!(get(&c.splits) + get(&c.merges) + get(&c.scalings) >= 5, "too few reshards to prove anything");
    assert!(get(&c.acks_from_children) > 0, "the producers followed the reshards");
    let d = admin.describe_stream(STREAM).await.expect("describe");
    assert_eq!(d.status, pb::StreamStatus::Active as i32);
    drop(admin);
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_chaos_keeps_every_key_in_order() {
    run(Scenario { chaos: Duration::from_secs(8), every: Duration::from_millis(400), churn: false, seed: 0x5eed_0011 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 5 minutes of resharding with member churn; run explicitly and read its counts"]
async fn reshard_chaos_long() {
    run(Scenario {
        chaos: Duration::from_secs(300),
        every: Duration::from_millis(700),
        churn: true,
        seed: 0x5eed_0012,
    })
    .await;
}
