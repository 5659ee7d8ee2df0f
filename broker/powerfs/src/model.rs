//! The filesystem as a power cut sees it: every file has a *live* content
//! (what reads return) and a *durable* content (what survives a power loss);
//! every directory has live and durable entries.
//!
//! Invariants:
//! - `fsync`/`fdatasync` of a file (FUSE_FSYNC) copies its unsynced pages
//!   and its size to the durable content; nothing else does. `flush` (every
//!   `close`) does not, and `sync_file_range` never reaches a FUSE
//!   filesystem at all.
//! - Creating, unlinking, renaming, `mkdir` and `rmdir` change only the live
//!   entries of the directories involved; the entries become durable when
//!   that directory is fsynced (FUSE_FSYNCDIR). A file whose data was
//!   fsynced but whose directory entry was not is gone after a power loss.
//! - [`Model::power_loss`] replaces everything live by its durable state
//!   (optionally keeping a seeded random subset of the unsynced 4 KiB pages,
//!   out of order, and of the unsynced directories), then forgets every
//!   node no durable entry reaches from the root.
//! - Inode numbers are never reused, so a kernel that still remembers an
//!   inode from before a power loss gets `ENOENT`, never another file.
//! - File attributes other than the size (mode, owner, times) are durable at
//!   once: nothing in the broker depends on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;
/// The unit of out-of-order persistence in [`LossMode::KeepRandomPages`].
pub const PAGE_BYTES: u64 = 4096;

/// What a power loss keeps of the state that was not made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossMode {
    /// Every unsynced write and every un-dirsynced entry change is lost.
    DropUnsynced,
    /// Like a disk that wrote some of its cache before the power went: each
    /// unsynced 4 KiB page is kept with probability 1/2 (independently, so
    /// later pages can survive when earlier ones do not), a file's size is
    /// either its durable or its live size, and each directory with unsynced
    /// entry changes keeps all of them or none. Deterministic for a seed.
    KeepRandomPages {
        /// Seed of the choice.
        seed: u64,
    },
}

/// What a power loss discarded and kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Files whose live content differed from their durable content.
    pub files_with_unsynced_data: usize,
    /// Unsynced pages discarded.
    pub pages_lost: usize,
    /// Unsynced pages kept ([`LossMode::KeepRandomPages`] only).
    pub pages_kept: usize,
    /// Directories whose unsynced entry changes were discarded.
    pub dirs_reverted: usize,
    /// Directories whose unsynced entry changes were kept
    /// ([`LossMode::KeepRandomPages`] only).
    pub dirs_kept: usize,
    /// Nodes forgotten because no durable entry reaches them.
    pub nodes_forgotten: usize,
}

/// Counters of the durability-relevant calls the filesystem served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// FUSE_WRITE calls.
    pub writes: u64,
    /// FUSE_FSYNC calls (fsync and fdatasync) on files.
    pub fsyncs: u64,
    /// FUSE_FSYNCDIR calls.
    pub dir_fsyncs: u64,
    /// Writes refused with `ENOSPC` by the capacity limit.
    pub enospc: u64,
    /// Power losses so far.
    pub power_losses: u64,
}

/// A failed operation, as the errno the kernel passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// `ENOENT`
    NotFound,
    /// `EEXIST`
    Exists,
    /// `ENOTDIR`
    NotDir,
    /// `EISDIR`
    IsDir,
    /// `ENOTEMPTY`
    NotEmpty,
    /// `ENOSPC`
    NoSpace,
    /// `EINVAL`
    Invalid,
}

/// Result of a model operation.
pub type FsResult<T> = Result<T, FsError>;

/// The kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Attributes as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Live size in bytes (entries for a directory).
    pub size: u64,
    /// Live links (0 for an unlinked file that is still open).
    pub nlink: u32,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last data change.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

#[derive(Debug)]
struct File {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Pages whose live bytes may differ from the durable ones.
    dirty: BTreeSet<u64>,
    /// Live directory entries naming this file.
    nlink: u32,
    /// Open handles (FUSE_OPEN/CREATE minus FUSE_RELEASE).
    open: u32,
}

#[derive(Debug)]
struct Dir {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    /// The live parent, for `..`.
    parent: u64,
}

impl Dir {
    fn synced(&self) -> bool {
        self.live == self.durable
    }
}

#[derive(Debug)]
enum Body {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
struct Node {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self { body, perm, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

/// The whole filesystem.
#[derive(Debug)]
pub struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    capacity_bytes: Option<u64>,
    stats: Stats,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty filesystem: a root directory whose (empty) entries are durable.
    pub fn new() -> Self {
        let root =
            Node::new(Body::Dir(Dir { live: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT }), 0o755, 0, 0);
        Self { nodes: HashMap::from([(ROOT, root)]), next_ino: ROOT + 1, capacity_bytes: None, stats: Stats::default() }
    }

    /// Call counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Makes writes fail with `ENOSPC` once live file data would exceed
    /// `bytes` (`None`: no limit).
    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity_bytes = bytes;
    }

    /// Bytes of live file data that count against the capacity: files that
    /// are linked or still open.
    pub fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| match &n.body {
                Body::File(f) if f.nlink > 0 || f.open > 0 => Some(f.live.len() as u64),
                _ => None,
            })
            .sum()
    }

    /// The capacity limit, if any.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity_bytes
    }

    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: u64) -> FsResult<&Dir> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> FsResult<&mut Dir> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn file_mut(&mut self, ino: u64) -> FsResult<&mut File> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// A node's attributes.
    pub fn attr(&self, ino: u64) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let (kind, size, nlink) = match &n.body {
            Body::File(f) => (Kind::File, f.live.len() as u64, f.nlink),
            Body::Dir(d) => (Kind::Dir, d.live.len() as u64, 2),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            nlink,
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    /// The live entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(FsError::NotFound)?;
        self.attr(ino)
    }

    /// Live entries of a directory: `.`, `..`, then the names in order.
    pub fn entries(&self, dir: u64) -> FsResult<Vec<(u64, Kind, OsString)>> {
        let d = self.dir(dir)?;
        let mut out = vec![(dir, Kind::Dir, OsString::from(".")), (d.parent, Kind::Dir, OsString::from(".."))];
        for (name, &ino) in &d.live {
            let kind = match self.node(ino)?.body {
                Body::File(_) => Kind::File,
                Body::Dir(_) => Kind::Dir,
            };
            out.push((ino, kind, name.clone()));
        }
        Ok(out)
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// Creates an empty file (live entry only); `open` counts one open handle.
    pub fn create_file(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
        open: bool,
    ) -> FsResult<Attr> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(FsError::Exists);
        }
        let file =
            File { live: Vec::new(), durable: Vec::new(), dirty: BTreeSet::new(), nlink: 1, open: u32::from(open) };
        let ino = self.alloc(Node::new(Body::File(file), perm, uid, gid));
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch_dir(parent);
        self.attr(ino)
    }

    /// Creates an empty directory (live entry only).
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, perm: u16, uid: u32, gid: u32) -> FsResult<Attr> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(FsError::Exists);
        }
        let dir = Dir { live: BTreeMap::new(), durable: BTreeMap::new(), parent };
        let ino = self.alloc(Node::new(Body::Dir(dir), perm, uid, gid));
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch_dir(parent);
        self.attr(ino)
    }

    fn touch_dir(&mut self, ino: u64) {
        if let Ok(n) = self.node_mut(ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// Removes a file's live entry.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> FsResult<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(FsError::NotFound)?;
        self.file_mut(ino)?.nlink -= 1;
        self.dir_mut(parent)?.live.remove(name);
        self.touch_dir(parent);
        Ok(())
    }

    /// Removes an empty directory's live entry.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> FsResult<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(FsError::NotFound)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.touch_dir(parent);
        Ok(())
    }

    /// Moves a live entry, replacing the target (`no_replace`: fail if it exists).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(FsError::NotFound)?;
        let source_is_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        if let Some(&target) = self.dir(new_parent)?.live.get(new_name) {
            if no_replace {
                return Err(FsError::Exists);
            }
            if target == ino {
                return Ok(());
            }
            match (&self.node(target)?.body, source_is_dir) {
                (Body::Dir(t), true) if !t.live.is_empty() => return Err(FsError::NotEmpty),
                (Body::Dir(_), true) => {}
                (Body::Dir(_), false) => return Err(FsError::IsDir),
                (Body::File(_), true) => return Err(FsError::NotDir),
                (Body::File(_), false) => self.file_mut(target)?.nlink -= 1,
            }
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?.live.insert(new_name.to_os_string(), ino);
        if source_is_dir {
            self.dir_mut(ino)?.parent = new_parent;
        }
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        Ok(())
    }

    /// Counts an open handle of a file.
    pub fn open(&mut self, ino: u64) -> FsResult<()> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => f.open += 1,
            Body::Dir(_) => {}
        }
        Ok(())
    }

    /// Drops an open handle; an unlinked file nothing durable names is forgotten.
    pub fn release(&mut self, ino: u64) {
        if let Some(Node { body: Body::File(f), .. }) = self.nodes.get_mut(&ino) {
            // A release from a process that died before a power loss can
            // arrive after it, when the count was already reset.
            f.open = f.open.saturating_sub(1);
        }
    }

    /// Live bytes `[offset, offset + size)`.
    pub fn read(&mut self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = self.file_mut(ino)?;
        let start = usize::try_from(offset).map_err(|_| FsError::Invalid)?.min(f.live.len());
        let end = start.saturating_add(size as usize).min(f.live.len());
        Ok(f.live[start..end].to_vec())
    }

    /// Writes live bytes; durable only after [`Model::fsync`].
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::Invalid)?;
        let end_index = usize::try_from(end).map_err(|_| FsError::Invalid)?;
        if let Some(cap) = self.capacity_bytes {
            let current = match &self.node(ino)?.body {
                Body::File(f) => f.live.len() as u64,
                Body::Dir(_) => return Err(FsError::IsDir),
            };
            if end > current && self.used_bytes() + (end - current) > cap {
                self.stats.enospc += 1;
                return Err(FsError::NoSpace);
            }
        }
        self.stats.writes += 1;
        let f = self.file_mut(ino)?;
        if f.live.len() < end_index {
            mark_dirty(&mut f.dirty, f.live.len() as u64, end);
            f.live.resize(end_index, 0);
        }
        f.live[offset as usize..end_index].copy_from_slice(data);
        mark_dirty(&mut f.dirty, offset, end);
        let n = self.node_mut(ino)?;
        let now = SystemTime::now();
        n.mtime = now;
        n.ctime = now;
        u32::try_from(data.len()).map_err(|_| FsError::Invalid)
    }

    /// Sets the live size (`truncate`, `ftruncate`, `fallocate` growth).
    pub fn set_size(&mut self, ino: u64, size: u64) -> FsResult<()> {
        let new_len = usize::try_from(size).map_err(|_| FsError::Invalid)?;
        if let Some(cap) = self.capacity_bytes {
            let current = match &self.node(ino)?.body {
                Body::File(f) => f.live.len() as u64,
                Body::Dir(_) => return Err(FsError::IsDir),
            };
            if size > current && self.used_bytes() + (size - current) > cap {
                self.stats.enospc += 1;
                return Err(FsError::NoSpace);
            }
        }
        let f = self.file_mut(ino)?;
        let old = f.live.len() as u64;
        mark_dirty(&mut f.dirty, old.min(size), old.max(size));
        f.live.resize(new_len, 0);
        let n = self.node_mut(ino)?;
        let now = SystemTime::now();
        n.mtime = now;
        n.ctime = now;
        Ok(())
    }

    /// Changes attributes that are durable at once.
    pub fn set_meta(&mut self, ino: u64, perm: Option<u16>, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
        let n = self.node_mut(ino)?;
        n.perm = perm.unwrap_or(n.perm);
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        n.ctime = SystemTime::now();
        Ok(())
    }

    /// Sets times (durable at once).
    pub fn set_times(&mut self, ino: u64, atime: Option<SystemTime>, mtime: Option<SystemTime>) -> FsResult<()> {
        let n = self.node_mut(ino)?;
        n.atime = atime.unwrap_or(n.atime);
        n.mtime = mtime.unwrap_or(n.mtime);
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its live content and size become
    /// durable. For a directory, the same as [`Model::fsync_dir`].
    pub fn fsync(&mut self, ino: u64) -> FsResult<()> {
        if let Body::Dir(_) = self.node(ino)?.body {
            return self.fsync_dir(ino);
        }
        self.stats.fsyncs += 1;
        let f = self.file_mut(ino)?;
        persist_pages(f, f.live.len(), |_| true);
        Ok(())
    }

    /// `fsync` of a directory: its live entries become durable.
    pub fn fsync_dir(&mut self, ino: u64) -> FsResult<()> {
        self.stats.dir_fsyncs += 1;
        let d = self.dir_mut(ino)?;
        d.durable = d.live.clone();
        self.collect();
        Ok(())
    }

    /// Forgets nodes that nothing can reach any more: no live or durable
    /// entry names them and no handle holds them open.
    fn collect(&mut self) -> usize {
        let mut reached = BTreeSet::from([ROOT]);
        let mut todo = vec![ROOT];
        for (&ino, n) in &self.nodes {
            let open = matches!(&n.body, Body::File(f) if f.open > 0);
            if open && reached.insert(ino) {
                todo.push(ino);
            }
        }
        while let Some(ino) = todo.pop() {
            if let Some(Node { body: Body::Dir(d), .. }) = self.nodes.get(&ino) {
                for &child in d.live.values().chain(d.durable.values()) {
                    if reached.insert(child) {
                        todo.push(child);
                    }
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains(ino));
        before - self.nodes.len()
    }

    /// Loses power: every node goes back to its durable state (see
    /// [`LossMode`]), open handles are gone, and unreachable nodes are
    /// forgotten. Call it only when no process is using the filesystem.
    pub fn power_loss(&mut self, mode: LossMode) -> LossReport {
        self.stats.power_losses += 1;
        let mut rng = match mode {
            LossMode::DropUnsynced => None,
            LossMode::KeepRandomPages { seed } => Some(Rng::new(seed)),
        };
        let mut report = LossReport::default();
        // Visit nodes in inode order so that a seed always makes the same choices.
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(node) = self.nodes.get_mut(&ino) else { continue };
            match &mut node.body {
                Body::File(f) => {
                    f.open = 0;
                    if f.dirty.is_empty() && f.live.len() == f.durable.len() {
                        continue;
                    }
                    report.files_with_unsynced_data += 1;
                    match rng.as_mut() {
                        None => {
                            report.pages_lost += f.dirty.len();
                            f.dirty.clear();
                            f.live = f.durable.clone();
                        }
                        Some(rng) => {
                            let len = if rng.coin() { f.live.len() } else { f.durable.len() };
                            let before = f.dirty.len();
                            let keep: BTreeSet<u64> = f.dirty.iter().copied().filter(|_| rng.coin()).collect();
                            persist_pages(f, len, |page| keep.contains(&page));
                            report.pages_kept += keep.len();
                            report.pages_lost += before - keep.len();
                            f.dirty.clear();
                            f.live = f.durable.clone();
                        }
                    }
                }
                Body::Dir(d) => {
                    if d.synced() {
                        continue;
                    }
                    if rng.as_mut().is_some_and(Rng::coin) {
                        report.dirs_kept += 1;
                        d.durable = d.live.clone();
                    } else {
                        report.dirs_reverted += 1;
                        d.live = d.durable.clone();
                    }
                }
            }
        }
        report.nodes_forgotten = self.collect();
        self.relink();
        report
    }

    /// After a power loss: recounts file links and directory parents from
    /// the (now live) entries.
    fn relink(&mut self) {
        let mut links: HashMap<u64, u32> = HashMap::new();
        let mut parents: HashMap<u64, u64> = HashMap::new();
        for (&ino, n) in &self.nodes {
            if let Body::Dir(d) = &n.body {
                for &child in d.live.values() {
                    *links.entry(child).or_default() += 1;
                    parents.insert(child, ino);
                }
            }
        }
        for (ino, n) in &mut self.nodes {
            match &mut n.body {
                Body::File(f) => f.nlink = links.get(ino).copied().unwrap_or(0),
                Body::Dir(d) => d.parent = parents.get(ino).copied().unwrap_or(ROOT),
            }
        }
    }
}

/// Marks the pages overlapping `[start, end)` unsynced.
fn mark_dirty(dirty: &mut BTreeSet<u64>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    dirty.extend(start / PAGE_BYTES..end.div_ceil(PAGE_BYTES));
}

/// Makes the file's durable size `len` and copies the chosen dirty pages
/// (clipped to `len`) from live to durable; the chosen pages are clean after.
fn persist_pages(f: &mut File, len: usize, chosen: impl Fn(u64) -> bool) {
    f.durable.resize(len, 0);
    let mut clean = Vec::new();
    for &page in &f.dirty {
        if !chosen(page) {
            continue;
        }
        let start = (page * PAGE_BYTES) as usize;
        let end = (start + PAGE_BYTES as usize).min(len);
        if start < end {
            // Bytes past the live end were truncated away: they are zeros.
            let live_end = end.min(f.live.len());
            if start < live_end {
                f.durable[start..live_end].copy_from_slice(&f.live[start..live_end]);
            }
            f.durable[live_end.max(start)..end].fill(0);
        }
        clean.push(page);
    }
    if len == f.live.len() {
        for page in clean {
            f.dirty.remove(&page);
        }
    }
}

/// xorshift64*: a small seeded generator, so that a failing seed replays.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn coin(&mut self) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn content(m: &mut Model, parent: u64, file: &str) -> Option<Vec<u8>> {
        let ino = m.lookup(parent, name(file)).ok()?.ino;
        Some(m.read(ino, 0, u32::MAX).expect("read"))
    }

    #[test]
    fn an_unsynced_write_vanishes_and_a_synced_one_stays() {
        let mut m = Model::new();
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, true).expect("create").ino;
        m.fsync_dir(ROOT).expect("dirsync");
        m.write(f, 0, b"synced").expect("write");
        m.fsync(f).expect("fsync");
        m.write(f, 6, b"-lost").expect("write");
        m.write(f, 0, b"S").expect("overwrite");
        let r = m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, ROOT, "f").as_deref(), Some(&b"synced"[..]));
        assert_eq!((r.files_with_unsynced_data, r.pages_lost), (1, 1));
    }

    #[test]
    fn a_created_file_needs_its_directory_synced() {
        let mut m = Model::new();
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, true).expect("create").ino;
        m.write(f, 0, b"data").expect("write");
        m.fsync(f).expect("fsync");
        m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, ROOT, "f"), None, "fsync of the file does not make its name durable");
        assert!(m.attr(f).is_err(), "the node is forgotten");
    }

    #[test]
    fn a_durable_name_without_synced_data_is_an_empty_file() {
        let mut m = Model::new();
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, true).expect("create").ino;
        m.write(f, 0, b"data").expect("write");
        m.fsync_dir(ROOT).expect("dirsync");
        m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, ROOT, "f"), Some(Vec::new()));
    }

    #[test]
    fn unlink_and_rename_are_undone_without_a_directory_sync() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT, name("d"), 0o755, 0, 0).expect("mkdir").ino;
        let a = m.create_file(d, name("a"), 0o644, 0, 0, false).expect("create").ino;
        m.write(a, 0, b"A").expect("write");
        m.fsync(a).expect("fsync");
        let b = m.create_file(d, name("b"), 0o644, 0, 0, false).expect("create").ino;
        m.write(b, 0, b"B").expect("write");
        m.fsync(b).expect("fsync");
        m.fsync_dir(d).expect("dirsync d");
        m.fsync_dir(ROOT).expect("dirsync root");
        m.rename(d, name("a"), d, name("b"), false).expect("rename over b");
        m.unlink(d, name("b")).expect("unlink");
        assert_eq!(content(&mut m, d, "b"), None);
        m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, d, "a").as_deref(), Some(&b"A"[..]), "rename undone");
        assert_eq!(content(&mut m, d, "b").as_deref(), Some(&b"B"[..]), "unlink undone");
    }

    #[test]
    fn a_synced_rename_replaces_atomically() {
        let mut m = Model::new();
        let a = m.create_file(ROOT, name("tmp"), 0o644, 0, 0, false).expect("create").ino;
        m.write(a, 0, b"new").expect("write");
        m.fsync(a).expect("fsync");
        let b = m.create_file(ROOT, name("cur"), 0o644, 0, 0, false).expect("create").ino;
        m.write(b, 0, b"old").expect("write");
        m.fsync(b).expect("fsync");
        m.fsync_dir(ROOT).expect("dirsync");
        m.rename(ROOT, name("tmp"), ROOT, name("cur"), false).expect("rename");
        m.fsync_dir(ROOT).expect("dirsync");
        m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, ROOT, "cur").as_deref(), Some(&b"new"[..]));
        assert_eq!(content(&mut m, ROOT, "tmp"), None);
        assert!(m.attr(b).is_err(), "the replaced file is forgotten");
    }

    #[test]
    fn an_unsynced_mkdir_takes_its_synced_contents_with_it() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT, name("d"), 0o755, 0, 0).expect("mkdir").ino;
        let f = m.create_file(d, name("f"), 0o644, 0, 0, false).expect("create").ino;
        m.write(f, 0, b"x").expect("write");
        m.fsync(f).expect("fsync");
        m.fsync_dir(d).expect("dirsync d");
        m.power_loss(LossMode::DropUnsynced);
        assert!(m.lookup(ROOT, name("d")).is_err());
    }

    #[test]
    fn truncation_is_durable_only_after_fsync() {
        let mut m = Model::new();
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, false).expect("create").ino;
        m.fsync_dir(ROOT).expect("dirsync");
        m.write(f, 0, &[7; 10_000]).expect("write");
        m.fsync(f).expect("fsync");
        m.set_size(f, 10).expect("truncate");
        m.power_loss(LossMode::DropUnsynced);
        assert_eq!(content(&mut m, ROOT, "f"), Some(vec![7; 10_000]));
        m.set_size(f, 10).expect("truncate");
        m.set_size(f, 9000).expect("extend");
        m.fsync(f).expect("fsync");
        m.power_loss(LossMode::DropUnsynced);
        let mut expected = vec![7; 10];
        expected.resize(9000, 0);
        assert_eq!(content(&mut m, ROOT, "f"), Some(expected), "the truncated range reads as zeros");
    }

    #[test]
    fn random_pages_keep_a_subset_out_of_order_and_replay_by_seed() {
        let run = |seed: u64| {
            let mut m = Model::new();
            let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, false).expect("create").ino;
            m.fsync_dir(ROOT).expect("dirsync");
            for page in 0..64u8 {
                m.write(f, u64::from(page) * PAGE_BYTES, &[page + 1; PAGE_BYTES as usize]).expect("write");
            }
            let r = m.power_loss(LossMode::KeepRandomPages { seed });
            (r, content(&mut m, ROOT, "f").expect("file"))
        };
        let (report, data) = run(42);
        assert_eq!(run(42), (report, data.clone()), "a seed replays");
        assert_eq!(report.pages_kept + report.pages_lost, 64);
        assert!(report.pages_kept > 0 && report.pages_lost > 0, "{report:?}");
        // Whatever size survived, each page is either all of its write or all zeros.
        let pages: Vec<bool> = data
            .chunks(PAGE_BYTES as usize)
            .enumerate()
            .map(|(i, p)| {
                let kept = p.iter().all(|&b| b == i as u8 + 1);
                assert!(kept || p.iter().all(|&b| b == 0), "page {i} is torn");
                kept
            })
            .collect();
        let holes_before_kept = pages.windows(2).any(|w| !w[0] && w[1]);
        let sizes: BTreeSet<usize> = (0..32).map(|s| run(s).1.len()).collect();
        assert_eq!(sizes, BTreeSet::from([0, 64 * PAGE_BYTES as usize]), "the size is the durable or the live one");
        let out_of_order = (0..32).any(|s| {
            let d = run(s).1;
            d.chunks(PAGE_BYTES as usize).collect::<Vec<_>>().windows(2).any(|w| w[0][0] == 0 && w[1][0] != 0)
        });
        assert!(holes_before_kept || out_of_order, "a later page survives where an earlier one did not");
    }

    #[test]
    fn capacity_refuses_growth_with_enospc() {
        let mut m = Model::new();
        m.set_capacity(Some(10));
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, true).expect("create").ino;
        assert_eq!(m.write(f, 0, &[1; 8]), Ok(8));
        assert_eq!(m.write(f, 8, &[1; 3]), Err(FsError::NoSpace));
        assert_eq!(m.write(f, 0, &[2; 8]), Ok(8), "overwriting needs no space");
        m.unlink(ROOT, name("f")).expect("unlink");
        m.release(f);
        let g = m.create_file(ROOT, name("g"), 0o644, 0, 0, true).expect("create").ino;
        assert_eq!(m.write(g, 0, &[1; 10]), Ok(10), "an unlinked, closed file frees its space");
        assert_eq!(m.stats().enospc, 1);
    }

    #[test]
    fn an_open_unlinked_file_stays_readable() {
        let mut m = Model::new();
        let f = m.create_file(ROOT, name("f"), 0o644, 0, 0, true).expect("create").ino;
        m.write(f, 0, b"keep").expect("write");
        m.unlink(ROOT, name("f")).expect("unlink");
        m.fsync_dir(ROOT).expect("dirsync collects");
        assert_eq!(m.read(f, 0, 10).expect("read"), b"keep");
        m.release(f);
        m.fsync_dir(ROOT).expect("dirsync collects");
        assert!(m.attr(f).is_err());
    }
}
