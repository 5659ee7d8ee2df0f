//! `stream-bench`: load generator for a real broker through real gRPC.
//!
//! By default it starts an in-process broker on 127.0.0.1:0 (durability
//! `always`: every acknowledgement is fdatasync'ed) over a directory on a
//! real disk: `--dir`, or `stream-bench-data/` in cargo's target directory.
//! A tmpfs or ramfs directory is refused unless `--allow-tmpfs` (an fsync
//! there costs nothing, so the figures would mean nothing). `--broker URL`
//! targets an external broker instead; its durability mode is read from
//! DescribeStream and printed with every result.
//!
//! **In-flight windows are real.** Every load generator holds a fixed
//! number of requests outstanding (`--window`): a request is sent only when
//! an earlier one was answered, so the broker's own read-ahead (pending and
//! outgoing slots of a Produce stream) never holds more. Latency runs from
//! the moment a request is handed to the gRPC client (after any wait for a
//! window slot, so client-side queueing is not counted) to the moment its
//! answer is read.
//!
//! ```text
//! stream-bench produce   durable produce matrix: 100 B / 1 KiB, 1 / 8 shards, unary and batched
//! stream-bench scale     shards at full Kinesis quota with p99 ack < 50 ms and no throttling
//! stream-bench e2e       produce-to-subscriber latency at a given rate
//! stream-bench groups    consumer-group drain throughput and rebalance pauses
//! stream-bench overload  in-quota shards' ack latency next to shards offered 3x their quota
//! stream-bench reshard   time to split a shard at full quota, produce p99 during the split vs before
//! stream-bench all       all of them; e2e at half the best 1 KiB produce rate
//! stream-bench suite     every benchmark with fixed parameters, next to the disk: Markdown + JSON
//! ```

mod reshard;
mod suite;

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
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
#[command(about = "Load generator for stream-broker")]
pub(crate) struct Args {
    /// Use this broker instead of an in-process one.
    #[arg(long, env = "STREAM_BENCH_BROKER")]
    broker: Option<String>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Directory for the in-process broker's data and the disk reference
    /// (default: `stream-bench-data/` in cargo's target directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Accept a tmpfs or ramfs data directory (fsync is free there).
    #[arg(long)]
    allow_tmpfs: bool,
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
        /// Records per second (1 KiB each) over all the shards.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Shards of the stream, one subscriber each.
        #[arg(long, default_value_t = 8)]
        shards: u32,
        /// How the producer spaces its calls.
        #[arg(long, value_enum, default_value_t = Pacing::Lockstep)]
        pacing: Pacing,
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
    /// The whole suite with fixed parameters: a Markdown table and a JSON file.
    Suite(suite::SuiteArgs),
    /// Runs a broker in this process, configured as `stream-broker` is
    /// (`STREAM_BROKER_*` variables and these flags) (the suite's fallback when no
    /// `stream-broker` binary sits next to this one).
    #[command(hide = true)]
    Serve {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// gRPC listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        grpc_addr: std::net::SocketAddr,
        /// HTTP admin listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        http_addr: std::net::SocketAddr,
        /// Kinesis API listen address (overrides `kinesis.addr`), as `stream-broker` takes it.
        #[arg(long)]
        kinesis_addr: Option<std::net::SocketAddr>,
        /// Framed produce protocol listen address (overrides `wire.addr`), as `stream-broker` takes it.
        #[arg(long)]
        wire_addr: Option<std::net::SocketAddr>,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `stream-broker` does, so that the in-process broker is measured as it runs.
    broker::allocator::configure();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// Cargo's target directory: the nearest ancestor of this executable that
/// holds cargo's `CACHEDIR.TAG`.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf)
}

/// The directory benchmarks write to, created if needed; refuses tmpfs and
/// ramfs unless `--allow-tmpfs`.
pub(crate) fn bench_dir(args: &Args) -> PathBuf {
    let dir = args.dir.clone().unwrap_or_else(|| {
        target_dir().map(|t| t.join("stream-bench-data")).unwrap_or_else(|| PathBuf::from("stream-bench-data"))
    });
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let fs = rustix::fs::statfs(&dir).unwrap_or_else(|e| panic!("statfs {}: {e}", dir.display()));
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    let kind = fs.f_type as u64;
    if (kind == TMPFS_MAGIC || kind == RAMFS_MAGIC) && !args.allow_tmpfs {
        eprintln!(
            "stream-bench: {} is on tmpfs/ramfs, where fsync costs nothing; use --dir on a real disk or pass --allow-tmpfs",
            dir.display()
        );
        std::process::exit(2);
    }
    dir
}

pub(crate) struct Target {
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
    let dir = tempfile::tempdir_in(bench_dir(args)).expect("bench data dir");
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = enforce_quotas;
    config.limits.max_shards_per_stream = 1024;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    Target { endpoint: broker.endpoint(), broker: Some(broker), _dir: Some(dir) }
}

pub(crate) async fn client(endpoint: &str) -> StreamBrokerClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connect");
    StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

/// Creates a stream and returns the broker's durability mode as it
/// describes it (`always`, `interval 50 ms`, `never`).
pub(crate) async fn create(c: &mut StreamBrokerClient<Channel>, name: &str, shards: u32) -> String {
    let d = c
        .create_stream(pb::CreateStreamRequest { stream_name: name.into(), shard_count: shards, ..Default::default() })
        .await
        .expect("create stream")
        .into_inner()
        .stream
        .expect("stream description");
    durability_name(&d)
}

fn durability_name(d: &pb::StreamDescription) -> String {
    match pb::DurabilityMode::try_from(d.durability) {
        Ok(pb::DurabilityMode::Always) => "always (fdatasync before ack)".into(),
        Ok(pb::DurabilityMode::Interval) => format!("interval {} ms (ack before fdatasync)", d.durability_interval_ms),
        Ok(pb::DurabilityMode::Never) => "never (ack before fdatasync)".into(),
        _ => format!("unknown ({})", d.durability),
    }
}

/// MB/s of `dd if=/dev/zero bs=1M count=N conv=fdatasync` into `dir`.
pub(crate) fn dd_fdatasync(dir: &Path, mib: u64) -> f64 {
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

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// An explicit hash key inside shard `s` of `n`, so each producer can aim at a shard.
pub(crate) fn key_for(s: u32, n: u32) -> String {
    let (lo, hi) = broker::routing::HashRanges::new(n).range(s);
    (lo + (hi - lo) / 2).to_string()
}

pub(crate) struct ProduceResult {
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency: Histogram<u64>,
}

/// What one produce run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Bytes of data per record (the partition key is a few bytes more).
    pub size: usize,
    /// Records per request; 1 with `unary` is a PutRecord call.
    pub batch: usize,
    /// Requests outstanding per connection, exactly.
    pub window: usize,
    /// Connections, each with its own window.
    pub connections: u32,
    /// Unary calls (PutRecord, or PutRecords for batches) instead of one Produce stream per connection.
    pub unary: bool,
}

impl Load {
    /// Where the load's timestamps are taken, for the report.
    pub fn describe(&self) -> String {
        let call = match (self.unary, self.batch) {
            (true, 1) => "unary PutRecord".to_string(),
            (true, b) => format!("unary PutRecords of {b}"),
            (false, b) => format!("Produce stream, batches of {b}"),
        };
        format!(
            "{call}; {} connection(s) x {} in flight = {} requests outstanding, exactly",
            self.connections,
            self.window,
            self.connections as usize * self.window
        )
    }
}

/// Runs `load` against `stream` (records spread over its `shards`) for `secs`.
pub(crate) async fn produce(endpoint: &str, stream: &str, shards: u32, load: Load, secs: u64) -> ProduceResult {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let keys: Arc<Vec<String>> = Arc::new((0..shards).map(|s| key_for(s, shards)).collect());
    let data = Bytes::from(vec![b'x'; load.size]);
    let mut tasks = Vec::new();
    for p in 0..load.connections {
        let (endpoint, stream, keys, data) = (endpoint.to_string(), stream.to_string(), keys.clone(), data.clone());
        let c = client(&endpoint).await;
        tasks.push(tokio::spawn(async move {
            if load.unary {
                unary_load(c, stream, keys, data, p, load, deadline).await
            } else {
                stream_load(c, stream, keys, data, p, load, deadline).await
            }
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
    ProduceResult::of(records, latency, started, load.size)
}

impl ProduceResult {
    /// `records` of `size` bytes acknowledged since `started`, with their latencies.
    fn of(records: u64, latency: Histogram<u64>, started: Instant, size: usize) -> Self {
        let secs = started.elapsed().as_secs_f64();
        Self {
            records_per_sec: records as f64 / secs,
            mb_per_sec: records as f64 * (size + 2) as f64 / secs / 1e6,
            latency,
        }
    }
}

fn entries(keys: &[String], data: &Bytes, p: u32, batch: usize, id: u64) -> Vec<pb::PutRecordsEntry> {
    (0..batch)
        .map(|i| pb::PutRecordsEntry {
            partition_key: format!("p{p}"),
            data: data.clone(),
            explicit_hash_key: Some(keys[(i + id as usize) % keys.len()].clone()),
        })
        .collect()
}

/// `load.window` tasks on each of `load.connections` [`client::WireProducer`]s
/// (framed produce protocol at `addr`), each putting one record and
/// waiting in a loop until `secs` have passed.
pub(crate) async fn wire_produce(addr: &str, stream: &str, load: Load, secs: u64) -> ProduceResult {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let data = Bytes::from(vec![b'x'; load.size]);
    let mut callers = tokio::task::JoinSet::new();
    for p in 0..load.connections {
        let producer =
            client::WireProducer::connect(addr, &client::ConnectOptions::default()).await.expect("connect (wire)");
        for _ in 0..load.window {
            let (producer, stream, data, key) = (producer.clone(), stream.to_string(), data.clone(), format!("p{p}"));
            callers.spawn(async move {
                let (mut h, mut records) = (hist(), 0u64);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    producer.put_record(&stream, &key, data.clone()).await.expect("put record (wire)");
                    h.record(sent.elapsed().as_micros().max(1) as u64).expect("record latency");
                    records += 1;
                }
                (records, h)
            });
        }
    }
    let started = Instant::now();
    let (mut records, mut latency) = (0, hist());
    while let Some(r) = callers.join_next().await {
        let (n, part) = r.expect("caller");
        records += n;
        latency.add(part).expect("merge");
    }
    ProduceResult::of(records, latency, started, load.size)
}

/// `window` tasks on each of `connections` connections, each calling the
/// gRPC health check and waiting in a loop for `secs`; returns calls/s.
pub(crate) async fn health_checks(endpoint: &str, connections: u32, window: usize, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connect");
        for _ in 0..window {
            let mut c = HealthClient::new(channel.clone());
            callers.spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    let status = c.check(HealthCheckRequest { service: String::new() }).await.expect("health check");
                    assert_eq!(status.into_inner().status, 1, "SERVING");
                    calls += 1;
                }
                calls
            });
        }
    }
    let started = Instant::now();
    let mut calls = 0;
    while let Some(n) = callers.join_next().await {
        calls += n.expect("caller");
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// `load.window` tasks on one connection, each calling and waiting in a loop.
async fn unary_load(
    c: StreamBrokerClient<Channel>,
    stream: String,
    keys: Arc<Vec<String>>,
    data: Bytes,
    p: u32,
    load: Load,
    deadline: Instant,
) -> (u64, Histogram<u64>) {
    let mut callers = tokio::task::JoinSet::new();
    for w in 0..load.window {
        let (mut c, stream, keys, data) = (c.clone(), stream.clone(), keys.clone(), data.clone());
        callers.spawn(async move {
            let mut h = hist();
            let mut records = 0u64;
            let mut id = w as u64;
            while Instant::now() < deadline {
                let mut batch = entries(&keys, &data, p, load.batch, id);
                id += load.window as u64;
                let sent = Instant::now();
                if load.batch == 1 {
                    let e = batch.pop().expect("one record");
                    let req = pb::PutRecordRequest {
                        stream_name: stream.clone(),
                        partition_key: e.partition_key,
                        data: e.data,
                        explicit_hash_key: e.explicit_hash_key,
                    };
                    c.put_record(req).await.expect("put record");
                    records += 1;
                } else {
                    let req = pb::PutRecordsRequest { stream_name: stream.clone(), records: batch };
                    let r = c.put_records(req).await.expect("put records").into_inner();
                    assert_eq!(r.failed_record_count, 0, "quotas are lifted for this benchmark");
                    records += r.records.len() as u64;
                }
                h.record(sent.elapsed().as_micros().max(1) as u64).expect("record latency");
            }
            (records, h)
        });
    }
    let (mut records, mut h) = (0, hist());
    while let Some(r) = callers.join_next().await {
        let (n, part) = r.expect("caller");
        records += n;
        h.add(part).expect("merge");
    }
    (records, h)
}

/// One Produce stream with exactly `load.window` batches unacknowledged.
async fn stream_load(
    mut c: StreamBrokerClient<Channel>,
    stream: String,
    keys: Arc<Vec<String>>,
    data: Bytes,
    p: u32,
    load: Load,
    deadline: Instant,
) -> (u64, Histogram<u64>) {
    // Room for the whole window, so a send never waits here: the send
    // time is when the request enters the gRPC stream.
    let (tx, rx) = tokio::sync::mpsc::channel(load.window);
    let mut acks = c.produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("produce").into_inner();
    let window = Arc::new(tokio::sync::Semaphore::new(load.window));
    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let sender = {
        let (sent_at, window) = (sent_at.clone(), window.clone());
        tokio::spawn(async move {
            let mut id = 0u64;
            while Instant::now() < deadline {
                let permit = window.acquire().await.expect("window semaphore");
                permit.forget(); // given back when the batch is acknowledged
                let req = pb::ProduceRequest {
                    batch_id: id,
                    batch: Some(pb::PutRecordsRequest {
                        stream_name: stream.clone(),
                        records: entries(&keys, &data, p, load.batch, id),
                    }),
                };
                sent_at.lock().expect("lock").push_back(Instant::now());
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
        h.record(sent.elapsed().as_micros().max(1) as u64).expect("record latency");
        window.add_permits(1);
        let result = ack.result.expect("batch result");
        assert_eq!(result.failed_record_count, 0, "quotas are lifted for this benchmark");
        records += result.records.len() as u64;
    }
    sender.await.expect("sender");
    (records, h)
}

/// The durable produce matrix: 100 B / 1 KiB, 1 / 8 shards, unary (one
/// record per PutRecord, 64 in flight) and batched (Produce stream, 500
/// records per batch, 8 in flight).
pub(crate) fn produce_loads() -> Vec<(usize, u32, Load)> {
    let mut v = Vec::new();
    for size in [100usize, 1024] {
        for shards in [1u32, 8] {
            v.push((size, shards, Load { size, batch: 1, window: 64, connections: 1, unary: true }));
            v.push((size, shards, Load { size, batch: 500, window: 8, connections: 1, unary: false }));
        }
    }
    v
}

async fn produce_matrix(args: &Args) -> f64 {
    let t = target(args, false).await;
    let dd = dd_fdatasync(&bench_dir(args), 1024);
    let mut c = client(&t.endpoint).await;
    println!(
        "# durable produce (group commit), {} s each; latency from hand-off to the gRPC client to the answer",
        args.seconds
    );
    println!("disk reference: dd bs=1M count=1024 conv=fdatasync = {dd:.0} MB/s");
    println!(
        "{:>6} {:>6} {:>44} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "size", "shards", "load", "records/s", "MB/s", "p50 ms", "p99 ms", "p999 ms"
    );
    let mut best_1k: f64 = 0.0;
    let mut best_100: f64 = 0.0;
    let mut mode = String::new();
    for (n, (size, shards, load)) in produce_loads().into_iter().enumerate() {
        let stream = format!("bench-produce-{n}");
        mode = create(&mut c, &stream, shards).await;
        let r = produce(&t.endpoint, &stream, shards, load, args.seconds).await;
        let what = if load.unary {
            format!("unary x{}", load.window)
        } else {
            format!("stream {}x{}", load.batch, load.window)
        };
        println!(
            "{:>6} {:>6} {:>44} {:>12.0} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
            size,
            shards,
            what,
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
    drop(c);
    t.stop().await;
    println!("broker durability: {mode}");
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
        let r = scale_step(&t.endpoint, shards, args.seconds).await;
        t.stop().await;
        println!(
            "{:>7} {:>12.0} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            shards,
            r.records_per_sec,
            r.throttled,
            ms(&r.latency, 0.5),
            ms(&r.latency, 0.99),
            r.latency.max() as f64 / 1000.0,
            if r.ok() { "yes" } else { "no" }
        );
        if r.ok() {
            best = best.max(shards);
        }
    }
    println!(
        "target: >= 200 shards at full quota with p99 < 50 ms and no throttling: {best} shards -> {}",
        if best >= 200 { "MET" } else { "MISSED" }
    );
}

/// One step of the full-quota scale benchmark.
pub(crate) struct ScaleStep {
    pub shards: u32,
    pub records_per_sec: f64,
    pub throttled: u64,
    pub latency: Histogram<u64>,
}

impl ScaleStep {
    /// p99 < 50 ms, nothing throttled, and 95% of the offered rate accepted.
    pub fn ok(&self) -> bool {
        ms(&self.latency, 0.99) < 50.0 && self.throttled == 0 && self.records_per_sec >= 950.0 * f64::from(self.shards)
    }
}

/// Every shard of a new stream `scale` gets 1000 records/s of 1 KiB (its
/// full Kinesis write quota) as a 100-record PutRecords every 100 ms, one
/// call outstanding per shard at most, the shards' ticks spread over the
/// period, over 4 connections. Latency runs from just before each call to
/// its answer.
pub(crate) async fn scale_step(endpoint: &str, shards: u32, secs: u64) -> ScaleStep {
    let mut c = client(endpoint).await;
    create(&mut c, "scale", shards).await;
    let channels: Vec<_> = clients(endpoint, 4).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
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
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_millis(100));
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
    let mut latency = hist();
    let mut n = 0;
    for t in tasks {
        let (k, th) = t.await.expect("shard producer");
        n += k;
        latency.add(th).expect("merge");
    }
    let records_per_sec = n as f64 / started.elapsed().as_secs_f64();
    c.delete_stream(pb::DeleteStreamRequest { stream_name: "scale".into() }).await.expect("delete");
    ScaleStep { shards, records_per_sec, throttled: throttled.load(Ordering::Relaxed), latency }
}

pub(crate) async fn clients(endpoint: &str, n: usize) -> Vec<StreamBrokerClient<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(client(endpoint).await);
    }
    v
}

/// What a produce-to-subscriber run saw.
pub(crate) struct E2e {
    pub sent: u64,
    pub latency: Histogram<u64>,
    /// CPU time of this whole process (the broker too when it runs in
    /// process) from the first call to the last answer, divided by that
    /// wall time: how many cores were busy on average.
    pub cores_busy: f64,
    /// The in-process broker's `fdatasync`s during the run (None with an
    /// external broker).
    pub syncs: Option<Syncs>,
}

/// The in-process broker's `fdatasync`s over a span of time, from its
/// `stream_broker_fsync_seconds` histogram: how much of a produce ->
/// subscriber latency the disk explains. Every record waits for the
/// `fdatasync` of its group commit, so one that takes 40 ms holds its
/// records for at least that long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Syncs {
    pub count: u64,
    pub over_10ms: u64,
    pub over_25ms: u64,
    pub over_50ms: u64,
    /// Upper bound of the histogram bucket the slowest one fell in, in ms
    /// (infinite above the last bucket, 10 s); 0 when there was none.
    pub slowest_le_ms: f64,
}

/// `stream_broker_fsync_seconds` of this process's metrics recorder as
/// cumulative buckets `(le in seconds, count)`, ascending; empty when this
/// process runs no broker.
fn fsync_buckets() -> Vec<(f64, u64)> {
    parse_fsync_buckets(&broker::telemetry::prometheus().render())
}

/// The `stream_broker_fsync_seconds_bucket` lines of a Prometheus page.
fn parse_fsync_buckets(page: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix("stream_broker_fsync_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

impl Syncs {
    /// What happened between two [`fsync_buckets`] readings; None when
    /// there is no histogram (an external broker).
    fn between(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<Self> {
        let at = |list: &[(f64, u64)], le: f64| list.iter().find(|(l, _)| *l == le).map_or(0, |(_, c)| *c);
        let count = after.last()?.1 - before.last().map_or(0, |b| b.1);
        let within = |le: f64| at(after, le) - at(before, le);
        let slowest_le_ms = if count == 0 {
            0.0
        } else {
            after.iter().find(|(le, _)| within(*le) == count).map_or(f64::INFINITY, |(le, _)| le * 1000.0)
        };
        Some(Self {
            count,
            over_10ms: count - within(0.01),
            over_25ms: count - within(0.025),
            over_50ms: count - within(0.05),
            slowest_le_ms,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{} fdatasync(s) of the broker, {} over 10 ms, {} over 25 ms, {} over 50 ms, the slowest at most {} ms",
            self.count, self.over_10ms, self.over_25ms, self.over_50ms, self.slowest_le_ms
        )
    }
}

/// CPU time this process has used, on all its threads.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.unsigned_abs() as u32)
}

/// How an open-loop producer spaces its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Pacing {
    /// Every 10 ms, all of that tick's records at once, in calls of at most
    /// 500: as if every producer sent at the same instant.
    Lockstep,
    /// One call at a time, evenly spaced: calls of `n = rate / 100` records
    /// (at most 500), `rate / n` times a second, as independent producers
    /// together arrive. (tokio's timer fires in 1 ms steps, so a call whose
    /// time falls between two steps leaves at the next one.)
    Even,
}

/// Produces `rate` records/s of 1 KiB over `shards` shards of a new stream
/// `name`, open loop paced as `pacing` says (over 4 connections, not
/// waiting for earlier answers), and measures when SubscribeShard
/// subscribers receive each record. The send time is written into each
/// record's first 8 bytes immediately before the PutRecords call; the
/// receive time is taken when the subscriber's task gets the event.
pub(crate) async fn e2e_run(endpoint: &str, name: &str, rate: u64, shards: u32, secs: u64, pacing: Pacing) -> E2e {
    let mut c = client(endpoint).await;
    create(&mut c, name, shards).await;
    let origin = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let mut subscribers = Vec::new();
    for s in 0..shards {
        let mut c = client(endpoint).await;
        let stream = name.to_string();
        let request = move |position: pb::IteratorType, seq: Option<u64>| pb::SubscribeShardRequest {
            stream_name: stream.clone(),
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
    let deadline = Instant::now() + Duration::from_secs(secs);
    let keys: Arc<Vec<String>> = Arc::new((0..shards).map(|s| key_for(s, shards)).collect());
    // Records per tick, records per call, and the tick period.
    let (per_tick, per_call, period) = match pacing {
        Pacing::Lockstep => ((rate / 100).max(1) as usize, 500, Duration::from_millis(10)),
        Pacing::Even => {
            let n = (rate / 100).clamp(1, 500) as usize;
            (n, n, Duration::from_secs_f64(n as f64 / rate as f64))
        }
    };
    let mut tick = tokio::time::interval(period);
    let mut sent = 0u64;
    let mut producers = clients(endpoint, 4).await;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut i = 0usize;
    // Read first: rendering the metrics page drains every histogram sample
    // recorded so far, which is not this run's CPU.
    let syncs_before = fsync_buckets();
    let (cpu_before, started) = (process_cpu(), Instant::now());
    while Instant::now() < deadline {
        tick.tick().await;
        let mut left = per_tick;
        while left > 0 {
            let n = left.min(per_call);
            left -= n;
            let (mut c, keys, stream, first) =
                (producers[i % producers.len()].clone(), keys.clone(), name.to_string(), i);
            in_flight.spawn(async move {
                let mut data = vec![b'e'; 1024];
                let template: Vec<String> = (0..n).map(|j| keys[(first + j) % keys.len()].clone()).collect();
                let stamp = (origin.elapsed().as_micros() as u64).to_le_bytes();
                data[..8].copy_from_slice(&stamp);
                let data = Bytes::from(data);
                let records = template
                    .into_iter()
                    .map(|k| pb::PutRecordsEntry {
                        partition_key: "e".into(),
                        data: data.clone(),
                        explicit_hash_key: Some(k),
                    })
                    .collect();
                let req = pb::PutRecordsRequest { stream_name: stream, records };
                c.put_records(req).await.expect("put").into_inner().failed_record_count
            });
            i += 1;
        }
        sent += per_tick as u64;
    }
    while let Some(r) = in_flight.join_next().await {
        assert_eq!(r.expect("put task"), 0);
    }
    let cores_busy = (process_cpu() - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    producers.clear();
    // Wait (bounded) until the subscribers have every record, then end them by deleting the stream.
    let give_up = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::SeqCst) < sent && Instant::now() < give_up {
        let _ = tokio::time::timeout(Duration::from_secs(1), arrived.notified()).await;
    }
    let syncs = Syncs::between(&syncs_before, &fsync_buckets());
    c.delete_stream(pb::DeleteStreamRequest { stream_name: name.into() }).await.expect("delete");
    let mut latency = hist();
    for s in subscribers {
        latency.add(s.await.expect("subscriber")).expect("merge");
    }
    E2e { sent, latency, cores_busy, syncs }
}

async fn e2e(args: &Args, rate: u64, shards: u32, pacing: Pacing) {
    let t = target(args, false).await;
    let r = e2e_run(&t.endpoint, "e2e", rate, shards, args.seconds, pacing).await;
    let h = &r.latency;
    println!(
        "# produce-to-subscriber latency at {rate} records/s of 1 KiB over {shards} shard(s), {pacing:?} pacing ({} s, {} sent, {} received)",
        args.seconds,
        r.sent,
        h.len()
    );
    println!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
    println!("CPU: {:.2} cores of this process busy on average while producing", r.cores_busy);
    match r.syncs {
        Some(s) => println!("disk: {} (until the last record arrived)", s.describe()),
        None => println!("disk: not measured (an external broker's fdatasyncs are on its /metrics)"),
    }
    println!(
        "target: p99 < 10 ms at half the maximum throughput -> {}",
        if ms(h, 0.99) < 10.0 { "MET" } else { "MISSED" }
    );
    t.stop().await;
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let What::Serve { data_dir, grpc_addr, http_addr, kinesis_addr, wire_addr } = &args.what {
        return suite::serve(data_dir, *grpc_addr, *http_addr, *kinesis_addr, *wire_addr).await;
    }
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
        What::E2e { rate, shards, pacing } => e2e(&args, *rate, *shards, *pacing).await,
        What::Groups { rounds } => groups(&args, *rounds).await,
        What::Overload { shards } => overload(&args, *shards).await,
        What::Suite(suite) => suite::run(&args, suite).await,
        What::Serve { .. } => unreachable!("served above"),
        What::Reshard { rounds } => reshard::run(&args, *rounds).await,
        What::All => {
            let max_1k = produce_matrix(&args).await;
            scale(&args, &[25, 50, 100, 150, 200]).await;
            e2e(&args, (max_1k / 2.0) as u64, 8, Pacing::Lockstep).await;
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
    fill(&mut c, "groups", shards, per_shard, 1024).await;
    let total = per_shard * u64::from(shards);
    println!("# consumer groups: drain {total} records of 1 KiB on {shards} shards with Consumer::run (batch 1000)");
    println!("{:>8} {:>12} {:>9} {:>13}", "members", "records/s", "MB/s", "redelivered");
    for members in [1u32, 2, 4] {
        let d = drain(&t.endpoint, "groups", &format!("g{members}"), members, total).await;
        println!(
            "{:>8} {:>12.0} {:>9.1} {:>13}",
            members,
            d.records_per_sec,
            d.records_per_sec * 1025.0 / 1e6,
            d.redelivered
        );
    }
    drop(c);
    t.stop().await;
    rebalance_pause(args, rounds).await;
}

/// Puts `per_shard` records of `size` bytes into each of the `shards`
/// shards of `stream`, 500 per PutRecords.
pub(crate) async fn fill(c: &mut StreamBrokerClient<Channel>, stream: &str, shards: u32, per_shard: u64, size: usize) {
    let data = Bytes::from(vec![b'g'; size]);
    for s in 0..shards {
        let key = key_for(s, shards);
        let mut left = per_shard;
        while left > 0 {
            let n = left.min(500);
            left -= n;
            let records = (0..n)
                .map(|_| pb::PutRecordsEntry {
                    partition_key: "g".into(),
                    data: data.clone(),
                    explicit_hash_key: Some(key.clone()),
                })
                .collect();
            c.put_records(pb::PutRecordsRequest { stream_name: stream.into(), records }).await.expect("fill");
        }
    }
}

/// What a group drain measured.
pub(crate) struct Drain {
    pub records_per_sec: f64,
    pub redelivered: u64,
}

/// `members` consumers of a new group drain the `total` records of
/// `stream` through `Consumer::run` (poll 1000, handle, commit); only first
/// deliveries count, from the first join to the last first delivery.
///
/// A group delivers each shard in sequence order and redelivers from a
/// checkpoint, so a record is a first delivery exactly when its sequence
/// number is above the highest one handled on its shard: the harness keeps
/// one number per shard and looks it up once per batch (a batch is one
/// shard's), instead of hashing every record into a set, which took about
/// a seventh of the CPU of the run it measured.
pub(crate) async fn drain(endpoint: &str, stream: &str, group: &str, members: u32, total: u64) -> Drain {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, Option<u64>>::new()));
    let (first, again) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for m in 0..members {
        let config = client::ConsumerConfig {
            batch_size: 1000,
            poll_wait: Duration::from_millis(200),
            client_id: format!("bench-{m}"),
            ..client::ConsumerConfig::new(group.to_string())
        };
        let consumer = client::Consumer::join(endpoint, stream, config).await.expect("join");
        let (seen, first, again) = (seen.clone(), first.clone(), again.clone());
        tasks.push(tokio::spawn(consumer.run(
            move |records: Vec<client::Record>| {
                if let Some(shard) = records.first().map(|r| r.shard_id.clone()) {
                    assert!(records.iter().all(|r| r.shard_id == shard), "a handled batch is one shard's");
                    let mut s = seen.lock().expect("seen");
                    let high = s.entry(shard).or_insert(None);
                    let (mut new, mut old) = (0, 0);
                    for r in &records {
                        if high.is_none_or(|h| r.sequence_number > h) {
                            *high = Some(r.sequence_number);
                            new += 1;
                        } else {
                            old += 1;
                        }
                    }
                    first.fetch_add(new, Ordering::Relaxed);
                    again.fetch_add(old, Ordering::Relaxed);
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
    Drain { records_per_sec: total as f64 / secs, redelivered: again.load(Ordering::Relaxed) }
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
    let dir = tempfile::tempdir_in(bench_dir(args)).expect("dir");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: [u64; 4]) -> String {
        let les = ["0.01", "0.025", "0.05", "+Inf"];
        let mut page = String::from("# TYPE stream_broker_fsync_seconds histogram\n");
        for (le, c) in les.iter().zip(counts) {
            page.push_str(&format!("stream_broker_fsync_seconds_bucket{{le=\"{le}\"}} {c}\n"));
        }
        page.push_str(&format!("stream_broker_fsync_seconds_count {}\n", counts[3]));
        page
    }

    #[test]
    fn syncs_count_what_happened_between_two_readings() {
        let before = parse_fsync_buckets(&page([5, 5, 5, 5]));
        assert_eq!(before, vec![(0.01, 5), (0.025, 5), (0.05, 5), (f64::INFINITY, 5)]);
        // 8 more: 5 within 10 ms, 2 within 25 ms, 1 above 50 ms.
        let after = parse_fsync_buckets(&page([10, 12, 12, 13]));
        let s = Syncs::between(&before, &after).expect("a histogram");
        assert_eq!((s.count, s.over_10ms, s.over_25ms, s.over_50ms), (8, 3, 1, 1));
        assert_eq!(s.slowest_le_ms, f64::INFINITY);
        // The slowest bucket is the first that holds them all.
        let s = Syncs::between(&before, &parse_fsync_buckets(&page([6, 9, 9, 9]))).expect("a histogram");
        assert_eq!((s.count, s.over_10ms, s.slowest_le_ms), (4, 3, 25.0));
        // Nothing synced, and no broker at all.
        assert_eq!(Syncs::between(&before, &before).map(|s| s.slowest_le_ms), Some(0.0));
        assert_eq!(Syncs::between(&[], &parse_fsync_buckets("no histogram here")), None);
    }
}
