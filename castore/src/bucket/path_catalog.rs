//! The catalog of store paths in the bucket (format and rules:
//! [`crate::catalog`]): segments written as paths are stored and deleted,
//! changes made at once by several tasks sharing one segment; listings
//! read the newest snapshot plus the segments it lacks, fold many loose
//! segments into a new snapshot, and rebuild the catalog from the
//! PathInfos when no snapshot reads. GC stores a snapshot from its walk.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt, TryStreamExt};
use lazix_proto::ext as lpb;
use object_store::ObjectMeta;
use tokio::sync::oneshot;

use super::keys::{timestamped, CATALOG_SEGMENTS, CATALOG_SNAPSHOTS};
use super::{BucketStore, CONCURRENCY};
use crate::catalog::{segment, Catalog, CatalogEntry};
use crate::error::{StoreError, StoreResult};
use crate::store::PathInfoStore;

/// Loose segments a listing reads before it folds them into a snapshot.
const FOLD_AT: usize = 64;

/// Segments a writer stores between two folds of its own (through a
/// listing), so a server that takes many pushes and serves no listing
/// leaves few loose segments for the next one.
const FOLD_EVERY: u64 = 256;

/// How long a snapshot stays newest before the segments it includes and
/// the snapshots before it are deleted: a listing that picked an older
/// snapshot has finished by then.
const FOLD_GRACE: Duration = Duration::from_secs(600);

type Waiter = oneshot::Sender<StoreResult<()>>;

/// Catalog changes waiting for the next segment, and the turn to write
/// one.
#[derive(Default)]
pub(super) struct CatalogWriter {
    pending: Mutex<Vec<(Vec<lpb::CatalogRecord>, Waiter)>>,
    writing: tokio::sync::Mutex<()>,
    /// Segments stored by this writer since it last folded.
    since_fold: std::sync::atomic::AtomicU64,
}

impl BucketStore {
    /// Stores `records` in a catalog segment; returns once one holding
    /// them is written (durable once the caller syncs, see
    /// [`BucketStore::sync_written`]). Tasks recording at once share a
    /// segment.
    pub(super) async fn record_in_catalog(
        &self,
        records: Vec<lpb::CatalogRecord>,
    ) -> StoreResult<()> {
        let (done, written) = oneshot::channel();
        self.catalog_writer
            .pending
            .lock()
            .expect("catalog changes")
            .push((records, done));
        let mut fold = false;
        {
            let _turn = self.catalog_writer.writing.lock().await;
            let batch =
                std::mem::take(&mut *self.catalog_writer.pending.lock().expect("catalog changes"));
            if !batch.is_empty() {
                let (records, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let stored = segment(records.into_iter().flatten().collect());
                // Not synced here: a PathInfo written after it syncs first
                // (a removal's segment may be lost in a crash; GC's
                // snapshot puts that right).
                let result = self.put(&timestamped(CATALOG_SEGMENTS), stored).await;
                let since_fold = &self.catalog_writer.since_fold;
                if result.is_ok()
                    && since_fold.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                        >= FOLD_EVERY
                {
                    since_fold.store(0, std::sync::atomic::Ordering::Relaxed);
                    fold = true;
                }
                for w in waiters {
                    let _ = w.send(result.as_ref().map(|_| ()).map_err(StoreError::duplicate));
                }
            }
        }
        let written = written
            .await
            .map_err(|_| StoreError::Unavailable("catalog writer stopped".into()))?;
        if fold {
            // A listing folds what is loose; its answer is not needed.
            if let Err(e) = self.catalog_entries().await {
                tracing::warn!(error = %e, "cannot fold the catalog's segments");
            }
        }
        written
    }

    /// Every stored path's entry, sorted by name, from the catalog.
    pub(super) async fn catalog_entries(&self) -> StoreResult<Vec<CatalogEntry>> {
        let snapshots = self.list_prefix(CATALOG_SNAPSHOTS).await?;
        let Some(newest) = snapshots.iter().max_by(|a, b| a.location.cmp(&b.location)) else {
            return self.rebuild_catalog("no snapshot").await;
        };
        let Some(stored) = self.get_optional(&newest.location).await? else {
            return self.rebuild_catalog("the newest snapshot vanished").await;
        };
        let (mut catalog, folded) = match Catalog::from_snapshot(&stored) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(snapshot = %newest.location, error = %e, "catalog snapshot unreadable");
                return self
                    .rebuild_catalog("the newest snapshot is unreadable")
                    .await;
            }
        };
        let mut segments = self.list_prefix(CATALOG_SEGMENTS).await?;
        segments.sort_by(|a, b| a.location.cmp(&b.location));
        let listed: Vec<String> = segments.iter().map(|m| m.location.to_string()).collect();
        let loose: Vec<ObjectMeta> = segments
            .into_iter()
            .filter(|m| !folded.contains(m.location.as_ref()))
            .collect();
        let loose: Vec<String> = loose.iter().map(|m| m.location.to_string()).collect();
        self.apply_segments(&mut catalog, &loose).await?;
        if loose.len() >= FOLD_AT {
            tracing::info!(
                segments = loose.len(),
                paths = catalog.len(),
                "folding catalog segments into a snapshot"
            );
            if let Err(e) = self.store_catalog_snapshot(&catalog, listed).await {
                tracing::warn!(error = %e, "cannot store a catalog snapshot");
            }
        }
        Ok(catalog.into_sorted())
    }

    /// Applies the segments `names` (in name order) to `catalog`; one
    /// gone meanwhile (folded and deleted) or unreadable is skipped.
    async fn apply_segments(&self, catalog: &mut Catalog, names: &[String]) -> StoreResult<()> {
        let mut names = names.to_vec();
        names.sort();
        let read: Vec<Option<bytes::Bytes>> = stream::iter(names.clone())
            .map(|name| async move { self.get_optional(&name.as_str().into()).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        for (name, stored) in names.iter().zip(read) {
            let Some(stored) = stored else { continue };
            if let Err(e) = catalog.apply(&stored) {
                tracing::warn!(segment = %name, error = %e, "catalog segment skipped");
            }
        }
        Ok(())
    }

    /// The catalog from a walk of every PathInfo that started after the
    /// segments `folded` were listed, those segments applied on top: a
    /// path whose segment was stored but whose PathInfo was not yet when
    /// the walk passed is kept, and a removal recorded in them still
    /// counts.
    pub(super) async fn catalog_from_walk(
        &self,
        walked: Vec<CatalogEntry>,
        folded: &[String],
    ) -> StoreResult<Catalog> {
        let mut catalog = Catalog::from_entries(walked);
        self.apply_segments(&mut catalog, folded).await?;
        Ok(catalog)
    }

    /// The catalog made anew from every PathInfo (a lost or damaged
    /// catalog, a store from before catalogs), stored as a snapshot.
    async fn rebuild_catalog(&self, why: &str) -> StoreResult<Vec<CatalogEntry>> {
        tracing::info!(
            why,
            "rebuilding the catalog of store paths from the PathInfos"
        );
        let folded = self.catalog_segment_names().await?;
        let entries: Vec<CatalogEntry> = self
            .list_path_infos()
            .map_ok(|info| CatalogEntry::of(&info))
            .try_collect()
            .await?;
        let catalog = self.catalog_from_walk(entries, &folded).await?;
        // An empty store stays without objects: walking it is free.
        let nothing = catalog.is_empty() && folded.is_empty();
        if !nothing {
            if let Err(e) = self.store_catalog_snapshot(&catalog, folded).await {
                tracing::warn!(error = %e, "cannot store a catalog snapshot");
            }
        }
        Ok(catalog.into_sorted())
    }

    /// Names of the catalog segments stored now: what a snapshot built
    /// from a walk that starts after this listing includes.
    pub(super) async fn catalog_segment_names(&self) -> StoreResult<Vec<String>> {
        Ok(self
            .list_prefix(CATALOG_SEGMENTS)
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .collect())
    }

    /// Stores `catalog` as the newest snapshot, including the segments
    /// `folded`, then deletes what an older snapshot made unneeded.
    pub(super) async fn store_catalog_snapshot(
        &self,
        catalog: &Catalog,
        folded: Vec<String>,
    ) -> StoreResult<()> {
        let stored = catalog.snapshot(folded)?;
        self.put_durable(&timestamped(CATALOG_SNAPSHOTS), stored)
            .await?;
        self.prune_catalog().await
    }

    /// Once the snapshot before the newest is older than [`FOLD_GRACE`]:
    /// deletes the segments it included and every snapshot older than it.
    /// Listings that picked it need only the segments it lacks; those that
    /// picked an older one did so before it was written, long done.
    async fn prune_catalog(&self) -> StoreResult<()> {
        let mut snapshots = self.list_prefix(CATALOG_SNAPSHOTS).await?;
        snapshots.sort_by(|a, b| b.location.cmp(&a.location));
        let Some(previous) = snapshots.get(1) else {
            return Ok(());
        };
        let age_of_previous = SystemTime::now()
            .duration_since(SystemTime::from(previous.last_modified))
            .unwrap_or_default();
        if age_of_previous < FOLD_GRACE {
            return Ok(());
        }
        let Some(stored) = self.get_optional(&previous.location).await? else {
            return Ok(());
        };
        let folded: HashSet<String> = match Catalog::from_snapshot(&stored) {
            Ok((_, folded)) => folded,
            Err(_) => HashSet::new(),
        };
        let mut gone = 0usize;
        for segment in self.catalog_segment_names().await? {
            if folded.contains(&segment) {
                self.delete_object(&segment.as_str().into()).await?;
                gone += 1;
            }
        }
        for old in &snapshots[2..] {
            self.delete_object(&old.location).await?;
        }
        tracing::info!(
            segments = gone,
            snapshots = snapshots.len() - 2,
            "pruned the catalog"
        );
        Ok(())
    }
}
