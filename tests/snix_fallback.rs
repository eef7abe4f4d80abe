//! lazix's clients against a server with only snix's gRPC services (as a
//! snix daemon offers them): `lazix serve --snix-only` here, a real snix
//! daemon in `scripts/interop-snix.sh`. Pushing, rendering and the mount
//! fall back to snix's `BlobService` by themselves, with the same checks:
//! trusted NARs and a trusted mount of signed paths are byte-exact.
//! Also: a mount unmounted from outside exits cleanly.

mod common;

use std::time::Duration;

use common::*;

/// A path with a multi-chunk file, small files and a link.
fn tree(dir: &std::path::Path) -> String {
    let t = dir.join("snix-fallback");
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::write(t.join("bin/big"), pseudo_random(3_000_000, 77)).unwrap();
    for i in 0..40 {
        std::fs::write(t.join(format!("small-{i}")), format!("small {i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("bin/big", t.join("link")).unwrap();
    add_path(&t)
}

fn base(path: &str) -> &str {
    path.trim_start_matches("/nix/store/")
}

#[test]
fn lazix_clients_push_render_and_mount_through_snix_services_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "snix-fallback-1");
    let mut server = Server::start_with(&["--snix-only", "--compact-after", "0"]);
    let features = tree(dir.path());
    let top = build_closure("snix-fallback");
    let mut paths = nix_closure(&top);
    paths.push(features.clone());

    // Push (signing roots), through BlobService.Put alone.
    let mut push = server.client("push");
    push.arg("--signing-key").arg(&key);
    let out = run(push.arg(&features).arg(&top));
    assert!(out.status.success());

    // NARs rendered through Stat and Read, trusted by the signing key.
    for p in &paths {
        let out = server
            .client("nar")
            .args(["--trusted-public-keys", &pk, p])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == nix_dump(p), "{p}: NAR differs");
    }

    // A trusted mount reads every path byte-exact; programs run from it.
    let mut mount = Mount::new(&server, &["--trusted-public-keys", &pk]);
    for p in &paths {
        let want = sri_to_b32(nix_path_info(p)["narHash"].as_str().unwrap());
        let got = run(nix_cmd("nix-store")
            .args(["--dump"])
            .arg(mount.path(base(p))))
        .stdout;
        assert_eq!(nar_hash(&got), want, "{p}");
    }
    let tool = nix_closure(&top)
        .into_iter()
        .find(|p| p.ends_with("-tool"))
        .unwrap();
    let out = run(&mut std::process::Command::new(
        mount.path(&format!("{}/bin/tool", base(&tool))),
    ));
    assert_eq!(stdout(&out), "snix-fallback");
    assert!(n(&mount.stats(), "fetched_bytes") > 3_000_000);

    // Unmounted from outside: the mount notices and exits 0.
    let unmount = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mount.dir.path())
        .status()
        .unwrap();
    assert!(unmount.success());
    let (status, printed) = mount
        .wait_exit(Duration::from_secs(10))
        .expect("lazix mount still running 10 s after an external unmount");
    assert!(status.success(), "{status}: {printed}");
    assert!(printed.contains("lazix mount: fetched"), "{printed}");
    server.stop();
}
