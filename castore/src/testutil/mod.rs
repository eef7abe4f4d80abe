//! Test data and test doubles shared by the test suites of every crate,
//! compiled only for tests and under the `testutil` feature (which other
//! crates' dev-dependencies turn on), never into a release build.

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

/// What `gzip -9n` makes of `contents` (zlib at level 9 deflates the same
/// way for inputs like these): a gzip member compaction can store as its
/// contents.
pub fn gzip9(contents: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
    let mut c = Compress::new(Compression::new(9), false);
    let mut body = Vec::with_capacity(contents.len() + 64);
    c.compress_vec(contents, &mut body, FlushCompress::Finish)
        .expect("deflate");
    out.extend_from_slice(&body);
    let mut crc = Crc::new();
    crc.update(contents);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(contents.len() as u32).to_le_bytes());
    out
}

/// Text that deflates about as well as a man page.
pub fn wordy_text(words: usize) -> Vec<u8> {
    let mut x = 7u64;
    (0..words)
        .flat_map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            format!("word{} ", x >> 52).into_bytes()
        })
        .collect()
}

/// One frame holding chunks with the given bytes, in order.
pub fn frame_of(chunks: &[&[u8]]) -> crate::frame::Frame {
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| {
            (
                crate::chunk::ChunkMeta::of(c),
                bytes::Bytes::copy_from_slice(c),
            )
        })
        .collect();
    crate::frame::Frame::compress(&chunks).expect("compress")
}

/// A delta frame: the chunk `new` compressed against the chunk `old` (a
/// frame only compaction makes; no upload may carry one).
pub fn delta_frame_of(new: &[u8], old: &[u8]) -> crate::frame::Frame {
    crate::frame::Frame::compress_with_base(
        &[(
            crate::chunk::ChunkMeta::of(new),
            bytes::Bytes::copy_from_slice(new),
        )],
        vec![crate::chunk::ChunkMeta::of(old)],
        old,
        3,
    )
    .expect("compress")
}

mod slow_store;

pub use slow_store::SlowStore;

/// An empty store in a new temporary folder (removed when the folder is
/// dropped).
pub async fn temp_bucket() -> (
    tempfile::TempDir,
    std::sync::Arc<crate::bucket::BucketStore>,
) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let store = bucket_at(dir.path()).await;
    (dir, store)
}

/// The store in folder `dir` (made if new), opened as a server opens it.
pub async fn bucket_at(dir: &std::path::Path) -> std::sync::Arc<crate::bucket::BucketStore> {
    crate::bucket::BucketStore::open(dir.to_str().expect("UTF-8 path"))
        .await
        .expect("open the store")
}

/// Stores each of `chunks` in a pack of its own (one frame of one chunk).
pub async fn put_pack_each(
    store: &crate::bucket::BucketStore,
    chunks: impl IntoIterator<Item = Vec<u8>>,
) {
    use crate::store::BlobStore;
    for chunk in chunks {
        store
            .put_frames(vec![frame_of(&[&chunk])])
            .await
            .expect("put a frame");
    }
}

/// A catalog entry for path `i`: its digest starts with `i` and is zero
/// after, so entries list in the order of `i`.
pub fn catalog_entry(i: u8) -> crate::catalog::CatalogEntry {
    let mut digest = [0u8; 20];
    digest[0] = i;
    crate::catalog::CatalogEntry {
        store_path: crate::nix::store_path::StorePath::from_parts(digest, &format!("p{i}"))
            .expect("path"),
        node: crate::node::Node::File {
            digest: crate::digest::B3Digest::of(&[i]),
            size: 1,
            executable: false,
        },
        nar_size: 100 + i as u64,
    }
}

/// A PathInfo of `node` at a made-up store path `<hash>-name` (its hash
/// part derived from `name`): no references or signatures, placeholder
/// NAR size and hash. Override fields with struct update syntax.
pub fn path_info(name: &str, node: crate::node::Node) -> crate::pathinfo::PathInfo {
    let hash = crate::nix::nixbase32::encode(
        &crate::digest::B3Digest::of(name.as_bytes()).as_bytes()[..20],
    );
    crate::pathinfo::PathInfo {
        store_path: crate::nix::store_path::StorePath::from_basename(&format!("{hash}-{name}"))
            .expect("a valid store path name"),
        node,
        references: vec![],
        nar_size: 1,
        nar_sha256: [0; 32],
        signatures: vec![],
        root_signatures: vec![],
        deriver: None,
        ca: None,
    }
}
