//! Prometheus metrics of `serve` and `mount`, scraped over HTTP after real
//! work (a push, a NAR download, a mount read) and parsed with a real
//! parser: the counters moved by what was done.

mod common;

use common::*;

/// The samples of a scrape of `url`.
fn scrape(url: &str) -> prometheus_parse::Scrape {
    let (status, body, _) = curl(&["-sS", url]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8(body).unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The sum of `name`'s samples whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn counters_move_with_pushes_downloads_and_mount_reads() {
    let mut server = Server::start();
    let http = &server.http;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("metrics-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), pseudo_random(2_000_000, 5)).unwrap();
    let path = add_path(&tree);
    let metrics = format!("{http}/metrics");

    let before = scrape(&metrics);
    lazix_push(&server, &[&path]);
    let base = path.trim_start_matches("/nix/store/");
    let (status, nar, _) = curl(&["-sS", &nar_url(http, &path)]);
    assert_eq!(status, 200);
    assert_eq!(nar, nix_dump(&path));

    let after = scrape(&metrics);
    let puts = ("method", "/lazix.v1.ChunkService/PutChunks");
    assert!(
        value(&after, "lazix_grpc_requests_total", &[puts, ("code", "0")])
            > value(&before, "lazix_grpc_requests_total", &[puts, ("code", "0")])
    );
    for route in ["narinfo", "nar"] {
        assert_eq!(
            value(
                &after,
                "lazix_http_requests_total",
                &[("route", route), ("status", "200")]
            ),
            1.0,
            "{route}"
        );
    }
    assert!(
        value(
            &after,
            "lazix_http_request_duration_seconds_count",
            &[("route", "nar")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &after,
            "lazix_http_response_bytes_total",
            &[("route", "nar")]
        ),
        nar.len() as f64
    );

    // The mount's counters, on a listener of its own.
    let mport = free_port();
    let mount = Mount::new(&server, &["--metrics", &format!("127.0.0.1:{mport}")]);
    let murl = format!("http://127.0.0.1:{mport}/metrics");
    let idle = scrape(&murl);
    assert_eq!(value(&idle, "lazix_mount_fetched_bytes_total", &[]), 0.0);
    let read = std::fs::read(mount.path(&format!("{base}/big"))).unwrap();
    assert_eq!(read.len(), 2_000_000);
    let busy = scrape(&murl);
    assert!(value(&busy, "lazix_mount_fetched_bytes_total", &[]) > 1_000_000.0);
    assert!(value(&busy, "lazix_mount_served_bytes_total", &[]) >= 2_000_000.0);
    // Each batched request's time, as a histogram.
    let fetches = value(&busy, "lazix_mount_fetch_requests_total", &[]);
    let timed = busy
        .samples
        .iter()
        .find(|x| x.metric == "lazix_mount_fetch_duration_seconds")
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            other => panic!("not a histogram: {other:?}"),
        })
        .expect("lazix_mount_fetch_duration_seconds");
    assert!(fetches >= 1.0 && timed == fetches, "{timed} of {fetches}");
    // Every metric the Grafana dashboard graphs is one the scrapes carry.
    let (_, server_text, _) = curl(&["-sS", &metrics]);
    let (_, mount_text, _) = curl(&["-sS", &murl]);
    let scraped = String::from_utf8(server_text).unwrap() + &String::from_utf8(mount_text).unwrap();
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/lazix.json"),
    )
    .unwrap();
    let mut graphed = 0;
    for (i, _) in dashboard.match_indices("lazix_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            scraped.contains(&name),
            "the dashboard graphs {name}, which no scrape has"
        );
        graphed += 1;
    }
    assert!(graphed >= 10, "{graphed}");
    // How full its memory cache is (no disk cache on this mount).
    assert!(value(&busy, "lazix_mount_memory_cache_bytes", &[]) >= 1_000_000.0);
    assert!(value(&busy, "lazix_mount_memory_cache_entries", &[]) >= 1.0);
    assert_eq!(
        value(&busy, "lazix_mount_memory_cache_evictions_total", &[]),
        0.0
    );
    mount.stop();

    // Caches smaller than the file: sizes stay within their quotas and
    // evictions are counted, in memory and on disk.
    let cache = tempfile::tempdir().unwrap();
    let mport = free_port();
    let cache_dir = cache.path().to_str().unwrap();
    let small = Mount::new(
        &server,
        &[
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--memory-cache-size",
            "256K",
            "--cache-dir",
            cache_dir,
            "--cache-size",
            "1M",
        ],
    );
    let murl = format!("http://127.0.0.1:{mport}/metrics");
    let read = std::fs::read(small.path(&format!("{base}/big"))).unwrap();
    assert_eq!(read.len(), 2_000_000);
    let full = scrape(&murl);
    let memory = value(&full, "lazix_mount_memory_cache_bytes", &[]);
    assert!(memory > 0.0 && memory <= 256.0 * 1024.0, "{memory}");
    assert!(value(&full, "lazix_mount_memory_cache_evictions_total", &[]) >= 1.0);
    let disk = value(&full, "lazix_mount_disk_cache_bytes", &[]);
    assert!(disk > 0.0 && disk <= 768.0 * 1024.0, "{disk}");
    assert!(value(&full, "lazix_mount_disk_cache_frames", &[]) >= 1.0);
    assert!(value(&full, "lazix_mount_disk_cache_evictions_total", &[]) >= 1.0);
    // `.lazix-stats` says the same.
    let stats = small.stats();
    assert!(
        stats["caches"]["disk_frames"]["evictions"]
            .as_u64()
            .unwrap()
            >= 1
    );
    small.stop();
    server.stop();
}

#[test]
fn serve_counts_its_decoded_cache_its_maintenance_and_the_store() {
    let mut server = Server::start_with(&["--compact-after", "1", "--stats-every", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("metrics-serve-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), pseudo_random(1_500_000, 11)).unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let metrics = format!("{}/metrics", server.http);
    // Two renders of the NAR: the second from the decoded-chunk cache.
    for _ in 0..2 {
        assert_eq!(lazix_nar_over_http(&server, &path), nix_dump(&path));
    }
    // Compaction (after a second of quiet) and a fresh count of the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let s = loop {
        let s = scrape(&metrics);
        if value(&s, "lazix_compaction_runs_total", &[]) >= 1.0
            && value(&s, "lazix_store_paths", &[]) == 1.0
        {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction or count in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(value(&s, "lazix_decoded_cache_misses_total", &[]) >= 1.0);
    assert!(value(&s, "lazix_decoded_cache_hits_total", &[]) >= 1.0);
    // Nothing here is gzip stored as its contents: none from the disk.
    assert_eq!(value(&s, "lazix_decoded_cache_disk_hits_total", &[]), 0.0);
    assert!(value(&s, "lazix_decoded_cache_bytes", &[]) > 1_000_000.0);
    assert!(value(&s, "lazix_decoded_cache_entries", &[]) >= 1.0);
    assert_eq!(value(&s, "lazix_compaction_failures_total", &[]), 0.0);
    assert!(value(&s, "lazix_compaction_duration_seconds_total", &[]) > 0.0);
    assert_eq!(value(&s, "lazix_gc_runs_total", &[]), 0.0);
    assert!(value(&s, "lazix_store_nar_bytes", &[]) >= 1_500_000.0);
    assert!(value(&s, "lazix_store_pack_objects", &[]) >= 2.0);
    assert!(value(&s, "lazix_store_pack_bytes", &[]) > 0.0);
    server.stop();
}

/// The NAR of `path` through the server's binary-cache shim.
fn lazix_nar_over_http(server: &Server, path: &str) -> Vec<u8> {
    let base = path.trim_start_matches("/nix/store/");
    let (status, info, _) = curl(&["-sS", &format!("{}/{}.narinfo", server.http, &base[..32])]);
    assert_eq!(status, 200);
    let url = String::from_utf8(info)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("URL: ").map(str::to_string))
        .unwrap();
    let (status, nar, _) = curl(&["-sS", &format!("{}/{url}", server.http)]);
    assert_eq!(status, 200);
    nar
}

/// Chunk lists are asked with their directory neighbours' (one call for a
/// folder of multi-chunk files) and kept in the cache folder: a remount
/// on it reads the same files asking the server for no list at all.
#[test]
fn chunk_lists_come_a_folder_at_a_time_and_a_remount_asks_for_none() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("lists-tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for i in 0..3 {
        std::fs::write(tree.join(format!("f{i}")), pseudo_random(400_000, 20 + i)).unwrap();
    }
    std::fs::write(tree.join("sub/g"), pseudo_random(400_000, 30)).unwrap();
    let path = add_path(&tree);
    lazix_push(&server, &[&path]);
    let base = path.trim_start_matches("/nix/store/").to_string();
    let metrics = format!("{}/metrics", server.http);
    let list_calls = || {
        value(
            &scrape(&metrics),
            "lazix_grpc_requests_total",
            &[("method", "/lazix.v1.ChunkService/GetBlobChunks")],
        )
    };
    let cache = dir.path().join("cache");
    let read_all = |mount: &Mount| {
        for (file, seed) in [("f0", 20), ("f1", 21), ("f2", 22), ("sub/g", 30)] {
            let got = std::fs::read(mount.path(&base).join(file)).unwrap();
            assert!(got == pseudo_random(400_000, seed), "{file}");
        }
    };
    let before = list_calls();
    let first = Mount::new(&server, &["--cache-dir", cache.to_str().unwrap()]);
    read_all(&first);
    first.stop();
    let first_calls = list_calls() - before;
    assert_eq!(first_calls, 2.0, "one call per folder, not per file");

    // Without the whole-file copies the first mount kept (with FUSE
    // passthrough the kernel would read those and ask for no list at all).
    std::fs::remove_dir_all(cache.join("files")).unwrap();
    let again = Mount::new(&server, &["--cache-dir", cache.to_str().unwrap()]);
    read_all(&again);
    again.stop();
    assert_eq!(
        list_calls() - before,
        first_calls,
        "the remount asked for lists"
    );
}
