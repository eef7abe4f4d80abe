//! What a store holds, for `lazix stats`: paths and their NAR bytes (what
//! a classic binary cache would serve), the unique chunk bytes after
//! deduplication, and the bytes the store really keeps (after
//! compression), with the ratios between them.
//!
//! Counting reads what the store keeps up to date anyway (the catalog of
//! store paths, the pack table caught up from the pack journal), never a
//! PathInfo. But the pack table must be open, which for a store of a
//! million packs is a server's start (about 40 s): so a count is also
//! stored (`counts/<ms>-<random>`, named by when it was counted, JSON; the
//! newest [`KEEP_COUNTS`] kept), by the server every `--stats-every`, by
//! `lazix gc` after it collects and by `lazix stats` when it counted, and
//! `lazix stats` answers from the newest stored count when it is recent
//! enough, in a listing and a read whatever the store's size. A server's
//! count sees packs through the journal: one whose entry was lost (its
//! writer killed in between) is counted after the next full listing (a
//! miss, maintenance, a restart). Every object (directories, chunk lists,
//! PathInfos, marks besides the packs) is counted only by `--scan`, which
//! lists the whole bucket (at 10^5 paths hundreds of thousands of keys)
//! and is never stored: its paths come from PathInfos, its ratio is over
//! every object.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;

use super::keys::{millis, sane_time, time_of, timestamped_at, COUNTS};
use super::{local_folder, open_object_store, BucketStore, SpillPolicy};
use crate::error::{StoreError, StoreResult};
use crate::store::PathInfoStore;

/// Stored counts kept, the newest (older ones are deleted by the writer
/// of a new one).
pub const KEEP_COUNTS: usize = 3;
/// Largest stored count read back: a few hundred bytes of JSON.
const MAX_COUNTS_BYTES: u64 = 64 << 10;

/// A store's size, logical against stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    /// When it was counted (ms since the epoch).
    #[serde(default)]
    pub counted_at_ms: u64,
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

impl StoreStats {
    /// How long ago it was counted.
    pub fn age(&self) -> Duration {
        Duration::from_millis(millis(SystemTime::now()).saturating_sub(self.counted_at_ms))
    }
}

impl BucketStore {
    /// Counts what the store holds: paths and NAR bytes from the catalog of
    /// store paths (a few objects, see [`crate::catalog`]), chunks and
    /// packs from the pack table. No PathInfo is read, nothing listed but
    /// what the catalog and the pack table read.
    pub async fn stats(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats {
            counted_at_ms: millis(SystemTime::now()),
            ..StoreStats::default()
        };
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
        let mut stats = StoreStats {
            counted_at_ms: millis(SystemTime::now()),
            ..StoreStats::default()
        };
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

    /// Chunks and packs counted from the pack table, brought up to date
    /// from the pack journal (what other replicas wrote and deleted
    /// lately; a full listing only when this replica's cursor is stale).
    async fn count_packs(&self, stats: &mut StoreStats) -> StoreResult<()> {
        self.catch_up_packs().await?;
        let scan = {
            let table = self.table.read().expect("pack table");
            (stats.pack_objects, stats.pack_bytes) = table.pack_totals()?;
            table.scan()
        };
        (stats.chunks, stats.chunk_bytes) = scan.chunk_totals()?;
        stats.dedup_ratio = ratio(stats.logical_bytes, stats.pack_bytes);
        Ok(())
    }

    /// Counts (as [`BucketStore::stats`]) and stores the count for `lazix
    /// stats` to answer from; a count that cannot be stored is logged.
    pub async fn count_and_store(&self) -> StoreResult<StoreStats> {
        let counts = self.stats().await?;
        if let Err(e) = self.store_counts(&counts).await {
            tracing::warn!(error = %e, "cannot store the store's counts");
        }
        Ok(counts)
    }

    /// Stores `counts` under the time they were counted (see the module's
    /// doc) and deletes all stored counts but the newest [`KEEP_COUNTS`].
    async fn store_counts(&self, counts: &StoreStats) -> StoreResult<()> {
        let json = serde_json::to_vec(counts)
            .map_err(|e| StoreError::Corrupt(format!("store counts: {e}")))?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(counts.counted_at_ms);
        self.put(&timestamped_at(COUNTS, at), Bytes::from(json))
            .await?;
        self.keep_newest(COUNTS, KEEP_COUNTS).await
    }

    /// The newest stored counts of the store at `location` counted within
    /// `max_age`, read without opening the pack table (one listing of
    /// `counts/` and one read). `None` when there is none that recent, or
    /// the newest does not parse (logged).
    pub async fn stored_counts(
        location: &str,
        max_age: Duration,
    ) -> StoreResult<Option<StoreStats>> {
        let store = Self::unloaded(
            open_object_store(location)?,
            local_folder(location),
            SpillPolicy::default(),
        );
        let Some(newest) = store
            .list_prefix(COUNTS)
            .await?
            .into_iter()
            .filter(|m| sane_time(&m.location))
            .max_by(|a, b| a.location.cmp(&b.location))
        else {
            return Ok(None);
        };
        let too_old = |counted_at_ms: u64| {
            millis(SystemTime::now()).saturating_sub(counted_at_ms) > max_age.as_millis() as u64
        };
        if too_old(time_of(&newest.location).unwrap_or(0)) {
            return Ok(None);
        }
        if newest.size > MAX_COUNTS_BYTES {
            tracing::warn!(at = %newest.location, "stored counts too large; counting anew");
            return Ok(None);
        }
        let Some(json) = store.get_optional(&newest.location).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<StoreStats>(&json) {
            Ok(counts) if too_old(counts.counted_at_ms) => Ok(None),
            // The ratio again from the counts it is made of (a float need
            // not come back from JSON to the same bits).
            Ok(counts) => Ok(Some(StoreStats {
                dedup_ratio: ratio(counts.logical_bytes, counts.pack_bytes),
                ..counts
            })),
            Err(e) => {
                tracing::warn!(at = %newest.location, error = %e, "stored counts do not parse; counting anew");
                Ok(None)
            }
        }
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
        let empty = store.stats().await.unwrap();
        assert!(empty.counted_at_ms > 0, "{empty:?}");
        assert_eq!(
            StoreStats {
                counted_at_ms: 0,
                ..empty
            },
            StoreStats::default()
        );
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
                counted_at_ms: stats.counted_at_ms,
                ..scanned
            },
            stats
        );
    }

    #[tokio::test]
    async fn the_newest_stored_count_is_read_without_opening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            BucketStore::stored_counts(location, hour).await.unwrap(),
            None
        );
        let store = BucketStore::open(location).await.unwrap();
        let mut counts = Vec::new();
        for n in 0..KEEP_COUNTS + 2 {
            store
                .put_frames(vec![frame_of(&[format!("chunk {n}").as_bytes()])])
                .await
                .unwrap();
            let c = store.stats().await.unwrap();
            assert_eq!(c.chunks, n as u64 + 1);
            store.store_counts(&c).await.unwrap();
            counts.push(c);
        }
        // The newest is answered, as it was counted; older ones beyond
        // KEEP_COUNTS are deleted by the writer of a newer one.
        let newest = counts.last().unwrap();
        assert_eq!(
            BucketStore::stored_counts(location, hour).await.unwrap(),
            Some(*newest)
        );
        assert!(newest.counted_at_ms > 0);
        assert_eq!(store.list_prefix(COUNTS).await.unwrap().len(), KEEP_COUNTS);
        // Too old for the caller: none.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            BucketStore::stored_counts(location, Duration::ZERO)
                .await
                .unwrap(),
            None
        );
        // A newest count that does not parse is no answer (counted anew).
        let damaged = super::super::keys::timestamped(COUNTS);
        store
            .put(&damaged, Bytes::from_static(b"{\"paths\": \"many\"}"))
            .await
            .unwrap();
        assert_eq!(
            BucketStore::stored_counts(location, hour).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_oversized_stored_count_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let store = BucketStore::open(location).await.unwrap();
        let counts = store.count_and_store().await.unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            BucketStore::stored_counts(location, hour).await.unwrap(),
            Some(counts)
        );
        // Valid JSON padded past the bound: not read (no allocation of
        // its size), counted anew instead.
        let mut padded = serde_json::to_vec(&counts).unwrap();
        padded.extend(std::iter::repeat_n(b' ', MAX_COUNTS_BYTES as usize + 1));
        std::thread::sleep(Duration::from_millis(2));
        store
            .put(
                &super::super::keys::timestamped(COUNTS),
                Bytes::from(padded),
            )
            .await
            .unwrap();
        assert_eq!(
            BucketStore::stored_counts(location, hour).await.unwrap(),
            None
        );
    }
}
