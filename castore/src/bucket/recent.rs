//! Bytes of recently uploaded chunks, first in first out, bounded by
//! bytes. A chunk list arrives soon after its chunks; checking it against
//! the bytes just received saves reading and decoding them back.
//! (Not an LRU or TinyLFU cache on purpose: each entry is read about once,
//! shortly after it is written, and must not be refused admission.)

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::digest::{B3Digest, DigestKeyBuildHasher};

/// The FIFO of verified chunk bytes.
pub struct RecentChunks {
    budget: u64,
    held: u64,
    order: VecDeque<B3Digest>,
    bytes: HashMap<B3Digest, Bytes, DigestKeyBuildHasher>,
}

impl RecentChunks {
    /// Keeps up to `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            held: 0,
            order: VecDeque::new(),
            bytes: HashMap::default(),
        }
    }

    /// Adds verified bytes of a chunk, dropping the oldest beyond budget.
    pub fn insert(&mut self, digest: B3Digest, data: Bytes) {
        if data.len() as u64 > self.budget || self.bytes.contains_key(&digest) {
            return;
        }
        self.held += data.len() as u64;
        self.bytes.insert(digest, data);
        self.order.push_back(digest);
        while self.held > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bytes.remove(&old) {
                self.held -= b.len() as u64;
            }
        }
    }

    /// The bytes of a chunk, if still held.
    pub fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        self.bytes.get(digest).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_budget() {
        let mut r = RecentChunks::new(10);
        let d = |i: u8| B3Digest::of(&[i]);
        for i in 0..5u8 {
            r.insert(d(i), Bytes::from(vec![i; 3]));
        }
        assert!(r.get(&d(0)).is_none() && r.get(&d(1)).is_none());
        assert_eq!(r.get(&d(4)).unwrap(), vec![4u8; 3]);
        assert_eq!(r.get(&d(2)).unwrap(), vec![2u8; 3]);
        r.insert(d(9), Bytes::from(vec![0u8; 11]));
        assert!(r.get(&d(9)).is_none());
    }
}
