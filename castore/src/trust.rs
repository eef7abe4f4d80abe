//! Signed roots: what binds a store path to the bytes a lazy reader returns.
//!
//! Nix signs a fingerprint over the NAR hash, which a lazy reader never
//! computes (it reads a few chunks of a few files). lazix signs the *root
//! fingerprint* instead (ed25519, Nix key files), which binds the store
//! path to everything a reader trusts on the way to a byte:
//!
//! ```text
//! lazix-root-1;<store path>;<root>;sha256:<nixbase32 NarHash>;<NarSize>;<references>;<chunk lists>
//! ```
//!
//! - `<root>`: the castore root node, `d:<blake3 hex>:<size>` (a directory:
//!   its Merkle digest covers every directory, file digest and size below
//!   it), `f:<blake3 hex>:<size>:<x|->` or `l:<hex of the target>`;
//! - `<references>`: comma-joined absolute store paths, as Nix writes them;
//! - `<chunk lists>`: [`ChunkListsDigest`], the BLAKE3 over every
//!   multi-chunk file's chunk list below the root (sorted by file digest):
//!   a chunk's digest proves its bytes, the signed list proves its place in
//!   the file, so even a reordered list of genuine chunks is caught before
//!   a byte of it is returned.
//!
//! Several signatures per path (keys rotate with an overlap); a reader
//! accepts a path if any of them is by a key it trusts.

use std::collections::BTreeMap;

use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::nix::nixbase32;
use crate::nix::signing::{KeyError, PublicKey, SecretKey, Signature};
use crate::node::Node;
use crate::pathinfo::PathInfo;

/// Version tag of the root fingerprint.
pub const ROOT_FINGERPRINT_VERSION: &str = "lazix-root-1";

/// The keys a reader trusts, in Nix's `trusted-public-keys` syntax
/// (`NAME:KEY …`, whitespace-separated).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// Parses `NAME:KEY NAME2:KEY2 …`; at least one key.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let keys = s
            .split_whitespace()
            .map(PublicKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::MissingName);
        }
        Ok(Self(keys))
    }

    /// The names of the keys.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(PublicKey::name).collect()
    }
}

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The path carries no root signature at all.
    #[error("{0} has no root signature")]
    Unsigned(String),
    /// None of its root signatures is a valid one by a trusted key.
    #[error("{path} has no valid root signature by a trusted key (signed by: {signed_by})")]
    NoTrustedSignature {
        /// The store path.
        path: String,
        /// The key names its signatures claim.
        signed_by: String,
    },
    /// None of its narinfo signatures (Nix's, over the NAR hash) is a
    /// valid one by a trusted key.
    #[error("{path} has no valid narinfo signature by a trusted key (signed by: {signed_by})")]
    NoTrustedNarinfoSignature {
        /// The store path.
        path: String,
        /// The key names its signatures claim (empty: unsigned).
        signed_by: String,
    },
}

/// The chunk list of one file as the fingerprint covers it.
pub fn chunk_list_digest(list: &[ChunkMeta]) -> B3Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(list.len() as u64).to_le_bytes());
    for c in list {
        h.update(c.digest.as_bytes());
        h.update(&c.size.to_le_bytes());
    }
    B3Digest::from(h.finalize())
}

/// The digests of every multi-chunk file's chunk list below a root, by
/// file digest, and the one digest over them that a root signature covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkListsDigest {
    /// Each listed file's [`chunk_list_digest`].
    pub lists: BTreeMap<B3Digest, B3Digest>,
}

impl ChunkListsDigest {
    /// From the chunk lists of a root's files (files without a list are
    /// one chunk under their own digest: their digest proves them).
    pub fn of<'a>(lists: impl IntoIterator<Item = (&'a B3Digest, &'a Vec<ChunkMeta>)>) -> Self {
        Self {
            lists: lists
                .into_iter()
                .map(|(blob, list)| (*blob, chunk_list_digest(list)))
                .collect(),
        }
    }

    /// Bytes of one entry of [`ChunkListsDigest::to_records`].
    pub const RECORD_LEN: usize = 64;

    /// The entries as records (file digest, list digest), ascending by
    /// file digest: the *manifest* a store keeps per root, so a reader
    /// checks the root signature with one small answer and fetches each
    /// file's list only when it reads the file.
    pub fn to_records(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lists.len() * Self::RECORD_LEN);
        for (blob, list) in &self.lists {
            out.extend_from_slice(blob.as_bytes());
            out.extend_from_slice(list.as_bytes());
        }
        out
    }

    /// Reads [`ChunkListsDigest::to_records`]: whole records, strictly
    /// ascending, at most [`crate::limits::MAX_NODES`] of them.
    pub fn from_records(records: &[u8]) -> Result<Self, crate::error::StoreError> {
        let bad =
            |why: &str| crate::error::StoreError::Corrupt(format!("chunk-list manifest: {why}"));
        if !records.len().is_multiple_of(Self::RECORD_LEN) {
            return Err(bad("not a whole number of records"));
        }
        if (records.len() / Self::RECORD_LEN) as u64 > crate::limits::MAX_NODES {
            return Err(bad("more files than a store path may have"));
        }
        let mut lists = BTreeMap::new();
        let mut last: Option<B3Digest> = None;
        for r in records.chunks_exact(Self::RECORD_LEN) {
            let blob = B3Digest::try_from(&r[..32]).map_err(|_| bad("bad digest"))?;
            let list = B3Digest::try_from(&r[32..]).map_err(|_| bad("bad digest"))?;
            if last.is_some_and(|l| l >= blob) {
                return Err(bad("records out of order"));
            }
            last = Some(blob);
            lists.insert(blob, list);
        }
        Ok(Self { lists })
    }

    /// The digest the fingerprint names.
    pub fn digest(&self) -> B3Digest {
        let mut h = blake3::Hasher::new();
        h.update(&(self.lists.len() as u64).to_le_bytes());
        for (blob, list) in &self.lists {
            h.update(blob.as_bytes());
            h.update(list.as_bytes());
        }
        B3Digest::from(h.finalize())
    }
}

fn node_field(node: &Node) -> String {
    match node {
        Node::Directory { digest, size } => format!("d:{}:{size}", digest.to_hex()),
        Node::File {
            digest,
            size,
            executable,
        } => format!(
            "f:{}:{size}:{}",
            digest.to_hex(),
            if *executable { "x" } else { "-" }
        ),
        Node::Symlink { target } => format!("l:{}", hex::encode(target)),
    }
}

/// The bytes a root signature signs.
pub fn root_fingerprint(info: &PathInfo, lists: &ChunkListsDigest) -> String {
    let refs: Vec<String> = info.references.iter().map(|r| r.to_absolute()).collect();
    format!(
        "{ROOT_FINGERPRINT_VERSION};{};{};sha256:{};{};{};{}",
        info.store_path.to_absolute(),
        node_field(&info.node),
        nixbase32::encode(&info.nar_sha256),
        info.nar_size,
        refs.join(","),
        lists.digest().to_hex()
    )
}

/// A root signature of `info` (whose files have `lists`) by `key`.
pub fn sign_root(info: &PathInfo, lists: &ChunkListsDigest, key: &SecretKey) -> Signature {
    key.sign(&root_fingerprint(info, lists))
}

/// The name of a trusted key whose root signature on `info` (with
/// `lists`) is valid.
pub fn verify_root(
    info: &PathInfo,
    lists: &ChunkListsDigest,
    keys: &TrustedKeys,
) -> Result<String, TrustError> {
    let path = info.store_path.to_absolute();
    if info.root_signatures.is_empty() {
        return Err(TrustError::Unsigned(path));
    }
    let fingerprint = root_fingerprint(info, lists);
    for sig in &info.root_signatures {
        if let Some(key) = keys.0.iter().find(|k| k.verify(&fingerprint, sig)) {
            return Ok(key.name().to_string());
        }
    }
    let signed_by: Vec<&str> = info
        .root_signatures
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    Err(TrustError::NoTrustedSignature {
        path,
        signed_by: signed_by.join(", "),
    })
}

/// The name of a trusted key whose Nix signature (the narinfo `Sig:`,
/// over [`PathInfo::fingerprint`]) on `info` is valid: what Nix itself
/// checks before it takes a path from a substituter.
pub fn verify_narinfo(info: &PathInfo, keys: &TrustedKeys) -> Result<String, TrustError> {
    let fingerprint = info.fingerprint();
    for sig in &info.signatures {
        if let Some(key) = keys.0.iter().find(|k| k.verify(&fingerprint, sig)) {
            return Ok(key.name().to_string());
        }
    }
    let signed_by: Vec<&str> = info.signatures.iter().map(|s| s.name.as_str()).collect();
    Err(TrustError::NoTrustedNarinfoSignature {
        path: info.store_path.to_absolute(),
        signed_by: if signed_by.is_empty() {
            "nobody".to_string()
        } else {
            signed_by.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::store_path::StorePath;

    fn info(node: Node) -> PathInfo {
        PathInfo {
            store_path: StorePath::parse("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-signed").unwrap(),
            node,
            references: vec![StorePath::parse("8rxrfg5hidkgcrwp9xaf9fclvf8bpsak-dep").unwrap()],
            nar_size: 4096,
            nar_sha256: [5; 32],
            signatures: vec![],
            root_signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    fn lists() -> (B3Digest, Vec<ChunkMeta>) {
        let a = ChunkMeta::of(b"first chunk");
        let b = ChunkMeta::of(b"second chunk");
        (B3Digest::of(b"the file"), vec![a, b])
    }

    #[test]
    fn a_root_signature_verifies_under_its_key_and_nothing_else() {
        let old = SecretKey::generate("cache-1");
        let new = SecretKey::generate("cache-2");
        let stranger = SecretKey::generate("stranger");
        let root = Node::Directory {
            digest: B3Digest::of(b"root"),
            size: 3,
        };
        let (blob, list) = lists();
        let digests = ChunkListsDigest::of([(&blob, &list)]);
        let mut signed = info(root.clone());
        assert!(matches!(
            verify_root(&signed, &digests, &TrustedKeys(vec![old.public()])),
            Err(TrustError::Unsigned(_))
        ));
        signed.root_signatures = vec![
            sign_root(&signed, &digests, &old),
            sign_root(&signed, &digests, &new),
        ];
        // Either key of a rotation suffices.
        for key in [&old, &new] {
            assert_eq!(
                verify_root(&signed, &digests, &TrustedKeys(vec![key.public()])).unwrap(),
                key.public().name()
            );
        }
        assert!(verify_root(&signed, &digests, &TrustedKeys(vec![stranger.public()])).is_err());

        // Anything the fingerprint covers, changed, fails.
        let mut swapped = signed.clone();
        swapped.node = Node::Directory {
            digest: B3Digest::of(b"another tree"),
            size: 3,
        };
        let mut renamed = signed.clone();
        renamed.nar_sha256 = [6; 32];
        let mut no_refs = signed.clone();
        no_refs.references.clear();
        let trusted = TrustedKeys(vec![old.public()]);
        for (what, forged) in [
            ("root", &swapped),
            ("NarHash", &renamed),
            ("references", &no_refs),
        ] {
            assert!(verify_root(forged, &digests, &trusted).is_err(), "{what}");
        }
        // A reordered chunk list changes the lists digest.
        let reordered = vec![list[1], list[0]];
        let other = ChunkListsDigest::of([(&blob, &reordered)]);
        assert_ne!(other.digest(), digests.digest());
        assert!(verify_root(&signed, &other, &trusted).is_err());
        // A forged signature (right name, wrong bytes).
        let mut forged = signed.clone();
        forged.root_signatures = vec![Signature {
            name: "cache-1".into(),
            bytes: [1; 64],
        }];
        assert!(matches!(
            verify_root(&forged, &digests, &trusted),
            Err(TrustError::NoTrustedSignature { .. })
        ));
    }

    #[test]
    fn manifests_read_back_as_written_and_refuse_damage() {
        let (blob, list) = lists();
        let other = B3Digest::of(b"another file");
        let digests = ChunkListsDigest::of([(&blob, &list), (&other, &list[..1].to_vec())]);
        let records = digests.to_records();
        assert_eq!(records.len(), 2 * ChunkListsDigest::RECORD_LEN);
        assert_eq!(ChunkListsDigest::from_records(&records).unwrap(), digests);
        assert!(ChunkListsDigest::from_records(&records[..100]).is_err());
        let mut swapped = records[64..].to_vec();
        swapped.extend_from_slice(&records[..64]);
        assert!(ChunkListsDigest::from_records(&swapped).is_err());
        let mut twice = records[..64].to_vec();
        twice.extend_from_slice(&records[..64]);
        assert!(ChunkListsDigest::from_records(&twice).is_err());
        assert_eq!(
            ChunkListsDigest::from_records(&[]).unwrap(),
            ChunkListsDigest::default()
        );
    }

    #[test]
    fn trusted_keys_parse_nix_syntax() {
        let a = SecretKey::generate("a").public().to_nix_string();
        let b = SecretKey::generate("b").public().to_nix_string();
        let keys = TrustedKeys::parse(&format!("  {a}\n {b} ")).unwrap();
        assert_eq!(keys.names(), vec!["a", "b"]);
        assert!(TrustedKeys::parse("").is_err());
        assert!(TrustedKeys::parse("nonsense").is_err());
    }

    #[test]
    fn a_narinfo_signature_verifies_over_nix_fingerprint_only() {
        let key = SecretKey::generate("cache-1");
        let stranger = SecretKey::generate("stranger");
        let keys = TrustedKeys::parse(&key.public().to_nix_string()).unwrap();
        let mut signed = info(Node::Symlink {
            target: b"x".to_vec().into(),
        });
        assert!(matches!(
            verify_narinfo(&signed, &keys),
            Err(TrustError::NoTrustedNarinfoSignature { signed_by, .. }) if signed_by == "nobody"
        ));
        signed.signatures = vec![stranger.sign(&signed.fingerprint())];
        assert!(verify_narinfo(&signed, &keys).is_err());
        signed.signatures.push(key.sign(&signed.fingerprint()));
        assert_eq!(verify_narinfo(&signed, &keys).unwrap(), "cache-1");
        // Another NAR hash under the same signature: refused.
        signed.nar_sha256 = [6; 32];
        assert!(verify_narinfo(&signed, &keys).is_err());
    }
}
