//! Stream attributes and registered consumers: tags, capacity mode,
//! resource policies, enhanced-monitoring and encryption settings, warm
//! throughput, account settings, and the consumers of enhanced fan-out.
//!
//! Every change is a read-modify-write of the stream's
//! [`StreamAttributes`] under one lock, made durable by the metadata store
//! (sled commit: fdatasync of its files and directory) before it returns.
//! Resource policies are checked whole when put and evaluated on Kinesis
//! API calls ([`crate::auth::resource_policy`]); every stored change bumps
//! [`Service::attributes_counter`], so whoever caches parsed policies knows
//! when to read them again. Monitoring, encryption and warm throughput are
//! recorded and reported only: the broker computes no extra metrics and
//! does not encrypt data at rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{CreateStreamWith, Service};
use crate::auth::policy::{Action, Resource};
use crate::catalog::Stream;
use crate::error::{BrokerError, Result};
use crate::metadata::{AccountSettings, BillingCommitment, ConsumerMeta, StreamAttributes, StreamMode};

/// Tags a stream (or a consumer) may carry.
pub const TAGS_MAX: usize = 50;
/// Registered consumers per stream.
pub const CONSUMERS_PER_STREAM_MAX: usize = 20;
/// Consumers that may be CREATING at once, per stream.
pub const CONSUMERS_CREATING_MAX: usize = 5;
/// Shards an on-demand stream starts with.
pub const ON_DEMAND_SHARD_COUNT: u32 = 4;
/// Largest resource policy, bytes.
pub const POLICY_BYTES_MAX: usize = 20 * 1024;
/// The shard-level metrics enhanced monitoring knows; `ALL` names them all.
pub const SHARD_LEVEL_METRICS: [&str; 7] = [
    "IncomingBytes",
    "IncomingRecords",
    "OutgoingBytes",
    "OutgoingRecords",
    "WriteProvisionedThroughputExceeded",
    "ReadProvisionedThroughputExceeded",
    "IteratorAgeMilliseconds",
];
/// A billing commitment cannot end before it has run this long.
pub const BILLING_COMMITMENT_MIN_MS: u64 = 24 * 3_600_000;

/// Where a registered consumer is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStatus {
    /// Registered less than `kinesis.consumer_activation_ms` ago.
    Creating,
    /// Can subscribe.
    Active,
}

/// What an enhanced-monitoring change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringChange {
    /// The metrics before.
    pub current: BTreeSet<String>,
    /// The metrics after.
    pub desired: BTreeSet<String>,
}

/// Whether a billing commitment is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitmentStatus {
    /// Running.
    Enabled,
    /// Asked to end, running until its earliest end.
    EnabledUntilEarliestAllowedEnd,
    /// Off.
    Disabled,
}

/// Checks tags as Kinesis does: keys of 1..=128 and values of 0..=256
/// Unicode letters, digits, white space and `_ . : / = + - @`, no key under
/// the reserved `aws:` prefix.
pub fn validate_tags<'a>(tags: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<()> {
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c);
    for (key, value) in tags {
        let chars = key.chars().count();
        if !(1..=128).contains(&chars) {
            return Err(BrokerError::invalid("tags", format!("tag key {key:?} must be 1..=128 characters")));
        }
        if key.starts_with("aws:") {
            return Err(BrokerError::invalid("tags", format!("tag key {key:?}: keys starting with aws: are reserved")));
        }
        if let Some(value) = value {
            if value.chars().count() > 256 {
                return Err(BrokerError::invalid("tags", format!("the value of tag {key:?} is over 256 characters")));
            }
            if !value.chars().all(allowed) {
                return Err(BrokerError::invalid(
                    "tags",
                    format!("the value of tag {key:?} has characters outside letters, digits, spaces and _.:/=+-@"),
                ));
            }
        }
        if !key.chars().all(allowed) {
            return Err(BrokerError::invalid(
                "tags",
                format!("tag key {key:?} has characters outside letters, digits, spaces and _.:/=+-@"),
            ));
        }
    }
    Ok(())
}

/// `tags` merged into `into`, if the result has at most [`TAGS_MAX`].
fn merge_tags(what: &str, into: &mut BTreeMap<String, String>, tags: BTreeMap<String, String>) -> Result<()> {
    validate_tags(tags.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))))?;
    let mut merged = into.clone();
    merged.extend(tags);
    if merged.len() > TAGS_MAX {
        return Err(BrokerError::invalid(
            "tags",
            format!("{what} would have {} tags; at most {TAGS_MAX} are allowed", merged.len()),
        ));
    }
    *into = merged;
    Ok(())
}

/// Checks a resource policy: at most [`POLICY_BYTES_MAX`], and a document
/// the broker enforces whole (see [`crate::auth::resource_policy`]).
fn validate_policy(policy: &str) -> Result<()> {
    if policy.len() > POLICY_BYTES_MAX {
        return Err(BrokerError::invalid("policy", format!("{} bytes, more than {POLICY_BYTES_MAX}", policy.len())));
    }
    crate::auth::resource_policy::ResourcePolicy::parse(policy).map(drop)
}

/// Checks a consumer name: `[a-zA-Z0-9_.-]{1,128}`, as stream names.
pub fn validate_consumer_name(name: &str) -> Result<()> {
    crate::catalog::validate_stream_name(name).map_err(|e| match e {
        BrokerError::InvalidArgument { reason, .. } => BrokerError::invalid("consumer_name", reason),
        other => other,
    })
}

impl Service {
    /// The stream with this id, if it exists.
    pub fn stream_by_id(&self, id: u64) -> Result<Arc<Stream>> {
        let stream = self
            .catalog
            .get_by_id(id)
            .ok_or_else(|| BrokerError::StreamNotFound { name: format!("(the stream with id {id})") })?;
        self.authorize(Action::StreamDescribe, &Resource::stream(&stream.meta().name))?;
        Ok(stream)
    }

    /// A counter bumped after every stored change of any stream's
    /// attributes, shared (not the service itself) so a cache of them need
    /// not hold the service.
    pub fn attributes_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.attributes_version.clone()
    }

    /// A stream's attributes.
    pub fn attributes(&self, stream: &Stream) -> Result<StreamAttributes> {
        self.catalog.store().stream_attributes(stream.meta().id)
    }

    /// Applies `change` to a stream's attributes and stores the result
    /// durably; nothing is stored when `change` fails.
    async fn change_attributes<T>(
        &self,
        stream_name: &str,
        change: impl FnOnce(&Stream, &mut StreamAttributes) -> Result<T>,
    ) -> Result<T> {
        self.authorize(Action::StreamConfigure, &Resource::stream(stream_name))?;
        let _serial = self.attributes_lock.lock().await;
        let stream = self.stream(stream_name)?;
        let id = stream.meta().id;
        let store = self.catalog.store();
        let mut attrs = store.stream_attributes(id)?;
        let out = change(&stream, &mut attrs)?;
        store.put_stream_attributes(id, &attrs)?;
        self.attributes_version.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(out)
    }

    /// How many streams are on-demand.
    fn on_demand_streams(&self) -> Result<usize> {
        let store = self.catalog.store();
        let mut n = 0;
        for stream in self.catalog.all() {
            if store.stream_attributes(stream.meta().id)?.mode == StreamMode::OnDemand {
                n += 1;
            }
        }
        Ok(n)
    }

    fn check_on_demand_room(&self) -> Result<()> {
        let limit = self.catalog.config().kinesis.on_demand_stream_count_limit;
        if self.on_demand_streams()? >= limit as usize {
            return Err(BrokerError::LimitExceeded(format!(
                "the account has kinesis.on_demand_stream_count_limit = {limit} on-demand streams"
            )));
        }
        Ok(())
    }

    /// CreateStream with attributes: an on-demand stream (`shard_count`
    /// `None`) gets [`ON_DEMAND_SHARD_COUNT`] shards and counts against
    /// `kinesis.on_demand_stream_count_limit`. The attributes are stored
    /// after the stream is durable; the call returns after both.
    pub async fn create_stream_with(&self, req: CreateStreamWith) -> Result<Arc<Stream>> {
        self.authorize(Action::StreamCreate, &Resource::stream(&req.stream.name))?;
        let mut attrs = StreamAttributes { mode: req.mode, ..StreamAttributes::default() };
        merge_tags("the stream", &mut attrs.tags, req.tags)?;
        let _serial = self.attributes_lock.lock().await;
        let mut create = req.stream;
        if req.mode == StreamMode::Provisioned && req.warm_throughput_mibps.is_some() {
            return Err(BrokerError::invalid(
                "warm_throughput_mibps",
                "warm throughput applies to on-demand streams only",
            ));
        }
        if req.mode == StreamMode::OnDemand {
            self.check_on_demand_room()?;
            create.shard_count = ON_DEMAND_SHARD_COUNT;
            attrs.warm_throughput_mibps = req.warm_throughput_mibps;
        }
        let stream = self.catalog.create(create).await?;
        self.catalog.store().put_stream_attributes(stream.meta().id, &attrs)?;
        self.attributes_version.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(stream)
    }

    /// DeleteStream: refused with `InUse` while consumers are registered,
    /// unless `enforce_consumer_deletion`.
    pub async fn delete_stream_with(&self, stream_name: &str, enforce_consumer_deletion: bool) -> Result<()> {
        let stream = self.stream(stream_name)?;
        let id = stream.meta().id;
        let consumers = self.catalog.store().stream_attributes(id)?.consumers.len();
        if consumers > 0 && !enforce_consumer_deletion {
            return Err(BrokerError::in_use(format!(
                "stream {stream_name} has {consumers} registered consumer(s); deregister them or set \
                 EnforceConsumerDeletion"
            )));
        }
        self.delete_stream(stream_name).await
    }

    /// Adds or replaces tags; a stream has at most [`TAGS_MAX`].
    pub async fn add_tags(&self, stream_name: &str, tags: BTreeMap<String, String>) -> Result<()> {
        self.change_attributes(stream_name, |_, a| merge_tags("the stream", &mut a.tags, tags)).await
    }

    /// Removes tags (absent keys are ignored).
    pub async fn remove_tags(&self, stream_name: &str, keys: &[String]) -> Result<()> {
        validate_tags(keys.iter().map(|k| (k.as_str(), None)))?;
        self.change_attributes(stream_name, |_, a| {
            for k in keys {
                a.tags.remove(k);
            }
            Ok(())
        })
        .await
    }

    /// Adds or replaces a consumer's tags.
    pub async fn tag_consumer(&self, stream_name: &str, consumer: &str, tags: BTreeMap<String, String>) -> Result<()> {
        self.change_attributes(stream_name, |s, a| {
            let c = find_consumer(s, a, consumer)?;
            merge_tags("the consumer", &mut c.tags, tags)
        })
        .await
    }

    /// Removes a consumer's tags.
    pub async fn untag_consumer(&self, stream_name: &str, consumer: &str, keys: &[String]) -> Result<()> {
        validate_tags(keys.iter().map(|k| (k.as_str(), None)))?;
        self.change_attributes(stream_name, |s, a| {
            let c = find_consumer(s, a, consumer)?;
            for k in keys {
                c.tags.remove(k);
            }
            Ok(())
        })
        .await
    }

    /// Stores a resource policy on the stream, or on one of its consumers.
    pub async fn put_policy(&self, stream_name: &str, consumer: Option<&str>, policy: String) -> Result<()> {
        // A resource policy grants access to others: managing it is managing access.
        self.authorize(Action::AdminAuth, &Resource::Cluster)?;
        validate_policy(&policy)?;
        self.change_attributes(stream_name, |s, a| {
            match consumer {
                Some(c) => find_consumer(s, a, c)?.policy = Some(policy),
                None => a.policy = Some(policy),
            }
            Ok(())
        })
        .await
    }

    /// Removes a resource policy.
    pub async fn delete_policy(&self, stream_name: &str, consumer: Option<&str>) -> Result<()> {
        self.authorize(Action::AdminAuth, &Resource::Cluster)?;
        self.change_attributes(stream_name, |s, a| {
            match consumer {
                Some(c) => find_consumer(s, a, c)?.policy = None,
                None => a.policy = None,
            }
            Ok(())
        })
        .await
    }

    /// Enables (`enable`) or disables shard-level metrics; `ALL` names
    /// every metric.
    pub async fn change_monitoring(
        &self,
        stream_name: &str,
        metrics: &[String],
        enable: bool,
    ) -> Result<MonitoringChange> {
        let mut named = BTreeSet::new();
        for m in metrics {
            if m == "ALL" {
                named.extend(SHARD_LEVEL_METRICS.iter().map(|s| s.to_string()));
            } else if SHARD_LEVEL_METRICS.contains(&m.as_str()) {
                named.insert(m.clone());
            } else {
                return Err(BrokerError::invalid("shard_level_metrics", format!("{m:?} is not a shard-level metric")));
            }
        }
        self.change_attributes(stream_name, |_, a| {
            let current = a.shard_level_metrics.clone();
            if enable {
                a.shard_level_metrics.extend(named);
            } else {
                a.shard_level_metrics.retain(|m| !named.contains(m));
            }
            Ok(MonitoringChange { current, desired: a.shard_level_metrics.clone() })
        })
        .await
    }

    /// Records server-side encryption with `key_id` (`None` stops it).
    pub async fn set_encryption(&self, stream_name: &str, key_id: Option<String>) -> Result<()> {
        self.change_attributes(stream_name, |_, a| {
            a.encryption_key_id = key_id;
            Ok(())
        })
        .await
    }

    /// Switches the capacity mode; switching to on-demand counts against
    /// the on-demand stream limit.
    pub async fn set_stream_mode(&self, stream_name: &str, mode: StreamMode, warm_mibps: Option<u32>) -> Result<()> {
        let switching_on =
            mode == StreamMode::OnDemand && self.attributes(&*self.stream(stream_name)?)?.mode != StreamMode::OnDemand;
        if switching_on {
            self.check_on_demand_room()?;
        }
        self.change_attributes(stream_name, |_, a| {
            a.mode = mode;
            a.warm_throughput_mibps = match mode {
                StreamMode::OnDemand => warm_mibps.or(a.warm_throughput_mibps),
                StreamMode::Provisioned => None,
            };
            Ok(())
        })
        .await
    }

    /// Records an on-demand stream's warm throughput target.
    pub async fn set_warm_throughput(&self, stream_name: &str, mibps: u32) -> Result<()> {
        self.change_attributes(stream_name, |_, a| {
            if a.mode != StreamMode::OnDemand {
                return Err(BrokerError::invalid(
                    "warm_throughput_mibps",
                    "warm throughput applies to on-demand streams only; switch the stream's mode first",
                ));
            }
            a.warm_throughput_mibps = Some(mibps);
            Ok(())
        })
        .await
    }

    /// Registers a consumer: a stream has at most
    /// [`CONSUMERS_PER_STREAM_MAX`], at most [`CONSUMERS_CREATING_MAX`] of
    /// them CREATING.
    pub async fn register_consumer(
        &self,
        stream_name: &str,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<ConsumerMeta> {
        validate_consumer_name(name)?;
        let now = self.now();
        self.change_attributes(stream_name, |_, a| {
            if a.consumers.iter().any(|c| c.name == name) {
                return Err(BrokerError::in_use(format!("consumer {name} of stream {stream_name} already exists")));
            }
            if a.consumers.len() >= CONSUMERS_PER_STREAM_MAX {
                return Err(BrokerError::LimitExceeded(format!(
                    "stream {stream_name} has {CONSUMERS_PER_STREAM_MAX} registered consumers, the most allowed"
                )));
            }
            let creating = a.consumers.iter().filter(|c| self.consumer_status(c) == ConsumerStatus::Creating).count();
            if creating >= CONSUMERS_CREATING_MAX {
                return Err(BrokerError::LimitExceeded(format!(
                    "stream {stream_name} has {creating} consumers being created; wait until they are ACTIVE"
                )));
            }
            let mut consumer =
                ConsumerMeta { name: name.to_string(), created_at_ms: now, tags: BTreeMap::new(), policy: None };
            merge_tags("the consumer", &mut consumer.tags, tags)?;
            a.consumers.push(consumer.clone());
            Ok(consumer)
        })
        .await
    }

    /// Deregisters a consumer; its subscriptions end.
    pub async fn deregister_consumer(&self, stream_name: &str, name: &str) -> Result<ConsumerMeta> {
        let removed = self
            .change_attributes(stream_name, |s, a| {
                find_consumer(s, a, name)?;
                let at = a.consumers.iter().position(|c| c.name == name).unwrap_or_default();
                Ok((s.meta().id, a.consumers.remove(at)))
            })
            .await?;
        self.subscriptions.end_consumer(removed.0, name);
        Ok(removed.1)
    }

    /// The consumer `name` of a stream.
    pub fn consumer(&self, stream: &Stream, name: &str) -> Result<ConsumerMeta> {
        let mut attrs = self.attributes(stream)?;
        find_consumer(stream, &mut attrs, name).cloned()
    }

    /// A consumer is CREATING for `kinesis.consumer_activation_ms`, then ACTIVE.
    pub fn consumer_status(&self, c: &ConsumerMeta) -> ConsumerStatus {
        let ready_at = c.created_at_ms.saturating_add(self.catalog.config().kinesis.consumer_activation_ms);
        if self.now() < ready_at { ConsumerStatus::Creating } else { ConsumerStatus::Active }
    }

    /// The account settings and the commitment's status.
    pub fn account_settings(&self) -> Result<(AccountSettings, CommitmentStatus)> {
        self.auth.require_principal(&crate::auth::current())?;
        let s = self.catalog.store().account_settings()?;
        let status = commitment_status(s.billing_commitment.as_ref(), self.now());
        Ok((s, status))
    }

    /// Enables or disables the billing commitment. Disabling before its
    /// earliest end keeps it running until then.
    pub async fn set_billing_commitment(&self, enabled: bool) -> Result<(AccountSettings, CommitmentStatus)> {
        self.authorize(Action::AdminAccount, &Resource::Cluster)?;
        let _serial = self.attributes_lock.lock().await;
        let now = self.now();
        let store = self.catalog.store();
        let mut s = store.account_settings()?;
        let status = commitment_status(s.billing_commitment.as_ref(), now);
        match (enabled, s.billing_commitment.as_mut()) {
            (true, Some(c)) if status != CommitmentStatus::Disabled => c.ended_at_ms = None,
            (true, _) => {
                s.billing_commitment = Some(BillingCommitment {
                    started_at_ms: now,
                    ended_at_ms: None,
                    earliest_end_ms: now + BILLING_COMMITMENT_MIN_MS,
                });
            }
            (false, Some(c)) if c.ended_at_ms.is_none() => c.ended_at_ms = Some(now.max(c.earliest_end_ms)),
            (false, _) => {}
        }
        store.put_account_settings(&s)?;
        let status = commitment_status(s.billing_commitment.as_ref(), now);
        Ok((s, status))
    }
}

fn commitment_status(c: Option<&BillingCommitment>, now: u64) -> CommitmentStatus {
    match c {
        None => CommitmentStatus::Disabled,
        Some(c) => match c.ended_at_ms {
            None => CommitmentStatus::Enabled,
            Some(end) if now < end => CommitmentStatus::EnabledUntilEarliestAllowedEnd,
            Some(_) => CommitmentStatus::Disabled,
        },
    }
}

fn find_consumer<'a>(stream: &Stream, a: &'a mut StreamAttributes, name: &str) -> Result<&'a mut ConsumerMeta> {
    a.consumers
        .iter_mut()
        .find(|c| c.name == name)
        .ok_or_else(|| BrokerError::ConsumerNotFound { stream: stream.meta().name, consumer: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_kinesis_rules() {
        assert!(validate_tags([("team", Some("cakes & pies"))]).is_err(), "& is not allowed");
        assert!(validate_tags([("team", Some("cakes + pies: 2/3 @home_x.y-z="))]).is_ok());
        assert!(validate_tags([("aws:owner", Some("x"))]).is_err());
        assert!(validate_tags([("", Some("x"))]).is_err());
        assert!(validate_tags([(&*"k".repeat(129), None)]).is_err());
        assert!(validate_tags([("k", Some(&*"v".repeat(257)))]).is_err());
        let mut tags = BTreeMap::new();
        let fifty: BTreeMap<String, String> = (0..50).map(|i| (format!("k{i}"), String::new())).collect();
        merge_tags("the stream", &mut tags, fifty).expect("fifty fit");
        merge_tags("the stream", &mut tags, BTreeMap::from([("k3".into(), "v".into())])).expect("a replaced one fits");
        let err = merge_tags("the stream", &mut tags, BTreeMap::from([("k50".into(), "v".into())])).expect_err("51");
        assert!(err.to_string().contains("51 tags"), "{err}");
        assert_eq!(tags.len(), 50, "a refused change changes nothing");
    }

    #[test]
    fn commitments_end_no_earlier_than_allowed() {
        let c = BillingCommitment { started_at_ms: 0, ended_at_ms: Some(100), earliest_end_ms: 100 };
        assert_eq!(commitment_status(Some(&c), 50), CommitmentStatus::EnabledUntilEarliestAllowedEnd);
        assert_eq!(commitment_status(Some(&c), 100), CommitmentStatus::Disabled);
        assert_eq!(commitment_status(None, 0), CommitmentStatus::Disabled);
        let on = BillingCommitment { ended_at_ms: None, ..c };
        assert_eq!(commitment_status(Some(&on), 1_000), CommitmentStatus::Enabled);
    }

    #[test]
    fn policies_must_be_json_objects() {
        assert!(validate_policy(r#"{"Version":"2012-10-17","Statement":[]}"#).is_ok());
        assert!(
            validate_policy(
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{}}]}"#
            )
            .is_err()
        );
        assert!(validate_policy("[]").is_err());
        assert!(validate_policy("not json").is_err());
    }
}
