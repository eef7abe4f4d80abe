//! Push sends only what the server lacks: a second push of a closure
//! sends nothing, identical files under another path send nothing, and a
//! slightly changed tree sends only its new chunks.

mod common;

use std::path::Path;

use common::*;

const BIG: usize = 4 * 1024 * 1024;

fn tree(root: &Path, big: &[u8], extra: Option<&str>) {
    std::fs::create_dir_all(root.join("share")).unwrap();
    std::fs::write(root.join("big.bin"), big).unwrap();
    for i in 0..50 {
        std::fs::write(
            root.join(format!("share/doc{i}")),
            format!("doc {i} dedup-test\n"),
        )
        .unwrap();
    }
    if let Some(e) = extra {
        std::fs::write(root.join("share/new"), e).unwrap();
    }
}

#[test]
fn pushes_send_each_chunk_once() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let big = pseudo_random(BIG, 4242);

    let a = dir.path().join("dedup-a");
    tree(&a, &big, None);
    let pa = add_path(&a);
    let first = lazix_push(&server, &[&pa]);
    assert_eq!(n(&first, "paths_pushed"), 1);
    // Incompressible data: about its size goes over the wire.
    assert!(n(&first, "raw_bytes_sent") >= BIG as u64, "{first}");

    // Same closure again: nothing to send.
    let again = lazix_push(&server, &[&pa]);
    assert_eq!(n(&again, "paths_present"), 1);
    assert_eq!(n(&again, "bytes_sent"), 0);
    assert_eq!(n(&again, "chunks_sent"), 0);

    // Same files under another store path: no chunk bytes.
    let b = dir.path().join("dedup-b");
    tree(&b, &big, None);
    let pb = add_path(&b);
    assert_ne!(pa, pb);
    let same_files = lazix_push(&server, &[&pb]);
    assert_eq!(n(&same_files, "paths_pushed"), 1);
    assert_eq!(n(&same_files, "bytes_sent"), 0, "{same_files}");
    assert_eq!(lazix_nar(&server, &pb), nix_dump(&pb));

    // A slightly changed tree: 100 bytes changed in the middle of the big
    // file and one new small file. Only the chunks around the change move.
    let mut changed = big.clone();
    for byte in &mut changed[BIG / 2..BIG / 2 + 100] {
        *byte ^= 0xff;
    }
    let c = dir.path().join("dedup-c");
    tree(&c, &changed, Some("brand new file\n"));
    let pc = add_path(&c);
    let delta = lazix_push(&server, &[&pc]);
    let raw = n(&delta, "raw_bytes_sent");
    let max_chunk = lazix_castore::chunker::DEFAULT_PARAMS.max as u64;
    assert!(raw > 0, "{delta}");
    assert!(
        raw <= 2 * max_chunk + 1024,
        "sent {raw} raw bytes for a 100-byte change: {delta}"
    );
    assert!(n(&delta, "chunks_sent") <= 4, "{delta}");
    assert!(n(&delta, "bytes_sent") < (BIG as u64) / 8, "{delta}");
    assert_eq!(lazix_nar(&server, &pc), nix_dump(&pc));
}
