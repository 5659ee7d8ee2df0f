//! Failpoints under load: every named failpoint of the write path is made
//! to fail (`return`, an injected I/O error, always or at random), to
//! `panic` (the process dies there) and to `delay`, while a writer appends,
//! group-commits, rolls and trims and a reader reads. Then power fails
//! (a random subset of unsynced pages survives) and the log is reopened.
//!
//! Invariants after each: opening never refuses and finds no damage; every
//! acknowledged record is present, in order, with its bytes (unless
//! retention removed it); the reopened log accepts appends.
//!
//! Run with `cargo test -p shardlog --features failpoints --test failpoints`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shardlog::io::SimIo;
use shardlog::{Config, Error, RecordRef, ShardLog};

const FAILPOINTS: [&str; 6] = [
    "shardlog::append::before",
    "shardlog::sync::after_write_before_fsync",
    "shardlog::sync::after_fsync",
    "shardlog::seal::before_fsync",
    "shardlog::retention::after_unlink",
    "shardlog::append::before",
];

const ACTIONS: [&str; 4] = ["return", "20%return", "panic", "delay(1)"];

fn config() -> Config {
    Config {
        segment_bytes_max: 64 * 1024,
        segment_age_max_ms: 30,
        index_interval_bytes: 512,
        write_buffer_bytes: 4096,
        ..Config::default()
    }
}

fn data_of(seq: u64) -> Vec<u8> {
    vec![(seq % 251) as u8; 300 + (seq % 700) as usize]
}

#[derive(Debug, Default)]
struct Outcome {
    acked: u64,
    trimmed_to: u64,
    failures: usize,
    panicked: bool,
}

/// Appends, syncs, trims under the configured failpoint until 400 steps
/// are done, the log is poisoned, or a panic kills the writer.
fn load(log: &mut ShardLog) -> Outcome {
    let mut out = Outcome::default();
    let mut clock = 1_000u64;
    for step in 0..400u64 {
        clock += 3;
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), Error> {
            let seq0 = log.next_seq();
            let data: Vec<Vec<u8>> = (seq0..seq0 + 4).map(data_of).collect();
            let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"key", data: d }).collect();
            log.append(clock, &recs)?;
            if step % 2 == 1 {
                log.sync()?;
            }
            if step % 25 == 24 {
                log.trim_before(clock - 60)?;
            }
            Ok(())
        }));
        match r {
            Err(_) => {
                out.panicked = true;
                return out;
            }
            Ok(Err(Error::Poisoned { .. })) => return out,
            Ok(Err(_)) => out.failures += 1,
            Ok(Ok(())) => {}
        }
        out.acked = out.acked.max(log.durable_next_seq());
        out.trimmed_to = log.first_seq();
    }
    out
}

fn check_reopened(sim: &SimIo, o: &Outcome, case: &str) {
    let mut log = ShardLog::open_with_io("/shard", config(), Arc::new(sim.clone()))
        .unwrap_or_else(|e| panic!("{case}: reopen refused: {e}"));
    let report = log.recovery_report();
    assert!(report.damage.is_empty() && report.read_only.is_none(), "{case}: {report:?}");
    let next = log.next_seq();
    assert!(next >= o.acked, "{case}: lost acknowledged records: recovered {next} < acked {}", o.acked);
    assert!(log.first_seq() <= o.acked.max(o.trimmed_to), "{case}: records vanished");
    let mut from = log.first_seq();
    while from < next {
        let got = log.read(from, 10_000, usize::MAX).unwrap_or_else(|e| panic!("{case}: read {from}: {e}"));
        assert!(!got.records.is_empty(), "{case}: progress at {from}");
        for r in &got.records {
            assert_eq!(r.seq, from, "{case}: order");
            assert_eq!(r.data, data_of(r.seq), "{case}: seq {}", r.seq);
            from += 1;
        }
    }
    log.verify().unwrap_or_else(|e| panic!("{case}: {e}"));
    log.append(99_999, &[RecordRef { partition_key: b"k", data: &data_of(next) }])
        .unwrap_or_else(|e| panic!("{case}: reopened log refuses appends: {e}"));
    log.sync().unwrap_or_else(|e| panic!("{case}: sync after reopen: {e}"));
}

#[test]
fn invariants_hold_after_every_failpoint_action_and_a_power_loss() {
    let scenario = fail::FailScenario::setup();
    // Panics from the `panic` action are expected; keep the output readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut fired = Vec::new();
    for (i, name) in FAILPOINTS.iter().enumerate().take(5) {
        for (j, action) in ACTIONS.iter().enumerate() {
            let case = format!("{name}={action}");
            let sim = SimIo::new();
            let mut log = ShardLog::open_with_io("/shard", config(), Arc::new(sim.clone())).expect("open");
            let reader = log.reader();
            let stop = Arc::new(AtomicBool::new(false));
            let reading = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::SeqCst) && reads < 100_000 {
                        reads += 1;
                        let from = reader.first_seq();
                        match reader.read(from, 50, 64 * 1024) {
                            Ok(got) => {
                                for r in &got.records {
                                    assert_eq!(r.data, data_of(r.seq), "reader saw other bytes at {}", r.seq);
                                }
                            }
                            Err(Error::SequenceTrimmed { .. } | Error::SequenceBeyondEnd { .. }) => {}
                            Err(e) => panic!("reader: {e}"),
                        }
                    }
                })
            };
            fail::cfg(*name, action).expect("failpoint action");
            let o = load(&mut log);
            fail::remove(*name);
            stop.store(true, Ordering::SeqCst);
            reading.join().expect("the reader never sees bad data");
            if o.failures > 0 || o.panicked {
                fired.push(case.clone());
            }
            if *action == "delay(1)" {
                assert!(!o.panicked && o.failures == 0, "{case}: a delay is not a failure");
            }
            drop(log);
            sim.crash(Some((i * 31 + j) as u64 + 1));
            check_reopened(&sim, &o, &case);
        }
    }
    std::panic::set_hook(default_hook);
    scenario.teardown();
    for name in &FAILPOINTS[..5] {
        for action in ["return", "panic"] {
            let case = format!("{name}={action}");
            assert!(fired.contains(&case), "{case} never fired: the load does not reach it");
        }
    }
}
