//! Configuration: defaults, then a TOML file, then `ORDER_SERVICE_*`
//! environment variables, then command-line flags. Keys keep the original
//! camelCase names; `deploy/order-service.toml` documents each one.
//!
//! Environment variables name a key upper-cased in snake case, with `__`
//! between table and key: `ORDER_SERVICE_ORDER_STREAM_NAME=ordersStream`,
//! `ORDER_SERVICE_SMTP__HOST=mail.example.com`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "ORDER_SERVICE_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Orders database (`<dataDir>/orders`), `.eml` files (`<dataDir>/emails`)
    /// and the embedded broker's data (`<dataDir>/broker`).
    pub data_dir: PathBuf,
    /// Order API listen address.
    pub http_addr: SocketAddr,
    /// An external broker (`host:port` or `http://host:port`); none runs the
    /// broker in-process.
    pub broker: Option<String>,
    /// The embedded broker's gRPC address.
    pub broker_grpc_addr: SocketAddr,
    /// The embedded broker's HTTP admin address (metrics, health).
    pub broker_admin_addr: SocketAddr,
    /// The sled tree holding the orders.
    pub order_table_name: String,
    /// The order-events stream.
    pub order_stream_name: String,
    /// The delivery queue stream.
    pub delivery_queue_name: String,
    /// The customer-service queue stream.
    pub customer_service_queue_name: String,
    /// Recipient of new-order emails.
    pub cake_producer_email: String,
    /// Sender of every email.
    pub ordering_system_email: String,
    /// Recipient of review emails.
    pub customer_service_email: String,
    /// Where the delivery consumer POSTs orders; none runs the built-in simulator.
    pub delivery_webhook_url: Option<String>,
    /// How long the simulated delivery takes.
    pub delivery_simulator_delay_ms: u64,
    /// First wait before a record that failed transiently is handled again;
    /// doubles per attempt.
    pub consumer_retry_backoff_ms: u64,
    /// Longest wait between two attempts at one record.
    pub consumer_retry_backoff_max_ms: u64,
    /// How long a record that keeps failing transiently is retried (its
    /// shard blocked meanwhile) before it is dead-lettered.
    pub consumer_retry_budget_ms: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// SMTP; when `host` is unset, emails are written as `.eml` files.
    pub smtp: SmtpConfig,
    /// Open connections to the order API; more are closed at once.
    pub max_connections: usize,
    /// A TLS handshake, and a request's headers, must arrive within this.
    pub header_read_timeout_ms: u64,
    /// An API connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Largest request head (8 KiB..=1 MiB); larger gets 431.
    pub max_header_bytes: usize,
    /// Serve the order API to anonymous callers on a non-loopback address.
    pub insecure_allow_anonymous: bool,
    /// The order API's TLS.
    pub tls: ApiTls,
    /// How the service reaches an external broker over TLS.
    pub broker_tls: BrokerTls,
    /// The broker principals the service runs as, by role.
    pub broker_credentials: BrokerCredentials,
    /// Who may call the order API.
    pub api_auth: ApiAuth,
}

/// How the order API authenticates its callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiAuthMode {
    /// Everyone may call it (loopback, or with `insecureAllowAnonymous`).
    #[default]
    None,
    /// `authorization: Bearer <broker API token>`, checked with the broker.
    BrokerToken,
}

/// `[apiAuth]`: who may call the order API (see [`crate::api_auth`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiAuth {
    /// `none` or `broker-token`.
    pub mode: ApiAuthMode,
    /// How long a broker's answer about one (token, action, resource) is
    /// reused, ms: a revoked token or removed grant stops working within it.
    pub cache_ttl_ms: u64,
    /// Answers kept at most; the oldest go first.
    pub cache_entries_max: usize,
    /// The token the built-in delivery simulator calls
    /// `POST /order/delivered` with (required with `broker-token` and no
    /// `deliveryWebhookUrl`).
    pub delivery_simulator_token_file: Option<PathBuf>,
}

impl Default for ApiAuth {
    fn default() -> Self {
        Self {
            mode: ApiAuthMode::None,
            cache_ttl_ms: 2_000,
            cache_entries_max: 10_000,
            delivery_simulator_token_file: None,
        }
    }
}

/// Longest `apiAuth.cacheTtlMs`: the broker's longest `auth.recheck_interval_ms`.
pub const API_AUTH_CACHE_TTL_MS_MAX: u64 = 60_000;

/// A secret configuration value: deserialised like a string, never shown
/// by `Debug` (configuration may be logged).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `[tls]`: TLS on the order API, off while `certFile` is unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
    /// PEM CA of client certificates (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// With `clientCaFile`: `optional` or `required`.
    pub client_auth: broker::auth::tls::ClientAuth,
}

impl ApiTls {
    /// The listener's files, when TLS is on.
    pub fn files(&self) -> Option<broker::auth::tls::TlsFiles> {
        Some(broker::auth::tls::TlsFiles {
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            client_ca_file: self.client_ca_file.clone(),
            client_auth: self.client_auth,
        })
    }
}

/// `[brokerTls]`: TLS to an external broker, on while `caFile` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BrokerTls {
    /// PEM CA the broker's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM key of `certFile`.
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, when not the address's host.
    pub server_name: Option<String>,
}

/// `[brokerCredentials]`: a token file per role, each its own broker
/// principal with only the grants that role needs (see deploy/stack.toml).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BrokerCredentials {
    /// Creates the streams at start.
    pub setup_token_file: Option<PathBuf>,
    /// Publishes the outbox.
    pub relay_token_file: Option<PathBuf>,
    /// The external-parties consumer group.
    pub external_parties_token_file: Option<PathBuf>,
    /// The delivery-company consumer group.
    pub delivery_company_token_file: Option<PathBuf>,
    /// The customer-service consumer group.
    pub customer_service_token_file: Option<PathBuf>,
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Server host; unset writes `.eml` files instead.
    pub host: Option<String>,
    /// Server port.
    pub port: u16,
    /// Login, if the server needs one.
    pub username: Option<String>,
    /// Password for `username`; prefer `passwordFile`.
    pub password: Option<Secret>,
    /// A file holding the password (`ORDER_SERVICE_SMTP__PASSWORD_FILE`),
    /// read at start, so the password is in neither the environment nor
    /// the configuration file.
    pub password_file: Option<PathBuf>,
    /// Upgrade the connection with STARTTLS (required when true).
    pub starttls: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self { host: None, port: 587, username: None, password: None, password_file: None, starttls: true }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker: None,
            broker_grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7470)),
            broker_admin_addr: SocketAddr::from(([127, 0, 0, 1], 7471)),
            order_table_name: "ordersTable".into(),
            order_stream_name: "order-events".into(),
            delivery_queue_name: "deliveryServiceQueue".into(),
            customer_service_queue_name: "customerServiceQueue".into(),
            cake_producer_email: "cakeproducer@example.com".into(),
            ordering_system_email: "cakeorderingsystem@example.com".into(),
            customer_service_email: "customerservice@example.com".into(),
            delivery_webhook_url: None,
            delivery_simulator_delay_ms: 3000,
            consumer_retry_backoff_ms: 100,
            consumer_retry_backoff_max_ms: 5_000,
            consumer_retry_budget_ms: 600_000,
            max_body_bytes: 64 * 1024,
            smtp: SmtpConfig::default(),
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            insecure_allow_anonymous: false,
            tls: ApiTls::default(),
            broker_tls: BrokerTls::default(),
            broker_credentials: BrokerCredentials::default(),
            api_auth: ApiAuth::default(),
        }
    }
}

pub use broker::layers::ConfigError;

/// How the service's variables name keys: `ORDER_SERVICE_SMTP__HOST` → `smtp.host`.
const LAYOUT: broker::layers::Layout<'static> =
    broker::layers::Layout { prefix: ENV_PREFIX, not_keys: &["CONFIG", "STACK"], key_name: camel_case };

impl Config {
    /// Defaults, overlaid by `file` (if any), then by `ORDER_SERVICE_*` pairs
    /// of `env` (but `ORDER_SERVICE_CONFIG`, the file's path). Errors name the
    /// key and the variable or the file line its value came from.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        Self::load_over(toml::Table::new(), file, env)
    }

    /// Defaults, overlaid by `base` (a stack file's `[services.order-service]`
    /// table), then by `file` (if any), then by `ORDER_SERVICE_*` pairs of `env`.
    pub fn load_over(
        base: toml::Table,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (config, origins): (Config, _) = broker::layers::load_over(base, file, env, LAYOUT)?;
        let mut config = config;
        config.validate().map_err(|e| e.blame(&origins))?;
        if let Some(path) = &config.smtp.password_file {
            // The error names the key and the file, never the content.
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid("smtp.passwordFile", format!("cannot read {}: {e}", path.display()))
                    .blame(&origins)
            })?;
            config.smtp.password = Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let names = [
            ("orderTableName", &self.order_table_name),
            ("orderStreamName", &self.order_stream_name),
            ("deliveryQueueName", &self.delivery_queue_name),
            ("customerServiceQueueName", &self.customer_service_queue_name),
        ];
        for (key, v) in names {
            let ok =
                (1..=120).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(ConfigError::invalid(key, format!("{v:?} must be 1..=120 of [a-zA-Z0-9_.-]")));
            }
        }
        for (key, v) in [
            ("cakeProducerEmail", &self.cake_producer_email),
            ("orderingSystemEmail", &self.ordering_system_email),
            ("customerServiceEmail", &self.customer_service_email),
        ] {
            v.parse::<lettre::message::Mailbox>().map_err(|e| ConfigError::invalid(key, format!("{v:?}: {e}")))?;
        }
        if let Some(url) = &self.delivery_webhook_url
            && !url.starts_with("http://")
        {
            return Err(ConfigError::invalid("deliveryWebhookUrl", format!("{url:?} must be an http:// URL")));
        }
        if self.consumer_retry_backoff_ms == 0 {
            return Err(ConfigError::invalid("consumerRetryBackoffMs", "must be at least 1"));
        }
        if self.consumer_retry_backoff_max_ms < self.consumer_retry_backoff_ms {
            return Err(ConfigError::invalid(
                "consumerRetryBackoffMaxMs",
                format!(
                    "{} must be at least consumerRetryBackoffMs ({})",
                    self.consumer_retry_backoff_max_ms, self.consumer_retry_backoff_ms
                ),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::invalid("maxBodyBytes", "must be at least 1024"));
        }
        if self.smtp.password.is_some() && self.smtp.password_file.is_some() {
            return Err(ConfigError::invalid("smtp.passwordFile", "give smtp.password or smtp.passwordFile, not both"));
        }
        for (key, v) in [
            ("maxConnections", self.max_connections as u64),
            ("headerReadTimeoutMs", self.header_read_timeout_ms),
            ("idleTimeoutMs", self.idle_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid("maxHeaderBytes", "must be 8 KiB..=1 MiB"));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => return Err(ConfigError::invalid("tls.keyFile", "is required with tls.certFile")),
            (None, Some(_)) => return Err(ConfigError::invalid("tls.certFile", "is required with tls.keyFile")),
            (None, None) if self.tls.client_ca_file.is_some() => {
                return Err(ConfigError::invalid("tls.clientCaFile", "needs tls.certFile and tls.keyFile"));
            }
            _ => {}
        }
        let b = &self.broker_tls;
        if b.cert_file.is_some() != b.key_file.is_some() {
            return Err(ConfigError::invalid(
                "brokerTls.certFile",
                "give brokerTls.certFile and brokerTls.keyFile both or neither",
            ));
        }
        if b.ca_file.is_none() && (b.cert_file.is_some() || b.server_name.is_some()) {
            return Err(ConfigError::invalid("brokerTls.caFile", "is required for TLS to the broker"));
        }
        if self.broker.is_none() && (b.ca_file.is_some() || self.broker_credentials != BrokerCredentials::default()) {
            return Err(ConfigError::invalid(
                "broker",
                "brokerTls and brokerCredentials apply to an external broker; set broker too",
            ));
        }
        let a = &self.api_auth;
        if !(1..=API_AUTH_CACHE_TTL_MS_MAX).contains(&a.cache_ttl_ms) {
            return Err(ConfigError::invalid(
                "apiAuth.cacheTtlMs",
                format!("{} must be 1..={API_AUTH_CACHE_TTL_MS_MAX}", a.cache_ttl_ms),
            ));
        }
        if !(1..=1_000_000).contains(&a.cache_entries_max) {
            return Err(ConfigError::invalid("apiAuth.cacheEntriesMax", "must be 1..=1000000"));
        }
        if a.mode == ApiAuthMode::BrokerToken {
            // The embedded broker runs without authentication: it has no
            // tokens to check callers against.
            if self.broker.is_none() {
                return Err(ConfigError::invalid(
                    "apiAuth.mode",
                    "\"broker-token\" checks callers' tokens with an external broker that has \
                     authentication on; set broker (--broker) too",
                ));
            }
            if self.delivery_webhook_url.is_none() && a.delivery_simulator_token_file.is_none() {
                return Err(ConfigError::invalid(
                    "apiAuth.deliverySimulatorTokenFile",
                    "is required with apiAuth.mode = \"broker-token\" and no deliveryWebhookUrl: the \
                     built-in delivery simulator calls POST /order/delivered with it",
                ));
            }
        }
        Ok(())
    }
}

/// `ORDER_STREAM_NAME` → `orderStreamName`.
fn camel_case(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('_').filter(|p| !p.is_empty()).enumerate() {
        let lower = part.to_ascii_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut c = lower.chars();
            if let Some(first) = c.next() {
                out.extend(first.to_uppercase());
                out.push_str(c.as_str());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_shipped_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/order-service.toml");
        assert_eq!(Config::load(Some(&path), []).expect("shipped file loads"), Config::default());
    }

    #[test]
    fn a_file_overlays_the_stack_table_key_by_key() {
        let base: toml::Table = toml::from_str(
            "orderStreamName = \"from-stack\"\ndeliveryQueueName = \"q\"\n[smtp]\nport = 25\nstarttls = false\n",
        )
        .expect("base");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("order-service.toml");
        std::fs::write(&file, "orderStreamName = \"from-file\"\n[smtp]\nport = 2525\n").expect("write");
        let c =
            Config::load_over(base, Some(&file), env(&[("ORDER_SERVICE_STACK", "deploy/stack.toml")])).expect("load");
        assert_eq!((c.order_stream_name.as_str(), c.delivery_queue_name.as_str()), ("from-file", "q"));
        assert_eq!((c.smtp.port, c.smtp.starttls), (2525, false), "tables merge key by key");
    }

    #[test]
    fn the_smtp_password_comes_from_a_file_and_never_shows_in_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("smtp-password");
        std::fs::write(&file, "hunter2-from-file\n").expect("write");
        let c = Config::load(
            None,
            env(&[
                ("ORDER_SERVICE_SMTP__USERNAME", "shop"),
                ("ORDER_SERVICE_SMTP__PASSWORD_FILE", file.to_str().expect("utf-8")),
            ]),
        )
        .expect("load");
        assert_eq!(c.smtp.password.as_ref().map(Secret::expose), Some("hunter2-from-file"));
        assert!(!format!("{c:?}").contains("hunter2"), "Debug shows no password: {c:?}");
        let e = Config::load(
            None,
            env(&[
                ("ORDER_SERVICE_SMTP__PASSWORD", "x"),
                ("ORDER_SERVICE_SMTP__PASSWORD_FILE", file.to_str().expect("utf-8")),
            ]),
        )
        .expect_err("both");
        assert!(e.to_string().contains("smtp.passwordFile"), "{e}");
        let missing = dir.path().join("nope");
        let e = Config::load(None, env(&[("ORDER_SERVICE_SMTP__PASSWORD_FILE", missing.to_str().expect("utf-8"))]))
            .expect_err("missing file");
        assert!(e.to_string().contains("smtp.passwordFile") && e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn environment_overrides_and_errors_name_the_key() {
        let c = Config::load(
            None,
            env(&[
                ("ORDER_SERVICE_ORDER_STREAM_NAME", "ordersStream"),
                ("ORDER_SERVICE_SMTP__HOST", "mail.example.com"),
                ("ORDER_SERVICE_SMTP__PORT", "2525"),
                ("ORDER_SERVICE_DELIVERY_SIMULATOR_DELAY_MS", "100"),
                ("OTHER", "x"),
            ]),
        )
        .expect("load");
        assert_eq!(c.order_stream_name, "ordersStream");
        assert_eq!(c.smtp.host.as_deref(), Some("mail.example.com"));
        assert_eq!(c.smtp.port, 2525);
        assert_eq!(c.delivery_simulator_delay_ms, 100);
        let e = Config::load(None, env(&[("ORDER_SERVICE_ORDER_STREAM_NAME", "bad name")])).expect_err("invalid");
        assert!(e.to_string().contains("ORDER_SERVICE_ORDER_STREAM_NAME=bad name: orderStreamName: "), "{e}");
        let e = Config::load(None, env(&[("ORDER_SERVICE_CONSUMER_RETRY_BACKOFF_MAX_MS", "10")])).expect_err("cap");
        assert!(
            e.to_string().contains("ORDER_SERVICE_CONSUMER_RETRY_BACKOFF_MAX_MS=10: consumerRetryBackoffMaxMs"),
            "{e}"
        );
        let e = Config::load(None, env(&[("ORDER_SERVICE_NO_SUCH_KEY", "1")])).expect_err("unknown");
        assert!(e.to_string().contains("noSuchKey"), "{e}");
        Config::load(None, env(&[("ORDER_SERVICE_CONFIG", "/etc/x.toml")])).expect("CONFIG is the file, not a key");
    }

    #[test]
    fn api_authentication_needs_an_external_broker_and_names_its_keys() {
        let e = Config::load(None, env(&[("ORDER_SERVICE_API_AUTH__MODE", "broker-token")])).expect_err("embedded");
        assert!(e.to_string().contains("ORDER_SERVICE_API_AUTH__MODE=broker-token: apiAuth.mode"), "{e}");
        let c = Config::load(
            None,
            env(&[
                ("ORDER_SERVICE_API_AUTH__MODE", "broker-token"),
                ("ORDER_SERVICE_BROKER", "127.0.0.1:7470"),
                ("ORDER_SERVICE_DELIVERY_WEBHOOK_URL", "http://127.0.0.1:9000/d"),
                ("ORDER_SERVICE_API_AUTH__CACHE_TTL_MS", "500"),
            ]),
        )
        .expect("with a broker");
        assert_eq!((c.api_auth.mode, c.api_auth.cache_ttl_ms), (ApiAuthMode::BrokerToken, 500));
        let e = Config::load(
            None,
            env(&[("ORDER_SERVICE_API_AUTH__MODE", "broker-token"), ("ORDER_SERVICE_BROKER", "127.0.0.1:7470")]),
        )
        .expect_err("the simulator has no token");
        assert!(e.to_string().contains("apiAuth.deliverySimulatorTokenFile"), "{e}");
        let e = Config::load(None, env(&[("ORDER_SERVICE_API_AUTH__CACHE_TTL_MS", "0")])).expect_err("ttl");
        assert!(e.to_string().contains("apiAuth.cacheTtlMs"), "{e}");
        let e = Config::load(None, env(&[("ORDER_SERVICE_API_AUTH__MODE", "password")])).expect_err("mode");
        assert!(e.to_string().contains("mode"), "{e}");
    }
}
