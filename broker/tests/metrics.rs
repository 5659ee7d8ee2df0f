//! `/metrics` as Prometheus sees it: every metric has `# HELP` and
//! `# TYPE`, and the broker updates consumer-group lag and shard storage
//! gauges by itself, without anyone describing a group. (One test in its
//! own binary: the recorder is process-wide.)

use std::sync::Arc;
use std::time::Duration;

use broker::clock::SystemClock;
use broker::config::BrokerConfig;
use broker::testing::TestBroker;
use client::{Admin, Consumer, ConsumerConfig, Producer, ProducerConfig};

/// Longest wait for a gauge to reach a value.
const WAIT: Duration = Duration::from_secs(60);

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text
}

/// The sum of every series of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric == name && labels.iter().all(|l| rest.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().expect("a number");
        }
    }
    found
}

/// Scrapes until `name{labels}` sums to `want`; returns the last page.
async fn wait_for(addr: std::net::SocketAddr, name: &str, labels: &[&str], want: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if sum(&text, name, labels) == Some(want) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}{labels:?} never reached {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_and_storage_gauges_move_by_themselves_and_every_metric_has_help() {
    let mut config = BrokerConfig::default();
    config.metrics.export_interval_ms = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    config.data_dir = dir.path().to_path_buf();
    let broker = TestBroker::start_with(config, Arc::new(SystemClock)).await;
    let addr = broker.endpoint();
    let admin = Admin::connect(&addr).await.expect("connect");
    admin
        .create_stream(client::types::CreateStreamRequest {
            stream_name: "m".into(),
            shard_count: 2,
            ..Default::default()
        })
        .await
        .expect("create");
    let producer = Producer::connect(&addr, "m", ProducerConfig::default()).await.expect("producer");
    for i in 0..10 {
        producer.send(format!("k{i}"), format!("v{i}")).await.expect("send").await.expect("ack");
    }
    producer.close().await.expect("close");

    // A group that joined and left without committing lags by every record.
    let consumer = Consumer::join(&addr, "m", ConsumerConfig::new("g")).await.expect("join");
    consumer.leave().await.expect("leave");
    let lag = ["stream=\"m\"", "group=\"g\""];
    wait_for(broker.http_addr, "stream_broker_consumer_group_lag_records", &lag, 10.0).await;
    let text = scrape(broker.http_addr).await;
    assert!(sum(&text, "stream_broker_consumer_group_lag_ms", &lag).is_some_and(|ms| ms >= 0.0), "{text}");
    assert!(sum(&text, "stream_broker_shard_stored_bytes", &["stream=\"m\""]).is_some_and(|b| b > 0.0), "{text}");
    assert!(sum(&text, "stream_broker_shard_segments", &["stream=\"m\""]).is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(sum(&text, "stream_broker_shard_records", &["stream=\"m\""]), Some(10.0));
    assert_eq!(sum(&text, "stream_broker_streams", &[]), Some(1.0));
    assert_eq!(
        sum(&text, "stream_broker_build_info", &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert!(sum(&text, "stream_broker_connections", &[]).is_some_and(|n| n >= 1.0), "{text}");

    // Consuming and committing everything brings the lag to 0, again by itself.
    let mut consumer = Consumer::join(&addr, "m", ConsumerConfig::new("g")).await.expect("join");
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while done < 10 {
        assert!(tokio::time::Instant::now() < deadline, "consumed only {done} of 10");
        let records = consumer.poll().await.expect("poll");
        consumer.commit(&records).await.expect("commit");
        done += records.len();
    }
    consumer.leave().await.expect("leave");
    wait_for(broker.http_addr, "stream_broker_consumer_group_lag_records", &lag, 0.0).await;

    // A deleted group's series drop to 0 rather than keep their last value.
    let producer = Producer::connect(&addr, "m", ProducerConfig::default()).await.expect("producer");
    producer.send("late", "x").await.expect("send").await.expect("ack");
    producer.close().await.expect("close");
    wait_for(broker.http_addr, "stream_broker_consumer_group_lag_records", &lag, 1.0).await;
    admin.delete_group("m", "g").await.expect("delete group");
    wait_for(broker.http_addr, "stream_broker_consumer_group_lag_records", &lag, 0.0).await;

    // Every metric on the page has its help and type.
    let text = scrape(broker.http_addr).await;
    let typed: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    assert!(typed.len() > 20, "{text}");
    for name in typed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no # HELP");
        assert!(
            broker::telemetry::METRICS.iter().any(|d| d.name == name),
            "{name} is not in METRICS (docs/metrics.md)"
        );
    }
}
