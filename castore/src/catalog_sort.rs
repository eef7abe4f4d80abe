//! An external sort of catalog entries, for the walks of every PathInfo
//! that make the catalog anew (GC's, a lost catalog's rebuild): a walk
//! comes in no useful order, and the catalog of a store of millions of
//! paths must not be held in memory to sort it. Entries are sorted in
//! memory in runs of a bounded length, each written to an anonymous
//! temporary file (gone with the process, even a killed one), and the runs
//! are merged as they are read back, as often as needed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::catalog::{
    listing_order, snapshot_record, Catalog, CatalogEntry, OrderedRecords, MAX_RECORD_BYTES,
};
use crate::error::StoreResult;
use crate::framing::{read_field, write_field};

/// Entries sorted in memory before they are written to a run: about
/// 15 MB of entries.
pub const RUN_ENTRIES: usize = 1 << 16;

/// Entries being sorted.
pub struct CatalogSorter {
    run_entries: usize,
    buffer: Vec<CatalogEntry>,
    runs: Vec<Arc<File>>,
}

impl CatalogSorter {
    /// A sorter writing runs of `run_entries` (at least one).
    pub fn new(run_entries: usize) -> Self {
        Self {
            run_entries: run_entries.max(1),
            buffer: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Adds an entry; of two for one path, the one added later is kept.
    pub fn push(&mut self, entry: CatalogEntry) -> StoreResult<()> {
        self.buffer.push(entry);
        if self.buffer.len() >= self.run_entries {
            self.spill()?;
        }
        Ok(())
    }

    /// Every entry added, sorted, to be read as often as needed.
    pub fn finish(mut self) -> StoreResult<SortedRuns> {
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        Ok(SortedRuns { runs: self.runs })
    }

    /// Writes the entries in memory to a run, sorted.
    fn spill(&mut self) -> StoreResult<()> {
        let sorted = Catalog::from_entries(std::mem::take(&mut self.buffer)).into_sorted();
        let mut out = BufWriter::new(tempfile::tempfile()?);
        for entry in &sorted {
            write_field(&mut out, &snapshot_record(entry)?)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        self.runs.push(Arc::new(file));
        Ok(())
    }
}

/// Runs written by a [`CatalogSorter`].
pub struct SortedRuns {
    runs: Vec<Arc<File>>,
}

impl SortedRuns {
    /// A pass over every entry in listing order, one per path (passes
    /// read at their own offsets: several may run at once).
    pub fn pass(&self) -> StoreResult<SortedPass> {
        let mut heads = BinaryHeap::with_capacity(self.runs.len());
        let mut readers = Vec::with_capacity(self.runs.len());
        for (run, file) in self.runs.iter().enumerate() {
            let mut reader = RunReader {
                file: BufReader::new(FileFrom {
                    file: file.clone(),
                    at: 0,
                }),
                records: OrderedRecords::default(),
            };
            if let Some(entry) = reader.next()? {
                heads.push(Head { entry, run });
            }
            readers.push(reader);
        }
        Ok(SortedPass {
            readers,
            heads,
            last: None,
        })
    }
}

/// One pass over sorted runs: an iterator of entries in listing order.
pub struct SortedPass {
    readers: Vec<RunReader>,
    heads: BinaryHeap<Head>,
    /// The digest of the entry given last (later runs' entries for one
    /// path come first; the others are skipped).
    last: Option<[u8; 20]>,
}

impl SortedPass {
    fn next_entry(&mut self) -> StoreResult<Option<CatalogEntry>> {
        while let Some(Head { entry, run }) = self.heads.pop() {
            if let Some(next) = self.readers[run].next()? {
                self.heads.push(Head { entry: next, run });
            }
            let digest = *entry.store_path.digest();
            if self.last == Some(digest) {
                continue;
            }
            self.last = Some(digest);
            return Ok(Some(entry));
        }
        Ok(None)
    }
}

impl Iterator for SortedPass {
    type Item = StoreResult<CatalogEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                // Ends the pass.
                self.heads.clear();
                Some(Err(e))
            }
        }
    }
}

/// A run being read back, checked to be in order.
struct RunReader {
    file: BufReader<FileFrom>,
    records: OrderedRecords,
}

impl RunReader {
    fn next(&mut self) -> StoreResult<Option<CatalogEntry>> {
        match read_field(&mut self.file, MAX_RECORD_BYTES)? {
            Some(record) => self.records.entry(&record).map(Some),
            None => Ok(None),
        }
    }
}

/// A file read from an offset of its own (no shared file position).
struct FileFrom {
    file: Arc<File>,
    at: u64,
}

impl Read for FileFrom {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A run's next entry, ordered for a max-heap: first in listing order
/// first, and for one path the later run's first.
struct Head {
    entry: CatalogEntry,
    run: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        listing_order(&other.entry, &self.entry).then(self.run.cmp(&other.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::B3Digest;
    use crate::nix::store_path::StorePath;
    use crate::node::Node;

    fn entry(i: u32, size: u64) -> CatalogEntry {
        let mut digest = [0u8; 20];
        // Spread over the listing order (its last bytes count first).
        digest[16..].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        digest[..4].copy_from_slice(&i.to_le_bytes());
        CatalogEntry {
            store_path: StorePath::from_parts(digest, &format!("p{i}")).expect("path"),
            node: Node::File {
                digest: B3Digest::of(&i.to_le_bytes()),
                size: 1,
                executable: false,
            },
            nar_size: size,
        }
    }

    #[test]
    fn entries_come_back_sorted_across_runs_the_later_of_two_kept() {
        let mut sorter = CatalogSorter::new(7);
        for i in 0..100 {
            sorter.push(entry(i, 1)).unwrap();
        }
        // Paths added again later, in other runs: the latest entry wins.
        for size in [5, 4, 3, 2] {
            for i in [3, 50, 99] {
                sorter.push(entry(i, size)).unwrap();
            }
        }
        let runs = sorter.finish().unwrap();
        let mut expected: Vec<CatalogEntry> = (0..100)
            .map(|i| entry(i, if [3, 50, 99].contains(&i) { 2 } else { 1 }))
            .collect();
        expected.sort_by_key(|e| e.store_path.basename());
        let first: Vec<CatalogEntry> = runs.pass().unwrap().collect::<StoreResult<_>>().unwrap();
        assert_eq!(first, expected);
        // Two more passes at once read the same.
        let (mut a, mut b) = (runs.pass().unwrap(), runs.pass().unwrap());
        for want in &expected {
            assert_eq!(&a.next().unwrap().unwrap(), want);
            assert_eq!(&b.next().unwrap().unwrap(), want);
        }
        assert!(a.next().is_none() && b.next().is_none());
    }

    #[test]
    fn nothing_added_reads_as_nothing() {
        let runs = CatalogSorter::new(RUN_ENTRIES).finish().unwrap();
        assert_eq!(runs.pass().unwrap().count(), 0);
    }
}
