//! The I/O seam: every byte the log reads or writes goes through [`Io`] and
//! [`IoFile`], so tests can inject faults and simulate power loss.
//!
//! - [`StdIo`]: the real filesystem (positional reads and writes, `fdatasync`,
//!   directory fsync).
//! - [`FaultyIo`]: wraps another `Io` and fails writes or syncs after a
//!   chosen number of successes, optionally tearing the failing write.
//! - [`SimIo`]: an in-memory disk that remembers what was synced. `crash()`
//!   drops every byte not covered by a completed `sync_data`, every file
//!   creation or removal not covered by a `sync_dir`, and can keep any
//!   random subset of the unsynced 4 KiB pages of a file: the power-loss
//!   model, as mean as a disk that writes back pages out of order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How [`Io::open`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// The file must not exist; it is created empty.
    CreateNew,
    /// Create the file, or truncate it to empty if it exists.
    CreateTruncate,
}

/// Directory-level operations.
pub trait Io: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// File-level operations. All positional, so readers share a file without a cursor.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `pos`; may return fewer bytes at end of file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Fills `buf` from `pos`; fails with `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Reads exactly `len` bytes from `pos` into a new buffer; fails with
    /// `UnexpectedEof` if the file is shorter. The real file reads into the
    /// buffer's uninitialised capacity: zeroing it first was wasted work on
    /// every read of the subscribers' path.
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// As [`read_vec_at`](Self::read_vec_at), but only if every byte is in
    /// memory now: `Ok(None)` when reading would wait for the disk (or the
    /// file cannot tell), so an async caller can read inline and fall back to
    /// a blocking thread. The default never reads: simulated and faulty files
    /// always take the blocking path, where their faults are injected.
    fn read_vec_at_cached(&self, len: usize, pos: u64) -> io::Result<Option<Vec<u8>>> {
        let _ = (len, pos);
        Ok(None)
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

#[derive(Debug)]
struct StdFile(File);

impl Io for StdIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            // Names that are not UTF-8 cannot be ours; they are skipped like any stranger.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::CreateNew => {
                opts.create_new(true);
            }
            OpenMode::CreateTruncate => {
                opts.create(true).truncate(true);
            }
        }
        Ok(Arc::new(StdFile(opts.open(path)?)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl IoFile for StdFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }

    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = pos + buf.len() as u64;
            // Reads into the spare capacity and grows the length by what `pread` filled.
            if rustix::io::pread(&self.0, rustix::buffer::spare_capacity(&mut buf), at)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The allocator may have given more capacity than asked, and `pread` filled it.
        buf.truncate(len);
        Ok(buf)
    }

    /// `preadv2(RWF_NOWAIT)`: the kernel copies from the page cache and
    /// refuses (EAGAIN, or a short read) rather than wait for the disk.
    fn read_vec_at_cached(&self, len: usize, pos: u64) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let read = rustix::io::preadv2(
                &self.0,
                &mut [io::IoSliceMut::new(&mut buf[done..])],
                pos + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            );
            match read {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                // Not cached, or a kernel or filesystem without RWF_NOWAIT: read the blocking way.
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(buf))
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// Which operations a [`FaultyIo`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// File writes (`write_all_at`, `set_len`).
    Write,
    /// `sync_data` and `sync_dir`.
    Sync,
}

#[derive(Debug, Default)]
struct FaultPlan {
    writes_left: AtomicU64,
    syncs_left: AtomicU64,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
    torn: AtomicBool,
    triggered: AtomicBool,
}

impl FaultPlan {
    /// True if this operation must fail. Once a kind starts failing it keeps
    /// failing: a disk that returned EIO is not trusted again.
    fn should_fail(&self, kind: FaultKind) -> bool {
        let (armed, left) = match kind {
            FaultKind::Write => (&self.fail_writes, &self.writes_left),
            FaultKind::Sync => (&self.fail_syncs, &self.syncs_left),
        };
        if !armed.load(Ordering::SeqCst) {
            return false;
        }
        let fail = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err();
        if fail {
            self.triggered.store(true, Ordering::SeqCst);
        }
        fail
    }
}

/// Wraps an [`Io`] and fails chosen operations after a number of successes.
#[derive(Debug, Clone)]
pub struct FaultyIo {
    inner: Arc<dyn Io>,
    plan: Arc<FaultPlan>,
}

impl FaultyIo {
    /// A wrapper that passes everything through until armed.
    pub fn new(inner: Arc<dyn Io>) -> Self {
        Self { inner, plan: Arc::default() }
    }

    /// After `successes` more operations of `kind`, every later one fails.
    /// With `torn`, a failing write first writes half of its buffer.
    pub fn fail_after(&self, kind: FaultKind, successes: u64, torn: bool) {
        let (armed, left) = match kind {
            FaultKind::Write => (&self.plan.fail_writes, &self.plan.writes_left),
            FaultKind::Sync => (&self.plan.fail_syncs, &self.plan.syncs_left),
        };
        left.store(successes, Ordering::SeqCst);
        self.plan.torn.store(torn, Ordering::SeqCst);
        armed.store(true, Ordering::SeqCst);
    }

    /// Whether an injected fault has fired.
    pub fn triggered(&self) -> bool {
        self.plan.triggered.load(Ordering::SeqCst)
    }
}

fn injected() -> io::Error {
    io::Error::other("injected I/O fault")
}

impl Io for FaultyIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        if mode != OpenMode::Existing && self.plan.should_fail(FaultKind::Write) {
            return Err(injected());
        }
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(FaultyFile { inner, plan: self.plan.clone() }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        if self.plan.should_fail(FaultKind::Write) {
            return Err(injected());
        }
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.plan.should_fail(FaultKind::Sync) {
            return Err(injected());
        }
        self.inner.sync_dir(dir)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn IoFile>,
    plan: Arc<FaultPlan>,
}

impl IoFile for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.plan.should_fail(FaultKind::Write) {
            if self.plan.torn.load(Ordering::SeqCst) {
                self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
            }
            return Err(injected());
        }
        self.inner.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.plan.should_fail(FaultKind::Sync) {
            return Err(injected());
        }
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.plan.should_fail(FaultKind::Write) {
            return Err(injected());
        }
        self.inner.set_len(len)
    }
}

/// An in-memory disk with a power-loss model; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct SimIo {
    disk: Arc<Mutex<SimDisk>>,
}

#[derive(Debug, Default)]
struct SimDisk {
    /// Directory entries as the running system sees them.
    live: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Directory entries as they would be found after a crash.
    durable: BTreeMap<PathBuf, Arc<SimFile>>,
    dirs: BTreeSet<PathBuf>,
}

#[derive(Debug, Default)]
struct SimFile {
    data: Mutex<SimData>,
}

#[derive(Debug, Default, Clone)]
struct SimData {
    current: Vec<u8>,
    synced: Vec<u8>,
}

/// Page size of the crash model.
const PAGE: usize = 4096;

/// One possible on-disk state after power loss, given the synced and the
/// written contents of a file (see [`SimIo::crash`]).
fn mix_pages(synced: &[u8], current: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let len = if next() % 2 == 0 { synced.len() } else { current.len() };
    let mut out = vec![0u8; len];
    let byte = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
    for start in (0..len).step_by(PAGE) {
        let end = (start + PAGE).min(len);
        let take_written = next() % 2 == 0;
        for (i, b) in out[start..end].iter_mut().enumerate() {
            let at = start + i;
            *b = if take_written { byte(current, at) } else { byte(synced, at) };
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain byte vectors behind, which
    // are still consistent enough for a test double; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimIo {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates power loss and reboot. Directory changes not followed by
    /// `sync_dir` are undone. Without `seed`, files keep exactly their
    /// synced bytes. With `seed`, each file is as mean as a real disk: its
    /// length is either the synced or the written one, and every 4 KiB page
    /// that differs between the two independently holds either version (the
    /// written bytes, or the synced ones, or zeroes where the synced file had
    /// none). So unsynced pages reach the disk as any subset, in any order:
    /// a zeroed gap can be followed by an intact later page, and an unsynced
    /// overwrite can land in some pages and not others. Bytes covered by a
    /// completed `sync_data` always survive.
    pub fn crash(&self, seed: Option<u64>) {
        let mut disk = lock(&self.disk);
        let mut rng = seed.unwrap_or(0) | 1;
        let mut next = move || {
            // xorshift64*: deterministic, good enough to pick pages.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let survivors = disk.durable.clone();
        for file in survivors.values() {
            let mut d = lock(&file.data);
            let after = match seed {
                None => d.synced.clone(),
                Some(_) => mix_pages(&d.synced, &d.current, &mut next),
            };
            d.current = after.clone();
            d.synced = after;
        }
        disk.live = survivors;
    }

    /// An independent copy of the whole disk (live and durable state), so a
    /// test can damage the copy and keep the original.
    pub fn snapshot(&self) -> SimIo {
        let disk = lock(&self.disk);
        let mut copies: BTreeMap<*const SimFile, Arc<SimFile>> = BTreeMap::new();
        let mut copy = |f: &Arc<SimFile>| {
            copies
                .entry(Arc::as_ptr(f))
                .or_insert_with(|| Arc::new(SimFile { data: Mutex::new(lock(&f.data).clone()) }))
                .clone()
        };
        let live = disk.live.iter().map(|(p, f)| (p.clone(), copy(f))).collect();
        let durable = disk.durable.iter().map(|(p, f)| (p.clone(), copy(f))).collect();
        SimIo { disk: Arc::new(Mutex::new(SimDisk { live, durable, dirs: disk.dirs.clone() })) }
    }

    /// Bytes of a file as the running system sees them (for byte surgery in tests).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = lock(&self.disk);
        disk.live.get(path).map(|f| lock(&f.data).current.clone())
    }
}

impl Io for SimIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        for a in dir.ancestors() {
            disk.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = lock(&self.disk);
        if !disk.dirs.contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(disk
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut disk = lock(&self.disk);
        let parent = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
        if !disk.dirs.contains(parent) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let file = match (disk.live.get(path).cloned(), mode) {
            (Some(_), OpenMode::CreateNew) => return Err(io::ErrorKind::AlreadyExists.into()),
            (Some(f), OpenMode::Existing) => f,
            (Some(f), OpenMode::CreateTruncate) => {
                lock(&f.data).current.clear();
                f
            }
            (None, OpenMode::Existing) => return Err(io::ErrorKind::NotFound.into()),
            (None, _) => {
                let f = Arc::new(SimFile::default());
                disk.live.insert(path.to_path_buf(), f.clone());
                f
            }
        };
        Ok(Arc::new(SimHandle(file)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.live.remove(path).map(|_| ()).ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = lock(&self.disk);
        let SimDisk { live, durable, .. } = &mut *disk;
        durable.retain(|p, _| p.parent() != Some(dir));
        for (p, f) in live.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            durable.insert(p.clone(), f.clone());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SimHandle(Arc<SimFile>);

impl IoFile for SimHandle {
    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.0.data).current.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let d = lock(&self.0.data);
        let start = usize::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?.min(d.current.len());
        let n = buf.len().min(d.current.len() - start);
        buf[..n].copy_from_slice(&d.current[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut d = lock(&self.0.data);
        let start = usize::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
        if d.current.len() < start + buf.len() {
            d.current.resize(start + buf.len(), 0);
        }
        d.current[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut d = lock(&self.0.data);
        d.synced = d.current.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        lock(&self.0.data).current.resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_crash_keeps_only_synced_state() {
        let io = SimIo::new();
        let dir = Path::new("/d");
        io.create_dir_all(dir).expect("mkdir");
        let a = io.open(&dir.join("a"), OpenMode::CreateNew).expect("create a");
        a.write_all_at(b"hello", 0).expect("write");
        a.sync_data().expect("sync");
        io.sync_dir(dir).expect("sync dir");
        a.write_all_at(b" world", 5).expect("write");
        let b = io.open(&dir.join("b"), OpenMode::CreateNew).expect("create b");
        b.write_all_at(b"x", 0).expect("write");
        b.sync_data().expect("sync b");
        io.crash(None);
        assert_eq!(io.list_dir(dir).expect("ls"), vec!["a".to_string()], "b was never dir-synced");
        assert_eq!(io.read_file(&dir.join("a")).expect("a"), b"hello");
    }

    #[test]
    fn sim_removal_without_dir_sync_is_undone() {
        let io = SimIo::new();
        let dir = Path::new("/d");
        io.create_dir_all(dir).expect("mkdir");
        let a = io.open(&dir.join("a"), OpenMode::CreateNew).expect("create");
        a.sync_data().expect("sync");
        io.sync_dir(dir).expect("sync dir");
        io.remove_file(&dir.join("a")).expect("rm");
        io.crash(None);
        assert_eq!(io.list_dir(dir).expect("ls"), vec!["a".to_string()]);
    }

    #[test]
    fn sim_crash_keeps_synced_bytes_and_any_subset_of_unsynced_pages() {
        let synced: Vec<u8> = (0..3 * PAGE + 100).map(|i| (i % 251) as u8 | 1).collect();
        let mut current = synced.clone();
        current.extend((0..6 * PAGE).map(|i| (i % 13) as u8 | 0x80));
        let mut seen_gap_then_page = false;
        for seed in 1..200u64 {
            let mut rng = seed;
            let mut next = move || {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                rng >> 33
            };
            let out = mix_pages(&synced, &current, &mut next);
            assert!(out.len() == synced.len() || out.len() == current.len());
            assert_eq!(&out[..synced.len()], &synced[..], "seed {seed}: synced bytes must survive");
            let pages: Vec<bool> = out[synced.len()..].chunks(PAGE).map(|p| p.iter().any(|&b| b != 0)).collect();
            if let Some(first_gap) = pages.iter().position(|&kept| !kept) {
                seen_gap_then_page |= pages[first_gap..].iter().any(|&kept| kept);
            }
        }
        assert!(seen_gap_then_page, "some crash must persist a later page after a lost one");
    }

    #[test]
    fn faulty_io_fails_after_n_and_stays_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FaultyIo::new(Arc::new(StdIo));
        let f = io.open(&dir.path().join("f"), OpenMode::CreateNew).expect("create");
        io.fail_after(FaultKind::Write, 1, true);
        f.write_all_at(b"ok", 0).expect("first write succeeds");
        assert!(f.write_all_at(b"abcd", 2).is_err());
        assert!(f.write_all_at(b"z", 0).is_err(), "faults are sticky");
        assert!(io.triggered());
        assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"okab", "torn write kept half");
    }

    #[test]
    fn read_vec_at_reads_exactly_the_range_and_refuses_past_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sim = SimIo::new();
        sim.create_dir_all(Path::new("/d")).expect("sim dir");
        for (io, path) in [(&StdIo as &dyn Io, dir.path().join("f")), (&sim as &dyn Io, PathBuf::from("/d/f"))] {
            let f = io.open(&path, OpenMode::CreateNew).expect("create");
            f.write_all_at(&content, 0).expect("write");
            for (pos, len) in [(0, 0), (0, 1), (7, 4096), (1, 299_999), (0, 300_000), (123_456, 100_000)] {
                let got = f.read_vec_at(len, pos as u64).expect("in range");
                assert_eq!(got, &content[pos..pos + len], "{path:?} at {pos}, {len} bytes");
            }
            let err = f.read_vec_at(10, 299_995).expect_err("5 bytes past the end");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{path:?}");
        }
    }

    #[test]
    fn read_vec_at_cached_reads_what_the_page_cache_holds_and_declines_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("f");
        let f = StdIo.open(&path, OpenMode::CreateNew).expect("create");
        f.write_all_at(&content, 0).expect("write");
        for (pos, len) in [(0, 1), (7, 4096), (0, 300_000), (123_456, 100_000)] {
            let got = f.read_vec_at_cached(len, pos as u64).expect("read").expect("just written: cached");
            assert_eq!(got, &content[pos..pos + len], "at {pos}, {len} bytes");
        }
        let err = f.read_vec_at_cached(10, 299_995).expect_err("5 bytes past the end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // Synced pages are clean, so DONTNEED evicts them: reading now would wait for the disk.
        f.sync_data().expect("sync");
        let file = File::open(&path).expect("open");
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        assert_eq!(f.read_vec_at_cached(4096, 0).expect("read"), None, "evicted pages are not read inline");
        assert_eq!(f.read_vec_at(4096, 0).expect("blocking read"), &content[..4096]);
        // Simulated files never read inline: their faults are injected on the blocking path.
        let sim = SimIo::new();
        sim.create_dir_all(Path::new("/d")).expect("sim dir");
        let g = sim.open(Path::new("/d/f"), OpenMode::CreateNew).expect("create");
        g.write_all_at(&content, 0).expect("write");
        assert_eq!(g.read_vec_at_cached(10, 0).expect("read"), None);
    }
}
