//! `disk-full-bench`: how long after space is freed the broker accepts a
//! write again, on a tmpfs this program mounts (it needs root; it stops
//! with that reason otherwise).
//!
//! Two paths, `--rounds` times each, against an in-process broker with
//! `durability = always`:
//! - **watermark**: the disk is filled to below the free-space watermark, a
//!   write is refused with `DiskFull`, the ballast is removed, and a client
//!   retries a 1 KiB PutRecord every millisecond until one is accepted. The
//!   time is dominated by `storage.free_space_check_interval_ms` (the next
//!   measurement resumes writes). Round `i` frees the space `i / rounds` of
//!   an interval after the refusal, so the rounds cover every phase of the
//!   broker's measurement cycle evenly, as freed space arrives in practice.
//! - **enospc**: the watermark is off and the disk filled to its last byte,
//!   so a write meets real ENOSPC and fails its shard (DiskFull); then the
//!   same retry loop. The time adds the shard's reopen (recovery re-run).
//!
//! ```text
//! cargo build --release -p benches --bin disk-full-bench
//! sudo ./target/release/disk-full-bench --rounds 20
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use clap::Parser;
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(about = "Time from disk space freed to the first accepted write")]
struct Args {
    /// Measurements per path.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// The broker's free-space check period (its default is 250 ms).
    #[arg(long, default_value_t = 250)]
    check_interval_ms: u64,
}

/// A tmpfs mounted for the run, unmounted on drop.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(&mnt)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { mnt, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Fills the filesystem of `ballast` until `leave` bytes are free (0: to the last byte).
fn fill(ballast: &Path, leave: u64) {
    let free = free_bytes(ballast.parent().expect("parent"));
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(ballast).expect("ballast");
    if free > leave + MIB {
        let at = f.metadata().expect("stat").len();
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), at, free - leave - MIB).expect("fallocate");
    }
    if leave > 0 {
        return;
    }
    for chunk in [4096usize, 1] {
        let buf = vec![0u8; chunk];
        while f.write(&buf).is_ok_and(|n| n > 0) {}
    }
}

async fn client(endpoint: &str) -> StreamBrokerClient<Channel> {
    StreamBrokerClient::new(Channel::from_shared(endpoint.to_string()).expect("uri").connect().await.expect("connect"))
}

/// One 1 KiB PutRecord: Ok, or the error kind.
async fn put(c: &mut StreamBrokerClient<Channel>) -> Result<(), String> {
    let r = c
        .put_record(pb::PutRecordRequest {
            stream_name: "d".into(),
            partition_key: "k".into(),
            data: vec![7u8; 1024].into(),
            explicit_hash_key: None,
        })
        .await;
    r.map(|_| ()).map_err(|s| s.metadata().get("x-error-kind").and_then(|v| v.to_str().ok()).unwrap_or("").to_string())
}

/// Retries every millisecond until a write is refused for lack of space.
async fn until_refused(c: &mut StreamBrokerClient<Channel>) {
    let started = Instant::now();
    loop {
        match put(c).await {
            Err(kind) if kind == "DiskFull" => return,
            Err(kind) => panic!("unexpected refusal {kind:?}"),
            Ok(()) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(60), "writes were never refused");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits `delay`, frees the ballast and times until a write is accepted,
/// retrying every millisecond.
async fn time_to_resume(c: &mut StreamBrokerClient<Channel>, ballast: &Path, delay: Duration) -> Duration {
    tokio::time::sleep(delay).await;
    std::fs::remove_file(ballast).expect("free the space");
    let freed = Instant::now();
    loop {
        if put(c).await.is_ok() {
            return freed.elapsed();
        }
        assert!(freed.elapsed() < Duration::from_secs(60), "writes did not resume within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn report(path: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{path:<10} rounds {:>3}  first accepted write after space freed: p50 {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        h.len(),
        ms(0.5),
        ms(0.9),
        h.max() as f64 / 1000.0
    );
}

async fn run(args: Args) -> Result<(), String> {
    let fs = Tmpfs::mount(256 * MIB)?;
    let data_dir = fs.mnt.join("data");
    let ballast = fs.mnt.join("ballast");
    let mut config = BrokerConfig { data_dir, ..BrokerConfig::default() };
    config.quotas.enforce = false;
    config.storage.min_free_bytes = 32 * MIB;
    config.storage.reserve_bytes = 8 * MIB;
    config.storage.free_space_check_interval_ms = args.check_interval_ms;
    println!(
        "disk-full-bench: tmpfs 256 MiB, watermark {} MiB, reserve {} MiB, free-space check every {} ms, {} rounds",
        config.storage.min_free_bytes / MIB,
        config.storage.reserve_bytes / MIB,
        args.check_interval_ms,
        args.rounds
    );

    let broker = TestBroker::start_with(config.clone(), Arc::new(SystemClock)).await;
    let mut c = client(&broker.endpoint()).await;
    c.create_stream(pb::CreateStreamRequest { stream_name: "d".into(), shard_count: 1, ..Default::default() })
        .await
        .map_err(|e| format!("create stream: {e}"))?;
    let mut watermark = Histogram::<u64>::new(3).expect("histogram");
    let phase = |i: u32| Duration::from_millis(args.check_interval_ms * u64::from(i) / u64::from(args.rounds));
    for i in 0..args.rounds {
        fill(&ballast, config.storage.min_free_bytes / 2);
        until_refused(&mut c).await;
        watermark.record(time_to_resume(&mut c, &ballast, phase(i)).await.as_micros() as u64).expect("record");
    }
    broker.stop().await.map_err(|e| format!("stop: {e}"))?;

    config.storage.min_free_bytes = 0;
    config.storage.reserve_bytes = 0;
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let mut c = client(&broker.endpoint()).await;
    let mut enospc = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..args.rounds {
        fill(&ballast, 0);
        until_refused(&mut c).await;
        enospc.record(time_to_resume(&mut c, &ballast, phase(i)).await.as_micros() as u64).expect("record");
    }
    broker.stop().await.map_err(|e| format!("stop: {e}"))?;
    report("watermark", &watermark);
    report("enospc", &enospc);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("disk-full-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
