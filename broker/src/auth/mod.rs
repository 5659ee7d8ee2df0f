//! Security: who a caller is (authentication), what it may do
//! (authorization), and TLS for every listener ([`tls`]).
//!
//! **Principals** are names. A caller proves one by an API token
//! (`authorization: Bearer sbk_…`, [`token`], kept hashed in [`store`]), by
//! a client certificate whose subject common name is the principal (mutual
//! TLS), by a SigV4 access key mapped to a principal (Kinesis API), or by
//! the bootstrap token (`auth.bootstrap_token_file`), which is the
//! built-in super-user [`BOOTSTRAP_PRINCIPAL`].
//!
//! **Where the checks are.** Each listener authenticates every request
//! once, before any handler runs (the gRPC layer and the HTTP middleware in
//! [`layer`], the Kinesis edge after SigV4), rate-limits it per principal,
//! and runs the handler inside a [`Caller`] scope. The service layer
//! (`crate::service`), shared by both APIs, authorizes every operation
//! with [`Service::authorize`](crate::service::Service::authorize) against
//! the grants of [`policy`]: one rule per operation, whatever the edge.
//!
//! **Fail closed.** Code outside a caller scope acts as an anonymous
//! caller, which is refused whenever authentication is on; so a path that
//! forgets to carry its caller is denied, never allowed.
//!
//! **Long-lived calls** (Produce streams, subscriptions, group long polls)
//! re-run their checks every `auth.recheck_interval_ms` ([`Auth::watch`]):
//! a revoked or expired token or a removed grant ends them within that time.
//!
//! **Kinesis resource policies** ([`resource_policy`]) are evaluated with
//! the grants for calls through the Kinesis API: the edge marks its callers
//! with the operation ([`KinesisCall`]) and the service attaches where the
//! policies are ([`Auth::attach_policies`]).
//!
//! With `auth.enabled = false` every caller is anonymous and allowed
//! everything; the broker then listens only on loopback addresses unless
//! `--insecure-allow-anonymous` is given.

pub mod layer;
pub mod policy;
pub mod resource_policy;
pub mod store;
pub mod tls;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::config::AuthConfig;
use crate::error::{BrokerError, Result};
use crate::listener::PeerInfo;
use policy::{Action, Effect, Resource};
use store::AuthStore;

/// The principal of the bootstrap token.
pub const BOOTSTRAP_PRINCIPAL: &str = "admin";

/// The shortest bootstrap token accepted.
const BOOTSTRAP_CHARS_MIN: usize = 32;

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing.
    Anonymous,
    /// An API token, by id.
    Token(String),
    /// A client certificate.
    Certificate,
    /// The bootstrap token.
    Bootstrap,
    /// A Kinesis access key, by id.
    AccessKey(String),
}

impl Credential {
    /// `anonymous`, `token`, `certificate`, `bootstrap` or `access-key`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Credential::Anonymous => "anonymous",
            Credential::Token(_) => "token",
            Credential::Certificate => "certificate",
            Credential::Bootstrap => "bootstrap",
            Credential::AccessKey(_) => "access-key",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal; `None` for an anonymous caller.
    pub principal: Option<String>,
    /// How it was proven.
    pub credential: Credential,
    /// Where the call came from.
    pub remote: Option<IpAddr>,
    /// Set for calls through the Kinesis API, whose resource policies apply.
    pub kinesis: Option<KinesisCall>,
}

/// A call through the Kinesis API: its IAM action is `kinesis:<operation>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisCall {
    /// The operation (`PutRecord`).
    pub operation: &'static str,
    /// The consumer a call names by its ARN (stream name, consumer name):
    /// that consumer's policy applies too.
    pub consumer: Option<(String, String)>,
}

/// Where the resource policies of the streams (and their consumers) are.
pub trait ResourcePolicies: std::fmt::Debug + Send + Sync {
    /// What the policies of `resource` (a stream; other resources have none)
    /// say about `caller`'s Kinesis `call`: see [`resource_policy`].
    fn verdict(&self, caller: &Caller, call: &KinesisCall, resource: &Resource) -> Option<Effect>;
}

impl Caller {
    /// An anonymous caller from `remote`.
    pub fn anonymous(remote: Option<IpAddr>) -> Self {
        Self { principal: None, credential: Credential::Anonymous, remote, kinesis: None }
    }

    /// `principal` proven by `credential`.
    pub fn named(principal: impl Into<String>, credential: Credential, remote: Option<IpAddr>) -> Self {
        Self { principal: Some(principal.into()), credential, remote, kinesis: None }
    }

    /// The principal's name, or `anonymous`.
    pub fn name(&self) -> &str {
        self.principal.as_deref().unwrap_or("anonymous")
    }
}

tokio::task_local! {
    static CALLER: Arc<Caller>;
}

/// The caller of the request this task serves; anonymous outside one.
pub fn current() -> Arc<Caller> {
    CALLER.try_with(Arc::clone).unwrap_or_else(|_| Arc::new(Caller::anonymous(None)))
}

/// Runs `f` as `caller`: [`current`] returns it inside. Tasks spawned from
/// `f` do not inherit it; a request that spawns work passes its caller on.
pub async fn scope<F: Future>(caller: Arc<Caller>, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// Per-principal request rates: a token bucket per principal (per client
/// address for anonymous callers), refilled at the configured rate with a
/// one-second burst.
#[derive(Debug)]
struct Rates {
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before idle (full) ones are dropped.
const BUCKETS_MAX: usize = 65_536;

impl Rates {
    /// Takes one request from `key`'s bucket, or says how long until one is there.
    fn take(&self, key: &str) -> std::result::Result<(), u64> {
        let now = Instant::now();
        // Plain numbers replaced whole; a panic cannot tear a bucket.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(key) {
            let (rate, cap) = (self.per_sec, self.per_sec);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((self.per_sec, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.per_sec);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / self.per_sec) * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

/// Authentication and authorization for one broker; see the module docs.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    store: OnceLock<Arc<AuthStore>>,
    policies: OnceLock<Arc<dyn ResourcePolicies>>,
    bootstrap: Option<[u8; 32]>,
    super_users: HashSet<String>,
    access_keys: HashMap<String, String>,
    recheck: Duration,
    rates: Rates,
    clock: Option<Arc<dyn Clock>>,
}

impl Auth {
    /// Everyone is anonymous and allowed everything (no authentication).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            enabled: false,
            store: OnceLock::new(),
            policies: OnceLock::new(),
            bootstrap: None,
            super_users: HashSet::new(),
            access_keys: HashMap::new(),
            recheck: Duration::from_secs(3600),
            rates: Rates { per_sec: f64::MAX, buckets: Mutex::new(HashMap::new()) },
            clock: None,
        })
    }

    /// Authentication as `config` says. Reads the bootstrap token file.
    /// Tokens work once [`Auth::attach`] gives it the store (the listeners
    /// start before the metadata store is open).
    pub fn new(config: &AuthConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let bootstrap = match &config.bootstrap_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    BrokerError::invalid("auth.bootstrap_token_file", format!("cannot read {}: {e}", path.display()))
                })?;
                let t = text.trim();
                if t.chars().count() < BOOTSTRAP_CHARS_MIN || t.chars().any(char::is_whitespace) {
                    return Err(BrokerError::invalid(
                        "auth.bootstrap_token_file",
                        format!(
                            "{} must hold one token of at least {BOOTSTRAP_CHARS_MIN} characters without spaces",
                            path.display()
                        ),
                    ));
                }
                Some(token::hash(t))
            }
            None => None,
        };
        Ok(Self {
            enabled: config.enabled,
            store: OnceLock::new(),
            policies: OnceLock::new(),
            bootstrap,
            super_users: config.super_users.iter().cloned().collect(),
            access_keys: config.access_key_principals.clone().into_iter().collect(),
            recheck: Duration::from_millis(config.recheck_interval_ms),
            rates: Rates { per_sec: config.requests_per_sec_per_principal as f64, buckets: Mutex::new(HashMap::new()) },
            clock: Some(clock),
        })
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Gives authentication its store of principals, tokens and grants.
    pub fn attach(&self, store: Arc<AuthStore>) {
        let _ = self.store.set(store);
    }

    /// Gives authorization the Kinesis resource policies (the first one given stays).
    pub fn attach_policies(&self, policies: Arc<dyn ResourcePolicies>) {
        let _ = self.policies.set(policies);
    }

    /// The principals, tokens and grants (none before [`Auth::attach`]).
    pub fn store(&self) -> Option<&Arc<AuthStore>> {
        self.store.get()
    }

    /// How often long-lived calls check again.
    pub fn recheck_interval(&self) -> Duration {
        self.recheck
    }

    fn now_ms(&self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.now_ms())
    }

    /// Who sends a request with this `authorization` header over this
    /// connection: the token's principal, else the client certificate's,
    /// else anonymous. A token that is present but not valid is an error
    /// (never silently anonymous). With authentication off, everyone is
    /// anonymous.
    pub fn authenticate(&self, authorization: Option<&[u8]>, peer: Option<&PeerInfo>) -> Result<Caller> {
        let remote = peer.and_then(|p| p.remote_addr).map(|a: SocketAddr| a.ip());
        if !self.enabled {
            return Ok(Caller::anonymous(remote));
        }
        if let Some(header) = authorization {
            let presented = std::str::from_utf8(header)
                .ok()
                .and_then(|h| h.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .ok_or_else(|| {
                    BrokerError::Unauthenticated("the authorization header must be `Bearer <token>`".into())
                })?;
            if let Some(b) = &self.bootstrap
                && token::same(b, &token::hash(presented))
            {
                return Ok(Caller::named(BOOTSTRAP_PRINCIPAL, Credential::Bootstrap, remote));
            }
            let store = self.store().ok_or_else(|| {
                BrokerError::Unavailable("the broker is starting; tokens work once it is ready".into())
            })?;
            return match store.verify(presented, self.now_ms()) {
                Ok((principal, id)) => Ok(Caller::named(principal, Credential::Token(id), remote)),
                Err(r) => Err(BrokerError::Unauthenticated(r.message().into())),
            };
        }
        if let Some(name) = peer.and_then(|p| p.certificate_principal.as_deref()) {
            if policy::is_principal_name(name) {
                return Ok(Caller::named(name, Credential::Certificate, remote));
            }
            tracing::debug!(common_name = name, "a client certificate's common name is not a principal name");
        }
        Ok(Caller::anonymous(remote))
    }

    /// The caller a Kinesis access key authenticates (its mapped
    /// principal, or the key id itself).
    pub fn access_key_caller(&self, access_key_id: &str, remote: Option<IpAddr>) -> Caller {
        let principal = self.access_keys.get(access_key_id).map_or(access_key_id, String::as_str);
        Caller::named(principal, Credential::AccessKey(access_key_id.into()), remote)
    }

    /// Refuses an anonymous caller when authentication is on.
    pub fn require_principal(&self, caller: &Caller) -> Result<()> {
        if self.enabled && caller.principal.is_none() {
            return Err(BrokerError::Unauthenticated(
                "no credentials: send a token (authorization: Bearer) or a client certificate".into(),
            ));
        }
        Ok(())
    }

    /// Takes one request from the caller's rate; the error says when to retry.
    pub fn admit(&self, caller: &Caller) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let key = match (&caller.principal, caller.remote) {
            (Some(p), _) => p.clone(),
            (None, Some(ip)) => format!("anonymous@{ip}"),
            (None, None) => "anonymous".into(),
        };
        self.rates.take(&key).map_err(|retry_after_ms| BrokerError::Throttled {
            what: format!("{} exceeded auth.requests_per_sec_per_principal = {}", caller.name(), self.rates.per_sec),
            retry_after_ms,
        })
    }

    /// Whether the caller is allowed everything.
    pub fn is_super_user(&self, caller: &Caller) -> bool {
        caller.credential == Credential::Bootstrap
            || caller.principal.as_ref().is_some_and(|p| self.super_users.contains(p))
    }

    /// Whether `caller` may do `action` on `resource` now: its credential
    /// still works (a token may have been revoked or expired since the call
    /// began) and its grants (with a Kinesis call, also the resource's
    /// policies) allow it.
    pub fn authorize(&self, caller: &Caller, action: Action, resource: &Resource) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.check_credential(caller)?;
        if self.granted(caller, action, resource) {
            Ok(())
        } else {
            metrics::counter!("stream_broker_permission_denied_total", "action" => action.as_str()).increment(1);
            Err(BrokerError::PermissionDenied {
                principal: caller.name().to_string(),
                action: action.as_str(),
                resource: resource.to_string(),
            })
        }
    }

    /// Whether `caller` may do `action` on `resource`, without counting a
    /// refusal (for filtering lists).
    pub fn allows(&self, caller: &Caller, action: Action, resource: &Resource) -> bool {
        !self.enabled || (self.check_credential(caller).is_ok() && self.granted(caller, action, resource))
    }

    /// The caller has a principal and its token (if any) still works.
    fn check_credential(&self, caller: &Caller) -> Result<()> {
        self.require_principal(caller)?;
        if let (Credential::Token(id), Some(store)) = (&caller.credential, self.store()) {
            store.still_valid(id, self.now_ms()).map_err(|r| BrokerError::Unauthenticated(r.message().into()))?;
        }
        Ok(())
    }

    /// Super users may do everything; anyone else needs an allow from its
    /// grants or (Kinesis calls) a resource policy, and no deny from either.
    fn granted(&self, caller: &Caller, action: Action, resource: &Resource) -> bool {
        if self.is_super_user(caller) {
            return true;
        }
        let grants = self.store().and_then(|s| s.with_grants(caller.name(), |g| policy::verdict(g, action, resource)));
        if grants == Some(Effect::Deny) {
            return false;
        }
        let policies = match (&caller.kinesis, self.policies.get()) {
            (Some(call), Some(p)) => p.verdict(caller, call, resource),
            _ => None,
        };
        match policies {
            Some(Effect::Deny) => false,
            Some(Effect::Allow) => true,
            None => grants == Some(Effect::Allow),
        }
    }

    /// Resolves when `caller` loses its credential or any of `checks` (checked every
    /// [`Auth::recheck_interval`]), with the reason; never while allowed.
    /// Long-lived calls race their work against it.
    pub async fn watch(&self, caller: &Caller, checks: &[(Action, Resource)]) -> BrokerError {
        if !self.enabled {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.recheck).await;
            if let Err(e) = self.check_credential(caller) {
                return e;
            }
            for (action, resource) in checks {
                if let Err(e) = self.authorize(caller, *action, resource) {
                    return e;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_gets_its_rate_and_then_a_retry_hint() {
        let rates = Rates { per_sec: 5.0, buckets: Mutex::new(HashMap::new()) };
        for _ in 0..5 {
            rates.take("p").expect("within the burst");
        }
        let wait = rates.take("p").expect_err("over the rate");
        assert!((1..=200).contains(&wait), "{wait}");
        rates.take("q").expect("another principal has its own bucket");
    }
}
