//! NAR ingest into the embedded store: round trips, malformed input that
//! leaves nothing visible, corruption detected on read, crash leftovers
//! cleaned.

use std::sync::{Arc, Mutex};

use lazix_castore::embedded::EmbeddedStore;
use lazix_castore::ingest::{ingest_nar, ChunkUploader, IngestError, KnownChunks, TransferStats};
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::render::render_nar;
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

fn open() -> (tempfile::TempDir, Arc<EmbeddedStore>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedStore::open(dir.path()).unwrap();
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
        for e in std::fs::read_dir(d).unwrap().flatten() {
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
    let (_d, _b, store) = open();
    let nar = sample_nar(&random(2_000_000, 5));
    let node = ingest(&store, &nar).await.unwrap();
    let mut out = Vec::new();
    let (size, _) = render_nar(&store, &node, &mut out).await.unwrap();
    assert_eq!(size as usize, nar.len());
    assert!(out == nar);
}

#[tokio::test]
async fn malformed_nars_are_rejected_and_store_no_directories_or_paths() {
    let (dir, _b, store) = open();
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
    let (dir, _b, store) = open();
    let nar = sample_nar(&random(700_000, 11));
    let node = ingest(&store, &nar).await.unwrap();
    // Flip bytes in every stored chunk's payload.
    let mut stack = vec![dir.path().join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let mut data = std::fs::read(e.path()).unwrap();
                let last = data.len() - 1;
                data[last] ^= 0x55;
                std::fs::write(e.path(), data).unwrap();
            }
        }
    }
    let mut out = Vec::new();
    let err = render_nar(&store, &node, &mut out).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn leftover_temp_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedStore::open(dir.path()).unwrap());
    let leftover = dir.path().join("chunks/ab/.tmp-HALF");
    std::fs::write(&leftover, b"half-written").unwrap();
    // As if left by a process killed a while ago.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // Writes right after opening are not mistaken for leftovers.
    let s = Store::from_backend(store.clone());
    let fresh = lazix_castore::chunk::Chunk::from_raw(bytes_of(b"written after open"));
    for _ in 0..50 {
        s.blobs.put_chunks(vec![fresh.clone()]).await.unwrap();
    }
    // A temp file is never an object.
    let d = lazix_castore::B3Digest::of(b"half-written");
    assert_eq!(s.blobs.missing_chunks(&[d]).await.unwrap(), vec![d]);
    // The sweep removes it in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while leftover.exists() {
        assert!(std::time::Instant::now() < deadline, "temp file not swept");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
