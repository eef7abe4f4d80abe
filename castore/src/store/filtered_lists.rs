//! A store whose chunk-list answers pass through a filter: the trusted
//! reader's guard (a list must be the one its path's signature covers, see
//! [`crate::read::trusted`]) and the tests' servers that lie about a file.
//! Everything else goes to the store underneath unchanged.

use std::sync::Arc;

use async_trait::async_trait;

use super::{BlobChunks, BlobStore};
use crate::chunk::{Chunk, ChunkMeta};
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::trust::ChunkListsDigest;
use crate::B3Digest;

/// What becomes of each chunk-list answer: (blob, the store's answer) →
/// the answer given, or an error for the whole call.
pub type ListFilter =
    dyn Fn(&B3Digest, Option<Vec<ChunkMeta>>) -> StoreResult<Option<Vec<ChunkMeta>>> + Send + Sync;

/// `inner` with its chunk-list answers passed through `filter`.
pub fn filtered_lists(
    inner: Arc<dyn BlobStore>,
    filter: impl Fn(&B3Digest, Option<Vec<ChunkMeta>>) -> StoreResult<Option<Vec<ChunkMeta>>>
        + Send
        + Sync
        + 'static,
) -> Arc<dyn BlobStore> {
    Arc::new(FilteredLists {
        inner,
        filter: Box::new(filter),
    })
}

struct FilteredLists {
    inner: Arc<dyn BlobStore>,
    filter: Box<ListFilter>,
}

#[async_trait]
impl BlobStore for FilteredLists {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }
    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.put_frames_ordered(frames, order).await
    }
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames(digests).await
    }
    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames_exact(digests).await
    }
    async fn get_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<Chunk>> {
        self.inner.get_chunks(digests).await
    }
    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.inner.put_blob_chunks(blobs).await
    }
    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        let answers = self.inner.get_blob_chunks(blobs).await?;
        let mut out = Vec::with_capacity(answers.len());
        let mut first_error = None;
        for (blob, answer) in blobs.iter().zip(answers) {
            match (self.filter)(blob, answer) {
                Ok(list) => out.push(list),
                Err(e) => {
                    // Whatever below kept it must not answer it again.
                    self.inner.refuse_chunk_list(blob).await;
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(out),
            Some(e) => Err(e),
        }
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
