//! A real store whose chunk-list answers are rewritten: a server that
//! lists real chunks but lies about a file, or changes its answer after a
//! reader trusted it. For the tests of every reader that checks lists.

use std::sync::Arc;

use async_trait::async_trait;

use crate::chunk::ChunkMeta;
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::store::{BlobChunks, BlobStore};
use crate::B3Digest;

/// How each chunk-list answer is rewritten: (blob, the true answer) → the
/// answer given.
pub type Rewrite =
    dyn Fn(&B3Digest, Option<Vec<ChunkMeta>>) -> Option<Vec<ChunkMeta>> + Send + Sync;

/// `inner` with its chunk-list answers passed through a [`Rewrite`].
pub struct LyingLists {
    inner: Arc<dyn BlobStore>,
    rewrite: Box<Rewrite>,
}

impl LyingLists {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn BlobStore>,
        rewrite: impl Fn(&B3Digest, Option<Vec<ChunkMeta>>) -> Option<Vec<ChunkMeta>>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rewrite: Box::new(rewrite),
        })
    }
}

#[async_trait]
impl BlobStore for LyingLists {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.missing_chunks(digests).await
    }
    async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
        self.inner.put_frames(frames).await
    }
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.inner.get_frames(digests).await
    }
    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.inner.put_blob_chunks(blobs).await
    }
    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        let answers = self.inner.get_blob_chunks(blobs).await?;
        Ok(blobs
            .iter()
            .zip(answers)
            .map(|(blob, answer)| (self.rewrite)(blob, answer))
            .collect())
    }
}
