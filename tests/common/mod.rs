//! Shared helpers for the end-to-end tests: real Nix, a real `lazix serve`
//! process on a free loopback port, and fixture trees.
#![allow(dead_code)]

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
    c
}

/// A `lazix serve` process on a free port with its own data folder;
/// killed on drop, also when the test fails.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = lazix()
            .args(["serve", "--data"])
            .arg(data.path())
            .args(["--grpc", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning lazix serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "lazix serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr: format!("grpc://127.0.0.1:{port}"),
            data,
        }
    }

    /// Files under one kind of object folder (chunks, directories, …).
    pub fn count_objects(&self, kind: &str) -> usize {
        walk_files(&self.data.path().join(kind)).len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    run(lazix().args(["nar", "--server", &server.addr, path])).stdout
}

/// `lazix push --json`, returning the parsed report.
pub fn lazix_push(server: &Server, paths: &[&str]) -> serde_json::Value {
    let out = run(lazix()
        .args(["push", "--json", "--server", &server.addr])
        .args(paths));
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
