//! NAR ingest into the embedded store (packs in a local folder): round
//! trips, malformed input that leaves nothing visible, corruption detected
//! on read, what a killed writer leaves behind is invisible.

use std::sync::{Arc, Mutex};

use lazix_castore::bucket::BucketStore;
use lazix_castore::ingest::{ingest_nar, ChunkUploader, IngestError, KnownChunks, TransferStats};
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::render::render_nar;
use lazix_castore::store::BlobStore;
use lazix_castore::testutil::bucket_at as open_at;
use lazix_castore::testutil::frame_of;
use lazix_castore::{Node, Store, StoreError};

use lazix_castore::testutil::pseudo_random as random;

/// A NAR of a directory with a big file, a small executable and a symlink.
fn sample_nar(big: &[u8]) -> Vec<u8> {
    let mut e = NarEncoder::new();
    e.magic();
    e.directory_open();
    e.entry_open(b"big");
    e.file_header(false, big.len() as u64);
    e.raw(big);
    e.file_trailer(big.len() as u64);
    e.close();
    e.entry_open(b"run");
    e.file_header(true, 10);
    e.raw(b"#!/bin/sh\n");
    e.file_trailer(10);
    e.close();
    e.entry_open(b"sub");
    e.directory_open();
    e.entry_open(b"link");
    e.symlink(b"../run");
    e.close();
    e.close();
    e.close();
    e.close();
    e.take()
}

async fn open() -> (tempfile::TempDir, Arc<BucketStore>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let backend = open_at(dir.path()).await;
    let store = Store::from_backend(backend.clone());
    (dir, backend, store)
}

async fn ingest(store: &Store, nar: &[u8]) -> Result<Node, IngestError> {
    let mut up = ChunkUploader::new(
        store.blobs.clone(),
        KnownChunks::default(),
        Arc::new(Mutex::new(TransferStats::default())),
    );
    Ok(ingest_nar(store, &mut up, nar).await?.node)
}

fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(b)
}

fn count(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn roundtrip_is_byte_identical() {
    let (_d, _b, store) = open().await;
    let nar = sample_nar(&random(2_000_000, 5));
    let node = ingest(&store, &nar).await.unwrap();
    let mut out = Vec::new();
    let (size, _) = render_nar(&store, &node, &mut out).await.unwrap();
    assert_eq!(size as usize, nar.len());
    assert!(out == nar);
}

#[tokio::test]
async fn malformed_nars_are_rejected_and_store_no_directories_or_paths() {
    let (dir, _b, store) = open().await;
    let nar = sample_nar(&random(600_000, 9));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated in a file", nar[..nar.len() / 2].to_vec()),
        ("truncated at the end", nar[..nar.len() - 8].to_vec()),
        ("trailing garbage", [nar.clone(), vec![1u8; 8]].concat()),
    ];
    // Oversize name length.
    let mut e = NarEncoder::new();
    e.magic();
    e.directory_open();
    let mut v = e.take();
    v.extend_from_slice(&8u64.to_le_bytes());
    v.extend_from_slice(b"entry\0\0\0");
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(b"(\0\0\0\0\0\0\0");
    v.extend_from_slice(&4u64.to_le_bytes());
    v.extend_from_slice(b"name\0\0\0\0");
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("oversize name", v));
    // Unsorted entries, bad names.
    for (what, names) in [
        ("unsorted", vec![&b"b"[..], b"a"]),
        ("duplicate", vec![b"a", b"a"]),
        ("dot-dot", vec![b".."]),
        ("slash", vec![b"a/b"]),
    ] {
        let mut e = NarEncoder::new();
        e.magic();
        e.directory_open();
        for n in names {
            e.entry_open(n);
            e.symlink(b"x");
            e.close();
        }
        e.close();
        cases.push((what, e.take()));
    }
    for (what, bad) in cases {
        let err = ingest(&store, &bad).await.unwrap_err();
        assert!(matches!(err, IngestError::Nar(_)), "{what}: {err}");
        assert!(!err.to_string().is_empty());
    }
    // Nothing but (unreferenced) chunks may remain.
    assert_eq!(count(&dir.path().join("directories")), 0);
    assert_eq!(count(&dir.path().join("pathinfo")), 0);
}

#[tokio::test]
async fn corrupt_chunk_on_disk_is_detected_not_served() {
    let (dir, _b, store) = open().await;
    let nar = sample_nar(&random(700_000, 11));
    let node = ingest(&store, &nar).await.unwrap();
    // Flip a byte in the middle of every stored pack.
    let mut packs = 0;
    for e in std::fs::read_dir(dir.path().join("packs"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "pack") {
            let mut data = std::fs::read(e.path()).unwrap();
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
            std::fs::write(e.path(), data).unwrap();
            packs += 1;
        }
    }
    assert!(packs > 0);
    let mut out = Vec::new();
    let err = render_nar(&store, &node, &mut out).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn what_a_killed_writer_leaves_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at(dir.path()).await;
    let kept = frame_of(&[b"a chunk that was stored"]);
    store.put_frames(vec![kept.clone()]).await.unwrap();
    let packs = dir.path().join("packs");

    // Killed after the pack, before its index: the pack file is complete
    // but has no index.
    let orphan = frame_of(&[b"pack without index"]);
    std::fs::write(
        packs.join(format!("{}.pack", "11".repeat(32))),
        &orphan.data,
    )
    .unwrap();
    // Killed while writing an index: only a staging file exists.
    let staged = frame_of(&[b"half-written index"]);
    std::fs::write(
        packs.join(format!("{}.pack", "22".repeat(32))),
        &staged.data,
    )
    .unwrap();
    std::fs::write(
        packs.join(format!("{}.idx#7", "22".repeat(32))),
        b"
half",
    )
    .unwrap();
    // An index that is damaged.
    let damaged = frame_of(&[b"damaged index"]);
    std::fs::write(
        packs.join(format!("{}.pack", "33".repeat(32))),
        &damaged.data,
    )
    .unwrap();
    std::fs::write(
        packs.join(format!("{}.idx", "33".repeat(32))),
        b"\xff\xff\xff",
    )
    .unwrap();

    // A reopened store (and the store that was running) sees none of them,
    // and still has everything that completed.
    let reopened = open_at(dir.path()).await;
    for s in [&store, &reopened] {
        s.refresh().await.unwrap();
        let digests = [
            orphan.chunks[0].digest,
            staged.chunks[0].digest,
            damaged.chunks[0].digest,
            kept.chunks[0].digest,
        ];
        assert_eq!(
            s.missing_chunks(&digests).await.unwrap(),
            digests[..3].to_vec()
        );
        let got = s.get_chunks(&[kept.chunks[0].digest]).await.unwrap();
        assert_eq!(
            got[0].decode_verified().unwrap(),
            bytes_of(b"a chunk that was stored")
        );
        assert!(matches!(
            s.get_frames(&[orphan.chunks[0].digest]).await,
            Err(StoreError::NotFound(_))
        ));
    }
    // A writer completing those chunks later stores them normally.
    reopened.put_frames(vec![orphan.clone()]).await.unwrap();
    assert!(reopened
        .missing_chunks(&[orphan.chunks[0].digest])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn near_duplicates_cost_little_and_read_back_exactly() {
    let (dir, backend, store) = open().await;
    let v1 = random(3_000_000, 21);
    let mut v2 = v1.clone();
    for at in [10_000, 900_000, 2_500_000] {
        v2[at..at + 12].copy_from_slice(b"version 2.0!");
    }
    let pack_bytes = || -> u64 {
        std::fs::read_dir(dir.path().join("packs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let node1 = ingest(&store, &sample_nar(&v1)).await.unwrap();
    let after_v1 = pack_bytes();
    let node2 = ingest(&store, &sample_nar(&v2)).await.unwrap();
    let v2_cost = pack_bytes() - after_v1;
    // Random bytes do not compress: only the changed chunks are new.
    assert!(v2_cost * 10 < after_v1, "v1 {after_v1} bytes, v2 {v2_cost}");
    for (node, big) in [(&node1, &v1), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&store, node, &mut out).await.unwrap();
        assert!(out == sample_nar(big));
    }
    // Compaction stores the changed chunks as deltas of their old versions.
    let report = backend.compact().await.unwrap();
    assert!(report.delta_frames >= 1, "{report:?}");
    for (node, big) in [(&node1, &v1), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&store, node, &mut out).await.unwrap();
        assert!(out == sample_nar(big));
    }
    // A fresh process (no caches) reads the deltas back too.
    drop(backend);
    let reopened = Store::from_backend(open_at(dir.path()).await);
    let mut out = Vec::new();
    render_nar(&reopened, &node2, &mut out).await.unwrap();
    assert!(out == sample_nar(&v2));
}

fn pack_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.to_string_lossy().contains('#'))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn compaction_keeps_every_chunk_byte_identical_and_survives_a_crash() {
    let (dir, backend, store) = open().await;
    // Two versions of a tree: text that compresses, and a near-duplicate.
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {} of the manual\n", i % 5000).into_bytes())
        .take(1_500_000)
        .collect();
    let mut v2 = text.clone();
    v2[700_000..700_010].copy_from_slice(b"version 2!");
    let node1 = ingest(&store, &sample_nar(&text)).await.unwrap();
    let node2 = ingest(&store, &sample_nar(&v2)).await.unwrap();
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = pack_files(dir.path())
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    // Another process's view of the same store, opened before compaction.
    let other = Store::from_backend(open_at(dir.path()).await);

    let report = backend.compact().await.unwrap();
    assert!(report.packs_rewritten > 0);
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    assert!(report.delta_frames > 0, "{report:?}");
    for s in [&store, &other] {
        for (node, tree) in [(&node1, &text), (&node2, &v2)] {
            let mut out = Vec::new();
            render_nar(s, node, &mut out).await.unwrap();
            assert!(out == sample_nar(tree));
        }
    }
    // Nothing left to do.
    assert_eq!(backend.compact().await.unwrap().packs_rewritten, 0);

    // A compaction killed after writing its new packs but before deleting
    // the old ones: put the old packs back. Everything still reads, from
    // the compacted packs, and the next compaction drops the old ones.
    for (path, data) in &saved {
        std::fs::write(path, data).unwrap();
    }
    let reopened = open_at(dir.path()).await;
    let s = Store::from_backend(reopened.clone());
    for (node, tree) in [(&node1, &text), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&s, node, &mut out).await.unwrap();
        assert!(out == sample_nar(tree));
    }
    let report = reopened.compact().await.unwrap();
    assert_eq!(
        report.packs_rewritten as usize,
        saved.len() / 2,
        "{report:?}"
    );
    assert_eq!(report.bytes_after, 0, "{report:?}");
    assert!(report.duplicate_chunks > 0, "{report:?}");
    assert!(saved.iter().all(|(p, _)| !p.exists()));
    let mut out = Vec::new();
    render_nar(&s, &node2, &mut out).await.unwrap();
    assert!(out == sample_nar(&v2));
}

#[tokio::test]
async fn versions_pushed_and_compacted_one_after_another_stay_readable() {
    let (_dir, backend, store) = open().await;
    let base: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("entry {} of the index, {}\n", i % 7000, i % 13).into_bytes())
        .take(2_000_000)
        .collect();
    let mut nodes = Vec::new();
    let mut trees = Vec::new();
    for v in 0..4u8 {
        let mut t = base.clone();
        for k in 0..5usize {
            let at = (k * 370_000 + v as usize * 1_000) % (t.len() - 16);
            t[at..at + 11].copy_from_slice(format!("version {v:03}").as_bytes());
        }
        nodes.push(ingest(&store, &sample_nar(&t)).await.unwrap());
        trees.push(t);
        backend.compact().await.unwrap();
        for (node, tree) in nodes.iter().zip(&trees) {
            let mut out = Vec::new();
            render_nar(&store, node, &mut out).await.unwrap();
            assert!(out == sample_nar(tree));
        }
        // And from a fresh process.
        let fresh = Store::from_backend(open_at(_dir.path()).await);
        let mut out = Vec::new();
        render_nar(&fresh, nodes.last().unwrap(), &mut out)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn one_maintenance_run_at_a_time_and_stale_locks_are_broken() {
    let (dir, backend, store) = open().await;
    ingest(&store, &sample_nar(&random(500_000, 41)))
        .await
        .unwrap();
    let lock = dir.path().join("locks/maintenance");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, b"pid 1 (another compactor)").unwrap();
    let err = backend.compact().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("another compactor"), "{err}");
    let err = backend
        .gc(lazix_castore::bucket::GcOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    // A lock left by a holder that died long ago is broken.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert!(backend.compact().await.unwrap().packs_rewritten > 0);
    assert!(!lock.exists(), "released after the run");
}

/// A writer killed mid-write leaves a staging file (`NAME#N`) that no
/// listing shows, or a pack without its index; garbage collection removes
/// them once older than the grace period, and leaves a young staging file
/// (a write may be under way) alone.
#[tokio::test]
async fn gc_removes_old_staging_files_of_killed_writers() {
    let (dir, backend, _store) = open().await;
    backend
        .put_frames(vec![frame_of(&[b"a stored chunk"])])
        .await
        .unwrap();
    let packs = dir.path().join("packs");
    let old = packs.join("0123.pack#4");
    let young = packs.join("4567.pack#9");
    // And a pack whose writer died before writing its index.
    let orphan = packs.join(format!("{}.pack", "ab".repeat(32)));
    std::fs::write(&old, vec![7u8; 1000]).unwrap();
    std::fs::write(&young, vec![7u8; 1000]).unwrap();
    std::fs::write(&orphan, vec![7u8; 1000]).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for f in [&old, &orphan] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    let report = backend
        .gc(lazix_castore::bucket::GcOptions::default())
        .await
        .unwrap();
    assert!(!old.exists());
    assert!(!orphan.exists());
    assert!(young.exists());
    assert!(report.bytes_freed >= 2000, "{report:?}");
    // The stored chunk is untouched (it is young, and nothing else moved).
    let chunk = lazix_castore::B3Digest::of(b"a stored chunk");
    assert!(backend.missing_chunks(&[chunk]).await.unwrap().is_empty());
}

/// A NAR whose root is one regular file.
fn file_nar(data: &[u8]) -> Vec<u8> {
    let mut e = NarEncoder::new();
    e.magic();
    e.file_header(false, data.len() as u64);
    e.raw(data);
    e.file_trailer(data.len() as u64);
    e.take()
}

/// A NAR of a directory of regular files.
fn files_nar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut e = NarEncoder::new();
    e.magic();
    e.directory_open();
    for (name, data) in files {
        e.entry_open(name.as_bytes());
        e.file_header(false, data.len() as u64);
        e.raw(data);
        e.file_trailer(data.len() as u64);
        e.close();
    }
    e.close();
    e.take()
}

/// GC rewrites a mostly dead pack with its live chunks at compaction's
/// level, as deltas against similar chunks where that pays: never against
/// a dead chunk, which the same sweep may delete (whether it does depends
/// on the order the packs are listed in, so several pairs are tried).
#[tokio::test]
async fn a_gc_repack_makes_no_delta_against_a_chunk_the_sweep_deletes() {
    use lazix_castore::bucket::GcOptions;
    use lazix_castore::nix::store_path::StorePath;
    use lazix_castore::store::PathInfoStore;
    use lazix_castore::PathInfo;

    let (dir, backend, store) = open().await;
    let mut kept = Vec::new();
    for i in 0..8u64 {
        // One chunk each (below the chunker's minimum): `old` alone in a
        // pack nobody keeps; `new`, a near-duplicate, in a pack with a
        // dead bulk, so GC rewrites that pack with `new` alone.
        let old = random(12_000, 700 + i);
        let mut new = old.clone();
        new[6000..6012].copy_from_slice(b"version 2.0!");
        let bulk = random(300_000, 800 + i);
        ingest(&store, &file_nar(&old)).await.unwrap();
        ingest(&store, &files_nar(&[("bulk", &bulk), ("new", &new)]))
            .await
            .unwrap();
        // Only `new` is live: a path of that file alone (its chunk is
        // stored already).
        let node = ingest(&store, &file_nar(&new)).await.unwrap();
        let mut digest = [9u8; 20];
        digest[0] = i as u8;
        let path = StorePath::from_parts(digest, &format!("new-{i}")).unwrap();
        backend
            .put_path_info(PathInfo::of_root(path, node.clone()))
            .await
            .unwrap();
        kept.push((node, new));
    }
    let report = backend
        .gc(GcOptions {
            grace: std::time::Duration::ZERO,
            ..GcOptions::default()
        })
        .await
        .unwrap();
    assert!(report.packs_repacked >= 8, "{report:?}");
    assert!(report.packs_deleted >= 8, "{report:?}");
    // Every live file reads back, also from a fresh process.
    let fresh = Store::from_backend(open_at(dir.path()).await);
    for s in [&store, &fresh] {
        for (node, data) in &kept {
            let mut out = Vec::new();
            render_nar(s, node, &mut out).await.unwrap();
            assert!(out == file_nar(data));
        }
    }
}

#[tokio::test]
async fn a_wrong_chunk_list_in_a_readers_caches_fails_one_render_and_is_dropped() {
    use lazix_castore::disk::DiskChunkLists;
    use lazix_castore::store::{cached, disk_chunk_lists, CacheConfig};

    let (dir, bucket, plain) = open().await;
    let (a, b) = (random(1_000_000, 21), random(1_000_000, 22));
    let nar = files_nar(&[("a", &a), ("b", &b)]);
    let node = ingest(&plain, &nar).await.unwrap();
    let (a_digest, b_digest) = (
        lazix_castore::B3Digest::of(&a),
        lazix_castore::B3Digest::of(&b),
    );
    let listed = bucket.get_blob_chunks(&[a_digest, b_digest]).await.unwrap();
    let (a_list, b_list) = (listed[0].clone().unwrap(), listed[1].clone().unwrap());
    assert!(a_list.len() > 1 && b_list.len() > 1, "multi-chunk files");
    // A reader as the proxy is: memory caches over lists kept on disk.
    let lists = DiskChunkLists::open(&dir.path().join("lists"), 1 << 20).unwrap();
    let reader = cached(
        Store {
            blobs: disk_chunk_lists(bucket.clone(), lists.clone()),
            ..Store::from_backend(bucket.clone())
        },
        CacheConfig::default(),
    );
    // b proved first: its list, answered for a (same size), must still be
    // proved against a.
    let mut out = Vec::new();
    render_nar(&reader, &node, &mut out).await.unwrap();
    assert!(out == nar);
    let wrong: Vec<(&str, Vec<lazix_castore::chunk::ChunkMeta>)> = vec![
        // Every chunk genuine, sizes add up: only the file's digest tells.
        ("another file's list", b_list.clone()),
        // Does not add up to the file's size.
        ("a short list", a_list[..a_list.len() - 1].to_vec()),
        // Adds up, but names its chunks with each other's sizes.
        ("sizes swapped", {
            let mut l = a_list.clone();
            let (x, y) = (l[0].size, l[1].size);
            assert_ne!(x, y, "pseudo-random chunks differ");
            (l[0].size, l[1].size) = (y, x);
            l
        }),
    ];
    for (what, list) in wrong {
        // Kept earlier from a server since mended: memory cache gone
        // (a new process), the list on disk.
        let reader = cached(
            Store {
                blobs: disk_chunk_lists(bucket.clone(), lists.clone()),
                ..Store::from_backend(bucket.clone())
            },
            CacheConfig::default(),
        );
        lists.forget(&a_digest);
        lists.put(&a_digest, Some(&list));
        let mut out = Vec::new();
        let err = render_nar(&reader, &node, &mut out).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{what}: {err}");
        assert_eq!(lists.get(&a_digest), None, "{what}: still on disk");
        // The same reader asks the store again and renders it right.
        let mut out = Vec::new();
        render_nar(&reader, &node, &mut out).await.unwrap();
        assert!(out == nar, "{what}: rendered wrong");
        assert_eq!(lists.get(&a_digest), Some(Some(a_list.clone())), "{what}");
    }
}

/// The chunk digests of `data` as the chunker cuts it.
fn chunk_digests(data: &[u8]) -> Vec<lazix_castore::B3Digest> {
    let params = lazix_castore::chunker::DEFAULT_PARAMS;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = params.cut(rest);
        out.push(lazix_castore::B3Digest::of(&rest[..n]));
        rest = &rest[n..];
    }
    out
}

#[tokio::test]
async fn a_delta_of_a_large_file_takes_whole_frames_of_its_old_version_as_base() {
    let (_dir, backend, store) = open().await;
    let v1 = random(3_000_000, 31);
    let mut v2 = v1.clone();
    for at in [10_000, 900_000, 2_500_000] {
        v2[at..at + 12].copy_from_slice(b"version 2.0!");
    }
    let node1 = ingest(&store, &sample_nar(&v1)).await.unwrap();
    backend.compact().await.unwrap();
    let node2 = ingest(&store, &sample_nar(&v2)).await.unwrap();
    let report = backend.compact().await.unwrap();
    assert!(report.delta_frames >= 1, "{report:?}");
    // v1's frames, by the chunks they hold.
    let v1_frames = store.blobs.get_frames(&chunk_digests(&v1)).await.unwrap();
    assert!(v1_frames.iter().all(|f| f.base.is_empty()));
    let v1_frame_holding = |d: &lazix_castore::B3Digest| {
        v1_frames
            .iter()
            .find(|f| f.chunks.iter().any(|c| c.digest == *d))
            .expect("a base is a chunk of v1")
    };
    let v1_chunks = chunk_digests(&v1);
    let changed: Vec<_> = chunk_digests(&v2)
        .into_iter()
        .filter(|d| !v1_chunks.contains(d))
        .collect();
    let deltas: Vec<_> = store
        .blobs
        .get_frames(&changed)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| !f.base.is_empty())
        .collect();
    assert!(!deltas.is_empty());
    for delta in &deltas {
        // Each base chunk comes with the rest of its frame, in its order:
        // the reader fetches that frame anyway.
        let mut base = delta.base.iter().map(|c| c.digest).peekable();
        while let Some(first) = base.peek().copied() {
            let frame = v1_frame_holding(&first);
            assert!(frame.chunks.len() > 1, "v1's frames hold several chunks");
            for c in frame.chunks.iter() {
                assert_eq!(base.next(), Some(c.digest), "a whole frame of v1 as base");
            }
        }
    }
    for (node, big) in [(&node1, &v1), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&store, node, &mut out).await.unwrap();
        assert!(out == sample_nar(big));
    }
}

/// A new version of `v1` that similarity finds only at its start: a small
/// change in the first chunk, which similarity finds, then two bytes in
/// every 48 from the second chunk to the end: no resemblance sketch
/// survives that, yet each stretch is mostly its old version. (The first
/// cut stays where it was: only bytes just before a cut decide it.)
fn changed_throughout(v1: &[u8]) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    v2[1_000..1_012].copy_from_slice(b"version 2.0!");
    let first_chunk = lazix_castore::chunker::DEFAULT_PARAMS.cut(v1);
    for at in (first_chunk + 16..v2.len() - 2).step_by(48) {
        v2[at] ^= 0x5a;
        v2[at + 1] ^= 0xa5;
    }
    v2
}

#[tokio::test]
async fn frames_of_a_large_file_changed_throughout_follow_their_old_version() {
    let (_dir, backend, store) = open().await;
    let v1 = random(3_000_000, 41);
    let v2 = changed_throughout(&v1);
    let node1 = ingest(&store, &sample_nar(&v1)).await.unwrap();
    backend.compact().await.unwrap();
    let node2 = ingest(&store, &sample_nar(&v2)).await.unwrap();
    backend.compact().await.unwrap();
    let frames = store.blobs.get_frames(&chunk_digests(&v2)).await.unwrap();
    assert!(frames.len() >= 8, "{} frames", frames.len());
    let plain = frames.iter().filter(|f| f.base.is_empty()).count();
    assert_eq!(plain, 0, "{plain} of {} frames stored plain", frames.len());
    // Each follows the old version's place, not all of it: the old frames
    // around it (64 KiB either side, whole frames of at most 256 KiB).
    for f in &frames[1..] {
        assert!(
            f.base_size() <= f.raw_size() + 2 * (64 << 10) + 2 * (256 << 10),
            "a base of {} bytes for a frame of {}",
            f.base_size(),
            f.raw_size()
        );
    }
    let (stored, raw): (usize, u64) = frames
        .iter()
        .fold((0, 0), |(s, r), f| (s + f.data.len(), r + f.raw_size()));
    assert!(stored as u64 * 4 < raw, "{stored} bytes stored of {raw}");
    for (node, big) in [(&node1, &v1), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&store, node, &mut out).await.unwrap();
        assert!(out == sample_nar(big));
    }
}

#[tokio::test]
async fn a_large_file_uploaded_in_several_packs_is_followed_across_them() {
    let (dir, backend, store) = open().await;
    // Three upload calls' worth (8 MiB each): three packs per version.
    let v1 = random(18_000_000, 43);
    // Only the place found at the start, carried from frame to frame,
    // gives each frame its base.
    let mut v2 = changed_throughout(&v1);
    // And a stretch with nothing of the old version: its frames stay
    // plain, and the walk goes on past them.
    let new_stretch = 9_000_000..9_600_000;
    v2[new_stretch.clone()].copy_from_slice(&random(new_stretch.len(), 44));
    let node1 = ingest(&store, &sample_nar(&v1)).await.unwrap();
    let packs = |dir: &std::path::Path| {
        pack_files(dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .count()
    };
    let uploaded = packs(dir.path());
    assert!(uploaded >= 3, "{uploaded} packs uploaded");
    let report = backend.compact().await.unwrap();
    assert_eq!(report.packs_rewritten as usize, uploaded, "{report:?}");
    // Compacted into one pack, in upload order.
    assert_eq!(packs(dir.path()), 1);
    let node2 = ingest(&store, &sample_nar(&v2)).await.unwrap();
    backend.compact().await.unwrap();
    assert_eq!(packs(dir.path()), 2);
    let frames = store.blobs.get_frames(&chunk_digests(&v2)).await.unwrap();
    assert!(frames.len() >= 60, "{} frames", frames.len());
    // Past every pack boundary of either version and past the new
    // stretch, each frame found its old version; only frames holding
    // (mostly) the new stretch stayed plain.
    let mut offset = 0u64;
    let mut plain = Vec::new();
    for f in &frames {
        if f.base.is_empty() {
            plain.push(offset..offset + f.raw_size());
        }
        offset += f.raw_size();
    }
    assert!(
        plain
            .iter()
            .all(|r| r.start < new_stretch.end as u64 && new_stretch.start as u64 <= r.end),
        "frames stored plain at {plain:?} of {} frames",
        frames.len()
    );
    assert!(plain.len() <= 4, "{plain:?}");
    for (node, big) in [(&node1, &v1), (&node2, &v2)] {
        let mut out = Vec::new();
        render_nar(&store, node, &mut out).await.unwrap();
        assert!(out == sample_nar(big));
    }
}

/// Stores a PathInfo for `node` (so the store keeps its root's manifest).
async fn register(store: &Store, node: &Node, name: &str) {
    let info = lazix_castore::testutil::path_info(name, node.clone());
    store.path_infos.put_path_info(info).await.unwrap();
}

/// A server restarted streams its paths without hashing every file again:
/// the lists named by the manifest it wrote itself are believed. A list
/// edited at rest is not (and hashing its file catches it), nor is one of
/// a root whose manifest is gone; an upload of the same file mends it
/// rather than relying on it.
#[tokio::test]
async fn lists_the_stores_own_manifest_names_are_streamed_without_hashing_their_files() {
    use lazix_castore::read::proved;
    use lazix_castore::render::plan;
    use lazix_castore::store::{cached, decoded_chunks, CacheConfig};
    use prost::Message;

    let (dir, bucket, store) = open().await;
    let (a, b) = (random(2_000_000, 4201), random(2_000_000, 4202));
    let (nar_a, nar_b) = (sample_nar(&a), sample_nar(&b));
    let (node_a, node_b) = (
        ingest(&store, &nar_a).await.unwrap(),
        ingest(&store, &nar_b).await.unwrap(),
    );
    register(&store, &node_a, "own-manifest-a").await;
    register(&store, &node_b, "own-manifest-b").await;
    let (file_a, file_b) = (
        lazix_castore::B3Digest::of(&a),
        lazix_castore::B3Digest::of(&b),
    );
    let lists = bucket.get_blob_chunks(&[file_a, file_b]).await.unwrap();
    let (list_a, list_b) = (lists[0].clone().unwrap(), lists[1].clone().unwrap());
    assert!(list_a.len() > 2 && list_b.len() > 1, "multi-chunk files");
    let (key_a, key_b) = (proved::key(file_a, &list_a), proved::key(file_b, &list_b));
    // A server as `lazix serve` stacks it, restarted (a new process's
    // store on the same folder).
    let restart = || async {
        let mut served = cached(
            Store::from_backend(open_at(dir.path()).await),
            CacheConfig::default(),
        );
        served.blobs = decoded_chunks(served.blobs, 64 << 20);
        served
    };

    let served = restart().await;
    let plan_a = plan(&served, &node_a).await.unwrap();
    assert!(
        proved::is_proved(&key_a, plan_a.own_manifest()),
        "named by a's manifest"
    );
    let mut out = Vec::new();
    render_nar(&served, &node_a, &mut out).await.unwrap();
    assert!(out == nar_a);

    // b's manifest is gone (a path stored before manifests were kept).
    let Node::Directory { digest: root_b, .. } = node_b else {
        panic!("a directory")
    };
    let hex = root_b.to_hex();
    std::fs::remove_file(dir.path().join("manifests").join(&hex[..2]).join(&hex)).unwrap();
    // a's list edited at rest: its first two chunks swapped (every chunk
    // genuine, sizes adding up).
    let hex = file_a.to_hex();
    let list_file = dir.path().join("blobs").join(&hex[..2]).join(&hex);
    let original = std::fs::read(&list_file).unwrap();
    let mut swapped = lazix_proto::ext::BlobChunks::decode(original.as_slice()).unwrap();
    swapped.chunks.swap(0, 1);
    std::fs::write(&list_file, swapped.encode_to_vec()).unwrap();
    let mut swapped_list = list_a.clone();
    swapped_list.swap(0, 1);

    let served = restart().await;
    let plan_a = plan(&served, &node_a).await.unwrap();
    let plan_b = plan(&served, &node_b).await.unwrap();
    assert!(
        plan_b.own_manifest().is_none(),
        "none computed in its place"
    );
    assert!(
        !proved::is_proved(&proved::key(file_a, &swapped_list), plan_a.own_manifest()),
        "the edited list is not the one the manifest names"
    );
    let err = render_nar(&served, &node_a, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let mut out = Vec::new();
    render_nar(&served, &node_b, &mut out).await.unwrap();
    assert!(out == nar_b, "b hashed and streamed");
    assert!(proved::is_proved(&key_b, None), "proved by hashing it");

    // The same file uploaded under another root: the edited list is not
    // relied on (the new root's manifest would name it), but replaced.
    let nar_c = files_nar(&[("copy-of-a", &a)]);
    let node_c = ingest(&store, &nar_c).await.unwrap();
    register(&store, &node_c, "own-manifest-c").await;
    assert!(std::fs::read(&list_file).unwrap() == original, "mended");
    let served = restart().await;
    let plan_c = plan(&served, &node_c).await.unwrap();
    assert!(proved::is_proved(&key_a, plan_c.own_manifest()));
    for (node, nar) in [(&node_c, &nar_c), (&node_a, &nar_a)] {
        let mut out = Vec::new();
        render_nar(&served, node, &mut out).await.unwrap();
        assert!(out == *nar);
    }
}
