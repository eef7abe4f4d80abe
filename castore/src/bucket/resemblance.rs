//! The resemblance index: which stored chunk carries a super-feature (see
//! [`crate::similarity`]), for compaction to pick delta bases.
//!
//! It would be the pack table's largest part if it held every chunk (three
//! super-features each, against one location), and it is only a hint: a
//! base that is missed costs some compression, never a wrong byte. So it
//! is bounded: two generations of at most `cap` super-features each; when
//! the newer one fills it becomes the older one and the older is dropped.
//! The chunks it forgets are the ones filed longest ago (compaction files
//! what it rewrites), while what a new upload resembles most is usually
//! recent (the previous version of the same package). A store whose chunks' super-features fit in two
//! generations keeps all of them, as before the bound.

use std::collections::HashMap;

use crate::digest::B3Digest;

/// Super-features per generation by default: as many as a map of 2^21
/// buckets holds without growing (7/8 of them), about 26 MiB, plus the
/// digests of the chunks filed (32 bytes each, at least one feature each:
/// 20–64 MiB with their vector's slack); two generations take at most
/// about 180 MiB (measured: 65–105 MB held on stores of 1.5 and 14
/// million chunks) and hold every chunk of a store of some 1.2 million
/// chunks. `LAZIX_RESEMBLANCE_FEATURES` changes it (see
/// [`super::SpillPolicy::from_env`]); memory scales with it.
pub const DEFAULT_CAP: usize = (1 << 21) / 8 * 7;

/// (super-feature index, value) → chunks carrying it, newest generation
/// first.
pub struct ResemblanceIndex {
    newer: Generation,
    older: Generation,
    cap: usize,
}

/// Chunks filed under the super-features they were first to carry within
/// one generation.
#[derive(Default)]
struct Generation {
    /// (super-feature index, value) → a position in `chunks`: positions,
    /// not digests, since a chunk is filed under several super-features.
    by_feature: HashMap<(u8, u32), u32>,
    /// The chunks filed, each once.
    chunks: Vec<B3Digest>,
}

impl Generation {
    fn lookup(&self, feature: u8, value: u32) -> Option<B3Digest> {
        let at = *self.by_feature.get(&(feature, value))?;
        self.chunks.get(at as usize).copied()
    }
}

impl Default for ResemblanceIndex {
    fn default() -> Self {
        Self::with_cap(DEFAULT_CAP)
    }
}

impl ResemblanceIndex {
    /// An empty index of at most two generations of `cap` super-features
    /// (0: it files nothing; otherwise room for one chunk's at least).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            newer: Generation::default(),
            older: Generation::default(),
            cap: if cap == 0 {
                0
            } else {
                cap.max(crate::similarity::SUPER_FEATURES)
            },
        }
    }

    /// Files a chunk under those of its super-features (`0`: none) no
    /// chunk of the newer generation carries yet.
    pub fn file(&mut self, digest: B3Digest, sketch: &[u32]) {
        if self.cap == 0 {
            return;
        }
        // Room for all of this chunk's features, so the newer map never
        // outgrows the cap (and its buckets never double).
        if self.newer.by_feature.len() + sketch.len() > self.cap {
            self.older = std::mem::take(&mut self.newer);
        }
        let Ok(next) = u32::try_from(self.newer.chunks.len()) else {
            return;
        };
        let mut filed = false;
        for (i, sf) in sketch.iter().enumerate().filter(|(_, sf)| **sf != 0) {
            let Ok(feature) = u8::try_from(i) else {
                break;
            };
            if let std::collections::hash_map::Entry::Vacant(v) =
                self.newer.by_feature.entry((feature, *sf))
            {
                v.insert(next);
                filed = true;
            }
        }
        if filed {
            self.newer.chunks.push(digest);
        }
    }

    /// The chunk filed under a super-feature, the newer generation's first.
    pub fn lookup(&self, feature: usize, value: u32) -> Option<B3Digest> {
        let feature = u8::try_from(feature).ok()?;
        self.newer
            .lookup(feature, value)
            .or_else(|| self.older.lookup(feature, value))
    }

    /// Super-features filed in both generations.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.newer.by_feature.len() + self.older.by_feature.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u32) -> B3Digest {
        B3Digest::of(&n.to_le_bytes())
    }

    #[test]
    fn the_first_chunk_with_a_feature_keeps_it_and_zero_is_no_feature() {
        let mut index = ResemblanceIndex::with_cap(100);
        index.file(chunk(1), &[10, 0, 30]);
        index.file(chunk(2), &[10, 20, 0]);
        assert_eq!(index.lookup(0, 10), Some(chunk(1)));
        assert_eq!(index.lookup(1, 20), Some(chunk(2)));
        assert_eq!(index.lookup(2, 30), Some(chunk(1)));
        assert_eq!(index.lookup(1, 0), None);
        assert_eq!(index.lookup(2, 0), None);
        // The same value under another super-feature is another key.
        assert_eq!(index.lookup(1, 10), None);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn memory_stays_within_two_generations_and_the_newest_are_kept() {
        let cap = 1_000;
        let mut index = ResemblanceIndex::with_cap(cap);
        for n in 0..100_000u32 {
            index.file(chunk(n), &[n + 1, n + 1, n + 1]);
            assert!(index.len() <= 2 * cap, "{} features at {n}", index.len());
        }
        // The latest chunks are found (a generation holds 333 of them),
        // the first ones forgotten.
        for n in 99_700..100_000 {
            assert_eq!(index.lookup(2, n + 1), Some(chunk(n)), "chunk {n}");
        }
        assert_eq!(index.lookup(0, 1), None);
        assert!(index.newer.chunks.len() + index.older.chunks.len() <= 2 * cap);
    }

    #[test]
    fn a_cap_of_zero_files_nothing() {
        let mut index = ResemblanceIndex::with_cap(0);
        for n in 0..1000u32 {
            index.file(chunk(n), &[n + 1, n + 2, n + 3]);
        }
        assert_eq!(index.len(), 0);
        assert_eq!(index.lookup(0, 1), None);
        assert!(index.newer.chunks.is_empty() && index.older.chunks.is_empty());
    }

    #[test]
    fn a_feature_in_the_older_generation_is_found_until_it_is_dropped() {
        let mut index = ResemblanceIndex::with_cap(3);
        index.file(chunk(1), &[1, 2, 3]);
        // The newer generation is full: the next chunk starts another.
        index.file(chunk(2), &[4, 5, 6]);
        assert_eq!(index.lookup(0, 1), Some(chunk(1)));
        assert_eq!(index.lookup(0, 4), Some(chunk(2)));
        // Filed again in the newer generation, a feature points at the
        // newer chunk.
        index.file(chunk(3), &[1, 0, 0]);
        assert_eq!(index.lookup(0, 1), Some(chunk(3)));
        // Two generations on, chunk 1's own features are gone.
        index.file(chunk(4), &[7, 8, 9]);
        assert_eq!(index.lookup(1, 2), None);
        assert_eq!(index.lookup(0, 7), Some(chunk(4)));
    }
}
