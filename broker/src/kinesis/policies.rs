//! The resource policies of streams and their consumers, as the Kinesis
//! API's authorization reads them ([`crate::auth::ResourcePolicies`]).
//!
//! Policies are parsed once and cached per stream id. The cache is valid
//! for one attributes version ([`Service::attributes_counter`]): the
//! version is read *before*
//! the attributes, so a change stored after the read bumps the version and
//! the next call parses again; a PutResourcePolicy therefore applies to
//! every call that starts after it returns.
//!
//! A stored policy that no longer parses (written by an older broker that
//! only checked for a JSON object) denies every Kinesis call on its
//! resource but a super user's, and says so in the log: a policy is
//! enforced whole or not at all, never half.
//!
//! It holds the catalog weakly: the broker's `Auth` holds this, and the
//! service holds `Auth`, so a strong reference would keep the metadata
//! store (and its file lock) alive after the broker stops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::auth::policy::{Effect, Resource};
use crate::auth::resource_policy::{Request, ResourcePolicy};
use crate::auth::{Caller, KinesisCall, ResourcePolicies};
use crate::catalog::Catalog;
use crate::service::Service;

use super::names::Arns;

/// A policy as stored: parsed, or the reason it does not parse.
type Parsed = Result<ResourcePolicy, String>;

/// The parsed policies of one stream.
#[derive(Debug, Default)]
struct StreamPolicies {
    stream: Option<Parsed>,
    /// By consumer name: (registration time in ms, policy).
    consumers: HashMap<String, (u64, Parsed)>,
}

#[derive(Debug, Default)]
struct Cache {
    version: u64,
    streams: HashMap<u64, Arc<StreamPolicies>>,
}

/// The resource policies of a service's streams.
#[derive(Debug)]
pub struct Policies {
    catalog: Weak<Catalog>,
    version: Arc<AtomicU64>,
    arns: Arns,
    cache: Mutex<Cache>,
}

impl Policies {
    /// The policies of `service`'s streams, with ARNs of `arns`.
    pub fn new(service: &Service, arns: Arns) -> Self {
        let catalog = Arc::downgrade(service.catalog());
        Self { catalog, version: service.attributes_counter(), arns, cache: Mutex::default() }
    }

    fn parse(text: &str, what: &str) -> Parsed {
        ResourcePolicy::parse(text).map_err(|e| {
            tracing::error!(resource = what, error = %e,
                "a stored resource policy does not parse; Kinesis calls on it are denied until it is put again or deleted");
            e.to_string()
        })
    }

    /// The parsed policies of stream `id`, or `None` if it has none or is gone.
    fn of(&self, catalog: &Catalog, id: u64, name: &str) -> Option<Arc<StreamPolicies>> {
        let version = self.version.load(Ordering::Acquire);
        {
            // The cache holds parsed values only; a panic elsewhere cannot leave it torn.
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.version == version
                && let Some(p) = cache.streams.get(&id)
            {
                return Some(p.clone());
            }
        }
        let stream = catalog.get_by_id(id)?;
        let attrs = match catalog.store().stream_attributes(stream.meta().id) {
            Ok(a) => a,
            Err(e) => {
                // Fail closed: without the attributes the policies are unknown.
                tracing::warn!(stream = name, error = %e, "cannot read a stream's resource policies");
                let unknown = Err(format!("cannot read the policies: {e}"));
                return Some(Arc::new(StreamPolicies { stream: Some(unknown), consumers: HashMap::new() }));
            }
        };
        let parsed = Arc::new(StreamPolicies {
            stream: attrs.policy.as_deref().map(|p| Self::parse(p, name)),
            consumers: attrs
                .consumers
                .iter()
                .filter_map(|c| {
                    c.policy.as_deref().map(|p| (c.name.clone(), (c.created_at_ms, Self::parse(p, &c.name))))
                })
                .collect(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.version != version {
            cache.streams.clear();
            cache.version = version;
        }
        cache.streams.insert(id, parsed.clone());
        Some(parsed)
    }
}

/// Deny wins over allow, allow over silence.
fn combine(a: Option<Effect>, b: Option<Effect>) -> Option<Effect> {
    match (a, b) {
        (Some(Effect::Deny), _) | (_, Some(Effect::Deny)) => Some(Effect::Deny),
        (Some(Effect::Allow), _) | (_, Some(Effect::Allow)) => Some(Effect::Allow),
        _ => None,
    }
}

fn evaluate(policy: &Parsed, request: &Request<'_>) -> Option<Effect> {
    match policy {
        Ok(p) => p.evaluate(request),
        Err(_) => Some(Effect::Deny),
    }
}

impl ResourcePolicies for Policies {
    fn verdict(&self, caller: &Caller, call: &KinesisCall, resource: &Resource) -> Option<Effect> {
        let (Resource::Stream(name), Some(principal)) = (resource, caller.principal.as_deref()) else {
            return None;
        };
        // Gone only while the broker stops: nothing is served then.
        let catalog = self.catalog.upgrade()?;
        let id = catalog.get(name).ok()?.meta().id;
        let policies = self.of(&catalog, id, name)?;
        let consumer = call.consumer.as_ref().filter(|(stream, _)| stream == name);
        let consumer = consumer.and_then(|(_, c)| policies.consumers.get(c).map(|p| (c, p)));
        if policies.stream.is_none() && consumer.is_none() {
            return None;
        }
        let action = format!("kinesis:{}", call.operation);
        let mut verdict = None;
        if let Some(p) = &policies.stream {
            let arn = self.arns.stream(name);
            let request = Request { principal, account: &self.arns.account, action: &action, resource: &arn };
            verdict = combine(verdict, evaluate(p, &request));
        }
        if let Some((consumer, (created_at_ms, p))) = consumer {
            let arn = self.arns.consumer(name, consumer, *created_at_ms);
            let request = Request { principal, account: &self.arns.account, action: &action, resource: &arn };
            verdict = combine(verdict, evaluate(p, &request));
        }
        verdict
    }
}
