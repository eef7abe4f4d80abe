//! The lazix servers: the gRPC server over a castore store (on TCP or a
//! Unix socket, [`listen`]), and the gRPC client that puts a remote server
//! behind the same store traits.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod convert;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod service;
pub mod tls;

use std::net::SocketAddr;

use futures::StreamExt;
use lazix_castore::Store;
use lazix_proto::castore::{
    blob_service_server::BlobServiceServer, directory_service_server::DirectoryServiceServer,
};
use lazix_proto::ext::catalog_service_server::CatalogServiceServer;
use lazix_proto::ext::chunk_service_server::ChunkServiceServer;
use lazix_proto::ext::profile_service_server::ProfileServiceServer;
use lazix_proto::store::path_info_service_server::PathInfoServiceServer;

pub use client::GrpcStore;
pub use service::StoreService;

/// Largest gRPC message either side accepts. Our own messages stay near
/// 2 MiB; the margin admits large directories and big batches.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Concurrent gRPC calls one connection may have open (the mount and the
/// renderer keep a few windows in flight; 256 leaves room for many).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Which services a gRPC listener offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Services {
    /// snix's three services and lazix's own (`lazix.v1`: batched chunk
    /// calls, access profiles).
    #[default]
    All,
    /// snix's services alone, as a snix daemon offers them: for
    /// interoperability tests and for measuring what `lazix.v1` buys.
    SnixOnly,
}

/// Serves `store` over gRPC on an already bound listener (over TLS with
/// `tls`; a Unix socket is always plain), to the callers `access` admits,
/// with `services`, counting calls in `metrics`, until `shutdown`
/// resolves.
pub async fn serve_grpc(
    store: Store,
    access: service::GrpcAccess,
    services: Services,
    metrics: Option<std::sync::Arc<metrics::Metrics>>,
    tls: Option<&tls::ServerTls>,
    listener: listen::Listener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let svc = StoreService::with_access(store, access);
    match listener {
        listen::Listener::Tcp(listener) => {
            // Our own listener: tonic's tcp_nodelay only applies to
            // sockets it binds, so set it here (Nagle would hold small
            // replies ~40 ms).
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                    }
                })
            });
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls.grpc())?;
            }
            serve_incoming(builder, svc, services, metrics, incoming, shutdown).await
        }
        listen::Listener::Unix(listener, _file) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            serve_incoming(
                tonic::transport::Server::builder(),
                svc,
                services,
                metrics,
                incoming,
                shutdown,
            )
            .await
        }
    }
}

/// The services on connections from `incoming`.
async fn serve_incoming<IO, IE>(
    builder: tonic::transport::Server,
    svc: StoreService,
    services: Services,
    metrics: Option<std::sync::Arc<metrics::Metrics>>,
    incoming: impl futures::Stream<Item = Result<IO, IE>> + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    builder
        // The first layer is the outermost: old names are renamed before
        // calls are counted.
        .layer(tower::util::MapRequestLayer::new(tvix_to_snix))
        .layer(metrics::GrpcLayer(metrics))
        .tcp_nodelay(true)
        // A peer that vanished (or never answers) is dropped instead of
        // holding its streams; one connection cannot open streams without
        // bound.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        .add_service(
            BlobServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            DirectoryServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            PathInfoServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_optional_service((services == Services::All).then(|| {
            CatalogServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE)
        }))
        .add_optional_service((services == Services::All).then(|| {
            ProfileServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE)
        }))
        .add_optional_service((services == Services::All).then(|| {
            ChunkServiceServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE)
        }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Older Tvix clients call the same services under their former package
/// names (`tvix.castore.v1`, `tvix.store.v1`; the messages are the same on
/// the wire): their calls are routed as the `snix.*` ones.
fn tvix_to_snix(
    mut req: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    let path = req.uri().path();
    let renamed = ["castore", "store"].iter().find_map(|pkg| {
        path.strip_prefix(&format!("/tvix.{pkg}.v1."))
            .map(|rest| format!("/snix.{pkg}.v1.{rest}"))
    });
    if let Some(renamed) = renamed {
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = renamed.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = tonic::codegen::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Binds `addr` (TCP) for [`serve_grpc`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<listen::Listener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map(listen::Listener::Tcp)
}
