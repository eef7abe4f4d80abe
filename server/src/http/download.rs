//! Reads: `nix-cache-info`, `<hash>.narinfo`, `<hash>.ls` and NARs.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use lazix_castore::nix::nixbase32;
use lazix_castore::nix::store_path::{parse_hash_part, HASH_PART_LEN};
use std::sync::Arc;

use lazix_castore::render::{self, ListedNode, NarPlan};
use lazix_castore::{Node, PathInfo, StoreError};

use super::{auth, AppState, NarCompression};

/// NARs and listings never change for a given URL.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// narinfos may gain signatures (key rotation): cache for an hour.
const NARINFO_CACHE: &str = "public, max-age=3600";
/// A miss may be filled by the next upload.
const MISS_CACHE: &str = "no-cache";

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(m) => text(StatusCode::NOT_FOUND, m),
        StoreError::Invalid(m) => text(StatusCode::BAD_REQUEST, m),
        e => {
            tracing::error!(error = %e, "serving failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `GET /nix-cache-info`.
pub async fn cache_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = auth::check(&headers, st.cfg.read_token.as_deref()) {
        return r.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        format!(
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {}\n",
            st.cfg.priority
        ),
    )
        .into_response()
}

/// Looks up a PathInfo by hash part; `Err` is the response to send.
async fn lookup(st: &AppState, hash_part: &str) -> Result<PathInfo, Response> {
    if hash_part.len() != HASH_PART_LEN {
        return Err(text(StatusCode::BAD_REQUEST, "malformed store path hash\n"));
    }
    let digest =
        parse_hash_part(hash_part).map_err(|e| text(StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    match st.store.path_infos.get_path_info(&digest).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, MISS_CACHE)],
            "not found\n",
        )
            .into_response()),
        Err(e) => Err(store_error(e)),
    }
}

/// The NAR plan of a path, planned once while it stays hot.
async fn cached_plan(st: &AppState, info: &PathInfo) -> Result<Arc<NarPlan>, StoreError> {
    let key = (*info.store_path.digest(), info.nar_sha256);
    let store = st.store.clone();
    let node = info.node.clone();
    st.plans
        .try_get_with(key, async move {
            render::plan(&store, &node).await.map(Arc::new)
        })
        .await
        .map_err(|e| match Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) => StoreError::Unavailable(shared.to_string()),
        })
}

/// The URL of a path's NAR as this server serves it.
pub fn nar_url(info: &PathInfo, compression: NarCompression) -> String {
    format!(
        "nar/{}-{}{}",
        info.store_path.hash_part(),
        nixbase32::encode(&info.nar_sha256),
        compression.extension()
    )
}

/// `GET /<hash>.narinfo` and `GET /<hash>.ls`.
pub async fn top_level(
    State(st): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = auth::check(&headers, st.cfg.read_token.as_deref()) {
        return r.into_response();
    }
    if let Some(hash) = file.strip_suffix(".narinfo") {
        let info = match lookup(&st, hash).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        let compression = st.cfg.nar_compression;
        let mut ni = info.to_narinfo(nar_url(&info, compression), compression.name());
        if compression == NarCompression::None {
            ni.file_hash = Some(info.nar_sha256);
            ni.file_size = Some(info.nar_size);
        }
        let fp = info.fingerprint();
        for key in &st.cfg.signing_keys {
            let sig = key.sign(&fp);
            if !ni.signatures.contains(&sig) {
                ni.signatures.push(sig);
            }
        }
        return (
            [
                (header::CONTENT_TYPE, "text/x-nix-narinfo"),
                (header::CACHE_CONTROL, NARINFO_CACHE),
            ],
            ni.render(),
        )
            .into_response();
    }
    if let Some(hash) = file.strip_suffix(".ls") {
        let info = match lookup(&st, hash).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        let plan = match cached_plan(&st, &info).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
        let body = serde_json::json!({"version": 1, "root": listing_json(plan.listing())});
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            body.to_string(),
        )
            .into_response();
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Nix's `.ls` JSON tree from the flat listing (NAR order: parents first).
fn listing_json(listing: &[ListedNode]) -> serde_json::Value {
    fn node_json(n: &ListedNode) -> serde_json::Value {
        match &n.node {
            Node::Directory { .. } => serde_json::json!({"type": "directory", "entries": {}}),
            Node::File {
                size, executable, ..
            } => {
                let mut v =
                    serde_json::json!({"type": "regular", "size": size, "narOffset": n.nar_offset});
                if *executable {
                    v["executable"] = serde_json::Value::Bool(true);
                }
                v
            }
            Node::Symlink { target } => {
                serde_json::json!({"type": "symlink", "target": String::from_utf8_lossy(target)})
            }
        }
    }
    let Some(first) = listing.first() else {
        return serde_json::Value::Null;
    };
    let mut root = node_json(first);
    for n in &listing[1..] {
        let mut cur = &mut root;
        let (last, parents) = n.path.split_last().expect("below the root");
        for p in parents {
            cur = &mut cur["entries"][String::from_utf8_lossy(p).as_ref()];
        }
        cur["entries"][String::from_utf8_lossy(last).as_ref()] = node_json(n);
    }
    root
}

/// `GET|HEAD /nar/<hash>-<narhash>.nar[.zst]`: the NAR rendered from
/// chunks, with byte ranges when uncompressed.
pub async fn nar(
    State(st): State<AppState>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = auth::check(&headers, st.cfg.read_token.as_deref()) {
        return r.into_response();
    }
    let (stem, compression) = if let Some(s) = file.strip_suffix(".nar.zst") {
        (s, NarCompression::Zstd)
    } else if let Some(s) = file.strip_suffix(".nar") {
        (s, NarCompression::None)
    } else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some((hash, narhash)) = stem.split_once('-') else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let info = match lookup(&st, hash).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    if nixbase32::encode(&info.nar_sha256) != narhash {
        return text(StatusCode::NOT_FOUND, "no NAR with this hash\n");
    }
    let plan = match cached_plan(&st, &info).await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let size = plan.size();
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CACHE_CONTROL, IMMUTABLE);

    if compression == NarCompression::Zstd {
        if method == Method::HEAD {
            return builder.body(Body::empty()).expect("valid response");
        }
        let raw = plan
            .stream(st.store.blobs.clone(), 0..size)
            .map(|r| r.map_err(std::io::Error::other));
        let reader = tokio_util::io::StreamReader::new(raw);
        let encoder = async_compression::tokio::bufread::ZstdEncoder::new(reader);
        let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            encoder,
            256 * 1024,
        ));
        return builder.body(body).expect("valid response");
    }

    builder = builder.header(header::ACCEPT_RANGES, "bytes");
    let mut range = 0..size;
    let mut status = StatusCode::OK;
    if let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        match http_range_header::parse_range_header(value).and_then(|r| r.validate(size)) {
            Ok(ranges) if ranges.len() == 1 => {
                let r = &ranges[0];
                range = *r.start()..*r.end() + 1;
                status = StatusCode::PARTIAL_CONTENT;
                builder = builder.header(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{size}", r.start(), r.end()),
                );
            }
            Ok(_) => {} // several ranges: answer the whole NAR
            Err(_) => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                    )],
                )
                    .into_response();
            }
        }
    }
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, range.end - range.start);
    if method == Method::HEAD {
        return builder.body(Body::empty()).expect("valid response");
    }
    let stream = plan.stream(st.store.blobs.clone(), range).map(|r| {
        r.map_err(|e| {
            tracing::error!(error = %e, "NAR stream failed");
            std::io::Error::other(e)
        })
    });
    builder
        .body(Body::from_stream(stream))
        .expect("valid response")
}
