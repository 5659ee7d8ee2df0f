//! The stream catalogue: which streams exist, their shards, and the control
//! plane (create, delete, describe, list, retention).
//!
//! **On disk.** `<data_dir>/streams/<stream id>/<shard id>/` holds a shard's
//! log. Stream ids are never reused and names never appear in paths.
//!
//! **Crash safety of create and delete.** Create writes the definition as
//! `Creating` (flushed), then creates the shard logs, then marks it `Active`
//! (flushed) and only then acknowledges. Delete marks it `Deleting`
//! (flushed), stops the shards, removes the directory, then removes the
//! definition. At start, a `Creating` stream is rolled back (it was never
//! acknowledged) and a `Deleting` one is finished; a stream directory with
//! no definition is removed. So a crash at any point leaves neither a
//! half-made stream nor orphaned files.
//!
//! Control-plane calls are serialised by one async mutex; the data plane
//! never takes it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shardlog::io::{Io, StdIo};

use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::metadata::{MetadataStore, StreamMeta, StreamStatus};
use crate::quota::{QuotaValues, ShardQuota};
use crate::routing::HashRanges;
use crate::shard::{Shard, ShardSpec, shard_id};

/// Retention bounds in hours.
pub const RETENTION_HOURS: std::ops::RangeInclusive<u32> = 24..=168;
/// Default retention in hours.
pub const RETENTION_HOURS_DEFAULT: u32 = 24;
/// Bounds of a stream's largest record.
pub const MAX_RECORD_BYTES: std::ops::RangeInclusive<u32> = 1024..=10 * 1024 * 1024;
/// Default largest record.
pub const MAX_RECORD_BYTES_DEFAULT: u32 = 1024 * 1024;

/// An open stream.
#[derive(Debug)]
pub struct Stream {
    meta: RwLock<StreamMeta>,
    /// Shards in index order.
    pub shards: Vec<Arc<Shard>>,
    /// Hash key ranges of the shards.
    pub ranges: HashRanges,
}

impl Stream {
    /// A copy of the stream's definition.
    pub fn meta(&self) -> StreamMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a create request asks for; `None` fields take defaults.
#[derive(Debug, Clone, Default)]
pub struct CreateStream {
    /// The stream's name.
    pub name: String,
    /// Number of shards.
    pub shard_count: u32,
    /// Retention hours.
    pub retention_hours: Option<u32>,
    /// Per-field quota overrides.
    pub write_records_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub write_bytes_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub read_calls_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub read_bytes_per_sec: Option<u64>,
    /// Largest record.
    pub max_record_bytes: Option<u32>,
}

#[derive(Debug, Default)]
struct Streams {
    by_name: BTreeMap<String, Arc<Stream>>,
    by_id: HashMap<u64, Arc<Stream>>,
}

/// All streams of a broker.
#[derive(Debug)]
pub struct Catalog {
    config: Arc<BrokerConfig>,
    store: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    io: Arc<dyn Io>,
    streams_dir: PathBuf,
    streams: RwLock<Streams>,
    control: tokio::sync::Mutex<()>,
}

/// Checks a stream name: `[a-zA-Z0-9_.-]{1,128}`. (`.` and `..` are valid
/// Kinesis names; they are safe here because names never become paths.)
pub fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(BrokerError::invalid("stream_name", format!("must be 1..=128 characters, got {}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(BrokerError::invalid("stream_name", format!("character {c:?} is not in [a-zA-Z0-9_.-]")));
    }
    Ok(())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(format!("sync {}", dir.display())))
}

impl Catalog {
    /// Opens the catalogue: finishes interrupted creates and deletes, removes
    /// orphaned stream directories, and opens (recovers) every active shard.
    /// Blocking.
    pub fn open(config: Arc<BrokerConfig>, store: Arc<dyn MetadataStore>, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_with_io(config, store, clock, Arc::new(StdIo))
    }

    /// [`Catalog::open`] with shard-log I/O through `io` (tests inject faults here).
    pub fn open_with_io(
        config: Arc<BrokerConfig>,
        store: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        io: Arc<dyn Io>,
    ) -> Result<Self> {
        let streams_dir = config.data_dir.join("streams");
        std::fs::create_dir_all(&streams_dir).map_err(io_err(format!("create {}", streams_dir.display())))?;
        let catalog = Self {
            config,
            store,
            clock,
            io,
            streams_dir,
            streams: RwLock::new(Streams::default()),
            control: tokio::sync::Mutex::new(()),
        };
        let mut live = Vec::new();
        for meta in catalog.store.streams()? {
            match meta.status {
                StreamStatus::Active => live.push(meta),
                StreamStatus::Creating | StreamStatus::Deleting => {
                    tracing::warn!(stream = %meta.name, status = ?meta.status, "finishing an interrupted create or delete");
                    catalog.remove_stream_dir(meta.id)?;
                    catalog.store.remove_stream(&meta.name)?;
                }
            }
        }
        let live_ids: Vec<u64> = live.iter().map(|m| m.id).collect();
        for entry in std::fs::read_dir(&catalog.streams_dir).map_err(io_err("list streams dir"))? {
            let entry = entry.map_err(io_err("list streams dir"))?;
            let id = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
            if let Some(id) = id.filter(|id| !live_ids.contains(id)) {
                tracing::warn!(id, "removing a stream directory that has no definition");
                catalog.remove_stream_dir(id)?;
            }
        }
        for meta in live {
            let stream = catalog.open_stream(meta)?;
            catalog.insert(stream);
        }
        Ok(catalog)
    }

    fn stream_dir(&self, id: u64) -> PathBuf {
        self.streams_dir.join(id.to_string())
    }

    fn remove_stream_dir(&self, id: u64) -> Result<()> {
        let dir = self.stream_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.streams_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", dir.display()))(e)),
        }
    }

    /// Opens the shards of a stream. Blocking.
    fn open_stream(&self, meta: StreamMeta) -> Result<Arc<Stream>> {
        let dir = self.stream_dir(meta.id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let ranges = HashRanges::new(meta.shard_count);
        let c = &self.config;
        let mut shards = Vec::with_capacity(meta.shard_count as usize);
        for index in 0..meta.shard_count {
            let spec = ShardSpec {
                stream: meta.name.clone(),
                index,
                hash_range: ranges.range(index),
                log_config: c.shardlog_config(meta.max_record_bytes),
                durability: c.durability.mode,
                interval_ms: c.durability.interval_ms,
                queue_depth: c.limits.shard_queue_depth,
                group_max: c.limits.group_commit_max_requests,
            };
            let quota = ShardQuota::new(meta.quotas, meta.max_record_bytes, c.quotas.enforce, self.clock.now_ms());
            let shard = Shard::open(&dir.join(shard_id(index)), spec, quota, self.clock.clone(), self.io.clone())?;
            shards.push(Arc::new(shard));
        }
        sync_dir(&dir)?;
        sync_dir(&self.streams_dir)?;
        Ok(Arc::new(Stream { meta: RwLock::new(meta), shards, ranges }))
    }

    fn insert(&self, stream: Arc<Stream>) {
        let meta = stream.meta();
        let mut s = self.streams.write().unwrap_or_else(|e| e.into_inner());
        s.by_id.insert(meta.id, stream.clone());
        s.by_name.insert(meta.name, stream);
    }

    /// The stream with this name.
    pub fn get(&self, name: &str) -> Result<Arc<Stream>> {
        let s = self.streams.read().unwrap_or_else(|e| e.into_inner());
        s.by_name.get(name).cloned().ok_or_else(|| BrokerError::StreamNotFound { name: name.to_string() })
    }

    /// The stream with this id, if it still exists.
    pub fn get_by_id(&self, id: u64) -> Option<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).by_id.get(&id).cloned()
    }

    /// Every open stream.
    pub fn all(&self) -> Vec<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|e| e.into_inner()).by_name.values().cloned().collect()
    }

    /// Creates a stream; returns once it is durable and serving.
    pub async fn create(self: &Arc<Self>, req: CreateStream) -> Result<Arc<Stream>> {
        validate_stream_name(&req.name)?;
        let max_shards = self.config.limits.max_shards_per_stream;
        if !(1..=max_shards).contains(&req.shard_count) {
            return Err(BrokerError::invalid(
                "shard_count",
                format!("must be 1..={max_shards}, got {}", req.shard_count),
            ));
        }
        let retention_hours = req.retention_hours.unwrap_or(RETENTION_HOURS_DEFAULT);
        check_retention(retention_hours)?;
        let max_record_bytes = req.max_record_bytes.unwrap_or(MAX_RECORD_BYTES_DEFAULT);
        if !MAX_RECORD_BYTES.contains(&max_record_bytes) {
            return Err(BrokerError::invalid(
                "max_record_bytes",
                format!("must be 1024..=10485760, got {max_record_bytes}"),
            ));
        }
        let d = self.config.quotas.values();
        let quotas = QuotaValues {
            write_records_per_sec: positive("quota_overrides.write_records_per_sec", req.write_records_per_sec)?
                .unwrap_or(d.write_records_per_sec),
            write_bytes_per_sec: positive("quota_overrides.write_bytes_per_sec", req.write_bytes_per_sec)?
                .unwrap_or(d.write_bytes_per_sec),
            read_calls_per_sec: positive("quota_overrides.read_calls_per_sec", req.read_calls_per_sec)?
                .unwrap_or(d.read_calls_per_sec),
            read_bytes_per_sec: positive("quota_overrides.read_bytes_per_sec", req.read_bytes_per_sec)?
                .unwrap_or(d.read_bytes_per_sec),
        };
        if u64::from(max_record_bytes) > quotas.write_bytes_per_sec {
            return Err(BrokerError::invalid(
                "max_record_bytes",
                format!(
                    "{max_record_bytes} is more than the shard write quota write_bytes_per_sec = {}: \
                     such a record could never be admitted; raise quota_overrides.write_bytes_per_sec \
                     or lower max_record_bytes",
                    quotas.write_bytes_per_sec
                ),
            ));
        }
        let _control = self.control.lock().await;
        if self.get(&req.name).is_ok() {
            return Err(BrokerError::StreamExists { name: req.name });
        }
        if self.all().len() >= self.config.limits.max_streams {
            return Err(BrokerError::LimitExceeded(format!(
                "the broker holds limits.max_streams = {} streams",
                self.config.limits.max_streams
            )));
        }
        let mut meta = StreamMeta {
            id: self.store.next_id()?,
            name: req.name,
            shard_count: req.shard_count,
            retention_hours,
            quotas,
            max_record_bytes,
            status: StreamStatus::Creating,
            created_at_ms: self.clock.now_ms(),
        };
        self.store.put_stream(&meta)?;
        let opened = self.blocking({
            let meta = meta.clone();
            move |c| c.open_stream(meta)
        });
        let stream = match opened.await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(stream = %meta.name, error = %e, "create failed; rolling back");
                let id = meta.id;
                let _ = self.blocking(move |c| c.remove_stream_dir(id)).await;
                self.store.remove_stream(&meta.name)?;
                return Err(e);
            }
        };
        meta.status = StreamStatus::Active;
        self.store.put_stream(&meta)?;
        *stream.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        self.insert(stream.clone());
        Ok(stream)
    }

    /// Deletes a stream and all its records.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<()> {
        let _control = self.control.lock().await;
        let stream = self.get(name)?;
        let mut meta = stream.meta();
        meta.status = StreamStatus::Deleting;
        self.store.put_stream(&meta)?;
        {
            let mut s = self.streams.write().unwrap_or_else(|e| e.into_inner());
            s.by_name.remove(name);
            s.by_id.remove(&meta.id);
        }
        let id = meta.id;
        self.blocking(move |c| {
            for shard in &stream.shards {
                shard.close();
            }
            c.remove_stream_dir(id)
        })
        .await?;
        self.store.remove_stream(name)
    }

    /// Changes a stream's retention.
    pub async fn update_retention(&self, name: &str, retention_hours: u32) -> Result<Arc<Stream>> {
        check_retention(retention_hours)?;
        let _control = self.control.lock().await;
        let stream = self.get(name)?;
        let mut meta = stream.meta();
        meta.retention_hours = retention_hours;
        self.store.put_stream(&meta)?;
        *stream.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        Ok(stream)
    }

    /// Names after `exclusive_start`, at most `limit`, and whether more follow.
    pub fn list(&self, limit: usize, exclusive_start: &str) -> (Vec<String>, bool) {
        let s = self.streams.read().unwrap_or_else(|e| e.into_inner());
        let mut names = s
            .by_name
            .range::<str, _>((std::ops::Bound::Excluded(exclusive_start), std::ops::Bound::Unbounded))
            .map(|(n, _)| n.clone());
        let page: Vec<String> = names.by_ref().take(limit).collect();
        (page, names.next().is_some())
    }

    /// One retention pass: every shard drops sealed segments older than its
    /// stream's retention.
    pub async fn enforce_retention(&self) {
        let now = self.clock.now_ms();
        for stream in self.all() {
            let meta = stream.meta();
            let cutoff = now.saturating_sub(u64::from(meta.retention_hours) * 3_600_000);
            for shard in &stream.shards {
                match shard.trim(cutoff).await {
                    Ok(t) if t.segments > 0 => {
                        tracing::info!(stream = %meta.name, shard = %shard.id, segments = t.segments, bytes = t.bytes, first_seq = t.first_seq, "retention removed segments");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(stream = %meta.name, shard = %shard.id, error = %e, "retention pass failed")
                    }
                }
            }
        }
    }

    /// Stops every shard writer (each commits what is queued and syncs) and
    /// flushes the metadata store.
    pub async fn close(self: &Arc<Self>) -> Result<()> {
        self.blocking(|c| {
            for stream in c.all() {
                for shard in &stream.shards {
                    shard.close();
                }
            }
            Ok(())
        })
        .await?;
        self.store.flush()
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// Runs blocking catalogue work off the async workers.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Catalog) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("blocking task failed: {e}")))?
    }
}

fn check_retention(hours: u32) -> Result<()> {
    if RETENTION_HOURS.contains(&hours) {
        Ok(())
    } else {
        Err(BrokerError::invalid("retention_hours", format!("must be 24..=168, got {hours}")))
    }
}

fn positive(field: &str, v: Option<u64>) -> Result<Option<u64>> {
    match v {
        Some(0) => Err(BrokerError::invalid(field, "must be positive")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_kinesis_rules() {
        for ok in ["a", ".", "..", "orders_v1.2-x", &"a".repeat(128)] {
            assert!(validate_stream_name(ok).is_ok(), "{ok:?} rejected");
        }
        for bad in ["", &"a".repeat(129), "a/b", "a\0", "ünïcode", "../x", "a b"] {
            match validate_stream_name(bad) {
                Err(BrokerError::InvalidArgument { field, .. }) => assert_eq!(field, "stream_name"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
