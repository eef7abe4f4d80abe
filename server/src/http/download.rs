//! Reads: `nix-cache-info`, `<hash>.narinfo`, `<hash>.ls` and NARs.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use lazix_castore::nix::nixbase32;
use lazix_castore::nix::store_path::{parse_hash_part, HASH_PART_LEN};
use std::sync::atomic::Ordering;
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

/// `GET /lazix-stats`: the counters the server was given, as JSON; 404
/// where it has none.
pub async fn stats(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = auth::check(&headers, &st.cfg.tokens) {
        return r.into_response();
    }
    match &st.cfg.stats {
        Some(f) => (
            [(header::CONTENT_TYPE, "application/json")],
            f().to_string(),
        )
            .into_response(),
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /nix-cache-info`.
pub async fn cache_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = auth::check(&headers, &st.cfg.tokens) {
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

/// The store path digest of a URL's hash part; `Err` is why it is none
/// (a bad request).
fn path_digest(hash_part: &str) -> Result<[u8; 20], String> {
    if hash_part.len() != HASH_PART_LEN {
        return Err("malformed store path hash\n".into());
    }
    parse_hash_part(hash_part).map_err(|e| format!("{e}\n"))
}

/// Looks up a PathInfo by hash part; `Err` is the response to send.
async fn lookup(st: &AppState, hash_part: &str) -> Result<PathInfo, Response> {
    let digest = path_digest(hash_part).map_err(|e| text(StatusCode::BAD_REQUEST, e))?;
    lookup_digest(st, &digest).await
}

/// Looks up a PathInfo by store path digest; `Err` is the response to
/// send.
async fn lookup_digest(st: &AppState, digest: &[u8; 20]) -> Result<PathInfo, Response> {
    match st.store.path_infos.get_path_info(digest).await {
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
    if let Err(r) = auth::check(&headers, &st.cfg.tokens) {
        return r.into_response();
    }
    if let Some(hash) = file.strip_suffix(".narinfo") {
        return narinfo(&st, hash).await;
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
        let body = listing_json(plan.listing());
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            body,
        )
            .into_response();
    }
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `GET /<hash>.narinfo`: from the rendered-text cache while the path is
/// hot, else rendered (with this server's signatures added) and kept.
async fn narinfo(st: &AppState, hash_part: &str) -> Response {
    let digest = match path_digest(hash_part) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let body = match st.narinfos.get(&digest).await {
        Some(text) => text,
        None => {
            let uploads = st.narinfo_uploads.load(Ordering::SeqCst);
            let info = match lookup_digest(st, &digest).await {
                Ok(i) => i,
                Err(r) => return r,
            };
            let text = bytes::Bytes::from(render_narinfo(st, &info));
            st.narinfos.insert(digest, text.clone()).await;
            // An upload that stored a newer PathInfo meanwhile may have
            // dropped this path's entry before the insert above: the
            // text read before it must not stay.
            if st.narinfo_uploads.load(Ordering::SeqCst) != uploads {
                st.narinfos.invalidate(&digest).await;
            }
            text
        }
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-nix-narinfo"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(NARINFO_CACHE),
            ),
        ],
        body,
    )
        .into_response()
}

/// A path's narinfo as this server serves it: its NAR URL and, for plain
/// NARs, FileHash/FileSize; the path's own signatures plus this server's.
fn render_narinfo(st: &AppState, info: &PathInfo) -> String {
    let compression = st.cfg.nar_compression;
    let mut ni = info.to_narinfo(nar_url(info, compression), compression.name());
    if compression == NarCompression::None {
        ni.file_hash = Some(info.nar_sha256);
        ni.file_size = Some(info.nar_size);
    }
    if !st.cfg.signing_keys.is_empty() {
        let fp = info.fingerprint();
        for key in &st.cfg.signing_keys {
            let sig = key.sign(&fp);
            if !ni.signatures.contains(&sig) {
                ni.signatures.push(sig);
            }
        }
    }
    ni.render()
}

/// Nix's `.ls` JSON document from the flat listing (NAR order: a parent
/// before its entries). Written as text with an explicit stack of open
/// directories: no recursion and no nested JSON values, whatever the
/// tree's depth (serde_json serializes and drops nested values
/// recursively, which a deep enough tree turns into a stack overflow).
fn listing_json(listing: &[ListedNode]) -> String {
    use std::fmt::Write;
    let quoted =
        |b: &[u8]| serde_json::to_string(String::from_utf8_lossy(b).as_ref()).expect("a string");
    let mut out = String::from("{\"version\":1,\"root\":");
    if listing.is_empty() {
        out.push_str("null}");
        return out;
    }
    // Depth of every open directory, and whether it has an entry yet.
    let mut open: Vec<(usize, bool)> = Vec::new();
    for n in listing {
        while open.last().is_some_and(|(d, _)| *d >= n.depth) {
            open.pop();
            out.push_str("}}");
        }
        if let Some((_, has_entries)) = open.last_mut() {
            if *has_entries {
                out.push(',');
            }
            *has_entries = true;
            out.push_str(&quoted(&n.name));
            out.push(':');
        }
        match &n.node {
            Node::Directory { .. } => {
                out.push_str("{\"type\":\"directory\",\"entries\":{");
                open.push((n.depth, false));
            }
            Node::File {
                size, executable, ..
            } => {
                let _ = write!(
                    out,
                    "{{\"type\":\"regular\",\"size\":{size},\"narOffset\":{}",
                    n.nar_offset
                );
                if *executable {
                    out.push_str(",\"executable\":true");
                }
                out.push('}');
            }
            Node::Symlink { target } => {
                let _ = write!(
                    out,
                    "{{\"type\":\"symlink\",\"target\":{}}}",
                    quoted(target)
                );
            }
        }
    }
    for _ in open {
        out.push_str("}}");
    }
    out.push('}');
    out
}

/// `GET|HEAD /nar/<hash>-<narhash>.nar[.zst]`: the NAR rendered from
/// chunks, with byte ranges when uncompressed.
pub async fn nar(
    State(st): State<AppState>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = auth::check(&headers, &st.cfg.tokens) {
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
            .stream_with(st.store.blobs.clone(), 0..size, st.cfg.render_windows)
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
    match requested_range(&headers, size) {
        RangeAnswer::Whole => {}
        RangeAnswer::Part(r) => {
            range = r.clone();
            status = StatusCode::PARTIAL_CONTENT;
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
        }
        RangeAnswer::Unsatisfiable => {
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
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, range.end - range.start);
    if method == Method::HEAD {
        return builder.body(Body::empty()).expect("valid response");
    }
    let stream = plan
        .stream_with(st.store.blobs.clone(), range, st.cfg.render_windows)
        .map(|r| {
            r.map_err(|e| {
                tracing::error!(error = %e, "NAR stream failed");
                std::io::Error::other(e)
            })
        });
    builder
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No header, a malformed one (RFC 9110 §14.2: ignored) or several
    /// ranges (answered with the whole body).
    Whole,
    /// One satisfiable range.
    Part(std::ops::Range<u64>),
    /// A well-formed range wholly outside the body: 416.
    Unsatisfiable,
}

/// Reads the `Range` header against a body of `size` bytes.
pub fn requested_range(headers: &HeaderMap, size: u64) -> RangeAnswer {
    let Some(value) = headers.get(header::RANGE) else {
        return RangeAnswer::Whole;
    };
    range_answer(value.as_bytes(), size)
}

/// [`requested_range`] on the header's raw bytes (fuzzed on its own).
pub fn range_answer(value: &[u8], size: u64) -> RangeAnswer {
    let Ok(value) = std::str::from_utf8(value) else {
        return RangeAnswer::Whole;
    };
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return RangeAnswer::Whole;
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let r = &ranges[0];
            if r.start() > r.end() || *r.end() >= size {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Part(*r.start()..*r.end() + 1)
        }
        Ok(_) => RangeAnswer::Whole,
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}
