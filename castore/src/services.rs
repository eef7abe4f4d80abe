//! The service traits every backend implements (embedded folder now; S3,
//! caches and the gRPC client too), so they are interchangeable behind one
//! interface. All calls are batched: no caller needs a round trip per chunk
//! or per file. How chunks are laid out physically is the backend's
//! business: nothing here assumes one object per chunk.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::frame::{decode_frames, missing_bases, Frame};
use crate::pathinfo::PathInfo;

/// Blobs of at most this many bytes are always one chunk under their own
/// digest: the chunker never cuts below its minimum, and stores refuse
/// chunk lists for them. Readers skip the chunk-list lookup for such files
/// (most files of a store), a round trip per file saved.
pub const SINGLE_CHUNK_MAX: u64 = crate::chunker::DEFAULT_PARAMS.min as u64;

/// Whether a blob of `size` bytes may be stored as several chunks, so that
/// a reader must look its chunk list up (else it is one chunk).
pub fn may_have_chunk_list(size: u64) -> bool {
    size > SINGLE_CHUNK_MAX
}

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
    /// are stored together (one pack).
    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()>;

    /// The frames holding the requested chunks, as stored (the caller
    /// decodes and verifies), each frame once, in order of first request.
    /// A frame may hold neighbours that were not asked for. `NotFound` if
    /// any chunk is missing.
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>>;

    /// Chunks decoded and verified, in request order: for callers that need
    /// the bytes here (renderers). Layers with a decoded-chunk cache answer
    /// from it.
    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        let decoded = get_decoded(self, digests, |_| async { None }).await?;
        chunks_in_order(digests, decoded)
    }

    /// Registers chunk lists of blobs whose chunks are all stored; checks
    /// that the chunks exist and hash together to the blob digest.
    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()>;

    /// Chunk lists of many blobs, in request order. `None` means no list
    /// is stored: the blob is a single chunk with its own digest, or absent.
    async fn get_blob_chunks(&self, blobs: &[B3Digest])
        -> StoreResult<Vec<Option<Vec<ChunkMeta>>>>;
}

/// Fetches the frames holding `digests` and decodes them, fetching the
/// base chunks of delta frames too (one more call) unless `cached` has
/// them. Returns every chunk decoded (neighbours included).
pub async fn get_decoded<S, F, Fut>(
    blobs: &S,
    digests: &[B3Digest],
    cached: F,
) -> StoreResult<Vec<(ChunkMeta, bytes::Bytes)>>
where
    S: BlobStore + ?Sized,
    F: Fn(B3Digest) -> Fut,
    Fut: std::future::Future<Output = Option<bytes::Bytes>>,
{
    let (frames, known) = get_frames_with_bases(blobs, digests, cached).await?;
    decode_frames(frames, known).await
}

/// The frames holding `digests`, plus what their delta frames need: the
/// frames of base chunks `cached` does not have (one more call), and the
/// bytes of those it has. Not yet decoded: for callers that look at the
/// frames first.
pub async fn get_frames_with_bases<S, F, Fut>(
    blobs: &S,
    digests: &[B3Digest],
    cached: F,
) -> StoreResult<(
    Vec<Frame>,
    std::collections::HashMap<B3Digest, bytes::Bytes>,
)>
where
    S: BlobStore + ?Sized,
    F: Fn(B3Digest) -> Fut,
    Fut: std::future::Future<Output = Option<bytes::Bytes>>,
{
    let mut frames = blobs.get_frames(digests).await?;
    let mut known = std::collections::HashMap::new();
    let mut wanted = Vec::new();
    for d in missing_bases(&frames) {
        match cached(d).await {
            Some(b) => {
                known.insert(d, b);
            }
            None => wanted.push(d),
        }
    }
    if !wanted.is_empty() {
        let base_frames = blobs.get_frames(&wanted).await?;
        if base_frames.iter().any(|f| !f.base.is_empty()) {
            return Err(StoreError::Corrupt(
                "a delta frame's base is itself a delta".into(),
            ));
        }
        frames.extend(base_frames);
    }
    Ok((frames, known))
}

/// Picks the requested chunks, in request order, out of decoded frames;
/// `NotFound` for a digest no frame held.
pub fn chunks_in_order(
    digests: &[B3Digest],
    decoded: Vec<(ChunkMeta, bytes::Bytes)>,
) -> StoreResult<Vec<Chunk>> {
    let by_digest: std::collections::HashMap<B3Digest, (ChunkMeta, bytes::Bytes)> = decoded
        .into_iter()
        .map(|(m, b)| (m.digest, (m, b)))
        .collect();
    digests
        .iter()
        .map(|d| {
            let (meta, bytes) = by_digest
                .get(d)
                .ok_or_else(|| StoreError::NotFound(format!("chunk {d}")))?;
            Ok(Chunk {
                digest: *d,
                size: meta.size,
                payload: ChunkPayload::Verified(bytes.clone()),
            })
        })
        .collect()
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
