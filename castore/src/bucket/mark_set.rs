//! GC's sets of live digests, kept compact: the first 8 bytes of each
//! digest in a sorted vector, 8 bytes a digest where a hash set of whole
//! digests costs about 50, so marking a store of millions of chunks stays
//! within a few tens of megabytes. A dead object whose digest shares its
//! first 8 bytes with a live one is kept: a collision (about one in 10^7
//! at a million live digests) costs a little garbage, never a live object.

use crate::digest::B3Digest;

/// Digests inserted between two merges, at least.
const MERGE_AT: usize = 1 << 16;

/// A set of digests that may answer "yes" for a digest never inserted
/// (rarely), never "no" for one that was.
#[derive(Default)]
pub(super) struct MarkSet {
    sorted: Vec<u64>,
    fresh: Vec<u64>,
}

/// The first 8 bytes of a digest (of a chunk, or of a store path: any of
/// at least 8 bytes), as the set keeps them.
fn key(digest: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = digest.len().min(8);
    prefix[..n].copy_from_slice(&digest[..n]);
    u64::from_be_bytes(prefix)
}

impl MarkSet {
    /// Adds a digest.
    pub(super) fn insert(&mut self, d: &B3Digest) {
        self.insert_bytes(d.as_bytes());
    }

    /// Adds a digest given as bytes (a store path's, say).
    pub(super) fn insert_bytes(&mut self, digest: &[u8]) {
        self.fresh.push(key(digest));
        if self.fresh.len() >= MERGE_AT.max(self.sorted.len() / 2) {
            self.merge();
        }
    }

    fn merge(&mut self) {
        if self.fresh.is_empty() {
            return;
        }
        self.sorted.append(&mut self.fresh);
        self.sorted.sort_unstable();
        self.sorted.dedup();
        self.fresh.shrink_to(MERGE_AT);
    }

    /// Ready for [`MarkSet::contains`]: call once inserting is done.
    pub(super) fn seal(&mut self) {
        self.merge();
        self.sorted.shrink_to_fit();
    }

    /// Whether `d` was inserted (or shares its prefix with one that was).
    /// Only after [`MarkSet::seal`]; a digest inserted since is found too,
    /// more slowly.
    pub(super) fn contains(&self, d: &B3Digest) -> bool {
        self.contains_bytes(d.as_bytes())
    }

    /// [`MarkSet::contains`] for a digest given as bytes.
    pub(super) fn contains_bytes(&self, digest: &[u8]) -> bool {
        let k = key(digest);
        self.sorted.binary_search(&k).is_ok() || self.fresh.contains(&k)
    }

    /// Adds every digest of another set.
    pub(super) fn absorb(&mut self, other: MarkSet) {
        self.fresh.extend(other.sorted);
        self.fresh.extend(other.fresh);
        self.merge();
    }

    /// Distinct prefixes held (after [`MarkSet::seal`]).
    pub(super) fn len(&self) -> usize {
        self.sorted.len() + self.fresh.len()
    }
}

impl Extend<B3Digest> for MarkSet {
    fn extend<T: IntoIterator<Item = B3Digest>>(&mut self, iter: T) {
        for d in iter {
            self.insert(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_digest_is_found_and_few_others() {
        let mut set = MarkSet::default();
        let live: Vec<B3Digest> = (0u32..200_000)
            .map(|i| B3Digest::of(&i.to_le_bytes()))
            .collect();
        // Inserted twice over, across several merges.
        set.extend(live.iter().copied());
        set.extend(live.iter().take(1000).copied());
        set.seal();
        assert_eq!(set.len(), live.len());
        assert!(live.iter().all(|d| set.contains(d)));
        let strangers = (200_000u32..400_000)
            .map(|i| B3Digest::of(&i.to_le_bytes()))
            .filter(|d| set.contains(d))
            .count();
        assert_eq!(strangers, 0);
    }
}
