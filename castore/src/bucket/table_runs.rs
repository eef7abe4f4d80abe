//! The part of the pack table kept on local disk, so that a server's memory
//! does not grow with its store.
//!
//! The table keeps packs it learned of lately in memory; past a bound it
//! writes them out as a *run*: immutable files in a private temporary
//! folder holding their frames, every chunk's location sorted by digest,
//! and the digests some delta frame uses as base, sorted too. A lookup
//! reads one block of 128 records per run, found through a small in-memory
//! index of each block's first digest. Runs are merged when they pile up
//! (four of a size into one), in the background while lookups go on in the
//! old runs, which also drops the packs removed since they were written;
//! until then a removed pack's records stay on disk and the table skips
//! them. The files are a cache of the pack indexes in the
//! store: nothing is lost with them, and a new process builds its own.
//!
//! A run's packs are on disk too (fixed records by number, and their ids
//! sorted for finding one by id, in blocks of 16), so that what a run
//! keeps in memory is 8 bytes per block of records and a byte a pack
//! (whether it is still there), whatever the number of its packs: at a
//! million packs their records in memory were 77 bytes a pack.
//!
//! Like a log-structured merge tree, this favours writes (a run is written
//! sequentially once per merge level) and reads that ask for a few
//! chunks at a time; reads that walk everything (GC, `stats`) stream the
//! files in order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;

use super::keys::PackId;
use super::packs::FrameLocation;

/// Records per block of a sorted file: a lookup reads one block (or two
/// when a digest's records straddle blocks).
const BLOCK: usize = 128;
/// Records per block of a run's pack ids: smaller, since a pack is looked
/// up by id in every run (removing a pack, GC's catching up), against 8
/// bytes in memory per block.
const PACK_ID_BLOCK: usize = 16;
/// A location record: digest, pack number in the run (u32), frame number
/// in the run (u32), chunk size (u64).
const ENTRY: usize = 48;
/// A base record: a digest.
const BASE: usize = 32;
/// A frame record: pack number (u32), chunks (u32), bases (u32), padding
/// (u32), offset in the pack (u64), length (u64), first chunk meta (u64).
const FRAME: usize = 40;
/// A chunk meta record: digest, size (u64).
const META: usize = 40;
/// A pack record: id, level (u32), frames (u32), seq (u64), stored bytes
/// (u64), first frame (u32), padding (u32), chunks (u64).
const PACK: usize = 72;
/// A pack's id and its number in the run (u32), sorted by id.
const PACK_ID: usize = 36;

/// The little-endian u32 at byte `i` of a record.
fn u32_at(r: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"))
}

/// The little-endian u64 at byte `i` of a record.
fn u64_at(r: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"))
}

/// Where one chunk is, in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub digest: [u8; 32],
    pub pack: u32,
    pub frame: u32,
    pub size: u64,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY] {
        let mut r = [0u8; ENTRY];
        r[..32].copy_from_slice(&self.digest);
        r[32..36].copy_from_slice(&self.pack.to_le_bytes());
        r[36..40].copy_from_slice(&self.frame.to_le_bytes());
        r[40..48].copy_from_slice(&self.size.to_le_bytes());
        r
    }

    fn decode(r: &[u8; ENTRY]) -> Self {
        Self {
            digest: r[..32].try_into().expect("32 bytes"),
            pack: u32_at(r, 32),
            frame: u32_at(r, 36),
            size: u64_at(r, 40),
        }
    }
}

/// One frame of a run.
#[derive(Clone, Copy, Debug)]
pub struct FrameRecord {
    pub pack: u32,
    pub chunks: u32,
    pub bases: u32,
    pub offset: u64,
    pub length: u64,
    /// Position of its first chunk meta (its bases follow its chunks).
    pub metas_at: u64,
}

impl FrameRecord {
    fn encode(&self) -> [u8; FRAME] {
        let mut r = [0u8; FRAME];
        r[..4].copy_from_slice(&self.pack.to_le_bytes());
        r[4..8].copy_from_slice(&self.chunks.to_le_bytes());
        r[8..12].copy_from_slice(&self.bases.to_le_bytes());
        r[16..24].copy_from_slice(&self.offset.to_le_bytes());
        r[24..32].copy_from_slice(&self.length.to_le_bytes());
        r[32..40].copy_from_slice(&self.metas_at.to_le_bytes());
        r
    }

    fn decode(r: &[u8; FRAME]) -> Self {
        Self {
            pack: u32_at(r, 0),
            chunks: u32_at(r, 4),
            bases: u32_at(r, 8),
            offset: u64_at(r, 16),
            length: u64_at(r, 24),
            metas_at: u64_at(r, 32),
        }
    }
}

fn encode_meta(m: &ChunkMeta) -> [u8; META] {
    let mut r = [0u8; META];
    r[..32].copy_from_slice(m.digest.as_bytes());
    r[32..].copy_from_slice(&m.size.to_le_bytes());
    r
}

/// A frame's metas as read (its chunks, then its bases), decoded.
fn split_metas(buf: &[u8], rec: &FrameRecord) -> (Vec<ChunkMeta>, Vec<ChunkMeta>) {
    let mut chunks: Vec<ChunkMeta> = buf.chunks_exact(META).map(decode_meta).collect();
    let base = chunks.split_off((rec.chunks as usize).min(chunks.len()));
    (chunks, base)
}

fn decode_meta(r: &[u8]) -> ChunkMeta {
    let digest: [u8; 32] = r[..32].try_into().expect("32 bytes");
    ChunkMeta {
        digest: digest.into(),
        size: u64_at(r, 32),
    }
}

/// One pack of a run (a 72-byte record in the run's pack file; in memory
/// only while the run is written and while a walk reads it).
#[derive(Clone, Debug)]
pub struct RunPack {
    pub id: PackId,
    /// zstd level of its frames.
    pub level: u32,
    /// When the table learned of it: of two packs holding a chunk, the one
    /// at the higher level is its home, then the later.
    pub seq: u64,
    /// Bytes of the pack and its index.
    pub stored_bytes: u64,
    /// Its frames: `first_frame..first_frame + frames`.
    pub first_frame: u32,
    pub frames: u32,
    /// Chunk records it has in the run.
    pub chunks: u64,
}

impl RunPack {
    /// Which of two packs is a chunk's home: the greater.
    pub fn rank(&self) -> (u32, u64) {
        super::packs::rank_of(self.level, self.seq)
    }

    fn encode(&self) -> [u8; PACK] {
        let mut r = [0u8; PACK];
        r[..32].copy_from_slice(self.id.as_bytes());
        r[32..36].copy_from_slice(&self.level.to_le_bytes());
        r[36..40].copy_from_slice(&self.frames.to_le_bytes());
        r[40..48].copy_from_slice(&self.seq.to_le_bytes());
        r[48..56].copy_from_slice(&self.stored_bytes.to_le_bytes());
        r[56..60].copy_from_slice(&self.first_frame.to_le_bytes());
        r[64..72].copy_from_slice(&self.chunks.to_le_bytes());
        r
    }

    fn decode(r: &[u8; PACK]) -> Self {
        let id: [u8; 32] = r[..32].try_into().expect("32 bytes");
        Self {
            id: id.into(),
            level: u32_at(r, 32),
            frames: u32_at(r, 36),
            seq: u64_at(r, 40),
            stored_bytes: u64_at(r, 48),
            first_frame: u32_at(r, 56),
            chunks: u64_at(r, 64),
        }
    }
}

/// A file of fixed-size records sorted by their first 32 bytes, with the
/// first 8 bytes of each block's first record in memory.
struct Sorted<const REC: usize, const BLK: usize = BLOCK> {
    file: File,
    len: u64,
    block_starts: Vec<u64>,
}

/// A digest's first 8 bytes as a big-endian number: ordered as the
/// digests are (of two random digests the prefixes nearly always differ,
/// so sorting and merging by `(prefix, digest)` compares whole digests
/// only on a tie).
pub fn prefix(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl<const REC: usize, const BLK: usize> Sorted<REC, BLK> {
    /// Calls `each` with every record of `digest`, in file order, until it
    /// returns false.
    fn find(&self, digest: &[u8; 32], mut each: impl FnMut(&[u8; REC]) -> bool) -> io::Result<()> {
        let wanted = prefix(digest);
        // The last block starting below the digest's prefix: no record of
        // the digest can be before it.
        let mut block = self
            .block_starts
            .partition_point(|&p| p < wanted)
            .saturating_sub(1);
        let mut buf = vec![0u8; BLK * REC];
        while (block as u64) * (BLK as u64) < self.len {
            let first = block as u64 * BLK as u64;
            let n = (self.len - first).min(BLK as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n * REC], first * REC as u64)?;
            let records = &buf[..n * REC];
            // The block's records are sorted: skip the smaller ones.
            let skip = partition_point_records::<REC>(records, digest);
            for r in records[skip * REC..].chunks_exact(REC) {
                let r: &[u8; REC] = r.try_into().expect("a record");
                match r[..32].cmp(&digest[..]) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        if !each(r) {
                            return Ok(());
                        }
                    }
                    std::cmp::Ordering::Greater => return Ok(()),
                }
            }
            block += 1;
        }
        Ok(())
    }

    /// Every record, in order.
    fn records(&self) -> Records<'_, REC> {
        Records {
            reader: read_from_start(&self.file),
            left: self.len,
        }
    }
}

/// Reads a file from a position of its own (the file's cursor is shared
/// by every reader of the run).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A buffered sequential read of a file from its start.
fn read_from_start(file: &File) -> BufReader<At<'_>> {
    BufReader::with_capacity(256 * 1024, At { file, pos: 0 })
}

/// How many of `records` (sorted) are below `digest`.
fn partition_point_records<const REC: usize>(records: &[u8], digest: &[u8; 32]) -> usize {
    let (mut lo, mut hi) = (0, records.len() / REC);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if records[mid * REC..mid * REC + 32] < digest[..] {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A sequential read of fixed-size records.
struct Records<'a, const REC: usize> {
    reader: BufReader<At<'a>>,
    left: u64,
}

impl<const REC: usize> Iterator for Records<'_, REC> {
    type Item = io::Result<[u8; REC]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut r = [0u8; REC];
        Some(self.reader.read_exact(&mut r).map(|()| r).inspect_err(|_| {
            // Part of a record may be read: what follows would decode
            // shifted.
            self.left = 0;
        }))
    }
}

struct SortedWriter<const REC: usize, const BLK: usize = BLOCK> {
    out: BufWriter<File>,
    len: u64,
    block_starts: Vec<u64>,
    last: Option<[u8; 32]>,
}

impl<const REC: usize, const BLK: usize> SortedWriter<REC, BLK> {
    fn create(path: &Path) -> io::Result<Self> {
        Ok(Self {
            out: BufWriter::with_capacity(256 * 1024, create(path)?),
            len: 0,
            block_starts: Vec::new(),
            last: None,
        })
    }

    fn push(&mut self, r: &[u8; REC]) -> io::Result<()> {
        let key: [u8; 32] = r[..32].try_into().expect("32 bytes");
        if self.last.is_some_and(|l| l > key) {
            return Err(io::Error::other("pack table run: records out of order"));
        }
        self.last = Some(key);
        if self.len.is_multiple_of(BLK as u64) {
            self.block_starts.push(prefix(&key));
        }
        self.out.write_all(r)?;
        self.len += 1;
        Ok(())
    }

    fn finish(self) -> io::Result<Sorted<REC, BLK>> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Sorted {
            file,
            len: self.len,
            block_starts: self.block_starts,
        })
    }
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// The files of run `id` in `dir`.
fn run_paths(dir: &Path, id: u64) -> [PathBuf; 6] {
    ["entries", "bases", "frames", "metas", "packs", "packids"]
        .map(|part| dir.join(format!("run-{id}.{part}")))
}

/// An immutable run of packs on local disk; its files go with it.
pub struct Run {
    _files: RemovedOnDrop,
    entries: Sorted<ENTRY>,
    bases: Sorted<BASE>,
    frames: File,
    frame_count: u32,
    metas: File,
    meta_count: u64,
    /// Its packs, in the order their frames are stored.
    packs: File,
    pack_count: u32,
    /// Their ids and numbers, sorted by id.
    pack_ids: Sorted<PACK_ID, PACK_ID_BLOCK>,
    /// The highest zstd level of its packs (`None`: no pack).
    max_level: Option<u32>,
}

impl Run {
    /// The numbers of pack `id` in this run: one or none (a run is
    /// written from packs in memory, one per id, or merged from the live
    /// packs of other runs, each live in one run at most).
    pub fn pack_numbers(&self, id: &PackId) -> io::Result<Vec<u32>> {
        let mut numbers = Vec::new();
        self.pack_ids.find(id.as_bytes(), |r| {
            numbers.push(u32_at(r, 32));
            true
        })?;
        Ok(numbers)
    }

    /// How many packs it holds (removed ones included).
    pub fn pack_count(&self) -> usize {
        self.pack_count as usize
    }

    /// Its pack number `no`.
    pub fn pack(&self, no: u32) -> io::Result<RunPack> {
        if no >= self.pack_count {
            return Err(io::Error::other("pack table run: no such pack"));
        }
        let mut r = [0u8; PACK];
        self.packs.read_exact_at(&mut r, no as u64 * PACK as u64)?;
        Ok(RunPack::decode(&r))
    }

    /// Its packs, in order (their number is their position).
    pub fn packs(&self) -> impl Iterator<Item = io::Result<RunPack>> + '_ {
        Records::<PACK> {
            reader: read_from_start(&self.packs),
            left: self.pack_count as u64,
        }
        .map(|r| r.map(|r| RunPack::decode(&r)))
    }

    /// The highest zstd level of its packs, removed ones included.
    pub fn max_level(&self) -> Option<u32> {
        self.max_level
    }

    /// Chunk records (one per chunk of each frame, removed packs included).
    pub fn entry_count(&self) -> u64 {
        self.entries.len
    }

    /// The home record of a chunk in this run among packs `alive` says are
    /// still there: the first (records of a digest are stored best first).
    pub fn best(&self, digest: &B3Digest, alive: &[bool]) -> io::Result<Option<Entry>> {
        let mut found = None;
        self.entries.find(digest.as_bytes(), |r| {
            let e = Entry::decode(r);
            if alive.get(e.pack as usize).copied().unwrap_or(false) {
                found = Some(e);
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// Whether a frame of this run (of any pack, removed or not) uses the
    /// chunk as a delta base.
    pub fn is_base(&self, digest: &B3Digest) -> io::Result<bool> {
        let mut found = false;
        self.bases.find(digest.as_bytes(), |_| {
            found = true;
            false
        })?;
        Ok(found)
    }

    /// A frame's record.
    pub fn frame_record(&self, frame: u32) -> io::Result<FrameRecord> {
        if frame >= self.frame_count {
            return Err(io::Error::other("pack table run: no such frame"));
        }
        let mut r = [0u8; FRAME];
        self.frames
            .read_exact_at(&mut r, frame as u64 * FRAME as u64)?;
        Ok(FrameRecord::decode(&r))
    }

    /// A frame's chunks and bases.
    fn frame_metas(&self, rec: &FrameRecord) -> io::Result<(Vec<ChunkMeta>, Vec<ChunkMeta>)> {
        let n = self.metas_of(rec)?;
        let mut buf = vec![0u8; n * META];
        self.metas
            .read_exact_at(&mut buf, rec.metas_at * META as u64)?;
        Ok(split_metas(&buf, rec))
    }

    /// How many metas a frame has, checked against the file (a damaged
    /// record must not size an allocation).
    fn metas_of(&self, rec: &FrameRecord) -> io::Result<usize> {
        let n = rec.chunks as u64 + rec.bases as u64;
        if rec
            .metas_at
            .checked_add(n)
            .is_none_or(|end| end > self.meta_count)
        {
            return Err(io::Error::other(
                "pack table run: a frame's chunks lie past its file",
            ));
        }
        Ok(n as usize)
    }

    /// A frame as the rest of the table shows it.
    pub fn frame(&self, frame: u32) -> io::Result<FrameLocation> {
        let rec = self.frame_record(frame)?;
        let pack = self.pack(rec.pack)?;
        let (chunks, base) = self.frame_metas(&rec)?;
        Ok(FrameLocation {
            pack: pack.id.to_hex().into(),
            offset: rec.offset,
            length: rec.length,
            chunks: chunks.into(),
            base: base.into(),
        })
    }

    /// Every chunk record, in digest order.
    pub fn entries(&self) -> impl Iterator<Item = io::Result<Entry>> + '_ {
        self.entries.records().map(|r| r.map(|r| Entry::decode(&r)))
    }

    /// Every frame with its chunks and bases, in order.
    pub fn frames(
        &self,
    ) -> impl Iterator<Item = io::Result<(FrameRecord, Vec<ChunkMeta>, Vec<ChunkMeta>)>> + '_ {
        let mut frames = Records::<FRAME> {
            reader: read_from_start(&self.frames),
            left: self.frame_count as u64,
        };
        let mut metas = read_from_start(&self.metas);
        std::iter::from_fn(move || {
            let rec = match frames.next()? {
                Ok(r) => FrameRecord::decode(&r),
                Err(e) => return Some(Err(e)),
            };
            // Metas are stored in frame order: read on.
            let n = match self.metas_of(&rec) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            let mut buf = vec![0u8; n * META];
            if let Err(e) = metas.read_exact(&mut buf) {
                return Some(Err(e));
            }
            let (chunks, base) = split_metas(&buf, &rec);
            Some(Ok((rec, chunks, base)))
        })
    }
}

/// Writes a run: packs and their frames first, in order, then the sorted
/// records. Its files are removed if it is dropped unfinished.
pub struct RunWriter {
    paths: RemovedOnDrop,
    frames: BufWriter<File>,
    frame_count: u32,
    metas: BufWriter<File>,
    meta_count: u64,
    packs: Vec<RunPack>,
}

/// Files that go when dropped: a run's, or an unfinished writer's.
struct RemovedOnDrop {
    paths: [PathBuf; 6],
}

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl RunWriter {
    /// Starts run `id` in `dir`.
    pub fn create(dir: &Path, id: u64) -> io::Result<Self> {
        // Files of an earlier attempt with this id (a failed write) go,
        // and so do these if this one fails.
        let paths = RemovedOnDrop {
            paths: run_paths(dir, id),
        };
        for p in &paths.paths {
            let _ = std::fs::remove_file(p);
        }
        let frames = BufWriter::with_capacity(256 * 1024, create(&paths.paths[2])?);
        let metas = BufWriter::with_capacity(256 * 1024, create(&paths.paths[3])?);
        Ok(Self {
            paths,
            frames,
            frame_count: 0,
            metas,
            meta_count: 0,
            packs: Vec::new(),
        })
    }

    /// Starts a pack: the frames written next are its own. Returns its
    /// number in the run.
    pub fn pack(&mut self, id: PackId, level: u32, seq: u64, stored_bytes: u64) -> u32 {
        self.packs.push(RunPack {
            id,
            level,
            seq,
            stored_bytes,
            first_frame: self.frame_count,
            frames: 0,
            chunks: 0,
        });
        (self.packs.len() - 1) as u32
    }

    /// Adds a frame to the pack started last; returns its number.
    pub fn frame(
        &mut self,
        offset: u64,
        length: u64,
        chunks: &[ChunkMeta],
        base: &[ChunkMeta],
    ) -> io::Result<u32> {
        let pack = self
            .packs
            .len()
            .checked_sub(1)
            .ok_or_else(|| io::Error::other("pack table run: a frame before any pack"))?;
        let rec = FrameRecord {
            pack: pack as u32,
            chunks: chunks.len() as u32,
            bases: base.len() as u32,
            offset,
            length,
            metas_at: self.meta_count,
        };
        self.frames.write_all(&rec.encode())?;
        for m in chunks.iter().chain(base) {
            self.metas.write_all(&encode_meta(m))?;
        }
        self.meta_count += (chunks.len() + base.len()) as u64;
        let no = self.frame_count;
        self.frame_count = self
            .frame_count
            .checked_add(1)
            .ok_or_else(|| io::Error::other("pack table run: too many frames"))?;
        let p = &mut self.packs[pack];
        p.frames += 1;
        p.chunks += chunks.len() as u64;
        Ok(no)
    }

    /// The packs written so far (in memory until the run is finished).
    pub fn packs(&self) -> &[RunPack] {
        &self.packs
    }

    /// Writes the chunk records (sorted by digest, each digest's best
    /// first) and the base digests (sorted) and makes the run.
    pub fn finish(
        self,
        entries: impl Iterator<Item = io::Result<Entry>>,
        bases: impl Iterator<Item = io::Result<B3Digest>>,
    ) -> io::Result<Run> {
        let mut e = SortedWriter::<ENTRY>::create(&self.paths.paths[0])?;
        for entry in entries {
            e.push(&entry?.encode())?;
        }
        let entries = e.finish()?;
        let mut b = SortedWriter::<BASE>::create(&self.paths.paths[1])?;
        for base in bases {
            let base = base?;
            // Equal digests once.
            if b.last.as_ref() != Some(base.as_bytes()) {
                b.push(base.as_bytes())?;
            }
        }
        let bases = b.finish()?;
        let frames = self.frames.into_inner().map_err(|e| e.into_error())?;
        let metas = self.metas.into_inner().map_err(|e| e.into_error())?;
        let pack_count = u32::try_from(self.packs.len())
            .map_err(|_| io::Error::other("pack table run: too many packs"))?;
        let mut out = BufWriter::with_capacity(256 * 1024, create(&self.paths.paths[4])?);
        for p in &self.packs {
            out.write_all(&p.encode())?;
        }
        let packs = out.into_inner().map_err(|e| e.into_error())?;
        let mut by_id: Vec<u32> = (0..pack_count).collect();
        by_id.sort_unstable_by_key(|&no| self.packs[no as usize].id);
        let mut ids = SortedWriter::<PACK_ID, PACK_ID_BLOCK>::create(&self.paths.paths[5])?;
        for no in by_id {
            let mut r = [0u8; PACK_ID];
            r[..32].copy_from_slice(self.packs[no as usize].id.as_bytes());
            r[32..].copy_from_slice(&no.to_le_bytes());
            ids.push(&r)?;
        }
        let pack_ids = ids.finish()?;
        // The run's files now go with the run.
        Ok(Run {
            _files: self.paths,
            entries,
            bases,
            frames,
            frame_count: self.frame_count,
            metas,
            meta_count: self.meta_count,
            packs,
            pack_count,
            pack_ids,
            max_level: self.packs.iter().map(|p| p.level).max(),
        })
    }
}

/// Merges sorted streams into one, smallest key first (ties: the earlier
/// source first).
pub fn merge_sorted<'a, T: 'a, K: Ord + 'a>(
    sources: Vec<Box<dyn Iterator<Item = io::Result<T>> + 'a>>,
    key: impl Fn(&T) -> K + 'a,
) -> impl Iterator<Item = io::Result<T>> + 'a {
    let mut sources = sources;
    let mut heads: Vec<Option<T>> = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    let mut failed: Option<io::Error> = None;
    for (i, s) in sources.iter_mut().enumerate() {
        match s.next().transpose() {
            Ok(head) => {
                if let Some(h) = &head {
                    heap.push(Reverse((key(h), i)));
                }
                heads.push(head);
            }
            Err(e) => {
                failed.get_or_insert(e);
                heads.push(None);
            }
        }
    }
    std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            heap.clear();
            return Some(Err(e));
        }
        let Reverse((_, i)) = heap.pop()?;
        let item = heads[i].take().expect("a head for each heap entry");
        match sources[i].next().transpose() {
            Ok(Some(next)) => {
                heap.push(Reverse((key(&next), i)));
                heads[i] = Some(next);
            }
            Ok(None) => {}
            Err(e) => failed = Some(e),
        }
        Some(Ok(item))
    })
}

/// One run to merge and which of its packs are still there.
pub struct MergeSource<'a> {
    pub run: &'a Run,
    pub alive: &'a [bool],
}

/// Merges runs (oldest first) into run `id` in `dir`, leaving out the
/// packs that are gone and their chunk records.
pub fn merge(dir: &Path, id: u64, sources: &[MergeSource<'_>]) -> io::Result<Run> {
    let mut w = RunWriter::create(dir, id)?;
    // Old pack and frame numbers → new ones (u32::MAX: left out).
    let mut pack_maps: Vec<Vec<u32>> = Vec::with_capacity(sources.len());
    let mut frame_maps: Vec<Vec<u32>> = Vec::with_capacity(sources.len());
    for s in sources {
        let mut pack_map = vec![u32::MAX; s.run.pack_count()];
        let mut frame_map = vec![u32::MAX; s.run.frame_count as usize];
        // A pack's frames are stored together, packs in order.
        let mut frames = s.run.frames().enumerate();
        for (old, p) in s.run.packs().enumerate() {
            let p = p?;
            let keep = s.alive.get(old).copied().unwrap_or(false);
            if keep {
                pack_map[old] = w.pack(p.id, p.level, p.seq, p.stored_bytes);
            }
            for _ in 0..p.frames {
                let (no, frame) = frames.next().ok_or_else(|| {
                    io::Error::other("pack table run: fewer frames than its packs")
                })?;
                let (rec, chunks, base) = frame?;
                if keep {
                    frame_map[no] = w.frame(rec.offset, rec.length, &chunks, &base)?;
                }
            }
        }
        pack_maps.push(pack_map);
        frame_maps.push(frame_map);
    }
    let ranks: Vec<(u32, u64)> = w.packs().iter().map(RunPack::rank).collect();
    let entries: Vec<Box<dyn Iterator<Item = io::Result<Entry>> + '_>> = sources
        .iter()
        .zip(pack_maps.iter().zip(&frame_maps))
        .map(|(s, (packs, frames))| {
            let kept = s.run.entries().filter_map(move |e| match e {
                Ok(e) => {
                    let pack = *packs.get(e.pack as usize)?;
                    let frame = *frames.get(e.frame as usize)?;
                    (pack != u32::MAX && frame != u32::MAX).then_some(Ok(Entry {
                        pack,
                        frame,
                        ..e
                    }))
                }
                Err(e) => Some(Err(e)),
            });
            Box::new(kept) as Box<dyn Iterator<Item = io::Result<Entry>>>
        })
        .collect();
    let ranks_ref = &ranks;
    let entries = merge_sorted(entries, move |e: &Entry| {
        let rank = ranks_ref.get(e.pack as usize).copied().unwrap_or_default();
        (prefix(&e.digest), e.digest, Reverse(rank))
    });
    let bases: Vec<Box<dyn Iterator<Item = io::Result<B3Digest>> + '_>> = sources
        .iter()
        .map(|s| {
            Box::new(s.run.bases.records().map(|r| r.map(B3Digest::from)))
                as Box<dyn Iterator<Item = io::Result<B3Digest>>>
        })
        .collect();
    let bases = merge_sorted(bases, |d: &B3Digest| (prefix(d.as_bytes()), *d));
    w.finish(entries, bases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(i: u32) -> ChunkMeta {
        ChunkMeta {
            digest: B3Digest::of(&i.to_le_bytes()),
            size: 100 + i as u64,
        }
    }

    /// The id of pack `p` of the test run `run`.
    fn pack_id(run: u64, p: u32) -> PackId {
        B3Digest::of(format!("pack{run}-{p}").as_bytes())
    }

    /// A run of `packs` packs of two frames of three chunks each (pack p
    /// holds chunks 6p..6p+6; the second frame has a base).
    fn run(dir: &Path, id: u64, packs: u32, seq: u64) -> Run {
        let mut w = RunWriter::create(dir, id).unwrap();
        let mut entries = Vec::new();
        for p in 0..packs {
            let no = w.pack(pack_id(id, p), 3, seq + p as u64, 1000);
            for f in 0..2u32 {
                let chunks: Vec<ChunkMeta> = (0..3).map(|c| meta(p * 6 + f * 3 + c)).collect();
                let base = if f == 1 { vec![meta(9999)] } else { vec![] };
                let frame = w.frame(f as u64 * 10, 10, &chunks, &base).unwrap();
                for c in &chunks {
                    entries.push(Entry {
                        digest: *c.digest.as_bytes(),
                        pack: no,
                        frame,
                        size: c.size,
                    });
                }
            }
        }
        entries.sort_by_key(|e| e.digest);
        w.finish(
            entries.into_iter().map(Ok),
            std::iter::once(Ok(meta(9999).digest)),
        )
        .unwrap()
    }

    #[test]
    fn every_chunk_is_found_in_its_frame_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        // Enough records for several blocks.
        let r = run(dir.path(), 1, 100, 0);
        let alive = vec![true; 100];
        for i in 0..600 {
            let e = r.best(&meta(i).digest, &alive).unwrap().expect("found");
            let frame = r.frame(e.frame).unwrap();
            assert_eq!(frame.pack.as_ref(), pack_id(1, i / 6).to_hex());
            assert_eq!(r.pack_numbers(&pack_id(1, i / 6)).unwrap(), [i / 6]);
            assert!(frame.chunks.contains(&meta(i)));
            assert_eq!(e.size, meta(i).size);
            assert_eq!(frame.base.len(), if i % 6 >= 3 { 1 } else { 0 });
        }
        assert_eq!(r.best(&meta(600).digest, &alive).unwrap(), None);
        assert!(r.is_base(&meta(9999).digest).unwrap());
        assert!(!r.is_base(&meta(1).digest).unwrap());
        // A removed pack's chunks are not found.
        let mut alive = alive;
        alive[7] = false;
        assert_eq!(r.best(&meta(7 * 6).digest, &alive).unwrap(), None);
    }

    #[test]
    fn a_merge_keeps_live_packs_and_their_chunks_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let a = run(dir.path(), 1, 50, 0);
        let b = run(dir.path(), 2, 50, 100);
        let mut alive_a = vec![true; 50];
        alive_a[3] = false;
        let alive_b = vec![true; 50];
        let merged = merge(
            dir.path(),
            3,
            &[
                MergeSource {
                    run: &a,
                    alive: &alive_a,
                },
                MergeSource {
                    run: &b,
                    alive: &alive_b,
                },
            ],
        )
        .unwrap();
        assert_eq!(merged.pack_count(), 99);
        assert_eq!(merged.max_level(), Some(3));
        assert_eq!(merged.entry_count(), 99 * 6);
        let alive = vec![true; 99];
        for i in 0..300 {
            let e = merged
                .best(&meta(i).digest, &alive)
                .unwrap()
                .expect("found");
            // Both runs hold chunks 0..300: b's packs were learned of
            // later, so b's frame is the home.
            let frame = merged.frame(e.frame).unwrap();
            assert_eq!(frame.pack.as_ref(), pack_id(2, i / 6).to_hex());
            assert!(frame.chunks.contains(&meta(i)));
        }
        // Pack a-3's frames are gone from the merged run.
        let packs: Vec<RunPack> = merged.packs().map(Result::unwrap).collect();
        assert_eq!(packs.len(), 99);
        assert!(packs.iter().all(|p| p.id != pack_id(1, 3)));
        assert!(merged.pack_numbers(&pack_id(1, 3)).unwrap().is_empty());
        // Numbers still find their packs by id after the merge, and read
        // by number as in order.
        for (no, p) in packs.iter().enumerate() {
            assert_eq!(merged.pack_numbers(&p.id).unwrap(), [no as u32]);
            let by_number = merged.pack(no as u32).unwrap();
            assert_eq!((by_number.id, by_number.seq), (p.id, p.seq));
        }
        assert!(merged.pack(99).is_err());
        assert!(merged.is_base(&meta(9999).digest).unwrap());
        // The frames walk agrees with the records.
        let chunks: u64 = merged.frames().map(|f| f.unwrap().1.len() as u64).sum();
        assert_eq!(chunks, merged.entry_count());
        drop(merged);
        drop((a, b));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files left"
        );
    }
}
