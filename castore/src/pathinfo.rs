//! PathInfo: a store path's root node plus its Nix metadata (NAR hash and
//! size, references, signatures, deriver, content address).

use bytes::Bytes;
use lazix_proto::store as pb;

use crate::error::StoreError;
use crate::nix::hash::{CaMethod, ContentAddress, HashAlgo};
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::Signature;
use crate::nix::store_path::StorePath;
use crate::node::Node;

/// Everything lazix knows about one store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path.
    pub store_path: StorePath,
    /// Its root node.
    pub node: Node,
    /// Referenced store paths.
    pub references: Vec<StorePath>,
    /// Size of the NAR.
    pub nar_size: u64,
    /// sha256 of the NAR.
    pub nar_sha256: [u8; 32],
    /// Signatures over the fingerprint Nix signs (narinfo `Sig:` lines).
    pub signatures: Vec<Signature>,
    /// Signatures over the root fingerprint (see [`crate::trust`]): what a
    /// lazy reader verifies, since it never computes the NAR hash.
    pub root_signatures: Vec<Signature>,
    /// The derivation that produced it.
    pub deriver: Option<StorePath>,
    /// Content address of CA paths.
    pub ca: Option<ContentAddress>,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

fn ca_to_proto(ca: &ContentAddress) -> pb::nar_info::Ca {
    use pb::nar_info::ca::Hash;
    let t = match (ca.method, ca.algo) {
        (CaMethod::Nar, HashAlgo::Sha256) => Hash::NarSha256,
        (CaMethod::Nar, HashAlgo::Sha1) => Hash::NarSha1,
        (CaMethod::Nar, HashAlgo::Sha512) => Hash::NarSha512,
        (CaMethod::Nar, HashAlgo::Md5) => Hash::NarMd5,
        (CaMethod::Text, _) => Hash::TextSha256,
        (CaMethod::Flat, HashAlgo::Sha1) => Hash::FlatSha1,
        (CaMethod::Flat, HashAlgo::Md5) => Hash::FlatMd5,
        (CaMethod::Flat, HashAlgo::Sha256) => Hash::FlatSha256,
        (CaMethod::Flat, HashAlgo::Sha512) => Hash::FlatSha512,
    };
    pb::nar_info::Ca {
        r#type: t as i32,
        digest: Bytes::copy_from_slice(&ca.digest),
    }
}

fn ca_from_proto(ca: &pb::nar_info::Ca) -> Result<ContentAddress, StoreError> {
    use pb::nar_info::ca::Hash;
    let t = Hash::try_from(ca.r#type).map_err(|_| invalid("unknown CA hash type"))?;
    let (method, algo) = match t {
        Hash::NarSha256 => (CaMethod::Nar, HashAlgo::Sha256),
        Hash::NarSha1 => (CaMethod::Nar, HashAlgo::Sha1),
        Hash::NarSha512 => (CaMethod::Nar, HashAlgo::Sha512),
        Hash::NarMd5 => (CaMethod::Nar, HashAlgo::Md5),
        Hash::TextSha256 => (CaMethod::Text, HashAlgo::Sha256),
        Hash::FlatSha1 => (CaMethod::Flat, HashAlgo::Sha1),
        Hash::FlatMd5 => (CaMethod::Flat, HashAlgo::Md5),
        Hash::FlatSha256 => (CaMethod::Flat, HashAlgo::Sha256),
        Hash::FlatSha512 => (CaMethod::Flat, HashAlgo::Sha512),
    };
    if ca.digest.len() != algo.digest_len() {
        return Err(invalid("CA digest has the wrong length"));
    }
    Ok(ContentAddress {
        method,
        algo,
        digest: ca.digest.to_vec(),
    })
}

fn signatures_to_proto(sigs: &[Signature]) -> Vec<pb::nar_info::Signature> {
    sigs.iter()
        .map(|s| pb::nar_info::Signature {
            name: s.name.clone(),
            data: Bytes::copy_from_slice(&s.bytes),
        })
        .collect()
}

fn signatures_from_proto(sigs: &[pb::nar_info::Signature]) -> Result<Vec<Signature>, StoreError> {
    sigs.iter()
        .map(|s| {
            Ok(Signature {
                name: s.name.clone(),
                bytes: s
                    .data
                    .as_ref()
                    .try_into()
                    .map_err(|_| invalid("signature must be 64 bytes"))?,
            })
        })
        .collect()
}

impl PathInfo {
    /// `store_path` with root `node` and nothing else known yet: no
    /// references, NAR hash or size, signatures, deriver or content
    /// address (set the fields that are known).
    pub fn of_root(store_path: StorePath, node: Node) -> Self {
        Self {
            store_path,
            node,
            references: vec![],
            nar_size: 0,
            nar_sha256: [0; 32],
            signatures: vec![],
            root_signatures: vec![],
            deriver: None,
            ca: None,
        }
    }

    /// Converts to the snix-compatible message.
    pub fn to_proto(&self) -> pb::PathInfo {
        pb::PathInfo {
            entry: Some(self.node.to_entry(self.store_path.basename().into())),
            references: self
                .references
                .iter()
                .map(|r| Bytes::copy_from_slice(r.digest()))
                .collect(),
            narinfo: Some(pb::NarInfo {
                nar_size: self.nar_size,
                nar_sha256: Bytes::copy_from_slice(&self.nar_sha256),
                signatures: signatures_to_proto(&self.signatures),
                reference_names: self.references.iter().map(|r| r.basename()).collect(),
                // snix's pathinfo.proto: the deriver's name without `.drv`.
                deriver: self.deriver.as_ref().map(|d| pb::StorePath {
                    name: d
                        .name()
                        .strip_suffix(".drv")
                        .unwrap_or(d.name())
                        .to_string(),
                    digest: Bytes::copy_from_slice(d.digest()),
                }),
                ca: self.ca.as_ref().map(ca_to_proto),
            }),
            root_signatures: signatures_to_proto(&self.root_signatures),
        }
    }

    /// Validates a received message: the root's name is a store path
    /// basename, references and their names agree, hashes have the right
    /// lengths.
    pub fn try_from_proto(p: &pb::PathInfo) -> Result<Self, StoreError> {
        let entry = p
            .entry
            .as_ref()
            .ok_or_else(|| invalid("PathInfo without entry"))?;
        let (name, node) = Node::from_entry(entry)?;
        let name = std::str::from_utf8(&name).map_err(|_| invalid("root name is not UTF-8"))?;
        let store_path =
            StorePath::from_basename(name).map_err(|e| invalid(format!("root name: {e}")))?;
        let ni = p
            .narinfo
            .as_ref()
            .ok_or_else(|| invalid("PathInfo without narinfo"))?;
        if ni.reference_names.len() != p.references.len() {
            return Err(invalid("references and reference_names differ in length"));
        }
        let mut references = Vec::with_capacity(p.references.len());
        for (digest, name) in p.references.iter().zip(&ni.reference_names) {
            let r =
                StorePath::from_basename(name).map_err(|e| invalid(format!("reference: {e}")))?;
            if r.digest().as_slice() != digest.as_ref() {
                return Err(invalid(format!(
                    "reference {name} does not match its digest"
                )));
            }
            references.push(r);
        }
        let nar_sha256: [u8; 32] = ni
            .nar_sha256
            .as_ref()
            .try_into()
            .map_err(|_| invalid("nar_sha256 must be 32 bytes"))?;
        let signatures = signatures_from_proto(&ni.signatures)?;
        let root_signatures = signatures_from_proto(&p.root_signatures)?;
        let deriver = ni
            .deriver
            .as_ref()
            .map(|d| {
                let digest: [u8; 20] = d
                    .digest
                    .as_ref()
                    .try_into()
                    .map_err(|_| invalid("deriver digest must be 20 bytes"))?;
                // Without `.drv` as snix sends it; with it as lazix sent it
                // before (stored PathInfos keep that form).
                let name = if d.name.ends_with(".drv") {
                    d.name.clone()
                } else {
                    format!("{}.drv", d.name)
                };
                StorePath::from_parts(digest, &name).map_err(|e| invalid(format!("deriver: {e}")))
            })
            .transpose()?;
        let ca = ni.ca.as_ref().map(ca_from_proto).transpose()?;
        Ok(Self {
            store_path,
            node,
            references,
            nar_size: ni.nar_size,
            nar_sha256,
            signatures,
            root_signatures,
            deriver,
            ca,
        })
    }

    /// The fingerprint Nix signs.
    pub fn fingerprint(&self) -> String {
        crate::nix::signing::fingerprint(
            &self.store_path,
            &self.nar_sha256,
            self.nar_size,
            &self.references,
        )
    }

    /// A narinfo describing this path, whose NAR is served at `url` with
    /// `compression`.
    pub fn to_narinfo(&self, url: String, compression: &str) -> NarInfo {
        NarInfo {
            store_path: self.store_path.clone(),
            url,
            compression: Some(compression.to_string()),
            file_hash: None,
            file_size: None,
            nar_hash: self.nar_sha256,
            nar_size: self.nar_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            signatures: self.signatures.clone(),
            ca: self.ca.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::B3Digest;

    #[test]
    fn proto_roundtrip_and_validation() {
        let info = PathInfo {
            store_path: StorePath::parse("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg").unwrap(),
            node: Node::Directory {
                digest: B3Digest::of(b"x"),
                size: 3,
            },
            references: vec![StorePath::parse("8rxrfg5hidkgcrwp9xaf9fclvf8bpsak-dep").unwrap()],
            nar_size: 120,
            nar_sha256: [3u8; 32],
            signatures: vec![Signature {
                name: "k".into(),
                bytes: [9u8; 64],
            }],
            root_signatures: vec![Signature {
                name: "r".into(),
                bytes: [7u8; 64],
            }],
            deriver: Some(StorePath::parse("01zcn12dybxfj24kywij7jli2a7f9rf4-pkg.drv").unwrap()),
            ca: Some(
                ContentAddress::parse(
                    "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
                )
                .unwrap(),
            ),
        };
        let p = info.to_proto();
        assert_eq!(PathInfo::try_from_proto(&p).unwrap(), info);
        // The deriver as snix's proto says: its name without `.drv`; the
        // older form with it is still read.
        assert_eq!(
            p.narinfo.as_ref().unwrap().deriver.as_ref().unwrap().name,
            "pkg"
        );
        let mut old_form = p.clone();
        old_form
            .narinfo
            .as_mut()
            .unwrap()
            .deriver
            .as_mut()
            .unwrap()
            .name = "pkg.drv".into();
        assert_eq!(PathInfo::try_from_proto(&old_form).unwrap(), info);

        let mut bad = p.clone();
        bad.references[0] = vec![0u8; 20].into();
        assert!(PathInfo::try_from_proto(&bad).is_err());
        let mut bad = p.clone();
        bad.narinfo.as_mut().unwrap().nar_sha256 = vec![0u8; 31].into();
        assert!(PathInfo::try_from_proto(&bad).is_err());
        let mut bad = p;
        bad.entry = Some(info.node.to_entry("not-a-store-path".into()));
        assert!(PathInfo::try_from_proto(&bad).is_err());
    }
}
