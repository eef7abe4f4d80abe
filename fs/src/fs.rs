//! The file system's core: a read-only view of every store path the server
//! knows, whose file bytes are fetched chunk by chunk on first access.
//!
//! Every operation the kernel asks for (lookup, getattr, readlink, open,
//! read, release, readdir, readdirplus, xattrs, statfs) is a method here
//! that answers plain values or an [`FsError`]; it needs no FUSE request or
//! reply, so it can be driven by tests without a kernel. The FUSE adapter
//! ([`crate::fuse`]) only turns those answers into replies. The two things
//! only the kernel provides sit behind seams: [`KernelCache`] (dropping the
//! kernel's cached pages of an inode) and [`BackingOpener`] (handing the
//! kernel a file to read itself, passthrough).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{BackingId, FileAttr, FileType, INodeNo};
use futures::StreamExt;
use lazix_castore::catalog::CatalogEntry;
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::digest::DigestKeyBuildHasher;
use lazix_castore::directory::Directory;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::read::trusted::{AdmitError, TrustedReads};
use lazix_castore::read::BlobLayout;
use lazix_castore::store::CacheConfig;
use lazix_castore::{B3Digest, Node, PathInfo, Store, StoreError};

use crate::error::FsError;
use crate::fetcher::{ChunkFetcher, DiskCopy, Origin};
use crate::inodes::{Inodes, ROOT_INO, STATS_INO};
use crate::profile::{MountSide, Profile, Recorder};
use crate::readahead::ReadAhead;
use crate::stats::{CacheGauges, Stats};
use crate::whole_files::{WholeFileWriter, WholeFiles, MIN_WHOLE_FILE};

/// Name of the synthetic stats file in the root (never a store path name:
/// those cannot start with a dot).
pub const STATS_NAME: &str = ".lazix-stats";
/// Store contents never change: the kernel may cache them for good.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the kernel keeps the root's attributes.
const ROOT_ATTR_TTL: Duration = Duration::from_secs(1);
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
/// Block size reported to the kernel (attributes and statfs).
const BLOCK_SIZE: u32 = 64 * 1024;
/// Longest name statfs reports.
const NAME_MAX: u32 = 255;
/// Chunk lists asked in one call when a file's list is missing: its own
/// and those of multi-chunk files beside it in its directory (a program
/// that opens one file of a folder soon opens others: one round trip for
/// a folder, not one per file; a list is ~40 bytes a chunk).
const LIST_BATCH: usize = 64;

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
    /// With trusted keys: a store path is visible only once its root
    /// signature verified (else ENOENT), and chunk lists must be the signed
    /// ones (else EIO). `None`: the server is believed.
    pub trust: Option<Arc<TrustedReads>>,
    /// Whether the first lookup of a store path prefetches the access
    /// profile the server keeps beside it.
    pub stored_profiles: bool,
    /// Whether a store path the server cannot be asked about (unreachable,
    /// timed out) is absent (ENOENT) rather than an error (EIO), and,
    /// after such a failure, answered absent at once for
    /// [`OFFLINE_WINDOW`] before the server is asked again: an overlay
    /// above (`lazix store up`) creates the machine's own new paths, whose
    /// names it looks up here first, and must neither fail nor wait on a
    /// server that is away. Paths already looked up stay as they were.
    pub unreachable_paths_absent: bool,
}

/// How long lookups of unknown store paths answer "absent" without asking
/// after the server could not be reached (with
/// [`MountConfig::unreachable_paths_absent`]).
pub const OFFLINE_WINDOW: Duration = Duration::from_secs(5);

/// What the core asks of the kernel outside a reply: to drop the pages it
/// cached of an inode (a file now read from its kept copy, or whose pages
/// turned out wrong). Without a kernel (tests) nothing needs dropping.
pub trait KernelCache: Send + Sync {
    /// Drops the kernel's cached pages of `ino`, without waiting for it.
    fn drop_pages(&self, ino: u64);
}

/// Hands a file to the kernel to read itself (passthrough); only the reply
/// to an open can.
pub trait BackingOpener {
    /// Registers `file` with the kernel as a backing file.
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId>;
}

/// Attributes and how long the kernel may keep them.
#[derive(Clone, Debug)]
pub struct TimedAttr {
    /// The attributes.
    pub attr: FileAttr,
    /// How long they hold.
    pub ttl: Duration,
}

/// How an opened file is read.
#[derive(Clone, Debug)]
pub enum OpenMode {
    /// Every read comes to the mount, uncached (the stats file).
    DirectIo,
    /// Reads come to the mount; the kernel keeps the pages.
    KeepCache,
    /// The kernel reads this backing file itself.
    Passthrough(Arc<BackingId>),
}

/// An opened file.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The new file handle.
    pub fh: u64,
    /// How it is read.
    pub mode: OpenMode,
}

/// One readdir entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Its inode (a stable pseudo inode: plain readdir hands out no
    /// lookups).
    pub ino: u64,
    /// The offset of the entry after it.
    pub offset: u64,
    /// What it is.
    pub kind: FileType,
    /// Its name.
    pub name: Bytes,
}

/// One readdirplus entry.
#[derive(Clone, Debug)]
pub struct DirEntryPlus {
    /// Its inode.
    pub ino: u64,
    /// The offset of the entry after it.
    pub offset: u64,
    /// Its name.
    pub name: Bytes,
    /// Its attributes.
    pub attr: TimedAttr,
    /// Whether it counted a kernel lookup (every entry but "." and ".."):
    /// an entry not sent must give it back ([`LazyFs::unsent`]).
    pub counts_lookup: bool,
}

/// What statfs reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStatistics {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks free for unprivileged users.
    pub bavail: u64,
    /// Inodes in use.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
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
///
/// It is the mount's one cache of each kind of metadata: PathInfos (kept
/// briefly), directories and chunk lists (kept until evicted: content
/// addressed); the store under it is the server itself.
pub struct LazyFs {
    rt: tokio::runtime::Handle,
    store: Store,
    fetcher: Arc<ChunkFetcher>,
    cfg: MountConfig,
    /// The server without the chunk-list guard: what admitting a path
    /// checks its signature against.
    unguarded: Store,
    inodes: Mutex<Inodes>,
    /// PathInfos by store path digest, trusted as long as
    /// [`CacheConfig::path_info_ttl`] (another replica or a GC may change
    /// them); a path the server lacks is asked again every time.
    path_infos: moka::sync::Cache<[u8; 20], Arc<PathInfo>, DigestKeyBuildHasher>,
    directories: moka::sync::Cache<B3Digest, Arc<Directory>, DigestKeyBuildHasher>,
    chunk_lists: moka::sync::Cache<B3Digest, Arc<BlobLayout>, DigestKeyBuildHasher>,
    /// The directory each multi-chunk file was last found in, so a missing
    /// list is asked with its neighbours' (see [`LIST_BATCH`]).
    found_in: moka::sync::Cache<B3Digest, B3Digest, DigestKeyBuildHasher>,
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
    /// Drops the kernel's pages of an inode.
    kernel: Arc<dyn KernelCache>,
    next_fh: AtomicU64,
    /// Files whose bytes, read whole, did not hash to their digest (a wrong
    /// chunk list): every later read of them is EIO, also the kernel's
    /// retry of a failed readahead.
    disproved: moka::sync::Cache<B3Digest, (), DigestKeyBuildHasher>,
    /// With `--record-profile`: what is read, in first-use order.
    recorder: Option<Arc<Recorder>>,
    /// Store paths whose stored access profile was asked for.
    profiles_asked: moka::sync::Cache<[u8; 20], ()>,
    /// Until when unknown store paths are absent without asking (the
    /// server could not be reached).
    offline_until: Mutex<Option<std::time::Instant>>,
    /// The stats document of each open handle of the stats file, as it
    /// was at open.
    stats_opened: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

/// A background prefetch of an access profile into a mount's caches.
struct Prefetcher {
    store: Store,
    fetcher: Arc<ChunkFetcher>,
    lists: moka::sync::Cache<B3Digest, Arc<BlobLayout>, DigestKeyBuildHasher>,
    /// The mount's directories: those a prefetch fetched to check a path
    /// (without trusted keys) or verified while admitting it (with them)
    /// are kept there, so its lookups ask nothing.
    directories: moka::sync::Cache<B3Digest, Arc<Directory>, DigestKeyBuildHasher>,
    /// With trusted keys: the keys and the server without the guard, to
    /// admit a profile's paths before their lists are read (the guard
    /// refuses lists of paths not admitted).
    trust: Option<(Arc<TrustedReads>, Store)>,
}

impl Prefetcher {
    /// With trusted keys, the profile's files of the paths whose root
    /// signature holds (the others are left out with a log line, as a
    /// lookup hides them), with the PathInfos admitted; without, the
    /// profile as it is. `known` holds PathInfos at hand (the lookup that
    /// found a stored profile); the ones asked here are added.
    async fn admitted_part(
        &self,
        mut profile: Profile,
        known: &mut HashMap<String, PathInfo>,
    ) -> Profile {
        let Some((trust, unguarded)) = &self.trust else {
            return profile;
        };
        let mut admitted: Vec<String> = Vec::new();
        for path in profile.paths() {
            let Ok(sp) = StorePath::from_basename(path) else {
                continue;
            };
            let info = match known.get(path) {
                Some(info) => info.clone(),
                None => match unguarded.path_infos.get_path_info(sp.digest()).await {
                    Ok(Some(info)) if info.store_path.basename() == path => info,
                    _ => continue,
                },
            };
            if !trust.was_admitted(&info.store_path, &info.node) {
                match trust.admit(unguarded, &info).await {
                    Ok(a) => {
                        for dir in a.closure {
                            self.directories.insert(dir.digest(), Arc::new(dir));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path, error = %e, "access profile: not prefetching an unadmitted store path");
                        continue;
                    }
                }
            }
            admitted.push(path.to_string());
            known.insert(path.to_string(), info);
        }
        profile.files.retain(|f| admitted.contains(&f.path));
        profile
    }

    /// Prefetches `profile` (see [`crate::profile::prefetch`]), keeping the
    /// chunk lists it looks up for the mount's reads; logs the outcome and
    /// counts it in `profiles_done`. `known`: PathInfos at hand.
    async fn run(self, profile: Profile, mut known: HashMap<String, PathInfo>) {
        let profile = self.admitted_part(profile, &mut known).await;
        let side = PrefetchSide {
            prefetcher: &self,
            known: &known,
        };
        match crate::profile::prefetch(&self.store, &self.fetcher, &profile, &side).await {
            Ok(r) => tracing::info!(
                paths = ?profile.paths(),
                files = r.files,
                chunks = r.chunks,
                ignored_paths = r.ignored_paths,
                "access profile prefetched"
            ),
            Err(e) => tracing::warn!(error = %e, "access profile prefetch failed"),
        }
        Stats::add(&self.fetcher.stats.profiles_done, 1);
    }
}

/// What a prefetch shares with its mount (see [`MountSide`]).
struct PrefetchSide<'a> {
    prefetcher: &'a Prefetcher,
    /// PathInfos at hand, by basename.
    known: &'a HashMap<String, PathInfo>,
}

impl MountSide for PrefetchSide<'_> {
    fn path_info(&self, basename: &str) -> Option<PathInfo> {
        self.known.get(basename).cloned()
    }

    fn directory(&self, digest: &B3Digest) -> Option<Arc<Directory>> {
        self.prefetcher.directories.get(digest)
    }

    fn keep_directories(&self, closure: &[Arc<Directory>]) {
        // With trusted keys only directories verified by admission are
        // kept; these came from the server unchecked.
        if self.prefetcher.trust.is_none() {
            for dir in closure {
                self.prefetcher
                    .directories
                    .insert(dir.digest(), dir.clone());
            }
        }
    }

    fn keep_layout(&self, layout: &Arc<BlobLayout>) {
        self.prefetcher.lists.insert(*layout.blob(), layout.clone());
    }
}

impl LazyFs {
    /// A file system over `store` (the server), reading chunks through
    /// `fetcher`, keeping files read whole in `whole`, running async work
    /// on `rt`, dropping the kernel's stale pages through `kernel`.
    pub fn new(
        rt: tokio::runtime::Handle,
        store: Store,
        fetcher: Arc<ChunkFetcher>,
        whole: Option<Arc<WholeFiles>>,
        kernel: Arc<dyn KernelCache>,
        cfg: MountConfig,
    ) -> Self {
        let unguarded = store.clone();
        let store = match &cfg.trust {
            Some(trust) => trust.guard(store),
            None => store,
        };
        Self {
            rt,
            store,
            unguarded,
            fetcher,
            cfg,
            inodes: Mutex::new(Inodes::new()),
            path_infos: {
                let config = CacheConfig::default();
                moka::sync::Cache::builder()
                    .max_capacity(config.path_infos)
                    .time_to_live(config.path_info_ttl)
                    .build_with_hasher(DigestKeyBuildHasher::default())
            },
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
            found_in: moka::sync::Cache::builder()
                .max_capacity(100_000)
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
            kernel,
            next_fh: AtomicU64::new(1),
            disproved: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .build_with_hasher(DigestKeyBuildHasher::default()),
            recorder: None,
            profiles_asked: moka::sync::Cache::new(1_000_000),
            offline_until: Mutex::default(),
            stats_opened: Mutex::default(),
        }
    }

    /// A list of `blob` was refused: the layers under this mount that keep
    /// lists (the disk cache) drop it, or they would answer it again on
    /// every read and remount.
    fn refused_list(&self, blob: &B3Digest) {
        let refused = self.store.blobs.refuse_chunk_list(blob);
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(self.cfg.timeout, refused).await });
    }

    /// Records every read into `recorder` from now on.
    pub fn record_into(&mut self, recorder: Arc<Recorder>) {
        self.recorder = Some(recorder);
    }

    /// Fetches what `profile` names in the background (see
    /// [`crate::profile::prefetch`]); the chunk lists it looks up are kept
    /// for this mount's reads. Counted in the stats (`profile_chunks`,
    /// `profiles_done`).
    pub fn start_prefetch(&self, profile: Profile) {
        let this = self.prefetcher();
        self.rt
            .spawn(async move { this.run(profile, HashMap::new()).await });
    }

    /// What a background prefetch needs of this mount.
    fn prefetcher(&self) -> Prefetcher {
        Prefetcher {
            store: self.store.clone(),
            fetcher: self.fetcher.clone(),
            lists: self.chunk_lists.clone(),
            directories: self.directories.clone(),
            trust: self
                .cfg
                .trust
                .as_ref()
                .map(|t| (t.clone(), self.unguarded.clone())),
        }
    }

    /// Whether kept whole files could be handed to the kernel (there is a
    /// cache folder to keep them in).
    pub fn keeps_whole_files(&self) -> bool {
        self.whole.is_some()
    }

    /// Hands kept whole files to the kernel from now on (it said it takes
    /// backing files).
    pub fn enable_passthrough(&mut self) {
        self.passthrough = true;
    }

    /// The entry `name` in directory `parent`, counting one kernel lookup.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<TimedAttr, FsError> {
        if parent == ROOT_INO && name == STATS_NAME {
            return Ok(self.stats_attr());
        }
        let node = if parent == ROOT_INO {
            self.store_path_node(name)?
        } else {
            self.child(parent, name)?
        };
        let ino = self
            .inodes
            .lock()
            .expect("inodes")
            .lookup(parent, name.as_bytes(), &node);
        if let Some(r) = &self.recorder {
            r.looked_up(parent, name.as_bytes(), ino, &node);
        }
        Ok(TimedAttr {
            attr: self.attr(ino, &node),
            ttl: FOREVER,
        })
    }

    /// The kernel dropped `nlookup` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.lock().expect("inodes").forget(ino, nlookup);
    }

    /// The attributes of an inode the kernel holds.
    pub fn getattr(&self, ino: u64) -> Result<TimedAttr, FsError> {
        match ino {
            ROOT_INO => Ok(TimedAttr {
                attr: self.root_attr(),
                ttl: ROOT_ATTR_TTL,
            }),
            STATS_INO => Ok(self.stats_attr()),
            ino => {
                let node = self.node(ino)?;
                Ok(TimedAttr {
                    attr: self.attr(ino, &node),
                    ttl: FOREVER,
                })
            }
        }
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: u64) -> Result<Bytes, FsError> {
        match self.node(ino)? {
            Node::Symlink { target } => Ok(target),
            _ => Err(FsError::NotASymlink),
        }
    }

    /// Opens a file; kept whole copies go to the kernel through `backing`
    /// (in passthrough mode), small files are fetched whole now.
    pub fn open(&self, ino: u64, backing: &dyn BackingOpener) -> Result<Opened, FsError> {
        self.open_file(ino, backing)
            .inspect_err(|e| self.count_read_error(e))
    }

    /// `size` bytes of a file from `offset` (fewer at its end), read
    /// through handle `fh`.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        if ino == STATS_INO {
            // The counters as they were at open: a reader taking them in
            // several reads gets one consistent document.
            let json = self
                .stats_opened
                .lock()
                .expect("stats snapshots")
                .get(&fh)
                .cloned()
                .unwrap_or_else(|| Arc::new(self.stats_json()));
            let start = (offset as usize).min(json.len());
            let end = (start + size as usize).min(json.len());
            return Ok(json[start..end].to_vec());
        }
        match self.node(ino)? {
            Node::File {
                digest,
                size: file_size,
                ..
            } => self
                .read_file(ino, fh, &digest, file_size, offset..offset + size as u64)
                .inspect_err(|e| self.count_read_error(e)),
            _ => Err(FsError::IsADirectory),
        }
    }

    /// Handle `fh` of `ino` is closed.
    pub fn release(&self, ino: u64, fh: u64) {
        if ino == STATS_INO {
            self.stats_opened
                .lock()
                .expect("stats snapshots")
                .remove(&fh);
            return;
        }
        self.reads.lock().expect("reads").remove(&fh);
        let mut open = self.open_files.lock().expect("open files");
        if let Some(entry) = open.get_mut(&ino) {
            entry.handles -= 1;
            if entry.handles == 0 {
                // Its backing file closes; an unfinished copy is dropped.
                open.remove(&ino);
                self.writers.lock().expect("writers").remove(&ino);
            }
        }
    }

    /// The entries of directory `ino` from `offset` on. Offsets: 1 is ".",
    /// 2 is "..", 3 + i is entry i.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry>, FsError> {
        let listing = self.listing_at(ino, offset)?;
        let dots =
            [(ino, "."), (ROOT_INO, "..")]
                .into_iter()
                .enumerate()
                .map(|(i, (ino, name))| DirEntry {
                    ino,
                    offset: 1 + i as u64,
                    kind: FileType::Directory,
                    name: Bytes::from_static(name.as_bytes()),
                });
        // Skipped by index, not by iterating: a listing of 100,000 paths
        // comes in a thousand calls, each starting where the last ended.
        let entries = (offset.saturating_sub(2) as usize..listing.len()).map(move |i| {
            let (name, node) = &listing[i];
            DirEntry {
                ino: pseudo_ino(name),
                offset: 3 + i as u64,
                kind: file_type(node),
                name: name.clone(),
            }
        });
        Ok(dots.skip(offset.min(2) as usize).chain(entries))
    }

    /// The entries of directory `ino` from `offset` on, with attributes
    /// (same offsets as [`LazyFs::readdir`]). Each entry but "." and ".."
    /// counts a kernel lookup as it is produced.
    pub fn readdirplus(
        &self,
        dir_ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntryPlus> + '_, FsError> {
        let listing = self.listing_at(dir_ino, offset)?;
        let dir_digest = match self.node(dir_ino) {
            Ok(Node::Directory { digest, .. }) => Some(digest),
            _ => None,
        };
        // The kernel takes no lookups for "." and "..".
        let dot = |ino, offset, name: &'static str, attr| DirEntryPlus {
            ino,
            offset,
            name: Bytes::from_static(name.as_bytes()),
            attr: TimedAttr { attr, ttl: FOREVER },
            counts_lookup: false,
        };
        let mut dots = Vec::new();
        if offset < 1 {
            let attr = self.make_attr(dir_ino, FileType::Directory, 0o555, 0);
            dots.push(dot(dir_ino, 1, ".", attr));
        }
        if offset < 2 {
            dots.push(dot(ROOT_INO, 2, "..", self.root_attr()));
        }
        let entries = (offset.saturating_sub(2) as usize..listing.len()).map(move |i| {
            let (name, node) = &listing[i];
            if let Some(dir) = &dir_digest {
                self.note_found_in(node, dir);
            }
            let ino = self
                .inodes
                .lock()
                .expect("inodes")
                .lookup(dir_ino, name, node);
            // An entry the kernel learns from a listing is never looked up
            // by name: a profile must place it here too.
            if let Some(r) = &self.recorder {
                r.looked_up(dir_ino, name, ino, node);
            }
            DirEntryPlus {
                ino,
                offset: 3 + i as u64,
                name: name.clone(),
                attr: TimedAttr {
                    attr: self.attr(ino, node),
                    ttl: FOREVER,
                },
                counts_lookup: true,
            }
        });
        Ok(dots.into_iter().chain(entries))
    }

    /// A readdirplus entry that did not fit the reply: its lookup is given
    /// back.
    pub fn unsent(&self, entry: &DirEntryPlus) {
        if entry.counts_lookup {
            self.forget(entry.ino, 1);
        }
    }

    /// An extended attribute's value: the store carries none.
    pub fn getxattr(&self, _ino: u64, _name: &OsStr) -> Result<Vec<u8>, FsError> {
        Err(FsError::NoSuchAttribute)
    }

    /// The names of an inode's extended attributes, NUL-separated: none.
    pub fn listxattr(&self, _ino: u64) -> Vec<u8> {
        Vec::new()
    }

    /// File system statistics: nothing to write, the inodes held.
    pub fn statfs(&self) -> FsStatistics {
        FsStatistics {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: self.inodes.lock().expect("inodes").count() as u64,
            ffree: 0,
            bsize: BLOCK_SIZE,
            namelen: NAME_MAX,
            frsize: BLOCK_SIZE,
        }
    }

    /// Counts a failed open or read in the stats, if its cause is one
    /// ([`FsError::counts_as_read_error`]): the one place that does.
    fn count_read_error(&self, e: &FsError) {
        if e.counts_as_read_error() {
            Stats::add(&self.fetcher.stats.read_errors, 1);
        }
    }

    /// Runs a server request with the configured timeout: every metadata
    /// request of the mount goes through here.
    fn remote<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, FsError> {
        let answer = self
            .rt
            .block_on(async { tokio::time::timeout(self.cfg.timeout, fut).await });
        let Ok(answer) = answer else {
            tracing::warn!(timeout = ?self.cfg.timeout, "server did not answer in time");
            return Err(FsError::Timeout(self.cfg.timeout));
        };
        answer.map_err(|e| {
            let e = FsError::from_store(e);
            if !matches!(e, FsError::NotFound) {
                tracing::warn!(error = %e, "server request failed");
            }
            e
        })
    }

    /// Every store path in the server's catalog, the timeout applying to
    /// each answer in turn rather than to the whole listing: a large store
    /// takes long to list, but a server that stops answering still fails
    /// the listing after the timeout.
    fn remote_listing(&self) -> Result<Vec<CatalogEntry>, FsError> {
        self.rt.block_on(async {
            let mut listing = match tokio::time::timeout(
                self.cfg.timeout,
                self.store.path_infos.list_catalog(),
            )
            .await
            {
                Err(_) => {
                    tracing::warn!(timeout = ?self.cfg.timeout, "server did not start a listing in time");
                    return Err(FsError::Timeout(self.cfg.timeout));
                }
                Ok(Err(e)) => {
                    let e = FsError::from_store(e);
                    tracing::warn!(error = %e, "listing failed");
                    return Err(e);
                }
                Ok(Ok(listing)) => listing,
            };
            let mut out = Vec::new();
            loop {
                match tokio::time::timeout(self.cfg.timeout, listing.next()).await {
                    Err(_) => {
                        tracing::warn!(timeout = ?self.cfg.timeout, listed = out.len(), "server stopped answering a listing");
                        return Err(FsError::Timeout(self.cfg.timeout));
                    }
                    Ok(None) => return Ok(out),
                    Ok(Some(Ok(info))) => out.push(info),
                    Ok(Some(Err(e))) => {
                        let e = FsError::from_store(e);
                        tracing::warn!(error = %e, "listing failed");
                        return Err(e);
                    }
                }
            }
        })
    }

    /// The node of an inode the kernel holds.
    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .expect("inodes")
            .get(ino)
            .ok_or(FsError::NotFound)
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
            blksize: BLOCK_SIZE,
            flags: 0,
        }
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

    /// The stats file's attributes, never cached (its size changes).
    fn stats_attr(&self) -> TimedAttr {
        TimedAttr {
            attr: self.make_attr(
                STATS_INO,
                FileType::RegularFile,
                0o444,
                self.stats_json().len() as u64,
            ),
            ttl: Duration::ZERO,
        }
    }

    fn stats_json(&self) -> Vec<u8> {
        let mut counters =
            serde_json::to_value(self.fetcher.stats.snapshot()).expect("counters as JSON");
        let caches = CacheGauges::new(self.fetcher.clone(), self.whole.clone()).read();
        counters["caches"] = serde_json::to_value(caches).expect("caches as JSON");
        let mut v = serde_json::to_vec_pretty(&counters).expect("json");
        v.push(b'\n');
        v
    }

    /// A directory, fetched with its whole subtree on a miss (one request
    /// answers every later lookup below it).
    fn directory(&self, digest: &B3Digest) -> Result<Arc<Directory>, FsError> {
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
        root.ok_or(FsError::IncompleteClosure(*digest))
    }

    fn store_path_node(&self, name: &OsStr) -> Result<Node, FsError> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let path = StorePath::from_basename(name).map_err(|_| FsError::NotFound)?;
        let info = if self.cfg.unreachable_paths_absent {
            self.path_info_or_absent(&path)?
        } else {
            self.path_info(&path)?
        };
        if info.store_path.basename() != name {
            return Err(FsError::NotFound);
        }
        Ok(info.node.clone())
    }

    /// The PathInfo of `path`, from the cache or the server; concurrent
    /// askers of one path share one request, a miss is not kept. With
    /// trusted keys, only a path whose root signature verifies is kept and
    /// answered; any other is NotFound, with one log line saying why.
    fn path_info(&self, path: &StorePath) -> Result<Arc<PathInfo>, FsError> {
        let digest = *path.digest();
        self.path_infos
            .try_get_with(digest, || {
                let info = self
                    .remote(self.store.path_infos.get_path_info(&digest))?
                    .ok_or(FsError::NotFound)?;
                if let Some(trust) = &self.cfg.trust {
                    self.admit(trust, &info)?;
                }
                self.prefetch_stored_profile(&info);
                Ok::<_, FsError>(Arc::new(info))
            })
            .map_err(|e| e.as_ref().clone())
    }

    /// [`Self::path_info`], with a server that cannot be reached taken as
    /// "no such path" (see [`MountConfig::unreachable_paths_absent`]).
    fn path_info_or_absent(&self, path: &StorePath) -> Result<Arc<PathInfo>, FsError> {
        if let Some(info) = self.path_infos.get(path.digest()) {
            return Ok(info);
        }
        let offline = |until: Option<std::time::Instant>| {
            until.is_some_and(|t| std::time::Instant::now() < t)
        };
        if offline(*self.offline_until.lock().expect("offline window")) {
            return Err(FsError::NotFound);
        }
        match self.path_info(path) {
            Err(FsError::Timeout(_) | FsError::Store(_)) => {
                *self.offline_until.lock().expect("offline window") =
                    Some(std::time::Instant::now() + OFFLINE_WINDOW);
                tracing::warn!(path = %path, "server unreachable: unknown store paths are absent for {OFFLINE_WINDOW:?}");
                Err(FsError::NotFound)
            }
            other => other,
        }
    }

    /// On the first lookup of a store path, asks the server in the
    /// background for the access profile stored beside it (`lazix profile
    /// push`) and prefetches it; nothing if there is none, if the mount
    /// was told not to (`--no-stored-profiles`), or once asked.
    fn prefetch_stored_profile(&self, info: &PathInfo) {
        let digest = *info.store_path.digest();
        if !self.cfg.stored_profiles || self.profiles_asked.contains_key(&digest) {
            return;
        }
        self.profiles_asked.insert(digest, ());
        let this = self.prefetcher();
        let basename = info.store_path.basename();
        let known = HashMap::from([(basename.clone(), info.clone())]);
        self.rt.spawn(async move {
            let text = match this.store.path_infos.get_profile(&digest).await {
                Ok(Some(text)) => text,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(path = basename, error = %e, "cannot ask for an access profile");
                    return;
                }
            };
            match lazix_castore::profile::check_stored(&basename, &text) {
                Ok(profile) => this.run(profile, known).await,
                Err(e) => tracing::warn!(error = %e, "ignoring the server's access profile"),
            }
        });
    }

    /// Admits `info` by its root signature (fetching its closure and its
    /// manifest of chunk-list digests, no file bytes), or NotFound.
    fn admit(&self, trust: &TrustedReads, info: &PathInfo) -> Result<(), FsError> {
        // Admitted before with this root (by a profile's prefetch, or
        // before the PathInfo expired here) and its root directory still
        // kept: nothing to check or fetch again.
        let root_kept = match &info.node {
            Node::Directory { digest, .. } => self.directories.contains_key(digest),
            _ => true,
        };
        if root_kept && trust.was_admitted(&info.store_path, &info.node) {
            return Ok(());
        }
        let outcome = self.remote(async {
            match trust.admit(&self.unguarded, info).await {
                Ok(key) => Ok(Ok(key)),
                Err(AdmitError::Untrusted(e)) => Ok(Err(e)),
                Err(AdmitError::Store(e)) => Err(e),
            }
        })?;
        match outcome {
            Ok(admitted) => {
                tracing::debug!(path = %info.store_path, key = %admitted.key, "root signature verified");
                // Its directories, verified: looking them up asks nothing
                // more. Each file's list is fetched when the file is read,
                // and the guard checks it against the signed manifest.
                for dir in admitted.closure {
                    self.directories.insert(dir.digest(), Arc::new(dir));
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(path = %info.store_path, error = %e, "hiding an untrusted store path");
                Err(FsError::NotFound)
            }
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<Node, FsError> {
        let Node::Directory { digest, .. } = self.node(parent)? else {
            return Err(FsError::NotADirectory);
        };
        let dir = self.directory(&digest)?;
        let node = dir.entry(name.as_bytes()).ok_or(FsError::NotFound)?;
        self.note_found_in(&node, &digest);
        Ok(node)
    }

    /// Remembers that `node`, if a file with a chunk list, is in directory
    /// `dir` (see [`LazyFs::found_in`]).
    fn note_found_in(&self, node: &Node, dir: &B3Digest) {
        if let Node::File { digest, size, .. } = node {
            if BlobLayout::needs_lookup(*size) && !self.chunk_lists.contains_key(digest) {
                self.found_in.insert(*digest, *dir);
            }
        }
    }

    /// Files beside `blob` in the directory it was found in whose lists
    /// are not known yet, with their sizes: at most [`LIST_BATCH`] - 1.
    fn neighbours_without_lists(&self, blob: &B3Digest) -> Vec<(B3Digest, u64)> {
        let Some(dir) = self.found_in.get(blob) else {
            return Vec::new();
        };
        let Some(dir) = self.directories.get(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(B3Digest, u64)> = Vec::new();
        for (_, digest, size) in dir.files() {
            if out.len() + 1 >= LIST_BATCH {
                break;
            }
            if digest != *blob
                && BlobLayout::needs_lookup(size)
                && !self.chunk_lists.contains_key(&digest)
                && !out.iter().any(|(d, _)| *d == digest)
            {
                out.push((digest, size));
            }
        }
        out
    }

    /// The file's chunks, checked against it (see
    /// [`lazix_castore::read::layout`]); a list that does not fit is
    /// refused.
    fn layout(&self, digest: &B3Digest, size: u64) -> Result<Arc<BlobLayout>, FsError> {
        if let Some(l) = self.chunk_lists.get(digest) {
            return Ok(l);
        }
        // A small file is one chunk: no round trip to ask.
        let answer = if BlobLayout::needs_lookup(size) {
            self.list_with_neighbours(digest)?
        } else {
            None
        };
        let layout = BlobLayout::from_answer(*digest, size, answer).map_err(|e| {
            let e = FsError::BadChunkList(Arc::new(e));
            tracing::error!(error = %e, "refusing a chunk list");
            self.refused_list(digest);
            e
        })?;
        let layout = Arc::new(layout);
        self.chunk_lists.insert(*digest, layout.clone());
        Ok(layout)
    }

    /// The store's chunk list of `blob`, asked in one call with those of
    /// its neighbours (kept when they fit their files). A list the store
    /// refuses as corrupt (with trusted keys: not the signed one) is a bad
    /// chunk list, like one that does not fit; a neighbour's bad list
    /// costs `blob` nothing (it is asked again alone).
    fn list_with_neighbours(&self, blob: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, FsError> {
        let neighbours = self.neighbours_without_lists(blob);
        let mut asked = vec![*blob];
        asked.extend(neighbours.iter().map(|(d, _)| *d));
        let answer = match self.remote(self.store.blobs.get_blob_chunks(&asked)) {
            Err(FsError::Store(e)) if matches!(*e, StoreError::Corrupt(_)) && asked.len() > 1 => {
                tracing::debug!(error = %e, "a neighbour's chunk list was refused");
                asked.truncate(1);
                self.remote(self.store.blobs.get_blob_chunks(&asked))
            }
            a => a,
        };
        let mut answer = match answer {
            Err(FsError::Store(e)) if matches!(*e, StoreError::Corrupt(_)) => {
                tracing::error!(error = %e, "refusing a chunk list");
                self.refused_list(blob);
                return Err(FsError::BadChunkList(e));
            }
            a => a?.into_iter(),
        };
        let own = answer.next().flatten();
        for ((digest, size), list) in neighbours.into_iter().zip(answer) {
            // One that does not fit is refused when its file is read.
            match BlobLayout::from_answer(digest, size, list) {
                Ok(layout) => self.chunk_lists.insert(digest, Arc::new(layout)),
                Err(_) => self.refused_list(&digest),
            }
        }
        Ok(own)
    }

    /// Digests of the chunks covering `start..end`.
    fn covering(layout: &BlobLayout, start: u64, end: u64) -> Vec<B3Digest> {
        layout
            .pieces(start, end)
            .into_iter()
            .map(|p| p.chunk.digest)
            .collect()
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

    fn open_file(&self, ino: u64, backing: &dyn BackingOpener) -> Result<Opened, FsError> {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if ino == STATS_INO {
            self.stats_opened
                .lock()
                .expect("stats snapshots")
                .insert(fh, Arc::new(self.stats_json()));
            return Ok(Opened {
                fh,
                mode: OpenMode::DirectIo,
            });
        }
        let Node::File { digest, size, .. } = self.node(ino)? else {
            return Err(FsError::IsADirectory);
        };
        let backing = self.backing_for(backing, ino, &digest, size);
        if backing.is_none() && size > 0 && size <= SMALL_FILE {
            // Small files come whole, in one request (and a profile names
            // them whole, as they are fetched).
            if let Some(r) = &self.recorder {
                r.read(ino, &digest, size, 0, size);
            }
            let layout = self.layout(&digest, size)?;
            let digests: Vec<B3Digest> = layout.chunks().iter().map(|c| c.digest).collect();
            self.rt.block_on(self.fetcher.get(&digests)).map_err(|e| {
                tracing::warn!(error = %e, "open failed");
                FsError::Fetch(e)
            })?;
        }
        let mut open = self.open_files.lock().expect("open files");
        let entry = open.entry(ino).or_default();
        if entry.handles == 0 {
            entry.backing = backing;
        }
        entry.handles += 1;
        let mode = match &entry.backing {
            Some(b) => {
                Stats::add(&self.fetcher.stats.passthrough_opens, 1);
                OpenMode::Passthrough(b.clone())
            }
            None => OpenMode::KeepCache,
        };
        Ok(Opened { fh, mode })
    }

    /// The backing file for a new open of `ino`, if the kernel should read
    /// a kept copy itself: only when no handle reads it through the mount.
    fn backing_for(
        &self,
        opener: &dyn BackingOpener,
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
        match opener.open_backing(&copy) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::debug!(error = %e, "passthrough refused");
                None
            }
        }
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

    /// Whether the frames a read fetches go to the disk cache: a file
    /// being copied whole needs none there, except near its start (a reader
    /// that only looks at the header, a mapped library, ends the copy soon,
    /// and those frames must stay cached).
    fn disk_copy(writer: Option<&Mutex<WholeFileWriter>>) -> DiskCopy {
        match writer {
            Some(w) if w.lock().expect("writer").copied() >= FRAMES_KEPT_BEFORE_COPY => {
                DiskCopy::Skip
            }
            _ => DiskCopy::Keep,
        }
    }

    /// Hands bytes just read to the inode's whole-file copy; a complete
    /// copy is put in place.
    /// A whole copy that does not hash to the file's digest (a wrong chunk
    /// list) fails the read that completed it.
    fn keep_whole(
        &self,
        ino: u64,
        writer: &Mutex<WholeFileWriter>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let written = writer.lock().expect("writer").write_at(offset, data);
        match written {
            Ok(false) => {}
            Ok(true) => {
                self.writers.lock().expect("writers").remove(&ino);
                Stats::add(&self.fetcher.stats.whole_files_kept, 1);
                // The kernel reads the copy from now on: the pages it cached
                // from the mount are dropped now, not at the next open
                // (which would wait for it).
                self.kernel.drop_pages(ino);
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!(error = %e, "a file read whole does not match its digest");
                self.writers.lock().expect("writers").remove(&ino);
                let digest = *writer.lock().expect("writer").digest();
                self.disproved.insert(digest, ());
                self.refused_list(&digest);
                // The pages the kernel cached from it are wrong too.
                self.kernel.drop_pages(ino);
                return Err(FsError::Disproved(digest));
            }
            Err(e) => {
                tracing::debug!(error = %e, "not keeping a whole file");
                self.writers.lock().expect("writers").remove(&ino);
            }
        }
        Ok(())
    }

    /// Prefetches what the read-ahead window of handle `fh` asks for after
    /// a read of `read`.
    fn read_ahead(&self, fh: u64, layout: &BlobLayout, read: Range<u64>, disk: DiskCopy) {
        let ahead = self
            .reads
            .lock()
            .expect("reads")
            .entry(fh)
            .or_default()
            .record_read(read, layout.size());
        if let Some(range) = ahead {
            let ahead = Self::covering(layout, range.start, range.end);
            let neighbours = Self::neighbours(layout, range.start, range.end, &ahead);
            let _guard = self.rt.enter();
            self.fetcher.prefetch(ahead, neighbours, disk);
        }
    }

    /// The bytes of `range` of the file laid out as `layout`, sliced out of
    /// its chunks; a chunk of another size than its list says fails it.
    fn read_range(
        &self,
        layout: &BlobLayout,
        range: Range<u64>,
        disk: DiskCopy,
    ) -> Result<Vec<u8>, FsError> {
        let needed = layout.pieces(range.start, range.end);
        let digests: Vec<B3Digest> = needed.iter().map(|p| p.chunk.digest).collect();
        let neighbours = Self::neighbours(layout, range.start, range.end, &digests);
        let fetched = self.rt.block_on(self.fetcher.get_after_neighbours(
            &digests,
            &neighbours,
            disk,
            Origin::Read,
        ));
        let datas = fetched.map_err(|e| {
            tracing::warn!(error = %e, "read failed");
            FsError::Fetch(e)
        })?;
        let blob = *layout.blob();
        if datas.len() != needed.len() {
            let e = FsError::WrongChunkCount {
                blob,
                wanted: needed.len(),
                got: datas.len(),
            };
            tracing::error!(error = %e, "read failed");
            return Err(e);
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (piece, data) in needed.iter().zip(datas) {
            // Verified bytes of the chunk named, but of another length than
            // the list says: the list lies (a reader never slices past).
            if data.len() as u64 != piece.chunk.size {
                let e = FsError::ChunkSizeMismatch {
                    blob,
                    chunk: piece.chunk.digest,
                    listed: piece.chunk.size,
                    got: data.len() as u64,
                };
                tracing::error!(error = %e, "read failed");
                self.chunk_lists.invalidate(&blob);
                self.refused_list(&blob);
                return Err(e);
            }
            out.extend_from_slice(&data[piece.skip..piece.skip + piece.take]);
        }
        Ok(out)
    }

    /// A read of `read` (clamped to the file) of the file `digest`: its
    /// chunks fetched (and read-ahead asked for), the bytes handed to a
    /// whole-file copy if one is being made.
    fn read_file(
        &self,
        ino: u64,
        fh: u64,
        digest: &B3Digest,
        file_size: u64,
        read: Range<u64>,
    ) -> Result<Vec<u8>, FsError> {
        let read = read.start..read.end.min(file_size);
        if read.is_empty() {
            return Ok(Vec::new());
        }
        if self.disproved.contains_key(digest) {
            return Err(FsError::Disproved(*digest));
        }
        if let Some(r) = &self.recorder {
            r.read(ino, digest, file_size, read.start, read.end);
        }
        let layout = self.layout(digest, file_size)?;
        let writer = self.whole_writer(ino, digest, file_size, read.start);
        let disk = Self::disk_copy(writer.as_deref());
        self.read_ahead(fh, &layout, read.clone(), disk);
        let out = self.read_range(&layout, read.clone(), disk)?;
        Stats::add(&self.fetcher.stats.served_bytes, out.len() as u64);
        Stats::add(&self.fetcher.stats.reads, 1);
        if let Some(writer) = writer {
            self.keep_whole(ino, &writer, read.start, &out)?;
        }
        Ok(out)
    }

    /// The listing readdir at `offset` continues: computed afresh at the
    /// start of a pass, reused for its further offsets.
    fn listing_at(&self, ino: u64, offset: u64) -> Result<Listing, FsError> {
        if offset > 0 {
            if let Some(l) = self.listings.get(&ino) {
                return Ok(l);
            }
        }
        let listing = self.listing(ino)?;
        self.listings.insert(ino, listing.clone());
        Ok(listing)
    }

    fn listing(&self, ino: u64) -> Result<Listing, FsError> {
        if ino == ROOT_INO {
            if !self.cfg.list_root {
                return Ok(Arc::new(Vec::new()));
            }
            let entries = self.remote_listing()?;
            // With trusted keys, only paths admitted so far (a lookup by
            // name admits one): listing never shows what was not verified.
            let admitted = |e: &CatalogEntry| {
                self.cfg
                    .trust
                    .as_ref()
                    .is_none_or(|t| t.was_admitted(&e.store_path, &e.node))
            };
            return Ok(Arc::new(
                entries
                    .into_iter()
                    .filter(admitted)
                    .map(|e| (Bytes::from(e.store_path.basename()), e.node))
                    .collect(),
            ));
        }
        let Node::Directory { digest, .. } = self.node(ino)? else {
            return Err(FsError::NotADirectory);
        };
        Ok(Arc::new(self.directory(&digest)?.entries_sorted()))
    }
}

fn file_type(node: &Node) -> FileType {
    match node {
        Node::Directory { .. } => FileType::Directory,
        Node::File { .. } => FileType::RegularFile,
        Node::Symlink { .. } => FileType::Symlink,
    }
}

/// A stable pseudo inode number for a plain readdir entry: eight bytes of
/// BLAKE3 of its name, top bit set.
fn pseudo_ino(name: &[u8]) -> u64 {
    let h = B3Digest::of(name);
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(prefix) | (1 << 63)
}

#[cfg(test)]
mod tests;
