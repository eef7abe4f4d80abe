//! The object-store backend: one implementation of the store for a local
//! folder (the embedded default) and for S3-compatible buckets, so both use
//! one layout and one code path.
//!
//! One struct, [`BucketStore`], its work split by job:
//! - [`keys`]: where every kind of object lives (the key layout);
//! - [`objects`]: object I/O (whole writes, durable writes, listings);
//! - [`counted`]: every object request counted by kind;
//! - [`pack_catalog`]: the pack table (which pack and frame hold each chunk,
//!   [`packs`]), loaded at open and refreshed when another replica writes;
//!   past a bound it lives on local disk ([`table_runs`]);
//! - [`pack_snapshot`]: every pack index in one object, so that opening a
//!   large store reads one object instead of every index;
//! - [`pack_journal`]: packs added and removed lately, so that a replica
//!   catches up on others' writes without listing every pack;
//! - [`path_catalog`]: the catalog of store paths (see [`crate::catalog`])
//!   stored and read back, for listings; its snapshots streamed
//!   ([`catalog_snapshot`]);
//! - [`record_file`]: objects written and read as streams of records (the
//!   snapshots above);
//! - [`reads`]: frames, chunk lists, directories and PathInfos read back;
//! - [`manifests`]: each root's chunk-list digests in one object, for
//!   readers that verify root signatures and for this store's renderer;
//! - [`writes`]: uploads checked before they become visible, and packs
//!   written and deleted;
//! - [`compact`], [`gc`] (its live sets compact in [`mark_set`]),
//!   [`access`], [`lock`], [`stats`]: maintenance, [`runs`] counting it.
//!
//! The pack indexes are loaded at open (into memory, then local disk past
//! a bound, see [`packs::SpillPolicy`]); a lookup that misses catches up
//! on the pack journal (at most every [`REFRESH_INTERVAL`], waiting for
//! the next time rather than failing) so packs written by another replica
//! become readable, and lists `packs/` in full only now and then.

mod access;
mod catalog_snapshot;
mod compact;
mod counted;
mod durable;
mod gc;
mod keys;
mod location;
mod lock;
mod manifests;
mod mark_set;
mod objects;
mod pack_catalog;
mod pack_journal;
mod pack_snapshot;
mod packs;
mod path_catalog;
mod reads;
mod recent;
mod record_file;
mod resemblance;
mod runs;
mod stats;
mod table_runs;
mod writes;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::ObjectStore;

use crate::catalog::CatalogEntry;
use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::pathinfo::PathInfo;
use crate::store::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore};
use crate::trust::ChunkListsDigest;

pub use access::ACCESS_MARK_EVERY;
pub use compact::{compact_when_quiet, CompactReport, COMPACT_LEVEL};
pub use counted::ObjectRequests;
pub use gc::{GcOptions, GcReport};
use keys::path_info_path;
pub use location::{local_folder, open_object_store};
use objects::object_err;
use packs::PackTable;
pub use packs::SpillPolicy;
use recent::RecentChunks;
pub use runs::MaintenanceReading;
pub use stats::StoreStats;
use writes::nonempty_files;

/// Objects read or written at once by one call.
const CONCURRENCY: usize = 16;
/// Shortest time between two catch-ups on the pack journal caused by misses.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Chunks hashed per step when checking a blob's chunk list (bounds memory).
const VERIFY_WINDOW: usize = 64;
/// Chunk lists checked at once.
const VERIFY_PARALLEL: usize = 4;

/// Bytes of decoded chunks kept for delta encoding.
const BASE_CACHE_BYTES: u64 = 128 * 1024 * 1024;
/// Bytes of just-uploaded chunks kept for checking chunk lists.
const RECENT_BYTES: u64 = 128 * 1024 * 1024;

/// A store in an object store (local folder or bucket). Share it behind an
/// `Arc`.
pub struct BucketStore {
    /// This store, for work it starts in the background.
    me: std::sync::Weak<BucketStore>,
    objects: Arc<dyn ObjectStore>,
    table: RwLock<PackTable>,
    last_refresh: Mutex<Option<Instant>>,
    /// Where catching up on the pack journal starts next.
    journal: Mutex<pack_journal::JournalCursor>,
    /// One catching up on the pack journal at a time.
    journal_gate: tokio::sync::Mutex<()>,
    /// Serialises listings caused by misses.
    refresh_gate: tokio::sync::Mutex<()>,
    /// One rebuild of the catalog of store paths at a time in this
    /// process: listings waiting on it read the snapshot it stored.
    catalog_rebuild_gate: tokio::sync::Mutex<()>,
    /// Catalog snapshots a listing of this process found damaged past
    /// their head: the next listing rebuilds instead of reading them.
    damaged_catalog_snapshots: Mutex<std::collections::HashSet<String>>,
    base_cache: moka::future::Cache<B3Digest, (ChunkMeta, Bytes), DigestKeyBuildHasher>,
    recent: Arc<Mutex<RecentChunks>>,
    /// When packs were last written by uploads since the last compaction.
    uploaded_at: Mutex<Option<Instant>>,
    /// Paths whose access mark this process wrote lately.
    marked: moka::sync::Cache<[u8; 20], ()>,
    /// The folder of a local store: where killed writers' staging files
    /// (`NAME#N`, invisible to listings) are swept.
    local_root: Option<std::path::PathBuf>,
    /// Whether compaction may store gzip members as their contents (see
    /// [`crate::regzip`]); on unless [`BucketStore::keep_gzip_as_is`].
    regzip: std::sync::atomic::AtomicBool,
    /// Compactions and collections run by this store object.
    runs: runs::MaintenanceRuns,
    /// Catalog changes on their way into a segment.
    catalog_writer: path_catalog::CatalogWriter,
    /// Whether a pack table snapshot is being written in the background.
    pack_snapshot_running: std::sync::atomic::AtomicBool,
    /// Whether opening read so many indexes one by one that a new pack
    /// table snapshot would pay (see [`BucketStore::keep_pack_snapshot`]).
    pack_snapshot_wanted: std::sync::atomic::AtomicBool,
    /// Requests made of `objects`.
    requests: Arc<counted::Counters>,
}

impl BucketStore {
    /// The requests this store object made of its object store so far.
    pub fn object_requests(&self) -> ObjectRequests {
        self.requests.read()
    }

    /// What compactions and collections this store object ran.
    pub fn maintenance_runs(&self) -> MaintenanceReading {
        self.runs.read()
    }

    /// Opens the store at `location` (see [`open_object_store`]) and loads
    /// its pack indexes. Fails with a clear error when the location cannot
    /// be read (wrong credentials, no such bucket).
    pub async fn open(location: &str) -> StoreResult<Arc<Self>> {
        Self::open_with_table(location, SpillPolicy::from_env()).await
    }

    /// [`BucketStore::open`] with its pack table written to local disk as
    /// `policy` says (by default as the environment says, see
    /// [`SpillPolicy::from_env`]).
    pub async fn open_with_table(location: &str, policy: SpillPolicy) -> StoreResult<Arc<Self>> {
        let objects = open_object_store(location)?;
        Self::with_objects_at(objects, local_folder(location), policy)
            .await
            .map_err(|e| match e {
                StoreError::Io(io) => StoreError::Unavailable(format!("{location}: {io}")),
                e => e,
            })
    }

    /// A store over an already opened object store.
    pub async fn with_objects(objects: Arc<dyn ObjectStore>) -> StoreResult<Arc<Self>> {
        Self::with_objects_at(objects, None, SpillPolicy::from_env()).await
    }

    async fn with_objects_at(
        objects: Arc<dyn ObjectStore>,
        local_root: Option<std::path::PathBuf>,
        policy: SpillPolicy,
    ) -> StoreResult<Arc<Self>> {
        let store = Self::unloaded(objects, local_root, policy);
        store.refresh().await?;
        Ok(store)
    }

    /// Opens the store at `location` to change its PathInfos only (`lazix
    /// delete`): its pack table, which a store of a million packs takes a
    /// minute to load, is never loaded.
    pub async fn open_path_infos(location: &str) -> StoreResult<PathInfoEditor> {
        let objects = open_object_store(location)?;
        Ok(PathInfoEditor {
            store: Self::unloaded(objects, local_folder(location), SpillPolicy::from_env()),
        })
    }

    /// A store object whose pack table is still empty.
    fn unloaded(
        objects: Arc<dyn ObjectStore>,
        local_root: Option<std::path::PathBuf>,
        policy: SpillPolicy,
    ) -> Arc<Self> {
        let requests: Arc<counted::Counters> = Arc::default();
        let objects: Arc<dyn ObjectStore> = Arc::new(counted::Counted {
            inner: objects,
            counters: requests.clone(),
        });
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            requests,
            local_root,
            regzip: std::sync::atomic::AtomicBool::new(true),
            runs: runs::MaintenanceRuns::default(),
            catalog_writer: Default::default(),
            pack_snapshot_running: Default::default(),
            pack_snapshot_wanted: Default::default(),
            objects,
            table: RwLock::new(PackTable::new(policy)),
            last_refresh: Mutex::new(None),
            journal: Mutex::default(),
            journal_gate: tokio::sync::Mutex::new(()),
            refresh_gate: tokio::sync::Mutex::new(()),
            catalog_rebuild_gate: tokio::sync::Mutex::new(()),
            damaged_catalog_snapshots: Mutex::default(),
            recent: Arc::new(Mutex::new(RecentChunks::new(RECENT_BYTES))),
            uploaded_at: Mutex::new(None),
            marked: access::recent_marks(),
            base_cache: moka::future::Cache::builder()
                .max_capacity(BASE_CACHE_BYTES)
                .weigher(|_: &B3Digest, (_, b): &(ChunkMeta, Bytes)| {
                    (b.len() + 64).min(u32::MAX as usize) as u32
                })
                .build_with_hasher(DigestKeyBuildHasher::default()),
        })
    }

    /// From now on, compaction (and GC's repacking) in this process stores
    /// gzip files as they are: more bytes stored and shipped, but readers
    /// and the HTTP shim never deflate them again.
    pub fn keep_gzip_as_is(&self) {
        self.regzip
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The object store underneath (for tools and tests).
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Whether uploads wrote packs since the last compaction and then
    /// stopped for at least `quiet`.
    pub fn uploads_quiet_for(&self, quiet: Duration) -> bool {
        self.uploaded_at
            .lock()
            .expect("upload clock")
            .is_some_and(|t| t.elapsed() >= quiet)
    }
}

/// A store opened to change PathInfos only (see
/// [`BucketStore::open_path_infos`]): without its pack table it could
/// answer no chunk read or write, so it offers none.
pub struct PathInfoEditor {
    store: Arc<BucketStore>,
}

impl PathInfoEditor {
    /// See [`BucketStore::delete_path_info`].
    pub async fn delete_path_info(&self, digest: &[u8; 20]) -> StoreResult<bool> {
        self.store.delete_path_info(digest).await
    }

    /// The requests it made of its object store so far.
    pub fn object_requests(&self) -> ObjectRequests {
        self.store.object_requests()
    }
}

#[async_trait]
impl BlobStore for BucketStore {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        // A garbage collection in another process may have deleted packs
        // this table still lists: never answer "present" from them.
        self.recheck_packs(digests).await?;
        let (missing, present): (Vec<B3Digest>, Vec<B3Digest>) = {
            let table = self.table.read().expect("pack table");
            digests.iter().partition(|d| !table.contains(d))
        };
        // The uploader will rely on these without sending them: keep them
        // safe from a collection running meanwhile.
        self.touch(&present).await?;
        Ok(missing)
    }

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.store_frames(frames, order).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.frames(digests).await
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.store_blob_chunks(blobs).await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        self.blob_chunk_lists(blobs).await
    }

    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        self.manifest(root).await.map(Some)
    }

    async fn own_chunk_list_digests(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        self.stored_manifest(root).await
    }
}

#[async_trait]
impl DirectoryStore for BucketStore {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        self.read_directory(digest).await
    }

    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        self.closure(root).await
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        self.store_closure(dirs).await
    }
}

#[async_trait]
impl PathInfoStore for BucketStore {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        let info = self.read_path_info(&path_info_path(digest)).await?;
        if info.is_some() {
            self.note_access(digest);
        }
        Ok(info)
    }

    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
        self.store_path_info(info).await
    }

    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        self.path_infos()
    }

    async fn list_catalog(&self) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        self.catalog_listing().await
    }

    async fn get_profile(&self, digest: &[u8; 20]) -> StoreResult<Option<Bytes>> {
        self.get_optional(&keys::profile_path(digest)).await
    }

    async fn put_profile(&self, digest: &[u8; 20], profile: Bytes) -> StoreResult<()> {
        let Some(info) = self.read_path_info(&path_info_path(digest)).await? else {
            return Err(StoreError::NotFound(format!(
                "store path {}: no such path here",
                crate::nix::nixbase32::encode(digest)
            )));
        };
        crate::profile::check_stored(&info.store_path.basename(), &profile)?;
        self.put(&keys::profile_path(digest), profile).await
    }
}
