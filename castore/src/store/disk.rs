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
//! on disk are read from there in one blocking task, each frame decoded
//! once and its chunks kept decoded for a while). Frames
//! fetched are decoded and verified (each chunk by BLAKE3, delta frames
//! against their bases) before they are kept; a frame that fails is an
//! error and never reaches the disk. The chunks so verified (and the bases
//! used) go to the decoded-chunk cache of the layer above when one is
//! given ([`super::decoded::DecodedChunkCache`]), which then does not
//! decode them again. Everything else goes to the store below unchanged.
//! Concurrent askers of one chunk are the business of the memory caches
//! layered above ([`super::cached`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::decoded::DecodedChunkCache;
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

/// `inner` with its frames kept in `disk`, counted in `counters`; the
/// chunks of the frames it fetches, decoded and verified before they are
/// kept, also go to `decoded` (the cache of a decoded-chunk layer above,
/// which then need not decode them again).
pub fn disk_frames(
    inner: Arc<dyn BlobStore>,
    disk: DiskCache,
    counters: Arc<DiskCounters>,
    decoded: Option<DecodedChunkCache>,
) -> Arc<dyn BlobStore> {
    Arc::new(DiskFrames {
        inner,
        disk,
        counters,
        decoded,
        bases: moka::sync::Cache::builder()
            .max_capacity(BASE_CACHE_BYTES)
            .weigher(|_: &B3Digest, b: &bytes::Bytes| (b.len() + 64).min(u32::MAX as usize) as u32)
            .build_with_hasher(crate::digest::DigestKeyBuildHasher::default()),
    })
}

/// Bytes of decoded delta bases kept in memory: a base frame on disk is
/// decoded once for all the delta frames that need its chunks, not once
/// per base chunk (the pages of a documentation folder are deltas of
/// each other, many bases to a frame).
const BASE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

struct DiskFrames {
    inner: Arc<dyn BlobStore>,
    disk: DiskCache,
    counters: Arc<DiskCounters>,
    decoded: Option<DecodedChunkCache>,
    /// Verified chunks of base frames read from the disk, when there is
    /// no `decoded` cache to keep them (they are handed up to it).
    bases: moka::sync::Cache<B3Digest, bytes::Bytes, crate::digest::DigestKeyBuildHasher>,
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

    /// The verified bytes of those delta bases whose frames are on disk
    /// (bases are in plain frames), in one blocking task: each frame read
    /// and decoded once, its other chunks kept for the next call.
    async fn bases_on_disk(&self, digests: Vec<B3Digest>) -> HashMap<B3Digest, bytes::Bytes> {
        let mut known = HashMap::new();
        let mut rest = Vec::new();
        for d in digests {
            let hit = match self.bases.get(&d) {
                Some(b) => Some(b),
                None => match &self.decoded {
                    Some(cache) => cache.get(&d),
                    None => None,
                },
            };
            match hit {
                Some(b) => {
                    known.insert(d, b);
                }
                None => rest.push(d),
            }
        }
        if rest.is_empty() {
            return known;
        }
        let disk = self.disk.clone();
        let bases = self.decoded.is_none().then(|| self.bases.clone());
        let read = tokio::task::spawn_blocking(move || {
            let mut found = HashMap::new();
            for digest in rest {
                if found.contains_key(&digest) {
                    continue;
                }
                let Some((id, frame)) = disk.frame_of(&digest) else {
                    continue;
                };
                let Ok(datas) = frame.decode_verified() else {
                    tracing::warn!(frame = %id, "dropping a damaged frame from the disk cache");
                    disk.remove(&id);
                    continue;
                };
                for (meta, bytes) in frame.chunks.iter().zip(datas) {
                    // A copy of its own: a slice would keep the whole frame.
                    let owned = bytes::Bytes::copy_from_slice(&bytes);
                    if let Some(bases) = &bases {
                        bases.insert(meta.digest, owned.clone());
                    }
                    found.insert(meta.digest, owned);
                }
            }
            found
        })
        .await
        .unwrap_or_default();
        known.extend(read);
        known
    }
}

#[async_trait]
impl BlobStore for DiskFrames {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.put_frames_ordered(frames, order).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        let (mut out, misses) = self.on_disk(digests.to_vec()).await?;
        if misses.is_empty() {
            return Ok(out);
        }
        // The missing frames and the bases their deltas need (from the
        // disk when there), verified together, then kept.
        let FramesWithBases { frames, known } =
            frames_with_bases(misses, |ds| self.fetch(ds), |ds| self.bases_on_disk(ds)).await?;
        let disk = self.disk.clone();
        let keep = self.decoded.is_some();
        // The bases the deltas were decoded against go up too: the layer
        // above would otherwise read their frames again.
        let bases: Vec<(B3Digest, bytes::Bytes)> = if keep {
            known.iter().map(|(d, b)| (*d, b.clone())).collect()
        } else {
            Vec::new()
        };
        let (frames, fetched) = tokio::task::spawn_blocking(move || {
            let mut checked = Vec::with_capacity(frames.len());
            let mut fetched = Vec::new();
            for (frame, outcome) in decode_each(frames, known, &|_| true) {
                let datas = outcome?;
                disk.store(&frame);
                if keep {
                    let redeflated = crate::regzip::is_regzip(&frame.data);
                    let chunks: Option<Vec<_>> = frame
                        .chunks
                        .iter()
                        .zip(datas)
                        .map(|(m, b)| Some((*m, b?)))
                        .collect();
                    fetched.extend(chunks.map(|c| (redeflated, c)));
                }
                checked.push(frame);
            }
            Ok::<_, StoreError>((checked, fetched))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        if let Some(cache) = &self.decoded {
            for (digest, bytes) in &bases {
                cache.keep(*digest, bytes, false);
            }
            for (redeflated, chunks) in fetched {
                cache.keep_frame(chunks, redeflated);
            }
        }
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

    async fn own_chunk_list_digests(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.own_chunk_list_digests(root).await
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

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.put_frames_ordered(frames, order).await
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

    async fn own_chunk_list_digests(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        self.inner.own_chunk_list_digests(root).await
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
            None,
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
            None,
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
                None,
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

#[cfg(test)]
mod decoded_once_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::decoded::DecodedChunkCache;
    use crate::testutil::{delta_frame_of, frame_of, pseudo_random};

    /// A store of fixed frames (deltas included, which no upload makes),
    /// recording each `get_frames` call.
    struct FixedFrames {
        frames: Vec<Frame>,
        calls: Mutex<Vec<Vec<B3Digest>>>,
    }

    #[async_trait]
    impl BlobStore for FixedFrames {
        async fn missing_chunks(&self, _: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
            Err(StoreError::Invalid("read only".into()))
        }
        async fn put_frames_ordered(&self, _: Vec<Frame>, _: u64) -> StoreResult<()> {
            Err(StoreError::Invalid("read only".into()))
        }
        async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
            self.calls.lock().unwrap().push(digests.to_vec());
            Ok(self
                .frames
                .iter()
                .filter(|f| f.chunks.iter().any(|c| digests.contains(&c.digest)))
                .cloned()
                .collect())
        }
        async fn put_blob_chunks(&self, _: Vec<BlobChunks>) -> StoreResult<()> {
            Err(StoreError::Invalid("read only".into()))
        }
        async fn get_blob_chunks(
            &self,
            blobs: &[B3Digest],
        ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
            Ok(vec![None; blobs.len()])
        }
    }

    #[tokio::test]
    async fn fetched_chunks_go_to_the_decoded_cache_and_bases_on_disk_are_not_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let (old1, old2) = (pseudo_random(20_000, 1), pseudo_random(20_000, 2));
        let (mut new1, mut new2) = (old1.clone(), old2.clone());
        new1[100..110].copy_from_slice(b"0123456789");
        new2[900..910].copy_from_slice(b"abcdefghij");
        let upstream = Arc::new(FixedFrames {
            frames: vec![
                frame_of(&[&old1, &old2]),
                delta_frame_of(&new1, &old1),
                delta_frame_of(&new2, &old2),
            ],
            calls: Mutex::default(),
        });
        let cache = DecodedChunkCache::new(16 << 20);
        let layer = disk_frames(
            upstream.clone(),
            DiskCache::open(dir.path(), 1 << 30).unwrap(),
            Arc::default(),
            Some(cache.clone()),
        );
        // The bases' frame: fetched, kept on disk, its chunks in the cache.
        layer.get_frames(&[B3Digest::of(&old1)]).await.unwrap();
        for chunk in [&old1, &old2] {
            let kept = cache.get(&B3Digest::of(chunk)).expect("kept");
            assert_eq!(&kept[..], &chunk[..]);
        }
        // The deltas: one call; both bases read from the disk (one frame).
        let got = layer
            .get_frames(&[B3Digest::of(&new1), B3Digest::of(&new2)])
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(upstream.calls.lock().unwrap().len(), 2, "no call for bases");
        for chunk in [&new1, &new2] {
            let kept = cache.get(&B3Digest::of(chunk)).expect("kept");
            assert_eq!(&kept[..], &chunk[..]);
        }
    }

    #[tokio::test]
    async fn a_frame_that_fails_its_check_is_kept_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let (claimed, sent) = (pseudo_random(5_000, 3), pseudo_random(5_000, 4));
        let mut lying = frame_of(&[&sent]);
        lying.chunks = vec![ChunkMeta::of(&claimed)];
        let upstream = Arc::new(FixedFrames {
            frames: vec![lying],
            calls: Mutex::default(),
        });
        let cache = DecodedChunkCache::new(16 << 20);
        let disk = DiskCache::open(dir.path(), 1 << 30).unwrap();
        let layer = disk_frames(upstream, disk.clone(), Arc::default(), Some(cache.clone()));
        let wanted = B3Digest::of(&claimed);
        assert!(layer.get_frames(&[wanted]).await.is_err());
        assert!(cache.get(&wanted).is_none());
        assert!(cache.get(&B3Digest::of(&sent)).is_none());
        assert!(disk.frame_of(&wanted).is_none());
    }
}
