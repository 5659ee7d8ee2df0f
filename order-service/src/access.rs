//! How the service reaches its broker: the address, TLS, and one principal
//! per role, so that each part of the service can do only what it needs
//! (the grants are in `deploy/stack.toml`): `setup` creates the streams,
//! `relay` publishes the outbox, and each consumer group reads its stream
//! and writes its dead-letter stream as its own principal.
//!
//! Tokens are read from files at start and kept as `client::Secret`s, which
//! never print. A role without a token file connects without a token (the
//! embedded broker on loopback needs none; a client certificate may name
//! the principal instead).

use std::collections::HashMap;

use client::{ConnectOptions, Connection, Secret, TlsOptions};

use crate::config::{Config, ConfigError};

/// The role that creates the streams at start.
pub const SETUP: &str = "setup";
/// The role that publishes the outbox.
pub const RELAY: &str = "relay";

/// The broker address and the credentials of each role.
#[derive(Debug, Clone)]
pub struct BrokerAccess {
    /// `host:port`, `http://…` or `https://…`.
    pub addr: String,
    tls: Option<TlsOptions>,
    tokens: HashMap<&'static str, Secret>,
}

impl BrokerAccess {
    /// Plaintext and anonymous, for the embedded broker.
    pub fn anonymous(addr: String) -> Self {
        Self { addr, tls: None, tokens: HashMap::new() }
    }

    /// Reads the TLS files and token files that `config` names; errors
    /// name the key and the file, never a file's content.
    pub fn from_config(config: &Config, addr: String) -> Result<Self, ConfigError> {
        let b = &config.broker_tls;
        let tls = match &b.ca_file {
            Some(ca) => Some(
                TlsOptions::from_files(ca, b.cert_file.as_deref(), b.key_file.as_deref(), b.server_name.clone())
                    .map_err(|e| ConfigError::invalid("brokerTls", e.to_string()))?,
            ),
            None => None,
        };
        let c = &config.broker_credentials;
        let mut tokens = HashMap::new();
        for (role, key, file) in [
            (SETUP, "setupTokenFile", &c.setup_token_file),
            (RELAY, "relayTokenFile", &c.relay_token_file),
            ("external-parties", "externalPartiesTokenFile", &c.external_parties_token_file),
            ("delivery-company", "deliveryCompanyTokenFile", &c.delivery_company_token_file),
            ("customer-service", "customerServiceTokenFile", &c.customer_service_token_file),
        ] {
            if let Some(path) = file {
                let token = Secret::from_file(path)
                    .map_err(|e| ConfigError::invalid(format!("brokerCredentials.{key}"), e.to_string()))?;
                tokens.insert(role, token);
            }
        }
        Ok(Self { addr, tls, tokens })
    }

    /// The connection options of `role` (a role name above, or a consumer group's name).
    pub fn options(&self, role: &str) -> ConnectOptions {
        ConnectOptions { tls: self.tls.clone(), token: self.tokens.get(role).cloned(), ..ConnectOptions::default() }
    }

    /// The connection options without any role's token (TLS only), for
    /// calls that carry their own caller's token.
    pub fn options_without_token(&self) -> ConnectOptions {
        ConnectOptions { tls: self.tls.clone(), ..ConnectOptions::default() }
    }

    /// Connects as `role`.
    pub async fn connect(&self, role: &str) -> client::Result<Connection> {
        Connection::open(&self.addr, &self.options(role)).await
    }
}

impl From<String> for BrokerAccess {
    /// Plaintext and anonymous.
    fn from(addr: String) -> Self {
        Self::anonymous(addr)
    }
}

impl From<&str> for BrokerAccess {
    /// Plaintext and anonymous.
    fn from(addr: &str) -> Self {
        Self::anonymous(addr.to_string())
    }
}
