//! Shared helpers for the end-to-end tests: real Nix, a real `lazix serve`
//! process on a free loopback port, and fixture trees.
#![allow(dead_code)]

pub mod weed;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Settings for real Nix in tests: no network, no sandbox, no build users.
pub const NIX_CONFIG: &str =
    "experimental-features = nix-command\nsubstituters =\nsandbox = false\nbuild-users-group =";

/// A command with the test Nix settings.
pub fn nix_cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONFIG", NIX_CONFIG);
    c
}

/// Runs a command, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Trimmed stdout as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lazix binary under test.
pub fn lazix() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lazix"));
    c.env("NIX_CONFIG", NIX_CONFIG).env("LAZIX_LOG", "warn");
    // Default cache folders (a server's re-deflated chunks, a mount's
    // cache when a test gives none) under the build's scratch folder,
    // never the user's.
    c.env(
        "XDG_CACHE_HOME",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
    );
    c
}

/// A `lazix serve` process on a free port with its own data folder;
/// killed on drop, also when the test fails.
pub struct Server {
    child: Child,
    grpc_port: u16,
    http_port: u16,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    pub addr: String,
    /// `http://127.0.0.1:PORT` of the binary-cache shim.
    pub http: String,
    pub data: tempfile::TempDir,
    /// Its disk cache of re-deflated chunks (`--redeflated-disk-dir`),
    /// kept across restarts, never the user's.
    pub redeflated: tempfile::TempDir,
    /// The upload token it was started with (`--upload-token-file`), which
    /// [`Server::client`] commands present.
    pub token: Option<String>,
    grpc_host: String,
}

/// A gRPC channel to a server.
pub async fn grpc_channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(server.addr.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// What a raw gRPC client presents: `authorization: Bearer TOKEN` on every
/// call, or nothing (`XClient::with_interceptor(channel, bearer(token))`).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Presents `token`.
pub fn bearer(token: &str) -> Bearer {
    Bearer(Some(format!("Bearer {token}").parse().unwrap()))
}

/// Presents no token at all.
pub fn no_token() -> Bearer {
    Bearer(None)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server (gRPC and HTTP) and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `lazix serve` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Starts a server with extra arguments and environment variables
    /// (e.g. S3 credentials); a restart keeps both.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", extra, env)
    }

    /// Starts a server whose gRPC listener is on `host` (say `0.0.0.0`,
    /// beyond loopback; it is still reached through loopback).
    pub fn start_on(host: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let grpc_host = host.to_string();
        let data = tempfile::tempdir().unwrap();
        let redeflated = tempfile::tempdir().unwrap();
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|a| a == "--redeflated-disk-dir") {
            extra.push("--redeflated-disk-dir".into());
            extra.push(redeflated.path().display().to_string());
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // A free port can be taken by another test between our probe and
        // the server's bind: then try other ports.
        let (child, port, http_port) = (0..5)
            .find_map(|_| {
                let (port, http_port) = (free_port(), free_port());
                try_spawn_server(data.path(), &grpc_host, port, http_port, &extra, &env)
                    .map(|c| (c, port, http_port))
            })
            .expect("lazix serve did not start");
        let token = extra
            .iter()
            .position(|a| a == "--upload-token-file")
            .and_then(|i| extra.get(i + 1))
            .map(|f| std::fs::read_to_string(f).unwrap().trim().to_string());
        Self {
            token,
            grpc_host,
            child,
            grpc_port: port,
            http_port,
            extra,
            env,
            addr: format!("grpc://127.0.0.1:{port}"),
            http: format!("http://127.0.0.1:{http_port}"),
            data,
            redeflated,
        }
    }

    /// A `lazix SUBCOMMAND --server ADDR` presenting the server's upload
    /// token (LAZIX_TOKEN), if it has one.
    pub fn client(&self, subcommand: &str) -> Command {
        let mut c = lazix();
        c.args([subcommand, "--server", &self.addr]);
        if let Some(t) = &self.token {
            c.env("LAZIX_TOKEN", t);
        }
        c
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_memory(&self) -> u64 {
        peak_memory(self.pid())
    }

    /// Panics unless the server is alive and its peak memory stayed under
    /// `bound` bytes.
    pub fn assert_memory_under(&mut self, bound: u64, case: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{case}: the server died"
        );
        let peak = self.peak_memory();
        eprintln!("{case}: server peak memory {} MiB", peak >> 20);
        assert!(
            peak < bound,
            "{case}: server peak memory {} MiB, bound {} MiB",
            peak >> 20,
            bound >> 20
        );
    }

    /// Stops the server process (SIGKILL), leaving its data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        run(Command::new("kill").args(["-STOP", &self.child.id().to_string()]));
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_server(
            self.data.path(),
            &self.grpc_host,
            self.grpc_port,
            self.http_port,
            &self.extra,
            &self.env,
        );
    }

    /// Flips a byte in every stored frame whose decompressed bytes
    /// satisfy `hit`; returns how many were damaged.
    pub fn corrupt_frames(&self, hit: impl Fn(&[u8]) -> bool) -> usize {
        use prost::Message;
        let mut damaged = 0;
        for idx in walk_files(&self.data.path().join("packs")) {
            if idx.extension().is_none_or(|x| x != "idx") {
                continue;
            }
            let index =
                lazix_proto::ext::PackIndex::decode(std::fs::read(&idx).unwrap().as_slice())
                    .unwrap();
            let pack = idx.with_extension("pack");
            let mut data = std::fs::read(&pack).unwrap();
            for f in &index.frames {
                let range = f.offset as usize..(f.offset + f.length) as usize;
                let raw = lazix_castore::chunk::decompress(&data[range.clone()], 32 << 20).unwrap();
                if hit(&raw) {
                    data[range.start + range.len() / 2] ^= 0x5a;
                    damaged += 1;
                }
            }
            std::fs::write(&pack, data).unwrap();
        }
        damaged
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_server(
    data: &Path,
    grpc_host: &str,
    port: u16,
    http_port: u16,
    extra: &[String],
    env: &[(String, String)],
) -> Child {
    try_spawn_server(data, grpc_host, port, http_port, extra, env)
        .expect("lazix serve did not start")
}

/// Starts `lazix serve`; `None` if it exited (e.g. its port was taken).
fn try_spawn_server(
    data: &Path,
    grpc_host: &str,
    port: u16,
    http_port: u16,
    extra: &[String],
    env: &[(String, String)],
) -> Option<Child> {
    let mut child = lazix()
        .args(["serve", "--data"])
        .arg(data)
        .args(["--grpc", &format!("{grpc_host}:{port}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning lazix serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in [port, http_port] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Answering but exited: the port belongs to someone else.
    if child.try_wait().ok().flatten().is_some() {
        return None;
    }
    Some(child)
}

/// Peak resident memory (VmHWM from /proc) of a process, in bytes.
pub fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// `curl -s` with extra arguments: (status, body, lower-cased headers).
pub fn curl(args: &[&str]) -> (u16, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-D"])
        .arg(&headers)
        .args(args)
        .output()
        .expect("curl");
    // The last response's headers (an upload may get `100 Continue` first).
    let all = std::fs::read_to_string(&headers).unwrap_or_default();
    let head = all
        .rfind("HTTP/")
        .map_or(all.as_str(), |at| &all[at..])
        .to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out.stdout, head.to_lowercase())
}

/// Calls of gRPC `method` the server answered without error so far.
pub fn grpc_calls(server: &Server, method: &str) -> u64 {
    let (status, body, _) = curl(&[&format!("{}/metrics", server.http)]);
    assert_eq!(status, 200);
    let label = format!("method=\"{method}\",code=\"0\"");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("lazix_grpc_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every regular file below `dir`.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[allow(unused_imports)]
pub use lazix_castore::testutil::pseudo_random;

/// Adds a directory to the real Nix store as a content-addressed path.
pub fn add_path(dir: &Path) -> String {
    stdout(&run(nix_cmd("nix").args(["store", "add-path"]).arg(dir)))
}

/// Builds a Nix expression file and returns the output path.
pub fn nix_build(expr: &str) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), expr).unwrap();
    stdout(&run(nix_cmd("nix-build")
        .arg(f.path())
        .arg("--no-out-link")))
}

/// `nix-store --dump PATH`.
pub fn nix_dump(path: &str) -> Vec<u8> {
    run(nix_cmd("nix-store").args(["--dump", path])).stdout
}

/// `lazix nar` of a path from a server.
pub fn lazix_nar(server: &Server, path: &str) -> Vec<u8> {
    run(server.client("nar").arg(path)).stdout
}

/// The full URL of `store_path`'s NAR on the binary cache at `base`
/// (`http://HOST:PORT`), from its narinfo (which must answer 200).
pub fn nar_url(base: &str, store_path: &str) -> String {
    let hash = &store_path.trim_start_matches("/nix/store/")[..32];
    let (status, narinfo, _) = curl(&[&format!("{base}/{hash}.narinfo")]);
    assert_eq!(status, 200, "{hash}.narinfo");
    let narinfo = String::from_utf8(narinfo).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("a URL line");
    format!("{base}/{url}")
}

/// The counter `key` of a JSON report (push, stats, mount counters).
pub fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// `lazix push --json`, returning the parsed report.
pub fn lazix_push(server: &Server, paths: &[&str]) -> serde_json::Value {
    let out = run(server.client("push").arg("--json").args(paths));
    serde_json::from_slice(&out.stdout).expect("push --json output")
}

/// Nix's own record of a path: (narHash as SRI, narSize).
pub fn nix_path_info(path: &str) -> serde_json::Value {
    let out = run(nix_cmd("nix").args(["path-info", "--json", path]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// The closure of a path, as Nix lists it.
pub fn nix_closure(path: &str) -> Vec<String> {
    stdout(&run(nix_cmd("nix-store").args([
        "--query",
        "--requisites",
        path,
    ])))
    .lines()
    .map(str::to_string)
    .collect()
}

/// sha256 in nixbase32 and size of bytes, as `sha256:<b32>`.
pub fn nar_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d: [u8; 32] = sha2::Sha256::digest(bytes).into();
    lazix_castore::nix::hash::format_sha256(&d)
}

/// Converts Nix's SRI narHash to `sha256:<b32>`.
pub fn sri_to_b32(sri: &str) -> String {
    let d = lazix_castore::nix::hash::parse_sha256(sri).unwrap();
    lazix_castore::nix::hash::format_sha256(&d)
}

/// A Nix client environment of its own: an empty narinfo cache (Nix caches
/// narinfos per cache URL in `$XDG_CACHE_HOME`, which would let one test's
/// upload answer another's download) and a netrc file with a token.
pub struct NixClient {
    pub dir: tempfile::TempDir,
}

impl NixClient {
    /// A fresh client; `token` goes into its netrc for 127.0.0.1.
    pub fn new(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = token {
            std::fs::write(
                dir.path().join("netrc"),
                format!("machine 127.0.0.1\nlogin lazix\npassword {t}\n"),
            )
            .unwrap();
        }
        Self { dir }
    }

    /// `nix` (or another Nix tool) with this client's cache and netrc.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = nix_cmd(program);
        c.env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .args(["--option", "netrc-file"])
            .arg(self.dir.path().join("netrc"));
        c
    }

    /// An empty chroot store of this client.
    pub fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }
}

/// `nix-store --generate-binary-cache-key NAME`: (secret file, public key).
pub fn nix_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let sk = dir.join(format!("{name}.sk"));
    let pk = dir.join(format!("{name}.pk"));
    run(nix_cmd("nix-store")
        .args(["--generate-binary-cache-key", name])
        .arg(&sk)
        .arg(&pk));
    let public = std::fs::read_to_string(&pk).unwrap().trim().to_string();
    (sk, public)
}

/// A closure of four input-addressed paths with references; `salt` makes
/// the paths unique to a test.
pub fn build_closure(salt: &str) -> String {
    nix_build(&format!(
        r#"
let
  mk = name: script: derivation {{
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" script ];
  }};
  lib = mk "lazix-{salt}-lib" "/bin/mkdir -p $out/lib; /bin/echo {salt} > $out/lib/data; /bin/head -c 400000 /dev/urandom > $out/lib/blob";
  tool = mk "lazix-{salt}-tool" ''
    /bin/mkdir -p $out/bin
    /bin/echo '#!/bin/sh' > $out/bin/tool
    /bin/echo 'cat ${{lib}}/lib/data' >> $out/bin/tool
    /bin/chmod 755 $out/bin/tool
    /bin/ln -s ${{lib}}/lib $out/lib
  '';
  doc = mk "lazix-{salt}-doc" "/bin/mkdir -p $out/share; /bin/echo ${{tool}} > $out/share/readme";
in mk "lazix-{salt}-top" "/bin/mkdir $out; /bin/echo ${{tool}} ${{lib}} ${{doc}} > $out/refs"
"#
    ))
}

/// A `lazix mount` process; on drop it is asked to stop and the mount is
/// detached whatever happened, so a failing test leaves no mount behind.
pub struct Mount {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(d.as_str()))
}

impl Mount {
    /// Mounts `server` with extra `lazix mount` arguments; waits until the
    /// mount is live.
    pub fn new(server: &Server, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = server
            .client("mount")
            .args(extra)
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lazix mount");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(dir.path()) {
            assert!(Instant::now() < deadline, "lazix mount did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            dir,
        }
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The live counters from `.lazix-stats`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(".lazix-stats")).unwrap()).unwrap()
    }

    /// Waits (at most `limit`) for `lazix mount` to exit by itself, as
    /// after an unmount from outside; its status and what it printed, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while child.try_wait().ok()?.is_none() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.take()?.wait_with_output().ok()?;
        Some((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Stops `lazix mount` (SIGTERM) and returns what it printed.
    pub fn stop(mut self) -> String {
        self.shutdown()
    }

    fn shutdown(&mut self) -> String {
        let Some(child) = self.child.take() else {
            return String::new();
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        if is_mounted(self.dir.path()) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.dir.path())
                .status();
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Detach first: a stopped server must not keep the unmount waiting.
        if is_mounted(self.dir.path()) && std::thread::panicking() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.dir.path())
                .status();
        }
        self.shutdown();
    }
}
