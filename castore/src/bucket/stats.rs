//! What a store holds, for `lazix stats`: paths and their NAR bytes (what
//! a classic binary cache would serve), the unique chunk bytes after
//! deduplication, and the bytes the store really keeps (after
//! compression), with the ratios between them.
//!
//! Everything but the count of every object comes from what the store
//! keeps up to date anyway (the catalog of store paths, the pack table),
//! so counting costs a few object reads whatever the store's size. Every
//! object (directories, chunk lists, PathInfos, marks besides the packs)
//! is counted only by `--scan`, which lists the whole bucket: at 10^5
//! paths that is hundreds of thousands of keys.

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
    /// Packs and their indexes: the objects that hold the chunks.
    pub pack_objects: u64,
    /// Their bytes: most of what the store costs.
    pub pack_bytes: u64,
    /// Every object in the store (packs, indexes, chunk lists,
    /// directories, PathInfos and marks): counted by a scan only.
    pub objects: Option<u64>,
    /// Their bytes: what the store costs (a scan only).
    pub stored_bytes: Option<u64>,
    /// Logical bytes per stored byte (deduplication and compression): over
    /// every object's bytes after a scan, else over the packs' bytes.
    pub dedup_ratio: f64,
}

impl BucketStore {
    /// Counts what the store holds: paths and NAR bytes from the catalog of
    /// store paths (a few objects, see [`crate::catalog`]), chunks and
    /// packs from the pack table. No PathInfo is read, nothing listed but
    /// what the catalog and the pack table read.
    pub async fn stats(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        let mut entries = self.catalog_listing().await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            stats.paths += 1;
            stats.logical_bytes += entry.nar_size;
        }
        self.count_packs(&mut stats).await?;
        Ok(stats)
    }

    /// Counts as [`BucketStore::stats`] does, reading every PathInfo
    /// instead of the catalog and listing every object (`lazix stats
    /// --scan`).
    pub async fn stats_scan(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        let mut infos = self.list_path_infos();
        while let Some(info) = infos.next().await {
            stats.paths += 1;
            stats.logical_bytes += info?.nar_size;
        }
        self.count_packs(&mut stats).await?;
        let (mut objects, mut bytes) = (0, 0);
        for meta in self.list_prefix("").await? {
            objects += 1;
            bytes += meta.size;
        }
        (stats.objects, stats.stored_bytes) = (Some(objects), Some(bytes));
        stats.dedup_ratio = ratio(stats.logical_bytes, bytes);
        Ok(stats)
    }

    /// Chunks and packs counted from the pack table (brought up to date).
    async fn count_packs(&self, stats: &mut StoreStats) -> StoreResult<()> {
        self.refresh().await?;
        let scan = {
            let table = self.table.read().expect("pack table");
            (stats.pack_objects, stats.pack_bytes) = table.pack_totals();
            table.scan()
        };
        (stats.chunks, stats.chunk_bytes) = scan.chunk_totals()?;
        stats.dedup_ratio = ratio(stats.logical_bytes, stats.pack_bytes);
        Ok(())
    }
}

/// `logical / stored`, 0 for an empty store.
fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        logical as f64 / stored as f64
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::PACKS;
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
        assert_eq!(stats.paths, 0);
        assert_eq!((stats.objects, stats.stored_bytes), (None, None));
        // The packs' count and bytes, kept in the table, are those a
        // listing finds.
        let listed = store.list_prefix(PACKS).await.unwrap();
        assert!(stats.pack_objects >= 2, "{stats:?}");
        assert_eq!(stats.pack_objects, listed.len() as u64);
        assert_eq!(stats.pack_bytes, listed.iter().map(|m| m.size).sum::<u64>());
        let scanned = store.stats_scan().await.unwrap();
        assert!(
            scanned.objects.unwrap() >= stats.pack_objects,
            "{scanned:?}"
        );
        assert!(
            scanned.stored_bytes.unwrap() >= stats.pack_bytes,
            "{scanned:?}"
        );
        assert_eq!(
            StoreStats {
                objects: None,
                stored_bytes: None,
                dedup_ratio: 0.0,
                ..scanned
            },
            stats
        );
    }
}
