//! The stream catalogue: which streams exist, their shards, and the control
//! plane (create, delete, describe, list, retention, repair, lost+found).
//!
//! **On disk.** `<data_dir>/streams/<stream id>/<shard id>/` holds a shard's
//! log. Stream ids are never reused and names never appear in paths.
//!
//! **Crash safety of create and delete.** Create writes the definition as
//! `Creating` (committed), then creates the shard logs, then marks it
//! `Active` (committed) and only then acknowledges. Delete marks it
//! `Deleting` (committed), stops the shards, removes the directory, then
//! removes the definition. At start a `Deleting` stream is finished.
//!
//! **Nothing is deleted at start.** A `Creating` stream, and any stream
//! directory without a definition, is moved to
//! `<data_dir>/lost+found/<id>-<ms since epoch>` (`rename`, then `fsync` of
//! both directories) and logged, never removed: if the metadata store was
//! lost, restored from an older backup or rolled back by a power loss, those
//! directories may hold the only copy of acknowledged records.
//! [`Catalog::lost_found`] lists them and [`Catalog::purge_lost_found`]
//! removes one on an operator's request. An `Active` stream whose directory
//! is missing is opened with failed shards (never silently recreated empty).
//!
//! **Ids.** A new stream's id is above every id found in `streams/` and
//! `lost+found/`, so a rolled-back metadata store never hands out an id whose
//! data exists.
//!
//! **One bad shard stops nothing.** A shard whose log cannot be opened is
//! kept as a failed shard (see `shard`); every other shard and stream is
//! served.
//!
//! **Resharding** (split, merge, UpdateShardCount) is in `reshard`: the
//! stream's [`Layout`] (its shards and their routes) is swapped whole, so a
//! request routes with one layout or the next, never a mix; the crash-safe
//! protocol and the shard tree's invariants are in [`crate::layout`]. A
//! stream directory holds the directories of its kept shards (open and
//! closed); an expired shard's directory is removed after its expiry is
//! durable, and at start one left behind is removed. A shard directory the
//! definition does not name at all is moved to
//! `lost+found/<id>-<ms>/<shard dir>`, like an orphaned stream.
//!
//! Control-plane calls (including a whole reshard and retention's expiry of
//! closed shards) are serialised by one async mutex; the data plane never
//! takes it.

mod reshard;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use shardlog::io::{Io, StdIo};

use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::disk::DiskMonitor;
use crate::error::{BrokerError, Result};
use crate::metadata::{MetadataStore, ShardMeta, ShardState, StreamMeta, StreamStatus};
use crate::quota::{QuotaValues, ShardQuota};
use crate::shard::{RepairOutcome, Shard, ShardFailure, ShardSpec, parse_shard_id, shard_id};

pub use reshard::Scaling;

/// Retention bounds in hours.
pub const RETENTION_HOURS: std::ops::RangeInclusive<u32> = 24..=168;
/// Default retention in hours.
pub const RETENTION_HOURS_DEFAULT: u32 = 24;
/// Bounds of a stream's largest record.
pub const MAX_RECORD_BYTES: std::ops::RangeInclusive<u32> = 1024..=10 * 1024 * 1024;
/// Default largest record.
pub const MAX_RECORD_BYTES_DEFAULT: u32 = 1024 * 1024;
/// The directory, under the data directory, that keeps stream directories
/// found without a definition.
pub const LOST_FOUND_DIR: &str = "lost+found";

/// An open stream.
#[derive(Debug)]
pub struct Stream {
    meta: RwLock<StreamMeta>,
    layout: RwLock<Arc<Layout>>,
    /// Counts layout swaps; readers of closed shards and group long polls wait on it.
    layout_changed: tokio::sync::watch::Sender<u64>,
    /// A reshard of this stream was accepted and has not ended; set before
    /// it waits for the control lock, so a second one is refused at once
    /// rather than queued behind it.
    resharding: std::sync::atomic::AtomicBool,
}

impl Stream {
    fn new(meta: StreamMeta, shards: BTreeMap<u32, Arc<Shard>>) -> Self {
        let layout = Layout::new(0, meta.shards.clone(), shards);
        Self {
            meta: RwLock::new(meta),
            layout: RwLock::new(Arc::new(layout)),
            layout_changed: tokio::sync::watch::Sender::new(0),
            resharding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A copy of the stream's definition.
    pub fn meta(&self) -> StreamMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_meta(&self, meta: StreamMeta) {
        *self.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
    }

    /// The current layout: the shards and how hash keys route to them.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A kept (open or closed) shard by index.
    pub fn shard(&self, index: u32) -> Option<Arc<Shard>> {
        self.layout().shard(index).cloned()
    }

    /// The kept shards, in index order.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.layout().shards().cloned().collect()
    }

    /// The kept shard named `shard_id`, or an error naming the field.
    pub fn shard_by_id(&self, field: &str, shard_id: &str) -> Result<Arc<Shard>> {
        let index = parse_shard_id(shard_id).ok_or_else(|| {
            BrokerError::invalid(field, format!("{shard_id:?} is not of the form shardId-NNNNNNNNNNNN"))
        })?;
        self.shard(index)
            .ok_or_else(|| BrokerError::ShardNotFound { stream: self.meta().name, shard_id: shard_id.to_string() })
    }

    /// Changes whenever the layout is swapped.
    pub fn watch_layout(&self) -> tokio::sync::watch::Receiver<u64> {
        self.layout_changed.subscribe()
    }

    /// Swaps in the layout of `tree`: shards in `added` join, shards no
    /// longer kept leave; the rest keep their handles.
    fn swap_layout(&self, tree: Vec<ShardMeta>, added: &BTreeMap<u32, Arc<Shard>>) {
        let mut current = self.layout.write().unwrap_or_else(|e| e.into_inner());
        let mut handles = BTreeMap::new();
        for s in tree.iter().filter(|s| s.is_kept()) {
            if let Some(h) = added.get(&s.index).or_else(|| current.shards.get(&s.index)) {
                handles.insert(s.index, h.clone());
            }
        }
        let version = current.version + 1;
        *current = Arc::new(Layout::new(version, tree, handles));
        drop(current);
        self.layout_changed.send_replace(version);
    }
}

/// A stream's shards at one moment: the tree, a handle per kept shard, and
/// the routes of the open shards. Immutable; a reshard swaps in a new one.
#[derive(Debug)]
pub struct Layout {
    version: u64,
    tree: Vec<ShardMeta>,
    shards: BTreeMap<u32, Arc<Shard>>,
    /// The open shards by first hash key; they cover the hash space exactly once.
    routes: Vec<(u128, Arc<Shard>)>,
}

impl Layout {
    fn new(version: u64, tree: Vec<ShardMeta>, shards: BTreeMap<u32, Arc<Shard>>) -> Self {
        let mut routes: Vec<(u128, Arc<Shard>)> = tree
            .iter()
            .filter(|s| s.is_open())
            .filter_map(|s| Some((s.starting_hash_key, shards.get(&s.index)?.clone())))
            .collect();
        routes.sort_by_key(|(start, _)| *start);
        Self { version, tree, shards, routes }
    }

    /// Counts the swaps of the stream's layout.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The open shard that owns `hash`.
    pub fn route(&self, hash: u128) -> &Arc<Shard> {
        // The open ranges start at 0 and cover the hash space (see `layout::check`),
        // so the shard starting at or before `hash` exists and is the last such.
        let i = self.routes.partition_point(|(start, _)| *start <= hash);
        &self.routes[i.max(1) - 1].1
    }

    /// A kept shard by index.
    pub fn shard(&self, index: u32) -> Option<&Arc<Shard>> {
        self.shards.get(&index)
    }

    /// The kept shards, in index order.
    pub fn shards(&self) -> impl Iterator<Item = &Arc<Shard>> {
        self.shards.values()
    }

    /// The shard tree: kept shards and expired ones still named as parents, in index order.
    pub fn tree(&self) -> &[ShardMeta] {
        &self.tree
    }

    /// A shard's place in the tree.
    pub fn info(&self, index: u32) -> Option<&ShardMeta> {
        self.tree.binary_search_by_key(&index, |s| s.index).ok().map(|i| &self.tree[i])
    }

    /// Whether the shard was closed by a reshard.
    pub fn is_closed(&self, index: u32) -> bool {
        self.info(index).is_some_and(|s| !s.is_open())
    }

    /// The shards made from `index` by a split or merge.
    pub fn children(&self, index: u32) -> Vec<&ShardMeta> {
        self.tree.iter().filter(|s| s.parents().any(|p| p == index)).collect()
    }

    /// How many shards take writes.
    pub fn open_count(&self) -> usize {
        self.routes.len()
    }
}

/// How [`Catalog::open_shard`] treats a shard's directory and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenShard {
    /// A new shard (create, or a reshard's child at run time): created, and a failure fails the call.
    Create,
    /// At start: a missing directory or a log that cannot be opened gives a failed shard.
    Start,
    /// At start, in a stream whose whole directory is missing: failed.
    Missing,
    /// A child of a reshard finished at start: created if missing, opened as
    /// found otherwise (it may hold acknowledged records); a failure gives a failed shard.
    Recover,
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

/// New quota values for a stream; `None` keeps the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUpdate {
    /// See [`QuotaValues`].
    pub write_records_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub write_bytes_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub read_calls_per_sec: Option<u64>,
    /// See [`QuotaValues`].
    pub read_bytes_per_sec: Option<u64>,
}

/// A directory in `lost+found/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostFound {
    /// The directory's name, `<stream id>-<ms since epoch>`.
    pub name: String,
    /// The stream id it had.
    pub stream_id: u64,
    /// When it was moved there, ms since the Unix epoch.
    pub moved_at_ms: u64,
    /// Bytes of the files in it.
    pub bytes: u64,
    /// Its shard directories.
    pub shards: Vec<String>,
}

/// A failed shard, for readiness and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedShard {
    /// The stream's name.
    pub stream: String,
    /// The shard.
    pub shard_id: String,
    /// Why.
    pub failure: ShardFailure,
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
    disk: Arc<DiskMonitor>,
    streams_dir: PathBuf,
    lost_found_dir: PathBuf,
    /// Every id found on disk is below this.
    id_floor: AtomicU64,
    streams: RwLock<Streams>,
    control: tokio::sync::Mutex<()>,
    /// The threads every shard writer runs on.
    writers: crate::writer_pool::WriterPool,
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

/// Names of the entries of `dir`; none if it does not exist.
fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", dir.display()))(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
        // Every name the broker makes is ASCII; anything else is not its own.
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The stream id a `lost+found` entry (`<id>-<ms>`) had.
fn lost_found_id(name: &str) -> Option<(u64, u64)> {
    let (id, ms) = name.split_once('-')?;
    Some((id.parse().ok()?, ms.parse().ok()?))
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

impl Catalog {
    /// Opens the catalogue: finishes interrupted deletes, moves orphaned
    /// stream directories to `lost+found/`, and opens (recovers) every
    /// active shard. Blocking.
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
        let disk = Arc::new(DiskMonitor::new(&config));
        if let Err(e) = disk.measure() {
            tracing::warn!(error = %e, "cannot measure free space; writes are admitted without a watermark check");
        }
        Self::open_with(config, store, clock, io, disk)
    }

    /// [`Catalog::open_with_io`] with the broker's disk monitor.
    pub fn open_with(
        config: Arc<BrokerConfig>,
        store: Arc<dyn MetadataStore>,
        clock: Arc<dyn Clock>,
        io: Arc<dyn Io>,
        disk: Arc<DiskMonitor>,
    ) -> Result<Self> {
        let streams_dir = config.data_dir.join("streams");
        std::fs::create_dir_all(&streams_dir).map_err(io_err(format!("create {}", streams_dir.display())))?;
        // The entries `streams` (in the data directory) and the data directory
        // (in its parent) must be durable before any stream under them is acknowledged.
        sync_dir(&config.data_dir)?;
        if let Some(parent) = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let lost_found_dir = config.data_dir.join(LOST_FOUND_DIR);
        let writers = crate::writer_pool::WriterPool::new(config.storage.writer_threads)?;
        let catalog = Self {
            config,
            store,
            clock,
            io,
            disk,
            streams_dir,
            lost_found_dir,
            id_floor: AtomicU64::new(0),
            streams: RwLock::new(Streams::default()),
            control: tokio::sync::Mutex::new(()),
            writers,
        };
        let mut live = Vec::new();
        for meta in catalog.store.streams()? {
            match meta.status {
                StreamStatus::Active | StreamStatus::Updating => live.push(meta),
                StreamStatus::Creating => {
                    tracing::warn!(stream = %meta.name, id = meta.id, "an interrupted create: keeping its files in lost+found");
                    catalog.to_lost_found(meta.id)?;
                    catalog.store.remove_stream(&meta.name)?;
                }
                StreamStatus::Deleting => {
                    tracing::warn!(stream = %meta.name, id = meta.id, "finishing an interrupted delete");
                    catalog.remove_stream_dir(meta.id)?;
                    catalog.store.remove_stream(&meta.name)?;
                }
            }
        }
        let live_ids: Vec<u64> = live.iter().map(|m| m.id).collect();
        let mut seen = live_ids.iter().copied().max();
        for name in list_names(&catalog.streams_dir)? {
            let Ok(id) = name.parse::<u64>() else { continue };
            seen = seen.max(Some(id));
            if !live_ids.contains(&id) {
                tracing::warn!(id, "a stream directory has no definition: keeping it in lost+found");
                catalog.to_lost_found(id)?;
            }
        }
        for name in list_names(&catalog.lost_found_dir)? {
            seen = seen.max(lost_found_id(&name).map(|(id, _)| id));
        }
        catalog.id_floor.store(seen.map_or(0, |id| id + 1), Ordering::SeqCst);
        for meta in live {
            let stream = catalog.open_stream(meta, true)?;
            catalog.insert(stream.clone());
            if stream.meta().reshard.is_some() {
                catalog.finish_reshard(&stream)?;
            }
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

    /// Moves a stream's directory (if any) to `lost+found/<id>-<ms>`; the
    /// rename is made durable by fsyncing both directories.
    fn to_lost_found(&self, id: u64) -> Result<()> {
        let from = self.stream_dir(id);
        if !from.exists() {
            return Ok(());
        }
        if !self.lost_found_dir.exists() {
            std::fs::create_dir_all(&self.lost_found_dir)
                .map_err(io_err(format!("create {}", self.lost_found_dir.display())))?;
            sync_dir(&self.config.data_dir)?;
        }
        let mut ms = self.clock.now_ms();
        let mut to = self.lost_found_dir.join(format!("{id}-{ms}"));
        while to.exists() {
            ms += 1;
            to = self.lost_found_dir.join(format!("{id}-{ms}"));
        }
        std::fs::rename(&from, &to).map_err(io_err(format!("move {} to {}", from.display(), to.display())))?;
        sync_dir(&self.lost_found_dir)?;
        sync_dir(&self.streams_dir)?;
        tracing::warn!(from = %from.display(), to = %to.display(), "moved a stream directory to lost+found; list it with `streamctl lost-found list`");
        Ok(())
    }

    /// Opens the kept shards of a stream. At start (`at_start`) a missing
    /// directory or a shard that cannot be opened gives a failed shard, the
    /// directories of expired shards are removed and those the definition
    /// does not name go to lost+found; on create any failure fails the
    /// call. Blocking.
    fn open_stream(&self, meta: StreamMeta, at_start: bool) -> Result<Arc<Stream>> {
        let dir = self.stream_dir(meta.id);
        let missing = at_start && !dir.exists();
        if !missing {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            if at_start {
                self.tidy_shard_dirs(&meta)?;
            }
        }
        let how = match (at_start, missing) {
            (false, _) => OpenShard::Create,
            (true, false) => OpenShard::Start,
            (true, true) => OpenShard::Missing,
        };
        let mut shards = BTreeMap::new();
        for s in meta.shards.iter().filter(|s| s.is_kept()) {
            match self.open_shard(&meta, s, how) {
                Ok(shard) => {
                    shards.insert(s.index, shard);
                }
                Err(e) => {
                    for opened in shards.values() {
                        opened.close();
                    }
                    return Err(e);
                }
            }
        }
        if !missing {
            sync_dir(&dir)?;
            sync_dir(&self.streams_dir)?;
        }
        Ok(Arc::new(Stream::new(meta, shards)))
    }

    /// Opens one shard of `meta`; see [`OpenShard`]. Blocking.
    /// Refuses `more` shards if the broker would then hold more than
    /// `limits.max_shards_total` (open and closed-but-retained shards alike:
    /// each holds an open segment file, a queue and buffers).
    pub(crate) fn admit_shards(&self, more: u64) -> Result<()> {
        let held: u64 = self.all().iter().map(|s| s.shards().len() as u64).sum();
        let cap = self.config.limits.max_shards_total;
        if held + more > u64::from(cap) {
            return Err(BrokerError::LimitExceeded(format!(
                "the broker holds {held} shards and {more} more would pass limits.max_shards_total = {cap}"
            )));
        }
        Ok(())
    }

    fn open_shard(&self, meta: &StreamMeta, s: &ShardMeta, how: OpenShard) -> Result<Arc<Shard>> {
        let c = &self.config;
        let spec = ShardSpec {
            stream: meta.name.clone(),
            index: s.index,
            hash_range: (s.starting_hash_key, s.ending_hash_key),
            // The log admits any record the stream may be allowed later
            // (UpdateMaxRecordSize); the stream's own limit is checked
            // before a record is queued.
            log_config: c.shardlog_config(*MAX_RECORD_BYTES.end()),
            durability: c.durability.mode,
            interval_ms: c.durability.interval_ms,
            queue_depth: c.limits.shard_queue_depth,
            group_max: c.limits.group_commit_max_requests,
            commit_delay: std::time::Duration::from_micros(c.limits.group_commit_delay_us),
            writers: self.writers.clone(),
            closed: !s.is_open(),
        };
        let quota = ShardQuota::new(meta.quotas, meta.max_record_bytes, c.quotas.enforce, self.clock.now_ms());
        let shard_dir = self.stream_dir(meta.id).join(shard_id(s.index));
        let (clock, io, disk) = (self.clock.clone(), self.io.clone(), self.disk.clone());
        let dir_missing = match how {
            OpenShard::Missing => true,
            OpenShard::Start => !shard_dir.exists(),
            OpenShard::Create | OpenShard::Recover => false,
        };
        let shard = if dir_missing {
            let cause = "the shard's directory is missing (the metadata may be newer than the data; \
                         see `streamctl lost-found list`)"
                .to_string();
            Shard::failed(&shard_dir, spec, quota, clock, io, disk, cause)?
        } else {
            Shard::open(&shard_dir, spec, quota, clock, io, disk)?
        };
        if let Some(f) = shard.failure() {
            if how == OpenShard::Create {
                let refusal = shard.write_refusal();
                shard.close();
                return Err(refusal.unwrap_or_else(|| BrokerError::Internal("a failed shard without a failure".into())));
            }
            tracing::warn!(stream = %meta.name, shard = %shard.id, kind = f.kind.as_str(), "the broker starts with this shard failed and serves everything else");
        }
        Ok(Arc::new(shard))
    }

    /// At start: removes the directories of expired shards (an expiry that
    /// a crash interrupted) and moves the shard directories the definition
    /// does not name to lost+found. A pending reshard's children are left
    /// for the reshard to finish. Blocking.
    fn tidy_shard_dirs(&self, meta: &StreamMeta) -> Result<()> {
        let dir = self.stream_dir(meta.id);
        let pending: Vec<u32> = meta
            .reshard
            .iter()
            .flat_map(|r| r.step.iter())
            .flat_map(|step| step.children.iter().map(|c| c.index))
            .collect();
        for name in list_names(&dir)? {
            let Some(index) = parse_shard_id(&name) else { continue };
            match crate::layout::find(meta, index) {
                Some(s) if s.is_kept() => {}
                Some(_) => {
                    tracing::info!(stream = %meta.name, shard = %name, "finishing the removal of an expired shard");
                    let path = dir.join(&name);
                    std::fs::remove_dir_all(&path).map_err(io_err(format!("remove {}", path.display())))?;
                    sync_dir(&dir)?;
                }
                None if pending.contains(&index) => {}
                None => {
                    tracing::warn!(stream = %meta.name, shard = %name, "a shard directory has no definition: keeping it in lost+found");
                    self.shard_to_lost_found(meta.id, &name)?;
                }
            }
        }
        Ok(())
    }

    /// Moves one shard directory of stream `id` to `lost+found/<id>-<ms>/<name>`,
    /// durably (`rename`, then `fsync` of every directory involved).
    fn shard_to_lost_found(&self, id: u64, name: &str) -> Result<()> {
        if !self.lost_found_dir.exists() {
            std::fs::create_dir_all(&self.lost_found_dir)
                .map_err(io_err(format!("create {}", self.lost_found_dir.display())))?;
            sync_dir(&self.config.data_dir)?;
        }
        let mut ms = self.clock.now_ms();
        let mut holder = self.lost_found_dir.join(format!("{id}-{ms}"));
        while holder.exists() {
            ms += 1;
            holder = self.lost_found_dir.join(format!("{id}-{ms}"));
        }
        std::fs::create_dir(&holder).map_err(io_err(format!("create {}", holder.display())))?;
        sync_dir(&self.lost_found_dir)?;
        let (from, to) = (self.stream_dir(id).join(name), holder.join(name));
        std::fs::rename(&from, &to).map_err(io_err(format!("move {} to {}", from.display(), to.display())))?;
        sync_dir(&holder)?;
        sync_dir(&self.stream_dir(id))?;
        tracing::warn!(from = %from.display(), to = %to.display(), "moved a shard directory to lost+found; list it with `streamctl lost-found list`");
        Ok(())
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
        check_record_fits_quota(max_record_bytes, &quotas)?;
        self.disk.admit()?;
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
        self.admit_shards(u64::from(req.shard_count))?;
        let now = self.clock.now_ms();
        let mut meta = StreamMeta {
            id: self.store.next_id(self.id_floor.load(Ordering::SeqCst))?,
            name: req.name,
            shards: crate::layout::initial(req.shard_count, now),
            next_shard_index: req.shard_count,
            reshard: None,
            scalings_ms: Vec::new(),
            retention_hours,
            quotas,
            max_record_bytes,
            status: StreamStatus::Creating,
            created_at_ms: now,
        };
        self.store.put_stream(&meta)?;
        let opened = self.blocking({
            let meta = meta.clone();
            move |c| c.open_stream(meta, false)
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
        stream.set_meta(meta);
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
            for shard in stream.shards() {
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
        stream.set_meta(meta);
        Ok(stream)
    }

    /// Changes a stream's largest record (key + data), within
    /// [`MAX_RECORD_BYTES`] and the stream's write-byte quota.
    pub async fn update_max_record_bytes(&self, name: &str, max_record_bytes: u32) -> Result<Arc<Stream>> {
        if !MAX_RECORD_BYTES.contains(&max_record_bytes) {
            return Err(BrokerError::invalid(
                "max_record_bytes",
                format!("must be 1024..=10485760, got {max_record_bytes}"),
            ));
        }
        let _control = self.control.lock().await;
        let stream = self.get(name)?;
        let mut meta = stream.meta();
        check_record_fits_quota(max_record_bytes, &meta.quotas)?;
        meta.max_record_bytes = max_record_bytes;
        self.store.put_stream(&meta)?;
        let now = self.clock.now_ms();
        for shard in &stream.shards() {
            shard.quota.set_values(meta.quotas, meta.max_record_bytes, now);
        }
        *stream.meta.write().unwrap_or_else(|e| e.into_inner()) = meta;
        Ok(stream)
    }

    /// Changes a stream's quotas (each `Some` field; positive) and applies
    /// them to its shards at once. Durable (through the metadata store) before
    /// any shard uses them.
    pub async fn update_quotas(&self, name: &str, update: QuotaUpdate) -> Result<Arc<Stream>> {
        let _control = self.control.lock().await;
        let stream = self.get(name)?;
        let mut meta = stream.meta();
        let q = &mut meta.quotas;
        let fields = [
            ("quotas.write_records_per_sec", update.write_records_per_sec, &mut q.write_records_per_sec),
            ("quotas.write_bytes_per_sec", update.write_bytes_per_sec, &mut q.write_bytes_per_sec),
            ("quotas.read_calls_per_sec", update.read_calls_per_sec, &mut q.read_calls_per_sec),
            ("quotas.read_bytes_per_sec", update.read_bytes_per_sec, &mut q.read_bytes_per_sec),
        ];
        for (field, value, current) in fields {
            if let Some(v) = positive(field, value)? {
                *current = v;
            }
        }
        if u64::from(meta.max_record_bytes) > meta.quotas.write_bytes_per_sec {
            return Err(BrokerError::invalid(
                "quotas.write_bytes_per_sec",
                format!(
                    "{} is less than the stream's max_record_bytes = {}: its largest records could never be admitted",
                    meta.quotas.write_bytes_per_sec, meta.max_record_bytes
                ),
            ));
        }
        self.store.put_stream(&meta)?;
        let now = self.clock.now_ms();
        for shard in &stream.shards() {
            shard.quota.set_values(meta.quotas, meta.max_record_bytes, now);
        }
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
    /// stream's retention, and a closed shard that closed before the cutoff
    /// and has no record left expires (it leaves listings; its children stay).
    pub async fn enforce_retention(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        for stream in self.all() {
            let meta = stream.meta();
            let cutoff = now.saturating_sub(u64::from(meta.retention_hours) * 3_600_000);
            let layout = stream.layout();
            // A shard without an open log has nothing to trim.
            for shard in layout.shards().filter(|s| s.stats().is_some()) {
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
            let expired: Vec<u32> = layout
                .tree()
                .iter()
                .filter(|s| matches!(s.state, ShardState::Closed { closed_at_ms, .. } if closed_at_ms < cutoff))
                .filter(|s| {
                    let stats = layout.shard(s.index).and_then(|h| h.stats());
                    stats.is_some_and(|st| st.first_seq == st.next_seq)
                })
                .map(|s| s.index)
                .collect();
            if !expired.is_empty() {
                if let Err(e) = self.expire_shards(&stream, &expired).await {
                    tracing::warn!(stream = %meta.name, error = %e, "removing expired closed shards failed");
                }
            }
        }
    }

    /// Stops every shard writer (each commits what is queued and syncs) and
    /// flushes the metadata store.
    pub async fn close(self: &Arc<Self>) -> Result<()> {
        self.blocking(|c| {
            for stream in c.all() {
                for shard in stream.shards() {
                    shard.close();
                }
            }
            Ok(())
        })
        .await?;
        self.store.flush()
    }

    /// Every failed shard, in stream and shard order.
    pub fn failed_shards(&self) -> Vec<FailedShard> {
        let mut out = Vec::new();
        for stream in self.all() {
            let name = stream.meta().name;
            for shard in stream.shards() {
                if let Some(failure) = shard.failure() {
                    out.push(FailedShard { stream: name.clone(), shard_id: shard.id.clone(), failure });
                }
            }
        }
        out
    }

    /// Reopens every shard that failed for lack of space and for whose
    /// failed write `free_bytes` has room; call while the disk is above its
    /// watermark. Returns how many serve again.
    pub async fn heal_disk_full(&self, free_bytes: u64) -> usize {
        let mut healed = 0;
        for stream in self.all() {
            for shard in stream.shards() {
                let disk_full = shard.failure().is_some_and(|f| f.kind == crate::shard::FailureKind::DiskFull);
                if disk_full && shard.heal(free_bytes).await {
                    tracing::info!(stream = %stream.meta().name, shard = %shard.id, "space is back: the shard reopened and serves writes again");
                    healed += 1;
                }
            }
        }
        healed
    }

    /// A shard's repair: the plan, applied with `confirm`.
    pub async fn repair(&self, stream: &str, shard_id: &str, confirm: bool) -> Result<(Arc<Stream>, RepairOutcome)> {
        let _control = self.control.lock().await;
        let s = self.get(stream)?;
        let shard = s.shard_by_id("shard_id", shard_id)?;
        if confirm && shard.stats().is_none() {
            // The log is opened into this directory; a stream whose
            // directory is gone gets an empty one back, as the plan says.
            let dir = self.stream_dir(s.meta().id);
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        let outcome = shard.repair(confirm).await?;
        Ok((s, outcome))
    }

    /// The directories in `lost+found/`.
    pub fn lost_found(&self) -> Result<Vec<LostFound>> {
        let mut out = Vec::new();
        for name in list_names(&self.lost_found_dir)? {
            let Some((stream_id, moved_at_ms)) = lost_found_id(&name) else { continue };
            let dir = self.lost_found_dir.join(&name);
            let shards = list_names(&dir)?;
            out.push(LostFound { bytes: dir_bytes(&dir), name, stream_id, moved_at_ms, shards });
        }
        Ok(out)
    }

    /// Removes one directory from `lost+found/` and its records with it.
    pub async fn purge_lost_found(self: &Arc<Self>, name: &str) -> Result<LostFound> {
        let _control = self.control.lock().await;
        let entry = self.lost_found()?.into_iter().find(|e| e.name == name).ok_or_else(|| {
            BrokerError::invalid("name", format!("{name:?} is not in lost+found (see ListLostFound)"))
        })?;
        let dir = self.lost_found_dir.join(&entry.name);
        self.blocking(move |c| {
            std::fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
            sync_dir(&c.lost_found_dir)
        })
        .await?;
        tracing::warn!(name = %entry.name, bytes = entry.bytes, "purged a lost+found directory");
        Ok(entry)
    }

    /// The disk monitor.
    pub fn disk(&self) -> &Arc<DiskMonitor> {
        &self.disk
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

/// A record larger than the shard's write-byte quota could never be admitted.
fn check_record_fits_quota(max_record_bytes: u32, quotas: &QuotaValues) -> Result<()> {
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
    Ok(())
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
