//! Who may call the order API (`[apiAuth] mode = "broker-token"`): callers
//! send `authorization: Bearer <token>`, where the token is an API token of
//! the broker (`streamctl auth token create`). There is one identity
//! system, the broker's: the service keeps no token store of its own.
//!
//! **How a request is checked.** Each protected route needs one or more
//! (action, resource) pairs ([`ApiRoute::needs`], the table is in
//! [`crate::api`]'s docs and the README). For each, the service asks the
//! broker's `CheckAccess` *as the caller*: the caller's token is forwarded
//! as that gRPC call's token, so the broker authenticates it (bad, expired
//! or revoked → 401) and answers whether its principal's grants allow the
//! action (no → 403), by the same rule that authorizes every broker call.
//! The service needs no privilege for this and never stores a caller's
//! token: the decision cache is keyed by the token's SHA-256.
//!
//! **Invariants.**
//! - Fail closed: a broker that cannot be reached, answers with an error
//!   other than unauthenticated or throttled, or has authentication off (it
//!   would allow every token) gives 503, never access. Each broker call has
//!   the client's default deadline (10 s).
//! - A decision (allowed or denied, with its principal) is reused for at
//!   most `apiAuth.cacheTtlMs`: a revoked token or a removed grant stops
//!   working within that time. Unauthenticated answers are not cached (a
//!   token never becomes valid later). The cache holds at most
//!   `apiAuth.cacheEntriesMax` decisions; expired ones go first, then the
//!   oldest.
//! - No token appears in a log, a metric or an error message; a 403 names
//!   the action and the resource, a 401 the broker's reason (the token is
//!   not valid, has expired, was revoked).
//! - A caller over its principal's broker request rate
//!   (`auth.requests_per_sec_per_principal`; each check that misses the
//!   cache is one request) gets 429 with the broker's retry hint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use broker::auth::policy::Action;
use client::{Access, Secret};
use tokio::sync::OnceCell;

use crate::access::BrokerAccess;
use crate::config::Config;

/// A protected route's kind; what each needs is [`ApiRoute::needs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRoute {
    /// `POST /order`.
    Place,
    /// `POST /order/fulfill`.
    Fulfil,
    /// `POST /order/delivered`.
    Deliver,
    /// `GET /order/{id}`, `GET /orders`.
    Read,
    /// `GET /metrics`.
    Metrics,
}

/// The streams the routes act on, by their configured names.
#[derive(Debug, Clone)]
pub struct RouteStreams {
    /// `orderStreamName`.
    pub orders: String,
    /// `deliveryQueueName`.
    pub delivery: String,
    /// `customerServiceQueueName`.
    pub customer_service: String,
}

impl ApiRoute {
    /// The (action, resource) pairs a caller needs, all of them: a request
    /// may cause a write only where its caller could write itself.
    pub fn needs(self, s: &RouteStreams) -> Vec<(&'static str, String)> {
        let put = Action::RecordPut.as_str();
        let stream = |name: &str| format!("stream:{name}");
        match self {
            // order_placed on the orders stream.
            ApiRoute::Place => vec![(put, stream(&s.orders))],
            // order_fulfilled on the orders stream, and the order sent on to
            // the delivery company's queue.
            ApiRoute::Fulfil => vec![(put, stream(&s.orders)), (put, stream(&s.delivery))],
            // order_delivered on the orders stream, and the review on the
            // customer-service queue.
            ApiRoute::Deliver => vec![(put, stream(&s.orders)), (put, stream(&s.customer_service))],
            ApiRoute::Read => vec![(Action::RecordGet.as_str(), stream(&s.orders))],
            ApiRoute::Metrics => vec![(Action::AdminMetrics.as_str(), "cluster".to_string())],
        }
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `authorization` header.
    #[error("this route needs `authorization: Bearer <token>` (a broker API token)")]
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("the authorization header must be `Bearer <token>`")]
    Malformed,
    /// The broker refused the token (unknown, expired or revoked).
    #[error("the token was refused: {0}")]
    BadToken(String),
    /// The token's principal may not do this.
    #[error("{principal} may not {action} on {resource}")]
    Forbidden {
        /// The token's principal.
        principal: String,
        /// The action it lacks.
        action: &'static str,
        /// The resource.
        resource: String,
    },
    /// The caller's principal is over its broker request rate.
    #[error("too many requests for this principal; retry in {} ms", .0.as_millis())]
    Throttled(Duration),
    /// The broker could not answer; nothing is allowed meanwhile.
    #[error("cannot check the caller's token with the broker: {0}")]
    Unavailable(String),
}

/// Longest token accepted in a header (broker tokens are far shorter).
const TOKEN_CHARS_MAX: usize = 512;

#[derive(Debug, Clone)]
struct Decision {
    principal: String,
    allowed: bool,
    at: Instant,
}

type Key = ([u8; 32], &'static str, String);

/// The order API's authentication; see the module docs.
#[derive(Debug)]
pub struct ApiAuth {
    broker: BrokerAccess,
    access: OnceCell<Access>,
    streams: RouteStreams,
    ttl: Duration,
    entries_max: usize,
    cache: Mutex<HashMap<Key, Decision>>,
}

impl ApiAuth {
    /// The checker `config` asks for, or `None` with `apiAuth.mode = "none"`.
    pub fn from_config(config: &Config, broker: BrokerAccess) -> Option<Self> {
        if config.api_auth.mode == crate::config::ApiAuthMode::None {
            return None;
        }
        Some(Self {
            broker,
            access: OnceCell::new(),
            streams: RouteStreams {
                orders: config.order_stream_name.clone(),
                delivery: config.delivery_queue_name.clone(),
                customer_service: config.customer_service_queue_name.clone(),
            },
            ttl: Duration::from_millis(config.api_auth.cache_ttl_ms),
            entries_max: config.api_auth.cache_entries_max,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Lets the request through when its `authorization` header names a
    /// principal that has every grant `route` needs; returns the principal.
    pub async fn check(&self, authorization: Option<&[u8]>, route: ApiRoute) -> Result<String, Denied> {
        let token = bearer(authorization.ok_or(Denied::Missing)?)?;
        let hash = broker::auth::token::hash(token.expose());
        let mut principal = String::new();
        for (action, resource) in route.needs(&self.streams) {
            let d = self.decide(&token, hash, action, resource.clone()).await?;
            if !d.allowed {
                return Err(Denied::Forbidden { principal: d.principal, action, resource });
            }
            principal = d.principal;
        }
        Ok(principal)
    }

    async fn decide(
        &self,
        token: &Secret,
        hash: [u8; 32],
        action: &'static str,
        resource: String,
    ) -> Result<Decision, Denied> {
        let key = (hash, action, resource);
        if let Some(d) = self.cached(&key) {
            return Ok(d);
        }
        let access = self.access().await?;
        let answer = match access.check_access_as(token, action, &key.2).await {
            Ok(a) => a,
            Err(client::Error::Unauthenticated(why)) => return Err(Denied::BadToken(why)),
            Err(client::Error::Throttled { retry_after, .. }) => return Err(Denied::Throttled(retry_after)),
            Err(e) => {
                tracing::warn!(error = %e, "the broker could not check an API caller's token");
                return Err(Denied::Unavailable(e.to_string()));
            }
        };
        if !answer.authentication_enabled {
            tracing::error!("apiAuth.mode is broker-token but the broker has authentication off; refusing every call");
            return Err(Denied::Unavailable("the broker has authentication off, so it cannot check tokens".into()));
        }
        let d = Decision { principal: answer.principal, allowed: answer.allowed, at: Instant::now() };
        self.remember(key, d.clone());
        Ok(d)
    }

    /// One connection to the broker, opened at the first request that needs
    /// it (and again after a failed open): the API serves while the broker
    /// is away, answering 503. It carries no token of its own.
    async fn access(&self) -> Result<&Access, Denied> {
        self.access
            .get_or_try_init(|| async {
                let options = self.broker.options_without_token();
                client::Connection::open(&self.broker.addr, &options).await.map(Access::from_channel)
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot reach the broker to check an API caller's token");
                Denied::Unavailable(e.to_string())
            })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Decision>> {
        // Entries are inserted and removed whole: a panic cannot tear one.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, key: &Key) -> Option<Decision> {
        let mut map = self.map();
        match map.get(key) {
            Some(d) if d.at.elapsed() < self.ttl => Some(d.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: Key, d: Decision) {
        let mut map = self.map();
        if map.len() >= self.entries_max && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, d| d.at.elapsed() < ttl);
            if map.len() >= self.entries_max {
                // Full of live decisions: the oldest goes (a scan, only when full).
                if let Some(oldest) = map.iter().min_by_key(|(_, d)| d.at).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(key, d);
    }

    /// Decisions held now.
    pub fn cached_len(&self) -> usize {
        self.map().len()
    }
}

/// The token of a `Bearer <token>` header (the scheme in any case).
fn bearer(header: &[u8]) -> Result<Secret, Denied> {
    let text = std::str::from_utf8(header).map_err(|_| Denied::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(Denied::Malformed)?;
    let token = token.trim();
    let ok = scheme.eq_ignore_ascii_case("bearer")
        && (1..=TOKEN_CHARS_MAX).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_graphic());
    if ok { Ok(Secret::new(token)) } else { Err(Denied::Malformed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_header_with_one_visible_token_is_read() {
        assert_eq!(bearer(b"Bearer sbk_a_b").expect("bearer").expose(), "sbk_a_b");
        assert_eq!(bearer(b"bearer  sbk_a_b ").expect("any case").expose(), "sbk_a_b");
        for bad in [&b"Basic dXNlcjpwYXNz"[..], b"Bearer", b"Bearer ", b"Bearer a b", b"sbk_a_b", b"Bearer \xff"] {
            assert_eq!(bearer(bad).map(|_| ()), Err(Denied::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(bearer(format!("Bearer {}", "x".repeat(513)).as_bytes()).map(|_| ()), Err(Denied::Malformed));
    }

    #[test]
    fn each_route_needs_a_write_on_every_stream_its_effect_reaches() {
        let s = RouteStreams { orders: "o".into(), delivery: "d".into(), customer_service: "c".into() };
        let pairs = |r: ApiRoute| r.needs(&s).into_iter().map(|(a, r)| format!("{a} {r}")).collect::<Vec<_>>();
        assert_eq!(pairs(ApiRoute::Place), ["record:put stream:o"]);
        assert_eq!(pairs(ApiRoute::Fulfil), ["record:put stream:o", "record:put stream:d"]);
        assert_eq!(pairs(ApiRoute::Deliver), ["record:put stream:o", "record:put stream:c"]);
        assert_eq!(pairs(ApiRoute::Read), ["record:get stream:o"]);
        assert_eq!(pairs(ApiRoute::Metrics), ["admin:metrics cluster"]);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest_decision() {
        let mut config = Config::default();
        config.api_auth.mode = crate::config::ApiAuthMode::BrokerToken;
        config.api_auth.cache_entries_max = 3;
        let auth = ApiAuth::from_config(&config, BrokerAccess::anonymous("127.0.0.1:1".into())).expect("on");
        let base = Instant::now();
        for i in 0..5u8 {
            let d = Decision { principal: "p".into(), allowed: true, at: base + Duration::from_millis(i.into()) };
            auth.remember(([i; 32], "record:put", "stream:o".into()), d);
        }
        assert_eq!(auth.cached_len(), 3);
        assert!(auth.cached(&([0; 32], "record:put", "stream:o".into())).is_none(), "the oldest went first");
        assert!(auth.cached(&([4; 32], "record:put", "stream:o".into())).is_some(), "the newest stays");
    }
}
