//! Object I/O for the bucket: whole objects read, written (durably where
//! later objects point at them), listed and deleted, with object_store's
//! errors turned into the store's.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;

use super::keys::sane_time;
use super::{durable, BucketStore};
use crate::error::{StoreError, StoreResult};

/// object_store's error as the store's.
pub(super) fn object_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound(e.to_string()),
        e => StoreError::Io(std::io::Error::other(e)),
    }
}

impl BucketStore {
    /// Every object under `prefix`, with its size and time.
    pub(super) async fn list_prefix(
        &self,
        prefix: &str,
    ) -> StoreResult<Vec<object_store::ObjectMeta>> {
        self.objects
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(object_err)
    }

    /// Every object under `prefix` whose key sorts after `offset`.
    pub(super) async fn list_prefix_after(
        &self,
        prefix: &str,
        offset: &ObjectPath,
    ) -> StoreResult<Vec<object_store::ObjectMeta>> {
        self.objects
            .list_with_offset(Some(&ObjectPath::from(prefix)), offset)
            .try_collect()
            .await
            .map_err(object_err)
    }

    /// Deletes the objects under `prefix` (named `<ms>-<random>`, see
    /// [`super::keys::timestamped`]) but the newest `keep`, and any named in
    /// the future beyond the clock skew (it would stay "newest" for ever).
    pub(super) async fn keep_newest(&self, prefix: &str, keep: usize) -> StoreResult<()> {
        let (mut sane, future): (Vec<ObjectPath>, Vec<ObjectPath>) = self
            .list_prefix(prefix)
            .await?
            .into_iter()
            .map(|m| m.location)
            .partition(sane_time);
        sane.sort_unstable_by(|a, b| b.cmp(a));
        let mut gone: Vec<ObjectPath> = sane.into_iter().skip(keep).collect();
        gone.extend(future);
        if gone.is_empty() {
            return Ok(());
        }
        self.delete_objects(gone).await
    }

    /// Deletes an object; one already gone is fine.
    pub(super) async fn delete_object(&self, path: &ObjectPath) -> StoreResult<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(object_err(e)),
        }
    }

    /// Deletes objects, many per request where the object store can (S3's
    /// multi-object delete); those already gone are fine.
    pub(super) async fn delete_objects(&self, paths: Vec<ObjectPath>) -> StoreResult<()> {
        let mut deleted = self
            .objects
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(object_err(e)),
            }
        }
        Ok(())
    }

    /// An object's bytes, or `None` if absent.
    pub(super) async fn get_optional(&self, path: &ObjectPath) -> StoreResult<Option<Bytes>> {
        match self.objects.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(object_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(object_err(e)),
        }
    }

    /// Whether an object exists.
    pub(super) async fn exists(&self, path: &ObjectPath) -> StoreResult<bool> {
        match self.objects.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(object_err(e)),
        }
    }

    /// Writes an object whole.
    pub(super) async fn put(&self, path: &ObjectPath, data: Bytes) -> StoreResult<()> {
        self.objects
            .put(path, PutPayload::from(data))
            .await
            .map_err(object_err)?;
        Ok(())
    }

    /// Writes an object that later objects will point at (a pack before
    /// its index, an index before PathInfos need its chunks) and, in a
    /// local folder, makes it durable before returning: S3 acknowledges
    /// only durable writes, object_store's local backend never syncs.
    pub(super) async fn put_durable(&self, path: &ObjectPath, data: Bytes) -> StoreResult<()> {
        self.put(path, data).await?;
        let name = path.to_string();
        self.on_local_folder(move |root| durable::sync_file_and_folder(&root.join(name)))
            .await?;
        Ok(())
    }

    /// In a local folder, makes everything written so far durable (one
    /// `syncfs`): what a PathInfo written next refers to (directories,
    /// chunk lists, packs) then survives a power cut whenever it does.
    pub(super) async fn sync_written(&self) -> StoreResult<()> {
        self.on_local_folder(durable::sync_filesystem).await?;
        Ok(())
    }

    /// Runs file-system work on the folder of a local store, on a blocking
    /// thread; `None` (nothing run) for a bucket.
    pub(super) async fn on_local_folder<T: Send + 'static>(
        &self,
        work: impl FnOnce(&std::path::Path) -> std::io::Result<T> + Send + 'static,
    ) -> StoreResult<Option<T>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(None);
        };
        let out = tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(Some(out))
    }
}
