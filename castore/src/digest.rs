//! BLAKE3 digests: the address of every chunk, blob and directory.

use std::fmt;

/// A 32-byte BLAKE3 digest. Chunks, blobs and directories are all addressed
/// by one, so equal content is stored once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; 32]);

/// A digest of the wrong length arrived (e.g. in a protobuf message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid BLAKE3 digest length {0}, expected 32")]
pub struct InvalidDigestLength(pub usize);

impl B3Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as used in storage keys and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl From<[u8; 32]> for B3Digest {
    fn from(value: [u8; 32]) -> Self {
        Self(value)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(value: blake3::Hash) -> Self {
        Self(*value.as_bytes())
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = InvalidDigestLength;
    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        let arr: [u8; 32] = value
            .try_into()
            .map_err(|_| InvalidDigestLength(value.len()))?;
        Ok(Self(arr))
    }
}

impl TryFrom<&bytes::Bytes> for B3Digest {
    type Error = InvalidDigestLength;
    fn try_from(value: &bytes::Bytes) -> Result<Self, Self::Error> {
        Self::try_from(value.as_ref())
    }
}

impl From<B3Digest> for bytes::Bytes {
    fn from(value: B3Digest) -> Self {
        bytes::Bytes::copy_from_slice(&value.0)
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.to_hex())
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hashes a [`B3Digest`] key by taking its first 8 bytes: digests are
/// already uniformly random, so hash maps and caches keyed by them need no
/// further mixing (SipHash showed up in profiles of the render path).
#[derive(Clone, Copy, Default)]
pub struct DigestKeyHasher(u64);

impl std::hash::Hasher for DigestKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Fold every write in, so other key types still hash correctly.
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(buf);
        }
    }
}

/// `BuildHasher` for [`DigestKeyHasher`].
pub type DigestKeyBuildHasher = std::hash::BuildHasherDefault<DigestKeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_length_check() {
        let d = B3Digest::of(b"hello");
        assert_eq!(B3Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(
            B3Digest::try_from(&[0u8; 31][..]),
            Err(InvalidDigestLength(31))
        );
        // Known BLAKE3 vector: the empty input.
        assert_eq!(
            B3Digest::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
