//! Running lazix as a system service: the systemd units in
//! `packaging/systemd/` pass `systemd-analyze verify`, and `serve` and
//! `mount` tell systemd they are ready (`Type=notify`) only once they
//! listen / the mount answers, through a real notify socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

#[test]
fn the_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_lazix");
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let mut checked = 0;
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        // The unit as installed, pointing at this build's binary.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/lazix", bin);
        let copy = dir.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !said.contains(copy.file_name().unwrap().to_str().unwrap()),
            "{}: {said}",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "lazix-serve, lazix-mount and lazix-store");
}

/// A notify socket as systemd gives one; what was sent to it, waiting up
/// to `limit` for `READY=1`.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            socket,
            path,
            _dir: dir,
        }
    }

    fn wait_ready(&self, limit: Duration) -> String {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut said = String::new();
        let mut buf = [0u8; 4096];
        while !said.contains("READY=1") {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no READY=1 within {limit:?} ({e}); got {said:?}"));
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
            said.push('\n');
        }
        said
    }
}

#[test]
fn serve_and_mount_notify_readiness_once_they_answer() {
    let notify = NotifySocket::new();
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut server = lazix()
        .args(["serve", "--compact-after", "0", "--grpc"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data.path())
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    notify.wait_ready(Duration::from_secs(20));
    // Ready means listening: a connection succeeds at once.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let mount_notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    /// Detaches the mount whatever happens (a failing test leaves none).
    struct Detach<'a>(&'a std::path::Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.0)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _detach = Detach(dir.path());
    let mut mount = lazix()
        .args(["mount", "--server"])
        .arg(format!("grpc://127.0.0.1:{port}"))
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &mount_notify.path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    mount_notify.wait_ready(Duration::from_secs(20));
    // Ready means mounted: the stats file answers.
    let stats = std::fs::read(dir.path().join(".lazix-stats"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &mount.id().to_string()])
        .status();
    let _ = mount.wait();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    assert!(stats.is_ok(), "{stats:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    let out = run(lazix().args(["completions", "bash"]));
    let text = stdout(&out);
    for sub in ["serve", "mount", "prefetch", "pin"] {
        assert!(text.contains(sub), "bash completion lacks {sub}");
    }
    let out = run(lazix().arg("man"));
    let page = stdout(&out);
    assert!(page.contains(".TH lazix 1"), "{page}");
    assert!(page.contains("serve"), "{page}");
}
