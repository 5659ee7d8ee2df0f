//! `security-bench`: what TLS and authentication cost on the produce path.
//!
//! One in-process broker per mode: `plain` (no TLS, authentication off),
//! `tls` (gRPC over TLS with a test CA's certificate, authentication off)
//! and `tls+auth` (TLS, `auth.enabled`, the producers sending a token whose
//! principal has a `record:put` grant, so every call is authenticated and
//! authorized). In each, `--clients` connections run for `--seconds`:
//! - batched: PutRecords of `--batch` records of `--record-bytes`, one call
//!   outstanding per connection;
//! - unary: PutRecord of 100 B, `--window` calls outstanding per connection.
//!
//! The per-principal request rate is lifted in `tls+auth` (it is a guard,
//! not a cost). Certificates are generated at start (rcgen) and never written outside a
//! temporary directory. Quotas are off; durability is `always` unless
//! `--durability never` (which shows the CPU cost without the disk's).
//! The three brokers run at once and the modes take turns for `--rounds`
//! rounds; prints each mode's median records/s and per-call p50/p99 and its
//! ratio to `plain`. Latency is from just before a call to its answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::clock::SystemClock;
use broker::config::{BrokerConfig, DurabilityMode};
use broker::testing::TestBroker;
use bytes::Bytes;
use clap::Parser;
use client::{Admin, ConnectOptions, Connection, Secret, TlsOptions};
use hdrhistogram::Histogram;
use proto::v1 as pb;
use proto::v1::stream_broker_client::StreamBrokerClient;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, Parser)]
#[command(about = "The cost of TLS and authentication on the produce path")]
struct Args {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections (one producer task each in batched runs).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Records per PutRecords in batched runs.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Data bytes per record in batched runs.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// PutRecord calls outstanding per connection in unary runs.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Rounds; every mode runs once per round, and the median of its rounds is printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `always` (fdatasync before every ack) or `never`.
    #[arg(long, default_value = "always")]
    durability: String,
}

/// What one mode measured.
struct Figures {
    records_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let durability = match args.durability.as_str() {
        "always" => DurabilityMode::Always,
        "never" => DurabilityMode::Never,
        other => return Err(format!("--durability must be always or never, got {other:?}").into()),
    };
    let dir = tempfile::tempdir()?;
    let (tls_files, ca_pem) = certificates(dir.path())?;
    println!(
        "security-bench: {} clients, {} s per run, {} rounds (medians), durability {}; batched {} x {} B, unary 100 B with {} in flight per client",
        args.clients, args.seconds, args.rounds, args.durability, args.batch, args.record_bytes, args.window
    );
    // All three brokers run at once and the modes take turns, round after
    // round: a machine whose speed drifts (a shared disk, a noisy
    // neighbour) then shifts every mode alike, and the medians compare.
    let modes = ["plain", "tls", "tls+auth"];
    let mut setups = Vec::new();
    for mode in modes {
        let mut config = BrokerConfig { data_dir: dir.path().join(mode), ..BrokerConfig::default() };
        config.durability.mode = durability;
        config.quotas.enforce = false;
        let tls = mode != "plain";
        if tls {
            config.tls.cert_file = Some(tls_files.0.clone());
            config.tls.key_file = Some(tls_files.1.clone());
        }
        let admin_token = broker::auth::token::generate()?.token;
        if mode == "tls+auth" {
            let file = dir.path().join("admin.token");
            std::fs::write(&file, format!("{admin_token}\n"))?;
            config.auth.enabled = true;
            config.auth.bootstrap_token_file = Some(file);
            // The per-principal rate limit is a guard, not what is measured.
            config.auth.requests_per_sec_per_principal = 100_000_000;
        }
        let b = TestBroker::start_with(config, Arc::new(SystemClock)).await;
        let addr = if tls { format!("https://{}", b.grpc_addr) } else { format!("http://{}", b.grpc_addr) };
        let options = |token: Option<Secret>| ConnectOptions {
            tls: tls.then(|| TlsOptions { ca_pem: ca_pem.clone().into_bytes(), ..TlsOptions::default() }),
            token,
            ..ConnectOptions::default()
        };
        let admin_options = options((mode == "tls+auth").then(|| Secret::new(admin_token.clone())));
        let admin = Admin::from_channel(Connection::open(&addr, &admin_options).await?);
        admin
            .create_stream(pb::CreateStreamRequest { stream_name: "s".into(), shard_count: 4, ..Default::default() })
            .await?;
        let producer = if mode == "tls+auth" {
            let access = admin.access();
            access.create_principal("producer", "security-bench").await?;
            let (_, token) = access.create_token("producer", "security-bench", None).await?;
            access.add_grant(client::allow("producer", "record:put", "stream:s")).await?;
            options(Some(token))
        } else {
            options(None)
        };
        setups.push((mode, b, addr, producer));
    }
    // Per mode: batched and unary figures of every round.
    let mut figures: Vec<(Vec<Figures>, Vec<Figures>)> = modes.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for _ in 0..args.rounds {
        for (i, (_, _, addr, producer)) in setups.iter().enumerate() {
            figures[i].0.push(run(addr, producer, &args, false).await?);
            figures[i].1.push(run(addr, producer, &args, true).await?);
        }
    }
    let median = |v: &mut Vec<Figures>| {
        v.sort_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
        v.swap_remove(v.len() / 2)
    };
    let medians: Vec<(Figures, Figures)> = figures.iter_mut().map(|(b, u)| (median(b), median(u))).collect();
    for ((mode, ..), (batched, unary)) in setups.iter().zip(&medians) {
        for (what, f, base) in [("batched", batched, &medians[0].0), ("unary", unary, &medians[0].1)] {
            println!(
                "{mode:<9} {what:<8} {:>10.0} records/s   p50 {:>7.2} ms   p99 {:>7.2} ms   {:.2} x plain",
                f.records_per_sec,
                f.p50_ms,
                f.p99_ms,
                f.records_per_sec / base.records_per_sec
            );
        }
    }
    for (_, b, ..) in setups {
        b.stop().await?;
    }
    Ok(())
}

/// Runs one measurement: batched PutRecords or unary PutRecord calls.
async fn run(
    addr: &str,
    options: &ConnectOptions,
    args: &Args,
    unary: bool,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let client = StreamBrokerClient::new(Connection::open(addr, options).await?);
        let lanes = if unary { args.window } else { 1 };
        for lane in 0..lanes {
            let mut client = client.clone();
            let data = Bytes::from(vec![b'x'; if unary { 100 } else { args.record_bytes }]);
            let batch = if unary { 1 } else { args.batch };
            tasks.spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut records = 0u64;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let key = format!("k{c}-{lane}-{n}");
                    let t = Instant::now();
                    if unary {
                        let req = pb::PutRecordRequest {
                            stream_name: "s".into(),
                            partition_key: key,
                            data: data.clone(),
                            ..Default::default()
                        };
                        client.put_record(req).await.map_err(|e| e.to_string())?;
                    } else {
                        let entries = (0..batch)
                            .map(|i| pb::PutRecordsEntry {
                                partition_key: format!("{key}-{i}"),
                                data: data.clone(),
                                explicit_hash_key: None,
                            })
                            .collect();
                        let resp = client
                            .put_records(pb::PutRecordsRequest { stream_name: "s".into(), records: entries })
                            .await
                            .map_err(|e| e.to_string())?
                            .into_inner();
                        if resp.failed_record_count > 0 {
                            return Err(format!("{} records failed", resp.failed_record_count));
                        }
                    }
                    h.record(t.elapsed().as_micros() as u64).expect("record");
                    records += batch as u64;
                    n += 1;
                }
                Ok::<_, String>((records, h))
            });
        }
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut records = 0u64;
    while let Some(r) = tasks.join_next().await {
        let (n, h) = r??;
        records += n;
        all.add(&h)?;
    }
    Ok(Figures {
        records_per_sec: records as f64 / started.elapsed().as_secs_f64(),
        p50_ms: all.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// A CA and a server certificate for 127.0.0.1, written under `dir`:
/// ((certificate, key) files, the CA's PEM).
fn certificates(dir: &Path) -> Result<((std::path::PathBuf, std::path::PathBuf), String), Box<dyn std::error::Error>> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "security-bench CA");
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "stream-broker");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    let (cert_file, key_file) = (dir.join("broker.pem"), dir.join("broker.key"));
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok(((cert_file, key_file), ca_pem))
}
