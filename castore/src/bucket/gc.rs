//! Garbage collection: removes what no PathInfo reaches.
//!
//! Mark: every PathInfo's directory closure, the chunk lists of its files,
//! their chunks, and the bases of delta frames holding them. Sweep, among
//! objects older than the grace period only: directories and chunk lists
//! nobody reaches are deleted; a pack with no live chunk is deleted, and a
//! pack whose live bytes fell below the repack threshold is rewritten with
//! only its live chunks (the compaction path).
//!
//! Uploads in progress: everything they write is younger than the grace
//! period; what they rely on without writing (chunks and directories the
//! server said it already had) is recorded in `touched/` marks when the
//! server says so, and marks younger than the grace period count as live.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::PutPayload;

use super::keys::{
    index_path, pack_path, path_info_path, touch_path, BLOBS, MANIFESTS, PACKS, TOUCHED,
};
use super::mark_set::MarkSet;
use super::packs::HomeTally;
use super::{object_err, BucketStore};
use crate::catalog_sort::{CatalogSorter, RUN_ENTRIES};
use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};
use crate::node::Node;
use crate::store::{DirectoryStore, PathInfoStore};

/// How a collection runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Objects (and touch marks) younger than this are kept regardless.
    pub grace: Duration,
    /// Packs whose live fraction of raw bytes is below this are rewritten.
    pub repack_below: f64,
    /// Delete first the PathInfos neither written nor asked for within
    /// this long (none: keep every path).
    pub expire_unused_for: Option<Duration>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            repack_below: 0.5,
            expire_unused_for: None,
        }
    }
}

/// What a collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// PathInfos deleted because nobody asked for them lately.
    pub paths_expired: u64,
    /// PathInfos found (all live).
    pub paths: u64,
    /// Live chunks (by digest prefix; the digests of live files made of
    /// several chunks count too: they are marked alike).
    pub live_chunks: u64,
    /// Directories deleted.
    pub directories_deleted: u64,
    /// Chunk lists deleted.
    pub blob_lists_deleted: u64,
    /// Chunks no longer stored.
    pub chunks_freed: u64,
    /// Packs deleted outright.
    pub packs_deleted: u64,
    /// Packs rewritten with their live chunks only.
    pub packs_repacked: u64,
    /// Bytes of objects deleted, less bytes of packs written.
    pub bytes_freed: u64,
}

/// Objects deleted together by a sweep (S3 takes up to 1,000 a request).
const DELETE_BATCH: usize = 1000;

/// PathInfos walked between two progress lines while marking.
const MARK_PROGRESS_EVERY: u64 = 10_000;

/// What marking found live.
#[derive(Default)]
struct Live {
    /// The PathInfos found, by store path digest (8 bytes a path, where
    /// hash parts as strings took about 80 at a million paths).
    paths: MarkSet,
    directories: MarkSet,
    blobs: MarkSet,
    chunks: MarkSet,
}

impl BucketStore {
    /// Records that an upload relies on these stored objects (chunks or
    /// directories it did not send because the server had them), so a
    /// collection within the grace period keeps them.
    pub(crate) async fn touch(&self, digests: &[B3Digest]) -> StoreResult<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(digests.len() * 32);
        for d in digests {
            data.extend_from_slice(d.as_bytes());
        }
        self.objects
            .put(&touch_path(), PutPayload::from(Bytes::from(data)))
            .await
            .map_err(object_err)?;
        Ok(())
    }

    /// Deletes a store path's PathInfo (its data goes at the next
    /// collection); returns whether it existed.
    pub async fn delete_path_info(&self, digest: &[u8; 20]) -> StoreResult<bool> {
        let path = path_info_path(digest);
        let existed = self.read_path_info(&path).await?.is_some();
        self.delete_object(&path).await?;
        self.delete_object(&super::keys::profile_path(digest))
            .await?;
        self.delete_access_mark(digest).await?;
        self.record_removal(digest).await;
        Ok(existed)
    }

    /// Collects garbage (see the module documentation); one compaction or
    /// collection runs at a time per store.
    pub async fn gc(&self, opts: GcOptions) -> StoreResult<GcReport> {
        let lock = self.lock_maintenance().await?;
        let started = std::time::Instant::now();
        let result = self.gc_locked(opts, &lock).await;
        lock.release().await;
        self.runs.gc_done(
            started.elapsed(),
            result.as_ref().ok().map(|r| r.bytes_freed),
        );
        result
    }

    async fn gc_locked(
        &self,
        opts: GcOptions,
        lock: &super::lock::MaintenanceLock<'_>,
    ) -> StoreResult<GcReport> {
        let started = SystemTime::now();
        let cutoff = started - opts.grace;
        self.refresh().await?;
        let mut report = GcReport::default();
        if let Some(unused) = opts.expire_unused_for {
            report.paths_expired = self.expire_unused(started - unused).await?;
        }
        let live = self.mark(cutoff, &mut report).await?;
        report.live_chunks = live.chunks.len() as u64;
        tracing::info!(
            paths = report.paths,
            live_chunks = report.live_chunks,
            "marked; sweeping"
        );
        // Marking a large store takes long: if another process took the
        // lock over meanwhile (this one taken for dead), delete nothing.
        if lock.lost() {
            return Err(StoreError::Unavailable(
                "lost the maintenance lock while marking; nothing deleted".into(),
            ));
        }
        // A manifest lives while its root directory does.
        let (_, manifest_bytes) = self
            .sweep_digests(MANIFESTS, &live.directories, cutoff)
            .await?;
        report.bytes_freed += manifest_bytes;
        for (kind, keep) in [("directories", &live.directories), ("blobs", &live.blobs)] {
            let (n, bytes) = self.sweep_digests(kind, keep, cutoff).await?;
            report.bytes_freed += bytes;
            if kind == "directories" {
                report.directories_deleted = n;
            } else {
                report.blob_lists_deleted = n;
            }
        }
        // Uploads that started relying on old chunks while we marked.
        let mut live_chunks = live.chunks;
        live_chunks.extend(self.touched_since(started).await?);
        live_chunks.seal();
        // Their delta bases stay too (a touch mark names the chunk only).
        let bases = {
            let scan = self.table.read().expect("pack table").scan();
            scan.bases_of_live(|d| live_chunks.contains(d))?
        };
        live_chunks.extend(bases);
        live_chunks.seal();
        self.sweep_packs(&live_chunks, cutoff, opts.repack_below, &mut report)
            .await?;
        // Old touch marks have done their job.
        self.sweep_prefix(TOUCHED, cutoff, |_| true).await?;
        // And journal entries no replica reads any more.
        self.prune_pack_journal().await?;
        self.sweep_orphan_marks(cutoff, &live.paths).await?;
        report.bytes_freed += self.sweep_staging(cutoff).await?;
        // The next opening reads the packs that stay from one object.
        if let Err(e) = self.store_pack_snapshot().await {
            tracing::warn!(error = %e, "cannot store a pack table snapshot");
        }
        tracing::info!(?report, "garbage collection done");
        Ok(report)
    }

    async fn mark(&self, cutoff: SystemTime, report: &mut GcReport) -> StoreResult<Live> {
        let mut live = Live::default();
        // The walk also makes the catalog anew: it includes every segment
        // stored before it starts.
        let (folded, listed_at) = self.catalog_segments_now().await?;
        // The catalog is an aid: a sort that cannot spill (local disk
        // full) costs the snapshot, not the collection.
        let mut catalog = Some(CatalogSorter::new(RUN_ENTRIES));
        let mut infos = self.list_path_infos();
        let walk_started = std::time::Instant::now();
        while let Some(info) = infos.next().await {
            let info = info?;
            report.paths += 1;
            if report.paths.is_multiple_of(MARK_PROGRESS_EVERY) {
                tracing::info!(
                    paths = report.paths,
                    seconds = walk_started.elapsed().as_secs(),
                    "marking"
                );
            }
            live.paths.insert_bytes(info.store_path.digest());
            if let Some(sorter) = &mut catalog {
                if let Err(e) = sorter.push(crate::catalog::CatalogEntry::of(&info)) {
                    tracing::warn!(error = %e, "cannot sort the catalog; no catalog snapshot this time");
                    catalog = None;
                }
            }
            match info.node {
                Node::Directory { digest, .. } => {
                    let closure = self.get_closure(&digest).await?;
                    live.directories.extend(closure.iter().map(|d| d.digest()));
                    // Every non-empty file goes into the chunks' set: most
                    // are one chunk; the others' chunk lists are read below.
                    super::nonempty_files(&closure, &mut live.chunks)?;
                }
                Node::File { digest, size, .. } if size > 0 => {
                    live.chunks.insert(&digest);
                }
                _ => {}
            }
        }
        if let Some(sorter) = catalog {
            if let Err(e) = self.store_walked_catalog(sorter, folded, listed_at).await {
                tracing::warn!(error = %e, "cannot store the catalog snapshot");
            }
        }
        // What uploads in progress rely on (a chunk list they rely on has
        // its chunks marked below, as a live file's).
        for d in self.touched_since(cutoff).await? {
            live.chunks.insert(&d);
            live.directories.insert(&d);
            live.blobs.insert(&d);
        }
        self.mark_listed_chunks(&mut live).await?;
        // Bases of live delta frames stay.
        live.chunks.seal();
        let bases = {
            let scan = self.table.read().expect("pack table").scan();
            scan.bases_of_live(|d| live.chunks.contains(d))?
        };
        live.chunks.extend(bases);
        for set in [
            &mut live.chunks,
            &mut live.directories,
            &mut live.blobs,
            &mut live.paths,
        ] {
            set.seal();
        }
        Ok(live)
    }

    /// Marks the chunks of the live files that are more than one chunk:
    /// `live.chunks` holds every live file's digest (and the touched ones)
    /// when this is called (a one-chunk file is its chunk); the stored
    /// chunk lists are listed (one listing, not a lookup per file) and
    /// those of live files read. A dead file whose digest prefix is a live
    /// one's keeps its list and chunks (rarely: a little garbage).
    async fn mark_listed_chunks(&self, live: &mut Live) -> StoreResult<()> {
        live.chunks.seal();
        // Kept apart until the listing ends: the set answers quickly only
        // while nothing is added to it.
        let mut listed_chunks = MarkSet::default();
        let mut lists = self.objects.list(Some(&BLOBS.into()));
        let mut batch = Vec::new();
        loop {
            let next = lists.next().await.transpose().map_err(object_err)?;
            if let Some(d) = next
                .as_ref()
                .and_then(|m| B3Digest::from_hex(m.location.filename()?))
                .filter(|d| live.chunks.contains(d))
            {
                batch.push(d);
            }
            if batch.len() == 1024 || (next.is_none() && !batch.is_empty()) {
                let listed = std::mem::take(&mut batch);
                for (blob, list) in listed.iter().zip(self.blob_chunk_lists(&listed).await?) {
                    if let Some(list) = list {
                        live.blobs.insert(blob);
                        listed_chunks.extend(list.iter().map(|c| c.digest));
                    }
                }
            }
            if next.is_none() {
                live.chunks.absorb(listed_chunks);
                return Ok(());
            }
        }
    }

    /// Deletes, in a local store, the staging files (`NAME#N`) of writers
    /// killed mid-write that are older than `cutoff` (object listings never
    /// show them); returns their bytes.
    async fn sweep_staging(&self, cutoff: SystemTime) -> StoreResult<u64> {
        let swept = self
            .on_local_folder(move |root| sweep_staging_files(root, cutoff))
            .await?;
        Ok(swept.unwrap_or(0))
    }

    /// Digests in touch marks written since `since`.
    async fn touched_since(&self, since: SystemTime) -> StoreResult<Vec<B3Digest>> {
        let marks = self.list_prefix(TOUCHED).await?;
        let mut out = Vec::new();
        for m in marks
            .iter()
            .filter(|m| SystemTime::from(m.last_modified) >= since)
        {
            let Some(data) = self.get_optional(&m.location).await? else {
                continue;
            };
            for d in data.chunks_exact(32) {
                out.push(B3Digest::try_from(d).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// Deletes `kind/<2 hex>/<64 hex>` objects older than `cutoff` whose
    /// digest is not in `keep`; returns how many and their bytes.
    async fn sweep_digests(
        &self,
        kind: &str,
        keep: &MarkSet,
        cutoff: SystemTime,
    ) -> StoreResult<(u64, u64)> {
        self.sweep_prefix(kind, cutoff, |name| {
            B3Digest::from_hex(name).is_some_and(|d| !keep.contains(&d))
        })
        .await
    }

    /// Deletes objects under `prefix` older than `cutoff` whose file name
    /// `dead` says so; returns how many and their bytes.
    pub(super) async fn sweep_prefix(
        &self,
        prefix: &str,
        cutoff: SystemTime,
        dead: impl Fn(&str) -> bool,
    ) -> StoreResult<(u64, u64)> {
        let (mut n, mut bytes) = (0u64, 0u64);
        // Deleted as the listing goes: a listing of millions of objects is
        // never held.
        self.objects
            .list(Some(&prefix.into()))
            .map_err(object_err)
            .try_filter(|m| {
                let doomed = SystemTime::from(m.last_modified) < cutoff
                    && m.location.filename().is_some_and(&dead);
                std::future::ready(doomed)
            })
            .map_ok(|m| {
                n += 1;
                bytes += m.size;
                m.location
            })
            // Many per request where the object store can (S3's
            // multi-object delete).
            .try_chunks(DELETE_BATCH)
            .map_err(|e| e.1)
            .and_then(|batch| self.delete_objects(batch))
            .try_collect::<()>()
            .await?;
        Ok((n, bytes))
    }

    async fn sweep_packs(
        &self,
        live: &MarkSet,
        cutoff: SystemTime,
        repack_below: f64,
        report: &mut GcReport,
    ) -> StoreResult<()> {
        let old_packs: Vec<(String, u64)> = self
            .objects
            .list(Some(&PACKS.into()))
            .map_err(object_err)
            .try_filter_map(|m| {
                let old = SystemTime::from(m.last_modified) < cutoff;
                let id = m.location.filename().and_then(|f| f.strip_suffix(".pack"));
                std::future::ready(Ok(id.filter(|_| old).map(|id| (id.to_string(), m.size))))
            })
            .try_collect()
            .await?;
        // Which chunks each pack is the home of, from one walk of the
        // table in digest order (not a lookup per chunk), taken once: a
        // pack added since (a repack's output, an upload) is younger than
        // the cutoff, so never among the old packs; one learned of
        // otherwise since is left for the next collection.
        let tallies = {
            let scan = self.table.read().expect("pack table").scan();
            scan.home_tallies(|d| live.contains(d))?
        };
        // Deleted in batches (S3 deletes 1,000 objects a request).
        let mut dead_packs: Vec<String> = Vec::new();
        for (id, size) in old_packs {
            let tally = super::keys::pack_id(&id).and_then(|p| tallies.get(&p).copied());
            // A pack without an index, older than the grace period: left by
            // a writer killed between the two (the index follows at once).
            // (One in the tallies is in the table: no search for it.)
            let indexed = tally.is_some() || self.table.read().expect("pack table").has_pack(&id);
            if !indexed && !self.exists(&index_path(&id)).await? {
                tracing::info!(pack = %id, "removing a pack whose writer died before its index");
                self.delete_object(&pack_path(&id)).await?;
                report.bytes_freed += size;
                continue;
            }
            let Some(HomeTally {
                live_raw,
                dead_chunks,
            }) = tally
            else {
                continue;
            };
            // All its raw bytes, against the live ones whose home it is.
            let Some(all_raw) = self.table.read().expect("pack table").pack(&id).map(|p| {
                p.frames
                    .iter()
                    .flat_map(|f| f.chunks.iter())
                    .map(|c| c.size)
                    .sum::<u64>()
            }) else {
                continue;
            };
            if live_raw == 0 {
                dead_packs.push(id);
                if dead_packs.len() == DELETE_BATCH {
                    self.delete_dead_packs(&mut dead_packs).await?;
                }
                report.packs_deleted += 1;
                report.chunks_freed += dead_chunks;
                report.bytes_freed += size;
            } else if (live_raw as f64) < repack_below * all_raw as f64 {
                let written = self.repack_live(&id, live).await?;
                report.packs_repacked += 1;
                report.chunks_freed += dead_chunks;
                report.bytes_freed += size.saturating_sub(written);
            }
        }
        self.delete_dead_packs(&mut dead_packs).await
    }

    /// Deletes the packs gathered (none of them a live chunk's home), in
    /// one batch.
    async fn delete_dead_packs(&self, ids: &mut Vec<String>) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let batch: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.delete_packs(&batch).await?;
        ids.clear();
        Ok(())
    }
}

/// Whether a file name is a staging name of the local object store
/// (`NAME#DIGITS`).
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes staging files older than `cutoff` below `dir`; returns their
/// bytes.
fn sweep_staging_files(dir: &std::path::Path, cutoff: SystemTime) -> std::io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            bytes += sweep_staging_files(&entry.path(), cutoff)?;
        } else if is_staging_name(&entry.file_name().to_string_lossy()) && meta.modified()? < cutoff
        {
            tracing::info!(file = %entry.path().display(), "removing a killed writer's staging file");
            std::fs::remove_file(entry.path())?;
            bytes += meta.len();
        }
    }
    Ok(bytes)
}
