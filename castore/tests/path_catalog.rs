//! The catalog of store paths in the bucket: right under concurrent
//! writes from two replicas of one store, deletes and GC; folded into
//! snapshots as segments pile up; rebuilt when lost or damaged.

use std::collections::BTreeSet;
use std::path::Path;

use futures::TryStreamExt;
use lazix_castore::bucket::{BucketStore, GcOptions};
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::store::PathInfoStore;
use lazix_castore::testutil::bucket_at as open_at;
use lazix_castore::{Node, PathInfo};

fn path(i: u32) -> StorePath {
    let mut digest = [7u8; 20];
    digest[..4].copy_from_slice(&i.to_le_bytes());
    StorePath::from_parts(digest, &format!("pkg-{i}")).expect("store path")
}

/// A path whose root is a symlink: stored without any data.
fn info(i: u32) -> PathInfo {
    let target = format!("target-{i}").into();
    PathInfo::of_root(path(i), Node::Symlink { target })
}

async fn listed(store: &BucketStore) -> BTreeSet<String> {
    store
        .list_catalog()
        .await
        .expect("catalog")
        .map_ok(|e| e.store_path.basename())
        .try_collect()
        .await
        .expect("catalog entries")
}

async fn stored(store: &BucketStore) -> BTreeSet<String> {
    store
        .list_path_infos()
        .map_ok(|i| i.store_path.basename())
        .try_collect()
        .await
        .expect("PathInfos")
}

fn objects_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test]
async fn the_catalog_stays_right_under_two_replicas_deletes_and_gc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = open_at(dir.path()).await;
    let b = open_at(dir.path()).await;
    // Both replicas write at once, 150 paths each.
    let puts = (0..300u32).map(|i| {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { replica.put_path_info(info(i)).await }
    });
    futures::future::try_join_all(puts).await.expect("puts");
    assert_eq!(stored(&a).await.len(), 300);
    assert_eq!(listed(&a).await, stored(&a).await);
    assert_eq!(listed(&b).await, stored(&a).await);
    // Paths written at once share segments: fewer segments than paths.
    let segments = objects_under(&dir.path().join("catalog/segments"));
    assert!(
        segments < 300,
        "{segments} segments for 300 concurrent puts"
    );

    // Deletes on both replicas while the other writes.
    let deletes = (0..60u32).map(|i| {
        let replica = if i % 3 == 0 { a.clone() } else { b.clone() };
        async move {
            replica
                .delete_path_info(path(i * 5).digest())
                .await
                .map(|_| ())
        }
    });
    let more = (300..340u32).map(|i| {
        let replica = if i % 2 == 0 { b.clone() } else { a.clone() };
        async move { replica.put_path_info(info(i)).await }
    });
    let (d, m) = futures::join!(
        futures::future::try_join_all(deletes),
        futures::future::try_join_all(more)
    );
    d.expect("deletes");
    m.expect("puts");
    let truth = stored(&a).await;
    assert_eq!(truth.len(), 340 - 60);
    assert!(!truth.contains(&path(0).basename()));
    assert_eq!(listed(&a).await, truth);
    assert_eq!(listed(&b).await, truth);

    // GC writes a snapshot from its walk; writes after it still show.
    a.gc(GcOptions::default()).await.expect("gc");
    b.put_path_info(info(1000)).await.expect("put after gc");
    a.delete_path_info(path(1).digest())
        .await
        .expect("delete after gc");
    let truth = stored(&a).await;
    assert!(truth.contains(&path(1000).basename()));
    assert!(!truth.contains(&path(1).basename()));
    assert_eq!(listed(&a).await, truth);
    assert_eq!(listed(&b).await, truth);
}

#[tokio::test]
async fn a_listing_reads_a_few_objects_however_many_paths_were_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    // One at a time: a segment each, folded by the writer now and then.
    for i in 0..300 {
        store.put_path_info(info(i)).await.expect("put");
    }
    let truth = stored(&store).await;
    store.catalog_upkeep_done().await;
    // The first listing reads the newest snapshot and the segments the
    // writer has not folded yet (fewer than it folds at), then folds them.
    let before = store.object_requests();
    assert_eq!(listed(&store).await, truth);
    let first = store.object_requests().since(&before);
    assert!(first.gets <= 1 + 64, "{first}");
    store.catalog_upkeep_done().await;
    // The next one reads the new snapshot and nothing else.
    let before = store.object_requests();
    assert_eq!(listed(&store).await, truth);
    let next = store.object_requests().since(&before);
    assert_eq!(next.gets, 1, "{next}");
    assert!(next.lists <= 2, "{next}");
}

#[tokio::test]
async fn listings_that_find_the_catalog_lost_at_once_rebuild_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    for i in 0..200 {
        store.put_path_info(info(i)).await.expect("put");
    }
    let truth = stored(&store).await;
    store.catalog_upkeep_done().await;
    std::fs::remove_dir_all(dir.path().join("catalog")).expect("remove the catalog");
    // Eight listings at once (a mount's root listing, stats, …): one
    // walks the 200 PathInfos, the others read the snapshot it stored.
    let before = store.object_requests();
    let all = futures::future::join_all((0..8).map(|_| listed(&store))).await;
    assert!(all.iter().all(|l| *l == truth));
    let spent = store.object_requests().since(&before);
    assert!(
        spent.gets < 2 * 200,
        "the PathInfos were read more than once: {spent}"
    );
    assert_eq!(objects_under(&dir.path().join("catalog/snapshots")), 1);
}

#[tokio::test]
async fn a_lost_or_damaged_catalog_is_rebuilt_from_the_path_infos() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    for i in 0..20 {
        store.put_path_info(info(i)).await.expect("put");
    }
    let truth = stored(&store).await;
    assert_eq!(listed(&store).await, truth);
    store.catalog_upkeep_done().await;

    // Lost: every catalog object deleted.
    std::fs::remove_dir_all(dir.path().join("catalog")).expect("remove the catalog");
    assert_eq!(listed(&store).await, truth);
    assert_eq!(objects_under(&dir.path().join("catalog/snapshots")), 1);

    // Damaged: the newest snapshot overwritten with garbage.
    let snapshot = std::fs::read_dir(dir.path().join("catalog/snapshots"))
        .expect("snapshots")
        .next()
        .expect("one snapshot")
        .expect("entry")
        .path();
    std::fs::write(&snapshot, b"not a snapshot").expect("damage it");
    assert_eq!(listed(&store).await, truth);

    // Lost again, then GC: its walk stores a snapshot.
    std::fs::remove_dir_all(dir.path().join("catalog")).expect("remove the catalog");
    store.gc(GcOptions::default()).await.expect("gc");
    assert_eq!(objects_under(&dir.path().join("catalog/snapshots")), 1);
    assert_eq!(listed(&store).await, truth);
}

#[tokio::test]
async fn a_snapshot_damaged_past_its_head_fails_one_listing_and_the_next_rebuilds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    let puts = (0..2000u32).map(|i| {
        let store = store.clone();
        async move { store.put_path_info(info(i)).await }
    });
    futures::future::try_join_all(puts).await.expect("puts");
    store.settle_catalog().await;
    let truth = stored(&store).await;
    assert_eq!(listed(&store).await, truth);
    store.catalog_upkeep_done().await;

    // The newest snapshot cut in half, stored again as sound zstd: its
    // head reads, its records end early.
    let snapshots = dir.path().join("catalog/snapshots");
    let newest = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .max()
        .expect("a snapshot");
    let decoded = zstd::decode_all(std::fs::read(&newest).expect("read").as_slice()).expect("zstd");
    assert!(decoded.len() > 20_000, "{} bytes", decoded.len());
    let cut = zstd::encode_all(&decoded[..decoded.len() / 2], 3).expect("zstd");
    std::fs::write(&newest, cut).expect("damage it");

    let listing = store
        .list_catalog()
        .await
        .expect("the snapshot's head reads");
    let got: Result<Vec<_>, _> = listing.try_collect().await;
    let e = got.expect_err("a listing of a damaged snapshot fails");
    assert!(e.to_string().contains("catalog snapshot"), "{e}");
    // The next listing rebuilds the catalog, and stores a new snapshot.
    assert_eq!(listed(&store).await, truth);
    let newer = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .max()
        .expect("a snapshot");
    assert!(newer > newest, "{newer:?} after {newest:?}");
    assert_eq!(listed(&store).await, truth);
}

#[tokio::test]
async fn a_writer_that_serves_no_listing_folds_its_own_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    for i in 0..600 {
        store.put_path_info(info(i)).await.expect("put");
    }
    // No listing yet, but snapshots: what stays loose is bounded (the
    // writer starts a fold every 64 segments; one may be skipped while
    // the one before it runs).
    store.catalog_upkeep_done().await;
    assert!(objects_under(&dir.path().join("catalog/snapshots")) >= 1);
    let truth = stored(&store).await;
    let before = store.object_requests();
    assert_eq!(listed(&store).await, truth);
    let spent = store.object_requests().since(&before);
    assert!(spent.gets <= 1 + 2 * 64, "{spent}");
}

#[tokio::test]
async fn deleting_paths_reads_no_pack_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    for i in 0..2 {
        store.put_path_info(info(i)).await.expect("put");
    }
    drop(store);
    let editor = BucketStore::open_path_infos(dir.path().to_str().expect("utf-8"))
        .await
        .expect("open for PathInfos");
    assert!(editor
        .delete_path_info(path(0).digest())
        .await
        .expect("delete"));
    assert!(!editor
        .delete_path_info(path(0).digest())
        .await
        .expect("again"));
    // Opening a whole store lists its packs; this lists nothing.
    assert_eq!(editor.object_requests().lists, 0);
    let reopened = open_at(dir.path()).await;
    assert_eq!(
        listed(&reopened).await,
        BTreeSet::from([path(1).basename()])
    );
    assert_eq!(
        stored(&reopened).await,
        BTreeSet::from([path(1).basename()])
    );
}
