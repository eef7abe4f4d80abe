//! The catalog of store paths in the bucket (format and rules:
//! [`crate::catalog`]): segments written as paths are stored and deleted,
//! changes made at once by several tasks sharing one segment; listings
//! read the newest snapshot plus the segments it lacks, and rebuild the
//! catalog from the PathInfos when no snapshot reads. Upkeep — folding
//! many loose segments into a new snapshot, deleting segments and
//! snapshots no reader needs — runs in the background, one at a time, so
//! that neither a listing nor a write waits for it. GC stores a snapshot
//! from its walk.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use lazix_proto::ext as lpb;
use object_store::path::Path as ObjectPath;
use object_store::ObjectMeta;
use tokio::sync::oneshot;

use super::keys::{
    millis, sane_time, time_of, timestamped, timestamped_at, timestamped_from, CATALOG_SEGMENTS,
    CATALOG_SNAPSHOTS,
};
use super::{BucketStore, CONCURRENCY};
use crate::catalog::{merged, segment, CatalogEntry, Changes, Overlay};
use crate::catalog_sort::{CatalogSorter, SortedRuns, RUN_ENTRIES};
use crate::error::{StoreError, StoreResult};
use crate::store::PathInfoStore;

/// Loose segments a listing reads before it folds them into a snapshot.
const FOLD_AT: usize = 32;

/// Segments a writer stores between two folds of its own (through a
/// listing), so a server that takes many pushes and serves no listing
/// leaves few loose segments for the next one.
const FOLD_EVERY: u64 = 64;

/// How long a listing may take: a snapshot older than this is the oldest
/// any running listing may have picked.
const FOLD_GRACE: Duration = Duration::from_secs(120);

/// How much earlier than a snapshot's listing a segment's name may say it
/// was made and still be stored after that listing (a writer's clock, a
/// slow PUT): readers of the snapshot list segments from this long before
/// it. One named earlier still and stored later is missed until the next
/// GC's snapshot.
const SEGMENT_SKEW: Duration = Duration::from_secs(60);

type Waiter = oneshot::Sender<StoreResult<()>>;

/// Catalog changes waiting for the next segment, and the turn to write
/// one.
#[derive(Default)]
pub(super) struct CatalogWriter {
    pending: Mutex<Vec<(Vec<lpb::CatalogRecord>, Waiter)>>,
    writing: tokio::sync::Mutex<()>,
    /// Segments stored by this writer since it last folded.
    since_fold: std::sync::atomic::AtomicU64,
    /// The catalog's upkeep running in the background, if any.
    upkeep: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The catalog as a reader assembled it from the newest snapshot, and what
/// upkeep that reading showed due.
struct Assembled {
    /// The snapshot's entries with the loose segments' changes merged in,
    /// as they are read.
    entries: BoxStream<'static, StoreResult<CatalogEntry>>,
    /// The snapshot read, and the segments it includes.
    snapshot: ObjectMeta,
    folded: HashSet<String>,
    /// Every segment listed after the snapshot, and when.
    listed: Vec<String>,
    listed_at: SystemTime,
    /// Segments listed that the snapshot lacks, and how many of them were
    /// gone when read.
    loose: usize,
    vanished: usize,
}

impl Assembled {
    /// Whether enough loose segments were read to fold them into a new
    /// snapshot. A segment listed and gone meanwhile was pruned under this
    /// reader: its answer stands, but no snapshot is stored from it.
    fn fold_due(&self) -> bool {
        self.loose >= FOLD_AT && self.vanished == 0
    }

    /// Whether many segments already folded into the snapshot are still
    /// stored (every reader lists them) and the snapshot is settled, so
    /// they can go (if it is still the newest, see
    /// [`BucketStore::prune_catalog`]).
    fn prune_due(&self) -> bool {
        self.listed.len() - self.loose >= FOLD_AT && settled(&self.snapshot)
    }
}

/// The catalog a walk of every PathInfo made: its entries sorted on local
/// disk, and the changes recorded while it ran.
pub(super) struct WalkedCatalog {
    walked: SortedRuns,
    overlay: Overlay,
}

impl WalkedCatalog {
    /// Its entries in listing order, read from the start.
    pub(super) fn entries(&self) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        Ok(merged(
            stream::iter(self.walked.pass()?),
            self.overlay.clone(),
        ))
    }
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
                    // Counted down by the upkeep, which folds again if
                    // this many were written while it ran.
                    self.start_catalog_upkeep();
                }
                for w in waiters {
                    let _ = w.send(result.as_ref().map(|_| ()).map_err(StoreError::duplicate));
                }
            }
        }
        written
            .await
            .map_err(|_| StoreError::Unavailable("catalog writer stopped".into()))?
    }

    /// Records that the path `digest` was deleted (its PathInfo is gone
    /// already): a failure is logged, not returned, since the deletion
    /// happened; the next GC's snapshot drops the name.
    pub(super) async fn record_removal(&self, digest: &[u8; 20]) {
        if let Err(e) = self
            .record_in_catalog(vec![crate::catalog::record(digest, None)])
            .await
        {
            tracing::warn!(error = %e, "cannot record a deleted path in the catalog; the next GC drops it");
        }
    }

    /// Every stored path's entry, sorted by name, from the catalog, as
    /// it is read; a catalog lost or damaged is rebuilt from the
    /// PathInfos, once however many listings of this process find it so at
    /// the same time (those that waited read the snapshot the rebuild
    /// stored).
    pub(super) async fn catalog_listing(
        &self,
    ) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        let mut rebuild_turn = None;
        loop {
            let why = match self.catalog_from_snapshot().await? {
                Ok(entries) => return Ok(entries),
                Err(why) => why,
            };
            if rebuild_turn.is_some() {
                return self.rebuild_catalog(why).await;
            }
            rebuild_turn = Some(self.catalog_rebuild_gate.lock().await);
        }
    }

    /// The catalog from its newest snapshot and the segments after it
    /// (starting the upkeep in the background when that reading shows it
    /// due), or why it must be rebuilt.
    async fn catalog_from_snapshot(
        &self,
    ) -> StoreResult<Result<BoxStream<'static, StoreResult<CatalogEntry>>, &'static str>> {
        let assembled = match self.assemble_catalog().await? {
            Ok(assembled) => assembled,
            Err(why) => return Ok(Err(why)),
        };
        if assembled.fold_due() || assembled.prune_due() {
            self.start_catalog_upkeep();
        }
        Ok(Ok(assembled.entries))
    }

    /// Opens the newest snapshot and reads the segments it lacks, or says
    /// why the catalog must be rebuilt.
    async fn assemble_catalog(&self) -> StoreResult<Result<Assembled, &'static str>> {
        let snapshots = self.list_prefix(CATALOG_SNAPSHOTS).await?;
        let Some(newest) = newest_snapshot(&snapshots) else {
            return Ok(Err("no snapshot"));
        };
        if self.catalog_snapshot_damaged(&newest.location) {
            return Ok(Err("the newest snapshot is damaged"));
        }
        let (folded, snapshot) = match self.open_catalog_snapshot(&newest.location).await {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(Err("the newest snapshot vanished")),
            Err(StoreError::Io(e)) => return Err(StoreError::Io(e)),
            Err(e) => {
                tracing::warn!(snapshot = %newest.location, error = %e, "catalog snapshot unreadable");
                return Ok(Err("the newest snapshot is unreadable"));
            }
        };
        let listed_at = SystemTime::now();
        let listed: Vec<String> = self
            .list_prefix_after(CATALOG_SEGMENTS, &segments_from(&newest.location))
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        let loose: Vec<String> = listed
            .iter()
            .filter(|name| !folded.contains(*name))
            .cloned()
            .collect();
        let (changes, vanished) = self.read_segments(&loose).await?;
        let entries = self.merged_listing(&newest.location, snapshot, Overlay::of(changes));
        Ok(Ok(Assembled {
            entries,
            snapshot: newest.clone(),
            folded,
            listed,
            listed_at,
            loose: loose.len(),
            vanished,
        }))
    }

    /// Starts the catalog's upkeep in the background unless it is running
    /// already: its outcome is logged, nobody waits for it.
    pub(super) fn start_catalog_upkeep(&self) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut running = self.catalog_writer.upkeep.lock().expect("catalog upkeep");
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        *running = Some(tokio::spawn(async move {
            // Again while writers stored many segments meanwhile: a fold
            // of a large catalog takes seconds, and writes do not wait.
            loop {
                me.catalog_writer
                    .since_fold
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = me.catalog_upkeep().await {
                    tracing::warn!(error = %e, "catalog upkeep failed; the next listing retries");
                    break;
                }
                if me
                    .catalog_writer
                    .since_fold
                    .load(std::sync::atomic::Ordering::Relaxed)
                    < FOLD_EVERY
                {
                    break;
                }
            }
        }));
    }

    /// Folds what a bulk write left loose and waits for it (a writer about
    /// to exit): the next listing reads the snapshot and fewer than
    /// [`FOLD_AT`] segments.
    pub async fn settle_catalog(&self) {
        self.catalog_upkeep_done().await;
        self.start_catalog_upkeep();
        self.catalog_upkeep_done().await;
    }

    /// Waits for the catalog's upkeep running in the background, if any
    /// (a bulk writer about to exit, tests). The task stays where it is
    /// (so no second one starts meanwhile): this polls it.
    pub async fn catalog_upkeep_done(&self) {
        loop {
            let running = self
                .catalog_writer
                .upkeep
                .lock()
                .expect("catalog upkeep")
                .as_ref()
                .is_some_and(|task| !task.is_finished());
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Folds the loose segments into a new snapshot when there are many
    /// (or builds the first one), and deletes what no reader needs any
    /// more.
    async fn catalog_upkeep(&self) -> StoreResult<()> {
        let Ok(assembled) = self.assemble_catalog().await? else {
            // No snapshot yet (a new store's first writes) or a damaged
            // one: rebuilt now, as a listing would.
            return self.catalog_listing().await.map(drop);
        };
        if assembled.fold_due() {
            let paths = self
                .write_catalog_snapshot(
                    &timestamped_at(CATALOG_SNAPSHOTS, assembled.listed_at),
                    assembled.listed,
                    assembled.entries,
                )
                .await?;
            tracing::info!(
                segments = assembled.loose,
                paths,
                "folded catalog segments into a snapshot"
            );
            // What it read may be the settled snapshot.
            self.prune_catalog(Some((&assembled.snapshot.location, &assembled.folded)))
                .await
        } else if assembled.prune_due() {
            self.prune_catalog(Some((&assembled.snapshot.location, &assembled.folded)))
                .await
        } else {
            Ok(())
        }
    }

    /// The changes the segments `names` record, in name order; one gone
    /// meanwhile (folded and deleted) or unreadable is skipped. Returns
    /// them and how many segments were gone.
    async fn read_segments(&self, names: &[String]) -> StoreResult<(Changes, usize)> {
        let mut names = names.to_vec();
        names.sort();
        let read: Vec<Option<bytes::Bytes>> = stream::iter(names.clone())
            .map(|name| async move { self.get_optional(&name.as_str().into()).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut vanished = 0;
        let mut changes = Vec::new();
        for (name, stored) in names.iter().zip(read) {
            let Some(stored) = stored else {
                vanished += 1;
                continue;
            };
            match crate::catalog::changes_of(&stored) {
                Ok(more) => changes.extend(more),
                Err(e) => tracing::warn!(segment = %name, error = %e, "catalog segment skipped"),
            }
        }
        Ok((changes, vanished))
    }

    /// The catalog from a walk of every PathInfo (its entries sorted in
    /// `walked`) that started after the segments `folded` were listed,
    /// those segments applied on top: a path whose segment was stored but
    /// whose PathInfo was not yet when the walk passed is kept, and a
    /// removal recorded in them still counts.
    pub(super) async fn catalog_from_walk(
        &self,
        walked: SortedRuns,
        folded: &[String],
        listed_at: SystemTime,
    ) -> StoreResult<WalkedCatalog> {
        // Only segments that may have been in flight while the walk ran:
        // older ones are in the PathInfos the walk read (an old addition
        // whose removal record was lost must not come back).
        let from = segments_from_time(millis(listed_at)).to_string();
        let recent: Vec<String> = folded.iter().filter(|n| **n >= from).cloned().collect();
        let (changes, _) = self.read_segments(&recent).await?;
        Ok(WalkedCatalog {
            walked,
            overlay: Overlay::of(changes),
        })
    }

    /// Stores the catalog a walk made (GC's): its entries, sorted by
    /// `walked`, with the segments in flight merged in; returns the paths
    /// stored.
    pub(super) async fn store_walked_catalog(
        &self,
        walked: CatalogSorter,
        folded: Vec<String>,
        listed_at: SystemTime,
    ) -> StoreResult<u64> {
        let catalog = self
            .catalog_from_walk(walked.finish()?, &folded, listed_at)
            .await?;
        self.store_catalog_snapshot(catalog.entries()?, folded, listed_at)
            .await
    }

    /// The catalog made anew from every PathInfo (a lost or damaged
    /// catalog, a store from before catalogs), stored as a snapshot; its
    /// entries as they are read back from the walk's sorted runs.
    async fn rebuild_catalog(
        &self,
        why: &str,
    ) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        // A store's first listings find no snapshot: not news.
        tracing::debug!(
            why,
            "rebuilding the catalog of store paths from the PathInfos"
        );
        let (folded, listed_at) = self.catalog_segments_now().await?;
        let mut sorter = CatalogSorter::new(RUN_ENTRIES);
        let mut walked = 0u64;
        let mut infos = self.list_path_infos();
        while let Some(info) = infos.next().await {
            sorter.push(CatalogEntry::of(&info?))?;
            walked += 1;
        }
        let catalog = self
            .catalog_from_walk(sorter.finish()?, &folded, listed_at)
            .await?;
        // An empty store stays without objects: walking it is free.
        if walked > 0 || !folded.is_empty() {
            match self
                .store_catalog_snapshot(catalog.entries()?, folded, listed_at)
                .await
            {
                Ok(paths) if paths > 0 => {
                    tracing::info!(why, paths, "rebuilt the catalog of store paths")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot store a catalog snapshot"),
            }
        }
        catalog.entries()
    }

    /// Names of every catalog segment stored now, and when they were
    /// listed: what a snapshot built from a walk that starts after this
    /// listing includes.
    pub(super) async fn catalog_segments_now(&self) -> StoreResult<(Vec<String>, SystemTime)> {
        let at = SystemTime::now();
        let names = self
            .list_prefix(CATALOG_SEGMENTS)
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        Ok((names, at))
    }

    /// Stores `entries` (in listing order) as the newest snapshot, including the segments
    /// `folded`, which were listed at `listed_at` (the snapshot is named
    /// for that time: readers take the segments from a little before it),
    /// then deletes what no reader needs any more.
    pub(super) async fn store_catalog_snapshot(
        &self,
        entries: BoxStream<'static, StoreResult<CatalogEntry>>,
        folded: Vec<String>,
        listed_at: SystemTime,
    ) -> StoreResult<u64> {
        let paths = self
            .write_catalog_snapshot(
                &timestamped_at(CATALOG_SNAPSHOTS, listed_at),
                folded,
                entries,
            )
            .await?;
        self.prune_catalog(None).await?;
        Ok(paths)
    }

    /// Every listing that is still running started less than
    /// [`FOLD_GRACE`] ago, when the snapshots stored then (by their
    /// modification time, not their name: a snapshot from a long walk is
    /// named for its start) were there: it took the newest of those, no
    /// older than the newest stored before the grace (the *settled* one),
    /// and reads segments from a little before it, skipping those folded
    /// into it. Older snapshots and segments before that point are
    /// deleted. When the settled snapshot is also the newest, so every
    /// reader takes it, the segments it includes go too; `known` is a
    /// snapshot whose folded segments the caller read. (Not when a newer
    /// one exists: a snapshot is named for when its listing started, so a
    /// newer name may lack a segment the settled one includes.)
    async fn prune_catalog(
        &self,
        known: Option<(&ObjectPath, &HashSet<String>)>,
    ) -> StoreResult<()> {
        let mut snapshots: Vec<ObjectMeta> = self
            .list_prefix(CATALOG_SNAPSHOTS)
            .await?
            .into_iter()
            .filter(|s| sane_time(&s.location))
            .collect();
        snapshots.sort_by(|a, b| b.location.cmp(&a.location));
        let Some(settled_at) = snapshots.iter().position(settled) else {
            return Ok(());
        };
        let settled = &snapshots[settled_at].location;
        let no_folded = HashSet::new();
        let folded = match known {
            Some((name, folded)) if settled_at == 0 && name == settled => folded,
            _ => &no_folded,
        };
        let keep_from = segments_from(settled);
        let segments: Vec<ObjectPath> = self
            .list_prefix(CATALOG_SEGMENTS)
            .await?
            .into_iter()
            .map(|m| m.location)
            .filter(|name| *name < keep_from || folded.contains(name.as_ref()))
            .collect();
        let older: Vec<ObjectPath> = snapshots[settled_at + 1..]
            .iter()
            .map(|s| s.location.clone())
            .collect();
        if segments.is_empty() && older.is_empty() {
            return Ok(());
        }
        self.delete_objects(segments.iter().chain(&older).cloned().collect())
            .await?;
        tracing::info!(
            segments = segments.len(),
            snapshots = older.len(),
            "pruned the catalog"
        );
        Ok(())
    }
}

/// Whether a snapshot was stored long enough ago that every listing still
/// running took it or a newer one.
fn settled(snapshot: &ObjectMeta) -> bool {
    SystemTime::from(snapshot.last_modified) <= SystemTime::now() - FOLD_GRACE
}

/// Where the segments a reader of `snapshot` applies start: a little
/// before the time its segments were listed, so that a segment named just
/// before then but stored just after is still read.
fn segments_from(snapshot: &ObjectPath) -> ObjectPath {
    segments_from_time(time_of(snapshot).unwrap_or(0))
}

/// Where segments that may have been stored after a listing at `ms` start.
fn segments_from_time(ms: u64) -> ObjectPath {
    timestamped_from(
        CATALOG_SEGMENTS,
        ms.saturating_sub(SEGMENT_SKEW.as_millis() as u64),
    )
}

/// The snapshot readers take: the newest with a sane name.
fn newest_snapshot(snapshots: &[ObjectMeta]) -> Option<&ObjectMeta> {
    snapshots
        .iter()
        .filter(|s| sane_time(&s.location))
        .max_by(|a, b| a.location.cmp(&b.location))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::catalog::{record, Catalog};
    use crate::nix::store_path::StorePath;
    use crate::node::Node;

    fn entry(i: u8) -> CatalogEntry {
        let mut digest = [3u8; 20];
        digest[0] = i;
        CatalogEntry {
            store_path: StorePath::from_parts(digest, &format!("p{i}")).expect("path"),
            node: Node::Symlink { target: "t".into() },
            nar_size: 1,
        }
    }

    async fn names(store: &BucketStore) -> BTreeSet<String> {
        store
            .catalog_listing()
            .await
            .expect("catalog")
            .map_ok(|e| e.store_path.basename())
            .try_collect()
            .await
            .expect("listing")
    }

    /// Stores a snapshot of `catalog` at `at`, as a fold or GC would.
    async fn put_snapshot(
        store: &BucketStore,
        at: &ObjectPath,
        catalog: &Catalog,
        folded: Vec<String>,
    ) {
        store
            .write_catalog_snapshot(at, folded, stream::iter(catalog.iter().cloned().map(Ok)))
            .await
            .expect("snapshot");
    }

    #[tokio::test]
    async fn old_snapshots_and_segments_are_pruned_and_recent_ones_kept() {
        let (dir, store) = crate::testutil::temp_bucket().await;
        // Objects written now, dated back (pruning goes by the time a
        // snapshot was stored).
        let date = |location: &ObjectPath, at: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(location.to_string()))
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let a_while_ago = SystemTime::now() - FOLD_GRACE - Duration::from_secs(5);
        // An old snapshot holding p1, and a segment from before it adding p2.
        let old_segment = timestamped_at(CATALOG_SEGMENTS, long_ago);
        store
            .put(
                &old_segment,
                segment(vec![record(entry(2).store_path.digest(), Some(&entry(2)))]),
            )
            .await
            .unwrap();
        let old = Catalog::from_entries([entry(1), entry(2)]);
        let old_snapshot = timestamped_at(CATALOG_SNAPSHOTS, long_ago);
        // Of the format stored before snapshots were streams.
        let old_format = old.old_snapshot(vec![old_segment.to_string()]);
        store
            .put(
                &old_snapshot,
                zstd::encode_all(old_format.as_slice(), 3).unwrap().into(),
            )
            .await
            .unwrap();
        date(&old_snapshot, long_ago);
        // A settled snapshot (older than the grace) and a segment after it.
        let settled = Catalog::from_entries([entry(1), entry(2), entry(3)]);
        let settled_snapshot = timestamped_at(CATALOG_SNAPSHOTS, a_while_ago);
        put_snapshot(&store, &settled_snapshot, &settled, vec![]).await;
        date(&settled_snapshot, a_while_ago);
        // A snapshot from a long walk: named for its start long ago, but
        // stored just now, so not settled; and one from a clock far ahead,
        // never taken.
        let walked = timestamped_at(CATALOG_SNAPSHOTS, long_ago - Duration::from_secs(60));
        put_snapshot(&store, &walked, &Catalog::from_entries([entry(9)]), vec![]).await;
        let ahead = timestamped_at(
            CATALOG_SNAPSHOTS,
            SystemTime::now() + Duration::from_secs(3600),
        );
        put_snapshot(&store, &ahead, &Catalog::from_entries([entry(8)]), vec![]).await;
        store
            .put(
                &timestamped(CATALOG_SEGMENTS),
                segment(vec![record(entry(1).store_path.digest(), None)]),
            )
            .await
            .unwrap();
        let expected: BTreeSet<String> = [entry(2), entry(3)]
            .iter()
            .map(|e| e.store_path.basename())
            .collect();
        assert_eq!(names(&store).await, expected);
        // A new snapshot: the one before the settled snapshot goes, with
        // the segment from before it; the recent segment stays.
        let entries = Catalog::from_entries([entry(2), entry(3)]).into_sorted();
        store
            .store_catalog_snapshot(
                stream::iter(entries.into_iter().map(Ok)).boxed(),
                vec![],
                SystemTime::now(),
            )
            .await
            .unwrap();
        let snapshots: Vec<ObjectPath> = store
            .list_prefix(CATALOG_SNAPSHOTS)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location)
            .collect();
        // The settled one and the new one stay (and the one from the
        // future, ignored); the old one and the walk's named before the
        // settled one go.
        assert!(snapshots.contains(&settled_snapshot), "{snapshots:?}");
        assert!(!snapshots.contains(&old_snapshot), "{snapshots:?}");
        assert_eq!(snapshots.len(), 3, "{snapshots:?}");
        let segments = store.list_prefix(CATALOG_SEGMENTS).await.unwrap();
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert!(segments[0].location != old_segment);
        assert_eq!(names(&store).await, expected);
    }

    #[tokio::test]
    async fn a_listing_prunes_segments_folded_into_a_settled_snapshot() {
        let (dir, store) = crate::testutil::temp_bucket().await;
        // Segments written in the minute before a snapshot that folds them
        // (a bulk write's last fold): every reader lists them.
        let now = SystemTime::now();
        let mut folded = Vec::new();
        for i in 0..FOLD_AT as u8 + 8 {
            let name = timestamped_at(CATALOG_SEGMENTS, now - Duration::from_secs(30));
            store
                .put(
                    &name,
                    segment(vec![record(entry(i).store_path.digest(), Some(&entry(i)))]),
                )
                .await
                .unwrap();
            folded.push(name.to_string());
        }
        let all = Catalog::from_entries((0..FOLD_AT as u8 + 8).map(entry));
        let snapshot = timestamped_at(CATALOG_SNAPSHOTS, now);
        put_snapshot(&store, &snapshot, &all, folded.clone()).await;
        // One segment after it, not folded: it stays.
        store
            .put(
                &timestamped(CATALOG_SEGMENTS),
                segment(vec![record(entry(0).store_path.digest(), None)]),
            )
            .await
            .unwrap();
        let expected: BTreeSet<String> = (1..FOLD_AT as u8 + 8)
            .map(|i| entry(i).store_path.basename())
            .collect();

        // Not settled yet: a listing still running may have taken an older
        // snapshot and need the segments.
        assert_eq!(names(&store).await, expected);
        store.catalog_upkeep_done().await;
        let segments = store.list_prefix(CATALOG_SEGMENTS).await.unwrap();
        assert_eq!(segments.len(), folded.len() + 1);

        // Settled, but a newer snapshot exists (named for a listing that
        // started later, it may lack some of them): they stay.
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(snapshot.to_string()))
            .unwrap()
            .set_modified(now - FOLD_GRACE - Duration::from_secs(5))
            .unwrap();
        let newer = timestamped(CATALOG_SNAPSHOTS);
        put_snapshot(&store, &newer, &all, vec![]).await;
        let folded_set: HashSet<String> = folded.iter().cloned().collect();
        store
            .prune_catalog(Some((&snapshot, &folded_set)))
            .await
            .unwrap();
        let segments = store.list_prefix(CATALOG_SEGMENTS).await.unwrap();
        assert_eq!(segments.len(), folded.len() + 1);
        store.delete_object(&newer).await.unwrap();

        // Settled and the newest: the next listing deletes the folded
        // segments in the background; the answer stays the same.
        assert_eq!(names(&store).await, expected);
        store.catalog_upkeep_done().await;
        let segments = store.list_prefix(CATALOG_SEGMENTS).await.unwrap();
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert!(!folded.contains(&segments[0].location.to_string()));
        assert_eq!(names(&store).await, expected);
    }
}
