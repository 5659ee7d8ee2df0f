//! `kinesis-bench`: PutRecords and GetRecords through the Kinesis HTTP API
//! (JSON 1.1 and CBOR 1.1) next to gRPC, for the same records, on one
//! in-process broker.
//!
//! Put: `--concurrency` clients each send PutRecords of `--batch` records of
//! `--record-bytes` of data (and a 10-byte partition key) for `--seconds`;
//! request bodies are encoded once before the clock starts on every API,
//! gRPC included (a producer's encoding is its own cost, not the broker's,
//! and the load generator shares the broker's cores), and every response is
//! read for its failed-record count, which must be 0. Get: a stream pre-filled over gRPC is
//! read from TRIM_HORIZON to its end by one reader per shard with
//! GetRecords of up to 10,000 records; responses are decoded (base64 in
//! JSON) and counted. Quotas are off; durability is `always` (every put is
//! fdatasync'ed by group commit) unless `--durability never`.
//!
//! Each API's `--seconds` are run as slices of about 2 s in rotating order
//! (gRPC, JSON, CBOR; then JSON, CBOR, gRPC; …), so the three see the same
//! machine state. Each put row also gives the process's CPU time per
//! record (broker and load generator together; the load generator's share
//! is the same small work on every API): on a machine shared with other
//! work this ratio is steadier than the records/s ratio. HTTP runs on plain keep-alive HTTP/1.1 connections, one
//! per client.
//! Prints records/s, MB/s (keys + data) and per-call p50/p99 for each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use broker::clock::SystemClock;
use broker::config::{BrokerConfig, DurabilityMode};
use broker::testing::TestBroker;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Kinesis HTTP API throughput next to gRPC")]
struct Args {
    /// Seconds each put measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Records per PutRecords call.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Data bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Concurrent put clients.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Shards of each stream.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Records pre-filled for the read measurement.
    #[arg(long, default_value_t = 200_000)]
    read_records: usize,
    /// `always` (fdatasync every ack) or `never`.
    #[arg(long, default_value = "always")]
    durability: String,
    /// `limits.http_max_header_bytes`: hyper's HTTP/1 read buffer is this
    /// size too, so request bodies are read in chunks of at most this.
    #[arg(long, default_value_t = 16 * 1024)]
    http_max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Grpc,
    Json,
    Cbor,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Grpc => "gRPC",
            Api::Json => "Kinesis JSON",
            Api::Cbor => "Kinesis CBOR",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Api::Cbor => "application/x-amz-cbor-1.1",
            _ => "application/x-amz-json-1.1",
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A keep-alive HTTP/1.1 connection to the Kinesis API.
struct Http {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
    head: Vec<u8>,
}

impl Http {
    async fn connect(addr: std::net::SocketAddr) -> AnyResult<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = tokio::io::split(s);
        Ok(Self { reader: BufReader::with_capacity(1 << 20, r), writer: w, head: Vec::new() })
    }

    /// One call; the answer's body (the status must be 200).
    async fn call(&mut self, operation: &str, content_type: &str, body: &[u8]) -> AnyResult<Vec<u8>> {
        self.head.clear();
        self.head.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nhost: bench\r\nx-amz-target: Kinesis_20131202.{operation}\r\n\
                 content-type: {content_type}\r\nx-amz-date: 20260101T000000Z\r\n\
                 authorization: AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, \
                 SignedHeaders=host;x-amz-date;x-amz-target, Signature=00\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.writer.write_all(&self.head).await?;
        self.writer.write_all(body).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).await?;
        if status != 200 {
            return Err(format!("{operation}: HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(body)
    }
}

/// Per-call latencies and totals of one measurement.
struct Tally {
    latency_us: Histogram<u64>,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    /// CPU time of the whole process (broker and load generator) while it ran.
    cpu: Duration,
}

/// CPU time this process has used, on all its threads.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec.unsigned_abs() as u32)
}

impl Tally {
    fn new() -> Self {
        // Three significant digits up to an hour: these bounds are valid.
        Self {
            latency_us: Histogram::new(3).expect("histogram"),
            records: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }

    fn add(&mut self, other: &Tally) {
        // Same precision on both sides, so merging cannot fail.
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.records += other.records;
        self.bytes += other.bytes;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.cpu += other.cpu;
    }

    /// CPU microseconds per record.
    fn cpu_per_record_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records.max(1) as f64
    }

    fn line(&self, what: &str, api: Api) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{what:<4} {:<13} {:>10.0} records/s {:>8.1} MB/s   p50 {:>7.1} ms   p99 {:>7.1} ms   ({} calls)",
            api.name(),
            self.records as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            self.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            self.latency_us.len()
        )
    }
}

fn keys(batch: usize, client: usize) -> Vec<String> {
    (0..batch).map(|i| format!("k{client:02}{i:07}")).collect()
}

fn data(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsOut {
    failed_record_count: u64,
}

fn put_body(api: Api, stream: &str, keys: &[String], data: &Bytes) -> Vec<u8> {
    match api {
        Api::Json => {
            let encoded = STANDARD.encode(data);
            let records: Vec<serde_json::Value> =
                keys.iter().map(|k| serde_json::json!({"Data": encoded, "PartitionKey": k})).collect();
            serde_json::to_vec(&serde_json::json!({"StreamName": stream, "Records": records})).expect("JSON")
        }
        Api::Grpc => {
            use prost::Message;
            let records = keys
                .iter()
                .map(|k| pb::PutRecordsEntry { partition_key: k.clone(), data: data.clone(), explicit_hash_key: None })
                .collect();
            pb::PutRecordsRequest { stream_name: stream.into(), records }.encode_to_vec()
        }
        Api::Cbor => {
            use ciborium::Value;
            let records = keys
                .iter()
                .map(|k| {
                    Value::Map(vec![
                        (Value::Text("Data".into()), Value::Bytes(data.to_vec())),
                        (Value::Text("PartitionKey".into()), Value::Text(k.clone())),
                    ])
                })
                .collect();
            let body = Value::Map(vec![
                (Value::Text("StreamName".into()), Value::Text(stream.into())),
                (Value::Text("Records".into()), Value::Array(records)),
            ]);
            let mut out = Vec::new();
            ciborium::into_writer(&body, &mut out).expect("CBOR");
            out
        }
    }
}

/// The one field of a PutRecords response the load generator reads (prost
/// skips the per-record results without allocating them, as the HTTP
/// clients skip theirs).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRecordsCount {
    #[prost(uint32, tag = "1")]
    failed_record_count: u32,
}

/// Sends a request encoded before the clock started and decodes a
/// [`PutRecordsCount`]: the gRPC twin of the HTTP clients' pre-encoded bodies.
#[derive(Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = PutRecordsCount;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for PreEncoded {
    type Item = PutRecordsCount;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<PutRecordsCount>, tonic::Status> {
        use prost::Message;
        PutRecordsCount::decode(buf).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// A gRPC PutRecords client that sends pre-encoded requests.
struct RawPut {
    grpc: tonic::client::Grpc<Channel>,
}

impl RawPut {
    async fn connect(endpoint: String) -> AnyResult<Self> {
        let channel = Channel::from_shared(endpoint)?.connect().await?;
        let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
        Ok(Self { grpc: grpc.max_encoding_message_size(64 << 20) })
    }

    /// One PutRecords call of an encoded `PutRecordsRequest`; its failed-record count.
    async fn put_records(&mut self, request: Bytes) -> AnyResult<u32> {
        self.grpc.ready().await?;
        let path = PathAndQuery::from_static("/streambroker.v1.StreamBroker/PutRecords");
        let out = self.grpc.unary(tonic::Request::new(request), path, PreEncoded).await?;
        Ok(out.into_inner().failed_record_count)
    }
}

async fn grpc_client(endpoint: String) -> AnyResult<StreamBrokerClient<Channel>> {
    let channel = Channel::from_shared(endpoint)?.connect().await?;
    Ok(StreamBrokerClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// One slice of `api`'s put measurement, `slice` long.
async fn put_run(b: &TestBroker, api: Api, stream: &str, args: &Args, slice: Duration) -> AnyResult<Tally> {
    let until = Instant::now() + slice;
    let record = data(args.record_bytes);
    let mut tasks = Vec::new();
    for c in 0..args.concurrency {
        let keys = keys(args.batch, c);
        let per_record = (keys[0].len() + record.len()) as u64;
        let stream = stream.to_string();
        let (endpoint, addr) = (b.endpoint(), b.kinesis_addr.ok_or("no Kinesis API")?);
        let body = Bytes::from(put_body(api, &stream, &keys, &record));
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            let started = Instant::now();
            let mut grpc = match api {
                Api::Grpc => Some(RawPut::connect(endpoint).await?),
                _ => None,
            };
            let mut http = match api {
                Api::Grpc => None,
                _ => Some(Http::connect(addr).await?),
            };
            while Instant::now() < until {
                let call = Instant::now();
                let failed = match (&mut grpc, &mut http) {
                    (Some(g), _) => u64::from(g.put_records(body.clone()).await?),
                    (_, Some(h)) => {
                        let out = h.call("PutRecords", api.content_type(), &body).await?;
                        let parsed: PutRecordsOut = match api {
                            Api::Cbor => ciborium::from_reader(&out[..])?,
                            _ => serde_json::from_slice(&out)?,
                        };
                        parsed.failed_record_count
                    }
                    _ => unreachable!("one client per API"),
                };
                if failed > 0 {
                    return Err(format!("{failed} records failed; quotas must be off").into());
                }
                t.latency_us.record(call.elapsed().as_micros() as u64)?;
                t.records += keys.len() as u64;
                t.bytes += per_record * keys.len() as u64;
            }
            t.elapsed = started.elapsed();
            Ok::<Tally, Box<dyn std::error::Error + Send + Sync>>(t)
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        total.add(&task.await??);
    }
    Ok(total)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonRecord<'a> {
    #[serde(borrow)]
    data: &'a str,
    #[serde(borrow)]
    partition_key: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonGet<'a> {
    #[serde(borrow)]
    records: Vec<JsonRecord<'a>>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CborRecord {
    #[serde(with = "serde_bytes_like")]
    data: Vec<u8>,
    partition_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CborGet {
    records: Vec<CborRecord>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: u64,
}

/// CBOR byte strings into a `Vec<u8>` (serde reads them as bytes, not as a sequence).
mod serde_bytes_like {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct V;

    impl Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(V)
    }
}

/// Where a reader connects.
struct Ends {
    grpc: String,
    kinesis: std::net::SocketAddr,
}

/// Reads one shard to its end, counting records and key + data bytes.
async fn read_shard(b: &Ends, api: Api, stream: &str, shard: &str, t: &mut Tally) -> AnyResult<()> {
    match api {
        Api::Grpc => {
            let mut g = grpc_client(b.grpc.clone()).await?;
            let mut it = g
                .get_shard_iterator(pb::GetShardIteratorRequest {
                    stream_name: stream.into(),
                    shard_id: shard.into(),
                    iterator_type: pb::IteratorType::TrimHorizon as i32,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .shard_iterator;
            loop {
                let call = Instant::now();
                let r = g.get_records(pb::GetRecordsRequest { shard_iterator: it, limit: 10_000 }).await?.into_inner();
                t.latency_us.record(call.elapsed().as_micros() as u64)?;
                t.records += r.records.len() as u64;
                t.bytes += r.records.iter().map(|x| (x.partition_key.len() + x.data.len()) as u64).sum::<u64>();
                if r.records.is_empty() && r.millis_behind_latest == 0 {
                    return Ok(());
                }
                it = r.next_shard_iterator;
            }
        }
        _ => {
            let mut h = Http::connect(b.kinesis).await?;
            let req = serde_json::json!({"StreamName": stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"});
            let out = h.call("GetShardIterator", Api::Json.content_type(), &serde_json::to_vec(&req)?).await?;
            let mut it: String =
                serde_json::from_slice::<serde_json::Value>(&out)?["ShardIterator"].as_str().ok_or("iterator")?.into();
            loop {
                let body = match api {
                    Api::Cbor => {
                        let mut out = Vec::new();
                        ciborium::into_writer(
                            &ciborium::Value::Map(vec![(
                                ciborium::Value::Text("ShardIterator".into()),
                                ciborium::Value::Text(it.clone()),
                            )]),
                            &mut out,
                        )?;
                        out
                    }
                    _ => serde_json::to_vec(&serde_json::json!({"ShardIterator": it}))?,
                };
                let call = Instant::now();
                let out = h.call("GetRecords", api.content_type(), &body).await?;
                let (n, bytes, next, behind) = match api {
                    Api::Cbor => {
                        let r: CborGet = ciborium::from_reader(&out[..])?;
                        let bytes: usize = r.records.iter().map(|x| x.partition_key.len() + x.data.len()).sum();
                        (r.records.len(), bytes, r.next_shard_iterator, r.millis_behind_latest)
                    }
                    _ => {
                        let r: JsonGet<'_> = serde_json::from_slice(&out)?;
                        let mut bytes = 0;
                        for x in &r.records {
                            bytes += x.partition_key.len() + STANDARD.decode(x.data)?.len();
                        }
                        (r.records.len(), bytes, r.next_shard_iterator, r.millis_behind_latest)
                    }
                };
                t.latency_us.record(call.elapsed().as_micros() as u64)?;
                t.records += n as u64;
                t.bytes += bytes as u64;
                if n == 0 && behind == 0 {
                    return Ok(());
                }
                it = next.ok_or("no next iterator")?;
            }
        }
    }
}

async fn get_run(b: &TestBroker, api: Api, stream: &str, shards: u32) -> AnyResult<Tally> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..shards {
        let (shard, stream) = (format!("shardId-{s:012}"), stream.to_string());
        let ends = Ends { grpc: b.endpoint(), kinesis: b.kinesis_addr.ok_or("no Kinesis API")? };
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            read_shard(&ends, api, &stream, &shard, &mut t).await?;
            Ok::<Tally, Box<dyn std::error::Error + Send + Sync>>(t)
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        total.add(&task.await??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Fills `stream` over gRPC with `records` records.
async fn fill(b: &TestBroker, stream: &str, records: usize, record_bytes: usize) -> AnyResult<()> {
    let mut g = grpc_client(b.endpoint()).await?;
    let record = data(record_bytes);
    let mut sent = 0;
    while sent < records {
        let n = (records - sent).min(500);
        let req = pb::PutRecordsRequest {
            stream_name: stream.into(),
            records: keys(n, sent / 500 % 100)
                .into_iter()
                .map(|k| pb::PutRecordsEntry { partition_key: k, data: record.clone(), explicit_hash_key: None })
                .collect(),
        };
        let failed = g.put_records(req).await?.into_inner().failed_record_count;
        if failed > 0 {
            return Err("fill: records failed".into());
        }
        sent += n;
    }
    Ok(())
}

async fn create(b: &TestBroker, stream: &str, shards: u32) -> AnyResult<()> {
    let mut g = grpc_client(b.endpoint()).await?;
    g.create_stream(pb::CreateStreamRequest { stream_name: stream.into(), shard_count: shards, ..Default::default() })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> AnyResult<()> {
    let args = Args::parse();
    let durability = match args.durability.as_str() {
        "always" => DurabilityMode::Always,
        "never" => DurabilityMode::Never,
        other => return Err(format!("--durability must be always or never, not {other}").into()),
    };
    let dir = tempfile::tempdir()?;
    let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    config.quotas.enforce = false;
    config.durability.mode = durability;
    config.kinesis.request_bytes_max = 64 << 20;
    config.limits.http_max_header_bytes = args.http_max_header_bytes;
    let b = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    println!(
        "kinesis-bench: {} x {} B records per PutRecords, {} clients, {} shards, durability {}, {} s per put run, \
         http_max_header_bytes {}",
        args.batch,
        args.record_bytes,
        args.concurrency,
        args.shards,
        args.durability,
        args.seconds,
        args.http_max_header_bytes
    );
    // Each API's put time is cut into slices of about 2 s, run in rotating
    // order, so every API sees the same machine state: the log and the page
    // cache grow through the run (first-touch of memory showed as a growing
    // kernel copy cost in later runs), and other work on the cores comes and
    // goes.
    let apis = [Api::Grpc, Api::Json, Api::Cbor];
    let rounds = (args.seconds / 2).max(1);
    let slice = Duration::from_secs(args.seconds).div_f64(rounds as f64);
    let mut streams = Vec::new();
    for api in apis {
        let stream = format!("put-{}", api.name().replace(' ', "-").to_lowercase());
        create(&b, &stream, args.shards).await?;
        streams.push(stream);
    }
    let mut puts: Vec<Tally> = apis.iter().map(|_| Tally::new()).collect();
    for round in 0..rounds as usize {
        for k in 0..apis.len() {
            let i = (round + k) % apis.len();
            let cpu = process_cpu();
            let mut t = put_run(&b, apis[i], &streams[i], &args, slice).await?;
            t.cpu = process_cpu().saturating_sub(cpu);
            let elapsed = puts[i].elapsed + t.elapsed;
            puts[i].add(&t);
            puts[i].elapsed = elapsed;
        }
    }
    let mut put_rates = Vec::new();
    for (api, t) in apis.iter().zip(&puts) {
        println!("{}   CPU {:.2} us/record", t.line("put", *api), t.cpu_per_record_us());
        put_rates.push(t.records as f64 / t.elapsed.as_secs_f64());
    }
    create(&b, "read", args.shards).await?;
    fill(&b, "read", args.read_records, args.record_bytes).await?;
    let mut get_rates = Vec::new();
    for api in [Api::Grpc, Api::Json, Api::Cbor] {
        let t = get_run(&b, api, "read", args.shards).await?;
        if t.records != args.read_records as u64 {
            return Err(format!("{} read {} of {} records", api.name(), t.records, args.read_records).into());
        }
        println!("{}", t.line("get", api));
        get_rates.push(t.records as f64 / t.elapsed.as_secs_f64());
    }
    println!(
        "Kinesis / gRPC records/s: put JSON {:.0}%, put CBOR {:.0}%, get JSON {:.0}%, get CBOR {:.0}% (target: put >= 70%)",
        100.0 * put_rates[1] / put_rates[0],
        100.0 * put_rates[2] / put_rates[0],
        100.0 * get_rates[1] / get_rates[0],
        100.0 * get_rates[2] / get_rates[0]
    );
    println!(
        "gRPC / Kinesis CPU per put record (broker and load generator, one process): JSON {:.0}%, CBOR {:.0}%",
        100.0 * puts[0].cpu_per_record_us() / puts[1].cpu_per_record_us(),
        100.0 * puts[0].cpu_per_record_us() / puts[2].cpu_per_record_us()
    );
    b.stop().await?;
    Ok(())
}
