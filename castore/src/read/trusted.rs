//! Verified reads: a path is read only after its root signature verified
//! under a trusted key ([`crate::trust`]), and every chunk list read for it
//! afterwards is checked against the list digest that signature covers.
//!
//! [`TrustedReads::admit`] fetches what the signature needs — the root's
//! directory closure (Merkle-verified by digest as it arrives) and its
//! *manifest*, the digest of each multi-chunk file's chunk list (one
//! answer from a store that keeps manifests, else gathered from the lists
//! in batched calls) — and no file bytes at all; it remembers each listed
//! file's list digest. The layer [`TrustedReads::guard`] wraps a reader's
//! blob store so that every chunk list answered later (when a file is
//! first read, after a cache eviction, by another call) must be the one
//! signed, else `Corrupt`: a reordered list of genuine chunks fails before
//! a byte of it is returned. Signers use [`list_digests`] too, and stores
//! compute manifests with [`manifest_below`], so every side derives a
//! root's manifest one way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::nix::signing::{SecretKey, Signature};
use crate::nix::store_path::StorePath;
use crate::node::Node;
use crate::pathinfo::PathInfo;
use crate::read::BlobLayout;
use crate::store::{filtered_lists, BlobStore, Store};
use crate::trust::{
    chunk_list_digest, sign_root, verify_root, ChunkListsDigest, TrustError, TrustedKeys,
};

/// Files whose chunk lists are asked for per call.
const LISTS_PER_CALL: usize = 512;
/// Such calls in flight at once.
const LIST_CALLS_IN_FLIGHT: usize = 4;

/// The manifest of `root` (see [`ChunkListsDigest`]): the store's own if
/// it keeps them, else gathered from the lists of the files below it.
pub async fn list_digests(store: &Store, root: &Node) -> StoreResult<ChunkListsDigest> {
    match root {
        Node::Directory { digest, .. } => root_manifest(store, digest).await,
        _ => manifest_below(store.blobs.as_ref(), root, &[]).await,
    }
}

/// The manifest of the root directory `root`: the store's own if it keeps
/// them, else gathered from its closure and lists.
pub async fn root_manifest(store: &Store, root: &B3Digest) -> StoreResult<ChunkListsDigest> {
    if let Some(manifest) = store.blobs.chunk_list_digests(root).await? {
        return Ok(manifest);
    }
    let closure = store.directories.get_closure(root).await?;
    let size = closure.first().map_or(0, Directory::size);
    let node = Node::Directory {
        digest: *root,
        size,
    };
    manifest_below(store.blobs.as_ref(), &node, &closure).await
}

/// The manifest of `root` whose closure is at hand, from `blobs`' lists:
/// what a store that keeps manifests computes once per root.
pub async fn manifest_below(
    blobs: &dyn BlobStore,
    root: &Node,
    closure: &[Directory],
) -> StoreResult<ChunkListsDigest> {
    let mut out = ChunkListsDigest::default();
    each_list(blobs, &listed_files(root, closure), |blob, list| {
        out.lists.insert(blob, chunk_list_digest(&list));
    })
    .await?;
    Ok(out)
}

/// The directory closure of `root` (empty for a file or symlink).
async fn closure_of(store: &Store, root: &Node) -> StoreResult<Vec<Directory>> {
    match root {
        Node::Directory { digest, .. } => store.directories.get_closure(digest).await,
        _ => Ok(Vec::new()),
    }
}

/// The files below `root` that may have a chunk list (larger than one
/// chunk), each once.
fn listed_files(root: &Node, closure: &[Directory]) -> Vec<B3Digest> {
    let mut files: HashSet<B3Digest> = HashSet::new();
    match root {
        Node::Directory { .. } => {
            for dir in closure {
                for (_, node) in dir.entries_sorted() {
                    if let Node::File { digest, size, .. } = node {
                        if BlobLayout::needs_lookup(size) {
                            files.insert(digest);
                        }
                    }
                }
            }
        }
        Node::File { digest, size, .. } if BlobLayout::needs_lookup(*size) => {
            files.insert(*digest);
        }
        _ => {}
    }
    files.into_iter().collect()
}

/// Calls `found` with each of `files`' stored lists, asking
/// [`LISTS_PER_CALL`] files per call, [`LIST_CALLS_IN_FLIGHT`] calls at
/// once; only one call's answers are held at a time.
async fn each_list(
    blobs: &dyn BlobStore,
    files: &[B3Digest],
    mut found: impl FnMut(B3Digest, Vec<ChunkMeta>),
) -> StoreResult<()> {
    // Owned batches: borrowed ones make this future not `Send` for every
    // lifetime the async traits need.
    let batches: Vec<Vec<B3Digest>> = files.chunks(LISTS_PER_CALL).map(<[_]>::to_vec).collect();
    let mut answers = futures::stream::iter(batches)
        .map(move |batch: Vec<B3Digest>| async move {
            let lists = blobs.get_blob_chunks(&batch).await?;
            Ok::<_, StoreError>((batch, lists))
        })
        .buffered(LIST_CALLS_IN_FLIGHT);
    while let Some((batch, lists)) = answers.try_next().await? {
        for (blob, list) in batch.iter().zip(lists) {
            if let Some(list) = list {
                found(*blob, list);
            }
        }
    }
    Ok(())
}

/// Root signatures of `info` by `keys`, over the chunk lists `store`
/// holds for it: what a signer (the server on upload, `push
/// --signing-key`) adds to a stored path.
pub async fn root_signatures(
    store: &Store,
    info: &PathInfo,
    keys: &[SecretKey],
) -> StoreResult<Vec<Signature>> {
    let digests = list_digests(store, &info.node).await?;
    Ok(keys.iter().map(|k| sign_root(info, &digests, k)).collect())
}

/// Why a path was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// Its signatures do not hold.
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    /// What the check needs could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A path admitted by its root signature.
#[derive(Debug)]
pub struct Admitted {
    /// The trusted key whose signature verified.
    pub key: String,
    /// Its root's directory closure (each directory checked by digest as
    /// the store answered it), root first.
    pub closure: Vec<Directory>,
}

/// The trusted keys of a reader and what their signatures admitted.
#[derive(Debug)]
pub struct TrustedReads {
    keys: TrustedKeys,
    /// Each admitted multi-chunk file's signed list digest.
    lists: Mutex<HashMap<B3Digest, B3Digest>>,
    /// Each admitted path's whole name and root, by store path digest.
    roots: Mutex<HashMap<[u8; 20], (String, Node)>>,
}

impl TrustedReads {
    /// A reader trusting `keys`.
    pub fn new(keys: TrustedKeys) -> Arc<Self> {
        Arc::new(Self {
            keys,
            lists: Mutex::new(HashMap::new()),
            roots: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `info`'s root signature against the manifest `store` (the
    /// unguarded store) answers for its root and, if it holds, remembers
    /// its list digests, against which the guard checks every list read
    /// later. Returns the signing key's name and the verified closure (a
    /// reader keeps it: its directories need no further request).
    pub async fn admit(&self, store: &Store, info: &PathInfo) -> Result<Admitted, AdmitError> {
        if info.root_signatures.is_empty() {
            return Err(TrustError::Unsigned(info.store_path.to_absolute()).into());
        }
        // The manifest and the closure in parallel: two calls, no lists
        // (each file's list is fetched when it is read, and checked then).
        let (digests, closure) = futures::try_join!(
            list_digests(store, &info.node),
            closure_of(store, &info.node)
        )?;
        let key = verify_root(info, &digests, &self.keys)?;
        self.lists
            .lock()
            .expect("admitted lists")
            .extend(digests.lists);
        self.roots.lock().expect("admitted roots").insert(
            *info.store_path.digest(),
            (info.store_path.basename(), info.node.clone()),
        );
        Ok(Admitted { key, closure })
    }

    /// Whether `store_path` (hash and name) with root `node` was admitted
    /// before.
    pub fn was_admitted(&self, store_path: &StorePath, node: &Node) -> bool {
        self.roots
            .lock()
            .expect("admitted roots")
            .get(store_path.digest())
            .is_some_and(|(name, root)| *name == store_path.basename() && root == node)
    }

    /// `store` with its blob lists checked against what was admitted.
    pub fn guard(self: &Arc<Self>, store: Store) -> Store {
        let trust = self.clone();
        Store {
            blobs: filtered_lists(store.blobs, move |blob, list| {
                trust.check(blob, list.as_deref())?;
                Ok(list)
            }),
            ..store
        }
    }

    /// `Ok` if `list` for `blob` is the one an admitted signature covers
    /// (`None`: no list, only right if none was signed).
    fn check(&self, blob: &B3Digest, list: Option<&[ChunkMeta]>) -> StoreResult<()> {
        let signed = self
            .lists
            .lock()
            .expect("admitted lists")
            .get(blob)
            .copied();
        match (signed, list) {
            (Some(want), Some(list)) if chunk_list_digest(list) == want => Ok(()),
            (None, None) => Ok(()),
            (Some(_), None) => Err(StoreError::Corrupt(format!(
                "blob {blob}: the server withheld its signed chunk list"
            ))),
            (_, Some(_)) => Err(StoreError::Corrupt(format!(
                "blob {blob}: chunk list is not the one its path's root signature covers"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketStore;
    use crate::nix::signing::SecretKey;
    use crate::nix::store_path::StorePath;
    use crate::store::{BlobChunks, BlobStore};
    use crate::testutil::{frame_of, pseudo_random};

    #[tokio::test]
    async fn a_list_changed_after_admission_is_corrupt_and_other_paths_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        let parts: Vec<Vec<u8>> = (0..2).map(|i| pseudo_random(40_000, 60 + i)).collect();
        bucket
            .put_frames(vec![frame_of(&[&parts[0], &parts[1]])])
            .await
            .unwrap();
        let file = parts.concat();
        let blob = B3Digest::of(&file);
        let list: Vec<ChunkMeta> = parts.iter().map(|p| ChunkMeta::of(p)).collect();
        bucket
            .put_blob_chunks(vec![BlobChunks {
                blob,
                chunks: list.clone(),
            }])
            .await
            .unwrap();
        // A server that answers the lists reversed once `lie` is set.
        let lie = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lying = lie.clone();
        let store = Store {
            blobs: filtered_lists(bucket.clone(), move |_, answer| {
                if lying.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(answer.map(|mut l| {
                        l.reverse();
                        l
                    }))
                } else {
                    Ok(answer)
                }
            }),
            ..Store::from_backend(bucket)
        };
        let key = SecretKey::generate("k");
        let mut info = crate::testutil::path_info(
            "one-file",
            Node::File {
                digest: blob,
                size: file.len() as u64,
                executable: false,
            },
        );
        info.root_signatures = root_signatures(&store, &info, &[key]).await.unwrap();
        let trust = TrustedReads::new(
            TrustedKeys::parse(&SecretKey::generate("other").public().to_nix_string()).unwrap(),
        );
        assert!(matches!(
            trust.admit(&store, &info).await,
            Err(AdmitError::Untrusted(_))
        ));
        let guarded = trust.guard(store.clone());
        assert!(
            guarded.blobs.get_blob_chunks(&[blob]).await.is_err(),
            "a list of a path never admitted is refused"
        );

        let key_store = SecretKey::parse(&SecretKey::generate("k2").to_nix_string()).unwrap();
        info.root_signatures = root_signatures(&store, &info, std::slice::from_ref(&key_store))
            .await
            .unwrap();
        let trust =
            TrustedReads::new(TrustedKeys::parse(&key_store.public().to_nix_string()).unwrap());
        trust.admit(&store, &info).await.unwrap();
        assert!(trust.was_admitted(&info.store_path, &info.node));
        // The same hash under another name (a catalog entry a server made
        // up) was not admitted.
        let renamed =
            StorePath::from_basename(&format!("{}-renamed", info.store_path.hash_part())).unwrap();
        assert!(!trust.was_admitted(&renamed, &info.node));
        let guarded = trust.guard(store.clone());
        assert_eq!(
            guarded.blobs.get_blob_chunks(&[blob]).await.unwrap(),
            vec![Some(list)]
        );
        lie.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            guarded.blobs.get_blob_chunks(&[blob]).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
