//! Deterministic test data shared by the test suites of every crate.

/// Pseudo-random bytes (xorshift): incompressible like binaries, the same
/// for the same seed, so tests can rebuild identical or altered trees.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What `gzip -9n` makes of `contents` (zlib at level 9 deflates the same
/// way for inputs like these): a gzip member compaction can store as its
/// contents.
pub fn gzip9(contents: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
    let mut c = Compress::new(Compression::new(9), false);
    let mut body = Vec::with_capacity(contents.len() + 64);
    c.compress_vec(contents, &mut body, FlushCompress::Finish)
        .expect("deflate");
    out.extend_from_slice(&body);
    let mut crc = Crc::new();
    crc.update(contents);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    out
}

/// Text that deflates about as well as a man page.
pub fn wordy_text(words: usize) -> Vec<u8> {
    let mut x = 7u64;
    (0..words)
        .flat_map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("word{} ", x >> 52).into_bytes()
        })
        .collect()
}

/// One frame holding chunks with the given bytes, in order.
pub fn frame_of(chunks: &[&[u8]]) -> crate::frame::Frame {
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| {
            (
                crate::chunk::ChunkMeta {
                    digest: crate::B3Digest::of(c),
                    size: c.len() as u64,
                },
                bytes::Bytes::copy_from_slice(c),
            )
        })
        .collect();
    crate::frame::Frame::compress(&chunks).expect("compress")
}

/// A real store made slow (each read waits `delay`), counting the reads
/// that reach it: for tests that check concurrent readers share one read.
pub struct SlowStore {
    inner: std::sync::Arc<crate::bucket::BucketStore>,
    frame_reads: std::sync::atomic::AtomicUsize,
    path_info_reads: std::sync::atomic::AtomicUsize,
    blob_list_reads: std::sync::atomic::AtomicUsize,
    delay: std::time::Duration,
}

impl SlowStore {
    /// Wraps `inner`; every frame or PathInfo read waits `delay`.
    pub fn new(
        inner: std::sync::Arc<crate::bucket::BucketStore>,
        delay: std::time::Duration,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            inner,
            frame_reads: Default::default(),
            path_info_reads: Default::default(),
            blob_list_reads: Default::default(),
            delay,
        })
    }

    /// Frame reads so far.
    pub fn frames_read(&self) -> usize {
        self.frame_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Chunk-list reads (calls, whatever their batch) so far.
    pub fn blob_lists_read(&self) -> usize {
        self.blob_list_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// PathInfo reads so far.
    pub fn path_infos_read(&self) -> usize {
        self.path_info_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

mod slow_store {
    use async_trait::async_trait;
    use futures::stream::BoxStream;
    use std::sync::atomic::Ordering;

    use super::SlowStore;
    use crate::chunk::ChunkMeta;
    use crate::error::StoreResult;
    use crate::frame::Frame;
    use crate::pathinfo::PathInfo;
    use crate::services::{BlobChunks, BlobStore, PathInfoStore};
    use crate::B3Digest;

    #[async_trait]
    impl BlobStore for SlowStore {
        async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
            self.inner.missing_chunks(digests).await
        }
        async fn put_frames(&self, frames: Vec<Frame>) -> StoreResult<()> {
            self.inner.put_frames(frames).await
        }
        async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
            self.frame_reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.get_frames(digests).await
        }
        async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
            self.inner.put_blob_chunks(blobs).await
        }
        async fn get_blob_chunks(
            &self,
            blobs: &[B3Digest],
        ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
            self.blob_list_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get_blob_chunks(blobs).await
        }
    }

    #[async_trait]
    impl PathInfoStore for SlowStore {
        async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
            self.path_info_reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.get_path_info(digest).await
        }
        async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
            self.inner.put_path_info(info).await
        }
        fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
            self.inner.list_path_infos()
        }
    }
}
