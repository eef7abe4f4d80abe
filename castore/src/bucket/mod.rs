//! The object-store backend: one implementation of the store for a local
//! folder (the embedded default) and for S3-compatible buckets, so both use
//! one layout and one code path.
//!
//! Key layout (every object is written whole and becomes visible only when
//! complete: a staged file renamed into place locally, a single PUT on S3):
//! - `packs/<id>.pack`: zstd frames back to back (see [`crate::frame`]),
//!   `<id>` the BLAKE3 hex of the pack's bytes;
//! - `packs/<id>.idx`: protobuf `lazix.v1.PackIndex` (offset, length and
//!   chunk list of every frame). Written after its pack: a pack without an
//!   index is invisible, so a killed writer leaves nothing that reads as
//!   valid;
//! - `blobs/<2 hex>/<64 hex>`: chunk list of a multi-chunk blob (protobuf
//!   `lazix.v1.BlobChunks`);
//! - `directories/<2 hex>/<64 hex>`: protobuf `snix.castore.v1.Directory`;
//! - `pathinfo/<nixbase32 hash part>`: protobuf `snix.store.v1.PathInfo`;
//! - `accessed/<nixbase32 hash part>`: empty; when the path was last asked
//!   for (see [`access`]);
//! - `touched/<ms>-<random>`: digests an upload relies on (see [`gc`]);
//! - `locks/maintenance`: held by the one compaction or collection running.
//!
//! The pack indexes are loaded into memory at open; a lookup that misses
//! re-lists `packs/` (at most every [`REFRESH_INTERVAL`], waiting for the
//! next listing rather than failing) so packs written by another replica
//! become readable.

mod access;
mod compact;
mod durable;
mod gc;
mod location;
mod lock;
mod packs;
mod recent;
mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use lazix_proto::{ext as lpb, store as spb};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use prost::Message;

use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::directory::{validate_closure, Directory};
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::nix::nixbase32;
use crate::node::Node;
use crate::pathinfo::PathInfo;
use crate::read::bases::check_plain;
use crate::read::decode::decode_frames;
use crate::read::{BlobLayout, SINGLE_CHUNK_MAX};
use crate::similarity::{sketch, Sketch};
use crate::store::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore};

pub use access::ACCESS_MARK_EVERY;
pub use compact::{compact_when_quiet, CompactReport, COMPACT_LEVEL};
pub use gc::{GcOptions, GcReport};
pub use location::{local_folder, open_object_store};
use packs::{decode_index, FrameLocation, NewPack, PackTable};
use recent::RecentChunks;
pub use stats::StoreStats;

/// Objects read or written at once by one call.
const CONCURRENCY: usize = 16;
/// Shortest time between two re-listings of `packs/` caused by misses.
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
    objects: Arc<dyn ObjectStore>,
    table: RwLock<PackTable>,
    last_refresh: Mutex<Option<Instant>>,
    /// Serialises listings caused by misses.
    refresh_gate: tokio::sync::Mutex<()>,
    base_cache: moka::future::Cache<B3Digest, (ChunkMeta, Bytes), DigestKeyBuildHasher>,
    recent: Mutex<RecentChunks>,
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
}

/// Frame slots and the bytes read for them from one pack.
type PackRanges = (Vec<usize>, Vec<Bytes>);

/// What reading frames found.
enum ReadOutcome {
    /// The frames.
    Frames(Vec<Frame>),
    /// A pack listed in the table no longer exists.
    PackGone(Arc<str>),
}

/// What a set of files is made of (see [`BucketStore::file_chunks`]).
struct FileChunks {
    /// Every chunk, once.
    chunks: HashSet<B3Digest>,
    /// The files that have a stored chunk list.
    listed: Vec<B3Digest>,
}

/// Adds the digests of the non-empty files of `dirs` to `files`.
fn nonempty_files(dirs: &[Directory], files: &mut HashSet<B3Digest>) -> StoreResult<()> {
    for dir in dirs {
        for f in dir.proto().files.iter().filter(|f| f.size > 0) {
            files
                .insert(B3Digest::try_from(&f.digest).map_err(|e| {
                    StoreError::Corrupt(format!("directory {}: {e}", dir.digest()))
                })?);
        }
    }
    Ok(())
}

fn object_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound(e.to_string()),
        e => StoreError::Io(std::io::Error::other(e)),
    }
}

fn sharded(kind: &str, digest: &B3Digest) -> ObjectPath {
    let hex = digest.to_hex();
    ObjectPath::from(format!("{kind}/{}/{hex}", &hex[..2]))
}

fn pack_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("packs/{id}.pack"))
}

fn index_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("packs/{id}.idx"))
}

fn path_info_path(digest: &[u8; 20]) -> ObjectPath {
    ObjectPath::from(format!("pathinfo/{}", nixbase32::encode(digest)))
}

impl BucketStore {
    /// Opens the store at `location` (see [`open_object_store`]) and loads
    /// its pack indexes. Fails with a clear error when the location cannot
    /// be read (wrong credentials, no such bucket).
    pub async fn open(location: &str) -> StoreResult<Arc<Self>> {
        let objects = open_object_store(location)?;
        Self::with_objects_at(objects, local_folder(location))
            .await
            .map_err(|e| match e {
                StoreError::Io(io) => StoreError::Unavailable(format!("{location}: {io}")),
                e => e,
            })
    }

    /// A store over an already opened object store.
    pub async fn with_objects(objects: Arc<dyn ObjectStore>) -> StoreResult<Arc<Self>> {
        Self::with_objects_at(objects, None).await
    }

    async fn with_objects_at(
        objects: Arc<dyn ObjectStore>,
        local_root: Option<std::path::PathBuf>,
    ) -> StoreResult<Arc<Self>> {
        let store = Arc::new(Self {
            local_root,
            regzip: std::sync::atomic::AtomicBool::new(true),
            objects,
            table: RwLock::new(PackTable::default()),
            last_refresh: Mutex::new(None),
            refresh_gate: tokio::sync::Mutex::new(()),
            recent: Mutex::new(RecentChunks::new(RECENT_BYTES)),
            uploaded_at: Mutex::new(None),
            marked: access::recent_marks(),
            base_cache: moka::future::Cache::builder()
                .max_capacity(BASE_CACHE_BYTES)
                .weigher(|_: &B3Digest, (_, b): &(ChunkMeta, Bytes)| {
                    (b.len() + 64).min(u32::MAX as usize) as u32
                })
                .build_with_hasher(DigestKeyBuildHasher::default()),
        });
        store.refresh().await?;
        Ok(store)
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

    /// Loads the index of every pack not yet known. An index that does not
    /// parse is logged and its pack stays invisible.
    pub async fn refresh(&self) -> StoreResult<()> {
        *self.last_refresh.lock().expect("refresh clock") = Some(Instant::now());
        let listed = self.list_prefix("packs").await?;
        let listed_ids: HashSet<String> = listed
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_suffix(".idx")
                    .map(String::from)
            })
            .collect();
        let new_ids: Vec<String> = {
            let mut table = self.table.write().expect("pack table");
            // Packs deleted elsewhere (compaction, GC) first: their chunks
            // are in packs listed now, added below.
            for gone in table
                .pack_ids()
                .into_iter()
                .filter(|id| !listed_ids.contains(id.as_ref()))
            {
                table.remove_pack(&gone);
            }
            listed_ids
                .into_iter()
                .filter(|id| !table.has_pack(id))
                .collect()
        };
        let loaded: Vec<(String, StoreResult<lpb::PackIndex>)> = stream::iter(new_ids)
            .map(|id| async move {
                let got = self.get_optional(&index_path(&id)).await;
                let parsed = match got {
                    Ok(Some(data)) => decode_index(&id, &data),
                    Ok(None) => Err(StoreError::NotFound(format!("pack index {id}"))),
                    Err(e) => Err(e),
                };
                (id, parsed)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut table = self.table.write().expect("pack table");
        for (id, parsed) in loaded {
            match parsed.and_then(|index| table.add_pack(&id, &index, false)) {
                Ok(()) => {}
                Err(StoreError::Io(e)) => return Err(StoreError::Io(e)),
                Err(e) => tracing::error!(pack = %id, error = %e, "pack left invisible"),
            }
        }
        Ok(())
    }

    /// Re-lists packs for a lookup that missed: at most once per
    /// [`REFRESH_INTERVAL`] (a reader asking for chunks nobody has cannot
    /// make the server list the bucket in a loop), waiting for the next
    /// allowed listing rather than failing (a chunk another replica just
    /// stored is found within that interval). Concurrent misses share one
    /// listing.
    async fn refresh_for_miss(&self) -> StoreResult<()> {
        let asked = Instant::now();
        let _one_at_a_time = self.refresh_gate.lock().await;
        let last = *self.last_refresh.lock().expect("refresh clock");
        if last.is_some_and(|t| t > asked) {
            // Another miss listed while this one waited.
            return Ok(());
        }
        let since = last.map(|t| t.elapsed());
        if let Some(since) = since {
            if since < REFRESH_INTERVAL {
                tokio::time::sleep(REFRESH_INTERVAL - since).await;
            }
        }
        self.refresh().await
    }

    /// Whether uploads wrote packs since the last compaction and then
    /// stopped for at least `quiet`.
    pub fn uploads_quiet_for(&self, quiet: Duration) -> bool {
        self.uploaded_at
            .lock()
            .expect("upload clock")
            .is_some_and(|t| t.elapsed() >= quiet)
    }

    /// Chunks in the pack index.
    pub fn chunk_count(&self) -> usize {
        self.table.read().expect("pack table").chunk_count()
    }

    /// Every object under `prefix`, with its size and time.
    async fn list_prefix(&self, prefix: &str) -> StoreResult<Vec<object_store::ObjectMeta>> {
        self.objects
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(object_err)
    }

    /// Deletes an object; one already gone is fine.
    async fn delete_object(&self, path: &ObjectPath) -> StoreResult<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_err(e)),
        }
    }

    async fn get_optional(&self, path: &ObjectPath) -> StoreResult<Option<Bytes>> {
        match self.objects.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(object_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_err(e)),
        }
    }

    async fn exists(&self, path: &ObjectPath) -> StoreResult<bool> {
        match self.objects.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(object_err(e)),
        }
    }

    async fn put(&self, path: &ObjectPath, data: Bytes) -> StoreResult<()> {
        self.objects
            .put(path, PutPayload::from(data))
            .await
            .map_err(object_err)?;
        Ok(())
    }

    /// Writes an object that later objects will point at (a pack before
    /// its index, an index before PathInfos need its chunks) and, in a
    /// local folder, makes it durable before returning: S3 acknowledges
    /// only durable writes, object_store's local backend never syncs.
    async fn put_durable(&self, path: &ObjectPath, data: Bytes) -> StoreResult<()> {
        self.put(path, data).await?;
        let name = path.to_string();
        self.on_local_folder(move |root| durable::sync_file_and_folder(&root.join(name)))
            .await?;
        Ok(())
    }

    /// In a local folder, makes everything written so far durable (one
    /// `syncfs`): what a PathInfo written next refers to (directories,
    /// chunk lists, packs) then survives a power cut whenever it does.
    async fn sync_written(&self) -> StoreResult<()> {
        self.on_local_folder(durable::sync_filesystem).await?;
        Ok(())
    }

    /// Runs file-system work on the folder of a local store, on a blocking
    /// thread; `None` (nothing run) for a bucket.
    async fn on_local_folder<T: Send + 'static>(
        &self,
        work: impl FnOnce(&std::path::Path) -> std::io::Result<T> + Send + 'static,
    ) -> StoreResult<Option<T>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(None);
        };
        let out = tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(Some(out))
    }

    /// Frame locations of `digests`, re-listing packs once if any is
    /// unknown; `NotFound` names the first chunk still missing.
    async fn locate(&self, digests: &[B3Digest]) -> StoreResult<Vec<Arc<FrameLocation>>> {
        let lookup = |table: &PackTable| -> Result<Vec<Arc<FrameLocation>>, B3Digest> {
            digests.iter().map(|d| table.locate(d).ok_or(*d)).collect()
        };
        let first = lookup(&self.table.read().expect("pack table"));
        match first {
            Ok(locs) => Ok(locs),
            Err(_) => {
                self.refresh_for_miss().await?;
                lookup(&self.table.read().expect("pack table"))
                    .map_err(|missing| StoreError::NotFound(format!("chunk {missing}")))
            }
        }
    }

    async fn read_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        let Some(data) = self.get_optional(&sharded("directories", digest)).await? else {
            return Ok(None);
        };
        let dir = Directory::decode(&data)
            .map_err(|e| StoreError::Corrupt(format!("directory {digest}: {e}")))?;
        if dir.digest() != *digest {
            return Err(StoreError::Corrupt(format!(
                "directory {digest}: digest mismatch"
            )));
        }
        Ok(Some(dir))
    }

    async fn read_blob_chunks(&self, blob: &B3Digest) -> StoreResult<Option<Vec<ChunkMeta>>> {
        if *blob == B3Digest::of(b"") {
            return Ok(Some(Vec::new()));
        }
        let Some(data) = self.get_optional(&sharded("blobs", blob)).await? else {
            return Ok(None);
        };
        let msg = lpb::BlobChunks::decode(data)
            .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))?;
        msg.chunks
            .iter()
            .map(ChunkMeta::try_from_proto)
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))
    }

    /// Checks a chunk list against the stored chunks: all present with the
    /// listed sizes, and their concatenation hashes to the blob digest.
    async fn verify_blob(&self, b: &BlobChunks) -> StoreResult<()> {
        let size = b
            .chunks
            .iter()
            .try_fold(0u64, |acc, c| acc.checked_add(c.size))
            .ok_or_else(|| StoreError::Invalid(format!("blob {}: chunk sizes overflow", b.blob)))?;
        crate::read::layout::check_chunk_list(&b.blob, size, &b.chunks)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        if b.chunks.len() > 1 && !BlobLayout::needs_lookup(size) {
            return Err(StoreError::Invalid(format!(
                "blob {}: {size} bytes in {} chunks; a blob of at most {SINGLE_CHUNK_MAX} \
                 bytes is stored as one chunk",
                b.blob,
                b.chunks.len()
            )));
        }
        let mut hasher = Some(blake3::Hasher::new());
        for window in b.chunks.chunks(VERIFY_WINDOW) {
            if let Some(absent) = {
                let table = self.table.read().expect("pack table");
                window.iter().find(|c| !table.contains(&c.digest)).copied()
            } {
                // Perhaps stored by another replica since the last listing.
                self.locate(&[absent.digest]).await.map_err(|_| {
                    StoreError::Invalid(format!(
                        "blob {}: chunk {} not stored",
                        b.blob, absent.digest
                    ))
                })?;
            }
            // Just-uploaded chunks are at hand; others are read back.
            let mut datas: Vec<Option<Bytes>> = {
                let recent = self.recent.lock().expect("recent chunks");
                window.iter().map(|c| recent.get(&c.digest)).collect()
            };
            let misses: Vec<B3Digest> = window
                .iter()
                .zip(&datas)
                .filter(|(_, d)| d.is_none())
                .map(|(c, _)| c.digest)
                .collect();
            if !misses.is_empty() {
                let read = self.get_chunks(&misses).await.map_err(|e| match e {
                    StoreError::NotFound(m) => StoreError::Invalid(format!("blob {}: {m}", b.blob)),
                    e => e,
                })?;
                let mut read = read.into_iter();
                for slot in datas.iter_mut().filter(|d| d.is_none()) {
                    *slot = Some(read.next().expect("one per miss").decode_verified()?);
                }
            }
            let datas: Vec<Bytes> = datas.into_iter().map(|d| d.expect("filled")).collect();
            for (meta, data) in window.iter().zip(&datas) {
                if data.len() as u64 != meta.size {
                    return Err(StoreError::Invalid(format!(
                        "blob {}: chunk {} has size {}, list says {}",
                        b.blob,
                        meta.digest,
                        data.len(),
                        meta.size
                    )));
                }
            }
            let mut h = hasher.take().expect("hasher");
            hasher = Some(
                tokio::task::spawn_blocking(move || {
                    for d in &datas {
                        h.update(d);
                    }
                    h
                })
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?,
            );
        }
        let hasher = hasher.expect("hasher");
        if B3Digest::from(hasher.finalize()) != b.blob {
            return Err(StoreError::Invalid(format!(
                "blob {}: chunks do not hash to the blob digest",
                b.blob
            )));
        }
        Ok(())
    }

    /// Re-lists packs if a pack the table holds any of `digests` in no
    /// longer exists (deleted by a garbage collection in another process or
    /// replica): one existence check per distinct pack.
    async fn recheck_packs(&self, digests: &[B3Digest]) -> StoreResult<()> {
        let packs: HashSet<Arc<str>> = {
            let table = self.table.read().expect("pack table");
            digests
                .iter()
                .filter_map(|d| table.locate(d))
                .map(|l| l.pack.clone())
                .collect()
        };
        let gone: Vec<bool> = stream::iter(packs)
            .map(|p| async move { self.exists(&index_path(&p)).await.map(|e| !e) })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        if gone.contains(&true) {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Whether everything below `node` is stored: every directory, chunk
    /// list and chunk. Checked before a PathInfo is accepted, so no path
    /// ever refers to missing data (an upload that raced a garbage
    /// collection fails here and is retried, instead of being lost).
    async fn node_is_stored(&self, node: &Node) -> StoreResult<bool> {
        let mut files = HashSet::new();
        match node {
            Node::Directory { digest, .. } => {
                let closure = match self.get_closure(digest).await {
                    Ok(c) => c,
                    Err(StoreError::NotFound(_)) => return Ok(false),
                    Err(e) => return Err(e),
                };
                // Only trees every reader can serve within the limits.
                crate::directory::check_tree(node, &closure)?;
                nonempty_files(&closure, &mut files)?;
            }
            Node::File { digest, size, .. } if *size > 0 => {
                files.insert(*digest);
            }
            _ => {}
        }
        let chunks: Vec<B3Digest> = self.file_chunks(files).await?.chunks.into_iter().collect();
        for batch in chunks.chunks(4096) {
            self.recheck_packs(batch).await?;
            if self.locate(batch).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What these non-empty files are made of: a file whose digest is a
    /// stored chunk is that one chunk; the others' chunk lists are read (in
    /// batches), and a file with no list is taken as one chunk.
    async fn file_chunks(&self, files: HashSet<B3Digest>) -> StoreResult<FileChunks> {
        let (single, multi): (Vec<B3Digest>, Vec<B3Digest>) = {
            let table = self.table.read().expect("pack table");
            files.into_iter().partition(|f| table.contains(f))
        };
        let mut out = FileChunks {
            chunks: single.into_iter().collect(),
            listed: Vec::new(),
        };
        for batch in multi.chunks(1024) {
            for (blob, list) in batch.iter().zip(self.get_blob_chunks(batch).await?) {
                match list {
                    Some(list) => {
                        out.listed.push(*blob);
                        out.chunks.extend(list.iter().map(|c| c.digest));
                    }
                    None => {
                        out.chunks.insert(*blob);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Verified bytes of base chunks (all in plain frames), in order, from
    /// a cache of recently decoded frames (consecutive frames of a new
    /// version find their bases in the same frames of the old one).
    pub(crate) async fn base_chunks(
        &self,
        digests: &[B3Digest],
    ) -> StoreResult<Vec<(ChunkMeta, Bytes)>> {
        let mut found: HashMap<B3Digest, (ChunkMeta, Bytes)> = HashMap::new();
        let mut missing = Vec::new();
        for d in digests {
            match self.base_cache.get(d).await {
                Some(hit) => {
                    found.insert(*d, hit);
                }
                None => missing.push(*d),
            }
        }
        if !missing.is_empty() {
            let frames = self.get_frames(&missing).await?;
            check_plain(&frames)?;
            // The cache may refuse entries (TinyLFU admission): answer
            // from what was decoded, not from the cache.
            for (meta, bytes) in decode_frames(frames, HashMap::new()).await? {
                self.base_cache
                    .insert(meta.digest, (meta, bytes.clone()))
                    .await;
                found.insert(meta.digest, (meta, bytes));
            }
        }
        digests
            .iter()
            .map(|d| {
                found
                    .get(d)
                    .cloned()
                    .ok_or_else(|| StoreError::NotFound(format!("base chunk {d}")))
            })
            .collect()
    }

    /// The frames holding `digests` as the table says now; `PackGone` if
    /// a pack vanished underneath (compacted or collected meanwhile).
    async fn read_frames(&self, digests: &[B3Digest]) -> StoreResult<ReadOutcome> {
        let locations = self.locate(digests).await?;
        // Each frame once, in order of first request, grouped by pack.
        let mut seen = HashSet::new();
        let unique: Vec<Arc<FrameLocation>> = locations
            .into_iter()
            .filter(|l| seen.insert((l.pack.clone(), l.offset)))
            .collect();
        let mut by_pack: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, l) in unique.iter().enumerate() {
            by_pack.entry(l.pack.clone()).or_default().push(i);
        }
        let unique = &unique;
        let fetched: Result<Vec<PackRanges>, Result<StoreError, Arc<str>>> = stream::iter(by_pack)
            .map(|(pack, idxs)| async move {
                let ranges: Vec<std::ops::Range<u64>> = idxs
                    .iter()
                    .map(|&i| unique[i].offset..unique[i].offset + unique[i].length)
                    .collect();
                match self.objects.get_ranges(&pack_path(&pack), &ranges).await {
                    Ok(got) => Ok((idxs, got)),
                    Err(object_store::Error::NotFound { .. }) => Err(Err(pack)),
                    Err(e) => Err(Ok(object_err(e))),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(Ok(e)) => return Err(e),
            Err(Err(pack)) => return Ok(ReadOutcome::PackGone(pack)),
        };
        let mut slots: Vec<Option<Frame>> = vec![None; unique.len()];
        for (idxs, datas) in fetched {
            for (i, data) in idxs.into_iter().zip(datas) {
                let l = &unique[i];
                if data.len() as u64 != l.length {
                    return Err(StoreError::Corrupt(format!(
                        "pack {}: frame at {} is truncated",
                        l.pack, l.offset
                    )));
                }
                slots[i] = Some(Frame {
                    chunks: l.chunks.to_vec(),
                    data,
                    base: l.base.to_vec(),
                });
            }
        }
        Ok(ReadOutcome::Frames(
            slots
                .into_iter()
                .map(|f| f.expect("every frame fetched"))
                .collect(),
        ))
    }

    /// Writes a pack of frames (its index last, which makes it visible) and
    /// adds it to the table; `replace` lets it take over chunks held by
    /// other packs (compaction). Returns the pack's id and size.
    pub(crate) async fn write_pack(
        &self,
        frames: Vec<(Frame, Vec<Option<Sketch>>)>,
        level: u32,
        replace: bool,
    ) -> StoreResult<(String, u64)> {
        let pack = tokio::task::spawn_blocking(move || NewPack::build(&frames, level))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.put_durable(&pack_path(&pack.id), pack.bytes.clone())
            .await?;
        self.put_durable(&index_path(&pack.id), pack.encoded_index().into())
            .await?;
        self.table
            .write()
            .expect("pack table")
            .add_pack(&pack.id, &pack.index, replace)?;
        Ok((pack.id, pack.bytes.len() as u64))
    }

    /// Deletes a pack whose chunks are all held elsewhere: its index first
    /// (so it is never visible without its frames), then its frames.
    pub(crate) async fn delete_pack(&self, id: &str) -> StoreResult<()> {
        self.table.write().expect("pack table").remove_pack(id);
        for path in [index_path(id), pack_path(id)] {
            self.delete_object(&path).await?;
        }
        Ok(())
    }

    async fn read_path_info(&self, path: &ObjectPath) -> StoreResult<Option<PathInfo>> {
        let Some(data) = self.get_optional(path).await? else {
            return Ok(None);
        };
        let p = spb::PathInfo::decode(data)
            .map_err(|e| StoreError::Corrupt(format!("pathinfo {path}: {e}")))?;
        PathInfo::try_from_proto(&p).map(Some)
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

    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if frames.iter().any(|f| !f.base.is_empty()) {
            return Err(StoreError::Invalid(
                "uploaded frames must be plain (the server makes deltas)".into(),
            ));
        }
        // Frames whose chunks are all stored, or all in an earlier frame of
        // this call, add nothing: skipped before they cost a decode.
        let fresh: Vec<Frame> = {
            let table = self.table.read().expect("pack table");
            let mut seen: HashSet<B3Digest> = HashSet::new();
            frames
                .into_iter()
                .filter(|f| {
                    let new = !f
                        .chunks
                        .iter()
                        .all(|m| table.contains(&m.digest) || seen.contains(&m.digest));
                    if new {
                        seen.extend(f.chunks.iter().map(|m| m.digest));
                    }
                    new
                })
                .collect()
        };
        // Verify everything before anything is written, one frame at a
        // time: a frame's decoded bytes (at most MAX_FRAME_RAW) are dropped
        // once its chunks are checked and sketched, whatever the frames
        // inflate to in all.
        let mut framed: Vec<(Frame, Vec<Option<Sketch>>)> = Vec::with_capacity(fresh.len());
        for f in fresh {
            let (f, datas, sketches) = tokio::task::spawn_blocking(move || {
                let datas = f.decode_verified()?;
                let sketches: Vec<Option<Sketch>> = datas.iter().map(|d| sketch(d)).collect();
                Ok::<_, StoreError>((f, datas, sketches))
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            let mut recent = self.recent.lock().expect("recent chunks");
            for (m, d) in f.chunks.iter().zip(datas) {
                recent.insert(m.digest, d);
            }
            drop(recent);
            framed.push((f, sketches));
        }
        if framed.is_empty() {
            return Ok(());
        }
        // Stored as uploaded: ingest stays fast; compaction later
        // recompresses harder and finds deltas.
        self.write_pack(framed, 0, false).await?;
        *self.uploaded_at.lock().expect("upload clock") = Some(Instant::now());
        Ok(())
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        match self.read_frames(digests).await? {
            ReadOutcome::Frames(f) => Ok(f),
            // A pack compacted or collected meanwhile (here or by another
            // process): its chunks are in packs a fresh listing shows.
            ReadOutcome::PackGone(_) => {
                self.refresh().await?;
                match self.read_frames(digests).await? {
                    ReadOutcome::Frames(f) => Ok(f),
                    ReadOutcome::PackGone(pack) => Err(StoreError::Corrupt(format!(
                        "pack {pack} is indexed but missing"
                    ))),
                }
            }
        }
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        // Checked in parallel (decoding and hashing run on blocking
        // threads), all before any list is written.
        stream::iter(blobs.clone())
            .map(|b| async move { self.verify_blob(&b).await })
            .buffer_unordered(VERIFY_PARALLEL)
            .try_collect::<()>()
            .await?;
        stream::iter(blobs)
            .map(|b| async move {
                let msg = lpb::BlobChunks {
                    blob_digest: b.blob.into(),
                    chunks: b.chunks.iter().map(ChunkMeta::to_proto).collect(),
                };
                self.put(&sharded("blobs", &b.blob), msg.encode_to_vec().into())
                    .await
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        stream::iter(blobs.to_vec())
            .map(|b| async move { self.read_blob_chunks(&b).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }
}

#[async_trait]
impl DirectoryStore for BucketStore {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        self.read_directory(digest).await
    }

    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        // Breadth-first, one level at a time, each level's directories
        // fetched concurrently: a round trip per directory would dominate
        // on a bucket.
        let mut seen = HashSet::from([*root]);
        let mut level = vec![*root];
        let mut out = Vec::new();
        while !level.is_empty() {
            let dirs: Vec<Directory> = stream::iter(std::mem::take(&mut level))
                .map(|d| async move {
                    self.read_directory(&d)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("directory {d}")))
                })
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            level = dirs
                .iter()
                .flat_map(|d| d.child_directories().map(|(_, c, _)| c).collect::<Vec<_>>())
                .filter(|c| seen.insert(*c))
                .collect();
            out.extend(dirs);
            crate::directory::check_closure_len(out.len() + level.len())?;
        }
        Ok(out)
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        // Children not in the upload must already be stored: fetch their
        // sizes first, then validate without I/O.
        let sent: HashSet<B3Digest> = dirs.iter().map(Directory::digest).collect();
        let referenced: HashSet<B3Digest> = dirs
            .iter()
            .flat_map(|d| d.child_directories().map(|(_, c, _)| c).collect::<Vec<_>>())
            .filter(|c| !sent.contains(c))
            .collect();
        let stored: HashMap<B3Digest, u64> = stream::iter(referenced)
            .map(|d| async move { Ok::<_, StoreError>((d, self.read_directory(&d).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|(d, dir)| async move { Ok(dir.map(|dir| (d, dir.size()))) })
            .try_collect()
            .await?;
        let (root, dirs) = validate_closure(dirs, |d| Ok(stored.get(d).copied()))?;
        let kept: Vec<Option<B3Digest>> = stream::iter(dirs)
            .map(|(digest, dir)| async move {
                let path = sharded("directories", &digest);
                if self.exists(&path).await? {
                    return Ok(Some(digest));
                }
                self.put(&path, dir.encode().into()).await.map(|()| None)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        // Directories stored before (and children referenced by digest):
        // this upload relies on them.
        let relied: Vec<B3Digest> = kept
            .into_iter()
            .flatten()
            .chain(stored.into_keys())
            .collect();
        self.touch(&relied).await?;
        Ok(root)
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
        if info.nar_size > crate::limits::MAX_NAR_SIZE {
            return Err(crate::limits::over_limit(
                &format!("NarSize {}", info.nar_size),
                format!("{} bytes", crate::limits::MAX_NAR_SIZE),
            ));
        }
        if !self.node_is_stored(&info.node).await? {
            return Err(StoreError::Invalid(format!(
                "{} refers to data that is not stored",
                info.store_path
            )));
        }
        self.sync_written().await?;
        let path = path_info_path(info.store_path.digest());
        self.put_durable(&path, info.to_proto().encode_to_vec().into())
            .await
    }

    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        let objects = self.objects.clone();
        let listing = objects.list(Some(&ObjectPath::from("pathinfo")));
        listing
            .map_err(object_err)
            .map_ok(move |meta| {
                let objects = objects.clone();
                async move {
                    let data = objects
                        .get(&meta.location)
                        .await
                        .map_err(object_err)?
                        .bytes()
                        .await
                        .map_err(object_err)?;
                    let p = spb::PathInfo::decode(data).map_err(|e| {
                        StoreError::Corrupt(format!("pathinfo {}: {e}", meta.location))
                    })?;
                    PathInfo::try_from_proto(&p)
                }
            })
            .try_buffered(CONCURRENCY)
            .boxed()
    }
}
