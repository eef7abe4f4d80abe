//! A cache of decoded, verified chunks in front of any store, for servers
//! that render NARs: a hit costs a slice of a kept buffer instead of a
//! decompression. Bounded by raw bytes; gzip-contents chunks, costly to rebuild,
//! kept apart so a stream of cheap chunks does not evict them, and
//! optionally also kept on local disk as the bytes they became, so that a
//! restarted server does not deflate them again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;

use super::cached::fill_misses;
use super::{BlobChunks, BlobStore};
use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::disk::DiskCache;
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::read::bases::{each_cached, frames_with_bases, FramesWithBases};
use crate::read::decode::{chunks_in_order, decode_frames_grouped};
use crate::trust::ChunkListsDigest;

/// Keeps chunks decoded and verified, for servers that render NARs: a hit
/// costs a slice of a kept buffer instead of a decompression. Bounded by
/// raw bytes.
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

/// The memory of a decoded-chunk layer: verified chunks, kept by the
/// frame they were decoded from. It can be shared with a layer below that
/// decodes and verifies frames anyway (the proxy's disk layer checks every
/// frame it fetches before keeping it): what that layer
/// [`keep`](Self::keep)s here is not decoded again above.
///
/// Whole frames are the unit kept and evicted, because a frame is the
/// unit decoded: a frame with one chunk missing costs its whole decoding
/// however many of its other chunks are kept. Kept chunk by chunk, a
/// closure larger than the cache and read round and round kept many
/// frames in part (the 1 GiB default over 1.8 GB of NAR: 58% of chunks
/// found, yet 73% of the bytes decoded again every pass). A kept frame is
/// its decoded buffer, chunks handed out as slices of it (no copy per
/// chunk), weighed at its bytes; an index maps each chunk to its frame.
#[derive(Clone)]
pub struct DecodedChunkCache {
    frames: Cache<FrameKey, Arc<KeptFrame>>,
    /// Frames of gzip-contents chunks ([`crate::regzip`]), kept apart:
    /// each cost a deflate at zlib's level to rebuild, many times a plain
    /// chunk's zstd decoding, yet they are few bytes (all the man pages
    /// and changelogs of /usr/share: 34 MiB). In the main cache a stream
    /// of cheap chunks larger than it would evict them on every pass.
    redeflated: Cache<FrameKey, Arc<KeptFrame>>,
    index: Arc<ChunkIndex>,
    counters: Arc<DecodedCacheCounters>,
}

/// A kept frame's name: its first chunk, their count and a hash over all
/// their digests and sizes (the same frame read again has the same name,
/// which is what lets the cache's policy count how often it is asked
/// for; two frames sharing a name only cost decoding, since every chunk
/// handed out is matched by digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FrameKey {
    first: B3Digest,
    count: usize,
    all: u64,
}

impl FrameKey {
    fn of<'a>(chunks: impl ExactSizeIterator<Item = &'a ChunkMeta>) -> Option<Self> {
        let count = chunks.len();
        let mut first = None;
        let mut all = 0u64;
        for m in chunks {
            first.get_or_insert(m.digest);
            let head = u64::from_le_bytes(m.digest.as_bytes()[..8].try_into().expect("8 bytes"));
            all = (all.rotate_left(7) ^ head).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ m.size;
        }
        Some(Self {
            first: first?,
            count,
            all,
        })
    }
}

/// A frame's decoded, verified chunks, as kept.
struct KeptFrame {
    chunks: Vec<(ChunkMeta, Bytes)>,
    /// Told apart from a later copy of the same frame in the index.
    generation: u64,
}

/// Where a kept chunk is: its frame, its place there, which part of the
/// cache holds the frame.
#[derive(Clone)]
struct Slot {
    key: Arc<FrameKey>,
    place: usize,
    generation: u64,
    redeflated: bool,
}

/// Chunk → kept frame, sharded by digest. Entries come with their frame
/// and go when it is evicted (the caches' eviction listener), so the
/// index holds at most the chunks of kept frames.
#[derive(Default)]
struct ChunkIndex {
    shards: [std::sync::Mutex<HashMap<B3Digest, Slot, DigestKeyBuildHasher>>; INDEX_SHARDS],
    generations: AtomicU64,
}

/// Shards of the chunk index (lookups from every worker at once).
const INDEX_SHARDS: usize = 16;

impl ChunkIndex {
    fn shard(
        &self,
        d: &B3Digest,
    ) -> std::sync::MutexGuard<'_, HashMap<B3Digest, Slot, DigestKeyBuildHasher>> {
        self.shards[usize::from(d.as_bytes()[0]) % INDEX_SHARDS]
            .lock()
            .expect("chunk index")
    }

    fn get(&self, d: &B3Digest) -> Option<Slot> {
        self.shard(d).get(d).cloned()
    }

    /// Names `frame` as the home of each of its chunks; `replace`: also
    /// of chunks another frame is named for (a frame just decoded), else
    /// only where no frame is (a kept frame found again: entries that
    /// another copy of a chunk took and lost are put back).
    fn add(&self, frame: &KeptFrame, key: &Arc<FrameKey>, redeflated: bool, replace: bool) {
        for (place, (m, _)) in frame.chunks.iter().enumerate() {
            let slot = Slot {
                key: key.clone(),
                place,
                generation: frame.generation,
                redeflated,
            };
            let mut shard = self.shard(&m.digest);
            if replace {
                shard.insert(m.digest, slot);
            } else {
                shard.entry(m.digest).or_insert(slot);
            }
        }
    }

    /// Drops the entries that still name `frame`.
    fn remove(&self, frame: &KeptFrame) {
        for (m, _) in &frame.chunks {
            let mut shard = self.shard(&m.digest);
            if shard
                .get(&m.digest)
                .is_some_and(|s| s.generation == frame.generation)
            {
                shard.remove(&m.digest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("chunk index").len())
            .sum()
    }
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
    /// least recently used goes first, and every frame kept is admitted
    /// (TinyLFU, once full, refuses most frames seen once, so the layer
    /// above would decode them again).
    ///
    /// [`keep`]: Self::keep
    pub fn streaming(bytes: u64) -> Self {
        Self::with_policy(bytes, moka::policy::EvictionPolicy::lru())
    }

    fn with_policy(bytes: u64, policy: moka::policy::EvictionPolicy) -> Self {
        let redeflated_bytes = bytes / REDEFLATED_SHARE;
        let counters = Arc::new(DecodedCacheCounters::default());
        let index = Arc::new(ChunkIndex::default());
        let cache = |capacity: u64| {
            let (c, index) = (counters.clone(), index.clone());
            Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(policy.clone())
                .weigher(|_: &FrameKey, f: &Arc<KeptFrame>| weight(f))
                .eviction_listener(move |_, f: Arc<KeptFrame>, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        c.evictions
                            .fetch_add(f.chunks.len() as u64, Ordering::Relaxed);
                    }
                    index.remove(&f);
                    c.bytes.fetch_sub(u64::from(weight(&f)), Ordering::Relaxed);
                    c.entries
                        .fetch_sub(f.chunks.len() as u64, Ordering::Relaxed);
                })
                .build()
        };
        Self {
            frames: cache(bytes - redeflated_bytes),
            redeflated: cache(redeflated_bytes),
            index,
            counters,
        }
    }

    /// Keeps one chunk the caller decoded and verified against `digest`
    /// (`redeflated`: from a gzip-contents frame, kept apart), as a frame
    /// of its own unless a kept frame holds it already: a copy, since a
    /// slice would keep the buffer it came from alive.
    pub(crate) fn keep(&self, digest: B3Digest, bytes: &Bytes, redeflated: bool) {
        if self.get(&digest).is_some() {
            return;
        }
        let meta = ChunkMeta {
            digest,
            size: bytes.len() as u64,
        };
        self.keep_frame(vec![(meta, Bytes::copy_from_slice(bytes))], redeflated);
    }

    /// Keeps a frame's chunks, decoded and verified by the caller: slices
    /// of the frame's one buffer, kept and evicted together.
    pub(crate) fn keep_frame(&self, chunks: Vec<(ChunkMeta, Bytes)>, redeflated: bool) {
        let Some(key) = FrameKey::of(chunks.iter().map(|(m, _)| m)) else {
            return;
        };
        let part = self.part(redeflated);
        if part.contains_key(&key) {
            return;
        }
        let frame = Arc::new(KeptFrame {
            chunks,
            generation: self.index.generations.fetch_add(1, Ordering::Relaxed),
        });
        // Indexed before it is offered (a synchronous call, so nothing
        // comes between): a frame the policy turns away is taken out of
        // the index again by the eviction listener.
        let key = Arc::new(key);
        self.index.add(&frame, &key, redeflated, true);
        self.counters
            .bytes
            .fetch_add(u64::from(weight(&frame)), Ordering::Relaxed);
        self.counters
            .entries
            .fetch_add(frame.chunks.len() as u64, Ordering::Relaxed);
        part.insert(FrameKey::clone(&key), frame);
    }

    fn part(&self, redeflated: bool) -> &Cache<FrameKey, Arc<KeptFrame>> {
        if redeflated {
            &self.redeflated
        } else {
            &self.frames
        }
    }

    /// The kept chunks among `digests`, in order (`None`: not kept). Each
    /// frame is asked of its cache once per call, however many of its
    /// chunks are wanted.
    fn get_many(&self, digests: &[B3Digest]) -> Vec<Option<Bytes>> {
        let slots: Vec<Option<Slot>> = digests.iter().map(|d| self.index.get(d)).collect();
        let mut frames: HashMap<(Arc<FrameKey>, bool), Option<Arc<KeptFrame>>> = HashMap::new();
        for s in slots.iter().flatten() {
            frames
                .entry((s.key.clone(), s.redeflated))
                .or_insert_with(|| self.part(s.redeflated).get(&*s.key));
        }
        digests
            .iter()
            .zip(slots)
            .map(|(d, slot)| {
                let s = slot?;
                let frame = frames.get(&(s.key, s.redeflated))?.as_ref()?;
                let (meta, bytes) = frame.chunks.get(s.place)?;
                (meta.digest == *d && frame.generation == s.generation).then(|| bytes.clone())
            })
            .collect()
    }

    /// A decoded chunk, if kept.
    pub(crate) fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        self.get_many(std::slice::from_ref(digest)).pop().flatten()
    }

    /// Every chunk of `frame`, if it is kept (looked up by its name, which
    /// also counts the request for the cache's policy, hit or miss, and
    /// puts back index entries its chunks lost).
    fn frame(&self, frame: &Frame) -> Option<Vec<(ChunkMeta, Bytes)>> {
        let key = FrameKey::of(frame.chunks.iter())?;
        let redeflated = crate::regzip::is_regzip(&frame.data);
        let kept = self.part(redeflated).get(&key)?;
        let matches = kept.chunks.iter().map(|(m, _)| m).eq(&frame.chunks);
        if !matches {
            return None;
        }
        self.index.add(&kept, &Arc::new(key), redeflated, false);
        Some(kept.chunks.clone())
    }

    /// Which part holds `d`'s frame (`Some(true)`: the re-deflated one).
    #[cfg(test)]
    fn part_holding(&self, d: &B3Digest) -> Option<bool> {
        let s = self.index.get(d)?;
        self.part(s.redeflated)
            .contains_key(&*s.key)
            .then_some(s.redeflated)
    }

    /// Runs the caches' pending evictions (tests look at them settled).
    #[cfg(test)]
    async fn settle(&self) {
        self.frames.run_pending_tasks();
        self.redeflated.run_pending_tasks();
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

/// What a kept frame weighs in the cache: its bytes and what each chunk
/// costs besides (its place in the frame's list and in the index).
fn weight(f: &KeptFrame) -> u32 {
    let bytes: u64 = f
        .chunks
        .iter()
        .map(|(_, b)| b.len() as u64 + PER_CHUNK)
        .sum();
    bytes.min(u64::from(u32::MAX)) as u32
}

/// Bytes a kept chunk costs besides its own: its (meta, slice) in the
/// frame's list (72), its index entry and the map's slack (~120).
const PER_CHUNK: u64 = 192;

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
    /// and checked, frame by frame (a damaged frame is dropped from the
    /// disk and its chunks left to the store); and the digests still
    /// missing.
    async fn read_redeflated_disk(
        &self,
        digests: Vec<B3Digest>,
    ) -> (Vec<(bool, Vec<(ChunkMeta, Bytes)>)>, Vec<B3Digest>) {
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
            let mut decoded = Vec::new();
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
                        decoded.push((true, frame.chunks.iter().copied().zip(chunks).collect()));
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

    /// Writes the chunks of `regzip_frames` (re-deflated: the gzip bytes
    /// they became) to the disk, one plain frame per frame, in the
    /// background: the answer does not wait for it.
    fn keep_redeflated_on_disk(&self, regzip_frames: &[&[(ChunkMeta, Bytes)]]) {
        let Some(disk) = self.redeflated_disk.clone() else {
            return;
        };
        if regzip_frames.is_empty() {
            return;
        }
        let Ok(writing) = self.disk_writes.clone().try_acquire_owned() else {
            return;
        };
        let plain: Vec<Vec<(ChunkMeta, Bytes)>> =
            regzip_frames.iter().map(|f| f.to_vec()).collect();
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

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.put_frames_ordered(frames, order).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames(digests).await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let found: Vec<Option<Chunk>> = self
            .cache
            .get_many(digests)
            .into_iter()
            .zip(digests)
            .map(|(hit, d)| {
                hit.map(|b| Chunk {
                    digest: *d,
                    size: b.len() as u64,
                    payload: ChunkPayload::Verified(b),
                })
            })
            .collect();
        let misses: Vec<B3Digest> = digests
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(d, _)| *d)
            .collect();
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
            // Whole frames: their other chunks are kept too (a NAR
            // renderer usually wants them next).
            let FramesWithBases { frames, known } = if from_store.is_empty() {
                FramesWithBases::default()
            } else {
                frames_with_bases(
                    from_store.clone(),
                    |ds| async move { self.inner.get_frames(&ds).await },
                    |ds| each_cached(ds, |d| async move { self.cache.get(&d) }),
                )
                .await?
            };
            counters
                .disk_hits
                .fetch_add((misses.len() - from_store.len()) as u64, Ordering::Relaxed);
            // Frames a layer below decoded and verified on their way here
            // (into this cache) are not decoded again.
            let (mut known, mut ready, mut to_decode) = (known, Vec::new(), Vec::new());
            for frame in frames {
                match self.cache.frame(&frame) {
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
            let decoded: Vec<(bool, Vec<(ChunkMeta, Bytes)>)> =
                decode_frames_grouped(to_decode, known)
                    .await?
                    .into_iter()
                    .map(|(f, chunks)| (crate::regzip::is_regzip(&f.data), chunks))
                    .collect();
            let regzip_frames: Vec<&[(ChunkMeta, Bytes)]> = decoded
                .iter()
                .filter(|(redeflated, _)| *redeflated)
                .map(|(_, chunks)| chunks.as_slice())
                .collect();
            self.keep_redeflated_on_disk(&regzip_frames);
            let mut all = ready;
            for (redeflated, chunks) in decoded.into_iter().chain(from_disk) {
                all.extend(chunks.iter().cloned());
                self.cache.keep_frame(chunks, redeflated);
            }
            fetched = chunks_in_order(&misses, all)?;
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
        decoded.cache.settle().await;
        assert_eq!(decoded.cache.part_holding(&gz_meta.digest), Some(true));
        for p in &plain {
            decoded.get_chunks(&[B3Digest::of(p)]).await.unwrap();
        }
        decoded.cache.settle().await;
        assert!(decoded.cache.frames.weighted_size() <= (1 << 20) - (1 << 20) / REDEFLATED_SHARE);
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
        decoded.cache.settle().await;
        let c = decoded.cache.counters.read();
        assert_eq!((c.hits, c.misses), (1, 33), "{c:?}");
        assert!(c.evictions > 0, "{c:?}");
        assert!(c.bytes <= 1 << 20 && c.bytes > 0, "{c:?}");
        // Every chunk held is indexed, and nothing else is.
        assert_eq!(c.entries, decoded.cache.index.len() as u64);
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

    /// Frames of two chunks each: (frame, its chunks' bytes).
    fn two_chunk_frames(n: u64) -> Vec<(Frame, [Vec<u8>; 2])> {
        (0..n)
            .map(|i| {
                let (a, b) = (
                    crate::testutil::pseudo_random(40 << 10, 2 * i + 1),
                    crate::testutil::pseudo_random(24 << 10, 2 * i + 2),
                );
                (frame_of(&[&a, &b]), [a, b])
            })
            .collect()
    }

    #[tokio::test]
    async fn frames_are_kept_and_evicted_whole_within_their_weight() {
        let (_dir, inner) = crate::testutil::temp_bucket().await;
        let frames = two_chunk_frames(24);
        inner
            .put_frames(frames.iter().map(|(f, _)| f.clone()).collect())
            .await
            .unwrap();
        let counting = SlowStore::new(inner, Duration::ZERO);
        // Room for about eight of the 24 frames (64 KiB each).
        let decoded = DecodedChunks::new(counting.clone(), DecodedChunkCache::new(600 << 10));
        // One chunk asked for keeps its whole frame: the other is a hit.
        let [a, b] = &frames[0].1;
        let got = decoded.get_chunks(&[B3Digest::of(a)]).await.unwrap();
        assert_eq!(got[0].decode_verified().unwrap(), a[..]);
        let reads = counting.frames_read();
        let got = decoded.get_chunks(&[B3Digest::of(b)]).await.unwrap();
        assert_eq!(got[0].decode_verified().unwrap(), b[..]);
        assert_eq!(
            counting.frames_read(),
            reads,
            "the neighbour was decoded again"
        );
        // Read round and round, more than fits: each frame is held whole
        // or not at all, and the cache weighs what it holds.
        for _ in 0..3 {
            for (_, [a, b]) in &frames {
                let got = decoded
                    .get_chunks(&[B3Digest::of(a), B3Digest::of(b)])
                    .await
                    .unwrap();
                assert_eq!(got[1].decode_verified().unwrap(), b[..]);
            }
        }
        decoded.cache.settle().await;
        let mut held = 0;
        for (_, [a, b]) in &frames {
            let (ha, hb) = (
                decoded.cache.part_holding(&B3Digest::of(a)),
                decoded.cache.part_holding(&B3Digest::of(b)),
            );
            assert_eq!(ha, hb, "a frame held in part");
            held += usize::from(ha.is_some());
        }
        assert!(held > 0 && held < frames.len(), "{held} frames held");
        let c = decoded.cache.counters.read();
        assert_eq!(c.entries, 2 * held as u64, "{c:?}");
        assert_eq!(c.entries, decoded.cache.index.len() as u64);
        assert_eq!(c.bytes, decoded.cache.frames.weighted_size(), "{c:?}");
        assert!(c.bytes <= 600 << 10, "{c:?}");
    }

    #[tokio::test]
    async fn a_chunk_kept_alone_holds_no_part_of_the_buffer_it_came_from() {
        let cache = DecodedChunkCache::new(16 << 20);
        let buffer = Bytes::from(crate::testutil::pseudo_random(64 << 10, 9));
        let piece = buffer.slice(..1000);
        let digest = B3Digest::of(&piece);
        cache.keep(digest, &piece, false);
        cache.settle().await;
        let kept = cache.get(&digest).expect("kept");
        assert_eq!(kept, piece);
        // A slice would sit inside the 64 KiB buffer, keeping all of it.
        let inside = buffer.as_ptr_range();
        assert!(!inside.contains(&kept.as_ptr()));
    }

    #[tokio::test]
    async fn frames_asked_for_again_and_again_are_admitted_over_ones_read_once() {
        let (_dir, inner) = crate::testutil::temp_bucket().await;
        let frames = two_chunk_frames(16);
        inner
            .put_frames(frames.iter().map(|(f, _)| f.clone()).collect())
            .await
            .unwrap();
        // Room for about eight of the frames.
        let decoded = DecodedChunks::new(inner, DecodedChunkCache::new(600 << 10));
        let read = |(_, [a, b]): &(Frame, [Vec<u8>; 2])| [B3Digest::of(a), B3Digest::of(b)];
        // The first eight fill the cache, read once.
        for f in &frames[..8] {
            decoded.get_chunks(&read(f)).await.unwrap();
        }
        decoded.cache.settle().await;
        // The other eight are asked for again and again: each request
        // counts, held or not, so they win their place.
        for _ in 0..4 {
            for f in &frames[8..] {
                decoded.get_chunks(&read(f)).await.unwrap();
                decoded.cache.settle().await;
            }
        }
        let held = frames[8..]
            .iter()
            .filter(|f| decoded.cache.part_holding(&read(f)[0]).is_some())
            .count();
        assert!(
            held >= 4,
            "only {held} of the frames asked for often are held"
        );
    }

    #[tokio::test]
    async fn a_chunk_of_two_kept_frames_is_found_again_after_the_second_goes() {
        let cache = DecodedChunkCache::new(16 << 20);
        let piece = |seed| {
            let b = Bytes::from(crate::testutil::pseudo_random(4 << 10, seed));
            (ChunkMeta::of(&b), b)
        };
        let (x, y, z) = (piece(1), piece(2), piece(3));
        let first = vec![x.clone(), y.clone()];
        let second = vec![x.clone(), z.clone()];
        cache.keep_frame(first.clone(), false);
        cache.keep_frame(second.clone(), false);
        cache.settle().await;
        // The second frame goes: the chunk it shared loses its entry.
        let key = FrameKey::of(second.iter().map(|(m, _)| m)).unwrap();
        cache.frames.invalidate(&key);
        cache.settle().await;
        assert_eq!(cache.get(&x.0.digest), None);
        // Found again when its kept frame is asked for by name.
        let frame = Frame::new(
            first.iter().map(|(m, _)| *m).collect(),
            Bytes::new(),
            Vec::new(),
        );
        assert!(cache.frame(&frame).is_some());
        assert_eq!(cache.get(&x.0.digest), Some(x.1.clone()));
        assert_eq!(cache.get(&y.0.digest), Some(y.1.clone()));
    }
}
