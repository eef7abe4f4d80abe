//! The embedded backend: one data folder on local disk, the default store.
//!
//! Layout (every object is written to a temp file `.tmp-*` beside its final
//! name, then renamed into place — a same-directory rename, which needs no
//! file-system-wide lock — so a killed process never leaves a half-written
//! object under its final name; content-addressed names make concurrent
//! writers of one object harmless):
//! - `chunks/<2 hex>/<64 hex>`: 8-byte little-endian raw size, then one zstd
//!   frame of the chunk;
//! - `blobs/<2 hex>/<64 hex>`: chunk list of a multi-chunk blob (protobuf
//!   `lazix.v1.BlobChunks`);
//! - `directories/<2 hex>/<64 hex>`: protobuf `Directory`;
//! - `pathinfo/<nixbase32 hash part>`: protobuf `PathInfo`.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lazix_proto::{ext as lpb, store as spb};
use prost::Message;

use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::B3Digest;
use crate::directory::{validate_closure, walk_closure, Directory};
use crate::error::{StoreError, StoreResult};
use crate::nix::nixbase32;
use crate::node::Node;
use crate::pathinfo::PathInfo;
use crate::services::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore};

/// Object kinds sharded by the first two hex digits of their digest.
const SHARDED: [&str; 3] = ["chunks", "blobs", "directories"];
/// Prefix of temp files; never a valid object name.
const TMP_PREFIX: &str = ".tmp-";

/// A store in one local folder. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    root: PathBuf,
}

/// Removes temp files (from killed writers) below `root` that are older
/// than `opened_at`; younger ones belong to writers of this process.
fn sweep_temp_files(root: &Path, opened_at: std::time::SystemTime) {
    let mut dirs = vec![root.join("pathinfo")];
    for kind in SHARDED {
        for shard in 0..=255u8 {
            dirs.push(root.join(kind).join(format!("{shard:02x}")));
        }
    }
    let mut removed = 0u64;
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let is_temp = entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TMP_PREFIX.as_bytes());
            let stale = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < opened_at)
            };
            if is_temp && stale() && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed temp files left by an interrupted writer");
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

fn read_optional(path: &Path) -> StoreResult<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) a store in `root`. Temp files left by a
    /// killed process are removed by a background sweep (they are never
    /// read: readers open exact object names only).
    pub fn open(root: impl Into<PathBuf>) -> StoreResult<Arc<Self>> {
        let root = root.into();
        for kind in SHARDED {
            for shard in 0..=255u8 {
                std::fs::create_dir_all(root.join(kind).join(format!("{shard:02x}")))?;
            }
        }
        std::fs::create_dir_all(root.join("pathinfo"))?;
        let sweep_root = root.clone();
        // File times come from a coarse clock that can lag `now()`: only
        // temp files clearly older than this open are leftovers.
        let opened_at = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
        std::thread::spawn(move || sweep_temp_files(&sweep_root, opened_at));
        Ok(Arc::new(Self { root }))
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn object_path(&self, kind: &str, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(kind).join(&hex[..2]).join(hex)
    }

    fn path_info_path(&self, digest: &[u8; 20]) -> PathBuf {
        self.root.join("pathinfo").join(nixbase32::encode(digest))
    }

    /// Writes `parts` to `dest` atomically: a temp file beside it, then a
    /// rename.
    fn write_atomic(&self, dest: &Path, parts: &[&[u8]]) -> StoreResult<()> {
        let dir = dest.parent().expect("objects live in folders");
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(dir)?;
        for p in parts {
            tmp.write_all(p)?;
        }
        tmp.persist(dest).map_err(|e| StoreError::Io(e.error))?;
        Ok(())
    }

    /// Reads one chunk as stored (not verified), or `None`.
    pub fn read_chunk(&self, digest: &B3Digest) -> StoreResult<Option<Chunk>> {
        let Some(data) = read_optional(&self.object_path("chunks", digest))? else {
            return Ok(None);
        };
        if data.len() < 8 {
            return Err(StoreError::Corrupt(format!(
                "chunk {digest}: truncated file"
            )));
        }
        let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let mut data = Bytes::from(data);
        Ok(Some(Chunk {
            digest: *digest,
            size,
            payload: ChunkPayload::Zstd(data.split_off(8)),
        }))
    }

    /// Stores a chunk whose zstd payload the caller has already verified
    /// (a client-side cache writing what it just checked); atomic like
    /// every write. Returns the bytes written.
    pub fn insert_verified_chunk(
        &self,
        digest: &B3Digest,
        size: u64,
        zstd: &[u8],
    ) -> StoreResult<u64> {
        let path = self.object_path("chunks", digest);
        self.write_atomic(&path, &[&size.to_le_bytes(), zstd])?;
        Ok(8 + zstd.len() as u64)
    }

    /// Deletes a chunk (cache eviction, or a corrupt entry).
    pub fn remove_chunk(&self, digest: &B3Digest) -> StoreResult<()> {
        match std::fs::remove_file(self.object_path("chunks", digest)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every stored chunk with its file size, for rebuilding a cache index.
    pub fn stored_chunks(&self) -> StoreResult<Vec<(B3Digest, u64)>> {
        let mut out = Vec::new();
        for shard in 0..=255u8 {
            let dir = self.root.join("chunks").join(format!("{shard:02x}"));
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(digest) = name.to_str().and_then(B3Digest::from_hex) else {
                    continue;
                };
                out.push((digest, entry.metadata()?.len()));
            }
        }
        Ok(out)
    }

    fn has_chunk(&self, digest: &B3Digest) -> bool {
        self.object_path("chunks", digest).exists()
    }

    fn read_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        let Some(data) = read_optional(&self.object_path("directories", digest))? else {
            return Ok(None);
        };
        let dir = Directory::decode(&data)
            .map_err(|e| StoreError::Corrupt(format!("directory {digest}: {e}")))?;
        if dir.digest() != *digest {
            return Err(StoreError::Corrupt(format!(
                "directory {digest}: digest mismatch"
            )));
        }
        Ok(Some(dir))
    }

    fn read_blob_chunks(&self, blob: &B3Digest) -> StoreResult<Option<Vec<ChunkMeta>>> {
        if *blob == B3Digest::of(b"") {
            return Ok(Some(Vec::new()));
        }
        let Some(data) = read_optional(&self.object_path("blobs", blob))? else {
            return Ok(None);
        };
        let msg = lpb::BlobChunks::decode(data.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))?;
        msg.chunks
            .iter()
            .map(|c| {
                Ok(ChunkMeta {
                    digest: B3Digest::try_from(&c.digest)
                        .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))?,
                    size: c.size,
                })
            })
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    /// Checks a chunk list against the stored chunks: all present, and
    /// their concatenation hashes to the blob digest.
    fn verify_blob(&self, b: &BlobChunks) -> StoreResult<()> {
        let mut hasher = blake3::Hasher::new();
        for c in &b.chunks {
            let chunk = self.read_chunk(&c.digest)?.ok_or_else(|| {
                StoreError::Invalid(format!("blob {}: chunk {} not stored", b.blob, c.digest))
            })?;
            if chunk.size != c.size {
                return Err(StoreError::Invalid(format!(
                    "blob {}: chunk {} has size {}, list says {}",
                    b.blob, c.digest, chunk.size, c.size
                )));
            }
            hasher.update(&chunk.decode_verified()?);
        }
        if B3Digest::from(hasher.finalize()) != b.blob {
            return Err(StoreError::Invalid(format!(
                "blob {}: chunks do not hash to the blob digest",
                b.blob
            )));
        }
        Ok(())
    }

    fn node_is_stored(&self, node: &Node) -> StoreResult<bool> {
        Ok(match node {
            Node::Directory { digest, .. } => self.object_path("directories", digest).exists(),
            Node::File { digest, size, .. } => {
                *size == 0 || self.object_path("blobs", digest).exists() || self.has_chunk(digest)
            }
            Node::Symlink { .. } => true,
        })
    }
}

#[async_trait]
impl BlobStore for EmbeddedStore {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        let paths: Vec<(B3Digest, PathBuf)> = digests
            .iter()
            .map(|d| (*d, self.object_path("chunks", d)))
            .collect();
        blocking(move || {
            Ok(paths
                .into_iter()
                .filter(|(_, p)| !p.exists())
                .map(|(d, _)| d)
                .collect())
        })
        .await
    }

    async fn put_chunks(&self, chunks: Vec<Chunk>) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            for chunk in chunks {
                let path = this.object_path("chunks", &chunk.digest);
                if path.exists() {
                    continue;
                }
                // Verify before anything becomes visible.
                let raw = chunk.decode_verified()?;
                let z = match chunk.payload {
                    ChunkPayload::Zstd(z) => z,
                    ChunkPayload::Raw(_) | ChunkPayload::Verified(_) => {
                        crate::chunk::compress(&raw)?.into()
                    }
                };
                this.write_atomic(&path, &[&chunk.size.to_le_bytes(), &z])?;
            }
            Ok(())
        })
        .await
    }

    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let digests = digests.to_vec();
        let this = self.clone();
        blocking(move || {
            digests
                .iter()
                .map(|d| {
                    this.read_chunk(d)?
                        .ok_or_else(|| StoreError::NotFound(format!("chunk {d}")))
                })
                .collect()
        })
        .await
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            for b in &blobs {
                this.verify_blob(b)?;
                let msg = lpb::BlobChunks {
                    blob_digest: b.blob.into(),
                    chunks: b
                        .chunks
                        .iter()
                        .map(|c| lpb::ChunkMeta {
                            digest: c.digest.into(),
                            size: c.size,
                        })
                        .collect(),
                };
                this.write_atomic(&this.object_path("blobs", &b.blob), &[&msg.encode_to_vec()])?;
            }
            Ok(())
        })
        .await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        let blobs = blobs.to_vec();
        let this = self.clone();
        blocking(move || blobs.iter().map(|b| this.read_blob_chunks(b)).collect()).await
    }
}

#[async_trait]
impl DirectoryStore for EmbeddedStore {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        let d = *digest;
        let this = self.clone();
        blocking(move || this.read_directory(&d)).await
    }

    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        // One blocking task for the whole walk: a hop per directory would
        // dominate for trees of thousands of directories.
        let this = self.clone();
        let root = *root;
        blocking(move || walk_closure(root, |d| this.read_directory(d))).await
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        let this = self.clone();
        blocking(move || {
            let (root, dirs) =
                validate_closure(dirs, |d| Ok(this.read_directory(d)?.map(|dir| dir.size())))?;
            for (digest, dir) in dirs {
                let path = this.object_path("directories", &digest);
                if !path.exists() {
                    this.write_atomic(&path, &[&dir.encode()])?;
                }
            }
            Ok(root)
        })
        .await
    }
}

#[async_trait]
impl PathInfoStore for EmbeddedStore {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        let path = self.path_info_path(digest);
        blocking(move || {
            let Some(data) = read_optional(&path)? else {
                return Ok(None);
            };
            let p = spb::PathInfo::decode(data.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("pathinfo {}: {e}", path.display())))?;
            PathInfo::try_from_proto(&p).map(Some)
        })
        .await
    }

    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
        let this = self.clone();
        blocking(move || {
            if !this.node_is_stored(&info.node)? {
                return Err(StoreError::Invalid(format!(
                    "root of {} is not stored",
                    info.store_path
                )));
            }
            let path = this.path_info_path(info.store_path.digest());
            this.write_atomic(&path, &[&info.to_proto().encode_to_vec()])
        })
        .await
    }

    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        let dir = self.root.join("pathinfo");
        let names: StoreResult<Vec<PathBuf>> = std::fs::read_dir(&dir)
            .map_err(StoreError::from)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.path()).map_err(StoreError::from))
                    .collect()
            });
        match names {
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            Ok(mut paths) => {
                paths.sort();
                futures::stream::iter(paths)
                    .then(|p| async move {
                        blocking(move || {
                            let data = std::fs::read(&p)?;
                            let msg = spb::PathInfo::decode(data.as_slice()).map_err(|e| {
                                StoreError::Corrupt(format!("pathinfo {}: {e}", p.display()))
                            })?;
                            PathInfo::try_from_proto(&msg)
                        })
                        .await
                    })
                    .boxed()
            }
        }
    }
}
