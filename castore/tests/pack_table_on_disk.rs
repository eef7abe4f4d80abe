//! The pack table past its bound in memory: packs written to runs on local
//! disk answer every question as the table in memory does (where a chunk
//! is, whether it is stored, what the store holds), through compaction and
//! garbage collection, and its files go with the store.

use std::path::Path;
use std::sync::Arc;

use lazix_castore::bucket::{BucketStore, GcOptions, SpillPolicy, StoreStats};
use lazix_castore::digest::B3Digest;
use lazix_castore::store::BlobStore;
use lazix_castore::testutil::frame_of;

/// A store whose table goes to disk every 16 chunks, its runs under
/// `table_dir`.
async fn open_spilling(dir: &Path, table_dir: &Path) -> Arc<BucketStore> {
    let policy = SpillPolicy {
        at: 16,
        dir: Some(table_dir.to_owned()),
        ..SpillPolicy::default()
    };
    BucketStore::open_with_table(dir.to_str().expect("utf-8"), policy)
        .await
        .expect("open the store")
}

/// The same store with the whole table in memory.
async fn open_in_memory(dir: &Path) -> Arc<BucketStore> {
    let policy = SpillPolicy {
        at: usize::MAX,
        dir: None,
        ..SpillPolicy::default()
    };
    BucketStore::open_with_table(dir.to_str().expect("utf-8"), policy)
        .await
        .expect("open the store")
}

fn chunk(i: usize) -> Vec<u8> {
    format!("chunk number {i}, with some more bytes to it").into_bytes()
}

/// Stores chunks `from..to`, two chunks per pack.
async fn put_packs(store: &BucketStore, from: usize, to: usize) {
    for i in (from..to).step_by(2) {
        let pair = [chunk(i), chunk(i + 1)];
        store
            .put_frames(vec![frame_of(&[&pair[0], &pair[1]])])
            .await
            .expect("put a frame");
    }
}

async fn all_readable(store: &BucketStore, range: std::ops::Range<usize>) -> bool {
    for i in range {
        let digest = B3Digest::of(&chunk(i));
        match store.get_frames(&[digest]).await {
            Ok(frames)
                if frames
                    .iter()
                    .any(|f| f.chunks.iter().any(|c| c.digest == digest)) => {}
            _ => return false,
        }
    }
    true
}

/// Files of the runs on disk.
fn run_files(table_dir: &Path) -> usize {
    walk(table_dir)
}

/// Whether the files under `dir` come down to `n` within 10 s (merges run
/// in the background; one under way holds the store until it is done).
async fn files_within(dir: &Path, n: usize) -> bool {
    for _ in 0..100 {
        if run_files(dir) <= n {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.map(|e| e.expect("entry").path())
            .map(|p| if p.is_dir() { walk(&p) } else { 1 })
            .sum()
    })
}

fn pack_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("packs")).map_or(0, |d| d.count() as u64)
}

/// The stats of `store` (600 chunks, in `dir`), checked: its packs are
/// those in the folder, and a table kept in memory counts the same.
async fn checked_stats(store: &BucketStore, dir: &Path) -> StoreStats {
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.chunks, 600);
    assert_eq!(stats.pack_objects, pack_files(dir));
    same_counts(&stats, &open_in_memory(dir).await.stats().await.unwrap());
    stats
}

fn same_counts(a: &StoreStats, b: &StoreStats) {
    assert_eq!(
        (a.chunks, a.chunk_bytes, a.pack_objects, a.pack_bytes),
        (b.chunks, b.chunk_bytes, b.pack_objects, b.pack_bytes)
    );
}

#[tokio::test]
async fn a_table_on_disk_answers_as_the_table_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table_dir = tempfile::tempdir().expect("temp dir");
    let store = open_spilling(dir.path(), table_dir.path()).await;
    put_packs(&store, 0, 600).await;
    assert!(run_files(table_dir.path()) > 0, "nothing written to disk");
    // 600 chunk records written 16 at a time make 37 runs of four files;
    // merged in the background four of a size at a time, a few are left.
    assert!(
        files_within(table_dir.path(), 4 * 12).await,
        "runs not merged: {} files",
        run_files(table_dir.path())
    );
    assert!(all_readable(&store, 0..600).await);

    let on_disk = checked_stats(&store, dir.path()).await;

    // Chunks on disk are known as stored: putting them again writes nothing.
    put_packs(&store, 0, 600).await;
    assert_eq!(pack_files(dir.path()), on_disk.pack_objects);

    // Compaction reads every pack's frames from disk, takes over their
    // chunks and removes them.
    let report = store.compact().await.expect("compact");
    assert_eq!(report.packs_rewritten, 300);
    assert!(all_readable(&store, 0..600).await);
    let compacted = checked_stats(&store, dir.path()).await;
    // A second opening spilling to disk, from the packs written since.
    let table_dir2 = tempfile::tempdir().expect("temp dir");
    let reopened = open_spilling(dir.path(), table_dir2.path()).await;
    assert!(all_readable(&reopened, 0..600).await);
    same_counts(&compacted, &reopened.stats().await.unwrap());

    drop((store, reopened));
    assert!(files_within(table_dir.path(), 0).await, "files left behind");
    assert!(
        files_within(table_dir2.path(), 0).await,
        "files left behind"
    );
}

#[tokio::test]
async fn packs_removed_from_disk_are_forgotten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table_dir = tempfile::tempdir().expect("temp dir");
    let store = open_spilling(dir.path(), table_dir.path()).await;
    put_packs(&store, 0, 400).await;
    // No path keeps any chunk: a collection without grace deletes all.
    let report = store
        .gc(GcOptions {
            grace: std::time::Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .expect("gc");
    assert_eq!(report.packs_deleted, 200, "{report:?}");
    let after = store.stats().await.expect("stats");
    assert_eq!((after.chunks, after.pack_objects), (0, 0));
    assert!(!all_readable(&store, 0..1).await);
    // Stored again, they are found again.
    put_packs(&store, 0, 100).await;
    assert!(all_readable(&store, 0..100).await);
    assert_eq!(store.stats().await.expect("stats").chunks, 100);
}

#[tokio::test]
async fn files_left_by_a_killed_process_are_removed_and_a_living_ones_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table_dir = tempfile::tempdir().expect("temp dir");
    // No process has a pid above the kernel's maximum (2^22).
    let dead = table_dir.path().join("lazix-pack-table-999999999-abcdef");
    let living = table_dir
        .path()
        .join(format!("lazix-pack-table-{}-abcdef", std::process::id()));
    let other = table_dir.path().join("someone-elses");
    for d in [&dead, &living, &other] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("run-0.entries"), b"x").unwrap();
    }
    let store = open_spilling(dir.path(), table_dir.path()).await;
    put_packs(&store, 0, 40).await;
    assert!(!dead.exists(), "a dead process's files stay");
    assert!(living.join("run-0.entries").exists());
    assert!(other.join("run-0.entries").exists());
}
