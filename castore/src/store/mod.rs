//! The store: the service traits every backend implements (the bucket on
//! a folder or S3, the caches layered over any store, the gRPC client), so
//! they are interchangeable behind one interface, and the layers that are
//! stores themselves.
//!
//! - this file: the traits alone, and [`Store`], the three together;
//! - [`cached`]: memory caches of frames, chunk lists, directory closures
//!   and PathInfos in front of any store;
//! - [`decoded`]: a cache of decoded, verified chunks for renderers;
//! - [`disk`]: frames (the local proxy) and chunk lists (the proxy and
//!   the mount) kept in the client's disk cache in front of a remote
//!   store;
//! - `path_closure`: the references closure of store paths, walked on
//!   a server with a bound;
//! - `filtered_lists`: chunk-list answers passed through a filter (the
//!   trusted reader's guard, tests' lying servers);
//! - `conformance` (tests and the `testutil` feature): one suite every
//!   implementation passes.
//!
//! All calls are batched: no caller needs a round trip per chunk or per
//! file. How chunks are laid out physically is the backend's business:
//! nothing here assumes one object per chunk. How a reader turns a store's
//! answers into verified bytes is [`crate::read`]'s.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::catalog::CatalogEntry;
use crate::chunk::{Chunk, ChunkMeta};
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::pathinfo::PathInfo;
use crate::read::bases::frames_with_bases;
use crate::read::decode::{chunks_in_order, decode_frames};
use crate::trust::ChunkListsDigest;

mod cached;
#[cfg(any(test, feature = "testutil"))]
pub mod conformance;
mod decoded;
mod disk;
mod filtered_lists;
mod path_closure;

pub use cached::{cached, CacheConfig};
pub use decoded::{
    decoded_chunks, decoded_chunks_counted, decoded_chunks_sharing, DecodedCacheCounters,
    DecodedCacheReading, DecodedChunkCache,
};
pub use disk::{disk_chunk_lists, disk_frames, DiskCounters};
pub use filtered_lists::{filtered_lists, ListFilter};
pub use path_closure::path_closure;

/// A blob made of several chunks: its digest and its chunk list in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobChunks {
    /// BLAKE3 of the blob's bytes.
    pub blob: B3Digest,
    /// The chunks whose concatenation is the blob.
    pub chunks: Vec<ChunkMeta>,
}

/// Chunks and blob chunk lists.
///
/// A blob of one chunk has no chunk list: its only chunk has the blob's
/// digest. The empty blob needs nothing stored.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// The digests among `digests` that the store lacks, in input order.
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>>;

    /// Stores chunks in frames. Every chunk is verified (BLAKE3 of its raw
    /// bytes) before anything becomes visible; one bad chunk fails the call
    /// with `Corrupt`/`Invalid` and stores nothing. The frames of one call
    /// are stored together (one pack). `order` places the call among its
    /// uploader's (when it cut the batch, nanoseconds since the epoch,
    /// increasing per uploader; see [`next_upload_order`]; 0: unknown): a
    /// store that compacts keeps it with the pack, so that a large file
    /// uploaded over several calls is compacted in its order; layers over
    /// another store pass it on; others ignore it.
    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()>;

    /// [`BlobStore::put_frames_ordered`] for an uploader that does not
    /// number its calls.
    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        self.put_frames_ordered(frames, 0).await
    }

    /// The frames holding the requested chunks, as stored (the caller
    /// decodes and verifies), each frame once, in order of first request.
    /// A frame may hold neighbours that were not asked for. `NotFound` if
    /// any chunk is missing.
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>>;

    /// Like [`BlobStore::get_frames`], for a reader that knows exactly what
    /// it needs (an access profile): a remote store may answer new plain
    /// frames of the asked chunks alone where stored frames hold mostly
    /// others (fewer bytes on the wire). Default: the stored frames (what
    /// the caching layers answer: exactness is a hint); pass-through
    /// layers forward it.
    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.get_frames(digests).await
    }

    /// Chunks decoded and verified, in request order: for callers that need
    /// the bytes here (renderers). Layers with a decoded-chunk cache answer
    /// from it.
    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let with_bases = frames_with_bases(
            digests.to_vec(),
            |ds| async move { self.get_frames(&ds).await },
            crate::read::bases::nothing_cached,
        )
        .await?;
        chunks_in_order(
            digests,
            decode_frames(with_bases.frames, with_bases.known).await?,
        )
    }

    /// Registers chunk lists of blobs whose chunks are all stored; checks
    /// that the chunks exist and hash together to the blob digest.
    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()>;

    /// Chunk lists of many blobs, in request order. `None` means no list
    /// is stored: the blob is a single chunk with its own digest, or absent.
    async fn get_blob_chunks(&self, blobs: &[B3Digest])
        -> StoreResult<Vec<Option<Vec<ChunkMeta>>>>;

    /// The manifest of the directory `root`: the digest of every
    /// multi-chunk file's chunk list below it (see
    /// [`crate::read::trusted`]), what a root signature covers, in one
    /// answer instead of every list. `None`: this store does not keep
    /// manifests (the caller gathers the lists). `NotFound` if the root is
    /// not stored. Readers check the answer against a signature; it is
    /// never trusted by itself.
    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        let _ = root;
        Ok(None)
    }

    /// The manifest of the directory `root` as this store itself wrote it
    /// (never one computed on asking, nor one another store answered):
    /// what lets a renderer believe the lists it names without hashing
    /// their files ([`crate::read::proved`] says why that holds). `None`:
    /// none kept, or this store cannot vouch for one (a client of a remote
    /// store). Layers over such a store forward it.
    async fn own_chunk_list_digests(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        let _ = root;
        Ok(None)
    }

    /// A reader refused the chunk list (or "no list") this store answered
    /// for `blob`: it does not fit the file, its chunks do not hash to it,
    /// or it is not the signed one. A layer that keeps answers (in memory,
    /// on disk) drops its copy, so the next read asks below again instead
    /// of failing on it for good; every layer over another store passes
    /// this on. Stores that keep nothing answered ignore it.
    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        let _ = blob;
    }
}

/// Directories (Merkle nodes).
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// One directory, or `None`.
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>>;

    /// A directory and everything below it, root first, breadth-first, each
    /// once. `NotFound` if the root or any child is missing.
    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>>;

    /// Stores a closure sent leaves first, root last, after validating it
    /// (see [`crate::directory::validate_closure`]); returns the root digest.
    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest>;
}

/// PathInfos, keyed by the store path's 20-byte digest.
#[async_trait]
pub trait PathInfoStore: Send + Sync {
    /// The PathInfo for a store path digest, or `None`.
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>>;

    /// Stores a PathInfo, after checking that its root is stored.
    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()>;

    /// Every PathInfo.
    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>>;

    /// Every stored path's name and root node, what a listing of the
    /// store's root needs. Stores that keep a catalog (see
    /// [`crate::catalog`]) answer from it in a few reads; by default every
    /// PathInfo is listed.
    async fn list_catalog(&self) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        Ok(self
            .list_path_infos()
            .map_ok(|info| CatalogEntry::of(&info))
            .boxed())
    }

    /// The access profile stored beside a store path (its text, see
    /// [`crate::profile`]; readers parse and check it), or `None`.
    /// Stores that keep none answer `None`.
    async fn get_profile(&self, digest: &[u8; 20]) -> StoreResult<Option<Bytes>> {
        let _ = digest;
        Ok(None)
    }

    /// Stores an access profile beside the stored path `digest` (checked
    /// by [`crate::profile::check_stored`]), replacing an earlier one.
    async fn put_profile(&self, digest: &[u8; 20], profile: Bytes) -> StoreResult<()> {
        let _ = (digest, profile);
        Err(crate::StoreError::Invalid(
            "this store keeps no access profiles".into(),
        ))
    }
}

/// The three services together: what the server, the CLI and the renderer
/// work with. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Chunks and blob chunk lists.
    pub blobs: Arc<dyn BlobStore>,
    /// Directories.
    pub directories: Arc<dyn DirectoryStore>,
    /// PathInfos.
    pub path_infos: Arc<dyn PathInfoStore>,
}

impl Store {
    /// A store whose three services are one backend object.
    pub fn from_backend<B>(backend: Arc<B>) -> Self
    where
        B: BlobStore + DirectoryStore + PathInfoStore + 'static,
    {
        Self {
            blobs: backend.clone(),
            directories: backend.clone(),
            path_infos: backend,
        }
    }
}

/// The place of the `part`-th of several packs stored from one upload call
/// (or one compaction group) placed at `order`: after it, in their order
/// (0: unknown, and the store places each when it is stored).
pub fn upload_part(order: u64, part: u64) -> u64 {
    match order {
        0 => 0,
        o => o.saturating_add(part),
    }
}

/// The place of an upload call cut now among this process's calls (see
/// [`BlobStore::put_frames_ordered`]): the time in nanoseconds since the
/// epoch, made strictly increasing, so calls cut one after another are
/// ordered even when the clock does not move between them, and uploads
/// from later pushes come after earlier ones.
pub fn next_upload_order() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{next_upload_order, upload_part};

    /// An upload call's order is a client's unchecked hint: any value,
    /// split into any number of packs, places them without overflow.
    #[test]
    fn upload_orders_of_any_value_place_their_packs_without_overflow() {
        assert_eq!(upload_part(0, 7), 0, "unknown stays unknown");
        assert_eq!(upload_part(10, 0), 10);
        assert_eq!(upload_part(10, 3), 13);
        assert_eq!(upload_part(u64::MAX, 3), u64::MAX);
        assert_eq!(upload_part(u64::MAX - 1, 3), u64::MAX);
        let (a, b) = (next_upload_order(), next_upload_order());
        assert!(0 < a && a < b, "strictly increasing: {a} {b}");
    }
}
