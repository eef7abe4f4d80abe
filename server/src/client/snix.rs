//! Chunks and chunk lists through snix's plain `BlobService` (`Stat`,
//! `Read`, `Put`), for servers that lack the batched `lazix.v1` calls (a
//! snix daemon, `lazix serve --snix-only`).
//!
//! snix has no call for many chunks at once, so each operation here runs
//! one call per chunk or blob, [`PARALLEL`] at a time, over the one HTTP/2
//! connection. What comes back is checked exactly as on the `lazix.v1`
//! path: raw chunk bytes are wrapped in a frame ([`Frame::wrap_unverified`])
//! and go through the same decode that checks size and BLAKE3; chunk lists
//! are checked by the readers that use them.
//!
//! snix cannot be told a blob's chunk list: it chunks each uploaded blob
//! itself. A multi-chunk blob is therefore uploaded whole, streamed from
//! its chunks as the server stores them (read back, checked, sent again),
//! after the chunks themselves were put as blobs of their own. That costs
//! the chunks' bytes twice on the wire, on a path meant for
//! interoperability rather than speed.

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use lazix_castore::chunk::{Chunk, ChunkMeta, ChunkPayload, MAX_CHUNK_SIZE};
use lazix_castore::frame::Frame;
use lazix_castore::store::BlobChunks;
use lazix_castore::{B3Digest, StoreError, StoreResult};
use lazix_proto::castore::{self as cpb, blob_service_client::BlobServiceClient};

use super::Conn;
use crate::convert::from_status;

/// Calls in flight at once for one operation: enough to hide a round trip
/// per chunk behind the others, few enough for any server.
pub const PARALLEL: usize = 16;

/// Bytes per `BlobChunk` message when uploading (well under every gRPC
/// implementation's default message limit).
const PUT_PIECE: usize = 1024 * 1024;

type Blobs = BlobServiceClient<Conn>;

/// Whether the server has the blob: `Stat` answers `NotFound` if not.
async fn stat(
    blobs: &Blobs,
    digest: B3Digest,
    send_chunks: bool,
) -> StoreResult<Option<cpb::StatBlobResponse>> {
    let req = cpb::StatBlobRequest {
        digest: digest.into(),
        send_chunks,
        send_bao: false,
    };
    match blobs.clone().stat(req).await {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(from_status(s)),
    }
}

/// Stores the empty blob unless the server has it. lazix stores nothing
/// for empty files (every reader knows their bytes), but snix's readers
/// look every file's blob up, the empty one included. Called once per
/// connection, by the first question an upload asks.
pub async fn ensure_empty_blob(blobs: &Blobs) -> StoreResult<()> {
    let empty = B3Digest::of(b"");
    if stat(blobs, empty, false).await?.is_none() {
        put_blob(blobs, empty, stream::iter([Bytes::new()])).await?;
    }
    Ok(())
}

/// The digests among `digests` the server lacks, in input order.
pub async fn missing_chunks(blobs: &Blobs, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
    stream::iter(digests.iter().copied())
        .map(|d| async move { Ok((d, stat(blobs, d, false).await?.is_none())) })
        .buffered(PARALLEL)
        .try_filter_map(|(d, missing)| async move { Ok(missing.then_some(d)) })
        .try_collect()
        .await
}

/// One chunk's bytes as the server sends them (`Read` of its digest),
/// refused past [`MAX_CHUNK_SIZE`]; not checked yet.
async fn read_raw(blobs: &Blobs, digest: B3Digest) -> StoreResult<Vec<u8>> {
    let req = cpb::ReadBlobRequest {
        digest: digest.into(),
    };
    let mut stream = blobs
        .clone()
        .read(req)
        .await
        .map_err(from_status)?
        .into_inner();
    let mut raw = Vec::new();
    while let Some(piece) = stream.message().await.map_err(from_status)? {
        if (raw.len() + piece.data.len()) as u64 > MAX_CHUNK_SIZE {
            return Err(StoreError::Invalid(format!(
                "chunk {digest}: the server sent more than {MAX_CHUNK_SIZE} bytes"
            )));
        }
        raw.extend_from_slice(&piece.data);
    }
    Ok(raw)
}

/// One frame per distinct requested chunk, in order of first request;
/// each is checked when decoded, like any frame.
pub async fn get_frames(blobs: &Blobs, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<B3Digest> = digests
        .iter()
        .copied()
        .filter(|d| seen.insert(*d))
        .collect();
    stream::iter(distinct)
        .map(|d| async move {
            let raw = read_raw(blobs, d).await?;
            tokio::task::spawn_blocking(move || Frame::wrap_unverified(d, &raw))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
        })
        .buffered(PARALLEL)
        .try_collect()
        .await
}

/// Chunk lists by `Stat` with `send_chunks`, in request order. snix
/// answers no list for a blob that is one chunk (and lazix's `None`
/// means the same); an unknown blob is `None` too, and fails when read.
pub async fn get_blob_chunks(
    blobs: &Blobs,
    digests: &[B3Digest],
) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
    stream::iter(digests.iter().copied())
        .map(|d| async move {
            let Some(answer) = stat(blobs, d, true).await? else {
                return Ok(None);
            };
            if answer.chunks.is_empty() {
                return Ok(None);
            }
            answer
                .chunks
                .iter()
                .map(|c| {
                    Ok(ChunkMeta {
                        digest: B3Digest::try_from(&c.digest)
                            .map_err(|e| StoreError::Corrupt(format!("blob {d}: {e}")))?,
                        size: c.size,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
                .map(Some)
        })
        .buffered(PARALLEL)
        .try_collect()
        .await
}

/// Uploads `bytes` as one blob (`Put`) and checks that the server names
/// it `expected`.
async fn put_blob(
    blobs: &Blobs,
    expected: B3Digest,
    pieces: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> StoreResult<()> {
    let answer = blobs
        .clone()
        .put(pieces.map(|data| cpb::BlobChunk { data }))
        .await
        .map_err(from_status)?
        .into_inner();
    let got = B3Digest::try_from(&answer.digest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if got != expected {
        return Err(StoreError::Corrupt(format!(
            "the server stored blob {expected} as {got}"
        )));
    }
    Ok(())
}

/// Pieces of at most [`PUT_PIECE`] bytes (slices, no copy).
fn pieces(data: Bytes) -> impl Iterator<Item = Bytes> {
    let n = data.len().div_ceil(PUT_PIECE);
    (0..n).map(move |i| data.slice(i * PUT_PIECE..((i + 1) * PUT_PIECE).min(data.len())))
}

/// Stores each chunk of the frames as a blob of its own (what a reader
/// of a one-chunk file and the upload of a multi-chunk one need). The
/// frames are decoded and checked first; nothing is sent from a frame
/// that does not decode. Delta frames are never built by clients.
pub async fn put_frames(blobs: &Blobs, frames: Vec<Frame>) -> StoreResult<()> {
    let mut chunks = Vec::new();
    for frame in frames {
        if !frame.base.is_empty() {
            return Err(StoreError::Invalid(
                "a delta frame cannot be sent through snix's blob service".into(),
            ));
        }
        let decoded = tokio::task::spawn_blocking(move || {
            frame.decode_verified().map(|datas| {
                frame
                    .chunks
                    .iter()
                    .map(|c| c.digest)
                    .zip(datas)
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        chunks.extend(decoded);
    }
    stream::iter(chunks)
        .map(|(digest, data)| put_blob(blobs, digest, stream::iter(pieces(data))))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await
}

/// Makes each multi-chunk blob readable under its own digest: unless the
/// server has it already, its chunks are read back (checked) and uploaded
/// as one blob, which the server chunks its own way.
pub async fn put_blob_chunks(blobs: &Blobs, lists: Vec<BlobChunks>) -> StoreResult<()> {
    stream::iter(lists)
        .map(|list| async move {
            if stat(blobs, list.blob, false).await?.is_some() {
                return Ok(());
            }
            upload_from_chunks(blobs, list).await
        })
        .buffer_unordered(PARALLEL / 4)
        .try_collect::<()>()
        .await
}

/// Streams a blob's chunks from the server back into one `Put`, a few
/// chunks ahead; a chunk that fails to arrive or to check ends the upload
/// short (the server then names another digest, which is refused) and
/// its error is the one reported.
async fn upload_from_chunks(blobs: &Blobs, list: BlobChunks) -> StoreResult<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let reader = {
        let blobs = blobs.clone();
        let chunks = list.chunks.clone();
        tokio::spawn(async move {
            let mut checked = stream::iter(chunks)
                .map(|meta| {
                    let blobs = blobs.clone();
                    async move {
                        let raw = read_raw(&blobs, meta.digest).await?;
                        let chunk = Chunk {
                            digest: meta.digest,
                            size: meta.size,
                            payload: ChunkPayload::Raw(raw.into()),
                        };
                        tokio::task::spawn_blocking(move || chunk.decode_verified())
                            .await
                            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
                    }
                })
                .buffered(4);
            while let Some(data) = checked.try_next().await? {
                for piece in pieces(data) {
                    if tx.send(piece).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    };
    let put = put_blob(
        blobs,
        list.blob,
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )
    .await;
    let read = reader
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    read.and(put)
}
