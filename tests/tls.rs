//! TLS against a real `lazix serve --tls-cert --tls-key` with a CA made in
//! the test (openssl): push, nar and a real FUSE mount over grpcs://, real
//! Nix substituting over https://, and a client without the CA failing
//! with a TLS error within seconds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA
/// certificate, server certificate, server key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        run(std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=lazix test CA",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&csr);
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

/// A TLS server; its `addr` is the grpcs:// address.
fn tls_server(dir: &Path) -> (Server, PathBuf, String) {
    tls_server_with(dir, &[])
}

fn tls_server_with(dir: &Path, extra: &[&str]) -> (Server, PathBuf, String) {
    let (ca, cert, key) = test_ca(dir);
    let (sk, pk) = nix_keygen(dir, "tls-test");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--signing-key",
        sk.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut server = Server::start_with(&args);
    server.addr = server.addr.replace("grpc://", "grpcs://");
    server.http = server.http.replace("http://", "https://");
    (server, ca, pk)
}

fn fixture(dir: &Path) -> String {
    let tree = dir.join("tls-fixture");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/big"), pseudo_random(2_000_000, 31)).unwrap();
    std::fs::write(tree.join("small"), "over TLS\n").unwrap();
    add_path(&tree)
}

#[test]
fn push_nar_mount_and_nix_over_tls_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, pk) = tls_server(dir.path());
    let ca_arg = ca.to_str().unwrap();
    let path = fixture(dir.path());

    run(lazix()
        .args(["push", "--server", &server.addr, "--ca-file", ca_arg])
        .arg(&path));
    let nar = run(lazix()
        .args(["nar", "--server", &server.addr, "--ca-file", ca_arg])
        .arg(&path))
    .stdout;
    assert!(nar == nix_dump(&path), "lazix nar over grpcs:// differs");

    // The mount reads every byte over grpcs:// (CA from the environment).
    let mount = Mount::new(&server, &["--ca-file", ca_arg]);
    let base = path.trim_start_matches("/nix/store/");
    let big = std::fs::read(mount.path(&format!("{base}/bin/big"))).unwrap();
    assert!(big == pseudo_random(2_000_000, 31));
    let small = std::fs::read_to_string(mount.path(&format!("{base}/small"))).unwrap();
    assert_eq!(small, "over TLS\n");
    mount.stop();

    // The HTTP shim over https://: curl with the CA, and real Nix.
    let (status, body, _) = curl(&[
        "--cacert",
        ca_arg,
        &format!("{}/nix-cache-info", server.http),
    ]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("StoreDir: /nix/store"));
    let client = NixClient::new(None);
    run(client
        .cmd("nix")
        .args(["--store", &client.store(), "copy", "--from", &server.http])
        .args(["--option", "trusted-public-keys", &pk])
        .env("NIX_SSL_CERT_FILE", ca_arg)
        .arg(&path));
    let copied = run(client
        .cmd("nix-store")
        .args(["--store", &client.store(), "--dump", &path]))
    .stdout;
    assert!(copied == nix_dump(&path), "nix copy over https:// differs");
}

#[test]
fn a_client_without_the_ca_fails_with_a_tls_error_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, _) = tls_server(dir.path());
    let path = fixture(dir.path());
    run(lazix()
        .args([
            "push",
            "--server",
            &server.addr,
            "--ca-file",
            ca.to_str().unwrap(),
        ])
        .arg(&path));

    let started = Instant::now();
    let out = lazix()
        .args(["nar", "--server", &server.addr])
        .arg(&path)
        .env_remove("LAZIX_CA_FILE")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a server the client cannot verify was trusted"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("tls") || err.contains("invalid peer"),
        "no TLS error: {err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // curl without the CA refuses too (exit 60: certificate problem).
    let status = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            &format!("{}/nix-cache-info", server.http),
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(60));
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_cut_off_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    // One connection at a time, one second for a handshake (and headers).
    let (server, ca, _) = tls_server_with(
        dir.path(),
        &["--max-connections", "1", "--http-header-timeout", "1"],
    );
    let port = server.http.rsplit(':').next().unwrap().to_string();
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = std::io::Read::read(&mut silent, &mut buf);
    assert!(
        matches!(got, Ok(0) | Err(_)),
        "the server answered a silent client: {got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
    // Its slot is free again: a real client is served.
    let (status, _, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/nix-cache-info", server.http),
    ]);
    assert_eq!(status, 200);
}
