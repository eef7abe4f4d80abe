//! Access profiles with a real server and real FUSE mounts: a run recorded
//! on one mount (`--record-profile`) lets a second, cold mount prefetch
//! what the run reads (`--prefetch`), so the same run starts no fetch of
//! its own; `lazix prefetch` fills a disk cache the same way; a profile
//! that no longer matches its store path is ignored.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A path with a program, large files read in part and small files.
fn tree(dir: &Path) -> String {
    let t = dir.join("profile-tree");
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::create_dir_all(t.join("data")).unwrap();
    std::fs::copy("/bin/ls", t.join("bin/ls")).unwrap();
    std::fs::write(t.join("data/big1"), pseudo_random(3_000_000, 1)).unwrap();
    std::fs::write(t.join("data/big2"), pseudo_random(4_000_000, 2)).unwrap();
    std::fs::write(t.join("data/unread"), pseudo_random(2_000_000, 3)).unwrap();
    for i in 0..20 {
        std::fs::write(
            t.join(format!("data/small-{i}")),
            pseudo_random(3_000, 10 + i),
        )
        .unwrap();
    }
    add_path(&t)
}

/// The program's start-up: runs a program, reads the head of one large
/// file, a stretch in the middle of another, and the small files.
fn workload(mount: &Mount, path: &str) {
    let root = mount.path(path.trim_start_matches("/nix/store/"));
    let out = run(std::process::Command::new(root.join("bin/ls")).arg("--version"));
    assert!(stdout(&out).contains("ls"));
    let big1 = std::fs::read(root.join("data/big1")).unwrap();
    assert_eq!(big1[..100], pseudo_random(3_000_000, 1)[..100]);
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(root.join("data/big2")).unwrap();
    f.seek(std::io::SeekFrom::Start(2_000_000)).unwrap();
    let mut buf = vec![0u8; 300_000];
    f.read_exact(&mut buf).unwrap();
    assert!(buf[..] == pseudo_random(4_000_000, 2)[2_000_000..2_300_000]);
    for i in 0..20 {
        std::fs::read(root.join(format!("data/small-{i}"))).unwrap();
    }
}

fn wait_prefetched(mount: &Mount) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = mount.stats();
        if n(&s, "profiles_done") >= 1 {
            return s;
        }
        assert!(Instant::now() < deadline, "prefetch never finished: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_recorded_profile_leaves_a_cold_mount_nothing_to_fetch_on_the_read_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&["--compact-after", "0"]);
    let path = tree(dir.path());
    lazix_push(&server, &[&path]);
    let profile = dir.path().join("start.profile");
    let profile_arg = profile.to_str().unwrap();

    // Record.
    let rec = Mount::new(&server, &["--record-profile", profile_arg]);
    workload(&rec, &path);
    let printed = rec.stop();
    assert!(printed.contains("recorded"), "{printed}");
    let text = std::fs::read_to_string(&profile).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("{\"lazix_profile\":1}"));
    let entries: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let files: Vec<&str> = entries
        .iter()
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    assert_eq!(files[0], "bin/ls", "first use first: {files:?}");
    assert!(files.contains(&"data/big1") && files.contains(&"data/big2"));
    assert!(!files.contains(&"data/unread"), "{files:?}");
    let big2 = entries.iter().find(|e| e["file"] == "data/big2").unwrap();
    let start = big2["ranges"][0][0].as_u64().unwrap();
    assert!(
        (1_900_000..=2_000_000).contains(&start),
        "the range read, not the file: {big2}"
    );
    for e in &entries {
        assert_eq!(e["path"], path.trim_start_matches("/nix/store/"));
        // The store path's root directory, the same for every file.
        assert_eq!(e["root"], entries[0]["root"], "{e}");
    }
    assert_eq!(
        entries[0]["root"].as_str().map(str::len),
        Some(64),
        "{text}"
    );

    // Without a profile, a cold run fetches on its read path (what the
    // counter measures).
    let plain = Mount::new(&server, &[]);
    workload(&plain, &path);
    assert!(n(&plain.stats(), "read_fetches") > 0);
    plain.stop();

    // A cold mount prefetching the profile: once the prefetch is done,
    // the same run finds every read cached or on its way.
    let directory_calls_before = grpc_calls(&server, "/snix.castore.v1.DirectoryService/Get");
    let cold = Mount::new(&server, &["--prefetch", profile_arg]);
    let before = wait_prefetched(&cold);
    assert!(n(&before, "profile_chunks") > 0);
    let prefetched_bytes = n(&before, "fetched_bytes");
    assert!(prefetched_bytes > 0);
    workload(&cold, &path);
    let after = cold.stats();
    assert_eq!(n(&after, "read_fetches"), 0, "{after}");
    // The directories the prefetch fetched to check the path (asked with
    // its PathInfo, by the recorded root) are the ones the run's lookups
    // used: the tree was asked for once.
    assert_eq!(
        grpc_calls(&server, "/snix.castore.v1.DirectoryService/Get") - directory_calls_before,
        1
    );
    // Only what the run reads: not the unread 2 MB file, not all of big2.
    assert!(
        prefetched_bytes < 3_000_000 + 1_500_000 + 2_000_000,
        "{before}"
    );
    cold.stop();

    // `lazix prefetch` fills a disk cache; a mount on it then runs the
    // same start-up without starting a fetch.
    let cache = dir.path().join("warm-cache");
    let out = run(server
        .client("prefetch")
        .arg("--cache-dir")
        .arg(&cache)
        .arg(&profile));
    assert!(
        stdout(&out).starts_with("lazix prefetch:"),
        "{}",
        stdout(&out)
    );
    let warm = Mount::new(&server, &["--cache-dir", cache.to_str().unwrap()]);
    workload(&warm, &path);
    let s = warm.stats();
    assert_eq!(n(&s, "read_fetches"), 0, "{s}");
    assert!(n(&s, "disk_hits") > 0, "{s}");
    warm.stop();

    // A profile that no longer matches its store path (a file's recorded
    // digest differs) is ignored, with a log line, and fetches nothing.
    let stale = dir.path().join("stale.profile");
    let wrong = lazix_castore::B3Digest::of(b"other contents").to_hex();
    let big1 = entries.iter().find(|e| e["file"] == "data/big1").unwrap();
    std::fs::write(
        &stale,
        text.replace(big1["digest"].as_str().unwrap(), &wrong),
    )
    .unwrap();
    let ignored = Mount::new(&server, &["--prefetch", stale.to_str().unwrap()]);
    let s = wait_prefetched(&ignored);
    assert_eq!(n(&s, "fetched_bytes"), 0, "{s}");
    let printed = ignored.stop();
    assert!(printed.contains("access profile ignored"), "{printed}");
    server.stop();
}

/// Reads every file below `dir` in a mount.
fn read_all(dir: &Path) -> u64 {
    walk_files(dir)
        .iter()
        .map(|f| std::fs::read(f).unwrap().len() as u64)
        .sum()
}

#[test]
fn pinned_paths_survive_eviction_under_a_small_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&["--compact-after", "0"]);
    let pinned = tree(dir.path());
    let other_tree = dir.path().join("other");
    std::fs::create_dir_all(&other_tree).unwrap();
    for i in 0..4 {
        std::fs::write(
            other_tree.join(format!("f{i}")),
            pseudo_random(3_000_000, 90 + i),
        )
        .unwrap();
    }
    let other = add_path(&other_tree);
    lazix_push(&server, &[&pinned, &other]);
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().unwrap();

    let out = run(server
        .client("pin")
        .args(["--cache-dir", cache_arg])
        .arg(&pinned));
    assert!(
        stdout(&out).contains("1 store paths pinned"),
        "{}",
        stdout(&out)
    );
    let base = pinned.trim_start_matches("/nix/store/");
    let listed = run(server.client("pin").args(["--cache-dir", cache_arg]));
    assert_eq!(stdout(&listed), base);

    // A 2 MB quota, 12 MB of another path read through it: whatever the
    // LRU held is gone, the pinned path is read without a fetch.
    let mount = Mount::new(
        &server,
        &[
            "--cache-dir",
            cache_arg,
            "--cache-size",
            "2M",
            "--memory-cache-size",
            "1M",
        ],
    );
    assert_eq!(
        read_all(&mount.path(other.trim_start_matches("/nix/store/"))),
        12_000_000
    );
    let before = mount.stats();
    assert!(n(&before, "fetched_bytes") > 10_000_000);
    assert!(read_all(&mount.path(base)) > 9_000_000);
    let after = mount.stats();
    assert_eq!(
        n(&after, "fetched_bytes"),
        n(&before, "fetched_bytes"),
        "the pinned path was fetched again: {after}"
    );
    assert!(n(&after, "disk_hits") > n(&before, "disk_hits"));
    mount.stop();

    // Unpinned: its frames go.
    let out = run(lazix()
        .args(["unpin", "--cache-dir", cache_arg])
        .arg(&pinned));
    assert!(
        stdout(&out).contains("1 store paths unpinned"),
        "{}",
        stdout(&out)
    );
    assert!(walk_files(&cache.join("pinned/frames")).is_empty());
    let listed = run(server.client("pin").args(["--cache-dir", cache_arg]));
    assert_eq!(stdout(&listed), "");
    server.stop();
}

#[test]
fn a_profile_pushed_beside_its_path_is_prefetched_on_first_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(&["--compact-after", "0"]);
    let path = tree(dir.path());
    lazix_push(&server, &[&path]);
    let base = path.trim_start_matches("/nix/store/");
    let profile = dir.path().join("start.profile");
    let rec = Mount::new(&server, &["--record-profile", profile.to_str().unwrap()]);
    workload(&rec, &path);
    rec.stop();

    let push = |profile: &Path| {
        lazix()
            .args(["profile", "push", "--server", &server.addr])
            .arg(profile)
            .output()
            .unwrap()
    };
    let out = push(&profile);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("1 store paths"), "{}", stdout(&out));
    let hash = &base[..32];
    assert!(server.data.path().join("profiles").join(hash).exists());

    // A mount told nothing finds it on the path's first lookup.
    let calls_before = |m: &str| grpc_calls(&server, m);
    let path_infos_before = calls_before("/snix.store.v1.PathInfoService/Get");
    let directory_calls_before = calls_before("/snix.castore.v1.DirectoryService/Get");
    let cold = Mount::new(&server, &[]);
    assert!(cold.path(base).exists());
    let before = wait_prefetched(&cold);
    assert!(n(&before, "profile_chunks") > 0, "{before}");
    workload(&cold, &path);
    let after = cold.stats();
    assert_eq!(n(&after, "read_fetches"), 0, "{after}");
    // The prefetch checked the path with the PathInfo the lookup found,
    // and the directories it fetched for that are the ones the run's
    // lookups used: each asked once.
    assert_eq!(
        grpc_calls(&server, "/snix.store.v1.PathInfoService/Get") - path_infos_before,
        1
    );
    assert_eq!(
        grpc_calls(&server, "/snix.castore.v1.DirectoryService/Get") - directory_calls_before,
        1
    );
    cold.stop();

    // Unless told not to.
    let off = Mount::new(&server, &["--no-stored-profiles"]);
    assert!(off.path(base).exists());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(n(&off.stats(), "profiles_done"), 0);
    off.stop();

    // A profile for a path the server lacks, or naming another path
    // beside it, is refused and stores nothing.
    let other = dir.path().join("other.profile");
    let foreign = "0".repeat(32) + "-nothing";
    std::fs::write(
        &other,
        std::fs::read_to_string(&profile)
            .unwrap()
            .replace(base, &foreign),
    )
    .unwrap();
    let out = server
        .client("profile")
        .arg("push")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!server
        .data
        .path()
        .join("profiles")
        .join("0".repeat(32))
        .exists());

    // Deleting the path deletes its profile.
    run(lazix()
        .args(["delete", "--data"])
        .arg(server.data.path())
        .arg(&path));
    assert!(!server.data.path().join("profiles").join(hash).exists());
    server.stop();
}

/// A prefetch asks the server for exactly the profile's chunks: reading 4
/// of 40 small files packed in shared frames costs a plain cold mount
/// their frames, a profiled one only the 4 files (the server repacks
/// them), and everything still reads right.
#[test]
fn a_profile_prefetch_fetches_its_chunks_without_their_frame_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--compact-after", "0"]);
    let t = dir.path().join("packed");
    std::fs::create_dir_all(&t).unwrap();
    for i in 0..40 {
        std::fs::write(t.join(format!("f{i:02}")), pseudo_random(20_000, 100 + i)).unwrap();
    }
    let path = add_path(&t);
    lazix_push(&server, &[&path]);
    let name = path.trim_start_matches("/nix/store/").to_string();
    let read_some = |mount: &Mount| {
        for i in [3, 17, 25, 38] {
            let got = std::fs::read(mount.path(&name).join(format!("f{i:02}"))).unwrap();
            assert!(got == pseudo_random(20_000, 100 + i), "f{i:02}");
        }
    };
    let profile = dir.path().join("some.profile");
    let rec = Mount::new(&server, &["--record-profile", profile.to_str().unwrap()]);
    read_some(&rec);
    rec.stop();

    let plain = Mount::new(&server, &[]);
    read_some(&plain);
    let plain_bytes = n(&plain.stats(), "fetched_bytes");
    plain.stop();

    let profiled = Mount::new(&server, &["--prefetch", profile.to_str().unwrap()]);
    let s = wait_prefetched(&profiled);
    let exact_bytes = n(&s, "fetched_bytes");
    read_some(&profiled);
    let after = profiled.stats();
    assert_eq!(n(&after, "read_fetches"), 0, "{after}");
    assert!(
        (80_000..=100_000).contains(&exact_bytes),
        "the 4 files' 80,000 bytes (incompressible), no more: {s}"
    );
    assert!(
        plain_bytes >= 3 * exact_bytes,
        "a plain read fetched {plain_bytes} bytes, the prefetch {exact_bytes}"
    );
    // The neighbours left on the server read fine afterwards.
    let other = std::fs::read(profiled.path(&name).join("f10")).unwrap();
    assert!(other == pseudo_random(20_000, 110));
    profiled.stop();
}
