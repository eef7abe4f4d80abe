//! Nix store paths: `/nix/store/<32 nixbase32 chars>-<name>`.

use std::fmt;

use super::nixbase32;

/// The store directory every path lives in.
pub const STORE_DIR: &str = "/nix/store";
/// Length of the nixbase32 hash part of a store path basename.
pub const HASH_PART_LEN: usize = 32;
/// Bytes of the digest a hash part encodes.
pub const DIGEST_LEN: usize = 20;
/// Longest name Nix accepts after the hash part.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a valid store path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    /// Not under `/nix/store/` (for absolute paths).
    #[error("{0:?} is not in {STORE_DIR}")]
    NotInStore(String),
    /// The basename has no `-` after a 32-character hash part.
    #[error("{0:?} is not of the form <hash>-<name>")]
    Malformed(String),
    /// The hash part is not nixbase32.
    #[error("invalid hash part {0:?}: {1}")]
    InvalidHash(String, nixbase32::Nixbase32Error),
    /// The name is empty, too long, starts with `.` or has a forbidden
    /// character.
    #[error("invalid store path name {0:?}")]
    InvalidName(String),
}

/// A validated store path, held as its 20-byte digest and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: String,
}

/// Checks a store path name: `[A-Za-z0-9+-._?=]`, 1..=211 bytes, not
/// starting with `.`.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StorePathError::InvalidName(name.to_string()))
    }
}

/// Decodes a 32-character hash part into the 20-byte digest.
pub fn parse_hash_part(hash: &str) -> Result<[u8; DIGEST_LEN], StorePathError> {
    let bytes = nixbase32::decode(hash, DIGEST_LEN)
        .map_err(|e| StorePathError::InvalidHash(hash.to_string(), e))?;
    let mut digest = [0u8; DIGEST_LEN];
    digest.copy_from_slice(&bytes);
    Ok(digest)
}

impl StorePath {
    /// Builds a store path from its parts, validating the name.
    pub fn from_parts(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(Self {
            digest,
            name: name.to_string(),
        })
    }

    /// Parses a basename `<hash>-<name>`.
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        if basename.len() < HASH_PART_LEN + 2
            || !basename.is_char_boundary(HASH_PART_LEN)
            || basename.as_bytes()[HASH_PART_LEN] != b'-'
        {
            return Err(StorePathError::Malformed(basename.to_string()));
        }
        let digest = parse_hash_part(&basename[..HASH_PART_LEN])?;
        Self::from_parts(digest, &basename[HASH_PART_LEN + 1..])
    }

    /// Parses an absolute path `/nix/store/<hash>-<name>` (a trailing `/`
    /// is tolerated, anything below the store path is not).
    pub fn from_absolute(path: &str) -> Result<Self, StorePathError> {
        let rest = path
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_string()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        Self::from_basename(rest)
    }

    /// Parses either form.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        if s.starts_with('/') {
            Self::from_absolute(s)
        } else {
            Self::from_basename(s)
        }
    }

    /// The 20-byte digest (what `GetPathInfoRequest.by_output_hash` holds).
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32-character nixbase32 hash part, the binary cache's key.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// `<hash>-<name>`.
    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}", self.basename())
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_absolute())
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.to_absolute())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let p = StorePath::from_absolute("/nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg-1.0")
            .unwrap();
        assert_eq!(p.name(), "pkg-1.0");
        assert_eq!(p.hash_part(), "xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82");
        assert_eq!(
            p.to_absolute(),
            "/nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg-1.0"
        );
        assert_eq!(StorePath::parse(&p.basename()).unwrap(), p);
    }

    #[test]
    fn rejects_bad_paths() {
        let h = "xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82";
        for bad in [
            format!("{h}-"),
            format!("{h}-.hidden"),
            format!("{h}-a/b"),
            format!("{h}-.."),
            format!("{h}-sp ace"),
            format!("{h}-{}", "x".repeat(212)),
            format!("{h}x"),
            "short".to_string(),
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-ok".to_string(),
        ] {
            assert!(StorePath::from_basename(&bad).is_err(), "{bad} accepted");
        }
        assert!(StorePath::from_absolute(&format!("/tmp/{h}-x")).is_err());
        assert!(StorePath::from_absolute(&format!("/nix/store/{h}-x/sub")).is_err());
        assert!(StorePath::from_basename(&format!("{h}-{}", "x".repeat(211))).is_ok());
    }
}
