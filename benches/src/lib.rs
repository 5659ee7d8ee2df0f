//! Shared helpers for the stream-broker benchmarks: deterministic record
//! sets, scratch directories, and a crashed shard with a torn active segment.

use std::error::Error;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use shardlog::{Config, RecordRef, ShardLog};
use tempfile::TempDir;

/// Boxed error of the setup helpers: setup failures end the benchmark.
pub type SetupResult<T> = Result<T, Box<dyn Error>>;

/// A fixed arrival time for benchmark batches. A constant keeps segments
/// from rolling by age and lets `trim_before(u64::MAX)` drop every sealed
/// segment.
pub const BENCH_TIMESTAMP_MS: u64 = 1_700_000_000_000;

/// Length of every partition key the record sets use ("pk-000123").
pub const KEY_LEN: usize = 9;

/// Deterministic pseudo-random bytes (xorshift64*), so every run writes the same data.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Owned storage for benchmark records: `count` distinct partition keys
/// ("pk-000000", "pk-000001", ...) and payloads of `data_len` bytes cut at
/// varying offsets from one pseudo-random pool.
#[derive(Debug, Clone)]
pub struct RecordSet {
    keys: Vec<String>,
    pool: Vec<u8>,
    data_len: usize,
}

impl RecordSet {
    /// `count` records of `data_len` data bytes each; `count` is at most 1,000,000
    /// so every key has the same length.
    pub fn new(count: usize, data_len: usize) -> Self {
        assert!(count > 0 && count <= 1_000_000, "keys are pk- plus six digits");
        let keys = (0..count).map(|i| format!("pk-{i:06}")).collect();
        let pool = pseudo_random_bytes(64 * 1024 + data_len, data_len as u64 + 7);
        Self { keys, pool, data_len }
    }

    /// Key plus data bytes of one record.
    pub fn record_bytes(&self) -> usize {
        KEY_LEN + self.data_len
    }

    /// Data bytes of one record.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// The records split into batches of `batch_len` (the last batch may be shorter).
    pub fn batches(&self, batch_len: usize) -> Vec<Vec<RecordRef<'_>>> {
        let span = self.pool.len() - self.data_len;
        let records: Vec<RecordRef<'_>> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let offset = (i * 131) % span;
                RecordRef { partition_key: key.as_bytes(), data: &self.pool[offset..offset + self.data_len] }
            })
            .collect();
        records.chunks(batch_len).map(<[RecordRef<'_>]>::to_vec).collect()
    }
}

/// A scratch directory under `base` (use a directory on the same filesystem
/// as the target directory), removed when dropped.
pub fn scratch_dir(base: impl AsRef<Path>, prefix: &str) -> SetupResult<TempDir> {
    fs::create_dir_all(base.as_ref())?;
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in(base)?)
}

/// The active (newest) segment file of a shard directory.
pub fn active_segment(shard_dir: &Path) -> SetupResult<PathBuf> {
    let mut newest: Option<String> = None;
    for entry in fs::read_dir(shard_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let is_log = name.len() == 24 && name.ends_with(".log") && name[..20].bytes().all(|b| b.is_ascii_digit());
        if is_log && newest.as_ref().is_none_or(|n| name > *n) {
            newest = Some(name);
        }
    }
    let name = newest.ok_or_else(|| format!("no segment in {}", shard_dir.display()))?;
    Ok(shard_dir.join(name))
}

/// Sizes of the `.log` files of a shard directory, oldest first.
pub fn segment_sizes(shard_dir: &Path) -> SetupResult<Vec<u64>> {
    let mut logs = Vec::new();
    for entry in fs::read_dir(shard_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            logs.push((name, entry.metadata()?.len()));
        }
    }
    logs.sort();
    Ok(logs.into_iter().map(|(_, len)| len).collect())
}

/// A shard left behind by a crash: sealed segments plus an active segment
/// whose last batch was cut in half. A saved copy of the torn active file
/// lets each measurement start from the same torn state.
#[derive(Debug)]
pub struct TornShard {
    /// Owns everything below; removed on drop.
    pub root: TempDir,
    /// The shard directory to open.
    pub shard_dir: PathBuf,
    /// The torn active segment file.
    pub active: PathBuf,
    /// The saved torn copy of `active` (outside the shard directory).
    pub torn_copy: PathBuf,
    /// Sealed segments.
    pub sealed_segments: usize,
    /// Bytes of the sealed segment files.
    pub sealed_bytes: u64,
    /// Bytes of the active file when it was last synced (all whole batches).
    pub active_synced_bytes: u64,
    /// Bytes of the active file after the tear (synced bytes plus half a batch).
    pub active_torn_bytes: u64,
    /// Records readable after recovery.
    pub records: u64,
    /// The configuration the shard was written with.
    pub config: Config,
}

impl TornShard {
    /// Builds the shard in a scratch directory under `base`: batches of 500
    /// records of 1 KiB are appended until the sealed segments hold at least
    /// `sealed_min_bytes`, then the active segment gets about
    /// `active_min_bytes` and is synced; one more batch is written (not
    /// synced), the writer is dropped without `close` (the crash), and the
    /// active file is cut in the middle of that last batch.
    pub fn build(base: &Path, config: Config, sealed_min_bytes: u64, active_min_bytes: u64) -> SetupResult<Self> {
        let root = scratch_dir(base, "shardlog-recovery-")?;
        let shard_dir = root.path().join("shard");
        let set = RecordSet::new(4_000, 1024);
        let batches = set.batches(500);
        let mut log = ShardLog::open(&shard_dir, config.clone())?;
        let mut i = 0usize;
        let mut segments = 1;
        let mut sealed_bytes = 0u64;
        while sealed_bytes < sealed_min_bytes {
            log.append(BENCH_TIMESTAMP_MS, &batches[i % batches.len()])?;
            i += 1;
            let now = log.segments();
            if now != segments {
                segments = now;
                let sizes = segment_sizes(&shard_dir)?;
                sealed_bytes = sizes[..sizes.len() - 1].iter().sum();
            }
        }
        // The batch that rolled is already in the new active segment.
        log.publish()?;
        let mut active_bytes = fs::metadata(active_segment(&shard_dir)?)?.len();
        while active_bytes < active_min_bytes {
            log.append(BENCH_TIMESTAMP_MS, &batches[i % batches.len()])?;
            i += 1;
            log.publish()?;
            active_bytes = fs::metadata(active_segment(&shard_dir)?)?.len();
        }
        log.sync()?;
        let active = active_segment(&shard_dir)?;
        let synced = fs::metadata(&active)?.len();
        log.append(BENCH_TIMESTAMP_MS, &batches[i % batches.len()])?;
        log.publish()?;
        let written = fs::metadata(&active)?.len();
        if log.segments() != segments || written <= synced {
            return Err("the last batch must land in the same active segment".into());
        }
        let records = log.durable_next_seq();
        drop(log); // The crash: no close, the last batch was never synced.
        let torn_len = synced + (written - synced) / 2;
        let file = OpenOptions::new().write(true).open(&active)?;
        file.set_len(torn_len)?;
        file.sync_all()?;
        drop(file);
        let torn_copy = root.path().join("torn-active.log");
        fs::copy(&active, &torn_copy)?;
        Ok(Self {
            shard_dir,
            active,
            torn_copy,
            sealed_segments: segments - 1,
            sealed_bytes,
            active_synced_bytes: synced,
            active_torn_bytes: torn_len,
            records,
            config,
            root,
        })
    }

    /// Puts the torn active segment back (a recovery cut it) and makes the
    /// copy durable, so that the next open's own sync covers only its repair.
    pub fn restore_torn(&self) -> SetupResult<()> {
        fs::copy(&self.torn_copy, &self.active)?;
        OpenOptions::new().write(true).open(&self.active)?.sync_all()?;
        Ok(())
    }

    /// Bytes of all segment files as torn (sealed plus torn active).
    pub fn total_bytes(&self) -> u64 {
        self.sealed_bytes + self.active_torn_bytes
    }
}
