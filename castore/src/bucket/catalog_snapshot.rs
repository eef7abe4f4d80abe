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
    folded_of_head, merged, snapshot_head, snapshot_record, Catalog, CatalogEntry, OrderedRecords,
    Overlay, MAX_HEAD_BYTES, MAX_RECORD_BYTES, MAX_SNAPSHOT_BYTES, SNAPSHOT_LEVEL, SNAPSHOT_MAGIC,
};
use crate::error::{StoreError, StoreResult};

/// Records compressed between two hand-overs to the upload.
const FLUSH_EVERY: u64 = 4096;

/// A snapshot's entries, read in listing order.
pub(super) enum SnapshotEntries {
    /// A snapshot stored as a stream, being decoded.
    Streamed {
        file: RecordReader,
        records: OrderedRecords,
        ended: bool,
    },
    /// A snapshot of the older format, read whole.
    Whole(std::vec::IntoIter<CatalogEntry>),
}

impl SnapshotEntries {
    /// The next entry, checked; `None` once the snapshot's end is read
    /// and found whole.
    pub(super) async fn next(&mut self) -> StoreResult<Option<CatalogEntry>> {
        let (file, records, ended) = match self {
            Self::Whole(entries) => return Ok(entries.next()),
            Self::Streamed {
                file,
                records,
                ended,
            } => (file, records, ended),
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
            let (count, read) = (u64::from_le_bytes(count), records.read());
            if count != read {
                return Err(file.corrupt(&format!("{read} records, its end says {count}")));
            }
            file.end().await?;
            *ended = true;
            return Ok(None);
        }
        records.entry(&record).map(Some)
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
            records: OrderedRecords::default(),
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
            file.field(&snapshot_head(folded)?)?;
            let mut paths = 0u64;
            while let Some(entry) = entries.next().await {
                file.field(&snapshot_record(&entry?)?)?;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::framing::write_field;

    use crate::testutil::catalog_entry as entry;

    /// A snapshot's decoded bytes: three records, the end saying `count`,
    /// then `after`.
    fn decoded(count: u64, after: &[u8]) -> Vec<u8> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        write_field(&mut out, &snapshot_head(vec!["s".into()]).unwrap()).unwrap();
        for i in 1..=3 {
            write_field(&mut out, &snapshot_record(&entry(i)).unwrap()).unwrap();
        }
        write_field(&mut out, &[]).unwrap();
        out.extend(count.to_le_bytes());
        out.extend(after);
        out
    }

    fn compressed(decoded: &[u8]) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_checksum(true).unwrap();
        encoder.write_all(decoded).unwrap();
        encoder.finish().unwrap()
    }

    /// Stores `stored` as a snapshot and reads it to its end.
    async fn read_back(store: &BucketStore, stored: Vec<u8>) -> StoreResult<Vec<CatalogEntry>> {
        let at = ObjectPath::from("catalog/snapshots/test");
        store.put(&at, stored.into()).await.unwrap();
        let (folded, mut entries) = store.open_catalog_snapshot(&at).await?.expect("stored");
        assert!(folded.contains("s"));
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await? {
            out.push(entry);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn snapshots_cut_forged_or_rotten_are_refused_as_damage() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let sound = read_back(&store, compressed(&decoded(3, b""))).await;
        assert_eq!(sound.unwrap(), vec![entry(1), entry(2), entry(3)]);

        let whole = decoded(3, b"");
        let end_marker = whole.len() - 8 - 4;
        let mut oversized = whole[..end_marker].to_vec();
        oversized.extend(u32::MAX.to_le_bytes());
        let mut rotten = compressed(&whole);
        *rotten.last_mut().unwrap() ^= 1;
        for (case, stored) in [
            ("a count that is wrong", compressed(&decoded(4, b""))),
            ("bytes after the end", compressed(&decoded(3, b"x"))),
            ("no end", compressed(&whole[..end_marker])),
            (
                "cut inside the count",
                compressed(&whole[..whole.len() - 3]),
            ),
            ("a length over the bound", compressed(&oversized)),
            ("zstd cut short", compressed(&whole)[..40].to_vec()),
            ("the checksum wrong", rotten),
        ] {
            let e = read_back(&store, stored).await.expect_err(case);
            assert!(damage(&e), "{case}: {e:?}");
        }
    }
}
