//! Chunks for the mount: a memory cache of decoded, verified chunks, in
//! front of a disk cache of frames with a quota (LRU, reused after a
//! remount), in front of the server, asked in batches with a bounded
//! timeout. The server answers whole frames: every chunk in a received
//! frame is cached, so neighbours read next cost nothing. Concurrent
//! requests for one chunk cause one fetch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lazix_castore::digest::DigestKeyBuildHasher;
use lazix_castore::frame::Frame;
use lazix_castore::read::bases::{each_cached, frames_with_bases, FramesWithBases};
use lazix_castore::read::decode::decode_each;
use lazix_castore::read::single_flight::{Claim, SingleFlight, Turn, Waiter};
use lazix_castore::store::BlobStore;
use lazix_castore::{B3Digest, StoreError};

use crate::stats::{CacheUsage, Stats};
use lazix_castore::disk::DiskCache;

/// Why chunks could not be had. Readers see EIO.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server did not answer within the timeout.
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error (or is unreachable).
    #[error("fetching chunks: {0}")]
    Store(String),
    /// A chunk failed verification.
    #[error("chunk {0} failed verification")]
    Corrupt(B3Digest),
}

/// Chunks asked for per server call (about 4 MiB at the average chunk
/// size): large enough to amortise the round trip, small enough that the
/// first bytes arrive early.
pub(crate) const CALL_CHUNKS: usize = 64;
/// Server calls in flight per fetch.
const CALLS_IN_FLIGHT: usize = 4;
/// Calls in flight for an access profile's prefetch: a whole prefetch
/// batch's calls at once up to this bound, so a far server is never idle
/// for a round trip between them (its exact repacks are bounded by its
/// cores, which keeps the answers roughly in the order asked). Calls then
/// rarely profit from frames an earlier one brought; the profile's calls
/// are cut not to share frames (`profile::calls_apart`).
const PROFILE_CALLS_IN_FLIGHT: usize = 16;

/// Who asks for chunks: a read waiting for them, or work ahead of reads
/// (the read-ahead window, an access profile). Counted apart: a read that
/// has to start a fetch itself is what prefetching aims to leave none of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A read (or an open fetching a small file whole) waits for them.
    Read,
    /// Fetched ahead of any read.
    Ahead,
    /// Fetched ahead for an access profile, which names exactly what will
    /// be read: the server is asked for frames of these chunks alone
    /// ([`BlobStore::get_frames_exact`]), not their stored neighbours.
    Profile,
}

/// Whether the frames a fetch receives go to the disk cache too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCopy {
    /// Keep them on disk (reused after a remount).
    Keep,
    /// Memory only: the file is being copied whole into the cache folder
    /// (see [`crate::whole_files`]), so its frames on disk would be the
    /// same bytes written twice, and writing them slows a cold read.
    Skip,
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => FetchError::Store(format!("corrupt answer: {m}")),
            e => FetchError::Store(e.to_string()),
        }
    }
}

/// The outcome of one chunk fetch.
type Outcome = Result<Bytes, FetchError>;
/// The duty to fetch one chunk and publish its outcome.
type Publisher = Claim<B3Digest, Outcome, DigestKeyBuildHasher>;

/// Serves verified chunk bytes to the file system.
pub struct ChunkFetcher {
    remote: Arc<dyn BlobStore>,
    memory: moka::sync::Cache<B3Digest, Bytes, DigestKeyBuildHasher>,
    disk: Option<DiskCache>,
    in_flight: SingleFlight<B3Digest, Outcome, DigestKeyBuildHasher>,
    timeout: Duration,
    /// Disk cache writes started and not finished.
    disk_writes: Arc<std::sync::atomic::AtomicUsize>,
    /// Chunks the memory cache evicted.
    memory_evictions: Arc<std::sync::atomic::AtomicU64>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl ChunkFetcher {
    /// A fetcher over `remote`, caching `memory_bytes` in memory and, with
    /// `disk`, up to its quota on disk.
    pub fn new(
        remote: Arc<dyn BlobStore>,
        memory_bytes: u64,
        disk: Option<(&std::path::Path, u64)>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let memory_evictions: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let evicted = memory_evictions.clone();
        Ok(Self {
            remote,
            memory: moka::sync::Cache::builder()
                .max_capacity(memory_bytes)
                // Plain LRU: TinyLFU's admission test turns away freshly
                // read-ahead chunks (seen once) once the cache is full,
                // so a long sequential read decoded its frames again from
                // the disk cache.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .weigher(|_: &B3Digest, b: &Bytes| (b.len() + 64).min(u32::MAX as usize) as u32)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .build_with_hasher(DigestKeyBuildHasher::default()),
            disk: disk
                .map(|(dir, quota)| DiskCache::open(dir, quota))
                .transpose()?,
            in_flight: SingleFlight::default(),
            timeout,
            disk_writes: Default::default(),
            memory_evictions,
            stats: Arc::new(Stats::default()),
        })
    }

    /// How full the memory cache is.
    pub fn memory_usage(&self) -> CacheUsage {
        self.memory.run_pending_tasks();
        CacheUsage {
            bytes: self.memory.weighted_size(),
            entries: self.memory.entry_count(),
            evictions: self
                .memory_evictions
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// How full the disk cache of frames is, if there is one.
    pub fn disk_usage(&self) -> Option<lazix_castore::disk::DiskCacheUsage> {
        self.disk.as_ref().map(DiskCache::usage)
    }

    /// From the local caches only: memory, then disk (verified; a corrupt
    /// or truncated entry is dropped and reads as a miss).
    fn local(&self, digest: &B3Digest) -> Option<Bytes> {
        if let Some(b) = self.memory.get(digest) {
            Stats::add(&self.stats.memory_hits, 1);
            return Some(b);
        }
        self.disk_lookup(digest)
    }

    /// From the disk cache: decodes the frame holding `digest` (a delta
    /// frame only if its bases are cached too) and keeps its chunks in
    /// memory (those decoded: a gzip-contents frame rebuilds only the
    /// members wanted). A corrupt entry is dropped and reads as a miss.
    fn disk_lookup(&self, digest: &B3Digest) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        let (id, frame) = disk.frame_of(digest)?;
        let mut known = HashMap::new();
        for b in &frame.base {
            let bytes = match self.memory.get(&b.digest) {
                Some(bytes) => bytes,
                None if b.digest != *digest => self.disk_lookup(&b.digest)?,
                None => return None,
            };
            known.insert(b.digest, bytes);
        }
        let (frame, outcome) = decode_each(vec![frame], known, &|d| d == digest).pop()?;
        match outcome {
            Ok(datas) => {
                Stats::add(&self.stats.disk_hits, 1);
                let mut wanted = None;
                let mut partial = false;
                for (meta, bytes) in frame.chunks.iter().zip(datas) {
                    let Some(bytes) = bytes else {
                        partial = true;
                        continue;
                    };
                    if meta.digest == *digest {
                        wanted = Some(bytes.clone());
                    }
                    self.memory.insert(meta.digest, bytes);
                }
                if partial {
                    self.complete_in_background(vec![frame]);
                }
                wanted
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "dropping a corrupt disk cache entry");
                Stats::add(&self.stats.corrupt_chunks, 1);
                disk.remove(&id);
                None
            }
        }
    }

    /// Verified bytes of `digests`, in order. Missing chunks are fetched
    /// in batched calls; chunks another request is already fetching are
    /// awaited, not fetched again.
    pub async fn get(&self, digests: &[B3Digest]) -> Result<Vec<Bytes>, FetchError> {
        self.get_after_neighbours(digests, &[], DiskCopy::Keep, Origin::Read)
            .await
    }

    /// Like [`ChunkFetcher::get`], but before fetching, waits for fetches
    /// already under way of `neighbours` (chunks near these in the same
    /// file): a frame holds neighbouring chunks, so a neighbour's fetch
    /// usually brings these too, and fetching them at the same time would
    /// move that frame twice (the kernel splits one read-around into
    /// concurrent reads). Waits only on fetches registered before this
    /// one's, so waits never form a cycle. `disk` says whether what
    /// arrives is written to the disk cache; `origin`, who asks.
    pub async fn get_after_neighbours(
        &self,
        digests: &[B3Digest],
        neighbours: &[B3Digest],
        disk: DiskCopy,
        origin: Origin,
    ) -> Result<Vec<Bytes>, FetchError> {
        let mut out: Vec<Option<Bytes>> = digests.iter().map(|d| self.local(d)).collect();
        let misses: Vec<(usize, B3Digest)> = digests
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .map(|(i, d)| (i, *d))
            .collect();
        // Joined before this call claims anything: only fetches registered
        // earlier are awaited, so waits never form a cycle.
        let earlier: Vec<Waiter<Outcome>> = if misses.is_empty() {
            Vec::new()
        } else {
            neighbours
                .iter()
                .filter_map(|d| self.in_flight.join(d))
                .collect()
        };
        let mut mine: Vec<Publisher> = Vec::new();
        let mut waits: Vec<(usize, Waiter<Outcome>)> = Vec::new();
        let turns = self.in_flight.claim_or_join(misses.iter().map(|(_, d)| d));
        for ((i, _), turn) in misses.iter().zip(turns) {
            match turn {
                Turn::Claimed(claim) => {
                    waits.push((*i, claim.waiter()));
                    mine.push(claim);
                }
                Turn::Joined(waiter) => waits.push((*i, waiter)),
            }
        }
        if !mine.is_empty() && !earlier.is_empty() {
            for waiter in earlier {
                // Their outcome is theirs to report: a failure here only
                // means fetching ours ourselves.
                let _ = waiter.outcome().await;
            }
            mine = self.publish_arrived(mine);
        }
        if !mine.is_empty() {
            if origin == Origin::Read {
                Stats::add(&self.stats.read_fetches, 1);
            }
            self.fetch_remote(mine, disk, origin == Origin::Profile)
                .await;
        }
        // Every fetch waited on is bounded by the server timeout of its
        // calls; a fetch abandoned by its reader (cancelled) fails this read.
        for (i, waiter) in waits {
            let outcome = waiter
                .outcome()
                .await
                .map_err(|_| FetchError::Store("fetch abandoned".into()))?;
            out[i] = Some(outcome?);
        }
        Ok(out.into_iter().map(|b| b.expect("filled")).collect())
    }

    /// Publishes the chunks of `mine` that arrived meanwhile (in a
    /// neighbour's frame); returns the others.
    fn publish_arrived(&self, mine: Vec<Publisher>) -> Vec<Publisher> {
        let mut rest = Vec::new();
        for claim in mine {
            match self.memory.get(claim.key()) {
                Some(bytes) => claim.publish(Ok(bytes)),
                None => rest.push(claim),
            }
        }
        rest
    }

    /// Fetches `mine` from the server in calls of a few MiB, several in
    /// flight, publishing each call's chunks as soon as it completes (a
    /// reader waiting for the first chunk of a large read-ahead window does
    /// not wait for the whole window).
    async fn fetch_remote(&self, mine: Vec<Publisher>, disk: DiskCopy, exact: bool) {
        let mut groups: Vec<Vec<Publisher>> = Vec::new();
        let mut mine = mine.into_iter().peekable();
        while mine.peek().is_some() {
            groups.push(mine.by_ref().take(CALL_CHUNKS).collect());
        }
        // Each call asks only for what earlier calls' frames did not bring:
        // a frame holds neighbours, which a long list of wanted chunks (an
        // access profile's) often asks for again further on.
        futures::stream::iter(groups)
            .map(|g| async move {
                let g = self.publish_arrived(g);
                if !g.is_empty() {
                    self.fetch_group(g, disk, exact).await;
                }
            })
            .buffer_unordered(if exact {
                PROFILE_CALLS_IN_FLIGHT
            } else {
                CALLS_IN_FLIGHT
            })
            .collect::<()>()
            .await;
    }

    async fn fetch_group(&self, group: Vec<Publisher>, disk: DiskCopy, exact: bool) {
        let digests: Vec<B3Digest> = group.iter().map(|c| *c.key()).collect();
        match self.fetch_call(&digests, disk, exact).await {
            Ok(chunks) => {
                for (claim, outcome) in group.into_iter().zip(chunks) {
                    claim.publish(outcome);
                }
            }
            Err(e) => {
                for claim in group {
                    claim.publish(Err(e.clone()));
                }
            }
        }
    }

    /// One batched request: the chunks of `batch`, decoded and verified
    /// (with every other chunk of the frames received, cached too).
    async fn fetch_call(
        &self,
        batch: &[B3Digest],
        disk_copy: DiskCopy,
        exact: bool,
    ) -> Result<Vec<Result<Bytes, FetchError>>, FetchError> {
        Stats::add(&self.stats.fetch_requests, 1);
        let started = std::time::Instant::now();
        let answer = self.fetch_call_untimed(batch, disk_copy, exact).await;
        self.stats.fetch_latency.observe(started.elapsed());
        answer
    }

    /// [`Self::fetch_call`] without its counting.
    async fn fetch_call_untimed(
        &self,
        batch: &[B3Digest],
        disk_copy: DiskCopy,
        exact: bool,
    ) -> Result<Vec<Result<Bytes, FetchError>>, FetchError> {
        // Delta frames need their bases: from the caches, else one more call.
        let FramesWithBases { frames, known } = frames_with_bases(
            batch.to_vec(),
            |digests| async move { self.remote_frames(&digests, exact).await },
            |ds| {
                each_cached(ds, |d| {
                    let hit = self.memory.get(&d).or_else(|| self.disk_lookup(&d));
                    async move { hit }
                })
            },
        )
        .await?;
        // What must be decoded: the chunks asked for (and the bases of the
        // delta frames); neighbours come along where that costs nothing.
        let needed: HashSet<B3Digest> = batch.iter().copied().collect();
        let decoded = tokio::task::spawn_blocking(move || {
            decode_each(frames, known, &|d| needed.contains(d))
        })
        .await
        .map_err(|e| FetchError::Store(e.to_string()))?;
        let mut got: HashMap<B3Digest, Result<Bytes, FetchError>> = HashMap::new();
        let mut to_disk = Vec::new();
        let mut partial = Vec::new();
        for (frame, datas) in decoded {
            match datas {
                Ok(datas) => {
                    let mut complete = true;
                    for (meta, bytes) in frame.chunks.iter().zip(datas) {
                        let Some(bytes) = bytes else {
                            complete = false;
                            continue;
                        };
                        self.memory.insert(meta.digest, bytes.clone());
                        got.insert(meta.digest, Ok(bytes));
                    }
                    if !complete {
                        partial.push(frame.clone());
                    }
                    to_disk.push(frame);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a frame from the server failed verification");
                    Stats::add(&self.stats.corrupt_chunks, 1);
                    for meta in &frame.chunks {
                        got.entry(meta.digest)
                            .or_insert(Err(FetchError::Corrupt(meta.digest)));
                    }
                }
            }
        }
        if !partial.is_empty() {
            self.complete_in_background(partial);
        }
        // Writing the disk cache must not delay the reader: the chunks are
        // already in memory.
        if let Some(disk) = self.disk.as_ref().filter(|_| disk_copy == DiskCopy::Keep) {
            let disk = disk.clone();
            let pending = self.disk_writes.clone();
            pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::spawn_blocking(move || {
                for frame in &to_disk {
                    disk.store(frame);
                }
                pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        Ok(batch
            .iter()
            .map(|d| {
                got.get(d).cloned().unwrap_or_else(|| {
                    Err(FetchError::Store(format!(
                        "the server's answer lacks chunk {d}"
                    )))
                })
            })
            .collect())
    }
}

impl ChunkFetcher {
    /// Decodes the chunks left out of `frames` (gzip members nobody asked
    /// for yet, see [`Frame::decode_verified_some`]) off the reader's path,
    /// into the memory cache: the reader got its chunk without waiting for
    /// them, and its neighbours (the next man page of a directory) are
    /// ready by the time they are opened. Without a runtime, nothing.
    fn complete_in_background(&self, frames: Vec<Frame>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let memory = self.memory.clone();
        runtime.spawn_blocking(move || {
            for frame in frames {
                let Ok(datas) = frame.decode_verified() else {
                    continue; // the chunks asked for were verified; these wait
                };
                for (meta, bytes) in frame.chunks.iter().zip(datas) {
                    if !memory.contains_key(&meta.digest) {
                        memory.insert(meta.digest, bytes);
                    }
                }
            }
        });
    }

    /// One batched server call, bounded by the timeout, counted.
    async fn remote_frames(
        &self,
        digests: &[B3Digest],
        exact: bool,
    ) -> Result<Vec<Frame>, FetchError> {
        let call = async {
            if exact {
                self.remote.get_frames_exact(digests).await
            } else {
                self.remote.get_frames(digests).await
            }
        };
        let frames = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        let payload: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
        let chunk_count: usize = frames.iter().map(|f| f.chunks.len()).sum();
        Stats::add(&self.stats.fetched_bytes, payload);
        Stats::add(&self.stats.fetched_chunks, chunk_count as u64);
        Ok(frames)
    }

    /// Waits until the disk cache writes started so far have landed (they
    /// run behind the fetches, off the readers' path).
    pub async fn flush_disk(&self) {
        while self.disk_writes.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts fetching `digests` in the background (read-ahead); chunks
    /// already cached or in flight are skipped.
    pub fn prefetch(
        self: &Arc<Self>,
        digests: Vec<B3Digest>,
        neighbours: Vec<B3Digest>,
        disk: DiskCopy,
    ) {
        let wanted: Vec<B3Digest> = digests
            .into_iter()
            .filter(|d| !self.in_flight.is_open(d) && !self.memory.contains_key(d))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this
                .get_after_neighbours(&wanted, &neighbours, disk, Origin::Ahead)
                .await
            {
                tracing::debug!(error = %e, "read-ahead failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use lazix_castore::bucket::BucketStore;
    use lazix_castore::store::BlobStore;
    use lazix_castore::testutil::{frame_of, SlowStore};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waits_for_its_neighbours_fetch_instead_of_moving_the_frame_twice() {
        let dir = tempfile::tempdir().unwrap();
        let inner = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        inner
            .put_frames(vec![frame_of(&[b"first chunk", b"second chunk"])])
            .await
            .unwrap();
        let remote = SlowStore::new(inner, Duration::from_millis(200));
        let fetcher = Arc::new(
            ChunkFetcher::new(remote.clone(), 1 << 20, None, Duration::from_secs(10)).unwrap(),
        );
        let (a, b) = (B3Digest::of(b"first chunk"), B3Digest::of(b"second chunk"));
        let first = {
            let f = fetcher.clone();
            tokio::spawn(async move { f.get(&[a]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = fetcher
            .get_after_neighbours(&[b], &[a], DiskCopy::Keep, Origin::Read)
            .await
            .unwrap();
        assert_eq!(second, vec![Bytes::from_static(b"second chunk")]);
        let first = first.await.unwrap().unwrap();
        assert_eq!(first, vec![Bytes::from_static(b"first chunk")]);
        assert_eq!(remote.frames_read(), 1);
        assert_eq!(fetcher.stats.snapshot().fetch_requests, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_fetched_for_a_whole_file_copy_stay_off_the_disk_cache() {
        let dir = tempfile::tempdir().unwrap();
        let remote = BucketStore::open(dir.path().join("store").to_str().unwrap())
            .await
            .unwrap();
        remote
            .put_frames(vec![
                frame_of(&[b"copied whole"]),
                frame_of(&[b"read in part"]),
            ])
            .await
            .unwrap();
        let cache = dir.path().join("cache");
        let fetcher = ChunkFetcher::new(
            remote,
            1 << 20,
            Some((&cache, 1 << 30)),
            Duration::from_secs(10),
        )
        .unwrap();
        let (whole, part) = (B3Digest::of(b"copied whole"), B3Digest::of(b"read in part"));
        fetcher
            .get_after_neighbours(&[whole], &[], DiskCopy::Skip, Origin::Read)
            .await
            .unwrap();
        fetcher.get(&[part]).await.unwrap();
        let disk = fetcher.disk.as_ref().unwrap();
        // Disk writes run in the background, in the order of the fetches.
        for _ in 0..100 {
            if disk.frame_of(&part).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            disk.frame_of(&part).is_some(),
            "a normal fetch is cached on disk"
        );
        assert!(disk.frame_of(&whole).is_none(), "a skipped fetch is not");
        // Both stay in memory for readers.
        assert!(fetcher.local(&whole).is_some());
    }
}
