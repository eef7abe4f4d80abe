//! Chunk lists on the client's disk: which chunks make up each
//! multi-chunk file, kept beside the frames so a remount (or the proxy
//! after a mount, or a mount after `lazix prefetch`) needs no round trip
//! per file to learn them again. Without them a warm start far from the
//! server paid one round trip per multi-chunk file it opened, its bytes
//! all on disk (Python's `import boto3, IPython`: 546 lookups, 27 s at
//! 50 ms).
//!
//! File `lists/<2 hex>/<64 hex>` (name: the file's BLAKE3) holds one
//! record per chunk (32-byte digest, 8-byte little-endian size), then the
//! list's digest as root signatures cover it
//! ([`crate::trust::chunk_list_digest`]), so a torn or rotten file reads
//! as a miss and is deleted. No records means the store has no list: the
//! file is one chunk. Written to a temp file and renamed; several
//! processes may share the folder (a lookup is a file open, no index to
//! share). Each process keeps an LRU over the lists it used, bounded by
//! bytes, and deletes what it evicts.
//!
//! What is read here is what the store below answered before, no more
//! trusted than that: readers check it as they check a server's answer
//! (the file's size; with trusted keys, the signed manifest). "One chunk"
//! is kept too: readers ask only for files of stored paths, whose lists
//! were stored before their PathInfo, so an honest server's answer does
//! not change. A list a reader refuses (not the signed one, not fitting its
//! file, or bytes that do not hash to the file) must be dropped with
//! [`DiskChunkLists::forget`], or it would be answered again on every
//! read and remount: the mount does so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{create_shards, shard_dirs, shard_path, skip_temp_file, write_atomically};
use crate::chunk::ChunkMeta;
use crate::digest::DigestKeyBuildHasher;
use crate::error::StoreError;
use crate::trust::chunk_list_digest;
use crate::B3Digest;

/// Bytes per chunk record.
const RECORD: usize = 32 + 8;
/// Bytes of the trailing digest.
const TRAILER: usize = 32;
/// The least a list file weighs (a file system block).
const BLOCK: u64 = 4096;
/// Longest list file read: a file of 2^20 chunks (64 GiB at the average
/// chunk size). Longer ones are not kept.
const MAX_FILE: u64 = (RECORD as u64) << 20;

/// Chunk lists on disk. Cheap to clone (shared index).
#[derive(Clone)]
pub struct DiskChunkLists {
    dir: PathBuf,
    /// File digest → list file size; LRU, weighted by size.
    lists: moka::sync::Cache<B3Digest, u64, DigestKeyBuildHasher>,
}

/// A list file's bytes.
fn encode(list: Option<&[ChunkMeta]>) -> Vec<u8> {
    let list = list.unwrap_or_default();
    let mut out = Vec::with_capacity(list.len() * RECORD + TRAILER);
    for c in list {
        out.extend_from_slice(c.digest.as_bytes());
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out.extend_from_slice(chunk_list_digest(list).as_bytes());
    out
}

/// A list file's list (`None`: one chunk), or why it is no list.
fn decode(data: &[u8]) -> Result<Option<Vec<ChunkMeta>>, StoreError> {
    let corrupt = |m: &str| StoreError::Corrupt(format!("chunk list on disk: {m}"));
    if data.len() < TRAILER || !(data.len() - TRAILER).is_multiple_of(RECORD) {
        return Err(corrupt("torn"));
    }
    let (records, trailer) = data.split_at(data.len() - TRAILER);
    let list: Vec<ChunkMeta> = records
        .chunks_exact(RECORD)
        .map(|r| ChunkMeta {
            digest: B3Digest::from(<[u8; 32]>::try_from(&r[..32]).expect("32 bytes")),
            size: u64::from_le_bytes(r[32..].try_into().expect("8 bytes")),
        })
        .collect();
    if chunk_list_digest(&list).as_bytes() != trailer {
        return Err(corrupt("digest does not match"));
    }
    Ok((!list.is_empty()).then_some(list))
}

impl DiskChunkLists {
    /// Opens (creating) the lists in `dir` (the cache folder) with a quota
    /// of `quota` bytes, indexing the lists already there; temp files a
    /// killed writer left are removed.
    pub fn open(dir: &Path, quota: u64) -> Result<Self, StoreError> {
        let dir = dir.join("lists");
        create_shards(&dir)?;
        let evict_dir = dir.clone();
        let lists = moka::sync::Cache::builder()
            .max_capacity(quota)
            // Plain LRU, as the frames (see there).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            // What a small file really takes on disk: a block.
            .weigher(|_: &B3Digest, size: &u64| (*size).clamp(BLOCK, u32::MAX as u64) as u32)
            .eviction_listener(move |blob: Arc<B3Digest>, _, cause| {
                if cause.was_evicted() {
                    let _ = std::fs::remove_file(shard_path(&evict_dir, &blob));
                }
            })
            .build_with_hasher(DigestKeyBuildHasher::default());
        let this = Self { dir, lists };
        this.load_existing()?;
        Ok(this)
    }

    fn load_existing(&self) -> Result<(), StoreError> {
        for shard in shard_dirs(&self.dir) {
            for entry in std::fs::read_dir(&shard)? {
                let entry = entry?;
                if skip_temp_file(&entry) {
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(blob) = B3Digest::from_hex(&name) {
                    self.lists.insert(blob, entry.metadata()?.len());
                }
            }
        }
        Ok(())
    }

    /// The list of the file `blob` if kept (`Some(None)`: kept as one
    /// chunk); a damaged entry is deleted and is a miss. Counts as a use.
    pub fn get(&self, blob: &B3Digest) -> Option<Option<Vec<ChunkMeta>>> {
        let path = shard_path(&self.dir, blob);
        let data = match std::fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            let mut data = Vec::new();
            f.take(MAX_FILE + 1).read_to_end(&mut data)?;
            Ok(data)
        }) {
            Ok(d) => d,
            Err(_) => {
                // Gone (never kept, or evicted by another process).
                self.lists.invalidate(blob);
                return None;
            }
        };
        match decode(&data) {
            Ok(list) => {
                // Indexed here too when another process wrote it.
                self.lists.insert(*blob, data.len() as u64);
                Some(list)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "dropping a damaged chunk list");
                self.lists.invalidate(blob);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps the list of `blob` (`None`: one chunk), atomically; a failure
    /// is logged (a cache that cannot write only misses later).
    pub fn put(&self, blob: &B3Digest, list: Option<&[ChunkMeta]>) {
        let data = encode(list);
        if data.len() as u64 > MAX_FILE || self.lists.contains_key(blob) {
            return;
        }
        let path = shard_path(&self.dir, blob);
        match write_atomically(&path, &[&data]) {
            Ok(()) => self.lists.insert(*blob, data.len() as u64),
            Err(e) => tracing::warn!(error = %e, "cannot write a chunk list to the disk cache"),
        }
    }

    /// Drops the list of `blob` (a writer is storing one: the store's
    /// answer may change from "one chunk").
    pub fn forget(&self, blob: &B3Digest) {
        self.lists.invalidate(blob);
        let _ = std::fs::remove_file(shard_path(&self.dir, blob));
    }

    /// Bytes and entries kept, as this process sees them.
    pub fn usage(&self) -> (u64, u64) {
        self.lists.run_pending_tasks();
        (self.lists.weighted_size(), self.lists.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u8) -> Vec<ChunkMeta> {
        (0..n)
            .map(|i| ChunkMeta {
                digest: B3Digest::of(&[i]),
                size: 1000 + i as u64,
            })
            .collect()
    }

    #[test]
    fn a_kept_list_is_found_by_another_process_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiskChunkLists::open(dir.path(), 1 << 20).unwrap();
        let blob = B3Digest::of(b"file");
        let single = B3Digest::of(b"one chunk");
        assert_eq!(a.get(&blob), None);
        a.put(&blob, Some(&list(5)));
        a.put(&single, None);
        let b = DiskChunkLists::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.get(&blob), Some(Some(list(5))));
        assert_eq!(b.get(&single), Some(None));
        assert_eq!(b.usage().1, 2);
    }

    #[test]
    fn a_damaged_list_is_a_miss_and_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let lists = DiskChunkLists::open(dir.path(), 1 << 20).unwrap();
        let path = |b: &B3Digest| shard_path(&dir.path().join("lists"), b);
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("torn", Box::new(|d| d.truncate(d.len() - 3))),
            (
                "a record cut off",
                Box::new(|d| d.drain(..RECORD).for_each(drop)),
            ),
            ("a size changed", Box::new(|d| d[33] ^= 1)),
            ("empty", Box::new(|d| d.clear())),
        ];
        for (i, (what, damage)) in cases.iter().enumerate() {
            let blob = B3Digest::of(&[i as u8, 0xfe]);
            lists.put(&blob, Some(&list(3)));
            let mut data = std::fs::read(path(&blob)).unwrap();
            damage(&mut data);
            std::fs::write(path(&blob), &data).unwrap();
            assert_eq!(lists.get(&blob), None, "{what}");
            assert!(!path(&blob).exists(), "{what}: still on disk");
        }
    }

    #[test]
    fn the_quota_holds_and_evicted_lists_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Each list weighs a block at least.
        let one = (encode(Some(&list(10))).len() as u64).max(BLOCK);
        let lists = DiskChunkLists::open(dir.path(), 4 * one).unwrap();
        for i in 0..20u8 {
            lists.put(&B3Digest::of(&[i]), Some(&list(10)));
        }
        let (bytes, _) = lists.usage();
        assert!(bytes <= 4 * one, "{bytes} > {}", 4 * one);
        let on_disk = shard_dirs(&dir.path().join("lists"))
            .flat_map(|s| std::fs::read_dir(s).unwrap())
            .count() as u64;
        assert!(on_disk <= 4, "{on_disk} list files left");
        assert!(
            lists.get(&B3Digest::of(&[19])).is_some(),
            "the newest list was evicted"
        );
    }
}
