//! Whole files, kept as plain files in the cache folder so the kernel can
//! read them itself (FUSE passthrough): once a file has been read whole
//! through the mount, later opens hand the kernel this copy and reads run
//! at the speed of the local disk's page cache, with no round trip through
//! the mount.
//!
//! A file is copied while it is read from its start to its end (each
//! read's bytes at their offset, in a sparse staging file, so the kernel's
//! slightly out-of-order read-ahead is fine; a read far ahead means random
//! access and ends the copy) and moved into place once every byte has been
//! written; its bytes came from chunks already verified by BLAKE3. A copy
//! found on disk at a later mount is hashed once before its first use, so
//! a damaged one is dropped, never served. Bounded by a quota (LRU).

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lazix_castore::digest::DigestKeyBuildHasher;
use lazix_castore::B3Digest;

use lazix_castore::disk::{create_shards, shard_path};

/// Files smaller than this are not kept whole (the kernel's page cache of
/// the mount serves them well enough, and each costs an inode).
pub const MIN_WHOLE_FILE: u64 = 256 * 1024;
/// Prefix of staging files.
const STAGING: &str = "staging-";
/// A read starting this far past the bytes copied so far means random
/// access (a mapped library, a seek): the copy is given up.
const SEQUENTIAL_SLACK: u64 = 8 * 1024 * 1024;

/// The whole-file copies in one cache folder. Share it behind an `Arc`.
pub struct WholeFiles {
    dir: PathBuf,
    /// File digest → size; LRU by bytes; an eviction deletes the copy.
    index: moka::sync::Cache<B3Digest, u64, DigestKeyBuildHasher>,
    /// Copies known good in this process (written here, or hashed).
    verified: Mutex<HashSet<B3Digest, DigestKeyBuildHasher>>,
    /// Copies evicted to stay within the quota.
    evictions: Arc<std::sync::atomic::AtomicU64>,
}

impl WholeFiles {
    /// Opens (creating) `cache_dir/files` with a quota of `quota` bytes,
    /// indexing the copies already there; staging leftovers are removed.
    pub fn open(cache_dir: &Path, quota: u64) -> std::io::Result<Arc<Self>> {
        let dir = cache_dir.join("files");
        create_shards(&dir)?;
        let evict_dir = dir.clone();
        let evictions: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let evicted = evictions.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(quota)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_: &B3Digest, size: &u64| (*size).min(u32::MAX as u64) as u32)
            .eviction_listener(move |digest: Arc<B3Digest>, _, cause| {
                if cause.was_evicted() {
                    evicted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = std::fs::remove_file(shard_path(&evict_dir, &digest));
                }
            })
            .build_with_hasher(DigestKeyBuildHasher::default());
        let files = Arc::new(Self {
            dir,
            index,
            verified: Mutex::default(),
            evictions,
        });
        for entry in std::fs::read_dir(&files.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(STAGING) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            if !entry.file_type()?.is_dir() {
                continue;
            }
            for copy in std::fs::read_dir(entry.path())? {
                let copy = copy?;
                if let Some(d) = B3Digest::from_hex(&copy.file_name().to_string_lossy()) {
                    files.index.insert(d, copy.metadata()?.len());
                }
            }
        }
        Ok(files)
    }

    /// How full the cache of whole files is.
    pub fn usage(&self) -> crate::stats::CacheUsage {
        self.index.run_pending_tasks();
        crate::stats::CacheUsage {
            bytes: self.index.weighted_size(),
            entries: self.index.entry_count(),
            evictions: self.evictions.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The copy of a file, opened for reading, if there is a good one.
    pub fn lookup(&self, digest: &B3Digest, size: u64) -> Option<File> {
        self.index.get(digest)?;
        let path = shard_path(&self.dir, digest);
        let drop_copy = || {
            self.index.invalidate(digest);
            let _ = std::fs::remove_file(&path);
        };
        let file = File::open(&path).ok()?;
        if file.metadata().ok()?.len() != size {
            tracing::warn!(%digest, "dropping a whole-file copy of the wrong size");
            drop_copy();
            return None;
        }
        if !self.verified.lock().expect("verified").contains(digest) {
            if hash_file(&file).ok()? != *digest {
                tracing::warn!(%digest, "dropping a damaged whole-file copy");
                drop_copy();
                return None;
            }
            self.verified.lock().expect("verified").insert(*digest);
        }
        Some(file)
    }

    /// A staging copy to fill while the file is read, unless a copy exists
    /// or the file is too small to keep.
    pub fn writer(self: &Arc<Self>, digest: B3Digest, size: u64) -> Option<WholeFileWriter> {
        if size < MIN_WHOLE_FILE || self.index.contains_key(&digest) {
            return None;
        }
        let staging = self.dir.join(format!(
            "{STAGING}{}-{:016x}",
            digest.to_hex(),
            rand::random::<u64>()
        ));
        let file = File::create_new(&staging).ok()?;
        file.set_len(size).ok()?;
        Some(WholeFileWriter {
            files: self.clone(),
            file,
            staging,
            digest,
            size,
            covered: Vec::new(),
            done: false,
        })
    }
}

/// BLAKE3 of a file's bytes.
fn hash_file(mut file: &File) -> std::io::Result<B3Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(B3Digest::from(*hasher.finalize().as_bytes()))
}

/// A copy being filled by reads, in any order; moved into place when every
/// byte is there, deleted if dropped before.
pub struct WholeFileWriter {
    files: Arc<WholeFiles>,
    file: File,
    staging: PathBuf,
    digest: B3Digest,
    size: u64,
    /// Written ranges, sorted and merged.
    covered: Vec<(u64, u64)>,
    done: bool,
}

impl WholeFileWriter {
    /// Writes verified bytes read at `offset`; returns true once the copy
    /// is complete and in place (the writer is then spent), an error when
    /// the reads are not sequential (or the disk refuses).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        if self.done || data.is_empty() {
            return Ok(self.done);
        }
        if offset > self.copied() + SEQUENTIAL_SLACK {
            return Err(std::io::Error::other("random access: not copied whole"));
        }
        self.file.write_all_at(data, offset)?;
        self.cover(offset, offset + data.len() as u64);
        if self.covered == [(0, self.size)] {
            // Each chunk was verified, but only the whole file's digest
            // proves they came in the right order (a reordered chunk list
            // passes every per-chunk check): a copy is kept only if it
            // hashes to its digest.
            let got = hash_file(&File::open(&self.staging)?)?;
            if got != self.digest {
                self.done = true;
                let _ = std::fs::remove_file(&self.staging);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "file {} read back as {got}: its chunk list is wrong",
                        self.digest
                    ),
                ));
            }
            std::fs::rename(&self.staging, shard_path(&self.files.dir, &self.digest))?;
            self.done = true;
            self.files
                .verified
                .lock()
                .expect("verified")
                .insert(self.digest);
            self.files.index.insert(self.digest, self.size);
        }
        Ok(self.done)
    }

    /// The digest of the file being copied.
    pub fn digest(&self) -> &B3Digest {
        &self.digest
    }

    /// Bytes copied from the start of the file without a gap: how far a
    /// sequential reader has come.
    pub fn copied(&self) -> u64 {
        self.covered
            .first()
            .map_or(0, |&(s, e)| if s == 0 { e } else { 0 })
    }

    fn cover(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start, end.min(self.size));
        let mut merged = Vec::with_capacity(self.covered.len() + 1);
        for &(s, e) in &self.covered {
            if e < start || s > end {
                merged.push((s, e));
            } else {
                start = start.min(s);
                end = end.max(e);
            }
        }
        merged.push((start, end));
        merged.sort_unstable();
        self.covered = merged;
    }
}

impl Drop for WholeFileWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_filled_out_of_order_is_kept_and_a_damaged_one_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..MIN_WHOLE_FILE as usize * 2)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let digest = B3Digest::of(&data);
        let files = WholeFiles::open(dir.path(), 1 << 30).unwrap();
        let mut w = files.writer(digest, data.len() as u64).unwrap();
        let half = data.len() / 2;
        assert!(!w.write_at(half as u64, &data[half..]).unwrap());
        assert!(files.lookup(&digest, data.len() as u64).is_none());
        assert!(w.write_at(0, &data[..half]).unwrap());
        let mut copy = Vec::new();
        let mut f = files.lookup(&digest, data.len() as u64).unwrap();
        f.read_to_end(&mut copy).unwrap();
        assert!(copy == data);
        // Another mount finds it, checks it once, and drops it if damaged.
        drop(files);
        let path = shard_path(&dir.path().join("files"), &digest);
        let files = WholeFiles::open(dir.path(), 1 << 30).unwrap();
        assert!(files.lookup(&digest, data.len() as u64).is_some());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let files = WholeFiles::open(dir.path(), 1 << 30).unwrap();
        assert!(files.lookup(&digest, data.len() as u64).is_none());
        assert!(!path.exists());
        // An abandoned staging copy leaves nothing.
        let w = files.writer(digest, data.len() as u64).unwrap();
        drop(w);
        // Random access (a read far past what was copied) ends the copy.
        let mut w = files.writer(B3Digest::of(b"big"), 64 << 20).unwrap();
        assert!(!w.write_at(0, &[1; 4096]).unwrap());
        assert!(w.write_at(32 << 20, &[1; 4096]).is_err());
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("files")).unwrap().count(),
            256
        );
    }
}
