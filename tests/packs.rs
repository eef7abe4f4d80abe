//! Packs end to end, with a real server process: a server killed in the
//! middle of an upload leaves only complete, valid packs (and no path), and
//! a corrupted frame is an error on the binary-cache shim, never wrong
//! bytes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lazix_castore::testutil::pseudo_random;
use prost::Message;

/// Decodes every frame of every visible pack (one with an index) and
/// checks each chunk's BLAKE3; returns the number of frames.
fn check_every_visible_frame(server: &Server) -> usize {
    let mut frames = 0;
    for idx in walk_files(&server.data.path().join("packs")) {
        if idx.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let index =
            lazix_proto::ext::PackIndex::decode(std::fs::read(&idx).unwrap().as_slice()).unwrap();
        let data = std::fs::read(idx.with_extension("pack")).unwrap();
        for f in index.frames {
            let frame = lazix_castore::frame::Frame::try_from_proto(lazix_proto::ext::Frame {
                chunks: f.chunks,
                data: data[f.offset as usize..(f.offset + f.length) as usize]
                    .to_vec()
                    .into(),
                base: f.base,
            })
            .unwrap();
            assert!(frame.base.is_empty(), "uploads store plain frames");
            frame.decode_verified().unwrap();
            frames += 1;
        }
    }
    frames
}

#[test]
fn a_server_killed_mid_upload_leaves_only_complete_packs() {
    let mut server = Server::start_with(&["--compact-after", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("packs-killed");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..6 {
        std::fs::write(
            tree.join(format!("part{i}")),
            pseudo_random(40_000_000, 300 + i),
        )
        .unwrap();
    }
    let path = add_path(&tree);

    let mut push = server
        .client("push")
        .args([&path])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the server (SIGKILL) once some packs are written.
    let packs = server.data.path().join("packs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while walk_files(&packs)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "no packs written");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    assert!(!push.wait().unwrap().success(), "the push must fail");

    // Every visible pack is whole and verifies; the path is not there.
    server.restart();
    assert!(check_every_visible_frame(&server) > 0);
    let info = server.client("path-info").args([&path]).output().unwrap();
    assert!(!info.status.success());

    // Pushing again completes it, byte-identical.
    lazix_push(&server, &[&path]);
    assert!(lazix_nar(&server, &path) == nix_dump(&path));
    check_every_visible_frame(&server);
}

#[test]
fn a_corrupt_frame_is_an_error_on_the_shim_never_wrong_bytes() {
    let mut server = Server::start_with(&["--compact-after", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("packs-corrupt");
    std::fs::create_dir_all(&tree).unwrap();
    let big = pseudo_random(3_000_000, 77);
    std::fs::write(tree.join("big"), &big).unwrap();
    std::fs::write(tree.join("small"), b"fine\n").unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let nar_url = nar_url(&server.http, &path);

    assert!(server.corrupt_frames(|raw| raw.windows(64).any(|w| w == &big[..64])) > 0);
    server.restart(); // no caches
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "%{http_code}", &nar_url])
        .output()
        .unwrap();
    let expected = nix_dump(&path);
    assert!(
        out.stdout.len() < expected.len() + 3,
        "served {} bytes for a NAR of {}",
        out.stdout.len(),
        expected.len()
    );
    assert!(!out.status.success() || !out.stdout.ends_with(b"200"));
    // A range inside the damaged file is an error too.
    let ranged = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-r",
            "1000-2000",
            &nar_url,
        ])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&ranged.stdout).to_string();
    assert!(
        !ranged.status.success() || code != "206",
        "range answered {code}"
    );
    // And Nix refuses to substitute it.
    let client = NixClient::new(None);
    let copy = client
        .cmd("nix")
        .args(["--store", &client.store(), "copy", "--from", &server.http])
        .args(["--option", "require-sigs", "false", &path])
        .output()
        .unwrap();
    assert!(!copy.status.success());
}

/// Words that compress about as well as a man page's text.
fn manual_text(words: usize, seed: u64) -> String {
    let mut x = seed;
    (0..words)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let sep = if i % 12 == 11 { "\n" } else { " " };
            format!(".B option{}{sep}", x >> 54)
        })
        .collect()
}

/// Man pages as Debian and nixpkgs ship them (compressed by the real
/// `gzip -9n`), beside gzip files compaction must leave alone: compaction
/// stores the pages' contents, and every way of reading the path still
/// gives the bytes Nix recorded.
#[test]
fn gzip_files_are_stored_as_their_contents_and_read_back_exactly() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("packs-gzip");
    let man = tree.join("share/man/man1");
    std::fs::create_dir_all(&man).unwrap();
    for i in 0..40u64 {
        std::fs::write(
            man.join(format!("tool{i}.1")),
            manual_text(300 + 50 * i as usize, i),
        )
        .unwrap();
    }
    std::fs::write(tree.join("fast.txt"), manual_text(2000, 99)).unwrap();
    std::fs::write(tree.join("named.txt"), manual_text(2000, 98)).unwrap();
    std::fs::write(tree.join("README"), "not compressed\n").unwrap();
    let gzip = |args: &[&str], file: &std::path::Path| {
        run(Command::new("gzip").args(args).arg(file));
    };
    for i in 0..40 {
        gzip(&["-9n"], &man.join(format!("tool{i}.1")));
    }
    gzip(&["-1n"], &tree.join("fast.txt")); // level 1
    gzip(&["-9"], &tree.join("named.txt")); // a file name in the header
    let truncated = std::fs::read(man.join("tool3.1.gz")).unwrap();
    std::fs::write(tree.join("truncated.gz"), &truncated[..truncated.len() - 5]).unwrap();
    let path = add_path(&tree);
    let gzip_frames = |server: &Server, extra: &[&str]| -> u64 {
        let data = server.data.path().to_str().unwrap().to_string();
        let report = stdout(&run(lazix().args(["compact", "--data", &data]).args(extra)));
        report
            .split(" frames of gzip contents")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of gzip frames in {report:?}"))
    };
    // Asked to keep gzip files as they are, compaction does.
    let keeping = Server::start();
    lazix_push(&keeping, &[&path]);
    assert_eq!(gzip_frames(&keeping, &["--keep-gzip"]), 0);
    assert!(lazix_nar(&keeping, &path) == nix_dump(&path));
    drop(keeping);

    lazix_push(&server, &[&path]);
    assert!(gzip_frames(&server, &[]) > 0);
    let tree_bytes: u64 = walk_files(&tree)
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    let stored: u64 = walk_files(&server.data.path().join("packs"))
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        stored < tree_bytes,
        "stored {stored} bytes for a tree of {tree_bytes}"
    );

    server.restart(); // no caches
    assert!(lazix_nar(&server, &path) == nix_dump(&path));
    let mount = Mount::new(&server, &[]);
    for file in walk_files(&tree) {
        let rel = file.strip_prefix(&tree).unwrap();
        let read = std::fs::read(mount.path(basename(&path)).join(rel)).unwrap();
        assert!(read == std::fs::read(&file).unwrap(), "{rel:?} differs");
    }
    mount.stop();
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap()
}
