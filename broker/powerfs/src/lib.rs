//! `powerfs`: a filesystem that loses power on command, for tests.
//!
//! [`PowerFs::mount`] mounts an in-memory FUSE filesystem on a fresh
//! temporary directory, served by a background thread of the calling
//! process. Programs (the real broker binary, say) use it like any local
//! filesystem. [`PowerFs::power_loss`] then does what a power cut does to a
//! disk with a volatile write cache: everything not made durable is gone.
//!
//! What is durable is exactly what the POSIX contract promises, and no more
//! (see [`model`]):
//! - file data and size: after `fsync(2)` or `fdatasync(2)` of that file;
//! - a directory entry made by `creat`/`open(O_CREAT)`, `mkdir`, `unlink`,
//!   `rmdir` or `rename`: after `fsync(2)` of that directory;
//! - `sync_file_range(2)` is not a FUSE operation and so makes nothing
//!   durable; neither does `close(2)`.
//!
//! [`LossMode::KeepRandomPages`] is meaner than a prefix: a seeded random
//! subset of the unsynced 4 KiB pages survives, later ones without earlier
//! ones. [`PowerFs::set_capacity`] makes growing writes fail with `ENOSPC`.
//!
//! Mounting needs `/dev/fuse` and the right to call `mount(2)` (root, or
//! `CAP_SYS_ADMIN`); no libfuse and no `fusermount` are needed. When it is
//! not possible, [`PowerFs::mount`] says why in [`Error::Unavailable`]: a
//! test must fail then, not pass without having run.
//!
//! Dropping a [`PowerFs`] unmounts it (also while a test panics); if a
//! process still holds a file open there, the mount is detached lazily.
//! A power loss must happen while no process uses the filesystem (kill the
//! broker and wait for it first): open handles do not survive it.

mod fuse;
pub mod model;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

pub use model::{LossMode, LossReport, Stats};

use crate::fuse::PowerFuse;
use crate::model::Model;

/// Why the filesystem could not be mounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// FUSE cannot be used here (no `/dev/fuse`, or not allowed to mount).
    #[error("FUSE is not available, so power-loss tests cannot run: {reason}")]
    Unavailable {
        /// What failed, with the OS error.
        reason: String,
    },
    /// The temporary mount point could not be made.
    #[error("cannot create a mount point: {0}")]
    MountPoint(#[source] std::io::Error),
}

/// A mounted power-loss filesystem; unmounted on drop.
#[derive(Debug)]
pub struct PowerFs {
    model: Arc<Mutex<Model>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: Option<tempfile::TempDir>,
}

impl PowerFs {
    /// Mounts an empty filesystem on a new temporary directory.
    pub fn mount() -> Result<Self, Error> {
        if !Path::new("/dev/fuse").exists() {
            return Err(Error::Unavailable { reason: "/dev/fuse does not exist (modprobe fuse?)".into() });
        }
        let mountpoint = tempfile::Builder::new().prefix("powerfs-").tempdir().map_err(Error::MountPoint)?;
        let model = Arc::new(Mutex::new(Model::new()));
        let mut config = fuser::Config::default();
        config.mount_options =
            vec![fuser::MountOption::FSName("powerfs".into()), fuser::MountOption::NoAtime, fuser::MountOption::RW];
        let session = fuser::spawn_mount(PowerFuse { model: model.clone() }, mountpoint.path(), &config)
            .map_err(|e| Error::Unavailable { reason: format!("mount on {}: {e}", mountpoint.path().display()) })?;
        Ok(Self { model, session: Some(session), mountpoint: Some(mountpoint) })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        match &self.mountpoint {
            Some(dir) => dir.path(),
            // Set in `mount` and only taken in `drop`.
            None => unreachable!("the mount point lives as long as the PowerFs"),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power: every write not fsynced and every entry change whose
    /// directory was not fsynced is undone (see [`LossMode`]). Call it only
    /// when no process has a file open on the mount.
    pub fn power_loss(&self, mode: LossMode) -> LossReport {
        self.model().power_loss(mode)
    }

    /// Makes writes that grow live file data past `bytes` fail with
    /// `ENOSPC`; `None` lifts the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.model().set_capacity(bytes);
    }

    /// Counters of writes, fsyncs, directory fsyncs, refusals and power losses.
    pub fn stats(&self) -> Stats {
        self.model().stats()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let path = self.path().to_path_buf();
            if session.umount_and_join().is_err() {
                // Busy: a process still has a file open here (a test that
                // failed before killing its broker). Detach the mount so the
                // path is free; the kernel ends it when the last file closes.
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Removes the now empty mount point.
        drop(self.mountpoint.take());
    }
}
