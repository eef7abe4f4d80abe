//! The catalog of store paths: what a listing of the store's root needs
//! (each path's name and root node), kept apart from the PathInfos so that
//! listing a store of a million paths reads a few objects instead of a
//! million. This module holds the format and its rules, with no I/O:
//!
//! - a writer records each change (a path added or removed) in a small
//!   *segment*; segments are immutable and named by time, so replicas
//!   writing at once never overwrite each other;
//! - a *snapshot* is the catalog at some moment plus the names of the
//!   segments it includes; a reader takes the newest snapshot and applies
//!   the segments it does not include, in name order;
//! - a process that reads many loose segments folds them into a new
//!   snapshot in the background;
//!   GC writes one from its full walk (which also rebuilds a lost catalog).
//!
//! The catalog is a listing aid, not the truth: a path is stored when its
//! PathInfo is. A name listed whose PathInfo is gone is not found on
//! lookup; GC's snapshot puts any drift right.
//! Object names and I/O: [`crate::bucket`] (`path_catalog`).

use std::collections::{HashMap, HashSet};
use std::io::Read;

use bytes::Bytes;
use lazix_proto::castore as cpb;
use lazix_proto::ext as lpb;
use prost::Message;

use crate::error::{StoreError, StoreResult};
use crate::nix::store_path::StorePath;
use crate::node::Node;
use crate::pathinfo::PathInfo;

/// Largest decoded snapshot read (about ten million paths): a damaged
/// object cannot make a reader allocate without bound.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// zstd level of snapshots: fast, since a writer folds every few dozen
/// segments (a snapshot of 100,000 paths is about 7 MB before
/// compression).
const SNAPSHOT_LEVEL: i32 = 3;

/// One store path as a listing of the store's root shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The store path.
    pub store_path: StorePath,
    /// Its root node.
    pub node: Node,
    /// Its NAR's size (for counts such as `lazix stats`).
    pub nar_size: u64,
}

impl CatalogEntry {
    /// The entry of a stored path.
    pub fn of(info: &PathInfo) -> Self {
        Self {
            store_path: info.store_path.clone(),
            node: info.node.clone(),
            nar_size: info.nar_size,
        }
    }

    /// As a castore entry named by the store path's basename.
    pub fn to_proto(&self) -> cpb::Entry {
        self.node.to_entry(Bytes::from(self.store_path.basename()))
    }

    /// Checks a castore entry (node, and a name that is a store path's
    /// basename) and returns it as an entry of NAR size `nar_size`.
    pub fn from_proto(entry: &cpb::Entry, nar_size: u64) -> StoreResult<Self> {
        let (name, node) = Node::from_entry(entry)?;
        let name = std::str::from_utf8(&name)
            .map_err(|_| StoreError::Invalid("catalog entry name is not UTF-8".into()))?;
        let store_path = StorePath::from_basename(name)
            .map_err(|e| StoreError::Invalid(format!("catalog entry {name:?}: {e}")))?;
        Ok(Self {
            store_path,
            node,
            nar_size,
        })
    }
}

/// A record of one change: `entry` is `Some` for a path added, `None` for
/// a path removed.
pub fn record(digest: &[u8; 20], entry: Option<&CatalogEntry>) -> lpb::CatalogRecord {
    lpb::CatalogRecord {
        store_path_digest: Bytes::copy_from_slice(digest),
        entry: entry.map(CatalogEntry::to_proto),
        nar_size: entry.map_or(0, |e| e.nar_size),
    }
}

/// The catalog as a reader assembles it: its entries in listing order,
/// one per store path, in one vector (a map beside it would cost a second
/// copy of a catalog that a server holds while it answers a listing).
#[derive(Default, Debug)]
pub struct Catalog {
    sorted: Vec<CatalogEntry>,
}

/// Changes read from segments, in order: a store path's digest and the
/// entry it has now (`None`: removed).
pub type Changes = Vec<([u8; 20], Option<CatalogEntry>)>;

impl Catalog {
    /// A catalog holding `entries` (of two for one store path, the later).
    pub fn from_entries(entries: impl IntoIterator<Item = CatalogEntry>) -> Self {
        let mut sorted: Vec<CatalogEntry> = entries.into_iter().collect();
        // A snapshot is stored in order: checked, not sorted again.
        if !sorted.is_sorted_by(|a, b| listing_order(a, b).is_lt()) {
            // Stable: of two entries for one path, the later stays after.
            sorted.sort_by(listing_order);
            sorted.dedup_by(|later, kept| {
                let same = later.store_path.digest() == kept.store_path.digest();
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Self { sorted }
    }

    /// Reads a stored snapshot: the catalog and the segments it includes.
    /// Each stage's copy is dropped before the next is built: at a million
    /// paths a copy is about 150 MB, and a server's listing peak is the
    /// sum of those held at once.
    pub fn from_snapshot(stored: &[u8]) -> StoreResult<(Self, HashSet<String>)> {
        let snapshot = {
            let mut decoded = Vec::new();
            zstd::Decoder::new(stored)
                .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?
                .take(MAX_SNAPSHOT_BYTES + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?;
            if decoded.len() as u64 > MAX_SNAPSHOT_BYTES {
                return Err(crate::limits::over_limit(
                    "a catalog snapshot",
                    format!("{MAX_SNAPSHOT_BYTES} bytes"),
                ));
            }
            lpb::CatalogSnapshot::decode(decoded.as_slice())
                .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?
        };
        let lpb::CatalogSnapshot {
            folded,
            entries,
            nar_sizes,
        } = snapshot;
        let checked = entries_with_sizes(&entries, &nar_sizes)
            .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?;
        drop((entries, nar_sizes));
        Ok((Self::from_entries(checked), folded.into_iter().collect()))
    }

    /// Applies changes (of several segments at once: one pass over the
    /// catalog), the later of two for one path winning.
    pub fn apply_changes(&mut self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let last: HashMap<[u8; 20], Option<CatalogEntry>> = changes.into_iter().collect();
        self.sorted
            .retain(|e| !last.contains_key(e.store_path.digest()));
        let added: Vec<CatalogEntry> = last.into_values().flatten().collect();
        if added.is_empty() {
            return;
        }
        // Unstable (digests are distinct now): a stable sort would take
        // scratch space of half the catalog, at every listing that finds
        // paths added in loose segments.
        self.sorted.reserve_exact(added.len());
        self.sorted.extend(added);
        self.sorted.sort_unstable_by(listing_order);
    }

    /// Paths in the catalog.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether the catalog holds no path.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The snapshot to store: these entries, including the segments
    /// `folded`.
    pub fn snapshot(&self, folded: Vec<String>) -> StoreResult<Bytes> {
        let snapshot = lpb::CatalogSnapshot {
            folded,
            entries: self.sorted.iter().map(CatalogEntry::to_proto).collect(),
            nar_sizes: self.sorted.iter().map(|e| e.nar_size).collect(),
        };
        let encoded = snapshot.encode_to_vec();
        drop(snapshot);
        let compressed = zstd::bulk::compress(&encoded, SNAPSHOT_LEVEL)?;
        Ok(Bytes::from(compressed))
    }

    /// The entries, sorted by store path basename (the order `ls` shows),
    /// consuming the catalog.
    pub fn into_sorted(self) -> Vec<CatalogEntry> {
        self.sorted
    }
}

/// The changes a stored segment records, in order, each checked.
pub fn changes_of(stored_segment: &[u8]) -> StoreResult<Changes> {
    let segment = lpb::CatalogSegment::decode(stored_segment)
        .map_err(|e| StoreError::Corrupt(format!("catalog segment: {e}")))?;
    segment.records.iter().map(change).collect()
}

/// The order of a listing: by basename, which is the order of the hash
/// parts (all 32 characters, distinct within a catalog), which is the
/// order of the digests read from their last byte: nixbase32 writes the
/// digest's 5-bit groups from the most significant of it read as a
/// little-endian number, in an alphabet in ASCII order. Compared without
/// making a string per entry (a million of them at a million paths).
fn listing_order(a: &CatalogEntry, b: &CatalogEntry) -> std::cmp::Ordering {
    let (a, b) = (a.store_path.digest(), b.store_path.digest());
    a.iter().rev().cmp(b.iter().rev())
}

/// Entries sent or stored beside their NAR sizes (`sizes[i]` is
/// `entries[i]`'s), each checked: the lists must be as long as each other.
pub fn entries_with_sizes(entries: &[cpb::Entry], sizes: &[u64]) -> StoreResult<Vec<CatalogEntry>> {
    if entries.len() != sizes.len() {
        return Err(StoreError::Invalid(format!(
            "{} catalog entries with {} NAR sizes",
            entries.len(),
            sizes.len()
        )));
    }
    entries
        .iter()
        .zip(sizes)
        .map(|(e, size)| CatalogEntry::from_proto(e, *size))
        .collect()
}

/// A record read back and checked: the digest it is filed under, and the
/// entry it adds (none: removed).
fn change(r: &lpb::CatalogRecord) -> StoreResult<([u8; 20], Option<CatalogEntry>)> {
    let digest: [u8; 20] = r
        .store_path_digest
        .as_ref()
        .try_into()
        .map_err(|_| StoreError::Corrupt("catalog record: digest is not 20 bytes".into()))?;
    let Some(entry) = &r.entry else {
        return Ok((digest, None));
    };
    let entry = CatalogEntry::from_proto(entry, r.nar_size)
        .map_err(|e| StoreError::Corrupt(format!("catalog record: {e}")))?;
    if *entry.store_path.digest() != digest {
        return Err(StoreError::Corrupt(format!(
            "catalog record: {} filed under another digest",
            entry.store_path
        )));
    }
    Ok((digest, Some(entry)))
}

/// A stored segment of `records`.
pub fn segment(records: Vec<lpb::CatalogRecord>) -> Bytes {
    Bytes::from(lpb::CatalogSegment { records }.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::B3Digest;

    /// A stored segment's changes applied, as a reader of one would.
    fn apply(catalog: &mut Catalog, stored_segment: &[u8]) -> StoreResult<()> {
        catalog.apply_changes(changes_of(stored_segment)?);
        Ok(())
    }

    fn entry(i: u8) -> CatalogEntry {
        let mut digest = [0u8; 20];
        digest[0] = i;
        CatalogEntry {
            store_path: StorePath::from_parts(digest, &format!("p{i}")).expect("path"),
            node: Node::File {
                digest: B3Digest::of(&[i]),
                size: 1,
                executable: false,
            },
            nar_size: 100 + i as u64,
        }
    }

    #[test]
    fn changes_of_several_segments_applied_at_once_end_as_applied_one_by_one() {
        let first = segment(vec![
            record(entry(1).store_path.digest(), None),
            record(entry(4).store_path.digest(), Some(&entry(4))),
        ]);
        let second = segment(vec![
            record(entry(1).store_path.digest(), Some(&entry(1))),
            record(entry(4).store_path.digest(), None),
            record(entry(5).store_path.digest(), Some(&entry(5))),
        ]);
        let start = || Catalog::from_entries([entry(1), entry(2)]);
        let mut one_by_one = start();
        apply(&mut one_by_one, &first).unwrap();
        apply(&mut one_by_one, &second).unwrap();
        let mut at_once = start();
        let mut changes = changes_of(&first).unwrap();
        changes.extend(changes_of(&second).unwrap());
        at_once.apply_changes(changes);
        let mut expected = vec![entry(1), entry(2), entry(5)];
        expected.sort_by_key(|e| e.store_path.basename());
        assert_eq!(one_by_one.into_sorted(), expected);
        assert_eq!(at_once.into_sorted(), expected);
    }

    #[test]
    fn segments_apply_in_order_on_a_snapshot() {
        let snap = Catalog::from_entries([entry(1), entry(2)])
            .snapshot(vec!["s0".into()])
            .expect("snapshot");
        let (mut catalog, folded) = Catalog::from_snapshot(&snap).expect("read back");
        assert_eq!(folded, HashSet::from(["s0".to_string()]));
        apply(
            &mut catalog,
            &segment(vec![
                record(entry(3).store_path.digest(), Some(&entry(3))),
                record(entry(1).store_path.digest(), None),
            ]),
        )
        .expect("apply");
        // Removed then added again later: present.
        apply(
            &mut catalog,
            &segment(vec![
                record(entry(1).store_path.digest(), None),
                record(entry(1).store_path.digest(), Some(&entry(1))),
                record(entry(2).store_path.digest(), None),
            ]),
        )
        .expect("apply");
        assert_eq!(catalog.into_sorted(), vec![entry(1), entry(3)]);
    }

    #[test]
    fn damaged_objects_are_refused_with_an_error() {
        assert!(Catalog::from_snapshot(b"not zstd").is_err());
        let mut c = Catalog::default();
        assert!(apply(&mut c, b"\xff\xff\xff").is_err());
        // A record filed under another path's digest.
        let wrong = segment(vec![
            record(entry(2).store_path.digest(), Some(&entry(2))),
            record(&[9; 20], Some(&entry(1))),
        ]);
        assert!(apply(&mut c, &wrong).is_err());
        // A name that is no store path.
        let bad = lpb::CatalogRecord {
            store_path_digest: Bytes::copy_from_slice(&[1; 20]),
            entry: Some(entry(1).node.to_entry(Bytes::from_static(b"../etc"))),
            nar_size: 1,
        };
        assert!(apply(&mut c, &segment(vec![bad])).is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn entries_out_of_order_are_sorted_and_the_later_of_two_kept() {
        let mut newer = entry(3);
        newer.nar_size = 999;
        let catalog = Catalog::from_entries([entry(3), entry(1), entry(2), newer.clone()]);
        assert_eq!(catalog.len(), 3);
        let mut expected = vec![entry(1), entry(2), newer.clone()];
        expected.sort_by_key(|e| e.store_path.basename());
        assert_eq!(catalog.into_sorted(), expected);
        // In order but for one path twice, back to back: the later stays.
        let twice = Catalog::from_entries([entry(3), newer.clone()]);
        assert_eq!(twice.into_sorted(), vec![newer]);
    }

    #[test]
    fn listing_order_is_the_order_of_basenames() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut entries: Vec<CatalogEntry> = (0..500)
            .map(|i| {
                let mut e = entry(0);
                let mut digest = [0u8; 20];
                for b in digest.iter_mut() {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *b = (state >> 56) as u8;
                }
                // Runs of equal leading bytes too, where the order is decided late.
                digest[19] = (i % 3) as u8;
                digest[18] = (i % 2) as u8;
                e.store_path =
                    StorePath::from_parts(digest, &format!("n{}", 500 - i)).expect("path");
                e
            })
            .collect();
        let mut by_basename = entries.clone();
        by_basename.sort_by_key(|e| e.store_path.basename());
        entries.sort_unstable_by(listing_order);
        assert_eq!(entries, by_basename);
    }

    #[test]
    fn entries_sent_with_their_sizes_are_checked() {
        let good = [entry(1).to_proto(), entry(2).to_proto()];
        assert_eq!(
            entries_with_sizes(&good, &[101, 102]).expect("good"),
            vec![entry(1), entry(2)]
        );
        // One size short, one too many, none at all.
        assert!(entries_with_sizes(&good, &[101]).is_err());
        assert!(entries_with_sizes(&good, &[101, 102, 103]).is_err());
        assert!(entries_with_sizes(&good, &[]).is_err());
        // A name that is no store path, an entry without a node.
        let named = entry(1).node.to_entry(Bytes::from_static(b"x/../y"));
        assert!(entries_with_sizes(&[named], &[1]).is_err());
        assert!(entries_with_sizes(&[cpb::Entry { entry: None }], &[1]).is_err());
    }
}
