//! Power loss as mean as a disk: random appends, group commits, rolls and
//! retention, then a crash that keeps a random subset of the unsynced 4 KiB
//! pages (out of order, see `SimIo::crash`), then reopen.
//!
//! After every crash: opening never refuses and finds no damage (a power
//! loss only loses unsynced bytes, which is never damage); every record
//! whose `sync` returned `Ok` is present, in place and in order; records
//! after the durable point are present only as a gap-free prefix of what
//! was appended, continuing the sequence.

use std::sync::Arc;

use proptest::prelude::*;
use shardlog::io::SimIo;
use shardlog::{Config, RecordRef, ShardLog};

#[derive(Debug, Clone)]
enum Op {
    Append { records: u64, data_len: usize },
    Sync,
    Publish,
    Trim,
    Crash { seed: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (1u64..6, 1usize..3000).prop_map(|(records, data_len)| Op::Append { records, data_len }),
        3 => Just(Op::Sync),
        1 => Just(Op::Publish),
        1 => Just(Op::Trim),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

fn config(background_seal: bool) -> Config {
    Config {
        background_seal,
        segment_bytes_max: 64 * 1024,
        segment_age_max_ms: 40,
        index_interval_bytes: 512,
        write_buffer_bytes: 4096,
        ..Config::default()
    }
}

fn data_of(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq.wrapping_mul(2_654_435_761) as usize ^ i) as u8).collect()
}

fn open(io: &SimIo, background_seal: bool) -> ShardLog {
    let log = ShardLog::open_with_io("/shard", config(background_seal), Arc::new(io.clone()))
        .expect("open never refuses after power loss");
    let report = log.recovery_report();
    assert!(report.damage.is_empty() && report.read_only.is_none(), "power loss is not damage: {report:?}");
    log
}

/// With `background_seal` off, rolled segments stay unsynced (and torn by
/// a crash) until the next `sync`; on, seal threads race the crashes.
fn run(ops: Vec<Op>, background_seal: bool) {
    let io = SimIo::new();
    let open = |io: &SimIo| open(io, background_seal);
    let mut log = open(&io);
    // Data length of every appended record, by sequence number.
    let mut written: Vec<usize> = Vec::new();
    let mut acked = 0u64;
    let mut clock = 1_000u64;
    for op in ops {
        match op {
            Op::Append { records, data_len } => {
                clock += 7;
                let seq0 = log.next_seq();
                assert_eq!(seq0, written.len() as u64);
                let data: Vec<Vec<u8>> = (seq0..seq0 + records).map(|s| data_of(s, data_len)).collect();
                let recs: Vec<RecordRef<'_>> =
                    data.iter().map(|d| RecordRef { partition_key: b"key", data: d }).collect();
                log.append(clock, &recs).expect("append");
                written.extend(std::iter::repeat_n(data_len, records as usize));
                acked = acked.max(log.durable_next_seq());
            }
            Op::Sync => {
                log.sync().expect("sync");
                acked = log.durable_next_seq();
                assert_eq!(acked, written.len() as u64);
            }
            Op::Publish => log.publish().expect("publish"),
            Op::Trim => {
                log.trim_before(clock.saturating_sub(100)).expect("trim");
                acked = acked.max(log.durable_next_seq());
            }
            Op::Crash { seed } => {
                let first = log.first_seq();
                drop(log);
                io.crash(Some(seed));
                log = open(&io);
                let recovered = log.next_seq();
                assert!(
                    (acked..=written.len() as u64).contains(&recovered),
                    "recovered end {recovered}: acknowledged {acked}, written {}",
                    written.len()
                );
                assert_eq!(log.first_seq(), first, "retention deletes are durable and never undone");
                let mut from = log.first_seq();
                while from < recovered {
                    let got = log.read(from, 10_000, usize::MAX).expect("every recovered record reads back");
                    assert!(!got.records.is_empty(), "progress at {from}");
                    for r in &got.records {
                        assert_eq!(r.seq, from, "in order, no gap");
                        assert_eq!(r.data, data_of(r.seq, written[r.seq as usize]), "seq {} in place", r.seq);
                        from += 1;
                    }
                }
                log.verify().expect("a recovered log has no damage");
                written.truncate(recovered as usize);
                acked = recovered;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn power_loss_never_refuses_and_keeps_every_acknowledged_record(
        ops in prop::collection::vec(op(), 1..150),
        background_seal in any::<bool>(),
    ) {
        run(ops, background_seal);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// The long run: `cargo test -p shardlog --release --test power_loss -- --ignored`.
    #[test]
    #[ignore = "long run"]
    fn power_loss_long(ops in prop::collection::vec(op(), 1..400), background_seal in any::<bool>()) {
        run(ops, background_seal);
    }
}
