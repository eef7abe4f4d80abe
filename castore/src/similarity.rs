//! Resemblance sketches: a few "super-features" per chunk such that two
//! chunks sharing one are very likely near-duplicates (the same file in
//! two versions of a package, differing by a version string or a few
//! changed functions). Deduplication by digest misses such pairs; storing
//! one as a zstd delta against the other recovers most of their bytes.
//!
//! Method (as in Finesse/N-transform sketches): a gear rolling hash marks
//! content-defined anchor positions (about one in 32 bytes); over the
//! anchors' hashes, [`TRANSFORMS`] independent linear transforms each keep
//! their maximum; groups of those maxima hash into [`SUPER_FEATURES`]
//! super-features. An edit changes only the anchors near it, so most
//! maxima, and therefore super-features, survive.

/// Super-features per chunk.
pub const SUPER_FEATURES: usize = 3;
/// Transforms per super-feature.
const PER_SUPER: usize = 4;
/// Transforms in all.
const TRANSFORMS: usize = SUPER_FEATURES * PER_SUPER;
/// Chunks shorter than this get no sketch (too little to delta-encode).
pub const MIN_SKETCH_LEN: usize = 256;
/// Anchors are positions whose gear hash has these top bits zero (1/32).
const ANCHOR_MASK: u64 = 0xF800_0000_0000_0000;

/// A chunk's super-features.
pub type Sketch = [u32; SUPER_FEATURES];

const fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = splitmix(i as u64 + 0x1234_5678);
        i += 1;
    }
    t
}

const fn transforms() -> [(u64, u64); TRANSFORMS] {
    let mut t = [(0u64, 0u64); TRANSFORMS];
    let mut i = 0;
    while i < TRANSFORMS {
        t[i] = (splitmix(1000 + i as u64) | 1, splitmix(2000 + i as u64));
        i += 1;
    }
    t
}

static GEAR: [u64; 256] = gear_table();
static TRANSFORM: [(u64, u64); TRANSFORMS] = transforms();

/// Independent stretches of a chunk hashed side by side: the gear hash is
/// one long chain of dependent steps, and four chains at once keep the
/// core busy where one leaves it waiting on each step.
const LANES: usize = 4;
/// A gear hash forgets a byte after this many more (each step shifts it
/// one bit out): a lane starting this far before its stretch has there
/// the very hash a single pass would have.
const GEAR_WINDOW: usize = 64;
/// Bytes a lane hashes before its anchors are folded into the maxima:
/// hashing only notes anchors (no branch to mispredict on one byte in 32),
/// folding then runs over the few it noted.
const BLOCK: usize = 256;

fn gear_step(h: u64, b: u8) -> u64 {
    (h << 1).wrapping_add(GEAR[b as usize])
}

/// Keeps, per transform, the maximum over every anchor hash given.
fn fold_anchors(maxima: &mut [u32; TRANSFORMS], anchors: &[u64]) {
    for &h in anchors {
        for (m, (mul, add)) in maxima.iter_mut().zip(TRANSFORM.iter()) {
            *m = (*m).max((h.wrapping_mul(*mul).wrapping_add(*add) >> 32) as u32);
        }
    }
}

/// The sketch of `data`, or `None` when it is too short or has no anchor.
pub fn sketch(data: &[u8]) -> Option<Sketch> {
    if data.len() < MIN_SKETCH_LEN {
        return None;
    }
    let mut maxima = [0u32; TRANSFORMS];
    let mut anchors = 0usize;
    // Stretch k is data[k * len..(k + 1) * len] (the last one also takes
    // the rest); MIN_SKETCH_LEN makes each at least GEAR_WINDOW long, so
    // every lane but the first warms up on bytes of the stretch before.
    let len = data.len() / LANES;
    debug_assert!(len >= GEAR_WINDOW);
    let mut h = [0u64; LANES];
    for (k, h) in h.iter_mut().enumerate().skip(1) {
        for &b in &data[k * len - GEAR_WINDOW..k * len] {
            *h = gear_step(*h, b);
        }
    }
    // Each lane notes its anchors in its own buffer: every hash is
    // written, and the count moves on only for an anchor (the index is
    // masked: a count stays below BLOCK, a power of two, so no check).
    let lane = |k: usize| &data[k * len..(k + 1) * len];
    let (l0, l1, l2, l3) = (lane(0), lane(1), lane(2), lane(3));
    let mut noted = [[0u64; BLOCK]; LANES];
    let mut start = 0;
    while start < len {
        let end = (start + BLOCK).min(len);
        let mut count = [0usize; LANES];
        let bytes = l0[start..end]
            .iter()
            .zip(&l1[start..end])
            .zip(&l2[start..end])
            .zip(&l3[start..end]);
        for (((&b0, &b1), &b2), &b3) in bytes {
            for (k, b) in [b0, b1, b2, b3].into_iter().enumerate() {
                h[k] = gear_step(h[k], b);
                noted[k][count[k] & (BLOCK - 1)] = h[k];
                count[k] += usize::from(h[k] & ANCHOR_MASK == 0);
            }
        }
        for k in 0..LANES {
            fold_anchors(&mut maxima, &noted[k][..count[k]]);
            anchors += count[k];
        }
        start = end;
    }
    let mut last = h[LANES - 1];
    for &b in &data[LANES * len..] {
        last = gear_step(last, b);
        if last & ANCHOR_MASK == 0 {
            fold_anchors(&mut maxima, &[last]);
            anchors += 1;
        }
    }
    if anchors == 0 {
        return None;
    }
    let mut out = [0u32; SUPER_FEATURES];
    for (i, sf) in out.iter_mut().enumerate() {
        let mut acc = 0xCBF2_9CE4_8422_2325u64 ^ i as u64;
        for m in &maxima[i * PER_SUPER..(i + 1) * PER_SUPER] {
            acc = splitmix(acc ^ *m as u64);
        }
        *sf = acc as u32;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pseudo_random;

    #[test]
    fn near_duplicates_share_features_and_strangers_do_not() {
        let a = pseudo_random(60_000, 1);
        let mut b = a.clone();
        // A version string changed in two places.
        b[1000..1008].copy_from_slice(b"1.97.0-n");
        b[40_000..40_008].copy_from_slice(b"nightly!");
        let other = pseudo_random(60_000, 2);
        let (sa, sb, so) = (
            sketch(&a).unwrap(),
            sketch(&b).unwrap(),
            sketch(&other).unwrap(),
        );
        let shared = |x: &Sketch, y: &Sketch| x.iter().zip(y).filter(|(p, q)| p == q).count();
        assert!(shared(&sa, &sb) >= 2, "{sa:?} {sb:?}");
        assert_eq!(shared(&sa, &so), 0);
        assert_eq!(sketch(&a[..100]), None);
    }

    /// The sketch as first defined: one gear hash over the whole chunk.
    /// Sketches are stored in pack indexes, so the lanes must give exactly
    /// this.
    fn one_pass(data: &[u8]) -> Option<Sketch> {
        if data.len() < MIN_SKETCH_LEN {
            return None;
        }
        let mut maxima = [0u32; TRANSFORMS];
        let (mut h, mut anchors) = (0u64, 0usize);
        for &b in data {
            h = (h << 1).wrapping_add(GEAR[b as usize]);
            if h & ANCHOR_MASK == 0 {
                anchors += 1;
                for (m, (mul, add)) in maxima.iter_mut().zip(TRANSFORM.iter()) {
                    *m = (*m).max((h.wrapping_mul(*mul).wrapping_add(*add) >> 32) as u32);
                }
            }
        }
        (anchors > 0).then(|| {
            let mut out = [0u32; SUPER_FEATURES];
            for (i, sf) in out.iter_mut().enumerate() {
                let mut acc = 0xCBF2_9CE4_8422_2325u64 ^ i as u64;
                for m in &maxima[i * PER_SUPER..(i + 1) * PER_SUPER] {
                    acc = splitmix(acc ^ *m as u64);
                }
                *sf = acc as u32;
            }
            out
        })
    }

    #[test]
    fn lanes_give_the_one_pass_sketch_exactly() {
        let data = pseudo_random(70_000, 3);
        // Every length around the lane boundaries' edge cases, and long.
        for len in (MIN_SKETCH_LEN - 2..MIN_SKETCH_LEN + 70).chain([1000, 4099, 65_537, 70_000]) {
            assert_eq!(sketch(&data[..len]), one_pass(&data[..len]), "length {len}");
        }
        // Text-like data, where anchors are few and uneven.
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} of some text\n").into_bytes())
            .collect();
        for len in [300, 5_000, text.len()] {
            assert_eq!(sketch(&text[..len]), one_pass(&text[..len]), "text {len}");
        }
        // No anchor at all: none.
        assert_eq!(sketch(&[0u8; 4096]), one_pass(&[0u8; 4096]));
    }
}
