//! Asking for many chunks in slices, skipping those a frame already
//! brought.
//!
//! A request for thousands of chunks is sent (client) or served (server)
//! in slices, so the first answer leaves early and no message grows too
//! large. A frame answering one slice often holds chunks of later slices
//! (its neighbours): those are covered and not asked for again. The
//! client and the server slice the same way, with this.

use std::collections::HashSet;

use crate::digest::B3Digest;
use crate::frame::Frame;

/// Slices of a digest list, minus what received frames covered.
pub struct CoveredSlices<'a> {
    rest: std::slice::Chunks<'a, B3Digest>,
    covered: HashSet<B3Digest>,
}

impl<'a> CoveredSlices<'a> {
    /// `digests` in slices of at most `slice` (at least 1).
    pub fn new(digests: &'a [B3Digest], slice: usize) -> Self {
        Self {
            rest: digests.chunks(slice.max(1)),
            covered: HashSet::new(),
        }
    }

    /// The next slice's digests that no received frame covered; `None`
    /// when every slice was handed out. Slices left empty are skipped.
    pub fn next_wanted(&mut self) -> Option<Vec<B3Digest>> {
        for slice in self.rest.by_ref() {
            let wanted: Vec<B3Digest> = slice
                .iter()
                .filter(|d| !self.covered.contains(*d))
                .copied()
                .collect();
            if !wanted.is_empty() {
                return Some(wanted);
            }
        }
        None
    }

    /// Records the chunks a received frame holds.
    pub fn cover(&mut self, frame: &Frame) {
        self.covered.extend(frame.chunks.iter().map(|c| c.digest));
    }

    /// Whether a received frame held `digest`.
    pub fn is_covered(&self, digest: &B3Digest) -> bool {
        self.covered.contains(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::frame_of;

    #[test]
    fn chunks_a_frame_brought_are_not_asked_for_again() {
        let names: Vec<Vec<u8>> = (0..5).map(|i| format!("chunk {i}").into_bytes()).collect();
        let ds: Vec<B3Digest> = names.iter().map(|n| B3Digest::of(n)).collect();
        let mut slices = CoveredSlices::new(&ds, 2);
        assert_eq!(slices.next_wanted(), Some(ds[0..2].to_vec()));
        // The answer's frame also held chunks 2 and 3 (all of the next slice).
        slices.cover(&frame_of(&[&names[0], &names[1], &names[2], &names[3]]));
        assert!(slices.is_covered(&ds[3]));
        assert_eq!(
            slices.next_wanted(),
            Some(vec![ds[4]]),
            "slice 2 is skipped"
        );
        assert_eq!(slices.next_wanted(), None);
        assert!(!slices.is_covered(&ds[4]));
    }
}
