//! The shard writers' threads: a fixed pool of plain OS threads shared by
//! every shard of the broker, so threads do not grow with shards.
//!
//! A shard's writer is a [`Task`]: when something is queued for it, it is
//! scheduled (at most once at a time, see the shard's `Slot`); a pool thread
//! runs one group commit of it and, if more is queued, runs it again, behind
//! the others when some are waiting, so a busy shard cannot starve the rest.
//! `fdatasync` blocks a pool thread, never a tokio worker;
//! `storage.writer_threads` bounds how many shards commit (and sync) at once.
//! While one shard's group syncs, its next group queues up, as with a thread
//! per shard.
//!
//! **A shard occupies at most one thread.** A task stays scheduled until its
//! step has finished, so requests queued during a slow `fdatasync` wait for
//! that thread instead of waking others to block on the shard's writer: the
//! other shards keep the rest of the pool. A thread that runs a task again
//! wakes no other thread unless others are waiting (a wake is a context
//! switch per commit on a busy core).
//!
//! The threads end when the last handle to the pool is dropped and nothing
//! is scheduled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{BrokerError, Result};

/// Work a pool thread runs: one step of a shard writer.
pub(crate) trait Task: Send + Sync {
    /// Runs one step; true if the task has more to do and is still
    /// scheduled: the pool runs it again.
    fn run(&self) -> bool;
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
        // Under the queue's lock, so that no thread is between seeing
        // `shutdown` unset and waiting when the notification is sent.
        let ready = self.0.ready();
        self.0.shutdown.store(true, Ordering::SeqCst);
        drop(ready);
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
    let mut again: Option<Arc<dyn Task>> = None;
    loop {
        let task = {
            let mut ready = shared.ready();
            if let Some(t) = again.take() {
                if ready.is_empty() {
                    t
                } else {
                    // Behind the waiting tasks; another thread may take one.
                    ready.push_back(t);
                    shared.wake.notify_one();
                    ready.pop_front().expect("not empty")
                }
            } else {
                loop {
                    if let Some(t) = ready.pop_front() {
                        break t;
                    }
                    if shared.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    ready = shared.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
                }
            }
        };
        if task.run() {
            again = Some(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize, Mutex<Vec<std::thread::ThreadId>>);

    impl Task for Count {
        fn run(&self) -> bool {
            self.1.lock().expect("ids").push(std::thread::current().id());
            self.0.fetch_add(1, Ordering::SeqCst);
            false
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

    /// Runs `left` more times, recording its threads.
    struct Again(AtomicUsize, Mutex<Vec<std::thread::ThreadId>>);

    impl Task for Again {
        fn run(&self) -> bool {
            self.1.lock().expect("ids").push(std::thread::current().id());
            self.0.fetch_sub(1, Ordering::SeqCst) > 1
        }
    }

    #[test]
    fn a_task_that_runs_again_stays_on_its_thread_while_nothing_waits() {
        let pool = WriterPool::new(3).expect("pool");
        let task = Arc::new(Again(AtomicUsize::new(100), Mutex::new(Vec::new())));
        pool.schedule(task.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while task.0.load(Ordering::SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "the task did not run 100 times");
            std::thread::yield_now();
        }
        let mut ids = task.1.lock().expect("ids").clone();
        assert_eq!(ids.len(), 100);
        ids.dedup();
        assert_eq!(ids.len(), 1, "ran on {} threads", ids.len());
    }
}
