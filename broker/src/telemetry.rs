//! Metrics: one process-wide Prometheus recorder, rendered by the HTTP
//! admin port. Histograms get real buckets (not summaries) so they can be
//! aggregated.
//!
//! Every metric the broker records is listed once in [`METRICS`] with its
//! type, labels and meaning; the recorder is given each description (so
//! `/metrics` carries `# HELP` and `# TYPE` for all of them), and
//! `docs/metrics.md` is checked against the same list by a test. Names keep
//! two families apart: `stream_broker_consumer_group_*` is about consumer
//! groups, `stream_broker_fsync_*`/`stream_broker_commit_batch_*` about the
//! group commit of the log.
//!
//! Gauges that need a look at the data (every group's lag per shard, each
//! shard's stored records, bytes and segments) are computed by the broker
//! itself every `metrics.export_interval_ms` ([`run_exporter`]), so they
//! move whether or not anyone asks a group for its lag. When a group or
//! stream goes away, its series are set to 0 (the recorder cannot forget a
//! series), so no alert keeps firing on a lag that no longer exists.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::group::GroupManager;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As `# TYPE` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric the broker records.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: Kind,
    /// Its labels, comma-separated ("" for none).
    pub labels: &'static str,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, labels: &'static str, help: &'static str) -> MetricDoc {
    MetricDoc { name, kind, labels, help }
}

/// Every metric of the broker (see the module docs).
pub const METRICS: &[MetricDoc] = &[
    m("stream_broker_build_info", Kind::Gauge, "version", "Always 1; the label is the broker's release."),
    m("stream_broker_records_in_total", Kind::Counter, "stream", "Records stored and acknowledged."),
    m("stream_broker_bytes_in_total", Kind::Counter, "stream", "Key and data bytes of the records stored."),
    m(
        "stream_broker_throttled_records_total",
        Kind::Counter,
        "stream",
        "Records refused over a shard's write quota (the producer retries them).",
    ),
    m("stream_broker_records_out_total", Kind::Counter, "stream", "Records sent to readers and subscribers."),
    m("stream_broker_bytes_out_total", Kind::Counter, "stream", "Key and data bytes sent to readers and subscribers."),
    m("stream_broker_request_duration_seconds", Kind::Histogram, "method", "Time to answer a unary gRPC call."),
    m("stream_broker_request_errors_total", Kind::Counter, "method", "Unary gRPC calls answered with an error."),
    m("stream_broker_connections", Kind::Gauge, "", "Open client connections (gRPC, admin and Kinesis listeners)."),
    m(
        "stream_broker_refusals_total",
        Kind::Counter,
        "listener, reason",
        "Connections and requests a listener refused: over its connection cap, a failed or slow TLS handshake, \
         an idle connection, oversized headers.",
    ),
    m(
        "stream_broker_connections_max",
        Kind::Gauge,
        "",
        "Connections the gRPC listener accepts at once (limits.max_connections).",
    ),
    m(
        "stream_broker_subscription_buffer_bytes_limit",
        Kind::Gauge,
        "",
        "Bytes one SubscribeShard subscription may buffer.",
    ),
    m(
        "stream_broker_subscription_buffer_bytes_total_limit",
        Kind::Gauge,
        "",
        "Bytes all subscriptions together may buffer (limits.subscription_buffer_bytes_total).",
    ),
    m(
        "stream_broker_subscription_buffer_bytes_reserved",
        Kind::Gauge,
        "",
        "Subscription buffer bytes reserved by the subscriptions being served.",
    ),
    m("stream_broker_writer_threads", Kind::Gauge, "", "Threads that run the shard writers (storage.writer_threads)."),
    m(
        "stream_broker_connection_receive_window_bytes",
        Kind::Gauge,
        "",
        "HTTP/2 receive window of a gRPC connection: what one connection may make the broker buffer.",
    ),
    m("stream_broker_stream_receive_window_bytes", Kind::Gauge, "", "HTTP/2 receive window of one gRPC call."),
    m(
        "stream_broker_connection_write_buffer_bytes_max",
        Kind::Gauge,
        "",
        "Most bytes of small writes one connection holds until its next flush.",
    ),
    m("stream_broker_subscriptions", Kind::Gauge, "", "SubscribeShard calls being served."),
    m(
        "stream_broker_subscriptions_refused_total",
        Kind::Counter,
        "",
        "SubscribeShard calls refused (per-shard or broker-wide buffer limit).",
    ),
    m("stream_broker_streams", Kind::Gauge, "", "Streams in the broker."),
    m("stream_broker_shard_next_sequence", Kind::Gauge, "stream,shard", "Sequence number the next record will get."),
    m("stream_broker_shard_records", Kind::Gauge, "stream,shard", "Records stored (after retention)."),
    m("stream_broker_shard_stored_bytes", Kind::Gauge, "stream,shard", "Bytes in the shard's segment files."),
    m("stream_broker_shard_segments", Kind::Gauge, "stream,shard", "Segment files of the shard."),
    m("stream_broker_shard_writable", Kind::Gauge, "stream,shard", "1 while the shard accepts writes."),
    m("stream_broker_shard_failed", Kind::Gauge, "stream,shard", "1 while the shard is failed (needs a repair)."),
    m("stream_broker_fsync_seconds", Kind::Histogram, "", "Time of one fdatasync of a shard log (group commit)."),
    m(
        "stream_broker_commit_batch_requests",
        Kind::Histogram,
        "",
        "Produce requests acknowledged by one fdatasync (the group commit's size).",
    ),
    m("stream_broker_disk_free_bytes", Kind::Gauge, "", "Free bytes on the data directory's filesystem."),
    m("stream_broker_disk_watermark_bytes", Kind::Gauge, "", "Free bytes below which writes are refused."),
    m("stream_broker_disk_full", Kind::Gauge, "", "1 while free space is below the watermark."),
    m("stream_broker_disk_reserve_bytes", Kind::Gauge, "", "Size of the reserve file kept for the metadata store."),
    m(
        "stream_broker_disk_full_refusals_total",
        Kind::Counter,
        "",
        "Writes refused because the disk is below its watermark.",
    ),
    m("stream_broker_permission_denied_total", Kind::Counter, "action", "Calls refused by authorization, by action."),
    m(
        "stream_broker_consumer_group_lag_records",
        Kind::Gauge,
        "stream,group,shard",
        "Records of the shard the group has not committed yet.",
    ),
    m(
        "stream_broker_consumer_group_lag_ms",
        Kind::Gauge,
        "stream,group,shard",
        "Age of the oldest record the group has not committed yet (0 when none).",
    ),
    m(
        "stream_broker_consumer_group_rebalances_total",
        Kind::Counter,
        "",
        "Assignment changes (members joining, leaving or expiring).",
    ),
    m("stream_broker_consumer_group_lease_grants_total", Kind::Counter, "", "Shard leases granted to members."),
    m(
        "stream_broker_consumer_group_revocations_total",
        Kind::Counter,
        "",
        "Shard leases revoked so the shard can move to another member.",
    ),
    m(
        "stream_broker_consumer_group_forced_revocations_total",
        Kind::Counter,
        "",
        "Revoked leases moved without the owner's release (it did not answer in time).",
    ),
    m(
        "stream_broker_consumer_group_skipped_records_total",
        Kind::Counter,
        "",
        "Records a group's checkpoint pointed before, deleted by retention first.",
    ),
    m("stream_broker_consumer_group_read_errors_total", Kind::Counter, "", "Group polls that failed to read a shard."),
];

/// How the daemons write their logs (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs logging to stderr for the broker and the order service: the
/// `RUST_LOG` filter (`info,sled=warn` style; `default_filter` when unset),
/// ANSI colour only when stderr is a terminal, and JSON lines with
/// [`LogFormat::Json`].
pub fn init_logs(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// What `--help` of both daemons says about logging.
pub const LOG_HELP: &str = "Logs go to stderr. RUST_LOG sets what is logged, like RUST_LOG=info \
(the default), RUST_LOG=debug, or RUST_LOG=info,broker::group=debug; colour is used only on a terminal.";

/// The recorder's handle, installing the recorder on first use. If another
/// recorder is installed already (a host application's), metrics go there
/// and this handle renders an empty page.
pub fn prometheus() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_requests".into()), COUNT_BUCKETS))
            .expect("bucket lists are non-empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder is already installed; /metrics will be empty");
        }
        describe();
        metrics::gauge!("stream_broker_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// Gives the recorder every metric's help text.
fn describe() {
    for d in METRICS {
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, d.help),
        }
    }
}

/// Computes the data-dependent gauges every `every` until `shutdown`.
pub async fn run_exporter(
    catalog: Arc<Catalog>,
    groups: Arc<GroupManager>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut exported = Exported::default();
    loop {
        export(&catalog, &groups, &mut exported).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Label sets set by the last pass, to zero those that disappear.
#[derive(Debug, Default)]
struct Exported {
    shards: HashSet<(String, String)>,
    lags: HashSet<(String, String, String)>,
}

async fn export(catalog: &Catalog, groups: &GroupManager, last: &mut Exported) {
    let streams = catalog.all();
    metrics::gauge!("stream_broker_streams").set(streams.len() as f64);
    let mut shards = HashSet::new();
    for stream in &streams {
        let name = stream.meta().name;
        for shard in &stream.shards() {
            // A failed shard has no stats; its gauges keep their last values.
            let Some(st) = shard.stats() else { continue };
            let labels = [("stream", name.clone()), ("shard", shard.id.clone())];
            metrics::gauge!("stream_broker_shard_records", &labels).set((st.next_seq - st.first_seq) as f64);
            metrics::gauge!("stream_broker_shard_stored_bytes", &labels).set(st.bytes as f64);
            metrics::gauge!("stream_broker_shard_segments", &labels).set(st.segments as f64);
            shards.insert((name.clone(), shard.id.clone()));
        }
    }
    for (stream, shard) in last.shards.difference(&shards) {
        let labels = [("stream", stream.clone()), ("shard", shard.clone())];
        for name in ["stream_broker_shard_records", "stream_broker_shard_stored_bytes", "stream_broker_shard_segments"]
        {
            metrics::gauge!(name, &labels).set(0.0);
        }
    }
    last.shards = shards;

    let mut lags = HashSet::new();
    for l in groups.lag().await {
        let labels = [("stream", l.stream.clone()), ("group", l.group.clone()), ("shard", l.shard.clone())];
        metrics::gauge!("stream_broker_consumer_group_lag_records", &labels).set(l.records as f64);
        metrics::gauge!("stream_broker_consumer_group_lag_ms", &labels).set(l.ms as f64);
        lags.insert((l.stream, l.group, l.shard));
    }
    for (stream, group, shard) in last.lags.difference(&lags) {
        let labels = [("stream", stream.clone()), ("group", group.clone()), ("shard", shard.clone())];
        metrics::gauge!("stream_broker_consumer_group_lag_records", &labels).set(0.0);
        metrics::gauge!("stream_broker_consumer_group_lag_ms", &labels).set(0.0);
    }
    last.lags = lags;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_once_with_its_type() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
            .expect("docs/metrics.md");
        let mut seen = HashSet::new();
        for d in METRICS {
            assert!(seen.insert(d.name), "{} is listed twice", d.name);
            assert!(d.name.starts_with("stream_broker_"), "{}", d.name);
            let row = format!("| `{}` | {} |", d.name, d.kind.as_str());
            assert!(doc.contains(&row), "docs/metrics.md has no row starting {row:?}");
            if d.kind == Kind::Counter {
                assert!(d.name.ends_with("_total"), "a counter ends in _total: {}", d.name);
            }
        }
        // Nothing is called group_* unless it is about consumer groups.
        assert!(METRICS.iter().all(|d| !d.name.starts_with("stream_broker_group_")));
    }
}
