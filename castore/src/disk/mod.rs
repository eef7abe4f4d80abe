//! Client-side caches on disk, shared by every reader on a machine (the
//! mount and the local proxy use one folder): frames as the server sent
//! them ([`frames`]), multi-chunk files' chunk lists ([`lists`]), the
//! frames of pinned closures ([`pins`]), and whole files (the mount's
//! passthrough copies). One quota covers them ([`Quotas`]).
//!
//! All are folders of files named by digest, spread over 256 sub-folders
//! by the digest's first byte (no folder grows to millions of entries).

use std::path::{Path, PathBuf};

use crate::B3Digest;

pub mod frames;
pub mod lists;
pub mod pins;

pub use frames::{DiskCache, DiskCacheUsage};
pub use lists::DiskChunkLists;

/// How a cache folder's quota is shared, one rule for every user of the
/// folder (mount, proxy, `lazix prefetch`). Pinned frames are outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Frames: what is left.
    pub frames: u64,
    /// Chunk lists: 1/64 (a list is about 0.06% of its file's bytes, but
    /// each list file, weighed as a 4 KiB block at least, is mostly block).
    pub lists: u64,
    /// Whole files (the mount's passthrough copies): a quarter.
    pub whole_files: u64,
}

impl Quotas {
    /// The split of `cache_bytes`.
    pub fn of(cache_bytes: u64) -> Self {
        let lists = cache_bytes / 64;
        let whole_files = cache_bytes / 4;
        Self {
            frames: cache_bytes - lists - whole_files,
            lists,
            whole_files,
        }
    }
}

/// Prefix of temp files; never a valid entry name.
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// Temp files older than this are a killed writer's, removed at open
/// (younger ones may be another live process's).
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `entry` is a temp file (never indexed), removing it if a killed
/// writer left it.
pub(crate) fn skip_temp_file(entry: &std::fs::DirEntry) -> bool {
    if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
        return false;
    }
    let stale = entry
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|m| m.elapsed().is_ok_and(|age| age > STALE_TMP));
    if stale {
        let _ = std::fs::remove_file(entry.path());
    }
    true
}

/// Writes `parts` to `path` through a temp file beside it, renamed at the
/// end: a killed writer leaves no half entry under a final name.
pub(crate) fn write_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(path.parent().expect("sharded"))?;
    for p in parts {
        tmp.write_all(p)?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `dir` and its 256 shard folders.
pub fn create_shards(dir: &Path) -> std::io::Result<()> {
    for shard in shard_dirs(dir) {
        std::fs::create_dir_all(shard)?;
    }
    Ok(())
}

/// The 256 shard folders of `dir`.
pub fn shard_dirs(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    (0..=255u8).map(move |shard| dir.join(format!("{shard:02x}")))
}

/// Where the file named by `digest` lives in `dir`.
pub fn shard_path(dir: &Path, digest: &B3Digest) -> PathBuf {
    let hex = digest.to_hex();
    dir.join(&hex[..2]).join(hex)
}
