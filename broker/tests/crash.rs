//! Restart and crash tests against the real `stream-broker` binary: a clean
//! stop (SIGTERM) and `kill -9` under concurrent producers. After every
//! restart each acknowledged record must be present exactly once, at its
//! acknowledged sequence number, in order; unacknowledged ones may be absent.
//!
//! `crash_loop_200_kills` is the long version (ignored by default; run it
//! with `cargo test -p broker --release --test crash -- --ignored --nocapture`);
//! both print their figures.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::Process;
use common::*;
use proto::v1 as pb;

/// Acknowledged records: (shard, sequence number) -> payload.
type Acked = HashMap<(String, u64), Vec<u8>>;

/// Puts batches from `producers` concurrent producers until `deadline`;
/// returns what was acknowledged. Errors (the broker dying) end a producer.
async fn produce_until(endpoint: &str, stream: &str, producers: usize, round: usize, deadline: Instant) -> Acked {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (endpoint, stream) = (endpoint.to_string(), stream.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Acked::new();
            let Ok(channel) = tonic::transport::Channel::from_shared(endpoint).expect("uri").connect().await else {
                return acked;
            };
            let mut c = proto::v1::stream_broker_client::StreamBrokerClient::new(channel);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let payloads: Vec<Vec<u8>> =
                    (0..10).map(|i| format!("r{round}-p{p}-n{}-{i}", n).into_bytes()).collect();
                let entries = payloads.iter().enumerate().map(|(i, d)| entry(&format!("key-{p}-{i}"), d)).collect();
                let req = pb::PutRecordsRequest { stream_name: stream.clone(), records: entries };
                // Bounded: a request the broker never answers ends the producer like an error.
                let sent = tokio::time::timeout(Duration::from_secs(20), c.put_records(req)).await;
                match sent.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 20 s"))) {
                    Ok(r) => {
                        for (e, d) in r.into_inner().records.into_iter().zip(payloads) {
                            assert!(e.error_code.is_empty(), "quotas are lifted: {}", e.error_message);
                            acked.insert((e.shard_id, e.sequence_number), d);
                        }
                    }
                    Err(_) => break,
                }
                n += 1;
            }
            acked
        }));
    }
    let mut all = Acked::new();
    for t in tasks {
        all.extend(t.await.expect("producer task"));
    }
    all
}

/// Reads every shard and checks the acknowledged records; returns the record count.
async fn verify(c: &mut Client, stream: &str, shards: u32, acked: &Acked) -> usize {
    let mut seen = 0;
    let mut found: HashMap<(String, u64), Vec<u8>> = HashMap::new();
    for s in 0..shards {
        let shard = format!("shardId-{s:012}");
        let it = iterator(c, stream, &shard, pb::IteratorType::TrimHorizon, None, None).await;
        let records = drain(c, it, 10_000).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.sequence_number, i as u64, "{shard}: dense, in order");
            let prev = found.insert((shard.clone(), r.sequence_number), r.data.to_vec());
            assert!(prev.is_none(), "{shard}: sequence {} twice", r.sequence_number);
        }
        seen += records.len();
    }
    let mut payloads: HashMap<&[u8], usize> = HashMap::new();
    for d in found.values() {
        *payloads.entry(d).or_default() += 1;
    }
    assert!(payloads.values().all(|&n| n == 1), "every payload is stored once");
    for (key, data) in acked {
        assert_eq!(found.get(key), Some(data), "acknowledged record {key:?} lost or changed");
    }
    seen
}

async fn wait_ready(endpoint: &str, stream: &str) -> (Client, Duration) {
    let started = Instant::now();
    let ready = async {
        let mut c = connect(endpoint.to_string()).await;
        c.describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() })
            .await
            .expect("describe after restart");
        c
    };
    let c = tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the broker answers within 30 s of a restart");
    (c, started.elapsed())
}

#[tokio::test]
async fn acknowledged_records_survive_clean_stop_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path());
    let mut c = connect(p.endpoint.clone()).await;
    create(&mut c, "s", 3).await;
    let acked = produce_until(&p.endpoint, "s", 2, 0, Instant::now() + Duration::from_millis(300)).await;
    assert!(!acked.is_empty());
    let status = p.terminate();
    assert!(status.success(), "clean stop exits 0: {status}");
    let p = Process::start(dir.path());
    let (mut c, _) = wait_ready(&p.endpoint, "s").await;
    assert_eq!(verify(&mut c, "s", 3, &acked).await, acked.len(), "clean stop keeps exactly what was acknowledged");
    let mut all = acked;
    all.extend(produce_until(&p.endpoint, "s", 2, 1, Instant::now() + Duration::from_millis(300)).await);
    p.kill9();
    let p = Process::start(dir.path());
    let (mut c, _) = wait_ready(&p.endpoint, "s").await;
    verify(&mut c, "s", 3, &all).await;
}

/// Kills the broker `kills` times at random moments under 4 producers on 4 shards.
async fn crash_loop(kills: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Process::start(dir.path());
    let mut c = connect(p.endpoint.clone()).await;
    create(&mut c, "s", 4).await;
    let mut acked = Acked::new();
    let mut recovery = Vec::with_capacity(kills);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for round in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(100 + rng % 400);
        let endpoint = p.endpoint.clone();
        // Kill while the producers are mid-flight: their outstanding requests are unacknowledged.
        let producers = tokio::spawn(async move {
            produce_until(&endpoint, "s", 4, round, Instant::now() + Duration::from_secs(3600)).await
        });
        tokio::time::sleep(run_for).await;
        p.kill9();
        acked.extend(producers.await.expect("producers"));
        p = Process::start(dir.path());
        let (mut c, took) = wait_ready(&p.endpoint, "s").await;
        recovery.push(took);
        tokio::time::timeout(Duration::from_secs(60), verify(&mut c, "s", 4, &acked))
            .await
            .expect("verification within 60 s");
        if (round + 1) % 10 == 0 {
            eprintln!("crash loop: {} kills, {} acknowledged, last restart {took:?}", round + 1, acked.len());
        }
    }
    recovery.sort();
    let pct = |q: f64| recovery[((recovery.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "crash loop: {kills} kill -9s in {:.1} s; {} acknowledged records all present once and in order; restart-to-first-answer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        started.elapsed().as_secs_f64(),
        acked.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}

#[tokio::test]
async fn crash_loop_20_kills() {
    crash_loop(20).await;
}

#[tokio::test]
#[ignore = "long: 200 kills; run explicitly and read its figures"]
async fn crash_loop_200_kills() {
    crash_loop(200).await;
}

#[tokio::test]
async fn checkpoints_survive_kill_9() {
    use proto::v1::consumer_groups_client::ConsumerGroupsClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path());
    let mut c = connect(p.endpoint.clone()).await;
    create(&mut c, "s", 1).await;
    put(&mut c, "s", (0..10).map(|i| entry("k", format!("r{i}").as_bytes())).collect()).await;
    let mut g = ConsumerGroupsClient::new(
        tonic::transport::Channel::from_shared(p.endpoint.clone()).expect("uri").connect().await.expect("connect"),
    );
    let start = Some(pb::GroupStart { position: pb::IteratorType::TrimHorizon as i32, timestamp_ms: None });
    let joined = g
        .join_group(pb::JoinGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            start,
            client_id: "before".into(),
        })
        .await
        .expect("join")
        .into_inner();
    let generation = joined.assignment.expect("lease").generation;
    g.commit(pb::CommitRequest {
        stream_name: "s".into(),
        group_name: "g".into(),
        member_id: joined.member_id,
        generation,
        checkpoints: vec![pb::ShardCheckpoint { shard_id: "shardId-000000000000".into(), sequence_number: 4 }],
    })
    .await
    .expect("commit acknowledged");
    p.kill9();

    let p = Process::start(dir.path());
    let mut g = ConsumerGroupsClient::new(
        tonic::transport::Channel::from_shared(p.endpoint.clone()).expect("uri").connect().await.expect("connect"),
    );
    let d = g
        .describe_group(pb::DescribeGroupRequest { stream_name: "s".into(), group_name: "g".into() })
        .await
        .expect("describe")
        .into_inner()
        .group
        .expect("group");
    assert_eq!((d.shards[0].has_checkpoint, d.shards[0].checkpoint, d.shards[0].lag_records), (true, 5, 5));
    assert!(d.members.is_empty(), "members do not survive a restart; they rejoin");
    let joined = g
        .join_group(pb::JoinGroupRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            start,
            client_id: "after".into(),
        })
        .await
        .expect("join")
        .into_inner();
    let polled = g
        .poll(pb::PollRequest {
            stream_name: "s".into(),
            group_name: "g".into(),
            member_id: joined.member_id,
            generation: joined.assignment.expect("lease").generation,
            max_records: 100,
            wait_ms: 0,
        })
        .await
        .expect("poll")
        .into_inner();
    let seqs: Vec<u64> = polled.records.iter().map(|r| r.record.as_ref().expect("r").sequence_number).collect();
    assert_eq!(seqs, (5..10).collect::<Vec<_>>(), "the group resumes after its checkpoint");
}
