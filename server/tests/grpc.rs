//! The gRPC services through a real tonic server (on a loopback port) and
//! real clients: our `GrpcStore` and the generated snix-protocol clients.

use bytes::Bytes;
use lazix_castore::bucket::BucketStore;
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::directory::{Directory, DirectoryBuilder};
use lazix_castore::frame::Frame;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::store::BlobChunks;
use lazix_castore::testutil::frame_of;
use lazix_castore::{B3Digest, Node, PathInfo, Store, StoreError};
use lazix_proto::castore as cpb;
use lazix_proto::castore::blob_service_client::BlobServiceClient;
use lazix_proto::castore::directory_service_client::DirectoryServiceClient;
use lazix_proto::store::path_info_service_client::PathInfoServiceClient;
use lazix_server::{GrpcStore, Services};
use tonic::Code;

struct TestServer {
    addr: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start() -> TestServer {
    start_with(Services::All).await
}

async fn start_with(services: Services) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::from_backend(
        BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let listener = lazix_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = format!("grpc://{}", listener.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let access = lazix_server::service::GrpcAccess::for_listener(Default::default(), &listener);
    tokio::spawn(lazix_server::serve_grpc(
        store,
        access,
        services,
        None,
        None,
        listener,
        async {
            let _ = rx.await;
        },
    ));
    TestServer {
        addr,
        _dir: dir,
        stop: Some(tx),
    }
}

fn http(addr: &str) -> String {
    addr.replace("grpc://", "http://")
}

use lazix_castore::testutil::pseudo_random as random;

#[tokio::test]
async fn batched_chunks_roundtrip_and_reject_bad_chunks() {
    let srv = start().await;
    let store = GrpcStore::connect(&srv.addr).unwrap().into_store();
    let a_bytes = random(100_000, 1);
    let b_bytes = vec![5u8; 70_000];
    let (fa, fb) = (frame_of(&[&a_bytes]), frame_of(&[&b_bytes]));
    let (a, b) = (fa.chunks[0], fb.chunks[0]);
    let missing = store
        .blobs
        .missing_chunks(&[a.digest, b.digest])
        .await
        .unwrap();
    assert_eq!(missing, vec![a.digest, b.digest]);
    store.blobs.put_frames(vec![fa, fb]).await.unwrap();
    assert!(store
        .blobs
        .missing_chunks(&[a.digest, b.digest])
        .await
        .unwrap()
        .is_empty());
    // Read back in request order (b first), verified.
    let got = store.blobs.get_chunks(&[b.digest, a.digest]).await.unwrap();
    assert_eq!(got[0].decode_verified().unwrap(), vec![5u8; 70_000]);
    assert_eq!(got[1].decode_verified().unwrap(), random(100_000, 1));

    // A chunk whose bytes do not match its digest is refused and nothing
    // of its call is stored (not even the honest frame beside it).
    let bad = ChunkMeta {
        digest: B3Digest::of(b"honest bytes"),
        size: 12,
    };
    let forged = Frame::compress(&[(bad, Bytes::from_static(b"forged bytes"))]).unwrap();
    let honest = frame_of(&[b"an honest neighbour"]);
    let neighbour = honest.chunks[0].digest;
    let err = store
        .blobs
        .put_frames(vec![honest, forged])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(
        store
            .blobs
            .missing_chunks(&[bad.digest, neighbour])
            .await
            .unwrap(),
        vec![bad.digest, neighbour]
    );
    let err = store.blobs.get_chunks(&[bad.digest]).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    // A chunk list whose chunks do not hash to the blob digest is refused.
    let lie = BlobChunks {
        blob: B3Digest::of(b"something else"),
        chunks: vec![a, b],
    };
    assert!(store
        .blobs
        .put_blob_chunks(vec![lie.clone()])
        .await
        .is_err());
    let lists = store.blobs.get_blob_chunks(&[lie.blob]).await.unwrap();
    assert_eq!(lists, vec![None]);
    // A blob small enough to be one chunk gets no list (readers do not
    // look one up), even a true one.
    let (small_a, small_b) = (frame_of(&[b"small a"]), frame_of(&[b"small b"]));
    let small = BlobChunks {
        blob: B3Digest::of(b"small asmall b"),
        chunks: vec![small_a.chunks[0], small_b.chunks[0]],
    };
    store
        .blobs
        .put_frames(vec![small_a, small_b])
        .await
        .unwrap();
    let err = store
        .blobs
        .put_blob_chunks(vec![small.clone()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stored as one chunk"), "{err}");
    assert_eq!(
        store.blobs.get_blob_chunks(&[small.blob]).await.unwrap(),
        vec![None]
    );
    // The true one is accepted.
    let mut whole = random(100_000, 1);
    whole.extend(vec![5u8; 70_000]);
    let truth = BlobChunks {
        blob: B3Digest::of(&whole),
        ..lie
    };
    store
        .blobs
        .put_blob_chunks(vec![truth.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.blobs.get_blob_chunks(&[truth.blob]).await.unwrap(),
        vec![Some(truth.chunks.clone())]
    );
}

#[tokio::test]
async fn snix_blob_service_put_stat_read() {
    let srv = start().await;
    let mut client = BlobServiceClient::connect(http(&srv.addr)).await.unwrap();
    let data = random(1_000_000, 7);
    let parts: Vec<cpb::BlobChunk> = data
        .chunks(100_000)
        .map(|c| cpb::BlobChunk {
            data: Bytes::copy_from_slice(c),
        })
        .collect();
    let digest = client
        .put(futures::stream::iter(parts))
        .await
        .unwrap()
        .into_inner()
        .digest;
    assert_eq!(digest.as_ref(), blake3::hash(&data).as_bytes());

    let stat = client
        .stat(cpb::StatBlobRequest {
            digest: digest.clone(),
            send_chunks: true,
            send_bao: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stat.chunks.len() > 1, "a 1 MB blob has several chunks");
    assert_eq!(
        stat.chunks.iter().map(|c| c.size).sum::<u64>(),
        data.len() as u64
    );

    let mut read = client
        .read(cpb::ReadBlobRequest {
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(c) = read.message().await.unwrap() {
        back.extend_from_slice(&c.data);
    }
    assert!(back == data);

    // A chunk digest reads as a blob of its own.
    let first = stat.chunks[0].clone();
    let mut read = client
        .read(cpb::ReadBlobRequest {
            digest: first.digest,
        })
        .await
        .unwrap()
        .into_inner();
    let mut part = Vec::new();
    while let Some(c) = read.message().await.unwrap() {
        part.extend_from_slice(&c.data);
    }
    assert_eq!(part.as_slice(), &data[..first.size as usize]);

    let missing = B3Digest::of(b"never stored");
    let err = client
        .stat(cpb::StatBlobRequest {
            digest: missing.into(),
            send_chunks: true,
            send_bao: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .read(cpb::ReadBlobRequest {
            digest: vec![1u8; 5].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

fn file(data: &[u8]) -> Node {
    Node::File {
        digest: B3Digest::of(data),
        size: data.len() as u64,
        executable: false,
    }
}

fn dir_node(d: &Directory) -> Node {
    Node::Directory {
        digest: d.digest(),
        size: d.size(),
    }
}

fn tree() -> (Directory, Directory, Directory) {
    let leaf = Directory::empty();
    let mut mid = DirectoryBuilder::default();
    mid.add("leaf".into(), dir_node(&leaf));
    mid.add("f".into(), file(b"x"));
    let mid = mid.build().unwrap();
    let mut root = DirectoryBuilder::default();
    root.add("mid".into(), dir_node(&mid));
    root.add("also-leaf".into(), dir_node(&leaf));
    root.add(
        "l".into(),
        Node::Symlink {
            target: "mid/f".into(),
        },
    );
    (leaf, mid, root.build().unwrap())
}

#[tokio::test]
async fn directory_service_validates_uploads() {
    let srv = start().await;
    let client = DirectoryServiceClient::connect(http(&srv.addr))
        .await
        .unwrap();
    let (leaf, mid, root) = tree();

    let put = |dirs: Vec<cpb::Directory>| {
        let mut c = client.clone();
        async move { c.put(futures::stream::iter(dirs)).await }
    };
    let get = |d: B3Digest, recursive: bool| {
        let mut c = client.clone();
        async move {
            let req = cpb::GetDirectoryRequest {
                by_what: Some(cpb::get_directory_request::ByWhat::Digest(d.into())),
                recursive,
            };
            match c.get(req).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    let mut out = Vec::new();
                    loop {
                        match s.message().await {
                            Ok(Some(d)) => out.push(d),
                            Ok(None) => return Ok(out),
                            Err(e) => return Err(e.code()),
                        }
                    }
                }
                Err(e) => Err(e.code()),
            }
        }
    };

    // Root before its children: rejected, nothing stored.
    let err = put(vec![
        root.proto().clone(),
        mid.proto().clone(),
        leaf.proto().clone(),
    ])
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(get(root.digest(), false).await, Err(Code::NotFound));
    assert_eq!(get(mid.digest(), false).await, Err(Code::NotFound));

    // A child with a wrong size: rejected.
    let mut wrong = root.proto().clone();
    wrong.directories.iter_mut().for_each(|d| d.size += 1);
    let err = put(vec![leaf.proto().clone(), mid.proto().clone(), wrong])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(get(mid.digest(), false).await, Err(Code::NotFound));

    // Unsorted entries and bad names: rejected.
    let mut unsorted = mid.proto().clone();
    unsorted.files.push(cpb::FileEntry {
        name: "a".into(),
        digest: B3Digest::of(b"").into(),
        size: 0,
        executable: false,
    });
    assert_eq!(
        put(vec![leaf.proto().clone(), unsorted])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    for bad in ["..", ".", "a/b", ""] {
        let mut d = cpb::Directory::default();
        d.symlinks.push(cpb::SymlinkEntry {
            name: bad.into(),
            target: "x".into(),
        });
        assert_eq!(
            put(vec![d]).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    // Undecodable bytes in a digest field.
    let mut short = cpb::Directory::default();
    short.files.push(cpb::FileEntry {
        name: "f".into(),
        digest: vec![0u8; 3].into(),
        size: 1,
        executable: false,
    });
    assert_eq!(
        put(vec![short]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // An unconnected extra directory.
    let mut stray = DirectoryBuilder::default();
    stray.add("stray".into(), file(b"stray"));
    let stray = stray.build().unwrap();
    assert_eq!(
        put(vec![
            stray.proto().clone(),
            leaf.proto().clone(),
            mid.proto().clone(),
            root.proto().clone()
        ])
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(get(stray.digest(), false).await, Err(Code::NotFound));

    // The proper order is accepted and answers the root digest.
    let resp = put(vec![
        leaf.proto().clone(),
        mid.proto().clone(),
        root.proto().clone(),
    ])
    .await
    .unwrap()
    .into_inner();
    assert_eq!(resp.root_digest.as_ref(), root.digest().as_bytes());
    // Recursive get: root first, breadth-first, each directory once.
    let got = get(root.digest(), true).await.unwrap();
    let digests: Vec<B3Digest> = got
        .into_iter()
        .map(|d| Directory::try_from_proto(d).unwrap().digest())
        .collect();
    assert_eq!(digests, vec![root.digest(), leaf.digest(), mid.digest()]);
    // A later upload may refer to stored directories.
    let mut top = DirectoryBuilder::default();
    top.add("r".into(), dir_node(&root));
    let top = top.build().unwrap();
    put(vec![top.proto().clone()]).await.unwrap();
    // Through our client: the closure verifies.
    let store = GrpcStore::connect(&srv.addr).unwrap().into_store();
    assert_eq!(
        store
            .directories
            .get_closure(&top.digest())
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn path_info_service_put_get_list_calculate() {
    let srv = start().await;
    let store = GrpcStore::connect(&srv.addr).unwrap().into_store();
    let data = Bytes::from(random(300_000, 3));
    let blob = B3Digest::of(&data);
    // Upload the file through the snix blob service, a directory above it.
    let mut blobs = BlobServiceClient::connect(http(&srv.addr)).await.unwrap();
    blobs
        .put(futures::stream::iter(vec![cpb::BlobChunk {
            data: data.clone(),
        }]))
        .await
        .unwrap();
    let mut b = DirectoryBuilder::default();
    b.add(
        "payload".into(),
        Node::File {
            digest: blob,
            size: data.len() as u64,
            executable: true,
        },
    );
    let dir = b.build().unwrap();
    let node = dir_node(&dir);
    let path = StorePath::parse("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-grpc-test").unwrap();
    let mut info = PathInfo::of_root(path.clone(), node.clone());
    info.references = vec![path.clone()];
    // Root not stored yet: refused.
    let err = store
        .path_infos
        .put_path_info(info.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(store
        .path_infos
        .get_path_info(path.digest())
        .await
        .unwrap()
        .is_none());
    store
        .directories
        .put_closure(vec![dir.clone()])
        .await
        .unwrap();

    // CalculateNAR through the snix service equals a local render.
    let mut pis = PathInfoServiceClient::connect(http(&srv.addr))
        .await
        .unwrap();
    let calc = pis
        .calculate_nar(node.to_entry("".into()))
        .await
        .unwrap()
        .into_inner();
    let mut nar = Vec::new();
    let (size, sha) = lazix_castore::render::render_nar(&store, &node, &mut nar)
        .await
        .unwrap();
    assert_eq!(calc.nar_size, size);
    assert_eq!(calc.nar_sha256.as_ref(), sha);
    assert_eq!(nar.len() as u64, size);
    assert!(nar.windows(data.len()).any(|w| w == data.as_ref()));

    info.nar_size = size;
    info.nar_sha256 = sha;
    store.path_infos.put_path_info(info.clone()).await.unwrap();
    assert_eq!(
        store.path_infos.get_path_info(path.digest()).await.unwrap(),
        Some(info.clone())
    );
    let listed: Vec<PathInfo> =
        futures::TryStreamExt::try_collect(store.path_infos.list_path_infos())
            .await
            .unwrap();
    assert_eq!(listed, vec![info.clone()]);
    // The catalog (lazix.v1) lists the same path with its root.
    let catalog: Vec<lazix_castore::catalog::CatalogEntry> =
        futures::TryStreamExt::try_collect(store.path_infos.list_catalog().await.unwrap())
            .await
            .unwrap();
    assert_eq!(
        catalog,
        vec![lazix_castore::catalog::CatalogEntry::of(&info)]
    );

    // Malformed requests get clear errors.
    let bad = lazix_proto::store::GetPathInfoRequest {
        by_what: Some(
            lazix_proto::store::get_path_info_request::ByWhat::ByOutputHash(vec![1u8; 3].into()),
        ),
    };
    assert_eq!(
        pis.get(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let garbage = lazix_proto::store::PathInfo {
        entry: Some(node.to_entry("not a store path".into())),
        ..Default::default()
    };
    assert_eq!(
        pis.put(garbage).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn unreachable_server_is_an_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = GrpcStore::connect(&format!("grpc://127.0.0.1:{port}"))
        .unwrap()
        .into_store();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.path_infos.get_path_info(&[0u8; 20]),
    )
    .await
    .expect("answered in time");
    assert!(res.is_err());
    assert!(GrpcStore::connect("http//nope").is_err());
}

#[tokio::test]
async fn the_services_answer_under_their_old_tvix_names_too() {
    let srv = start().await;
    let data = Bytes::from(random(50_000, 9));
    let mut blobs = BlobServiceClient::connect(http(&srv.addr)).await.unwrap();
    let put = blobs
        .put(futures::stream::iter(vec![cpb::BlobChunk {
            data: data.clone(),
        }]))
        .await
        .unwrap()
        .into_inner();
    let channel = tonic::transport::Endpoint::from_shared(http(&srv.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let stat = |path: &'static str, digest: Bytes| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(cpb::StatBlobRequest {
                    digest,
                    send_chunks: false,
                    send_bao: false,
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<cpb::StatBlobRequest, cpb::StatBlobResponse>::default(),
            )
            .await
        }
    };
    // The old name reaches the same service: a stored blob is there, an
    // unknown one is NotFound (not Unimplemented).
    stat("/tvix.castore.v1.BlobService/Stat", put.digest.clone())
        .await
        .unwrap();
    let unknown = Bytes::copy_from_slice(B3Digest::of(b"never stored").as_bytes());
    assert_eq!(
        stat("/tvix.castore.v1.BlobService/Stat", unknown)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Names no service ever had stay unknown.
    assert_eq!(
        stat("/other.castore.v1.BlobService/Stat", put.digest)
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented
    );
}

/// A store's chunk calls through snix's plain BlobService, as against a
/// snix daemon: the client notices the missing `lazix.v1` calls and falls
/// back by itself; what it reads is what was stored.
#[tokio::test]
async fn a_snix_only_server_is_used_through_its_blob_service() {
    let srv = start_with(Services::SnixOnly).await;
    let mut raw =
        lazix_proto::ext::chunk_service_client::ChunkServiceClient::connect(http(&srv.addr))
            .await
            .unwrap();
    assert_eq!(
        raw.find_missing_chunks(lazix_proto::ext::FindMissingChunksRequest { digests: vec![] })
            .await
            .unwrap_err()
            .code(),
        Code::Unimplemented,
        "a --snix-only server offers no lazix.v1 calls"
    );

    let client = GrpcStore::connect(&srv.addr).unwrap();
    let store = client.clone().into_store();
    let (a, b, c) = (random(20_000, 41), random(30_000, 42), random(10_000, 43));
    let (da, db, dc) = (B3Digest::of(&a), B3Digest::of(&b), B3Digest::of(&c));
    assert_eq!(
        store.blobs.missing_chunks(&[da, db, dc]).await.unwrap(),
        vec![da, db, dc]
    );
    assert!(client.is_snix_only(), "the first chunk call found out");
    // No catalog service: the listing falls back to snix's PathInfo list.
    let catalog: Vec<lazix_castore::catalog::CatalogEntry> = futures::TryStreamExt::try_collect(
        store
            .path_infos
            .list_catalog()
            .await
            .expect("fallback listing"),
    )
    .await
    .expect("fallback listing");
    assert!(catalog.is_empty());
    let mut snix_blobs = BlobServiceClient::connect(http(&srv.addr)).await.unwrap();
    let empty = snix_blobs
        .stat(cpb::StatBlobRequest {
            digest: Bytes::copy_from_slice(B3Digest::of(b"").as_bytes()),
            send_chunks: true,
            send_bao: false,
        })
        .await
        .expect("the empty blob is there for snix's readers")
        .into_inner();
    assert!(empty.chunks.is_empty());
    store
        .blobs
        .put_frames(vec![frame_of(&[&a, &b]), frame_of(&[&c])])
        .await
        .unwrap();
    let never = B3Digest::of(b"never stored here");
    assert_eq!(
        store.blobs.missing_chunks(&[dc, never, da]).await.unwrap(),
        vec![never]
    );
    let got = store.blobs.get_chunks(&[db, dc, da, db]).await.unwrap();
    let bytes: Vec<Bytes> = got.iter().map(|c| c.decode_verified().unwrap()).collect();
    assert_eq!(bytes, vec![b.clone(), c.clone(), a.clone(), b.clone()]);
    assert!(matches!(
        store.blobs.get_frames(&[da, never]).await,
        Err(StoreError::NotFound(_))
    ));

    // A multi-chunk blob: uploaded whole (snix chunks it its own way), read
    // back through the chunk list the server answers.
    let parts: Vec<Vec<u8>> = (0..3).map(|i| random(40_000, 50 + i)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    store.blobs.put_frames(vec![frame_of(&refs)]).await.unwrap();
    let whole = parts.concat();
    let blob = B3Digest::of(&whole);
    assert_eq!(
        store.blobs.get_blob_chunks(&[blob]).await.unwrap(),
        vec![None]
    );
    store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob,
            chunks: parts.iter().map(|p| ChunkMeta::of(p)).collect(),
        }])
        .await
        .unwrap();
    let list = store.blobs.get_blob_chunks(&[blob]).await.unwrap()[0]
        .clone()
        .expect("a multi-chunk blob has a list");
    assert_eq!(list.iter().map(|c| c.size).sum::<u64>(), whole.len() as u64);
    let digests: Vec<B3Digest> = list.iter().map(|c| c.digest).collect();
    let read: Vec<u8> = store
        .blobs
        .get_chunks(&digests)
        .await
        .unwrap()
        .iter()
        .flat_map(|c| c.decode_verified().unwrap())
        .collect();
    assert!(read == whole, "the blob reads back as uploaded");

    // Refused as on the lazix path: a list that does not hash to its blob,
    // a frame whose chunk list names other bytes, a delta frame.
    let wrong = B3Digest::of(b"some other blob");
    assert!(store
        .blobs
        .put_blob_chunks(vec![BlobChunks {
            blob: wrong,
            chunks: parts.iter().map(|p| ChunkMeta::of(p)).collect(),
        }])
        .await
        .is_err());
    let claimed = random(5_000, 60);
    let mut lying = frame_of(&[&random(5_000, 61)]);
    lying.chunks[0].digest = B3Digest::of(&claimed);
    assert!(store.blobs.put_frames(vec![lying]).await.is_err());
    assert_eq!(
        store
            .blobs
            .missing_chunks(&[B3Digest::of(&claimed)])
            .await
            .unwrap(),
        vec![B3Digest::of(&claimed)],
        "nothing of a refused frame is stored"
    );
    let delta = Frame::compress_with_base(
        &[(ChunkMeta::of(&parts[1]), Bytes::from(parts[1].clone()))],
        vec![ChunkMeta::of(&parts[0])],
        &parts[0],
        3,
    )
    .unwrap();
    assert!(store.blobs.put_frames(vec![delta]).await.is_err());
    assert_eq!(store.blobs.chunk_list_digests(&blob).await.unwrap(), None);
}

/// A snix BlobService that answers every read with the same wrong bytes.
struct LyingBlobs;

#[tonic::async_trait]
impl cpb::blob_service_server::BlobService for LyingBlobs {
    async fn stat(
        &self,
        _: tonic::Request<cpb::StatBlobRequest>,
    ) -> Result<tonic::Response<cpb::StatBlobResponse>, tonic::Status> {
        Ok(tonic::Response::new(cpb::StatBlobResponse::default()))
    }

    type ReadStream = futures::stream::BoxStream<'static, Result<cpb::BlobChunk, tonic::Status>>;

    async fn read(
        &self,
        _: tonic::Request<cpb::ReadBlobRequest>,
    ) -> Result<tonic::Response<Self::ReadStream>, tonic::Status> {
        let lie = cpb::BlobChunk {
            data: Bytes::from_static(b"not what you asked for"),
        };
        Ok(tonic::Response::new(Box::pin(futures::stream::iter([Ok(
            lie,
        )]))))
    }

    async fn put(
        &self,
        _: tonic::Request<tonic::Streaming<cpb::BlobChunk>>,
    ) -> Result<tonic::Response<cpb::PutBlobResponse>, tonic::Status> {
        Err(tonic::Status::permission_denied("read-only"))
    }
}

/// Bytes from a snix server are checked as on the lazix path: a lie is
/// `Corrupt`, never returned.
#[tokio::test]
async fn bytes_from_a_snix_server_are_checked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("grpc://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(cpb::blob_service_server::BlobServiceServer::new(LyingBlobs))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let store = GrpcStore::connect(&addr).unwrap().into_store();
    let wanted = B3Digest::of(b"what you asked for");
    assert!(matches!(
        store.blobs.get_chunks(&[wanted]).await,
        Err(StoreError::Corrupt(_))
    ));
    let frames = store.blobs.get_frames(&[wanted]).await.unwrap();
    assert!(matches!(
        frames[0].decode_verified(),
        Err(StoreError::Corrupt(_))
    ));
}
