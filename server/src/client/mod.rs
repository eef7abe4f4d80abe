//! The gRPC client: a remote lazix (or snix) server behind the same store
//! traits as a local backend, so the CLI, the renderer and the FUSE mount
//! work with either.
//!
//! Chunks travel through the batched `lazix.v1.ChunkService`; a server
//! without it (a snix daemon) is noticed on the first such call that
//! answers `Unimplemented`, and from then on this connection uses snix's
//! plain `BlobService` ([`snix`]).

mod snix;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lazix_castore::catalog::{entries_with_sizes, CatalogEntry};
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::directory::Directory;
use lazix_castore::frame::Frame;
use lazix_castore::limits::MAX_NODES;
use lazix_castore::read::slices::CoveredSlices;
use lazix_castore::store::{BlobChunks, BlobStore, DirectoryStore, PathInfoStore};
use lazix_castore::trust::ChunkListsDigest;
use lazix_castore::{B3Digest, PathInfo, Store, StoreError, StoreResult};
use lazix_proto::castore::{
    self as cpb, blob_service_client::BlobServiceClient,
    directory_service_client::DirectoryServiceClient,
};
use lazix_proto::ext::{
    self as lpb, catalog_service_client::CatalogServiceClient,
    chunk_service_client::ChunkServiceClient, profile_service_client::ProfileServiceClient,
};
use lazix_proto::store::{self as spb, path_info_service_client::PathInfoServiceClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::convert::{from_status, group_by_size, MAX_BATCH};
use crate::listen::ListenAddr;
use crate::MAX_MESSAGE_SIZE;

/// How long one call may take unless the caller says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How a client reaches its server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Bounds each call; `None`: the caller bounds its calls itself (as the
    /// mount does with its own `--timeout`, so that one timeout governs).
    pub call_timeout: Option<Duration>,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    pub token: Option<String>,
    /// For `grpcs://`: the CA certificates (PEM) the server's certificate
    /// must chain to; `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            token: None,
            ca_pem: None,
        }
    }
}

/// Adds the client's token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel whose calls carry the client's token.
type Conn = InterceptedService<Channel, BearerToken>;

/// A remote store reached over gRPC. Cheap to clone (one HTTP/2
/// connection, multiplexed).
#[derive(Clone)]
pub struct GrpcStore {
    chunks: ChunkServiceClient<Conn>,
    /// Access profiles (`lazix.v1`).
    profiles: ProfileServiceClient<Conn>,
    /// The catalog of store paths (`lazix.v1`).
    catalog: CatalogServiceClient<Conn>,
    /// snix's blob service, used once the server proved to lack `chunks`.
    blobs: BlobServiceClient<Conn>,
    /// Set when a `lazix.v1` call answered `Unimplemented`.
    snix_only: Arc<AtomicBool>,
    /// Set once the empty blob is known stored on a snix server.
    snix_empty_blob: Arc<tokio::sync::OnceCell<()>>,
    directories: DirectoryServiceClient<Conn>,
    path_infos: PathInfoServiceClient<Conn>,
}

/// Why a server address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not `grpc://HOST:PORT`, `grpcs://HOST:PORT` (TLS),
    /// `unix:///PATH` or `http://HOST:PORT`.
    #[error(
        "invalid server address {0:?}: expected grpc://HOST:PORT, grpcs://HOST:PORT or unix:///PATH"
    )]
    BadAddress(String),
    /// The transport refused the endpoint.
    #[error("cannot connect to {0}: {1}")]
    Transport(String, tonic::transport::Error),
    /// The token holds characters a header cannot carry.
    #[error("the token is not printable ASCII")]
    BadToken,
}

/// The host of a server address (`grpc://HOST:PORT`, `grpcs://[::1]:PORT`,
/// `HOST:PORT`), without brackets.
pub fn server_host(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether a server address names this machine (a Unix socket does).
pub fn is_loopback(addr: &str) -> bool {
    if addr.starts_with(crate::listen::UNIX_SCHEME) {
        return true;
    }
    let host = server_host(addr);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl GrpcStore {
    /// Connects lazily to `grpc://HOST:PORT`: the first call dials, and a
    /// dropped connection is redialled by later calls. Every call is one
    /// bounded batch: a server that stops answering fails the call after
    /// [`DEFAULT_CALL_TIMEOUT`] instead of hanging its caller.
    pub fn connect(addr: &str) -> Result<Self, ConnectError> {
        Self::connect_with(addr, &ClientOptions::default())
    }

    /// Like [`GrpcStore::connect`], with `options`.
    pub fn connect_with(addr: &str, options: &ClientOptions) -> Result<Self, ConnectError> {
        let socket = match addr.parse::<ListenAddr>() {
            Ok(ListenAddr::Unix(path)) => Some(path),
            _ if addr.starts_with(crate::listen::UNIX_SCHEME) => {
                return Err(ConnectError::BadAddress(addr.to_string()))
            }
            _ => None,
        };
        // A Unix socket: plain HTTP/2 over it; the URI only names it.
        let addr_for_uri = if socket.is_some() {
            "grpc://localhost:0"
        } else {
            addr
        };
        let (tls, rest) = if let Some(rest) = addr_for_uri.strip_prefix("grpcs://") {
            (true, rest)
        } else {
            let rest = addr_for_uri
                .strip_prefix("grpc://")
                .or_else(|| addr_for_uri.strip_prefix("http://"))
                .ok_or_else(|| ConnectError::BadAddress(addr.to_string()))?;
            (false, rest)
        };
        if rest.is_empty() || rest.contains('/') {
            return Err(ConnectError::BadAddress(addr.to_string()));
        }
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{rest}"))
            .map_err(|e| ConnectError::Transport(addr.to_string(), e))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024));
        if let Some(t) = options.call_timeout {
            endpoint = endpoint.timeout(t);
        }
        if tls {
            // The server's name as the address gives it (an IP address
            // is checked against the certificate's IP names).
            let mut config = ClientTlsConfig::new().domain_name(server_host(addr));
            config = match &options.ca_pem {
                Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
                None => config.with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| ConnectError::Transport(addr.to_string(), e))?;
        }
        let token = options
            .token
            .as_ref()
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {}", t.trim()))
                    .map_err(|_| ConnectError::BadToken)
            })
            .transpose()?;
        let channel = match socket {
            None => endpoint.connect_lazy(),
            Some(path) => {
                let path = std::sync::Arc::new(path);
                endpoint.connect_with_connector_lazy(tower::service_fn(
                    move |_: tonic::codegen::http::Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(&*path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    },
                ))
            }
        };
        let channel = InterceptedService::new(channel, BearerToken(token));
        Ok(Self {
            chunks: ChunkServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            profiles: ProfileServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            catalog: CatalogServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            blobs: BlobServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            snix_only: Arc::new(AtomicBool::new(false)),
            snix_empty_blob: Default::default(),
            directories: DirectoryServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            path_infos: PathInfoServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        })
    }

    /// The three services of this connection as a [`Store`].
    pub fn into_store(self) -> Store {
        Store::from_backend(Arc::new(self))
    }

    /// Whether this connection's server proved to have no `lazix.v1`
    /// calls (so chunks go through snix's blob service).
    pub fn is_snix_only(&self) -> bool {
        self.snix_only.load(Ordering::Relaxed)
    }

    /// The frames of `digests` over `lazix.v1` (`exact`: see
    /// [`BlobStore::get_frames_exact`]), or from a snix server chunk by
    /// chunk.
    async fn frames(&self, digests: &[B3Digest], exact: bool) -> StoreResult<Vec<Frame>> {
        if !self.is_snix_only() {
            if let Some(frames) = self.lazix_get_frames(digests, exact).await? {
                return Ok(frames);
            }
            self.note_snix_only();
        }
        snix::get_frames(&self.blobs, digests).await
    }

    fn note_snix_only(&self) {
        if !self.snix_only.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "the server has no lazix.v1 calls (a snix server?): chunks go through its BlobService, one call per chunk"
            );
        }
    }

    async fn lazix_missing_chunks(
        &self,
        digests: &[B3Digest],
    ) -> StoreResult<Option<Vec<B3Digest>>> {
        let mut missing = Vec::new();
        for batch in digests.chunks(MAX_BATCH) {
            let resp = self
                .chunks
                .clone()
                .find_missing_chunks(lpb::FindMissingChunksRequest {
                    digests: batch.iter().map(|d| (*d).into()).collect(),
                })
                .await;
            let Some(resp) = answered(resp)? else {
                return Ok(None);
            };
            for m in resp.into_inner().missing {
                missing
                    .push(B3Digest::try_from(&m).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
        }
        Ok(Some(missing))
    }

    async fn lazix_put_frames(&self, frames: Vec<Frame>, order: u64) -> StoreResult<Option<()>> {
        let msgs: Vec<lpb::PutChunksRequest> = group_by_size(frames, |f| f.data.len() as u64)
            .into_iter()
            .map(|g| lpb::PutChunksRequest {
                frames: g.iter().map(Frame::to_proto).collect(),
                upload_order: order,
            })
            .collect();
        let resp = self
            .chunks
            .clone()
            .put_chunks(futures::stream::iter(msgs))
            .await;
        Ok(answered(resp)?.map(|_| ()))
    }

    async fn lazix_get_frames(
        &self,
        digests: &[B3Digest],
        exact: bool,
    ) -> StoreResult<Option<Vec<Frame>>> {
        let mut out: Vec<Frame> = Vec::new();
        let mut slices = CoveredSlices::new(digests, MAX_BATCH);
        while let Some(wanted) = slices.next_wanted() {
            let resp = self
                .chunks
                .clone()
                .read_chunks(lpb::ReadChunksRequest {
                    digests: wanted.iter().map(|d| (*d).into()).collect(),
                    exact,
                })
                .await;
            let Some(resp) = answered(resp)? else {
                return Ok(None);
            };
            let mut stream = resp.into_inner();
            while let Some(msg) = stream.message().await.map_err(from_status)? {
                for f in msg.frames {
                    let frame = Frame::try_from_proto(f)?;
                    slices.cover(&frame);
                    out.push(frame);
                }
            }
        }
        if let Some(d) = digests.iter().find(|d| !slices.is_covered(d)) {
            return Err(StoreError::Corrupt(format!(
                "server answered frames without chunk {d}"
            )));
        }
        Ok(Some(out))
    }

    async fn lazix_put_blob_chunks(&self, blobs: &[BlobChunks]) -> StoreResult<Option<()>> {
        for batch in blobs.chunks(256) {
            let resp = self
                .chunks
                .clone()
                .put_blob_chunks(lpb::PutBlobChunksRequest {
                    blobs: batch
                        .iter()
                        .map(|b| lpb::BlobChunks {
                            blob_digest: b.blob.into(),
                            chunks: b.chunks.iter().map(ChunkMeta::to_proto).collect(),
                        })
                        .collect(),
                })
                .await;
            if answered(resp)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    async fn lazix_get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Option<Vec<Option<Vec<ChunkMeta>>>>> {
        let mut out = Vec::with_capacity(blobs.len());
        for batch in blobs.chunks(MAX_BATCH) {
            let resp = self
                .chunks
                .clone()
                .get_blob_chunks(lpb::GetBlobChunksRequest {
                    blob_digests: batch.iter().map(|d| (*d).into()).collect(),
                })
                .await;
            let Some(resp) = answered(resp)? else {
                return Ok(None);
            };
            let resp = resp.into_inner();
            if resp.answers.len() != batch.len() {
                return Err(StoreError::Corrupt("short GetBlobChunks answer".into()));
            }
            for a in resp.answers {
                out.push(if a.known {
                    Some(
                        a.chunks
                            .iter()
                            .map(ChunkMeta::try_from_proto)
                            .collect::<StoreResult<Vec<_>>>()?,
                    )
                } else {
                    None
                });
            }
        }
        Ok(Some(out))
    }
}

/// A call's answer; `None` if the server does not know the call
/// (`Unimplemented`: a server without `lazix.v1`).
fn answered<T>(res: Result<T, tonic::Status>) -> StoreResult<Option<T>> {
    match res {
        Ok(r) => Ok(Some(r)),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(from_status(s)),
    }
}

#[async_trait]
impl BlobStore for GrpcStore {
    async fn missing_chunks(&self, digests: &[B3Digest]) -> StoreResult<Vec<B3Digest>> {
        if !self.is_snix_only() {
            if let Some(missing) = self.lazix_missing_chunks(digests).await? {
                return Ok(missing);
            }
            self.note_snix_only();
        }
        // An upload's first question: the moment to store the empty blob
        // snix's readers expect (see `snix::ensure_empty_blob`).
        self.snix_empty_blob
            .get_or_try_init(|| snix::ensure_empty_blob(&self.blobs))
            .await?;
        snix::missing_chunks(&self.blobs, digests).await
    }

    async fn put_frames_ordered(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        if !self.is_snix_only() {
            // Cheap to keep: frames are reference-counted bytes.
            if let Some(()) = self.lazix_put_frames(frames.clone(), order).await? {
                return Ok(());
            }
            self.note_snix_only();
        }
        snix::put_frames(&self.blobs, frames).await
    }

    async fn get_frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.frames(digests, false).await
    }

    async fn get_frames_exact(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        self.frames(digests, true).await
    }

    async fn put_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        if !self.is_snix_only() {
            if let Some(()) = self.lazix_put_blob_chunks(&blobs).await? {
                return Ok(());
            }
            self.note_snix_only();
        }
        snix::put_blob_chunks(&self.blobs, blobs).await
    }

    async fn get_blob_chunks(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        if !self.is_snix_only() {
            if let Some(lists) = self.lazix_get_blob_chunks(blobs).await? {
                return Ok(lists);
            }
            self.note_snix_only();
        }
        snix::get_blob_chunks(&self.blobs, blobs).await
    }

    /// Asks the server for the manifest; a server without the call (snix,
    /// an older lazix) answers `Unimplemented`: `None`, and the caller
    /// gathers the lists. The answer is bounded as it arrives (at most a
    /// path's node limit of records) and checked only by the caller's
    /// signature.
    /// (An older lazix server lacks only this call: not a sign of a snix
    /// server.)
    async fn chunk_list_digests(&self, root: &B3Digest) -> StoreResult<Option<ChunkListsDigest>> {
        if self.is_snix_only() {
            return Ok(None);
        }
        let answer = self
            .chunks
            .clone()
            .get_chunk_list_digests(lpb::GetChunkListDigestsRequest {
                root_digest: (*root).into(),
            })
            .await;
        let Some(answer) = answered(answer)? else {
            return Ok(None);
        };
        let mut stream = answer.into_inner();
        let most = MAX_NODES as usize * ChunkListsDigest::RECORD_LEN;
        let mut records = Vec::new();
        while let Some(msg) = stream.message().await.map_err(from_status)? {
            if records.len() + msg.records.len() > most {
                return Err(StoreError::Corrupt(format!(
                    "manifest of {root}: more records than a store path may have"
                )));
            }
            records.extend_from_slice(&msg.records);
        }
        ChunkListsDigest::from_records(&records).map(Some)
    }
}

#[async_trait]
impl DirectoryStore for GrpcStore {
    async fn get_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        let req = cpb::GetDirectoryRequest {
            by_what: Some(cpb::get_directory_request::ByWhat::Digest((*digest).into())),
            recursive: false,
        };
        let mut stream = match self.directories.clone().get(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(from_status(s)),
        };
        match stream.message().await {
            Ok(Some(d)) => {
                let dir = Directory::try_from_proto(d)?;
                if dir.digest() != *digest {
                    return Err(StoreError::Corrupt(format!(
                        "directory {digest}: digest mismatch"
                    )));
                }
                Ok(Some(dir))
            }
            Ok(None) => Ok(None),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(from_status(s)),
        }
    }

    async fn get_closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        let req = cpb::GetDirectoryRequest {
            by_what: Some(cpb::get_directory_request::ByWhat::Digest((*root).into())),
            recursive: true,
        };
        let mut stream = self
            .directories
            .clone()
            .get(req)
            .await
            .map_err(from_status)?
            .into_inner();
        // Verified as it streams: each directory must be the root or
        // referenced by one received earlier, with the digest it was
        // referenced by, and arrive once; at most a closure's worth.
        let mut expected = std::collections::HashSet::from([*root]);
        let mut received = std::collections::HashSet::new();
        let mut out = Vec::new();
        while let Some(d) = stream.message().await.map_err(from_status)? {
            let dir = Directory::try_from_proto(d)?;
            let digest = dir.digest();
            if !expected.contains(&digest) || !received.insert(digest) {
                return Err(StoreError::Corrupt(format!(
                    "server sent unexpected directory {digest}"
                )));
            }
            for (_, child, _) in dir.child_directories() {
                expected.insert(child);
            }
            out.push(dir);
            lazix_castore::directory::check_closure_len(out.len())?;
        }
        if out.is_empty() {
            return Err(StoreError::NotFound(format!("directory {root}")));
        }
        Ok(out)
    }

    async fn put_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        let msgs: Vec<cpb::Directory> = dirs.into_iter().map(Directory::into_proto).collect();
        let resp = self
            .directories
            .clone()
            .put(futures::stream::iter(msgs))
            .await
            .map_err(from_status)?
            .into_inner();
        B3Digest::try_from(&resp.root_digest).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

#[async_trait]
impl PathInfoStore for GrpcStore {
    async fn get_path_info(&self, digest: &[u8; 20]) -> StoreResult<Option<PathInfo>> {
        let req = spb::GetPathInfoRequest {
            by_what: Some(spb::get_path_info_request::ByWhat::ByOutputHash(
                digest.to_vec().into(),
            )),
        };
        match self.path_infos.clone().get(req).await {
            Ok(r) => {
                let info = PathInfo::try_from_proto(&r.into_inner())?;
                if info.store_path.digest() != digest {
                    return Err(StoreError::Corrupt("server answered another path".into()));
                }
                Ok(Some(info))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(from_status(s)),
        }
    }

    async fn put_path_info(&self, info: PathInfo) -> StoreResult<()> {
        self.path_infos
            .clone()
            .put(info.to_proto())
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// A server without profiles (snix, an older lazix) has none.
    async fn get_profile(&self, digest: &[u8; 20]) -> StoreResult<Option<bytes::Bytes>> {
        let answer = self
            .profiles
            .clone()
            .get(lpb::GetProfileRequest {
                store_path_digest: digest.to_vec().into(),
            })
            .await;
        let Some(answer) = answered(answer)? else {
            return Ok(None);
        };
        let answer = answer.into_inner();
        Ok(answer.found.then_some(answer.profile))
    }

    async fn put_profile(&self, digest: &[u8; 20], profile: bytes::Bytes) -> StoreResult<()> {
        self.profiles
            .clone()
            .put(lpb::PutProfileRequest {
                store_path_digest: digest.to_vec().into(),
                profile,
            })
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// From the server's catalog; a server without one (snix, an older
    /// lazix) lists every PathInfo. Each entry is checked (a node, a name
    /// that is a store path's basename).
    async fn list_catalog(&self) -> StoreResult<BoxStream<'static, StoreResult<CatalogEntry>>> {
        let answer = self.catalog.clone().list(lpb::ListCatalogRequest {}).await;
        let Some(answer) = answered(answer)? else {
            return Ok(self
                .list_path_infos()
                .map_ok(|info| CatalogEntry::of(&info))
                .boxed());
        };
        Ok(answer
            .into_inner()
            .map_err(from_status)
            .map_ok(|batch| {
                let entries = entries_with_sizes(&batch.entries, &batch.nar_sizes);
                futures::stream::iter(match entries {
                    Ok(entries) => entries.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                })
            })
            .try_flatten()
            .boxed())
    }

    fn list_path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        let mut client = self.path_infos.clone();
        futures::stream::once(async move {
            client
                .list(spb::ListPathInfoRequest {})
                .await
                .map_err(from_status)
        })
        .map_ok(|r| {
            r.into_inner()
                .map_err(from_status)
                .and_then(|p| async move { PathInfo::try_from_proto(&p) })
        })
        .try_flatten()
        .boxed()
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn hosts_of_server_addresses() {
        assert_eq!(
            server_host("grpcs://cache.example.org:9721"),
            "cache.example.org"
        );
        assert_eq!(server_host("grpc://[::1]:9721"), "::1");
        assert_eq!(server_host("127.0.0.1:9721"), "127.0.0.1");
        for local in [
            "grpc://127.0.0.1:1",
            "grpcs://localhost:1",
            "grpc://[::1]:1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "grpc://10.0.0.1:1",
            "grpcs://cache.example.org:1",
            "grpc://0.0.0.0:1",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
