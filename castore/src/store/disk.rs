//! Frames and chunk lists kept on the client's disk
//! ([`crate::disk::DiskCache`], [`crate::disk::DiskChunkLists`]) in front
//! of a remote store: what the local proxy renders NARs from, in the same
//! folder and format as the mount's cache, so a file either one fetched
//! costs the other nothing upstream.
//!
//! [`disk_chunk_lists`] answers chunk lists from the disk and asks the
//! store below for the rest in one call, keeping its answers (a write of
//! lists through the layer drops what was kept of those blobs; a lookup
//! racing that write may keep the old answer: readers, who never write,
//! are what the layer is for). Readers put
//! their checks above it (a list must fit its file; with trusted keys the
//! guard checks the signed manifest), so a list from the disk is checked
//! like one from the server.
//!
//! `get_frames` answers from the disk first and asks the store below only
//! for the rest, in one call (plus one for delta bases not on disk; those
//! on disk are read from there). Frames
//! fetched are decoded and verified (each chunk by BLAKE3, delta frames
//! against their bases) before they are kept; a frame that fails is an
//! error and never reaches the disk. Everything else goes to the store
//! below unchanged. Concurrent askers of one chunk are the business of the
//! memory caches layered above ([`super::cached`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{BlobChunks, BlobStore};
use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::disk::{DiskCache, DiskChunkLists};
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::read::bases::{frames_with_bases, FramesWithBases};
use crate::read::decode::decode_each;
use crate::trust::ChunkListsDigest;

/// What the layer did, for a reader's counters.
#[derive(Debug, Default)]
pub struct DiskCounters {
    /// Frame bytes fetched from the store below (as stored, compressed).
    pub fetched_bytes: AtomicU64,
    /// Frames fetched from the store below.
    pub fetched_frames: AtomicU64,
    /// Frames answered from the disk.
    pub disk_frames: AtomicU64,
}

/// `inner` with its frames kept in `disk`, counted in `counters`.
pub fn disk_frames(
    inner: Arc<dyn BlobStore>,
    disk: DiskCache,
    counters: Arc<DiskCounters>,
) -> Arc<dyn BlobStore> {
    Arc::new(DiskFrames {
        inner,
        disk,
        counters,
    })
}

struct DiskFrames {
    inner: Arc<dyn BlobStore>,
    disk: DiskCache,
    counters: Arc<DiskCounters>,
}

impl DiskFrames {
    /// The frames on disk holding `digests` (each once), and the digests
    /// none of them holds. Blocking file I/O, on a blocking thread.
    async fn on_disk(&self, digests: Vec<B3Digest>) -> StoreResult<(Vec<Frame>, Vec<B3Digest>)> {
        let disk = self.disk.clone();
        let (frames, misses) = tokio::task::spawn_blocking(move || {
            let mut frames = Vec::new();
            let mut ids = HashSet::new();
            let mut covered: HashSet<B3Digest> = HashSet::new();
            let mut misses = Vec::new();
            for d in digests {
                if covered.contains(&d) {
                    continue;
                }
                match disk.frame_of(&d) {
                    Some((id, frame)) => {
                        covered.extend(frame.chunks.iter().map(|c| c.digest));
                        if ids.insert(id) {
                            frames.push(frame);
                        }
                    }
                    None => misses.push(d),
                }
            }
            (frames, misses)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.counters
            .disk_frames
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        Ok((frames, misses))
    }

    /// The store below's frames for `digests` (not on disk), counted.
    async fn fetch(&self, digests: Vec<B3Digest>) -> StoreResult<Vec<Frame>> {
        let fetched = self.inner.get_frames(&digests).await?;
        let bytes: u64 = fetched.iter().map(|f| f.data.len() as u64).sum();
        self.counters
            .fetched_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.counters
            .fetched_frames
            .fetch_add(fetched.len() as u64, Ordering::Relaxed);
        Ok(fetched)
    }

    /// A delta base's verified bytes from its frame on disk (bases are in
    /// plain frames), or `None`.
    async fn base_on_disk(&self, digest: B3Digest) -> Option<bytes::Bytes> {
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || {
            let (_, frame) = disk.frame_of(&digest)?;
            let at = frame.chunks.iter().position(|c| c.digest == digest)?;
            frame.decode_verified().ok()?.into_iter().nth(at)
        })
        .await
        .ok()
        .flatten()
    }
}

#[async_trait]
impl BlobStore for DiskFrames {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }

    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        self.inner.put_frames(frames).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        let (mut out, misses) = self.on_disk(digests.to_vec()).await?;
        if misses.is_empty() {
            return Ok(out);
        }
        // The missing frames and the bases their deltas need (from the
        // disk when there), verified together, then kept.
        let FramesWithBases { frames, known } =
            frames_with_bases(misses, |ds| self.fetch(ds), |d| self.base_on_disk(d)).await?;
        let disk = self.disk.clone();
        let frames = tokio::task::spawn_blocking(move || {
            let mut checked = Vec::with_capacity(frames.len());
            for (frame, outcome) in decode_each(frames, known, &|_| true) {
                outcome?;
                disk.store(&frame);
                checked.push(frame);
            }
            Ok::<_, StoreError>(checked)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        out.extend(frames);
        Ok(out)
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

    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.chunk_list_digests(root).await
    }
    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        self.inner.refuse_chunk_list(blob).await
    }
}

/// `inner` with the chunk lists it answers kept in `lists`.
pub fn disk_chunk_lists(inner: Arc<dyn BlobStore>, lists: DiskChunkLists) -> Arc<dyn BlobStore> {
    Arc::new(DiskLists { inner, lists })
}

struct DiskLists {
    inner: Arc<dyn BlobStore>,
    lists: DiskChunkLists,
}

/// Blocking disk work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))
}

#[async_trait]
impl BlobStore for DiskLists {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }

    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        self.inner.put_frames(frames).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames(digests).await
    }

    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames_exact(digests).await
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        // What is kept may say "one chunk"; the store below decides.
        let lists = self.lists.clone();
        let written: Vec<B3Digest> = blobs.iter().map(|b| b.blob).collect();
        self.inner.put_blob_chunks(blobs).await?;
        blocking(move || written.iter().for_each(|b| lists.forget(b))).await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        let lists = self.lists.clone();
        let asked = blobs.to_vec();
        let mut answers: Vec<Option<Option<Vec<ChunkMeta>>>> =
            blocking(move || asked.iter().map(|b| lists.get(b)).collect()).await?;
        let misses: Vec<B3Digest> = blobs
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(b, _)| *b)
            .collect();
        if !misses.is_empty() {
            let fetched = self.inner.get_blob_chunks(&misses).await?;
            if fetched.len() != misses.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} chunk lists answered for {} asked",
                    fetched.len(),
                    misses.len()
                )));
            }
            let lists = self.lists.clone();
            let keep: Vec<(B3Digest, Option<Vec<ChunkMeta>>)> =
                misses.into_iter().zip(fetched).collect();
            let kept = keep.clone();
            blocking(move || {
                for (blob, list) in &kept {
                    lists.put(blob, list.as_deref());
                }
            })
            .await?;
            let mut fetched = keep.into_iter().map(|(_, l)| l);
            for a in answers.iter_mut().filter(|a| a.is_none()) {
                *a = fetched.next();
            }
        }
        Ok(answers.into_iter().map(Option::flatten).collect())
    }

    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.chunk_list_digests(root).await
    }
    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        let lists = self.lists.clone();
        let blob_ = *blob;
        // Dropped from disk even if the thread pool is gone: best effort.
        let _ = blocking(move || lists.forget(&blob_)).await;
        self.inner.refuse_chunk_list(blob).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bucket::BucketStore;
    use crate::store::conformance::check_store;
    use crate::store::Store;
    use crate::testutil::{frame_of, pseudo_random, SlowStore};

    #[tokio::test]
    async fn frames_are_fetched_once_then_read_from_disk_even_by_another_reader() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(30_000, 90 + i)).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        bucket.put_frames(vec![frame_of(&refs)]).await.unwrap();
        let counting = SlowStore::new(bucket, Duration::ZERO);
        let cache_dir = dir.path().join("cache");
        let counters = Arc::new(DiskCounters::default());
        let layer = disk_frames(
            counting.clone(),
            DiskCache::open(&cache_dir, 1 << 30).unwrap(),
            counters.clone(),
        );
        let wanted: Vec<B3Digest> = parts.iter().map(|p| B3Digest::of(p)).collect();
        let first = layer.get_frames(&wanted).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(counting.frames_read(), 1);
        assert!(counters.fetched_bytes.load(Ordering::Relaxed) > 0);
        let again = layer.get_frames(&wanted[1..]).await.unwrap();
        assert_eq!(again[0].data, first[0].data);
        assert_eq!(
            counting.frames_read(),
            1,
            "read from disk, not fetched again"
        );

        // Another reader of the folder (a fresh layer, as a restarted
        // proxy) finds it too.
        let other = disk_frames(
            counting.clone(),
            DiskCache::open(&cache_dir, 1 << 30).unwrap(),
            Arc::new(DiskCounters::default()),
        );
        other.get_frames(&wanted[..1]).await.unwrap();
        assert_eq!(counting.frames_read(), 1);
    }

    #[tokio::test]
    async fn the_layer_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        let store = Store {
            blobs: disk_frames(
                bucket.clone(),
                DiskCache::open(&dir.path().join("cache"), 1 << 30).unwrap(),
                Arc::default(),
            ),
            ..Store::from_backend(bucket)
        };
        check_store(&store, 71).await;
    }

    #[tokio::test]
    async fn the_lists_layer_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        let store = Store {
            blobs: disk_chunk_lists(
                bucket.clone(),
                DiskChunkLists::open(&dir.path().join("cache"), 1 << 20).unwrap(),
            ),
            ..Store::from_backend(bucket)
        };
        check_store(&store, 72).await;
    }

    #[tokio::test]
    async fn chunk_lists_are_asked_once_then_read_from_disk_by_the_next_reader() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(30_000, 40 + i)).collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        bucket.put_frames(vec![frame_of(&refs)]).await.unwrap();
        let blob = B3Digest::of(&parts.concat());
        let list: Vec<ChunkMeta> = parts.iter().map(|p| ChunkMeta::of(p)).collect();
        bucket
            .put_blob_chunks(vec![BlobChunks {
                blob,
                chunks: list.clone(),
            }])
            .await
            .unwrap();
        let single = list[0].digest;
        let counting = SlowStore::new(bucket, Duration::ZERO);
        let cache = dir.path().join("cache");
        let reader = || {
            disk_chunk_lists(
                counting.clone(),
                DiskChunkLists::open(&cache, 1 << 20).unwrap(),
            )
        };
        let first = reader();
        let want = vec![Some(list.clone()), None];
        assert_eq!(first.get_blob_chunks(&[blob, single]).await.unwrap(), want);
        assert_eq!(counting.blob_lists_read(), 1);
        // A remount: both answers from the disk, in request order, mixed
        // with one it has to ask.
        let other = B3Digest::of(b"never stored");
        let second = reader();
        assert_eq!(
            second
                .get_blob_chunks(&[single, other, blob])
                .await
                .unwrap(),
            vec![None, None, Some(list)]
        );
        assert_eq!(
            counting.blob_lists_read(),
            2,
            "only the unknown one was asked"
        );
        assert_eq!(second.get_blob_chunks(&[blob, single]).await.unwrap(), want);
        assert_eq!(counting.blob_lists_read(), 2);
    }
}
