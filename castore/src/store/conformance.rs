//! One conformance suite for every store implementation: what the traits
//! promise, checked against the real thing. The bucket on a folder, the
//! cache layers and the decoded-chunk layer run it as unit tests here; the
//! bucket on S3 and the gRPC client against a real `lazix serve` run it
//! from the workspace's end-to-end tests (`tests/store_conformance.rs`).
//!
//! `seed` makes the content of one run its own, so one store can run the
//! suite more than once (say, once through each layer) and every run starts
//! from objects the store has never seen.

use bytes::Bytes;
use futures::TryStreamExt;

use super::{BlobChunks, Store};
use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::directory::{Directory, DirectoryBuilder};
use crate::error::StoreError;
use crate::frame::Frame;
use crate::nix::store_path::StorePath;
use crate::node::Node;
use crate::pathinfo::PathInfo;
use crate::testutil::{frame_of, pseudo_random};
use crate::trust::ChunkListsDigest;

/// Runs every check against `store`; panics with what broke.
pub async fn check_store(store: &Store, seed: u64) {
    chunks(store, seed).await;
    delta_frames(store, seed).await;
    chunk_lists(store, seed).await;
    manifests(store, seed).await;
    refused_uploads_store_nothing(store, seed).await;
    let root = directories(store, seed).await;
    path_infos(store, seed, root).await;
}

/// Chunks in, frames and chunks out, in request order, verified.
async fn chunks(store: &Store, seed: u64) {
    let a = pseudo_random(20_000, seed * 10 + 1);
    let b = pseudo_random(30_000, seed * 10 + 2);
    let c = pseudo_random(10_000, seed * 10 + 3);
    let (da, db, dc) = (B3Digest::of(&a), B3Digest::of(&b), B3Digest::of(&c));
    let never = B3Digest::of(format!("never stored {seed}").as_bytes());
    assert_eq!(
        store.blobs.missing_chunks(&[da, db, dc]).await.unwrap(),
        vec![da, db, dc],
        "a new store lacks new chunks, in input order"
    );
    store
        .blobs
        .put_frames(vec![frame_of(&[&a, &b]), frame_of(&[&c])])
        .await
        .unwrap();
    assert_eq!(
        store.blobs.missing_chunks(&[dc, never, da]).await.unwrap(),
        vec![never],
        "stored chunks are no longer missing"
    );
    // Storing the same chunks again changes nothing.
    store.blobs.put_frames(vec![frame_of(&[&c])]).await.unwrap();

    let frames = store.blobs.get_frames(&[dc, da, db]).await.unwrap();
    assert_eq!(frames.len(), 2, "each frame once: {frames:?}");
    assert_eq!(
        frames[0].chunks[0].digest, dc,
        "frames in order of first request"
    );
    for f in &frames {
        f.decode_verified()
            .expect("frames as stored decode and verify");
    }

    let got = store.blobs.get_chunks(&[db, dc, da, db]).await.unwrap();
    let bytes: Vec<Bytes> = got.iter().map(|c| c.decode_verified().unwrap()).collect();
    assert_eq!(bytes, vec![b.clone(), c.clone(), a.clone(), b.clone()]);
    assert_eq!(got[0].size, b.len() as u64);

    assert!(matches!(
        store.blobs.get_frames(&[da, never]).await,
        Err(StoreError::NotFound(_)) | Err(StoreError::Corrupt(_))
    ));
    assert!(store.blobs.get_chunks(&[never]).await.is_err());
}

/// Uploaded frames are plain: deltas are the store's own business (its
/// compaction makes them), so an uploaded delta frame is refused.
async fn delta_frames(store: &Store, seed: u64) {
    let old = pseudo_random(50_000, seed * 10 + 4);
    let mut new = old.clone();
    new[1000..1010].copy_from_slice(b"0123456789");
    store
        .blobs
        .put_frames(vec![frame_of(&[&old])])
        .await
        .unwrap();
    let delta = Frame::compress_with_base(
        &[(ChunkMeta::of(&new), Bytes::from(new.clone()))],
        vec![ChunkMeta::of(&old)],
        &old,
        3,
    )
    .unwrap();
    assert!(store.blobs.put_frames(vec![delta]).await.is_err());
    assert_eq!(
        store
            .blobs
            .missing_chunks(&[B3Digest::of(&new)])
            .await
            .unwrap(),
        vec![B3Digest::of(&new)]
    );
}

/// Chunk lists of multi-chunk blobs; none for one-chunk blobs.
async fn chunk_lists(store: &Store, seed: u64) {
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| pseudo_random(40_000, seed * 10 + 5 + i))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    store.blobs.put_frames(vec![frame_of(&refs)]).await.unwrap();
    let blob = B3Digest::of(&parts.concat());
    let list: Vec<ChunkMeta> = parts.iter().map(|p| ChunkMeta::of(p)).collect();
    assert_eq!(
        store.blobs.get_blob_chunks(&[blob]).await.unwrap(),
        vec![None],
        "no list before one is stored"
    );
    store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob,
            chunks: list.clone(),
        }])
        .await
        .unwrap();
    let single = list[0].digest;
    assert_eq!(
        store.blobs.get_blob_chunks(&[single, blob]).await.unwrap(),
        vec![None, Some(list.clone())],
        "answers in request order; a one-chunk blob has no list"
    );
    // Another valid list of the same blob, cut elsewhere: the first stays
    // (signatures and manifests cover it).
    let merged = [parts[0].as_slice(), parts[1].as_slice()].concat();
    store
        .blobs
        .put_frames(vec![frame_of(&[&merged])])
        .await
        .unwrap();
    store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob,
            chunks: vec![ChunkMeta::of(&merged), list[2]],
        }])
        .await
        .unwrap();
    assert_eq!(
        store.blobs.get_blob_chunks(&[blob]).await.unwrap(),
        vec![Some(list.clone())],
        "a stored list is never replaced"
    );
}

/// A root's manifest, where the store keeps one, is the digest of each
/// multi-chunk file's list below it; a root never stored has none.
async fn manifests(store: &Store, seed: u64) {
    let parts: Vec<Vec<u8>> = (0..2)
        .map(|i| pseudo_random(40_000, seed * 1000 + 70 + i))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let small = pseudo_random(2_000, seed * 1000 + 79);
    store
        .blobs
        .put_frames(vec![frame_of(&refs), frame_of(&[&small])])
        .await
        .unwrap();
    let big = parts.concat();
    let blob = B3Digest::of(&big);
    let list: Vec<ChunkMeta> = parts.iter().map(|p| ChunkMeta::of(p)).collect();
    store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob,
            chunks: list.clone(),
        }])
        .await
        .unwrap();
    let mut root = DirectoryBuilder::default();
    root.add(
        "big".into(),
        Node::File {
            digest: blob,
            size: big.len() as u64,
            executable: false,
        },
    );
    root.add(
        "small".into(),
        Node::File {
            digest: B3Digest::of(&small),
            size: small.len() as u64,
            executable: false,
        },
    );
    let root = root.build().unwrap();
    store
        .directories
        .put_closure(vec![root.clone()])
        .await
        .unwrap();
    let node = Node::Directory {
        digest: root.digest(),
        size: root.size(),
    };
    store
        .path_infos
        .put_path_info(PathInfo {
            nar_size: 90_000,
            nar_sha256: [seed as u8; 32],
            ..crate::testutil::path_info(&format!("manifest-{seed}"), node.clone())
        })
        .await
        .unwrap();
    let want = ChunkListsDigest::of([(&blob, &list)]);
    match store
        .blobs
        .chunk_list_digests(&root.digest())
        .await
        .unwrap()
    {
        None => {}
        Some(got) => assert_eq!(got, want, "the manifest names the big file's list"),
    }
    assert_eq!(
        crate::read::trusted::list_digests(store, &node)
            .await
            .unwrap(),
        want,
        "readers derive the same manifest whether or not the store keeps one"
    );
    match store
        .blobs
        .own_chunk_list_digests(&root.digest())
        .await
        .unwrap()
    {
        None => {}
        Some(got) => assert_eq!(got, want, "the store's own manifest is the same"),
    }
    let never = B3Digest::of(format!("no such root {seed}").as_bytes());
    assert!(
        !matches!(store.blobs.chunk_list_digests(&never).await, Ok(Some(_))),
        "no manifest for a root never stored"
    );
    assert!(
        !matches!(
            store.blobs.own_chunk_list_digests(&never).await,
            Ok(Some(_))
        ),
        "no own manifest for a root never stored"
    );
}

/// Uploads that lie are refused and leave nothing visible.
async fn refused_uploads_store_nothing(store: &Store, seed: u64) {
    // A frame whose chunk list names other bytes.
    let real = pseudo_random(5_000, seed * 10 + 8);
    let claimed = pseudo_random(5_000, seed * 10 + 9);
    let mut lying = frame_of(&[&real]);
    lying.chunks[0].digest = B3Digest::of(&claimed);
    assert!(store.blobs.put_frames(vec![lying]).await.is_err());
    assert_eq!(
        store
            .blobs
            .missing_chunks(&[B3Digest::of(&claimed), B3Digest::of(&real)])
            .await
            .unwrap(),
        vec![B3Digest::of(&claimed), B3Digest::of(&real)],
        "a refused frame stores none of its chunks"
    );

    // A chunk list that does not hash to its blob.
    let parts: Vec<Vec<u8>> = (0..2)
        .map(|i| pseudo_random(40_000, seed * 100 + 50 + i))
        .collect();
    store
        .blobs
        .put_frames(vec![frame_of(&[&parts[0], &parts[1]])])
        .await
        .unwrap();
    let wrong_blob = B3Digest::of(format!("some other blob {seed}").as_bytes());
    assert!(store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob: wrong_blob,
            chunks: parts.iter().map(|p| ChunkMeta::of(p)).collect(),
        }])
        .await
        .is_err());
    assert_eq!(
        store.blobs.get_blob_chunks(&[wrong_blob]).await.unwrap(),
        vec![None]
    );

    // A directory upload naming a child never sent.
    let mut b = DirectoryBuilder::default();
    let mut ghost_parent = DirectoryBuilder::default();
    ghost_parent.add(
        format!("g{seed}").into(),
        Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: false,
        },
    );
    let ghost_child = ghost_parent.build().unwrap();
    b.add(
        "child".into(),
        Node::Directory {
            digest: ghost_child.digest(),
            size: ghost_child.size(),
        },
    );
    let orphan_root = b.build().unwrap();
    assert!(store
        .directories
        .put_closure(vec![orphan_root.clone()])
        .await
        .is_err());
    assert!(store
        .directories
        .get_directory(&orphan_root.digest())
        .await
        .unwrap()
        .is_none());
}

/// A closure in leaves first; out root first, each once.
async fn directories(store: &Store, seed: u64) -> Directory {
    let data = pseudo_random(3_000, seed * 10 + 7);
    store
        .blobs
        .put_frames(vec![frame_of(&[&data])])
        .await
        .unwrap();
    let file = Node::File {
        digest: B3Digest::of(&data),
        size: data.len() as u64,
        executable: true,
    };
    let mut leaf = DirectoryBuilder::default();
    leaf.add(format!("tool-{seed}").into(), file.clone());
    let leaf = leaf.build().unwrap();
    let leaf_node = Node::Directory {
        digest: leaf.digest(),
        size: leaf.size(),
    };
    let mut root = DirectoryBuilder::default();
    root.add("bin".into(), leaf_node.clone());
    root.add("sbin".into(), leaf_node);
    root.add(
        "link".into(),
        Node::Symlink {
            target: "bin/tool".into(),
        },
    );
    let root = root.build().unwrap();
    let got = store
        .directories
        .put_closure(vec![leaf.clone(), root.clone()])
        .await
        .unwrap();
    assert_eq!(got, root.digest());
    assert_eq!(
        store
            .directories
            .get_directory(&leaf.digest())
            .await
            .unwrap(),
        Some(leaf.clone())
    );
    let closure = store.directories.get_closure(&root.digest()).await.unwrap();
    assert_eq!(
        closure,
        vec![root.clone(), leaf],
        "root first, a shared child once"
    );
    let never = B3Digest::of(format!("no such directory {seed}").as_bytes());
    assert!(store
        .directories
        .get_directory(&never)
        .await
        .unwrap()
        .is_none());
    assert!(store.directories.get_closure(&never).await.is_err());
    root
}

/// PathInfos whose roots are stored; refused otherwise.
async fn path_infos(store: &Store, seed: u64, root: Directory) {
    let hash = crate::nix::nixbase32::encode(&B3Digest::of(&seed.to_le_bytes()).as_bytes()[..20]);
    let path = StorePath::from_basename(&format!("{hash}-conformance-{seed}")).unwrap();
    let info = PathInfo {
        store_path: path.clone(),
        node: Node::Directory {
            digest: root.digest(),
            size: root.size(),
        },
        references: vec![],
        nar_size: 4096,
        nar_sha256: [seed as u8; 32],
        signatures: vec![],
        root_signatures: vec![],
        deriver: None,
        ca: None,
    };
    assert!(store
        .path_infos
        .get_path_info(path.digest())
        .await
        .unwrap()
        .is_none());
    store.path_infos.put_path_info(info.clone()).await.unwrap();
    assert_eq!(
        store.path_infos.get_path_info(path.digest()).await.unwrap(),
        Some(info.clone())
    );
    let listed: Vec<PathInfo> = store
        .path_infos
        .list_path_infos()
        .try_collect()
        .await
        .unwrap();
    assert!(listed.contains(&info), "a stored PathInfo is listed");

    // A root the store lacks is refused, and the path stays unknown.
    let hash = crate::nix::nixbase32::encode(
        &B3Digest::of(&((seed + 1) << 32).to_le_bytes()).as_bytes()[..20],
    );
    let dangling = StorePath::from_basename(&format!("{hash}-dangling-{seed}")).unwrap();
    let bad = PathInfo {
        store_path: dangling.clone(),
        node: Node::Directory {
            digest: B3Digest::of(format!("no such root {seed}").as_bytes()),
            size: 1,
        },
        ..info
    };
    assert!(store.path_infos.put_path_info(bad).await.is_err());
    assert!(store
        .path_infos
        .get_path_info(dangling.digest())
        .await
        .unwrap()
        .is_none());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{cached, decoded_chunks, CacheConfig};

    async fn folder() -> (tempfile::TempDir, Store) {
        let (dir, bucket) = crate::testutil::temp_bucket().await;
        (dir, Store::from_backend(bucket))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bucket_on_a_folder_conforms() {
        let (_dir, store) = folder().await;
        check_store(&store, 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_layers_conform() {
        let (_dir, backend) = folder().await;
        check_store(&cached(backend.clone(), CacheConfig::default()), 2).await;
        // The mount's shape: no frame cache.
        let no_frames = CacheConfig {
            chunk_bytes: 0,
            ..CacheConfig::default()
        };
        check_store(&cached(backend, no_frames), 3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_decoded_chunk_layer_conforms() {
        let (_dir, backend) = folder().await;
        let cached = cached(backend, CacheConfig::default());
        let store = Store {
            blobs: decoded_chunks(cached.blobs.clone(), 1 << 20),
            ..cached
        };
        check_store(&store, 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_counted_store_conforms() {
        let (_dir, backend) = folder().await;
        let slow = crate::testutil::SlowStore::over(backend, std::time::Duration::ZERO);
        check_store(&Store::from_backend(slow), 5).await;
    }
}
