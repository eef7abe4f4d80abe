//! `lazix mount` against a real FUSE mount and a real server: byte-exact
//! NARs of real Nix paths, listing, lookups, laziness measured by the
//! mount's own counters, cache reuse across remounts, and faults (a frozen
//! or stopped server, a corrupt chunk) that end in EIO, never a hang or
//! wrong bytes.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn basename(p: &str) -> &str {
    p.trim_start_matches("/nix/store/")
}

/// `nix-store --dump` of a path inside the mount, hashed like NarHash.
fn dump_hash(path: &Path) -> String {
    nar_hash(&run(nix_cmd("nix-store").arg("--dump").arg(path)).stdout)
}

#[test]
fn mounted_paths_are_byte_exact_and_usable() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    // Every NAR feature, an executable, a large file.
    let tree = dir.path().join("mount-features");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("empty-dir")).unwrap();
    std::fs::create_dir_all(tree.join("deep/a/b")).unwrap();
    std::fs::copy("/bin/echo", tree.join("bin/echo")).unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::fs::write(tree.join("deep/a/b/f.txt"), b"deep\n").unwrap();
    std::fs::write(tree.join("name with spaces ✓"), b"unicode\n").unwrap();
    let big = pseudo_random(6_000_000, 31);
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("bin/echo", tree.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", tree.join("dangling")).unwrap();
    std::os::unix::fs::symlink("deep", tree.join("dir-link")).unwrap();
    for i in 0..500 {
        std::fs::write(tree.join(format!("deep/a/s{i:03}")), format!("{i}\n")).unwrap();
    }
    // Identical directories in several places (common in real trees).
    for twin in ["twin-a", "twin-b", "deep/twin-c"] {
        std::fs::create_dir_all(tree.join(twin).join("x/y")).unwrap();
        std::fs::write(tree.join(twin).join("x/y/same"), b"same\n").unwrap();
    }
    let features = add_path(&tree);
    let top = build_closure("mount");
    lazix_push(&server, &[&features, &top]);
    let closure = nix_closure(&top);

    let mount = Mount::new(&server, &["--timeout", "5"]);
    for p in closure.iter().chain([&features]) {
        let want = sri_to_b32(nix_path_info(p)["narHash"].as_str().unwrap());
        assert_eq!(dump_hash(&mount.path(basename(p))), want, "{p}");
    }
    // A walk sees every entry exactly once, as in the original.
    let walk = |root: &Path| {
        let out = run(std::process::Command::new("find")
            .arg(".")
            .current_dir(root));
        let mut v: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        walk(&mount.path(basename(&features))),
        walk(Path::new(&features))
    );
    // The root lists every path; unknown names are ENOENT.
    let listed: Vec<String> = std::fs::read_dir(mount.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for p in closure.iter().chain([&features]) {
        assert!(listed.iter().any(|l| l == basename(p)), "{p} not listed");
    }
    let unknown = mount.path(&format!("{}-nothing", "0".repeat(32)));
    assert_eq!(
        std::fs::metadata(&unknown).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // The hash part alone is not enough: the full name must match.
    let wrong_name = format!("{}-other-name", &basename(&features)[..32]);
    assert!(std::fs::metadata(mount.path(&wrong_name)).is_err());
    // Attributes as Nix makes them.
    let exe = mount.path(&format!("{}/bin/echo", basename(&features)));
    let meta = std::fs::metadata(&exe).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o555);
    let f = std::fs::metadata(mount.path(&format!("{}/empty", basename(&features)))).unwrap();
    assert_eq!(f.permissions().mode() & 0o777, 0o444);
    let b = std::fs::metadata(mount.path(&format!("{}/big.bin", basename(&features)))).unwrap();
    assert_eq!(b.len(), big.len() as u64);
    assert!(std::os::unix::fs::MetadataExt::blocks(&b) * 512 >= big.len() as u64);
    // An executable runs from the mount.
    let out = run(std::process::Command::new(&exe).arg("hello from the mount"));
    assert_eq!(stdout(&out), "hello from the mount");

    // 16 parallel readers of one large file all read correct bytes.
    let big_path = mount.path(&format!("{}/big.bin", basename(&features)));
    std::thread::scope(|s| {
        for i in 0..16 {
            let (p, big) = (&big_path, &big);
            s.spawn(move || {
                let mut f = std::fs::File::open(p).unwrap();
                let mut buf = Vec::new();
                if i % 2 == 1 {
                    // Odd readers start in the middle, then wrap around.
                    use std::io::Seek;
                    f.seek(std::io::SeekFrom::Start(big.len() as u64 / 2))
                        .unwrap();
                    f.read_to_end(&mut buf).unwrap();
                    assert!(buf == big[big.len() / 2..], "reader {i}");
                } else {
                    f.read_to_end(&mut buf).unwrap();
                    assert!(buf == *big, "reader {i}");
                }
            });
        }
    });

    // A path pushed after mounting appears.
    let later_tree = dir.path().join("mount-later");
    std::fs::create_dir_all(&later_tree).unwrap();
    std::fs::write(later_tree.join("f"), b"pushed later\n").unwrap();
    let later = add_path(&later_tree);
    assert!(std::fs::metadata(mount.path(basename(&later))).is_err());
    lazix_push(&server, &[&later]);
    assert_eq!(
        std::fs::read(mount.path(&format!("{}/f", basename(&later)))).unwrap(),
        b"pushed later\n"
    );
    // And the root's listing shows it soon (the kernel keeps it ≤ 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_dir(mount.dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy() == basename(&later))
    {
        assert!(Instant::now() < deadline, "not listed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let printed = mount.stop();
    assert!(printed.contains("lazix mount: fetched"), "{printed}");
    server.stop();
}

#[test]
fn reads_are_lazy_and_caches_survive_a_remount() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("mount-lazy");
    std::fs::create_dir_all(tree.join("lib")).unwrap();
    for i in 0..4 {
        std::fs::write(
            tree.join(format!("lib/big{i}.so")),
            pseudo_random(8_000_000, 100 + i),
        )
        .unwrap();
    }
    std::fs::write(tree.join("small.conf"), b"key = value\n").unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let path_bytes = n(&nix_path_info(&path), "narSize");
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();

    let small = format!("{}/small.conf", basename(&path));
    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert_eq!(std::fs::read(mount.path(&small)).unwrap(), b"key = value\n");
    let first = mount.stats();
    let fetched = n(&first, "fetched_bytes");
    assert!(fetched > 0);
    assert!(
        fetched * 1000 < path_bytes,
        "fetched {fetched} of {path_bytes}"
    );
    // Reading a slice in the middle of a big file fetches about that slice.
    let mut f =
        std::fs::File::open(mount.path(&format!("{}/lib/big2.so", basename(&path)))).unwrap();
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(4_000_000)).unwrap();
    let mut buf = vec![0u8; 10_000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, pseudo_random(8_000_000, 102)[4_000_000..4_010_000]);
    let after_slice = n(&mount.stats(), "fetched_bytes");
    assert!(
        after_slice - fetched < 4 * 1024 * 1024,
        "a 10 kB read fetched {}",
        after_slice - fetched
    );
    // Reading the small file again fetches nothing.
    assert_eq!(std::fs::read(mount.path(&small)).unwrap(), b"key = value\n");
    assert_eq!(n(&mount.stats(), "fetched_bytes"), after_slice);
    drop(f);
    mount.stop();

    // After a remount with the same cache folder: nothing is fetched again.
    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert_eq!(std::fs::read(mount.path(&small)).unwrap(), b"key = value\n");
    let mut f =
        std::fs::File::open(mount.path(&format!("{}/lib/big2.so", basename(&path)))).unwrap();
    f.seek(std::io::SeekFrom::Start(4_000_000)).unwrap();
    f.read_exact(&mut buf).unwrap();
    let s = mount.stats();
    assert_eq!(n(&s, "fetched_bytes"), 0, "{s}");
    assert!(n(&s, "disk_hits") > 0, "{s}");
    drop(f);
    mount.stop();

    // Corrupt and truncated cache entries are detected and fetched again.
    let mut damaged = 0;
    for (i, entry) in walk_files(&cache.join("frames")).into_iter().enumerate() {
        let mut data = std::fs::read(&entry).unwrap();
        if i % 2 == 0 {
            let last = data.len() - 1;
            data[last] ^= 0x33;
        } else {
            data.truncate(data.len() / 2);
        }
        std::fs::write(&entry, data).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert_eq!(std::fs::read(mount.path(&small)).unwrap(), b"key = value\n");
    let mut f =
        std::fs::File::open(mount.path(&format!("{}/lib/big2.so", basename(&path)))).unwrap();
    f.seek(std::io::SeekFrom::Start(4_000_000)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, pseudo_random(8_000_000, 102)[4_000_000..4_010_000]);
    let s = mount.stats();
    assert!(n(&s, "corrupt_chunks") > 0, "{s}");
    assert!(n(&s, "fetched_bytes") > 0, "{s}");
}

#[test]
fn faults_end_in_eio_not_hangs_or_wrong_bytes() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("mount-faults");
    std::fs::create_dir_all(&tree).unwrap();
    let a = pseudo_random(3_000_000, 7);
    let b = pseudo_random(3_000_000, 8);
    std::fs::write(tree.join("a"), &a).unwrap();
    std::fs::write(tree.join("b"), &b).unwrap();
    std::fs::write(tree.join("c"), pseudo_random(100_000, 9)).unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let mount = Mount::new(&server, &["--timeout", "3"]);
    let file = |name: &str| mount.path(&format!("{}/{name}", basename(&path)));
    // Warm the metadata: the directory and attributes are known.
    assert_eq!(std::fs::metadata(file("a")).unwrap().len(), a.len() as u64);
    assert_eq!(std::fs::metadata(file("b")).unwrap().len(), b.len() as u64);

    // A frozen server: the read fails with EIO within the timeout.
    server.freeze();
    let t0 = Instant::now();
    let err = std::fs::read(file("a")).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Restarted: reads work again without remounting.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match std::fs::read(file("a")) {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "reads did not recover: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(got == a);

    // A chunk corrupted on the server: EIO, never wrong bytes.
    let damaged = server.corrupt_frames(|raw| raw.windows(64).any(|w| w == &b[..64]));
    assert!(damaged > 0);
    server.restart(); // drop the server's memory cache
    let err = std::fs::read(file("b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    assert!(n(&mount.stats(), "corrupt_chunks") > 0);
    // Untouched files still read fine.
    assert_eq!(std::fs::read(file("c")).unwrap(), pseudo_random(100_000, 9));
}

fn libc_eio() -> i32 {
    5
}

/// A file read whole through the mount is kept as a plain file in the cache
/// folder, and later opens (also after a remount) hand it to the kernel to
/// read itself (FUSE passthrough): no read reaches the mount. A damaged
/// copy is dropped and the file read through the mount again.
#[test]
fn files_read_whole_are_then_read_by_the_kernel_directly() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("mount-whole");
    std::fs::create_dir_all(&tree).unwrap();
    let data = pseudo_random(6_000_000, 300);
    std::fs::write(tree.join("big.bin"), &data).unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let file = format!("{}/big.bin", basename(&path));

    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert!(std::fs::read(mount.path(&file)).unwrap() == data);
    let first = mount.stats();
    assert_eq!(n(&first, "whole_files_kept"), 1, "{first}");
    // The first reader's handle is released asynchronously: until then a
    // new open reads through the mount like it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::fs::read(mount.path(&file)).unwrap() == data);
        if n(&mount.stats(), "passthrough_opens") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never read directly");
        std::thread::sleep(Duration::from_millis(100));
    }
    mount.stop();

    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert!(std::fs::read(mount.path(&file)).unwrap() == data);
    let s = mount.stats();
    assert_eq!(n(&s, "passthrough_opens"), 1, "{s}");
    assert_eq!(n(&s, "reads"), 0, "{s}");
    assert_eq!(n(&s, "fetched_bytes"), 0, "{s}");
    mount.stop();

    let copies = walk_files(&cache.join("files"));
    assert_eq!(copies.len(), 1);
    let mut bytes = std::fs::read(&copies[0]).unwrap();
    bytes[3_000_000] ^= 0x40;
    std::fs::write(&copies[0], bytes).unwrap();
    let mount = Mount::new(&server, &["--cache-dir", &cache_arg]);
    assert!(std::fs::read(mount.path(&file)).unwrap() == data);
    let s = mount.stats();
    assert_eq!(n(&s, "passthrough_opens"), 0, "{s}");
    assert!(n(&s, "reads") > 0, "{s}");
    mount.stop();
}
