//! The pack table: which frame of which pack holds each chunk.
//!
//! Built at open from the pack indexes (most from a snapshot of them, see
//! [`super::pack_snapshot`]) and extended as packs are written (here or,
//! found by a refresh, by another replica). A pack without an index is
//! invisible: the index is written last. Past a bound the table writes
//! packs out to local disk ([`super::table_runs`]), so that its memory
//! stays the same whatever the store's size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use lazix_proto::ext as lpb;
use prost::Message;

use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::error::{StoreError, StoreResult};
use crate::frame::{raw_size, Frame, MAX_BASE_RAW};
use crate::similarity::{Sketch, SUPER_FEATURES};

use super::keys::{pack_id, PackId};
use super::resemblance::ResemblanceIndex;
use super::table_runs::{self, merge_sorted, Entry, MergeSource, Run, RunPack, RunWriter};

/// Where one stored frame lives.
#[derive(Debug)]
pub struct FrameLocation {
    /// The pack's id (BLAKE3 hex of the pack's bytes).
    pub pack: Arc<str>,
    /// Byte offset of the frame in the pack.
    pub offset: u64,
    /// Length of the frame in bytes.
    pub length: u64,
    /// The frame's chunks, in order.
    pub chunks: Arc<[ChunkMeta]>,
    /// Base chunks of a delta frame (empty for a plain frame).
    pub base: Arc<[ChunkMeta]>,
}

impl FrameLocation {
    /// Whether both name the same stored frame.
    pub fn is_same_frame(&self, other: &FrameLocation) -> bool {
        self.pack == other.pack && self.offset == other.offset
    }
}

/// One visible pack.
#[derive(Clone)]
pub struct PackInfo {
    /// zstd level of its frames (0: the ingest level).
    pub level: u32,
    /// Its frames, in order.
    pub frames: Vec<Arc<FrameLocation>>,
    /// Bytes of the pack and of its index as encoded.
    pub stored_bytes: u64,
    /// When the table learned of it (see [`RunPack::seq`]).
    seq: u64,
}

impl PackInfo {
    /// Its rank among the packs holding a chunk: the chunk's home is the
    /// pack of the highest (see [`rank_of`]).
    fn rank(&self) -> (u32, u64) {
        rank_of(self.level, self.seq)
    }
}

/// The one rule for a chunk's home among the packs holding it: the
/// highest `(level, seq)`, that is the higher zstd level (a compacted
/// pack), then the one the table learned of later.
pub(super) fn rank_of(level: u32, seq: u64) -> (u32, u64) {
    (level, seq)
}

/// Bases claimed for a frame ([`PackTable::claim_bases`]).
#[derive(Debug, Default)]
pub struct Claimed {
    /// The base chunks, in the order of the prefix.
    pub bases: Vec<B3Digest>,
    /// The last chunk similarity picked, if any, and which of the frame's
    /// own chunks it resembles: where the old version was found.
    pub last_similar: Option<(usize, B3Digest)>,
}

/// A place among the raw bytes of a pack's frames, in order.
#[derive(Clone, Debug)]
pub struct OldPosition {
    /// The pack.
    pub pack: Arc<str>,
    /// Raw bytes of its frames before the place.
    pub offset: u64,
}

/// Whether a frame holds (part of) a large file: its chunks average at
/// least the chunker's smallest chunk. Such frames lend themselves whole
/// as a delta's base, and the frames after them in their pack too; see
/// [`PackTable::claim_bases`].
pub fn holds_large_file(chunks: &[ChunkMeta]) -> bool {
    !chunks.is_empty()
        && raw_size(chunks) >= crate::chunker::DEFAULT_PARAMS.min as u64 * chunks.len() as u64
}

/// Chunk records kept in memory by default before the table writes them
/// to a run on local disk: about 25 MiB of table.
pub const DEFAULT_SPILL_AT: usize = 1 << 18;

/// When and where the pack table writes packs out to local disk, and
/// what else of it stays in memory.
#[derive(Clone, Debug)]
pub struct SpillPolicy {
    /// Chunk records in memory that make a run.
    pub at: usize,
    /// Folder for the runs' private folder (none: the system's temporary
    /// folder, `TMPDIR`).
    pub dir: Option<PathBuf>,
    /// Super-features per generation of the resemblance index (see
    /// [`super::resemblance`]; 0: none kept, compaction then finds no
    /// delta bases).
    pub resemblance_features: usize,
}

impl Default for SpillPolicy {
    fn default() -> Self {
        Self {
            at: DEFAULT_SPILL_AT,
            dir: None,
            resemblance_features: super::resemblance::DEFAULT_CAP,
        }
    }
}

impl SpillPolicy {
    /// The default, changed by `LAZIX_PACK_TABLE_SPILL_AT` (chunk records),
    /// `LAZIX_PACK_TABLE_DIR` (a folder) and `LAZIX_RESEMBLANCE_FEATURES`
    /// (super-features per generation) when set.
    pub fn from_env() -> Self {
        let mut policy = Self::default();
        if let Some(at) = std::env::var("LAZIX_PACK_TABLE_SPILL_AT")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            policy.at = at;
        }
        if let Some(cap) = std::env::var("LAZIX_RESEMBLANCE_FEATURES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            policy.resemblance_features = cap;
        }
        if let Some(dir) = std::env::var_os("LAZIX_PACK_TABLE_DIR") {
            policy.dir = Some(dir.into());
        }
        policy
    }
}

/// Name of a process's folder of runs: this, its pid, `-`, random.
const SPILL_PREFIX: &str = "lazix-pack-table-";

/// Removes the folders of runs left in `parent` by processes that are
/// gone (killed before they could remove their own).
fn remove_dead_processes_tables(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPILL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(folder = %entry.path().display(), "removing the pack table files of a process that is gone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs of the same size class merged into one.
const MERGE_FAN: usize = 4;

/// A run and which of its packs are still there.
struct RunSlot {
    run: Arc<Run>,
    alive: Vec<bool>,
    /// Chunk records of packs removed since the run was written.
    dead_entries: u64,
}

impl RunSlot {
    fn live_entries(&self) -> u64 {
        self.run.entry_count().saturating_sub(self.dead_entries)
    }
}

/// The chunk → frame map of every visible pack: the packs learned of
/// lately in memory, the others in runs on local disk (see
/// [`super::table_runs`]). Of two packs holding a chunk, its home is the
/// one at the higher zstd level (a compacted pack), then the one learned
/// of later.
pub struct PackTable {
    /// Home frame of each chunk of the packs in memory.
    by_chunk: HashMap<B3Digest, Arc<FrameLocation>, DigestKeyBuildHasher>,
    /// The packs in memory.
    packs: HashMap<Arc<str>, PackInfo>,
    /// Chunks some delta frame of the packs in memory uses as base: they
    /// must stay in plain frames (deltas are one level deep).
    base_refs: HashSet<B3Digest, DigestKeyBuildHasher>,
    /// Chunk records of the packs in memory.
    in_memory_chunks: usize,
    /// Runs on disk by id (ids grow). A pack on disk is found by id in
    /// each run's own index (no map of every pack: at a million packs
    /// that was most of a server's memory); it is live in one run at most.
    runs: BTreeMap<u64, RunSlot>,
    /// The highest zstd level of a pack on disk.
    max_disk_level: Option<u32>,
    next_seq: u64,
    next_run: u64,
    policy: SpillPolicy,
    /// Chunk records in memory that make a run now (raised after a failed
    /// write, so a full disk is not retried at every pack).
    spill_at: usize,
    /// The runs' private folder (after `runs`: dropped after them).
    spill_dir: Option<tempfile::TempDir>,
    /// No merge before this after one failed (a full disk is not retried
    /// at every pack).
    merges_paused_until: Option<std::time::Instant>,
    /// Whether a merge is under way (one at a time).
    merge_running: bool,
    /// Which chunk carries each super-feature, bounded (it may since have
    /// moved into a delta frame or gone: checked on lookup).
    similar: ResemblanceIndex,
    /// Chunks a compaction may be turning into deltas right now: not to be
    /// picked as bases meanwhile.
    delta_pending: HashSet<B3Digest, DigestKeyBuildHasher>,
}

impl Default for PackTable {
    fn default() -> Self {
        Self::new(SpillPolicy::default())
    }
}

/// Logs a failed read of a run: the table answers "not here" (a reader
/// then gets an error, a writer stores the chunk again).
fn run_read_failed(e: &std::io::Error) {
    tracing::error!(error = %e, "cannot read the pack table's files on local disk");
}

impl PackTable {
    /// An empty table that writes packs to disk as `policy` says.
    pub fn new(policy: SpillPolicy) -> Self {
        Self {
            by_chunk: HashMap::default(),
            packs: HashMap::new(),
            base_refs: HashSet::default(),
            in_memory_chunks: 0,
            runs: BTreeMap::new(),
            max_disk_level: None,
            next_seq: 0,
            next_run: 0,
            spill_at: policy.at.max(1),
            similar: ResemblanceIndex::with_cap(policy.resemblance_features),
            policy,
            spill_dir: None,
            merges_paused_until: None,
            merge_running: false,
            delta_pending: HashSet::default(),
        }
    }

    /// Whether no pack is loaded (the store is being opened, or empty).
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.runs.values().all(|s| !s.alive.contains(&true))
    }

    /// Whether a pack's index is loaded.
    pub fn has_pack(&self, id: &str) -> bool {
        self.packs.contains_key(id) || self.run_pack(id).is_some()
    }

    /// Every visible pack's id (as 32 bytes: at a million packs their
    /// names as strings would take a hundred megabytes more), or the error
    /// reading a run's packs (no partial list: a caller removes what is
    /// not in it).
    pub fn pack_ids(&self) -> std::io::Result<Vec<PackId>> {
        Ok(self.pack_levels()?.into_iter().map(|(id, _)| id).collect())
    }

    /// The packs on disk that are still there, read from the runs' files.
    fn live_packs_on_disk(&self) -> impl Iterator<Item = std::io::Result<RunPack>> + '_ {
        self.runs.values().flat_map(|slot| {
            slot.run
                .packs()
                .zip(&slot.alive)
                .filter(|(_, alive)| **alive)
                .map(|(p, _)| p)
        })
    }

    /// Where a live pack on disk is: its run's id, the run, and its number
    /// there.
    fn run_pack(&self, id: &str) -> Option<(u64, &RunSlot, usize)> {
        self.run_pack_by_id(&pack_id(id)?)
    }

    fn run_pack_by_id(&self, id: &PackId) -> Option<(u64, &RunSlot, usize)> {
        self.runs.iter().find_map(|(run_id, slot)| {
            slot.run
                .pack_numbers(id)
                .inspect_err(run_read_failed)
                .ok()?
                .into_iter()
                .map(|no| no as usize)
                .find(|&no| slot.alive.get(no).copied().unwrap_or(false))
                .map(|no| (*run_id, slot, no))
        })
    }

    /// A visible pack (its frames read from disk if it is there).
    pub fn pack(&self, id: &str) -> Option<PackInfo> {
        if let Some(p) = self.packs.get(id) {
            return Some(p.clone());
        }
        let (_, slot, no) = self.run_pack(id)?;
        let p = slot.run.pack(no as u32).inspect_err(run_read_failed).ok()?;
        let frames: std::io::Result<Vec<Arc<FrameLocation>>> = (p.first_frame
            ..p.first_frame + p.frames)
            .map(|f| slot.run.frame(f).map(Arc::new))
            .collect();
        match frames {
            Ok(frames) => Some(PackInfo {
                level: p.level,
                frames,
                stored_bytes: p.stored_bytes,
                seq: p.seq,
            }),
            Err(e) => {
                run_read_failed(&e);
                None
            }
        }
    }

    /// Whether some delta frame uses the chunk as a base (an unreadable run
    /// says yes: the chunk then stays plain).
    fn is_base(&self, digest: &B3Digest) -> bool {
        self.base_refs.contains(digest)
            || self
                .runs
                .values()
                .any(|slot| slot.run.is_base(digest).unwrap_or(true))
    }

    /// Files the sketches compaction made of a frame's chunks that stays
    /// plain, so that frames after it in the same run find them as bases
    /// (its new pack files them again once written).
    pub fn file_sketches(&mut self, chunks: &[B3Digest], sketches: &[Option<Sketch>]) {
        for (digest, sketch) in chunks.iter().zip(sketches) {
            if let Some(sketch) = sketch {
                self.similar.file(*digest, sketch);
            }
        }
    }

    /// Claims bases for a frame about to be delta-encoded, atomically with
    /// respect to other frames: none if one of the frame's own chunks is a
    /// base (it must stay plain); else the most similar plain chunks that
    /// `usable` accepts (GC: only live ones, which its sweep keeps) and
    /// that are not themselves being delta-encoded, widened to their
    /// frames (see [`PackTable::widen_to_frames`]) — or, where similarity
    /// finds nothing, the `follow` frames (where the old version of a large
    /// file goes on: [`PackTable::frames_around`]) — marked as bases; the
    /// frame's chunks are marked pending until [`PackTable::settle`].
    /// Returns them and the last chunk similarity matched.
    pub fn claim_bases(
        &mut self,
        own: &[B3Digest],
        sketches: &[Option<Sketch>],
        follow: &[Arc<FrameLocation>],
        usable: &(dyn Fn(&B3Digest) -> bool + Sync),
    ) -> Claimed {
        if own.iter().any(|d| self.is_base(d)) {
            return Claimed::default();
        }
        let mut seen = HashSet::new();
        let similar: Vec<(usize, B3Digest)> = sketches
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, self.most_similar(s.as_ref()?)?)))
            .filter(|(_, d)| {
                usable(d) && !own.contains(d) && !self.delta_pending.contains(d) && seen.insert(*d)
            })
            .collect();
        let picked: Vec<B3Digest> = similar.iter().map(|(_, d)| *d).collect();
        // Follow frames only where similarity found nothing: a frame it
        // placed needs no guess, and a wrong guess would stay in its base.
        let follow = if picked.is_empty() { follow } else { &[] };
        let bases = self.widen_to_frames(&picked, follow, &|d| {
            usable(d) && !own.contains(d) && !self.delta_pending.contains(d)
        });
        if !bases.is_empty() {
            self.base_refs.extend(bases.iter().copied());
            self.delta_pending.extend(own.iter().copied());
        }
        Claimed {
            bases,
            last_similar: similar.last().copied(),
        }
    }

    /// The picked bases (in order, as many as fit in [`MAX_BASE_RAW`]),
    /// each followed by the other chunks of its frame where the frame
    /// holds chunks of large files ([`holds_large_file`]) and the base
    /// stays within [`MAX_BASE_RAW`]. A reader
    /// fetches and decodes a base's whole frame anyway, so its neighbours
    /// (the rest of that stretch of the previous version's file) cost it no
    /// byte, and the delta can match what moved across chunk boundaries.
    /// Frames of small files are not widened: each base chunk is named in
    /// the delta's header (a digest and a size), too dear for a small file
    /// unlikely to match. A neighbour is taken only where its frame is its
    /// home and `eligible` accepts it. Then the `follow` frames (where the
    /// old version of a large file goes on: see
    /// [`PackTable::frames_around`]), whole where they fit.
    fn widen_to_frames(
        &self,
        picked: &[B3Digest],
        follow: &[Arc<FrameLocation>],
        eligible: &dyn Fn(&B3Digest) -> bool,
    ) -> Vec<B3Digest> {
        let mut frames: Vec<(Arc<FrameLocation>, Vec<B3Digest>)> = Vec::new();
        let mut total = 0u64;
        for d in picked {
            let Some(home) = self.locate(d) else { continue };
            let Some(size) = home.chunks.iter().find(|c| c.digest == *d).map(|c| c.size) else {
                continue;
            };
            if total.saturating_add(size) > MAX_BASE_RAW {
                break;
            }
            total += size;
            match frames.iter_mut().find(|(f, _)| f.is_same_frame(&home)) {
                Some((_, ds)) => ds.push(*d),
                None => frames.push((home, vec![*d])),
            }
        }
        for f in follow {
            if f.base.is_empty() && !frames.iter().any(|(g, _)| g.is_same_frame(f)) {
                frames.push((f.clone(), Vec::new()));
            }
        }
        let mut out = Vec::new();
        for (frame, chosen) in frames {
            let large = holds_large_file(&frame.chunks);
            let neighbours: Vec<&ChunkMeta> = frame
                .chunks
                .iter()
                .filter(|c| {
                    !chosen.contains(&c.digest)
                        && eligible(&c.digest)
                        && self
                            .locate(&c.digest)
                            .is_some_and(|home| home.is_same_frame(&frame))
                })
                .collect();
            let extra = neighbours
                .iter()
                .fold(0u64, |n, c| n.saturating_add(c.size));
            if large && total.saturating_add(extra) <= MAX_BASE_RAW {
                total += extra;
                // The whole frame in its order (each chunk once).
                let mut seen = HashSet::new();
                out.extend(frame.chunks.iter().map(|c| c.digest).filter(|d| {
                    (chosen.contains(d) || neighbours.iter().any(|n| n.digest == *d))
                        && seen.insert(*d)
                }));
            } else {
                out.extend(chosen);
            }
        }
        out
    }

    /// Where the old version continues after a chunk similarity found:
    /// the chunk's pack and the offset just past it among the raw bytes of
    /// the pack's frames in order. `None` unless the chunk is in a plain
    /// frame of a large file.
    pub fn after_chunk(&self, digest: &B3Digest) -> Option<OldPosition> {
        let home = self.locate(digest)?;
        if !home.base.is_empty() || !holds_large_file(&home.chunks) {
            return None;
        }
        let pack = self.pack(&home.pack)?;
        let at = pack.frames.iter().position(|f| f.is_same_frame(&home))?;
        let before = pack.frames[..at]
            .iter()
            .fold(0u64, |n, f| n.saturating_add(raw_size(&f.chunks)));
        let mut end = before;
        for c in home.chunks.iter() {
            end = end.saturating_add(c.size);
            if c.digest == *digest {
                return Some(OldPosition {
                    pack: home.pack.clone(),
                    offset: end,
                });
            }
        }
        None
    }

    /// The plain frames of large files in `at`'s pack that hold raw bytes
    /// of `range` around it (offsets as [`PackTable::after_chunk`] counts
    /// them): where the next frame of a new version most likely finds its
    /// old version. Ingest writes the new chunks of a large file in frames
    /// one after another, so the next stretch of the new version matches
    /// the next stretch of the old one, also where it changed too much for
    /// similarity to find it (stretches both versions share are stored
    /// once, so absent from the new frames: they shift the place until
    /// similarity finds it again).
    pub fn frames_around(&self, at: &OldPosition, range: Range<u64>) -> Vec<Arc<FrameLocation>> {
        let Some(pack) = self.pack(&at.pack) else {
            return Vec::new();
        };
        let mut start = 0u64;
        let mut out = Vec::new();
        for f in &pack.frames {
            let end = start.saturating_add(raw_size(&f.chunks));
            if start < range.end
                && range.start < end
                && f.base.is_empty()
                && holds_large_file(&f.chunks)
            {
                out.push(f.clone());
            }
            start = end;
            if start >= range.end {
                break;
            }
        }
        out
    }

    /// Chunks claimed by compactions under way ([`Self::claim_bases`]).
    #[cfg(test)]
    pub fn claims_open(&self) -> usize {
        self.delta_pending.len()
    }

    /// Ends a claim: the frame's chunks are no longer pending (the table
    /// now says where they live, plain or delta).
    pub fn settle(&mut self, own: &[B3Digest]) {
        for d in own {
            self.delta_pending.remove(d);
        }
    }

    /// Forgets a pack: chunks located in it become unknown (unless held
    /// elsewhere already). For a pack deleted by compaction or GC after
    /// its chunks were written elsewhere.
    pub fn remove_pack(&mut self, id: &str) {
        if let Some(info) = self.packs.remove(id) {
            for f in &info.frames {
                self.in_memory_chunks = self.in_memory_chunks.saturating_sub(f.chunks.len());
                for c in f.chunks.iter() {
                    if self
                        .by_chunk
                        .get(&c.digest)
                        .is_some_and(|l| l.pack.as_ref() == id)
                    {
                        self.by_chunk.remove(&c.digest);
                    }
                }
            }
        }
        if let Some((run, _, no)) = self.run_pack(id) {
            if let Some(slot) = self.runs.get_mut(&run) {
                slot.alive[no] = false;
                // Unreadable, the pack's records count as live: a merge
                // comes later, never a wrong answer.
                slot.dead_entries += slot
                    .run
                    .pack(no as u32)
                    .inspect_err(run_read_failed)
                    .map_or(0, |p| p.chunks);
            }
        }
    }

    /// Adds a pack's frames (a pack added again replaces its old self).
    pub fn add_pack(&mut self, id: &str, index: &lpb::PackIndex) -> StoreResult<()> {
        self.insert_pack(id, index, true)
    }

    /// [`PackTable::add_pack`] for a pack the table cannot hold yet (each
    /// pack a store's opening lists, added once): no search of every run
    /// for an older copy, which at a million packs cost seconds.
    pub fn add_new_pack(&mut self, id: &str, index: &lpb::PackIndex) -> StoreResult<()> {
        self.insert_pack(id, index, false)
    }

    /// Every visible pack's id and zstd level.
    pub fn pack_levels(&self) -> std::io::Result<Vec<(PackId, u32)>> {
        // Packs in memory have ids that parse (`add_pack` checks).
        self.packs
            .iter()
            .filter_map(|(id, p)| Some(Ok((pack_id(id)?, p.level))))
            .chain(
                self.live_packs_on_disk()
                    .map(|p| p.map(|p| (p.id, p.level))),
            )
            .collect()
    }

    fn insert_pack(
        &mut self,
        id: &str,
        index: &lpb::PackIndex,
        may_hold_it: bool,
    ) -> StoreResult<()> {
        if pack_id(id).is_none() {
            return Err(StoreError::Corrupt(format!(
                "pack {id:?}: not a pack's name (64 lower-case hex digits)"
            )));
        }
        let pack: Arc<str> = Arc::from(id);
        let frames = parse_index(&pack, index)?;
        if may_hold_it && self.has_pack(id) {
            self.remove_pack(id);
        }
        let pack_bytes = frames.last().map_or(0, |f| f.offset + f.length);
        let stored_bytes = pack_bytes + index.encoded_len() as u64;
        for f in &frames {
            self.base_refs.extend(f.base.iter().map(|b| b.digest));
        }
        for (frame, entry) in frames.iter().zip(&index.frames) {
            if frame.base.is_empty() && entry.sketches.len() == frame.chunks.len() * SUPER_FEATURES
            {
                for (c, sketch) in frame
                    .chunks
                    .iter()
                    .zip(entry.sketches.chunks(SUPER_FEATURES))
                {
                    self.similar.file(c.digest, sketch);
                }
            }
            self.in_memory_chunks += frame.chunks.len();
            for c in frame.chunks.iter() {
                // Learned of last: the home unless the other is at a
                // higher level (a compacted pack).
                let take = match self.by_chunk.get(&c.digest) {
                    None => true,
                    Some(l) => self
                        .packs
                        .get(&l.pack)
                        .is_none_or(|p| p.rank() < rank_of(index.level, self.next_seq)),
                };
                if take {
                    self.by_chunk.insert(c.digest, frame.clone());
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.packs.insert(
            pack,
            PackInfo {
                level: index.level,
                frames,
                stored_bytes,
                seq,
            },
        );
        if self.in_memory_chunks >= self.spill_at {
            if let Err(e) = self.spill() {
                tracing::warn!(error = %e, "cannot write the pack table to local disk; keeping it in memory");
                self.spill_at = self
                    .in_memory_chunks
                    .saturating_mul(2)
                    .max(self.policy.at.max(1));
            }
        }
        Ok(())
    }

    /// The frame holding a chunk (an unreadable run is logged and its
    /// chunks are not found: for readers, who then get an error).
    pub fn locate(&self, digest: &B3Digest) -> Option<Arc<FrameLocation>> {
        self.home(digest).unwrap_or_else(|e| {
            run_read_failed(&e);
            None
        })
    }

    /// The frame holding a chunk, or the error reading a run: for GC and
    /// compaction, which delete a pack when it is no chunk's home and so
    /// must not take "unreadable" for "elsewhere".
    pub fn home(&self, digest: &B3Digest) -> std::io::Result<Option<Arc<FrameLocation>>> {
        let in_memory = self.by_chunk.get(digest).map(|l| {
            let rank = self.packs.get(&l.pack).map_or((0, 0), PackInfo::rank);
            (rank, l)
        });
        // Packs in memory were learned of after every pack on disk.
        if let Some((rank, l)) = in_memory {
            if self.max_disk_level.is_none_or(|max| rank.0 >= max) {
                return Ok(Some(l.clone()));
            }
        }
        let mut found: Vec<(&RunSlot, Entry)> = Vec::new();
        for slot in self.runs.values() {
            if let Some(e) = slot.run.best(digest, &slot.alive)? {
                found.push((slot, e));
            }
        }
        // A pack's rank is read from disk only when there is another copy
        // to compare it with (most chunks are in one pack).
        let mut best: Option<((u32, u64), &RunSlot, u32)> = None;
        if let ([(slot, e)], None) = (found.as_slice(), &in_memory) {
            best = Some(((0, 0), slot, e.frame));
        } else {
            for (slot, e) in found {
                let rank = slot.run.pack(e.pack)?.rank();
                if best.is_none_or(|(r, _, _)| rank > r) {
                    best = Some((rank, slot, e.frame));
                }
            }
        }
        Ok(match (in_memory, best) {
            (Some((mem, l)), Some((disk, _, _))) if mem > disk => Some(l.clone()),
            (_, Some((_, slot, frame))) => Some(Arc::new(slot.run.frame(frame)?)),
            (Some((_, l)), None) => Some(l.clone()),
            (None, None) => None,
        })
    }

    /// Whether a chunk is stored.
    pub fn contains(&self, digest: &B3Digest) -> bool {
        self.by_chunk.contains_key(digest)
            || self
                .runs
                .values()
                .any(|slot| match slot.run.best(digest, &slot.alive) {
                    Ok(found) => found.is_some(),
                    Err(e) => {
                        run_read_failed(&e);
                        false
                    }
                })
    }

    /// The stored chunk most like one with `sketch` (most super-features in
    /// common), if any shares one; it lives in a plain frame.
    pub fn most_similar(&self, sketch: &Sketch) -> Option<B3Digest> {
        let filed: Vec<Option<B3Digest>> = sketch
            .iter()
            .enumerate()
            .map(|(i, sf)| self.similar.lookup(i, *sf))
            .collect();
        let mut best: Option<(B3Digest, usize)> = None;
        for at in filed.iter().flatten() {
            let score = filed.iter().filter(|d| d.as_ref() == Some(at)).count();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((*at, score));
            }
        }
        // Only a chunk in a plain frame can be a base.
        best.map(|(at, _)| at)
            .filter(|d| self.locate(d).is_some_and(|l| l.base.is_empty()))
    }

    /// What walks of the whole table read, taken now, so they can read
    /// the runs on disk without holding the table (runs never change).
    pub fn scan(&self) -> TableScan {
        let mut homes: Vec<MemoryHome> = Vec::with_capacity(self.by_chunk.len());
        for (id, pack) in &self.packs {
            // Packs in memory have ids that parse (`add_pack` checks).
            let Some(id) = pack_id(id) else { continue };
            for frame in pack.frames.iter() {
                for c in frame.chunks.iter() {
                    if self
                        .by_chunk
                        .get(&c.digest)
                        .is_some_and(|home| Arc::ptr_eq(home, frame))
                    {
                        homes.push(MemoryHome {
                            digest: c.digest,
                            size: c.size,
                            pack: id,
                            rank: pack.rank(),
                        });
                    }
                }
            }
        }
        homes.sort_unstable_by_key(|h| h.digest);
        // A frame holding a chunk twice is its home once.
        homes.dedup_by_key(|h| h.digest);
        TableScan {
            in_memory: homes,
            in_memory_packs: self.packs.keys().filter_map(|id| pack_id(id)).collect(),
            in_memory_deltas: self
                .by_chunk
                .iter()
                .filter(|(_, l)| !l.base.is_empty())
                .map(|(d, l)| (*d, l.clone()))
                .collect(),
            runs: self
                .runs
                .values()
                .map(|s| (s.run.clone(), s.alive.clone()))
                .collect(),
        }
    }

    /// Objects the visible packs take (each pack and its index) and their
    /// bytes.
    pub fn pack_totals(&self) -> std::io::Result<(u64, u64)> {
        let (mut packs, mut bytes) = (
            self.packs.len() as u64,
            self.packs.values().map(|p| p.stored_bytes).sum::<u64>(),
        );
        for p in self.live_packs_on_disk() {
            let p = p?;
            packs += 1;
            bytes += p.stored_bytes;
        }
        Ok((2 * packs, bytes))
    }

    /// Writes the packs in memory to a new run on disk (merges come after,
    /// see [`PackTable::merge_due`]).
    fn spill(&mut self) -> std::io::Result<()> {
        if self.spill_dir.is_none() {
            let parent = self.policy.dir.clone().unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&parent)?;
            remove_dead_processes_tables(&parent);
            self.spill_dir = Some(
                tempfile::Builder::new()
                    .prefix(&format!("{SPILL_PREFIX}{}-", std::process::id()))
                    .tempdir_in(&parent)?,
            );
        }
        let dir = self
            .spill_dir
            .as_ref()
            .expect("made above")
            .path()
            .to_owned();
        let id = self.next_run;
        self.next_run += 1;
        let mut w = RunWriter::create(&dir, id)?;
        let mut packs: Vec<(&Arc<str>, &PackInfo)> = self.packs.iter().collect();
        packs.sort_unstable_by_key(|(_, p)| p.seq);
        let mut entries: Vec<Entry> = Vec::with_capacity(self.in_memory_chunks);
        for (id, info) in packs {
            let id = pack_id(id)
                .ok_or_else(|| std::io::Error::other("pack table: a pack named by no id"))?;
            let no = w.pack(id, info.level, info.seq, info.stored_bytes);
            for f in &info.frames {
                let frame = w.frame(f.offset, f.length, &f.chunks, &f.base)?;
                entries.extend(f.chunks.iter().map(|c| Entry {
                    digest: *c.digest.as_bytes(),
                    pack: no,
                    frame,
                    size: c.size,
                }));
            }
        }
        let ranks: Vec<(u32, u64)> = w.packs().iter().map(RunPack::rank).collect();
        // By digest, each digest's best first (see `table_runs::prefix`).
        entries.sort_unstable_by(|a, b| {
            table_runs::prefix(&a.digest)
                .cmp(&table_runs::prefix(&b.digest))
                .then_with(|| a.digest.cmp(&b.digest))
                .then_with(|| ranks[b.pack as usize].cmp(&ranks[a.pack as usize]))
        });
        let mut bases: Vec<B3Digest> = self.base_refs.iter().copied().collect();
        bases.sort_unstable();
        let run = w.finish(entries.into_iter().map(Ok), bases.into_iter().map(Ok))?;
        tracing::debug!(
            run = id,
            packs = run.pack_count(),
            chunks = run.entry_count(),
            "pack table written to local disk"
        );
        self.take_run(id, Arc::new(run));
        // Released, not only cleared.
        self.by_chunk = HashMap::default();
        self.packs = HashMap::new();
        self.base_refs = HashSet::default();
        self.in_memory_chunks = 0;
        self.spill_at = self.policy.at.max(1);
        Ok(())
    }

    fn take_run(&mut self, id: u64, run: Arc<Run>) {
        self.max_disk_level = self.max_disk_level.max(run.max_level());
        self.runs.insert(
            id,
            RunSlot {
                alive: vec![true; run.pack_count()],
                dead_entries: 0,
                run,
            },
        );
    }

    /// Runs to merge now: one with more records of removed packs than
    /// live ones (rewritten alone), else [`MERGE_FAN`] of one size class.
    fn runs_to_merge(&self) -> Vec<u64> {
        if let Some((id, _)) = self
            .runs
            .iter()
            .find(|(_, s)| s.dead_entries > s.live_entries())
        {
            return vec![*id];
        }
        let class = |n: u64| {
            let mut x = n / self.policy.at.max(1) as u64;
            let mut c = 0;
            while x >= MERGE_FAN as u64 {
                x /= MERGE_FAN as u64;
                c += 1;
            }
            c
        };
        let mut by_class: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (id, slot) in &self.runs {
            by_class
                .entry(class(slot.live_entries()))
                .or_default()
                .push(*id);
        }
        by_class
            .into_values()
            .find(|ids| ids.len() >= MERGE_FAN)
            .map(|ids| ids.into_iter().take(MERGE_FAN).collect())
            .unwrap_or_default()
    }

    /// Whether [`PackTable::merge_due`] may have work (cheap: for a read
    /// lock, before taking the write lock).
    pub fn merge_may_be_due(&self) -> bool {
        !self.merge_running
            && (self.runs.len() >= MERGE_FAN
                || self
                    .runs
                    .values()
                    .any(|s| s.dead_entries > s.live_entries()))
    }

    /// A merge of runs to do now, if one is due and none is under way
    /// (see [`MergePlan`]); the caller does it without holding the table
    /// and hands the result to [`PackTable::merge_done`].
    pub fn merge_due(&mut self) -> Option<MergePlan> {
        if self.merge_running
            || self
                .merges_paused_until
                .is_some_and(|t| std::time::Instant::now() < t)
        {
            return None;
        }
        let ids = self.runs_to_merge();
        if ids.is_empty() {
            return None;
        }
        let dir = self.spill_dir.as_ref()?.path().to_owned();
        let id = self.next_run;
        self.next_run += 1;
        self.merge_running = true;
        Some(MergePlan {
            dir,
            id,
            sources: ids
                .iter()
                .filter_map(|i| {
                    self.runs
                        .get(i)
                        .map(|s| (*i, s.run.clone(), s.alive.clone()))
                })
                .collect(),
        })
    }

    /// Puts a merged run in place of its sources. Packs removed (or added
    /// again) while it was being written are marked gone in it. A failed
    /// merge is logged and pauses merging for a minute (the runs stay as
    /// they are, all readable).
    pub fn merge_done(&mut self, plan: MergePlan, merged: std::io::Result<Run>) {
        self.merge_running = false;
        let merged = match merged {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot merge the pack table's files on local disk");
                self.merges_paused_until =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
                return;
            }
        };
        // The merged run's packs are the sources' packs that were there
        // when it started, in order: each is still there if the table
        // still has it live where it was (removing a pack, or adding it
        // again, marks it gone there).
        let still: Vec<bool> = plan
            .sources
            .iter()
            .flat_map(|(run_id, run, alive)| {
                (0..run.pack_count())
                    .filter(|no| alive.get(*no).copied().unwrap_or(false))
                    .map(|no| {
                        self.runs
                            .get(run_id)
                            .is_some_and(|s| s.alive.get(no).copied().unwrap_or(false))
                    })
            })
            .collect();
        if still.len() != merged.pack_count() {
            tracing::error!("a merged pack table run does not match its sources; dropped");
            self.merges_paused_until =
                Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
            return;
        }
        tracing::debug!(runs = ?plan.sources.iter().map(|s| s.0).collect::<Vec<_>>(), into = plan.id, chunks = merged.entry_count(), "pack table runs merged");
        for (run_id, _, _) in &plan.sources {
            self.runs.remove(run_id);
        }
        // Unreadable, a pack's records count as live: a merge comes
        // later, never a wrong answer.
        let dead_entries = still
            .iter()
            .enumerate()
            .filter(|(_, there)| !**there)
            .map(|(no, _)| {
                merged
                    .pack(no as u32)
                    .inspect_err(run_read_failed)
                    .map_or(0, |p| p.chunks)
            })
            .sum();
        if still.contains(&true) {
            self.runs.insert(
                plan.id,
                RunSlot {
                    run: Arc::new(merged),
                    alive: still,
                    dead_entries,
                },
            );
        }
        self.max_disk_level = self.runs.values().filter_map(|s| s.run.max_level()).max();
    }
}

/// Runs to merge, taken as they were when the merge started: merging
/// reads only them (immutable), so it runs without holding the table.
pub struct MergePlan {
    dir: PathBuf,
    id: u64,
    /// Each run's id, the run, and which of its packs were there.
    sources: Vec<(u64, Arc<Run>, Vec<bool>)>,
}

impl MergePlan {
    /// Writes the merged run (blocking file I/O).
    pub fn merge(&self) -> std::io::Result<Run> {
        let sources: Vec<MergeSource<'_>> = self
            .sources
            .iter()
            .map(|(_, run, alive)| MergeSource { run, alive })
            .collect();
        table_runs::merge(&self.dir, self.id, &sources)
    }
}

/// A chunk whose home is a pack in memory, as a scan took it.
struct MemoryHome {
    digest: B3Digest,
    size: u64,
    pack: PackId,
    rank: (u32, u64),
}

/// A chunk record of a run, with what a walk ranks it by.
struct RunHome {
    digest: [u8; 32],
    size: u64,
    pack: PackId,
    rank: (u32, u64),
}

/// What GC's sweep decides a pack's fate by: of the chunks whose home it
/// is, the raw bytes of the live ones and how many are dead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomeTally {
    pub live_raw: u64,
    pub dead_chunks: u64,
}

/// The table as it was when [`PackTable::scan`] took it: the chunks in
/// memory and the runs on disk.
pub struct TableScan {
    /// Chunks whose home is a pack in memory, by digest.
    in_memory: Vec<MemoryHome>,
    /// The packs in memory.
    in_memory_packs: Vec<PackId>,
    /// Chunks in memory whose home is a delta frame.
    in_memory_deltas: Vec<(B3Digest, Arc<FrameLocation>)>,
    /// The runs and which of their packs are still there.
    runs: Vec<(Arc<Run>, Vec<bool>)>,
}

impl TableScan {
    /// The bases of every delta frame holding a chunk `live` says is
    /// live (frames on disk count whether or not they are the chunk's
    /// home, which keeps more, never less).
    pub fn bases_of_live(&self, live: impl Fn(&B3Digest) -> bool) -> StoreResult<Vec<B3Digest>> {
        let mut bases: Vec<B3Digest> = self
            .in_memory_deltas
            .iter()
            .filter(|(d, _)| live(d))
            .flat_map(|(_, l)| l.base.iter().map(|b| b.digest))
            .collect();
        for (run, alive) in &self.runs {
            for frame in run.frames() {
                let (rec, chunks, base) = frame?;
                if base.is_empty() || !alive.get(rec.pack as usize).copied().unwrap_or(false) {
                    continue;
                }
                if chunks.iter().any(|c| live(&c.digest)) {
                    bases.extend(base.iter().map(|b| b.digest));
                }
            }
        }
        Ok(bases)
    }

    /// Calls `each` once for every chunk [`PackTable::home`] finds, in
    /// digest order, with its raw size and its home pack (the higher
    /// level, then the later), reading the runs on disk from start to end
    /// instead of looking each chunk up.
    fn for_each_home(&self, mut each: impl FnMut(&B3Digest, u64, &PackId)) -> StoreResult<()> {
        // Each run's packs' ids and ranks, read once for the walk (the
        // records come in digest order, their packs in any).
        let packs: Vec<Vec<(PackId, (u32, u64))>> = self
            .runs
            .iter()
            .map(|(run, _)| {
                run.packs()
                    .map(|p| p.map(|p| (p.id, p.rank())))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .collect::<std::io::Result<_>>()?;
        let sources: Vec<Box<dyn Iterator<Item = std::io::Result<RunHome>> + '_>> = self
            .runs
            .iter()
            .zip(&packs)
            .map(|((run, alive), packs)| {
                Box::new(run.entries().filter_map(move |e| {
                    let e = match e {
                        Ok(e) => e,
                        Err(e) => return Some(Err(e)),
                    };
                    if !alive.get(e.pack as usize).copied().unwrap_or(false) {
                        return None;
                    }
                    Some(match packs.get(e.pack as usize) {
                        Some((id, rank)) => Ok(RunHome {
                            digest: e.digest,
                            size: e.size,
                            pack: *id,
                            rank: *rank,
                        }),
                        None => Err(std::io::Error::other("pack table run: record of no pack")),
                    })
                })) as Box<dyn Iterator<Item = std::io::Result<RunHome>>>
            })
            .collect();
        let mut memory = self.in_memory.iter().peekable();
        // The chunks in memory before `disk` (all that are left without
        // one), then `disk`'s chunk from whichever side ranks higher.
        let mut emit = |disk: Option<&RunHome>| {
            while let Some(m) =
                memory.next_if(|m| disk.is_none_or(|d| m.digest.as_bytes() < &d.digest))
            {
                each(&m.digest, m.size, &m.pack);
            }
            let Some(d) = disk else { return };
            match memory.next_if(|m| m.digest.as_bytes() == &d.digest) {
                Some(m) if m.rank > d.rank => each(&m.digest, m.size, &m.pack),
                _ => each(&B3Digest::from(d.digest), d.size, &d.pack),
            }
        };
        let mut best: Option<RunHome> = None;
        for record in merge_sorted(sources, |r: &RunHome| {
            (table_runs::prefix(&r.digest), r.digest)
        }) {
            let record = record?;
            match &best {
                Some(b) if b.digest == record.digest => {
                    if record.rank > b.rank {
                        best = Some(record);
                    }
                }
                _ => {
                    if let Some(done) = best.replace(record) {
                        emit(Some(&done));
                    }
                }
            }
        }
        if let Some(done) = best {
            emit(Some(&done));
        }
        emit(None);
        Ok(())
    }

    /// Distinct chunks and their raw bytes (each counted once).
    pub fn chunk_totals(&self) -> StoreResult<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        self.for_each_home(|_, size, _| {
            count += 1;
            bytes += size;
        })?;
        Ok((count, bytes))
    }

    /// Each pack's [`HomeTally`] by `live`, for every pack of the scan
    /// (a pack that is no chunk's home has an empty one).
    pub fn home_tallies(
        &self,
        live: impl Fn(&B3Digest) -> bool,
    ) -> StoreResult<HashMap<PackId, HomeTally, DigestKeyBuildHasher>> {
        let mut on_disk = Vec::new();
        for (run, alive) in &self.runs {
            for (p, alive) in run.packs().zip(alive) {
                let p = p?;
                if *alive {
                    on_disk.push(p.id);
                }
            }
        }
        let mut tallies: HashMap<PackId, HomeTally, DigestKeyBuildHasher> = self
            .in_memory_packs
            .iter()
            .copied()
            .chain(on_disk)
            .map(|id| (id, HomeTally::default()))
            .collect();
        self.for_each_home(|digest, size, pack| {
            if let Some(t) = tallies.get_mut(pack) {
                if live(digest) {
                    t.live_raw += size;
                } else {
                    t.dead_chunks += 1;
                }
            }
        })?;
        Ok(tallies)
    }
}

fn parse_index(pack: &Arc<str>, index: &lpb::PackIndex) -> StoreResult<Vec<Arc<FrameLocation>>> {
    let mut end = 0u64;
    index
        .frames
        .iter()
        .map(|f| {
            if f.offset != end || f.length == 0 || f.chunks.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "pack {pack}: index has a gap, overlap or empty frame at {}",
                    f.offset
                )));
            }
            end = f.offset + f.length;
            let metas = |list: &[lpb::ChunkMeta]| {
                list.iter()
                    .map(ChunkMeta::try_from_proto)
                    .collect::<StoreResult<Vec<_>>>()
                    .map_err(|e| StoreError::Corrupt(format!("pack {pack}: {e}")))
            };
            Ok(Arc::new(FrameLocation {
                pack: pack.clone(),
                offset: f.offset,
                length: f.length,
                chunks: metas(&f.chunks)?.into(),
                base: metas(&f.base)?.into(),
            }))
        })
        .collect()
}

/// A pack ready to be written: its bytes (frames back to back), its index
/// and its content-derived id.
pub struct NewPack {
    /// BLAKE3 hex of `bytes`.
    pub id: String,
    /// The frames' bytes in order.
    pub bytes: bytes::Bytes,
    /// The index to write after the pack.
    pub index: lpb::PackIndex,
}

impl NewPack {
    /// Lays frames out back to back, each with the sketches of its chunks
    /// where it has any (recorded for plain frames only: only they can be
    /// delta bases; compaction sketches, uploads do not);
    /// `level` is the zstd level they were compressed at, `order` the
    /// upload call's place (see [`crate::store::BlobStore::put_frames_ordered`]).
    pub fn build(frames: &[(Frame, Vec<Option<Sketch>>)], level: u32, order: u64) -> Self {
        let mut bytes = Vec::with_capacity(frames.iter().map(|(f, _)| f.data.len()).sum());
        let mut index = lpb::PackIndex {
            level,
            upload_order: order,
            ..Default::default()
        };
        for (f, sketches) in frames {
            // (None where no chunk was sketched: an upload's frames.)
            let sketches = if f.base.is_empty() && sketches.iter().any(Option::is_some) {
                sketches
                    .iter()
                    .flat_map(|s| s.unwrap_or_default())
                    .collect()
            } else {
                Vec::new()
            };
            index.frames.push(lpb::PackFrame {
                offset: bytes.len() as u64,
                length: f.data.len() as u64,
                chunks: f.chunks.iter().map(ChunkMeta::to_proto).collect(),
                base: f.base.iter().map(ChunkMeta::to_proto).collect(),
                sketches,
            });
            bytes.extend_from_slice(&f.data);
        }
        Self {
            id: B3Digest::of(&bytes).to_hex(),
            bytes: bytes.into(),
            index,
        }
    }

    /// The encoded index.
    pub fn encoded_index(&self) -> Vec<u8> {
        self.index.encode_to_vec()
    }
}

/// Decodes a stored index.
pub fn decode_index(id: &str, data: &[u8]) -> StoreResult<lpb::PackIndex> {
    lpb::PackIndex::decode(data).map_err(|e| StoreError::Corrupt(format!("pack index {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::frame_of;

    fn chunks_of(i: usize) -> [Vec<u8>; 2] {
        [format!("pack {i}, chunk a"), format!("pack {i}, chunk b")].map(String::into_bytes)
    }

    fn pack(i: usize) -> NewPack {
        let [a, b] = chunks_of(i);
        NewPack::build(&[(frame_of(&[&a, &b]), vec![None, None])], 3, 0)
    }

    fn first_chunk(i: usize) -> B3Digest {
        B3Digest::of(&chunks_of(i)[0])
    }

    /// A table that writes every pack (two chunks) to a run of its own.
    fn run_per_pack_table(dir: &tempfile::TempDir) -> PackTable {
        PackTable::new(SpillPolicy {
            at: 2,
            dir: Some(dir.path().to_owned()),
            ..SpillPolicy::default()
        })
    }

    #[test]
    fn packs_removed_or_added_again_during_a_merge_are_gone_from_the_merged_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = run_per_pack_table(&dir);
        let packs: Vec<NewPack> = (0..5).map(pack).collect();
        for p in &packs[..4] {
            table.add_pack(&p.id, &p.index).unwrap();
        }
        let plan = table.merge_due().expect("four runs of a size are due");
        // While the merge is written: pack 0 removed, pack 1 added again
        // (a new run of its own), pack 4 added.
        table.remove_pack(&packs[0].id);
        table.add_pack(&packs[1].id, &packs[1].index).unwrap();
        table.add_pack(&packs[4].id, &packs[4].index).unwrap();
        assert!(table.merge_due().is_none(), "one merge at a time");
        let merged = plan.merge();
        table.merge_done(plan, merged);

        assert!(!table.has_pack(&packs[0].id));
        assert!(table.locate(&first_chunk(0)).is_none());
        for (i, p) in packs.iter().enumerate().skip(1) {
            assert!(table.has_pack(&p.id), "pack {i}");
            let home = table.locate(&first_chunk(i)).expect("found");
            assert_eq!(home.pack.as_ref(), p.id, "pack {i}");
        }
        assert_eq!(table.pack_ids().unwrap().len(), 4);
        assert_eq!(table.scan().chunk_totals().unwrap().0, 8);
        // Pack 1's copy in the merged run is gone: removing its new copy
        // leaves its chunks nowhere.
        table.remove_pack(&packs[1].id);
        assert!(table.locate(&first_chunk(1)).is_none());
    }

    #[test]
    fn a_pack_on_disk_removed_and_added_again_is_found_once_in_its_new_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = run_per_pack_table(&dir);
        let packs: Vec<NewPack> = (0..3).map(pack).collect();
        for p in &packs {
            table.add_pack(&p.id, &p.index).unwrap();
        }
        let (_, bytes) = table.pack_totals().unwrap();
        table.remove_pack(&packs[1].id);
        assert!(!table.has_pack(&packs[1].id));
        assert!(table.pack(&packs[1].id).is_none());
        assert_eq!(table.pack_ids().unwrap().len(), 2);
        table.add_pack(&packs[1].id, &packs[1].index).unwrap();
        assert_eq!(table.runs.len(), 4, "the old run keeps a dead copy");
        assert!(table.has_pack(&packs[1].id));
        let id = pack_id(&packs[1].id).unwrap();
        assert_eq!(
            table
                .pack_levels()
                .unwrap()
                .iter()
                .filter(|(p, _)| *p == id)
                .collect::<Vec<_>>(),
            [&(id, 3)]
        );
        assert_eq!(table.pack_ids().unwrap().len(), 3);
        assert_eq!(table.pack_totals().unwrap(), (6, bytes));
        let home = table.locate(&first_chunk(1)).expect("found");
        assert_eq!(home.pack.as_ref(), packs[1].id);
        // Removed again: nowhere, although a run still holds its records.
        table.remove_pack(&packs[1].id);
        assert!(!table.has_pack(&packs[1].id));
        assert!(table.locate(&first_chunk(1)).is_none());
        assert!(!table.is_empty());
        for p in [&packs[0], &packs[2]] {
            table.remove_pack(&p.id);
        }
        assert!(table.is_empty(), "runs of dead packs only");
    }

    #[test]
    fn a_pack_whose_name_is_no_pack_id_is_refused() {
        let mut table = PackTable::default();
        let p = pack(0);
        for name in ["pack-0", &p.id.to_uppercase(), &p.id[..63]] {
            assert!(matches!(
                table.add_pack(name, &p.index),
                Err(StoreError::Corrupt(_))
            ));
        }
        assert!(table.is_empty());
    }

    #[test]
    fn a_walk_of_the_table_finds_each_chunks_home_as_a_lookup_does() {
        let dir = tempfile::tempdir().unwrap();
        // Packs 1 and 2 (five chunk records) go to a run on disk; packs 3
        // and 4 stay in memory.
        let mut table = PackTable::new(SpillPolicy {
            at: 5,
            dir: Some(dir.path().to_owned()),
            ..SpillPolicy::default()
        });
        let [v, w, x, y, z]: [&[u8]; 5] = [
            b"chunk v",
            b"chunk w",
            b"chunk x",
            b"chunk y!",
            b"chunk z!!",
        ];
        let build = |chunks: &[&[u8]], level| {
            NewPack::build(&[(frame_of(chunks), vec![None; chunks.len()])], level, 0)
        };
        let p1 = build(&[x, y, v], 3);
        let p2 = build(&[y, z], 17); // compacted: the home of y and z
        let p3 = build(&[x, z, w], 3); // later than p1: the home of x
        let p4 = build(&[y], 3); // later, but below p2's level
        for p in [&p1, &p2, &p3, &p4] {
            table.add_pack(&p.id, &p.index).unwrap();
        }
        assert_eq!(table.runs.len(), 1, "packs 1 and 2 on disk");
        assert_eq!(table.packs.len(), 2, "packs 3 and 4 in memory");

        let home = |c: &[u8]| table.home(&B3Digest::of(c)).unwrap().unwrap().pack.clone();
        let expected = [(x, &p3), (y, &p2), (z, &p2), (w, &p3), (v, &p1)];
        for (c, p) in expected {
            assert_eq!(home(c).as_ref(), p.id);
        }
        let scan = table.scan();
        let all: u64 = [v, w, x, y, z].iter().map(|c| c.len() as u64).sum();
        assert_eq!(scan.chunk_totals().unwrap(), (5, all));

        let live = [B3Digest::of(x), B3Digest::of(z)];
        let tallies = scan.home_tallies(|d| live.contains(d)).unwrap();
        let tally = |p: &NewPack| tallies[&pack_id(&p.id).expect("a pack id")];
        let t = |live_raw: usize, dead_chunks| HomeTally {
            live_raw: live_raw as u64,
            dead_chunks,
        };
        assert_eq!(tally(&p1), t(0, 1)); // v
        assert_eq!(tally(&p2), t(z.len(), 1)); // z live, y dead
        assert_eq!(tally(&p3), t(x.len(), 1)); // x live, w dead
        assert_eq!(tally(&p4), t(0, 0)); // no chunk's home
        assert_eq!(tallies.len(), 4);
    }
}
