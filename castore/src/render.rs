//! Render: castore → NAR, streamed through a bounded pipeline.
//!
//! 1. the directory closure is fetched in one call;
//! 2. the NAR is planned: framing bytes interleaved with file blobs, every
//!    piece with a known length, so the NAR's size, any byte range and the
//!    `.ls` listing's offsets are known without fetching any content;
//! 3. blob chunk lists are resolved in batches (one call per batch of
//!    blobs), a few batches ahead;
//! 4. chunks are fetched in windows of a few MiB (one call per window),
//!    several windows in flight, decoded and verified on blocking threads;
//! 5. bytes are yielded in order.
//!
//! Memory stays bounded by the windows in flight, never a whole NAR or blob.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::chunk::{Chunk, ChunkMeta};
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::nix::nar::NarEncoder;
use crate::node::Node;
use crate::services::{may_have_chunk_list, BlobStore, Store};

/// Blobs whose chunk lists are resolved per call.
const BLOBS_PER_LOOKUP: usize = 512;
/// Chunk bytes fetched per call.
const WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Chunks fetched per call at most.
const WINDOW_CHUNKS: usize = 1024;
/// Windows in flight.
const WINDOWS_AHEAD: usize = 4;

/// One piece of the NAR: framing bytes, or (part of) a file's contents.
#[derive(Clone)]
enum Planned {
    Literal(Bytes),
    Blob {
        digest: B3Digest,
        /// whole file size
        size: u64,
        /// bytes of the file skipped before this piece
        skip: u64,
        /// bytes of the file in this piece
        take: u64,
    },
}

impl Planned {
    fn len(&self) -> u64 {
        match self {
            Planned::Literal(b) => b.len() as u64,
            Planned::Blob { take, .. } => *take,
        }
    }
}

/// One step of the output, with blobs expanded into (parts of) chunks.
enum Out {
    Literal(Bytes),
    Chunk {
        meta: ChunkMeta,
        skip: usize,
        take: usize,
    },
}

/// A file, symlink or directory of a NAR with its place: what the `.ls`
/// listing of a binary cache describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedNode {
    /// Path components below the root.
    pub path: Vec<Bytes>,
    /// The node.
    pub node: Node,
    /// For files: offset of the contents in the NAR.
    pub nar_offset: u64,
}

/// The layout of a NAR, computed from the directory tree alone.
pub struct NarPlan {
    items: Vec<Planned>,
    size: u64,
    listing: Vec<ListedNode>,
}

/// Fetches the directories below `root` (one call) and plans its NAR.
pub async fn plan(store: &Store, root: &Node) -> StoreResult<NarPlan> {
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
    plan_nar(root, &dirs)
}

/// An open directory while planning: its path, entries, next index.
type OpenDir = (Vec<Bytes>, Vec<(Bytes, Node)>, usize);

struct Planner<'a> {
    dirs: &'a HashMap<B3Digest, Directory>,
    enc: NarEncoder,
    items: Vec<Planned>,
    flushed: u64,
    listing: Vec<ListedNode>,
}

impl Planner<'_> {
    fn offset(&self) -> u64 {
        self.flushed + self.enc.len() as u64
    }

    fn flush(&mut self) {
        if !self.enc.is_empty() {
            let b: Bytes = self.enc.take().into();
            self.flushed += b.len() as u64;
            self.items.push(Planned::Literal(b));
        }
    }

    /// Emits a node; a directory's entries are pushed on `stack`.
    fn node(&mut self, path: Vec<Bytes>, node: &Node, stack: &mut Vec<OpenDir>) -> StoreResult<()> {
        match node {
            Node::File {
                digest,
                size,
                executable,
            } => {
                self.enc.file_header(*executable, *size);
                self.listing.push(ListedNode {
                    path,
                    node: node.clone(),
                    nar_offset: self.offset(),
                });
                if *size > 0 {
                    self.flush();
                    self.items.push(Planned::Blob {
                        digest: *digest,
                        size: *size,
                        skip: 0,
                        take: *size,
                    });
                    self.flushed += size;
                }
                self.enc.file_trailer(*size);
            }
            Node::Symlink { target } => {
                self.enc.symlink(target);
                self.listing.push(ListedNode {
                    path,
                    node: node.clone(),
                    nar_offset: 0,
                });
            }
            Node::Directory { digest, size } => {
                let dir = self
                    .dirs
                    .get(digest)
                    .ok_or_else(|| StoreError::NotFound(format!("directory {digest}")))?;
                if dir.size() != *size {
                    return Err(StoreError::Corrupt(format!(
                        "directory {digest} has size {}, its entry says {size}",
                        dir.size()
                    )));
                }
                self.enc.directory_open();
                self.listing.push(ListedNode {
                    path: path.clone(),
                    node: node.clone(),
                    nar_offset: 0,
                });
                stack.push((path, dir.entries_sorted(), 0));
            }
        }
        Ok(())
    }
}

fn plan_nar(root: &Node, dirs: &HashMap<B3Digest, Directory>) -> StoreResult<NarPlan> {
    let mut p = Planner {
        dirs,
        enc: NarEncoder::new(),
        items: Vec::new(),
        flushed: 0,
        listing: Vec::new(),
    };
    p.enc.magic();
    // Explicit stack of open directories: (path, entries, next index).
    let mut stack: Vec<OpenDir> = Vec::new();
    p.node(Vec::new(), root, &mut stack)?;
    while let Some((path, entries, idx)) = stack.last_mut() {
        if *idx == entries.len() {
            stack.pop();
            p.enc.close(); // directory
            if !stack.is_empty() {
                p.enc.close(); // entry
            }
            continue;
        }
        let (name, node) = entries[*idx].clone();
        *idx += 1;
        let mut child = path.clone();
        child.push(name.clone());
        p.enc.entry_open(&name);
        let depth = stack.len();
        p.node(child, &node, &mut stack)?;
        if stack.len() == depth {
            p.enc.close(); // entry of a file or symlink
        }
    }
    p.flush();
    Ok(NarPlan {
        size: p.flushed,
        items: p.items,
        listing: p.listing,
    })
}

impl NarPlan {
    /// Size of the whole NAR.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Approximate memory held by the plan, for cache weighing.
    pub fn weight(&self) -> u64 {
        let literals: u64 = self
            .items
            .iter()
            .map(|i| match i {
                Planned::Literal(b) => b.len() as u64,
                Planned::Blob { .. } => 0,
            })
            .sum();
        literals
            + (self.items.len() * std::mem::size_of::<Planned>()) as u64
            + (self.listing.len() * 96) as u64
    }

    /// Every node with its NAR offset, in NAR order.
    pub fn listing(&self) -> &[ListedNode] {
        &self.listing
    }

    /// The pieces covering `range` of the NAR, trimmed.
    fn slice(&self, range: Range<u64>) -> Vec<Planned> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        for item in &self.items {
            let len = item.len();
            let (start, end) = (offset, offset + len);
            offset = end;
            if end <= range.start || len == 0 {
                continue;
            }
            if start >= range.end {
                break;
            }
            let from = range.start.saturating_sub(start);
            let to = (range.end - start).min(len);
            out.push(match item {
                Planned::Literal(b) => Planned::Literal(b.slice(from as usize..to as usize)),
                Planned::Blob {
                    digest, size, skip, ..
                } => Planned::Blob {
                    digest: *digest,
                    size: *size,
                    skip: skip + from,
                    take: to - from,
                },
            });
        }
        out
    }

    /// Streams the bytes of `range` (clamped to the NAR), fetching only the
    /// chunks that cover it.
    pub fn stream(
        &self,
        blobs: Arc<dyn BlobStore>,
        range: Range<u64>,
    ) -> impl Stream<Item = StoreResult<Bytes>> + Send + 'static {
        let range = range.start.min(self.size)..range.end.min(self.size);
        let pieces = self.slice(range);
        // Segment so each lookup covers a batch of blobs.
        let mut segments: Vec<Vec<Planned>> = Vec::new();
        let mut cur = Vec::new();
        let mut blobs_in_cur = 0;
        for p in pieces {
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
        let blobs2 = blobs.clone();
        stream::iter(segments)
            .map(move |seg| expand(blobs.clone(), seg))
            .buffered(2)
            .map_ok(|outs| stream::iter(windows(outs).into_iter().map(Ok::<_, StoreError>)))
            .try_flatten()
            .map_ok(move |w| fetch_window(blobs2.clone(), w))
            .try_buffered(WINDOWS_AHEAD)
            .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok::<_, StoreError>)))
            .try_flatten()
    }
}

/// Resolves the blobs of a plan segment into (parts of) chunks.
async fn expand(blobs: Arc<dyn BlobStore>, segment: Vec<Planned>) -> StoreResult<Vec<Out>> {
    // Only blobs large enough to be several chunks are looked up.
    let digests: Vec<B3Digest> = segment
        .iter()
        .filter_map(|p| match p {
            Planned::Blob { digest, size, .. } if may_have_chunk_list(*size) => Some(*digest),
            _ => None,
        })
        .collect();
    let lists = if digests.is_empty() {
        Vec::new()
    } else {
        blobs.get_blob_chunks(&digests).await?
    };
    if lists.len() != digests.len() {
        return Err(StoreError::Corrupt("short chunk list answer".into()));
    }
    let mut lists = lists.into_iter();
    let mut out = Vec::with_capacity(segment.len());
    for p in segment {
        match p {
            Planned::Literal(b) => out.push(Out::Literal(b)),
            Planned::Blob {
                digest,
                size,
                skip,
                take,
            } => {
                let list = if may_have_chunk_list(size) {
                    lists.next().expect("counted")
                } else {
                    None
                };
                let chunks = match list {
                    None => vec![ChunkMeta { digest, size }],
                    Some(chunks) => {
                        let total: u64 = chunks.iter().map(|c| c.size).sum();
                        if total != size {
                            return Err(StoreError::Corrupt(format!(
                                "blob {digest}: chunks sum to {total} bytes, file has {size}"
                            )));
                        }
                        chunks
                    }
                };
                let (from, to) = (skip, skip + take);
                let mut offset = 0u64;
                for meta in chunks {
                    let (start, end) = (offset, offset + meta.size);
                    offset = end;
                    if end <= from {
                        continue;
                    }
                    if start >= to {
                        break;
                    }
                    let s = from.saturating_sub(start);
                    let e = (to - start).min(meta.size);
                    out.push(Out::Chunk {
                        meta,
                        skip: s as usize,
                        take: (e - s) as usize,
                    });
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
        if let Out::Chunk { meta, .. } = &o {
            bytes += meta.size;
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
            Out::Chunk { meta, .. } => Some(meta.digest),
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
                Out::Chunk { meta, skip, take } => {
                    let c = chunks.next().expect("counted");
                    if c.digest != meta.digest || c.size != meta.size {
                        return Err(StoreError::Corrupt(format!(
                            "asked for chunk {}, got {}",
                            meta.digest, c.digest
                        )));
                    }
                    Ok(c.decode_verified()?.slice(skip..skip + take))
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
    let plan = plan(store, root).await?;
    let mut pieces = std::pin::pin!(plan.stream(store.blobs.clone(), 0..plan.size()));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(b) = pieces.try_next().await? {
        hasher.update(&b);
        size += b.len() as u64;
        out.write_all(&b).await?;
    }
    out.flush().await?;
    Ok((size, hasher.finalize().into()))
}

/// NarSize and NarHash of a node, computed by rendering into a hasher.
pub async fn calculate_nar(store: &Store, root: &Node) -> StoreResult<(u64, [u8; 32])> {
    render_nar(store, root, &mut tokio::io::sink()).await
}
