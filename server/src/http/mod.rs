//! The HTTP binary-cache shim: the classic Nix protocol over the castore,
//! so any stock `nix` substitutes from lazix (`nix-cache-info`, signed
//! `.narinfo`, NARs rendered on the fly from chunks, `.ls` listings) and
//! uploads to it (`nix copy --to http://…`), while lazix keeps only chunks.

mod auth;
mod download;
mod upload;

pub use download::{range_answer, RangeAnswer};

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use lazix_castore::nix::signing::SecretKey;
use lazix_castore::Store;

pub use upload::PendingNar;

/// How NARs are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarCompression {
    /// Uncompressed, with byte ranges: the fastest on fast links.
    None,
    /// zstd, compressed on the fly: fewer bytes on slow links.
    Zstd,
}

impl NarCompression {
    /// The narinfo `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            NarCompression::None => "none",
            NarCompression::Zstd => "zstd",
        }
    }

    /// Extension of the NAR URL.
    pub fn extension(self) -> &'static str {
        match self {
            NarCompression::None => ".nar",
            NarCompression::Zstd => ".nar.zst",
        }
    }
}

/// What the shim serves and who may write.
pub struct HttpConfig {
    /// Keys whose signatures are added to every narinfo served.
    pub signing_keys: Vec<SecretKey>,
    /// Tokens for uploads (refused without one) and reads (public
    /// without one).
    pub tokens: crate::auth::Tokens,
    /// `Priority:` in `nix-cache-info`.
    pub priority: u32,
    /// How NARs are served.
    pub nar_compression: NarCompression,
    /// Bytes of decoded, verified chunks kept in memory for rendering; 0:
    /// none added here (the store given has one already, shared with the
    /// gRPC services, as `lazix serve` does).
    pub decoded_cache_bytes: u64,
    /// How NARs fetch their chunks from the store.
    pub render_windows: lazix_castore::render::Windows,
    /// Connections served at once; further ones wait in the kernel's
    /// accept queue.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive (and a kept-alive
    /// connection may stay idle); [`HEADER_TIMEOUT`] by default. A TLS
    /// handshake must finish within it too.
    pub header_timeout: Duration,
    /// Serve HTTPS with this acceptor (see [`crate::tls`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counters served as JSON at `GET /lazix-stats` (the local proxy's).
    pub stats: Option<StatsFn>,
    /// Prometheus metrics: requests are counted, `GET /metrics` serves
    /// them (see [`crate::metrics`]).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What `GET /lazix-stats` answers: a JSON document.
pub type StatsFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Default of [`HttpConfig::max_connections`]: each connection costs a
/// task and its buffers (a NAR stream holds a few MiB of windows in
/// flight), so the cap bounds the server's memory under any load.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// A request's headers must arrive within this time (also the longest a
/// kept-alive connection may sit idle): a client that never finishes its
/// headers cannot hold a connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest pause between two pieces of a request body (an upload that
/// stalls is cut off; a slow but moving one is not).
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Shared state of the handlers.
#[derive(Clone)]
struct AppState {
    store: Store,
    cfg: Arc<HttpConfig>,
    /// NARs uploaded whose narinfo has not arrived yet, by URL path.
    pending: moka::future::Cache<String, Arc<PendingNar>>,
    /// NAR plans of recently served paths, by (store path digest,
    /// NarHash): a hot NAR is served without fetching its directories or
    /// planning again.
    plans: moka::future::Cache<([u8; 20], [u8; 32]), Arc<lazix_castore::render::NarPlan>>,
    /// Rendered narinfo text of recently asked paths, by store path
    /// digest: a hot narinfo is answered without copying its PathInfo,
    /// rendering or signing it again. Hits only (a miss may be filled by
    /// the next upload); an upload here drops its path's entry, and the
    /// short time to live bounds how long a change made elsewhere (a
    /// gRPC upload, another replica, GC) stays unseen.
    narinfos: moka::future::Cache<[u8; 20], bytes::Bytes>,
    /// Moves on at every narinfo upload here: a narinfo rendered from a
    /// PathInfo read before an upload is not kept (see
    /// `download::narinfo`).
    narinfo_uploads: Arc<std::sync::atomic::AtomicU64>,
}

/// Bytes of rendered narinfo text kept.
const NARINFO_TEXT_BYTES: u64 = 16 * 1024 * 1024;

/// How long a rendered narinfo is reused: added to the PathInfo cache's
/// own time to live, a change made elsewhere shows within seconds.
const NARINFO_TEXT_TTL: Duration = Duration::from_secs(5);

/// Bytes of NAR plans kept (framing bytes and piece lists).
const PLAN_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long an uploaded NAR waits for its narinfo.
const PENDING_TTL: Duration = Duration::from_secs(3600);

/// The shim's routes over `store`.
pub fn router(mut store: Store, cfg: HttpConfig) -> Router {
    if cfg.decoded_cache_bytes > 0 {
        store.blobs = lazix_castore::store::decoded_chunks(store.blobs, cfg.decoded_cache_bytes);
    }
    let metrics = cfg.metrics.clone();
    let state = AppState {
        store,
        cfg: Arc::new(cfg),
        pending: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(PENDING_TTL)
            .build(),
        plans: moka::future::Cache::builder()
            .max_capacity(PLAN_CACHE_BYTES)
            .weigher(|_, p: &Arc<lazix_castore::render::NarPlan>| {
                p.weight().min(u32::MAX as u64) as u32
            })
            .build(),
        narinfos: moka::future::Cache::builder()
            .max_capacity(NARINFO_TEXT_BYTES)
            .weigher(|_, text: &bytes::Bytes| (text.len() + 64).min(u32::MAX as usize) as u32)
            .time_to_live(NARINFO_TEXT_TTL)
            .build(),
        narinfo_uploads: Arc::default(),
    };
    let routes = Router::new()
        .route("/lazix-stats", get(download::stats))
        .route(
            "/nix-cache-info",
            get(download::cache_info).put(upload::put_cache_info),
        )
        .route(
            "/{file}",
            get(download::top_level).put(upload::put_top_level),
        )
        .route("/nar/{file}", get(download::nar).put(upload::put_nar))
        .with_state(state);
    match metrics {
        None => routes,
        Some(m) => routes
            .merge(
                Router::new()
                    .route("/metrics", get(crate::metrics::scrape))
                    .with_state(m.clone()),
            )
            .layer(axum::middleware::from_fn_with_state(
                m,
                crate::metrics::track_http,
            )),
    }
}

/// Serves one accepted connection (plain or TLS) with hyper, watched for
/// graceful shutdown.
async fn serve_connection<IO>(
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: IO,
    service: hyper_util::service::TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// Serves the shim on a bound listener until `shutdown` resolves. Each
/// connection is served by hyper with the limits above: at most
/// `max_connections` at once, headers within `header_timeout`; bodies
/// are bounded per route by the handlers.
pub async fn serve_http(
    store: Store,
    cfg: HttpConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto;

    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let header_timeout = cfg.header_timeout;
    let tls = cfg.tls.clone();
    let app = router(store, cfg);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free slot first, then the next connection: past the cap,
        // connections wait in the accept queue instead of costing memory.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: headers and small bodies leave at once instead of
        // waiting for the client's delayed ACK (40 ms per small response).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        // The connection's own task holds its slot; with TLS it also runs
        // the handshake (a slow one holds its slot, not the accept loop),
        // within the header timeout.
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls else {
                return serve_connection(&builder, tcp, service, watcher).await;
            };
            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve_connection(&builder, stream, service, watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
    // Requests under way may finish (a NAR stream for a while): wait a
    // bounded time, then let the runtime drop the rest.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
