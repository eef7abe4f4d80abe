//! `lazix-bench synth`: large synthetic stores for the scale benchmark
//! (`bench/scale.sh`), written straight through the store API (NAR ingest
//! and PathInfo puts, as a push does) into a folder or a bucket.
//!
//! Shapes: each path is a directory with an executable `bin/prog`, a
//! symlink `lib -> share` and `--files-per-path` small files under
//! `share/` (`--file-size` bytes each); every `--shared-every`-th of them
//! has the same contents in every path (deduplicated), every
//! `--large-every`-th path also holds a 1 MiB file. Each path references
//! the one before it and one further back, as closures do.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use lazix_castore::bucket::BucketStore;
use lazix_castore::ingest::{ingest_nar, ChunkUploader, KnownChunks, TransferStats};
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::{PathInfo, Store};

/// What to generate.
#[derive(Clone, Debug)]
struct Shape {
    paths: u64,
    first: u64,
    files_per_path: u64,
    file_size: usize,
    shared_every: u64,
    large_every: u64,
    seed: u64,
    parallel: usize,
}

/// Pseudo-random bytes from a seed (xorshift; fast, reproducible).
fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The store path of synthetic path `i`.
fn store_path(seed: u64, i: u64) -> Result<StorePath> {
    let h = blake3::hash(format!("lazix-synth-{seed}-{i}").as_bytes());
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&h.as_bytes()[..20]);
    Ok(StorePath::from_parts(digest, &format!("synth-{i}"))?)
}

/// The NAR of synthetic path `i` (entries in NAR order).
fn nar_of(shape: &Shape, i: u64) -> Vec<u8> {
    let file = |nar: &mut NarEncoder, data: &[u8], executable: bool| {
        nar.file_header(executable, data.len() as u64);
        nar.raw(data);
        nar.file_trailer(data.len() as u64);
    };
    let mut nar = NarEncoder::new();
    nar.magic();
    nar.directory_open();
    nar.entry_open(b"bin");
    nar.directory_open();
    nar.entry_open(b"prog");
    file(
        &mut nar,
        format!("#!/bin/sh\necho synthetic path {i}\n").as_bytes(),
        true,
    );
    nar.close();
    nar.close();
    nar.close();
    nar.entry_open(b"lib");
    nar.symlink(b"share");
    nar.close();
    nar.entry_open(b"share");
    nar.directory_open();
    if shape.large_every > 0 && i.is_multiple_of(shape.large_every) {
        nar.entry_open(b"large");
        file(
            &mut nar,
            &bytes_of(shape.seed ^ i ^ 0x1a26e, 1 << 20),
            false,
        );
        nar.close();
    }
    for j in 0..shape.files_per_path {
        nar.entry_open(format!("s{j:06}").as_bytes());
        let shared = shape.shared_every > 0 && j.is_multiple_of(shape.shared_every);
        let seed = if shared {
            shape.seed ^ (j << 32)
        } else {
            shape.seed ^ (i << 20) ^ j ^ 0x5eed
        };
        file(&mut nar, &bytes_of(seed, shape.file_size), false);
        nar.close();
    }
    nar.close(); // share/
    nar.close(); // its entry
    nar.close(); // the root
    nar.take()
}

/// Stores synthetic path `i`.
async fn put_one(
    store: &Store,
    shape: &Shape,
    known: KnownChunks,
    stats: Arc<Mutex<TransferStats>>,
    i: u64,
) -> Result<()> {
    let nar = nar_of(shape, i);
    let mut up = ChunkUploader::new(store.blobs.clone(), known, stats);
    let ingested = ingest_nar(store, &mut up, &nar[..])
        .await
        .with_context(|| format!("ingesting synthetic path {i}"))?;
    let mut references = Vec::new();
    if i > 0 {
        references.push(store_path(shape.seed, i - 1)?);
    }
    if i > 10 {
        references.push(store_path(shape.seed, i / 2)?);
    }
    references.sort();
    let info = PathInfo {
        store_path: store_path(shape.seed, i)?,
        node: ingested.node,
        references,
        nar_size: ingested.nar_size,
        nar_sha256: ingested.nar_sha256,
        signatures: vec![],
        root_signatures: vec![],
        deriver: None,
        ca: None,
    };
    store.path_infos.put_path_info(info).await?;
    Ok(())
}

fn parse(args: &[String]) -> Result<(String, Shape)> {
    let mut store = None;
    let mut shape = Shape {
        paths: 1000,
        first: 0,
        files_per_path: 20,
        file_size: 2048,
        shared_every: 4,
        large_every: 50,
        seed: 1,
        parallel: 8,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--store" => store = Some(value.clone()),
            "--paths" => shape.paths = n()?,
            "--first" => shape.first = n()?,
            "--files-per-path" => shape.files_per_path = n()?,
            "--file-size" => shape.file_size = n()? as usize,
            "--shared-every" => shape.shared_every = n()?,
            "--large-every" => shape.large_every = n()?,
            "--seed" => shape.seed = n()?,
            "--parallel" => shape.parallel = n()?.max(1) as usize,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok((store.context("--store LOCATION is needed")?, shape))
}

/// Names path `i` of a synthetic store, or every `STEP`th path from `I`
/// up to `END`, one per line, for scripts (`lazix-bench synth-path SEED I
/// [STEP END]`: a script naming 10^5 paths needs no 10^5 processes).
pub fn print_path(args: &[String]) -> Result<()> {
    const USAGE: &str = "usage: lazix-bench synth-path SEED I [STEP END]";
    let (seed, first, step, end) = match args {
        [seed, i] => (seed, i.parse::<u64>()?, 1, i.parse::<u64>()? + 1),
        [seed, i, step, end] => (seed, i.parse()?, step.parse()?, end.parse()?),
        _ => bail!(USAGE),
    };
    if step == 0 {
        bail!(USAGE);
    }
    let seed = seed.parse()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in (first..end).step_by(step as usize) {
        writeln!(out, "{}", store_path(seed, i)?.to_absolute())?;
    }
    Ok(())
}

/// `lazix-bench synth --store LOCATION [--paths N] [--first I]
/// [--files-per-path K] [--file-size BYTES] [--shared-every S]
/// [--large-every M] [--seed X] [--parallel P]`.
pub fn run(args: &[String]) -> Result<()> {
    let (location, shape) = parse(args)?;
    tokio::runtime::Runtime::new()?.block_on(generate(&location, &shape))
}

/// Writes `shape`'s paths into the store at `location`.
async fn generate(location: &str, shape: &Shape) -> Result<()> {
    {
        let backend = BucketStore::open(location)
            .await
            .with_context(|| format!("opening {location}"))?;
        let bucket = backend.clone();
        let store = Store::from_backend(backend);
        let stats = Arc::new(Mutex::new(TransferStats::default()));
        let started = Instant::now();
        let done = std::sync::atomic::AtomicU64::new(0);
        stream::iter(shape.first..shape.first + shape.paths)
            .map(|i| {
                let (store, stats, done) = (&store, stats.clone(), &done);
                async move {
                    // Chunks known stored are each path's own: shared
                    // between paths written at once, one path could skip a
                    // chunk another has not finished writing and put its
                    // PathInfo first ("refers to data that is not
                    // stored"); the store skips what it has anyway.
                    put_one(store, shape, KnownChunks::default(), stats, i).await?;
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(10_000) {
                        eprintln!(
                            "synth: {n} paths in {:.1} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(shape.parallel)
            .try_collect::<Vec<_>>()
            .await?;
        // What the catalog's background folds left loose is folded, as a
        // server that keeps running would; and the pack indexes go into
        // one snapshot, as GC's next run (or a server's start) would write.
        bucket.settle_catalog().await;
        let packs = bucket.store_pack_snapshot().await?;
        eprintln!("synth: a pack table snapshot of {packs} packs stored");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "synth: {} paths ({} files each, {} bytes) into {location} in {secs:.1} s ({:.0} paths/s)",
            shape.paths,
            shape.files_per_path,
            shape.file_size,
            shape.paths as f64 / secs
        );
        anyhow::Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_path_is_a_valid_nar_with_shared_files() {
        let shape = parse(&["--store".into(), "x".into()]).unwrap().1;
        let a = nar_of(&shape, 3);
        let b = nar_of(&shape, 4);
        assert_ne!(a, b);
        // The shared file's bytes appear in both.
        let shared = bytes_of(shape.seed, shape.file_size);
        let find = |nar: &[u8]| nar.windows(64).any(|w| w == &shared[..64]);
        assert!(find(&a) && find(&b));
        assert_ne!(store_path(1, 3).unwrap(), store_path(1, 4).unwrap());
    }

    #[tokio::test]
    async fn synthetic_paths_go_into_a_store_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap().to_string();
        let args: Vec<String> = [
            "--store",
            &location,
            "--paths",
            "30",
            "--files-per-path",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (_, shape) = parse(&args).unwrap();
        generate(&location, &shape).await.unwrap();
        let backend = BucketStore::open(&location).await.unwrap();
        let store = Store::from_backend(backend);
        let info = store
            .path_infos
            .get_path_info(store_path(1, 20).unwrap().digest())
            .await
            .unwrap()
            .expect("path 20 stored");
        assert_eq!(info.references.len(), 2);
        let mut nar = Vec::new();
        let (size, sha) = lazix_castore::render::render_nar(&store, &info.node, &mut nar)
            .await
            .unwrap();
        assert_eq!(nar, nar_of(&shape, 20));
        assert_eq!((size, sha), (info.nar_size, info.nar_sha256));
    }
}
