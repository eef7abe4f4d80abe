//! `lazix-bench`: measurement tools the benchmark scripts call.
//!
//! `lazix-bench chunk-params DIR...` chunks every file below the given
//! trees with several FastCDC parameter sets and prints, per set, the
//! number of unique chunks (objects), their raw bytes and their bytes
//! compressed one by one with zstd: what choosing min/avg/max trades.
//!
//! `lazix-bench verify-costs DIR...` measures what binding chunks to
//! their files costs as lazix does it (signed manifests of chunk-list
//! digests) and with BLAKE3 verified streaming (bao outboards): see
//! `verify_costs.rs`.
//!
//! `lazix-bench synth --store LOCATION --paths N …` writes a large
//! synthetic store (see `synth.rs`); `lazix-bench synth-path SEED I` names
//! its path `I`.
//!
//! `lazix-bench misses LOCATION` prints what chunk lookups that miss
//! cost a server of that store (see `misses.rs`).
//!
//! `lazix-bench layouts STORE_PATH...` prints the stored bytes and object
//! counts of the peers' layouts for the same paths: the classic binary
//! cache (one zstd NAR per path) and Attic's (the whole NAR cut with FastCDC
//! 16/64/256 KiB, deduplicated, zstd per chunk).

mod misses;
mod synth;
mod verify_costs;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lazix_castore::chunk::ZSTD_LEVEL;
use lazix_castore::chunker::ChunkerParams;

const KIB: usize = 1024;

fn files_below(root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            files_below(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

struct Tally {
    objects: u64,
    raw: u64,
    compressed: u64,
}

fn measure(files: &[PathBuf], params: ChunkerParams) -> Result<Tally> {
    let mut seen = HashSet::new();
    let mut t = Tally {
        objects: 0,
        raw: 0,
        compressed: 0,
    };
    for f in files {
        let data = std::fs::read(f)?;
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            let n = params.cut(rest);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            if seen.insert(*blake3::hash(chunk).as_bytes()) {
                t.objects += 1;
                t.raw += chunk.len() as u64;
                t.compressed += zstd::bulk::compress(chunk, ZSTD_LEVEL)?.len() as u64;
            }
        }
    }
    Ok(t)
}

/// Bytes written, discarding them.
#[derive(Default)]
struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `nix-store --dump PATH` as a reader.
fn dump(path: &str) -> Result<std::process::Child> {
    std::process::Command::new("nix-store")
        .args(["--dump", path])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running nix-store --dump")
}

fn layouts(paths: &[String]) -> Result<()> {
    let mut classic = 0u64;
    let mut nar_total = 0u64;
    let mut seen = HashSet::new();
    let (mut attic_objects, mut attic_bytes) = (0u64, 0u64);
    for p in paths {
        // Classic: one zstd NAR per path.
        let mut child = dump(p)?;
        let mut enc = zstd::stream::Encoder::new(CountingSink::default(), ZSTD_LEVEL)?;
        nar_total += std::io::copy(child.stdout.as_mut().expect("piped"), &mut enc)?;
        classic += enc.finish()?.0;
        child.wait()?;
        // Attic: FastCDC over the whole NAR, global dedup, zstd per chunk.
        let mut child = dump(p)?;
        let stdout = child.stdout.take().expect("piped");
        for chunk in fastcdc::v2020::StreamCDC::new(stdout, 16 * 1024, 64 * 1024, 256 * 1024) {
            let chunk = chunk?;
            if seen.insert(*blake3::hash(&chunk.data).as_bytes()) {
                attic_objects += 1;
                attic_bytes += zstd::bulk::compress(&chunk.data, ZSTD_LEVEL)?.len() as u64;
            }
        }
        child.wait()?;
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("{} paths, {:.0} MiB of NAR", paths.len(), mib(nar_total));
    println!("| layout | objects | stored MiB |");
    println!("|---|---|---|");
    println!(
        "| one zstd NAR per path (classic binary cache) | {} | {:.0} |",
        paths.len(),
        mib(classic)
    );
    println!(
        "| whole-NAR FastCDC 16/64/256 KiB, zstd per chunk (Attic) | {attic_objects} | {:.0} |",
        mib(attic_bytes)
    );
    Ok(())
}

/// Stored bytes and what a cold reader fetches, for several frame targets,
/// over per-file chunks deduplicated globally (the lazix layout): the
/// measurement behind `FRAME_TARGET`.
fn frame_sizes(files: &[PathBuf]) -> Result<()> {
    use bytes::Bytes;
    use lazix_castore::chunk::ChunkMeta;
    use lazix_castore::frame::{group_into_frames, FrameTargets, SHARED_GROUP};
    // Unique chunks in path order, with their file's size and index.
    let mut seen = HashSet::new();
    let mut chunks: Vec<(ChunkMeta, Bytes, u64, u64)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let data = Bytes::from(std::fs::read(f)?);
        let mut at = 0;
        while at < data.len() {
            let n = lazix_castore::chunker::DEFAULT_PARAMS.cut(&data[at..]);
            let piece = data.slice(at..at + n);
            at += n;
            let digest = lazix_castore::B3Digest::of(&piece);
            if seen.insert(digest) {
                let meta = ChunkMeta {
                    digest,
                    size: n as u64,
                };
                chunks.push((meta, piece, data.len() as u64, i as u64 + 1));
            }
        }
    }
    let raw_total: u64 = chunks.iter().map(|c| c.0.size).sum();
    println!(
        "{} unique chunks, {:.0} MiB raw",
        chunks.len(),
        raw_total as f64 / 1048576.0
    );
    println!("| frame target | frames | stored MiB | fetched per cold random read, KiB (mean) |");
    println!("|---|---|---|---|");
    let level: i32 = std::env::var("LAZIX_BENCH_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(ZSTD_LEVEL);
    let targets: Vec<u64> = std::env::var("LAZIX_BENCH_TARGETS")
        .ok()
        .map(|t| t.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 64, 256, 1024, 4096]);
    println!("zstd level {level}");
    for target_kib in targets {
        let target = target_kib * 1024;
        let started = std::time::Instant::now();
        let grouped: Vec<_> = chunks
            .iter()
            .map(|(m, b, file_size, file)| {
                let group = if *file_size <= target / 4 {
                    SHARED_GROUP
                } else {
                    *file
                };
                (*m, b.clone(), group)
            })
            .collect();
        let shared: u64 = std::env::var("LAZIX_BENCH_SHARED_TARGET")
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(target, |k| k * 1024);
        let frames = group_into_frames(
            grouped,
            FrameTargets {
                shared,
                own: target,
            },
        );
        // Compress on both cores.
        let half = frames.len() / 2;
        let sizes: Vec<(u64, u64)> = std::thread::scope(|s| {
            let parts: Vec<_> = [&frames[..half], &frames[half..]]
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|f| {
                                let raw: u64 = f.iter().map(|(m, _)| m.size).sum();
                                let mut raw_bytes = Vec::new();
                                for (_, b) in f {
                                    raw_bytes.extend_from_slice(b);
                                }
                                let z = zstd::bulk::compress(&raw_bytes, level)
                                    .expect("compress")
                                    .len() as u64;
                                (raw, z)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect()
        });
        let stored: u64 = sizes.iter().map(|(_, z)| z).sum::<u64>()
            + chunks.len() as u64 * 40
            + sizes.len() as u64 * 16;
        let fetch: f64 = sizes
            .iter()
            .map(|(raw, z)| *raw as f64 * *z as f64)
            .sum::<f64>()
            / raw_total as f64;
        let name = if target_kib == 0 {
            "one chunk per frame".to_string()
        } else {
            format!("{target_kib} KiB")
        };
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} MB/s on 2 cores",
            sizes.len(),
            stored as f64 / 1048576.0,
            fetch / 1024.0,
            raw_total as f64 / started.elapsed().as_secs_f64() / 1e6
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    const USAGE: &str =
        "usage: lazix-bench chunk-params DIR... | lazix-bench frame-sizes DIR... | lazix-bench verify-costs DIR... | lazix-bench layouts STORE_PATH... | lazix-bench synth --store LOCATION [--paths N …] | lazix-bench synth-path SEED I | lazix-bench misses LOCATION";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, dirs)) = args.split_first() else {
        bail!(USAGE);
    };
    match cmd.as_str() {
        "synth" => return synth::run(dirs),
        "synth-path" => return synth::print_path(dirs),
        "misses" => return misses::run(dirs),
        _ => {}
    }
    if dirs.is_empty() {
        bail!(USAGE);
    }
    match cmd.as_str() {
        "layouts" => return layouts(dirs),
        "chunk-params" | "frame-sizes" | "verify-costs" => {}
        _ => bail!(USAGE),
    }
    let mut files = Vec::new();
    for d in dirs {
        files_below(Path::new(d), &mut files)?;
    }
    files.sort();
    if cmd == "frame-sizes" {
        return frame_sizes(&files);
    }
    if cmd == "verify-costs" {
        return verify_costs::run(&files);
    }
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "{} files, {:.0} MiB in {}",
        files.len(),
        total as f64 / (1024.0 * 1024.0),
        dirs.join(" + ")
    );
    println!("| min/avg/max (KiB) | objects | unique raw MiB | stored (zstd per chunk) MiB |");
    println!("|---|---|---|---|");
    let sets = [
        (4, 16, 64),
        (16, 64, 256),
        (64, 256, 1024),
        (256, 1024, 4096),
    ];
    let results: Vec<Result<(String, Tally)>> = std::thread::scope(|s| {
        let handles: Vec<_> = sets
            .iter()
            .map(|&(min, avg, max)| {
                let files = &files;
                s.spawn(move || {
                    let p = ChunkerParams {
                        min: min * KIB,
                        avg: avg * KIB,
                        max: max * KIB,
                    };
                    measure(files, p).map(|t| (format!("{min}/{avg}/{max}"), t))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    for r in results {
        let (name, t) = r?;
        println!(
            "| {name} | {} | {:.0} | {:.0} |",
            t.objects,
            t.raw as f64 / 1048576.0,
            t.compressed as f64 / 1048576.0
        );
    }
    Ok(())
}
