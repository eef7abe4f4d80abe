//! Prometheus metrics for the long-running commands (`serve`, `mount`,
//! `proxy`), in the text exposition format: at `/metrics` on the HTTP
//! listener, or on a listener of their own (`--metrics ADDR`, [`serve`]).
//!
//! One [`Metrics`] per process. Requests are counted as they happen, by
//! the layers here ([`track_http`] for the binary-cache shim, [`GrpcLayer`]
//! for the gRPC services): `lazix_http_requests_total{route,status}`,
//! `lazix_http_request_duration_seconds{route}`,
//! `lazix_http_response_bytes_total{route}`,
//! `lazix_grpc_requests_total{method,code}`,
//! `lazix_grpc_request_duration_seconds{method}`. Everything a component
//! counts itself (the mount's fetches and cache hits, the proxy's caches,
//! the store's contents) is read at scrape time through a [`Counters`]
//! collector, so there is one source for each number.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The kind of route (a bounded set, see [`http_route`]).
    pub route: &'static str,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// See [`HttpLabels::route`].
    pub route: &'static str,
}

/// Labels of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `/package.Service/Method` (unknown methods: `other`).
    pub method: String,
    /// The gRPC status code (`0` is OK) the call was answered with when
    /// its response began (a streamed answer that fails later still
    /// counts as `0`).
    pub code: String,
}

/// Labels of a gRPC call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// See [`GrpcLabels::method`].
    pub method: String,
}

type Seconds<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// What one number of a [`Counters`] collector is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One number read at scrape time.
#[derive(Clone, Debug)]
pub struct Reading {
    /// Metric name (without `_total`, which counters get).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The value.
    pub value: f64,
}

/// A component's own counters, read at every scrape by `read`.
pub struct Counters {
    read: Box<dyn Fn() -> Vec<Reading> + Send + Sync>,
}

impl Counters {
    /// A collector of what `read` answers.
    pub fn new(read: impl Fn() -> Vec<Reading> + Send + Sync + 'static) -> Self {
        Self {
            read: Box::new(read),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for r in (self.read)() {
            match r.kind {
                Kind::Counter => {
                    let c = ConstCounter::new(r.value);
                    let e = encoder.encode_descriptor(r.name, r.help, None, c.metric_type())?;
                    c.encode(e)?;
                }
                Kind::Gauge => {
                    let g = ConstGauge::new(r.value);
                    let e = encoder.encode_descriptor(r.name, r.help, None, g.metric_type())?;
                    g.encode(e)?;
                }
            }
        }
        Ok(())
    }
}

/// One histogram read at scrape time.
#[derive(Clone, Debug)]
pub struct HistogramReading {
    /// Metric name (a `_seconds` one for durations).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Per bucket, not cumulative: upper bound (the last infinity) and
    /// count.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// A component's own histograms, read at every scrape by `read`.
pub struct Histograms {
    read: Box<dyn Fn() -> Vec<HistogramReading> + Send + Sync>,
}

impl Histograms {
    /// A collector of what `read` answers.
    pub fn new(read: impl Fn() -> Vec<HistogramReading> + Send + Sync + 'static) -> Self {
        Self {
            read: Box::new(read),
        }
    }
}

impl std::fmt::Debug for Histograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histograms").finish_non_exhaustive()
    }
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for h in (self.read)() {
            let mut e = encoder.encode_descriptor(
                h.name,
                h.help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &h.buckets, None,
            )?;
        }
        Ok(())
    }
}

/// The process's metrics. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Seconds<RouteLabels>,
    http_bytes: Family<RouteLabels, Counter>,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_seconds: Seconds<MethodLabels>,
}

impl Metrics {
    /// The request metrics plus `collectors` (a component's own counters).
    pub fn new(collectors: Vec<Counters>) -> Arc<Self> {
        Self::with_histograms(collectors, Vec::new())
    }

    /// [`Self::new`], plus a component's own histograms.
    pub fn with_histograms(collectors: Vec<Counters>, histograms: Vec<Histograms>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("lazix");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_seconds =
            Seconds::<RouteLabels>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        let http_bytes = Family::<RouteLabels, Counter>::default();
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        let grpc_seconds =
            Seconds::<MethodLabels>::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to an HTTP response's headers, by route",
            http_seconds.clone(),
        );
        registry.register(
            "http_response_bytes",
            "Body bytes of HTTP responses sent, by route",
            http_bytes.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to a gRPC response's headers, by method",
            grpc_seconds.clone(),
        );
        for c in collectors {
            registry.register_collector(Box::new(c));
        }
        for h in histograms {
            registry.register_collector(Box::new(h));
        }
        Arc::new(Self {
            registry,
            http_requests,
            http_seconds,
            http_bytes,
            grpc_requests,
            grpc_seconds,
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Counts one HTTP request.
    pub fn http(&self, route: &'static str, status: u16, started: Instant) {
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts one gRPC call.
    pub fn grpc(&self, method: &str, code: &str, started: Instant) {
        let method = known_method(method);
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.clone(),
                code: code.to_string(),
            })
            .inc();
        self.grpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The content type of the text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The route kind of an HTTP path: a small fixed set, so that labels stay
/// bounded whatever paths clients ask for.
pub fn http_route(path: &str) -> &'static str {
    match path {
        "/nix-cache-info" => "nix-cache-info",
        "/metrics" => "metrics",
        "/lazix-stats" => "lazix-stats",
        p if p.starts_with("/nar/") => "nar",
        p if p.ends_with(".narinfo") => "narinfo",
        p if p.ends_with(".ls") => "ls",
        _ => "other",
    }
}

/// A gRPC method path as a label: the services' own methods by name,
/// anything else `other` (bounded labels).
fn known_method(path: &str) -> String {
    let known = [
        "/snix.castore.v1.BlobService/",
        "/snix.castore.v1.DirectoryService/",
        "/snix.store.v1.PathInfoService/",
        "/lazix.v1.ChunkService/",
        "/lazix.v1.ProfileService/",
    ];
    let ok = known.iter().any(|p| {
        path.strip_prefix(p).is_some_and(|m| {
            !m.is_empty() && m.len() <= 40 && m.chars().all(|c| c.is_ascii_alphanumeric())
        })
    });
    if ok {
        path.to_string()
    } else {
        "other".to_string()
    }
}

/// axum middleware counting each request of the binary-cache shim.
pub async fn track_http(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = http_route(req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.http(route, resp.status().as_u16(), started);
    let counter = metrics
        .http_bytes
        .get_or_create(&RouteLabels { route })
        .clone();
    resp.map(|inner| axum::body::Body::new(CountedBody { inner, counter }))
}

/// A response body counting the bytes it sends; its size hint is the
/// inner body's, so lengths are announced as before.
struct CountedBody {
    inner: axum::body::Body,
    counter: Counter,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `/metrics` handler.
pub async fn scrape(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.encode(),
    )
}

/// Serves `/metrics` alone on `listener` until `shutdown` (for commands
/// without an HTTP listener of their own: `--metrics ADDR`).
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A tower layer counting the gRPC calls of the services below it.
#[derive(Clone)]
pub struct GrpcLayer(pub Option<Arc<Metrics>>);

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcTracked<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcTracked {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`GrpcLayer`].
#[derive(Clone)]
pub struct GrpcTracked<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

impl<S, B, RB> tower::Service<tonic::codegen::http::Request<B>> for GrpcTracked<S>
where
    S: tower::Service<
        tonic::codegen::http::Request<B>,
        Response = tonic::codegen::http::Response<RB>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            if let (Some(m), Ok(r)) = (&metrics, &resp) {
                // A call answered at once with an error carries its status
                // in the headers (trailers-only); a streamed answer's
                // final status comes later, in trailers.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0");
                m.grpc(&method, code, started);
            }
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(http_route("/nar/abc.nar"), "nar");
        assert_eq!(http_route("/0123.narinfo"), "narinfo");
        assert_eq!(http_route("/anything/else"), "other");
        assert_eq!(
            known_method("/lazix.v1.ChunkService/ReadChunks"),
            "/lazix.v1.ChunkService/ReadChunks"
        );
        assert_eq!(known_method("/lazix.v1.ChunkService/x/y"), "other");
        assert_eq!(known_method("/evil.Service/Method"), "other");
    }

    #[test]
    fn readings_are_exposed_as_counters_and_gauges() {
        let m = Metrics::new(vec![Counters::new(|| {
            vec![
                Reading {
                    name: "mount_fetched_bytes",
                    help: "bytes fetched",
                    kind: Kind::Counter,
                    value: 42.0,
                },
                Reading {
                    name: "store_paths",
                    help: "paths",
                    kind: Kind::Gauge,
                    value: 7.0,
                },
            ]
        })]);
        m.http("narinfo", 200, Instant::now());
        let text = m.encode();
        assert!(
            text.contains("lazix_mount_fetched_bytes_total 42"),
            "{text}"
        );
        assert!(text.contains("lazix_store_paths 7"), "{text}");
        assert!(
            text.contains("lazix_http_requests_total{route=\"narinfo\",status=\"200\"} 1"),
            "{text}"
        );
    }
}
