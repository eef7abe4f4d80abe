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
//!   the segments it does not include, in name order ([`Overlay`]);
//! - a snapshot is stored as a stream (see [`SNAPSHOT_MAGIC`]): a reader
//!   merges the segments' changes into it as it reads, so a listing holds
//!   the changes, not the catalog, whatever the store's size. Snapshots
//!   stored before that format (one protobuf message) are read whole;
//! - a process that reads many loose segments folds them into a new
//!   snapshot in the background;
//!   GC writes one from its full walk (which also rebuilds a lost catalog).
//!
//! The catalog is a listing aid, not the truth: a path is stored when its
//! PathInfo is. A name listed whose PathInfo is gone is not found on
//! lookup; GC's snapshot puts any drift right.
//! Object names and I/O: [`crate::bucket`] (`path_catalog`).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use lazix_proto::castore as cpb;
use lazix_proto::ext as lpb;
use prost::Message;

use crate::error::{StoreError, StoreResult};
use crate::nix::store_path::StorePath;
use crate::node::Node;
use crate::pathinfo::PathInfo;

/// Largest decoded snapshot of the older format read whole (about ten
/// million paths): a damaged object cannot make a reader allocate without
/// bound.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// What a snapshot stored as a stream starts with, once decoded. It is
/// followed by fields, each its length as a little-endian u32 and then its
/// bytes: a `lazix.v1.CatalogSnapshot` holding only the names of the
/// segments folded in ([`snapshot_head`]); one `lazix.v1.CatalogRecord`
/// per path, in listing order, without the digest its name carries
/// ([`snapshot_record`]); an empty field; then the number of records as a
/// little-endian u64, and the end. (A snapshot of the older format is one
/// `CatalogSnapshot`, whose encoding never starts with this byte.)
pub const SNAPSHOT_MAGIC: &[u8; 16] = b"LAZIX-CATALOG-2\n";

/// Largest head of a snapshot stored as a stream (the folded segments'
/// names: about a million).
pub const MAX_HEAD_BYTES: u32 = 64 << 20;

/// Largest record of a snapshot stored as a stream (a store path's name
/// and its root node: a symlink's target is the longest part).
pub const MAX_RECORD_BYTES: u32 = 1 << 20;

/// zstd level of snapshots: fast, since a writer folds every few dozen
/// segments (a snapshot of 100,000 paths is about 7 MB before
/// compression).
pub const SNAPSHOT_LEVEL: i32 = 3;

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

/// A catalog in memory: its entries in listing order, one per store path,
/// in one vector. Only what is bounded is held so (a run of an external
/// sort) or what cannot be streamed (a snapshot of the older format):
/// listings, folds and walks stream the catalog.
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

    /// Reads a snapshot of the older format (one `CatalogSnapshot`
    /// message, decoded from zstd by the caller, who bounds its size): the
    /// catalog and the segments it includes. Each stage's copy is dropped
    /// before the next is built.
    pub fn from_old_snapshot(decoded: &[u8]) -> StoreResult<(Self, Vec<String>)> {
        let lpb::CatalogSnapshot {
            folded,
            entries,
            nar_sizes,
        } = lpb::CatalogSnapshot::decode(decoded)
            .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?;
        let checked = entries_with_sizes(&entries, &nar_sizes)
            .map_err(|e| StoreError::Corrupt(format!("catalog snapshot: {e}")))?;
        drop((entries, nar_sizes));
        Ok((Self::from_entries(checked), folded))
    }

    /// Paths in the catalog.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether the catalog holds no path.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The entries in listing order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.sorted.iter()
    }

    /// A snapshot of the older format, decoded (tests show such snapshots
    /// still read; nothing writes them any more).
    #[cfg(any(test, feature = "testutil"))]
    pub fn old_snapshot(&self, folded: Vec<String>) -> Vec<u8> {
        lpb::CatalogSnapshot {
            folded,
            entries: self.sorted.iter().map(CatalogEntry::to_proto).collect(),
            nar_sizes: self.sorted.iter().map(|e| e.nar_size).collect(),
        }
        .encode_to_vec()
    }

    /// The entries, sorted by store path basename (the order `ls` shows),
    /// consuming the catalog.
    pub fn into_sorted(self) -> Vec<CatalogEntry> {
        self.sorted
    }
}

/// Changes read from loose segments, ready to be merged into a catalog
/// read in listing order: of two changes of one path the later wins, and a
/// path changed at all is dropped from what is read (its entry now, if
/// any, comes from the changes).
#[derive(Clone, Default, Debug)]
pub struct Overlay {
    changed: HashSet<[u8; 20]>,
    /// The entries the changes add, in listing order.
    added: std::collections::VecDeque<CatalogEntry>,
}

impl Overlay {
    /// The overlay of `changes`, given in the order they were made.
    pub fn of(changes: Changes) -> Self {
        let last: HashMap<[u8; 20], Option<CatalogEntry>> = changes.into_iter().collect();
        let changed = last.keys().copied().collect();
        let mut added: Vec<CatalogEntry> = last.into_values().flatten().collect();
        added.sort_unstable_by(listing_order);
        Self {
            changed,
            added: added.into(),
        }
    }

    /// Whether `entry`, read from a snapshot, is replaced or removed.
    pub fn replaces(&self, entry: &CatalogEntry) -> bool {
        self.changed.contains(entry.store_path.digest())
    }

    /// The next entry the changes add that comes before `next` in listing
    /// order (`None`: the end of what is read, so any), taken out.
    pub fn added_before(&mut self, next: Option<&CatalogEntry>) -> Option<CatalogEntry> {
        let first = self.added.front()?;
        match next {
            Some(next) if listing_order(first, next).is_gt() => None,
            _ => self.added.pop_front(),
        }
    }
}

/// `sorted` (entries in listing order, one per path: a snapshot's, a
/// sorted walk's) with `overlay` merged in, as a stream: the catalog now,
/// in listing order, holding nothing but the overlay and one entry.
pub fn merged(
    sorted: impl Stream<Item = StoreResult<CatalogEntry>> + Send + 'static,
    overlay: Overlay,
) -> BoxStream<'static, StoreResult<CatalogEntry>> {
    struct Merge {
        sorted: BoxStream<'static, StoreResult<CatalogEntry>>,
        overlay: Overlay,
        /// The next entry of `sorted` not replaced, read ahead.
        held: Option<CatalogEntry>,
        ended: bool,
    }
    let start = Merge {
        sorted: sorted.boxed(),
        overlay,
        held: None,
        ended: false,
    };
    futures::stream::unfold(Some(start), |state| async move {
        let mut m = state?;
        while m.held.is_none() && !m.ended {
            match m.sorted.next().await {
                Some(Ok(entry)) if !m.overlay.replaces(&entry) => m.held = Some(entry),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some((Err(e), None)),
                None => m.ended = true,
            }
        }
        let next = m
            .overlay
            .added_before(m.held.as_ref())
            .or_else(|| m.held.take())?;
        Some((Ok(next), Some(m)))
    })
    .boxed()
}

/// The head of a snapshot stored as a stream: the segments it includes
/// (refused over [`MAX_HEAD_BYTES`], which no reader would take).
pub fn snapshot_head(folded: Vec<String>) -> StoreResult<Vec<u8>> {
    let head = lpb::CatalogSnapshot {
        folded,
        ..Default::default()
    }
    .encode_to_vec();
    at_most(head, MAX_HEAD_BYTES, "a catalog snapshot's head")
}

/// The segments a snapshot's head says it includes.
pub fn folded_of_head(head: &[u8]) -> StoreResult<Vec<String>> {
    let head = lpb::CatalogSnapshot::decode(head)
        .map_err(|e| StoreError::Corrupt(format!("catalog snapshot head: {e}")))?;
    if !head.entries.is_empty() || !head.nar_sizes.is_empty() {
        return Err(StoreError::Corrupt(
            "catalog snapshot head: entries in the head".into(),
        ));
    }
    Ok(head.folded)
}

/// One path's record in a snapshot stored as a stream (or a sort's run),
/// refused over [`MAX_RECORD_BYTES`], which no reader would take.
pub fn snapshot_record(entry: &CatalogEntry) -> StoreResult<Vec<u8>> {
    let record = lpb::CatalogRecord {
        store_path_digest: Bytes::new(),
        entry: Some(entry.to_proto()),
        nar_size: entry.nar_size,
    }
    .encode_to_vec();
    at_most(record, MAX_RECORD_BYTES, "a catalog record")
}

/// `field`, unless it is longer than `max` (what a reader refuses).
fn at_most(field: Vec<u8>, max: u32, what: &str) -> StoreResult<Vec<u8>> {
    if field.len() > max as usize {
        return Err(crate::limits::over_limit(what, format!("{max} bytes")));
    }
    Ok(field)
}

/// Records of a snapshot (or a sort's run) read back in turn: each is
/// checked, and so is their order (listing order, one per path).
#[derive(Default, Debug)]
pub struct OrderedRecords {
    previous: Option<[u8; 20]>,
    read: u64,
}

impl OrderedRecords {
    /// The entry `record` holds, checked, and checked to follow the one
    /// before.
    pub fn entry(&mut self, record: &[u8]) -> StoreResult<CatalogEntry> {
        let corrupt =
            |what: String| StoreError::Corrupt(format!("catalog snapshot record: {what}"));
        let record = lpb::CatalogRecord::decode(record).map_err(|e| corrupt(e.to_string()))?;
        let entry = record
            .entry
            .as_ref()
            .ok_or_else(|| corrupt("no entry".into()))?;
        let entry =
            CatalogEntry::from_proto(entry, record.nar_size).map_err(|e| corrupt(e.to_string()))?;
        let digest = *entry.store_path.digest();
        if self
            .previous
            .is_some_and(|p| digest_order(&p, &digest).is_ge())
        {
            return Err(corrupt(format!("{} out of order", entry.store_path)));
        }
        self.previous = Some(digest);
        self.read += 1;
        Ok(entry)
    }

    /// Records read so far.
    pub fn read(&self) -> u64 {
        self.read
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
pub fn listing_order(a: &CatalogEntry, b: &CatalogEntry) -> std::cmp::Ordering {
    digest_order(a.store_path.digest(), b.store_path.digest())
}

/// [`listing_order`] of two paths' digests.
fn digest_order(a: &[u8; 20], b: &[u8; 20]) -> std::cmp::Ordering {
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

    /// A stored segment's changes applied, as a reader of one would.
    fn apply(catalog: &mut Catalog, stored_segment: &[u8]) -> StoreResult<()> {
        let changes = changes_of(stored_segment)?;
        *catalog = Catalog::from_entries(applied(std::mem::take(catalog), changes));
        Ok(())
    }

    /// `changes` merged into `catalog` as a listing does.
    fn applied(catalog: Catalog, changes: Changes) -> Vec<CatalogEntry> {
        let sorted = futures::stream::iter(catalog.into_sorted().into_iter().map(Ok));
        futures::executor::block_on(merged(sorted, Overlay::of(changes)).collect::<Vec<_>>())
            .into_iter()
            .collect::<StoreResult<_>>()
            .expect("merged")
    }

    use crate::testutil::catalog_entry as entry;

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
        let mut changes = changes_of(&first).unwrap();
        changes.extend(changes_of(&second).unwrap());
        let at_once = applied(start(), changes);
        let mut expected = vec![entry(1), entry(2), entry(5)];
        expected.sort_by_key(|e| e.store_path.basename());
        assert_eq!(one_by_one.into_sorted(), expected);
        assert_eq!(at_once, expected);
    }

    #[test]
    fn segments_apply_in_order_on_a_snapshot() {
        let snap = Catalog::from_entries([entry(1), entry(2)]).old_snapshot(vec!["s0".into()]);
        let (mut catalog, folded) = Catalog::from_old_snapshot(&snap).expect("read back");
        assert_eq!(folded, vec!["s0".to_string()]);
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
        assert!(Catalog::from_old_snapshot(b"\xff\xff\xff").is_err());
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

    /// A snapshot's records read back in turn, as a reader does.
    fn read_records(records: &[Vec<u8>]) -> StoreResult<Vec<CatalogEntry>> {
        let mut reading = OrderedRecords::default();
        records.iter().map(|record| reading.entry(record)).collect()
    }

    #[test]
    fn changes_merged_into_a_snapshot_as_read_end_as_made_one_by_one() {
        let base = Catalog::from_entries((1..=9).filter(|i| i % 2 == 1).map(entry));
        let mut newer = entry(3);
        newer.nar_size = 7;
        let changes = || -> Changes {
            vec![
                (*entry(0).store_path.digest(), Some(entry(0))),
                (*entry(3).store_path.digest(), None),
                (*entry(4).store_path.digest(), Some(entry(4))),
                (*entry(3).store_path.digest(), Some(newer.clone())),
                (*entry(9).store_path.digest(), None),
                (*entry(12).store_path.digest(), Some(entry(12))),
                (*entry(12).store_path.digest(), None),
                (*entry(20).store_path.digest(), Some(entry(20))),
            ]
        };
        let records: Vec<Vec<u8>> = base.iter().map(|e| snapshot_record(e).unwrap()).collect();
        let read = Catalog::from_entries(read_records(&records).expect("records"));
        let streamed = applied(read, changes());
        // The model: each change made in turn to a map.
        let mut model: HashMap<[u8; 20], CatalogEntry> = base
            .into_sorted()
            .into_iter()
            .map(|e| (*e.store_path.digest(), e))
            .collect();
        for (digest, change) in changes() {
            match change {
                Some(entry) => model.insert(digest, entry),
                None => model.remove(&digest),
            };
        }
        let mut expected: Vec<CatalogEntry> = model.into_values().collect();
        expected.sort_by_key(|e| e.store_path.basename());
        assert_eq!(streamed, expected);
        let mut names: Vec<String> = streamed.iter().map(|e| e.store_path.basename()).collect();
        names.sort();
        let mut expected: Vec<String> = [0, 1, 3, 4, 5, 7, 20]
            .map(|i| entry(i).store_path.basename())
            .to_vec();
        expected.sort();
        assert_eq!(names, expected);
        assert!(streamed.contains(&newer));
    }

    #[test]
    fn snapshot_records_out_of_order_twice_or_damaged_are_refused() {
        let sorted = Catalog::from_entries([entry(1), entry(2), entry(3)]).into_sorted();
        let records: Vec<Vec<u8>> = sorted.iter().map(|e| snapshot_record(e).unwrap()).collect();
        assert_eq!(read_records(&records).expect("in order"), sorted);
        let swapped = vec![records[1].clone(), records[0].clone()];
        assert!(read_records(&swapped).is_err());
        let twice = vec![records[0].clone(), records[0].clone()];
        assert!(read_records(&twice).is_err());
        // No entry; a name that is no store path; not protobuf.
        let empty = lpb::CatalogRecord::default().encode_to_vec();
        assert!(read_records(&[empty]).is_err());
        let bad = lpb::CatalogRecord {
            entry: Some(entry(1).node.to_entry(Bytes::from_static(b"../etc"))),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(read_records(&[bad]).is_err());
        assert!(read_records(&[b"\xff\xff\xff".to_vec()]).is_err());
    }

    #[test]
    fn a_snapshot_head_holds_the_folded_names_and_nothing_else() {
        let head = snapshot_head(vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(folded_of_head(&head).expect("head"), vec!["a", "b"]);
        let old = Catalog::from_entries([entry(1)]).old_snapshot(vec!["a".into()]);
        assert!(folded_of_head(&old).is_err());
        // An old snapshot never starts as a new one does.
        assert!(!old.starts_with(&SNAPSHOT_MAGIC[..1]));
        assert!(!Catalog::default()
            .old_snapshot(vec![])
            .starts_with(&SNAPSHOT_MAGIC[..1]));
    }
}
