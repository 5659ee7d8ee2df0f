//! Checks the storage engine's targets against the disk, measured in the same run.
//!
//! Run with `cargo bench -p benches --bench shardlog_targets` (add
//! `-- --quick` for a smoke run with every size divided by 8). Without
//! `--bench` on the command line (as `cargo test --benches` runs it) sizes
//! are divided by 256 and the figures mean nothing.
//!
//! Targets:
//! 1. batched append of 1 KiB records, no sync: at least 70% of the MB/s of
//!    `dd if=/dev/zero bs=1M` (no sync) writing the same 2 GiB;
//! 2. batched append of 100 B records, no sync: at least 2,000,000 records/s;
//! 3. batched append of 1 KiB records with `sync()` after every batch of
//!    500: at least 70% of the MB/s of `dd ... conv=fdatasync`;
//! 4. recovery: opening a crashed shard of at least 1 GiB of sealed
//!    segments plus a torn active segment takes less than 200 ms.
//!
//! Figures are hot-cache: nothing is dropped from the page cache between
//! phases (that needs privileges a benchmark should not use), so reads hit
//! memory. Between phases `sync` writes back whatever the previous phase
//! left dirty, outside every measurement, and one unmeasured `dd` warms the
//! page cache first.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use benches::{BENCH_TIMESTAMP_MS, RecordSet, SetupResult, TornShard, scratch_dir};
use shardlog::{Config, ShardLog};

const SCRATCH: &str = env!("CARGO_TARGET_TMPDIR");
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Decimal megabyte, as `dd` prints it.
const MB: f64 = 1e6;

fn main() {
    if let Err(e) = run() {
        eprintln!("shardlog_targets failed: {e}");
        std::process::exit(1);
    }
}

/// One row of the final table.
struct Row {
    target: String,
    measured: String,
    reference: String,
    ratio: String,
    pass: bool,
}

fn run() -> SetupResult<()> {
    // `cargo bench` passes `--bench` (and any filter); everything but `--quick` is ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, scale) = if args.iter().any(|a| a == "--quick") {
        ("quick: every size / 8", 8)
    } else if args.iter().any(|a| a == "--bench") {
        ("full", 1)
    } else {
        ("test: every size / 256, not run by cargo bench; the figures mean nothing", 256)
    };
    let work = scratch_dir(SCRATCH, "shardlog-targets-")?;
    let total = 2 * GIB / scale;
    println!("shardlog targets, mode {mode}");
    println!("scratch dir {} (same filesystem as the target dir)", work.path().display());
    println!("HOT CACHE: nothing is dropped from the page cache between phases; `sync` runs between phases.");
    println!();
    let mut rows = Vec::new();

    // 1. No sync: dd versus 1 KiB records in batches of 500.
    // On this VM the first write of a few GiB runs at a fraction of the
    // speed of the next ones (guest memory is backed on first touch); one
    // unmeasured dd makes the page cache equally warm for dd and shardlog.
    settle()?;
    let warm_up = dd(&work.path().join("dd.bin"), total / MIB, false)?;
    warm_up.print("warm-up dd, no sync (not compared)");
    settle()?;
    let dd_plain = dd(&work.path().join("dd.bin"), total / MIB, false)?;
    dd_plain.print("dd, no sync");
    settle()?;
    let big = append_run(work.path(), 1024, 500, total, u64::MAX, false)?;
    big.print("shardlog 1 KiB x 500, no sync");
    let ratio = big.mb_per_s() / dd_plain.mb_per_s();
    rows.push(Row {
        target: "append 1 KiB x500, no sync >= 70% of dd".into(),
        measured: format!("{:.0} MB/s, {} rec/s", big.mb_per_s(), thousands(big.records_per_s())),
        reference: format!("dd {:.0} MB/s", dd_plain.mb_per_s()),
        ratio: format!("{:.0}% of dd", ratio * 100.0),
        pass: ratio >= 0.70,
    });

    // 2. No sync: 100 B records in batches of 500, records per second.
    settle()?;
    let small = append_run(work.path(), 100, 500, total, 20_000_000 / scale, false)?;
    small.print("shardlog 100 B x 500, no sync");
    rows.push(Row {
        target: "append 100 B x500, no sync >= 2,000,000 rec/s".into(),
        measured: format!("{} rec/s, {:.0} MB/s", thousands(small.records_per_s()), small.mb_per_s()),
        reference: "-".into(),
        ratio: format!("{:.2}x of target", small.records_per_s() / 2e6),
        pass: small.records_per_s() >= 2e6,
    });

    // 3. Sync: dd conv=fdatasync versus 1 KiB records with sync() after every batch of 500.
    settle()?;
    let dd_sync = dd(&work.path().join("dd.bin"), total / MIB, true)?;
    dd_sync.print("dd conv=fdatasync");
    settle()?;
    let durable = append_run(work.path(), 1024, 500, total, u64::MAX, true)?;
    durable.print("shardlog 1 KiB x 500, sync() per batch");
    let ratio = durable.mb_per_s() / dd_sync.mb_per_s();
    rows.push(Row {
        target: "append 1 KiB x500, sync/batch >= 70% of dd".into(),
        measured: format!("{:.0} MB/s, {} rec/s", durable.mb_per_s(), thousands(durable.records_per_s())),
        reference: format!("dd fdatasync {:.0} MB/s", dd_sync.mb_per_s()),
        ratio: format!("{:.0}% of dd", ratio * 100.0),
        pass: ratio >= 0.70,
    });

    // 4. Recovery of a crashed shard.
    settle()?;
    rows.extend(recovery(work.path(), scale)?);

    println!();
    println!("Targets ({mode}; hot cache; MB = 10^6 bytes of keys + data for shardlog, of file for dd):");
    let widths = [46, 34, 24, 16, 6];
    let line = |cells: [&str; 5]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join(" | ").trim_end());
    };
    line(["target", "measured", "disk reference", "ratio", "result"]);
    println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-|-"));
    for r in &rows {
        line([&r.target, &r.measured, &r.reference, &r.ratio, if r.pass { "PASS" } else { "MISS" }]);
    }
    let missed = rows.iter().filter(|r| !r.pass).count();
    println!();
    println!("{} of {} targets met", rows.len() - missed, rows.len());
    drop(work);
    Ok(())
}

/// Writes back dirty pages so one phase's write-back does not slow the next.
fn settle() -> SetupResult<()> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        return Err(format!("sync exited with {status}").into());
    }
    Ok(())
}

struct DdRun {
    bytes: u64,
    elapsed: Duration,
    own_summary: String,
}

impl DdRun {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.elapsed.as_secs_f64()
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: {} MiB in {:.3} s = {:.0} MB/s (dd itself: {})",
            self.bytes / MIB,
            self.elapsed.as_secs_f64(),
            self.mb_per_s(),
            self.own_summary
        );
    }
}

/// `dd if=/dev/zero of=path bs=1M count=mib [conv=fdatasync]`, timed here; the file is removed after.
fn dd(path: &Path, mib: u64, fdatasync: bool) -> SetupResult<DdRun> {
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero").arg(format!("of={}", path.display())).arg("bs=1M").arg(format!("count={mib}"));
    if fdatasync {
        cmd.arg("conv=fdatasync");
    }
    let start = Instant::now();
    let out = cmd.output()?;
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("dd failed ({}): {stderr}", out.status).into());
    }
    fs::remove_file(path)?;
    let own_summary = stderr.lines().last().unwrap_or_default().trim().to_string();
    Ok(DdRun { bytes: mib * MIB, elapsed, own_summary })
}

/// Where the time of an append run went.
#[derive(Default)]
struct AppendRun {
    records: u64,
    record_bytes: u64,
    batches: u64,
    elapsed: Duration,
    /// Appends that rolled the segment (sync of the old one, its index files, the new file).
    roll: Duration,
    rolls: u64,
    /// All other appends (encode, CRC, buffer, write calls).
    append: Duration,
    /// `publish()` or `sync()` calls, the final one included.
    publish_or_sync: Duration,
    durable: bool,
}

impl AppendRun {
    fn mb_per_s(&self) -> f64 {
        self.record_bytes as f64 / MB / self.elapsed.as_secs_f64()
    }

    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: {} records, {} bytes of keys + data in {} batches, {:.3} s = {:.0} MB/s, {} records/s",
            self.records,
            self.record_bytes,
            self.batches,
            self.elapsed.as_secs_f64(),
            self.mb_per_s(),
            thousands(self.records_per_s())
        );
        println!(
            "    time split: {:.3} s in {} appends that rolled a segment, {:.3} s in other appends, {:.3} s in {}",
            self.roll.as_secs_f64(),
            self.rolls,
            self.append.as_secs_f64(),
            self.publish_or_sync.as_secs_f64(),
            if self.durable { "sync()" } else { "publish()" }
        );
    }
}

/// Appends batches of `batch_len` records of `data_len` data bytes (plus a
/// 9-byte key) to a fresh log with the default configuration until
/// `max_bytes` of keys and data or `max_records` are reached. Without
/// `durable` it publishes every MiB and once at the end (in the timing);
/// with it, it syncs after every batch.
fn append_run(
    base: &Path,
    data_len: usize,
    batch_len: usize,
    max_bytes: u64,
    max_records: u64,
    durable: bool,
) -> SetupResult<AppendRun> {
    let set = RecordSet::new(batch_len * 16, data_len);
    let batches = set.batches(batch_len);
    let batch_bytes = (set.record_bytes() * batch_len) as u64;
    let records = (max_bytes / set.record_bytes() as u64).min(max_records);
    let n_batches = records.div_ceil(batch_len as u64);
    let dir = scratch_dir(base, "shardlog-append-")?;
    let mut log = ShardLog::open(dir.path().join("shard"), Config::default())?;
    let mut run = AppendRun { durable, ..AppendRun::default() };
    let mut segments = 1;
    let mut unpublished = 0u64;
    let start = Instant::now();
    for i in 0..n_batches as usize {
        let t0 = Instant::now();
        log.append(BENCH_TIMESTAMP_MS, &batches[i % batches.len()])?;
        let t1 = Instant::now();
        let now = log.segments();
        if now != segments {
            segments = now;
            run.rolls += 1;
            run.roll += t1 - t0;
        } else {
            run.append += t1 - t0;
        }
        unpublished += batch_bytes;
        if durable {
            log.sync()?;
            run.publish_or_sync += t1.elapsed();
        } else if unpublished >= MIB {
            log.publish()?;
            unpublished = 0;
            run.publish_or_sync += t1.elapsed();
        }
    }
    let t1 = Instant::now();
    log.publish()?;
    run.publish_or_sync += t1.elapsed();
    run.elapsed = start.elapsed();
    run.batches = n_batches;
    run.records = log.next_seq();
    run.record_bytes = run.records * set.record_bytes() as u64;
    if run.records != n_batches * batch_len as u64 {
        return Err(format!("appended {} records, expected {}", run.records, n_batches * batch_len as u64).into());
    }
    drop(log);
    drop(dir);
    Ok(run)
}

/// Builds a crashed shard, times the recovering open and a second open.
fn recovery(base: &Path, scale: u64) -> SetupResult<Vec<Row>> {
    let config = Config { segment_bytes_max: (128 * MIB / scale).max(4 * MIB), ..Config::default() };
    let build = Instant::now();
    let shard = TornShard::build(base, config.clone(), GIB / scale, 4 * MIB / scale)?;
    let build = build.elapsed();
    let torn = shard.active_torn_bytes - shard.active_synced_bytes;
    println!(
        "recovery shard (built in {:.1} s): {} sealed segments of at most {} MiB = {} bytes, active segment {} bytes synced + {} bytes of a torn batch, {} bytes in all, {} records",
        build.as_secs_f64(),
        shard.sealed_segments,
        config.segment_bytes_max / MIB,
        shard.sealed_bytes,
        shard.active_synced_bytes,
        torn,
        shard.total_bytes(),
        shard.records
    );
    settle()?;

    let start = Instant::now();
    let log = ShardLog::open(&shard.shard_dir, config.clone())?;
    let first = start.elapsed();
    let report = log.recovery_report().clone();
    let recovered = log.next_seq();
    drop(log);
    println!(
        "first open (recovers): {:.1} ms, truncated_bytes {}, segments {}, records {recovered}, at {:?}",
        ms(first),
        report.truncated_bytes,
        report.segments,
        report.truncated_at.as_ref().map(|(_, pos, reason)| format!("byte {pos}: {reason}"))
    );

    let start = Instant::now();
    let log = ShardLog::open(&shard.shard_dir, config.clone())?;
    let second = start.elapsed();
    let second_report = log.recovery_report().clone();
    drop(log);
    println!("second open: {:.1} ms, truncated_bytes {}", ms(second), second_report.truncated_bytes);

    // The same torn state again, a few times, for the spread.
    let mut again = Vec::new();
    for _ in 0..5 {
        shard.restore_torn()?;
        let start = Instant::now();
        let log = ShardLog::open(&shard.shard_dir, config.clone())?;
        again.push(start.elapsed());
        if log.recovery_report().truncated_bytes != torn {
            return Err(
                format!("re-torn open cut {} bytes, expected {torn}", log.recovery_report().truncated_bytes).into()
            );
        }
    }
    again.sort();
    println!(
        "5 more opens of the re-torn shard: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(again[0]),
        ms(again[2]),
        ms(again[4])
    );

    let size = format!("{:.2} GiB", shard.total_bytes() as f64 / GIB as f64);
    let consistent = report.truncated_bytes == torn && recovered == shard.records;
    Ok(vec![
        Row {
            target: "recovery open < 200 ms (torn tail cut)".into(),
            measured: format!("{:.1} ms, cut {} B", ms(first), report.truncated_bytes),
            reference: format!("shard {size}"),
            ratio: format!("{:.2}x of limit", ms(first) / 200.0),
            pass: ms(first) < 200.0 && consistent,
        },
        Row {
            target: "second open truncates 0 bytes".into(),
            measured: format!("{:.1} ms, cut {} B", ms(second), second_report.truncated_bytes),
            reference: format!("shard {size}"),
            ratio: "-".into(),
            pass: second_report.truncated_bytes == 0,
        },
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
