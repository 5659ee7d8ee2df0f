//! `producer-memory`: peak RSS of a producer offering 10× what the broker
//! accepts, for a minute (issue 8's producer-memory benchmark).
//!
//! The process starts an in-process broker (quotas enforced, one shard at
//! `--accepted-rate` records/s), then runs the producer in a child process
//! of its own (this binary again, with `child`), so the peak RSS it reports
//! (`VmHWM` in `/proc/self/status`) is the producer's alone. Every record
//! owns its data (no shared buffer), so buffered bytes are resident bytes.
//!
//! ```text
//! producer-memory [--duration 60] [--accepted-rate 1000] [--factor 10]
//!                 [--record-bytes 1024] [--buffer-mib 16] [--policy fail-fast|block]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use client::{Admin, Error, FullBufferPolicy, Producer, ProducerConfig};

#[derive(Debug, Clone, Parser)]
#[command(about = "Peak RSS of a producer sending faster than the broker accepts")]
struct Args {
    /// Seconds of sending.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Records per second the broker's write quota admits (one shard).
    #[arg(long, default_value_t = 1000)]
    accepted_rate: u64,
    /// The producer offers this many times the accepted rate.
    #[arg(long, default_value_t = 10)]
    factor: u64,
    /// Key + data bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// The producer's buffer_bytes_max, in MiB.
    #[arg(long, default_value_t = 16)]
    buffer_mib: usize,
    /// What send does when the buffer is full.
    #[arg(long, value_enum, default_value_t = Policy::FailFast)]
    policy: Policy,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    FailFast,
    Block,
}

#[derive(Debug, Clone, Subcommand)]
enum Role {
    /// The producer process (started by the parent).
    #[command(hide = true)]
    Child {
        /// The broker's gRPC endpoint.
        #[arg(long)]
        broker: String,
    },
}

const STREAM: &str = "memory";
/// Distinct partition keys (all on the one shard).
const KEYS: u64 = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.role.clone() {
        Some(Role::Child { broker }) => runtime.block_on(child(&args, &broker)),
        None => runtime.block_on(parent(&args)),
    }
}

/// Runs the broker and the producer process, and waits for the latter.
async fn parent(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = true;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let admin = Admin::connect(&broker.endpoint()).await?;
    let quotas = client::types::Quotas {
        write_records_per_sec: Some(args.accepted_rate),
        // Bytes never bind before records.
        write_bytes_per_sec: Some(args.accepted_rate * args.record_bytes as u64 * 2),
        ..Default::default()
    };
    admin
        .create_stream(client::types::CreateStreamRequest {
            stream_name: STREAM.into(),
            shard_count: 1,
            quota_overrides: Some(quotas),
            ..Default::default()
        })
        .await?;
    let exe = std::env::current_exe()?;
    let policy = match args.policy {
        Policy::FailFast => "fail-fast",
        Policy::Block => "block",
    };
    let mut command = std::process::Command::new(exe);
    command
        .args(["--duration", &args.duration.to_string()])
        .args(["--accepted-rate", &args.accepted_rate.to_string()])
        .args(["--factor", &args.factor.to_string()])
        .args(["--record-bytes", &args.record_bytes.to_string()])
        .args(["--buffer-mib", &args.buffer_mib.to_string()])
        .args(["--policy", policy])
        .args(["child", "--broker", &broker.endpoint()]);
    // Waiting for the child blocks a thread; the broker runs on the others.
    let status = tokio::task::spawn_blocking(move || command.status()).await??;
    broker.stop().await?;
    if !status.success() {
        return Err(format!("the producer process failed: {status}").into());
    }
    Ok(())
}

/// `VmHWM` (peak) and `VmRSS` (now) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The producer: offers `factor × accepted_rate` records/s for `duration` s.
async fn child(args: &Args, endpoint: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cap_bytes = args.buffer_mib * 1024 * 1024;
    let config = ProducerConfig {
        // The byte cap is the one under test.
        buffer_records_max: 1_000_000,
        buffer_bytes_max: cap_bytes,
        when_full: match args.policy {
            Policy::FailFast => FullBufferPolicy::FailFast,
            Policy::Block => FullBufferPolicy::Block,
        },
        // Records leave the buffer by being stored, not by running out of retries.
        max_retries: 100_000,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(Producer::connect(endpoint, STREAM, config).await?);
    let key_len = "pk-000000".len();
    let data_len = args.record_bytes.saturating_sub(key_len).max(1);
    let pool: Vec<u8> = (0..data_len + 4096).map(|i| (i * 31 % 251) as u8).collect();
    let (_, rss_before) = rss_kib();

    // Acknowledgements are awaited in order by a task of their own.
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<client::AckFuture>(1_000_000);
    let collector = tokio::spawn({
        let (acked, failed) = (acked.clone(), failed.clone());
        async move {
            while let Some(ack) = rx.recv().await {
                match ack.await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    // Samples the buffer and RSS every 100 ms.
    let peak_buffered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (producer, peak_buffered, stop) = (producer.clone(), peak_buffered.clone(), stop.clone());
        async move {
            let mut peak_rss = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                peak_buffered.fetch_max(producer.buffered().1 as u64, Ordering::Relaxed);
                peak_rss = peak_rss.max(rss_kib().1);
            }
            peak_rss
        }
    });

    let offered_rate = args.accepted_rate * args.factor;
    let per_tick = offered_rate / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut offered, mut accepted, mut refused) = (0u64, 0u64, 0u64);
    let mut blocked = Duration::ZERO;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let key = format!("pk-{:06}", offered % KEYS);
            let at = (offered as usize * 7) % 4096;
            // Each record owns its bytes, as a real payload would.
            let data = Bytes::copy_from_slice(&pool[at..at + data_len]);
            offered += 1;
            let t = Instant::now();
            match producer.send(key, data).await {
                Ok(ack) => {
                    accepted += 1;
                    let _ = tx.send(ack).await;
                }
                Err(Error::BufferFull { .. }) => refused += 1,
                Err(e) => return Err(e.into()),
            }
            blocked += t.elapsed();
        }
    }
    let sending = started.elapsed();
    let (hwm_sending, _) = rss_kib();
    let buffered_at_end = producer.buffered();
    stop.store(true, Ordering::Relaxed);
    let peak_rss_sampled = sampler.await?;
    drop(tx);
    collector.abort();

    let policy = match args.policy {
        Policy::FailFast => "fail-fast",
        Policy::Block => "block",
    };
    println!(
        "# producer memory: 1 shard accepting {} records/s; offered {} records/s of {} B for {:.1} s; policy {policy}",
        args.accepted_rate,
        offered_rate,
        key_len + data_len,
        sending.as_secs_f64()
    );
    println!("buffer cap (buffer_bytes_max)   {:>10.1} MiB", cap_bytes as f64 / (1024.0 * 1024.0));
    println!("RSS before sending              {:>10.1} MiB", mib(rss_before));
    println!("peak RSS (VmHWM)                {:>10.1} MiB", mib(hwm_sending));
    println!("peak RSS minus before           {:>10.1} MiB", mib(hwm_sending.saturating_sub(rss_before)));
    println!("peak RSS sampled every 100 ms   {:>10.1} MiB", mib(peak_rss_sampled));
    println!(
        "peak buffered (sampled)         {:>10.1} MiB",
        peak_buffered.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    );
    println!("offered                         {offered:>10} records");
    println!("accepted by send                {accepted:>10} records");
    println!("refused (buffer full)           {refused:>10} records");
    println!("acknowledged by the end         {:>10} records", acked.load(Ordering::Relaxed));
    println!("failed                          {:>10} records", failed.load(Ordering::Relaxed));
    println!("still buffered at the end       {:>10} records", buffered_at_end.0);
    println!("time send spent waiting         {:>10.1} s", blocked.as_secs_f64());
    Ok(())
}
