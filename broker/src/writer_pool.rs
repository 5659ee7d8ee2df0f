//! The shard writers' threads: a fixed pool of plain OS threads shared by
//! every shard of the broker, so threads do not grow with shards.
//!
//! A shard's writer is a [`Task`]: when something is queued for it, it is
//! scheduled (at most once at a time, see the shard's `Slot`); a pool thread
//! runs one group commit of it and reschedules it behind the others if more
//! is queued, so a busy shard cannot starve the rest. `fdatasync` blocks a
//! pool thread, never a tokio worker; `storage.writer_threads` bounds how
//! many shards commit (and sync) at once. While one shard's group syncs, its
//! next group queues up, as with a thread per shard.
//!
//! The threads end when the last handle to the pool is dropped and nothing
//! is scheduled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{BrokerError, Result};

/// Work a pool thread runs: one step of a shard writer.
pub(crate) trait Task: Send + Sync {
    /// Runs one step; the task reschedules itself if it has more to do.
    fn run(self: Arc<Self>);
}

#[derive(Default)]
struct Shared {
    ready: Mutex<VecDeque<Arc<dyn Task>>>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    fn ready(&self) -> MutexGuard<'_, VecDeque<Arc<dyn Task>>> {
        // A queue of handles stays consistent after any panic.
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends the threads when the last pool handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown.store(true, Ordering::SeqCst);
        self.0.wake.notify_all();
    }
}

/// A handle to the pool; clones share it.
#[derive(Clone)]
pub struct WriterPool {
    shared: Arc<Shared>,
    threads: usize,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for WriterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterPool").field("threads", &self.threads).finish()
    }
}

impl WriterPool {
    /// Starts `threads` writer threads.
    pub fn new(threads: usize) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("shard-writer-{i}"))
                .spawn(move || work(&shared))
                .map_err(|e| BrokerError::Io { context: "spawn shard writer thread".into(), source: e })?;
        }
        metrics::gauge!("stream_broker_writer_threads").set(threads.max(1) as f64);
        Ok(Self { _owner: Arc::new(Owner(shared.clone())), shared, threads: threads.max(1) })
    }

    /// Queues `task` to run on a pool thread.
    pub(crate) fn schedule(&self, task: Arc<dyn Task>) {
        self.shared.ready().push_back(task);
        self.shared.wake.notify_one();
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn work(shared: &Shared) {
    loop {
        let task = {
            let mut ready = shared.ready();
            loop {
                if let Some(t) = ready.pop_front() {
                    break t;
                }
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                ready = shared.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
            }
        };
        task.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize, Mutex<Vec<std::thread::ThreadId>>);

    impl Task for Count {
        fn run(self: Arc<Self>) {
            self.1.lock().expect("ids").push(std::thread::current().id());
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn many_tasks_run_on_the_bounded_threads() {
        let pool = WriterPool::new(3).expect("pool");
        let count = Arc::new(Count(AtomicUsize::new(0), Mutex::new(Vec::new())));
        for _ in 0..1000 {
            pool.schedule(count.clone());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while count.0.load(Ordering::SeqCst) < 1000 {
            assert!(std::time::Instant::now() < deadline, "tasks did not run");
            std::thread::yield_now();
        }
        let mut ids = count.1.lock().expect("ids").clone();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert!(ids.len() <= 3, "ran on {} threads", ids.len());
    }
}
