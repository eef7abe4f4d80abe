//! `lazix proxy`: a binary cache on this machine for the local Nix, in
//! front of an upstream lazix server reached over gRPC. A machine with
//! stock Nix and no mount gets lazix's dedup on the wire: an upgrade
//! fetches only the frames it lacks, while Nix still receives ordinary
//! NARs and checks them against the upstream's signatures and NarHash.
//!
//! It is the HTTP shim ([`crate::http`]) over a store made of:
//! - PathInfos from upstream (briefly cached); when upstream fails or does
//!   not answer within the timeout, a narinfo is "not here" (404), which
//!   Nix takes as a reason to try its next substituter;
//! - directories from upstream, cached in memory; chunk lists too, and
//!   kept on disk beside the frames
//!   ([`lazix_castore::store::disk_chunk_lists`]);
//! - frames from the disk cache the mount uses (same folder, same format,
//!   [`lazix_castore::store::disk_frames`]): only missing frames are
//!   fetched, in the renderer's batched calls (8 MiB windows, 8 at once,
//!   [`lazix_castore::render::Windows::OVER_A_LINK`]), and verified before
//!   kept; their chunks go straight to
//! - the decoded chunks the renderer reads (`--decoded-cache-mib`, least
//!   recently used first), so a fetched frame is decoded once; frames are
//!   then not cached in memory (the disk and the page cache hold them),
//!   unless the decoded cache is off.
//!
//! Every upstream call is bounded by the timeout: a NAR whose frames stop
//! arriving ends as a broken response, never as a short NAR that looks
//! complete (the shim sends Content-Length). Uploads are refused (no
//! upload token).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::directory::Directory;
use lazix_castore::disk::{DiskCache, DiskChunkLists};
use lazix_castore::frame::Frame;
use lazix_castore::store::{
    cached, decoded_chunks_sharing, disk_chunk_lists, disk_frames, BlobChunks, BlobStore,
    CacheConfig, DecodedChunkCache, DirectoryStore, DiskCounters, PathInfoStore,
};
use lazix_castore::trust::ChunkListsDigest;
use lazix_castore::{B3Digest, PathInfo, Store, StoreError, StoreResult};

/// The store the proxy serves from, and its counters.
pub struct ProxyStore {
    /// What the shim renders from.
    pub store: Store,
    /// Frames fetched upstream and answered from disk.
    pub counters: Arc<DiskCounters>,
    /// The disk cache, for how full it is.
    disk: DiskCache,
}

impl ProxyStore {
    /// `upstream` (the gRPC client) behind the disk cache `disk` (frames)
    /// and `lists` (chunk lists) and the memory caches (`decoded_bytes` of
    /// decoded chunks for rendering; none when 0), each upstream call
    /// bounded by `timeout`.
    pub fn new(
        upstream: Store,
        disk: DiskCache,
        lists: DiskChunkLists,
        timeout: Duration,
        decoded_bytes: u64,
    ) -> Self {
        let counters = Arc::new(DiskCounters::default());
        let bounded = Arc::new(Bounded {
            inner: upstream,
            timeout,
        });
        // Frames fetched are decoded and verified once, by the disk layer
        // before it keeps them; their chunks go straight to the decoded
        // cache the renderer reads, so neither a frame cache in memory
        // (the disk and the page cache hold frames) nor a second decoding
        // is needed.
        let decoded = (decoded_bytes > 0).then(|| DecodedChunkCache::streaming(decoded_bytes));
        let store = Store {
            blobs: disk_chunk_lists(
                disk_frames(
                    bounded.clone(),
                    disk.clone(),
                    counters.clone(),
                    decoded.clone(),
                ),
                lists,
            ),
            directories: bounded.clone(),
            path_infos: Arc::new(NotHereWhenDown(bounded)),
        };
        let config = match decoded {
            Some(_) => CacheConfig {
                chunk_bytes: 0,
                ..CacheConfig::default()
            },
            None => CacheConfig::default(),
        };
        let mut store = cached(store, config);
        if let Some(cache) = decoded {
            store.blobs = decoded_chunks_sharing(store.blobs, cache);
        }
        Self {
            store,
            counters,
            disk,
        }
    }

    /// The counters as metrics (`lazix_proxy_…`): bytes and frames
    /// fetched upstream, frames answered from the disk cache.
    pub fn metrics(&self) -> crate::metrics::Counters {
        use crate::metrics::{Kind, Reading};
        let c = self.counters.clone();
        let disk = self.disk.clone();
        crate::metrics::Counters::new(move || {
            let r = |name, help, value: &std::sync::atomic::AtomicU64| Reading {
                name,
                help,
                kind: Kind::Counter,
                value: value.load(Ordering::Relaxed) as f64,
            };
            let usage = disk.usage();
            let g = |name, help, kind, value: u64| Reading {
                name,
                help,
                kind,
                value: value as f64,
            };
            vec![
                g(
                    "proxy_disk_cache_bytes",
                    "Bytes of frames in the disk cache",
                    Kind::Gauge,
                    usage.bytes,
                ),
                g(
                    "proxy_disk_cache_frames",
                    "Frame files in the disk cache",
                    Kind::Gauge,
                    usage.frames,
                ),
                g(
                    "proxy_disk_cache_evictions",
                    "Frames this proxy evicted from the disk cache to stay within its quota",
                    Kind::Counter,
                    usage.evictions,
                ),
                g(
                    "proxy_pinned_bytes",
                    "Bytes of pinned frames in the disk cache (outside its quota)",
                    Kind::Gauge,
                    usage.pinned_bytes,
                ),
                r(
                    "proxy_upstream_bytes",
                    "Frame bytes fetched from the upstream server",
                    &c.fetched_bytes,
                ),
                r(
                    "proxy_upstream_frames",
                    "Frames fetched from the upstream server",
                    &c.fetched_frames,
                ),
                r(
                    "proxy_disk_frames",
                    "Frames answered from the disk cache",
                    &c.disk_frames,
                ),
            ]
        })
    }

    /// The counters as `/lazix-stats` serves them.
    pub fn stats(&self) -> crate::http::StatsFn {
        let c = self.counters.clone();
        let disk = self.disk.clone();
        Arc::new(move || {
            serde_json::json!({
                "upstream_bytes": c.fetched_bytes.load(Ordering::Relaxed),
                "upstream_frames": c.fetched_frames.load(Ordering::Relaxed),
                "disk_frames": c.disk_frames.load(Ordering::Relaxed),
                "disk_cache": disk.usage(),
            })
        })
    }
}

/// Upstream with every call bounded by a timeout.
struct Bounded {
    inner: Store,
    timeout: Duration,
}

impl Bounded {
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "upstream did not answer within {:?}",
                    self.timeout
                )))
            })
    }
}

// `own_chunk_list_digests` stays `None`: the upstream is not a store this
// proxy wrote, whatever it answers.
#[async_trait]
impl BlobStore for Bounded {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        self.within(self.inner.blobs.missing_chunks(digests)).await
    }
    async fn put_frames_ordered(&self, _: Vec<Frame>, _: u64) -> StoreResult<()> {
        Err(refused())
    }
    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.within(self.inner.blobs.get_frames(digests)).await
    }
    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.within(self.inner.blobs.get_frames_exact(digests))
            .await
    }
    async fn put_blob_chunks(&self, _: Vec<BlobChunks>) -> StoreResult<()> {
        Err(refused())
    }
    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        self.within(self.inner.blobs.get_blob_chunks(blobs)).await
    }
    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        self.within(self.inner.blobs.chunk_list_digests(root)).await
    }

    async fn refuse_chunk_list(&self, blob: &B3Digest) {
        self.inner.blobs.refuse_chunk_list(blob).await
    }
}

#[async_trait]
impl DirectoryStore for Bounded {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        self.within(self.inner.directories.get_directory(digest))
            .await
    }
    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        self.within(self.inner.directories.get_closure(root)).await
    }
    async fn put_closure(&self, _: Vec<Directory>) -> StoreResult<B3Digest> {
        Err(refused())
    }
}

/// PathInfos from upstream; a failure or timeout is "not here".
struct NotHereWhenDown(Arc<Bounded>);

#[async_trait]
impl PathInfoStore for NotHereWhenDown {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        match self
            .0
            .within(self.0.inner.path_infos.get_path_info(digest))
            .await
        {
            Ok(info) => Ok(info),
            Err(e) => {
                tracing::warn!(error = %e, "upstream unavailable: answering \"not here\"");
                Ok(None)
            }
        }
    }
    async fn put_path_info(&self, _: PathInfo) -> StoreResult<()> {
        Err(refused())
    }
    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        self.0.inner.path_infos.list_path_infos()
    }
    async fn list_catalog(
        &self,
    ) -> StoreResult<BoxStream<'static, StoreResult<lazix_castore::catalog::CatalogEntry>>> {
        self.0.inner.path_infos.list_catalog().await
    }
}

fn refused() -> StoreError {
    StoreError::Invalid("the local proxy takes no uploads".into())
}
