//! The Nix formats against real Nix 2.8: key files, signatures (ed25519 is
//! deterministic, so ours must equal Nix's byte for byte), narinfo files
//! written by `nix copy`, and NarHash in nixbase32.

mod common;

use common::*;
use lazix_castore::nix::narinfo::NarInfo;
use lazix_castore::nix::signing::{PublicKey, SecretKey, Signature};
use lazix_castore::nix::store_path::StorePath;

#[test]
fn keys_signatures_and_narinfo_match_real_nix() {
    let dir = tempfile::tempdir().unwrap();
    let sk_file = dir.path().join("sk");
    let pk_file = dir.path().join("pk");
    // A key name unique to this run: the path may carry signatures from
    // earlier runs under other keys.
    let key_name = format!(
        "lazix-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    run(nix_cmd("nix-store")
        .args(["--generate-binary-cache-key", &key_name])
        .arg(&sk_file)
        .arg(&pk_file));
    let sk = SecretKey::parse(&std::fs::read_to_string(&sk_file).unwrap()).unwrap();
    let pk = PublicKey::parse(&std::fs::read_to_string(&pk_file).unwrap()).unwrap();
    assert_eq!(sk.public().to_nix_string(), pk.to_nix_string());
    assert_eq!(
        sk.to_nix_string(),
        std::fs::read_to_string(&sk_file).unwrap().trim()
    );

    // A path with a reference, signed by real Nix.
    let top = nix_build(
        r#"
let
  dep = derivation { name = "lazix-sig-dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "/bin/echo dep > $out" ]; };
in derivation { name = "lazix-sig-top"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "/bin/echo ${dep} > $out" ]; }
"#,
    );
    run(nix_cmd("nix")
        .args(["store", "sign", "--key-file"])
        .arg(&sk_file)
        .arg(&top));
    let info = nix_path_info(&top);
    let nix_sig = info["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Signature::parse(s.as_str().unwrap()).unwrap())
        .find(|s| s.name == key_name)
        .expect("Nix signed the path");
    let path = StorePath::from_absolute(&top).unwrap();
    let refs: Vec<StorePath> = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| StorePath::from_absolute(r.as_str().unwrap()).unwrap())
        .collect();
    let nar_hash =
        lazix_castore::nix::hash::parse_sha256(info["narHash"].as_str().unwrap()).unwrap();
    let fp = lazix_castore::nix::signing::fingerprint(
        &path,
        &nar_hash,
        info["narSize"].as_u64().unwrap(),
        &refs,
    );
    assert!(
        pk.verify(&fp, &nix_sig),
        "Nix's signature verifies under our code"
    );
    assert_eq!(
        sk.sign(&fp),
        nix_sig,
        "our signature is byte-identical to Nix's"
    );

    // The narinfo Nix writes into a file:// cache parses, and renders back
    // to the same text; its fingerprint is the one we computed.
    let cache = dir.path().join("cache");
    run(nix_cmd("nix")
        .args(["copy", "--to"])
        .arg(format!("file://{}?compression=zstd", cache.display()))
        .arg(&top));
    let text =
        std::fs::read_to_string(cache.join(format!("{}.narinfo", path.hash_part()))).unwrap();
    let ni = NarInfo::parse(&text).unwrap();
    assert_eq!(ni.store_path, path);
    assert_eq!(ni.nar_hash, nar_hash);
    assert_eq!(ni.fingerprint(), fp);
    assert!(ni.signatures.iter().any(|s| pk.verify(&fp, s)));
    assert_eq!(ni.render(), text, "narinfo renders back byte for byte");
}
