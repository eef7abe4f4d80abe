//! Compaction: rewrites packs stored at the ingest level into packs
//! compressed harder, with near-duplicate chunks stored as deltas.
//!
//! Ingest stores frames as clients compressed them (zstd level 3: fast),
//! so a push runs at the speed of the network and the disk. Compaction
//! runs later (`lazix compact`, or in the background of `lazix serve`),
//! spending CPU once to shrink what is stored and shipped; zstd decodes
//! frames of any level equally fast, so readers pay nothing for it.
//!
//! Packs are taken in upload order (the order the uploader cut its calls
//! in, kept in each pack's index) and rewritten a few at a time into one
//! (or more, past [`GROUP_BYTES`]; see [`PACKS_PER_GROUP`]), one group
//! after another: a large file uploaded over several calls then sits in
//! one compacted pack, in order, and its next version is compacted after
//! it. Within a group, bases are claimed frame after frame and frames are
//! compressed on every core.
//!
//! Safety: a new pack (and its index) is written before the old ones'
//! indexes and frames are deleted, so every chunk stays readable
//! throughout; a reader that located a chunk in a deleted pack re-lists
//! and retries. A compaction killed midway leaves chunks in both: harmless,
//! and the next run deletes the old packs (their chunks are held
//! elsewhere).
//! Deltas are one level deep: a chunk some delta frame uses as base stays
//! in a plain frame. Bases are the chunks similarity finds (with the rest
//! of their frame, for large files) and, for the frames of a large file
//! after one that found its old version, the old frames at the same place
//! (see [`super::packs::PackTable::frames_around`]). Frames holding gzip
//! members (man pages, changelogs) may instead store the members'
//! contents (see [`crate::regzip`]), whichever is smallest.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::keys::{index_path, pack_path, PackId};
use super::packs::{decode_index, holds_large_file, FrameLocation, OldPosition, PackTable};
use super::BucketStore;
use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};
use crate::frame::{raw_size, Frame, MAX_BASE_RAW};
use crate::similarity::{sketch, Sketch};
use crate::store::upload_part;

/// zstd level of compacted packs: measured with `bench/layouts.sh` and
/// `lazix-bench frame-sizes` (level 17 stores ~13% less than level 3 at
/// ~11 MB/s per core; decoding speed does not depend on the level).
pub const COMPACT_LEVEL: i32 = 17;

/// Raw bytes of the old version taken before and after where a large
/// file's next frame is expected to match it: frames of a new version
/// drift against the old one's by the bytes added or removed.
const FOLLOW_SLACK: u64 = 64 * 1024;

/// A delta frame is kept only if it is at most this fraction (in tenths)
/// of the plain frame: a reader also needs the base.
const DELTA_KEEP_TENTHS: usize = 9;

/// Packs at the ingest level rewritten together, into one compacted pack
/// (or more, when their frames pass [`GROUP_BYTES`]): `lazix push` uploads
/// calls of 8 MiB of chunks (raw; one pack each), so a group holds ~64 MiB
/// of a version in upload order, and the next version's walk
/// ([`OldVersionWalk`], which looks within one pack) follows it that far
/// without losing its place at a pack's end.
const PACKS_PER_GROUP: usize = 8;

/// Compressed bytes after which a group's frames so far are written as one
/// pack, checked after each old pack (memory per group: about this plus
/// one old pack's compressed frames and decoded chunks; `lazix push`'s are
/// 8 MiB of chunks, other uploaders' calls up to the server's pack limit).
const GROUP_BYTES: u64 = 32 * 1024 * 1024;

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Packs rewritten (and deleted, unless a new pack came out the
    /// same).
    pub packs_rewritten: u64,
    /// Their bytes.
    pub bytes_before: u64,
    /// Bytes of the packs written instead.
    pub bytes_after: u64,
    /// Frames stored as deltas.
    pub delta_frames: u64,
    /// Frames holding gzip members stored as their contents.
    pub regzip_frames: u64,
    /// Chunks dropped because another pack already held them.
    pub duplicate_chunks: u64,
}

/// One frame of a pack being rewritten: its live chunks' bytes.
struct LiveFrame {
    chunks: Vec<(ChunkMeta, Bytes)>,
}

/// Where the old version of the large file whose frames are being
/// rewritten goes on (see [`super::packs::PackTable::frames_around`]):
/// found where a frame's chunk resembled it, then moved on by each frame
/// of the file, delta or plain (a stretch new in this version
/// stays plain, and the stretch after it most likely matches the old
/// version again, further on by as much), across the packs of a group
/// ([`PACKS_PER_GROUP`]). A frame of small files ends the walk until the
/// next match.
#[derive(Default)]
struct OldVersionWalk {
    at: Option<OldPosition>,
}

impl OldVersionWalk {
    /// The old frames a frame of `chunks` is offered as bases: those
    /// around the place, by the frame's size and [`FOLLOW_SLACK`].
    fn frames_for(&self, store: &BucketStore, chunks: &[ChunkMeta]) -> Vec<Arc<FrameLocation>> {
        let Some(at) = self.at.as_ref().filter(|_| holds_large_file(chunks)) else {
            return Vec::new();
        };
        let raw = raw_size(chunks);
        let range = at.offset.saturating_sub(FOLLOW_SLACK)
            ..at.offset.saturating_add(raw).saturating_add(FOLLOW_SLACK);
        store
            .table
            .read()
            .expect("pack table")
            .frames_around(at, range)
    }

    /// Moves on past a frame of `chunks`; `last_similar`
    /// is the own chunk similarity matched last and the old chunk it
    /// matched.
    fn advance(
        &mut self,
        store: &BucketStore,
        chunks: &[ChunkMeta],
        last_similar: Option<(usize, B3Digest)>,
    ) {
        if !holds_large_file(chunks) {
            self.at = None;
            return;
        }
        // Re-anchored after the old chunk similarity matched, plus what
        // follows the chunk resembling it in this frame.
        let found = last_similar.and_then(|(own, digest)| {
            let at = store
                .table
                .read()
                .expect("pack table")
                .after_chunk(&digest)?;
            let after = raw_size(chunks.get(own + 1..).unwrap_or_default());
            Some(OldPosition {
                offset: at.offset.saturating_add(after),
                ..at
            })
        });
        let raw = raw_size(chunks);
        self.at = found.or_else(|| {
            self.at.take().map(|at| OldPosition {
                offset: at.offset.saturating_add(raw),
                ..at
            })
        });
    }
}

impl BucketStore {
    /// Rewrites every pack below [`COMPACT_LEVEL`]. Safe to run while the
    /// store serves reads and uploads (also from another process); one
    /// compaction or collection runs at a time per store (`Unavailable`
    /// while another holds the maintenance lock).
    pub async fn compact(&self) -> StoreResult<CompactReport> {
        let lock = self.lock_maintenance().await?;
        let started = std::time::Instant::now();
        let result = self.compact_locked().await;
        if result.is_err() {
            // The packs are still to compact: `compact_when_quiet` tries
            // again once uploads have been quiet as long again.
            *self.uploaded_at.lock().expect("upload clock") = Some(std::time::Instant::now());
        }
        lock.release().await;
        self.runs.compaction_done(
            started.elapsed(),
            result
                .as_ref()
                .ok()
                .map(|r| r.bytes_before.saturating_sub(r.bytes_after)),
        );
        result
    }

    async fn compact_locked(&self) -> StoreResult<CompactReport> {
        *self.uploaded_at.lock().expect("upload clock") = None;
        self.refresh().await?;
        let candidates: Vec<PackId> = self
            .table
            .read()
            .expect("pack table")
            .pack_levels()?
            .into_iter()
            .filter(|(_, level)| (*level as i32) < COMPACT_LEVEL)
            .map(|(id, _)| id)
            .collect();
        let groups: Vec<(Vec<String>, u64)> = self
            .in_upload_order(candidates)
            .await?
            .chunks(PACKS_PER_GROUP)
            .map(|g| (g.iter().map(|(id, _)| id.to_hex()).collect(), g[0].1))
            .collect();
        // One group after another (each compresses on every core): a
        // version uploaded after another is compacted after it, so its
        // deltas go against the older one.
        let mut report = CompactReport::default();
        for (group, order) in groups {
            self.compact_packs(&group, order, &mut report, &|_| true)
                .await?;
        }
        // The journal of the packs it changed stays for replicas to read;
        // entries no replica reads any more go.
        self.prune_pack_journal().await?;
        tracing::info!(?report, "compaction done");
        Ok(report)
    }

    /// Packs in upload order: the order their upload calls were cut in
    /// (kept in their indexes, see
    /// [`crate::store::BlobStore::put_frames_ordered`]; for packs written
    /// before it was kept, when they were written), then by id; each with
    /// its place. A pack gone meanwhile is left out (compacted by someone
    /// else).
    async fn in_upload_order(&self, ids: Vec<PackId>) -> StoreResult<Vec<(PackId, u64)>> {
        let mut placed: Vec<(u64, PackId)> = futures::stream::iter(ids)
            .map(|id| async move {
                let got = match self.objects.get(&index_path(&id.to_hex())).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(super::object_err(e)),
                };
                let written = got.meta.last_modified.timestamp_nanos_opt().unwrap_or(0);
                let data = got.bytes().await.map_err(super::object_err)?;
                let index = decode_index(&id.to_hex(), &data)?;
                let order = match index.upload_order {
                    0 => u64::try_from(written).unwrap_or(0),
                    n => n,
                };
                Ok(Some((order, id)))
            })
            .buffer_unordered(16)
            .try_filter_map(|x| async move { Ok(x) })
            .try_collect()
            .await?;
        placed.sort_unstable();
        Ok(placed.into_iter().map(|(order, id)| (id, order)).collect())
    }

    /// Rewrites a pack with only its live chunks (garbage collection);
    /// returns the bytes of the pack written instead.
    pub(super) async fn repack_live(
        &self,
        id: &str,
        live: &super::mark_set::MarkSet,
    ) -> StoreResult<u64> {
        let mut r = CompactReport::default();
        self.compact_packs(&[id.to_string()], 0, &mut r, &|d| live.contains(d))
            .await?;
        Ok(r.bytes_after)
    }

    /// Rewrites packs, in order, into one pack (more past [`GROUP_BYTES`])
    /// with the chunks each is home for and `keep` wants; one walk of the
    /// old version ([`OldVersionWalk`]) goes through them all, so a large
    /// file whose upload spans several packs is followed across them (and
    /// lands in one pack, which the next version's walk then follows
    /// without losing its place at each pack's end). Each pack is decoded
    /// and recompressed before the next is read: memory holds one pack's
    /// chunks plus the compressed frames not yet written. The new packs
    /// are placed at `order` (the first old one's place) and after it.
    async fn compact_packs(
        &self,
        ids: &[String],
        order: u64,
        report: &mut CompactReport,
        keep: &(dyn Fn(&B3Digest) -> bool + Sync),
    ) -> StoreResult<()> {
        let mut claimed = SettleOnDrop {
            table: &self.table,
            claimed: Vec::new(),
        };
        let mut read: Vec<&str> = Vec::new();
        let mut written: Vec<String> = Vec::new();
        let result = async {
            let mut walk = OldVersionWalk::default();
            let mut rewritten = Vec::new();
            for id in ids {
                let Some(live) = self.live_frames(id, report, keep).await? else {
                    continue;
                };
                read.push(id);
                claimed.claimed.extend(
                    live.iter()
                        .flat_map(|f| f.chunks.iter().map(|(m, _)| m.digest)),
                );
                self.rewrite(live, &mut walk, &mut rewritten, report, keep)
                    .await?;
                let bytes: u64 = rewritten.iter().map(|(f, _)| f.data.len() as u64).sum();
                // Bounded by bytes too (calls of other uploaders may be
                // larger): the walk goes on into the next pack written.
                if bytes >= GROUP_BYTES {
                    let (id, size) = self
                        .write_pack(
                            std::mem::take(&mut rewritten),
                            COMPACT_LEVEL as u32,
                            upload_part(order, written.len() as u64),
                        )
                        .await?;
                    report.bytes_after += size;
                    written.push(id);
                }
            }
            if !rewritten.is_empty() {
                let (id, size) = self
                    .write_pack(
                        rewritten,
                        COMPACT_LEVEL as u32,
                        upload_part(order, written.len() as u64),
                    )
                    .await?;
                report.bytes_after += size;
                written.push(id);
            }
            Ok::<_, StoreError>(())
        }
        .await;
        drop(claimed);
        result?;
        // Old packs go once every new one is in the table. Incompressible
        // frames come out byte-identical: a new pack can be an old one
        // (same content, same id), which must then stay.
        for id in read {
            if !written.iter().any(|w| w == id) {
                self.delete_pack(id).await?;
            }
            report.packs_rewritten += 1;
        }
        Ok(())
    }

    /// A pack's frames with the chunks it is home for and `keep` wants,
    /// decoded and verified; `None` if the pack is gone (compacted by
    /// someone else meanwhile).
    async fn live_frames(
        &self,
        id: &str,
        report: &mut CompactReport,
        keep: &(dyn Fn(&B3Digest) -> bool + Sync),
    ) -> StoreResult<Option<Vec<LiveFrame>>> {
        let Some(frames) = ({
            let table = self.table.read().expect("pack table");
            table.pack(id).map(|p| p.frames)
        }) else {
            return Ok(None);
        };
        let data = match self.objects.get(&pack_path(id)).await {
            Ok(r) => r.bytes().await.map_err(super::object_err)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(super::object_err(e)),
        };
        report.bytes_before += data.len() as u64;
        let mut live = Vec::new();
        for loc in &frames {
            let range = loc.offset as usize..(loc.offset + loc.length) as usize;
            let bytes = data.get(range).ok_or_else(|| {
                StoreError::Corrupt(format!("pack {id}: frame at {} is truncated", loc.offset))
            })?;
            let frame = Frame::read_back(
                loc.chunks.to_vec(),
                data.slice_ref(bytes),
                loc.base.to_vec(),
            );
            let base = self.base_bytes(&frame.base).await?;
            let datas = tokio::task::spawn_blocking(move || frame.decode_verified_with_base(&base))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            // Only chunks this frame is the table's home for: others are
            // held by another pack already.
            // (An unreadable table stops the compaction: "elsewhere" must
            // not be guessed, the old pack is deleted after.)
            let mut kept: Vec<(ChunkMeta, Bytes)> = Vec::new();
            {
                let table = self.table.read().expect("pack table");
                for (m, data) in loc.chunks.iter().copied().zip(datas) {
                    if keep(&m.digest)
                        && table
                            .home(&m.digest)?
                            .is_some_and(|home| home.is_same_frame(loc))
                    {
                        kept.push((m, data));
                    }
                }
            }
            report.duplicate_chunks += (loc.chunks.len() - kept.len()) as u64;
            if !kept.is_empty() {
                live.push(LiveFrame { chunks: kept });
            }
        }
        Ok(Some(live))
    }

    /// Recompresses live frames onto `rewritten`, with deltas against
    /// bases `keep` wants only: bases are claimed frame after frame (the
    /// walk needs each frame's place), the frames compressed on every core
    /// and kept in their order.
    async fn rewrite(
        &self,
        live: Vec<LiveFrame>,
        walk: &mut OldVersionWalk,
        rewritten: &mut Vec<(Frame, Vec<Option<Sketch>>)>,
        report: &mut CompactReport,
        keep: &(dyn Fn(&B3Digest) -> bool + Sync),
    ) -> StoreResult<()> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut compressing = futures::stream::FuturesOrdered::new();
        let mut done = |compressed: Result<StoreResult<(Frame, _)>, tokio::task::JoinError>| {
            let (frame, sketches) =
                compressed.map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            if !frame.base.is_empty() {
                report.delta_frames += 1;
            }
            if crate::regzip::is_regzip(&frame.data) {
                report.regzip_frames += 1;
            }
            rewritten.push((frame, sketches));
            Ok::<_, StoreError>(())
        };
        for f in live {
            let metas: Vec<ChunkMeta> = f.chunks.iter().map(|(m, _)| *m).collect();
            let follow = walk.frames_for(self, &metas);
            let (claimed, last_similar) = self.claim(f, &follow, keep).await?;
            walk.advance(self, &metas, last_similar);
            while compressing.len() >= parallel {
                if let Some(c) = compressing.next().await {
                    done(c)?;
                }
            }
            compressing.push_back(tokio::task::spawn_blocking(move || claimed.compress()));
        }
        while let Some(c) = compressing.next().await {
            done(c)?;
        }
        Ok(())
    }

    /// Concatenated verified bytes of base chunks (empty for none).
    async fn base_bytes(&self, base: &[ChunkMeta]) -> StoreResult<Vec<u8>> {
        if base.is_empty() {
            return Ok(Vec::new());
        }
        let digests: Vec<B3Digest> = base.iter().map(|b| b.digest).collect();
        let mut out = Vec::new();
        for (_, bytes) in self.base_chunks(&digests).await? {
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Sketches a frame's chunks and claims its delta bases: near-duplicates
    /// in plain frames (or the frames `follow` names), never when one of
    /// its chunks is itself a base, nor a chunk being made a delta
    /// concurrently, nor one `keep` does not want (GC's sweep deletes
    /// those); reads the bases' bytes. Returns what
    /// [`ClaimedFrame::compress`] needs and the own chunk similarity
    /// matched last with the old chunk it matched. A frame that claims no
    /// base stays plain and its sketches are filed at once, for the frames
    /// after it in this run (uploads are not sketched). The caller settles
    /// the claim once every new pack is in the table.
    async fn claim(
        &self,
        f: LiveFrame,
        follow: &[Arc<FrameLocation>],
        keep: &(dyn Fn(&B3Digest) -> bool + Sync),
    ) -> StoreResult<(ClaimedFrame, Option<(usize, B3Digest)>)> {
        let chunks = f.chunks;
        let (chunks, sketches) = tokio::task::spawn_blocking(move || {
            let sketches: Vec<Option<Sketch>> = chunks.iter().map(|(_, b)| sketch(b)).collect();
            (chunks, sketches)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let own: Vec<B3Digest> = chunks.iter().map(|(m, _)| m.digest).collect();
        let claimed = {
            let mut table = self.table.write().expect("pack table");
            let claimed = table.claim_bases(&own, &sketches, follow, keep);
            if claimed.bases.is_empty() {
                // Stays plain: a base for the frames after it (uploads
                // are not sketched, so nothing else files it yet).
                table.file_sketches(&own, &sketches);
            }
            claimed
        };
        let (bases, last_similar) = (claimed.bases, claimed.last_similar);
        let mut base_meta = Vec::new();
        let mut base = Vec::new();
        if !bases.is_empty() {
            for (meta, bytes) in self.base_chunks(&bases).await? {
                if (base.len() + bytes.len()) as u64 > MAX_BASE_RAW {
                    break;
                }
                base.extend_from_slice(&bytes);
                base_meta.push(meta);
            }
        }
        let claimed = ClaimedFrame {
            chunks,
            sketches,
            base_meta,
            base,
            regzip: self.regzip.load(std::sync::atomic::Ordering::Relaxed),
        };
        Ok((claimed, last_similar))
    }
}

/// The chunks a compaction claimed ([`PackTable::claim_bases`]), settled
/// when it is done, and also when its future is dropped part-way (a
/// caller's timeout or `select!`): a chunk left claimed would never again
/// be picked as a delta base in this process.
struct SettleOnDrop<'a> {
    table: &'a std::sync::RwLock<PackTable>,
    claimed: Vec<B3Digest>,
}

impl Drop for SettleOnDrop<'_> {
    fn drop(&mut self) {
        // A poisoned table (a panic elsewhere) is settled all the same.
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.settle(&self.claimed);
    }
}

/// A frame's chunks with their sketches and the bases claimed for them
/// ([`BucketStore::claim`]), to be compressed.
struct ClaimedFrame {
    chunks: Vec<(ChunkMeta, Bytes)>,
    sketches: Vec<Option<Sketch>>,
    base_meta: Vec<ChunkMeta>,
    base: Vec<u8>,
    regzip: bool,
}

impl ClaimedFrame {
    /// Compresses the chunks at [`COMPACT_LEVEL`]: plain, as gzip
    /// contents (where enabled) or as a delta against the claimed bases,
    /// whichever is smallest (a delta only if it saves a tenth).
    fn compress(self) -> StoreResult<(Frame, Vec<Option<Sketch>>)> {
        let chunks = &self.chunks;
        let mut best = Frame::compress_with_base(chunks, Vec::new(), &[], COMPACT_LEVEL)?;
        if self.regzip {
            if let Some(f) = Frame::compress_regzip(chunks, COMPACT_LEVEL)? {
                if f.data.len() < best.data.len() {
                    best = f;
                }
            }
        }
        if !self.base_meta.is_empty() {
            let delta =
                Frame::compress_with_base(chunks, self.base_meta, &self.base, COMPACT_LEVEL)?;
            if delta.data.len() * 10 <= best.data.len() * DELTA_KEEP_TENTHS {
                best = delta;
            }
        }
        Ok((best, self.sketches))
    }
}

/// Runs [`BucketStore::compact`] when uploads have been quiet for `quiet`
/// after some happened, forever; for `lazix serve`.
pub async fn compact_when_quiet(store: Arc<BucketStore>, quiet: std::time::Duration) {
    loop {
        tokio::time::sleep(quiet / 2).await;
        if !store.uploads_quiet_for(quiet) {
            continue;
        }
        match store.compact().await {
            Ok(_) => {}
            Err(StoreError::Unavailable(why)) => tracing::debug!(%why, "compaction skipped"),
            Err(e) => tracing::warn!(error = %e, "compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{frame_of, pseudo_random, temp_bucket};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_dropped_part_way_leaves_no_chunk_claimed() {
        let (_dir, bucket) = temp_bucket().await;
        // Two versions of three chunks, each in a pack of its own: the
        // second's chunks find the first's as delta bases.
        let v1: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(60_000, 700 + i)).collect();
        let v2: Vec<Vec<u8>> = v1
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c[30_000..30_012].copy_from_slice(b"version 2.0!");
                c
            })
            .collect();
        for version in [&v1, &v2] {
            let refs: Vec<&[u8]> = version.iter().map(Vec::as_slice).collect();
            crate::store::BlobStore::put_frames(bucket.as_ref(), vec![frame_of(&refs)])
                .await
                .unwrap();
        }
        let claims_open = || bucket.table.read().expect("pack table").claims_open();
        let mut compaction = Box::pin(bucket.compact());
        let mut seen_open = false;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if futures::poll!(compaction.as_mut()).is_ready() {
                break;
            }
            if claims_open() > 0 {
                seen_open = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        assert!(seen_open, "the compaction claimed bases");
        drop(compaction);
        assert_eq!(claims_open(), 0, "settled when dropped");
    }
}
