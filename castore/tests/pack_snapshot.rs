//! The pack table snapshot: opening a store of many packs reads one object
//! instead of every pack index; a stale, damaged or lost snapshot costs
//! only time, never a chunk.

use std::path::Path;

use lazix_castore::bucket::{BucketStore, GcOptions};
use lazix_castore::digest::B3Digest;
use lazix_castore::store::BlobStore;
use lazix_castore::testutil::{bucket_at as open_at, frame_of, put_pack_each};

fn chunk(i: usize) -> Vec<u8> {
    format!("chunk number {i}").into_bytes()
}

/// Stores chunks `from..to`, one pack each.
async fn put_packs(store: &BucketStore, from: usize, to: usize) {
    put_pack_each(store, (from..to).map(chunk)).await;
}

/// Whether every chunk in `range` is readable from `store`.
async fn all_readable(store: &BucketStore, range: std::ops::Range<usize>) -> bool {
    for i in range {
        let digest = B3Digest::of(&chunk(i));
        if store.get_frames(&[digest]).await.is_err() {
            return false;
        }
    }
    true
}

fn packs_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("packs")
}

fn snapshots(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("packtables")).map_or(Vec::new(), |d| {
        d.map(|e| e.expect("entry").path())
            .filter(|p| !p.to_string_lossy().contains('#'))
            .collect()
    })
}

/// A store of 100 packs in `dir` with one snapshot of them; the
/// snapshot's file.
async fn one_snapshot_of_100_packs(dir: &Path) -> std::path::PathBuf {
    let store = open_at(dir).await;
    put_packs(&store, 0, 100).await;
    store.store_pack_snapshot().await.expect("snapshot");
    let found = snapshots(dir);
    let [snapshot] = &found[..] else {
        panic!("one snapshot: {found:?}");
    };
    snapshot.clone()
}

#[tokio::test]
async fn opening_reads_one_snapshot_and_the_indexes_written_since() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    put_packs(&store, 0, 150).await;
    assert_eq!(
        std::fs::read_dir(packs_dir(dir.path())).unwrap().count(),
        300
    );
    assert_eq!(store.store_pack_snapshot().await.expect("snapshot"), 150);
    // After it: 20 packs more, and one of its packs deleted (as GC would).
    put_packs(&store, 150, 170).await;
    let gone = B3Digest::of(&chunk(7));
    // A pack's id is the BLAKE3 of its bytes: here, chunk 7's one frame.
    let gone_pack = packs_dir(dir.path()).join(format!(
        "{}.pack",
        B3Digest::of(&frame_of(&[&chunk(7)]).data).to_hex()
    ));
    assert!(gone_pack.exists(), "{gone_pack:?}");
    std::fs::remove_file(gone_pack.with_extension("idx")).unwrap();
    std::fs::remove_file(&gone_pack).unwrap();
    drop(store);

    let reopened = open_at(dir.path()).await;
    let spent = reopened.object_requests();
    // One snapshot and the 20 indexes written since, not 169.
    assert!(spent.gets <= 1 + 20, "{spent}");
    assert!(all_readable(&reopened, 0..7).await);
    assert!(all_readable(&reopened, 8..170).await);
    assert!(reopened.get_frames(&[gone]).await.is_err());
}

#[tokio::test]
async fn a_damaged_or_lost_snapshot_falls_back_to_every_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = &one_snapshot_of_100_packs(dir.path()).await;

    // Cut short: what it holds is used, the rest read one by one.
    let bytes = std::fs::read(snapshot).unwrap();
    std::fs::write(snapshot, &bytes[..bytes.len() / 2]).unwrap();
    let reopened = open_at(dir.path()).await;
    assert!(all_readable(&reopened, 0..100).await);
    drop(reopened);

    // Garbage.
    std::fs::write(snapshot, b"not a snapshot at all").unwrap();
    let reopened = open_at(dir.path()).await;
    assert!(reopened.object_requests().gets >= 100);
    assert!(all_readable(&reopened, 0..100).await);
    drop(reopened);

    // Lost.
    std::fs::remove_file(snapshot).unwrap();
    let reopened = open_at(dir.path()).await;
    assert!(all_readable(&reopened, 0..100).await);
}

#[tokio::test]
async fn gc_stores_a_snapshot_and_keeps_one_older() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    put_packs(&store, 0, 70).await;
    for round in 1..=3 {
        store.gc(GcOptions::default()).await.expect("gc");
        assert_eq!(snapshots(dir.path()).len(), round.min(2));
    }
    drop(store);
    let reopened = open_at(dir.path()).await;
    let spent = reopened.object_requests();
    assert!(spent.gets <= 2, "{spent}");
    assert!(all_readable(&reopened, 0..70).await);
}

#[tokio::test]
async fn a_record_changed_inside_a_snapshot_is_not_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = &one_snapshot_of_100_packs(dir.path()).await;

    // Rot that zstd's checksum would catch only at the end of the object:
    // one byte of a record changed, the object compressed again whole.
    let mut records = zstd::decode_all(&std::fs::read(snapshot).unwrap()[..]).unwrap();
    let middle = records.len() / 2;
    records[middle] ^= 0x40;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut encoder, &records).unwrap();
    std::fs::write(snapshot, encoder.finish().unwrap()).unwrap();

    // Every chunk is found where it is (the records before the changed one
    // are used, the rest read one by one), none at a changed digest.
    let reopened = open_at(dir.path()).await;
    let spent = reopened.object_requests();
    assert!(spent.gets > 1 + 10, "the rest read one by one: {spent}");
    assert!(spent.gets < 100, "the records before it are used: {spent}");
    assert!(all_readable(&reopened, 0..100).await);
    // A snapshot written from the damaged one copies only checked records.
    assert_eq!(reopened.store_pack_snapshot().await.expect("snapshot"), 100);
    drop(reopened);
    let again = open_at(dir.path()).await;
    assert!(
        again.object_requests().gets <= 2,
        "{}",
        again.object_requests()
    );
    assert!(all_readable(&again, 0..100).await);
}

#[tokio::test]
async fn a_snapshot_named_in_the_future_is_ignored_and_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    put_packs(&store, 0, 70).await;
    store.store_pack_snapshot().await.expect("snapshot");
    // A replica whose clock runs years ahead stored a snapshot of only
    // some packs.
    let found = snapshots(dir.path());
    let [good] = &found[..] else {
        panic!("one snapshot: {found:?}");
    };
    let future = dir
        .path()
        .join("packtables/9999999999999999-0000000000000000");
    std::fs::copy(good, &future).unwrap();
    put_packs(&store, 70, 140).await;
    store.store_pack_snapshot().await.expect("snapshot");
    assert!(!future.exists(), "the future-named snapshot is deleted");
    drop(store);
    // The newest sane snapshot is read: all 140 packs in one object.
    let reopened = open_at(dir.path()).await;
    assert!(
        reopened.object_requests().gets <= 2,
        "{}",
        reopened.object_requests()
    );
    assert!(all_readable(&reopened, 0..140).await);
}
