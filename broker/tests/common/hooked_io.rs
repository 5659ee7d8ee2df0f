//! The real filesystem with a hook before every write and every data sync
//! of a shard-log file: what fault and durability tests need to count,
//! delay or break those calls.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use shardlog::io::{Io, IoFile, OpenMode, StdIo};

/// What runs before a shard-log file is written or synced.
pub trait Hook: Send + Sync + Debug + 'static {
    /// Before `write_all_at`.
    fn before_write(&self) {}
    /// Before `sync_data` (`fdatasync`).
    fn before_sync(&self) {}
}

/// [`StdIo`] with `H` before each write and data sync.
#[derive(Debug)]
pub struct HookedIo<H>(pub Arc<H>);

impl<H> Clone for HookedIo<H> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<H: Default> Default for HookedIo<H> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

#[derive(Debug)]
struct HookedFile<H> {
    inner: Arc<dyn IoFile>,
    hook: Arc<H>,
}

impl<H: Hook> Io for HookedIo<H> {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        StdIo.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(HookedFile { inner: StdIo.open(path, mode)?, hook: self.0.clone() }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdIo.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdIo.sync_dir(dir)
    }
}

impl<H: Hook> IoFile for HookedFile<H> {
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.hook.before_write();
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.hook.before_sync();
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}
