//! The in-memory pack index: which frame of which pack holds each chunk.
//!
//! Built at open from the pack indexes (most from a snapshot of them, see
//! [`super::pack_snapshot`]) and extended as packs are written (here or,
//! found by a refresh, by another replica). A pack without an index is
//! invisible: the index is written last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lazix_proto::ext as lpb;
use prost::Message;

use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::similarity::{Sketch, SUPER_FEATURES};

use super::resemblance::ResemblanceIndex;

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

/// One visible pack.
pub struct PackInfo {
    /// zstd level of its frames (0: the ingest level).
    pub level: u32,
    /// Its frames, in order.
    pub frames: Vec<Arc<FrameLocation>>,
    /// Bytes of the pack and of its index as encoded.
    pub stored_bytes: u64,
}

/// The chunk → frame map of every visible pack.
#[derive(Default)]
pub struct PackTable {
    by_chunk: HashMap<B3Digest, Arc<FrameLocation>, DigestKeyBuildHasher>,
    packs: HashMap<Arc<str>, PackInfo>,
    /// Which chunk carries each super-feature, bounded (it may since have
    /// moved into a delta frame or gone: checked on lookup).
    similar: ResemblanceIndex,
    /// Chunks some delta frame uses as base: they must stay in plain
    /// frames (deltas are one level deep).
    base_refs: HashSet<B3Digest, DigestKeyBuildHasher>,
    /// Chunks a compaction may be turning into deltas right now: not to be
    /// picked as bases meanwhile.
    delta_pending: HashSet<B3Digest, DigestKeyBuildHasher>,
}

impl PackTable {
    /// Whether no pack is loaded (the store is being opened, or empty).
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// Whether a pack's index is loaded.
    pub fn has_pack(&self, id: &str) -> bool {
        self.packs.contains_key(id)
    }

    /// Every visible pack's id.
    pub fn pack_ids(&self) -> Vec<Arc<str>> {
        self.packs.keys().cloned().collect()
    }

    /// A visible pack.
    pub fn pack(&self, id: &str) -> Option<&PackInfo> {
        self.packs.get(id)
    }

    /// Claims bases for a frame about to be delta-encoded, atomically with
    /// respect to other frames: none if one of the frame's own chunks is a
    /// base (it must stay plain); else the most similar plain chunks that
    /// are not themselves being delta-encoded, marked as bases, and the
    /// frame's chunks are marked pending until [`PackTable::settle`].
    pub fn claim_bases(&mut self, own: &[B3Digest], sketches: &[Option<Sketch>]) -> Vec<B3Digest> {
        if own.iter().any(|d| self.base_refs.contains(d)) {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let picked: Vec<B3Digest> = sketches
            .iter()
            .flatten()
            .filter_map(|s| self.most_similar(s))
            .filter(|d| !own.contains(d) && !self.delta_pending.contains(d) && seen.insert(*d))
            .collect();
        if !picked.is_empty() {
            self.base_refs.extend(picked.iter().copied());
            self.delta_pending.extend(own.iter().copied());
        }
        picked
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
    }

    /// Adds a pack's frames; a chunk already held by another pack keeps
    /// its location unless `replace` (a compacted pack taking over) or the
    /// new pack is compressed at a higher level.
    pub fn add_pack(&mut self, id: &str, index: &lpb::PackIndex, replace: bool) -> StoreResult<()> {
        let pack: Arc<str> = Arc::from(id);
        let frames = parse_index(&pack, index)?;
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
            for c in frame.chunks.iter() {
                // A compacted pack is the better home for a chunk held
                // twice (a compaction killed before deleting the old pack).
                let take = replace
                    || match self.by_chunk.get(&c.digest) {
                        None => true,
                        Some(l) => self
                            .packs
                            .get(&l.pack)
                            .is_some_and(|p| p.level < index.level),
                    };
                if take {
                    self.by_chunk.insert(c.digest, frame.clone());
                }
            }
        }
        self.packs.insert(
            pack,
            PackInfo {
                level: index.level,
                frames,
                stored_bytes,
            },
        );
        Ok(())
    }

    /// The frame holding a chunk.
    pub fn locate(&self, digest: &B3Digest) -> Option<Arc<FrameLocation>> {
        self.by_chunk.get(digest).cloned()
    }

    /// Whether a chunk is stored.
    pub fn contains(&self, digest: &B3Digest) -> bool {
        self.by_chunk.contains_key(digest)
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
            .filter(|d| self.by_chunk.get(d).is_some_and(|l| l.base.is_empty()))
    }

    /// The bases of every delta frame holding a chunk `live` says is
    /// live (each frame's bases once per live chunk it holds).
    pub fn bases_of_live(&self, live: impl Fn(&B3Digest) -> bool) -> Vec<B3Digest> {
        self.by_chunk
            .iter()
            .filter(|(d, l)| !l.base.is_empty() && live(d))
            .flat_map(|(_, l)| l.base.iter().map(|b| b.digest))
            .collect()
    }

    /// Chunks indexed.
    pub fn chunk_count(&self) -> usize {
        self.by_chunk.len()
    }

    /// Objects the visible packs take (each pack and its index) and their
    /// bytes.
    pub fn pack_totals(&self) -> (u64, u64) {
        let bytes = self.packs.values().map(|p| p.stored_bytes).sum();
        (2 * self.packs.len() as u64, bytes)
    }

    /// Distinct chunks and their raw bytes (each counted in its home frame
    /// only).
    pub fn chunk_totals(&self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for frame in self.packs.values().flat_map(|p| p.frames.iter()) {
            for c in frame.chunks.iter() {
                if self
                    .by_chunk
                    .get(&c.digest)
                    .is_some_and(|home| Arc::ptr_eq(home, frame))
                {
                    count += 1;
                    bytes += c.size;
                }
            }
        }
        (count, bytes)
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
    /// (recorded for plain frames only: only they can be delta bases);
    /// `level` is the zstd level they were compressed at.
    pub fn build(frames: &[(Frame, Vec<Option<Sketch>>)], level: u32) -> Self {
        let mut bytes = Vec::with_capacity(frames.iter().map(|(f, _)| f.data.len()).sum());
        let mut index = lpb::PackIndex {
            level,
            ..Default::default()
        };
        for (f, sketches) in frames {
            let sketches = if f.base.is_empty() {
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
