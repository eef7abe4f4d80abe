//! In-memory caches in front of any store (moka, bounded by bytes or
//! entries), so hot chunks, directories, chunk lists and PathInfos are read
//! from the backend once. Content-addressed objects never change, so they
//! are cached until evicted; PathInfos are cached briefly (another replica
//! or a GC may change them) and misses are never cached. Concurrent
//! requests for one uncached object share one backend read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use moka::future::Cache;

use super::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore, Store};
use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::pathinfo::PathInfo;
use crate::read::single_flight::{Abandoned, SingleFlight, Turn};
use crate::trust::ChunkListsDigest;

/// Cache sizes.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Bytes of frames (as stored, compressed); 0: no frame cache (one
    /// concurrent read of a chunk is still shared).
    pub chunk_bytes: u64,
    /// Bytes of directories and chunk lists (encoded).
    pub metadata_bytes: u64,
    /// PathInfos kept.
    pub path_infos: u64,
    /// How long a PathInfo is trusted.
    pub path_info_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 256 * 1024 * 1024,
            metadata_bytes: 64 * 1024 * 1024,
            path_infos: 100_000,
            path_info_ttl: Duration::from_secs(10),
        }
    }
}

/// Fills the empty slots of `found`, in order, with `fetched` (the answer
/// for exactly the misses); every slot is then filled.
pub(super) fn fill_misses<T>(found: Vec<Option<T>>, fetched: Vec<T>) -> StoreResult<Vec<T>> {
    let mut fetched = fetched.into_iter();
    let filled = found
        .into_iter()
        .map(|slot| match slot {
            Some(v) => Ok(v),
            None => fetched
                .next()
                .ok_or_else(|| crate::StoreError::Corrupt("short answer from the store".into())),
        })
        .collect::<StoreResult<Vec<T>>>()?;
    if fetched.next().is_some() {
        return Err(crate::StoreError::Corrupt(
            "long answer from the store".into(),
        ));
    }
    Ok(filled)
}

/// Looks every digest up with `get`; returns the answers (None for a miss)
/// and the missed digests, in order.
pub(super) async fn hits_and_misses<T, F, Fut>(
    digests: &[B3Digest],
    get: F,
) -> (Vec<Option<T>>, Vec<B3Digest>)
where
    F: Fn(B3Digest) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut found = Vec::with_capacity(digests.len());
    let mut misses = Vec::new();
    for d in digests {
        let hit = get(*d).await;
        if hit.is_none() {
            misses.push(*d);
        }
        found.push(hit);
    }
    (found, misses)
}

/// What a backend read told about one chunk: the frame holding it (`None`
/// if the answer lacked it), or the read's error.
type FrameOutcome = Result<Option<Arc<Frame>>, Arc<StoreError>>;

struct CachedBlobs {
    inner: Arc<dyn BlobStore>,
    /// Each chunk's frame (a frame is shared by the keys of its chunks);
    /// `None` when configured with no bytes for frames (a layer above
    /// keeps decoded chunks, one below keeps frames on disk).
    frames: Option<Cache<B3Digest, Arc<Frame>, DigestKeyBuildHasher>>,
    /// Chunks being read from the backend right now.
    in_flight: SingleFlight<B3Digest, FrameOutcome, DigestKeyBuildHasher>,
    lists: Cache<B3Digest, Arc<Vec<ChunkMeta>>, DigestKeyBuildHasher>,
    /// Blobs the backend said have no chunk list (one chunk under their
    /// own digest): most files are that small, and a renderer would
    /// otherwise ask the backend again for each one on every NAR it
    /// renders. Kept for a while only: another replica may store a list
    /// for a blob that was absent when asked.
    single_chunk: Cache<B3Digest, (), DigestKeyBuildHasher>,
}

/// How long a "no chunk list" answer is trusted.
const SINGLE_CHUNK_TTL: Duration = Duration::from_secs(600);
/// What one remembered "no chunk list" answer weighs against the metadata
/// budget (key, entry and bookkeeping).
const SINGLE_CHUNK_WEIGHT: u64 = 64;

struct CachedDirectories {
    inner: Arc<dyn DirectoryStore>,
    closures: Cache<B3Digest, Arc<Vec<Directory>>, DigestKeyBuildHasher>,
}

struct CachedPathInfos {
    inner: Arc<dyn PathInfoStore>,
    infos: Cache<[u8; 20], Arc<PathInfo>, DigestKeyBuildHasher>,
}

/// Wraps `inner` with caches of the given sizes.
pub fn cached(inner: Store, config: CacheConfig) -> Store {
    let meta_weight = |_: &B3Digest, v: &Arc<Vec<ChunkMeta>>| (v.len() * 40 + 64) as u32;
    Store {
        blobs: Arc::new(CachedBlobs {
            inner: inner.blobs,
            frames: (config.chunk_bytes > 0).then(|| {
                Cache::builder()
                    .max_capacity(config.chunk_bytes)
                    // Each chunk's key carries its share of the frame.
                    .weigher(|_: &B3Digest, f: &Arc<Frame>| {
                        (f.data.len() / f.chunks.len().max(1)).min(u32::MAX as usize) as u32 + 64
                    })
                    .build_with_hasher(DigestKeyBuildHasher::default())
            }),
            in_flight: SingleFlight::default(),
            lists: Cache::builder()
                .max_capacity(config.metadata_bytes / 2)
                .weigher(meta_weight)
                .build_with_hasher(DigestKeyBuildHasher::default()),
            single_chunk: Cache::builder()
                .max_capacity(config.metadata_bytes / 4 / SINGLE_CHUNK_WEIGHT)
                .time_to_live(SINGLE_CHUNK_TTL)
                .build_with_hasher(DigestKeyBuildHasher::default()),
        }),
        directories: Arc::new(CachedDirectories {
            inner: inner.directories,
            closures: Cache::builder()
                .max_capacity(config.metadata_bytes / 2)
                .weigher(|_: &B3Digest, v: &Arc<Vec<Directory>>| {
                    v.iter()
                        .map(|d| d.encode().len() as u64 + 64)
                        .sum::<u64>()
                        .min(u32::MAX as u64) as u32
                })
                .build_with_hasher(DigestKeyBuildHasher::default()),
        }),
        path_infos: Arc::new(CachedPathInfos {
            inner: inner.path_infos,
            infos: Cache::builder()
                .max_capacity(config.path_infos)
                .time_to_live(config.path_info_ttl)
                .build_with_hasher(DigestKeyBuildHasher::default()),
        }),
    }
}

#[async_trait]
impl BlobStore for CachedBlobs {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        // Always asked of the backend, which records what an upload relies
        // on (garbage collection must not take it meanwhile).
        self.inner.missing_chunks(digests).await
    }

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.put_frames_ordered(frames, order).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        let (found, misses) = hits_and_misses(digests, |d| async move {
            match &self.frames {
                Some(frames) => frames.get(&d).await,
                None => None,
            }
        })
        .await;
        let mut frames: Vec<Arc<Frame>> = found.into_iter().flatten().collect();
        frames.extend(self.read_shared(&misses).await?);
        // Each frame once, in order of first request.
        let mut seen = std::collections::HashSet::new();
        Ok(frames
            .into_iter()
            .filter(|f| {
                f.chunks
                    .first()
                    .is_none_or(|c| seen.insert((c.digest, f.chunks.len())))
            })
            .map(|f| f.as_ref().clone())
            .collect())
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        let stored: Vec<B3Digest> = blobs.iter().map(|b| b.blob).collect();
        self.inner.put_blob_chunks(blobs).await?;
        for blob in &stored {
            self.single_chunk.invalidate(blob).await;
        }
        Ok(())
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        // A hit is a known list or a known "none"; misses are asked for in
        // one call.
        let (found, misses) = hits_and_misses(blobs, |d| async move {
            if let Some(list) = self.lists.get(&d).await {
                return Some(Some(list.as_ref().clone()));
            }
            self.single_chunk.get(&d).await.map(|()| None)
        })
        .await;
        let mut answers = Vec::new();
        if !misses.is_empty() {
            answers = self.inner.get_blob_chunks(&misses).await?;
            for (digest, answer) in misses.iter().zip(&answers) {
                match answer {
                    Some(list) => self.lists.insert(*digest, Arc::new(list.clone())).await,
                    None => self.single_chunk.insert(*digest, ()).await,
                }
            }
        }
        fill_misses(found, answers)
    }

    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.chunk_list_digests(root).await
    }

    async fn own_chunk_list_digests(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.own_chunk_list_digests(root).await
    }

    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        self.lists.invalidate(blob).await;
        self.single_chunk.invalidate(blob).await;
        self.inner.refuse_chunk_list(blob).await
    }
}

impl CachedBlobs {
    /// The frames of `misses` from the backend: one read for those nobody
    /// is reading, the reads under way for the others (a read abandoned by
    /// its caller is done again here).
    async fn read_shared(&self, misses: &[B3Digest]) -> StoreResult<Vec<Arc<Frame>>> {
        let mut claims = Vec::new();
        let mut waits = Vec::new();
        for (turn, digest) in self.in_flight.claim_or_join(misses).into_iter().zip(misses) {
            match turn {
                Turn::Claimed(claim) => claims.push(claim),
                Turn::Joined(waiter) => waits.push((*digest, waiter)),
            }
        }
        let mut frames = Vec::new();
        if !claims.is_empty() {
            let digests: Vec<B3Digest> = claims.iter().map(|c| *c.key()).collect();
            match self.read_and_keep(&digests).await {
                Ok(by_chunk) => {
                    for claim in claims {
                        let frame = by_chunk.get(claim.key()).cloned();
                        frames.extend(frame.clone());
                        claim.publish(Ok(frame));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for claim in claims {
                        claim.publish(Err(e.clone()));
                    }
                    return Err(StoreError::from_shared(e));
                }
            }
        }
        let mut abandoned = Vec::new();
        for (digest, waiter) in waits {
            match waiter.outcome().await {
                Ok(outcome) => frames.extend(outcome.map_err(StoreError::from_shared)?),
                Err(Abandoned) => abandoned.push(digest),
            }
        }
        if !abandoned.is_empty() {
            let by_chunk = self.read_and_keep(&abandoned).await?;
            frames.extend(abandoned.iter().filter_map(|d| by_chunk.get(d).cloned()));
        }
        Ok(frames)
    }

    /// One backend read of `digests`' frames, each cached under every
    /// chunk it holds.
    async fn read_and_keep(
        &self,
        digests: &[B3Digest],
    ) -> StoreResult<HashMap<B3Digest, Arc<Frame>>> {
        let mut by_chunk = HashMap::new();
        for f in self.inner.get_frames(digests).await? {
            let f = Arc::new(f);
            for c in &f.chunks {
                if let Some(frames) = &self.frames {
                    frames.insert(c.digest, f.clone()).await;
                }
                by_chunk.insert(c.digest, f.clone());
            }
        }
        Ok(by_chunk)
    }
}

#[async_trait]
impl DirectoryStore for CachedDirectories {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        if let Some(c) = self.closures.get(digest).await {
            return Ok(c.first().cloned());
        }
        self.inner.get_directory(digest).await
    }

    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        let inner = self.inner.clone();
        let root = *root;
        let closure = self
            .closures
            .try_get_with(
                root,
                async move { inner.get_closure(&root).await.map(Arc::new) },
            )
            .await
            .map_err(crate::StoreError::from_shared)?;
        Ok(closure.as_ref().clone())
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        self.inner.put_closure(dirs).await
    }
}

#[async_trait]
impl PathInfoStore for CachedPathInfos {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        // Concurrent askers share one read; a miss is shared but not kept.
        let inner = self.inner.clone();
        let key = *digest;
        let answer = self
            .infos
            .try_get_with(key, async move {
                match inner.get_path_info(&key).await {
                    Ok(Some(info)) => Ok(Arc::new(info)),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match answer {
            Ok(info) => Ok(Some(info.as_ref().clone())),
            Err(e) => match e.as_ref() {
                None => Ok(None),
                Some(e) => Err(e.duplicate()),
            },
        }
    }

    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
        let digest = *info.store_path.digest();
        self.inner.put_path_info(info).await?;
        self.infos.invalidate(&digest).await;
        Ok(())
    }

    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        self.inner.list_path_infos()
    }

    async fn list_catalog(
        &self,
    ) -> StoreResult<BoxStream<'static, StoreResult<crate::catalog::CatalogEntry>>> {
        self.inner.list_catalog().await
    }

    async fn get_profile(&self, digest: &[u8; 20]) -> StoreResult<Option<bytes::Bytes>> {
        self.inner.get_profile(digest).await
    }

    async fn put_profile(&self, digest: &[u8; 20], profile: bytes::Bytes) -> StoreResult<()> {
        self.inner.put_profile(digest, profile).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::bucket::BucketStore;
    use crate::chunk::{Chunk, ChunkPayload};
    use crate::store::decoded_chunks;
    use crate::testutil::frame_of;

    use crate::nix::store_path::StorePath;
    use crate::node::Node;
    use crate::testutil::SlowStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_one_object_read_the_backend_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        let counting = SlowStore::new(backend.clone(), Duration::from_millis(200));
        let store = cached(
            Store {
                blobs: counting.clone(),
                directories: backend.clone(),
                path_infos: counting.clone(),
            },
            CacheConfig::default(),
        );
        store
            .blobs
            .put_frames(vec![frame_of(&[b"chunk a", b"chunk b"])])
            .await
            .unwrap();
        let a = B3Digest::of(b"chunk a");
        let b = B3Digest::of(b"chunk b");
        let path = StorePath::parse("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg").unwrap();
        store
            .path_infos
            .put_path_info(PathInfo {
                store_path: path.clone(),
                node: Node::File {
                    digest: a,
                    size: 7,
                    executable: false,
                },
                references: vec![],
                nar_size: 128,
                nar_sha256: [1; 32],
                signatures: vec![],
                root_signatures: vec![],
                deriver: None,
                ca: None,
            })
            .await
            .unwrap();

        // Sixteen readers of one chunk, at once: one read.
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let blobs = store.blobs.clone();
                tokio::spawn(async move { blobs.get_chunks(&[a]).await })
            })
            .collect();
        for r in readers {
            let chunks = r.await.unwrap().unwrap();
            assert_eq!(chunks[0].decode_verified().unwrap(), &b"chunk a"[..]);
        }
        assert_eq!(counting.frames_read(), 1);
        // Its neighbour came in the same frame.
        let chunks = store.blobs.get_chunks(&[b, a]).await.unwrap();
        assert_eq!(chunks[0].decode_verified().unwrap(), &b"chunk b"[..]);
        assert_eq!(counting.frames_read(), 1);

        // Sixteen askers of one PathInfo: one read; a missing one is
        // asked again each time (a miss is never kept).
        let askers: Vec<_> = (0..16)
            .map(|_| {
                let infos = store.path_infos.clone();
                let d = *path.digest();
                tokio::spawn(async move { infos.get_path_info(&d).await })
            })
            .collect();
        for a in askers {
            assert!(a.await.unwrap().unwrap().is_some());
        }
        assert_eq!(counting.path_infos_read(), 1);
        for _ in 0..2 {
            assert!(store
                .path_infos
                .get_path_info(&[7; 20])
                .await
                .unwrap()
                .is_none());
        }
        assert_eq!(counting.path_infos_read(), 3);
    }

    #[tokio::test]
    async fn blobs_without_a_chunk_list_are_asked_of_the_backend_once() {
        let dir = tempfile::tempdir().unwrap();
        let inner = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        // Two chunks together larger than a blob of one chunk can be.
        let (a, b) = (vec![b'a'; 10_000], vec![b'b'; 10_000]);
        inner.put_frames(vec![frame_of(&[&a, &b])]).await.unwrap();
        let counting = SlowStore::new(inner.clone(), Duration::ZERO);
        let store = cached(
            Store {
                blobs: counting.clone(),
                directories: inner.clone(),
                path_infos: inner,
            },
            CacheConfig::default(),
        );
        let single = B3Digest::of(&a);
        let listed = B3Digest::of(&[a.as_slice(), &b].concat());
        // Asked before its list is stored (another upload under way), twice.
        for _ in 0..2 {
            assert_eq!(
                store
                    .blobs
                    .get_blob_chunks(&[single, listed])
                    .await
                    .unwrap(),
                vec![None, None]
            );
        }
        assert_eq!(
            counting.blob_lists_read(),
            1,
            "a known 'none' was asked again"
        );

        // Storing a list through the cache replaces the remembered "none".
        let chunks = vec![
            ChunkMeta {
                digest: single,
                size: 10_000,
            },
            ChunkMeta {
                digest: B3Digest::of(&b),
                size: 10_000,
            },
        ];
        store
            .blobs
            .put_blob_chunks(vec![BlobChunks {
                blob: listed,
                chunks: chunks.clone(),
            }])
            .await
            .unwrap();
        assert_eq!(
            store
                .blobs
                .get_blob_chunks(&[listed, single])
                .await
                .unwrap(),
            vec![Some(chunks), None]
        );
        assert_eq!(counting.blob_lists_read(), 2);
    }

    #[test]
    fn fill_misses_keeps_order_and_checks_counts() {
        assert_eq!(
            fill_misses(vec![Some(1), None, Some(3), None], vec![2, 4]).unwrap(),
            vec![1, 2, 3, 4]
        );
        assert!(fill_misses(vec![None, None], vec![1]).is_err());
        assert!(fill_misses(vec![Some(1)], vec![2]).is_err());
    }

    #[tokio::test]
    async fn caches_answer_like_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Store::from_backend(
            BucketStore::open(dir.path().to_str().unwrap())
                .await
                .unwrap(),
        );
        let store = cached(backend.clone(), CacheConfig::default());
        let decoded = decoded_chunks(store.blobs.clone(), 1 << 20);
        let a = Chunk::from_raw(Bytes::from_static(b"chunk a"));
        let b = Chunk::from_raw(Bytes::from_static(b"chunk b"));
        store
            .blobs
            .put_frames(vec![frame_of(&[b"chunk a", b"chunk b"])])
            .await
            .unwrap();
        for _ in 0..2 {
            // Mixed hits and misses come back in request order, verified.
            let got = decoded
                .get_chunks(&[b.digest, a.digest, b.digest])
                .await
                .unwrap();
            let bytes: Vec<Bytes> = got.iter().map(|c| c.decode_verified().unwrap()).collect();
            assert_eq!(bytes, vec!["chunk b", "chunk a", "chunk b"]);
            assert!(matches!(got[0].payload, ChunkPayload::Verified(_)));
        }
        // A blob of one chunk: no list stored, answered None.
        assert_eq!(
            store.blobs.get_blob_chunks(&[a.digest]).await.unwrap(),
            vec![None]
        );
        let missing = B3Digest::of(b"never stored");
        assert!(store.blobs.get_chunks(&[missing]).await.is_err());
        assert_eq!(
            store
                .blobs
                .missing_chunks(&[a.digest, missing])
                .await
                .unwrap(),
            vec![missing]
        );
    }
}
