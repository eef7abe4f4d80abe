//! Hostile input against a real `lazix serve` (and a real mount): crafted
//! requests of a few kilobytes that used to take gigabytes or abort the
//! server, damaged chunk lists that used to yield wrong bytes, and slow or
//! endless HTTP requests. Each case must end in a clear refusal with
//! nothing from it visible, the server alive, serving a genuine path
//! byte-identical, and its peak memory (VmHWM) under [`MEMORY_BOUND`].

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use lazix_castore::directory::{Directory, DirectoryBuilder};
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::{B3Digest, Node};
use lazix_proto::castore as cpb;
use lazix_proto::ext as lpb;
use lazix_proto::store as spb;
use prost::Message;

/// Peak server memory allowed in every case (the bound in docs/security.md).
const MEMORY_BOUND: u64 = 300 * 1024 * 1024;

const TOKEN: &str = "hostile-upload-token";

fn server(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut args = vec!["--upload-token-file", token.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::start_with(&args), dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A genuine path pushed the ordinary way, to be served byte-identical
/// after every attack.
struct Genuine {
    path: String,
    nar: Vec<u8>,
}

fn genuine(srv: &Server, salt: &str) -> Genuine {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join(format!("hostile-genuine-{salt}"));
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/big"), pseudo_random(1_500_000, 77)).unwrap();
    std::fs::write(tree.join("small"), salt).unwrap();
    let path = add_path(&tree);
    lazix_push(srv, &[&path]);
    let nar = nix_dump(&path);
    Genuine { path, nar }
}

impl Genuine {
    fn assert_served(&self, srv: &Server) {
        assert_eq!(lazix_nar(srv, &self.path), self.nar, "gRPC render");
        let (status, nar, _) = curl(&[&nar_url(&srv.http, &self.path)]);
        assert_eq!(status, 200);
        assert!(nar == self.nar, "HTTP NAR differs");
    }
}

/// The frames stored in every pack index of the server's folder.
fn stored_frames(srv: &Server) -> usize {
    walk_files(&srv.data.path().join("packs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .map(|p| {
            lpb::PackIndex::decode(std::fs::read(p).unwrap().as_slice())
                .unwrap()
                .frames
                .len()
        })
        .sum()
}

/// A frame of two 8 MiB chunks that compresses to a few hundred bytes.
fn bomb(salt: u32) -> lpb::Frame {
    let mut a = vec![0u8; 8 << 20];
    a[..4].copy_from_slice(&salt.to_le_bytes());
    let mut b = vec![0u8; 8 << 20];
    b[(8 << 20) - 4..].copy_from_slice(&salt.to_le_bytes());
    lazix_castore::testutil::frame_of(&[&a, &b]).to_proto()
}

#[test]
fn inflating_frames_cost_one_frame_and_identical_ones_are_stored_once() {
    let (mut srv, _dir) = server(&[]);
    let good = genuine(&srv, "bombs");
    let frames_before = stored_frames(&srv);
    let rt = runtime();
    rt.block_on(async {
        let mut c = lpb::chunk_service_client::ChunkServiceClient::with_interceptor(
            grpc_channel(&srv).await,
            bearer(TOKEN),
        )
        .max_encoding_message_size(64 << 20);
        // 100 copies of one frame: 1.6 GB if each were decoded.
        let one = bomb(1);
        assert!(one.encoded_len() < 4096, "{}", one.encoded_len());
        let msgs: Vec<lpb::PutChunksRequest> = (0..10)
            .map(|_| lpb::PutChunksRequest {
                frames: vec![one.clone(); 10],
                ..Default::default()
            })
            .collect();
        c.put_chunks(futures::stream::iter(msgs)).await.unwrap();

        // 20 distinct frames: 320 MiB claimed in one call, over the budget.
        let many: Vec<lpb::Frame> = (100..120).map(bomb).collect();
        let digests: Vec<bytes::Bytes> = many
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.digest.clone()))
            .collect();
        let msgs: Vec<lpb::PutChunksRequest> = many
            .into_iter()
            .map(|f| lpb::PutChunksRequest {
                frames: vec![f],
                ..Default::default()
            })
            .collect();
        let err = c.put_chunks(futures::stream::iter(msgs)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        let missing = c
            .find_missing_chunks(lpb::FindMissingChunksRequest {
                digests: digests.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        assert_eq!(missing.len(), digests.len(), "a refused call stored chunks");

        // 327,680 distinct 4-byte chunks in one call (1.3 MiB raw,
        // 12 MB of chunk lists): refused by the chunk count.
        let tiny: Vec<lpb::PutChunksRequest> = (0..5u32)
            .map(|f| {
                let chunks: Vec<Vec<u8>> = (0..65_536u32)
                    .map(|i| (f * 65_536 + i).to_le_bytes().to_vec())
                    .collect();
                let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                lpb::PutChunksRequest {
                    frames: vec![lazix_castore::testutil::frame_of(&refs).to_proto()],
                    ..Default::default()
                }
            })
            .collect();
        let err = c.put_chunks(futures::stream::iter(tiny)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    });
    assert_eq!(
        stored_frames(&srv),
        frames_before + 1,
        "identical frames stored once"
    );
    srv.assert_memory_under(MEMORY_BOUND, "PutChunks bombs");
    good.assert_served(&srv);
}

/// An access profile's exact read (`ReadChunks` with `exact`) of the most
/// digests one call takes, each in a different stored frame made mostly
/// of other bytes: the server repacks every frame (a decode and a
/// compression each), within its memory bound, and sends the asked chunks
/// alone.
#[test]
fn exact_reads_of_the_most_digests_in_distinct_frames_stay_bounded() {
    const N: usize = 16 * 1024;
    let (mut srv, _dir) = server(&[]);
    let good = genuine(&srv, "exact");
    let rt = runtime();
    rt.block_on(async {
        let mut c = lpb::chunk_service_client::ChunkServiceClient::with_interceptor(
            grpc_channel(&srv).await,
            bearer(TOKEN),
        )
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
        // Frame i: a 2 KiB chunk asked, beside 2 KiB of its own zeros (the
        // uploads' own memory is not what this case measures: 64 MiB).
        let asked: Vec<Vec<u8>> = (0..N)
            .map(|i| pseudo_random(2048, 1_000_000 + i as u64))
            .collect();
        let frame = |i: usize| {
            let mut other = vec![0u8; 2048];
            other[..8].copy_from_slice(&(i as u64).to_le_bytes());
            lazix_castore::testutil::frame_of(&[&asked[i], &other]).to_proto()
        };
        for call in 0..N / 1024 {
            let msgs: Vec<lpb::PutChunksRequest> = (0..4)
                .map(|m| lpb::PutChunksRequest {
                    frames: (0..256).map(|k| frame(call * 1024 + m * 256 + k)).collect(),
                    ..Default::default()
                })
                .collect();
            c.put_chunks(futures::stream::iter(msgs)).await.unwrap();
        }
        let uploaded_peak = srv.peak_memory();
        let digests: Vec<bytes::Bytes> = asked
            .iter()
            .map(|a| bytes::Bytes::copy_from_slice(B3Digest::of(a).as_bytes()))
            .collect();
        let mut answer = c
            .read_chunks(lpb::ReadChunksRequest {
                digests,
                exact: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = std::collections::HashSet::new();
        let mut raw_bytes = 0u64;
        while let Some(msg) = answer.message().await.unwrap() {
            for f in msg.frames {
                let f = lazix_castore::frame::Frame::try_from_proto(f).unwrap();
                for (meta, data) in f.chunks.iter().zip(f.decode_verified().unwrap()) {
                    raw_bytes += data.len() as u64;
                    got.insert(meta.digest);
                }
            }
        }
        assert_eq!(got.len(), N, "every asked chunk answered");
        assert!(asked.iter().all(|a| got.contains(&B3Digest::of(a))));
        assert_eq!(raw_bytes, (N * 2048) as u64, "the asked chunks alone");
        // The read itself: a few slices' frames at a time, not the call's.
        let grown = srv.peak_memory().saturating_sub(uploaded_peak);
        assert!(grown < 64 << 20, "the exact read added {} MiB", grown >> 20);
    });
    srv.assert_memory_under(MEMORY_BOUND, "exact ReadChunks of 16,384 frames");
    good.assert_served(&srv);
}

/// A NAR of `depth` nested directories `d` with a file at the bottom.
fn deep_nar(depth: usize) -> Vec<u8> {
    let mut e = NarEncoder::new();
    e.magic();
    for _ in 0..depth {
        e.directory_open();
        e.entry_open(b"d");
    }
    e.file_header(false, 4);
    e.raw(b"deep");
    e.file_trailer(4);
    for _ in 0..depth {
        e.close();
        e.close();
    }
    e.take()
}

/// A store path with a made-up hash part (nixbase32).
fn fake_path(n: usize, name: &str) -> String {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let tail: String = format!("{n:05}")
        .bytes()
        .map(|b| alphabet[(b - b'0') as usize] as char)
        .collect();
    format!("/nix/store/{}{tail}-{name}", "1".repeat(27))
}

/// Uploads a NAR and its narinfo over HTTP: (NAR status, narinfo status).
fn http_upload(srv: &Server, dir: &std::path::Path, store_path: &str, nar: &[u8]) -> (u16, u16) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let hash = &store_path.trim_start_matches("/nix/store/")[..32];
    let nar_file = dir.join(format!("{hash}.nar"));
    std::fs::write(&nar_file, nar).unwrap();
    let url = format!("nar/{hash}.nar");
    let put = |target: &str, file: &std::path::Path| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/{target}", srv.http),
        ])
        .0
    };
    let nar_status = put(&url, &nar_file);
    let ni = dir.join(format!("{hash}.narinfo"));
    std::fs::write(
        &ni,
        format!(
            "StorePath: {store_path}\nURL: {url}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            nar_hash(nar),
            nar.len()
        ),
    )
    .unwrap();
    (nar_status, put(&format!("{hash}.narinfo"), &ni))
}

#[test]
fn deep_trees_are_refused_past_the_limit_and_served_below_it() {
    let (mut srv, dir) = server(&[]);
    let good = genuine(&srv, "deep");

    // 8000 levels (1.3 MB of NAR): refused at upload, nothing visible.
    let too_deep = fake_path(1, "too-deep");
    let (nar_status, ni_status) = http_upload(&srv, dir.path(), &too_deep, &deep_nar(8000));
    assert_eq!(nar_status, 400, "a NAR over the depth limit");
    assert_eq!(ni_status, 400, "its narinfo has no NAR");
    let hash = &too_deep.trim_start_matches("/nix/store/")[..32];
    assert_eq!(curl(&[&format!("{}/{hash}.narinfo", srv.http)]).0, 404);

    // 1000 levels, within the limit: stored, listed and served in ranges.
    let deep = fake_path(2, "deep");
    let nar = deep_nar(1000);
    assert_eq!(http_upload(&srv, dir.path(), &deep, &nar), (201, 201));
    let hash = &deep.trim_start_matches("/nix/store/")[..32];
    let (status, body, _) = curl(&[&format!("{}/{hash}.ls", srv.http)]);
    assert_eq!(status, 200);
    let ls = String::from_utf8(body).unwrap();
    assert!(ls.starts_with(r#"{"version":1,"root":{"type":"directory","entries":{"d":"#));
    assert_eq!(ls.matches(r#""type":"directory""#).count(), 1000);
    assert_eq!(ls.matches('{').count(), ls.matches('}').count());
    let contents_at = nar.windows(4).position(|w| w == b"deep").unwrap();
    assert!(
        ls.contains(&format!(r#""size":4,"narOffset":{contents_at}}}"#)),
        "{}",
        &ls[ls.len() - 200..]
    );
    let (status, body, _) = curl(&[
        "-H",
        "Range: bytes=100-999",
        &format!("{}/nar/{hash}-{}.nar", srv.http, &nar_hash(&nar)[7..]),
    ]);
    assert_eq!(status, 206);
    assert_eq!(body, &nar[100..1000]);
    assert_eq!(lazix_nar(&srv, &deep), nar);
    srv.assert_memory_under(MEMORY_BOUND, "deep trees");
    good.assert_served(&srv);
}

fn dir_node(d: &Directory) -> Node {
    Node::Directory {
        digest: d.digest(),
        size: d.size(),
    }
}

/// Directories of a tree where each level names the level below twice:
/// 2^levels nodes from `levels` + 1 small messages, leaves first, built as
/// raw messages (lazix's own builder refuses the large ones) with their
/// digest and snix size.
fn doubling(levels: usize) -> Vec<(cpb::Directory, bytes::Bytes, u64)> {
    let mut leaf = cpb::Directory::default();
    leaf.files.push(cpb::FileEntry {
        name: "f".into(),
        digest: B3Digest::of(b"").into(),
        size: 0,
        executable: false,
    });
    let digest = |d: &cpb::Directory| bytes::Bytes::from(B3Digest::of(&d.encode_to_vec()));
    let mut out = vec![(leaf.clone(), digest(&leaf), 2u64)];
    for _ in 0..levels {
        let (_, below, below_size) = out.last().unwrap().clone();
        let mut d = cpb::Directory::default();
        for name in ["a", "b"] {
            d.directories.push(cpb::DirectoryEntry {
                name: name.into(),
                digest: below.clone(),
                size: below_size,
            });
        }
        // snix size: entries, plus one and the size of each subdirectory.
        let size = 2 + 2 * (1 + below_size);
        out.push((d.clone(), digest(&d), size));
    }
    out
}

/// A chain of `depth` directories, leaves first.
fn chain(depth: usize) -> Vec<Directory> {
    let mut dirs = vec![Directory::empty()];
    for _ in 0..depth {
        let mut b = DirectoryBuilder::default();
        b.add("d".into(), dir_node(dirs.last().unwrap()));
        dirs.push(b.build().unwrap());
    }
    dirs
}

fn path_info(store_path: &str, root: Node) -> spb::PathInfo {
    let name = store_path.trim_start_matches("/nix/store/");
    spb::PathInfo {
        entry: Some(root.to_entry(name.to_string().into())),
        references: Vec::new(),
        narinfo: Some(spb::NarInfo {
            nar_size: 1000,
            nar_sha256: vec![3u8; 32].into(),
            ..Default::default()
        }),
        root_signatures: Vec::new(),
    }
}

#[test]
fn shared_subtrees_and_deep_chains_cannot_explode() {
    let (mut srv, _dir) = server(&[]);
    let good = genuine(&srv, "shared");
    let rt = runtime();
    rt.block_on(async {
        let mut dirs_c = cpb::directory_service_client::DirectoryServiceClient::with_interceptor(
            grpc_channel(&srv).await,
            bearer(TOKEN),
        );
        let mut infos = spb::path_info_service_client::PathInfoServiceClient::with_interceptor(
            grpc_channel(&srv).await,
            bearer(TOKEN),
        );
        let uploader = dirs_c.clone();
        let put = |dirs: Vec<cpb::Directory>| {
            let mut c = uploader.clone();
            async move { c.put(futures::stream::iter(dirs)).await }
        };
        let raw = |dirs: Vec<Directory>| dirs.into_iter().map(Directory::into_proto).collect();
        let entry = |digest: bytes::Bytes, size: u64| cpb::Entry {
            entry: Some(cpb::entry::Entry::Directory(cpb::DirectoryEntry {
                name: "x".into(),
                digest,
                size,
            })),
        };

        // 2^24 nodes from 25 directories of a few bytes: refused, naming
        // the limit, none of them stored.
        let huge = doubling(24);
        let (_, top, top_size) = huge.last().unwrap().clone();
        let err = put(huge.into_iter().map(|(d, _, _)| d).collect())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("limit"), "{}", err.message());
        let got = dirs_c
            .get(cpb::GetDirectoryRequest {
                by_what: Some(cpb::get_directory_request::ByWhat::Digest(top.clone())),
                recursive: false,
            })
            .await;
        assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound);

        // A claimed root far over the node limit: refused before any work.
        let err = infos.calculate_nar(entry(top, top_size)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        // 2^12 nodes, shared: within the limits, planned in full.
        let small = doubling(12);
        let (_, small_top, small_size) = small.last().unwrap().clone();
        put(small.into_iter().map(|(d, _, _)| d).collect())
            .await
            .unwrap();
        let nar = infos
            .calculate_nar(entry(small_top, small_size))
            .await
            .unwrap()
            .into_inner();
        assert!(nar.nar_size > 4096 * 100, "{}", nar.nar_size);

        // 1100 levels: directories alone are accepted, but no path may
        // point at a tree deeper than the limit.
        let deep = chain(1100);
        let deep_top = dir_node(deep.last().unwrap());
        put(raw(deep)).await.unwrap();
        let store_path = fake_path(3, "deep-chain");
        let err = infos
            .put(path_info(&store_path, deep_top))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("levels"), "{}", err.message());
        let hash = &store_path.trim_start_matches("/nix/store/")[..32];
        assert_eq!(curl(&[&format!("{}/{hash}.narinfo", srv.http)]).0, 404);

        // A directory upload that starts with garbage is refused at once.
        let mut bad = cpb::Directory::default();
        bad.files.push(cpb::FileEntry {
            name: "../escape".into(),
            digest: vec![0u8; 32].into(),
            size: 1,
            executable: false,
        });
        let err = dirs_c
            .put(futures::stream::iter(vec![bad]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        // Entry sizes whose sum overflows u64: refused by the limit, not
        // wrapped (or a panic).
        let mut overflowing = cpb::Directory::default();
        for name in ["a", "b"] {
            overflowing.directories.push(cpb::DirectoryEntry {
                name: name.into(),
                digest: vec![1u8; 32].into(),
                size: u64::MAX,
            });
        }
        let err = dirs_c
            .put(futures::stream::iter(vec![overflowing]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("limit"), "{}", err.message());
    });
    srv.assert_memory_under(MEMORY_BOUND, "shared subtrees");
    good.assert_served(&srv);
}

/// The object holding `blob`'s chunk list in the server's folder.
fn chunk_list_file(srv: &Server, blob: &B3Digest) -> std::path::PathBuf {
    let hex = blob.to_hex();
    srv.data.path().join("blobs").join(&hex[..2]).join(&hex)
}

#[test]
fn damaged_chunk_lists_are_errors_never_wrong_bytes() {
    let (mut srv, dir) = server(&[]);
    let good = genuine(&srv, "lists");
    let tree = dir.path().join("hostile-lists");
    std::fs::create_dir_all(&tree).unwrap();
    let big = pseudo_random(3_000_000, 91);
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    let path = add_path(&tree);
    lazix_push(&srv, &[&path]);
    let list_file = chunk_list_file(&srv, &B3Digest::of(&big));
    let original = std::fs::read(&list_file).expect("a chunk list for the big file");
    let list = lpb::BlobChunks::decode(original.as_slice()).unwrap();
    assert!(list.chunks.len() > 2, "{} chunks", list.chunks.len());

    let mut swapped = list.clone();
    swapped.chunks.swap(0, 1);
    let mut inflated = list.clone();
    inflated.chunks[0].size += 100;
    inflated.chunks[1].size -= 100;
    let name = path.trim_start_matches("/nix/store/");
    let hash = &name[..32];
    for (case, damaged) in [("swapped", swapped), ("inflated", inflated)] {
        std::fs::write(&list_file, damaged.encode_to_vec()).unwrap();
        srv.restart(); // no cached list
                       // gRPC render: an error, not the file.
        let out = srv.client("nar").args([&path]).output().unwrap();
        assert!(!out.status.success(), "{case}: lazix nar succeeded");
        // HTTP: the NAR stream breaks (curl sees a short body).
        let out = std::process::Command::new("curl")
            .args(["-s", "-f", "-o", "/dev/null"])
            .arg(format!(
                "{}/nar/{hash}-{}.nar",
                srv.http,
                &sri_to_b32(nix_path_info(&path)["narHash"].as_str().unwrap())[7..]
            ))
            .status()
            .unwrap();
        assert!(!out.success(), "{case}: the HTTP NAR was served whole");
        // The mount: EIO, counted, no panic.
        let cache = tempfile::tempdir().unwrap();
        let mount = Mount::new(
            &srv,
            &[
                "--timeout",
                "5",
                "--cache-dir",
                cache.path().to_str().unwrap(),
            ],
        );
        let read = std::fs::read(mount.path(name).join("big.bin"));
        let Err(err) = read else {
            let stats = mount.stats();
            panic!("{case}: the file was read; {stats}; {}", mount.stop());
        };
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{case}: {err}");
        assert!(n(&mount.stats(), "read_errors") >= 1, "{case}");
        let log = mount.stop();
        assert!(!log.contains("panicked"), "{case}: {log}");
    }
    std::fs::write(&list_file, &original).unwrap();
    srv.restart();
    assert_eq!(lazix_nar(&srv, &path), nix_dump(&path));
    srv.assert_memory_under(MEMORY_BOUND, "damaged chunk lists");
    good.assert_served(&srv);
}

/// Sends raw bytes on a new connection to the HTTP port.
fn connect(srv: &Server) -> TcpStream {
    let s = TcpStream::connect(srv.http.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads until the end of the headers of one response (or EOF).
fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn http_refuses_before_bodies_and_bounds_connections() {
    let (mut srv, _dir) = server(&["--http-header-timeout", "2"]);
    let good = genuine(&srv, "http");

    // An unauthenticated narinfo PUT announcing 2 MB: 401 before a byte of
    // the body is sent.
    let mut s = connect(&srv);
    s.write_all(
        b"PUT /11111111111111111111111111111111.narinfo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
    )
    .unwrap();
    assert!(read_head(&mut s).unwrap().starts_with("HTTP/1.1 401"));
    drop(s);

    // Headers that never end: the connection is closed (the timeout is
    // 2 s here; the read would give up after 15 s).
    let mut s = connect(&srv);
    s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest);
    assert!(closed.is_ok(), "still open: {closed:?}");
    drop(s);

    // Three connections served at once; a fourth waits until one closes
    // (a server of its own, whose idle connections stay open).
    let (capped, _capped_dir) = server(&["--max-connections", "3"]);
    let request = b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(&capped);
            s.write_all(request).unwrap();
            assert!(read_head(&mut s).unwrap().starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let mut fourth = connect(&capped);
    fourth
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    fourth.write_all(request).unwrap();
    let mut b = [0u8; 1];
    let waited = fourth.read(&mut b);
    assert!(waited.is_err(), "answered past the cap: {waited:?}");
    held.pop();
    fourth
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let head = read_head(&mut fourth).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(held);
    drop(fourth);

    // Range: malformed is ignored (the whole NAR), unsatisfiable is 416.
    let hash = &good.path.trim_start_matches("/nix/store/")[..32];
    let url = format!(
        "{}/nar/{hash}-{}.nar",
        srv.http,
        &sri_to_b32(nix_path_info(&good.path)["narHash"].as_str().unwrap())[7..]
    );
    for garbage in ["bytes=abc", "lines=1-2", "bytes=--1", "bytes"] {
        let (status, body, _) = curl(&["-H", &format!("Range: {garbage}"), &url]);
        assert_eq!(status, 200, "{garbage}");
        assert!(body == good.nar, "{garbage}");
    }
    let (status, _, head) = curl(&["-H", "Range: bytes=999999999-", &url]);
    assert_eq!(status, 416);
    assert!(
        head.contains(&format!("bytes */{}", good.nar.len())),
        "{head}"
    );
    srv.assert_memory_under(MEMORY_BOUND, "HTTP limits");
    good.assert_served(&srv);
}
