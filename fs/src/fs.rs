//! The FUSE file system: a read-only view of every store path the server
//! knows, whose file bytes are fetched chunk by chunk on first access.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use futures::TryStreamExt;
use lazix_castore::digest::DigestKeyBuildHasher;
use lazix_castore::directory::Directory;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::read::BlobLayout;
use lazix_castore::{B3Digest, Node, Store, StoreError};

use crate::fetcher::{ChunkFetcher, DiskCopy};
use crate::inodes::{Inodes, ROOT_INO, STATS_INO};
use crate::readahead::ReadAhead;
use crate::whole_files::{WholeFileWriter, WholeFiles, MIN_WHOLE_FILE};

/// Name of the synthetic stats file in the root (never a store path name:
/// those cannot start with a dot).
pub const STATS_NAME: &str = ".lazix-stats";
/// Store contents never change: the kernel may cache them for good.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// The root's listing (the set of store paths) may change: the kernel
/// keeps it at most this long. The root's mtime moves on every such step,
/// which makes the kernel drop its cached root listing.
const ROOT_LISTING_STEP: Duration = Duration::from_secs(5);
/// How long a listing computed for readdir is reused for the next offsets.
const LISTING_TTL: Duration = Duration::from_secs(10);
/// Files up to this size are fetched whole when opened, in one request.
const SMALL_FILE: u64 = 1024 * 1024;
/// How far a whole-file copy must have come before the frames of its
/// file stop going to the disk cache (see [`DiskCopy::Skip`]).
const FRAMES_KEPT_BEFORE_COPY: u64 = 4 * 1024 * 1024;
/// How far around a read its chunks' frame may reach: fetches under way
/// there are awaited. Frames never span files, a small file is at most
/// this big, and a large file's frames hold at most this much of it.
const NEIGHBOURHOOD: u64 = lazix_castore::frame::OWN_FRAME_TARGET;

/// How the mount behaves.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Owner of every file.
    pub uid: u32,
    /// Group of every file.
    pub gid: u32,
    /// Whether listing the root streams every store path.
    pub list_root: bool,
    /// Bound on every server request; a read fails with EIO after it.
    pub timeout: Duration,
}

/// A file's open handles. The kernel reads an inode either through the
/// mount (its page cache) or from a backing file (passthrough), never both
/// at once: while handles are open, new ones follow the same way.
#[derive(Default)]
struct OpenInode {
    handles: u32,
    /// The backing file every handle uses, in passthrough mode.
    backing: Option<Arc<BackingId>>,
}

/// A directory's listing: (name, node) per entry, stable for offsets.
type Listing = Arc<Vec<(Bytes, Node)>>;

/// The file system. See the module docs.
pub struct LazyFs {
    rt: tokio::runtime::Handle,
    store: Store,
    fetcher: Arc<ChunkFetcher>,
    cfg: MountConfig,
    inodes: Mutex<Inodes>,
    directories: moka::sync::Cache<B3Digest, Arc<Directory>, DigestKeyBuildHasher>,
    chunk_lists: moka::sync::Cache<B3Digest, Arc<BlobLayout>, DigestKeyBuildHasher>,
    /// Read-ahead state, by file handle.
    reads: Mutex<HashMap<u64, ReadAhead>>,
    /// Listings by directory inode, for the readdir calls of one pass.
    listings: moka::sync::Cache<u64, Listing>,
    /// Whole-file copies (with a cache folder).
    whole: Option<Arc<WholeFiles>>,
    /// Whether the kernel takes backing files (passthrough).
    passthrough: bool,
    /// Copies being filled by reads, by inode.
    writers: Mutex<HashMap<u64, Arc<Mutex<WholeFileWriter>>>>,
    /// Open files, by inode.
    open_files: Mutex<HashMap<u64, OpenInode>>,
    /// Tells the kernel to drop pages (set once mounted).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    next_fh: AtomicU64,
    /// Files whose bytes, read whole, did not hash to their digest (a wrong
    /// chunk list): every later read of them is EIO, also the kernel's
    /// retry of a failed readahead.
    disproved: moka::sync::Cache<B3Digest, (), DigestKeyBuildHasher>,
}

fn eio<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Errno + '_ {
    move |e| {
        tracing::warn!(error = %e, "{what}");
        Errno::EIO
    }
}

impl LazyFs {
    /// A file system over `store` (the server), reading chunks through
    /// `fetcher`, keeping files read whole in `whole`, running async work
    /// on `rt`.
    pub fn new(
        rt: tokio::runtime::Handle,
        store: Store,
        fetcher: Arc<ChunkFetcher>,
        whole: Option<Arc<WholeFiles>>,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
        cfg: MountConfig,
    ) -> Self {
        Self {
            rt,
            store,
            fetcher,
            cfg,
            inodes: Mutex::new(Inodes::new()),
            directories: moka::sync::Cache::builder()
                .max_capacity(64 * 1024 * 1024)
                .weigher(|_: &B3Digest, d: &Arc<Directory>| {
                    (d.encode().len() + 64).min(u32::MAX as usize) as u32
                })
                .build_with_hasher(DigestKeyBuildHasher::default()),
            chunk_lists: moka::sync::Cache::builder()
                .max_capacity(32 * 1024 * 1024)
                .weigher(|_: &B3Digest, l: &Arc<BlobLayout>| l.weight().min(u32::MAX as u64) as u32)
                .build_with_hasher(DigestKeyBuildHasher::default()),
            reads: Mutex::new(HashMap::new()),
            listings: moka::sync::Cache::builder()
                .max_capacity(4_000_000)
                .weigher(|_: &u64, l: &Listing| l.len().min(u32::MAX as usize) as u32 + 1)
                .time_to_live(LISTING_TTL)
                .build(),
            whole,
            passthrough: false,
            writers: Mutex::default(),
            open_files: Mutex::default(),
            notifier,
            next_fh: AtomicU64::new(1),
            disproved: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .build_with_hasher(DigestKeyBuildHasher::default()),
        }
    }

    /// Runs a server request with the configured timeout.
    fn remote<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Errno> {
        self.rt
            .block_on(async { tokio::time::timeout(self.cfg.timeout, fut).await })
            .map_err(eio("server did not answer in time"))?
            .map_err(|e| match e {
                StoreError::NotFound(_) => Errno::ENOENT,
                e => {
                    tracing::warn!(error = %e, "server request failed");
                    Errno::EIO
                }
            })
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size) = match node {
            Node::Directory { .. } => (FileType::Directory, 0o555, 0),
            Node::File {
                size, executable, ..
            } => (
                FileType::RegularFile,
                if *executable { 0o555 } else { 0o444 },
                *size,
            ),
            Node::Symlink { target } => (FileType::Symlink, 0o777, target.len() as u64),
        };
        self.make_attr(ino, kind, perm, size)
    }

    fn make_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
        // Nix's canonical timestamp: one second after the epoch.
        let t = UNIX_EPOCH + Duration::from_secs(1);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            blksize: 64 * 1024,
            flags: 0,
        }
    }

    fn stats_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.fetcher.stats.snapshot()).expect("json");
        v.push(b'\n');
        v
    }

    /// A directory, fetched with its whole subtree on a miss (one request
    /// answers every later lookup below it).
    fn directory(&self, digest: &B3Digest) -> Result<Arc<Directory>, Errno> {
        if let Some(d) = self.directories.get(digest) {
            return Ok(d);
        }
        let closure = self.remote(self.store.directories.get_closure(digest))?;
        let mut root = None;
        for dir in closure {
            let d = dir.digest();
            let dir = Arc::new(dir);
            if d == *digest {
                root = Some(dir.clone());
            }
            self.directories.insert(d, dir);
        }
        root.ok_or(Errno::EIO)
    }

    fn store_path_node(&self, name: &OsStr) -> Result<Node, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let path = StorePath::from_basename(name).map_err(|_| Errno::ENOENT)?;
        let info = self
            .remote(self.store.path_infos.get_path_info(path.digest()))?
            .ok_or(Errno::ENOENT)?;
        if info.store_path.basename() != name {
            return Err(Errno::ENOENT);
        }
        Ok(info.node)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<Node, Errno> {
        let node = self
            .inodes
            .lock()
            .expect("inodes")
            .get(parent)
            .ok_or(Errno::ENOENT)?;
        let Node::Directory { digest, .. } = node else {
            return Err(Errno::ENOTDIR);
        };
        let dir = self.directory(&digest)?;
        dir.entry(name.as_bytes()).ok_or(Errno::ENOENT)
    }

    /// The file's chunks, checked against it (see
    /// [`lazix_castore::read::layout`]); a list that does not fit is EIO.
    fn layout(&self, digest: &B3Digest, size: u64) -> Result<Arc<BlobLayout>, Errno> {
        if let Some(l) = self.chunk_lists.get(digest) {
            return Ok(l);
        }
        // A small file is one chunk: no round trip to ask.
        let answer = if BlobLayout::needs_lookup(size) {
            self.remote(self.store.blobs.get_blob_chunks(&[*digest]))?
                .into_iter()
                .next()
                .flatten()
        } else {
            None
        };
        let layout = BlobLayout::from_answer(*digest, size, answer).map_err(|e| {
            tracing::error!(error = %e, "refusing a chunk list");
            count_read_error(&self.fetcher);
            Errno::EIO
        })?;
        let layout = Arc::new(layout);
        self.chunk_lists.insert(*digest, layout.clone());
        Ok(layout)
    }

    /// Digests of the chunks covering `start..end`.
    fn covering(layout: &BlobLayout, start: u64, end: u64) -> Vec<B3Digest> {
        layout
            .pieces(start, end)
            .into_iter()
            .map(|p| p.chunk.digest)
            .collect()
    }

    /// The inode's whole-file copy under way, started by a read at offset
    /// 0 of a large enough file; `None` when the file is not being copied.
    fn whole_writer(
        &self,
        ino: u64,
        digest: &B3Digest,
        file_size: u64,
        offset: u64,
    ) -> Option<Arc<Mutex<WholeFileWriter>>> {
        let whole = self.whole.as_ref()?;
        if file_size < MIN_WHOLE_FILE {
            return None;
        }
        let mut writers = self.writers.lock().expect("writers");
        match writers.get(&ino) {
            Some(w) => Some(w.clone()),
            None if offset > 0 => None,
            None => {
                let w = Arc::new(Mutex::new(whole.writer(*digest, file_size)?));
                writers.insert(ino, w.clone());
                Some(w)
            }
        }
    }

    /// Hands bytes just read to the inode's whole-file copy; a complete
    /// copy is put in place.
    /// A whole copy that does not hash to the file's digest (a wrong chunk
    /// list) is EIO for the read that completed it.
    fn keep_whole(
        &self,
        ino: u64,
        writer: &Mutex<WholeFileWriter>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let written = writer.lock().expect("writer").write_at(offset, data);
        match written {
            Ok(false) => {}
            Ok(true) => {
                self.writers.lock().expect("writers").remove(&ino);
                crate::stats::Stats::add(&self.fetcher.stats.whole_files_kept, 1);
                // The kernel reads the copy from now on: the pages it cached
                // from the mount are dropped now, in the background, not at
                // the next open (which would wait for it). Not from this
                // thread: the read being answered holds some of them locked.
                if let Some(notifier) = self.notifier.get().cloned() {
                    std::thread::spawn(move || {
                        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!(error = %e, "a file read whole does not match its digest");
                self.writers.lock().expect("writers").remove(&ino);
                self.disproved
                    .insert(*writer.lock().expect("writer").digest(), ());
                count_read_error(&self.fetcher);
                // The pages the kernel cached from it are wrong too.
                if let Some(notifier) = self.notifier.get().cloned() {
                    std::thread::spawn(move || {
                        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                    });
                }
                return Err(Errno::EIO);
            }
            Err(e) => {
                tracing::debug!(error = %e, "not keeping a whole file");
                self.writers.lock().expect("writers").remove(&ino);
            }
        }
        Ok(())
    }

    /// The backing file for a new open of `ino`, if the kernel should read
    /// a kept copy itself: only when no handle reads it through the mount.
    fn backing_for(
        &self,
        reply: &ReplyOpen,
        ino: u64,
        digest: &B3Digest,
        size: u64,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough || size < MIN_WHOLE_FILE {
            return None;
        }
        if let Some(open) = self.open_files.lock().expect("open files").get(&ino) {
            if open.handles > 0 {
                return open.backing.clone();
            }
        }
        let copy = self.whole.as_ref()?.lookup(digest, size)?;
        match reply.open_backing(&copy) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::debug!(error = %e, "passthrough refused");
                None
            }
        }
    }

    /// Chunks of `layout` within [`NEIGHBOURHOOD`] of `start..end`, other
    /// than `these`: where the frames of `these` may also reach.
    fn neighbours(layout: &BlobLayout, start: u64, end: u64, these: &[B3Digest]) -> Vec<B3Digest> {
        Self::covering(
            layout,
            start.saturating_sub(NEIGHBOURHOOD),
            end.saturating_add(NEIGHBOURHOOD),
        )
        .into_iter()
        .filter(|d| !these.contains(d))
        .collect()
    }

    fn read_file(
        &self,
        ino: u64,
        fh: u64,
        digest: &B3Digest,
        file_size: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let end = (offset + size as u64).min(file_size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if self.disproved.contains_key(digest) {
            count_read_error(&self.fetcher);
            return Err(Errno::EIO);
        }
        let layout = self.layout(digest, file_size)?;
        let writer = self.whole_writer(ino, digest, file_size, offset);
        // A file being copied whole needs no frames on disk, except near
        // its start: a reader that only looks at the header (a mapped
        // library) ends the copy soon, and those frames must stay cached.
        let disk = match &writer {
            Some(w) if w.lock().expect("writer").copied() >= FRAMES_KEPT_BEFORE_COPY => {
                DiskCopy::Skip
            }
            _ => DiskCopy::Keep,
        };
        // Read-ahead: a window that grows while reads stay sequential.
        let ahead = self
            .reads
            .lock()
            .expect("reads")
            .entry(fh)
            .or_default()
            .record_read(offset..end, file_size);
        if let Some(range) = ahead {
            let ahead = Self::covering(&layout, range.start, range.end);
            let neighbours = Self::neighbours(&layout, range.start, range.end, &ahead);
            let _guard = self.rt.enter();
            self.fetcher.prefetch(ahead, neighbours, disk);
        }
        let needed = layout.pieces(offset, end);
        let digests: Vec<B3Digest> = needed.iter().map(|p| p.chunk.digest).collect();
        let neighbours = Self::neighbours(&layout, offset, end, &digests);
        let fetched = self.rt.block_on(self.fetcher.get_after_neighbours(
            &digests,
            &neighbours,
            disk,
        ));
        let datas = fetched.map_err(|e| {
            tracing::warn!(error = %e, "read failed");
            count_read_error(&self.fetcher);
            Errno::EIO
        })?;
        if datas.len() != needed.len() {
            tracing::error!(%digest, "the fetcher answered {} chunks for {}", datas.len(), needed.len());
            count_read_error(&self.fetcher);
            return Err(Errno::EIO);
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (piece, data) in needed.iter().zip(datas) {
            // Verified bytes of the chunk named, but of another length than
            // the list says: the list lies (a reader never slices past).
            if data.len() as u64 != piece.chunk.size {
                tracing::error!(
                    %digest,
                    chunk = %piece.chunk.digest,
                    "chunk has {} bytes, its list says {}",
                    data.len(),
                    piece.chunk.size
                );
                count_read_error(&self.fetcher);
                return Err(Errno::EIO);
            }
            out.extend_from_slice(&data[piece.skip..piece.skip + piece.take]);
        }
        crate::stats::Stats::add(&self.fetcher.stats.served_bytes, out.len() as u64);
        crate::stats::Stats::add(&self.fetcher.stats.reads, 1);
        if let Some(writer) = writer {
            self.keep_whole(ino, &writer, offset, &out)?;
        }
        Ok(out)
    }

    /// The listing readdir at `offset` continues: computed afresh at the
    /// start of a pass, reused for its further offsets.
    fn listing_at(&self, ino: u64, offset: u64) -> Result<Listing, Errno> {
        if offset > 0 {
            if let Some(l) = self.listings.get(&ino) {
                return Ok(l);
            }
        }
        let listing = self.listing(ino)?;
        self.listings.insert(ino, listing.clone());
        Ok(listing)
    }

    /// The root's attributes: its mtime steps every [`ROOT_LISTING_STEP`],
    /// so the kernel's cached listing of store paths never grows older.
    fn root_attr(&self) -> FileAttr {
        let mut attr = self.make_attr(ROOT_INO, FileType::Directory, 0o555, 0);
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let step = ROOT_LISTING_STEP.as_secs();
        attr.mtime = UNIX_EPOCH + Duration::from_secs(now / step * step);
        attr.ctime = attr.mtime;
        attr
    }

    fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        if ino == ROOT_INO {
            if !self.cfg.list_root {
                return Ok(Arc::new(Vec::new()));
            }
            let infos = self.remote(
                self.store
                    .path_infos
                    .list_path_infos()
                    .try_collect::<Vec<_>>(),
            )?;
            return Ok(Arc::new(
                infos
                    .into_iter()
                    .map(|i| (Bytes::from(i.store_path.basename()), i.node))
                    .collect(),
            ));
        }
        let node = self
            .inodes
            .lock()
            .expect("inodes")
            .get(ino)
            .ok_or(Errno::ENOENT)?;
        let Node::Directory { digest, .. } = node else {
            return Err(Errno::ENOTDIR);
        };
        Ok(Arc::new(self.directory(&digest)?.entries_sorted()))
    }
}

fn count_read_error(fetcher: &ChunkFetcher) {
    crate::stats::Stats::add(&fetcher.stats.read_errors, 1);
}

fn file_type(node: &Node) -> FileType {
    match node {
        Node::Directory { .. } => FileType::Directory,
        Node::File { .. } => FileType::RegularFile,
        Node::Symlink { .. } => FileType::Symlink,
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            // Attributes are checked before a cached listing is used, so
            // the root's stepping mtime refreshes it (store contents have
            // unlimited TTLs: no cost there).
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        // Kept whole files are handed to the kernel to read itself.
        if self.whole.is_some()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
        }
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.set_max_write(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT_INO && name == STATS_NAME {
            let attr = self.make_attr(
                STATS_INO,
                FileType::RegularFile,
                0o444,
                self.stats_json().len() as u64,
            );
            return reply.entry(&Duration::ZERO, &attr, Generation(0));
        }
        let node = if parent.0 == ROOT_INO {
            self.store_path_node(name)
        } else {
            self.child(parent.0, name)
        };
        match node {
            Ok(node) => {
                let ino =
                    self.inodes
                        .lock()
                        .expect("inodes")
                        .lookup(parent.0, name.as_bytes(), &node);
                reply.entry(&FOREVER, &self.attr(ino, &node), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.lock().expect("inodes").forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT_INO => reply.attr(&Duration::from_secs(1), &self.root_attr()),
            STATS_INO => reply.attr(
                &Duration::ZERO,
                &self.make_attr(
                    STATS_INO,
                    FileType::RegularFile,
                    0o444,
                    self.stats_json().len() as u64,
                ),
            ),
            i => match self.inodes.lock().expect("inodes").get(i) {
                Some(node) => reply.attr(&FOREVER, &self.attr(i, &node)),
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.lock().expect("inodes").get(ino.0) {
            Some(Node::Symlink { target }) => reply.data(&target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if ino.0 == STATS_INO {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        let node = self.inodes.lock().expect("inodes").get(ino.0);
        match node {
            Some(Node::File { digest, size, .. }) => {
                let backing = self.backing_for(&reply, ino.0, &digest, size);
                if backing.is_none() && size > 0 && size <= SMALL_FILE {
                    // Small files come whole, in one request.
                    let layout = match self.layout(&digest, size) {
                        Ok(l) => l,
                        Err(e) => return reply.error(e),
                    };
                    let digests: Vec<B3Digest> = layout.chunks().iter().map(|c| c.digest).collect();
                    if let Err(e) = self.rt.block_on(self.fetcher.get(&digests)) {
                        tracing::warn!(error = %e, "open failed");
                        count_read_error(&self.fetcher);
                        return reply.error(Errno::EIO);
                    }
                }
                let mut open = self.open_files.lock().expect("open files");
                let entry = open.entry(ino.0).or_default();
                if entry.handles == 0 {
                    entry.backing = backing;
                }
                entry.handles += 1;
                match &entry.backing {
                    Some(b) => {
                        crate::stats::Stats::add(&self.fetcher.stats.passthrough_opens, 1);
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), b)
                    }
                    None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                }
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == STATS_INO {
            let json = self.stats_json();
            let start = (offset as usize).min(json.len());
            let end = (start + size as usize).min(json.len());
            return reply.data(&json[start..end]);
        }
        let node = self.inodes.lock().expect("inodes").get(ino.0);
        match node {
            Some(Node::File {
                digest,
                size: file_size,
                ..
            }) => match self.read_file(ino.0, fh.0, &digest, file_size, offset, size) {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.reads.lock().expect("reads").remove(&fh.0);
        let mut open = self.open_files.lock().expect("open files");
        if let Some(entry) = open.get_mut(&ino.0) {
            entry.handles -= 1;
            if entry.handles == 0 {
                // Its backing file closes; an unfinished copy is dropped.
                open.remove(&ino.0);
                self.writers.lock().expect("writers").remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No per-open state: after ENOSYS the kernel stops sending opendir
        // and releasedir (two round trips per directory a walk visits) and
        // caches every listing itself (keep-cache and cache-dir are its
        // defaults then); readdir finds listings by inode.
        reply.error(Errno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing_at(ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        // Offsets: 1 is ".", 2 is "..", 3 + i is entry i.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            if reply.add(INodeNo(ROOT_INO), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        for (i, (name, node)) in listing.iter().enumerate().skip((next - 2) as usize) {
            // Plain readdir hands out no lookups: a stable pseudo inode.
            let pseudo = u64::from_le_bytes(blake_prefix(name)) | (1 << 63);
            if reply.add(
                INodeNo(pseudo),
                3 + i as u64,
                file_type(node),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        dir_ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing_at(dir_ino.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        // Same offsets as readdir: 1 is ".", 2 is "..", 3 + i is entry i.
        // The kernel takes no lookups for "." and "..".
        let dot_attr = self.make_attr(dir_ino.0, FileType::Directory, 0o555, 0);
        let mut next = offset;
        if next == 0 {
            if reply.add(dir_ino, 1, ".", &FOREVER, &dot_attr, Generation(0)) {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            let root_attr = self.root_attr();
            if reply.add(
                INodeNo(ROOT_INO),
                2,
                "..",
                &FOREVER,
                &root_attr,
                Generation(0),
            ) {
                return reply.ok();
            }
            next = 2;
        }
        for (i, (name, node)) in listing.iter().enumerate().skip((next - 2) as usize) {
            let ino = self
                .inodes
                .lock()
                .expect("inodes")
                .lookup(dir_ino.0, name, node);
            let attr = self.attr(ino, node);
            if reply.add(
                INodeNo(ino),
                3 + i as u64,
                OsStr::from_bytes(name),
                &FOREVER,
                &attr,
                Generation(0),
            ) {
                // Not sent: give the lookup back.
                self.inodes.lock().expect("inodes").forget(ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // The store carries no extended attributes.
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.inodes.lock().expect("inodes").count() as u64;
        reply.statfs(0, 0, 0, files, 0, 64 * 1024, 255, 64 * 1024);
    }
}

/// Eight bytes of BLAKE3 of a name, for pseudo inode numbers.
fn blake_prefix(name: &[u8]) -> [u8; 8] {
    let h = B3Digest::of(name);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}
