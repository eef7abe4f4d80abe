//! `lazix proxy` with real Nix against a real upstream `lazix serve`: a
//! closure copied through it into an empty chroot store and verified with
//! the upstream paths' key; a second copy fetches nothing upstream; a file
//! read through a mount on the same cache folder costs the proxy nothing
//! upstream; upstream gone at narinfo time makes Nix fall back to its next
//! substituter within seconds; upstream gone mid-NAR breaks the response
//! (never a short NAR that looks complete) and Nix registers nothing.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A `lazix proxy` process, killed on drop.
struct Proxy {
    child: Child,
    url: String,
}

impl Proxy {
    fn start(upstream: &Server, cache_dir: &Path) -> Self {
        let port = free_port();
        let child = lazix()
            .args(["proxy", "--upstream", &upstream.addr, "--timeout", "2"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--cache-dir"])
            .arg(cache_dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning lazix proxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "lazix proxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops the proxy with SIGKILL (nothing flushed, nothing cleaned).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Frame bytes fetched from upstream so far (`/lazix-stats`, which
    /// must agree with the Prometheus counter at `/metrics`).
    fn upstream_bytes(&self) -> u64 {
        let (status, body, _) = curl(&[&format!("{}/lazix-stats", self.url)]);
        assert_eq!(status, 200);
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let bytes = n(&stats, "upstream_bytes");
        let (status, body, _) = curl(&[&format!("{}/metrics", self.url)]);
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        let scraped =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let counter = scraped
            .samples
            .iter()
            .find(|s| s.metric == "lazix_proxy_upstream_bytes_total")
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => {
                    v as u64
                }
                _ => panic!("not a number: {:?}", s.value),
            });
        assert_eq!(counter, Some(bytes), "{text}");
        bytes
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs `path`'s closure in the local store with `key` (what the
/// upstream's paths carry: `lazix push` takes the signatures along).
fn sign_closure(path: &str, key: &Path) {
    run(nix_cmd("nix")
        .args(["store", "sign", "--recursive", "--key-file"])
        .arg(key)
        .arg(path));
}

/// `nix copy --from URL PATH` into `client`'s chroot store, trusting `pk`.
fn copy_from(client: &NixClient, url: &str, pk: &str, path: &str) -> Command {
    let mut c = client.cmd("nix");
    c.args(["copy", "--store", &client.store(), "--from", url])
        .args(["--option", "trusted-public-keys", pk])
        .arg(path);
    c
}

/// `path`'s NAR as `client`'s chroot store holds it.
fn dump_in(client: &NixClient, path: &str) -> Vec<u8> {
    run(client
        .cmd("nix-store")
        .args(["--store", &client.store(), "--dump", path]))
    .stdout
}

/// Whether `path` is valid in `client`'s chroot store.
fn valid_in(client: &NixClient, path: &str) -> bool {
    client
        .cmd("nix-store")
        .args(["--store", &client.store(), "--check-validity", path])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn nix_copies_a_closure_through_the_proxy_and_a_second_copy_fetches_nothing_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "upstream-1");
    let upstream = Server::start();
    let top = build_closure("proxy-copy");
    sign_closure(&top, &key);
    lazix_push(&upstream, &[&top]);
    let proxy = Proxy::start(&upstream, &dir.path().join("cache"));

    let first = NixClient::new(None);
    run(&mut copy_from(&first, &proxy.url, &pk, &top));
    for p in nix_closure(&top) {
        let copied = dump_in(&first, &p);
        assert!(copied == nix_dump(&p), "{p} differs through the proxy");
    }
    let fetched = proxy.upstream_bytes();
    assert!(
        fetched > 400_000,
        "the closure's blob came from upstream: {fetched}"
    );
    // What came is in its disk cache, within the quota.
    let (_, body, _) = curl(&[&format!("{}/lazix-stats", proxy.url)]);
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cached = n(&stats["disk_cache"], "bytes");
    assert!(
        cached >= fetched,
        "{cached} bytes cached of {fetched} fetched"
    );
    assert!(n(&stats["disk_cache"], "frames") >= 1);

    // The proxy killed: a new one on the same folder has every frame, and
    // a second machine's Nix (a fresh store) fetches nothing upstream.
    proxy.kill();
    let proxy = Proxy::start(&upstream, &dir.path().join("cache"));
    let second = NixClient::new(None);
    run(&mut copy_from(&second, &proxy.url, &pk, &top));
    assert!(valid_in(&second, &top));
    assert_eq!(
        proxy.upstream_bytes(),
        0,
        "the second copy fetched frames upstream again"
    );

    // A key Nix does not trust: nothing is copied.
    let stranger = NixClient::new(None);
    let (_, other_pk) = nix_keygen(dir.path(), "stranger-1");
    let out = copy_from(&stranger, &proxy.url, &other_pk, &top)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!valid_in(&stranger, &top));

    // Upstream restarted: the proxy reconnects by itself (a path pushed
    // since needs it for everything).
    let mut upstream = upstream;
    upstream.restart();
    let later = build_closure("proxy-copy-later");
    sign_closure(&later, &key);
    lazix_push(&upstream, &[&later]);
    let third = NixClient::new(None);
    run(&mut copy_from(&third, &proxy.url, &pk, &later));
    assert!(valid_in(&third, &later));
}

#[test]
fn concurrent_requests_for_one_nar_fetch_its_frames_once() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Server::start();
    let tree = dir.path().join("concurrent-fixture");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), pseudo_random(6 << 20, 53)).unwrap();
    let path = add_path(&tree);
    lazix_push(&upstream, &[&path]);
    let nar_url = |proxy: &Proxy| nar_url(&proxy.url, &path);
    // One reader alone, through one proxy.
    let alone = Proxy::start(&upstream, &dir.path().join("cache-1"));
    let (status, body, _) = curl(&[&nar_url(&alone)]);
    assert_eq!(status, 200);
    assert!(body == nix_dump(&path));
    let once = alone.upstream_bytes();
    assert!(once > 0);
    // Four at once through another, cold too.
    let shared = Proxy::start(&upstream, &dir.path().join("cache-2"));
    let url = nar_url(&shared);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in readers {
        let out = r.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    assert_eq!(
        shared.upstream_bytes(),
        once,
        "four concurrent readers fetched more than one reader"
    );
}

#[test]
fn a_path_read_through_a_mount_on_the_same_cache_costs_the_proxy_nothing_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "upstream-1");
    let upstream = Server::start();
    let tree = dir.path().join("shared-cache-fixture");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/big"), pseudo_random(1_200_000, 51)).unwrap();
    std::fs::write(tree.join("note"), "read once, served twice\n").unwrap();
    let path = add_path(&tree);
    sign_closure(&path, &key);
    lazix_push(&upstream, &[&path]);

    let cache = dir.path().join("cache");
    let proxy = Proxy::start(&upstream, &cache);
    let cache_arg = cache.to_str().unwrap();
    let mount = Mount::new(&upstream, &["--cache-dir", cache_arg]);
    let base = path.trim_start_matches("/nix/store/");
    for file in walk_files(&tree) {
        let rel = file.strip_prefix(&tree).unwrap();
        let read = std::fs::read(mount.path(&format!("{base}/{}", rel.display()))).unwrap();
        assert!(read == std::fs::read(&file).unwrap());
    }
    mount.stop();
    // Frames the mount wrote are found by the running proxy.
    std::thread::sleep(Duration::from_millis(1200));

    let client = NixClient::new(None);
    run(&mut copy_from(&client, &proxy.url, &pk, &path));
    let copied = dump_in(&client, &path);
    assert!(copied == nix_dump(&path));
    assert_eq!(
        proxy.upstream_bytes(),
        0,
        "the proxy fetched frames the mount had already cached"
    );
}

#[test]
fn upstream_down_at_narinfo_nix_falls_back_to_its_next_substituter_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "upstream-1");
    let upstream = Server::start();
    let backup = Server::start();
    let top = build_closure("proxy-fallback");
    sign_closure(&top, &key);
    lazix_push(&upstream, &[&top]);
    lazix_push(&backup, &[&top]);
    let proxy = Proxy::start(&upstream, &dir.path().join("cache"));
    // Upstream stops answering (connections accepted, nothing answered).
    upstream.freeze();

    let client = NixClient::new(None);
    let started = Instant::now();
    let out = client
        .cmd("nix-store")
        .args(["--store", &client.store(), "--realise", &top])
        .args([
            "--option",
            "substituters",
            &format!("{} {}", proxy.url, backup.http),
        ])
        .args(["--option", "trusted-public-keys", &pk])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(valid_in(&client, &top));
    assert!(took < Duration::from_secs(20), "fell back after {took:?}");
    eprintln!("fell back to the second substituter in {took:?}");
    run(Command::new("kill").args(["-CONT", &upstream.pid().to_string()]));
}

#[test]
fn upstream_gone_mid_nar_breaks_the_response_and_nix_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pk) = nix_keygen(dir.path(), "upstream-1");
    let upstream = Server::start();
    let tree = dir.path().join("cut-off-fixture");
    std::fs::create_dir_all(&tree).unwrap();
    // Twice what the proxy fetches ahead of its reader: the upstream
    // freezes with much of the NAR still to come.
    let ahead = lazix_castore::render::Windows::OVER_A_LINK;
    let size = 2 * ahead.bytes as usize * ahead.ahead + (16 << 20);
    std::fs::write(tree.join("big"), pseudo_random(size, 52)).unwrap();
    let path = add_path(&tree);
    sign_closure(&path, &key);
    lazix_push(&upstream, &[&path]);
    let proxy = Proxy::start(&upstream, &dir.path().join("cache"));

    // A slow reader of the NAR: upstream freezes once bytes have flowed.
    let hash = &path.trim_start_matches("/nix/store/")[..32];
    let (status, narinfo, _) = curl(&[&format!("{}/{hash}.narinfo", proxy.url)]);
    assert_eq!(status, 200);
    let narinfo = String::from_utf8(narinfo).unwrap();
    let field = |k: &str| {
        narinfo
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    let (url, nar_size): (String, u64) = (field("URL:"), field("NarSize:").parse().unwrap());
    let out_file = dir.path().join("cut.nar");
    let mut reader = Command::new("curl")
        .args(["-sS", "--limit-rate", "2M", "-o"])
        .arg(&out_file)
        .arg(format!("{}/{url}", proxy.url))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&out_file).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(Instant::now() < deadline, "no NAR bytes arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    upstream.freeze();
    let status = reader.wait().unwrap();
    let got = std::fs::metadata(&out_file).unwrap().len();
    assert!(got < nar_size, "the whole NAR arrived ({got} bytes)");
    assert!(
        !status.success(),
        "a NAR cut off at {got} of {nar_size} bytes ended like a complete one"
    );

    // Real Nix through the proxy while upstream is still frozen: an
    // error, and the path is not registered.
    let client = NixClient::new(None);
    let out = copy_from(&client, &proxy.url, &pk, &path).output().unwrap();
    assert!(!out.status.success(), "nix copy succeeded without upstream");
    assert!(!valid_in(&client, &path));
    run(Command::new("kill").args(["-CONT", &upstream.pid().to_string()]));
}
