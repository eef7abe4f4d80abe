//! The S3 backend against a real SeaweedFS (installed by
//! scripts/install-deps.sh, started on loopback with credentials): two
//! replicas on one bucket act as one store — pushed over gRPC and with
//! `nix copy --to http://` to one, substituted by real Nix and mounted from
//! the other, still there after both restart — and wrong credentials stop
//! `serve` at start with a clear message. GC on a bucket: tests/gc.rs.

mod common;

use common::weed::Weed;
use common::*;
use lazix_castore::testutil::pseudo_random;

const TOKEN: &str = "s3-upload-token";

#[test]
fn two_replicas_on_one_bucket_act_as_one_store() {
    let weed = Weed::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let (sk, pk) = nix_keygen(dir.path(), "s3-test");
    let args = [
        "--upload-token-file",
        token.to_str().unwrap(),
        "--signing-key",
        sk.to_str().unwrap(),
    ];
    let mut a = weed.server(&args);
    let mut b = weed.server(&args);

    // To replica A: a closure over gRPC, a path with `nix copy --to http://`.
    let closure_top = build_closure("s3");
    lazix_push(&a, &[&closure_top]);
    let tree = dir.path().join("s3-uploaded");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), pseudo_random(3_000_000, 901)).unwrap();
    std::fs::write(tree.join("small"), b"small\n").unwrap();
    let uploaded = add_path(&tree);
    let uploader = NixClient::new(Some(TOKEN));
    run(uploader
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!("{}?compression=zstd", a.http))
        .arg(&uploaded));

    // Replica B serves all of it at once.
    let mut all = nix_closure(&closure_top);
    all.push(uploaded.clone());
    for p in &all {
        assert!(lazix_nar(&b, p) == nix_dump(p), "{p} from replica B");
    }
    // Real Nix substitutes from B, trusting the servers' key.
    let client = NixClient::new(None);
    let out = client
        .cmd("nix")
        .args(["--store", &client.store(), "copy", "--from", &b.http])
        .args(["--option", "trusted-public-keys", &pk])
        .arg(&closure_top)
        .arg(&uploaded)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "substitution from B failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A mount from B reads it byte for byte.
    let mount = Mount::new(&b, &[]);
    let name = uploaded.rsplit('/').next().unwrap();
    let dumped = run(nix_cmd("nix-store").arg("--dump").arg(mount.path(name))).stdout;
    assert!(dumped == nix_dump(&uploaded));
    // Its root lists every path either replica took (the catalog of
    // store paths, written by both).
    let basenames = |paths: &[String]| -> std::collections::BTreeSet<String> {
        paths
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    let root_of = |mount: &Mount| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(mount.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    assert_eq!(root_of(&mount), basenames(&all));
    mount.stop();
    // A path deleted through A leaves the listing of a mount from B.
    run(weed.lazix("delete").arg(&uploaded));
    let mount = Mount::new(&b, &[]);
    let kept: Vec<String> = all.iter().filter(|p| **p != uploaded).cloned().collect();
    assert_eq!(root_of(&mount), basenames(&kept));
    mount.stop();
    all = kept;

    // Both replicas restarted: everything is still there, on either.
    a.restart();
    b.restart();
    for (i, p) in all.iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        assert!(lazix_nar(replica, p) == nix_dump(p), "{p} after restart");
    }
}

#[test]
fn wrong_credentials_stop_serve_at_start() {
    let weed = Weed::start();
    let out = lazix()
        .args(["serve", "--store", &weed.store(), "--grpc", "127.0.0.1:0"])
        .env("AWS_ACCESS_KEY_ID", common::weed::KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opening the store") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    let out = lazix()
        .args(["serve", "--store", &weed.store(), "--grpc", "127.0.0.1:0"])
        .env("AWS_ACCESS_KEY_ID", "nobody")
        .env("AWS_SECRET_ACCESS_KEY", common::weed::SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidAccessKeyId"), "{err}");
}
