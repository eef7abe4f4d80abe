//! The configuration file (`--config FILE`): a setting there is what the
//! flag sets, a flag or the environment wins over it, and an unknown key
//! or section fails with a message naming it.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = lazix();
    cmd.args(args).arg("--print-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_config_file_sets_what_flags_set_and_flags_and_environment_win() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("lazix.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[serve]
grpc = ["127.0.0.1:{port}"]
data = "{}"
decoded-cache-mib = 64
snix-only = true
compact-after = 0

[path-info]
server = "grpc://127.0.0.1:{port}"
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let merged = print_config(&["--config", f, "serve"], &[]);
    assert!(merged.starts_with("[serve]\n"), "{merged}");
    assert!(merged.contains("decoded-cache-mib = \"64\""), "{merged}");
    assert!(merged.contains("snix-only = true"), "{merged}");
    assert!(
        merged.contains(&format!("grpc = [\"127.0.0.1:{port}\"]")),
        "{merged}"
    );
    // A flag wins over the file.
    let merged = print_config(&["serve", "--decoded-cache-mib", "128", "--config", f], &[]);
    assert!(merged.contains("decoded-cache-mib = \"128\""), "{merged}");
    // The environment wins over the file (where the flag reads one).
    let merged = print_config(
        &["--config", f, "path-info", "/nix/store/x"],
        &[("LAZIX_SERVER", "grpc://10.9.8.7:1")],
    );
    assert!(
        merged.contains("server = \"grpc://10.9.8.7:1\""),
        "{merged}"
    );

    // The settings take effect: the server listens where the file says,
    // and a client finds it there.
    let mut server = lazix()
        .args(["--config", f, "serve"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve did not listen on the configured port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing = format!("/nix/store/{}-nothing", "0".repeat(32));
    let out = lazix()
        .args(["--config", f, "path-info", &missing])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("is not on the server"),
        "the client did not reach the server: {said}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    // Unknown keys and sections are errors naming them.
    std::fs::write(&file, "[serve]\ngrpcc = \"127.0.0.1:1\"\n").unwrap();
    let out = lazix().args(["--config", f, "serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"grpcc\""));
    std::fs::write(&file, "[serv]\ngrpc = \"127.0.0.1:1\"\n").unwrap();
    let out = lazix().args(["--config", f, "serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[serv]"));
}

#[test]
fn a_subcommand_has_its_own_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lazix.toml");
    std::fs::write(
        &file,
        r#"
[store.up]
cache-size = "5G"
daemon = true

[store.down]
lazy = true
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let merged = print_config(&["--config", f, "store", "up", "/nix/store"], &[]);
    assert!(merged.starts_with("[store.up]\n"), "{merged}");
    assert!(merged.contains("cache-size = \"5G\""), "{merged}");
    assert!(merged.contains("daemon = true"), "{merged}");
    let merged = print_config(&["--config", f, "store", "down"], &[]);
    assert!(merged.contains("lazy = true"), "{merged}");
    // An unknown key of a subcommand's section names both.
    std::fs::write(&file, "[store.up]\ncache-sise = \"5G\"\n").unwrap();
    let out = lazix()
        .args(["--config", f, "store", "up", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("[store.up]") && said.contains("cache-sise"),
        "{said}"
    );
}

#[test]
fn serve_starts_without_its_default_disk_cache_but_not_without_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache folder would go: no folder can be made there.
    let blocked = dir.path().join("not-a-folder");
    std::fs::write(&blocked, "x").unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let serve = |extra: &[&str]| {
        let mut c = lazix();
        c.env("XDG_CACHE_HOME", &blocked)
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--grpc", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stderr(std::process::Stdio::piped());
        c
    };
    // The default folder cannot be made: it serves anyway, and says why.
    let mut server = serve(&[]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            server.try_wait().unwrap().is_none(),
            "serve exited without its default disk cache"
        );
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let out = server.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no disk cache of re-deflated chunks"),
        "{said}"
    );
    // A folder asked for that cannot be made is an error naming it.
    let asked = blocked.join("cache");
    let out = serve(&["--redeflated-disk-dir", asked.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("re-deflated chunk cache") && said.contains("not-a-folder"),
        "{said}"
    );
}
