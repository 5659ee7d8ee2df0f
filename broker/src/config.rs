//! Broker configuration: defaults, then a TOML file, then `STREAM_BROKER_*`
//! environment variables, then command-line flags. Every key is checked at
//! start, and an error names the key. `deploy/broker.toml` documents every
//! key with its default.
//!
//! Environment variables name a key by its path, upper-cased, with `__`
//! between table and key: `STREAM_BROKER_DURABILITY__MODE=interval`,
//! `STREAM_BROKER_DATA_DIR=/var/lib/stream-broker`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::quota::QuotaValues;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "STREAM_BROKER_";

/// When an acknowledged produce is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge after fdatasync, by group commit. The default.
    Always,
    /// Acknowledge after write; fdatasync every `durability.interval_ms`.
    Interval,
    /// Acknowledge after write; fdatasync at segment roll and shutdown only.
    Never,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where shard logs and the metadata store live.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP admin (metrics, health) listen address.
    pub http_addr: SocketAddr,
    /// Durability of acknowledged writes.
    pub durability: DurabilityConfig,
    /// Default per-shard quotas.
    pub quotas: QuotaConfig,
    /// Segment files.
    pub storage: StorageConfig,
    /// Retention janitor.
    pub retention: RetentionConfig,
    /// Limits on clients and queues.
    pub limits: LimitsConfig,
    /// Consumer groups.
    pub groups: GroupsConfig,
    /// TLS on the gRPC and admin listeners.
    pub tls: TlsConfig,
    /// Authentication and authorization.
    pub auth: AuthConfig,
    /// The Kinesis-compatible HTTP API.
    pub kinesis: KinesisConfig,
    /// The framed produce protocol.
    pub wire: WireConfig,
    /// The web console on the admin port.
    pub console: ConsoleConfig,
    /// Split, merge and UpdateShardCount.
    pub reshard: ReshardConfig,
    /// Gauges computed by the broker itself.
    pub metrics: MetricsConfig,
}

/// `[console]`: the web console at `/ui` and its JSON API at `/api/v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console and its API on the admin port.
    pub enabled: bool,
    /// Allow the console's mutating calls (create a stream, change
    /// retention, reset a group, replay a dead-lettered record); off, they
    /// answer 403 and the console is read-only.
    pub mutations: bool,
    /// How often rates and consumer-group lag are sampled.
    pub sample_interval_ms: u64,
    /// Samples kept per series.
    pub history_points: usize,
    /// Consumer groups whose lag is sampled into a history.
    pub lag_groups_max: usize,
    /// Most records one message-browser read (or download) returns.
    pub records_max: usize,
    /// Most records one partition-key search scans.
    pub scan_records_max: usize,
    /// The order service's HTTP API; empty hides the order pages.
    pub order_service_url: String,
    /// The order system's streams, where an order's events are looked for.
    pub order_streams: Vec<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mutations: false,
            sample_interval_ms: 1000,
            history_points: 300,
            lag_groups_max: 64,
            records_max: 1000,
            scan_records_max: 100_000,
            order_service_url: String::new(),
            order_streams: vec!["order-events".into(), "deliveryServiceQueue".into(), "customerServiceQueue".into()],
        }
    }
}

/// `[tls]`: off unless `cert_file` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; setting it turns TLS on.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates for client certificates (mutual TLS); the
    /// certificate's subject common name is the client's principal.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` (clients without a certificate
    /// need a token) or `required` (no handshake without one).
    pub client_auth: crate::auth::tls::ClientAuth,
    /// Whether the admin port (metrics, health) uses TLS too.
    pub admin: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: crate::auth::tls::ClientAuth::Optional,
            admin: true,
        }
    }
}

impl TlsConfig {
    /// The listener files, when TLS is on.
    pub fn files(&self) -> Option<crate::auth::tls::TlsFiles> {
        Some(crate::auth::tls::TlsFiles {
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            client_ca_file: self.client_ca_file.clone(),
            client_auth: self.client_auth,
        })
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Authenticate every caller (tokens, client certificates, Kinesis
    /// access keys) and authorize every call against its grants. Off: every
    /// caller is anonymous and may do everything, so the broker listens on
    /// loopback addresses only unless `insecure_allow_anonymous` is set.
    pub enabled: bool,
    /// Serve anonymous callers on a non-loopback address while
    /// authentication is off (development only).
    pub insecure_allow_anonymous: bool,
    /// A file holding a token (at least 32 characters) that authenticates
    /// as the built-in principal `admin`, allowed everything; how the
    /// first principals and grants are made.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Principals allowed everything, e.g. an operator certificate's common name.
    pub super_users: Vec<String>,
    /// Long-lived calls (Produce, SubscribeShard, group long polls) check
    /// their caller's credentials and grants again this often.
    pub recheck_interval_ms: u64,
    /// Requests per second one principal may make (one-second burst);
    /// anonymous callers count per client address.
    pub requests_per_sec_per_principal: u64,
    /// The principal of each Kinesis access key (`kinesis.access_keys`,
    /// strict mode); a key not listed is the principal named by its id.
    pub access_key_principals: std::collections::BTreeMap<String, String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            insecure_allow_anonymous: false,
            bootstrap_token_file: None,
            super_users: Vec::new(),
            recheck_interval_ms: 2_000,
            requests_per_sec_per_principal: 10_000,
            access_key_principals: std::collections::BTreeMap::new(),
        }
    }
}

/// How the Kinesis API checks SigV4 signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KinesisAuth {
    /// A well-formed SigV4 `Authorization` header (or presigned query) is
    /// required; the signature is not checked. For development.
    Permissive,
    /// The signature is verified against `kinesis.access_keys`; bad, stale
    /// or missing signatures are refused.
    Strict,
}

/// One access key pair of the Kinesis API's strict mode.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    /// The access key id (`AKIA...`), as clients put it in the credential scope.
    pub access_key_id: String,
    /// The secret the client signs with.
    pub secret_access_key: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// `[wire]`: PutRecord and PutRecords in length-prefixed binary frames
/// (`proto::wire`), for producers that send one record per call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WireConfig {
    /// Whether the listener runs at all.
    pub enabled: bool,
    /// Its listen address (TLS when `[tls]` is set, ALPN `sbw/1`).
    pub addr: SocketAddr,
}

impl Default for WireConfig {
    fn default() -> Self {
        Self { enabled: true, addr: SocketAddr::from(([127, 0, 0, 1], 7472)) }
    }
}

/// `[kinesis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    /// Whether the Kinesis API listens at all.
    pub enabled: bool,
    /// Its listen address (HTTP/1.1 and HTTP/2 cleartext).
    pub addr: SocketAddr,
    /// The region in ARNs and the one accepted in ARNs and signatures.
    pub region: String,
    /// The 12-digit account id in ARNs.
    pub account_id: String,
    /// Signature checking.
    pub auth: KinesisAuth,
    /// Key pairs accepted in strict mode.
    pub access_keys: Vec<AccessKey>,
    /// Largest request body accepted; larger ones get 413.
    pub request_bytes_max: usize,
    /// On-demand streams allowed (Kinesis's account default is 50).
    pub on_demand_stream_count_limit: u32,
    /// How long a newly registered consumer stays CREATING before it is
    /// ACTIVE and can subscribe.
    pub consumer_activation_ms: u64,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 4567)),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            auth: KinesisAuth::Permissive,
            access_keys: Vec::new(),
            request_bytes_max: 16 * 1024 * 1024,
            on_demand_stream_count_limit: 50,
            consumer_activation_ms: 500,
        }
    }
}

/// `[reshard]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReshardConfig {
    /// UpdateShardCount calls accepted per stream within any
    /// `scalings_window_ms` (AWS: 10 per rolling 24 hours).
    pub scalings_max: u32,
    /// The rolling window of `scalings_max`.
    pub scalings_window_ms: u64,
}

impl Default for ReshardConfig {
    fn default() -> Self {
        Self { scalings_max: 10, scalings_window_ms: 24 * 3_600_000 }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How often group lag and shard storage gauges are computed.
    pub export_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { export_interval_ms: 5_000 }
    }
}

/// `[groups]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// A member that neither heartbeats nor polls for this long leaves the group.
    pub session_timeout_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self { session_timeout_ms: 10_000 }
    }
}

/// `[durability]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// `always`, `interval` or `never`.
    pub mode: DurabilityMode,
    /// fdatasync period in `interval` mode.
    pub interval_ms: u64,
}

/// `[quotas]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// When false, no quota is enforced (for benchmarks).
    pub enforce: bool,
    /// Records per second in, per shard.
    pub write_records_per_sec: u64,
    /// Bytes per second in (keys and data), per shard.
    pub write_bytes_per_sec: u64,
    /// GetRecords calls per second, per shard.
    pub read_calls_per_sec: u64,
    /// Bytes per second out through GetRecords, per shard; also each
    /// SubscribeShard call's own budget.
    pub read_bytes_per_sec: u64,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Segment size at which a shard log rolls.
    pub segment_bytes_max: u64,
    /// Segment age at which a shard log rolls.
    pub segment_age_max_ms: u64,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// Free-space watermark: below this many free bytes on the data
    /// directory's filesystem, writes are refused (retryable `DiskFull`)
    /// before a write can hit ENOSPC and tear a segment. 0 (with
    /// `min_free_percent` 0) turns the watermark off.
    pub min_free_bytes: u64,
    /// The watermark as a share of the filesystem's size; the larger of the
    /// two applies.
    pub min_free_percent: u8,
    /// Size of `<data_dir>/reserve`, a file of allocated blocks the broker
    /// keeps so that it can give space back to its metadata store when the
    /// disk fills up (and start on a full disk). 0: no reserve, and then no
    /// start on a disk full to the last byte (sled must write to open).
    pub reserve_bytes: u64,
    /// How often free space is measured; writes resume at most this long
    /// after space is freed.
    pub free_space_check_interval_ms: u64,
    /// Threads that run every shard's writer (group commit, `fdatasync`):
    /// at most this many shards commit at once, however many shards there are.
    pub writer_threads: usize,
}

/// `[retention]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often the janitor looks for expired segments.
    pub check_interval_ms: u64,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted or sent.
    pub grpc_max_message_bytes: usize,
    /// Open client connections; more are refused until one closes.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Deadline of a unary call.
    pub request_timeout_ms: u64,
    /// Produce requests queued per shard before producers wait.
    pub shard_queue_depth: usize,
    /// Most produce requests one group commit covers.
    pub group_commit_max_requests: usize,
    /// While a shard commits often (`durability.mode = always`, 20 commits
    /// in the last 100 ms), its writer waits up to this long for more
    /// requests before it commits, ending early once 32 requests or 256 KiB
    /// are gathered, so one `fdatasync` covers more. 0: never wait.
    pub group_commit_delay_us: u64,
    /// Concurrent SubscribeShard calls per shard: Kinesis's 20 registered
    /// consumers per stream, each subscribed to each shard at most once.
    pub subscribers_per_shard: usize,
    /// Heartbeat period of a subscription that has nothing to send.
    pub subscribe_heartbeat_ms: u64,
    /// A SubscribeShard call ends after this long with a last event that
    /// carries its continuation; the client subscribes again from there.
    pub subscription_lifetime_ms: u64,
    /// Memory one subscription may hold in queued and in-flight events;
    /// one event carries at most a quarter of it (or one larger record).
    pub subscription_buffer_bytes: usize,
    /// Broker-wide memory for subscription buffers: each subscription
    /// reserves `subscription_buffer_bytes` of it, and beyond it new
    /// subscriptions are refused with a retryable error.
    pub subscription_buffer_bytes_total: usize,
    /// SubscribeShard reads running at once, broker-wide; each holds a whole
    /// batch frame (up to about 5 MiB) in memory while it runs.
    pub subscription_reads_concurrent: usize,
    /// Batches in flight on one Produce stream.
    pub produce_stream_in_flight: usize,
    /// Streams in the broker.
    pub max_streams: usize,
    /// Open shards in one stream.
    pub max_shards_per_stream: u32,
    /// Shards open in the whole broker, over all streams: a create that
    /// would pass it is refused with `LimitExceeded`. Each shard holds an
    /// open segment file, its queue and buffers, so this bounds them.
    pub max_shards_total: u32,
    /// Time in-flight calls get to finish at shutdown.
    pub shutdown_grace_ms: u64,
    /// Longest TLS handshake of a new connection, ms.
    pub handshake_timeout_ms: u64,
    /// A connection with no traffic for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Largest header block of a gRPC request.
    pub grpc_max_header_bytes: u32,
    /// Open connections to the admin port.
    pub http_max_connections: usize,
    /// Largest request head on the admin port.
    pub http_max_header_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7470)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7471)),
            durability: DurabilityConfig::default(),
            quotas: QuotaConfig::default(),
            storage: StorageConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            groups: GroupsConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            kinesis: KinesisConfig::default(),
            wire: WireConfig::default(),
            console: ConsoleConfig::default(),
            reshard: ReshardConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self { mode: DurabilityMode::Always, interval_ms: 50 }
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        let k = QuotaValues::KINESIS;
        Self {
            enforce: true,
            write_records_per_sec: k.write_records_per_sec,
            write_bytes_per_sec: k.write_bytes_per_sec,
            read_calls_per_sec: k.read_calls_per_sec,
            read_bytes_per_sec: k.read_bytes_per_sec,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let s = shardlog::Config::default();
        Self {
            segment_bytes_max: s.segment_bytes_max,
            segment_age_max_ms: s.segment_age_max_ms,
            index_interval_bytes: s.index_interval_bytes,
            min_free_bytes: 256 * 1024 * 1024,
            min_free_percent: 0,
            reserve_bytes: 64 * 1024 * 1024,
            free_space_check_interval_ms: 250,
            writer_threads: 32,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { check_interval_ms: 60_000 }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            grpc_max_message_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            max_concurrent_streams: 256,
            request_timeout_ms: 30_000,
            shard_queue_depth: 1024,
            group_commit_max_requests: 1024,
            group_commit_delay_us: 1_000,
            subscribers_per_shard: 20,
            subscribe_heartbeat_ms: 5_000,
            subscription_lifetime_ms: 300_000,
            subscription_buffer_bytes: 256 * 1024,
            subscription_buffer_bytes_total: 256 * 1024 * 1024,
            subscription_reads_concurrent: 8,
            produce_stream_in_flight: 64,
            max_streams: 1000,
            max_shards_per_stream: 1024,
            max_shards_total: 4096,
            shutdown_grace_ms: 10_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            grpc_max_header_bytes: 16 * 1024,
            http_max_connections: 256,
            http_max_header_bytes: 16 * 1024,
        }
    }
}

impl QuotaConfig {
    /// The quota values as the buckets take them.
    pub fn values(&self) -> QuotaValues {
        QuotaValues {
            write_records_per_sec: self.write_records_per_sec,
            write_bytes_per_sec: self.write_bytes_per_sec,
            read_calls_per_sec: self.read_calls_per_sec,
            read_bytes_per_sec: self.read_bytes_per_sec,
        }
    }
}

pub use crate::layers::ConfigError;

/// How the broker's variables name keys: `STREAM_BROKER_DURABILITY__MODE` → `durability.mode`.
const LAYOUT: crate::layers::Layout<'static> =
    crate::layers::Layout { prefix: ENV_PREFIX, not_keys: &["CONFIG"], key_name: |s: &str| s.to_ascii_lowercase() };

impl BrokerConfig {
    /// Loads defaults, then `file` (if any), then the `STREAM_BROKER_*`
    /// variables among `env` (but `STREAM_BROKER_CONFIG`, the file's path),
    /// and validates the result. Errors name the key and the variable or the
    /// file line its value came from.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let (config, origins): (BrokerConfig, _) = crate::layers::load(file, env, LAYOUT)?;
        config.validate().map_err(|e| e.blame(&origins))?;
        Ok(config)
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        let l = &self.limits;
        if self.durability.mode == DurabilityMode::Interval && !(1..=60_000).contains(&self.durability.interval_ms) {
            return bad("durability.interval_ms", "must be 1..=60000 in interval mode");
        }
        let q = &self.quotas;
        for (key, v) in [
            ("quotas.write_records_per_sec", q.write_records_per_sec),
            ("quotas.write_bytes_per_sec", q.write_bytes_per_sec),
            ("quotas.read_calls_per_sec", q.read_calls_per_sec),
            ("quotas.read_bytes_per_sec", q.read_bytes_per_sec),
        ] {
            if v == 0 {
                return bad(key, "must be positive (set quotas.enforce = false to lift quotas)");
            }
        }
        let storage = shardlog::Config {
            segment_bytes_max: self.storage.segment_bytes_max,
            segment_age_max_ms: self.storage.segment_age_max_ms,
            index_interval_bytes: self.storage.index_interval_bytes,
            ..shardlog::Config::default()
        };
        if let Err(shardlog::Error::InvalidConfig { field, reason }) = storage.validate() {
            return Err(ConfigError::invalid(format!("storage.{field}"), reason));
        }
        if self.storage.min_free_percent > 90 {
            return bad("storage.min_free_percent", "must be 0..=90");
        }
        if !(10..=60_000).contains(&self.storage.free_space_check_interval_ms) {
            return bad("storage.free_space_check_interval_ms", "must be 10..=60000");
        }
        if !(1_000..=600_000).contains(&self.groups.session_timeout_ms) {
            return bad("groups.session_timeout_ms", "must be 1000..=600000");
        }
        let k = &self.kinesis;
        if k.account_id.len() != 12 || !k.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return bad("kinesis.account_id", "must be 12 digits");
        }
        if k.region.is_empty() || !k.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return bad("kinesis.region", "must be a region name such as us-east-1");
        }
        if k.auth == KinesisAuth::Strict && k.access_keys.is_empty() {
            return bad("kinesis.access_keys", "strict authentication needs at least one key pair");
        }
        if k.access_keys.iter().any(|a| a.access_key_id.is_empty() || a.secret_access_key.is_empty()) {
            return bad("kinesis.access_keys", "every key pair needs an access_key_id and a secret_access_key");
        }
        if !(1024 * 1024..=256 * 1024 * 1024).contains(&k.request_bytes_max) {
            return bad("kinesis.request_bytes_max", "must be 1 MiB..=256 MiB");
        }
        if k.consumer_activation_ms > 60_000 {
            return bad("kinesis.consumer_activation_ms", "must be 0..=60000");
        }
        let c = &self.console;
        if !(100..=60_000).contains(&c.sample_interval_ms) {
            return bad("console.sample_interval_ms", "must be 100..=60000");
        }
        if !(10..=3600).contains(&c.history_points) {
            return bad("console.history_points", "must be 10..=3600");
        }
        if !(1..=10_000).contains(&c.records_max) {
            return bad("console.records_max", "must be 1..=10000");
        }
        if !(1000..=10_000_000).contains(&c.scan_records_max) {
            return bad("console.scan_records_max", "must be 1000..=10000000");
        }
        if !(c.order_service_url.is_empty()
            || c.order_service_url.starts_with("http://") && c.order_service_url.len() > "http://".len())
        {
            return bad("console.order_service_url", "must be empty or an http:// URL");
        }
        if self.reshard.scalings_max == 0 {
            return bad("reshard.scalings_max", "must be positive");
        }
        if !(1_000..=30 * 86_400_000).contains(&self.reshard.scalings_window_ms) {
            return bad("reshard.scalings_window_ms", "must be 1000..=2592000000");
        }
        if !(100..=600_000).contains(&self.metrics.export_interval_ms) {
            return bad("metrics.export_interval_ms", "must be 100..=600000");
        }
        if self.retention.check_interval_ms == 0 {
            return bad("retention.check_interval_ms", "must be positive");
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&l.grpc_max_message_bytes) {
            return bad("limits.grpc_max_message_bytes", "must be 64 KiB..=256 MiB");
        }
        if !(1_000..=3_600_000).contains(&l.subscription_lifetime_ms) {
            return bad("limits.subscription_lifetime_ms", "must be 1000..=3600000");
        }
        if !(64 * 1024..=16 * 1024 * 1024).contains(&l.subscription_buffer_bytes) {
            return bad("limits.subscription_buffer_bytes", "must be 64 KiB..=16 MiB");
        }
        if l.subscription_buffer_bytes_total < l.subscription_buffer_bytes {
            return bad("limits.subscription_buffer_bytes_total", "must be at least limits.subscription_buffer_bytes");
        }
        for (key, v) in [
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_concurrent_streams", u64::from(l.max_concurrent_streams)),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.shard_queue_depth", l.shard_queue_depth as u64),
            ("limits.group_commit_max_requests", l.group_commit_max_requests as u64),
            ("limits.subscribers_per_shard", l.subscribers_per_shard as u64),
            ("limits.subscribe_heartbeat_ms", l.subscribe_heartbeat_ms),
            ("limits.subscription_reads_concurrent", l.subscription_reads_concurrent as u64),
            ("limits.produce_stream_in_flight", l.produce_stream_in_flight as u64),
            ("limits.max_streams", l.max_streams as u64),
            ("limits.max_shards_per_stream", u64::from(l.max_shards_per_stream)),
            ("limits.max_shards_total", u64::from(l.max_shards_total)),
            ("storage.writer_threads", self.storage.writer_threads as u64),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.grpc_max_header_bytes", u64::from(l.grpc_max_header_bytes)),
            ("limits.http_max_connections", l.http_max_connections as u64),
        ] {
            if v == 0 {
                return bad(key, "must be positive");
            }
        }
        if l.group_commit_delay_us > 100_000 {
            return bad("limits.group_commit_delay_us", "must be 0..=100000 (100 ms)");
        }
        if !(8 * 1024..=1024 * 1024).contains(&l.http_max_header_bytes) {
            return bad("limits.http_max_header_bytes", "must be 8 KiB..=1 MiB");
        }
        let a = &self.auth;
        if !(100..=60_000).contains(&a.recheck_interval_ms) {
            return bad("auth.recheck_interval_ms", "must be 100..=60000");
        }
        if a.requests_per_sec_per_principal == 0 {
            return bad("auth.requests_per_sec_per_principal", "must be at least 1");
        }
        if let Some(name) = a.super_users.iter().find(|n| !crate::auth::policy::is_principal_name(n)) {
            return bad("auth.super_users", &format!("{name:?} must be 1..=128 of [a-zA-Z0-9_.@-]"));
        }
        for (key, principal) in &a.access_key_principals {
            if !self.kinesis.access_keys.iter().any(|k| &k.access_key_id == key) {
                return bad("auth.access_key_principals", &format!("{key:?} is not in kinesis.access_keys"));
            }
            if !crate::auth::policy::is_principal_name(principal) {
                return bad("auth.access_key_principals", &format!("{principal:?} must be 1..=128 of [a-zA-Z0-9_.@-]"));
            }
        }
        let t = &self.tls;
        match (&t.cert_file, &t.key_file) {
            (Some(_), None) => return bad("tls.key_file", "is required with tls.cert_file"),
            (None, Some(_)) => return bad("tls.cert_file", "is required with tls.key_file"),
            (None, None) if t.client_ca_file.is_some() => {
                return bad(
                    "tls.client_ca_file",
                    "needs tls.cert_file and tls.key_file (client certificates need TLS)",
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Refuses to serve anonymous callers on a non-loopback address unless
    /// `auth.insecure_allow_anonymous` is set; the error names the address
    /// and the way out. With `auth.enabled` every caller is authenticated,
    /// so any address is accepted. Called with the addresses actually bound.
    pub fn check_exposure(&self, bound: &[(&str, SocketAddr)]) -> Result<(), ConfigError> {
        if self.auth.enabled {
            return Ok(());
        }
        for (key, addr) in bound {
            if !addr.ip().is_loopback() {
                if self.auth.insecure_allow_anonymous {
                    tracing::warn!(
                        %addr,
                        "serving anonymous callers on a non-loopback address (--insecure-allow-anonymous): \
                         anyone who reaches it can read, write and delete every stream"
                    );
                } else {
                    return Err(ConfigError::invalid(
                        *key,
                        format!(
                            "{addr} is not a loopback address and callers are not authenticated: listen on \
                             loopback, set auth.enabled = true, or for development only pass \
                             --insecure-allow-anonymous"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The shard-log configuration for a stream whose records are at most `record_bytes_max`.
    pub fn shardlog_config(&self, record_bytes_max: u32) -> shardlog::Config {
        shardlog::Config {
            segment_bytes_max: self.storage.segment_bytes_max,
            segment_age_max_ms: self.storage.segment_age_max_ms,
            index_interval_bytes: self.storage.index_interval_bytes,
            record_bytes_max,
            ..shardlog::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_kinesis_and_durable() {
        let c = BrokerConfig::load(None, env(&[])).expect("defaults load");
        assert_eq!(c.durability.mode, DurabilityMode::Always);
        assert_eq!(c.quotas.values(), QuotaValues::KINESIS);
    }

    #[test]
    fn the_shipped_config_file_matches_the_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/broker.toml");
        let c = BrokerConfig::load(Some(&shipped), env(&[])).expect("deploy/broker.toml loads");
        assert_eq!(c, BrokerConfig::default(), "deploy/broker.toml must show the defaults");
    }

    #[test]
    fn environment_overrides_file_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "data_dir = \"/from/file\"\n[durability]\nmode = \"never\"\n").expect("write");
        let c = BrokerConfig::load(
            Some(&file),
            env(&[
                ("STREAM_BROKER_DURABILITY__MODE", "interval"),
                ("STREAM_BROKER_QUOTAS__ENFORCE", "false"),
                ("STREAM_BROKER_LIMITS__MAX_STREAMS", "7"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("load");
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.durability.mode, DurabilityMode::Interval);
        assert!(!c.quotas.enforce);
        assert_eq!(c.limits.max_streams, 7);
    }

    #[test]
    fn auth_settings_are_checked_and_errors_name_the_key() {
        type Breaks = fn(&mut BrokerConfig);
        let cases: [(&str, Breaks); 5] = [
            ("auth.recheck_interval_ms", |c| c.auth.recheck_interval_ms = 50),
            ("auth.recheck_interval_ms", |c| c.auth.recheck_interval_ms = 60_001),
            ("auth.requests_per_sec_per_principal", |c| c.auth.requests_per_sec_per_principal = 0),
            ("auth.super_users", |c| c.auth.super_users = vec!["has space".into()]),
            ("auth.access_key_principals", |c| {
                c.auth.access_key_principals.insert("AKIAUNKNOWN".into(), "p".into());
            }),
        ];
        for (key, breaks) in cases {
            let mut c = BrokerConfig::default();
            breaks(&mut c);
            let e = c.validate().expect_err(key);
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        let mut c = BrokerConfig::default();
        c.kinesis.access_keys = vec![AccessKey { access_key_id: "AKIA1".into(), secret_access_key: "s".into() }];
        c.auth.access_key_principals.insert("AKIA1".into(), "relay".into());
        c.auth.super_users = vec!["ops@example.com".into()];
        c.validate().expect("a listed key mapped to a principal name");
    }

    #[test]
    fn anonymous_callers_are_served_on_loopback_only_unless_allowed_explicitly() {
        let mut c = BrokerConfig::default();
        let local = SocketAddr::from(([127, 0, 0, 1], 7470));
        let exposed = SocketAddr::from(([10, 0, 0, 7], 7470));
        c.check_exposure(&[("grpc_addr", local), ("http_addr", local)]).expect("loopback needs no set-up");
        let e = c.check_exposure(&[("grpc_addr", local), ("http_addr", exposed)]).expect_err("exposed");
        let text = e.to_string();
        assert!(
            text.contains("http_addr") && text.contains("10.0.0.7:7470") && text.contains("--insecure-allow-anonymous"),
            "{e}"
        );
        c.auth.enabled = true;
        c.check_exposure(&[("grpc_addr", exposed)]).expect("every caller is authenticated");
        c.auth.enabled = false;
        c.auth.insecure_allow_anonymous = true;
        c.check_exposure(&[("grpc_addr", exposed)]).expect("explicitly allowed");
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let e = BrokerConfig::load(None, env(&[("STREAM_BROKER_TLS__CERT_FILE", "/c.pem")])).expect_err("no key");
        assert!(e.to_string().contains("tls.key_file"), "{e}");
        let e =
            BrokerConfig::load(None, env(&[("STREAM_BROKER_TLS__CLIENT_CA_FILE", "/ca.pem")])).expect_err("no cert");
        assert!(e.to_string().contains("tls.client_ca_file"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (vec![("STREAM_BROKER_DURABILITY__MODE", "sometimes")], "mode"),
            (vec![("STREAM_BROKER_LIMITS__MAX_STREAMS", "lots")], "max_streams"),
            (vec![("STREAM_BROKER_NO_SUCH_KEY", "1")], "no_such_key"),
            (vec![("STREAM_BROKER_QUOTAS__READ_CALLS_PER_SEC", "0")], "quotas.read_calls_per_sec"),
            (vec![("STREAM_BROKER_STORAGE__SEGMENT_BYTES_MAX", "10")], "storage.segment_bytes_max"),
            (vec![("STREAM_BROKER_LIMITS__SHARD_QUEUE_DEPTH", "0")], "limits.shard_queue_depth"),
            (vec![("STREAM_BROKER_LIMITS__GROUP_COMMIT_DELAY_US", "200000")], "limits.group_commit_delay_us"),
            (vec![("STREAM_BROKER_STORAGE__MIN_FREE_PERCENT", "95")], "storage.min_free_percent"),
            (vec![("STREAM_BROKER_CONSOLE__SAMPLE_INTERVAL_MS", "5")], "console.sample_interval_ms"),
            (vec![("STREAM_BROKER_CONSOLE__ORDER_SERVICE_URL", "ftp://x")], "console.order_service_url"),
            (
                vec![("STREAM_BROKER_STORAGE__FREE_SPACE_CHECK_INTERVAL_MS", "0")],
                "storage.free_space_check_interval_ms",
            ),
        ];
        for (vars, key) in cases {
            let err = BrokerConfig::load(None, env(&vars)).expect_err("invalid config");
            assert!(err.to_string().contains(key), "{err} does not name {key}");
            let (name, value) = vars[0];
            assert!(err.to_string().contains(&format!("{name}={value}: ")), "{err} does not name {name}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_the_allowed_values() {
        let err = BrokerConfig::load(None, env(&[("STREAM_BROKER_DURABILITY__MODE", "sometimes")])).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "configuration: STREAM_BROKER_DURABILITY__MODE=sometimes: durability.mode: \
             unknown variant `sometimes`, expected one of `always`, `interval`, `never`"
        );
        // The file's own path is not a key.
        BrokerConfig::load(None, env(&[("STREAM_BROKER_CONFIG", "/etc/x.toml")])).expect("CONFIG is skipped");
    }

    #[test]
    fn file_errors_name_the_path_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "data_dir = \"/d\"\n\n[durability]\nmode = \"interval\"\ninterval_ms = 0\n")
            .expect("write");
        let err = BrokerConfig::load(Some(&file), env(&[])).expect_err("interval_ms 0");
        assert_eq!(
            err.to_string(),
            format!("configuration: {}:5: durability.interval_ms: must be 1..=60000 in interval mode", file.display())
        );
        std::fs::write(&file, "[limits]\nmax_streams = \"many\"\n").expect("write");
        let err = BrokerConfig::load(Some(&file), env(&[])).expect_err("a string");
        assert!(err.to_string().contains(&format!("{}:2: ", file.display())), "{err}");
    }
}
