//! `stream-bench reshard`: what a split costs the producers of the shard it
//! splits. Each round creates a one-shard stream (quotas enforced), drives
//! it at its full write quota (1000 records/s of 1 KiB) from four paced
//! producers, then splits the shard in the middle while they go on. It
//! prints the SplitShard call's duration, and the PutRecords latency of
//! requests sent before the split and of those sent from the split's start
//! to one second after its end (which covers the re-routing), with every
//! per-record error by kind. Records refused as `ShardClosed` (they raced
//! the split) go out again with the next request, as a producer does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use proto::v1 as pb;

use super::{Args, client, create, hist, ms, target};

/// Requests sent this long after a split's end still count as during it.
const AFTER_SPLIT: Duration = Duration::from_secs(1);
/// Producers per stream; each sends 25 records every 100 ms (250 records/s).
const PRODUCERS: u64 = 4;
const PER_TICK: usize = 25;

/// What one producer saw, by the phase its requests were sent in.
#[derive(Default)]
struct Seen {
    steady: Option<Histogram<u64>>,
    during: Option<Histogram<u64>>,
    after: Option<Histogram<u64>>,
    shard_closed: u64,
    throttled: u64,
    other_errors: u64,
    acked: u64,
}

impl Seen {
    fn new() -> Self {
        Self { steady: Some(hist()), during: Some(hist()), after: Some(hist()), ..Self::default() }
    }

    fn add(&mut self, o: Seen) {
        for (into, from) in [(&mut self.steady, o.steady), (&mut self.during, o.during), (&mut self.after, o.after)] {
            if let (Some(a), Some(b)) = (into.as_mut(), from) {
                a.add(b).expect("merge histograms");
            }
        }
        self.shard_closed += o.shard_closed;
        self.throttled += o.throttled;
        self.other_errors += o.other_errors;
        self.acked += o.acked;
    }
}

/// The split's window, set once it is known: (start, end).
type Window = std::sync::Arc<std::sync::Mutex<(Option<Instant>, Option<Instant>)>>;

/// One paced producer of 1 KiB records spread over the whole hash space.
async fn producer(endpoint: String, stream: String, p: u64, window: Window, until: Instant) -> Seen {
    let mut c = client(&endpoint).await;
    let data = Bytes::from(vec![b'r'; 1024 - 8]);
    let phase = Duration::from_millis(100 * p / PRODUCERS);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seen = Seen::new();
    let mut retry: Vec<pb::PutRecordsEntry> = Vec::new();
    let mut n = 0u128;
    while Instant::now() < until {
        tick.tick().await;
        let mut records = std::mem::take(&mut retry);
        while records.len() < PER_TICK {
            n += 1;
            let hash = (u128::from(p) << 100 | n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            records.push(pb::PutRecordsEntry {
                partition_key: "pk-reshard".into(),
                data: data.clone(),
                explicit_hash_key: Some(hash.to_string()),
            });
        }
        let sent = Instant::now();
        let r = c
            .put_records(pb::PutRecordsRequest { stream_name: stream.clone(), records: records.clone() })
            .await
            .expect("PutRecords")
            .into_inner();
        let took = sent.elapsed().as_micros().max(1) as u64;
        let (start, end) = *window.lock().expect("window");
        let h = match (start, end) {
            (Some(s), _) if sent < s => &mut seen.steady,
            (None, _) => &mut seen.steady,
            (Some(_), None) => &mut seen.during,
            (Some(_), Some(e)) if sent < e + AFTER_SPLIT => &mut seen.during,
            _ => &mut seen.after,
        };
        h.as_mut().expect("histogram").record(took).expect("latency");
        for (e, rec) in r.records.into_iter().zip(records) {
            match e.error_code.as_str() {
                "" => seen.acked += 1,
                "ShardClosed" => {
                    seen.shard_closed += 1;
                    retry.push(rec);
                }
                "ProvisionedThroughputExceeded" => seen.throttled += 1,
                _ => seen.other_errors += 1,
            }
        }
    }
    seen
}

/// Runs `rounds` splits under full-quota load on one in-process broker.
pub(super) async fn run(args: &Args, rounds: u32) {
    println!(
        "# reshard: one shard at its full write quota (1000 records/s of 1 KiB, {PRODUCERS} paced producers), split \
         after {} s; quotas enforced, durability as configured; 'during' is from the split's start to {} s after its end",
        args.seconds,
        AFTER_SPLIT.as_secs()
    );
    println!(
        "{:>5} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>7}",
        "round",
        "split ms",
        "steady p50",
        "steady p99",
        "steady max",
        "during p50",
        "during p99",
        "during max",
        "closed",
        "throttled",
        "errors"
    );
    let t = target(args, true).await;
    let mut c = client(&t.endpoint).await;
    let (mut all, mut split_ms) = (Seen::new(), Vec::new());
    for round in 0..rounds {
        let stream = format!("reshard-{round}");
        create(&mut c, &stream, 1).await;
        let window: Window = Default::default();
        let until = Instant::now() + Duration::from_secs(args.seconds) + Duration::from_secs(3);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| tokio::spawn(producer(t.endpoint.clone(), stream.clone(), p, window.clone(), until)))
            .collect();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let started = Instant::now();
        window.lock().expect("window").0 = Some(started);
        c.split_shard(pb::SplitShardRequest {
            stream_name: stream.clone(),
            shard_id: "shardId-000000000000".into(),
            new_starting_hash_key: (1u128 << 127).to_string(),
        })
        .await
        .expect("SplitShard");
        let ended = Instant::now();
        window.lock().expect("window").1 = Some(ended);
        split_ms.push(ended.duration_since(started).as_secs_f64() * 1000.0);
        let mut seen = Seen::new();
        for p in producers {
            seen.add(p.await.expect("producer"));
        }
        let (s, d) = (seen.steady.as_ref().expect("steady"), seen.during.as_ref().expect("during"));
        println!(
            "{:>5} {:>9.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>7} {:>9} {:>7}",
            round,
            split_ms[round as usize],
            ms(s, 0.5),
            ms(s, 0.99),
            s.max() as f64 / 1000.0,
            ms(d, 0.5),
            ms(d, 0.99),
            d.max() as f64 / 1000.0,
            seen.shard_closed,
            seen.throttled,
            seen.other_errors
        );
        all.add(seen);
    }
    split_ms.sort_by(f64::total_cmp);
    let (s, d) = (all.steady.as_ref().expect("steady"), all.during.as_ref().expect("during"));
    println!(
        "all rounds: split median {:.2} ms, max {:.2} ms; produce p99 steady {:.2} ms ({} requests), during the split \
         {:.2} ms ({} requests), ratio {:.2}; {} records acknowledged, {} ShardClosed re-routes, {} throttled, {} other \
         errors",
        split_ms[split_ms.len() / 2],
        split_ms[split_ms.len() - 1],
        ms(s, 0.99),
        s.len(),
        ms(d, 0.99),
        d.len(),
        ms(d, 0.99) / ms(s, 0.99),
        all.acked,
        all.shard_closed,
        all.throttled,
        all.other_errors
    );
    drop(c);
    t.stop().await;
}
