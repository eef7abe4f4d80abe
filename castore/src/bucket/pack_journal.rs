//! The pack journal: which packs appeared and vanished lately, one small
//! object per change, so that a replica catches up on what others wrote
//! or deleted by listing a minute or two of journal instead of every pack.
//!
//! Why: a lookup that misses (a chunk another replica just stored, or one
//! nobody has, which any reader can ask for) and a pack that vanished
//! (compaction or GC elsewhere) used to re-list all of `packs/`, two
//! objects a pack: at a million packs some 150 MB of listing each time.
//!
//! `packlog/<ms>-<random>` holds lines `+<pack id>` (written after the
//! pack's index, so the pack is readable when its entry is seen) and
//! `-<pack id>` (written after the index was deleted). Each replica keeps a
//! cursor: where its next listing of the journal starts, [`JOURNAL_LAG`]
//! before the newest entry it listed (or before its last full listing
//! began), so entries named by a clock a little behind or stored a little
//! late are still seen; the entries since the cursor that it applied (or
//! wrote itself) are remembered by name and not read twice. Applying is
//! idempotent: a `+` whose index is gone by now adds nothing, a `-` of an
//! unknown pack removes nothing, and a `-` of a pack this replica wrote
//! since removes it only if its index is gone.
//!
//! The journal is an aid, never the truth: the full listing stays at
//! open, in maintenance, when a vanished pack is still in the table after
//! catching up, and for misses (or a damaged entry) at most every
//! [`FULL_LISTING_EVERY`], so a pack whose entry is missing (a writer
//! killed between index and entry, or that could not store it, a server of
//! an older version, a clock far behind) is found all the same, only
//! later. Entries older than [`JOURNAL_KEEP`] are deleted by compaction
//! and GC; a replica that has not caught up for half that lists in full.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::keys::{
    index_path, millis, time_of, timestamped, timestamped_from, CLOCK_SKEW, PACK_JOURNAL,
};
use super::packs::decode_index;
use super::{BucketStore, CONCURRENCY};
use crate::error::{StoreError, StoreResult};

/// How far before the newest entry it listed a replica's next listing of
/// the journal starts: a writer's clock may be [`CLOCK_SKEW`] behind, and
/// an entry is named before it is stored.
pub(super) const JOURNAL_LAG: Duration = Duration::from_secs(2 * CLOCK_SKEW.as_secs());
/// How long journal entries are kept: a replica that has not caught up
/// for half that lists `packs/` in full instead. Short, because a local
/// folder's listing walks every entry (S3's starts at the cursor).
pub(super) const JOURNAL_KEEP: Duration = Duration::from_secs(2 * 3600);
/// Shortest time between two full listings of `packs/` caused by lookups
/// that still miss after catching up.
pub(super) const FULL_LISTING_EVERY: Duration = Duration::from_secs(300);
/// Largest journal entry read (GC deletes at most a thousand packs per
/// entry, 66 KB); a larger one is taken as damage.
const MAX_ENTRY_BYTES: usize = 4 << 20;
/// Most entries one catching up reads; past that a full listing costs
/// fewer requests (a listing page holds 1,000 keys).
const MAX_CATCH_UP_ENTRIES: usize = 2_000;

/// One change a journal entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PackChange {
    /// The pack's index was written: the pack is readable.
    Added(String),
    /// The pack's index was deleted.
    Removed(String),
}

/// Where this replica's next catching up starts.
#[derive(Debug, Default)]
pub(super) struct JournalCursor {
    /// The journal time (ms) the next listing starts from; `None` before
    /// the first full listing.
    from_ms: Option<u64>,
    /// When this replica last caught up (or listed in full): entries it
    /// has not read are pruned only [`JOURNAL_KEEP`] after they were stored.
    caught_up_at: Option<Instant>,
    /// When the last full listing of `packs/` started (at open, in
    /// maintenance, or for a miss).
    full_at: Option<Instant>,
    /// Packs this replica wrote, with the journal time of their entry: a
    /// removal read later (another replica deleted the pack before this one
    /// wrote the same bytes again) is checked against the bucket.
    written_here: std::collections::HashMap<String, u64>,
    /// Entries from `from_ms` on already applied (or written here, or
    /// found damaged): never read again.
    applied: HashSet<String>,
}

impl JournalCursor {
    /// A full listing of `packs/` started at `began` (wall clock) and
    /// finished: the journal from a little before it on is still to read.
    /// (A clock of this machine's running ahead of the writers' by more
    /// than [`JOURNAL_LAG`] would skip their next entries: their packs are
    /// then found by full listings only.)
    /// `covered`: the journal entries listed just before it started.
    pub(super) fn listed_in_full(&mut self, began: SystemTime, covered: Vec<String>) {
        let from = cursor_at_full_listing(began);
        self.from_ms = Some(from);
        self.caught_up_at = Some(Instant::now());
        self.applied.extend(covered);
        self.forget_before(from);
    }

    /// A full listing of `packs/` starts now.
    pub(super) fn listing_in_full(&mut self) {
        self.full_at = Some(Instant::now());
    }

    /// Forgets what is older than the cursor `from`: entries, and packs
    /// written here.
    fn forget_before(&mut self, from: u64) {
        self.applied
            .retain(|name| time_of(&name.as_str().into()).is_none_or(|t| t >= from));
        self.written_here.retain(|_, at| *at >= from);
    }

    /// Takes the next full listing of `packs/` for a lookup still missing
    /// after catching up, if the last one started at least
    /// [`FULL_LISTING_EVERY`] ago; claimed before it starts, so misses
    /// meanwhile do not start more.
    pub(super) fn claim_full_listing(&mut self) -> bool {
        let allowed = self
            .full_at
            .is_none_or(|at| at.elapsed() >= FULL_LISTING_EVERY);
        if allowed {
            self.full_at = Some(Instant::now());
        }
        allowed
    }

    /// Whether catching up could miss entries: never listed, or not
    /// caught up for so long that entries may have been pruned unread.
    fn stale(&self) -> bool {
        self.from_ms.is_none()
            || self
                .caught_up_at
                .is_none_or(|at| at.elapsed() >= JOURNAL_KEEP / 2)
    }
}

/// Where catching up starts after a full listing that began at `began`.
fn cursor_at_full_listing(began: SystemTime) -> u64 {
    millis(began).saturating_sub(JOURNAL_LAG.as_millis() as u64)
}

/// The text of a journal entry.
pub(super) fn encode_entry(changes: &[PackChange]) -> Bytes {
    let mut text = String::with_capacity(changes.len() * 66);
    for change in changes {
        let (sign, id) = match change {
            PackChange::Added(id) => ('+', id),
            PackChange::Removed(id) => ('-', id),
        };
        text.push(sign);
        text.push_str(id);
        text.push('\n');
    }
    Bytes::from(text)
}

/// A journal entry's changes; anything but lines of a sign and a pack id
/// (64 lowercase hex digits) is damage.
pub(super) fn decode_entry(name: &str, data: &[u8]) -> StoreResult<Vec<PackChange>> {
    let damaged = |why: &str| StoreError::Corrupt(format!("pack journal entry {name}: {why}"));
    if data.len() > MAX_ENTRY_BYTES {
        return Err(damaged("too large"));
    }
    let text = std::str::from_utf8(data).map_err(|_| damaged("not text"))?;
    text.lines()
        .map(|line| {
            let (sign, id) = line
                .split_at_checked(1)
                .ok_or_else(|| damaged("empty line"))?;
            let is_id = id.len() == 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_id {
                return Err(damaged("not a pack id"));
            }
            match sign {
                "+" => Ok(PackChange::Added(id.to_string())),
                "-" => Ok(PackChange::Removed(id.to_string())),
                _ => Err(damaged("no sign")),
            }
        })
        .collect()
}

impl BucketStore {
    /// Records `changes` in the journal (after the objects changed). The
    /// journal is an aid: an entry that cannot be stored is logged, and
    /// other replicas find the change by a full listing, later.
    pub(super) async fn journal_packs(&self, changes: &[PackChange]) {
        if changes.is_empty() {
            return;
        }
        let name = timestamped(PACK_JOURNAL);
        match self.put(&name, encode_entry(changes)).await {
            // Its own entries this replica need not read back.
            Ok(()) => {
                let mut cursor = self.journal.lock().expect("pack journal cursor");
                let at = time_of(&name).unwrap_or(0);
                for change in changes {
                    if let PackChange::Added(id) = change {
                        cursor.written_here.insert(id.clone(), at);
                    }
                }
                cursor.applied.insert(name.to_string());
            }
            Err(e) => tracing::warn!(
                error = %e,
                changes = changes.len(),
                "cannot store a pack journal entry; other replicas see these packs later"
            ),
        }
    }

    /// The names of the journal entries a catching up after a full listing
    /// that begins at `began` would list.
    pub(super) async fn journal_entries_from(&self, began: SystemTime) -> StoreResult<Vec<String>> {
        Ok(self
            .journal_from(cursor_at_full_listing(began))
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .collect())
    }

    /// The journal entries named from time `from_ms` on.
    async fn journal_from(&self, from_ms: u64) -> StoreResult<Vec<object_store::ObjectMeta>> {
        self.list_prefix_after(PACK_JOURNAL, &timestamped_from(PACK_JOURNAL, from_ms))
            .await
    }

    /// Applies the journal entries stored since this replica last caught
    /// up: packs other replicas deleted leave the table, packs they wrote
    /// join it. Lists `packs/` in full instead when the cursor is unset or
    /// stale, or when more entries wait than a listing costs; a damaged
    /// entry is skipped, and listed in full for when allowed (see
    /// [`JournalCursor::claim_full_listing`]). One at a time, and never
    /// beside a full listing (whose picture of `packs/` predates it).
    pub(super) async fn catch_up_packs(&self) -> StoreResult<()> {
        let _one_at_a_time = self.journal_gate.lock().await;
        let began = SystemTime::now();
        let (from_ms, stale) = {
            let cursor = self.journal.lock().expect("pack journal cursor");
            (cursor.from_ms, cursor.stale())
        };
        let Some(from_ms) = from_ms.filter(|_| !stale) else {
            return self.refresh_locked().await;
        };
        let listed = self.journal_from(from_ms).await?;
        let listed_names: HashSet<String> = listed.iter().map(|m| m.location.to_string()).collect();
        let mut fresh: Vec<(String, u64)> = {
            let cursor = self.journal.lock().expect("pack journal cursor");
            listed
                .iter()
                .filter(|m| !cursor.applied.contains(m.location.as_ref()))
                .map(|m| (m.location.to_string(), m.size))
                .collect()
        };
        if fresh.len() > MAX_CATCH_UP_ENTRIES {
            // Fewer requests listing every pack than reading them all.
            return self.refresh_locked().await;
        }
        fresh.sort_unstable();
        let mut damaged = false;
        let mut changes = Vec::new();
        let mut entries = stream::iter(fresh.iter().cloned())
            .map(|(name, size)| async move {
                if size > MAX_ENTRY_BYTES as u64 {
                    return Err(StoreError::Corrupt(format!(
                        "pack journal entry {name}: too large"
                    )));
                }
                let data = self.get_optional(&name.as_str().into()).await?;
                // One pruned meanwhile was older than any this needs.
                data.map_or(Ok(Vec::new()), |d| decode_entry(&name, &d))
            })
            .buffered(CONCURRENCY);
        while let Some(entry) = entries.next().await {
            match entry {
                Ok(c) => changes.extend(c),
                Err(StoreError::Corrupt(why)) => {
                    // What it said is lost: only a full listing knows.
                    tracing::warn!(%why, "damaged pack journal entry skipped");
                    damaged = true;
                }
                Err(e) => return Err(e),
            }
        }
        drop(entries);
        self.apply_pack_changes(changes).await?;
        let full_due = {
            let mut cursor = self.journal.lock().expect("pack journal cursor");
            let now_ms = millis(began);
            // Entries gone from the journal are not kept in mind (those
            // this replica wrote while it listed are not listed yet).
            cursor.applied.retain(|name| {
                listed_names.contains(name)
                    || time_of(&name.as_str().into()).is_some_and(|t| t >= now_ms)
            });
            // The newest entry's own time, not this machine's clock, moves
            // the cursor on (a lag before it, for writers a little behind
            // it); names in the future beyond clock skew do not count.
            let newest = listed_names
                .iter()
                .filter_map(|name| time_of(&name.as_str().into()))
                .filter(|t| *t <= now_ms.saturating_add(CLOCK_SKEW.as_millis() as u64))
                .max();
            cursor
                .applied
                .extend(fresh.into_iter().map(|(name, _)| name));
            if let Some(newest) = newest {
                let next = newest
                    .min(now_ms)
                    .saturating_sub(JOURNAL_LAG.as_millis() as u64);
                let from = next.max(from_ms);
                cursor.from_ms = Some(from);
                cursor.forget_before(from);
            }
            cursor.caught_up_at = Some(Instant::now());
            damaged && cursor.claim_full_listing()
        };
        if full_due {
            self.refresh_locked().await?;
        }
        Ok(())
    }

    /// Applies `changes`: every removal first, then every addition whose
    /// index is still there (so `-X` then `+X`, a pack written again with
    /// the same bytes, and `+X` then `-X`, both end as the bucket is). The
    /// indexes of added packs not yet known are read a few at a time.
    async fn apply_pack_changes(&self, changes: Vec<PackChange>) -> StoreResult<()> {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for change in changes {
            match change {
                PackChange::Removed(id) => removed.push(id),
                PackChange::Added(id) => added.push(id),
            }
        }
        // A pack this replica wrote since may be the same bytes written
        // again after another replica deleted them: it goes only if its
        // index is gone.
        let rewritten: Vec<String> = {
            let cursor = self.journal.lock().expect("pack journal cursor");
            removed
                .iter()
                .filter(|id| cursor.written_here.contains_key(*id))
                .cloned()
                .collect()
        };
        let mut kept = HashSet::new();
        for id in rewritten {
            if self.exists(&index_path(&id)).await? {
                kept.insert(id);
            }
        }
        {
            let mut table = self.table.write().expect("pack table");
            for id in removed.iter().filter(|id| !kept.contains(*id)) {
                table.remove_pack(id);
            }
        }
        self.keep_table_merged();
        let mut seen = HashSet::new();
        added.retain(|id| seen.insert(id.clone()));
        added.retain(|id| !self.table.read().expect("pack table").has_pack(id));
        let mut fetched = stream::iter(added)
            .map(|id| async move { (self.get_optional(&index_path(&id)).await, id) })
            .buffered(CONCURRENCY);
        while let Some((index, id)) = fetched.next().await {
            // `None`: deleted since; its removal is in a later entry.
            let Some(data) = index? else { continue };
            self.add_read_index(&id, decode_index(&id, &data), false)?;
        }
        Ok(())
    }

    /// Deletes journal entries older than [`JOURNAL_KEEP`] (any process
    /// may: no replica reads that far back).
    pub(super) async fn prune_pack_journal(&self) -> StoreResult<u64> {
        let cutoff = SystemTime::now() - JOURNAL_KEEP;
        let (n, _) = self.sweep_prefix(PACK_JOURNAL, cutoff, |_| true).await?;
        Ok(n)
    }

    /// Lets the next lookup that misses list `packs/` in full at once, as
    /// if [`FULL_LISTING_EVERY`] had passed (for tests).
    #[cfg(any(test, feature = "testutil"))]
    pub fn allow_full_listing_now(&self) {
        self.journal.lock().expect("pack journal cursor").full_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[tokio::test]
    async fn a_store_without_a_journal_yet_catches_up_on_nothing() {
        // A store written by servers of an earlier version has no
        // `packlog/` at all.
        let (dir, store) = crate::testutil::temp_bucket().await;
        assert!(!dir.path().join(PACK_JOURNAL).exists());
        store
            .catch_up_packs()
            .await
            .expect("nothing to catch up on");
        let missing = store.locate(&[crate::digest::B3Digest::of(b"none")]).await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
    }

    #[test]
    fn entries_read_back_as_written() {
        let changes = vec![
            PackChange::Added(id(1)),
            PackChange::Removed(id(2)),
            PackChange::Added(id(3)),
        ];
        let text = encode_entry(&changes);
        assert_eq!(decode_entry("e", &text).unwrap(), changes);
        assert_eq!(decode_entry("e", b"").unwrap(), vec![]);
    }

    #[test]
    fn damaged_entries_are_refused() {
        for bad in [
            "+abc\n".to_string(),
            format!("*{}\n", id(1)),
            format!("+{}\n", id(0xab).to_uppercase()),
            format!("+{}/x\n", &id(1)[..62]),
            "\n".to_string(),
        ] {
            assert!(
                matches!(
                    decode_entry("e", bad.as_bytes()),
                    Err(StoreError::Corrupt(_))
                ),
                "{bad:?}"
            );
        }
        assert!(decode_entry("e", &[0xff, 0xfe]).is_err());
        let huge = format!("+{}\n", id(1)).repeat(MAX_ENTRY_BYTES / 66 + 1);
        assert!(decode_entry("e", huge.as_bytes()).is_err());
    }
}
