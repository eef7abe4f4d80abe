//! `lazix-bench`: measurement tools the benchmark scripts call.
//!
//! `lazix-bench chunk-params DIR...` chunks every file below the given
//! trees with several FastCDC parameter sets and prints, per set, the
//! number of unique chunks (objects), their raw bytes and their bytes
//! compressed one by one with zstd: what choosing min/avg/max trades.
//!
//! `lazix-bench layouts STORE_PATH...` prints the stored bytes and object
//! counts of the peers' layouts for the same paths: the classic binary
//! cache (one zstd NAR per path) and Attic's (the whole NAR cut with FastCDC
//! 16/64/256 KiB, deduplicated, zstd per chunk).

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

fn main() -> Result<()> {
    const USAGE: &str =
        "usage: lazix-bench chunk-params DIR... | lazix-bench layouts STORE_PATH...";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, dirs)) = args.split_first() else {
        bail!(USAGE);
    };
    if dirs.is_empty() {
        bail!(USAGE);
    }
    match cmd.as_str() {
        "layouts" => return layouts(dirs),
        "chunk-params" => {}
        _ => bail!(USAGE),
    }
    let mut files = Vec::new();
    for d in dirs {
        files_below(Path::new(d), &mut files)?;
    }
    files.sort();
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
