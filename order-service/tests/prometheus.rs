//! A real Prometheus (Debian's `prometheus` package, installed by
//! `.ci/install-prometheus`) scrapes a running order service and its
//! embedded broker, evaluates the rules in `deploy/prometheus/rules/`, and
//! is asked through its HTTP API whether the lag, throughput and order-flow
//! series exist and move. `promtool check rules` checks the same rule files.
//! Without the binaries both tests say so on stderr and pass.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Longest wait for a series to reach a value (scrapes every second, the
/// broker computes lag every 5 s).
const WAIT: Duration = Duration::from_secs(120);

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules")
}

fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .expect("deploy/prometheus/rules")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Whether `program` runs; says on stderr that the test is skipped when not.
fn installed(program: &str) -> bool {
    let ok = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        eprintln!("SKIPPED: {program} is not installed (Debian package prometheus; see .ci/install-prometheus)");
    }
    ok
}

#[test]
fn promtool_accepts_every_rule_file() {
    if !installed("promtool") {
        return;
    }
    let files = rule_files();
    assert!(files.iter().any(|f| f.ends_with("recording.yml")), "{files:?}");
    let out = Command::new("promtool").arg("check").arg("rules").args(&files).output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `%XX` for everything but unreserved characters.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Prometheus {
    /// The values of an instant query's series (empty when none).
    async fn query(&self, promql: &str) -> Vec<f64> {
        let r = get(self.addr, &format!("/api/v1/query?query={}", encode(promql))).await;
        if r.status != 200 {
            return Vec::new();
        }
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        body["data"]["result"]
            .as_array()
            .map(|series| series.iter().filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse().ok())).collect())
            .unwrap_or_default()
    }

    /// Waits until `promql`'s single value satisfies `ok`; returns it.
    async fn until(&self, promql: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let ok = &ok;
        eventually(WAIT, what, || async move {
            match self.query(promql).await.as_slice() {
                [v] if ok(*v) => Some(*v),
                _ => None,
            }
        })
        .await
    }
}

fn start_prometheus(dir: &Path, targets: &[(&str, SocketAddr)], port: SocketAddr) -> Prometheus {
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n");
    for f in rule_files() {
        config.push_str(&format!("  - {}\n", f.display()));
    }
    config.push_str("scrape_configs:\n");
    for (job, addr) in targets {
        config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus { child, addr: port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_lag_throughput_and_order_flow_move() {
    if !installed("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    // The embedded broker's admin port must be known to be scraped.
    config.broker_admin_addr = free_port().await;
    config.delivery_simulator_delay_ms = 60_000;
    let admin_addr = config.broker_admin_addr;
    let svc = start(config).await;
    let broker = svc.running.broker_addr.clone();
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let prom = start_prometheus(
        prom_dir.path(),
        &[("stream-broker", admin_addr), ("order-service", svc.addr)],
        free_port().await,
    );
    let log = || std::fs::read_to_string(prom_dir.path().join("prometheus.log")).unwrap_or_default();
    // Prometheus takes a moment to listen, then to load its rules.
    let p = &prom;
    eventually(
        WAIT,
        "prometheus listening",
        || async move { tokio::net::TcpStream::connect(p.addr).await.ok().map(drop) },
    )
    .await;
    eventually(WAIT, "prometheus ready", || async move { (get(p.addr, "/-/ready").await.status == 200).then_some(()) })
        .await;
    for job in ["stream-broker", "order-service"] {
        let p = &prom;
        let up = eventually(WAIT, &format!("{job} scraped"), || async move {
            p.query(&format!("up{{job=\"{job}\"}}")).await.first().copied()
        })
        .await;
        assert_eq!(up, 1.0, "{job} is up; prometheus log:\n{}", log());
    }

    // Order flow: orders created are counted and the count moves.
    for _ in 0..3 {
        assert_eq!(post(svc.addr, "/order", SEED_ORDER).await.status, 201);
    }
    prom.until("sum(order_service_orders_created_total)", "3 orders created", |v| v == 3.0).await;
    assert_eq!(post(svc.addr, "/order", SEED_ORDER).await.status, 201);
    prom.until("sum(order_service_orders_created_total)", "4 orders created", |v| v == 4.0).await;

    // Throughput: the outbox published the events, so records went in; the
    // recording rule turns the counter into a rate.
    let stored = prom
        .until("sum(stream_broker_records_in_total{stream=\"order-events\"})", "order events stored", |v| v >= 4.0)
        .await;
    // A rate needs the counter to move after Prometheus first saw it (the
    // relay may have published all four in one batch before that scrape).
    assert_eq!(post(svc.addr, "/order", SEED_ORDER).await.status, 201);
    prom.until("sum(stream_broker_records_in_total{stream=\"order-events\"})", "one more event stored", |v| v > stored)
        .await;
    prom.until("sum(stream_broker:records_in:rate1m)", "the recorded rate", |v| v > 0.0).await;

    // Lag: a group that joined and left behind 20 records lags by 20, and by
    // 0 once it has consumed them, without anyone asking the broker for it.
    let admin = client::Admin::connect(&broker).await.expect("admin");
    let req = client::types::CreateStreamRequest { stream_name: "lagged".into(), shard_count: 2, ..Default::default() };
    admin.create_stream(req).await.expect("create");
    let producer =
        client::Producer::connect(&broker, "lagged", client::ProducerConfig::default()).await.expect("producer");
    for i in 0..20 {
        producer.send(format!("k{i}"), "x").await.expect("send").await.expect("ack");
    }
    producer.close().await.expect("close");
    let member = client::Consumer::join(&broker, "lagged", client::ConsumerConfig::new("slow")).await.expect("join");
    member.leave().await.expect("leave");
    let lag = "stream_broker:consumer_group_lag_records:sum{stream=\"lagged\",group=\"slow\"}";
    prom.until(lag, "lag of 20", |v| v == 20.0).await;
    let mut member =
        client::Consumer::join(&broker, "lagged", client::ConsumerConfig::new("slow")).await.expect("join");
    let mut done = 0;
    while done < 20 {
        let records = member.poll().await.expect("poll");
        member.commit(&records).await.expect("commit");
        done += records.len();
    }
    member.leave().await.expect("leave");
    prom.until(lag, "lag back to 0", |v| v == 0.0).await;
    assert!(
        !prom.query("stream_broker_consumer_group_lag_ms{stream=\"lagged\"}").await.is_empty(),
        "lag in ms is scraped too"
    );
    drop(prom);
    svc.running.stop().await.expect("clean stop");
}
