//! Tokens on gRPC against a real `lazix serve`: every write needs the
//! upload token (none or a wrong one: `Unauthenticated`, and the store's
//! objects are exactly as before), reads need the read token when one is
//! set, a server beyond loopback without an upload token takes no writes,
//! the HTTP shim never signs what an unauthenticated client tried to
//! write, and a stored path is never replaced with other contents.

mod common;

use std::path::Path;

use common::*;
use lazix_castore::{B3Digest, Node};
use lazix_proto::castore as cpb;
use lazix_proto::ext as lpb;
use lazix_proto::store as spb;
use tonic::Code;

const UPLOAD: &str = "grpc-upload-token";
const READ: &str = "grpc-read-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A server with an upload token (and a read token if `read`), signing
/// narinfos, compaction off (so the objects only change by writes).
fn server(dir: &Path, read: bool) -> Server {
    let upload = dir.join("upload-token");
    std::fs::write(&upload, UPLOAD).unwrap();
    let read_file = dir.join("read-token");
    std::fs::write(&read_file, READ).unwrap();
    let (sk, _) = nix_keygen(dir, "grpc-auth");
    let mut args = vec![
        "--compact-after".to_string(),
        "0".into(),
        "--upload-token-file".into(),
        upload.display().to_string(),
        "--signing-key".into(),
        sk.display().to_string(),
    ];
    if read {
        args.extend(["--read-token-file".into(), read_file.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&refs)
}

/// Every stored object (packs, chunk lists, directories, PathInfos) by
/// name and size: what a write would change.
fn objects(server: &Server) -> Vec<(String, u64)> {
    let root = server.data.path();
    let mut out: Vec<(String, u64)> = walk_files(root)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let kind = rel.split('/').next().unwrap_or("");
            ["packs", "blobs", "directories", "pathinfo"]
                .contains(&kind)
                .then(|| (rel, std::fs::metadata(&p).unwrap().len()))
        })
        .collect();
    out.sort();
    out
}

/// A genuine path, pushed with the upload token.
fn genuine(server: &Server, salt: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join(format!("grpc-auth-{salt}"));
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), pseudo_random(200_000, 5)).unwrap();
    std::fs::write(tree.join("small"), salt).unwrap();
    let path = add_path(&tree);
    lazix_push(server, &[&path]);
    path
}

/// What each write carries: new objects, so a write let through would
/// show in [`objects`].
struct Writes {
    chunk: Vec<u8>,
    directory: cpb::Directory,
    path_info: spb::PathInfo,
}

fn writes(salt: u64) -> Writes {
    let chunk = pseudo_random(30_000, 1000 + salt);
    let node = Node::File {
        digest: B3Digest::of(&chunk),
        size: chunk.len() as u64,
        executable: false,
    };
    let mut b = lazix_castore::directory::DirectoryBuilder::default();
    b.add(format!("f{salt}").into(), node.clone());
    let directory = b.build().unwrap().into_proto();
    let path = lazix_castore::nix::store_path::StorePath::from_basename(&format!(
        "{}-forged-{salt}",
        lazix_castore::nix::nixbase32::encode(&B3Digest::of(&salt.to_le_bytes()).as_bytes()[..20])
    ))
    .unwrap();
    let path_info = lazix_castore::PathInfo {
        store_path: path,
        node,
        references: vec![],
        nar_size: 30_128,
        nar_sha256: [7; 32],
        signatures: vec![],
        root_signatures: vec![],
        deriver: None,
        ca: None,
    }
    .to_proto();
    Writes {
        chunk,
        directory,
        path_info,
    }
}

/// The outcome code of a call (`Ok` for success).
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.err().map_or(Code::Ok, |s| s.code())
}

/// Tries every gRPC write presenting `auth`; returns each call's outcome.
async fn try_every_write(server: &Server, auth: Bearer, w: &Writes) -> Vec<(&'static str, Code)> {
    let ch = grpc_channel(server).await;
    let mut chunks =
        lpb::chunk_service_client::ChunkServiceClient::with_interceptor(ch.clone(), auth.clone());
    let mut blobs =
        cpb::blob_service_client::BlobServiceClient::with_interceptor(ch.clone(), auth.clone());
    let mut dirs = cpb::directory_service_client::DirectoryServiceClient::with_interceptor(
        ch.clone(),
        auth.clone(),
    );
    let mut infos =
        spb::path_info_service_client::PathInfoServiceClient::with_interceptor(ch, auth);
    let meta = lazix_castore::chunk::ChunkMeta::of(&w.chunk);
    let frame = lazix_castore::testutil::frame_of(&[&w.chunk]).to_proto();
    vec![
        (
            "ChunkService/PutChunks",
            code(
                chunks
                    .put_chunks(futures::stream::iter(vec![lpb::PutChunksRequest {
                        frames: vec![frame],
                        ..Default::default()
                    }]))
                    .await,
            ),
        ),
        (
            "ChunkService/FindMissingChunks",
            code(
                chunks
                    .find_missing_chunks(lpb::FindMissingChunksRequest {
                        digests: vec![meta.digest.into()],
                    })
                    .await,
            ),
        ),
        (
            "ChunkService/PutBlobChunks",
            code(
                chunks
                    .put_blob_chunks(lpb::PutBlobChunksRequest {
                        blobs: vec![lpb::BlobChunks {
                            blob_digest: meta.digest.into(),
                            chunks: vec![meta.to_proto()],
                        }],
                    })
                    .await,
            ),
        ),
        (
            "BlobService/Put",
            code(
                blobs
                    .put(futures::stream::iter(vec![cpb::BlobChunk {
                        data: w.chunk.clone().into(),
                    }]))
                    .await,
            ),
        ),
        (
            "DirectoryService/Put",
            code(
                dirs.put(futures::stream::iter(vec![w.directory.clone()]))
                    .await,
            ),
        ),
        (
            "PathInfoService/Put",
            code(infos.put(w.path_info.clone()).await),
        ),
    ]
}

/// Tries the gRPC reads of a path presenting `auth`; returns each call's
/// outcome.
async fn try_reads(server: &Server, auth: Bearer, path: &str) -> Vec<(&'static str, Code)> {
    let ch = grpc_channel(server).await;
    let mut infos = spb::path_info_service_client::PathInfoServiceClient::with_interceptor(
        ch.clone(),
        auth.clone(),
    );
    let mut chunks =
        lpb::chunk_service_client::ChunkServiceClient::with_interceptor(ch.clone(), auth.clone());
    let mut blobs = cpb::blob_service_client::BlobServiceClient::with_interceptor(ch, auth);
    let store_path = lazix_castore::nix::store_path::StorePath::from_basename(
        path.trim_start_matches("/nix/store/"),
    )
    .unwrap();
    let some_blob = B3Digest::of(b"any blob");
    let mut lister = infos.clone();
    let list = async move {
        let mut stream = lister.list(spb::ListPathInfoRequest {}).await?.into_inner();
        stream.message().await.map(|_| ())
    };
    vec![
        (
            "PathInfoService/Get",
            code(
                infos
                    .get(spb::GetPathInfoRequest {
                        by_what: Some(spb::get_path_info_request::ByWhat::ByOutputHash(
                            store_path.digest().to_vec().into(),
                        )),
                    })
                    .await,
            ),
        ),
        ("PathInfoService/List", code(list.await)),
        (
            "ChunkService/GetBlobChunks",
            code(
                chunks
                    .get_blob_chunks(lpb::GetBlobChunksRequest {
                        blob_digests: vec![some_blob.into()],
                    })
                    .await,
            ),
        ),
        (
            "BlobService/Stat",
            code(
                blobs
                    .stat(cpb::StatBlobRequest {
                        digest: some_blob.into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
    ]
}

#[test]
fn every_grpc_write_needs_the_upload_token_and_changes_nothing_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), false);
    genuine(&server, "writes");
    let before = objects(&server);
    assert!(!before.is_empty());
    let w = writes(1);
    let forged = format!(
        "{}/{}.narinfo",
        server.http,
        &lazix_castore::PathInfo::try_from_proto(&w.path_info)
            .unwrap()
            .store_path
            .basename()[..32]
    );
    let rt = runtime();
    for (what, auth) in [
        ("no token", no_token()),
        ("a wrong token", bearer("not-the-token")),
        ("the read token", bearer(READ)),
    ] {
        let codes = rt.block_on(try_every_write(&server, auth, &w));
        assert_eq!(codes.len(), 6);
        for (call, code) in &codes {
            assert_eq!(*code, Code::Unauthenticated, "{call} with {what}");
        }
        assert_eq!(
            objects(&server),
            before,
            "a write refused with {what} changed the store"
        );
        // Nothing of it is served, let alone signed.
        assert_eq!(curl(&[&forged]).0, 404, "{what}");
    }

    // The upload token lets every write through, and the objects show it.
    let codes = rt.block_on(try_every_write(&server, bearer(UPLOAD), &w));
    for (call, code) in &codes {
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{call} with the upload token: {code:?}"
        );
    }
    assert_eq!(codes[0].1, Code::Ok, "PutChunks with the upload token");
    assert_ne!(
        objects(&server),
        before,
        "accepted writes show in the objects"
    );
    // Pushing needs the token too: without it, a clear refusal.
    let out = lazix()
        .args(["push", "--server", &server.addr])
        .arg(add_path(&{
            let t = dir.path().join("grpc-auth-unpushed");
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("f"), "unpushed").unwrap();
            t
        }))
        .env_remove("LAZIX_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn grpc_reads_need_the_read_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), true);
    let path = genuine(&server, "reads");
    let rt = runtime();
    for (what, auth) in [("no token", no_token()), ("a wrong token", bearer("nope"))] {
        for (call, code) in rt.block_on(try_reads(&server, auth, &path)) {
            assert_eq!(code, Code::Unauthenticated, "{call} with {what}");
        }
    }
    for (what, token) in [("the read token", READ), ("the upload token", UPLOAD)] {
        let codes = rt.block_on(try_reads(&server, bearer(token), &path));
        assert_eq!(codes[0].1, Code::Ok, "PathInfo Get with {what}");
        assert_eq!(codes[1].1, Code::Ok, "List with {what}");
        for (call, code) in codes {
            assert_ne!(code, Code::Unauthenticated, "{call} with {what}");
        }
    }
    // The CLI: `lazix nar` with the read token from a file, and without.
    let token_file = dir.path().join("read-token");
    let out = run(lazix()
        .args(["nar", "--server", &server.addr, "--token-file"])
        .arg(&token_file)
        .arg(&path));
    assert!(out.stdout == nix_dump(&path));
    let out = lazix()
        .args(["nar", "--server", &server.addr, &path])
        .env_remove("LAZIX_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn a_server_beyond_loopback_without_an_upload_token_takes_no_writes() {
    let server = Server::start_on("0.0.0.0", &["--compact-after", "0"], &[]);
    let before = objects(&server);
    let codes = runtime().block_on(try_every_write(&server, no_token(), &writes(3)));
    for (call, code) in &codes {
        assert_eq!(*code, Code::PermissionDenied, "{call}");
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("grpc-auth-beyond");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), "beyond loopback").unwrap();
    let out = server.client("push").arg(add_path(&tree)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writes are disabled"), "{err}");
    assert_eq!(objects(&server), before);
}

#[test]
fn a_stored_path_is_never_replaced_with_other_contents() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), false);
    let path = genuine(&server, "replace");
    let other = genuine(&server, "replacement");
    let rt = runtime();
    rt.block_on(async {
        let store = lazix_server::GrpcStore::connect_with(
            &server.addr,
            &lazix_server::client::ClientOptions {
                token: Some(UPLOAD.into()),
                ..Default::default()
            },
        )
        .unwrap()
        .into_store();
        let digest_of = |p: &str| {
            *lazix_castore::nix::store_path::StorePath::from_basename(
                p.trim_start_matches("/nix/store/"),
            )
            .unwrap()
            .digest()
        };
        let stored = store
            .path_infos
            .get_path_info(&digest_of(&path))
            .await
            .unwrap()
            .unwrap();
        let replacement = store
            .path_infos
            .get_path_info(&digest_of(&other))
            .await
            .unwrap()
            .unwrap();
        // Another tree (stored, so the put is otherwise valid) and its NAR
        // hash under the first path's name: refused.
        let swapped = lazix_castore::PathInfo {
            node: replacement.node.clone(),
            nar_sha256: replacement.nar_sha256,
            nar_size: replacement.nar_size,
            ..stored.clone()
        };
        let err = store.path_infos.put_path_info(swapped).await.unwrap_err();
        assert!(err.to_string().contains("already stored"), "{err}");
        assert_eq!(
            store
                .path_infos
                .get_path_info(&digest_of(&path))
                .await
                .unwrap(),
            Some(stored.clone())
        );
        // The same contents with one more signature: the signature is added.
        let extra = lazix_castore::nix::signing::Signature {
            name: "rotated-key-2".into(),
            bytes: [9; 64],
        };
        let mut signed = stored.clone();
        signed.signatures = vec![extra.clone()];
        store.path_infos.put_path_info(signed).await.unwrap();
        let now = store
            .path_infos
            .get_path_info(&digest_of(&path))
            .await
            .unwrap()
            .unwrap();
        assert!(now.signatures.contains(&extra));
        assert!(stored.signatures.iter().all(|s| now.signatures.contains(s)));
        assert_eq!(now.node, stored.node);
    });
    // Still the genuine bytes.
    assert!(lazix_nar(&server, &path) == nix_dump(&path));
}

/// The access-profile service (`lazix.v1.ProfileService`): a Put needs the
/// upload token, a Get the read token when one is set; a profile over the
/// bound or naming another path is refused; nothing refused is stored.
#[test]
fn access_profiles_need_the_tokens_and_refuse_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), true);
    let path = genuine(&server, "profiles");
    let base = path.trim_start_matches("/nix/store/");
    let digest = lazix_castore::nix::store_path::StorePath::from_basename(base)
        .unwrap()
        .digest()
        .to_vec();
    let profile = format!(
        "{{\"lazix_profile\":1}}\n{{\"path\":\"{base}\",\"file\":\"small\",\"digest\":\"{}\",\"size\":8,\"ranges\":[[0,8]]}}\n",
        B3Digest::of(b"profiles").to_hex()
    );
    let stored = || {
        server
            .data
            .path()
            .join("profiles")
            .join(&base[..32])
            .exists()
    };
    let rt = runtime();
    let put = |auth: Bearer, text: Vec<u8>| {
        let digest = digest.clone();
        rt.block_on(async {
            let ch = grpc_channel(&server).await;
            let mut p =
                lpb::profile_service_client::ProfileServiceClient::with_interceptor(ch, auth);
            code(
                p.put(lpb::PutProfileRequest {
                    store_path_digest: digest.into(),
                    profile: text.into(),
                })
                .await,
            )
        })
    };
    let get = |auth: Bearer| {
        let digest = digest.clone();
        rt.block_on(async {
            let ch = grpc_channel(&server).await;
            let mut p =
                lpb::profile_service_client::ProfileServiceClient::with_interceptor(ch, auth);
            p.get(lpb::GetProfileRequest {
                store_path_digest: digest.into(),
            })
            .await
        })
    };
    for (what, auth) in [
        ("no token", no_token()),
        ("a wrong token", bearer("not-the-token")),
        ("the read token", bearer(READ)),
    ] {
        assert_eq!(
            put(auth, profile.clone().into_bytes()),
            Code::Unauthenticated,
            "{what}"
        );
        assert!(!stored(), "{what}");
    }
    // Over the bound, another path's entries, not a profile: refused.
    let huge = vec![b' '; lazix_castore::profile::MAX_STORED_PROFILE + 1];
    let foreign = profile.replace(base, &format!("{}-other", "0".repeat(32)));
    for bad in [
        huge,
        foreign.into_bytes(),
        b"\x00\xff not a profile".to_vec(),
    ] {
        assert_eq!(put(bearer(UPLOAD), bad), Code::InvalidArgument);
        assert!(!stored());
    }
    assert_eq!(
        code(get(bearer(READ))),
        Code::Ok,
        "no profile yet is an answer, not an error"
    );
    assert_eq!(put(bearer(UPLOAD), profile.clone().into_bytes()), Code::Ok);
    assert!(stored());
    assert_eq!(code(get(no_token())), Code::Unauthenticated);
    let answer = get(bearer(READ)).unwrap().into_inner();
    assert!(answer.found);
    assert_eq!(answer.profile, profile.as_bytes());
}
