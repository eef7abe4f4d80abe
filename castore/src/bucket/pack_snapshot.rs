//! Every pack index in one object (a *pack table snapshot*), so that
//! opening a store of 100,000 packs — a server's start, `lazix stats`,
//! GC — reads one object instead of 100,000 indexes one by one.
//!
//! A reader takes the newest snapshot (with a sane name, see
//! [`super::keys::sane_time`]), adds the packs in it that are listed now,
//! and reads the indexes of the others one by one: a snapshot is an aid,
//! and one lost, damaged or stale costs only time (a pack's id is the
//! digest of its bytes, so its index never changes). Each record carries
//! its own digest, checked before it is used: zstd's checksum covers the
//! whole object but is checked only at its end, and GC trusts the table
//! to tell live packs from dead ones.
//!
//! A snapshot is written from the newest one (its records of packs still
//! listed, each checked again) and the indexes of packs written since,
//! oldest first, streamed into a multipart upload, so memory stays bounded
//! whatever the store's size: by GC after it collected, and in the
//! background by a server that had to read many indexes one by one when it
//! opened the store ([`BucketStore::keep_pack_snapshot`]; a short-lived
//! command would leave its upload unfinished).
//!
//! Format (`packtables/<ms>-<random>`): zstd of records, each a pack id
//! then its encoded `lazix.v1.PackIndex`, both prefixed with their length
//! as a little-endian u32, then the BLAKE3 digest of those four fields.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures::stream::{self, StreamExt};
use object_store::path::Path as ObjectPath;

use super::keys::{index_path, pack_id, sane_time, timestamped, PackId, PACK_TABLES};
use super::packs::decode_index;
use super::record_file::{RecordReader, RecordWriter};
use super::{BucketStore, CONCURRENCY};
use crate::digest::DigestKeyBuildHasher;
use crate::error::{StoreError, StoreResult};

/// New packs at open worth looking for in a snapshot.
pub(super) const READ_SNAPSHOT_FROM: usize = 64;
/// Indexes read one by one at open past which a new snapshot is written.
pub(super) const WRITE_SNAPSHOT_FROM: usize = 1024;
/// Longest pack id read back (BLAKE3 hex is 64 characters).
const MAX_ID: u32 = 128;
/// Largest pack index read back from a snapshot.
const MAX_INDEX: u32 = 64 << 20;
/// Snapshots kept besides the newest: a reader may be streaming one.
const KEEP_OLDER: usize = 1;
/// zstd level: indexes are mostly digests, which do not compress.
const LEVEL: i32 = 1;

impl BucketStore {
    /// Adds to the table the packs of the newest snapshot that are in
    /// `wanted`, taking each out of it (what stays is to be read one by
    /// one). A snapshot that fails mid-way is logged, and what it added
    /// stays.
    pub(super) async fn load_pack_snapshot(
        &self,
        wanted: &mut HashSet<&PackId, DigestKeyBuildHasher>,
    ) -> StoreResult<()> {
        let Some(newest) = self.newest_pack_snapshot().await? else {
            return Ok(());
        };
        let mut added = 0usize;
        let read: StoreResult<()> = async {
            let mut records = self.snapshot_records(&newest).await?;
            while let Some((id, index)) = records.next().await? {
                if !wanted.contains(&id) {
                    continue;
                }
                let name = id.to_hex();
                let parsed = decode_index(&name, &index).and_then(|index| {
                    self.table
                        .write()
                        .expect("pack table")
                        .add_new_pack(&name, &index)
                });
                match parsed {
                    Ok(()) => {
                        wanted.remove(&id);
                        added += 1;
                        self.keep_table_merged();
                    }
                    // Its own index is read instead.
                    Err(e) => {
                        tracing::warn!(pack = %id, error = %e, "pack index in the snapshot skipped")
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = read {
            tracing::warn!(snapshot = %newest, error = %e, added, "pack table snapshot unreadable; reading the other indexes one by one");
        }
        Ok(())
    }

    /// Writes a snapshot of every listed pack's index (from the newest
    /// snapshot where it has them, the others read one at a time), then
    /// deletes snapshots but the newest and [`KEEP_OLDER`] more, and any
    /// named in the future. Returns the packs in it.
    pub async fn store_pack_snapshot(&self) -> StoreResult<usize> {
        let previous = self.newest_pack_snapshot().await?;
        let listed = self.listed_packs().await?;
        let at = timestamped(PACK_TABLES);
        let mut out = SnapshotWriter {
            file: RecordWriter::create(self, &at, LEVEL).await?,
            written: HashSet::default(),
        };
        if let Err(e) = self.fill_pack_snapshot(&mut out, previous, &listed).await {
            out.file.abort().await;
            return Err(e);
        }
        let packs = out.written.len();
        out.file.finish().await?;
        tracing::info!(packs, snapshot = %at, "stored a pack table snapshot");

        self.keep_newest(PACK_TABLES, 1 + KEEP_OLDER).await?;
        Ok(packs)
    }

    /// For a long-running process (a server): writes a pack table snapshot
    /// in the background if opening the store read many indexes one by one
    /// ([`WRITE_SNAPSHOT_FROM`]), so that the next opening reads them from
    /// one object. Other commands do not: one that exits mid-upload would
    /// leave an unfinished multipart upload behind.
    pub fn keep_pack_snapshot(&self) {
        if self.pack_snapshot_wanted.load(Ordering::Acquire) {
            self.start_pack_snapshot();
        }
    }

    /// Starts [`BucketStore::store_pack_snapshot`] in the background unless
    /// one is running already; its outcome is logged.
    fn start_pack_snapshot(&self) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        if self.pack_snapshot_running.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            match me.store_pack_snapshot().await {
                Ok(_) => me.pack_snapshot_wanted.store(false, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "cannot store a pack table snapshot"),
            }
            me.pack_snapshot_running.store(false, Ordering::Release);
        });
    }

    /// The records of `previous` for packs in `listed`, then the indexes
    /// of the listed packs it lacks, read one at a time, oldest first: a
    /// reader files chunks in the snapshot's order, and the resemblance
    /// index keeps the newest (see [`super::resemblance`]).
    async fn fill_pack_snapshot(
        &self,
        out: &mut SnapshotWriter,
        previous: Option<ObjectPath>,
        listed: &[PackId],
    ) -> StoreResult<()> {
        if let Some(previous) = previous {
            let wanted: HashSet<&PackId, DigestKeyBuildHasher> = listed.iter().collect();
            let copied: StoreResult<()> = async {
                let mut records = self.snapshot_records(&previous).await?;
                while let Some((id, index)) = records.next().await? {
                    if wanted.contains(&id) && !out.written.contains(&id) {
                        out.record(&id, &index)?;
                        out.flush().await?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = copied {
                // What was copied was checked record by record and stays;
                // the rest is read one by one.
                tracing::warn!(snapshot = %previous, error = %e, "previous pack table snapshot unreadable");
            }
        }
        let missing: Vec<PackId> = listed
            .iter()
            .filter(|id| !out.written.contains(*id))
            .copied()
            .collect();
        let mut indexes = stream::iter(missing)
            .map(|id| async move { (self.get_optional(&index_path(&id.to_hex())).await, id) })
            .buffered(CONCURRENCY);
        while let Some((got, id)) = indexes.next().await {
            // Deleted meanwhile (compaction, GC): not in the snapshot.
            let Some(index) = got? else {
                continue;
            };
            out.record(&id, &index)?;
            out.flush().await?;
        }
        Ok(())
    }

    /// The newest snapshot's name (of those with a sane one), if any.
    async fn newest_pack_snapshot(&self) -> StoreResult<Option<ObjectPath>> {
        Ok(self
            .list_prefix(PACK_TABLES)
            .await?
            .into_iter()
            .map(|m| m.location)
            .filter(sane_time)
            .max())
    }

    /// The records of the snapshot `at`, streamed.
    async fn snapshot_records(&self, at: &ObjectPath) -> StoreResult<SnapshotRecords> {
        RecordReader::open(self, at, "pack table snapshot")
            .await?
            .map(|file| SnapshotRecords { file })
            .ok_or_else(|| StoreError::NotFound(format!("pack table snapshot {at}")))
    }
}

/// A stored snapshot being read, record by record.
struct SnapshotRecords {
    file: RecordReader,
}

impl SnapshotRecords {
    /// The next pack id and its encoded index, checked against the
    /// record's digest; `None` at the end.
    async fn next(&mut self) -> StoreResult<Option<(PackId, Vec<u8>)>> {
        let Some(id) = self.file.field(MAX_ID).await? else {
            return Ok(None);
        };
        let index = self
            .file
            .field(MAX_INDEX)
            .await?
            .ok_or_else(|| self.file.corrupt("a record cut short"))?;
        let mut digest = [0u8; 32];
        self.file.raw(&mut digest).await?;
        if record_digest(&id, &index) != digest {
            return Err(self.file.corrupt("a record does not match its digest"));
        }
        let id = std::str::from_utf8(&id)
            .ok()
            .and_then(pack_id)
            .ok_or_else(|| self.file.corrupt("a record's pack id is no pack's name"))?;
        Ok(Some((id, index)))
    }
}

/// A snapshot being written, and the packs recorded so far.
struct SnapshotWriter {
    file: RecordWriter,
    written: HashSet<PackId, DigestKeyBuildHasher>,
}

impl SnapshotWriter {
    /// Appends one pack's record (compressed into memory until the next
    /// [`SnapshotWriter::flush`]).
    fn record(&mut self, id: &PackId, index: &[u8]) -> StoreResult<()> {
        let name = id.to_hex();
        self.file.field(name.as_bytes())?;
        self.file.field(index)?;
        self.file.raw(&record_digest(name.as_bytes(), index))?;
        self.written.insert(*id);
        Ok(())
    }

    /// Hands what is compressed so far to the upload.
    async fn flush(&mut self) -> StoreResult<()> {
        self.file.flush().await
    }
}

/// The digest a record ends with: BLAKE3 of its fields as stored.
fn record_digest(id: &[u8], index: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for field in [id, index] {
        hasher.update(&(field.len() as u32).to_le_bytes());
        hasher.update(field);
    }
    *hasher.finalize().as_bytes()
}
