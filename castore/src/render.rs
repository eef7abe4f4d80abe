//! Render: castore → NAR, streamed through a bounded pipeline.
//!
//! 1. the directory closure is fetched in one call (beside it the store's
//!    own chunk-list manifest, if it keeps one: see [`crate::read::proved`]);
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
use futures::future::Either;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::chunk::{Chunk, ChunkMeta};
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::limits::{over_limit, MAX_DEPTH, MAX_NAR_SIZE, MAX_NODES};
use crate::nix::nar::NarEncoder;
use crate::node::Node;
use crate::read::{proved, BlobLayout};
use crate::store::{BlobStore, Store};
use crate::trust::ChunkListsDigest;

/// Blobs whose chunk lists are resolved per call.
const BLOBS_PER_LOOKUP: usize = 512;
/// Chunks fetched per call at most.
const WINDOW_CHUNKS: usize = 1024;

/// How a NAR's chunks are fetched: chunk bytes per call and calls in
/// flight. Memory per NAR streamed is about `bytes * ahead` of chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Chunk bytes (decoded) fetched per call.
    pub bytes: u64,
    /// Calls in flight.
    pub ahead: usize,
}

impl Windows {
    /// From a store on this machine (a server rendering from its own
    /// store): small windows, little memory per download.
    pub const LOCAL: Windows = Windows {
        bytes: 4 * 1024 * 1024,
        ahead: 4,
    };
    /// From a store across a network (the proxy): calls in flight at once
    /// each get whole frames, so a frame holding chunks of two windows
    /// comes twice; twice the window, half those frames; more calls in
    /// flight keep a slow link busy where small files make calls short
    /// (up to 64 MiB of chunks per NAR streamed). Measured with
    /// `bench/proxy.sh` (the stable toolchain, 20 ms, 100 Mbit/s, frames
    /// fetched / time): 4 MiB x 4 246.5 MiB / 30.4 s, 8 MiB x 4 227.2 MiB /
    /// 29.2–29.4 s, 8 MiB x 8 230.1 MiB / 28.5–28.6 s.
    pub const OVER_A_LINK: Windows = Windows {
        bytes: 8 * 1024 * 1024,
        ahead: 8,
    };
}

impl Default for Windows {
    fn default() -> Self {
        Self::LOCAL
    }
}

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
        /// The file whose chunk list named it.
        blob: B3Digest,
        meta: ChunkMeta,
        skip: usize,
        take: usize,
        /// Set on the chunks of a file streamed whole from a chunk list
        /// not yet seen to hash to the file's digest.
        whole: Option<WholeFile>,
    },
}

/// Where a chunk stands in a file whose chunk list is being proved: the
/// file's bytes are hashed as they stream and compared with its digest
/// after the last chunk, so a reordered list of genuine chunks (which
/// passes every per-chunk check) breaks the stream instead of yielding a
/// wrong file.
#[derive(Clone, Copy)]
struct WholeFile {
    digest: B3Digest,
    /// The file and its list: remembered once proved.
    list: proved::ProvedKey,
    first: bool,
    last: bool,
}

/// The proof in progress of one output stream (files come one at a time).
#[derive(Default)]
struct Proof {
    hasher: Option<blake3::Hasher>,
}

impl Proof {
    /// Adds a piece; an error says which file's chunk list is to blame,
    /// if one is.
    fn piece(
        &mut self,
        bytes: &Bytes,
        whole: Option<WholeFile>,
    ) -> Result<(), (StoreError, Option<B3Digest>)> {
        let Some(w) = whole else {
            return Ok(());
        };
        if w.first {
            self.hasher = Some(blake3::Hasher::new());
        }
        let Some(h) = self.hasher.as_mut() else {
            return Err((
                StoreError::Corrupt(format!("blob {}: proof out of order", w.digest)),
                None,
            ));
        };
        h.update(bytes);
        if w.last {
            let got = B3Digest::from(*h.finalize().as_bytes());
            self.hasher = None;
            if got != w.digest {
                return Err((
                    StoreError::Corrupt(format!(
                        "blob {}: its chunks hash to {got}: the chunk list is wrong",
                        w.digest
                    )),
                    Some(w.digest),
                ));
            }
            proved::note(w.list);
        }
        Ok(())
    }
}

/// A file, symlink or directory of a NAR with its place: what the `.ls`
/// listing of a binary cache describes. Nodes name their parent (an index
/// into the listing) instead of carrying their whole path, so a listing
/// costs the same per node at any depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedNode {
    /// Index of the parent directory in the listing; `None` for the root.
    pub parent: Option<usize>,
    /// Name in the parent directory (empty for the root).
    pub name: Bytes,
    /// Nesting below the root (0 for the root).
    pub depth: usize,
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
    /// The store's own manifest of the root: lists it names are streamed
    /// without hashing their files ([`proved`]).
    own_manifest: Option<Arc<ChunkListsDigest>>,
}

/// Fetches the directories below `root` (one call) and plans its NAR.
pub async fn plan(store: &Store, root: &Node) -> StoreResult<NarPlan> {
    // Plans (with their closures) are built a bounded number of nodes at a time (a plan costs
    // memory by its nodes, and the root's size tells how many up front),
    // on a blocking thread (planning a large tree is CPU work).
    let nodes = match root {
        Node::Directory { size, .. } if *size > crate::limits::MAX_DIRECTORY_SIZE => {
            return Err(over_limit(
                &format!("a tree of size {size}"),
                format!("{MAX_NODES} nodes"),
            ))
        }
        Node::Directory { size, .. } => (size / 2).clamp(1, MAX_NODES),
        _ => 1,
    };
    let _permit = planning_slots()
        .acquire_many(nodes as u32)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let (dirs, own_manifest): (HashMap<B3Digest, Directory>, _) = match root {
        Node::Directory { digest, .. } => {
            // The store's own manifest, where it keeps one, spares hashing
            // the files of lists it names when they are streamed; without
            // it (none, an error, too slow) they are hashed instead.
            let (closure, own) = tokio::join!(
                store.directories.get_closure(digest),
                tokio::time::timeout(
                    OWN_MANIFEST_WAIT,
                    store.blobs.own_chunk_list_digests(digest)
                )
            );
            let own = match own {
                Ok(Ok(own)) => own.map(Arc::new),
                Ok(Err(e)) => {
                    tracing::debug!(root = %digest, error = %e, "no own manifest");
                    None
                }
                Err(_) => None,
            };
            (closure?.into_iter().map(|d| (d.digest(), d)).collect(), own)
        }
        _ => (HashMap::new(), None),
    };
    let root = root.clone();
    let mut plan = tokio::task::spawn_blocking(move || plan_nar(&root, &dirs))
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
    plan.own_manifest = own_manifest;
    Ok(plan)
}

/// How long a plan waits for the store's own manifest (one small read,
/// beside the closure's): past it, the files are hashed instead.
const OWN_MANIFEST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Nodes of NAR plans being built at once in this process: two plans of
/// the largest tree allowed, or many small ones.
fn planning_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(2 * MAX_NODES as usize);
    &SLOTS
}

/// An open directory while planning: its listing index, entries, next
/// index.
type OpenDir = (usize, Vec<(Bytes, Node)>, usize);

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

    /// Emits a node below `parent`; a directory's entries are pushed on
    /// `stack`. Every limit of [`crate::limits`] is checked here, so a tree
    /// stored before the limits (or damaged) is refused, never expanded.
    fn node(
        &mut self,
        parent: Option<usize>,
        name: Bytes,
        node: &Node,
        stack: &mut Vec<OpenDir>,
    ) -> StoreResult<()> {
        if self.listing.len() as u64 > MAX_NODES {
            return Err(over_limit("a tree", format!("{MAX_NODES} nodes")));
        }
        let depth = parent.map_or(0, |p| self.listing[p].depth + 1);
        if depth > MAX_DEPTH {
            return Err(over_limit("a tree", format!("{MAX_DEPTH} levels")));
        }
        let me = self.listing.len();
        match node {
            Node::File {
                digest,
                size,
                executable,
            } => {
                if self.offset().saturating_add(*size) > MAX_NAR_SIZE {
                    return Err(over_limit("a NAR", format!("{MAX_NAR_SIZE} bytes")));
                }
                self.enc.file_header(*executable, *size);
                self.listing.push(ListedNode {
                    parent,
                    name,
                    depth,
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
                    parent,
                    name,
                    depth,
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
                    parent,
                    name,
                    depth,
                    node: node.clone(),
                    nar_offset: 0,
                });
                stack.push((me, dir.entries_sorted(), 0));
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
    // Explicit stack of open directories: (listing index, entries, next).
    let mut stack: Vec<OpenDir> = Vec::new();
    p.node(None, Bytes::new(), root, &mut stack)?;
    while let Some((me, entries, idx)) = stack.last_mut() {
        if *idx == entries.len() {
            stack.pop();
            p.enc.close(); // directory
            if !stack.is_empty() {
                p.enc.close(); // entry
            }
            continue;
        }
        let parent = Some(*me);
        let (name, node) = entries[*idx].clone();
        *idx += 1;
        p.enc.entry_open(&name);
        let depth = stack.len();
        p.node(parent, name, &node, &mut stack)?;
        if stack.len() == depth {
            p.enc.close(); // entry of a file or symlink
        }
    }
    p.flush();
    Ok(NarPlan {
        size: p.flushed,
        items: p.items,
        listing: p.listing,
        own_manifest: None,
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
        // A manifest record: two digests and a tree node's share.
        let manifest = self
            .own_manifest
            .as_ref()
            .map_or(0, |m| m.lists.len() as u64 * 96);
        literals
            + (self.items.len() * std::mem::size_of::<Planned>()) as u64
            + (self.listing.len() * std::mem::size_of::<ListedNode>()) as u64
            + manifest
    }

    /// The store's own manifest of the root, if it keeps one: the lists it
    /// names are streamed without hashing their files ([`proved`]).
    pub fn own_manifest(&self) -> Option<&ChunkListsDigest> {
        self.own_manifest.as_deref()
    }

    /// Every node with its NAR offset, in NAR order (a parent before its
    /// entries, entries in name order).
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
    /// chunks that cover it ([`Windows::LOCAL`]).
    pub fn stream(
        &self,
        blobs: Arc<dyn BlobStore>,
        range: Range<u64>,
    ) -> impl Stream<Item = StoreResult<Bytes>> + Send + 'static {
        self.stream_with(blobs, range, Windows::LOCAL)
    }

    /// [`Plan::stream`], fetching in `windows`.
    pub fn stream_with(
        &self,
        blobs: Arc<dyn BlobStore>,
        range: Range<u64>,
        windows: Windows,
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
        let blobs3 = blobs.clone();
        let own = self.own_manifest.clone();
        stream::iter(segments)
            .map(move |seg| expand(blobs.clone(), own.clone(), seg))
            .buffered(2)
            .map_ok(move |outs| {
                stream::iter(
                    split_windows(outs, windows.bytes)
                        .into_iter()
                        .map(Ok::<_, StoreError>),
                )
            })
            .try_flatten()
            .map_ok(move |w| fetch_window(blobs2.clone(), w))
            .try_buffered(windows.ahead.max(1))
            .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok::<_, StoreError>)))
            .try_flatten()
            .scan((Proof::default(), false), move |state, piece| {
                let (proof, failed) = state;
                // Nothing follows an error.
                if *failed {
                    return Either::Left(futures::future::ready(None));
                }
                let (out, refused) = match piece {
                    Err(e) => (Err(e), None),
                    Ok((bytes, whole)) => match proof.piece(&bytes, whole) {
                        Ok(()) => (Ok(bytes), None),
                        Err((e, refused)) => (Err(e), refused),
                    },
                };
                *failed = out.is_err();
                match refused {
                    None => Either::Left(futures::future::ready(Some(out))),
                    Some(blob) => {
                        let blobs = blobs3.clone();
                        Either::Right(async move {
                            blobs.refuse_chunk_list(&blob).await;
                            Some(out)
                        })
                    }
                }
            })
    }
}

/// Resolves the blobs of a plan segment into (parts of) chunks.
async fn expand(
    blobs: Arc<dyn BlobStore>,
    own_manifest: Option<Arc<ChunkListsDigest>>,
    segment: Vec<Planned>,
) -> StoreResult<Vec<Out>> {
    // Only blobs large enough to be several chunks are looked up.
    let digests: Vec<B3Digest> = segment
        .iter()
        .filter_map(|p| match p {
            Planned::Blob { digest, size, .. } if BlobLayout::needs_lookup(*size) => Some(*digest),
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
                let answer = if BlobLayout::needs_lookup(size) {
                    lists.next().flatten()
                } else {
                    None
                };
                let layout =
                    BlobLayout::from_store_answer(blobs.as_ref(), digest, size, answer).await?;
                // A file streamed whole from a list not yet proved is
                // hashed on its way out.
                let proving = (layout.chunks().len() > 1 && skip == 0 && take == size)
                    .then(|| proved::key(digest, layout.chunks()))
                    .filter(|l| !proved::is_proved(l, own_manifest.as_deref()));
                let count = layout.chunks().len();
                for (i, piece) in layout.pieces(skip, skip + take).into_iter().enumerate() {
                    out.push(Out::Chunk {
                        blob: digest,
                        meta: piece.chunk,
                        skip: piece.skip,
                        take: piece.take,
                        whole: proving.map(|list| WholeFile {
                            digest,
                            list,
                            first: i == 0,
                            last: i + 1 == count,
                        }),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Splits expanded output into fetch windows of `window_bytes`.
fn split_windows(outs: Vec<Out>, window_bytes: u64) -> Vec<Vec<Out>> {
    let mut all = Vec::new();
    let mut cur = Vec::new();
    let (mut bytes, mut chunks) = (0u64, 0usize);
    for o in outs {
        if let Out::Chunk { meta, .. } = &o {
            bytes += meta.size;
            chunks += 1;
        }
        cur.push(o);
        if bytes >= window_bytes || chunks >= WINDOW_CHUNKS {
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

/// Fetches and verifies a window's chunks; returns the bytes in order,
/// each with its place in a file being proved.
async fn fetch_window(
    blobs: Arc<dyn BlobStore>,
    window: Vec<Out>,
) -> StoreResult<Vec<(Bytes, Option<WholeFile>)>> {
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
    // An error names the file whose chunk list is to blame, if one is.
    let decoded = tokio::task::spawn_blocking(move || {
        let mut chunks = chunks.into_iter();
        window
            .into_iter()
            .map(|o| match o {
                Out::Literal(b) => Ok((b, None)),
                Out::Chunk {
                    blob,
                    meta,
                    skip,
                    take,
                    whole,
                } => {
                    let c = chunks.next().expect("counted");
                    if c.digest != meta.digest {
                        return Err((
                            StoreError::Corrupt(format!(
                                "asked for chunk {}, got {}",
                                meta.digest, c.digest
                            )),
                            None,
                        ));
                    }
                    let bytes = c.decode_verified().map_err(|e| (e, None))?;
                    // The chunk is genuine: a size other than the list's is
                    // the list's lie.
                    if c.size != meta.size || bytes.len() < skip + take {
                        return Err((
                            StoreError::Corrupt(format!(
                                "blob {blob}: chunk {} has {} bytes, its list says {}",
                                meta.digest,
                                bytes.len(),
                                meta.size
                            )),
                            Some(blob),
                        ));
                    }
                    Ok((bytes.slice(skip..skip + take), whole))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    match decoded {
        Ok(pieces) => Ok(pieces),
        Err((e, blamed)) => {
            if let Some(blob) = blamed {
                blobs.refuse_chunk_list(&blob).await;
            }
            Err(e)
        }
    }
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
