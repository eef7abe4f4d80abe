//! Snapshots of the catalog of store paths (format:
//! [`crate::catalog::SNAPSHOT_MAGIC`]) written and read as streams
//! ([`super::record_file`]): a fold writes the snapshot it read with the
//! loose segments merged in while it reads, and a listing sends entries
//! as they are decoded, so neither holds the catalog. A snapshot of the
//! older format (one message) is still read, whole.

use std::collections::HashSet;

use futures::stream::{BoxStream, Stream, StreamExt};
use object_store::path::Path as ObjectPath;

use super::record_file::{RecordReader, RecordWriter};
use super::BucketStore;
use crate::catalog::{
    entry_of_snapshot_record, folded_of_head, merged, snapshot_head, snapshot_record, Catalog,
    CatalogEntry, Overlay, MAX_HEAD_BYTES, MAX_RECORD_BYTES, MAX_SNAPSHOT_BYTES, SNAPSHOT_LEVEL,
    SNAPSHOT_MAGIC,
};
use crate::error::{StoreError, StoreResult};

/// Records compressed between two hand-overs to the upload.
const FLUSH_EVERY: u64 = 4096;

/// A snapshot's entries, read in listing order.
pub(super) enum SnapshotEntries {
    /// A snapshot stored as a stream, being decoded.
    Streamed {
        file: RecordReader,
        /// Records read so far, and the last one's digest.
        read: u64,
        previous: Option<[u8; 20]>,
        ended: bool,
    },
    /// A snapshot of the older format, read whole.
    Whole(std::vec::IntoIter<CatalogEntry>),
}

impl SnapshotEntries {
    /// The next entry, checked; `None` once the snapshot's end is read
    /// and found whole.
    pub(super) async fn next(&mut self) -> StoreResult<Option<CatalogEntry>> {
        let (file, read, previous, ended) = match self {
            Self::Whole(entries) => return Ok(entries.next()),
            Self::Streamed {
                file,
                read,
                previous,
                ended,
            } => (file, read, previous, ended),
        };
        if *ended {
            return Ok(None);
        }
        let record = file
            .field(MAX_RECORD_BYTES)
            .await?
            .ok_or_else(|| file.corrupt("cut short"))?;
        if record.is_empty() {
            let mut count = [0u8; 8];
            file.raw(&mut count).await?;
            let count = u64::from_le_bytes(count);
            if count != *read {
                return Err(file.corrupt(&format!("{read} records, its end says {count}")));
            }
            file.end().await?;
            *ended = true;
            return Ok(None);
        }
        let entry = entry_of_snapshot_record(&record, previous.as_ref())?;
        *read += 1;
        *previous = Some(*entry.store_path.digest());
        Ok(Some(entry))
    }
}

impl BucketStore {
    /// Opens the snapshot `at`: the segments it includes, and its entries;
    /// `None` if it is gone. A damaged head (or a damaged snapshot of the
    /// older format) is an error here; damage further on, when the entry
    /// is read.
    pub(super) async fn open_catalog_snapshot(
        &self,
        at: &ObjectPath,
    ) -> StoreResult<Option<(HashSet<String>, SnapshotEntries)>> {
        let Some(mut file) = RecordReader::open(self, at, "catalog snapshot").await? else {
            return Ok(None);
        };
        let mut magic = [0u8; SNAPSHOT_MAGIC.len()];
        let got = file.up_to(&mut magic).await?;
        if magic[..got] != SNAPSHOT_MAGIC[..] {
            let mut decoded = magic[..got].to_vec();
            decoded.extend(file.rest(MAX_SNAPSHOT_BYTES - got as u64).await?);
            let (catalog, folded) = Catalog::from_old_snapshot(&decoded)?;
            drop(decoded);
            let entries = SnapshotEntries::Whole(catalog.into_sorted().into_iter());
            return Ok(Some((folded.into_iter().collect(), entries)));
        }
        let head = file
            .field(MAX_HEAD_BYTES)
            .await?
            .ok_or_else(|| file.corrupt("no head"))?;
        let folded = folded_of_head(&head)?;
        let entries = SnapshotEntries::Streamed {
            file,
            read: 0,
            previous: None,
            ended: false,
        };
        Ok(Some((folded.into_iter().collect(), entries)))
    }

    /// Stores at `at` a snapshot of `entries` (in listing order) that
    /// includes the segments `folded`, durable once this returns; returns
    /// how many paths it holds. On an error (of `entries` too) nothing is
    /// stored.
    pub(super) async fn write_catalog_snapshot(
        &self,
        at: &ObjectPath,
        folded: Vec<String>,
        mut entries: impl Stream<Item = StoreResult<CatalogEntry>> + Unpin,
    ) -> StoreResult<u64> {
        let mut file = RecordWriter::create(self, at, SNAPSHOT_LEVEL).await?;
        let written: StoreResult<u64> = async {
            file.raw(SNAPSHOT_MAGIC)?;
            file.field(&snapshot_head(folded))?;
            let mut paths = 0u64;
            while let Some(entry) = entries.next().await {
                file.field(&snapshot_record(&entry?))?;
                paths += 1;
                if paths.is_multiple_of(FLUSH_EVERY) {
                    file.flush().await?;
                }
            }
            file.field(&[])?;
            file.raw(&paths.to_le_bytes())?;
            Ok(paths)
        }
        .await;
        let paths = match written {
            Ok(paths) => paths,
            Err(e) => {
                file.abort().await;
                return Err(e);
            }
        };
        file.finish().await?;
        let name = at.to_string();
        self.on_local_folder(move |root| super::durable::sync_file_and_folder(&root.join(name)))
            .await?;
        Ok(paths)
    }

    /// The entries of the snapshot `at` (read by `snapshot`) with the
    /// changes `overlay` merged in, in listing order. A snapshot found
    /// damaged on the way ends the stream with an error and is remembered
    /// as damaged, so that the next listing rebuilds the catalog instead.
    pub(super) fn merged_listing(
        &self,
        at: &ObjectPath,
        snapshot: SnapshotEntries,
        overlay: Overlay,
    ) -> BoxStream<'static, StoreResult<CatalogEntry>> {
        let store = self.me.clone();
        let at = at.to_string();
        let read = futures::stream::unfold(Some(snapshot), move |state| {
            let (store, at) = (store.clone(), at.clone());
            async move {
                let mut snapshot = state?;
                match snapshot.next().await {
                    Ok(Some(entry)) => Some((Ok(entry), Some(snapshot))),
                    Ok(None) => None,
                    Err(e) => {
                        if damage(&e) {
                            tracing::warn!(snapshot = %at, error = %e, "catalog snapshot damaged; the next listing rebuilds the catalog");
                            if let Some(store) = store.upgrade() {
                                store
                                    .damaged_catalog_snapshots
                                    .lock()
                                    .expect("damaged snapshots")
                                    .insert(at);
                            }
                        }
                        Some((Err(e), None))
                    }
                }
            }
        });
        merged(read, overlay)
    }

    /// Whether the snapshot `at` was found damaged by a listing of this
    /// process.
    pub(super) fn catalog_snapshot_damaged(&self, at: &ObjectPath) -> bool {
        self.damaged_catalog_snapshots
            .lock()
            .expect("damaged snapshots")
            .contains(at.as_ref())
    }
}

/// Whether an error reading a snapshot is the snapshot's own (not the
/// store's being unreachable).
fn damage(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt(_) | StoreError::Invalid(_))
}
