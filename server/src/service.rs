//! The gRPC services over a castore [`Store`]: snix-compatible blob,
//! directory and PathInfo services, plus the batched `lazix.v1` chunk
//! service.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, TryStreamExt};
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::chunker::{Chunker, DEFAULT_PARAMS};
use lazix_castore::directory::Directory;
use lazix_castore::frame::Frame;
use lazix_castore::ingest::{ingest_contents, ChunkUploader, KnownChunks, TransferStats};
use lazix_castore::limits::{over_limit, MAX_CLOSURE_BYTES, MAX_NODES};
use lazix_castore::read::exact::exact_frames;
use lazix_castore::read::slices::CoveredSlices;
use lazix_castore::read::trusted::root_manifest;
use lazix_castore::read::BlobLayout;
use lazix_castore::store::{upload_part, BlobChunks};
use lazix_castore::trust::ChunkListsDigest;
use lazix_castore::{B3Digest, Node, PathInfo, Store, StoreError};
use lazix_proto::castore::{self as cpb, blob_service_server, directory_service_server};
use lazix_proto::ext::{
    self as lpb, catalog_service_server, chunk_service_server, profile_service_server,
};
use lazix_proto::store::{self as spb, path_info_service_server};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{bearer, Denied, Tokens};
use crate::convert::{digest, group_by_size, to_status, MAX_BATCH};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Frame bytes of one PutChunks call stored as one pack at most.
const PACK_LIMIT: u64 = 64 * 1024 * 1024;

/// ReadChunks fetches this many chunks at a time, so the first message
/// leaves early.
const READ_CHUNKS_SLICE: usize = 64;
/// Manifest records per GetChunkListDigests message (1 MiB).
const MANIFEST_RECORDS_PER_MESSAGE: usize = 16 * 1024;

/// Raw bytes the frames of one PutChunks call may claim in all (clients
/// send batches of a few MiB). Together with frames decoded one at a time,
/// it bounds what one call costs however well its frames compress.
pub const PUT_CHUNKS_RAW_BUDGET: u64 = 256 * 1024 * 1024;

/// Distinct chunks one PutChunks call may carry (clients send at most 2048
/// per batch): bounds the chunk lists held, however small the chunks.
pub const PUT_CHUNKS_MAX_CHUNKS: usize = 1 << 18;

/// Who may call the services (see [`crate::auth`]).
#[derive(Clone, Debug)]
pub struct GrpcAccess {
    /// The server's tokens.
    pub tokens: Tokens,
    /// Whether writes are taken without an upload token (only on a
    /// loopback listener).
    pub tokenless_writes: bool,
}

impl GrpcAccess {
    /// What `listener` allows with `tokens`: writes without an upload
    /// token only on loopback or a Unix socket (whose file's permissions
    /// decide who connects).
    pub fn for_listener(tokens: Tokens, listener: &crate::listen::Listener) -> Self {
        Self {
            tokens,
            tokenless_writes: listener.is_local(),
        }
    }
}

/// Implements every service over one store.
#[derive(Clone)]
pub struct StoreService {
    store: Store,
    access: Arc<GrpcAccess>,
}

impl StoreService {
    /// Serves `store` to anyone (as on loopback without tokens).
    pub fn new(store: Store) -> Self {
        Self::with_access(
            store,
            GrpcAccess {
                tokens: Tokens::default(),
                tokenless_writes: true,
            },
        )
    }

    /// Serves `store` to those `access` admits.
    pub fn with_access(store: Store, access: GrpcAccess) -> Self {
        Self {
            store,
            access: Arc::new(access),
        }
    }

    /// `Unauthenticated` unless reads are public or the call presents the
    /// read (or upload) token.
    fn allow_read<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.access
            .tokens
            .check_read(presented(req))
            .map_err(refusal)
    }

    /// `Unauthenticated` without the upload token; `PermissionDenied` if
    /// this listener takes no writes without one. Checked before any of the
    /// call's messages is read.
    fn allow_write<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.access
            .tokens
            .check_write(presented(req), self.access.tokenless_writes)
            .map_err(refusal)
    }
}

/// The token of a call's `authorization: Bearer TOKEN` metadata.
fn presented<T>(req: &Request<T>) -> Option<&[u8]> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

fn refusal(denied: Denied) -> Status {
    match denied {
        Denied::Unauthorized => Status::unauthenticated(
            "a valid token is required (lazix clients: --token-file FILE or LAZIX_TOKEN)",
        ),
        Denied::UploadsDisabled => Status::permission_denied(
            "writes are disabled: this server listens beyond loopback without --upload-token-file",
        ),
    }
}

fn digests(list: &[bytes::Bytes]) -> Result<Vec<B3Digest>, Status> {
    if list.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_BATCH} digests per request"
        )));
    }
    list.iter().map(digest).collect()
}

/// A blob's layout, asked by digest alone (snix's blob service names no
/// size): its chunk list, or itself as one chunk whose size its frame
/// knows (nothing to decompress); checked like every reader checks it.
/// `quick_miss`: a blob not in the store's table now is `NotFound` at
/// once, without waiting for the store to look for packs other replicas
/// wrote since (a `Stat`, which clients ask of many chunks in a row; a
/// `Read` waits, since its caller expects the blob to be there).
async fn blob_layout(
    store: &Store,
    blob: B3Digest,
    quick_miss: bool,
) -> Result<BlobLayout, Status> {
    // Every store has the empty blob (nothing is stored for it).
    if blob == B3Digest::of(b"") {
        return BlobLayout::from_answer(blob, 0, None).map_err(to_status);
    }
    let list = store
        .blobs
        .get_blob_chunks(&[blob])
        .await
        .map_err(to_status)?
        .pop()
        .flatten();
    let size = match &list {
        Some(l) => l.iter().fold(0u64, |sum, c| sum.saturating_add(c.size)),
        None => {
            if quick_miss
                && !store
                    .blobs
                    .missing_chunks(&[blob])
                    .await
                    .map_err(to_status)?
                    .is_empty()
            {
                return Err(Status::not_found(format!("blob {blob}")));
            }
            let frames = store.blobs.get_frames(&[blob]).await.map_err(|e| match e {
                StoreError::NotFound(_) => Status::not_found(format!("blob {blob}")),
                e => to_status(e),
            })?;
            frames
                .iter()
                .flat_map(|f| f.chunks.iter())
                .find(|c| c.digest == blob)
                .map(|c| c.size)
                .ok_or_else(|| Status::data_loss(format!("blob {blob}: frame lacks it")))?
        }
    };
    BlobLayout::from_store_answer(store.blobs.as_ref(), blob, size, list)
        .await
        .map_err(to_status)
}

#[tonic::async_trait]
impl blob_service_server::BlobService for StoreService {
    async fn stat(
        &self,
        req: Request<cpb::StatBlobRequest>,
    ) -> Result<Response<cpb::StatBlobResponse>, Status> {
        self.allow_read(&req)?;
        let req = req.into_inner();
        let blob = digest(&req.digest)?;
        let layout = blob_layout(&self.store, blob, true).await?;
        let chunks = if req.send_chunks && layout.chunks().len() > 1 {
            layout
                .chunks()
                .iter()
                .map(|c| cpb::stat_blob_response::ChunkMeta {
                    digest: c.digest.into(),
                    size: c.size,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(cpb::StatBlobResponse {
            chunks,
            bao: Default::default(),
        }))
    }

    type ReadStream = BoxStream<cpb::BlobChunk>;

    async fn read(
        &self,
        req: Request<cpb::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.allow_read(&req)?;
        let blob = digest(&req.into_inner().digest)?;
        let chunks = blob_layout(&self.store, blob, false)
            .await?
            .chunks()
            .to_vec();
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for group in group_by_size(chunks, |c| c.size) {
                let ds: Vec<B3Digest> = group.iter().map(|c| c.digest).collect();
                let res = async {
                    let got = store.blobs.get_chunks(&ds).await?;
                    got.iter()
                        .map(|c| c.decode_verified())
                        .collect::<Result<Vec<_>, StoreError>>()
                }
                .await;
                match res {
                    Ok(datas) => {
                        for data in datas {
                            if tx.send(Ok(cpb::BlobChunk { data })).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn put(
        &self,
        req: Request<Streaming<cpb::BlobChunk>>,
    ) -> Result<Response<cpb::PutBlobResponse>, Status> {
        self.allow_write(&req)?;
        let stream = req
            .into_inner()
            .map_ok(|c| c.data)
            .map_err(|s| std::io::Error::other(s.to_string()));
        let mut reader = tokio_util_reader(stream);
        let mut up = ChunkUploader::new(
            self.store.blobs.clone(),
            KnownChunks::default(),
            Arc::new(Mutex::new(TransferStats::default())),
        );
        let mut chunker = Chunker::new(DEFAULT_PARAMS);
        let (blob, _) = ingest_contents(&mut up, &mut chunker, &mut reader, None)
            .await
            .map_err(to_status)?;
        up.flush().await.map_err(to_status)?;
        Ok(Response::new(cpb::PutBlobResponse {
            digest: blob.into(),
        }))
    }
}

/// Adapts a stream of byte buffers into an `AsyncRead`.
fn tokio_util_reader<S>(s: S) -> impl tokio::io::AsyncRead + Unpin + Send
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin,
{
    tokio_util::io::StreamReader::new(s)
}

#[tonic::async_trait]
impl directory_service_server::DirectoryService for StoreService {
    type GetStream = BoxStream<cpb::Directory>;

    async fn get(
        &self,
        req: Request<cpb::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        self.allow_read(&req)?;
        let req = req.into_inner();
        let Some(cpb::get_directory_request::ByWhat::Digest(d)) = req.by_what else {
            return Err(Status::invalid_argument("no digest given"));
        };
        let d = digest(&d)?;
        let dirs = if req.recursive {
            self.store
                .directories
                .get_closure(&d)
                .await
                .map_err(to_status)?
        } else {
            match self
                .store
                .directories
                .get_directory(&d)
                .await
                .map_err(to_status)?
            {
                Some(dir) => vec![dir],
                None => return Err(Status::not_found(format!("directory {d}"))),
            }
        };
        Ok(Response::new(Box::pin(futures::stream::iter(
            dirs.into_iter().map(|d| Ok(d.into_proto())),
        ))))
    }

    async fn put(
        &self,
        req: Request<Streaming<cpb::Directory>>,
    ) -> Result<Response<cpb::PutDirectoryResponse>, Status> {
        self.allow_write(&req)?;
        // Each directory is validated as it arrives, and the closure held
        // until it is checked whole is bounded (nothing is stored before).
        let mut stream = req.into_inner();
        let mut dirs = Vec::new();
        let mut bytes = 0u64;
        while let Some(d) = stream.message().await? {
            bytes += prost::Message::encoded_len(&d) as u64;
            if bytes > MAX_CLOSURE_BYTES || dirs.len() as u64 >= MAX_NODES {
                return Err(to_status(over_limit(
                    "a directory upload",
                    format!("{MAX_CLOSURE_BYTES} bytes or {MAX_NODES} directories"),
                )));
            }
            dirs.push(Directory::try_from_proto(d).map_err(to_status)?);
        }
        let root = self
            .store
            .directories
            .put_closure(dirs)
            .await
            .map_err(to_status)?;
        Ok(Response::new(cpb::PutDirectoryResponse {
            root_digest: root.into(),
        }))
    }
}

#[tonic::async_trait]
impl path_info_service_server::PathInfoService for StoreService {
    async fn get(
        &self,
        req: Request<spb::GetPathInfoRequest>,
    ) -> Result<Response<spb::PathInfo>, Status> {
        self.allow_read(&req)?;
        let Some(spb::get_path_info_request::ByWhat::ByOutputHash(h)) = req.into_inner().by_what
        else {
            return Err(Status::invalid_argument("no output hash given"));
        };
        let h = path_digest(&h)?;
        match self
            .store
            .path_infos
            .get_path_info(&h)
            .await
            .map_err(to_status)?
        {
            Some(info) => Ok(Response::new(info.to_proto())),
            None => Err(Status::not_found("path info not found")),
        }
    }

    async fn put(&self, req: Request<spb::PathInfo>) -> Result<Response<spb::PathInfo>, Status> {
        self.allow_write(&req)?;
        let info = PathInfo::try_from_proto(&req.into_inner()).map_err(to_status)?;
        let reply = info.to_proto();
        self.store
            .path_infos
            .put_path_info(info)
            .await
            .map_err(to_status)?;
        Ok(Response::new(reply))
    }

    async fn calculate_nar(
        &self,
        req: Request<cpb::Entry>,
    ) -> Result<Response<spb::CalculateNarResponse>, Status> {
        self.allow_read(&req)?;
        let (_, node) = Node::from_entry(&req.into_inner()).map_err(to_status)?;
        let (size, sha) = lazix_castore::render::calculate_nar(&self.store, &node)
            .await
            .map_err(to_status)?;
        Ok(Response::new(spb::CalculateNarResponse {
            nar_size: size,
            nar_sha256: sha.to_vec().into(),
        }))
    }

    type ListStream = BoxStream<spb::PathInfo>;

    async fn list(
        &self,
        req: Request<spb::ListPathInfoRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.allow_read(&req)?;
        let s = self
            .store
            .path_infos
            .list_path_infos()
            .map(|r| r.map(|i| i.to_proto()).map_err(to_status));
        Ok(Response::new(Box::pin(s)))
    }
}

#[tonic::async_trait]
impl chunk_service_server::ChunkService for StoreService {
    async fn find_missing_chunks(
        &self,
        req: Request<lpb::FindMissingChunksRequest>,
    ) -> Result<Response<lpb::FindMissingChunksResponse>, Status> {
        self.allow_write(&req)?;
        let ds = digests(&req.into_inner().digests)?;
        let missing = self
            .store
            .blobs
            .missing_chunks(&ds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(lpb::FindMissingChunksResponse {
            missing: missing.into_iter().map(Into::into).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<lpb::PutChunksRequest>>,
    ) -> Result<Response<lpb::PutChunksResponse>, Status> {
        self.allow_write(&req)?;
        // The frames of one call become one pack (split only when a call
        // sends more than PACK_LIMIT bytes).
        let mut stream = req.into_inner();
        let (mut n, mut bytes, mut raw) = (0u64, 0u64, 0u64);
        let mut pending: Vec<Frame> = Vec::new();
        let mut pending_bytes = 0u64;
        // Chunks of this call so far: a frame that adds none is dropped
        // here, neither counted nor decoded.
        let mut seen: HashSet<B3Digest> = HashSet::new();
        // The call's place among the uploader's (the first message's); a
        // call split into several packs numbers them on from it.
        let mut order: Option<u64> = None;
        let mut part = 0u64;
        while let Some(msg) = stream.message().await? {
            order.get_or_insert(msg.upload_order);
            for f in msg.frames {
                let frame = Frame::try_from_proto(f).map_err(to_status)?;
                n += frame.chunks.len() as u64;
                bytes += frame.data.len() as u64;
                if frame.chunks.iter().all(|c| seen.contains(&c.digest)) {
                    continue;
                }
                seen.extend(frame.chunks.iter().map(|c| c.digest));
                raw = raw.saturating_add(frame.raw_size());
                if raw > PUT_CHUNKS_RAW_BUDGET || seen.len() > PUT_CHUNKS_MAX_CHUNKS {
                    return Err(Status::resource_exhausted(format!(
                        "frames of one PutChunks call claim over {PUT_CHUNKS_RAW_BUDGET} raw bytes \
                         or {PUT_CHUNKS_MAX_CHUNKS} chunks: send them in several calls"
                    )));
                }
                pending_bytes += frame.data.len() as u64;
                pending.push(frame);
            }
            if pending_bytes >= PACK_LIMIT {
                pending_bytes = 0;
                let frames = std::mem::take(&mut pending);
                self.store
                    .blobs
                    .put_frames_ordered(frames, upload_part(order.unwrap_or(0), part))
                    .await
                    .map_err(to_status)?;
                part += 1;
            }
        }
        self.store
            .blobs
            .put_frames_ordered(pending, upload_part(order.unwrap_or(0), part))
            .await
            .map_err(to_status)?;
        Ok(Response::new(lpb::PutChunksResponse {
            chunks_received: n,
            bytes_received: bytes,
        }))
    }

    type ReadChunksStream = BoxStream<lpb::ReadChunksResponse>;

    async fn read_chunks(
        &self,
        req: Request<lpb::ReadChunksRequest>,
    ) -> Result<Response<Self::ReadChunksStream>, Status> {
        self.allow_read(&req)?;
        let req = req.into_inner();
        let ds = digests(&req.digests)?;
        let exact = req.exact;
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            // Fetch in slices so the first message leaves early; a frame
            // already sent covers its chunks for later slices.
            let mut slices = CoveredSlices::new(&ds, READ_CHUNKS_SLICE);
            while let Some(wanted) = slices.next_wanted() {
                let frames = match store.blobs.get_frames(&wanted).await {
                    Ok(frames) if exact => {
                        exact_frames(store.blobs.as_ref(), &wanted, frames).await
                    }
                    answer => answer,
                };
                match frames {
                    Ok(frames) => {
                        frames.iter().for_each(|f| slices.cover(f));
                        for group in group_by_size(frames, |f| f.data.len() as u64) {
                            let msg = lpb::ReadChunksResponse {
                                frames: group.iter().map(Frame::to_proto).collect(),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetChunkListDigestsStream = BoxStream<lpb::ChunkListDigests>;

    async fn get_chunk_list_digests(
        &self,
        req: Request<lpb::GetChunkListDigestsRequest>,
    ) -> Result<Response<Self::GetChunkListDigestsStream>, Status> {
        self.allow_read(&req)?;
        let root = digest(&req.into_inner().root_digest)?;
        let records = bytes::Bytes::from(
            root_manifest(&self.store, &root)
                .await
                .map_err(to_status)?
                .to_records(),
        );
        let per_message = MANIFEST_RECORDS_PER_MESSAGE * ChunkListsDigest::RECORD_LEN;
        // Slices of one buffer, not copies.
        let messages: Vec<Result<lpb::ChunkListDigests, Status>> = (0..records.len())
            .step_by(per_message)
            .map(|at| {
                Ok(lpb::ChunkListDigests {
                    records: records.slice(at..(at + per_message).min(records.len())),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn put_blob_chunks(
        &self,
        req: Request<lpb::PutBlobChunksRequest>,
    ) -> Result<Response<lpb::PutBlobChunksResponse>, Status> {
        self.allow_write(&req)?;
        let blobs = req
            .into_inner()
            .blobs
            .iter()
            .map(|b| {
                Ok(BlobChunks {
                    blob: B3Digest::try_from(&b.blob_digest)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    chunks: b
                        .chunks
                        .iter()
                        .map(ChunkMeta::try_from_proto)
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(to_status)?;
        self.store
            .blobs
            .put_blob_chunks(blobs)
            .await
            .map_err(to_status)?;
        Ok(Response::new(lpb::PutBlobChunksResponse {}))
    }

    async fn get_blob_chunks(
        &self,
        req: Request<lpb::GetBlobChunksRequest>,
    ) -> Result<Response<lpb::GetBlobChunksResponse>, Status> {
        self.allow_read(&req)?;
        let ds = digests(&req.into_inner().blob_digests)?;
        let lists = self
            .store
            .blobs
            .get_blob_chunks(&ds)
            .await
            .map_err(to_status)?;
        Ok(Response::new(lpb::GetBlobChunksResponse {
            answers: lists
                .into_iter()
                .map(|l| match l {
                    Some(chunks) => lpb::BlobChunksAnswer {
                        known: true,
                        chunks: chunks.iter().map(ChunkMeta::to_proto).collect(),
                    },
                    None => lpb::BlobChunksAnswer {
                        known: false,
                        chunks: Vec::new(),
                    },
                })
                .collect(),
        }))
    }
}

/// A store path's 20-byte digest from a request.
fn path_digest(h: &[u8]) -> Result<[u8; 20], Status> {
    h.try_into()
        .map_err(|_| Status::invalid_argument("output hash must be 20 bytes"))
}

#[tonic::async_trait]
impl profile_service_server::ProfileService for StoreService {
    async fn put(
        &self,
        req: Request<lpb::PutProfileRequest>,
    ) -> Result<Response<lpb::PutProfileResponse>, Status> {
        self.allow_write(&req)?;
        let req = req.into_inner();
        let digest = path_digest(&req.store_path_digest)?;
        self.store
            .path_infos
            .put_profile(&digest, req.profile)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(m) => Status::failed_precondition(m),
                e => to_status(e),
            })?;
        Ok(Response::new(lpb::PutProfileResponse {}))
    }

    async fn get(
        &self,
        req: Request<lpb::GetProfileRequest>,
    ) -> Result<Response<lpb::GetProfileResponse>, Status> {
        self.allow_read(&req)?;
        let digest = path_digest(&req.into_inner().store_path_digest)?;
        let profile = self
            .store
            .path_infos
            .get_profile(&digest)
            .await
            .map_err(to_status)?;
        Ok(Response::new(lpb::GetProfileResponse {
            found: profile.is_some(),
            profile: profile.unwrap_or_default(),
        }))
    }
}

/// Catalog entries sent per message.
const CATALOG_BATCH: usize = 1024;

#[tonic::async_trait]
impl catalog_service_server::CatalogService for StoreService {
    type ListStream = BoxStream<lpb::ListCatalogResponse>;

    async fn list(
        &self,
        req: Request<lpb::ListCatalogRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.allow_read(&req)?;
        let entries = self
            .store
            .path_infos
            .list_catalog()
            .await
            .map_err(to_status)?;
        let batches = entries.chunks(CATALOG_BATCH).map(|batch| {
            let batch = batch
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(to_status)?;
            Ok(lpb::ListCatalogResponse {
                entries: batch.iter().map(|e| e.to_proto()).collect(),
                nar_sizes: batch.iter().map(|e| e.nar_size).collect(),
            })
        });
        Ok(Response::new(Box::pin(batches)))
    }
}
