//! Client-side caches on disk, shared by every reader on a machine (the
//! mount and the local proxy use one folder): frames as the server sent
//! them ([`frames`]), the frames of pinned closures ([`pins`]), and whole
//! files (the mount's passthrough copies).
//!
//! Both are folders of files named by digest, spread over 256 sub-folders
//! by the digest's first byte (no folder grows to millions of entries).

use std::path::{Path, PathBuf};

use crate::B3Digest;

pub mod frames;
pub mod pins;

pub use frames::{DiskCache, DiskCacheUsage};

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
