//! Frames kept on the client's disk ([`crate::disk::DiskCache`]) in front
//! of a remote store: what the local proxy renders NARs from, in the same
//! folder and format as the mount's cache, so a file either one fetched
//! costs the other nothing upstream.
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
use crate::disk::DiskCache;
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
}
