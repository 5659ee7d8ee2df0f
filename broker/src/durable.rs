//! Durable commits for sled: the one helper every sled user here (the
//! broker's metadata store, consumer-group checkpoints, the order service)
//! calls before it acknowledges a change.
//!
//! **Why it exists.** sled 0.34's `Db::flush` writes its log with `pwrite`
//! followed by `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux.
//! That starts and waits for write-back of the range, but neither flushes the
//! device's volatile write cache nor the file's size and other metadata, so
//! after a power loss a flushed change can be gone. sled's own `fsync` runs
//! later, from its background thread.
//!
//! **What a commit does.** [`DurableSled::commit`] returns only after every
//! change made before the call is durable:
//! 1. `Db::flush`, so all of sled's buffered writes have reached its files;
//! 2. `fdatasync` of sled's data file (`<dir>/db`), and of every blob file
//!    (`<dir>/blobs/*`, which sled writes without syncing) not synced before;
//! 3. `fsync` of `<dir>` and `<dir>/blobs` whenever their entries changed
//!    since the last commit (sled creates blob and snapshot files and renames
//!    snapshots into place), so a new file's directory entry is durable too.
//!
//! When the store is opened, `<dir>` and its parent are fsynced as well, so
//! the store's own directory entry survives a power loss.
//!
//! **Group commit.** Concurrent callers share rounds: a caller takes a ticket
//! after its change; one caller at a time runs a round covering every ticket
//! taken before the round started, and everyone it covers returns together.
//! So N concurrent commits cost about two rounds, not N.
//!
//! **Failure.** If a round fails, its callers get the error and the store is
//! poisoned: every later commit fails until the process restarts and sled
//! recovers from disk. Retrying an fsync after a failure can report success
//! for data the kernel already dropped (fsyncgate); a change is never
//! acknowledged on such a retry.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Why a durable commit failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// sled refused the flush.
    #[error("sled flush of {dir}: {message}")]
    Flush {
        /// The store.
        dir: PathBuf,
        /// sled's error.
        message: String,
    },
    /// An `fdatasync`/`fsync` or a directory listing failed.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// An earlier commit failed; nothing is acknowledged until a restart.
    #[error("the store at {dir} refuses commits after a failed sync: {cause}")]
    Poisoned {
        /// The store.
        dir: PathBuf,
        /// The first failure.
        cause: String,
    },
}

#[derive(Debug, Default)]
struct Tickets {
    /// Tickets handed out.
    taken: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A round is running.
    syncing: bool,
    /// The failure that poisoned the store.
    poisoned: Option<String>,
    /// Rounds run (for tests and metrics).
    rounds: u64,
}

/// What the last round saw, so the next fsyncs only what changed.
#[derive(Debug, Default)]
struct Seen {
    entries: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

/// A sled database whose changes are made durable by [`DurableSled::commit`].
#[derive(Debug)]
pub struct DurableSled {
    db: sled::Db,
    dir: PathBuf,
    data_file: File,
    tickets: Mutex<Tickets>,
    round_done: Condvar,
    seen: Mutex<Seen>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DurableError + 'a {
    move |e| DurableError::Io { op, path: path.to_path_buf(), message: e.to_string() }
}

fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

/// Names in `dir`; an absent directory has none.
fn list(dir: &Path) -> Result<BTreeSet<String>, DurableError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        // sled names its files in ASCII; anything else is not sled's.
        if let Ok(name) = entry.file_name().into_string() {
            names.insert(name);
        }
    }
    Ok(names)
}

impl DurableSled {
    /// Opens (creating) the sled database in `dir` and makes its directory
    /// entry durable.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        Self::open_with(sled::Config::new().path(dir))
    }

    /// Opens with a caller's sled configuration (its path is the store's directory).
    pub fn open_with(config: sled::Config) -> Result<Self, sled::Error> {
        let db = config.open()?;
        let dir = config.get_path();
        let data_file = File::open(dir.join("db"))?;
        let store = Self {
            db,
            dir,
            data_file,
            tickets: Mutex::new(Tickets::default()),
            round_done: Condvar::new(),
            seen: Mutex::new(Seen::default()),
        };
        let parent = store.dir.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
        let synced = store.commit().and_then(|()| parent.map_or(Ok(()), |p| sync_dir(&p)));
        synced.map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))?;
        Ok(store)
    }

    /// The database, for reads and writes; acknowledge a write only after
    /// [`DurableSled::commit`].
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks until every change made before this call is durable (see the
    /// module docs). Call it from a thread that may block.
    pub fn commit(&self) -> Result<(), DurableError> {
        let mut t = self.lock_tickets();
        t.taken += 1;
        let ticket = t.taken;
        loop {
            if t.durable >= ticket {
                return Ok(());
            }
            if let Some(cause) = &t.poisoned {
                return Err(DurableError::Poisoned { dir: self.dir.clone(), cause: cause.clone() });
            }
            if t.syncing {
                t = self.round_done.wait(t).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            t.syncing = true;
            let covers = t.taken;
            drop(t);
            let result = self.round();
            t = self.lock_tickets();
            t.syncing = false;
            t.rounds += 1;
            match result {
                Ok(()) => t.durable = covers,
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "durable commit failed; the store refuses commits until restart");
                    t.poisoned = Some(e.to_string());
                }
            }
            self.round_done.notify_all();
        }
    }

    /// Rounds of flush + fsync run so far.
    pub fn rounds(&self) -> u64 {
        self.lock_tickets().rounds
    }

    fn lock_tickets(&self) -> MutexGuard<'_, Tickets> {
        // The fields are plain counters, replaced whole; a panic cannot tear them.
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One flush + fsync round; only one runs at a time.
    fn round(&self) -> Result<(), DurableError> {
        self.db.flush().map_err(|e| DurableError::Flush { dir: self.dir.clone(), message: e.to_string() })?;
        let data = self.dir.join("db");
        self.data_file.sync_data().map_err(io_err("fdatasync", &data))?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let blobs_dir = self.dir.join("blobs");
        let blobs = list(&blobs_dir)?;
        for name in blobs.difference(&seen.blobs) {
            let path = blobs_dir.join(name);
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(io_err("fdatasync", &path))?,
                // sled garbage-collected it in the meantime.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("open", &path)(e)),
            }
        }
        if blobs != seen.blobs {
            if blobs_dir.exists() {
                sync_dir(&blobs_dir)?;
            }
            seen.blobs = blobs;
        }
        let entries = list(&self.dir)?;
        if entries != seen.entries {
            sync_dir(&self.dir)?;
            seen.entries = entries;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn committed_changes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        {
            let s = DurableSled::open(&path).expect("open");
            s.db().insert(b"k", b"v").expect("insert");
            s.commit().expect("commit");
        }
        let s = DurableSled::open(&path).expect("reopen");
        assert_eq!(s.db().get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn concurrent_commits_share_rounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(DurableSled::open(&dir.path().join("meta")).expect("open"));
        let before = s.rounds();
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for j in 0..20u32 {
                        s.db().insert(format!("{i}/{j}"), &j.to_le_bytes()).expect("insert");
                        s.commit().expect("commit");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("committer");
        }
        assert!(s.rounds() > before);
        assert_eq!(s.db().len(), 320, "every committed insert is there");
    }
}
