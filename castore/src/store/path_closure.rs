//! The closure of store paths as a client walks it on a server: each
//! path's PathInfo asked once, references followed, many asks in flight
//! (never a round trip per path in turn), and a bound on how many paths
//! the walk may gather, so a server that invents an endless chain of
//! references cannot grow the walker's memory without end. Pinning and
//! `lazix realise` both walk here.

use std::collections::HashSet;

use futures::stream::{self, StreamExt, TryStreamExt};

use super::Store;
use crate::error::{StoreError, StoreResult};
use crate::limits::{over_limit, MAX_CLOSURE_PATHS};
use crate::nix::store_path::StorePath;
use crate::pathinfo::PathInfo;

/// PathInfo asks in flight during a walk.
const PARALLEL_LOOKUPS: usize = 16;

/// The PathInfos of `roots` and everything they reference, each path
/// once, in the order found. A path the server lacks (or answers with
/// another name) is `NotFound`; a closure of more than
/// [`MAX_CLOSURE_PATHS`] paths is refused.
pub async fn path_closure(store: &Store, roots: &[StorePath]) -> StoreResult<Vec<PathInfo>> {
    closure_within(store, roots, MAX_CLOSURE_PATHS).await
}

async fn closure_within(
    store: &Store,
    roots: &[StorePath],
    max_paths: usize,
) -> StoreResult<Vec<PathInfo>> {
    let mut seen: HashSet<StorePath> = HashSet::new();
    let mut frontier: Vec<StorePath> = Vec::new();
    let mut admit = |p: &StorePath, frontier: &mut Vec<StorePath>| -> StoreResult<()> {
        if seen.insert(p.clone()) {
            if seen.len() > max_paths {
                return Err(over_limit("the closure's number of store paths", max_paths));
            }
            frontier.push(p.clone());
        }
        Ok(())
    };
    for r in roots {
        admit(r, &mut frontier)?;
    }
    let mut out = Vec::new();
    while !frontier.is_empty() {
        let batch: Vec<PathInfo> = stream::iter(std::mem::take(&mut frontier))
            .map(|path| async move {
                store
                    .path_infos
                    .get_path_info(path.digest())
                    .await?
                    .filter(|info| info.store_path == path)
                    .ok_or_else(|| StoreError::NotFound(format!("{path} is not on the server")))
            })
            .buffer_unordered(PARALLEL_LOOKUPS)
            .try_collect()
            .await?;
        for info in &batch {
            for r in &info.references {
                admit(r, &mut frontier)?;
            }
        }
        out.extend(batch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use futures::stream::BoxStream;

    use super::*;
    use crate::store::PathInfoStore;
    use crate::Node;

    /// A server whose path `i` refers to paths `i + 1` and `i + 2`, up to
    /// `end` (`None`: a hostile server, without end).
    struct Chain {
        end: Option<u64>,
        asked: AtomicUsize,
    }

    fn chain_path(i: u64) -> StorePath {
        let mut digest = [0u8; 20];
        digest[..8].copy_from_slice(&i.to_le_bytes());
        StorePath::from_parts(digest, &format!("link-{i}")).expect("store path")
    }

    #[async_trait]
    impl PathInfoStore for Chain {
        async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let i = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
            let target = "x".into();
            let mut info = PathInfo::of_root(chain_path(i), Node::Symlink { target });
            info.references = (i + 1..=i + 2)
                .filter(|r| self.end.is_none_or(|end| *r <= end))
                .map(chain_path)
                .collect();
            Ok(Some(info))
        }
        async fn put_path_info(&self, _info: PathInfo) -> StoreResult<()> {
            Err(StoreError::Invalid("read only".into()))
        }
        fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
            futures::stream::empty().boxed()
        }
    }

    async fn store_of(chain: Arc<Chain>) -> (tempfile::TempDir, Store) {
        let (dir, bucket) = crate::testutil::temp_bucket().await;
        let mut store = Store::from_backend(bucket);
        store.path_infos = chain;
        (dir, store)
    }

    #[tokio::test]
    async fn an_endless_chain_of_references_is_refused_at_the_bound() {
        let chain = Arc::new(Chain {
            end: None,
            asked: AtomicUsize::new(0),
        });
        let (_dir, store) = store_of(chain.clone()).await;
        let err = closure_within(&store, &[chain_path(0)], 1000)
            .await
            .expect_err("an endless closure must be refused");
        assert!(err.to_string().contains("over the limit of 1000"), "{err}");
        // The walk stopped at the bound: no path past it was asked for.
        let asked = chain.asked.load(Ordering::Relaxed);
        assert!(asked <= 1000, "asked {asked} PathInfos for a bound of 1000");
    }

    #[tokio::test]
    async fn a_closure_within_the_bound_is_gathered_asking_once_per_path() {
        let chain = Arc::new(Chain {
            end: Some(49),
            asked: AtomicUsize::new(0),
        });
        let (_dir, store) = store_of(chain.clone()).await;
        let infos = path_closure(&store, &[chain_path(0), chain_path(3)])
            .await
            .expect("closure");
        let mut found: Vec<String> = infos.iter().map(|i| i.store_path.to_string()).collect();
        found.sort();
        let mut expected: Vec<String> = (0..50).map(|i| chain_path(i).to_string()).collect();
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(chain.asked.load(Ordering::Relaxed), 50);
    }
}
