//! Garbage collection against a real server process, on both backends
//! (the embedded folder and a bucket on a real SeaweedFS): it frees exactly
//! what no path reaches, and a push running while it runs loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::weed::Weed;
use common::*;
use lazix_castore::testutil::pseudo_random;

/// A server and the store it serves: its data folder, or a bucket.
struct Store {
    server: Server,
    bucket: Option<Weed>,
}

impl Store {
    fn folder() -> Self {
        Self::folder_with(&[])
    }

    fn bucket() -> Self {
        Self::bucket_with(&[])
    }

    /// A server on a data folder, with extra `serve` arguments.
    fn folder_with(extra: &[&str]) -> Self {
        let mut args = vec!["--compact-after", "0"];
        args.extend_from_slice(extra);
        Store {
            server: Server::start_with(&args),
            bucket: None,
        }
    }

    /// A server on a bucket of a fresh SeaweedFS, with extra arguments.
    fn bucket_with(extra: &[&str]) -> Self {
        let weed = Weed::start();
        let mut args = vec!["--compact-after", "0"];
        args.extend_from_slice(extra);
        Store {
            server: weed.server(&args),
            bucket: Some(weed),
        }
    }

    /// `lazix stats --json --count`, which must agree with `lazix stats --scan`
    /// (every PathInfo read instead of the catalog of store paths). A
    /// server collecting garbage meanwhile may change the store between
    /// the two: they are taken again (a few times) until one pair was
    /// taken with nothing changing in between.
    fn stats(&self) -> serde_json::Value {
        const KEYS: [&str; 6] = [
            "paths",
            "logical_bytes",
            "chunks",
            "chunk_bytes",
            "pack_objects",
            "pack_bytes",
        ];
        let take = |args: &[&str]| -> serde_json::Value {
            serde_json::from_slice(&run(self.cmd("stats").args(args)).stdout).unwrap()
        };
        // Counted now (`--count`): a stored count is the server's.
        let count = || take(&["--json", "--count"]);
        let same = |a: &serde_json::Value, b: &serde_json::Value| KEYS.iter().all(|k| a[k] == b[k]);
        let (mut counted, mut scanned) = (count(), take(&["--json", "--scan"]));
        for _ in 0..5 {
            let again = count();
            if same(&again, &counted) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            (counted, scanned) = (count(), take(&["--json", "--scan"]));
        }
        for key in KEYS {
            assert_eq!(
                counted[key], scanned[key],
                "{key}: {counted} against {scanned}"
            );
        }
        // Only the scan lists every object, packs among them.
        assert!(counted["stored_bytes"].is_null(), "{counted}");
        assert!(n(&scanned, "stored_bytes") >= n(&counted, "pack_bytes"));
        assert!(n(&scanned, "objects") >= n(&counted, "pack_objects"));
        counted
    }

    /// A `lazix` subcommand that opens the same store directly.
    fn cmd(&self, subcommand: &str) -> std::process::Command {
        match &self.bucket {
            Some(weed) => weed.lazix(subcommand),
            None => {
                let mut c = lazix();
                c.args([subcommand, "--data"]).arg(self.server.data.path());
                c
            }
        }
    }

    /// Runs `lazix gc`; returns its summary line.
    fn gc(&self, grace: u64) -> String {
        stdout(&run(self.cmd("gc").args(["--grace", &grace.to_string()])))
    }
}

/// A number printed just before `what` in a gc summary.
fn count(summary: &str, what: &str) -> u64 {
    let at = summary
        .find(what)
        .unwrap_or_else(|| panic!("{what} in {summary}"));
    summary[..at]
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

fn tree(dir: &std::path::Path, name: &str, files: &[(&str, Vec<u8>)]) -> String {
    let t = dir.join(name);
    std::fs::create_dir_all(&t).unwrap();
    for (f, data) in files {
        std::fs::write(t.join(f), data).unwrap();
    }
    add_path(&t)
}

/// Two store paths named `names` with one file in common (`shared` bytes)
/// and one of their own each (`own` bytes), all pseudo-random from `seed`.
fn two_paths_sharing_a_file(
    dir: &std::path::Path,
    names: [&str; 2],
    shared: usize,
    own: [usize; 2],
    seed: u64,
) -> [String; 2] {
    let shared = pseudo_random(shared, seed);
    [0, 1].map(|i| {
        let own = pseudo_random(own[i], seed + 1 + i as u64);
        tree(dir, names[i], &[("shared", shared.clone()), ("own", own)])
    })
}

#[test]
fn gc_frees_exactly_the_unshared_chunks_in_a_folder() {
    gc_frees_exactly_the_unshared_chunks(Store::folder());
}

#[test]
fn gc_frees_exactly_the_unshared_chunks_in_a_bucket() {
    gc_frees_exactly_the_unshared_chunks(Store::bucket());
}

fn gc_frees_exactly_the_unshared_chunks(store: Store) {
    let server = &store.server;
    let dir = tempfile::tempdir().unwrap();
    let [b, a] = two_paths_sharing_a_file(
        dir.path(),
        ["gc-keep", "gc-drop"],
        2_000_000,
        [1_500_000, 1_700_000],
        501,
    );
    lazix_push(server, &[&b]);
    let sent_a = lazix_push(server, &[&a]);
    let a_unique_chunks = sent_a["chunks_sent"].as_u64().unwrap();
    assert!(a_unique_chunks > 5);

    // Nothing is garbage yet.
    let first = store.gc(0);
    assert_eq!(count(&first, "chunks,"), 0, "{first}");

    run(store.cmd("delete").arg(&a));
    let summary = store.gc(0);
    assert_eq!(count(&summary, "paths live"), 1, "{summary}");
    assert_eq!(count(&summary, "chunks,"), a_unique_chunks, "{summary}");
    assert_eq!(count(&summary, "chunk lists"), 1, "{summary}");
    assert!(count(&summary, "directories") >= 1, "{summary}");
    assert!(count(&summary, "packs deleted") >= 1, "{summary}");

    // The other path is whole and byte-identical, through the running
    // server; the deleted one is gone.
    assert!(lazix_nar(server, &b) == nix_dump(&b));
    let gone = server.client("path-info").args([&a]).output().unwrap();
    assert!(!gone.status.success());
    // A second collection finds nothing more.
    assert_eq!(count(&store.gc(0), "chunks,"), 0);
    // Pushing the deleted path again works.
    lazix_push(server, &[&a]);
    assert!(lazix_nar(server, &a) == nix_dump(&a));
}

#[test]
fn packs_mostly_dead_are_rewritten_with_their_live_chunks_in_a_folder() {
    packs_mostly_dead_are_rewritten_with_their_live_chunks(Store::folder());
}

#[test]
fn packs_mostly_dead_are_rewritten_with_their_live_chunks_in_a_bucket() {
    packs_mostly_dead_are_rewritten_with_their_live_chunks(Store::bucket());
}

/// A pack whose live fraction falls under `--repack-below` is rewritten
/// with only its live chunks: they read back byte-identical, through the
/// running server (which located them in the old pack) and a restarted one.
fn packs_mostly_dead_are_rewritten_with_their_live_chunks(mut store: Store) {
    let dir = tempfile::tempdir().unwrap();
    // The first push writes the shared file into the dropped path's pack,
    // beside 2 MB only that path has; the kept path reuses the shared one.
    let [dropped, kept] = two_paths_sharing_a_file(
        dir.path(),
        ["repack-drop", "repack-keep"],
        300_000,
        [2_000_000, 200_000],
        801,
    );
    let sent_dropped = lazix_push(&store.server, &[&dropped]);
    lazix_push(&store.server, &[&kept]);
    assert!(lazix_nar(&store.server, &kept) == nix_dump(&kept));

    run(store.cmd("delete").arg(&dropped));
    let before = store.stats();
    let summary = store.gc(0);
    assert_eq!(count(&summary, "packs deleted"), 0, "{summary}");
    assert_eq!(count(&summary, "rewritten"), 1, "{summary}");
    let shared_chunks = n(&sent_dropped, "chunks_sent") - count(&summary, "chunks,");
    assert!(shared_chunks >= 2, "the shared file stayed: {summary}");
    let after = store.stats();
    assert!(
        n(&after, "pack_bytes") + 1_500_000 < n(&before, "pack_bytes"),
        "the dead 2 MB left the store: {before} -> {after}"
    );

    assert!(lazix_nar(&store.server, &kept) == nix_dump(&kept));
    store.server.restart();
    assert!(lazix_nar(&store.server, &kept) == nix_dump(&kept));
    // Nothing else is garbage.
    let again = store.gc(0);
    assert_eq!(count(&again, "chunks,"), 0, "{again}");
    assert_eq!(count(&again, "rewritten"), 0, "{again}");
}

#[test]
fn a_push_running_while_gc_runs_loses_nothing_in_a_folder() {
    a_push_running_while_gc_runs_loses_nothing(Store::folder());
}

#[test]
fn a_push_running_while_gc_runs_loses_nothing_in_a_bucket() {
    a_push_running_while_gc_runs_loses_nothing(Store::bucket());
}

fn a_push_running_while_gc_runs_loses_nothing(store: Store) {
    let server = &store.server;
    let dir = tempfile::tempdir().unwrap();
    let shared = pseudo_random(3_000_000, 601);
    // Old garbage: a deleted path, whose shared file the new push reuses.
    let old = tree(
        dir.path(),
        "gc-old",
        &[
            ("shared", shared.clone()),
            ("only-old", pseudo_random(2_000_000, 602)),
        ],
    );
    lazix_push(server, &[&old]);
    run(store.cmd("delete").arg(&old));
    let new = tree(
        dir.path(),
        "gc-new",
        &[("shared", shared), ("big", pseudo_random(60_000_000, 603))],
    );
    std::thread::sleep(Duration::from_secs(6));

    // Collect with a grace of 5 s over and over while the push runs: the
    // old path's data (6 s old) goes, the push's own data (younger) and the
    // old chunks it relies on stay.
    let mut push = server
        .client("push")
        .args([&new])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut runs = 0;
    let mut freed = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while push.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "push hangs");
        let s = store.gc(5);
        freed += count(&s, "chunks,");
        runs += 1;
    }
    assert!(push.wait().unwrap().success());
    assert!(runs >= 1);
    let s = store.gc(5);
    freed += count(&s, "chunks,");
    assert!(freed > 0, "the old path's own chunks were collected");
    assert!(lazix_nar(server, &new) == nix_dump(&new));
}

#[test]
fn paths_not_accessed_lately_expire_in_a_folder() {
    paths_not_accessed_lately_expire(Store::folder());
}

#[test]
fn paths_not_accessed_lately_expire_in_a_bucket() {
    paths_not_accessed_lately_expire(Store::bucket());
}

/// `--not-accessed-days`: a path nobody asked for since it was pushed goes,
/// one asked for (here its narinfo) stays.
fn paths_not_accessed_lately_expire(store: Store) {
    let server = &store.server;
    let dir = tempfile::tempdir().unwrap();
    let idle = tree(dir.path(), "idle", &[("f", pseudo_random(400_000, 701))]);
    let used = tree(dir.path(), "used", &[("f", pseudo_random(400_000, 702))]);
    lazix_push(server, &[&idle, &used]);
    std::thread::sleep(Duration::from_secs(6));
    let hash = used.rsplit('/').next().unwrap().split('-').next().unwrap();
    let narinfo = run(std::process::Command::new("curl")
        .args(["-sf", &format!("{}/{hash}.narinfo", server.http)]))
    .stdout;
    assert!(String::from_utf8_lossy(&narinfo).contains("NarHash"));
    // The access mark is written in the background.
    std::thread::sleep(Duration::from_millis(1500));
    // 4 s: the idle path is 7.5 s old, the used one was asked for 1.5 s
    // ago (S3 keeps whole seconds: up to 2.5 s).
    let days = format!("{}", 4.0 / 86_400.0);
    let summary = stdout(&run(store.cmd("gc").args([
        "--grace",
        "0",
        "--not-accessed-days",
        &days,
    ])));
    assert_eq!(count(&summary, "paths expired"), 1, "{summary}");
    assert_eq!(count(&summary, "paths live"), 1, "{summary}");
    assert!(count(&summary, "chunks,") > 0, "{summary}");
    assert!(lazix_nar(server, &used) == nix_dump(&used));
    let gone = server.client("path-info").args([&idle]).output().unwrap();
    assert!(!gone.status.success());
}

/// `lazix stats` answers from the newest count stored in the store while
/// it is recent enough (it is not counted again: a path pushed since is
/// not in it), `--count` counts now and stores that count, a count older
/// than `--max-age` is not answered from, and `lazix gc` stores a new one.
#[test]
fn stats_answers_from_the_newest_stored_count() {
    // No count of the server's own in between.
    let store = Store::folder_with(&["--stats-every", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let a = tree(dir.path(), "counted-a", &[("f", b"a\n".to_vec())]);
    let b = tree(dir.path(), "counted-b", &[("f", b"b\n".to_vec())]);
    let stats = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&run(store.cmd("stats").arg("--json").args(args)).stdout).unwrap()
    };
    lazix_push(&store.server, &[&a]);
    let counted = stats(&["--count"]);
    assert_eq!(counted["paths"], 1, "{counted}");
    lazix_push(&store.server, &[&b]);
    let answered = stats(&[]);
    assert_eq!(answered, counted, "answered from the stored count");
    let text = stdout(&run(&mut store.cmd("stats")));
    assert!(
        text.contains("counted:") && text.contains("s ago"),
        "{text}"
    );
    assert!(text.contains("paths:         1"), "{text}");
    assert_eq!(stats(&["--max-age", "0"])["paths"], 2);
    // That count was stored: answered from now on.
    std::thread::sleep(Duration::from_millis(10));
    let recounted = stats(&[]);
    assert_eq!(recounted["paths"], 2, "{recounted}");
    assert!(n(&recounted, "counted_at_ms") > n(&counted, "counted_at_ms"));
    assert_eq!(stats(&["--count"])["paths"], 2);
    // `lazix gc` stores a count after collecting: the ones before it no
    // longer hold.
    run(store.cmd("delete").arg(&b));
    store.gc(0);
    let collected = stats(&[]);
    assert_eq!(collected["paths"], 1, "{collected}");
    assert!(n(&collected, "counted_at_ms") > n(&recounted, "counted_at_ms"));
}

/// `serve --gc-every`: a deleted path's data goes without anyone running
/// `lazix gc`, as `lazix stats` shows.
#[test]
fn serve_collects_garbage_periodically() {
    // A grace of a few seconds, as in use: with none, a collection between
    // the push's pack and its PathInfo would rightly delete the pack.
    let store = Store::folder_with(&["--gc-every", "1", "--grace", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(1_000_000, 801);
    let a = tree(dir.path(), "periodic-a", &[("f", data.clone())]);
    let b = tree(
        dir.path(),
        "periodic-b",
        &[("f", data), ("g", b"g\n".to_vec())],
    );
    lazix_push(&store.server, &[&a, &b]);
    let before = store.stats();
    assert_eq!(before["paths"], 2, "{before}");
    let nar_sizes: u64 = [&a, &b]
        .iter()
        .map(|p| nix_path_info(p)["narSize"].as_u64().unwrap())
        .sum();
    assert_eq!(before["logical_bytes"].as_u64().unwrap(), nar_sizes);
    // The two paths share their big file: stored once.
    let chunk_bytes = before["chunk_bytes"].as_u64().unwrap();
    assert!((1_000_000..1_100_000).contains(&chunk_bytes), "{before}");
    assert!(before["dedup_ratio"].as_f64().unwrap() > 1.5, "{before}");

    run(store.cmd("delete").arg(&a).arg(&b));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = store.stats();
        if now["chunks"] == 0 {
            assert_eq!(now["paths"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "not collected: {now}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
