//! A cache of decoded, verified chunks in front of any store, for servers
//! that render NARs: a hit costs a copy instead of a decompression and a
//! hash. Bounded by raw bytes; gzip-contents chunks, costly to rebuild,
//! kept apart so a stream of cheap chunks does not evict them, and
//! optionally also kept on local disk as the bytes they became, so that a
//! restarted server does not deflate them again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;

use super::cached::{fill_misses, hits_and_misses};
use super::{BlobChunks, BlobStore};
use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::disk::DiskCache;
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::read::bases::{each_cached, frames_with_bases, FramesWithBases};
use crate::read::decode::{chunks_in_order, decode_frames};
use crate::trust::ChunkListsDigest;

/// Keeps chunks decoded and verified, for servers that render NARs: a hit
/// costs a copy instead of a decompression and a hash. Bounded by raw bytes.
struct DecodedChunks {
    inner: Arc<dyn BlobStore>,
    cache: DecodedChunkCache,
    /// Re-deflated chunks on local disk, as plain frames of the gzip bytes
    /// they became: they outlive the process (a server restarted, or
    /// another one on the machine, reads them instead of deflating at
    /// zlib's level again). Read back like any frame from a disk cache:
    /// decoded and checked by BLAKE3; a damaged one is dropped.
    redeflated_disk: Option<Arc<DiskCache>>,
    /// Writes to `redeflated_disk` under way; past [`DISK_WRITES`] a
    /// frame is not written (a cache: the next pass writes it).
    disk_writes: Arc<tokio::sync::Semaphore>,
}

/// The memory of a decoded-chunk layer: verified chunks by digest. It can
/// be shared with a layer below that decodes and verifies frames anyway
/// (the proxy's disk layer checks every frame it fetches before keeping
/// it): what that layer [`keep`](Self::keep)s here is not decoded again
/// above.
#[derive(Clone)]
pub struct DecodedChunkCache {
    chunks: Cache<B3Digest, Bytes, DigestKeyBuildHasher>,
    /// Chunks of gzip-contents frames ([`crate::regzip`]), kept apart: each
    /// cost a deflate at zlib's level to rebuild, many times a plain
    /// chunk's zstd decoding, yet they are few bytes (all the man pages
    /// and changelogs of /usr/share: 34 MiB). In the main cache a stream
    /// of cheap chunks larger than it would evict them on every pass.
    redeflated: Cache<B3Digest, Bytes, DigestKeyBuildHasher>,
    counters: Arc<DecodedCacheCounters>,
}

impl DecodedChunkCache {
    /// A cache of up to `bytes` of decoded chunks, for a server: TinyLFU
    /// keeps what is asked for again and again (a closure read round and
    /// round keeps more of itself than under LRU).
    pub fn new(bytes: u64) -> Self {
        Self::with_policy(bytes, moka::policy::EvictionPolicy::tiny_lfu())
    }

    /// A cache of up to `bytes` of decoded chunks for a reader that renders
    /// NARs front to back from chunks a layer below hands over ([`keep`]):
    /// least recently used goes first, and every chunk kept is admitted
    /// (TinyLFU, once full, refuses most chunks seen once, so the layer
    /// above would decode them again).
    ///
    /// [`keep`]: Self::keep
    pub fn streaming(bytes: u64) -> Self {
        Self::with_policy(bytes, moka::policy::EvictionPolicy::lru())
    }

    fn with_policy(bytes: u64, policy: moka::policy::EvictionPolicy) -> Self {
        let redeflated_bytes = bytes / REDEFLATED_SHARE;
        let counters = Arc::new(DecodedCacheCounters::default());
        let cache = |capacity: u64| {
            let c = counters.clone();
            Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(policy.clone())
                .weigher(|_: &B3Digest, b: &Bytes| weight(b))
                .eviction_listener(move |_, b: Bytes, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        c.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    c.bytes.fetch_sub(u64::from(weight(&b)), Ordering::Relaxed);
                    c.entries.fetch_sub(1, Ordering::Relaxed);
                })
                .build_with_hasher(DigestKeyBuildHasher::default())
        };
        Self {
            chunks: cache(bytes - redeflated_bytes),
            redeflated: cache(redeflated_bytes),
            counters,
        }
    }

    /// Keeps a chunk the caller decoded and verified against `digest`
    /// (`redeflated`: from a gzip-contents frame, kept apart).
    pub(crate) async fn keep(&self, digest: B3Digest, bytes: &Bytes, redeflated: bool) {
        let part = if redeflated {
            &self.redeflated
        } else {
            &self.chunks
        };
        self.insert(part, digest, bytes).await;
    }

    async fn insert(
        &self,
        cache: &Cache<B3Digest, Bytes, DigestKeyBuildHasher>,
        digest: B3Digest,
        bytes: &Bytes,
    ) {
        // A copy of its own: a slice would keep its whole frame's buffer
        // alive while any chunk of it stays, and the cache would hold far
        // more than it weighs (a 256 MiB cache took 700 MiB).
        let owned = Bytes::copy_from_slice(bytes);
        self.counters
            .bytes
            .fetch_add(u64::from(weight(&owned)), Ordering::Relaxed);
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        cache.insert(digest, owned).await;
    }

    /// A decoded chunk from either part.
    pub(crate) async fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        match self.chunks.get(digest).await {
            Some(b) => Some(b),
            None => self.redeflated.get(digest).await,
        }
    }

    /// Every chunk of `frame`, if all are here with the sizes it says.
    async fn frame(&self, frame: &Frame) -> Option<Vec<(ChunkMeta, Bytes)>> {
        let mut out = Vec::with_capacity(frame.chunks.len());
        for meta in &frame.chunks {
            let bytes = self.get(&meta.digest).await?;
            if bytes.len() as u64 != meta.size {
                return None;
            }
            out.push((*meta, bytes));
        }
        Some(out)
    }
}

/// Re-deflated frames written to disk at once (each holds its decoded
/// bytes until written).
const DISK_WRITES: usize = 2;

/// What a decoded-chunk cache did, for metrics: chunks asked for and
/// found or not, chunks evicted for room, and its size now.
#[derive(Debug, Default)]
pub struct DecodedCacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    disk_hits: AtomicU64,
    evictions: AtomicU64,
    /// Weight held (added on insert, taken off on every removal).
    bytes: AtomicU64,
    entries: AtomicU64,
}

/// A reading of [`DecodedCacheCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodedCacheReading {
    /// Chunks answered from the cache.
    pub hits: u64,
    /// Chunks decoded from frames (not in memory).
    pub misses: u64,
    /// Of those, chunks read from the re-deflated disk cache instead of
    /// the store.
    pub disk_hits: u64,
    /// Chunks evicted for room.
    pub evictions: u64,
    /// Bytes held (raw chunk bytes plus a small overhead each).
    pub bytes: u64,
    /// Chunks held.
    pub entries: u64,
}

impl DecodedCacheCounters {
    /// The counters now.
    pub fn read(&self) -> DecodedCacheReading {
        let (bytes, entries) = (
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        );
        DecodedCacheReading {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes,
            entries,
        }
    }
}

/// What a decoded chunk weighs in the cache: its bytes and a little.
fn weight(b: &Bytes) -> u32 {
    (b.len() + 64).min(u32::MAX as usize) as u32
}

/// The share of a decoded-chunk cache's bytes kept for re-deflated chunks.
const REDEFLATED_SHARE: u64 = 8;

/// Wraps `blobs` with a cache of up to `bytes` of decoded, verified chunks.
/// `get_chunks` then answers [`ChunkPayload::Verified`] chunks.
pub fn decoded_chunks(blobs: Arc<dyn BlobStore>, bytes: u64) -> Arc<dyn BlobStore> {
    decoded_chunks_counted(blobs, bytes, None).0
}

/// [`decoded_chunks`], with its counters, and re-deflated chunks also
/// kept in `redeflated_disk` (see [`DecodedChunks`]).
pub fn decoded_chunks_counted(
    blobs: Arc<dyn BlobStore>,
    bytes: u64,
    redeflated_disk: Option<Arc<DiskCache>>,
) -> (Arc<dyn BlobStore>, Arc<DecodedCacheCounters>) {
    let cache = DecodedChunkCache::new(bytes);
    let counters = cache.counters.clone();
    let mut layer = DecodedChunks::new(blobs, cache);
    layer.redeflated_disk = redeflated_disk;
    (Arc::new(layer), counters)
}

/// [`decoded_chunks`] over `cache`, which a layer below may fill.
pub fn decoded_chunks_sharing(
    blobs: Arc<dyn BlobStore>,
    cache: DecodedChunkCache,
) -> Arc<dyn BlobStore> {
    Arc::new(DecodedChunks::new(blobs, cache))
}

impl DecodedChunks {
    fn new(blobs: Arc<dyn BlobStore>, cache: DecodedChunkCache) -> Self {
        Self {
            inner: blobs,
            cache,
            redeflated_disk: None,
            disk_writes: Arc::new(tokio::sync::Semaphore::new(DISK_WRITES)),
        }
    }

    /// The re-deflated chunks among `digests` that the disk keeps, decoded
    /// and checked (a damaged frame is dropped from the disk and its
    /// chunks left to the store); and the digests still missing.
    async fn read_redeflated_disk(
        &self,
        digests: Vec<B3Digest>,
    ) -> (Vec<(ChunkMeta, Bytes)>, Vec<B3Digest>) {
        let Some(disk) = self.redeflated_disk.clone() else {
            return (Vec::new(), digests);
        };
        // Most misses are plain chunks the disk never holds: no file work
        // (nor a blocking task) unless the index names one.
        if !digests.iter().any(|d| disk.indexes(d)) {
            return (Vec::new(), digests);
        }
        let asked = digests.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut decoded: Vec<(ChunkMeta, Bytes)> = Vec::new();
            let mut have: HashSet<B3Digest> = HashSet::new();
            for d in &digests {
                if have.contains(d) {
                    continue;
                }
                let Some((id, frame)) = disk.indexed_frame_of(d) else {
                    continue;
                };
                match frame.decode_verified() {
                    Ok(chunks) => {
                        have.extend(frame.chunks.iter().map(|m| m.digest));
                        decoded.extend(frame.chunks.iter().copied().zip(chunks));
                    }
                    Err(e) => {
                        tracing::warn!(frame = %id, error = %e, "dropping a damaged re-deflated frame on disk");
                        disk.remove(&id);
                    }
                }
            }
            let missing = digests.into_iter().filter(|d| !have.contains(d)).collect();
            (decoded, missing)
        })
        .await;
        found.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading re-deflated chunks from disk failed");
            (Vec::new(), asked)
        })
    }

    /// Writes the re-deflated chunks of `regzip_frames` (their bytes in
    /// `decoded`) to the disk, one plain frame per frame, in the
    /// background: the answer does not wait for it.
    fn keep_redeflated_on_disk(
        &self,
        regzip_frames: &[Vec<ChunkMeta>],
        decoded: &[(ChunkMeta, Bytes)],
    ) {
        let Some(disk) = self.redeflated_disk.clone() else {
            return;
        };
        if regzip_frames.is_empty() {
            return;
        }
        let Ok(writing) = self.disk_writes.clone().try_acquire_owned() else {
            return;
        };
        let by_digest: std::collections::HashMap<B3Digest, &Bytes> =
            decoded.iter().map(|(m, b)| (m.digest, b)).collect();
        let plain: Vec<Vec<(ChunkMeta, Bytes)>> = regzip_frames
            .iter()
            .filter_map(|metas| {
                metas
                    .iter()
                    .map(|m| by_digest.get(&m.digest).map(|b| (*m, (*b).clone())))
                    .collect()
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            for chunks in plain {
                match Frame::compress(&chunks) {
                    Ok(frame) => disk.store(&frame),
                    Err(e) => tracing::warn!(error = %e, "cannot frame re-deflated chunks"),
                }
            }
        });
    }
}

#[async_trait]
impl BlobStore for DecodedChunks {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }

    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        self.inner.put_frames(frames).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames(digests).await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let (found, misses) = hits_and_misses(digests, |d| async move {
            self.cache.get(&d).await.map(|b| Chunk {
                digest: d,
                size: b.len() as u64,
                payload: ChunkPayload::Verified(b),
            })
        })
        .await;
        let counters = &self.cache.counters;
        counters
            .hits
            .fetch_add((digests.len() - misses.len()) as u64, Ordering::Relaxed);
        counters
            .misses
            .fetch_add(misses.len() as u64, Ordering::Relaxed);
        let mut fetched = Vec::new();
        if !misses.is_empty() {
            let (from_disk, from_store) = self.read_redeflated_disk(misses.clone()).await;
            // Whole frames: their other chunks are cached too (a NAR
            // renderer usually wants them next).
            let FramesWithBases { frames, known } = if from_store.is_empty() {
                FramesWithBases::default()
            } else {
                frames_with_bases(
                    from_store.clone(),
                    |ds| async move { self.inner.get_frames(&ds).await },
                    |ds| each_cached(ds, |d| async move { self.cache.get(&d).await }),
                )
                .await?
            };
            let regzip_frames: Vec<Vec<ChunkMeta>> = frames
                .iter()
                .filter(|f| crate::regzip::is_regzip(&f.data))
                .map(|f| f.chunks.clone())
                .collect();
            let mut redeflated: HashSet<B3Digest> =
                regzip_frames.iter().flatten().map(|c| c.digest).collect();
            redeflated.extend(from_disk.iter().map(|(m, _)| m.digest));
            counters
                .disk_hits
                .fetch_add((misses.len() - from_store.len()) as u64, Ordering::Relaxed);
            // Frames a layer below decoded and verified on their way here
            // (into this cache) are not decoded again.
            let (mut known, mut ready, mut to_decode) = (known, Vec::new(), Vec::new());
            for frame in frames {
                match self.cache.frame(&frame).await {
                    Some(chunks) => ready.extend(chunks),
                    None => to_decode.push(frame),
                }
            }
            let bases: HashSet<B3Digest> = to_decode
                .iter()
                .flat_map(|f| f.base.iter().map(|b| b.digest))
                .collect();
            known.extend(
                ready
                    .iter()
                    .filter(|(m, _)| bases.contains(&m.digest))
                    .map(|(m, b)| (m.digest, b.clone())),
            );
            let mut decoded = decode_frames(to_decode, known).await?;
            self.keep_redeflated_on_disk(&regzip_frames, &decoded);
            decoded.extend(from_disk);
            for (meta, bytes) in &decoded {
                let cache = if redeflated.contains(&meta.digest) {
                    &self.cache.redeflated
                } else {
                    &self.cache.chunks
                };
                self.cache.insert(cache, meta.digest, bytes).await;
            }
            decoded.extend(ready);
            fetched = chunks_in_order(&misses, decoded)?;
        }
        fill_misses(found, fetched)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bucket::BucketStore;
    use crate::testutil::{frame_of, SlowStore};

    /// A gzip file of `words` words, its chunk, and the frame storing it
    /// as its contents (what compaction makes of it).
    fn gzip_stored_as_contents(words: usize) -> (Bytes, ChunkMeta, Frame) {
        let gz = Bytes::from(crate::testutil::gzip9(&crate::testutil::wordy_text(words)));
        let meta = ChunkMeta {
            digest: B3Digest::of(&gz),
            size: gz.len() as u64,
        };
        let frame = Frame::compress_regzip(&[(meta, gz.clone())], 3)
            .unwrap()
            .expect("zlib deflates it back exactly");
        (gz, meta, frame)
    }

    #[tokio::test]
    async fn re_deflated_chunks_outlive_a_stream_of_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let inner = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        let (gz, gz_meta, regzip) = gzip_stored_as_contents(2000);
        let plain: Vec<Vec<u8>> = (0..32)
            .map(|i| crate::testutil::pseudo_random(64 << 10, i))
            .collect();
        let mut frames = vec![regzip];
        frames.extend(plain.iter().map(|p| frame_of(&[p])));
        inner.put_frames(frames).await.unwrap();
        let counting = SlowStore::new(inner, Duration::ZERO);
        // 1 MiB in all, 2 MiB of plain chunks streamed through it.
        let decoded = DecodedChunks::new(counting.clone(), DecodedChunkCache::new(1 << 20));

        let got = decoded.get_chunks(&[gz_meta.digest]).await.unwrap();
        assert_eq!(got[0].decode_verified().unwrap(), gz);
        decoded.cache.redeflated.run_pending_tasks().await;
        assert!(decoded.cache.redeflated.contains_key(&gz_meta.digest));
        assert!(!decoded.cache.chunks.contains_key(&gz_meta.digest));
        for p in &plain {
            decoded.get_chunks(&[B3Digest::of(p)]).await.unwrap();
        }
        decoded.cache.chunks.run_pending_tasks().await;
        assert!(decoded.cache.chunks.weighted_size() <= (1 << 20) - (1 << 20) / REDEFLATED_SHARE);
        let reads = counting.frames_read();
        let again = decoded.get_chunks(&[gz_meta.digest]).await.unwrap();
        assert_eq!(again[0].decode_verified().unwrap(), gz);
        assert_eq!(
            counting.frames_read(),
            reads,
            "the re-deflated chunk was decoded again"
        );
        // The counters saw it: 34 chunks asked for, one a hit; the plain
        // stream evicted; what is held fits the bound.
        decoded.cache.chunks.run_pending_tasks().await;
        let c = decoded.cache.counters.read();
        assert_eq!((c.hits, c.misses), (1, 33), "{c:?}");
        assert!(c.evictions > 0, "{c:?}");
        assert!(c.bytes <= 1 << 20 && c.bytes > 0, "{c:?}");
        assert_eq!(
            c.entries,
            decoded.cache.chunks.entry_count() + decoded.cache.redeflated.entry_count()
        );
    }

    #[tokio::test]
    async fn re_deflated_chunks_kept_on_disk_outlive_the_process_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let inner = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        let (gz, gz_meta, regzip) = gzip_stored_as_contents(3000);
        let plain = crate::testutil::pseudo_random(64 << 10, 7);
        inner
            .put_frames(vec![regzip, frame_of(&[&plain])])
            .await
            .unwrap();
        let counting = SlowStore::new(inner, Duration::ZERO);
        let disk_dir = dir.path().join("redeflated");
        let server = |disk: Arc<DiskCache>| {
            let mut d = DecodedChunks::new(counting.clone(), DecodedChunkCache::new(16 << 20));
            d.redeflated_disk = Some(disk);
            d
        };
        let first = server(Arc::new(DiskCache::open(&disk_dir, 1 << 20).unwrap()));
        let got = first
            .get_chunks(&[gz_meta.digest, B3Digest::of(&plain)])
            .await
            .unwrap();
        assert_eq!(got[0].decode_verified().unwrap(), gz);
        assert_eq!(got[1].decode_verified().unwrap(), plain);
        // Written in the background: only the re-deflated chunk.
        let disk = DiskCache::open(&disk_dir, 1 << 20).unwrap();
        for _ in 0..200 {
            if disk.frame_id_of(&gz_meta.digest).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(disk.frame_id_of(&gz_meta.digest).is_some());
        assert!(disk.frame_id_of(&B3Digest::of(&plain)).is_none());

        // A restarted server (empty memory, the disk reopened) reads it
        // from the disk, not from the store.
        let reads = counting.frames_read();
        let second = server(Arc::new(DiskCache::open(&disk_dir, 1 << 20).unwrap()));
        let again = second.get_chunks(&[gz_meta.digest]).await.unwrap();
        assert_eq!(again[0].decode_verified().unwrap(), gz);
        assert_eq!(counting.frames_read(), reads, "read from the store again");

        // A damaged file on disk is dropped and the chunk read from the
        // store, still right.
        let id = disk.frame_id_of(&gz_meta.digest).unwrap();
        let file = crate::disk::shard_path(&disk_dir.join("frames"), &id);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        let third = server(Arc::new(DiskCache::open(&disk_dir, 1 << 20).unwrap()));
        let repaired = third.get_chunks(&[gz_meta.digest]).await.unwrap();
        assert_eq!(repaired[0].decode_verified().unwrap(), gz);
        assert!(counting.frames_read() > reads, "the damaged copy was used");
        assert_eq!(first.cache.counters.read().disk_hits, 0);
        assert_eq!(second.cache.counters.read().disk_hits, 1);
        assert_eq!(third.cache.counters.read().disk_hits, 0);
    }

    #[tokio::test]
    async fn cached_chunks_hold_no_part_of_their_frames_buffer() {
        let (_dir, inner) = crate::testutil::temp_bucket().await;
        let (a, b) = (
            crate::testutil::pseudo_random(40 << 10, 1),
            crate::testutil::pseudo_random(40 << 10, 2),
        );
        inner.put_frames(vec![frame_of(&[&a, &b])]).await.unwrap();
        let decoded = DecodedChunks::new(inner, DecodedChunkCache::new(16 << 20));
        let (da, db) = (B3Digest::of(&a), B3Digest::of(&b));
        let got = decoded.get_chunks(&[da]).await.unwrap();
        assert_eq!(got[0].decode_verified().unwrap(), a);
        decoded.cache.chunks.run_pending_tasks().await;
        let (ca, cb) = (
            decoded.cache.chunks.get(&da).await.expect("a cached"),
            decoded
                .cache
                .chunks
                .get(&db)
                .await
                .expect("b cached with its frame"),
        );
        // Slices of one decoded frame would sit back to back in one buffer
        // (keeping all of it alive while either stays).
        assert_ne!(ca.as_ptr().wrapping_add(ca.len()), cb.as_ptr());
        assert_eq!((&ca[..], &cb[..]), (&a[..], &b[..]));
    }
}
