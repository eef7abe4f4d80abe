//! Chunk-list manifests: per root directory, the digest of each
//! multi-chunk file's chunk list below it ([`ChunkListsDigest`]), kept as
//! one object so that a verifying reader checks a path's root signature
//! with one small read instead of one read per file (thousands of objects
//! for a toolchain, each a disk seek on a cold server).
//!
//! Written when a PathInfo is stored (its lists are all stored by then);
//! asked for a root without one (a path stored before manifests existed),
//! the manifest is computed from the lists and answered, not kept (lists
//! of an upload still under way would make a wrong one permanent).
//! Collected with the directories: a manifest lives while its root does.
//! Readers check a manifest against a root signature, so a damaged one
//! hides its path rather than admitting bytes; only this store's own
//! renderer believes the one it wrote ([`crate::read::proved`]).

use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};
use crate::node::Node;
use crate::read::trusted::manifest_below;
use crate::trust::ChunkListsDigest;

use super::keys::{sharded, MANIFESTS};
use super::BucketStore;

impl BucketStore {
    /// [`crate::store::BlobStore::chunk_list_digests`].
    pub(super) async fn manifest(&self, root: &B3Digest) -> StoreResult<ChunkListsDigest> {
        if let Some(bytes) = self.get_optional(&sharded(MANIFESTS, root)).await? {
            return ChunkListsDigest::from_records(&bytes);
        }
        self.compute_manifest(root).await
    }

    /// [`crate::store::BlobStore::own_chunk_list_digests`]: the manifest
    /// [`Self::keep_manifest`] wrote for `root`, never computed here. A
    /// damaged one is none (its files are then hashed when streamed).
    pub(super) async fn stored_manifest(
        &self,
        root: &B3Digest,
    ) -> StoreResult<Option<ChunkListsDigest>> {
        let Some(bytes) = self.get_optional(&sharded(MANIFESTS, root)).await? else {
            return Ok(None);
        };
        match ChunkListsDigest::from_records(&bytes) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(e) => {
                tracing::warn!(%root, error = %e, "damaged chunk-list manifest");
                Ok(None)
            }
        }
    }

    /// Stores the manifest of `root` unless it is stored already.
    pub(super) async fn keep_manifest(&self, root: &B3Digest) -> StoreResult<()> {
        let path = sharded(MANIFESTS, root);
        if self.exists(&path).await? {
            return Ok(());
        }
        let manifest = self.compute_manifest(root).await?;
        self.put(&path, manifest.to_records().into()).await
    }

    async fn compute_manifest(&self, root: &B3Digest) -> StoreResult<ChunkListsDigest> {
        let closure = self.closure(root).await?;
        let Some(top) = closure.first() else {
            return Err(StoreError::NotFound(format!("directory {root}")));
        };
        let node = Node::Directory {
            digest: *root,
            size: top.size(),
        };
        manifest_below(self, &node, &closure).await
    }
}
