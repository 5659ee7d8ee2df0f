//! Sealing rolled segments off the append path.
//!
//! A roll only creates the next segment file (its header written, nothing
//! synced) and queues a [`SealJob`] for the segment it closed. The job, in
//! this order: `fdatasync`s the sealed segment, `fsync`s the directory
//! (which makes the new segment's directory entry durable), then writes the
//! sealed segment's index files (each `fdatasync`ed, then the directory
//! `fsync`ed). Jobs of one log run one at a time, in roll order, so:
//!
//! - **index files prove their segment, and every older one, is synced**:
//!   they are written only after the segment's `fdatasync` returned (and
//!   after every older job finished);
//! - **the log's durable point moves in log order**: [`Sealer::wait_synced`]
//!   returns only when every queued segment is synced, and `ShardLog::sync`
//!   calls it before it counts the active segment as durable.
//!
//! With [`Config::background_seal`](crate::Config::background_seal) the
//! jobs run on a short-lived thread of the log's own (started at a roll,
//! ending when the queue is empty), so appends go on while a 128 MiB segment
//! is written back. Without it they run inline at the next `sync`, `close`,
//! retention pass or truncation (or at a roll, beyond
//! [`INLINE_PENDING_MAX`] waiting segments). A failed job poisons the log:
//! its error is handed to the writer, which refuses every later write.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, io_err};
use crate::io::Io;
use crate::segment::{Segment, SegmentIndex};

/// Segments a log without background sealing lets wait before a roll seals
/// the oldest inline.
pub(crate) const INLINE_PENDING_MAX: usize = 4;

/// A sealed segment waiting for its `fdatasync` and index files.
#[derive(Debug)]
pub(crate) struct SealJob {
    pub io: Arc<dyn Io>,
    pub dir: PathBuf,
    pub segment: Arc<Segment>,
    pub index: SegmentIndex,
}

impl SealJob {
    /// Makes the segment durable (and the directory, so its successor's
    /// entry survives), then writes its index files.
    fn sync_data(&self) -> Result<(), Error> {
        crate::failpoint!("shardlog::seal::before_fsync", &self.segment.path);
        self.segment.file.sync_data().map_err(io_err("sync sealed segment", &self.segment.path))?;
        self.io.sync_dir(&self.dir).map_err(io_err("sync dir", &self.dir))
    }

    fn write_indexes(&self) -> Result<(), Error> {
        crate::failpoint!("shardlog::seal::before_indexes", &self.segment.path);
        crate::recovery::write_indexes(self.io.as_ref(), &self.dir, self.segment.base_seq, &self.index)
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<SealJob>,
    /// A thread (or an inline caller) is running jobs.
    running: bool,
    /// The job being run has synced its segment but not yet written its indexes.
    current_synced: bool,
    /// The first failure, until handed to the writer.
    failed: Option<Error>,
    /// A job failed: later jobs are dropped, nothing more is synced.
    broken: bool,
    /// The log was dropped: queued jobs are abandoned (as in a crash).
    abandoned: bool,
}

impl State {
    /// Every queued segment's data is synced (index files may still be coming).
    fn all_synced(&self) -> bool {
        self.queue.is_empty() && (!self.running || self.current_synced)
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.running
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and flags, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs queued jobs until the queue is empty (or a job fails, or the
    /// log was dropped). The caller has set `running`.
    fn drain(&self) {
        loop {
            let job = {
                let mut s = self.lock();
                match s.queue.pop_front() {
                    Some(job) if !s.broken && !s.abandoned => {
                        s.current_synced = false;
                        job
                    }
                    _ => {
                        s.queue.clear();
                        s.running = false;
                        s.current_synced = false;
                        self.changed.notify_all();
                        return;
                    }
                }
            };
            let synced = guarded(&job, || job.sync_data());
            {
                let mut s = self.lock();
                match synced {
                    Ok(()) => s.current_synced = true,
                    Err(e) => {
                        s.failed = Some(e);
                        s.broken = true;
                    }
                }
                self.changed.notify_all();
            }
            if self.lock().broken {
                continue;
            }
            if let Err(e) = guarded(&job, || job.write_indexes()) {
                let mut s = self.lock();
                s.failed = Some(e);
                s.broken = true;
            }
        }
    }
}

/// Runs a job step; a panic (a bug, or a test's failpoint) becomes a
/// failure that poisons the log instead of leaving its writer waiting for a
/// seal that will never finish.
fn guarded(job: &SealJob, step: impl FnOnce() -> Result<(), Error>) -> Result<(), Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|_| {
        Err(Error::Io {
            op: "seal segment",
            path: job.segment.path.clone(),
            source: std::io::Error::other("the seal thread panicked"),
        })
    })
}

/// The seal queue of one log.
#[derive(Debug)]
pub(crate) struct Sealer {
    shared: Arc<Shared>,
    background: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sealer {
    pub fn new(background: bool) -> Self {
        Self { shared: Arc::default(), background, thread: None }
    }

    /// Queues a job; starts the background thread if none runs.
    pub fn push(&mut self, job: SealJob) -> Result<(), Error> {
        let start = {
            let mut s = self.shared.lock();
            s.queue.push_back(job);
            let start = self.background && !s.running;
            if start {
                s.running = true;
            }
            start
        };
        if start {
            if let Some(old) = self.thread.take() {
                // It cleared `running` and is exiting; reap it.
                let _ = old.join();
            }
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("shardlog-seal".into())
                .spawn(move || shared.drain())
                .map_err(|e| {
                    self.shared.lock().running = false;
                    Error::Io { op: "spawn seal thread", path: PathBuf::new(), source: e }
                })?;
            self.thread = Some(spawned);
        } else if !self.background && self.shared.lock().queue.len() > INLINE_PENDING_MAX {
            self.run_inline_one();
        }
        self.take_failure()
    }

    /// Runs the oldest queued job on this thread (no background sealing).
    fn run_inline_one(&self) {
        let job = {
            let mut s = self.shared.lock();
            if s.running || s.broken {
                return;
            }
            match s.queue.pop_front() {
                Some(job) => job,
                None => return,
            }
        };
        let r = job.sync_data().and_then(|()| job.write_indexes());
        if let Err(e) = r {
            let mut s = self.shared.lock();
            s.failed = Some(e);
            s.broken = true;
        }
    }

    /// Runs every queued job inline when there is no background thread.
    fn run_inline(&self) {
        if self.background {
            return;
        }
        {
            let mut s = self.shared.lock();
            if s.running || s.queue.is_empty() {
                return;
            }
            s.running = true;
        }
        self.shared.drain();
    }

    /// Blocks until every queued segment is synced; the first failure, once.
    pub fn wait_synced(&self) -> Result<(), Error> {
        self.run_inline();
        let mut s = self.shared.lock();
        while !s.all_synced() && !s.broken {
            s = self.shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        drop(s);
        self.take_failure()
    }

    /// Blocks until every queued job is finished, index files included.
    pub fn wait_done(&self) -> Result<(), Error> {
        self.run_inline();
        let mut s = self.shared.lock();
        while !s.idle() {
            s = self.shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        drop(s);
        self.take_failure()
    }

    /// The first seal failure (the error itself once, then `Poisoned`).
    pub fn take_failure(&self) -> Result<(), Error> {
        let mut s = self.shared.lock();
        match s.failed.take() {
            Some(e) => Err(e),
            None if s.broken => Err(Error::Poisoned { cause: "an earlier seal of a rolled segment failed".into() }),
            None => Ok(()),
        }
    }
}

impl Drop for Sealer {
    /// A log dropped without `close` is a crash: queued jobs are abandoned;
    /// the one running finishes (a syscall cannot be taken back) before the
    /// thread is joined, so no seal touches the directory after the drop.
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
