//! The pack table: which pack and frame hold each chunk. Loaded from the
//! pack indexes at open (most from a snapshot of them, see
//! [`super::pack_snapshot`]), caught up from the pack journal (see
//! [`super::pack_journal`]) when a lookup misses (another replica wrote)
//! or a pack vanished (compaction or GC elsewhere), re-listed in full when
//! that does not explain it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::stream::{self, StreamExt, TryStreamExt};

use super::keys::{index_path, pack_id, PackId, PACKS};
use super::pack_snapshot::{READ_SNAPSHOT_FROM, WRITE_SNAPSHOT_FROM};
use super::packs::{decode_index, FrameLocation, PackTable};
use super::{BucketStore, CONCURRENCY, REFRESH_INTERVAL};
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::error::{StoreError, StoreResult};
use lazix_proto::ext as lpb;

impl BucketStore {
    /// Lists `packs/` in full: loads the index of every pack not yet
    /// known and forgets packs gone. An index that does not parse is logged
    /// and its pack stays invisible.
    pub async fn refresh(&self) -> StoreResult<()> {
        // Never beside a catching up on the journal: this listing's picture
        // of `packs/` may predate what that applies.
        let _not_beside_catching_up = self.journal_gate.lock().await;
        self.refresh_locked().await
    }

    /// [`BucketStore::refresh`], the journal gate already held.
    pub(super) async fn refresh_locked(&self) -> StoreResult<()> {
        let began = SystemTime::now();
        self.journal
            .lock()
            .expect("pack journal cursor")
            .listing_in_full();
        // Journal entries stored before the listing starts say nothing it
        // will not see: catching up later need not read them.
        let covered = self.journal_entries_from(began).await?;
        self.list_packs_in_full().await?;
        self.journal
            .lock()
            .expect("pack journal cursor")
            .listed_in_full(began, covered);
        Ok(())
    }

    async fn list_packs_in_full(&self) -> StoreResult<()> {
        *self.last_refresh.lock().expect("refresh clock") = Some(Instant::now());
        let listed = self.listed_packs().await?;
        let opening = self.table.read().expect("pack table").is_empty();
        // Packs deleted elsewhere (compaction, GC) first: their chunks are
        // in packs listed now, added below. (Opening, none is known yet:
        // no set of every listed id.)
        // Ids borrowed from the listing: a store of a million packs holds
        // its ids once while opening.
        let mut new_ids: Vec<&PackId> = if opening {
            listed.iter().collect()
        } else {
            // Sets of both sides, not a search of the table per listed
            // pack (of every run on disk: seconds at a million packs).
            let listed_ids: HashSet<&PackId, DigestKeyBuildHasher> = listed.iter().collect();
            let mut table = self.table.write().expect("pack table");
            let known: HashSet<PackId, DigestKeyBuildHasher> =
                table.pack_ids()?.into_iter().collect();
            for gone in known.iter().filter(|id| !listed_ids.contains(id)) {
                table.remove_pack(&gone.to_hex());
            }
            listed.iter().filter(|id| !known.contains(*id)).collect()
        };
        // Opening a store of many packs: most indexes come from one
        // snapshot object. (Not later: packs another replica wrote since
        // are not in it.) The ids still wanted are a set meanwhile, and
        // back in listing order after.
        if opening && new_ids.len() >= READ_SNAPSHOT_FROM {
            let mut wanted: HashSet<&PackId, DigestKeyBuildHasher> = new_ids.drain(..).collect();
            new_ids.shrink_to_fit();
            self.load_pack_snapshot(&mut wanted).await?;
            new_ids = listed.iter().filter(|id| wanted.contains(id)).collect();
        }
        if opening && new_ids.len() >= WRITE_SNAPSHOT_FROM {
            // The next opening could read them from one object (a server
            // writes it: `keep_pack_snapshot`).
            self.pack_snapshot_wanted
                .store(true, std::sync::atomic::Ordering::Release);
        }
        // Each index joins the table as it arrives: a store of 100,000
        // packs never holds its decoded indexes all at once. (Oldest
        // first, about: the resemblance index keeps the newest.)
        let mut loaded = stream::iter(new_ids.into_iter().map(PackId::to_hex))
            .map(|id| async move {
                let got = self.get_optional(&index_path(&id)).await;
                let parsed = match got {
                    Ok(Some(data)) => decode_index(&id, &data),
                    Ok(None) => Err(StoreError::NotFound(format!("pack index {id}"))),
                    Err(e) => Err(e),
                };
                (id, parsed)
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((id, parsed)) = loaded.next().await {
            self.add_read_index(&id, parsed, opening)?;
        }
        Ok(())
    }

    /// Adds pack `id` to the table from its index as read: one that could
    /// not be read or does not parse leaves the pack invisible (logged);
    /// only an I/O error is the caller's. `opening`: the table cannot hold
    /// it yet (see [`PackTable::add_new_pack`]). Runs written meanwhile
    /// (opening a large store) are merged as they pile up, not after.
    pub(super) fn add_read_index(
        &self,
        id: &str,
        parsed: StoreResult<lpb::PackIndex>,
        opening: bool,
    ) -> StoreResult<()> {
        let added = {
            let mut table = self.table.write().expect("pack table");
            parsed.and_then(|index| {
                if opening {
                    table.add_new_pack(id, &index)
                } else {
                    table.add_pack(id, &index)
                }
            })
        };
        match added {
            Ok(()) => {}
            Err(StoreError::Io(e)) => return Err(StoreError::Io(e)),
            Err(e) => tracing::error!(pack = %id, error = %e, "pack left invisible"),
        }
        self.keep_table_merged();
        Ok(())
    }

    /// Merges the pack table's runs on local disk when they piled up, in
    /// the background (one merge at a time, then the next if one is due),
    /// so lookups never wait for a merge; without a runtime, here.
    pub(super) fn keep_table_merged(&self) {
        if !self.table.read().expect("pack table").merge_may_be_due() {
            return;
        }
        let Some(plan) = self.table.write().expect("pack table").merge_due() else {
            return;
        };
        let Some(me) = self.me.upgrade() else {
            let merged = plan.merge();
            self.table
                .write()
                .expect("pack table")
                .merge_done(plan, merged);
            return;
        };
        let work = move || {
            // A panic must not leave merging stopped for good.
            let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.merge()))
                .unwrap_or_else(|_| {
                    Err(std::io::Error::other("a merge of pack table runs panicked"))
                });
            me.table
                .write()
                .expect("pack table")
                .merge_done(plan, merged);
            me.keep_table_merged();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// The ids of the visible packs (those with an index) listed now,
    /// oldest index first.
    pub(super) async fn listed_packs(&self) -> StoreResult<Vec<PackId>> {
        // Filtered as the listing streams: the listing has two objects a
        // pack, each with its path and tag, and at a million packs
        // collecting it whole took about 400 MB (ids as 32 bytes, not
        // strings: 44 bytes a pack while sorting).
        let mut listed: Vec<_> = self
            .objects
            .list(Some(&PACKS.into()))
            .try_filter_map(|m| {
                let id = m
                    .location
                    .filename()
                    .and_then(|f| f.strip_suffix(".idx"))
                    .and_then(pack_id);
                std::future::ready(Ok(id.map(|id| (m.last_modified, id))))
            })
            .try_collect()
            .await
            .map_err(super::object_err)?;
        listed.sort_unstable();
        Ok(listed.into_iter().map(|(_, id)| id).collect())
    }

    /// Catches up on the pack journal for a lookup that missed: at most
    /// once per [`REFRESH_INTERVAL`] (a reader asking for chunks nobody
    /// has cannot make the server read the bucket in a loop), waiting for
    /// the next allowed time rather than failing (a chunk another replica
    /// just stored is found within that interval). Concurrent misses share
    /// one catching up.
    pub(super) async fn refresh_for_miss(&self) -> StoreResult<()> {
        let asked = Instant::now();
        let _one_at_a_time = self.refresh_gate.lock().await;
        let last = *self.last_refresh.lock().expect("refresh clock");
        if last.is_some_and(|t| t > asked) {
            // Another miss listed while this one waited.
            return Ok(());
        }
        let since = last.map(|t| t.elapsed());
        if let Some(since) = since {
            if since < REFRESH_INTERVAL {
                tokio::time::sleep(REFRESH_INTERVAL - since).await;
            }
        }
        *self.last_refresh.lock().expect("refresh clock") = Some(Instant::now());
        self.catch_up_packs().await
    }

    /// Frame locations of `digests`, catching up on the pack journal once
    /// if any is unknown (and listing packs in full if one still is and
    /// the last full listing was long enough ago); `NotFound` names the
    /// first chunk still missing.
    pub(super) async fn locate(
        &self,
        digests: &[B3Digest],
    ) -> StoreResult<Vec<Arc<FrameLocation>>> {
        let lookup = |table: &PackTable| -> Result<Vec<Arc<FrameLocation>>, B3Digest> {
            digests.iter().map(|d| table.locate(d).ok_or(*d)).collect()
        };
        let first = lookup(&self.table.read().expect("pack table"));
        match first {
            Ok(locs) => Ok(locs),
            Err(_) => {
                self.refresh_for_miss().await?;
                let second = lookup(&self.table.read().expect("pack table"));
                match second {
                    Ok(locs) => Ok(locs),
                    Err(_) => {
                        self.full_listing_for_miss().await?;
                        lookup(&self.table.read().expect("pack table"))
                            .map_err(|missing| StoreError::NotFound(format!("chunk {missing}")))
                    }
                }
            }
        }
    }

    /// Lists `packs/` in full for a lookup still missing after catching up
    /// (a pack whose journal entry is missing), at most every
    /// [`super::pack_journal::FULL_LISTING_EVERY`]; concurrent misses wait
    /// for the one listing rather than starting more.
    async fn full_listing_for_miss(&self) -> StoreResult<()> {
        let _one_at_a_time = self.refresh_gate.lock().await;
        let claimed = self
            .journal
            .lock()
            .expect("pack journal cursor")
            .claim_full_listing();
        if claimed {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Brings the table up to date after `gone` (packs it holds) vanished:
    /// catches up on the journal, and lists `packs/` in full if one of
    /// them is still in the table (its removal was not journaled).
    pub(super) async fn refresh_for_gone(&self, gone: &[&str]) -> StoreResult<()> {
        self.catch_up_packs().await?;
        let unexplained = {
            let table = self.table.read().expect("pack table");
            gone.iter().any(|id| table.has_pack(id))
        };
        if unexplained {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Brings the table up to date if a pack it holds any of `digests` in
    /// no longer exists (deleted by a garbage collection in another process
    /// or replica): one existence check per distinct pack.
    pub(super) async fn recheck_packs(&self, digests: &[B3Digest]) -> StoreResult<()> {
        let packs: HashSet<Arc<str>> = {
            let table = self.table.read().expect("pack table");
            digests
                .iter()
                .filter_map(|d| table.locate(d))
                .map(|l| l.pack.clone())
                .collect()
        };
        let gone: Vec<Arc<str>> = stream::iter(packs)
            .map(|p| async move {
                self.exists(&index_path(&p))
                    .await
                    .map(|e| (!e).then_some(p))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|gone| std::future::ready(Ok(gone)))
            .try_collect()
            .await?;
        if !gone.is_empty() {
            let gone: Vec<&str> = gone.iter().map(AsRef::as_ref).collect();
            self.refresh_for_gone(&gone).await?;
        }
        Ok(())
    }
}
