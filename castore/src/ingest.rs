//! Ingest: NAR (or a single blob) → chunks, chunk lists, directories.
//!
//! File contents are chunked while they stream through; chunks are hashed,
//! deduplicated against what the store already has in batches (one
//! `missing_chunks` call per batch, never per chunk), compressed into frames
//! on blocking threads (in parallel with hashing and I/O) and uploaded with a
//! bounded number of batches in flight; each batch becomes one pack.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{FutureExt, Shared};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::chunker::{Chunker, DEFAULT_PARAMS};
use crate::digest::B3Digest;
use crate::directory::{Directory, DirectoryBuilder};
use crate::error::{StoreError, StoreResult};
use crate::frame::{
    group_into_frames, Frame, FrameGroup, DEFAULT_TARGETS, SHARED_GROUP, SMALL_FILE,
};
use crate::nix::nar::{hashing_reader, read_nar, NarError, NarVisitor};
use crate::node::Node;
use crate::store::{BlobChunks, BlobStore, Store};

/// Raw bytes gathered before a batch is checked and uploaded (one pack).
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Chunks gathered before a batch is checked and uploaded.
const BATCH_CHUNKS: usize = 2048;
/// Batches uploading at once (bounds memory to about this × BATCH_BYTES).
const MAX_IN_FLIGHT: usize = 4;
/// Chunk lists registered per call.
const LIST_BATCH: usize = 256;
/// Calls registering chunk lists at once (each waits for its batches
/// first): a server slower to check lists than to take chunks slows the
/// upload instead of piling up calls.
const MAX_LISTS_IN_FLIGHT: usize = 4;
/// Bytes of blobs whose chunk lists are registered together: soon after
/// their chunks arrive, so the server checks them from the chunks it just
/// received instead of reading them back.
const LIST_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Why an ingest failed. Nothing is recorded as a PathInfo by ingest; a
/// failed ingest leaves at most unreferenced chunks behind.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The NAR is malformed or truncated.
    #[error(transparent)]
    Nar(NarError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<NarError> for IngestError {
    fn from(e: NarError) -> Self {
        match e {
            NarError::Visitor(inner) => match inner.downcast::<StoreError>() {
                Ok(s) => IngestError::Store(*s),
                Err(other) => IngestError::Nar(NarError::Visitor(other)),
            },
            e => IngestError::Nar(e),
        }
    }
}

/// Transfer counters, shared by every ingest of one session (e.g. a push).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Chunks produced by the chunker.
    pub chunks: u64,
    /// Their raw bytes.
    pub chunk_bytes: u64,
    /// Chunks actually sent to the store (it lacked them).
    pub chunks_sent: u64,
    /// Raw bytes of those chunks.
    pub raw_bytes_sent: u64,
    /// Frame bytes sent (compressed).
    pub bytes_sent: u64,
}

/// Resolves (`Ok`) once one batch's chunks are stored; `Err` when that
/// batch failed (its own task reports why).
type BatchStored = Shared<oneshot::Receiver<()>>;

/// The outcome of an upload task (a task that panicked or was cancelled
/// is an I/O error).
fn joined(res: Result<StoreResult<()>, tokio::task::JoinError>) -> StoreResult<()> {
    res.map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

/// Digests known to be stored already, shared across the ingests of one
/// session so a chunk is checked and sent at most once.
pub type KnownChunks = Arc<Mutex<HashSet<B3Digest>>>;

/// Batches chunks and chunk lists into a [`BlobStore`].
pub struct ChunkUploader {
    blobs: Arc<dyn BlobStore>,
    known: KnownChunks,
    stats: Arc<Mutex<TransferStats>>,
    pending: Vec<(Chunk, FrameGroup)>,
    pending_bytes: u64,
    last_group: FrameGroup,
    pending_lists: Vec<BlobChunks>,
    pending_list_bytes: u64,
    /// Chunk batches being checked and uploaded.
    in_flight: FuturesUnordered<JoinHandle<StoreResult<()>>>,
    /// Batches sent and not yet seen stored: what the next chunk lists
    /// wait for.
    unsettled: Vec<BatchStored>,
    /// Chunk lists waiting for their batches, then being registered.
    lists_in_flight: FuturesUnordered<JoinHandle<StoreResult<()>>>,
}

impl ChunkUploader {
    /// An uploader into `blobs`, sharing `known` and `stats` with others of
    /// the same session.
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        known: KnownChunks,
        stats: Arc<Mutex<TransferStats>>,
    ) -> Self {
        Self {
            blobs,
            known,
            stats,
            pending: Vec::new(),
            pending_bytes: 0,
            last_group: SHARED_GROUP,
            pending_lists: Vec::new(),
            pending_list_bytes: 0,
            in_flight: FuturesUnordered::new(),
            unsettled: Vec::new(),
            lists_in_flight: FuturesUnordered::new(),
        }
    }

    /// The frame group for the chunks of a file of `size` bytes (`None`:
    /// unknown, treated as large): small files share frames, each large
    /// file gets its own.
    pub fn file_group(&mut self, size: Option<u64>) -> FrameGroup {
        match size {
            Some(s) if s <= SMALL_FILE => SHARED_GROUP,
            _ => {
                self.last_group += 1;
                self.last_group
            }
        }
    }

    /// Queues one chunk of frame group `group` (skipped if known stored).
    pub async fn add_chunk(&mut self, chunk: Chunk, group: FrameGroup) -> StoreResult<()> {
        {
            let mut s = self.stats.lock().expect("stats");
            s.chunks += 1;
            s.chunk_bytes += chunk.size;
        }
        if !self.known.lock().expect("known").insert(chunk.digest) {
            return Ok(());
        }
        self.pending_bytes += chunk.size;
        self.pending.push((chunk, group));
        if self.pending_bytes >= BATCH_BYTES || self.pending.len() >= BATCH_CHUNKS {
            self.send_batch().await?;
        }
        Ok(())
    }

    /// Queues a chunk list, registered once its chunks are stored.
    pub async fn add_blob_list(&mut self, list: BlobChunks) -> StoreResult<()> {
        self.pending_list_bytes += list.chunks.iter().map(|c| c.size).sum::<u64>();
        self.pending_lists.push(list);
        if self.pending_lists.len() >= LIST_BATCH || self.pending_list_bytes >= LIST_BATCH_BYTES {
            self.register_lists().await?;
        }
        Ok(())
    }

    /// Registers the queued chunk lists once the batches holding their
    /// chunks (those sent so far) are stored. Nothing waits here: chunking
    /// and later batches go on meanwhile, so neither side idles while the
    /// other catches up ([`ChunkUploader::flush`] waits for everything).
    async fn register_lists(&mut self) -> StoreResult<()> {
        self.send_batch().await?;
        let lists = std::mem::take(&mut self.pending_lists);
        self.pending_list_bytes = 0;
        if lists.is_empty() {
            return Ok(());
        }
        self.unsettled.retain(|b| !matches!(b.peek(), Some(Ok(()))));
        let batches = self.unsettled.clone();
        let blobs = self.blobs.clone();
        self.lists_in_flight.push(tokio::spawn(async move {
            for stored in batches {
                if stored.await.is_err() {
                    // That batch failed and reports why: a list of
                    // chunks not stored is not sent.
                    return Ok(());
                }
            }
            blobs.put_blob_chunks(lists).await
        }));
        // Lists refused show here, not only once the whole NAR is sent.
        while let Some(Some(done)) = self.lists_in_flight.next().now_or_never() {
            joined(done)?;
        }
        while self.lists_in_flight.len() > MAX_LISTS_IN_FLIGHT {
            if let Some(done) = self.lists_in_flight.next().await {
                joined(done)?;
            }
        }
        Ok(())
    }

    async fn send_batch(&mut self) -> StoreResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        // Batches upload at once and land in any order: numbered here, in
        // the file's order, for compaction (see
        // BlobStore::put_frames_ordered).
        let order = crate::store::next_upload_order();
        let blobs = self.blobs.clone();
        let stats = self.stats.clone();
        let (stored, stored_rx) = oneshot::channel();
        self.unsettled.push(stored_rx.shared());
        self.in_flight.push(tokio::spawn(async move {
            let digests: Vec<B3Digest> = batch.iter().map(|(c, _)| c.digest).collect();
            let missing: HashSet<B3Digest> =
                blobs.missing_chunks(&digests).await?.into_iter().collect();
            let to_send: Vec<(ChunkMeta, Bytes, FrameGroup)> = batch
                .into_iter()
                .filter(|(c, _)| missing.contains(&c.digest))
                .map(|(c, group)| {
                    let meta = ChunkMeta {
                        digest: c.digest,
                        size: c.size,
                    };
                    let bytes = match c.payload {
                        ChunkPayload::Raw(b) | ChunkPayload::Verified(b) => b,
                    };
                    (meta, bytes, group)
                })
                .collect();
            if to_send.is_empty() {
                let _ = stored.send(());
                return Ok(());
            }
            let frames = tokio::task::spawn_blocking(move || {
                group_into_frames(to_send, DEFAULT_TARGETS)
                    .iter()
                    .map(|f| Frame::compress(f))
                    .collect::<StoreResult<Vec<_>>>()
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
            let (n, raw, sent) = frames.iter().fold((0, 0, 0), |(n, r, s), f| {
                (
                    n + f.chunks.len() as u64,
                    r + f.raw_size(),
                    s + f.data.len() as u64,
                )
            });
            blobs.put_frames_ordered(frames, order).await?;
            let _ = stored.send(());
            let mut s = stats.lock().expect("stats");
            s.chunks_sent += n;
            s.raw_bytes_sent += raw;
            s.bytes_sent += sent;
            Ok(())
        }));
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.next_done().await?;
        }
        Ok(())
    }

    async fn next_done(&mut self) -> StoreResult<()> {
        if let Some(res) = self.in_flight.next().await {
            joined(res)?;
        }
        Ok(())
    }

    /// Sends everything queued and waits until it is stored.
    pub async fn flush(&mut self) -> StoreResult<()> {
        self.register_lists().await?;
        while !self.in_flight.is_empty() {
            self.next_done().await?;
        }
        while let Some(res) = self.lists_in_flight.next().await {
            joined(res)?;
        }
        self.unsettled.clear();
        Ok(())
    }
}

/// Chunks one stream of contents (of `size_hint` bytes, if known) into the
/// uploader; returns the blob's digest and size.
pub async fn ingest_contents<R: AsyncRead + Unpin + ?Sized>(
    up: &mut ChunkUploader,
    chunker: &mut Chunker,
    contents: &mut R,
    size_hint: Option<u64>,
) -> StoreResult<(B3Digest, u64)> {
    let group = up.file_group(size_hint);
    // A one-chunk blob's digest is its chunk's digest: hash the contents a
    // second time only once a second chunk shows the blob has several.
    let mut hasher: Option<blake3::Hasher> = None;
    let mut first: Option<Bytes> = None;
    let mut metas = Vec::new();
    let mut size = 0u64;
    while let Some(data) = chunker.next_chunk(contents).await? {
        match (&mut hasher, first.take()) {
            (Some(h), _) => {
                h.update(&data);
            }
            (None, None) => first = Some(data.clone()),
            (None, Some(prev)) => {
                let mut h = blake3::Hasher::new();
                h.update(&prev);
                h.update(&data);
                hasher = Some(h);
            }
        }
        size += data.len() as u64;
        let chunk = Chunk::from_raw(data);
        metas.push(ChunkMeta {
            digest: chunk.digest,
            size: chunk.size,
        });
        up.add_chunk(chunk, group).await?;
    }
    let blob = match (hasher, metas.first()) {
        (Some(h), _) => B3Digest::from(h.finalize()),
        (None, Some(only)) => only.digest,
        (None, None) => B3Digest::of(b""),
    };
    if metas.len() > 1 {
        up.add_blob_list(BlobChunks {
            blob,
            chunks: metas,
        })
        .await?;
    }
    Ok((blob, size))
}

/// Builds castore nodes from NAR events.
struct NarIngester<'a> {
    up: &'a mut ChunkUploader,
    chunker: Chunker,
    open: Vec<(Bytes, DirectoryBuilder)>,
    finished_dirs: Vec<Directory>,
    root: Option<Node>,
}

fn visitor_err(e: StoreError) -> NarError {
    NarError::Visitor(Box::new(e))
}

impl NarIngester<'_> {
    fn attach(&mut self, name: &[u8], node: Node) {
        match self.open.last_mut() {
            Some((_, b)) => b.add(Bytes::copy_from_slice(name), node),
            None => self.root = Some(node),
        }
    }
}

#[async_trait]
impl NarVisitor for NarIngester<'_> {
    async fn enter_directory(&mut self, name: &[u8]) -> Result<(), NarError> {
        self.open
            .push((Bytes::copy_from_slice(name), DirectoryBuilder::default()));
        Ok(())
    }

    async fn leave_directory(&mut self) -> Result<(), NarError> {
        let (name, builder) = self.open.pop().expect("reader balances directories");
        let dir = builder.build().map_err(visitor_err)?;
        let node = Node::Directory {
            digest: dir.digest(),
            size: dir.size(),
        };
        self.finished_dirs.push(dir);
        self.attach(&name, node);
        Ok(())
    }

    async fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), NarError> {
        self.attach(
            name,
            Node::Symlink {
                target: Bytes::copy_from_slice(target),
            },
        );
        Ok(())
    }

    async fn file(
        &mut self,
        name: &[u8],
        executable: bool,
        size: u64,
        contents: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), NarError> {
        let (digest, read) = ingest_contents(self.up, &mut self.chunker, contents, Some(size))
            .await
            .map_err(|e| match e {
                StoreError::Io(io) => NarError::from(io),
                e => visitor_err(e),
            })?;
        if read != size {
            return Err(NarError::Truncated);
        }
        self.attach(
            name,
            Node::File {
                digest,
                size,
                executable,
            },
        );
        Ok(())
    }
}

/// What a NAR ingest produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedNar {
    /// The root node (stored with everything below it).
    pub node: Node,
    /// sha256 of the NAR.
    pub nar_sha256: [u8; 32],
    /// Size of the NAR.
    pub nar_size: u64,
}

/// Reads a NAR from `input` into `store`: chunks via `up`, then the
/// directory closure. Records no PathInfo (the caller does, after checking
/// the NAR hash), so a rejected NAR leaves nothing visible.
pub async fn ingest_nar<R: AsyncRead + Unpin + Send>(
    store: &Store,
    up: &mut ChunkUploader,
    input: R,
) -> Result<IngestedNar, IngestError> {
    let (reader, hash) = hashing_reader(input);
    let mut v = NarIngester {
        up,
        chunker: Chunker::new(DEFAULT_PARAMS),
        open: Vec::new(),
        finished_dirs: Vec::new(),
        root: None,
    };
    read_nar(reader, &mut v).await?;
    let root = v.root.take().expect("a parsed NAR has a root");
    let dirs = std::mem::take(&mut v.finished_dirs);
    up.flush().await?;
    if !dirs.is_empty() {
        store.directories.put_closure(dirs).await?;
    }
    let (nar_sha256, nar_size) = hash.finish();
    Ok(IngestedNar {
        node: root,
        nar_sha256,
        nar_size,
    })
}
