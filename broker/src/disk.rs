//! Free space on the data directory's filesystem: the watermark below which
//! writes are refused, and the reserve file that gives the metadata store
//! room on a full disk.
//!
//! **Watermark.** The watermark is the larger of `storage.min_free_bytes`
//! and `storage.min_free_percent` of the filesystem. Free space is measured
//! with `statvfs` (blocks available to unprivileged users) every
//! `storage.free_space_check_interval_ms`; between two measurements every
//! shard writer *takes* the bytes it is about to append from the headroom
//! (free space minus the watermark) with one atomic subtraction, so many
//! shards cannot together overshoot a stale measurement. A write whose bytes
//! do not fit is refused with the retryable [`BrokerError::DiskFull`] before
//! any byte of it is written: ENOSPC never gets the chance to tear a
//! segment. Reads, consumer-group commits (a few bytes of metadata each) and
//! deletes need no headroom and keep working. The next measurement after
//! space is freed resumes writes; nothing has to restart.
//!
//! **Reserve.** `<data_dir>/reserve` holds `storage.reserve_bytes` of
//! allocated blocks (`fallocate`). When free space falls below the reserve's
//! size (something else filled the disk, or the broker starts on a full
//! disk) the file is removed, which hands its blocks to the metadata store
//! (sled must be able to write to open and to commit). While the reserve is
//! missing, writes need the watermark *plus* the reserve's size free; once
//! that much (and at least twice the reserve) is free, the reserve is
//! recreated. The file holds no
//! data, so neither its creation nor its removal is fsynced: a power loss
//! only changes what the next measurement sees.
//!
//! Invariant: the watermark refuses writes only; it never fails a write that
//! was admitted (an admitted write that still meets ENOSPC, because the
//! watermark is off or something else took the space, poisons its shard,
//! which then reopens by itself once space returns: see `shard`).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};

/// Name of the reserve file in the data directory.
pub const RESERVE_FILE: &str = "reserve";

/// One measurement of the filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStatus {
    /// Bytes available to the broker (the reserve file's blocks not included).
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// The watermark in effect (including the reserve's size while it is missing).
    pub watermark_bytes: u64,
    /// Whether writes are refused.
    pub full: bool,
    /// Whether the reserve file is in place.
    pub reserve_present: bool,
}

#[derive(Debug, Default)]
struct State {
    reserve_present: bool,
    last: DiskStatus,
}

/// Watches free space; see the module docs.
#[derive(Debug)]
pub struct DiskMonitor {
    dir: PathBuf,
    reserve_path: PathBuf,
    min_free_bytes: u64,
    min_free_percent: u8,
    reserve_bytes: u64,
    check_interval_ms: u64,
    /// Free bytes minus the watermark at the last measurement, minus every
    /// byte taken since. Writes fit while it stays non-negative.
    headroom: AtomicI64,
    full: AtomicBool,
    free_bytes: AtomicU64,
    watermark_bytes: AtomicU64,
    state: Mutex<State>,
    metrics: DiskMetrics,
}

#[derive(Debug)]
struct DiskMetrics {
    free: metrics::Gauge,
    watermark: metrics::Gauge,
    full: metrics::Gauge,
    reserve: metrics::Gauge,
    refusals: metrics::Counter,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> BrokerError {
    move |source| BrokerError::Io { context, source }
}

/// Whether an I/O error means "no space": ENOSPC, or a quota (EDQUOT).
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

impl DiskMonitor {
    /// A monitor of `config.data_dir` with the configured watermark; measures
    /// nothing yet (call [`DiskMonitor::measure`] or [`DiskMonitor::maintain`]).
    /// Until the first measurement writes are admitted.
    pub fn new(config: &BrokerConfig) -> Self {
        let s = &config.storage;
        let reserve_path = config.data_dir.join(RESERVE_FILE);
        let reserve_present =
            s.reserve_bytes > 0 && std::fs::metadata(&reserve_path).is_ok_and(|m| m.len() == s.reserve_bytes);
        Self {
            dir: config.data_dir.clone(),
            reserve_path,
            min_free_bytes: s.min_free_bytes,
            min_free_percent: s.min_free_percent,
            reserve_bytes: s.reserve_bytes,
            check_interval_ms: s.free_space_check_interval_ms,
            headroom: AtomicI64::new(i64::MAX),
            full: AtomicBool::new(false),
            free_bytes: AtomicU64::new(u64::MAX),
            watermark_bytes: AtomicU64::new(0),
            state: Mutex::new(State { reserve_present, last: DiskStatus::default() }),
            metrics: DiskMetrics {
                free: metrics::gauge!("stream_broker_disk_free_bytes"),
                watermark: metrics::gauge!("stream_broker_disk_watermark_bytes"),
                full: metrics::gauge!("stream_broker_disk_full"),
                reserve: metrics::gauge!("stream_broker_disk_reserve_bytes"),
                refusals: metrics::counter!("stream_broker_disk_full_refusals_total"),
            },
        }
    }

    /// Whether the watermark is on.
    fn enabled(&self) -> bool {
        self.min_free_bytes > 0 || self.min_free_percent > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain values replaced whole; a panic cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Measures free space and updates the verdict. Blocking (one `statvfs`).
    pub fn measure(&self) -> Result<DiskStatus> {
        let mut state = self.lock();
        self.measure_locked(&mut state)
    }

    /// Gives the reserve back when free space is below its size, recreates it
    /// when there is room for it above the watermark, then measures.
    /// Blocking (may `fallocate` the reserve).
    pub fn maintain(&self) -> Result<DiskStatus> {
        let mut state = self.lock();
        if self.reserve_bytes == 0 {
            return self.measure_locked(&mut state);
        }
        let (free, total) = self.statvfs()?;
        if state.reserve_present && free < self.reserve_bytes {
            match std::fs::remove_file(&self.reserve_path) {
                Ok(()) => {
                    tracing::warn!(
                        free_bytes = free,
                        reserve_bytes = self.reserve_bytes,
                        "the disk is nearly full: released the reserve file so the metadata store can commit"
                    );
                    state.reserve_present = false;
                }
                Err(e) => tracing::error!(error = %e, "cannot remove the reserve file"),
            }
        } else if !state.reserve_present && free >= self.watermark(total).max(self.reserve_bytes) + self.reserve_bytes {
            // Recreating it must leave at least its own size free, or the
            // next pass would release it again.
            match self.create_reserve() {
                Ok(()) => {
                    tracing::info!(reserve_bytes = self.reserve_bytes, "reserve file in place");
                    state.reserve_present = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot create the reserve file; running without it"),
            }
        }
        self.measure_locked(&mut state)
    }

    /// Admission check for a produce call: refuses while the disk is below
    /// the watermark. Never blocks.
    pub fn admit(&self) -> Result<()> {
        if self.full.load(Ordering::SeqCst) {
            self.metrics.refusals.increment(1);
            return Err(self.refusal());
        }
        Ok(())
    }

    /// Takes `bytes` of headroom for a write about to be appended; refuses
    /// (taking nothing) when they do not fit above the watermark. Never blocks.
    pub fn take(&self, bytes: u64) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let n = i64::try_from(bytes).unwrap_or(i64::MAX);
        let before = self.headroom.fetch_sub(n, Ordering::SeqCst);
        if before.saturating_sub(n) < 0 {
            self.headroom.fetch_add(n, Ordering::SeqCst);
            self.full.store(true, Ordering::SeqCst);
            self.metrics.refusals.increment(1);
            return Err(self.refusal());
        }
        Ok(())
    }

    /// Whether writes are refused at the moment.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// The last measurement.
    pub fn last(&self) -> DiskStatus {
        self.lock().last
    }

    /// When a write refused for lack of space may succeed: the next measurement.
    pub fn retry_after_ms(&self) -> u64 {
        self.check_interval_ms
    }

    /// The refusal a write gets while the disk is full.
    pub fn refusal(&self) -> BrokerError {
        let (free, watermark) = (self.free_bytes.load(Ordering::SeqCst), self.watermark_bytes.load(Ordering::SeqCst));
        BrokerError::DiskFull {
            what: format!(
                "the data disk has {free} bytes free, below the broker's free-space watermark of {watermark} bytes"
            ),
            retry_after_ms: self.check_interval_ms,
        }
    }

    fn watermark(&self, total: u64) -> u64 {
        self.min_free_bytes.max(total / 100 * u64::from(self.min_free_percent))
    }

    /// Bytes available to unprivileged writers, and the filesystem's size.
    fn statvfs(&self) -> Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.dir)
            .map_err(|e| BrokerError::Io { context: "measure free space".into(), source: e.into() })?;
        Ok((st.f_bavail.saturating_mul(st.f_frsize), st.f_blocks.saturating_mul(st.f_frsize)))
    }

    fn measure_locked(&self, state: &mut State) -> Result<DiskStatus> {
        let (free, total) = self.statvfs()?;
        let missing_reserve = if state.reserve_present { 0 } else { self.reserve_bytes };
        let watermark = if self.enabled() { self.watermark(total) + missing_reserve } else { 0 };
        let headroom = i64::try_from(free).unwrap_or(i64::MAX) - i64::try_from(watermark).unwrap_or(i64::MAX);
        let full = self.enabled() && headroom <= 0;
        self.headroom.store(headroom, Ordering::SeqCst);
        let was_full = self.full.swap(full, Ordering::SeqCst);
        self.free_bytes.store(free, Ordering::SeqCst);
        self.watermark_bytes.store(watermark, Ordering::SeqCst);
        if full != was_full {
            if full {
                tracing::warn!(
                    free_bytes = free,
                    watermark_bytes = watermark,
                    "disk below the free-space watermark; refusing writes"
                );
            } else {
                tracing::info!(
                    free_bytes = free,
                    watermark_bytes = watermark,
                    "disk above the free-space watermark; accepting writes"
                );
            }
        }
        self.metrics.free.set(free as f64);
        self.metrics.watermark.set(watermark as f64);
        self.metrics.full.set(if full { 1.0 } else { 0.0 });
        self.metrics.reserve.set(if state.reserve_present { self.reserve_bytes as f64 } else { 0.0 });
        state.last = DiskStatus {
            free_bytes: free,
            total_bytes: total,
            watermark_bytes: watermark,
            full,
            reserve_present: state.reserve_present,
        };
        Ok(state.last)
    }

    /// Writes the reserve file with allocated (not sparse) blocks.
    fn create_reserve(&self) -> Result<()> {
        let path = &self.reserve_path;
        let context = || "create the reserve file".to_string();
        let file = File::create(path).map_err(io_err(context()))?;
        let allocated = match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.reserve_bytes) {
            Ok(()) => Ok(()),
            // Some filesystems cannot preallocate; zeros take the blocks too.
            Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(&file, self.reserve_bytes),
            Err(e) => Err(std::io::Error::from(e)),
        };
        if let Err(e) = allocated {
            let _ = std::fs::remove_file(path);
            return Err(io_err(context())(e));
        }
        Ok(())
    }
}

fn write_zeros(mut file: &File, len: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}
