//! `stream-bench`: load generator for a real broker through real gRPC.
//!
//! By default it starts an in-process broker on 127.0.0.1:0 over a temporary
//! directory (durability `always`: every acknowledgement is fdatasync'ed)
//! and prints its figures next to the disk's own `dd ... conv=fdatasync`
//! bandwidth measured in the same run. `--broker URL` targets an external
//! broker instead (the dd reference then measures the local disk only).
//!
//! ```text
//! stream-bench produce   durable produce matrix: 100 B / 1 KiB, 1 / 8 shards, 1 / 8 producers
//! stream-bench scale     shards at full Kinesis quota with p99 ack < 50 ms and no throttling
//! stream-bench e2e       produce-to-subscriber latency at a given rate
//! stream-bench groups    consumer-group drain throughput and rebalance pauses
//! stream-bench overload  in-quota shards' ack latency next to shards offered 3x their quota
//! stream-bench reshard   time to split a shard at full quota, produce p99 during the split vs before
//! stream-bench all       all of them; e2e at half the best 1 KiB produce rate
//! ```

// Its own file, so the subcommand and the rest of the bench change apart.
#[path = "stream-bench/reshard.rs"]
mod reshard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Load generator for stream-broker")]
struct Args {
    /// Use this broker instead of an in-process one.
    #[arg(long, env = "STREAM_BROKER_ADDR")]
    broker: Option<String>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Directory for the in-process broker's data and the dd reference (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Durable produce throughput and ack latency.
    Produce,
    /// How many shards run at full quota at once.
    Scale {
        /// Shard counts to try, in order.
        #[arg(long, value_delimiter = ',', default_value = "25,50,100,150,200")]
        shards: Vec<u32>,
    },
    /// Produce-to-subscriber latency.
    E2e {
        /// Records per second (1 KiB each) over 8 shards.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
    },
    /// Consumer-group drain throughput (1, 2, 4 members on 8 shards) and rebalance pauses.
    Groups {
        /// Rebalance events to time (alternately a graceful leave and a kill).
        #[arg(long, default_value_t = 20)]
        rounds: u32,
    },
    /// In-quota shards' ack latency alone and next to shards offered 3x their write quota.
    Overload {
        /// Shards; half get producers at their quota, half at 3x.
        #[arg(long, default_value_t = 8)]
        shards: u32,
    },
    /// Time to split a shard at full write quota, and produce latency during the split vs before.
    Reshard {
        /// Splits to time, each on a fresh one-shard stream.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Everything, with e2e at half the best 1 KiB produce rate.
    All,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

struct Target {
    endpoint: String,
    broker: Option<TestBroker>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Stops an in-process broker cleanly before its directory goes away.
    async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.stop().await.expect("broker stops cleanly");
        }
    }
}

async fn target(args: &Args, enforce_quotas: bool) -> Target {
    if let Some(url) = &args.broker {
        return Target { endpoint: url.clone(), broker: None, _dir: None };
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("bench data dir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = enforce_quotas;
    config.limits.max_shards_per_stream = 1024;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    Target { endpoint: broker.endpoint(), broker: Some(broker), _dir: Some(dir) }
}

async fn client(endpoint: &str) -> StreamBrokerClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connect");
    StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

async fn create(c: &mut StreamBrokerClient<Channel>, name: &str, shards: u32) {
    c.create_stream(pb::CreateStreamRequest { stream_name: name.into(), shard_count: shards, ..Default::default() })
        .await
        .expect("create stream");
}

/// MB/s of `dd if=/dev/zero bs=1M count=N conv=fdatasync` into `dir`.
fn dd_fdatasync(dir: &Path, mib: u64) -> f64 {
    let file = dir.join("stream-bench-dd.tmp");
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", file.display()), "bs=1M", &format!("count={mib}"), "conv=fdatasync"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run dd");
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "dd failed");
    (mib * 1024 * 1024) as f64 / secs / 1e6
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// An explicit hash key inside shard `s` of `n`, so each producer can aim at a shard.
fn key_for(s: u32, n: u32) -> String {
    let (lo, hi) = broker::routing::HashRanges::new(n).range(s);
    (lo + (hi - lo) / 2).to_string()
}

struct ProduceResult {
    records_per_sec: f64,
    mb_per_sec: f64,
    latency: Histogram<u64>,
}

/// `producers` Produce streams, each with 8 batches in flight, batches of
/// `batch` records of `size` bytes spread over all shards, for `secs`.
async fn produce(
    endpoint: &str,
    stream: &str,
    shards: u32,
    producers: u32,
    size: usize,
    batch: usize,
    secs: u64,
) -> ProduceResult {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (endpoint, stream) = (endpoint.to_string(), stream.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = client(&endpoint).await;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let mut acks =
                c.produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("produce").into_inner();
            let data = Bytes::from(vec![b'x'; size]);
            let keys: Vec<String> = (0..shards).map(|s| key_for(s, shards)).collect();
            let sent_at = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
            let sender = {
                let sent_at = sent_at.clone();
                tokio::spawn(async move {
                    let mut id = 0u64;
                    while Instant::now() < deadline {
                        let records = (0..batch)
                            .map(|i| pb::PutRecordsEntry {
                                partition_key: format!("p{p}"),
                                data: data.clone(),
                                explicit_hash_key: Some(keys[(i + id as usize) % keys.len()].clone()),
                            })
                            .collect();
                        sent_at.lock().expect("lock").push_back(Instant::now());
                        let req = pb::ProduceRequest {
                            batch_id: id,
                            batch: Some(pb::PutRecordsRequest { stream_name: stream.clone(), records }),
                        };
                        if tx.send(req).await.is_err() {
                            break;
                        }
                        id += 1;
                    }
                })
            };
            let mut h = hist();
            let mut records = 0u64;
            while let Some(ack) = acks.next().await {
                let ack = ack.expect("ack");
                let sent = sent_at.lock().expect("lock").pop_front().expect("a batch was sent");
                let result = ack.result.expect("batch result");
                assert_eq!(result.failed_record_count, 0, "quotas are lifted for this benchmark");
                records += result.records.len() as u64;
                h.record(sent.elapsed().as_micros().max(1) as u64).expect("record latency");
            }
            sender.await.expect("sender");
            (records, h)
        }));
    }
    let started = Instant::now();
    let mut latency = hist();
    let mut records = 0;
    for t in tasks {
        let (n, h) = t.await.expect("producer");
        records += n;
        latency.add(h).expect("merge");
    }
    let secs = started.elapsed().as_secs_f64();
    ProduceResult {
        records_per_sec: records as f64 / secs,
        mb_per_sec: records as f64 * (size + 2) as f64 / secs / 1e6,
        latency,
    }
}

async fn produce_matrix(args: &Args) -> f64 {
    let t = target(args, false).await;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dd = dd_fdatasync(&dir, 1024);
    println!("# durable produce (acknowledged = fdatasync'ed, group commit), {} s each", args.seconds);
    println!("disk reference: dd bs=1M count=1024 conv=fdatasync = {dd:.0} MB/s");
    println!(
        "{:>6} {:>6} {:>9} {:>6} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "size", "shards", "producers", "batch", "records/s", "MB/s", "p50 ms", "p99 ms", "p999 ms"
    );
    let mut best_1k: f64 = 0.0;
    let mut best_100: f64 = 0.0;
    let mut c = client(&t.endpoint).await;
    let mut n = 0;
    for size in [100usize, 1024] {
        for shards in [1u32, 8] {
            for producers in [1u32, 8] {
                n += 1;
                let stream = format!("bench-produce-{n}");
                create(&mut c, &stream, shards).await;
                let batch = 500;
                let r = produce(&t.endpoint, &stream, shards, producers, size, batch, args.seconds).await;
                println!(
                    "{:>6} {:>6} {:>9} {:>6} {:>12.0} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
                    size,
                    shards,
                    producers,
                    batch,
                    r.records_per_sec,
                    r.mb_per_sec,
                    ms(&r.latency, 0.5),
                    ms(&r.latency, 0.99),
                    ms(&r.latency, 0.999)
                );
                if size == 1024 {
                    best_1k = best_1k.max(r.mb_per_sec);
                } else {
                    best_100 = best_100.max(r.records_per_sec);
                }
                c.delete_stream(pb::DeleteStreamRequest { stream_name: stream }).await.expect("delete");
            }
        }
    }
    drop(c);
    t.stop().await;
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    println!(
        "target: durable 1 KiB produce >= 60% of dd fdatasync: best {best_1k:.1} MB/s = {:.0}% of {dd:.0} MB/s -> {}",
        best_1k / dd * 100.0,
        verdict(best_1k >= 0.6 * dd)
    );
    println!(
        "target: >= 300000 records/s durable for 100 B records: best {best_100:.0} -> {}",
        verdict(best_100 >= 300_000.0)
    );
    best_1k * 1e6 / 1026.0
}

/// Every shard gets 1000 records/s of 1 KiB (its full Kinesis write quota),
/// as 100-record PutRecords every 100 ms, the shards' producers spread over
/// the period; quotas are enforced.
async fn scale(args: &Args, counts: &[u32]) {
    println!(
        "# full-quota scale: every shard at 1000 records/s of 1 KiB, quotas enforced, {} s per step",
        args.seconds
    );
    println!(
        "{:>7} {:>12} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "shards", "records/s", "throttled", "p50 ms", "p99 ms", "max ms", "ok"
    );
    let mut best = 0;
    for &shards in counts {
        let t = target(args, true).await;
        let mut c = client(&t.endpoint).await;
        create(&mut c, "scale", shards).await;
        let channels: Vec<_> = clients(&t.endpoint, 4).await;
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let throttled = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for s in 0..shards {
            let mut c = channels[s as usize % channels.len()].clone();
            let key = key_for(s, shards);
            let throttled = throttled.clone();
            tasks.push(tokio::spawn(async move {
                let data = Bytes::from(vec![b'q'; 1024 - 8]);
                // Independent producers are not in phase: spread their ticks over the 100 ms period.
                let phase = Duration::from_micros(100_000 * u64::from(s) / u64::from(shards));
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut h = hist();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    tick.tick().await;
                    let records = (0..100)
                        .map(|_| pb::PutRecordsEntry {
                            partition_key: "pk-shard".into(),
                            data: data.clone(),
                            explicit_hash_key: Some(key.clone()),
                        })
                        .collect();
                    let sent = Instant::now();
                    let r = c
                        .put_records(pb::PutRecordsRequest { stream_name: "scale".into(), records })
                        .await
                        .expect("put")
                        .into_inner();
                    h.record(sent.elapsed().as_micros().max(1) as u64).expect("latency");
                    throttled.fetch_add(u64::from(r.failed_record_count), Ordering::Relaxed);
                    n += 100 - u64::from(r.failed_record_count);
                }
                (n, h)
            }));
        }
        let started = Instant::now();
        let mut h = hist();
        let mut n = 0;
        for t in tasks {
            let (k, th) = t.await.expect("shard producer");
            n += k;
            h.add(th).expect("merge");
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let throttled = throttled.load(Ordering::Relaxed);
        let ok = ms(&h, 0.99) < 50.0 && throttled == 0 && rate >= 0.95 * 1000.0 * f64::from(shards);
        println!(
            "{:>7} {:>12.0} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            shards,
            rate,
            throttled,
            ms(&h, 0.5),
            ms(&h, 0.99),
            h.max() as f64 / 1000.0,
            if ok { "yes" } else { "no" }
        );
        if ok {
            best = best.max(shards);
        }
        drop((c, channels));
        t.stop().await;
    }
    println!(
        "target: >= 100 shards at full quota with p99 < 50 ms and no throttling: {best} shards -> {}",
        if best >= 100 { "MET" } else { "MISSED" }
    );
}

async fn clients(endpoint: &str, n: usize) -> Vec<StreamBrokerClient<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(client(endpoint).await);
    }
    v
}

/// Produces `rate` records/s of 1 KiB over 8 shards, each stamped with its
/// send time, and measures when a SubscribeShard subscriber receives it.
async fn e2e(args: &Args, rate: u64) {
    let t = target(args, false).await;
    let mut c = client(&t.endpoint).await;
    let shards = 8u32;
    create(&mut c, "e2e", shards).await;
    let origin = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let mut subscribers = Vec::new();
    for s in 0..shards {
        let mut c = client(&t.endpoint).await;
        let request = move |position: pb::IteratorType, seq: Option<u64>| pb::SubscribeShardRequest {
            stream_name: "e2e".into(),
            shard_id: format!("shardId-{s:012}"),
            starting_position: position as i32,
            starting_sequence_number: seq,
            timestamp_ms: None,
        };
        let mut sub = c.subscribe_shard(request(pb::IteratorType::Latest, None)).await.expect("subscribe").into_inner();
        let (received, arrived) = (received.clone(), arrived.clone());
        subscribers.push(tokio::spawn(async move {
            let mut h = hist();
            while let Some(Ok(ev)) = sub.next().await {
                let now = origin.elapsed().as_micros() as u64;
                let n = ev.records.len() as u64;
                for r in ev.records {
                    let sent = u64::from_le_bytes(r.data[..8].try_into().expect("stamp"));
                    h.record(now.saturating_sub(sent).max(1)).expect("latency");
                }
                received.fetch_add(n, Ordering::SeqCst);
                arrived.notify_one();
                if ev.resubscribe {
                    // The call reached its lifetime (runs longer than 5 minutes): continue where it ended.
                    let at = Some(ev.continuation_sequence_number);
                    sub = c
                        .subscribe_shard(request(pb::IteratorType::AtSequenceNumber, at))
                        .await
                        .expect("resubscribe")
                        .into_inner();
                }
            }
            h
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_tick = (rate / 100).max(1) as usize; // every 10 ms
    let keys: Vec<String> = (0..shards).map(|s| key_for(s, shards)).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let mut producers = clients(&t.endpoint, 4).await;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut i = 0usize;
    while Instant::now() < deadline {
        tick.tick().await;
        let stamp = (origin.elapsed().as_micros() as u64).to_le_bytes();
        let mut data = vec![b'e'; 1024];
        data[..8].copy_from_slice(&stamp);
        let data = Bytes::from(data);
        let records: Vec<_> = (0..per_tick)
            .map(|j| pb::PutRecordsEntry {
                partition_key: "e".into(),
                data: data.clone(),
                explicit_hash_key: Some(keys[(i + j) % keys.len()].clone()),
            })
            .collect();
        for chunk in records.chunks(500) {
            let mut c = producers[i % producers.len()].clone();
            let req = pb::PutRecordsRequest { stream_name: "e2e".into(), records: chunk.to_vec() };
            in_flight.spawn(async move { c.put_records(req).await.expect("put").into_inner().failed_record_count });
            i += 1;
        }
        sent += per_tick as u64;
    }
    while let Some(r) = in_flight.join_next().await {
        assert_eq!(r.expect("put task"), 0);
    }
    producers.clear();
    // Wait (bounded) until the subscribers have every record, then end them by deleting the stream.
    let give_up = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::SeqCst) < sent && Instant::now() < give_up {
        let _ = tokio::time::timeout(Duration::from_secs(1), arrived.notified()).await;
    }
    c.delete_stream(pb::DeleteStreamRequest { stream_name: "e2e".into() }).await.expect("delete");
    let mut h = hist();
    for s in subscribers {
        h.add(s.await.expect("subscriber")).expect("merge");
    }
    println!(
        "# produce-to-subscriber latency at {rate} records/s of 1 KiB over 8 shards ({} s, {sent} sent, {} received)",
        args.seconds,
        h.len()
    );
    println!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(&h, 0.5),
        ms(&h, 0.99),
        ms(&h, 0.999),
        h.max() as f64 / 1000.0
    );
    println!(
        "target: p99 < 10 ms at half the maximum throughput -> {}",
        if ms(&h, 0.99) < 10.0 { "MET" } else { "MISSED" }
    );
    drop(c);
    t.stop().await;
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "stream-bench on {} cores; hot page cache; broker {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.broker.as_deref().unwrap_or("in-process")
    );
    match &args.what {
        What::Produce => {
            produce_matrix(&args).await;
        }
        What::Scale { shards } => scale(&args, shards).await,
        What::E2e { rate } => e2e(&args, *rate).await,
        What::Groups { rounds } => groups(&args, *rounds).await,
        What::Overload { shards } => overload(&args, *shards).await,
        What::Reshard { rounds } => reshard::run(&args, *rounds).await,
        What::All => {
            let max_1k = produce_matrix(&args).await;
            scale(&args, &[25, 50, 100, 150, 200]).await;
            e2e(&args, (max_1k / 2.0) as u64).await;
            groups(&args, 20).await;
        }
    }
    Ok(())
}

/// Consumer groups through `client::Consumer::run` (poll, handle, commit),
/// as applications run them: drain throughput with 1, 2 and 4 members on 8
/// shards, then what a rebalance costs. Only first deliveries count as
/// throughput; redeliveries are reported apart.
async fn groups(args: &Args, rounds: u32) {
    let t = target(args, false).await;
    let mut c = client(&t.endpoint).await;
    let shards = 8u32;
    let per_shard = 25_000u64;
    create(&mut c, "groups", shards).await;
    let data = Bytes::from(vec![b'g'; 1024]);
    for s in 0..shards {
        let key = key_for(s, shards);
        for _ in 0..per_shard / 500 {
            let records = (0..500)
                .map(|_| pb::PutRecordsEntry {
                    partition_key: "g".into(),
                    data: data.clone(),
                    explicit_hash_key: Some(key.clone()),
                })
                .collect();
            c.put_records(pb::PutRecordsRequest { stream_name: "groups".into(), records }).await.expect("fill");
        }
    }
    let total = per_shard * u64::from(shards);
    println!("# consumer groups: drain {total} records of 1 KiB on {shards} shards with Consumer::run (batch 1000)");
    println!("{:>8} {:>12} {:>9} {:>13}", "members", "records/s", "MB/s", "redelivered");
    for members in [1u32, 2, 4] {
        let group = format!("g{members}");
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::<(String, u64)>::new()));
        let (first, again) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for m in 0..members {
            let config = client::ConsumerConfig {
                batch_size: 1000,
                poll_wait: Duration::from_millis(200),
                client_id: format!("bench-{m}"),
                ..client::ConsumerConfig::new(group.clone())
            };
            let consumer = client::Consumer::join(&t.endpoint, "groups", config).await.expect("join");
            let (seen, first, again) = (seen.clone(), first.clone(), again.clone());
            tasks.push(tokio::spawn(consumer.run(
                move |records: Vec<client::Record>| {
                    let mut s = seen.lock().expect("seen");
                    for r in records {
                        if s.insert((r.shard_id, r.sequence_number)) {
                            first.fetch_add(1, Ordering::Relaxed);
                        } else {
                            again.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::future::ready(Ok(()))
                },
                |_, _| std::future::ready(Ok(())),
                stop.clone(),
            )));
        }
        while first.load(Ordering::Relaxed) < total {
            assert!(started.elapsed() < Duration::from_secs(300), "the group did not drain the stream");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        stop.cancel();
        for task in tasks {
            task.await.expect("member").expect("member ran without error");
        }
        println!(
            "{:>8} {:>12.0} {:>9.1} {:>13}",
            members,
            total as f64 / secs,
            total as f64 * 1025.0 / secs / 1e6,
            again.load(Ordering::Relaxed)
        );
    }
    drop(c);
    t.stop().await;
    rebalance_pause(args, rounds).await;
}

/// Who handled which shard when.
type Deliveries = Arc<std::sync::Mutex<Vec<(Instant, usize, String)>>>;

/// 4 members on 8 shards under continuous produce (200 records/s per
/// shard); members alternately leave gracefully and are killed (their task
/// aborted: no leave, heartbeats stop; 1 s session timeout). Measures how
/// long a moved shard waits for its new owner, and the longest gap in
/// deliveries of the shards that did not move, next to the longest gap in
/// the second before the event.
async fn rebalance_pause(args: &Args, rounds: u32) {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("dir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.groups.session_timeout_ms = 1_000;
    config.quotas.enforce = false;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let endpoint = broker.endpoint();
    let shards = 8u32;
    let mut c = client(&endpoint).await;
    create(&mut c, "rebalance", shards).await;
    let producing = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let (mut c, stop) = (c.clone(), producing.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.is_cancelled() {
                tick.tick().await;
                let records = (0..shards)
                    .map(|s| pb::PutRecordsEntry {
                        partition_key: "r".into(),
                        data: Bytes::from_static(b"rebalance"),
                        explicit_hash_key: Some(key_for(s, shards)),
                    })
                    .collect();
                c.put_records(pb::PutRecordsRequest { stream_name: "rebalance".into(), records })
                    .await
                    .expect("produce");
            }
        }
    });
    let deliveries: Deliveries = Arc::default();
    let start = |m: usize| {
        let (endpoint, deliveries) = (endpoint.clone(), deliveries.clone());
        async move {
            let config = client::ConsumerConfig {
                poll_wait: Duration::from_millis(500),
                client_id: format!("m{m}"),
                ..client::ConsumerConfig::new("r")
            };
            let consumer = client::Consumer::join(&endpoint, "rebalance", config).await.expect("join");
            let stop = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(consumer.run(
                move |records: Vec<client::Record>| {
                    if let Some(r) = records.first() {
                        deliveries.lock().expect("deliveries").push((Instant::now(), m, r.shard_id.clone()));
                    }
                    std::future::ready(Ok(()))
                },
                |_, _| std::future::ready(Ok(())),
                stop.clone(),
            ));
            (m, stop, task)
        }
    };
    let mut members = Vec::new();
    for m in 0..4 {
        members.push(start(m).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut leave_resume, mut kill_resume, mut unmoved_gap, mut baseline_gap) = (hist(), hist(), hist(), hist());
    for round in 0..rounds {
        let graceful = round % 2 == 0;
        let (victim, stop, task) = members.remove(0);
        let t0 = Instant::now();
        let owned: std::collections::BTreeMap<String, usize> = {
            let d = deliveries.lock().expect("deliveries");
            d.iter()
                .filter(|(at, _, _)| t0.duration_since(*at) < Duration::from_millis(500))
                .map(|(_, m, s)| (s.clone(), *m))
                .collect()
        };
        let moved: Vec<String> = owned.iter().filter(|(_, m)| **m == victim).map(|(s, _)| s.clone()).collect();
        if graceful {
            stop.cancel();
            task.await.expect("member").expect("member left cleanly");
        } else {
            task.abort();
            let _ = task.await;
        }
        // Every moved shard delivered by its new owner.
        let resumed = loop {
            let done: Option<Vec<Instant>> = {
                let d = deliveries.lock().expect("deliveries");
                moved
                    .iter()
                    .map(|s| d.iter().find(|(at, m, sh)| *at > t0 && *m != victim && sh == s).map(|(at, _, _)| *at))
                    .collect()
            };
            if let Some(at) = done {
                break at;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "moved shards never resumed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let until = resumed.iter().max().copied().unwrap_or(t0).max(t0 + Duration::from_millis(500));
        while Instant::now() < until + Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for at in &resumed {
            let h = if graceful { &mut leave_resume } else { &mut kill_resume };
            h.record(at.duration_since(t0).as_micros().max(1) as u64).expect("resume");
        }
        let d = deliveries.lock().expect("deliveries").clone();
        let gap = |from: Instant, to: Instant, shard: &str| -> Duration {
            let mut times: Vec<Instant> = d.iter().filter(|(_, _, s)| s == shard).map(|(at, _, _)| *at).collect();
            times.retain(|at| *at <= to);
            let before = times.iter().rev().find(|at| **at <= from).copied().unwrap_or(from);
            let mut last = before;
            let mut worst = Duration::ZERO;
            for at in times.into_iter().filter(|at| *at > from) {
                worst = worst.max(at - last);
                last = at;
            }
            worst.max(to.saturating_duration_since(last))
        };
        for s in owned.keys().filter(|s| !moved.contains(s)) {
            unmoved_gap.record(gap(t0, until, s).as_micros().max(1) as u64).expect("gap");
            baseline_gap.record(gap(t0 - Duration::from_secs(1), t0, s).as_micros().max(1) as u64).expect("gap");
        }
        members.push(start(victim + 4).await);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    println!(
        "# rebalance (4 members, 8 shards, 200 records/s per shard, 1 s session timeout, {rounds} events: half leaves, half kills)"
    );
    let row = |what: &str, h: &Histogram<u64>| {
        println!("{what:<52} p50 {:>7.1} ms   max {:>7.1} ms   (n={})", ms(h, 0.5), h.max() as f64 / 1000.0, h.len());
    };
    row("moved shard resumes after a graceful leave", &leave_resume);
    row("moved shard resumes after a kill", &kill_resume);
    row("longest delivery gap of unmoved shards, event window", &unmoved_gap);
    row("longest delivery gap of unmoved shards, 1 s before", &baseline_gap);
    producing.cancel();
    producer.await.expect("producer");
    for (_, stop, task) in members {
        stop.cancel();
        task.await.expect("member").expect("member left cleanly");
    }
    drop(c);
    broker.stop().await.expect("stop");
}

/// What one paced producer saw.
struct Paced {
    accepted: u64,
    throttled: u64,
    latency: Histogram<u64>,
}

/// Puts `per_tick` records of 1 KiB (key included) into shard `s` of
/// `shards` every 100 ms until `deadline`, on its own connection, with its
/// ticks offset by `phase` (independent producers are not in step).
async fn paced_producer(
    endpoint: String,
    s: u32,
    shards: u32,
    per_tick: usize,
    phase: Duration,
    deadline: Instant,
) -> Paced {
    let mut c = client(&endpoint).await;
    let key = key_for(s, shards);
    let data = Bytes::from(vec![b'o'; 1024 - 8]);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut p = Paced { accepted: 0, throttled: 0, latency: hist() };
    while Instant::now() < deadline {
        tick.tick().await;
        let records = (0..per_tick)
            .map(|_| pb::PutRecordsEntry {
                partition_key: "pk-shard".into(),
                data: data.clone(),
                explicit_hash_key: Some(key.clone()),
            })
            .collect();
        let sent = Instant::now();
        let r = c
            .put_records(pb::PutRecordsRequest { stream_name: "overload".into(), records })
            .await
            .expect("put")
            .into_inner();
        p.latency.record(sent.elapsed().as_micros().max(1) as u64).expect("latency");
        p.throttled += u64::from(r.failed_record_count);
        p.accepted += per_tick as u64 - u64::from(r.failed_record_count);
    }
    p
}

/// Half the shards get producers at their full write quota (1000 records/s
/// of 1 KiB), the other half producers offering 3x it, quotas enforced:
/// the in-quota shards' ack latency alone and with the noisy half, each on
/// a fresh broker.
async fn overload(args: &Args, shards: u32) {
    let quiet = shards / 2;
    println!(
        "# overload: {quiet} shards at their full write quota, alone and next to {} shards offered 3x their quota; quotas enforced, {} s per phase",
        shards - quiet,
        args.seconds
    );
    println!(
        "{:>16} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14} {:>14}",
        "phase", "quiet p50", "quiet p99", "quiet max", "quiet thr", "noisy offer/s", "noisy acc/s", "noisy p99 ms"
    );
    let mut p99 = [0.0f64; 2];
    for (phase, noisy) in [(0, false), (1, true)] {
        let t = target(args, true).await;
        let mut c = client(&t.endpoint).await;
        create(&mut c, "overload", shards).await;
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let spread = |s: u32| Duration::from_micros(100_000 * u64::from(s) / u64::from(shards));
        let quiet_tasks: Vec<_> = (0..quiet)
            .map(|s| tokio::spawn(paced_producer(t.endpoint.clone(), s, shards, 100, spread(s), deadline)))
            .collect();
        let noisy_tasks: Vec<_> = if noisy {
            (quiet..shards)
                .map(|s| tokio::spawn(paced_producer(t.endpoint.clone(), s, shards, 300, spread(s), deadline)))
                .collect()
        } else {
            Vec::new()
        };
        let started = Instant::now();
        let (mut q, mut n) = (
            Paced { accepted: 0, throttled: 0, latency: hist() },
            Paced { accepted: 0, throttled: 0, latency: hist() },
        );
        for (tasks, into) in [(quiet_tasks, &mut q), (noisy_tasks, &mut n)] {
            for task in tasks {
                let p = task.await.expect("producer");
                into.accepted += p.accepted;
                into.throttled += p.throttled;
                into.latency.add(p.latency).expect("merge");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        p99[phase] = ms(&q.latency, 0.99);
        println!(
            "{:>16} {:>10.2} {:>10.2} {:>10.2} {:>10} {:>14.0} {:>14.0} {:>14.2}",
            if noisy { "with noisy half" } else { "alone" },
            ms(&q.latency, 0.5),
            ms(&q.latency, 0.99),
            q.latency.max() as f64 / 1000.0,
            q.throttled,
            (n.accepted + n.throttled) as f64 / secs,
            n.accepted as f64 / secs,
            if noisy { ms(&n.latency, 0.99) } else { 0.0 }
        );
        drop(c);
        t.stop().await;
    }
    let ratio = p99[1] / p99[0];
    println!(
        "target: in-quota p99 with the noisy half < 1.5x alone: {:.2} ms vs {:.2} ms = {ratio:.2}x -> {}",
        p99[1],
        p99[0],
        if ratio < 1.5 { "MET" } else { "MISSED" }
    );
}
