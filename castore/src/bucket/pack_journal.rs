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
//! before its last one began, so entries named by a clock a little behind
//! or stored a little late are still seen; the entries it applied since the
//! cursor are remembered by name and not read twice. Applying is
//! idempotent: a `+` whose index is gone by now adds nothing, a `-` of an
//! unknown pack removes nothing.
//!
//! The journal is an aid, never the truth: the full listing stays at
//! open, in maintenance, when a vanished pack is still in the table after
//! catching up, and for misses at most every [`FULL_LISTING_EVERY`], so a
//! pack whose entry is missing (a writer killed between index and entry,
//! a server of an older version, a clock far behind) is found all the same,
//! only later. Entries older than [`JOURNAL_KEEP`] are deleted by
//! compaction and GC; a replica whose cursor is older than half that lists
//! in full.

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

/// How far before its last listing of the journal a replica's next one
/// starts: a writer's clock may be [`CLOCK_SKEW`] behind, and an entry is
/// named before it is stored.
pub(super) const JOURNAL_LAG: Duration = Duration::from_secs(2 * CLOCK_SKEW.as_secs());
/// How long journal entries are kept.
pub(super) const JOURNAL_KEEP: Duration = Duration::from_secs(24 * 3600);
/// Shortest time between two full listings of `packs/` caused by lookups
/// that still miss after catching up.
pub(super) const FULL_LISTING_EVERY: Duration = Duration::from_secs(300);
/// Largest journal entry read (GC deletes at most a thousand packs per
/// entry, 66 KB); a larger one is taken as damage.
const MAX_ENTRY_BYTES: usize = 4 << 20;

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
    /// When the cursor was last moved.
    moved_at: Option<Instant>,
    /// When `packs/` was last listed in full.
    full_at: Option<Instant>,
    /// Entries from `from_ms` on already applied.
    applied: HashSet<String>,
}

impl JournalCursor {
    /// A full listing of `packs/` started at `began` (wall clock) and
    /// finished: the journal from a little before it on is still to read.
    pub(super) fn listed_in_full(&mut self, began: SystemTime) {
        self.from_ms = Some(millis(began).saturating_sub(JOURNAL_LAG.as_millis() as u64));
        self.moved_at = Some(Instant::now());
        self.full_at = Some(Instant::now());
        let from = self.from_ms.unwrap_or(0);
        self.applied
            .retain(|name| time_of(&name.as_str().into()).is_some_and(|t| t >= from));
    }

    /// Whether a lookup still missing after catching up may list `packs/`
    /// in full.
    pub(super) fn full_listing_allowed(&self) -> bool {
        self.full_at
            .is_none_or(|at| at.elapsed() >= FULL_LISTING_EVERY)
    }
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
    /// Records `changes` in the journal (after the objects changed).
    pub(super) async fn journal_packs(&self, changes: &[PackChange]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.put(&timestamped(PACK_JOURNAL), encode_entry(changes))
            .await
    }

    /// Applies the journal entries stored since this replica last caught
    /// up: packs other replicas wrote join the table, packs they deleted
    /// leave it. Lists `packs/` in full instead when the cursor is unset
    /// or so old that entries it needs may have been pruned.
    pub(super) async fn catch_up_packs(&self) -> StoreResult<()> {
        let _one_at_a_time = self.journal_gate.lock().await;
        let began = SystemTime::now();
        let (from_ms, stale) = {
            let cursor = self.journal.lock().expect("pack journal cursor");
            let stale = cursor
                .moved_at
                .is_none_or(|at| at.elapsed() >= JOURNAL_KEEP / 2);
            (cursor.from_ms, stale)
        };
        let Some(from_ms) = from_ms.filter(|_| !stale) else {
            return self.refresh().await;
        };
        let listed = self
            .list_prefix_after(PACK_JOURNAL, &timestamped_from(PACK_JOURNAL, from_ms))
            .await?;
        let mut names: Vec<String> = {
            let cursor = self.journal.lock().expect("pack journal cursor");
            listed
                .into_iter()
                .map(|m| m.location.to_string())
                .filter(|name| !cursor.applied.contains(name))
                .collect()
        };
        names.sort_unstable();
        // Entries read a few at a time, applied in the order they were made.
        let mut entries = stream::iter(names.iter().cloned())
            .map(|name| async move {
                let data = self.get_optional(&name.as_str().into()).await?;
                // One pruned meanwhile was older than any this needs.
                data.map_or(Ok(Vec::new()), |d| decode_entry(&name, &d))
            })
            .buffered(CONCURRENCY);
        let mut changes = Vec::new();
        while let Some(entry) = entries.next().await {
            match entry {
                Ok(c) => changes.extend(c),
                Err(StoreError::Corrupt(why)) => {
                    // What it said is lost: only a full listing knows.
                    tracing::warn!(%why, "damaged pack journal entry; listing packs in full");
                    return self.refresh().await;
                }
                Err(e) => return Err(e),
            }
        }
        drop(entries);
        self.apply_pack_changes(changes).await?;
        let mut cursor = self.journal.lock().expect("pack journal cursor");
        cursor.applied.extend(names);
        let next = millis(began).saturating_sub(JOURNAL_LAG.as_millis() as u64);
        cursor.from_ms = Some(next.max(cursor.from_ms.unwrap_or(0)));
        cursor.moved_at = Some(Instant::now());
        let from = cursor.from_ms.unwrap_or(0);
        cursor
            .applied
            .retain(|name| time_of(&name.as_str().into()).is_some_and(|t| t >= from));
        Ok(())
    }

    /// Applies `changes` in order; the indexes of added packs not yet
    /// known are read a few at a time as they come.
    async fn apply_pack_changes(&self, changes: Vec<PackChange>) -> StoreResult<()> {
        let mut fetched = stream::iter(changes)
            .map(|change| async move {
                let index = match &change {
                    PackChange::Added(id)
                        if !self.table.read().expect("pack table").has_pack(id) =>
                    {
                        Some(self.get_optional(&index_path(id)).await)
                    }
                    _ => None,
                };
                (change, index)
            })
            .buffered(CONCURRENCY);
        while let Some((change, index)) = fetched.next().await {
            match (change, index) {
                (PackChange::Removed(id), _) => {
                    self.table.write().expect("pack table").remove_pack(&id);
                }
                (PackChange::Added(_), None) => {}
                // Deleted since: its removal is in a later entry.
                (PackChange::Added(_), Some(Ok(None))) => {}
                (PackChange::Added(id), Some(Ok(Some(data)))) => {
                    let added = {
                        let mut table = self.table.write().expect("pack table");
                        decode_index(&id, &data).and_then(|index| table.add_pack(&id, &index))
                    };
                    match added {
                        Ok(()) => {}
                        Err(StoreError::Io(e)) => return Err(StoreError::Io(e)),
                        Err(e) => tracing::error!(pack = %id, error = %e, "pack left invisible"),
                    }
                }
                (PackChange::Added(_), Some(Err(e))) => return Err(e),
            }
            self.keep_table_merged();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
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
