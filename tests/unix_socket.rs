//! A local Unix socket against a real `lazix serve --grpc unix://…`: push,
//! nar and a real FUSE mount over it; who may connect is the socket file's
//! permissions (a user the mode leaves out is refused, one it lets in is
//! served); writes need no token there even when the server's TCP
//! listener is beyond loopback and refuses them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn fixture(dir: &Path) -> String {
    let tree = dir.join("socket-fixture");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/big"), pseudo_random(1_500_000, 41)).unwrap();
    std::fs::write(tree.join("note"), "over a Unix socket\n").unwrap();
    add_path(&tree)
}

/// `lazix path-info` over `socket` as the unprivileged user `nobody`.
fn path_info_as_nobody(socket: &str, path: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lazix"))
        .args(["path-info", "--server", socket, path])
        .env("LAZIX_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn push_nar_and_mount_over_a_unix_socket_guarded_by_its_permissions() {
    let dir = tempfile::tempdir().unwrap();
    // The folder lets everyone through: the socket's own mode decides.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket_path = dir.path().join("lazix.sock");
    let socket = format!("unix://{}", socket_path.display());
    // TCP beyond loopback without a token (writes refused there), plus
    // the socket.
    let mut server = Server::start_on("0.0.0.0", &["--grpc", &socket], &[]);
    let mode = std::fs::metadata(&socket_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "the socket is owner and group only by default");
    let path = fixture(dir.path());

    let over_tcp = lazix()
        .args(["push", "--server", &server.addr])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !over_tcp.status.success(),
        "a tokenless push over TCP beyond loopback was taken"
    );
    run(lazix().args(["push", "--server", &socket]).arg(&path));
    let nar = run(lazix().args(["nar", "--server", &socket]).arg(&path)).stdout;
    assert!(nar == nix_dump(&path), "lazix nar over the socket differs");

    // A real FUSE mount over the socket.
    server.addr = socket.clone();
    let mount = Mount::new(&server, &[]);
    let base = path.trim_start_matches("/nix/store/");
    let big = std::fs::read(mount.path(&format!("{base}/bin/big"))).unwrap();
    assert!(
        big == pseudo_random(1_500_000, 41),
        "bytes over the socket differ"
    );
    let note = std::fs::read_to_string(mount.path(&format!("{base}/note"))).unwrap();
    assert_eq!(note, "over a Unix socket\n");
    mount.stop();

    // Someone the mode leaves out cannot connect at all.
    let out = path_info_as_nobody(&socket, &path);
    assert!(!out.status.success(), "nobody read through a 0660 socket");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("permission denied"),
        "no permission error: {err}"
    );
    // Opened to everyone, the same user is served.
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = path_info_as_nobody(&socket, &path);
    assert!(
        out.status.success(),
        "nobody refused through a 0666 socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("StorePath: {path}")));
}

#[test]
fn a_second_server_on_a_live_socket_is_refused_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("lazix.sock");
    let socket = format!("unix://{}", socket_path.display());
    let mut first = Server::start_with(&["--grpc", &socket, "--socket-mode", "600"]);
    let mode = std::fs::metadata(&socket_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let second = lazix()
        .args(["serve", "--data"])
        .arg(dir.path().join("other"))
        .args(["--grpc", &socket])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already listening"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // Killed without cleaning up: the next server replaces the stale file.
    first.stop();
    assert!(socket_path.exists(), "SIGKILL leaves the socket file");
    first.restart();
    let path = fixture(dir.path());
    run(lazix().args(["push", "--server", &socket]).arg(&path));
    let nar = run(lazix().args(["nar", "--server", &socket]).arg(&path)).stdout;
    assert!(nar == nix_dump(&path));
}
