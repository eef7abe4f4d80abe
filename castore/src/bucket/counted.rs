//! Every request the bucket makes of its object store, counted by kind:
//! how a store's costs grow with its size is measured in object reads and
//! listings (`bench/scale.sh`, the `lazix_store_object_…` metrics), which
//! on S3 are what requests cost and how long they take.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Requests made so far, by kind.
#[derive(Debug, Default)]
pub(super) struct Counters {
    gets: AtomicU64,
    heads: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
    listed: AtomicU64,
}

/// A reading of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRequests {
    /// Object reads (whole or ranges).
    pub gets: u64,
    /// Metadata reads.
    pub heads: u64,
    /// Object writes (whole or multipart).
    pub puts: u64,
    /// Deletes.
    pub deletes: u64,
    /// Listings started (each may take several pages on S3).
    pub lists: u64,
    /// Objects those listings returned (S3 pages hold 1,000).
    pub listed: u64,
}

impl ObjectRequests {
    /// The requests made since `earlier` was read.
    pub fn since(&self, earlier: &ObjectRequests) -> ObjectRequests {
        ObjectRequests {
            gets: self.gets - earlier.gets,
            heads: self.heads - earlier.heads,
            puts: self.puts - earlier.puts,
            deletes: self.deletes - earlier.deletes,
            lists: self.lists - earlier.lists,
            listed: self.listed - earlier.listed,
        }
    }
}

impl fmt::Display for ObjectRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} gets, {} heads, {} lists ({} objects listed), {} puts, {} deletes",
            self.gets, self.heads, self.lists, self.listed, self.puts, self.deletes
        )
    }
}

impl Counters {
    pub(super) fn read(&self) -> ObjectRequests {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ObjectRequests {
            gets: g(&self.gets),
            heads: g(&self.heads),
            puts: g(&self.puts),
            deletes: g(&self.deletes),
            lists: g(&self.lists),
            listed: g(&self.listed),
        }
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// `inner`, counting into `counters`.
pub(super) struct Counted {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) counters: Arc<Counters>,
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counted({:?})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        add(&self.counters.puts);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        add(&self.counters.puts);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        add(if options.head {
            &self.counters.heads
        } else {
            &self.counters.gets
        });
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        add(&self.counters.gets);
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        add(&self.counters.gets);
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        add(&self.counters.heads);
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        add(&self.counters.deletes);
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        add(&self.counters.lists);
        let counters = self.counters.clone();
        self.inner
            .list(prefix)
            .inspect(move |_| add(&counters.listed))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        add(&self.counters.lists);
        let counters = self.counters.clone();
        self.inner
            .list_with_offset(prefix, offset)
            .inspect(move |_| add(&counters.listed))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        add(&self.counters.lists);
        let listed = self.inner.list_with_delimiter(prefix).await?;
        self.counters
            .listed
            .fetch_add(listed.objects.len() as u64, Ordering::Relaxed);
        Ok(listed)
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        add(&self.counters.puts);
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        add(&self.counters.puts);
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        add(&self.counters.puts);
        self.inner.rename(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        add(&self.counters.puts);
        self.inner.rename_if_not_exists(from, to).await
    }

    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, Result<Path>>,
    ) -> BoxStream<'a, Result<Path>> {
        let counters = &self.counters;
        self.inner
            .delete_stream(locations.inspect(move |_| add(&counters.deletes)).boxed())
    }
}
