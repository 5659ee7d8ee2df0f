//! Fault injection through the I/O seam. For every position of a failing
//! write (torn or not) or sync, including those inside a segment roll: the
//! failing batch is never reported durable, the log refuses all later
//! writes, and reopening on a healthy disk recovers every batch that was
//! acknowledged (synced) before, in order, as a prefix of what was appended.

use std::sync::Arc;

use shardlog::io::{FaultKind, FaultyIo, Io, SimIo, StdIo};
use shardlog::{Config, Error, RecordRef, ShardLog};

fn config() -> Config {
    // Small segments and buffers so that rolls (index writes, segment
    // creation, directory syncs) fall among the failure points.
    Config { segment_bytes_max: 64 * 1024, index_interval_bytes: 256, write_buffer_bytes: 2048, ..Config::default() }
}

fn data_of(seq: u64) -> Vec<u8> {
    vec![(seq % 251) as u8; 700 + (seq % 13) as usize]
}

struct Outcome {
    acked: u64,
    appended: u64,
}

/// Appends and syncs batches of 4 until an injected fault stops the log.
fn run_until_fault(io: Arc<dyn Io>, dir: &str, faulty: &FaultyIo, kind: FaultKind, after: u64, torn: bool) -> Outcome {
    let mut log = ShardLog::open_with_io(dir, config(), io).expect("open");
    faulty.fail_after(kind, after, torn);
    let mut acked = 0;
    for _ in 0..400 {
        let seq0 = log.next_seq();
        let data: Vec<Vec<u8>> = (seq0..seq0 + 4).map(data_of).collect();
        let recs: Vec<RecordRef<'_>> = data.iter().map(|d| RecordRef { partition_key: b"key", data: d }).collect();
        let step = log.append(1_000, &recs).and_then(|_| log.sync());
        match step {
            Ok(()) => acked = log.durable_next_seq(),
            Err(e) => {
                assert!(faulty.triggered(), "only injected faults may fail: {e}");
                assert!(log.poisoned().is_some(), "a failed write or sync poisons the log");
                let again = log.append(1_000, &recs[..1]);
                assert!(matches!(again, Err(Error::Poisoned { .. })), "after poisoning: {again:?}");
                assert!(matches!(log.sync(), Err(Error::Poisoned { .. })));
                assert_eq!(log.durable_next_seq(), acked, "nothing more became durable");
                return Outcome { acked, appended: log.next_seq() };
            }
        }
    }
    panic!("fault {kind:?} after {after} never fired");
}

fn check_recovered(log: &ShardLog, o: &Outcome) {
    let recovered = log.next_seq();
    assert!(recovered >= o.acked, "lost acknowledged records: recovered {recovered} < acked {}", o.acked);
    assert!(recovered <= o.appended, "recovered {recovered} records, only {} were appended", o.appended);
    let mut from = 0;
    while from < recovered {
        let got = log.read(from, 10_000, usize::MAX).expect("read");
        for r in &got.records {
            assert_eq!(r.seq, from);
            assert_eq!(r.data, data_of(r.seq), "seq {}", r.seq);
            from += 1;
        }
    }
    log.verify().expect("recovered log is clean");
}

#[test]
fn every_failing_write_or_sync_on_a_real_disk_keeps_acknowledged_batches() {
    for kind in [FaultKind::Write, FaultKind::Sync] {
        for torn in [false, true] {
            if kind == FaultKind::Sync && torn {
                continue;
            }
            for after in 0..60 {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().to_str().expect("utf-8 temp path");
                let faulty = FaultyIo::new(Arc::new(StdIo));
                let o = run_until_fault(Arc::new(faulty.clone()), path, &faulty, kind, after, torn);
                // The page cache may still hold unsynced bytes; those may come back.
                let log = ShardLog::open(dir.path(), config()).expect("reopen on a healthy disk");
                check_recovered(&log, &o);
            }
        }
    }
}

#[test]
fn every_failing_write_or_sync_followed_by_power_loss_keeps_acknowledged_batches() {
    for kind in [FaultKind::Write, FaultKind::Sync] {
        for after in 0..60 {
            for seed in [None, Some(after * 7 + 1)] {
                let sim = SimIo::new();
                let faulty = FaultyIo::new(Arc::new(sim.clone()));
                let o = run_until_fault(Arc::new(faulty.clone()), "/shard", &faulty, kind, after, true);
                sim.crash(seed);
                let log =
                    ShardLog::open_with_io("/shard", config(), Arc::new(sim.clone())).expect("reopen after power loss");
                check_recovered(&log, &o);
                drop(log);
                let log = ShardLog::open_with_io("/shard", config(), Arc::new(sim)).expect("second reopen");
                assert_eq!(log.recovery_report().truncated_bytes, 0, "recovery is idempotent");
            }
        }
    }
}
