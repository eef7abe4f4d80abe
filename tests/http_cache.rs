//! The HTTP binary-cache shim against real Nix 2.8: `nix copy --to` uploads
//! (zstd, xz, none), `nix copy --from` substitutes into an empty store with
//! signature checks, key rotation, uploader signatures, byte ranges,
//! listings, and bad uploads that leave no trace.

mod common;

use common::*;

const TOKEN: &str = "s3cret-upload-token";

/// A server with upload token and the given signing keys.
fn server(dir: &std::path::Path, keys: &[&std::path::Path], extra: &[&str]) -> Server {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut args: Vec<String> = vec!["--upload-token-file".into(), token.display().to_string()];
    for k in keys {
        args.push("--signing-key".into());
        args.push(k.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&refs)
}

fn upload(server: &Server, compression: &str, path: &str) {
    let client = NixClient::new(Some(TOKEN));
    run(client
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!("{}?compression={compression}", server.http))
        .arg(path));
}

/// `nix copy --from` into a fresh chroot store trusting `keys`.
fn substitute(server: &Server, keys: &str, path: &str) -> (NixClient, std::process::Output) {
    let client = NixClient::new(None);
    let out = client
        .cmd("nix")
        .args(["--store", &client.store(), "copy", "--from", &server.http])
        .args(["--option", "trusted-public-keys", keys])
        .arg(path)
        .output()
        .unwrap();
    (client, out)
}

fn assert_substituted(server: &Server, keys: &str, top: &str) {
    let (client, out) = substitute(server, keys, top);
    assert!(
        out.status.success(),
        "substitution failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in nix_closure(top) {
        let theirs =
            run(client
                .cmd("nix")
                .args(["--store", &client.store(), "path-info", "--json", &p]));
        let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
        assert_eq!(theirs[0]["narHash"], nix_path_info(&p)["narHash"], "{p}");
    }
}

fn assert_refused(server: &Server, keys: &str, top: &str) {
    let (_c, out) = substitute(server, keys, top);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks a valid signature"), "{err}");
}

#[test]
fn nix_uploads_and_substitutes_with_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = nix_keygen(dir.path(), "lazix-http-1");
    let (_other, untrusted) = nix_keygen(dir.path(), "lazix-http-untrusted");
    let top = build_closure("http-copy");
    assert!(nix_closure(&top).len() >= 4);
    for (compression, serve_as) in [("zstd", "none"), ("xz", "zstd"), ("none", "none")] {
        let srv = server(dir.path(), &[&key], &["--nar-compression", serve_as]);
        upload(&srv, compression, &top);
        assert_substituted(&srv, &public, &top);
        assert_refused(&srv, &untrusted, &top);
    }
}

#[test]
fn uploader_signatures_survive_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (uploader_sk, uploader_pk) = nix_keygen(dir.path(), "lazix-uploader-1");
    let (k1, p1) = nix_keygen(dir.path(), "lazix-server-old");
    // The new key comes from `lazix keygen`: Nix must trust it as its own.
    let keygen = run(lazix()
        .args(["keygen", "lazix-server-new", "--dir"])
        .arg(dir.path()));
    let p2 = stdout(&keygen);
    let k2 = dir.path().join("lazix-server-new.secret");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lazix-server-new.public")).unwrap(),
        p2
    );
    let top = build_closure("http-sign");
    run(nix_cmd("nix")
        .args(["store", "sign", "--recursive", "--key-file"])
        .arg(&uploader_sk)
        .arg(&top));
    let srv = server(dir.path(), &[&k1, &k2], &[]);
    upload(&srv, "zstd", &top);
    assert_substituted(&srv, &uploader_pk, &top);
    assert_substituted(&srv, &p1, &top);
    assert_substituted(&srv, &p2, &top);
    let (_x, nobody) = nix_keygen(dir.path(), "lazix-nobody");
    assert_refused(&srv, &nobody, &top);
}

fn narinfo_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        .to_string()
}

#[test]
fn ranges_listings_and_heads_match_the_nar() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("http-ranges");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let big = pseudo_random(2_000_000, 77);
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    std::fs::write(tree.join("sub/small"), b"small file\n").unwrap();
    let path = add_path(&tree);
    let srv = Server::start();
    lazix_push(&srv, &[&path]);
    let nar = nix_dump(&path);
    let hash = path.trim_start_matches("/nix/store/")[..32].to_string();

    let (status, body, _) = curl(&[&format!("{}/{hash}.narinfo", srv.http)]);
    assert_eq!(status, 200);
    let narinfo = String::from_utf8(body).unwrap();
    assert_eq!(narinfo_field(&narinfo, "Compression"), "none");
    let url = format!("{}/{}", srv.http, narinfo_field(&narinfo, "URL"));

    let (status, body, head) = curl(&[&url]);
    assert_eq!(status, 200);
    assert!(body == nar, "full NAR differs");
    assert!(head.contains("accept-ranges: bytes"));
    assert!(head.contains("immutable"));
    let (status, _, head) = curl(&["-I", &url]);
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("content-length: {}", nar.len())),
        "{head}"
    );

    let n = nar.len();
    let big_at = nar.windows(64).position(|w| w == &big[..64]).unwrap();
    for (spec, range) in [
        ("0-99".to_string(), 0..100),
        (
            format!("{}-{}", big_at + 1000, big_at + 300_000),
            big_at + 1000..big_at + 300_001,
        ),
        (
            format!("{}-{}", big_at + 500_000, big_at + 500_010),
            big_at + 500_000..big_at + 500_011,
        ),
        (format!("{}-", n - 5000), n - 5000..n),
        ("-777".to_string(), n - 777..n),
        (
            format!("{}-{}", big_at - 50, big_at + 50),
            big_at - 50..big_at + 51,
        ),
        (format!("0-{}", n + 1000), 0..n),
    ] {
        let (status, body, head) = curl(&["-H", &format!("Range: bytes={spec}"), &url]);
        assert_eq!(status, 206, "{spec}");
        assert!(body == nar[range.clone()], "range {spec} differs");
        assert!(
            head.contains(&format!(
                "content-range: bytes {}-{}/{n}",
                range.start,
                range.end - 1
            )),
            "{head}"
        );
    }
    let (status, _, head) = curl(&["-H", &format!("Range: bytes={}-", n + 10), &url]);
    assert_eq!(status, 416);
    assert!(head.contains(&format!("content-range: bytes */{n}")));

    // The listing's narOffset points at each file's contents in the NAR.
    let (status, body, _) = curl(&[&format!("{}/{hash}.ls", srv.http)]);
    assert_eq!(status, 200);
    let ls: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ls["version"], 1);
    let file = &ls["root"]["entries"]["big.bin"];
    let off = file["narOffset"].as_u64().unwrap() as usize;
    assert_eq!(file["size"], big.len());
    assert!(nar[off..off + big.len()] == big[..]);
    let small = &ls["root"]["entries"]["sub"]["entries"]["small"];
    let off = small["narOffset"].as_u64().unwrap() as usize;
    assert_eq!(&nar[off..off + 11], b"small file\n");

    // Unknown and malformed names.
    let (status, _, head) = curl(&[&format!("{}/{}.narinfo", srv.http, "0".repeat(32))]);
    assert_eq!(status, 404);
    assert!(head.contains("no-cache"));
    assert_eq!(curl(&[&format!("{}/abc.narinfo", srv.http)]).0, 400);
    assert_eq!(
        curl(&[&format!("{}/{}.narinfo", srv.http, "e".repeat(32))]).0,
        400
    );
    let (status, body, _) = curl(&[&format!("{}/nix-cache-info", srv.http)]);
    assert_eq!(status, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("StoreDir: /nix/store"));
}

#[test]
fn bad_uploads_are_refused_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), &[], &[]);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let tree = dir.path().join("http-bad");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), pseudo_random(300_000, 5)).unwrap();
    let path = add_path(&tree);
    let hash = path.trim_start_matches("/nix/store/")[..32].to_string();
    let nar = nix_dump(&path);
    let nar_file = dir.path().join("nar");
    std::fs::write(&nar_file, &nar).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &nar[..nar.len() / 2]).unwrap();
    let info = nix_path_info(&path);
    let narinfo = |url: &str, nar_hash: &str, store_path: &str| {
        let f = dir.path().join(format!("ni-{}", url.replace('/', "_")));
        std::fs::write(
            &f,
            format!(
                "StorePath: {store_path}\nURL: {url}\nCompression: none\nNarHash: {nar_hash}\nNarSize: {}\nReferences: \nCA: {}\n",
                nar.len(),
                info["ca"].as_str().unwrap()
            ),
        )
        .unwrap();
        f
    };
    let put = |target: &str, file: &std::path::Path, auth: &str| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            auth,
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/{target}", srv.http),
        ])
        .0
    };
    let right_hash = sri_to_b32(info["narHash"].as_str().unwrap());
    let wrong_hash = nar_hash(b"something else");

    // No token, wrong token (bearer and basic auth).
    assert_eq!(put("nar/a.nar", &nar_file, "X-None: 1"), 401);
    assert_eq!(
        put("nar/a.nar", &nar_file, "Authorization: Bearer wrong"),
        401
    );
    assert_eq!(
        put(
            "nar/a.nar",
            &nar_file,
            "Authorization: Basic bGF6aXg6d3Jvbmc="
        ),
        401
    );
    let good_ni = narinfo("nar/a.nar", &right_hash, &path);
    assert_eq!(put(&format!("{hash}.narinfo"), &good_ni, "X-None: 1"), 401);
    // Truncated NAR.
    assert_eq!(put("nar/t.nar", &truncated, &auth), 400);
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/t.nar", &right_hash, &path),
            &auth
        ),
        400
    );
    // A NAR whose hash differs from its narinfo.
    assert_eq!(put("nar/b.nar", &nar_file, &auth), 201);
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/b.nar", &wrong_hash, &path),
            &auth
        ),
        400
    );
    // Garbage narinfo; narinfo for a NAR never uploaded.
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "this is: not\na narinfo").unwrap();
    assert_eq!(put(&format!("{hash}.narinfo"), &garbage, &auth), 400);
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/never.nar", &right_hash, &path),
            &auth
        ),
        400
    );
    // Store path names with `/` or `..`.
    let slash = path.replace("-http-bad", "-a/b");
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/b.nar", &right_hash, &slash),
            &auth
        ),
        400
    );
    let dots = format!("/nix/store/{hash}-..");
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/b.nar", &right_hash, &dots),
            &auth
        ),
        400
    );
    // A narinfo under another path's name.
    let other = format!("{}.narinfo", "1".repeat(32));
    assert_eq!(
        put(&other, &narinfo("nar/b.nar", &right_hash, &path), &auth),
        400
    );

    // None of it is visible.
    assert_eq!(curl(&[&format!("{}/{hash}.narinfo", srv.http)]).0, 404);
    assert_eq!(walk_files(&srv.data.path().join("pathinfo")).len(), 0);

    // The proper narinfo for the uploaded NAR is accepted and served.
    assert_eq!(
        put(
            &format!("{hash}.narinfo"),
            &narinfo("nar/b.nar", &right_hash, &path),
            &auth
        ),
        201
    );
    let (status, body, _) = curl(&[&format!("{}/{hash}.narinfo", srv.http)]);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(narinfo_field(&text, "NarHash"), right_hash);
    // A re-upload of the same files stores no new packs.
    let packs_before = walk_files(&srv.data.path().join("packs")).len();
    assert!(packs_before > 0);
    assert_eq!(put("nar/c.nar", &nar_file, &auth), 201);
    assert_eq!(
        walk_files(&srv.data.path().join("packs")).len(),
        packs_before
    );
    // Its narinfo uploaded again with a signature is served with it at
    // once (the narinfo rendered before, now cached, is dropped).
    let signed_ni = narinfo("nar/c.nar", &right_hash, &path);
    let sig = format!("lazix-uploader-1:{}", "A".repeat(86) + "==");
    let mut signed_text = std::fs::read_to_string(&signed_ni).unwrap();
    signed_text.push_str(&format!("Sig: {sig}\n"));
    std::fs::write(&signed_ni, signed_text).unwrap();
    assert_eq!(put(&format!("{hash}.narinfo"), &signed_ni, &auth), 201);
    let (status, body, _) = curl(&[&format!("{}/{hash}.narinfo", srv.http)]);
    assert_eq!(status, 200);
    assert_eq!(narinfo_field(&String::from_utf8(body).unwrap(), "Sig"), sig);
}

#[test]
fn a_read_token_guards_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let read_token = dir.path().join("read-token");
    std::fs::write(&read_token, "reader-secret\n").unwrap();
    let srv = server(
        dir.path(),
        &[],
        &["--read-token-file", &read_token.display().to_string()],
    );
    let tree = dir.path().join("http-read-token");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"guarded\n").unwrap();
    let path = add_path(&tree);
    lazix_push(&srv, &[&path]);
    let hash = &basename_of(&path)[..32];
    for url in [
        format!("{}/nix-cache-info", srv.http),
        format!("{}/{hash}.narinfo", srv.http),
        format!("{}/{hash}.ls", srv.http),
    ] {
        let (status, _, head) = curl(&[&url]);
        assert_eq!(status, 401, "{url}");
        assert!(head.contains("www-authenticate: basic"), "{head}");
        assert_eq!(
            curl(&["-H", "Authorization: Bearer wrong", &url]).0,
            401,
            "{url}"
        );
        assert_eq!(
            curl(&["-H", "Authorization: Bearer reader-secret", &url]).0,
            200,
            "{url}"
        );
        assert_eq!(curl(&["-u", "nix:reader-secret", &url]).0, 200, "{url}");
    }
    // The NAR itself, named by the narinfo.
    let (_, body, _) = curl(&[
        "-u",
        "nix:reader-secret",
        &format!("{}/{hash}.narinfo", srv.http),
    ]);
    let url = format!(
        "{}/{}",
        srv.http,
        narinfo_field(&String::from_utf8(body).unwrap(), "URL")
    );
    assert_eq!(curl(&[&url]).0, 401);
    let (status, nar, _) = curl(&["-u", "nix:reader-secret", &url]);
    assert_eq!(status, 200);
    assert!(nar == nix_dump(&path));
}

fn basename_of(p: &str) -> &str {
    p.trim_start_matches("/nix/store/")
}
