//! Real Nix 2.8 against a real `lazix serve`: every NAR feature survives
//! push → castore → `lazix nar` byte for byte, and NarHash/NarSize match
//! what Nix recorded.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::*;

/// A tree with every NAR feature; `salt` makes its store path unique.
fn feature_tree(root: &Path, salt: &str) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("salt", salt.as_bytes());
    w("empty", b"");
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    w("bin/tool", b"#!/bin/sh\necho tool\n");
    std::fs::set_permissions(
        root.join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("bin/tool", root.join("rel-link")).unwrap();
    symlink("/bin/sh", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling-link")).unwrap();
    symlink("nested", root.join("dir-link")).unwrap();
    w("nested/a/b/c/deep.txt", b"deep\n");
    w("nested/a/sibling", b"sibling\n");
    w("with space.txt", b"spaces\n");
    w("ünïcødé ✓", b"unicode\n");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::fs::write(root.join(latin1), b"latin-1 name\n").unwrap();
    // Larger than the maximum chunk: several chunks, incompressible.
    w("big.bin", &pseudo_random(1_500_000, salt.len() as u64 + 7));
    // Larger than the maximum chunk, compressible.
    w("big.txt", &b"line of text\n".repeat(60_000));
    // Exactly a multiple of 8 and one byte off (padding edge cases).
    w("eight", b"12345678");
    w("nine", b"123456789");
    for i in 0..3000 {
        w(
            &format!("many/f{i:04}"),
            format!("small file {i}\n").as_bytes(),
        );
    }
}

fn assert_roundtrip(server: &Server, path: &str) {
    let rendered = lazix_nar(server, path);
    let original = nix_dump(path);
    assert_eq!(rendered.len(), original.len(), "NAR size of {path}");
    assert!(
        rendered == original,
        "NAR of {path} differs from nix-store --dump"
    );
    let ours = run(lazix().args(["path-info", "--json", "--server", &server.addr, path]));
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let nix = nix_path_info(path);
    assert_eq!(
        ours["narHash"],
        sri_to_b32(nix["narHash"].as_str().unwrap())
    );
    assert_eq!(ours["narSize"], nix["narSize"]);
    assert_eq!(ours["narHash"], nar_hash(&original));
}

#[test]
fn every_nar_feature_roundtrips_byte_identical() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("features");
    feature_tree(&tree, "roundtrip");
    let path = add_path(&tree);
    let report = lazix_push(&server, &[&path]);
    assert_eq!(report["paths_pushed"], 1);
    assert_roundtrip(&server, &path);

    // A store path whose root is a single regular file.
    let file = dir.path().join("single-file");
    std::fs::write(&file, pseudo_random(300_000, 99)).unwrap();
    let file_path = add_path(&file);
    lazix_push(&server, &[&file_path]);
    assert_roundtrip(&server, &file_path);
}

#[test]
fn closures_with_references_roundtrip() {
    let server = Server::start();
    let top = nix_build(
        r#"
let
  mk = name: script: derivation {
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  lib = mk "lazix-test-lib" "/bin/mkdir -p $out/lib; /bin/echo library > $out/lib/data; /bin/echo $out > $out/self";
  link = mk "lazix-test-link" "/bin/ln -s ${lib}/lib/data $out";
  tool = mk "lazix-test-tool" ''
    /bin/mkdir -p $out/bin
    /bin/echo '#!/bin/sh' > $out/bin/tool
    /bin/echo 'cat ${lib}/lib/data ${link}' >> $out/bin/tool
    /bin/chmod 755 $out/bin/tool
  '';
in mk "lazix-test-top" "/bin/mkdir $out; /bin/echo ${tool} ${lib} > $out/refs"
"#,
    );
    let closure = nix_closure(&top);
    assert_eq!(closure.len(), 4, "{closure:?}");
    let report = lazix_push(&server, &[&top]);
    assert_eq!(report["paths_total"], 4);
    assert_eq!(report["paths_pushed"], 4);
    for p in &closure {
        assert_roundtrip(&server, p);
        // References and deriver are those Nix recorded.
        let ours = run(lazix().args(["path-info", "--json", "--server", &server.addr, p]));
        let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        let nix = nix_path_info(p);
        assert_eq!(ours["references"], nix["references"], "{p}");
        assert_eq!(ours["deriver"], nix["deriver"], "{p}");
    }
}
