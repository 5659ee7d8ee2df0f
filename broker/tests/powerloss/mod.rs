//! Shared by the power-loss and failpoint tests: the real `stream-broker`
//! binary with its data directory on a `powerfs` mount, producers that
//! remember what was acknowledged (in send order per key), a full read-back
//! through GetRecords, and the check by `broker::testing::history::History`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::process::Process;
use broker::testing::history::{History, Report};
use bytes::Bytes;
use powerfs::PowerFs;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use tonic::transport::Channel;

pub type Client = StreamBrokerClient<Channel>;

/// Settings every test here runs the broker with: quotas lifted, 64 KiB
/// segments that also roll every 300 ms, a dense index, and a janitor that
/// looks every 100 ms, so rolls and retention passes happen all the time.
pub const BASE_ENV: &[(&str, &str)] = &[
    ("STREAM_BROKER_QUOTAS__ENFORCE", "false"),
    ("STREAM_BROKER_STORAGE__SEGMENT_BYTES_MAX", "65536"),
    ("STREAM_BROKER_STORAGE__SEGMENT_AGE_MAX_MS", "300"),
    ("STREAM_BROKER_STORAGE__INDEX_INTERVAL_BYTES", "1024"),
    ("STREAM_BROKER_RETENTION__CHECK_INTERVAL_MS", "100"),
    ("RUST_LOG", "warn"),
];

/// Mounts a fresh `powerfs`; these tests need FUSE (`/dev/fuse`, root),
/// and without it they fail and say so: they never pass without having run.
pub fn mount() -> PowerFs {
    PowerFs::mount().unwrap_or_else(|e| panic!("these tests run on powerfs (FUSE, root), which cannot run here: {e}"))
}

/// A fresh mount and the broker's data directory on it, made durable as an
/// operator's setup would be (what the broker creates inside is its own
/// business).
pub fn mount_with_data() -> (PowerFs, PathBuf) {
    let fs = mount();
    let dir = fs.path().join("data");
    std::fs::create_dir(&dir).expect("mkdir data");
    std::fs::File::open(fs.path()).and_then(|d| d.sync_all()).expect("fsync the mount root");
    (fs, dir)
}

/// fsyncs every file and directory under `dir`, as `sync(1)` would: a test
/// uses it to make a precondition durable (a stream that has existed for a
/// while) without relying on the code under test to have done so.
pub fn sync_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sync_tree(&path);
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).unwrap_or_else(|e| panic!("fsync {}: {e}", dir.display()));
}

/// Starts the real broker on `data_dir` with [`BASE_ENV`] and `env` (later
/// entries win). Panics with the exit status if it does not start: the
/// broker must always start.
pub fn start_broker(data_dir: &Path, env: &[(&str, &str)]) -> Process {
    Process::start_with_env(data_dir, &[BASE_ENV, env].concat())
}

pub async fn connect(endpoint: &str) -> Client {
    let channel = Channel::from_shared(endpoint.to_string()).expect("endpoint").connect().await.expect("connect");
    StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

pub async fn create_stream(c: &mut Client, name: &str, shards: u32) {
    c.create_stream(pb::CreateStreamRequest { stream_name: name.into(), shard_count: shards, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// Connects and waits for the first answer to DescribeStream of `stream`;
/// returns the client and the time since the process was spawned.
pub async fn first_answer(b: &mut Process, stream: &str) -> (Client, Duration) {
    let ready = async {
        let channel = Channel::from_shared(b.endpoint.clone()).expect("endpoint").connect().await?;
        let mut c = StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20);
        c.describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() }).await?;
        Ok::<_, Box<dyn std::error::Error>>(c)
    };
    let answered = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("the broker answers within 60 s of a restart");
    match answered {
        Ok(c) => (c, b.spawned.elapsed()),
        Err(e) => match b.wait_exit(Duration::from_secs(5)) {
            // The listening line comes before recovery, so a broker that
            // cannot recover exits after it.
            Some(status) => panic!("the broker did not start ({status}; its stderr above says why)"),
            None => panic!("describe {stream} after a restart: {e}"),
        },
    }
}

/// One acknowledged record.
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub shard_id: String,
    pub seq: u64,
    pub data: Vec<u8>,
}

/// `producers` concurrent producers put batches of 10 records of about
/// `record_bytes` bytes until `deadline` or until the broker stops
/// answering. Each producer owns its keys, so the returned list is in send
/// order per key.
pub async fn produce_until(
    endpoint: &str,
    stream: &str,
    producers: usize,
    record_bytes: usize,
    tag: &str,
    deadline: Instant,
) -> Vec<Acked> {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (endpoint, stream, tag) = (endpoint.to_string(), stream.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let Ok(channel) = Channel::from_shared(endpoint).expect("uri").connect().await else {
                return acked;
            };
            let mut c = StreamBrokerClient::new(channel);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let batch: Vec<(String, Vec<u8>)> = (0..10)
                    .map(|i| {
                        let mut data = format!("{tag}-p{p}-n{n}-{i}-").into_bytes();
                        data.resize(record_bytes.max(data.len()), b'a' + (n % 26) as u8);
                        (format!("key-{p}-{i}"), data)
                    })
                    .collect();
                let records = batch
                    .iter()
                    .map(|(k, d)| pb::PutRecordsEntry {
                        partition_key: k.clone(),
                        data: Bytes::copy_from_slice(d),
                        explicit_hash_key: None,
                    })
                    .collect();
                let req = pb::PutRecordsRequest { stream_name: stream.clone(), records };
                // Bounded: a request the broker never answers ends the producer like an error.
                let sent = tokio::time::timeout(Duration::from_secs(20), c.put_records(req)).await;
                let Ok(Ok(r)) = sent else { break };
                let mut refused = false;
                for (e, (key, data)) in r.into_inner().records.into_iter().zip(batch) {
                    // Quotas are lifted, so a refused record is a shard that
                    // stopped taking writes (an injected fault): not acknowledged.
                    if e.error_code.is_empty() {
                        acked.push(Acked { key, shard_id: e.shard_id, seq: e.sequence_number, data });
                    } else {
                        refused = true;
                    }
                }
                if refused {
                    break;
                }
                n += 1;
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("producer task"));
    }
    all
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct ReadBack {
    pub shard_id: String,
    pub record: pb::Record,
}

/// Reads every shard of `stream` from the trim horizon to the end.
pub async fn read_all(c: &mut Client, stream: &str) -> Vec<ReadBack> {
    try_read_all(c, stream).await.unwrap_or_else(|e| panic!("read {stream}: {e}"))
}

/// [`read_all`] while retention may delete what is being read: a read that
/// the trim horizon overtook starts again, up to 20 times.
pub async fn read_all_racing_retention(c: &mut Client, stream: &str) -> Vec<ReadBack> {
    for _ in 0..20 {
        match try_read_all(c, stream).await {
            Ok(read) => return read,
            Err(s) if error_kind(&s) == "SequenceTrimmed" => continue,
            Err(s) => panic!("read {stream}: {s}"),
        }
    }
    panic!("read {stream}: overtaken by retention 20 times");
}

fn error_kind(s: &tonic::Status) -> &str {
    s.metadata().get("x-error-kind").and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn try_read_all(c: &mut Client, stream: &str) -> Result<Vec<ReadBack>, tonic::Status> {
    let d = c
        .describe_stream(pb::DescribeStreamRequest { stream_name: stream.into() })
        .await?
        .into_inner()
        .stream
        .expect("description");
    let mut out = Vec::new();
    for shard in d.shards {
        let mut it = c
            .get_shard_iterator(pb::GetShardIteratorRequest {
                stream_name: stream.into(),
                shard_id: shard.shard_id.clone(),
                iterator_type: pb::IteratorType::TrimHorizon as i32,
                starting_sequence_number: None,
                timestamp_ms: None,
            })
            .await?
            .into_inner()
            .shard_iterator;
        loop {
            let r =
                c.get_records(pb::GetRecordsRequest { shard_iterator: it.clone(), limit: 10_000 }).await?.into_inner();
            let n = r.records.len();
            out.extend(r.records.into_iter().map(|record| ReadBack { shard_id: shard.shard_id.clone(), record }));
            it = r.next_shard_iterator;
            if n == 0 || r.millis_behind_latest == 0 && n < 10_000 {
                break;
            }
        }
    }
    Ok(out)
}

/// Checks one read-back pass against everything acknowledged: each
/// acknowledged record present once, at its sequence number, with its
/// contents, in order per key (the history checker's definitions).
pub fn check(acked: &[Acked], read: &[ReadBack], reader: &str) -> Report {
    let h = History::new();
    for a in acked {
        h.produced(&a.key, &a.shard_id, a.seq, &a.data);
    }
    for r in read {
        h.handled(reader, 0, &r.shard_id, r.record.sequence_number, &r.record.partition_key, &r.record.data);
    }
    h.check()
}

/// [`check`] where retention may have deleted a prefix of each shard: the
/// acknowledged records below the first one read in their shard are taken
/// as expired (and counted), except those in `fresh`, which were written
/// under the current clock and may not expire. Returns the report and the
/// number of acknowledged records retention removed.
pub fn check_after_retention(acked: &[Acked], fresh: &[Acked], read: &[ReadBack], reader: &str) -> (Report, usize) {
    let mut first: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for r in read {
        let seq = first.entry(&r.shard_id).or_insert(u64::MAX);
        *seq = (*seq).min(r.record.sequence_number);
    }
    let horizon = |a: &Acked| first.get(a.shard_id.as_str()).copied().unwrap_or(u64::MAX);
    for a in fresh {
        assert!(
            a.seq >= horizon(a),
            "{reader}: {} seq {} was written under the current clock, yet retention removed it",
            a.shard_id,
            a.seq
        );
    }
    let kept: Vec<Acked> = acked.iter().filter(|a| a.seq >= horizon(a)).cloned().collect();
    (check(&kept, read, reader), acked.len() - kept.len())
}

/// Nearest-rank percentile of durations, in ms.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

/// A small seeded generator for the moments of the power cuts.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
