//! The client's disk cache (the mount's and the proxy's): frames exactly as the server sent them, one
//! file per frame, with an LRU index bounded by bytes, reused after a
//! remount.
//!
//! File `frames/<2 hex>/<64 hex>` (name: BLAKE3 of the frame's zstd bytes)
//! holds a 4-byte little-endian header length, the header (protobuf
//! `lazix.v1.Frame` with the chunk list and no data), then the zstd bytes.
//! Opening reads only headers. Files are written to a temp file beside
//! their final name and renamed, so a killed mount leaves no half entry
//! under a final name; entries are verified (BLAKE3 of every chunk) when
//! read, and a bad one is deleted and reads as a miss.
//!
//! Several processes may use one folder at once (a mount and the local
//! proxy): each keeps its own index, and a lookup that misses first looks
//! for frames another process wrote since (only in shard folders whose
//! modification time changed, at most every [`RESCAN_INTERVAL`]). A frame
//! another process evicted reads as a miss. Each process keeps its own
//! quota over what it indexed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lazix_proto::ext as lpb;
use prost::Message;

#[cfg(test)]
use super::TMP_PREFIX;
use super::{create_shards, shard_dirs, shard_path, skip_temp_file, write_atomically};
use crate::chunk::ChunkMeta;
use crate::digest::DigestKeyBuildHasher;
use crate::error::StoreError;
use crate::frame::Frame;
use crate::B3Digest;

/// Shortest time between two looks for frames other processes wrote.
pub const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest header accepted (a frame's chunk list).
const MAX_HEADER: usize = 1 << 20;

/// Which frame file holds each chunk.
type ChunkMap = HashMap<B3Digest, B3Digest, DigestKeyBuildHasher>;

/// One frame file in the LRU index.
struct Entry {
    /// Its chunks.
    members: Box<[B3Digest]>,
    /// File size (the LRU weight).
    size: u64,
}

/// Frames on disk. Cheap to clone (shared index).
#[derive(Clone)]
pub struct DiskCache {
    dir: PathBuf,
    /// Frame id → entry; weighted by file size, LRU.
    frames: moka::sync::Cache<B3Digest, Arc<Entry>, DigestKeyBuildHasher>,
    chunks: Arc<Mutex<ChunkMap>>,
    /// Each shard folder's modification time when last listed, and when
    /// the last look for other processes' frames was.
    scanned: Arc<Mutex<Scanned>>,
    /// The pinned frames ([`super::pins`]), looked in first; `None` for
    /// the pinned cache itself.
    pinned: Option<Arc<DiskCache>>,
    /// Frames this process evicted to stay within the quota.
    evictions: Arc<AtomicU64>,
}

/// How full a disk cache is, as this process sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskCacheUsage {
    /// Bytes of frame files under the quota.
    pub bytes: u64,
    /// Frame files under the quota.
    pub frames: u64,
    /// Frames evicted by this process to stay within the quota.
    pub evictions: u64,
    /// Bytes of pinned frames (outside the quota).
    pub pinned_bytes: u64,
}

#[derive(Default)]
struct Scanned {
    shards: HashMap<PathBuf, std::time::SystemTime>,
    at: Option<std::time::Instant>,
}

/// Parses a header: the frame's chunks and base.
fn parse_header(header: &[u8]) -> Result<(Vec<ChunkMeta>, Vec<ChunkMeta>), StoreError> {
    let msg = lpb::Frame::decode(header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let metas = |l: &[lpb::ChunkMeta]| -> Result<Vec<ChunkMeta>, StoreError> {
        l.iter().map(ChunkMeta::try_from_proto).collect()
    };
    Ok((metas(&msg.chunks)?, metas(&msg.base)?))
}

/// Reads a frame file's chunk list (the header only).
fn read_header(path: &Path) -> Result<Vec<ChunkMeta>, StoreError> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(StoreError::Corrupt("header too long".into()));
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    Ok(parse_header(&header)?.0)
}

impl DiskCache {
    /// Opens (creating) the cache in `dir` with a quota of `quota` bytes,
    /// indexing the frames already there (the pinned ones too); temp files
    /// are removed.
    pub fn open(dir: &Path, quota: u64) -> Result<Self, StoreError> {
        let pinned = Self::open_pinned(dir)?;
        let mut cache = Self::open_folder(dir, quota)?;
        cache.pinned = Some(Arc::new(pinned));
        Ok(cache)
    }

    /// The pinned frames of the cache in `dir` alone: no quota, never
    /// evicted (see [`super::pins`]).
    pub fn open_pinned(dir: &Path) -> Result<Self, StoreError> {
        Self::open_folder(&super::pins::pinned_dir(dir), u64::MAX)
    }

    fn open_folder(dir: &Path, quota: u64) -> Result<Self, StoreError> {
        let dir = dir.join("frames");
        create_shards(&dir)?;
        let chunks: Arc<Mutex<ChunkMap>> = Arc::default();
        let evict_dir = dir.clone();
        let evict_chunks = chunks.clone();
        let evictions: Arc<AtomicU64> = Arc::default();
        let evicted = evictions.clone();
        // Plain LRU: moka's default admission (TinyLFU) turns a new frame
        // away once the quota is full, deleting the file just written, so
        // a full cache would keep old frames and refetch every new one.
        let frames = moka::sync::Cache::builder()
            .max_capacity(quota)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_: &B3Digest, e: &Arc<Entry>| e.size.min(u32::MAX as u64) as u32)
            .eviction_listener(move |id: Arc<B3Digest>, entry: Arc<Entry>, cause| {
                if cause.was_evicted() {
                    evicted.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(shard_path(&evict_dir, &id));
                    let mut map = evict_chunks.lock().expect("chunk map");
                    for d in entry.members.iter() {
                        if map.get(d) == Some(&*id) {
                            map.remove(d);
                        }
                    }
                }
            })
            .build_with_hasher(DigestKeyBuildHasher::default());
        let cache = Self {
            dir,
            frames,
            chunks,
            scanned: Arc::default(),
            pinned: None,
            evictions,
        };
        cache.load_existing()?;
        Ok(cache)
    }

    /// How full the cache is now.
    pub fn usage(&self) -> DiskCacheUsage {
        self.frames.run_pending_tasks();
        DiskCacheUsage {
            bytes: self.frames.weighted_size(),
            frames: self.frames.entry_count(),
            evictions: self.evictions.load(Ordering::Relaxed),
            pinned_bytes: self.pinned.as_ref().map_or(0, |p| {
                p.frames.run_pending_tasks();
                p.frames.weighted_size()
            }),
        }
    }

    /// Indexes the frame files already on disk (a remount reuses them).
    fn load_existing(&self) -> Result<(), StoreError> {
        let mut scanned = self.scanned.lock().expect("scan state");
        for shard in shard_dirs(&self.dir) {
            self.scan_shard(&shard, &mut scanned)?;
        }
        Ok(())
    }

    /// Indexes frames other processes wrote since the last look, in the
    /// shard folders that changed; at most every [`RESCAN_INTERVAL`].
    fn rescan(&self) {
        let mut scanned = self.scanned.lock().expect("scan state");
        if scanned.at.is_some_and(|t| t.elapsed() < RESCAN_INTERVAL) {
            return;
        }
        scanned.at = Some(std::time::Instant::now());
        for shard in shard_dirs(&self.dir) {
            let changed = std::fs::metadata(&shard)
                .and_then(|m| m.modified())
                .map_or(true, |m| scanned.shards.get(&shard) != Some(&m));
            if changed {
                if let Err(e) = self.scan_shard(&shard, &mut scanned) {
                    tracing::debug!(shard = %shard.display(), error = %e, "cannot list a disk cache folder");
                }
            }
        }
    }

    /// Indexes the frames of one shard folder not indexed yet.
    fn scan_shard(&self, shard: &Path, scanned: &mut Scanned) -> Result<(), StoreError> {
        if let Ok(m) = std::fs::metadata(shard).and_then(|m| m.modified()) {
            scanned.shards.insert(shard.to_path_buf(), m);
        }
        for entry in std::fs::read_dir(shard)? {
            let entry = entry?;
            if skip_temp_file(&entry) {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(id) = B3Digest::from_hex(&name) else {
                continue;
            };
            if self.frames.contains_key(&id) {
                continue;
            }
            match read_header(&entry.path()) {
                Ok(chunks) => self.index(id, &chunks, entry.metadata()?.len()),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "dropping a damaged disk cache entry");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    fn index(&self, id: B3Digest, chunks: &[ChunkMeta], size: u64) {
        let members: Box<[B3Digest]> = chunks.iter().map(|c| c.digest).collect();
        {
            let mut map = self.chunks.lock().expect("chunk map");
            for d in members.iter() {
                map.insert(*d, id);
            }
        }
        self.frames.insert(id, Arc::new(Entry { members, size }));
    }

    /// The frame holding `digest`, as stored (not yet verified), or `None`.
    /// Counts as a use for the LRU.
    pub fn frame_of(&self, digest: &B3Digest) -> Option<(B3Digest, Frame)> {
        if let Some(hit) = self.pinned.as_ref().and_then(|p| p.frame_of(digest)) {
            return Some(hit);
        }
        let known = self.chunks.lock().expect("chunk map").get(digest).copied();
        let id = match known {
            Some(id) => id,
            None => {
                // Perhaps another process using this folder fetched it.
                self.rescan();
                *self.chunks.lock().expect("chunk map").get(digest)?
            }
        };
        self.read_indexed(id)
    }

    /// [`DiskCache::frame_of`] among the frames this process has indexed
    /// only (no look for other processes' new files): for a caller that
    /// asks for many chunks the folder mostly lacks.
    pub fn indexed_frame_of(&self, digest: &B3Digest) -> Option<(B3Digest, Frame)> {
        let id = *self.chunks.lock().expect("chunk map").get(digest)?;
        self.read_indexed(id)
    }

    /// Whether a frame this process has indexed holds `digest` (a lookup
    /// in memory, no file read).
    pub fn indexes(&self, digest: &B3Digest) -> bool {
        self.chunks.lock().expect("chunk map").contains_key(digest)
    }

    /// The indexed frame `id`, read and counted as a use; a vanished or
    /// damaged file is dropped from the index.
    fn read_indexed(&self, id: B3Digest) -> Option<(B3Digest, Frame)> {
        self.frames.get(&id)?;
        match self.read_frame(&id) {
            Ok(frame) => Some((id, frame)),
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                // Evicted by another process sharing the folder.
                self.remove(&id);
                None
            }
            Err(e) => {
                tracing::warn!(frame = %id, error = %e, "dropping a damaged disk cache entry");
                self.remove(&id);
                None
            }
        }
    }

    fn read_frame(&self, id: &B3Digest) -> Result<Frame, StoreError> {
        let data = std::fs::read(shard_path(&self.dir, id))?;
        let len = data
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|l| 4 + l <= data.len())
            .ok_or_else(|| StoreError::Corrupt("truncated".into()))?;
        let (chunks, base) = parse_header(&data[4..4 + len])?;
        let mut data = Bytes::from(data);
        Ok(Frame::new(chunks, data.split_off(4 + len), base))
    }

    /// The id of the frame file holding `digest`, if indexed (after a
    /// look for frames other processes wrote).
    pub fn frame_id_of(&self, digest: &B3Digest) -> Option<B3Digest> {
        if let Some(id) = self.chunks.lock().expect("chunk map").get(digest) {
            return Some(*id);
        }
        self.rescan();
        self.chunks.lock().expect("chunk map").get(digest).copied()
    }

    /// Deletes every frame file not in `keep`; returns how many went.
    pub fn retain_only(
        &self,
        keep: &std::collections::HashSet<B3Digest>,
    ) -> Result<usize, StoreError> {
        let mut gone = 0;
        for shard in shard_dirs(&self.dir) {
            for entry in std::fs::read_dir(&shard)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(id) = B3Digest::from_hex(&name.to_string_lossy()) else {
                    continue;
                };
                if !keep.contains(&id) {
                    self.remove(&id);
                    gone += 1;
                }
            }
        }
        Ok(gone)
    }

    /// Drops an entry (damaged, or failed verification).
    pub fn remove(&self, id: &B3Digest) {
        if let Some(p) = &self.pinned {
            p.remove(id);
        }
        if let Some(entry) = self.frames.remove(id) {
            let mut map = self.chunks.lock().expect("chunk map");
            for d in entry.members.iter() {
                if map.get(d) == Some(id) {
                    map.remove(d);
                }
            }
        }
        let _ = std::fs::remove_file(shard_path(&self.dir, id));
    }

    /// Writes a verified frame (atomically) and indexes it; a failure is
    /// logged (a cache that cannot write only misses later).
    pub fn store(&self, frame: &Frame) {
        if let Err(e) = self.store_checked(frame) {
            tracing::warn!(error = %e, "cannot write the disk cache");
        }
    }

    /// Like [`DiskCache::store`], answering the frame's id or the error.
    pub fn store_checked(&self, frame: &Frame) -> Result<B3Digest, StoreError> {
        let id = B3Digest::of(&frame.data);
        if self.frames.contains_key(&id) {
            return Ok(id);
        }
        let header = lpb::Frame {
            chunks: frame.chunks.iter().map(ChunkMeta::to_proto).collect(),
            data: Bytes::new(),
            base: frame.base.iter().map(ChunkMeta::to_proto).collect(),
        }
        .encode_to_vec();
        let path = shard_path(&self.dir, &id);
        let len = (header.len() as u32).to_le_bytes();
        write_atomically(&path, &[&len, &header, &frame.data])?;
        let size = (4 + header.len() + frame.data.len()) as u64;
        self.index(id, &frame.chunks, size);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::frame_of;

    use super::*;

    /// A frame of one incompressible 16 KiB chunk seeded by `seed`.
    fn frame(seed: u8) -> (B3Digest, Frame) {
        let mut chunk = vec![0u8; 16 << 10];
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[seed]);
        hasher.finalize_xof().fill(&mut chunk);
        (B3Digest::of(&chunk), frame_of(&[&chunk]))
    }

    /// Bytes of every frame file on disk.
    fn bytes_on_disk(cache: &DiskCache) -> u64 {
        shard_dirs(&cache.dir)
            .flat_map(|shard| std::fs::read_dir(shard).unwrap())
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn a_full_cache_keeps_the_newest_frames_and_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3 * (17 << 10)).unwrap();
        let frames: Vec<_> = (0..4).map(frame).collect();
        for (_, f) in &frames[..3] {
            cache.store(f);
        }
        cache.frames.run_pending_tasks();
        // The first frame is read again, so the second is now the oldest.
        assert!(cache.frame_of(&frames[0].0).is_some());
        cache.store(&frames[3].1);
        cache.frames.run_pending_tasks();

        let kept = |i: usize| cache.frame_of(&frames[i].0).is_some();
        assert!(kept(3), "the frame stored last was turned away");
        assert!(kept(0), "a frame just read was evicted");
        assert!(!kept(1), "the least recently used frame is still there");
        assert!(bytes_on_disk(&cache) <= 3 * (17 << 10));
    }

    #[test]
    fn a_frame_another_process_wrote_is_found_and_one_it_evicted_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let mount = DiskCache::open(dir.path(), 1 << 30).unwrap();
        let proxy = DiskCache::open(dir.path(), 1 << 30).unwrap();
        let (digest, f) = frame(9);
        mount.store(&f);
        std::thread::sleep(RESCAN_INTERVAL + std::time::Duration::from_millis(100));
        let (_, found) = proxy.frame_of(&digest).expect("the other process's frame");
        assert_eq!(found.data, f.data);
        // The other process drops it: a miss here, not an error.
        let (id, _) = mount.frame_of(&digest).unwrap();
        mount.remove(&id);
        assert!(proxy.frame_of(&digest).is_none());
        // A young temp file may be a live writer's: opening keeps it.
        let shard = dir.path().join("frames").join("00");
        std::fs::write(shard.join(format!("{TMP_PREFIX}live")), b"x").unwrap();
        DiskCache::open(dir.path(), 1 << 30).unwrap();
        assert!(shard.join(format!("{TMP_PREFIX}live")).exists());
    }
}
