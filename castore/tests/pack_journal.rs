//! The pack journal: a replica finds the packs another one wrote, and
//! forgets those it deleted, by reading a few journal entries instead of
//! listing every pack; a missing or damaged entry costs time, never a
//! chunk; entries no replica reads any more are pruned.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lazix_castore::bucket::{BucketStore, GcOptions, ObjectRequests};
use lazix_castore::digest::B3Digest;
use lazix_castore::error::StoreError;
use lazix_castore::store::BlobStore;
use lazix_castore::testutil::{bucket_at as open_at, put_pack_each};

fn chunk(i: usize) -> Vec<u8> {
    format!("journaled chunk number {i}").into_bytes()
}

/// Stores chunks `from..to`, one pack each.
async fn put_packs(store: &BucketStore, from: usize, to: usize) {
    put_pack_each(store, (from..to).map(chunk)).await;
}

async fn readable(store: &BucketStore, i: usize) -> Result<(), StoreError> {
    store
        .get_frames(&[B3Digest::of(&chunk(i))])
        .await
        .map(|_| ())
}

fn journal(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join("packlog")).map_or(Vec::new(), |d| {
        d.map(|e| e.expect("entry").path())
            .filter(|p| !p.to_string_lossy().contains('#'))
            .collect()
    });
    entries.sort();
    entries
}

/// Journal entries as if written long ago: no replica opened now reads
/// them (its full listing at open covers what they say).
fn forget_journal(dir: &Path) {
    for entry in journal(dir) {
        std::fs::remove_file(entry).unwrap();
    }
}

/// A store of 200 packs in `dir` (400 objects under `packs/`, all
/// compacted so that a later compaction rewrites only newer packs), with
/// no journal entries left. (Each compacted on its own: compaction merges
/// packs written together.)
async fn store_of_200_packs(dir: &Path) -> Arc<BucketStore> {
    let writer = open_at(dir).await;
    for i in 0..200 {
        put_packs(&writer, i, i + 1).await;
        writer.compact().await.expect("compact");
    }
    forget_journal(dir);
    writer
}

/// The pack of the journal's one entry, an addition.
fn the_one_added_pack(dir: &Path) -> String {
    let [entry] = &journal(dir)[..] else {
        panic!("one entry");
    };
    let added = std::fs::read_to_string(entry).unwrap();
    let id = added.trim().strip_prefix('+').expect("an addition");
    id.to_string()
}

/// Now, in ms since the epoch (a journal entry's time).
fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A journal entry written by hand, named for time `at` and `suffix`.
fn write_entry(dir: &Path, at: u128, suffix: &str, text: &str) {
    std::fs::write(dir.join(format!("packlog/{at:016}-{suffix}")), text).unwrap();
}

/// Two replicas of one store of 200 packs (see [`store_of_200_packs`]):
/// A wrote it, B opened it after.
async fn two_replicas() -> (tempfile::TempDir, Arc<BucketStore>, Arc<BucketStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = store_of_200_packs(dir.path()).await;
    let b = open_at(dir.path()).await;
    (dir, a, b)
}

fn spent_since(store: &BucketStore, before: &ObjectRequests) -> ObjectRequests {
    store.object_requests().since(before)
}

#[tokio::test]
async fn a_replica_catches_up_on_packs_written_and_deleted_elsewhere_without_listing_them() {
    let (dir, a, b) = two_replicas().await;
    let at_open = b.object_requests();
    assert!(at_open.listed >= 400, "open lists every pack: {at_open}");

    // Written through A: B finds it from the journal.
    put_packs(&a, 200, 202).await;
    assert_eq!(journal(dir.path()).len(), 2, "one entry per pack written");
    let before = b.object_requests();
    readable(&b, 200)
        .await
        .expect("a pack A wrote, read from B");
    readable(&b, 201)
        .await
        .expect("a pack A wrote, read from B");
    let spent = spent_since(&b, &before);
    assert!(spent.listed <= 2, "only the journal is listed: {spent}");
    assert!(spent.gets <= 2 + 2 + 2, "entries, indexes, frames: {spent}");

    // A compacts them (new packs written, the old ones deleted): B reads
    // the chunks where they are now, again from the journal.
    let report = a.compact().await.expect("compact");
    assert_eq!(report.packs_rewritten, 2, "{report:?}");
    let before = b.object_requests();
    readable(&b, 200).await.expect("read after A's compaction");
    readable(&b, 201).await.expect("read after A's compaction");
    let spent = spent_since(&b, &before);
    assert!(
        spent.listed <= journal(dir.path()).len() as u64,
        "only the journal is listed: {spent}"
    );
    // And every older chunk is still where B's table says.
    for i in (0..200).step_by(37) {
        readable(&b, i).await.expect("older chunk");
    }

    // A chunk nobody has: asked for again and again, it never makes B
    // list every pack (only the journal, at most once a second).
    let before = b.object_requests();
    for _ in 0..3 {
        let nobody = b.get_frames(&[B3Digest::of(b"stored nowhere")]).await;
        assert!(matches!(nobody, Err(StoreError::NotFound(_))), "{nobody:?}");
    }
    let spent = spent_since(&b, &before);
    assert!(spent.listed < 3 * 20, "{spent}");
    assert!(spent.lists <= 3, "{spent}");
}

#[tokio::test]
async fn a_pack_without_an_entry_is_found_by_the_next_full_listing() {
    let (dir, a, b) = two_replicas().await;
    // A writer killed between the index and its entry (or one of an
    // older version): nothing in the journal.
    put_packs(&a, 200, 201).await;
    forget_journal(dir.path());
    // B's last full listing is seconds old: the miss is answered from the
    // journal, which does not know the pack yet.
    assert!(matches!(
        readable(&b, 200).await,
        Err(StoreError::NotFound(_))
    ));
    // A full listing (at open, in maintenance, or for a miss once
    // `FULL_LISTING_EVERY` has passed, as here) finds it.
    b.allow_full_listing_now();
    readable(&b, 200).await.expect("found by the full listing");

    // A pack deleted without an entry: the vanished pack is still in B's
    // table after catching up, so B lists in full and reads the chunks
    // where they are now.
    let report = a.compact().await.expect("compact");
    assert_eq!(report.packs_rewritten, 1, "{report:?}");
    forget_journal(dir.path());
    readable(&b, 200)
        .await
        .expect("read after an unjournaled compaction");
}

#[tokio::test]
async fn a_damaged_entry_is_skipped_and_its_pack_found_by_a_full_listing() {
    let (dir, a, b) = two_replicas().await;
    put_packs(&a, 200, 201).await;
    let [entry] = &journal(dir.path())[..] else {
        panic!("one entry");
    };
    std::fs::write(entry, b"+not a pack id\n").unwrap();
    // Skipped; a full listing is not due yet (B listed at open).
    assert!(matches!(
        readable(&b, 200).await,
        Err(StoreError::NotFound(_))
    ));
    // Once it is, the pack is found.
    b.allow_full_listing_now();
    let before = b.object_requests();
    readable(&b, 200).await.expect("found by the full listing");
    let spent = spent_since(&b, &before);
    assert!(spent.listed >= 400, "listed in full: {spent}");
    // Skipped from then on: later misses neither read it again nor list
    // every pack again.
    put_packs(&a, 201, 202).await;
    let before = b.object_requests();
    readable(&b, 201)
        .await
        .expect("a later pack, from the journal");
    let nobody = b.get_frames(&[B3Digest::of(b"stored nowhere")]).await;
    assert!(matches!(nobody, Err(StoreError::NotFound(_))), "{nobody:?}");
    let spent = spent_since(&b, &before);
    assert!(spent.listed <= 2 * 2, "{spent}");
    assert!(
        spent.gets <= 3,
        "the new entry, its index, its frame: {spent}"
    );
}

#[tokio::test]
async fn a_pack_removed_and_written_again_stays_and_misses_share_one_full_listing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = store_of_200_packs(dir.path()).await;
    put_packs(&a, 200, 201).await;
    let id = the_one_added_pack(dir.path());
    let b = open_at(dir.path()).await;
    readable(&b, 200).await.expect("known at open");
    // A pack deleted and written again with the same bytes (its id is
    // their digest): the removal and the addition arrive in one catching
    // up, in either order of their names; the pack stays.
    for (k, (first, second)) in [("a", "b"), ("d", "c")].into_iter().enumerate() {
        let at = now_ms();
        write_entry(dir.path(), at, first, &format!("-{id}\n"));
        write_entry(dir.path(), at, second, &format!("+{id}\n"));
        put_packs(&a, 201 + k, 202 + k).await; // a miss makes B catch up
        readable(&b, 201 + k)
            .await
            .expect("read through the journal");
        let before = b.object_requests();
        readable(&b, 200)
            .await
            .expect("the pack removed and added stays");
        let spent = spent_since(&b, &before);
        assert_eq!(spent.lists, 0, "found where it was: {spent}");
    }

    // Misses all at once when a full listing is due, for a pack only a
    // full listing can find (no entry): all wait for the one listing and
    // find it.
    put_packs(&a, 210, 211).await;
    forget_journal(dir.path());
    b.allow_full_listing_now();
    let before = b.object_requests();
    let misses = (0..8).map(|_| {
        let b = b.clone();
        tokio::spawn(async move { readable(&b, 210).await })
    });
    for miss in futures::future::join_all(misses).await {
        miss.unwrap().expect("found by the one full listing");
    }
    let spent = spent_since(&b, &before);
    assert!(
        (400..800).contains(&spent.listed),
        "one full listing, not one a miss: {spent}"
    );
}

#[tokio::test]
async fn a_pack_written_here_again_survives_an_older_removal_read_later() {
    let (dir, a, b) = two_replicas().await;
    // B writes a pack; another replica's removal of the same bytes (it
    // deleted them before B wrote them again) reaches B only later.
    put_packs(&b, 300, 301).await;
    let id = the_one_added_pack(dir.path());
    write_entry(dir.path(), now_ms(), "removal", &format!("-{id}\n"));
    put_packs(&a, 301, 302).await;
    readable(&b, 301).await.expect("B catches up");
    readable(&b, 300)
        .await
        .expect("B's own pack stays: its index is there");
}

#[tokio::test]
async fn maintenance_prunes_entries_no_replica_reads_any_more() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_at(dir.path()).await;
    put_packs(&store, 0, 3).await;
    let entries = journal(dir.path());
    assert_eq!(entries.len(), 3);
    // Two days old.
    let long_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    for old in &entries[..2] {
        std::fs::File::options()
            .write(true)
            .open(old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    store
        .gc(GcOptions {
            grace: Duration::from_secs(3600),
            ..GcOptions::default()
        })
        .await
        .expect("gc");
    let left = journal(dir.path());
    assert!(!left.contains(&entries[0]) && !left.contains(&entries[1]));
    assert!(left.contains(&entries[2]), "a recent entry stays");
    // Compaction prunes too.
    std::fs::File::options()
        .write(true)
        .open(&entries[2])
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    store.compact().await.expect("compact");
    assert!(!journal(dir.path()).contains(&entries[2]));
    for i in 0..3 {
        readable(&store, i).await.expect("chunks stay");
    }
}

#[tokio::test]
async fn entries_stored_before_a_full_listing_are_never_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = store_of_200_packs(dir.path()).await;
    // A burst of writes just before B opens: more entries than one
    // catching up reads before it lists in full instead.
    let at = now_ms();
    for i in 0..2_100 {
        let id = format!("{i:064x}");
        write_entry(dir.path(), at, &format!("burst{i:05}"), &format!("+{id}\n"));
    }
    let b = open_at(dir.path()).await;
    put_packs(&a, 200, 201).await;
    let before = b.object_requests();
    readable(&b, 200).await.expect("from the journal");
    let spent = spent_since(&b, &before);
    // One listing of the journal; the burst, covered by B's listing at
    // open, is neither read nor a reason to list every pack again.
    assert_eq!(spent.lists, 1, "{spent}");
    assert!(spent.gets <= 3, "{spent}");
}
