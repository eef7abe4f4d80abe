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

/// The sketch of `data`, or `None` when it is too short or has no anchor.
pub fn sketch(data: &[u8]) -> Option<Sketch> {
    if data.len() < MIN_SKETCH_LEN {
        return None;
    }
    let mut maxima = [0u32; TRANSFORMS];
    let mut h = 0u64;
    let mut anchors = 0usize;
    for &b in data {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & ANCHOR_MASK == 0 {
            anchors += 1;
            for (m, (mul, add)) in maxima.iter_mut().zip(TRANSFORM.iter()) {
                let v = (h.wrapping_mul(*mul).wrapping_add(*add) >> 32) as u32;
                if v > *m {
                    *m = v;
                }
            }
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
}
