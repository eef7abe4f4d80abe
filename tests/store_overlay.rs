//! `lazix store up` / `realise` / `down` with real Nix 2.8, overlayfs and
//! FUSE, in a private mount namespace (`unshare -m`) whose `/nix` is a
//! scratch folder with an empty store and a fresh Nix database, so the
//! machine's own store and database are untouched. The scenario runs as
//! one shell script inside the namespace (the mounts live there) and
//! reports what it saw as `KEY=VALUE` lines, checked here.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;

/// Runs `script` as root in a private mount namespace; its `KEY=VALUE`
/// lines, and everything it printed (for failure messages).
fn in_namespace(script: &str, vars: &[(&str, String)]) -> (HashMap<String, String>, String) {
    // The values go in as shell variables read from a file, not in the
    // environment: Nix's GC takes store paths in any process's
    // environment as roots, and the scenario deletes one of them.
    let file = tempfile::NamedTempFile::new().unwrap();
    let text: String = vars.iter().map(|(k, v)| format!("{k}='{v}'\n")).collect();
    std::fs::write(file.path(), text).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c"])
        .arg(format!(
            "source {}\n{CLEANUP}{script}",
            file.path().display()
        ))
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("LAZIX_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running unshare");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (seen, text)
}

/// Run first in every namespace: whatever happens, nothing of the run
/// outlives it.
const CLEANUP: &str = r#"set -u
cleanup() {
    pid=$(sed 's/.*"pid":\([0-9]*\).*/\1/' /nix/.lazix-store/state.json 2>/dev/null)
    [ -n "$pid" ] && kill -9 $pid 2>/dev/null
    umount -l /nix/store 2>/dev/null; umount -l /nix/.lazix-store/lower 2>/dev/null
}
trap cleanup EXIT
"#;

/// The scenario; paths and keys come as shell variables.
const SCENARIO: &str = r#"
T=$SCRATCH
mkdir -p $T/nix/store $T/nix/var/nix $T/gcroots
mount --bind $T/nix /nix || { echo BIND=failed; exit 1; }
# The machine's own path, there before the lazy store comes up.
echo "made here" > $T/local-file
LOCAL=$(nix-store --add $T/local-file)
echo LOCAL_ADDED=$?

echo "UP_REFUSED_NOT_EMPTY_ARG=$($LAZIX store up --server $SERVER /nonexistent/store 2>&1 | head -1)"
$LAZIX store up --server $SERVER --cache-dir $T/cache --timeout 3 --daemon
echo UP=$?
echo "UP_TWICE=$($LAZIX store up --server $SERVER --daemon 2>&1 | tail -1)"
echo "LOCAL_STILL_THERE=$(cat $LOCAL)"

# The untrusted closure: refused, nothing registered.
echo "UNTRUSTED_MSG=$($LAZIX realise --server $SERVER --trusted-public-keys "$PK" $UNTRUSTED 2>&1 | tr '\n' ' ')"
echo "UNTRUSTED_INVALID=$(nix-store --check-validity --print-invalid $UNTRUSTED $UNTRUSTED_LIB | wc -l)"

$LAZIX realise --server $SERVER --trusted-public-keys "$PK" --json $TOP > $T/realise.json
echo REALISE=$?
echo "REALISE_JSON=$(cat $T/realise.json)"
echo "REFS=$(nix-store -q --references $TOP | sort | tr '\n' ' ')"
echo "CLOSURE=$(nix-store -q --requisites $TOP | sort | tr '\n' ' ')"
echo "PATH_INFO=$(nix path-info --json $TOP)"
# Again: everything is valid already.
echo "REALISE_AGAIN=$($LAZIX realise --server $SERVER --trusted-public-keys "$PK" --json $TOP)"

# nix-snapshotter's external_builder, with the local Nix's own keys.
LAZIX=$LAZIX LAZIX_SERVER=$SERVER NIX_CONFIG="$NIX_CONFIG
trusted-public-keys = $PK" $BUILDER $T/gcroots/doc $DOC
echo BUILDER=$?
echo "BUILDER_LINK=$(readlink $T/gcroots/doc)"
echo "BUILDER_VALID=$(nix-store --check-validity --print-invalid $DOC | wc -l)"
echo "BUILDER_ROOT=$(nix-store --gc --print-roots | grep -c "^$T/gcroots/doc ")"

before=$(cat /nix/.lazix-store/lower/.lazix-stats)
cat > $T/built.nix <<EON
derivation {
  name = "lazix-built-on-remote";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; \${builtins.storePath $TOOL}/bin/tool > \$out; echo \${builtins.storePath $TOOL} >> \$out" ];
}
EON
BUILT=$(nix-build $T/built.nix --no-out-link)
echo BUILD=$?
echo BUILT=$BUILT
echo "BUILT_OUTPUT=$(head -1 $BUILT)"
echo "BUILT_REFS=$(nix-store -q --references $BUILT | tr '\n' ' ')"
echo "BUILT_IN_UPPER=$(test -e $T/nix/store/$(basename $BUILT) && echo yes)"
echo "STATS=$(tr -d '\n ' < /nix/.lazix-store/lower/.lazix-stats)"
# The lazily read trees hash to the recorded NarHash.
nix-store --verify-path $TOP $TOOL $LIB $DOC
echo VERIFY=$?

# A lazy path deleted through the overlay leaves a whiteout in the real
# directory; down removes it.
nix-store --delete $UNREFERENCED > $T/delete.txt 2>&1
echo DELETED=$?
echo "DELETE_MSG=$(tr '\n' ' ' < $T/delete.txt)"
echo "WHITEOUTS_BEFORE_DOWN=$(find $T/nix/store -maxdepth 1 -type c | wc -l)"

# The server goes away: uncached lazy files fail with EIO after the
# timeout (of a path looked up before: new names are absent), local
# paths and builds that read none are fine.
ls $UNTRUSTED_LIB/lib > /dev/null
kill -9 $SERVER_PID
start=$(date +%s)
cat $UNTRUSTED_LIB/lib/blob > /dev/null 2> $T/eio.txt
echo "LAZY_READ_RC=$?"
echo "LAZY_READ_SECONDS=$(( $(date +%s) - start ))"
echo "LAZY_READ_ERR=$(cat $T/eio.txt)"
echo "LOCAL_WHILE_DOWN=$(cat $LOCAL)"
cat > $T/local.nix <<EON
derivation { name = "lazix-local-only"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo local > \$out" ]; }
EON
LOCAL_BUILT=$(nix-build $T/local.nix --no-out-link)
echo LOCAL_BUILD=$?

$LAZIX store down > $T/down.txt 2>&1
echo DOWN=$?
echo "DOWN_MSG=$(cat $T/down.txt | tr '\n' ' ')"
echo "MOUNTED_AFTER=$(grep -c " /nix/store \| /nix/.lazix-store/lower " /proc/self/mounts)"
echo "WHITEOUTS_AFTER_DOWN=$(find $T/nix/store -maxdepth 1 -type c | wc -l)"
echo "LAZY_INVALID=$(nix-store --check-validity --print-invalid $TOP $TOOL $LIB $DOC | wc -l)"
echo "BUILT_VALID=$(nix-store --check-validity --print-invalid $BUILT $LOCAL_BUILT $LOCAL | wc -l)"
echo "LOCAL_AFTER=$(cat $LOCAL)"
echo "VERIFY_ALL=$(nix-store --verify 2>&1 | grep -c -i 'disappeared\|modified\|not valid')"
echo "ROOT_DANGLES=$(test -L $T/gcroots/doc && ! test -e $T/gcroots/doc && echo yes)"
"#;

/// The second half: up again (a new server on the same data), realise,
/// and the references `down` cut are back.
const AGAIN: &str = r#"
mount --bind $SCRATCH/nix /nix || exit 1
$LAZIX store up --server $SERVER --daemon
echo UP2=$?
$LAZIX realise --server $SERVER --trusted-public-keys "$PK" $TOP
echo REALISE2=$?
echo "BUILT_REFS2=$(nix-store -q --references $BUILT | tr '\n' ' ')"
echo "CUT_LEFT=$(cat /nix/.lazix-store/cut-references 2>/dev/null | wc -l)"
echo "BUILT_RUNS=$(sh -c "$TOOL/bin/tool")"
# SIGTERM to a foreground-like up takes the store down as down does.
kill -TERM $(sed 's/.*"pid":\([0-9]*\).*/\1/' /nix/.lazix-store/state.json)
for i in $(seq 100); do grep -q " /nix/store " /proc/self/mounts || break; sleep 0.1; done
echo "MOUNTED_AFTER_TERM=$(grep -c " /nix/store " /proc/self/mounts)"
echo "LAZY_INVALID2=$(nix-store --check-validity --print-invalid $TOP $TOOL $LIB | wc -l)"
"#;

fn get<'a>(seen: &'a HashMap<String, String>, key: &str, text: &str) -> &'a str {
    seen.get(key)
        .unwrap_or_else(|| panic!("{key} not reported:\n{text}"))
}

#[test]
fn remote_closures_are_valid_for_nix_through_the_overlay_and_leave_cleanly() {
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = nix_keygen(keys.path(), "team-cache-1");
    let (stranger_sk, _) = nix_keygen(keys.path(), "stranger-1");
    let top = build_closure("storeup");
    let untrusted = build_closure("storeup-stranger");
    let closure = nix_closure(&top);
    let find = |suffix: &str| {
        closure
            .iter()
            .find(|p| p.ends_with(suffix))
            .unwrap()
            .clone()
    };
    let (tool, lib, doc) = (find("-tool"), find("-lib"), find("-doc"));
    let untrusted_lib = nix_closure(&untrusted)
        .into_iter()
        .find(|p| p.ends_with("-lib"))
        .unwrap();
    let closure_nar_bytes: u64 = closure
        .iter()
        .map(|p| n(&nix_path_info(p), "narSize"))
        .sum();

    let mut server = Server::start();
    run(server
        .client("push")
        .arg("--signing-key")
        .arg(&sk)
        .arg(&top));
    run(server
        .client("push")
        .arg("--signing-key")
        .arg(&stranger_sk)
        .arg(&untrusted));

    let scratch = tempfile::tempdir().unwrap();
    let builder = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/nix-snapshotter/lazix-external-builder"
    );
    let env = |server: &Server| {
        vec![
            ("LAZIX", env!("CARGO_BIN_EXE_lazix").to_string()),
            ("SCRATCH", scratch.path().display().to_string()),
            ("SERVER", server.addr.clone()),
            ("SERVER_PID", server.pid().to_string()),
            ("PK", pk.clone()),
            ("TOP", top.clone()),
            ("TOOL", tool.clone()),
            ("LIB", lib.clone()),
            ("DOC", doc.clone()),
            // The top path: nothing refers to it, nothing roots it.
            ("UNREFERENCED", top.clone()),
            ("UNTRUSTED", untrusted.clone()),
            ("UNTRUSTED_LIB", untrusted_lib.clone()),
            ("BUILDER", builder.to_string()),
        ]
    };
    let (seen, text) = in_namespace(SCENARIO, &env(&server));
    let v = |k: &str| get(&seen, k, &text);

    assert_eq!(v("LOCAL_ADDED"), "0", "{text}");
    assert!(
        v("UP_REFUSED_NOT_EMPTY_ARG").contains("is not there"),
        "{text}"
    );
    assert_eq!(v("UP"), "0", "{text}");
    assert!(
        v("UP_TWICE").contains("already mounted at /nix/store"),
        "{text}"
    );
    assert_eq!(v("LOCAL_STILL_THERE"), "made here", "{text}");

    // Trust: the stranger's closure is refused with the reason, and
    // nothing of it registered.
    assert!(
        v("UNTRUSTED_MSG")
            .contains("no valid narinfo signature by a trusted key (signed by: stranger-1)"),
        "{text}"
    );
    assert_eq!(v("UNTRUSTED_INVALID"), "2", "{text}");

    // Registered with the server's metadata, as Nix itself reports it.
    assert_eq!(v("REALISE"), "0", "{text}");
    let report: serde_json::Value = serde_json::from_str(v("REALISE_JSON")).unwrap();
    assert_eq!((n(&report, "closure"), n(&report, "registered")), (4, 4));
    assert_eq!(n(&report, "signed"), 4);
    let mut want_closure = closure.clone();
    want_closure.sort();
    assert_eq!(v("CLOSURE").trim(), want_closure.join(" "), "{text}");
    let mut want_refs: Vec<String> = stdout(&run(nix_cmd("nix-store")
        .args(["-q", "--references"])
        .arg(&top)))
    .lines()
    .map(str::to_string)
    .collect();
    want_refs.sort();
    assert_eq!(v("REFS").trim(), want_refs.join(" "), "{text}");
    let info: serde_json::Value = serde_json::from_str(v("PATH_INFO")).unwrap();
    let local = nix_path_info(&top);
    assert_eq!(info[0]["narHash"], local["narHash"], "{text}");
    assert_eq!(info[0]["narSize"], local["narSize"], "{text}");
    assert_eq!(info[0]["deriver"], local["deriver"], "{text}");
    assert!(
        info[0]["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("team-cache-1:")),
        "{text}"
    );
    // The lazily read trees hash to the recorded NarHash.
    assert_eq!(v("VERIFY"), "0", "{text}");
    let again: serde_json::Value = serde_json::from_str(v("REALISE_AGAIN")).unwrap();
    assert_eq!(
        (n(&again, "registered"), n(&again, "already_valid")),
        (0, 4)
    );

    // external_builder: a GC root and a valid path.
    assert_eq!(v("BUILDER"), "0", "{text}");
    assert_eq!(v("BUILDER_LINK"), doc, "{text}");
    assert_eq!(v("BUILDER_VALID"), "0", "{text}");
    assert_eq!(v("BUILDER_ROOT"), "1", "{text}");

    // A build on top of a remote path, landing in the real directory,
    // having fetched a sliver of the closure.
    assert_eq!(v("BUILD"), "0", "{text}");
    assert_eq!(v("BUILT_OUTPUT"), "storeup", "{text}");
    assert_eq!(v("BUILT_REFS").trim(), tool, "{text}");
    assert_eq!(v("BUILT_IN_UPPER"), "yes", "{text}");
    let stats: serde_json::Value = serde_json::from_str(v("STATS")).unwrap();
    let fetched = n(&stats, "fetched_bytes");
    assert!(
        fetched * 10 < closure_nar_bytes,
        "fetched {fetched} of a {closure_nar_bytes}-byte closure:\n{text}"
    );

    assert_eq!(v("DELETED"), "0", "{text}");
    assert!(v("DELETE_MSG").contains("1 store paths deleted"), "{text}");
    assert_eq!(v("WHITEOUTS_BEFORE_DOWN"), "1", "{text}");

    // Server gone.
    assert_ne!(v("LAZY_READ_RC"), "0", "{text}");
    assert!(v("LAZY_READ_ERR").contains("Input/output error"), "{text}");
    let secs: u64 = v("LAZY_READ_SECONDS").parse().unwrap();
    assert!(secs <= 15, "an EIO took {secs} s:\n{text}");
    assert_eq!(v("LOCAL_WHILE_DOWN"), "made here", "{text}");
    assert_eq!(v("LOCAL_BUILD"), "0", "{text}");

    // Down: nothing mounted, no whiteout, no lazy path valid, what was
    // built (and the machine's own path) still valid, Nix's own check
    // finds nothing missing.
    assert_eq!(v("DOWN"), "0", "{text}");
    assert!(
        v("DOWN_MSG").contains("lazy paths no longer valid"),
        "{text}"
    );
    assert_eq!(v("MOUNTED_AFTER"), "0", "{text}");
    assert_eq!(v("WHITEOUTS_AFTER_DOWN"), "0", "{text}");
    assert_eq!(v("LAZY_INVALID"), "4", "{text}");
    assert_eq!(v("BUILT_VALID"), "0", "{text}");
    assert_eq!(v("LOCAL_AFTER"), "made here", "{text}");
    assert_eq!(v("VERIFY_ALL"), "0", "{text}");
    assert_eq!(v("ROOT_DANGLES"), "yes", "{text}");

    // Up again: the reference `down` had to cut comes back with realise,
    // and SIGTERM to `up` takes the store down as `down` does.
    server.restart();
    let mut env2 = env(&server);
    env2.push(("BUILT", v("BUILT").to_string()));
    let (seen2, text2) = in_namespace(AGAIN, &env2);
    let w = |k: &str| get(&seen2, k, &text2);
    assert_eq!(w("UP2"), "0", "{text2}");
    assert_eq!(w("REALISE2"), "0", "{text2}");
    assert_eq!(w("BUILT_REFS2").trim(), tool, "{text2}");
    assert_eq!(w("CUT_LEFT"), "0", "{text2}");
    assert_eq!(w("BUILT_RUNS"), "storeup", "{text2}");
    assert_eq!(w("MOUNTED_AFTER_TERM"), "0", "{text2}");
    assert_eq!(w("LAZY_INVALID2"), "3", "{text2}");
}

/// Runs `cmd`, which must fail saying `why`.
fn refused(cmd: &mut Command, why: &str) {
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains(why),
        "{cmd:?}: {said}"
    );
}

#[test]
fn store_up_refuses_what_cannot_work() {
    let server = Server::start();
    let f = tempfile::NamedTempFile::new().unwrap();
    refused(
        lazix()
            .args(["store", "up", "--server", &server.addr])
            .arg(f.path()),
        "is not a directory",
    );
    // Nothing from `up` to take down.
    let dir = tempfile::tempdir().unwrap();
    refused(
        lazix().args(["store", "down"]).arg(dir.path()),
        "nothing from `lazix store up` is mounted",
    );
    // A path the server lacks: refused, naming it.
    let keys = tempfile::tempdir().unwrap();
    let (_, pk) = nix_keygen(keys.path(), "k-1");
    refused(
        lazix()
            .args(["realise", "--server", &server.addr])
            .args(["--trusted-public-keys", &pk])
            .arg("/nix/store/00000000000000000000000000000000-missing"),
        "is not on the server",
    );
}
