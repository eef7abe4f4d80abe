//! Render: castore → NAR, streamed through a bounded pipeline.
//!
//! 1. the directory closure is fetched in one call;
//! 2. the NAR is planned: framing bytes interleaved with file blobs;
//! 3. blob chunk lists are resolved in batches (one call per batch of
//!    blobs), a few batches ahead;
//! 4. chunks are fetched in windows of a few MiB (one call per window),
//!    several windows in flight, decoded and verified on blocking threads;
//! 5. bytes are written in order.
//!
//! Memory stays bounded by the windows in flight, never a whole NAR or blob.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::chunk::{Chunk, ChunkMeta};
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::nix::nar::NarEncoder;
use crate::node::Node;
use crate::services::{BlobStore, Store};

/// Blobs whose chunk lists are resolved per call.
const BLOBS_PER_LOOKUP: usize = 512;
/// Chunk bytes fetched per call.
const WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Chunks fetched per call at most.
const WINDOW_CHUNKS: usize = 1024;
/// Windows in flight.
const WINDOWS_AHEAD: usize = 4;

/// One step of the NAR plan.
enum Planned {
    Literal(Bytes),
    Blob { digest: B3Digest, size: u64 },
}

/// One step of the output, with blobs expanded into chunks.
enum Out {
    Literal(Bytes),
    Chunk(ChunkMeta),
}

fn plan_nar(root: &Node, dirs: &HashMap<B3Digest, Directory>) -> StoreResult<Vec<Planned>> {
    let mut plan = Vec::new();
    let mut enc = NarEncoder::new();
    enc.magic();

    fn flush(enc: &mut NarEncoder, plan: &mut Vec<Planned>) {
        if !enc.is_empty() {
            plan.push(Planned::Literal(enc.take().into()));
        }
    }

    // Explicit stack: (entries of a directory, next index).
    let mut stack: Vec<(Vec<(Bytes, Node)>, usize)> = Vec::new();
    let emit = |node: &Node,
                enc: &mut NarEncoder,
                plan: &mut Vec<Planned>,
                stack: &mut Vec<(Vec<(Bytes, Node)>, usize)>|
     -> StoreResult<()> {
        match node {
            Node::File {
                digest,
                size,
                executable,
            } => {
                enc.file_header(*executable, *size);
                if *size > 0 {
                    flush(enc, plan);
                    plan.push(Planned::Blob {
                        digest: *digest,
                        size: *size,
                    });
                }
                enc.file_trailer(*size);
            }
            Node::Symlink { target } => enc.symlink(target),
            Node::Directory { digest, size } => {
                let dir = dirs
                    .get(digest)
                    .ok_or_else(|| StoreError::NotFound(format!("directory {digest}")))?;
                if dir.size() != *size {
                    return Err(StoreError::Corrupt(format!(
                        "directory {digest} has size {}, its entry says {size}",
                        dir.size()
                    )));
                }
                enc.directory_open();
                stack.push((dir.entries_sorted(), 0));
            }
        }
        Ok(())
    };

    emit(root, &mut enc, &mut plan, &mut stack)?;
    while let Some((entries, idx)) = stack.last_mut() {
        if *idx == entries.len() {
            stack.pop();
            enc.close(); // directory
            if !stack.is_empty() {
                enc.close(); // entry
            }
            continue;
        }
        let (name, node) = entries[*idx].clone();
        *idx += 1;
        enc.entry_open(&name);
        let depth = stack.len();
        emit(&node, &mut enc, &mut plan, &mut stack)?;
        if stack.len() == depth {
            enc.close(); // entry of a file or symlink
        }
    }
    flush(&mut enc, &mut plan);
    Ok(plan)
}

/// Resolves the blobs of a plan segment into chunks.
async fn expand(blobs: Arc<dyn BlobStore>, segment: Vec<Planned>) -> StoreResult<Vec<Out>> {
    let digests: Vec<B3Digest> = segment
        .iter()
        .filter_map(|p| match p {
            Planned::Blob { digest, .. } => Some(*digest),
            Planned::Literal(_) => None,
        })
        .collect();
    let lists = if digests.is_empty() {
        Vec::new()
    } else {
        blobs.get_blob_chunks(&digests).await?
    };
    let mut lists = lists.into_iter();
    let mut out = Vec::with_capacity(segment.len());
    for p in segment {
        match p {
            Planned::Literal(b) => out.push(Out::Literal(b)),
            Planned::Blob { digest, size } => {
                let list = lists
                    .next()
                    .ok_or_else(|| StoreError::Corrupt("short chunk list answer".into()))?;
                match list {
                    None => out.push(Out::Chunk(ChunkMeta { digest, size })),
                    Some(chunks) => {
                        let total: u64 = chunks.iter().map(|c| c.size).sum();
                        if total != size {
                            return Err(StoreError::Corrupt(format!(
                                "blob {digest}: chunks sum to {total} bytes, file has {size}"
                            )));
                        }
                        out.extend(chunks.into_iter().map(Out::Chunk));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Splits expanded output into fetch windows.
fn windows(outs: Vec<Out>) -> Vec<Vec<Out>> {
    let mut all = Vec::new();
    let mut cur = Vec::new();
    let (mut bytes, mut chunks) = (0u64, 0usize);
    for o in outs {
        if let Out::Chunk(c) = &o {
            bytes += c.size;
            chunks += 1;
        }
        cur.push(o);
        if bytes >= WINDOW_BYTES || chunks >= WINDOW_CHUNKS {
            all.push(std::mem::take(&mut cur));
            bytes = 0;
            chunks = 0;
        }
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
}

/// Fetches and verifies a window's chunks; returns the bytes in order.
async fn fetch_window(blobs: Arc<dyn BlobStore>, window: Vec<Out>) -> StoreResult<Vec<Bytes>> {
    let digests: Vec<B3Digest> = window
        .iter()
        .filter_map(|o| match o {
            Out::Chunk(c) => Some(c.digest),
            Out::Literal(_) => None,
        })
        .collect();
    let chunks: Vec<Chunk> = if digests.is_empty() {
        Vec::new()
    } else {
        blobs.get_chunks(&digests).await?
    };
    if chunks.len() != digests.len() {
        return Err(StoreError::Corrupt("short chunk answer".into()));
    }
    tokio::task::spawn_blocking(move || {
        let mut chunks = chunks.into_iter();
        window
            .into_iter()
            .map(|o| match o {
                Out::Literal(b) => Ok(b),
                Out::Chunk(meta) => {
                    let c = chunks.next().expect("counted");
                    if c.digest != meta.digest || c.size != meta.size {
                        return Err(StoreError::Corrupt(format!(
                            "asked for chunk {}, got {}",
                            meta.digest, c.digest
                        )));
                    }
                    c.decode_verified()
                }
            })
            .collect()
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

/// Writes the NAR of `root` to `out`; returns its size and sha256.
pub async fn render_nar<W: AsyncWrite + Unpin>(
    store: &Store,
    root: &Node,
    out: &mut W,
) -> StoreResult<(u64, [u8; 32])> {
    let dirs: HashMap<B3Digest, Directory> = match root {
        Node::Directory { digest, .. } => store
            .directories
            .get_closure(digest)
            .await?
            .into_iter()
            .map(|d| (d.digest(), d))
            .collect(),
        _ => HashMap::new(),
    };
    let plan = plan_nar(root, &dirs)?;
    drop(dirs);

    // Segment the plan so each lookup covers a batch of blobs.
    let mut segments: Vec<Vec<Planned>> = Vec::new();
    let mut cur = Vec::new();
    let mut blobs_in_cur = 0;
    for p in plan {
        if matches!(p, Planned::Blob { .. }) {
            blobs_in_cur += 1;
        }
        cur.push(p);
        if blobs_in_cur >= BLOBS_PER_LOOKUP {
            segments.push(std::mem::take(&mut cur));
            blobs_in_cur = 0;
        }
    }
    if !cur.is_empty() {
        segments.push(cur);
    }

    let blobs = store.blobs.clone();
    let blobs2 = store.blobs.clone();
    let mut pieces = stream::iter(segments)
        .map(move |seg| expand(blobs.clone(), seg))
        .buffered(2)
        .map_ok(|outs| stream::iter(windows(outs).into_iter().map(Ok::<_, StoreError>)))
        .try_flatten()
        .map_ok(move |w| fetch_window(blobs2.clone(), w))
        .try_buffered(WINDOWS_AHEAD);

    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(window) = pieces.try_next().await? {
        for b in window {
            hasher.update(&b);
            size += b.len() as u64;
            out.write_all(&b).await?;
        }
    }
    out.flush().await?;
    Ok((size, hasher.finalize().into()))
}

/// NarSize and NarHash of a node, computed by rendering into a hasher.
pub async fn calculate_nar(store: &Store, root: &Node) -> StoreResult<(u64, [u8; 32])> {
    render_nar(store, root, &mut tokio::io::sink()).await
}
