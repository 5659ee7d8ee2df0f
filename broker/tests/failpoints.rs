//! Failpoints of the real `stream-broker` binary (built with the
//! `failpoints` feature) under load on `powerfs`. For each failpoint and
//! each action:
//! - `panic`: the process aborts (the failpoint build makes every panic
//!   abort); power is cut; the restarted broker must serve every
//!   acknowledged record.
//! - `return` (an injected I/O error): the shard must refuse further writes
//!   rather than acknowledge anything it could not make durable; then
//!   `kill -9`, power loss, restart, check.
//! - `sleep` (a delay): load goes on; then `kill -9`, power loss, restart,
//!   check.
//!
//! The check is the history checker's: every acknowledged record present
//! once, at its sequence number, in order per key; and the broker starts.
//! Retention is reached through `broker::clock::offset_ms`, a failpoint
//! that sets the binary's clock ahead: a broker started a day later deletes
//! the segments of the day before.
//!
//! Run with `cargo test -p broker --features failpoints --test failpoints`.

mod common;
mod powerloss;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use powerfs::LossMode;
use powerloss::*;
use proto::v1 as pb;
use proto::v1::consumer_groups_client::ConsumerGroupsClient;

/// The record-path failpoints, and after how many evaluations each fires
/// (rolls are rarer than appends). A roll creates the next segment on the
/// append path (`roll::after_create`: file created, header not written);
/// the sealed segment's fdatasync and directory fsync
/// (`seal::before_fsync`) and its index files (`seal::before_indexes`) run
/// on the log's seal thread.
const RECORD_PATH: &[(&str, u32)] = &[
    ("shardlog::append::before", 20),
    ("shardlog::sync::after_write_before_fsync", 20),
    ("shardlog::roll::after_create", 2),
    ("shardlog::seal::before_fsync", 2),
    ("shardlog::seal::before_indexes", 2),
    ("broker::shard::after_fsync_before_ack", 20),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Panic,
    Error,
    Delay,
}

impl Action {
    /// The `fail` crate's action string, firing after `after` evaluations.
    fn spec(self, after: u32) -> String {
        match self {
            Action::Panic => format!("{after}*off->panic"),
            Action::Error => format!("{after}*off->return"),
            Action::Delay => format!("{after}*off->sleep(20)"),
        }
    }
}

/// True if a put to every shard of `stream` fails (the shard refuses writes).
async fn writes_refused(endpoint: &str, stream: &str) -> bool {
    let mut c = connect(endpoint).await;
    let records = (0..32)
        .map(|i| pb::PutRecordsEntry {
            partition_key: format!("probe-{i}"),
            data: vec![1].into(),
            explicit_hash_key: None,
        })
        .collect();
    match c.put_records(pb::PutRecordsRequest { stream_name: stream.into(), records }).await {
        Err(_) => true,
        Ok(r) => r.into_inner().records.iter().any(|e| !e.error_code.is_empty()),
    }
}

/// A day and an hour: past the shortest retention (24 h).
const DAY_AND_AN_HOUR_MS: u64 = 25 * 3_600_000;

/// The failpoint that sets the broker's clock `days` × 25 h ahead.
fn clock_ahead(days: u64) -> String {
    format!("broker::clock::offset_ms=return({})", days * DAY_AND_AN_HOUR_MS)
}

/// One failpoint, one action, under load; returns the acknowledged count.
/// With `retention`, the stream first gets a second of records, and the
/// failpoint run happens a day later, while retention deletes them.
async fn run_case(name: &str, after: u32, action: Action, retention: bool) -> usize {
    let case = format!("{name} {action:?}");
    let (fs, dir) = mount_with_data();
    let b = start_broker(&dir, &[]);
    let mut c = connect(&b.endpoint).await;
    create_stream(&mut c, "s", 2).await;
    drop(c);
    let old = if retention {
        produce_until(&b.endpoint, "s", 4, 300, "old", Instant::now() + Duration::from_secs(1)).await
    } else {
        Vec::new()
    };
    b.kill9();
    // The stream (and its old records) have existed for a while: durable.
    sync_tree(&dir);

    let clock = clock_ahead(u64::from(retention));
    let spec = format!("{clock};{name}={}", action.spec(after));
    let mut b = start_broker(&dir, &[("FAILPOINTS", &spec)]);
    let endpoint = b.endpoint.clone();
    // A panic ends the load by killing the broker; the others run for a second.
    let load_for = if action == Action::Panic { Duration::from_secs(60) } else { Duration::from_secs(1) };
    let acked = produce_until(&endpoint, "s", 4, 300, &case, Instant::now() + load_for).await;
    match action {
        Action::Panic => {
            let status = b.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("{case}: never fired"));
            assert_eq!(status.signal(), Some(6), "{case}: the panic aborts the broker: {status}");
        }
        // A failed retention delete refuses nothing; any other injected I/O
        // error must stop the shard from acknowledging more.
        Action::Error if !retention => {
            assert!(
                writes_refused(&endpoint, "s").await,
                "{case}: after an injected I/O error the shard refuses writes"
            );
        }
        Action::Error | Action::Delay => {}
    }
    drop(b);
    fs.power_loss(LossMode::DropUnsynced);

    let mut b = start_broker(&dir, &[("FAILPOINTS", &clock)]);
    let (mut c, _) = first_answer(&mut b, "s").await;
    let all: Vec<Acked> = old.iter().chain(&acked).cloned().collect();
    // With retention, check until the restarted janitor has deleted the
    // day-old records (a power loss may have undone the first deletes).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = read_all_racing_retention(&mut c, "s").await;
        let (r, expired) = check_after_retention(&all, &acked, &read, &case);
        assert!(r.is_clean() && r.duplicates_within_stream == 0, "{case}: after a power loss:\n{r}");
        if !retention {
            assert_eq!(expired, 0, "{case}: nothing may expire without a day passing");
            break;
        }
        if expired > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{case}: retention removed none of the day-old records in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_path_failpoints_keep_every_acknowledged_record() {
    let cases = RECORD_PATH.iter().map(|&(name, after)| (name, after, false));
    for (name, after, retention) in cases.chain([("shardlog::retention::after_unlink", 1, true)]) {
        for action in [Action::Panic, Action::Error, Action::Delay] {
            let acked = run_case(name, after, action, retention).await;
            println!("{name} {action:?}: {acked} acknowledged records, all present after a power loss");
        }
    }
}

/// Power losses while retention deletes segments: each round starts the
/// broker a day and an hour later than the one before, so the janitor
/// (every 20 ms) deletes the previous rounds' segments while producers
/// write; power is cut at a random moment. Records written under the
/// current clock must all be there; older ones may have expired, but only
/// as a prefix of their shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_during_retention_keeps_every_unexpired_record() {
    const ROUNDS: u64 = 10;
    let started = Instant::now();
    let (fs, dir) = mount_with_data();
    let b = start_broker(&dir, &[]);
    let mut c = connect(&b.endpoint).await;
    create_stream(&mut c, "s", 2).await;
    drop(c);
    b.kill9();
    sync_tree(&dir);
    let mut rng = Rng(0x5eed_0004);
    let mut acked: Vec<Acked> = Vec::new();
    let (mut expired, mut dir_reverts) = (0, 0);
    for day in 1..=ROUNDS {
        let clock = clock_ahead(day);
        let env = [("FAILPOINTS", clock.as_str()), ("STREAM_BROKER_RETENTION__CHECK_INTERVAL_MS", "20")];
        let b = start_broker(&dir, &env);
        let endpoint = b.endpoint.clone();
        let tag = format!("day{day}");
        let producers = tokio::spawn(async move {
            produce_until(&endpoint, "s", 4, 300, &tag, Instant::now() + Duration::from_secs(3600)).await
        });
        // Waiting is the point here: the cut must land at an arbitrary moment.
        tokio::time::sleep(Duration::from_millis(50 + rng.below(350))).await;
        let loss = if day % 2 == 0 { LossMode::KeepRandomPages { seed: rng.0 } } else { LossMode::DropUnsynced };
        b.kill9();
        dir_reverts += usize::from(fs.power_loss(loss).dirs_reverted > 0);
        let fresh = producers.await.expect("producers");
        acked.extend(fresh.iter().cloned());

        let mut b = start_broker(&dir, &env);
        let (mut c, _) = first_answer(&mut b, "s").await;
        let read = read_all_racing_retention(&mut c, "s").await;
        let (r, gone) = check_after_retention(&acked, &fresh, &read, &format!("day {day}"));
        assert!(r.is_clean() && r.duplicates_within_stream == 0, "day {day} ({loss:?}):\n{r}");
        expired = gone;
        b.kill9();
    }
    println!(
        "power loss during retention: {ROUNDS} power losses in {:.1} s; {} acknowledged records, {expired} expired by \
         retention, none lost; {dir_reverts} cuts undid a directory change",
        started.elapsed().as_secs_f64(),
        acked.len()
    );
    assert!(expired > 0, "retention removed nothing: the clock failpoint did not move the broker's time");
}

/// The checkpoint failpoints: commits under a failpoint, then a power
/// loss; the checkpoint must be at least the last acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_failpoints_keep_every_acknowledged_commit() {
    for name in ["broker::group::checkpoint::before_flush", "broker::group::checkpoint::after_flush"] {
        for action in [Action::Panic, Action::Error, Action::Delay] {
            let case = format!("{name} {action:?}");
            let (fs, dir) = mount_with_data();
            let b = start_broker(&dir, &[]);
            let mut c = connect(&b.endpoint).await;
            create_stream(&mut c, "g", 1).await;
            let records = (0..100)
                .map(|i| pb::PutRecordsEntry {
                    partition_key: "k".into(),
                    data: vec![i].into(),
                    explicit_hash_key: None,
                })
                .collect();
            c.put_records(pb::PutRecordsRequest { stream_name: "g".into(), records }).await.expect("put");
            drop(c);
            b.kill9();
            sync_tree(&dir);

            let spec = format!("{name}={}", action.spec(3));
            let mut b = start_broker(&dir, &[("FAILPOINTS", &spec)]);
            let channel = tonic::transport::Channel::from_shared(b.endpoint.clone()).expect("uri");
            let mut g = ConsumerGroupsClient::new(channel.connect().await.expect("connect"));
            let start = Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None });
            let joined = g
                .join_group(pb::JoinGroupRequest {
                    stream_name: "g".into(),
                    group_name: "grp".into(),
                    start,
                    client_id: "c".into(),
                })
                .await
                .expect("join")
                .into_inner();
            let lease = joined.assignment.expect("assignment").leases.remove(0);
            // Commits may cover only delivered records: take them all first.
            let polled = g
                .poll(pb::PollRequest {
                    stream_name: "g".into(),
                    group_name: "grp".into(),
                    member_id: joined.member_id.clone(),
                    shards: vec![pb::ShardPosition {
                        shard_id: lease.shard_id.clone(),
                        lease_epoch: lease.lease_epoch,
                        next_sequence_number: None,
                    }],
                    max_records: 100,
                    wait_ms: 0,
                })
                .await
                .expect("poll")
                .into_inner();
            assert_eq!(polled.shards[0].records.len(), 100, "{case}: the poll delivers every record");
            let mut last_acked = None;
            let mut refused = false;
            for seq in 0..100u64 {
                let commit = g
                    .commit(pb::CommitRequest {
                        stream_name: "g".into(),
                        group_name: "grp".into(),
                        member_id: joined.member_id.clone(),
                        checkpoints: vec![pb::ShardCheckpoint {
                            shard_id: lease.shard_id.clone(),
                            sequence_number: seq,
                            lease_epoch: lease.lease_epoch,
                        }],
                    })
                    .await;
                match commit.map(|r| r.into_inner().results.remove(0)) {
                    Ok(r) if r.error_kind.is_empty() => last_acked = Some(seq),
                    Ok(r) => panic!("{case}: commit of {seq} refused: {}", r.error_message),
                    Err(_) => {
                        refused = true;
                        break;
                    }
                }
            }
            match action {
                Action::Panic => {
                    let status = b.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("{case}: never fired"));
                    assert_eq!(status.signal(), Some(6), "{case}: the panic aborts the broker: {status}");
                }
                Action::Error => assert!(refused, "{case}: an injected error fails the commit"),
                Action::Delay => assert!(!refused, "{case}: a delay fails nothing"),
            }
            drop(b);
            fs.power_loss(LossMode::DropUnsynced);

            let b = start_broker(&dir, &[]);
            let channel = tonic::transport::Channel::from_shared(b.endpoint.clone()).expect("uri");
            let mut g = ConsumerGroupsClient::new(channel.connect().await.expect("connect"));
            let d =
                g.describe_group(pb::DescribeGroupRequest { stream_name: "g".into(), group_name: "grp".into() }).await;
            if let Some(last) = last_acked {
                let d = d.unwrap_or_else(|e| panic!("{case}: group gone after commit of {last} was acknowledged: {e}"));
                let shard = &d.into_inner().group.expect("group").shards[0];
                assert!(
                    shard.has_checkpoint && shard.checkpoint > last,
                    "{case}: acknowledged commit of {last} came back as checkpoint {} (has_checkpoint {})",
                    shard.checkpoint,
                    shard.has_checkpoint
                );
            }
            println!("{case}: last acknowledged commit {last_acked:?} kept after a power loss");
        }
    }
}
