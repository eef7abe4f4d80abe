//! Trust end to end against a real `lazix serve`, a real FUSE mount and
//! `lazix nar`: paths are verified back to a key the reader trusts by
//! their root signature. A root swapped for another tree (signatures kept),
//! a forged signature and a path signed only by an untrusted key are
//! invisible in the mount (ENOENT, nothing fetched) and refused by `lazix
//! nar`; a reordered chunk list makes its path refused, and a path admitted
//! before keeps reading by its signed list; old and new keys of a rotation
//! both work; `push --signing-key` signs as the
//! uploader, and the server signs what it ingested over HTTP.

mod common;

use std::path::Path;

use common::*;
use lazix_proto::ext as lpb;
use lazix_proto::store as spb;
use prost::Message;

const TOKEN: &str = "trust-upload-token";

fn server(dir: &Path, signing_key: &Path) -> Server {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    Server::start_with(&[
        "--compact-after",
        "0",
        "--upload-token-file",
        token.to_str().unwrap(),
        "--signing-key",
        signing_key.to_str().unwrap(),
    ])
}

/// A path with a multi-chunk file, a small file and a link.
fn tree(dir: &Path, salt: u64) -> String {
    let t = dir.join(format!("trust-{salt}"));
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::write(t.join("bin/big"), pseudo_random(1_500_000, salt)).unwrap();
    std::fs::write(t.join("small"), format!("small {salt}\n")).unwrap();
    std::os::unix::fs::symlink("bin/big", t.join("link")).unwrap();
    add_path(&t)
}

/// `lazix push` signing roots with `keys` (secret key files).
fn push_signed(server: &Server, path: &str, keys: &[&Path]) {
    let mut cmd = server.client("push");
    for k in keys {
        cmd.arg("--signing-key").arg(k);
    }
    run(cmd.arg(path));
}

fn base(path: &str) -> &str {
    path.trim_start_matches("/nix/store/")
}

/// The stored PathInfo object of `path` in the server's folder.
fn path_info_file(server: &Server, path: &str) -> std::path::PathBuf {
    server.data.path().join("pathinfo").join(&base(path)[..32])
}

fn edit_path_info(server: &Server, path: &str, edit: impl FnOnce(&mut spb::PathInfo)) {
    let file = path_info_file(server, path);
    let mut info = spb::PathInfo::decode(&*std::fs::read(&file).unwrap()).unwrap();
    edit(&mut info);
    std::fs::write(&file, info.encode_to_vec()).unwrap();
}

fn nar_trusting(server: &Server, keys: &str, path: &str) -> std::process::Output {
    server
        .client("nar")
        .args(["--trusted-public-keys", keys, path])
        .output()
        .unwrap()
}

#[test]
fn swapped_forged_and_untrusted_roots_are_refused_before_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (server_key, server_pk) = nix_keygen(dir.path(), "cache-1");
    let (stranger_key, _) = nix_keygen(dir.path(), "stranger-1");
    let mut server = server(dir.path(), &server_key);
    let (genuine, swapped, forged, untrusted) = (
        tree(dir.path(), 1),
        tree(dir.path(), 2),
        tree(dir.path(), 3),
        tree(dir.path(), 4),
    );
    for p in [&genuine, &swapped, &forged] {
        push_signed(&server, p, &[&server_key]);
    }
    push_signed(&server, &untrusted, &[&stranger_key]);

    // What an attacker with the bucket does: point `swapped` at the
    // genuine path's tree (its signatures kept), and forge the bytes of
    // `forged`'s signature.
    let genuine_entry =
        spb::PathInfo::decode(&*std::fs::read(path_info_file(&server, &genuine)).unwrap())
            .unwrap()
            .entry
            .unwrap();
    edit_path_info(&server, &swapped, |info| {
        let name = info.entry.as_ref().unwrap().clone();
        let mut entry = genuine_entry.clone();
        // The genuine root under the swapped path's own name.
        match (&mut entry.entry, name.entry) {
            (
                Some(lazix_proto::castore::entry::Entry::Directory(d)),
                Some(lazix_proto::castore::entry::Entry::Directory(n)),
            ) => {
                d.name = n.name;
            }
            _ => panic!("both roots are directories"),
        }
        info.entry = Some(entry);
        assert!(!info.root_signatures.is_empty());
    });
    edit_path_info(&server, &forged, |info| {
        let sig = &mut info.root_signatures[0];
        let mut data = sig.data.to_vec();
        data[0] ^= 1;
        sig.data = data.into();
    });
    server.restart(); // nothing cached

    let mount = Mount::new(&server, &["--trusted-public-keys", &server_pk]);
    // The genuine path reads, and its bytes are the source's.
    let big = std::fs::read(mount.path(&format!("{}/bin/big", base(&genuine)))).unwrap();
    assert!(big == pseudo_random(1_500_000, 1));
    let fetched_genuine = n(&mount.stats(), "fetched_bytes");
    for (what, p) in [
        ("swapped root", &swapped),
        ("forged signature", &forged),
        ("untrusted key", &untrusted),
    ] {
        let err = std::fs::metadata(mount.path(base(p))).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{what}");
        assert!(
            std::fs::read(mount.path(&format!("{}/small", base(p)))).is_err(),
            "{what}"
        );
    }
    assert_eq!(
        n(&mount.stats(), "fetched_bytes"),
        fetched_genuine,
        "refused paths fetched file bytes"
    );
    let listed: Vec<String> = std::fs::read_dir(mount.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(listed.contains(&base(&genuine).to_string()), "{listed:?}");
    for p in [&swapped, &forged, &untrusted] {
        assert!(!listed.contains(&base(p).to_string()), "{p} listed");
    }
    let log = mount.stop();
    assert!(log.contains("hiding an untrusted store path"), "{log}");

    // `lazix nar`: the genuine path renders, the others fail clearly.
    let ok = nar_trusting(&server, &server_pk, &genuine);
    assert!(ok.status.success());
    assert!(ok.stdout == nix_dump(&genuine));
    for (p, why) in [
        (&swapped, "no valid root signature by a trusted key"),
        (&forged, "no valid root signature by a trusted key"),
        (&untrusted, "signed by: stranger-1"),
    ] {
        let out = nar_trusting(&server, &server_pk, p);
        assert!(!out.status.success(), "{p}");
        assert!(out.stdout.is_empty(), "{p}: bytes written");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing") && err.contains(why), "{p}: {err}");
    }
    // Without trusted keys, today's behaviour: the server is believed.
    let believed = server.client("nar").arg(&untrusted).output().unwrap();
    assert!(believed.status.success());
}

/// Reorders every stored multi-chunk list of the server (genuine chunks,
/// sizes adding up, in another order); returns how many.
fn reorder_lists(server: &Server) -> usize {
    let mut reordered = 0;
    for f in walk_files(&server.data.path().join("blobs")) {
        let mut list = lpb::BlobChunks::decode(&*std::fs::read(&f).unwrap()).unwrap();
        if list.chunks.len() > 1 {
            list.chunks.swap(0, 1);
            std::fs::write(&f, list.encode_to_vec()).unwrap();
            reordered += 1;
        }
    }
    reordered
}

#[test]
fn a_reordered_chunk_list_is_eio_after_admission_and_refused_before() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "cache-1");
    let mut server = server(dir.path(), &key);
    let path = tree(dir.path(), 7);
    push_signed(&server, &path, &[&key]);
    let big = format!("{}/bin/big", base(&path));
    let admitted = Mount::new(&server, &["--trusted-public-keys", &pk]);
    // Admitted (looked up), its big file not opened yet.
    assert!(admitted.path(&format!("{}/small", base(&path))).exists());

    assert!(
        reorder_lists(&server) >= 1,
        "the fixture has a multi-chunk file"
    );
    server.restart();

    // The admitted path's list is fetched when the file is first read and
    // checked against the signed manifest: the reordered list is EIO,
    // never the wrong bytes.
    let err = std::fs::read(admitted.path(&big)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(n(&admitted.stats(), "read_errors") >= 1);
    admitted.stop();
    // A reader admitting it now: the signed manifest still admits the
    // path, and the reordered list is refused before any chunk of it is
    // fetched (EIO; `lazix nar` fails); unverified, the same list is EIO
    // on the mount only after the whole file is read (the whole-file
    // check, tests/hostile.rs).
    let fresh = Mount::new(&server, &["--trusted-public-keys", &pk]);
    let err = std::fs::read(fresh.path(&big)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(n(&fresh.stats(), "fetched_bytes"), 0);
    fresh.stop();
    let out = nar_trusting(&server, &pk, &path);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn rotated_keys_uploader_keys_and_server_signing_all_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (server_key, server_pk) = nix_keygen(dir.path(), "cache-1");
    let (old_key, old_pk) = nix_keygen(dir.path(), "team-2025");
    let (new_key, new_pk) = nix_keygen(dir.path(), "team-2026");
    let (uploader_key, uploader_pk) = nix_keygen(dir.path(), "alice-1");
    let server = server(dir.path(), &server_key);

    // Rotation: signed by the old and the new key; either alone admits it.
    let rotated = tree(dir.path(), 11);
    push_signed(&server, &rotated, &[&old_key, &new_key]);
    for pk in [&old_pk, &new_pk] {
        let out = nar_trusting(&server, pk, &rotated);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == nix_dump(&rotated));
    }
    let mount = Mount::new(&server, &["--trusted-public-keys", &old_pk]);
    let small = std::fs::read_to_string(mount.path(&format!("{}/small", base(&rotated)))).unwrap();
    assert_eq!(small, "small 11\n");
    mount.stop();

    // The uploader's key alone verifies what it pushed.
    let pushed = tree(dir.path(), 12);
    push_signed(&server, &pushed, &[&uploader_key]);
    let out = nar_trusting(&server, &uploader_pk, &pushed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!nar_trusting(&server, &server_pk, &pushed).status.success());

    // Uploaded with `nix copy --to http://`: the server signs the root of
    // what it ingested, with its own key.
    let copied = tree(dir.path(), 13);
    let uploader = NixClient::new(Some(TOKEN));
    run(uploader
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!("{}?compression=zstd", server.http))
        .arg(&copied));
    let out = nar_trusting(&server, &server_pk, &copied);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == nix_dump(&copied));
}

/// Every manifest object in the server's folder.
fn manifest_files(server: &Server) -> Vec<std::path::PathBuf> {
    let dir = server.data.path().join("manifests");
    if !dir.exists() {
        return Vec::new();
    }
    walk_files(&dir)
}

#[test]
fn a_stored_manifest_admits_its_path_a_missing_one_is_recomputed_a_damaged_one_hides_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "cache-1");
    let mut server = server(dir.path(), &key);
    let path = tree(dir.path(), 21);
    push_signed(&server, &path, &[&key]);
    let manifests = manifest_files(&server);
    assert_eq!(manifests.len(), 1, "one manifest for the path's root");
    let records = std::fs::read(&manifests[0]).unwrap();
    assert_eq!(records.len(), 64, "one record: the one multi-chunk file");

    // A store from before manifests: the server gathers the lists itself.
    std::fs::remove_dir_all(server.data.path().join("manifests")).unwrap();
    server.restart();
    let out = nar_trusting(&server, &pk, &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == nix_dump(&path));

    // A manifest that names another list for the big file: the signature
    // no longer holds, the path is hidden and refused.
    let mut damaged = records.clone();
    damaged[40] ^= 1;
    std::fs::create_dir_all(manifests[0].parent().unwrap()).unwrap();
    std::fs::write(&manifests[0], &damaged).unwrap();
    server.restart();
    let out = nar_trusting(&server, &pk, &path);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let mount = Mount::new(&server, &["--trusted-public-keys", &pk]);
    let err = std::fs::metadata(mount.path(base(&path))).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(n(&mount.stats(), "fetched_bytes"), 0);
    mount.stop();
    // A torn one (not whole records) is refused the same way.
    std::fs::write(&manifests[0], &records[..50]).unwrap();
    server.restart();
    assert!(!nar_trusting(&server, &pk, &path).status.success());
}

#[tokio::test]
async fn get_chunk_list_digests_refuses_bad_digests_and_unknown_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = nix_keygen(dir.path(), "cache-1");
    let server = server(dir.path(), &key);
    let mut client =
        lpb::chunk_service_client::ChunkServiceClient::new(grpc_channel(&server).await);
    for (digest, code) in [
        (vec![1u8; 5], tonic::Code::InvalidArgument),
        (vec![7u8; 32], tonic::Code::NotFound),
    ] {
        let got = client
            .get_chunk_list_digests(lpb::GetChunkListDigestsRequest {
                root_digest: digest.into(),
            })
            .await;
        let code_got = match got {
            Err(s) => s.code(),
            Ok(r) => r.into_inner().message().await.unwrap_err().code(),
        };
        assert_eq!(code_got, code);
    }
}

/// A mount with trusted keys and `--prefetch` admits the profile's paths
/// before reading their chunk lists (the guard refuses lists of paths not
/// admitted): the prefetch fetches, and the run then starts no fetch.
#[test]
fn a_trusted_mount_prefetches_a_profile_of_signed_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "cache-1");
    let server = server(dir.path(), &key);
    let path = tree(dir.path(), 11);
    push_signed(&server, &path, &[&key]);
    let big = format!("{}/bin/big", base(&path));
    let profile = dir.path().join("p.profile");
    let rec = Mount::new(
        &server,
        &[
            "--trusted-public-keys",
            &pk,
            "--record-profile",
            profile.to_str().unwrap(),
        ],
    );
    std::fs::read(rec.path(&big)).unwrap();
    rec.stop();

    let directory_calls = || grpc_calls(&server, "/snix.castore.v1.DirectoryService/Get");
    let directory_calls_before = directory_calls();
    let cold = Mount::new(
        &server,
        &[
            "--trusted-public-keys",
            &pk,
            "--prefetch",
            profile.to_str().unwrap(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let prefetched = loop {
        let s = cold.stats();
        if n(&s, "profiles_done") >= 1 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch never finished: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(n(&prefetched, "fetched_bytes") > 1_000_000, "{prefetched}");
    assert!(std::fs::read(cold.path(&big)).unwrap() == pseudo_random(1_500_000, 11));
    let after = cold.stats();
    assert_eq!(n(&after, "read_fetches"), 0, "{after}");
    // The path was admitted once, by the prefetch: its verified tree is
    // what the profile's check and the read's lookups used.
    assert_eq!(directory_calls() - directory_calls_before, 1);
    cold.stop();
}
