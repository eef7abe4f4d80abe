//! Nix hash strings (`sha256:<nixbase32>` and friends) and content-address
//! (`CA:`) descriptors.

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};

use super::nixbase32;

/// A hash string Nix would not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// Unknown algorithm prefix.
    #[error("unknown hash algorithm in {0:?}")]
    UnknownAlgo(String),
    /// The digest part has the wrong length or alphabet.
    #[error("invalid digest encoding in {0:?}")]
    InvalidDigest(String),
    /// A content address that is not `fixed:[r:]ALGO:HASH` or `text:sha256:HASH`.
    #[error("invalid content address {0:?}")]
    InvalidCa(String),
}

/// The hash algorithms Nix knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// MD5, 16 bytes.
    Md5,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
    /// SHA-512, 64 bytes.
    Sha512,
}

impl HashAlgo {
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Nix's name of the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "md5" => HashAlgo::Md5,
            "sha1" => HashAlgo::Sha1,
            "sha256" => HashAlgo::Sha256,
            "sha512" => HashAlgo::Sha512,
            _ => return None,
        })
    }
}

/// Decodes a digest written in nixbase32, hex or base64, told apart by
/// length as Nix does.
pub fn decode_digest(algo: HashAlgo, s: &str) -> Result<Vec<u8>, HashError> {
    let n = algo.digest_len();
    let bad = || HashError::InvalidDigest(s.to_string());
    if s.len() == nixbase32::encoded_len(n) {
        nixbase32::decode(s, n).map_err(|_| bad())
    } else if s.len() == n * 2 {
        HEXLOWER_PERMISSIVE.decode(s.as_bytes()).map_err(|_| bad())
    } else if s.len() == BASE64.encode_len(n) {
        let v = BASE64.decode(s.as_bytes()).map_err(|_| bad())?;
        if v.len() == n {
            Ok(v)
        } else {
            Err(bad())
        }
    } else {
        Err(bad())
    }
}

/// Parses `sha256:<digest>` (or SRI `sha256-<base64>`) into 32 bytes.
pub fn parse_sha256(s: &str) -> Result<[u8; 32], HashError> {
    let rest = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("sha256-"))
        .ok_or_else(|| HashError::UnknownAlgo(s.to_string()))?;
    let v = decode_digest(HashAlgo::Sha256, rest)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&v);
    Ok(out)
}

/// Renders `sha256:<nixbase32>`, as narinfo files hold NarHash.
pub fn format_sha256(digest: &[u8; 32]) -> String {
    format!("sha256:{}", nixbase32::encode(digest))
}

/// How a content-addressed path was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaMethod {
    /// `text:` (derivation files and `builtins.toFile`).
    Text,
    /// `fixed:` over the flat file contents.
    Flat,
    /// `fixed:r:` over the NAR serialisation.
    Nar,
}

/// A content address (`CA:` field): method, algorithm and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentAddress {
    /// How the content was hashed.
    pub method: CaMethod,
    /// Which algorithm.
    pub algo: HashAlgo,
    /// The digest bytes.
    pub digest: Vec<u8>,
}

impl ContentAddress {
    /// Parses `text:sha256:…`, `fixed:ALGO:…` or `fixed:r:ALGO:…`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let bad = || HashError::InvalidCa(s.to_string());
        let (method, rest) = if let Some(r) = s.strip_prefix("text:") {
            (CaMethod::Text, r)
        } else if let Some(r) = s.strip_prefix("fixed:r:") {
            (CaMethod::Nar, r)
        } else if let Some(r) = s.strip_prefix("fixed:") {
            (CaMethod::Flat, r)
        } else {
            return Err(bad());
        };
        let (algo, digest) = rest.split_once(':').ok_or_else(bad)?;
        let algo = HashAlgo::parse(algo).ok_or_else(|| HashError::UnknownAlgo(s.to_string()))?;
        if method == CaMethod::Text && algo != HashAlgo::Sha256 {
            return Err(bad());
        }
        let digest = decode_digest(algo, digest)?;
        Ok(Self {
            method,
            algo,
            digest,
        })
    }

    /// Renders the form Nix writes (digest in nixbase32).
    pub fn to_nix_string(&self) -> String {
        let prefix = match self.method {
            CaMethod::Text => "text:",
            CaMethod::Flat => "fixed:",
            CaMethod::Nar => "fixed:r:",
        };
        format!(
            "{prefix}{}:{}",
            self.algo.name(),
            nixbase32::encode(&self.digest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_forms() {
        let b32 = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        let hex = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let d = parse_sha256(b32).unwrap();
        assert_eq!(parse_sha256(hex).unwrap(), d);
        assert_eq!(parse_sha256(sri).unwrap(), d);
        assert_eq!(format_sha256(&d), b32);
        assert!(parse_sha256("md5:abc").is_err());
        assert!(parse_sha256("sha256:abc").is_err());
    }

    #[test]
    fn content_addresses() {
        for s in [
            "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "fixed:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "text:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ] {
            assert_eq!(ContentAddress::parse(s).unwrap().to_nix_string(), s);
        }
        assert!(ContentAddress::parse("text:sha1:abc").is_err());
        assert!(ContentAddress::parse("weird:sha256:abc").is_err());
    }
}
