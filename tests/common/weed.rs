//! A real SeaweedFS (`weed mini`) on loopback with credentials and one
//! bucket, for the S3 backend's tests. Every port it opens is chosen free,
//! and the extras it would start (WebDAV, Iceberg, Lance, admin UI) are off,
//! so several tests can each run their own at once.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The access key the test engine accepts.
pub const KEY: &str = "lazix-test-key";
/// The secret the test engine accepts.
pub const SECRET: &str = "lazix-test-secret";
/// The bucket created at start.
pub const BUCKET: &str = "lazix";

/// A running SeaweedFS; its process group is killed on drop.
pub struct Weed {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
}

impl Weed {
    /// Starts SeaweedFS (from `LAZIX_WEED`, set by scripts/test.sh) and
    /// waits until it has created the bucket.
    pub fn start() -> Self {
        let weed = std::env::var("LAZIX_WEED")
            .expect("LAZIX_WEED: run the tests through scripts/test.sh (it installs SeaweedFS)");
        let dir = data_dir();
        let s3 = free_port();
        let mut cmd = Command::new(&weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={s3}"));
        for flag in [
            "master.port",
            "master.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()));
        }
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = cmd
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {weed}: {e}"));
        let mut weed = Weed {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !weed.create_bucket() {
            if Instant::now() > deadline || weed.child.try_wait().ok().flatten().is_some() {
                panic!("SeaweedFS did not start: {}", weed.log());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        // A bucket is created in the filer alone; the first object needs a
        // writable volume, which SeaweedFS refuses on a nearly full disk
        // (every PUT then fails after 30 s). Say so here, not as a lazix
        // timeout minutes later.
        if !weed.put_probe() {
            panic!(
                "SeaweedFS created the bucket but cannot store an object \
                 (no writable volume: is {} nearly full?): {}",
                weed.dir.path().display(),
                weed.log()
            );
        }
        weed
    }

    /// What SeaweedFS has logged so far.
    fn log(&self) -> String {
        let log = std::fs::read(self.dir.path().join("weed.log")).unwrap_or_default();
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Stores and deletes one small object; true if both worked.
    fn put_probe(&self) -> bool {
        let url = format!("{}/{BUCKET}/lazix-test-probe", self.endpoint);
        let probe = self.dir.path().join("probe");
        std::fs::write(&probe, b"probe").unwrap();
        let probe = probe.to_str().unwrap();
        let requests: [&[&str]; 2] = [&["-T", probe], &["-X", "DELETE"]];
        requests.iter().all(|request| {
            let out = Command::new("curl")
                .args(["-s", "-m", "45", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                .arg(format!("{KEY}:{SECRET}"))
                .args(*request)
                .arg(&url)
                .output()
                .unwrap();
            out.stdout.starts_with(b"20")
        })
    }

    /// Creates the bucket; true once the engine said yes.
    fn create_bucket(&self) -> bool {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{KEY}:{SECRET}"))
            .args(["-X", "PUT", &format!("{}/{BUCKET}", self.endpoint)])
            .output()
            .unwrap();
        out.stdout == b"200"
    }

    /// The `--store` location of the bucket.
    pub fn store(&self) -> String {
        format!("s3://{BUCKET}?endpoint={}&region=us-east-1", self.endpoint)
    }

    /// The environment a process needs to reach the bucket.
    pub fn credentials(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ]
    }

    /// A `lazix serve` on the bucket with extra arguments.
    pub fn server(&self, extra: &[&str]) -> super::Server {
        let store = self.store();
        let mut args = vec!["--store", store.as_str()];
        args.extend_from_slice(extra);
        super::Server::start_with_env(&args, &self.credentials())
    }

    /// A `lazix` command on the bucket, with the credentials.
    pub fn lazix(&self, subcommand: &str) -> Command {
        let mut c = super::lazix();
        c.args([subcommand, "--store", &self.store()])
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        c
    }
}

/// A fresh folder for SeaweedFS's data: in memory (`/dev/shm`) when it has
/// a GiB free, else on the roomier of it and the temporary folder's file
/// system. SeaweedFS creates buckets on any disk but turns every object
/// away (each PUT failing after 30 s) when under 1% of its file system is
/// free, which a disk shared with build output can be (a CI run failed so);
/// the tests store little.
fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let tmp = std::env::temp_dir();
    let shm_free = free_bytes(shm);
    if shm_free >= 1 << 30 || shm_free > free_bytes(&tmp) {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("lazix-weed")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Bytes an unprivileged writer may still use on `path`'s file system (0
/// when it cannot be asked).
fn free_bytes(path: &std::path::Path) -> u64 {
    rustix::fs::statvfs(path).map_or(0, |s| s.f_bavail * s.f_frsize)
}

impl Drop for Weed {
    fn drop(&mut self) {
        // The whole process group, by the system call: procps-ng's
        // `kill -9 -1234` reads `-1234` as an option and signals a group
        // named by its first digit (`-1`: every process).
        // SAFETY: kill(2) with a negative pid only sends a signal.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
