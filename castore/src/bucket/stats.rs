//! What a store holds, for `lazix stats`: paths and their NAR bytes (what
//! a classic binary cache would serve), the unique chunk bytes after
//! deduplication, and the bytes the store really keeps (after
//! compression), with the ratios between them.

use futures::StreamExt;

use super::BucketStore;
use crate::error::StoreResult;
use crate::store::PathInfoStore;

/// A store's size, logical against stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    /// Store paths (PathInfos).
    pub paths: u64,
    /// Sum of the paths' NAR sizes: the logical bytes.
    pub logical_bytes: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Their raw bytes: the logical bytes after deduplication.
    pub chunk_bytes: u64,
    /// Objects in the store (packs, indexes, chunk lists, directories,
    /// PathInfos and marks).
    pub objects: u64,
    /// Their bytes: what the store costs.
    pub stored_bytes: u64,
    /// Logical bytes per stored byte (deduplication and compression).
    pub dedup_ratio: f64,
}

impl BucketStore {
    /// Counts what the store holds: paths and NAR bytes from the catalog of
    /// store paths (a few objects, see [`crate::catalog`]), chunks from the
    /// pack table, objects from one listing. No PathInfo is read.
    pub async fn stats(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        for entry in self.catalog_entries().await? {
            stats.paths += 1;
            stats.logical_bytes += entry.nar_size;
        }
        self.count_objects(stats).await
    }

    /// Counts as [`BucketStore::stats`] does, reading every PathInfo
    /// instead of the catalog (`lazix stats --scan`).
    pub async fn stats_scan(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        let mut infos = self.list_path_infos();
        while let Some(info) = infos.next().await {
            stats.paths += 1;
            stats.logical_bytes += info?.nar_size;
        }
        self.count_objects(stats).await
    }

    /// `stats` with chunks and objects counted.
    async fn count_objects(&self, mut stats: StoreStats) -> StoreResult<StoreStats> {
        self.refresh().await?;
        (stats.chunks, stats.chunk_bytes) = self.table.read().expect("pack table").chunk_totals();
        for meta in self.list_prefix("").await? {
            stats.objects += 1;
            stats.stored_bytes += meta.size;
        }
        if stats.stored_bytes > 0 {
            stats.dedup_ratio = stats.logical_bytes as f64 / stats.stored_bytes as f64;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlobStore;
    use crate::testutil::frame_of;

    #[tokio::test]
    async fn counts_distinct_chunks_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(store.stats().await.unwrap(), StoreStats::default());
        store
            .put_frames(vec![frame_of(&[b"chunk a", b"chunk bb"])])
            .await
            .unwrap();
        // The same chunk again in another frame is not counted twice.
        store
            .put_frames(vec![frame_of(&[b"chunk a", b"chunk ccc"])])
            .await
            .unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.chunks, stats.chunk_bytes), (3, 7 + 8 + 9));
        assert!(stats.objects >= 2 && stats.stored_bytes > 0, "{stats:?}");
        assert_eq!(stats.paths, 0);
        assert_eq!(store.stats_scan().await.unwrap(), stats);
    }
}
