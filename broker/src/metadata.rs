//! Broker metadata (stream definitions with their shard trees, the
//! iterator-signing secret, consumer groups) behind a small trait. Record
//! data never goes here.
//!
//! Invariant: a method that changes metadata returns only after the change
//! is durable (sled flushed, then its files and directory fsynced by
//! [`DurableSled::commit`]), so the broker can acknowledge it. A stream's
//! definition, shard tree and reshard intent are one value written in one
//! `put_stream`, so a crash leaves either the value before a change or the
//! value after it (see `layout` for the reshard protocol built on that).
//!
//! Definitions written before resharding existed carry `shard_count`
//! instead of a shard list; [`decode_stream`] turns them into the uniform
//! tree `HashRanges` describes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::durable::DurableSled;
use crate::error::{BrokerError, Result};
use crate::quota::QuotaValues;

/// Lifecycle of a stream. A stream is `Creating` until all its shard logs
/// exist and `Deleting` from the moment a delete starts; after a crash the
/// broker moves a `Creating` stream's directory to `lost+found/` (it was
/// never acknowledged, but after a metadata rollback its records may be all
/// that is left) and finishes a `Deleting` one. It is `Updating` while a
/// reshard runs (exactly while [`StreamMeta::reshard`] is set); after a
/// crash the broker finishes the reshard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    /// Shard logs are being created.
    Creating,
    /// Serving.
    Active,
    /// Being removed.
    Deleting,
    /// Serving while a split, merge or shard-count change runs.
    Updating,
}

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Takes writes for its hash range.
    Open,
    /// Split or merged: takes no writes, readable until retention removes
    /// its last record.
    Closed {
        /// The sequence number after its last record: no record ever gets it.
        ending_seq: u64,
        /// When it closed, ms since the Unix epoch.
        closed_at_ms: u64,
    },
    /// Closed, and retention removed its records and its files. Kept only
    /// while a kept shard names it as a parent, so every parent link resolves.
    Expired {
        /// When it closed.
        closed_at_ms: u64,
    },
}

/// One shard of a stream's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Its index: names it (`shardId-NNNNNNNNNNNN`) and its directory; never reused in the stream.
    pub index: u32,
    /// First hash key it owns (inclusive).
    #[serde(with = "hash_key_text")]
    pub starting_hash_key: u128,
    /// Last hash key it owns (inclusive).
    #[serde(with = "hash_key_text")]
    pub ending_hash_key: u128,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<u32>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<u32>,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Open, closed or expired.
    pub state: ShardState,
}

impl ShardMeta {
    /// Whether its log is kept (open or closed, not expired).
    pub fn is_kept(&self) -> bool {
        !matches!(self.state, ShardState::Expired { .. })
    }

    /// Whether it takes writes.
    pub fn is_open(&self) -> bool {
        self.state == ShardState::Open
    }

    /// Its parents, first the parent, then the adjacent parent.
    pub fn parents(&self) -> impl Iterator<Item = u32> {
        self.parent.into_iter().chain(self.adjacent_parent)
    }

    /// Whether it owns `hash`.
    pub fn covers(&self, hash: u128) -> bool {
        self.starting_hash_key <= hash && hash <= self.ending_hash_key
    }
}

/// Hash keys are stored as decimal text, as the APIs show them.
mod hash_key_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| serde::de::Error::custom(format!("hash key {text:?} is not a u128")))
    }
}

/// What a reshard was asked to reach; kept until it is reached, so a
/// restart finishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReshardTarget {
    /// SplitShard: one split.
    Split {
        /// The shard split.
        shard: u32,
        /// The second child's first hash key.
        #[serde(with = "hash_key_text")]
        at: u128,
    },
    /// MergeShards: one merge.
    Merge {
        /// The first shard.
        shard: u32,
        /// The adjacent shard.
        adjacent: u32,
    },
    /// UpdateShardCount with UNIFORM_SCALING: splits and merges until the
    /// open shards are the uniform ranges of `target` shards.
    Scale {
        /// The open shard count wanted.
        target: u32,
        /// The open shard count when the call was accepted.
        from: u32,
    },
}

/// One split or merge in progress: decided and durable before anything
/// else happens, so a restart can finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardStep {
    /// The shards that close (one for a split, two for a merge, in hash order).
    pub parents: Vec<u32>,
    /// The shards that open, with their indexes and ranges, state `Open`.
    pub children: Vec<ShardMeta>,
}

/// A reshard in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshard {
    /// What was asked.
    pub target: ReshardTarget,
    /// The step under way, if one is.
    pub step: Option<ReshardStep>,
}

/// A stream's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique for the life of the broker; never reused, so an old iterator
    /// can never read a re-created stream of the same name. Names the
    /// stream's directory (the name never does).
    pub id: u64,
    /// The user's name.
    pub name: String,
    /// The shard tree, in index order: open shards (whose ranges cover the
    /// hash space exactly once), closed ones, and expired ones still named
    /// as a parent.
    pub shards: Vec<ShardMeta>,
    /// The index the next new shard gets (above every index ever used).
    pub next_shard_index: u32,
    /// The reshard in progress; set exactly while `status` is `Updating`.
    #[serde(default)]
    pub reshard: Option<Reshard>,
    /// When UpdateShardCount calls were accepted within the rate-limit
    /// window, ms since the Unix epoch, oldest first.
    #[serde(default)]
    pub scalings_ms: Vec<u64>,
    /// Retention, 24..=168 hours.
    pub retention_hours: u32,
    /// Per-shard quotas.
    pub quotas: QuotaValues,
    /// Largest record, key + data.
    pub max_record_bytes: u32,
    /// Lifecycle state.
    pub status: StreamStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// Where a group's shards start when they have no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartPosition {
    /// The oldest stored record.
    TrimHorizon,
    /// Records arriving after the shard was first assigned.
    Latest,
    /// The first record at or after this time (ms since the Unix epoch).
    AtTimestamp(u64),
}

/// A consumer group's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The stream's id (groups die with their stream).
    pub stream_id: u64,
    /// The group's name.
    pub name: String,
    /// Start for shards without a checkpoint.
    pub start: StartPosition,
    /// Creation time.
    pub created_at_ms: u64,
}

/// How a stream's capacity is managed (a Kinesis notion; the broker
/// applies the same per-shard quotas to both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMode {
    /// The shard count is what the user set.
    #[default]
    Provisioned,
    /// Created without a shard count: starts with the on-demand default
    /// number of shards; counts against the on-demand stream limit.
    OnDemand,
}

/// A registered (enhanced fan-out) consumer of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMeta {
    /// Its name, unique in the stream.
    pub name: String,
    /// Registration time, ms since the Unix epoch (its ARN carries the seconds).
    pub created_at_ms: u64,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Its resource policy (see `crate::auth::resource_policy`).
    #[serde(default)]
    pub policy: Option<String>,
}

/// What a stream has beyond its definition: tags, mode, policy, reported
/// settings and registered consumers. Kept apart from [`StreamMeta`] so the
/// data path never reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamAttributes {
    /// Capacity mode.
    pub mode: StreamMode,
    /// Tags, by key.
    pub tags: BTreeMap<String, String>,
    /// Resource policy (see `crate::auth::resource_policy`).
    pub policy: Option<String>,
    /// Enhanced monitoring: shard-level metric names, stored and reported.
    pub shard_level_metrics: std::collections::BTreeSet<String>,
    /// Server-side encryption key id, recorded and reported (data at rest
    /// is not encrypted).
    pub encryption_key_id: Option<String>,
    /// Warm throughput target, MiB/s, recorded and reported.
    pub warm_throughput_mibps: Option<u32>,
    /// Registered consumers, in registration order.
    pub consumers: Vec<ConsumerMeta>,
}

/// A minimum throughput billing commitment, recorded and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingCommitment {
    /// When it was enabled, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When it was asked to end, if it was.
    pub ended_at_ms: Option<u64>,
    /// Before this it cannot end.
    pub earliest_end_ms: u64,
}

/// Account-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountSettings {
    /// The billing commitment, if one was ever enabled.
    pub billing_commitment: Option<BillingCommitment>,
}

/// Durable metadata.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Every stream, in name order.
    fn streams(&self) -> Result<Vec<StreamMeta>>;
    /// Inserts or replaces a stream's definition; durable on return.
    fn put_stream(&self, meta: &StreamMeta) -> Result<()>;
    /// Removes a stream's definition; durable on return.
    fn remove_stream(&self, name: &str) -> Result<()>;
    /// A new id, at least `min` and never returned before, durable on
    /// return. The catalogue passes one more than every id it finds on disk,
    /// so a store restored from an older backup (or rolled back) cannot hand
    /// out an id whose directory exists.
    fn next_id(&self, min: u64) -> Result<u64>;
    /// The 32-byte secret that signs shard iterators, created on first use.
    fn iterator_secret(&self) -> Result<[u8; 32]>;
    /// Makes everything durable (at shutdown).
    fn flush(&self) -> Result<()>;
    /// Every consumer group.
    fn groups(&self) -> Result<Vec<GroupMeta>>;
    /// Inserts or replaces a group; durable on return.
    fn put_group(&self, group: &GroupMeta) -> Result<()>;
    /// Removes a group and its checkpoints; durable on return.
    fn remove_group(&self, stream_id: u64, name: &str) -> Result<()>;
    /// A group's checkpoints: shard index -> next sequence number to process.
    fn checkpoints(&self, stream_id: u64, name: &str) -> Result<BTreeMap<u32, u64>>;
    /// Stores checkpoints atomically; durable on return.
    fn put_checkpoints(&self, stream_id: u64, name: &str, checkpoints: &[(u32, u64)]) -> Result<()>;
    /// A stream's attributes; the defaults when none were stored.
    fn stream_attributes(&self, stream_id: u64) -> Result<StreamAttributes>;
    /// Replaces a stream's attributes; durable on return.
    fn put_stream_attributes(&self, stream_id: u64, attributes: &StreamAttributes) -> Result<()>;
    /// Removes a stream's attributes; durable on return.
    fn remove_stream_attributes(&self, stream_id: u64) -> Result<()>;
    /// The account settings; the defaults when none were stored.
    fn account_settings(&self) -> Result<AccountSettings>;
    /// Replaces the account settings; durable on return.
    fn put_account_settings(&self, settings: &AccountSettings) -> Result<()>;
}

/// The key of a stream's attributes.
fn attributes_key(stream_id: u64) -> String {
    format!("{stream_id:020}")
}

/// The key of the account settings in the default tree.
const ACCOUNT_SETTINGS_KEY: &[u8] = b"account-settings";

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| BrokerError::Metadata(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| BrokerError::Metadata(format!("undecodable {what}: {e}")))
}

fn group_key(stream_id: u64, name: &str) -> String {
    format!("{stream_id:020}/{name}")
}

fn checkpoint_key(stream_id: u64, name: &str, shard: u32) -> String {
    format!("{stream_id:020}/{name}/{shard:010}")
}

/// sled-backed metadata in `<data_dir>/meta`.
#[derive(Debug)]
pub struct SledStore {
    db: std::sync::Arc<DurableSled>,
    streams: sled::Tree,
    groups: sled::Tree,
    checkpoints: sled::Tree,
    attributes: sled::Tree,
}

impl SledStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = std::sync::Arc::new(DurableSled::open(dir)?);
        let streams = db.db().open_tree("streams")?;
        let groups = db.db().open_tree("groups")?;
        let checkpoints = db.db().open_tree("checkpoints")?;
        let attributes = db.db().open_tree("attributes")?;
        Ok(Self { db, streams, groups, checkpoints, attributes })
    }

    /// The durable database, shared with the principals, tokens and grants
    /// of [`crate::auth::store`] (their own trees, the same commits).
    pub fn durable(&self) -> std::sync::Arc<DurableSled> {
        self.db.clone()
    }

    fn flushed(&self) -> Result<()> {
        self.db.commit().map_err(|e| BrokerError::Metadata(e.to_string()))
    }
}

/// Decodes a stored stream definition, including one written before
/// resharding existed (`shard_count` and no shard list): its shards are the
/// uniform ranges it was created with, all open.
pub fn decode_stream(bytes: &[u8]) -> Result<StreamMeta> {
    let bad = |e: serde_json::Error| BrokerError::Metadata(format!("undecodable stream record: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if let Some(fields) = value.as_object_mut().filter(|f| !f.contains_key("shards")) {
        let count = fields.remove("shard_count").and_then(|n| n.as_u64()).and_then(|n| u32::try_from(n).ok());
        let count = count.filter(|n| *n >= 1).ok_or_else(|| {
            BrokerError::Metadata("undecodable stream record: neither shards nor a shard_count".into())
        })?;
        let created = fields.get("created_at_ms").and_then(|t| t.as_u64()).unwrap_or(0);
        let shards = crate::layout::initial(count, created);
        fields.insert("shards".into(), serde_json::to_value(shards).map_err(bad)?);
        fields.insert("next_shard_index".into(), count.into());
    }
    serde_json::from_value(value).map_err(bad)
}

impl MetadataStore for SledStore {
    fn streams(&self) -> Result<Vec<StreamMeta>> {
        self.streams.iter().values().map(|v| decode_stream(&v?)).collect()
    }

    fn put_stream(&self, meta: &StreamMeta) -> Result<()> {
        let value = serde_json::to_vec(meta).map_err(|e| BrokerError::Metadata(e.to_string()))?;
        self.streams.insert(meta.name.as_bytes(), value)?;
        self.flushed()
    }

    fn remove_stream(&self, name: &str) -> Result<()> {
        self.streams.remove(name.as_bytes())?;
        self.flushed()
    }

    fn next_id(&self, min: u64) -> Result<u64> {
        const HIGH_WATER: &[u8] = b"stream-id-high-water";
        // generate_id is monotonic across restarts, but only durable once
        // committed; the high-water mark keeps ids raised to `min` monotonic too.
        let generated = self.db.db().generate_id()?;
        let above_high_water = match self.db.db().get(HIGH_WATER)? {
            Some(v) => <[u8; 8]>::try_from(&v[..])
                .map(u64::from_le_bytes)
                .map_err(|_| BrokerError::Metadata("stream id high-water mark has the wrong length".into()))?
                .saturating_add(1),
            None => 0,
        };
        let id = generated.max(min).max(above_high_water);
        self.db.db().insert(HIGH_WATER, &id.to_le_bytes())?;
        self.flushed()?;
        Ok(id)
    }

    fn iterator_secret(&self) -> Result<[u8; 32]> {
        const KEY: &[u8] = b"iterator-secret";
        if let Some(v) = self.db.db().get(KEY)? {
            return <[u8; 32]>::try_from(&v[..])
                .map_err(|_| BrokerError::Metadata("iterator secret has the wrong length".into()));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| BrokerError::Metadata(format!("no randomness: {e}")))?;
        // compare_and_swap keeps the first secret if two callers race.
        let _ = self.db.db().compare_and_swap(KEY, None as Option<&[u8]>, Some(&secret[..]))?;
        self.flushed()?;
        self.iterator_secret()
    }

    fn flush(&self) -> Result<()> {
        self.flushed()
    }

    fn groups(&self) -> Result<Vec<GroupMeta>> {
        self.groups
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| BrokerError::Metadata(format!("undecodable group: {e}"))))
            .collect()
    }

    fn put_group(&self, group: &GroupMeta) -> Result<()> {
        let value = serde_json::to_vec(group).map_err(|e| BrokerError::Metadata(e.to_string()))?;
        self.groups.insert(group_key(group.stream_id, &group.name), value)?;
        self.flushed()
    }

    fn remove_group(&self, stream_id: u64, name: &str) -> Result<()> {
        let prefix = format!("{}/", group_key(stream_id, name));
        let mut batch = sled::Batch::default();
        for key in self.checkpoints.scan_prefix(prefix.as_bytes()).keys() {
            batch.remove(key?);
        }
        self.checkpoints.apply_batch(batch)?;
        self.groups.remove(group_key(stream_id, name))?;
        self.flushed()
    }

    fn checkpoints(&self, stream_id: u64, name: &str) -> Result<BTreeMap<u32, u64>> {
        let prefix = format!("{}/", group_key(stream_id, name));
        let mut out = BTreeMap::new();
        for kv in self.checkpoints.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv?;
            let shard = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|s| s.parse().ok());
            let seq = <[u8; 8]>::try_from(&v[..]).ok().map(u64::from_le_bytes);
            match (shard, seq) {
                (Some(shard), Some(seq)) => {
                    out.insert(shard, seq);
                }
                _ => return Err(BrokerError::Metadata(format!("undecodable checkpoint under {prefix}"))),
            }
        }
        Ok(out)
    }

    fn put_checkpoints(&self, stream_id: u64, name: &str, checkpoints: &[(u32, u64)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &(shard, seq) in checkpoints {
            batch.insert(checkpoint_key(stream_id, name, shard).as_bytes(), &seq.to_le_bytes());
        }
        self.checkpoints.apply_batch(batch)?;
        failpoint("broker::group::checkpoint::before_flush")?;
        self.flushed()?;
        failpoint("broker::group::checkpoint::after_flush")
    }

    fn stream_attributes(&self, stream_id: u64) -> Result<StreamAttributes> {
        match self.attributes.get(attributes_key(stream_id))? {
            Some(v) => from_json(&v, "stream attributes"),
            None => Ok(StreamAttributes::default()),
        }
    }

    fn put_stream_attributes(&self, stream_id: u64, attributes: &StreamAttributes) -> Result<()> {
        self.attributes.insert(attributes_key(stream_id), to_json(attributes)?)?;
        self.flushed()
    }

    fn remove_stream_attributes(&self, stream_id: u64) -> Result<()> {
        self.attributes.remove(attributes_key(stream_id))?;
        self.flushed()
    }

    fn account_settings(&self) -> Result<AccountSettings> {
        match self.db.db().get(ACCOUNT_SETTINGS_KEY)? {
            Some(v) => from_json(&v, "account settings"),
            None => Ok(AccountSettings::default()),
        }
    }

    fn put_account_settings(&self, settings: &AccountSettings) -> Result<()> {
        self.db.db().insert(ACCOUNT_SETTINGS_KEY, to_json(settings)?)?;
        self.flushed()
    }
}

/// A named failpoint (feature `failpoints`): configured to `return`, the
/// call fails as a metadata error; `panic` and `sleep` act as configured.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(name: &str) -> Result<()> {
    fail::fail_point!(name, |_| Err(BrokerError::Metadata(format!("injected by failpoint {name}"))));
    Ok(())
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn failpoint(_name: &str) -> Result<()> {
    Ok(())
}

/// In-memory metadata for tests.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<(BTreeMap<String, StreamMeta>, u64)>,
    groups: Mutex<BTreeMap<String, GroupMeta>>,
    checkpoints: Mutex<BTreeMap<String, u64>>,
    attributes: Mutex<BTreeMap<u64, StreamAttributes>>,
    account: Mutex<AccountSettings>,
}

fn mem_lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))
}

impl MetadataStore for MemStore {
    fn streams(&self) -> Result<Vec<StreamMeta>> {
        Ok(self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?.0.values().cloned().collect())
    }

    fn put_stream(&self, meta: &StreamMeta) -> Result<()> {
        self.inner
            .lock()
            .map_err(|_| BrokerError::Metadata("poisoned".into()))?
            .0
            .insert(meta.name.clone(), meta.clone());
        Ok(())
    }

    fn remove_stream(&self, name: &str) -> Result<()> {
        self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?.0.remove(name);
        Ok(())
    }

    fn next_id(&self, min: u64) -> Result<u64> {
        let mut g = self.inner.lock().map_err(|_| BrokerError::Metadata("poisoned".into()))?;
        let id = g.1.max(min);
        g.1 = id + 1;
        Ok(id)
    }

    fn iterator_secret(&self) -> Result<[u8; 32]> {
        Ok([7; 32])
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn groups(&self) -> Result<Vec<GroupMeta>> {
        Ok(mem_lock(&self.groups)?.values().cloned().collect())
    }

    fn put_group(&self, group: &GroupMeta) -> Result<()> {
        mem_lock(&self.groups)?.insert(group_key(group.stream_id, &group.name), group.clone());
        Ok(())
    }

    fn remove_group(&self, stream_id: u64, name: &str) -> Result<()> {
        let prefix = format!("{}/", group_key(stream_id, name));
        mem_lock(&self.checkpoints)?.retain(|k, _| !k.starts_with(&prefix));
        mem_lock(&self.groups)?.remove(&group_key(stream_id, name));
        Ok(())
    }

    fn checkpoints(&self, stream_id: u64, name: &str) -> Result<BTreeMap<u32, u64>> {
        let prefix = format!("{}/", group_key(stream_id, name));
        Ok(mem_lock(&self.checkpoints)?
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse().ok()?, *v)))
            .collect())
    }

    fn put_checkpoints(&self, stream_id: u64, name: &str, checkpoints: &[(u32, u64)]) -> Result<()> {
        let mut m = mem_lock(&self.checkpoints)?;
        for &(shard, seq) in checkpoints {
            m.insert(checkpoint_key(stream_id, name, shard), seq);
        }
        Ok(())
    }

    fn stream_attributes(&self, stream_id: u64) -> Result<StreamAttributes> {
        Ok(mem_lock(&self.attributes)?.get(&stream_id).cloned().unwrap_or_default())
    }

    fn put_stream_attributes(&self, stream_id: u64, attributes: &StreamAttributes) -> Result<()> {
        mem_lock(&self.attributes)?.insert(stream_id, attributes.clone());
        Ok(())
    }

    fn remove_stream_attributes(&self, stream_id: u64) -> Result<()> {
        mem_lock(&self.attributes)?.remove(&stream_id);
        Ok(())
    }

    fn account_settings(&self) -> Result<AccountSettings> {
        Ok(mem_lock(&self.account)?.clone())
    }

    fn put_account_settings(&self, settings: &AccountSettings) -> Result<()> {
        *mem_lock(&self.account)? = settings.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, id: u64) -> StreamMeta {
        StreamMeta {
            id,
            name: name.into(),
            shards: crate::layout::initial(2, 1),
            next_shard_index: 2,
            reshard: None,
            scalings_ms: Vec::new(),
            retention_hours: 24,
            quotas: QuotaValues::KINESIS,
            max_record_bytes: 1 << 20,
            status: StreamStatus::Active,
            created_at_ms: 1,
        }
    }

    #[test]
    fn sled_store_keeps_streams_ids_and_secret_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, secret) = {
            let s = SledStore::open(dir.path()).expect("open");
            let id = s.next_id(0).expect("id");
            s.put_stream(&meta("b", id)).expect("put");
            s.put_stream(&meta("a", id + 100)).expect("put");
            s.remove_stream("a").expect("remove");
            (id, s.iterator_secret().expect("secret"))
        };
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.streams().expect("list"), vec![meta("b", id)]);
        let next = s.next_id(0).expect("id");
        assert!(next > id, "ids are never reused");
        assert_eq!(s.next_id(next + 50).expect("id"), next + 50, "ids start at the floor the catalogue found");
        assert_eq!(s.next_id(0).expect("id"), next + 51, "and stay above it afterwards");
        assert_eq!(s.iterator_secret().expect("secret"), secret);
    }

    #[test]
    fn definitions_from_before_resharding_decode_as_uniform_open_shards() {
        let old = br#"{"id":7,"name":"orders","shard_count":4,"retention_hours":24,
            "quotas":{"write_records_per_sec":1000,"write_bytes_per_sec":1048576,"read_calls_per_sec":5,
            "read_bytes_per_sec":2097152},"max_record_bytes":1048576,"status":"Active","created_at_ms":5}"#;
        let m = decode_stream(old).expect("an old definition decodes");
        assert_eq!(m.shards, crate::layout::initial(4, 5));
        assert_eq!(m.next_shard_index, 4);
        assert_eq!(m.reshard, None);
        crate::layout::check(&m).expect("a consistent tree");
        let again = decode_stream(&serde_json::to_vec(&m).expect("encode")).expect("round trip");
        assert_eq!(again, m);
        assert!(decode_stream(br#"{"id":1,"name":"x"}"#).is_err(), "neither shards nor a count");
    }

    #[test]
    fn groups_and_checkpoints_round_trip_in_both_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled_store = SledStore::open(dir.path()).expect("open");
        let stores: [&dyn MetadataStore; 2] = [&sled_store, &MemStore::default()];
        for s in stores {
            let g =
                GroupMeta { stream_id: 3, name: "g".into(), start: StartPosition::AtTimestamp(5), created_at_ms: 1 };
            s.put_group(&g).expect("put group");
            s.put_group(&GroupMeta { name: "g2".into(), ..g.clone() }).expect("put group");
            s.put_checkpoints(3, "g", &[(0, 10), (1, 20)]).expect("cp");
            s.put_checkpoints(3, "g", &[(1, 25)]).expect("cp");
            s.put_checkpoints(3, "g2", &[(0, 99)]).expect("cp");
            assert_eq!(s.checkpoints(3, "g").expect("read"), BTreeMap::from([(0, 10), (1, 25)]));
            s.remove_group(3, "g").expect("remove");
            assert!(s.checkpoints(3, "g").expect("read").is_empty());
            assert_eq!(
                s.checkpoints(3, "g2").expect("read"),
                BTreeMap::from([(0, 99)]),
                "a prefix of another group's name is not its group"
            );
            assert_eq!(s.groups().expect("groups").len(), 1);
        }
    }

    #[test]
    fn stream_attributes_and_account_settings_round_trip_in_both_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let attrs = StreamAttributes {
            mode: StreamMode::OnDemand,
            tags: BTreeMap::from([("team".to_string(), "cakes".to_string())]),
            consumers: vec![ConsumerMeta {
                name: "c".into(),
                created_at_ms: 5,
                tags: BTreeMap::new(),
                policy: Some("{}".into()),
            }],
            ..StreamAttributes::default()
        };
        let settings = AccountSettings {
            billing_commitment: Some(BillingCommitment { started_at_ms: 1, ended_at_ms: None, earliest_end_ms: 9 }),
        };
        {
            let sled_store = SledStore::open(dir.path()).expect("open");
            let stores: [&dyn MetadataStore; 2] = [&sled_store, &MemStore::default()];
            for s in stores {
                assert_eq!(s.stream_attributes(4).expect("read"), StreamAttributes::default());
                s.put_stream_attributes(4, &attrs).expect("put");
                s.put_stream_attributes(5, &attrs).expect("put");
                s.remove_stream_attributes(5).expect("remove");
                assert_eq!(s.stream_attributes(5).expect("read"), StreamAttributes::default());
                s.put_account_settings(&settings).expect("put");
            }
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(s.stream_attributes(4).expect("read"), attrs, "durable across a reopen");
        assert_eq!(s.account_settings().expect("read"), settings);
    }
}
