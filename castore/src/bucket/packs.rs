//! The in-memory pack index: which frame of which pack holds each chunk.
//!
//! Built at open from every `packs/<id>.idx` object and extended as packs
//! are written (here or, found by a refresh, by another replica). A pack
//! without an index is invisible: the index is written last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lazix_proto::ext as lpb;
use prost::Message;

use crate::chunk::ChunkMeta;
use crate::digest::{B3Digest, DigestKeyBuildHasher};
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::similarity::{Sketch, SUPER_FEATURES};

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

/// The chunk → frame map of every visible pack.
#[derive(Default)]
pub struct PackTable {
    by_chunk: HashMap<B3Digest, Arc<FrameLocation>, DigestKeyBuildHasher>,
    packs: HashSet<Arc<str>>,
    /// (super-feature index, value) → a chunk in a plain frame with it.
    similar: HashMap<(u8, u32), B3Digest>,
}

impl PackTable {
    /// Whether a pack's index is loaded.
    pub fn has_pack(&self, id: &str) -> bool {
        self.packs.contains(id)
    }

    /// Adds a pack's frames; a chunk already held by another pack keeps
    /// its first location.
    pub fn add_pack(&mut self, id: &str, index: &lpb::PackIndex) -> StoreResult<()> {
        let pack: Arc<str> = Arc::from(id);
        let frames = parse_index(&pack, index)?;
        for (frame, entry) in frames.into_iter().zip(&index.frames) {
            if frame.base.is_empty() && entry.sketches.len() == frame.chunks.len() * SUPER_FEATURES
            {
                for (c, sketch) in frame
                    .chunks
                    .iter()
                    .zip(entry.sketches.chunks(SUPER_FEATURES))
                {
                    for (i, sf) in sketch.iter().enumerate().filter(|(_, sf)| **sf != 0) {
                        self.similar.entry((i as u8, *sf)).or_insert(c.digest);
                    }
                }
            }
            for c in frame.chunks.iter() {
                self.by_chunk
                    .entry(c.digest)
                    .or_insert_with(|| frame.clone());
            }
        }
        self.packs.insert(pack);
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
        let mut best: Option<(B3Digest, usize)> = None;
        for (i, sf) in sketch.iter().enumerate() {
            let Some(d) = self.similar.get(&(i as u8, *sf)) else {
                continue;
            };
            let score = sketch
                .iter()
                .enumerate()
                .filter(|(j, v)| self.similar.get(&(*j as u8, **v)) == Some(d))
                .count();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((*d, score));
            }
        }
        best.map(|(d, _)| d)
    }

    /// Chunks indexed.
    pub fn chunk_count(&self) -> usize {
        self.by_chunk.len()
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
    /// (recorded for plain frames only: only they can be delta bases).
    pub fn build(frames: &[(Frame, Vec<Option<Sketch>>)]) -> Self {
        let mut bytes = Vec::with_capacity(frames.iter().map(|(f, _)| f.data.len()).sum());
        let mut index = lpb::PackIndex::default();
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
