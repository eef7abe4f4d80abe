//! Uploads as `nix copy --to http://…` sends them: the NAR first (any
//! compression Nix writes), decompressed and ingested while it streams,
//! then its narinfo, which makes the path visible only if its NarHash and
//! NarSize match what was ingested.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use lazix_castore::ingest::{ingest_nar, ChunkUploader, IngestError, KnownChunks, TransferStats};
use lazix_castore::nix::hash::format_sha256;
use lazix_castore::nix::nar::hashing_reader;
use lazix_castore::nix::narinfo::NarInfo;
use lazix_castore::read::trusted::root_signatures;
use lazix_castore::{Node, PathInfo};
use tokio::io::AsyncRead;

use super::{auth, AppState};

/// Largest narinfo accepted.
const MAX_NARINFO: usize = 1024 * 1024;

/// A NAR that was uploaded and ingested, waiting for its narinfo.
#[derive(Debug)]
pub struct PendingNar {
    /// Root of the ingested tree.
    pub node: Node,
    /// sha256 of the uncompressed NAR.
    pub nar_sha256: [u8; 32],
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// sha256 of the bytes received (the FileHash).
    pub file_sha256: [u8; 32],
    /// Bytes received (the FileSize).
    pub file_size: u64,
}

fn bad(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// `PUT /nix-cache-info`: accepted (the server's own answer stands).
pub async fn put_cache_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = auth::check_write(&headers, &st.cfg.tokens) {
        return r.into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Wraps the body in the decoder its extension names.
fn decoder(
    file: &str,
    body: impl AsyncRead + Unpin + Send + 'static,
) -> Option<Box<dyn AsyncRead + Unpin + Send>> {
    use async_compression::tokio::bufread as dec;
    let buffered = tokio::io::BufReader::with_capacity(256 * 1024, body);
    let ext = file.rsplit_once(".nar").map(|(_, e)| e)?;
    Some(match ext {
        "" => Box::new(buffered),
        ".xz" => Box::new(dec::XzDecoder::new(buffered)),
        ".zst" => Box::new(dec::ZstdDecoder::new(buffered)),
        ".bz2" => Box::new(dec::BzDecoder::new(buffered)),
        ".br" => Box::new(dec::BrotliDecoder::new(buffered)),
        _ => return None,
    })
}

/// `PUT /nar/<file>.nar[.xz|.zst|.bz2|.br]`.
pub async fn put_nar(
    State(st): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = auth::check_write(&headers, &st.cfg.tokens) {
        return r.into_response();
    }
    let raw = tokio_util::io::StreamReader::new(idle_limited(body));
    let (counted, file_hash) = hashing_reader(raw);
    let Some(nar) = decoder(&file, counted) else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported NAR compression (use none, xz, zstd, bzip2 or br)\n",
        )
            .into_response();
    };
    let mut up = ChunkUploader::new(
        st.store.blobs.clone(),
        KnownChunks::default(),
        Arc::new(Mutex::new(TransferStats::default())),
    );
    let ingested = match ingest_nar(&st.store, &mut up, nar).await {
        Ok(i) => i,
        Err(IngestError::Nar(e)) => return bad(format!("rejected NAR: {e}")),
        Err(IngestError::Store(e)) => {
            tracing::error!(error = %e, "storing an uploaded NAR failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    let (file_sha256, file_size) = file_hash.finish();
    tracing::info!(
        url = %format!("nar/{file}"),
        nar_size = ingested.nar_size,
        "NAR uploaded"
    );
    st.pending
        .insert(
            format!("nar/{file}"),
            Arc::new(PendingNar {
                node: ingested.node,
                nar_sha256: ingested.nar_sha256,
                nar_size: ingested.nar_size,
                file_sha256,
                file_size,
            }),
        )
        .await;
    StatusCode::CREATED.into_response()
}

/// A request body as a stream of I/O results that fails once the client
/// pauses longer than [`super::BODY_IDLE_TIMEOUT`] between two pieces.
fn idle_limited(
    body: Body,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static {
    let pieces = body.into_data_stream().map_err(std::io::Error::other);
    let timed = tokio_stream::StreamExt::timeout(pieces, super::BODY_IDLE_TIMEOUT);
    Box::pin(timed.map(|r| {
        r.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body stalled",
            ))
        })
    }))
}

/// Reads a whole small body: at most `limit` bytes, each piece within the
/// idle timeout. `Err` is the response to send.
async fn small_body(body: Body, limit: usize) -> Result<Vec<u8>, Response> {
    let mut stream = idle_limited(body);
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| bad(format!("reading the body: {e}")))?;
        if out.len() + piece.len() > limit {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over the limit of {limit} bytes\n"),
            )
                .into_response());
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// `PUT /<hash>.narinfo`: makes the path visible if it matches its NAR.
/// The token is checked before a byte of the body is read.
pub async fn put_top_level(
    State(st): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = auth::check_write(&headers, &st.cfg.tokens) {
        return r.into_response();
    }
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return (
            StatusCode::NOT_FOUND,
            "only narinfo files are accepted here\n",
        )
            .into_response();
    };
    let body = match small_body(body, MAX_NARINFO).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad("narinfo is not UTF-8");
    };
    let ni = match NarInfo::parse(text) {
        Ok(n) => n,
        Err(e) => return bad(format!("invalid narinfo: {e}")),
    };
    if ni.store_path.hash_part() != hash {
        return bad("narinfo URL does not match its StorePath");
    }
    let Some(pending) = st.pending.get(&ni.url).await else {
        return bad(format!("no NAR was uploaded at {}", ni.url));
    };
    if pending.nar_sha256 != ni.nar_hash || pending.nar_size != ni.nar_size {
        return bad(format!(
            "NarHash/NarSize {} {} do not match the uploaded NAR ({} {})",
            format_sha256(&ni.nar_hash),
            ni.nar_size,
            format_sha256(&pending.nar_sha256),
            pending.nar_size
        ));
    }
    if ni.file_hash.is_some_and(|h| h != pending.file_sha256)
        || ni.file_size.is_some_and(|s| s != pending.file_size)
    {
        return bad("FileHash/FileSize do not match the uploaded file");
    }
    let info = PathInfo {
        store_path: ni.store_path,
        node: pending.node.clone(),
        references: ni.references,
        nar_size: ni.nar_size,
        nar_sha256: ni.nar_hash,
        signatures: ni.signatures,
        root_signatures: vec![],
        deriver: ni.deriver,
        ca: ni.ca,
    };
    let path = info.store_path.to_absolute();
    let digest = *info.store_path.digest();
    let stored = info.clone();
    if let Err(e) = st.store.path_infos.put_path_info(info).await {
        tracing::error!(error = %e, %path, "recording an uploaded path failed");
        // Refused contents (a path stored differently, data missing) are
        // the client's to fix; anything else is ours.
        let status = match e {
            lazix_castore::StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return (status, format!("{e}\n")).into_response();
    }
    // Its narinfo is served from now on as stored now (root signatures,
    // added next, are not part of it).
    st.narinfo_uploads
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    st.narinfos.invalidate(&digest).await;
    // The server computed this NAR's hash and its root from the same bytes
    // (the NAR it ingested): it signs the root with its keys.
    if !st.cfg.signing_keys.is_empty() {
        let signed = async {
            let mut info = stored;
            info.root_signatures = root_signatures(&st.store, &info, &st.cfg.signing_keys).await?;
            st.store.path_infos.put_path_info(info).await
        };
        if let Err(e) = signed.await {
            tracing::error!(error = %e, %path, "signing an uploaded path's root failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    }
    tracing::info!(%path, "path uploaded");
    StatusCode::CREATED.into_response()
}
