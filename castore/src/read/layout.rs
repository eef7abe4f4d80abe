//! A blob's layout: its chunk list, or itself as one chunk, checked
//! against the file it is read for; and the chunks (and the parts of them)
//! that cover a byte range.
//!
//! Every reader asks the same questions in the same order: does this file
//! need a chunk-list lookup at all (small files are one chunk under their
//! own digest)? Does the answer fit the file? Which chunks does a range
//! need, and which bytes of each? Answering them here keeps one rule for
//! each.

use crate::chunk::{ChunkMeta, MAX_CHUNK_SIZE};
use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};

/// Blobs of at most this many bytes are always one chunk under their own
/// digest: the chunker never cuts below its minimum, and stores refuse
/// chunk lists for them. Readers skip the chunk-list lookup for such files
/// (most files of a store), a round trip per file saved.
pub const SINGLE_CHUNK_MAX: u64 = crate::chunker::DEFAULT_PARAMS.min as u64;

/// The chunks of one blob, in order, known to add up to its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLayout {
    blob: B3Digest,
    size: u64,
    chunks: Vec<ChunkMeta>,
}

/// The part of one chunk a range needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub chunk: ChunkMeta,
    /// Where the chunk starts in the blob.
    pub offset: u64,
    /// Bytes of the chunk before the range.
    pub skip: usize,
    /// Bytes of the chunk in the range.
    pub take: usize,
}

impl BlobLayout {
    /// Whether a reader must look a blob of `size` bytes up to learn its
    /// chunks; if not, it is one chunk under its own digest (or empty).
    pub fn needs_lookup(size: u64) -> bool {
        size > SINGLE_CHUNK_MAX
    }

    /// [`BlobLayout::from_answer`] for an answer `blobs` gave: a list
    /// refused is also refused to `blobs`
    /// ([`crate::store::BlobStore::refuse_chunk_list`]), so no cache under
    /// it answers it again.
    pub async fn from_store_answer(
        blobs: &dyn crate::store::BlobStore,
        blob: B3Digest,
        size: u64,
        answer: Option<Vec<ChunkMeta>>,
    ) -> StoreResult<Self> {
        let layout = Self::from_answer(blob, size, answer);
        if layout.is_err() {
            blobs.refuse_chunk_list(&blob).await;
        }
        layout
    }

    /// The layout from a store's answer to a chunk-list lookup (`None`: the
    /// store has no list, so the blob is one chunk, or nothing if empty).
    /// A list that does not fit the file is `Corrupt`.
    pub fn from_answer(
        blob: B3Digest,
        size: u64,
        list: Option<Vec<ChunkMeta>>,
    ) -> StoreResult<Self> {
        let chunks = match list {
            Some(list) => list,
            None if size == 0 => Vec::new(),
            None => vec![ChunkMeta { digest: blob, size }],
        };
        check_chunk_list(&blob, size, &chunks)?;
        Ok(Self { blob, size, chunks })
    }

    /// The blob's digest.
    pub fn blob(&self) -> &B3Digest {
        &self.blob
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunks in order.
    pub fn chunks(&self) -> &[ChunkMeta] {
        &self.chunks
    }

    /// The parts of the chunks covering `start..end` of the blob (clamped
    /// to it), in order.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<Piece> {
        let end = end.min(self.size);
        let mut out = Vec::new();
        let mut offset = 0u64;
        for c in &self.chunks {
            let (s, e) = (offset, offset + c.size);
            offset = e;
            if e <= start {
                continue;
            }
            if s >= end {
                break;
            }
            let skip = start.saturating_sub(s);
            let until = (end - s).min(c.size);
            out.push(Piece {
                chunk: *c,
                offset: s,
                skip: skip as usize,
                take: (until - skip) as usize,
            });
        }
        out
    }

    /// Approximate memory held, for cache weighing.
    pub fn weight(&self) -> u64 {
        (self.chunks.len() * std::mem::size_of::<ChunkMeta>() + 64) as u64
    }
}

/// Checks a blob's chunk list against the file it is read for, before any
/// reader slices bytes by it: every chunk non-empty and at most
/// [`MAX_CHUNK_SIZE`], the sizes adding up (without overflow) to the
/// file's `size`. With this every offset a reader derives from the list is
/// in range. What it cannot see is a reordered list of genuine chunks:
/// each chunk still passes its own BLAKE3 check, so only hashing the whole
/// file against its digest (as the NAR renderer and whole-file copies do)
/// catches that.
pub fn check_chunk_list(blob: &B3Digest, size: u64, list: &[ChunkMeta]) -> StoreResult<()> {
    let mut total = 0u64;
    for c in list {
        if c.size == 0 || c.size > MAX_CHUNK_SIZE {
            return Err(StoreError::Corrupt(format!(
                "blob {blob}: chunk list names chunk {} of {} bytes",
                c.digest, c.size
            )));
        }
        total = total
            .checked_add(c.size)
            .ok_or_else(|| StoreError::Corrupt(format!("blob {blob}: chunk sizes overflow")))?;
    }
    if total != size {
        return Err(StoreError::Corrupt(format!(
            "blob {blob}: chunks add up to {total} bytes, the file has {size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(i: u8, size: u64) -> ChunkMeta {
        ChunkMeta {
            digest: B3Digest::of(&[i]),
            size,
        }
    }

    #[test]
    fn pieces_cover_exactly_the_range() {
        let blob = B3Digest::of(b"blob");
        let l = BlobLayout::from_answer(
            blob,
            300_000,
            Some(vec![meta(0, 100_000), meta(1, 150_000), meta(2, 50_000)]),
        )
        .unwrap();
        let p = l.pieces(90_000, 260_000);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].offset, p[0].skip, p[0].take), (0, 90_000, 10_000));
        assert_eq!((p[1].offset, p[1].skip, p[1].take), (100_000, 0, 150_000));
        assert_eq!((p[2].offset, p[2].skip, p[2].take), (250_000, 0, 10_000));
        let total: usize = p.iter().map(|p| p.take).sum();
        assert_eq!(total, 170_000);
        assert!(l.pieces(300_000, 400_000).is_empty());
        assert_eq!(l.pieces(0, u64::MAX).len(), 3, "clamped to the blob");
    }

    #[test]
    fn answers_that_do_not_fit_the_file_are_corrupt() {
        let blob = B3Digest::of(b"blob");
        // No list: one chunk under the blob's digest, or nothing if empty.
        let one = BlobLayout::from_answer(blob, 5_000, None).unwrap();
        assert_eq!(
            one.chunks(),
            &[ChunkMeta {
                digest: blob,
                size: 5_000
            }]
        );
        assert!(BlobLayout::from_answer(blob, 0, None)
            .unwrap()
            .chunks()
            .is_empty());
        for bad in [
            vec![meta(0, 100), meta(1, 99)],       // short
            vec![meta(0, 100), meta(1, 101)],      // long
            vec![meta(0, 0), meta(1, 200)],        // empty chunk
            vec![meta(0, u64::MAX), meta(1, 201)], // overflow
            vec![meta(0, MAX_CHUNK_SIZE + 1)],     // too large
        ] {
            let size = 200;
            assert!(
                matches!(
                    BlobLayout::from_answer(blob, size, Some(bad.clone())),
                    Err(StoreError::Corrupt(_))
                ),
                "{bad:?}"
            );
        }
    }
}
