//! Damaged shards, through real gRPC: one damaged shard never stops the
//! broker; every other shard and stream is served; the damaged shard is
//! reported (DescribeStream, `/metrics`, `/readyz`) and refuses what it
//! cannot do with an error naming the stream, shard and cause; RepairShard
//! reports exactly what it would cut and, confirmed, makes the shard serve
//! again. Same damage, same outcome: a bad frame at the end of a sealed
//! segment is handled like one in its middle.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use common::*;
use proto::v1 as pb;
use tonic::Code;

const SHARD0: &str = "shardId-000000000000";
const SHARD1: &str = "shardId-000000000001";
const SEG0: &str = "00000000000000000000.log";

fn config(dir: &Path) -> BrokerConfig {
    let mut c = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    c.quotas.enforce = false;
    c.storage.segment_bytes_max = 64 * 1024;
    c
}

fn shard_dir(dir: &Path, stream_id: u64, shard: &str) -> PathBuf {
    dir.join("streams").join(stream_id.to_string()).join(shard)
}

/// Segment files of a shard, oldest first.
fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("shard dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.ends_with(".log"))
        .collect();
    v.sort();
    v
}

/// Flips one byte of `path` at `pos`.
fn flip(path: &Path, pos: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[pos as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write segment");
}

async fn describe(c: &mut Client, stream: &str) -> pb::StreamDescription {
    c.describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() })
        .await
        .expect("describe")
        .into_inner()
        .stream
        .expect("description")
}

async fn repair(c: &mut Client, stream: &str, shard: &str, confirm: bool) -> pb::RepairShardResponse {
    c.repair_shard(pb::RepairShardRequest { stream_name: stream.into(), shard_id: shard.into(), confirm })
        .await
        .expect("repair shard")
        .into_inner()
}

/// Reads from `seq` until the end or an error: the records read, and the error.
async fn read_from(c: &mut Client, stream: &str, shard: &str, seq: u64) -> (Vec<pb::Record>, Option<tonic::Status>) {
    let mut it = iterator(c, stream, shard, pb::IteratorType::AtSequenceNumber, Some(seq), None).await;
    let mut out = Vec::new();
    loop {
        match c.get_records(pb::GetRecordsRequest { shard_iterator: it.clone(), limit: 1000 }).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.records.is_empty() {
                    return (out, None);
                }
                out.extend(r.records);
                it = r.next_shard_iterator;
            }
            Err(status) => return (out, Some(status)),
        }
    }
}

fn seqs(records: &[pb::Record]) -> Vec<u64> {
    records.iter().map(|r| r.sequence_number).collect()
}

#[tokio::test]
async fn a_damaged_active_segment_is_reported_refuses_writes_and_is_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    create(&mut c, "good", 1).await;
    let bad = create(&mut c, "bad", 2).await;
    // Three acknowledged batches in shard 0 of `bad` (hash 0 routes there),
    // each its own frame; note where each ends.
    let seg = shard_dir(dir.path(), bad.stream_id, SHARD0).join(SEG0);
    let mut ends = Vec::new();
    for i in 0..3u8 {
        let r = put(&mut c, "bad", vec![entry_at(0, &[i; 1000])]).await;
        assert_eq!(r.failed_record_count, 0);
        ends.push(std::fs::metadata(&seg).expect("segment").len());
    }
    put(&mut c, "bad", vec![entry_at(u128::MAX, b"shard one")]).await;
    put(&mut c, "good", vec![entry("k", b"good one")]).await;
    broker.stop().await.expect("clean stop");

    // Damage the middle batch: valid batches on both sides, so it is not a torn tail.
    flip(&seg, (ends[0] + ends[1]) / 2);

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let names = c.list_streams(pb::ListStreamsRequest::default()).await.expect("broker serves").into_inner();
    assert_eq!(names.stream_names, vec!["bad".to_string(), "good".to_string()]);
    // The other stream and the other shard serve reads and writes.
    let it = iterator(&mut c, "good", SHARD0, pb::IteratorType::TrimHorizon, None, None).await;
    assert_eq!(drain(&mut c, it, 100).await.len(), 1);
    assert_eq!(put(&mut c, "good", vec![entry("k", b"good two")]).await.failed_record_count, 0);
    let it = iterator(&mut c, "bad", SHARD1, pb::IteratorType::TrimHorizon, None, None).await;
    assert_eq!(drain(&mut c, it, 100).await.len(), 1);
    assert_eq!(put(&mut c, "bad", vec![entry_at(u128::MAX, b"shard one again")]).await.failed_record_count, 0);

    // The damaged shard is reported everywhere.
    let d = describe(&mut c, "bad").await;
    let s0 = &d.shards[0];
    assert_eq!(s0.shard_status, pb::ShardStatus::ReadOnly as i32, "{s0:?}");
    assert_eq!(s0.failure_kind, "Damaged");
    assert!(!s0.writable);
    assert!(s0.failure.contains(SEG0), "names the segment: {}", s0.failure);
    assert!(!s0.failure.contains(&dir.path().display().to_string()), "no directories: {}", s0.failure);
    assert_eq!(s0.damage.len(), 1, "{:?}", s0.damage);
    assert_eq!((s0.damage[0].segment.as_str(), s0.damage[0].position), (SEG0, ends[0]));
    assert_eq!(d.shards[1].shard_status, pb::ShardStatus::Serving as i32);
    let (code, body) = http_get(broker.http_addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("bad/shardId-000000000000") && body.contains("Damaged"), "{body}");
    assert!(!body.contains("good/"), "{body}");
    let (_, metrics) = http_get(broker.http_addr, "/metrics").await;
    assert!(metrics.contains("stream_broker_shard_failed{stream=\"bad\",shard=\"shardId-000000000000\"} 1"));
    assert!(metrics.contains("stream_broker_shard_failed{stream=\"bad\",shard=\"shardId-000000000001\"} 0"));

    // Writes are refused with a clear error; reads are served around the damage.
    let refused = c
        .put_record(pb::PutRecordRequest {
            stream_name: "bad".into(),
            partition_key: "k".into(),
            data: b"x".to_vec().into(),
            explicit_hash_key: Some("0".into()),
        })
        .await
        .expect_err("a damaged shard refuses writes");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(error_kind(&refused), "ShardFailed");
    assert!(refused.message().contains("\"bad\"") && refused.message().contains(SHARD0), "{}", refused.message());
    let r = put(&mut c, "bad", vec![entry_at(0, b"x"), entry_at(u128::MAX, b"y")]).await;
    assert_eq!(r.records[0].error_code, "ShardFailed");
    assert!(r.records[1].error_code.is_empty(), "the other shard's record is stored");
    let (before, err) = read_from(&mut c, "bad", SHARD0, 0).await;
    assert_eq!(seqs(&before), vec![0]);
    let err = err.expect("the read reaches the damage");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(error_kind(&err), "Corrupt");
    assert!(err.message().contains(SEG0) && err.message().contains(&ends[0].to_string()), "{}", err.message());
    let (after, err) = read_from(&mut c, "bad", SHARD0, 2).await;
    assert_eq!((seqs(&after), err.map(|e| e.code())), (vec![2], None), "the batch after the damage is served");

    // The dry run reports exactly what would be cut and changes nothing.
    let plan = repair(&mut c, "bad", SHARD0, false).await;
    assert!(!plan.applied);
    let p = plan.plan.expect("plan");
    assert_eq!(p.action, pb::RepairAction::Truncate as i32);
    assert_eq!((p.segment.as_str(), p.cut_position), (SEG0, ends[0]));
    assert_eq!((p.first_lost_sequence_number, p.records_lost), (1, 2));
    assert_eq!(p.bytes_removed, ends[2] - ends[0]);
    assert!(p.segments_removed.is_empty());
    assert_eq!(describe(&mut c, "bad").await.shards[0].shard_status, pb::ShardStatus::ReadOnly as i32);

    let done = repair(&mut c, "bad", SHARD0, true).await;
    assert!(done.applied);
    assert_eq!(done.plan, Some(p), "it cut what the dry run reported");
    let s0 = done.shard.expect("shard");
    assert_eq!(s0.shard_status, pb::ShardStatus::Serving as i32, "{s0:?}");
    assert_eq!(s0.next_sequence_number, 1);
    let r = put(&mut c, "bad", vec![entry_at(0, b"after repair")]).await;
    assert_eq!((r.failed_record_count, r.records[0].sequence_number), (0, 1));
    assert_eq!(http_get(broker.http_addr, "/readyz").await.0, 200);
    broker.stop().await.expect("clean stop");

    // Reopening later is clean.
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let s0 = describe(&mut c, "bad").await.shards.remove(0);
    assert_eq!(s0.shard_status, pb::ShardStatus::Serving as i32, "{s0:?}");
    assert!(s0.damage.is_empty(), "{:?}", s0.damage);
    let (records, err) = read_from(&mut c, "bad", SHARD0, 0).await;
    assert!(err.is_none(), "{err:?}");
    let data: Vec<&[u8]> = records.iter().map(|r| &r.data[..]).collect();
    assert_eq!(data, vec![&[0u8; 1000][..], &b"after repair"[..]]);
    assert_eq!(repair(&mut c, "bad", SHARD0, false).await.plan.expect("plan").action, pb::RepairAction::Nothing as i32);
    broker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn damage_at_the_end_of_a_sealed_segment_is_handled_like_damage_in_its_middle() {
    const RECORD: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let mut ids = Vec::new();
    for name in ["last", "middle"] {
        ids.push(create(&mut c, name, 1).await.stream_id);
        for i in 0..20u8 {
            assert_eq!(put(&mut c, name, vec![entry("k", &[i; RECORD])]).await.failed_record_count, 0);
        }
    }
    broker.stop().await.expect("clean stop");

    let frame = shardlog::format::frame_len([(&b"k"[..], &[0u8; RECORD][..])].into_iter());
    let header = shardlog::format::FILE_HEADER_LEN;
    let mut damaged_seq = Vec::new();
    let mut later_segments = Vec::new();
    for (id, at_end) in ids.iter().zip([true, false]) {
        let shard = shard_dir(dir.path(), *id, SHARD0);
        let segs = segments(&shard);
        assert!(segs.len() >= 3, "{segs:?}");
        let seg0 = shard.join(SEG0);
        let frames = (std::fs::metadata(&seg0).expect("seg0").len() - header) / frame;
        let k = if at_end { frames - 1 } else { frames / 2 };
        flip(&seg0, header + k * frame + frame / 2);
        damaged_seq.push((k, header + k * frame));
        later_segments.push(segs[1..].to_vec());
    }

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    for (i, name) in ["last", "middle"].into_iter().enumerate() {
        let (k, position) = damaged_seq[i];
        let (before, err) = read_from(&mut c, name, SHARD0, 0).await;
        assert_eq!(seqs(&before), (0..k).collect::<Vec<_>>(), "{name}: everything before the damage is served");
        let err = err.unwrap_or_else(|| panic!("{name}: the read reaches the damage"));
        assert_eq!(err.code(), Code::DataLoss, "{name}: {err:?}");
        assert!(err.message().contains(SEG0) && err.message().contains(&position.to_string()), "{}", err.message());
        let (after, err) = read_from(&mut c, name, SHARD0, k + 1).await;
        assert!(err.is_none(), "{name}: {err:?}");
        assert_eq!(seqs(&after), (k + 1..20).collect::<Vec<_>>(), "{name}: everything after the damage is served");
        let d = describe(&mut c, name).await;
        assert_eq!(d.shards[0].shard_status, pb::ShardStatus::Serving as i32, "{name}: {:?}", d.shards[0]);
        let p = repair(&mut c, name, SHARD0, false).await.plan.expect("plan");
        assert_eq!(p.action, pb::RepairAction::Truncate as i32, "{name}");
        assert_eq!((p.segment.as_str(), p.cut_position), (SEG0, position), "{name}");
        assert_eq!((p.first_lost_sequence_number, p.records_lost), (k, 20 - k), "{name}");
        assert_eq!(p.segments_removed, later_segments[i], "{name}");
        assert_eq!(put(&mut c, name, vec![entry("k", b"still writable")]).await.failed_record_count, 0);
    }
    assert_eq!(http_get(broker.http_addr, "/readyz").await.0, 200, "damage in a sealed segment fails nothing");
    broker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_shard_that_cannot_be_opened_refuses_reads_and_writes_and_nothing_else_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let s = create(&mut c, "s", 2).await;
    for i in 0..20u8 {
        put(&mut c, "s", vec![entry_at(0, &[i; 10_000]), entry_at(u128::MAX, &[i; 10])]).await;
    }
    broker.stop().await.expect("clean stop");
    // The newest segment vanishes: its predecessor was sealed, so recovery
    // cannot tell where the log ended and refuses to guess.
    let shard = shard_dir(dir.path(), s.stream_id, SHARD0);
    let newest = segments(&shard).pop().expect("segments");
    std::fs::remove_file(shard.join(&newest)).expect("remove the newest segment");

    let broker = TestBroker::start_with(config(dir.path()), Arc::new(SystemClock)).await;
    let mut c = connect(broker.endpoint()).await;
    let d = describe(&mut c, "s").await;
    assert_eq!(d.shards[0].shard_status, pb::ShardStatus::Failed as i32, "{:?}", d.shards[0]);
    assert_eq!(d.shards[0].failure_kind, "Open");
    assert!(d.shards[0].failure.contains(&newest), "names the missing file: {}", d.shards[0].failure);
    let refused = c
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: SHARD0.into(),
            iterator_type: pb::IteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect_err("reads are refused");
    assert_eq!((refused.code(), error_kind(&refused).as_str()), (Code::FailedPrecondition, "ShardFailed"));
    let (records, err) = read_from(&mut c, "s", SHARD1, 0).await;
    assert_eq!((records.len(), err.map(|e| e.code())), (20, None), "the other shard serves");
    let plan = repair(&mut c, "s", SHARD0, false).await;
    assert_eq!(plan.plan.expect("plan").action, pb::RepairAction::Reopen as i32);
    let (code, body) = http_get(broker.http_addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("s/shardId-000000000000") && body.contains("Open"), "{body}");
    broker.stop().await.expect("clean stop");
}
