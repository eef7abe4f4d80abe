//! A real store made slow and counted: for tests that check concurrent
//! readers share one read, or that a cache spares the store a read. Generic
//! over the store traits, so it wraps any implementation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::chunk::ChunkMeta;
use crate::directory::Directory;
use crate::error::StoreResult;
use crate::frame::Frame;
use crate::pathinfo::PathInfo;
use crate::store::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore, Store};
use crate::B3Digest;

/// A store whose reads of frames, closures and PathInfos wait `delay`,
/// counting the reads that reach it.
pub struct SlowStore {
    inner: Store,
    frame_reads: AtomicUsize,
    path_info_reads: AtomicUsize,
    blob_list_reads: AtomicUsize,
    closure_reads: AtomicUsize,
    delay: Duration,
}

impl SlowStore {
    /// Wraps `inner` (one object serving all three traits).
    pub fn new<B>(inner: Arc<B>, delay: Duration) -> Arc<Self>
    where
        B: BlobStore + DirectoryStore + PathInfoStore + 'static,
    {
        Self::over(Store::from_backend(inner), delay)
    }

    /// Wraps the services of `inner`.
    pub fn over(inner: Store, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            frame_reads: AtomicUsize::new(0),
            path_info_reads: AtomicUsize::new(0),
            blob_list_reads: AtomicUsize::new(0),
            closure_reads: AtomicUsize::new(0),
            delay,
        })
    }

    /// Frame reads so far.
    pub fn frames_read(&self) -> usize {
        self.frame_reads.load(Ordering::SeqCst)
    }

    /// Chunk-list reads (calls, whatever their batch) so far.
    pub fn blob_lists_read(&self) -> usize {
        self.blob_list_reads.load(Ordering::SeqCst)
    }

    /// PathInfo reads so far.
    pub fn path_infos_read(&self) -> usize {
        self.path_info_reads.load(Ordering::SeqCst)
    }

    /// Directory and closure reads so far.
    pub fn closures_read(&self) -> usize {
        self.closure_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl BlobStore for SlowStore {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.inner.blobs.missing_chunks(digests).await
    }
    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        self.inner.blobs.put_frames_ordered(frames, order).await
    }
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.frame_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.blobs.get_frames(digests).await
    }
    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.frame_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.blobs.get_frames_exact(digests).await
    }
    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        self.inner.blobs.put_blob_chunks(blobs).await
    }
    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        self.blob_list_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.blobs.get_blob_chunks(blobs).await
    }

    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        self.inner.blobs.refuse_chunk_list(blob).await
    }
}

#[async_trait]
impl DirectoryStore for SlowStore {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        self.closure_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.directories.get_directory(digest).await
    }
    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        self.closure_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.directories.get_closure(root).await
    }
    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        self.inner.directories.put_closure(dirs).await
    }
}

#[async_trait]
impl PathInfoStore for SlowStore {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        self.path_info_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.path_infos.get_path_info(digest).await
    }
    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
        self.inner.path_infos.put_path_info(info).await
    }
    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        self.inner.path_infos.list_path_infos()
    }
    async fn list_catalog(
        &self,
    ) -> StoreResult<BoxStream<'static, StoreResult<crate::catalog::CatalogEntry>>> {
        tokio::time::sleep(self.delay).await;
        self.inner.path_infos.list_catalog().await
    }
    async fn get_profile(&self, digest: &[u8; 20]) -> StoreResult<Option<bytes::Bytes>> {
        self.inner.path_infos.get_profile(digest).await
    }
    async fn put_profile(&self, digest: &[u8; 20], profile: bytes::Bytes) -> StoreResult<()> {
        self.inner.path_infos.put_profile(digest, profile).await
    }
}
