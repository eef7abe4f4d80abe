//! Deterministic test data shared by the test suites of every crate.

/// Pseudo-random bytes (xorshift): incompressible like binaries, the same
/// for the same seed, so tests can rebuild identical or altered trees.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One frame holding chunks with the given bytes, in order.
pub fn frame_of(chunks: &[&[u8]]) -> crate::frame::Frame {
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| {
            (
                crate::chunk::ChunkMeta {
                    digest: crate::B3Digest::of(c),
                    size: c.len() as u64,
                },
                bytes::Bytes::copy_from_slice(c),
            )
        })
        .collect();
    crate::frame::Frame::compress(&chunks).expect("compress")
}
