//! `stream-bench suite`: every benchmark of the issue with fixed
//! parameters, next to the disk measured in the same run.
//!
//! The disk is measured first: sequential durable bandwidth
//! (`dd bs=1M conv=fdatasync`), `dd` without sync, and the latency of one
//! synced 4 KiB append (`pwrite` + `fdatasync` at the end of a file). Every
//! throughput is then also printed as a ratio to dd's bandwidth and every
//! latency as a ratio to the synced 4 KiB write (memory figures have no disk
//! ratio). Each row says exactly how many requests its load keeps in flight
//! and where its timestamps are taken.
//!
//! Results: a Markdown table on stdout and in `suite.md`, and `suite.json`,
//! in `--out` (default `stream-bench-suite/` in cargo's target directory).
//! Progress goes to stderr.
//!
//! Benchmarks that need the broker as a separate process (per-call CPU
//! with the broker pinned to one core, memory with idle shards, recovery
//! after `kill -9`) start the `stream-broker` binary found next to this one
//! (or `--broker-bin`); without one they start `stream-bench serve`, which
//! runs the same `broker::server::run` in its own process. `--quick` runs
//! every benchmark at a token size for CI: it checks that the output is
//! complete and well-formed, and its figures mean nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1 as pb;
use serde_json::json;
use shardlog::{Config, RecordRef, ShardLog};

use crate::{Args, Load, Pacing, bench_dir, client, create, dd_fdatasync, hist, ms, target};

/// `stream-bench suite` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct SuiteArgs {
    /// Token sizes for CI (under two minutes); the figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Directory for suite.md and suite.json (default: `stream-bench-suite/` in the target directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The broker binary for the separate-process benchmarks (default:
    /// `stream-broker` next to this binary, else `stream-bench serve`).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Run only these sections (storage, produce, e2e, scale, groups,
    /// getrecords, percall, idle, recovery, orders); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The durable 1 KiB records/s the e2e fractions are taken of, when the
    /// produce section does not run in the same suite.
    #[arg(long, default_value_t = 100_000.0)]
    e2e_max: f64,
}

/// The disk, measured in the same run.
#[derive(Debug, Clone, Copy)]
struct Disk {
    dd_sync_mb_s: f64,
    dd_nosync_mb_s: f64,
    sync4k_ms: f64,
    sync4k_p99_ms: f64,
    /// p50 of a synced 4 KiB write over blocks already written: what an
    /// append's `fdatasync` would cost without the file's metadata (size,
    /// block allocation) to write.
    overwrite4k_ms: f64,
}

/// What a row's figure is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ref {
    /// MB/s against dd conv=fdatasync.
    DdSync(f64),
    /// MB/s against dd without sync.
    DdNoSync(f64),
    /// A latency in ms against one synced 4 KiB write.
    Sync4k(f64),
    /// No disk ratio (memory, counts).
    None,
}

/// One figure of the suite.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: String,
    value: f64,
    unit: &'static str,
    reference: Ref,
    load: String,
    timestamps: String,
    target: Option<(String, bool)>,
}

impl Row {
    fn ratio(&self, d: &Disk) -> Option<(f64, &'static str)> {
        match self.reference {
            Ref::DdSync(mb) => Some((mb / d.dd_sync_mb_s, "of dd fdatasync")),
            Ref::DdNoSync(mb) => Some((mb / d.dd_nosync_mb_s, "of dd no sync")),
            Ref::Sync4k(ms) => Some((ms / d.sync4k_ms, "x synced 4 KiB write")),
            Ref::None => None,
        }
    }
}

/// Rows collected so far, with the progress display.
struct Report {
    rows: Vec<Row>,
    bar: ProgressBar,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        reference: Ref,
        load: impl Into<String>,
        timestamps: impl Into<String>,
        target: Option<(String, bool)>,
    ) {
        let row = Row {
            id: id.into(),
            name: name.into(),
            value,
            unit,
            reference,
            load: load.into(),
            timestamps: timestamps.into(),
            target,
        };
        let line = format!("  {}: {:.2} {}", row.name, row.value, row.unit);
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
        self.rows.push(row);
    }

    fn step(&self, what: &str) {
        if self.bar.is_hidden() {
            eprintln!("[{}] {what}", self.bar.position() + 1);
        }
        self.bar.set_message(what.to_string());
        self.bar.inc(1);
    }
}

/// Sizes of one run: full, or `--quick`.
struct Sizes {
    quick: bool,
    seconds: u64,
    dd_mib: u64,
    storage_mib: u64,
    storage_segment_bytes: u64,
    scale_shards: Vec<u32>,
    idle_shards: u32,
    drain_per_shard: u64,
    getrecords_records: u64,
    recovery_bytes: u64,
    order_args: Vec<&'static str>,
}

impl Sizes {
    fn new(quick: bool, seconds: u64) -> Self {
        if quick {
            Self {
                quick,
                seconds: 1,
                dd_mib: 32,
                storage_mib: 24,
                storage_segment_bytes: 4 << 20,
                scale_shards: vec![4],
                idle_shards: 20,
                drain_per_shard: 300,
                getrecords_records: 2_000,
                recovery_bytes: 4 << 20,
                order_args: vec!["--clients", "2", "--seconds", "1", "--rate", "20"],
            }
        } else {
            Self {
                quick,
                seconds,
                dd_mib: 2048,
                storage_mib: 2048,
                storage_segment_bytes: Config::default().segment_bytes_max,
                scale_shards: vec![100, 150, 200, 250],
                idle_shards: 1000,
                drain_per_shard: 50_000,
                getrecords_records: 20_000,
                recovery_bytes: 1 << 30,
                order_args: vec!["--clients", "4", "--seconds", "10", "--rate", "100"],
            }
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

pub(crate) async fn run(args: &Args, s: &SuiteArgs) {
    let sizes = Sizes::new(s.quick, args.seconds);
    let dir = bench_dir(args);
    let out = s.out.clone().unwrap_or_else(|| {
        crate::target_dir().map(|t| t.join("stream-bench-suite")).unwrap_or_else(|| PathBuf::from("stream-bench-suite"))
    });
    std::fs::create_dir_all(&out).expect("create the output directory");
    let broker_cmd = BrokerCommand::find(s.broker_bin.clone());
    let bar = ProgressBar::new(11);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    let mut r = Report { rows: Vec::new(), bar };
    let started = Instant::now();

    r.step("disk");
    let disk = measure_disk(&dir, &sizes);
    r.bar.println(format!(
        "disk: dd conv=fdatasync {:.0} MB/s, dd no sync {:.0} MB/s, synced 4 KiB append p50 {:.3} ms p99 {:.3} ms, synced 4 KiB overwrite p50 {:.3} ms",
        disk.dd_sync_mb_s, disk.dd_nosync_mb_s, disk.sync4k_ms, disk.sync4k_p99_ms, disk.overwrite4k_ms
    ));

    let run = |section: &str| s.only.is_empty() || s.only.iter().any(|o| o == section);
    if run("storage") {
        r.step("storage (shardlog appends)");
        storage(&mut r, &dir, &sizes, &disk).await;
    }
    let mut mode = String::from("(not measured: no in-process section ran)");
    if run("produce") {
        r.step("durable produce matrix");
        mode = produce(&mut r, args, &sizes).await;
    }
    let measured_1k = r
        .rows
        .iter()
        .filter(|row| row.id.starts_with("produce.1024B.") && row.id.ends_with(".records_per_sec"))
        .map(|row| row.value)
        .fold(0.0, f64::max);
    let max_1k = if measured_1k > 0.0 { measured_1k } else { s.e2e_max };
    if run("e2e") {
        r.step("produce -> subscriber latency");
        e2e(&mut r, args, &sizes, max_1k).await;
    }
    if run("scale") {
        r.step("full-quota shard scale");
        scale(&mut r, args, &sizes).await;
    }
    if run("groups") {
        r.step("consumer group drain");
        drain(&mut r, args, &sizes).await;
    }
    if run("getrecords") {
        r.step("GetRecords read rate");
        getrecords(&mut r, args, &sizes).await;
    }
    if run("percall") {
        r.step("per-call cost (broker process pinned to one core)");
        per_call(&mut r, &dir, &sizes, &broker_cmd).await;
    }
    if run("idle") {
        r.step("idle shards memory (broker process)");
        idle(&mut r, &dir, &sizes, &broker_cmd).await;
    }
    if run("recovery") {
        r.step("recovery after kill -9 (broker process)");
        recovery(&mut r, &dir, &sizes, &broker_cmd).await;
    }
    if run("orders") {
        r.step("order pipeline");
        orders(&mut r, &dir, &sizes);
    }
    r.bar.finish_and_clear();

    let elapsed = started.elapsed().as_secs_f64();
    let md = markdown(&r.rows, &disk, &sizes, &mode, &broker_cmd, elapsed);
    print!("{md}");
    std::fs::write(out.join("suite.md"), &md).expect("write suite.md");
    let js = to_json(&r.rows, &disk, &sizes, &mode, &broker_cmd, elapsed);
    std::fs::write(out.join("suite.json"), serde_json::to_string_pretty(&js).expect("JSON")).expect("write suite.json");
    eprintln!("suite: {} and {}", out.join("suite.md").display(), out.join("suite.json").display());
}

fn measure_disk(dir: &Path, sizes: &Sizes) -> Disk {
    let dd_sync_mb_s = dd_fdatasync(dir, sizes.dd_mib);
    let dd_nosync_mb_s = dd_nosync(dir, sizes.dd_mib);
    let n = if sizes.quick { 20 } else { 300 };
    let (p50, p99) = sync4k(dir, n, false);
    let (overwrite4k_ms, _) = sync4k(dir, n, true);
    Disk { dd_sync_mb_s, dd_nosync_mb_s, sync4k_ms: p50, sync4k_p99_ms: p99, overwrite4k_ms }
}

/// MB/s of `dd if=/dev/zero bs=1M count=N` (no sync: the page cache).
fn dd_nosync(dir: &Path, mib: u64) -> f64 {
    let file = dir.join("stream-bench-dd-nosync.tmp");
    let started = Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", file.display()), "bs=1M", &format!("count={mib}")])
        .stderr(Stdio::null())
        .status()
        .expect("run dd");
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "dd failed");
    // Write the dirty pages back outside the next measurement.
    let _ = Command::new("sync").status();
    (mib * 1024 * 1024) as f64 / secs / 1e6
}

/// p50 and p99 in ms of one 4 KiB write followed by `fdatasync`: appended
/// at the end of the file, or with `overwrite` over blocks written and
/// synced before (the file's size and block map do not change).
fn sync4k(dir: &Path, n: usize, overwrite: bool) -> (f64, f64) {
    use std::io::{Seek, Write};
    let path = dir.join("stream-bench-sync4k.tmp");
    let mut f = std::fs::File::create(&path).expect("create the 4 KiB sync file");
    let buf = [7u8; 4096];
    if overwrite {
        f.write_all(&vec![0u8; n * buf.len()]).expect("write the blocks to overwrite");
        f.sync_all().expect("fsync");
        f.rewind().expect("rewind");
    }
    let mut h = hist();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&buf).expect("write 4 KiB");
        f.sync_data().expect("fdatasync");
        h.record(t.elapsed().as_micros().max(1) as u64).expect("latency");
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    (ms(&h, 0.5), ms(&h, 0.99))
}

/// shardlog alone: batches of 500 records of 1 KiB (+ 9-byte key), no
/// sync, then `sync()` after every batch; per-append latency split into
/// appends that rolled a segment and the others.
async fn storage(r: &mut Report, dir: &Path, sizes: &Sizes, disk: &Disk) {
    let total = sizes.storage_mib << 20;
    let segment = sizes.storage_segment_bytes;
    let dir = dir.to_path_buf();
    let runs = tokio::task::spawn_blocking(move || {
        [false, true].map(|sync| storage_run(&dir, total, segment, sync).expect("storage run"))
    })
    .await
    .expect("storage task");
    let load = "batches of 500 x (1 KiB data + 9 B key), one writer; `publish()` about every MiB without sync";
    for (sync, s) in [false, true].into_iter().zip(runs) {
        let (tag, what, reference) = if sync {
            ("sync_per_batch", "sync() per batch", Ref::DdSync(s.mb_per_sec))
        } else {
            ("no_sync", "no sync", Ref::DdNoSync(s.mb_per_sec))
        };
        let ts = "Instant around each append (and its sync()); the run from the first append to the last";
        let load =
            if sync { "batches of 500 x (1 KiB + 9 B key), `sync()` (fdatasync) after every batch" } else { load };
        let bar = if sync { 0.8 } else { 0.7 };
        let dd = if sync { disk.dd_sync_mb_s } else { disk.dd_nosync_mb_s };
        r.add(
            format!("storage.{tag}.mb_per_sec"),
            format!("shardlog append 1 KiB x500, {what}"),
            s.mb_per_sec,
            "MB/s",
            reference,
            load,
            ts,
            Some((
                format!(">= {:.0}% of dd{}", bar * 100.0, if sync { " conv=fdatasync" } else { " without sync" }),
                s.mb_per_sec >= bar * dd,
            )),
        );
        let (across, between) = (ms(&s.all, 0.999), ms(&s.between, 0.999));
        r.add(
            format!("storage.{tag}.p999_all_ms"),
            format!("shardlog append {what}: p999 latency across rolls ({} rolls)", s.rolls),
            across,
            "ms",
            Ref::Sync4k(across),
            load,
            ts,
            Some(("<= 2x the p999 between rolls".into(), across <= 2.0 * between)),
        );
        r.add(
            format!("storage.{tag}.p999_between_ms"),
            format!("shardlog append {what}: p999 latency between rolls"),
            between,
            "ms",
            Ref::Sync4k(between),
            load,
            ts,
            None,
        );
        r.add(
            format!("storage.{tag}.roll_max_ms"),
            format!("shardlog append {what}: slowest append that rolled a segment"),
            s.roll_max_ms,
            "ms",
            Ref::Sync4k(s.roll_max_ms),
            load,
            ts,
            None,
        );
    }
}

struct StorageRun {
    mb_per_sec: f64,
    all: Histogram<u64>,
    between: Histogram<u64>,
    rolls: u64,
    roll_max_ms: f64,
}

fn storage_run(base: &Path, total: u64, segment: u64, sync: bool) -> shardlog::Result<StorageRun> {
    let scratch = tempfile::tempdir_in(base).expect("scratch dir");
    let set = benches::RecordSet::new(4_000, 1024);
    let batches = set.batches(500);
    let config = Config { segment_bytes_max: segment, ..Config::default() };
    let mut log = ShardLog::open(scratch.path().join("shard"), config)?;
    let (mut all, mut between) = (hist(), hist());
    let (mut written, mut since_publish, mut rolls, mut roll_max) = (0u64, 0u64, 0u64, 0u64);
    let mut segments = log.segments();
    let started = Instant::now();
    let mut i = 0;
    while written < total {
        let batch: &[RecordRef<'_>] = &batches[i % batches.len()];
        i += 1;
        let t = Instant::now();
        log.append(benches::BENCH_TIMESTAMP_MS, batch)?;
        if sync {
            log.sync()?;
        }
        let us = t.elapsed().as_micros().max(1) as u64;
        let bytes = (batch.len() * set.record_bytes()) as u64;
        written += bytes;
        since_publish += bytes;
        if !sync && since_publish >= 1 << 20 {
            log.publish()?;
            since_publish = 0;
        }
        all.record(us).expect("latency");
        let now = log.segments();
        if now != segments {
            segments = now;
            rolls += 1;
            roll_max = roll_max.max(us);
        } else {
            between.record(us).expect("latency");
        }
    }
    log.publish()?;
    let secs = started.elapsed().as_secs_f64();
    log.close()?;
    Ok(StorageRun {
        mb_per_sec: written as f64 / secs / 1e6,
        all,
        between,
        rolls,
        roll_max_ms: roll_max as f64 / 1000.0,
    })
}

async fn produce(r: &mut Report, args: &Args, sizes: &Sizes) -> String {
    let t = target(args, false).await;
    let mut c = client(&t.endpoint).await;
    let mut mode = String::new();
    for (n, (size, shards, load)) in crate::produce_loads().into_iter().enumerate() {
        let stream = format!("suite-produce-{n}");
        mode = create(&mut c, &stream, shards).await;
        let res = crate::produce(&t.endpoint, &stream, shards, load, sizes.seconds).await;
        c.delete_stream(pb::DeleteStreamRequest { stream_name: stream }).await.expect("delete");
        let kind = if load.unary { "unary" } else { "batched" };
        let id = format!("produce.{size}B.{shards}sh.{kind}");
        let name = format!("durable produce {size} B, {shards} shard(s), {kind}");
        let ts = "send: when the request is handed to the gRPC client (after its window slot frees); ack: when its answer is read";
        r.add(
            format!("{id}.records_per_sec"),
            format!("{name}: records/s"),
            res.records_per_sec,
            "records/s",
            Ref::DdSync(res.mb_per_sec),
            load.describe(),
            ts,
            None,
        );
        for (q, tag) in [(0.5, "p50"), (0.99, "p99")] {
            let v = ms(&res.latency, q);
            r.add(
                format!("{id}.{tag}_ms"),
                format!("{name}: ack {tag}"),
                v,
                "ms",
                Ref::Sync4k(v),
                load.describe(),
                ts,
                None,
            );
        }
    }
    drop(c);
    t.stop().await;
    mode
}

async fn e2e(r: &mut Report, args: &Args, sizes: &Sizes, max_1k: f64) {
    let t = target(args, false).await;
    let runs = [(0.25, Pacing::Lockstep), (0.5, Pacing::Lockstep), (0.25, Pacing::Even), (0.5, Pacing::Even)];
    for (i, (fraction, pacing)) in runs.into_iter().enumerate() {
        let rate = ((max_1k * fraction) as u64).max(100);
        let res = crate::e2e_run(&t.endpoint, &format!("suite-e2e-{i}"), rate, 8, sizes.seconds, pacing).await;
        let (tag, shape) = match pacing {
            Pacing::Lockstep => (
                "",
                "every 10 ms all of that tick's records at once, in PutRecords of <= 500 records, over 4 connections",
            ),
            Pacing::Even => {
                (".even", "one PutRecords of min(rate / 100, 500) records at a time, evenly spaced, over 4 connections")
            }
        };
        let load = format!(
            "open loop at {rate} records/s of 1 KiB ({fraction} x the best durable 1 KiB produce rate) over 8 shards: \
             {shape}, not waiting for answers; 8 SubscribeShard calls"
        );
        let ts = "stamp written into each record immediately before its PutRecords call; received when the subscriber's task gets the event";
        let pct = (fraction * 100.0) as u32;
        let pacing_name = if tag.is_empty() { "" } else { ", evenly paced" };
        for (q, quantile, limit) in [(0.5, "p50", None), (0.99, "p99", Some(10.0)), (0.999, "p999", Some(25.0))] {
            let v = ms(&res.latency, q);
            let target = limit.filter(|_| fraction == 0.5).map(|l| (format!("< {l} ms"), v < l));
            r.add(
                format!("e2e.{pct}pct{tag}.{quantile}_ms"),
                format!("produce -> subscriber at {pct}% of max{pacing_name}: {quantile}"),
                v,
                "ms",
                Ref::Sync4k(v),
                load.clone(),
                ts,
                target,
            );
        }
        r.add(
            format!("e2e.{pct}pct{tag}.cores_busy"),
            format!("produce -> subscriber at {pct}% of max{pacing_name}: CPU cores busy on average"),
            res.cores_busy,
            "cores",
            Ref::None,
            load.clone(),
            "CPU time of the whole stream-bench process (broker, producers and subscribers when the broker is in process) from the first PutRecords to the last answer, over that wall time",
            None,
        );
        if let Some(syncs) = res.syncs {
            r.add(
                format!("e2e.{pct}pct{tag}.fsync_over_25ms"),
                format!("produce -> subscriber at {pct}% of max{pacing_name}: broker fdatasyncs over 25 ms (the disk's share)"),
                syncs.over_25ms as f64,
                "fdatasyncs",
                Ref::None,
                format!("{load}; {}", syncs.describe()),
                "the in-process broker's stream_broker_fsync_seconds histogram, from the first PutRecords until the last record arrived",
                None,
            );
        }
        let delivered = res.latency.len() as f64 / res.sent.max(1) as f64;
        r.add(
            format!("e2e.{pct}pct{tag}.delivered_ratio"),
            format!("produce -> subscriber at {pct}% of max{pacing_name}: share of records delivered"),
            delivered,
            "ratio",
            Ref::None,
            load,
            ts,
            Some(("1.0 (every record)".into(), (delivered - 1.0).abs() < 1e-9)),
        );
    }
    t.stop().await;
}

async fn scale(r: &mut Report, args: &Args, sizes: &Sizes) {
    let mut best = 0;
    for &shards in &sizes.scale_shards {
        let t = target(args, true).await;
        let s = crate::scale_step(&t.endpoint, shards, sizes.seconds).await;
        t.stop().await;
        let v = ms(&s.latency, 0.99);
        let load = format!(
            "{shards} shards x 1000 records/s of 1 KiB (a 100-record PutRecords every 100 ms per shard, at most one outstanding per shard), quotas enforced, 4 connections"
        );
        let ts = "just before each PutRecords call to its answer";
        r.add(
            format!("scale.{shards}.p99_ms"),
            format!("{shards} shards at full quota: ack p99"),
            v,
            "ms",
            Ref::Sync4k(v),
            load.clone(),
            ts,
            Some(("< 50 ms".into(), v < 50.0)),
        );
        r.add(
            format!("scale.{shards}.throttled"),
            format!("{shards} shards at full quota: records throttled"),
            s.throttled as f64,
            "records",
            Ref::None,
            load,
            ts,
            Some(("0".into(), s.throttled == 0)),
        );
        if s.ok() {
            best = best.max(shards);
        }
    }
    let goal = if sizes.quick { 1 } else { 200 };
    r.add(
        "scale.best_shards",
        "most shards at full quota with p99 < 50 ms, nothing throttled",
        f64::from(best),
        "shards",
        Ref::None,
        format!("steps of {:?} shards", sizes.scale_shards),
        "see the rows above",
        Some((format!(">= {goal}"), best >= goal)),
    );
}

async fn drain(r: &mut Report, args: &Args, sizes: &Sizes) {
    let t = target(args, false).await;
    let mut c = client(&t.endpoint).await;
    create(&mut c, "suite-groups", 8).await;
    crate::fill(&mut c, "suite-groups", 8, sizes.drain_per_shard, 1024).await;
    let total = sizes.drain_per_shard * 8;
    let d = crate::drain(&t.endpoint, "suite-groups", "suite", 4, total).await;
    drop(c);
    t.stop().await;
    let mb = d.records_per_sec * 1025.0 / 1e6;
    r.add(
        "groups.drain_4x8.records_per_sec",
        format!("group drain, 4 members on 8 shards ({total} records of 1 KiB, {} redelivered)", d.redelivered),
        d.records_per_sec,
        "records/s",
        Ref::DdSync(mb),
        "Consumer::run, poll batch 1000, commit after each handled batch; one poll outstanding per member",
        "first join to the moment the last record is first handled; redeliveries not counted",
        Some((">= 400,000 records/s".into(), d.records_per_sec >= 400_000.0)),
    );
}

async fn getrecords(r: &mut Report, args: &Args, sizes: &Sizes) {
    let t = target(args, false).await;
    let mut c = client(&t.endpoint).await;
    create(&mut c, "suite-get", 1).await;
    crate::fill(&mut c, "suite-get", 1, sizes.getrecords_records, 1024).await;
    let first = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "suite-get".into(),
            shard_id: "shardId-000000000000".into(),
            iterator_type: pb::IteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    let deadline = Instant::now() + Duration::from_secs(sizes.seconds.max(1));
    let (mut bytes, mut calls) = (0u64, 0u64);
    let started = Instant::now();
    let mut it = first.clone();
    while Instant::now() < deadline {
        let resp = c
            .get_records(pb::GetRecordsRequest { shard_iterator: it.clone(), limit: 10_000 })
            .await
            .expect("get records")
            .into_inner();
        bytes += resp.records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).sum::<u64>();
        calls += 1;
        it = if resp.records.is_empty() || resp.millis_behind_latest == 0 && resp.records.len() < 10_000 {
            first.clone()
        } else {
            resp.next_shard_iterator
        };
    }
    let mb = bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(c);
    t.stop().await;
    r.add(
        "getrecords.mb_per_sec",
        format!("GetRecords of up to 10,000 records of 1 KiB, hot page cache ({calls} calls)"),
        mb,
        "MB/s",
        Ref::DdSync(mb),
        "one GetRecords outstanding, limit 10,000, re-reading a shard of the records from the trim horizon",
        "from the first call to the last answer; MB of keys + data",
        Some((">= 500 MB/s".into(), mb >= 500.0)),
    );
}

/// How to start a broker process.
#[derive(Debug, Clone)]
struct BrokerCommand {
    program: PathBuf,
    /// Arguments before the broker's own flags (`serve` for the fallback).
    prefix: Vec<String>,
    describe: String,
}

impl BrokerCommand {
    fn find(explicit: Option<PathBuf>) -> Self {
        let me = std::env::current_exe().expect("this executable");
        let sibling = me.with_file_name("stream-broker");
        match explicit.or_else(|| sibling.is_file().then_some(sibling)) {
            Some(bin) => Self { describe: format!("{}", bin.display()), program: bin, prefix: Vec::new() },
            None => Self {
                describe: "stream-bench serve (no stream-broker binary next to stream-bench; same broker::server::run)"
                    .into(),
                program: me,
                prefix: vec!["serve".into()],
            },
        }
    }
}

/// A broker process, killed on drop.
struct BrokerProcess {
    child: Child,
    endpoint: String,
    /// `host:port` of its framed produce listener.
    wire_addr: Option<String>,
}

impl BrokerProcess {
    fn start(cmd: &BrokerCommand, data_dir: &Path, cpu: Option<&str>, env: &[(&str, &str)]) -> Self {
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(&cmd.program);
                c
            }
            None => Command::new(&cmd.program),
        };
        command
            .args(&cmd.prefix)
            .args(["--data-dir", data_dir.to_str().expect("utf-8 path")])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--kinesis-addr", "127.0.0.1:0"])
            .args(["--wire-addr", "127.0.0.1:0"])
            .env("STREAM_BROKER_QUOTAS__ENFORCE", "false")
            .env("STREAM_BROKER_LIMITS__MAX_SHARDS_PER_STREAM", "4096")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn the broker process");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let grpc = line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect("grpc address printed");
        let wire_addr = line.split_whitespace().find_map(|w| w.strip_prefix("wire=")).map(str::to_string);
        Self { endpoint: format!("http://{grpc}"), wire_addr, child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used, all threads.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc/pid/stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5), counted from the state field (3).
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        ticks as f64 / 100.0
    }

    /// A `/proc/<pid>/status` field's value (the first number).
    fn status(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/pid/status");
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or_else(|| panic!("{field} in /proc/pid/status"))
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins every thread of this process to `cpus` (taskset -a -p).
fn pin_self(cpus: &str) {
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset").args(["-a", "-c", "-p", cpus, &pid]).stdout(Stdio::null()).status();
    assert!(ok.is_ok_and(|s| s.success()), "taskset -a -c -p {cpus} {pid}");
}

async fn per_call(r: &mut Report, dir: &Path, sizes: &Sizes, cmd: &BrokerCommand) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scratch = tempfile::tempdir_in(dir).expect("scratch");
    let pinned = cpus >= 2;
    let broker = BrokerProcess::start(cmd, scratch.path(), pinned.then_some("0"), &[]);
    if pinned {
        pin_self("1");
    }
    let mut c = client(&broker.endpoint).await;
    create(&mut c, "percall", 1).await;
    health_floor(r, &broker, sizes, pinned, cmd).await;
    let unary = Load { size: 100, batch: 1, window: 16, connections: 4, unary: true };
    let loads = [("unary", unary), ("stream", Load { unary: false, ..unary }), ("wire", unary)];
    for (tag, load) in loads {
        let before = broker.cpu_seconds();
        let res = match tag {
            "wire" => {
                let addr = broker.wire_addr.as_deref().expect("the broker's wire listener");
                crate::wire_produce(addr, "percall", load, sizes.seconds).await
            }
            _ => crate::produce(&broker.endpoint, "percall", 1, load, sizes.seconds).await,
        };
        let cpu = broker.cpu_seconds() - before;
        let calls = res.records_per_sec * sizes.seconds as f64;
        let us_per_call = cpu * 1e6 / calls.max(1.0);
        let (what, how) = match tag {
            "unary" => ("unary PutRecord", load.describe()),
            "stream" => ("single-record Produce stream sends", load.describe()),
            _ => (
                "unary PutRecord over the framed protocol",
                format!(
                    "PutRecord frames (wire v1, client::WireProducer); {} connection(s) x {} in flight = {} requests outstanding, exactly",
                    load.connections,
                    load.window,
                    load.connections as usize * load.window
                ),
            ),
        };
        let load_text = format!(
            "{how}; broker process {} to CPU 0, load generator {} CPU 1 ({})",
            if pinned { "pinned" } else { "NOT pinned (1 CPU)" },
            if pinned { "pinned to" } else { "sharing" },
            cmd.describe
        );
        let ts = "broker CPU: utime + stime of the broker process from /proc/<pid>/stat around the run, divided by the calls answered";
        r.add(
            format!("percall.{tag}.broker_us_per_call"),
            format!("{what}, 100 B, durable: broker CPU per call"),
            us_per_call,
            "us",
            Ref::None,
            load_text.clone(),
            ts,
            Some(("<= 8 us".into(), us_per_call <= 8.0)),
        );
        r.add(
            format!("percall.{tag}.records_per_sec"),
            format!("{what}, 100 B, durable, broker on one core: records/s"),
            res.records_per_sec,
            "records/s",
            Ref::DdSync(res.mb_per_sec),
            load_text,
            "send: when the request is handed to the client library; ack: when its answer is read",
            Some((">= 90,000 records/s".into(), res.records_per_sec >= 90_000.0)),
        );
    }
    drop(c);
    if pinned {
        pin_self(&format!("0-{}", cpus - 1));
    }
    drop(broker);
}

/// The same load of gRPC health checks: a unary call that does no work,
/// writes nothing and (being open to load balancers) skips authentication,
/// so its broker CPU is what the transport alone (HTTP/2, tonic, the
/// listener) costs per call: the floor under PutRecord's.
async fn health_floor(r: &mut Report, broker: &BrokerProcess, sizes: &Sizes, pinned: bool, cmd: &BrokerCommand) {
    let (connections, window) = (4, 16);
    let before = broker.cpu_seconds();
    let calls_per_sec = crate::health_checks(&broker.endpoint, connections, window, sizes.seconds).await;
    let cpu = broker.cpu_seconds() - before;
    let us_per_call = cpu * 1e6 / (calls_per_sec * sizes.seconds as f64).max(1.0);
    let load = format!(
        "unary grpc.health.v1.Health/Check; {connections} connection(s) x {window} in flight = {} requests outstanding, exactly; broker process {} ({})",
        connections as usize * window,
        if pinned { "pinned to CPU 0, load generator pinned to CPU 1" } else { "NOT pinned (1 CPU)" },
        cmd.describe
    );
    r.add(
        "percall.health.broker_us_per_call",
        "gRPC health check (no work, nothing written): broker CPU per call, the transport's floor",
        us_per_call,
        "us",
        Ref::None,
        load,
        "broker CPU: utime + stime of the broker process from /proc/<pid>/stat around the run, divided by the calls answered",
        None,
    );
}

async fn idle(r: &mut Report, dir: &Path, sizes: &Sizes, cmd: &BrokerCommand) {
    let scratch = tempfile::tempdir_in(dir).expect("scratch");
    let broker = BrokerProcess::start(cmd, scratch.path(), None, &[]);
    let mut c = client(&broker.endpoint).await;
    create(&mut c, "idle", sizes.idle_shards).await;
    // Let whatever the create started settle before reading the figures.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_kib, threads, fds) = (broker.status("VmRSS:"), broker.status("Threads:"), broker.open_fds());
    drop(c);
    drop(broker);
    let shards = sizes.idle_shards;
    let load = format!("one stream of {shards} shards, created and left idle, one client connection");
    let ts = "/proc/<pid>/status (VmRSS, Threads) and /proc/<pid>/fd one second after the create returned";
    let rss = rss_kib as f64 / 1024.0;
    r.add(
        format!("idle.{shards}.rss_mib"),
        format!("broker RSS with {shards} idle shards"),
        rss,
        "MiB",
        Ref::None,
        load.clone(),
        ts,
        Some(("< 200 MiB (1,000 shards)".into(), rss < 200.0)),
    );
    r.add(
        format!("idle.{shards}.threads"),
        format!("broker threads with {shards} idle shards"),
        threads as f64,
        "threads",
        Ref::None,
        load.clone(),
        ts,
        None,
    );
    r.add(
        format!("idle.{shards}.fds"),
        format!("broker open file descriptors with {shards} idle shards"),
        fds as f64,
        "fds",
        Ref::None,
        load,
        ts,
        None,
    );
}

async fn recovery(r: &mut Report, dir: &Path, sizes: &Sizes, cmd: &BrokerCommand) {
    let scratch = tempfile::tempdir_in(dir).expect("scratch");
    let broker = BrokerProcess::start(cmd, scratch.path(), None, &[]);
    let mut c = client(&broker.endpoint).await;
    create(&mut c, "recover", 1).await;
    let records = sizes.recovery_bytes / 1024;
    crate::fill(&mut c, "recover", 1, records, 1024 - 1).await;
    drop(c);
    broker.kill9();
    let started = Instant::now();
    let broker = BrokerProcess::start(cmd, scratch.path(), None, &[]);
    let mut c = client(&broker.endpoint).await;
    let it = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "recover".into(),
            shard_id: "shardId-000000000000".into(),
            iterator_type: pb::IteratorType::Latest as i32,
            ..Default::default()
        })
        .await
        .expect("iterator after restart")
        .into_inner()
        .shard_iterator;
    c.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 1 }).await.expect("read after restart");
    let secs = started.elapsed().as_secs_f64();
    let d = c
        .describe_stream(pb::DescribeStreamRequest { stream_name: "recover".into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("stream");
    let next = d.shards[0].next_sequence_number;
    assert_eq!(next, records, "every acknowledged record is there after kill -9");
    drop(c);
    drop(broker);
    let mib = sizes.recovery_bytes >> 20;
    let v = secs * 1000.0;
    r.add(
        format!("recovery.{mib}mib.restart_ms"),
        format!("restart after kill -9 of a broker with one shard of {mib} MiB, to the first answered read"),
        v,
        "ms",
        Ref::Sync4k(v),
        format!("{records} records of 1 KiB put with PutRecords of 500 (durable), then SIGKILL"),
        "from spawning the broker again to the answer of a GetRecords on the shard",
        None,
    );
}

fn orders(r: &mut Report, dir: &Path, sizes: &Sizes) {
    let me = std::env::current_exe().expect("this executable");
    let bin = me.with_file_name("order-bench");
    let out = Command::new(&bin)
        .args(&sizes.order_args)
        .env("TMPDIR", dir)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(out.status.success(), "order-bench failed: {}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("create-to-email-file latency")).expect("order-bench latency line");
    let num = |label: &str| -> f64 {
        let at = line.find(label).unwrap_or_else(|| panic!("{label} in {line:?}")) + label.len();
        line[at..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{label} in {line}"))
    };
    let load = format!("order-bench {} (embedded broker, durable acks, every consumer)", sizes.order_args.join(" "));
    let ts = "start of each POST /order to the moment its `New cake order` email file is seen (2 ms polling)";
    for (tag, label) in [("p50", "p50 "), ("p99", "p99 ")] {
        let v = num(label);
        r.add(
            format!("orders.{tag}_ms"),
            format!("order create -> email file {tag}"),
            v,
            "ms",
            Ref::Sync4k(v),
            load.clone(),
            ts,
            None,
        );
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn markdown(rows: &[Row], d: &Disk, sizes: &Sizes, mode: &str, cmd: &BrokerCommand, secs: f64) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# stream-bench suite{}\n\n",
        if sizes.quick { " --quick (token sizes: the figures mean nothing)" } else { "" }
    ));
    s.push_str(&format!(
        "{} cores; in-process broker durability: {mode}; broker process: {}; {:.0} s\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd.describe,
        secs
    ));
    s.push_str(&format!(
        "Disk: dd bs=1M count={} conv=fdatasync **{:.0} MB/s**; dd without sync {:.0} MB/s; one synced 4 KiB append (write + fdatasync) p50 **{:.3} ms**, p99 {:.3} ms; one synced 4 KiB overwrite of written blocks p50 {:.3} ms\n\n",
        sizes.dd_mib, d.dd_sync_mb_s, d.dd_nosync_mb_s, d.sync4k_ms, d.sync4k_p99_ms, d.overwrite4k_ms
    ));
    s.push_str("| benchmark | figure | vs disk | target | load (in flight) | timestamps |\n");
    s.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let ratio = row.ratio(d).map_or_else(|| "n/a".to_string(), |(v, what)| format!("{v:.2} {what}"));
        let target = match &row.target {
            Some((t, ok)) if !sizes.quick => format!("{t}: **{}**", verdict(*ok)),
            Some((t, _)) => format!("{t}: (quick)"),
            None => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} {} | {} | {} | {} | {} |\n",
            row.name,
            fmt_value(row.value),
            row.unit,
            ratio,
            target,
            row.load,
            row.timestamps
        ));
    }
    s
}

fn to_json(rows: &[Row], d: &Disk, sizes: &Sizes, mode: &str, cmd: &BrokerCommand, secs: f64) -> serde_json::Value {
    json!({
        "quick": sizes.quick,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "durability": mode,
        "broker_process": cmd.describe,
        "seconds": secs,
        "disk": {
            "dd_fdatasync_mb_per_sec": d.dd_sync_mb_s,
            "dd_nosync_mb_per_sec": d.dd_nosync_mb_s,
            "sync_4k_append_p50_ms": d.sync4k_ms,
            "sync_4k_append_p99_ms": d.sync4k_p99_ms,
            "sync_4k_overwrite_p50_ms": d.overwrite4k_ms,
            "dd_mib": sizes.dd_mib,
        },
        "rows": rows.iter().map(|row| {
            let ratio = row.ratio(d);
            json!({
                "id": row.id,
                "name": row.name,
                "value": row.value,
                "unit": row.unit,
                "disk_ratio": ratio.map(|(v, _)| v),
                "disk_ratio_of": ratio.map(|(_, w)| w),
                "load": row.load,
                "timestamps": row.timestamps,
                "target": row.target.as_ref().map(|(t, _)| t),
                "met": row.target.as_ref().filter(|_| !sizes.quick).map(|(_, ok)| ok),
            })
        }).collect::<Vec<_>>(),
    })
}

/// `stream-bench serve`: the broker in this process, configured like
/// `stream-broker` (defaults, then `STREAM_BROKER_*` variables, then the
/// flags, the same three listeners); prints its addresses the way
/// `stream-broker` does.
pub(crate) async fn serve(
    data_dir: &Path,
    grpc_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    kinesis_addr: Option<std::net::SocketAddr>,
    wire_addr: Option<std::net::SocketAddr>,
) -> Result<(), Box<dyn std::error::Error>> {
    let env = std::env::vars().filter(|(k, _)| k.starts_with(broker::config::ENV_PREFIX));
    let mut config = broker::config::BrokerConfig::load(None, env)?;
    config.data_dir = data_dir.to_path_buf();
    let grpc = tokio::net::TcpListener::bind(grpc_addr).await?;
    let http = tokio::net::TcpListener::bind(http_addr).await?;
    let kinesis = match config.kinesis.enabled {
        true => Some(tokio::net::TcpListener::bind(kinesis_addr.unwrap_or(config.kinesis.addr)).await?),
        false => None,
    };
    let kinesis_bound = kinesis.as_ref().map(|k| k.local_addr()).transpose()?;
    let wire = match config.wire.enabled {
        true => Some(tokio::net::TcpListener::bind(wire_addr.unwrap_or(config.wire.addr)).await?),
        false => None,
    };
    let wire_bound = wire.as_ref().map(|w| w.local_addr()).transpose()?;
    let off = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    println!(
        "stream-broker listening grpc={} http={} kinesis={} wire={}",
        grpc.local_addr()?,
        http.local_addr()?,
        off(kinesis_bound),
        off(wire_bound)
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listeners = broker::server::Listeners { grpc, http, kinesis, wire };
    broker::server::run_with(config, Arc::new(broker::clock::SystemClock), listeners, shutdown).await?;
    Ok(())
}
