//! In-memory caches in front of any store (moka, bounded by bytes or
//! entries), so hot chunks, directories, chunk lists and PathInfos are read
//! from the backend once. Content-addressed objects never change, so they
//! are cached until evicted; PathInfos are cached briefly (another replica
//! or a GC may change them) and misses are never cached.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use moka::future::Cache;

use bytes::Bytes;

use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::directory::Directory;
use crate::error::StoreResult;
use crate::pathinfo::PathInfo;
use crate::services::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore, Store};

/// Cache sizes.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Bytes of chunk payloads (as stored, compressed).
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

struct CachedBlobs {
    inner: Arc<dyn BlobStore>,
    chunks: Cache<B3Digest, Chunk, DigestKeyBuildHasher>,
    lists: Cache<B3Digest, Arc<Vec<ChunkMeta>>, DigestKeyBuildHasher>,
}

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
            chunks: Cache::builder()
                .max_capacity(config.chunk_bytes)
                .weigher(|_: &B3Digest, c: &Chunk| c.payload_len().min(u32::MAX as u64) as u32 + 64)
                .build_with_hasher(DigestKeyBuildHasher::default()),
            lists: Cache::builder()
                .max_capacity(config.metadata_bytes / 2)
                .weigher(meta_weight)
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
        let unknown: Vec<B3Digest> = digests
            .iter()
            .filter(|d| !self.chunks.contains_key(*d))
            .copied()
            .collect();
        if unknown.is_empty() {
            return Ok(unknown);
        }
        self.inner.missing_chunks(&unknown).await
    }

    async fn put_chunks(&self, chunks: Vec<Chunk>) -> StoreResult<()> {
        self.inner.put_chunks(chunks).await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let mut found: Vec<Option<Chunk>> = Vec::with_capacity(digests.len());
        let mut misses = Vec::new();
        for d in digests {
            let hit = self.chunks.get(d).await;
            if hit.is_none() {
                misses.push(*d);
            }
            found.push(hit);
        }
        if !misses.is_empty() {
            let fetched = self.inner.get_chunks(&misses).await?;
            let mut fetched = fetched.into_iter();
            for slot in found.iter_mut().filter(|s| s.is_none()) {
                let c = fetched
                    .next()
                    .ok_or_else(|| crate::StoreError::Corrupt("short chunk answer".into()))?;
                self.chunks.insert(c.digest, c.clone()).await;
                *slot = Some(c);
            }
        }
        Ok(found.into_iter().map(|c| c.expect("filled")).collect())
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.inner.put_blob_chunks(blobs).await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        let mut found: Vec<Option<Arc<Vec<ChunkMeta>>>> = Vec::with_capacity(blobs.len());
        let mut misses = Vec::new();
        for d in blobs {
            let hit = self.lists.get(d).await;
            if hit.is_none() {
                misses.push(*d);
            }
            found.push(hit);
        }
        let mut answers = Vec::new();
        if !misses.is_empty() {
            answers = self.inner.get_blob_chunks(&misses).await?;
            if answers.len() != misses.len() {
                return Err(crate::StoreError::Corrupt("short chunk list answer".into()));
            }
        }
        let mut fetched = misses.iter().zip(answers);
        let mut out = Vec::with_capacity(blobs.len());
        for hit in found {
            match hit {
                Some(list) => out.push(Some(list.as_ref().clone())),
                None => {
                    let (digest, answer) = fetched.next().expect("one answer per miss");
                    if let Some(list) = &answer {
                        self.lists.insert(*digest, Arc::new(list.clone())).await;
                    }
                    out.push(answer);
                }
            }
        }
        Ok(out)
    }
}

/// Keeps chunks decoded and verified, for servers that render NARs: a hit
/// costs a copy instead of a decompression and a hash. Bounded by raw bytes.
struct DecodedChunks {
    inner: Arc<dyn BlobStore>,
    chunks: Cache<B3Digest, Bytes, DigestKeyBuildHasher>,
}

/// Wraps `blobs` with a cache of up to `bytes` of decoded, verified chunks.
/// `get_chunks` then answers [`ChunkPayload::Verified`] chunks.
pub fn decoded_chunks(blobs: Arc<dyn BlobStore>, bytes: u64) -> Arc<dyn BlobStore> {
    Arc::new(DecodedChunks {
        inner: blobs,
        chunks: Cache::builder()
            .max_capacity(bytes)
            .weigher(|_: &B3Digest, b: &Bytes| (b.len() + 64).min(u32::MAX as usize) as u32)
            .build_with_hasher(DigestKeyBuildHasher::default()),
    })
}

#[async_trait]
impl BlobStore for DecodedChunks {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }

    async fn put_chunks(&self, chunks: Vec<Chunk>) -> StoreResult<()> {
        self.inner.put_chunks(chunks).await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let mut found: Vec<Option<Chunk>> = Vec::with_capacity(digests.len());
        let mut misses = Vec::new();
        for d in digests {
            let hit = self.chunks.get(d).await.map(|b| Chunk {
                digest: *d,
                size: b.len() as u64,
                payload: ChunkPayload::Verified(b),
            });
            if hit.is_none() {
                misses.push(*d);
            }
            found.push(hit);
        }
        if !misses.is_empty() {
            let fetched = self.inner.get_chunks(&misses).await?;
            let decoded = tokio::task::spawn_blocking(move || {
                fetched
                    .into_iter()
                    .map(|c| c.decode_verified().map(|b| (c.digest, b)))
                    .collect::<StoreResult<Vec<_>>>()
            })
            .await
            .map_err(|e| crate::StoreError::Io(std::io::Error::other(e)))??;
            let mut decoded = decoded.into_iter();
            for slot in found.iter_mut().filter(|s| s.is_none()) {
                let (digest, bytes) = decoded
                    .next()
                    .ok_or_else(|| crate::StoreError::Corrupt("short chunk answer".into()))?;
                self.chunks.insert(digest, bytes.clone()).await;
                *slot = Some(Chunk {
                    digest,
                    size: bytes.len() as u64,
                    payload: ChunkPayload::Verified(bytes),
                });
            }
        }
        Ok(found.into_iter().map(|c| c.expect("filled")).collect())
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.inner.put_blob_chunks(blobs).await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        self.inner.get_blob_chunks(blobs).await
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
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => crate::StoreError::Unavailable(shared.to_string()),
            })?;
        Ok(closure.as_ref().clone())
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        self.inner.put_closure(dirs).await
    }
}

#[async_trait]
impl PathInfoStore for CachedPathInfos {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        if let Some(info) = self.infos.get(digest).await {
            return Ok(Some(info.as_ref().clone()));
        }
        let info = self.inner.get_path_info(digest).await?;
        if let Some(i) = &info {
            self.infos.insert(*digest, Arc::new(i.clone())).await;
        }
        Ok(info)
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
}
