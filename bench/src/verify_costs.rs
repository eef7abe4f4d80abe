//! `lazix-bench verify-costs DIR...`: what binding each chunk to its file
//! costs, measured two ways over the same files cut by lazix's chunker:
//!
//! - **manifest** (what lazix does): per multi-chunk file, its chunk list's
//!   BLAKE3 in one 64-byte record of the path's manifest, signed with the
//!   root; a reader fetches the manifest once per path and checks each
//!   list (fetched anyway to locate chunks) by hashing it;
//! - **bao** (BLAKE3 verified streaming, the `bao-tree` crate, 16 KiB
//!   blocks as snix's `Stat` outboards use): per file an outboard, and
//!   every read verified against the file's digest with a proof; a CDC
//!   chunk does not start or end on a block boundary, so a read of one
//!   chunk must also fetch the neighbouring bytes of its first and last
//!   blocks.
//!
//! Printed: stored bytes each needs, what a cold read of every chunk once
//! fetches on top of the chunk's own bytes, and the CPU time to build and
//! to check it, measured here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use bao_tree::io::outboard::{EmptyOutboard, PreOrderMemOutboard};
use bao_tree::io::round_up_to_chunks;
use bao_tree::io::sync::{decode_ranges, encode_ranges_validated, WriteAt};
use bao_tree::{BlockSize, ByteRanges};
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::chunker::DEFAULT_PARAMS;
use lazix_castore::trust::{chunk_list_digest, ChunkListsDigest};

/// 16 KiB blocks (2^4 BLAKE3 chunks of 1 KiB).
const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

#[derive(Default)]
struct Costs {
    files: u64,
    listed_files: u64,
    bytes: u64,
    chunks: u64,
    list_bytes: u64,
    outboard_bytes: u64,
    outboard_time: Duration,
    bao_extra_data: u64,
    bao_proof_bytes: u64,
    bao_check_time: Duration,
    chunk_hash_time: Duration,
    list_check_time: Duration,
}

/// Where verified bytes go: nowhere (a `Vec` target would grow to each
/// range's offset, timing the allocator instead of the check).
struct Discard;

impl WriteAt for Discard {
    fn write_at(&mut self, _pos: u64, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Measures every file of `files`; prints a Markdown table.
pub fn run(files: &[PathBuf]) -> Result<()> {
    let mut c = Costs::default();
    let mut manifest = ChunkListsDigest::default();
    for f in files {
        let data = std::fs::read(f)?;
        c.files += 1;
        c.bytes += data.len() as u64;
        let mut cuts = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = DEFAULT_PARAMS.cut(&data[at..]);
            cuts.push(at..at + n);
            at += n;
        }
        c.chunks += cuts.len() as u64;

        // What lazix's reader does per chunk either way: BLAKE3 of it.
        let started = Instant::now();
        let list: Vec<ChunkMeta> = cuts
            .iter()
            .map(|r| ChunkMeta::of(&data[r.clone()]))
            .collect();
        c.chunk_hash_time += started.elapsed();
        if cuts.len() < 2 {
            continue;
        }
        c.listed_files += 1;
        c.list_bytes += list.len() as u64 * 40;
        let started = Instant::now();
        let digest = chunk_list_digest(&list);
        c.list_check_time += started.elapsed();
        manifest
            .lists
            .insert(lazix_castore::B3Digest::of(&data), digest);

        // bao: the outboard, then each chunk read as a verified range.
        let started = Instant::now();
        let outboard = PreOrderMemOutboard::create(&data, BLOCK_SIZE);
        c.outboard_time += started.elapsed();
        c.outboard_bytes += outboard.data.len() as u64;
        for r in &cuts {
            let ranges = round_up_to_chunks(&ByteRanges::from(r.start as u64..r.end as u64));
            let mut encoded = Vec::new();
            encode_ranges_validated(&data[..], &outboard, &ranges, &mut encoded)?;
            // Bytes of data sent: the chunk widened to whole blocks.
            let block = 16 * 1024u64;
            let first = (r.start as u64 / block) * block;
            let last = (r.end as u64).div_ceil(block) * block;
            let sent = last.min(data.len() as u64) - first;
            c.bao_extra_data += sent - r.len() as u64;
            c.bao_proof_bytes += (encoded.len() as u64).saturating_sub(sent);
            let started = Instant::now();
            decode_ranges(
                std::io::Cursor::new(&encoded),
                &ranges,
                Discard,
                EmptyOutboard {
                    tree: outboard.tree,
                    root: outboard.root,
                },
            )?;
            c.bao_check_time += started.elapsed();
        }
    }
    let manifest_bytes = manifest.to_records().len() as u64;
    let mib = |b: u64| b as f64 / 1048576.0;
    let pct = |b: u64| 100.0 * b as f64 / c.bytes.max(1) as f64;
    println!(
        "{} files ({} with a chunk list), {:.0} MiB, {} chunks (lazix's chunker)",
        c.files,
        c.listed_files,
        mib(c.bytes),
        c.chunks
    );
    println!();
    println!("| | manifest of list digests (lazix) | bao outboards, 16 KiB blocks |");
    println!("|---|---|---|");
    println!(
        "| new stored bytes | {:.2} MiB ({:.3}% of the files) | {:.2} MiB ({:.3}%) |",
        mib(manifest_bytes),
        pct(manifest_bytes),
        mib(c.outboard_bytes),
        pct(c.outboard_bytes)
    );
    println!(
        "| new stored objects | 1 per path | {} (1 per multi-chunk file) |",
        c.listed_files
    );
    println!(
        "| fetched to admit a path | {:.2} MiB in 1 call | nothing (the file digest is the bao root) |",
        mib(manifest_bytes)
    );
    println!(
        "| fetched beyond the chunks, every chunk read once cold | {:.2} MiB of lists ({:.2}%), also fetched unverified | {:.2} MiB of neighbours' bytes + {:.2} MiB of proofs ({:.2}%); lists still needed to find frames |",
        mib(c.list_bytes),
        pct(c.list_bytes),
        mib(c.bao_extra_data),
        mib(c.bao_proof_bytes),
        pct(c.bao_extra_data + c.bao_proof_bytes)
    );
    println!(
        "| CPU to build (one core) | {:.3} s (hash each list) | {:.3} s (outboards, {:.0} MB/s) |",
        c.list_check_time.as_secs_f64(),
        c.outboard_time.as_secs_f64(),
        c.bytes as f64 / 1e6 / c.outboard_time.as_secs_f64().max(1e-9)
    );
    println!(
        "| CPU to check every chunk once (one core) | {:.3} s (BLAKE3 per chunk) + {:.3} s (lists) | {:.3} s (bao decode of each range) |",
        c.chunk_hash_time.as_secs_f64(),
        c.list_check_time.as_secs_f64(),
        c.bao_check_time.as_secs_f64()
    );
    Ok(())
}
