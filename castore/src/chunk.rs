//! Chunks: the unit of content addressing and deduplication. A chunk is
//! verified by BLAKE3 of its raw bytes; chunks rest and travel compressed
//! together in frames (see [`crate::frame`]).

use bytes::Bytes;

use crate::digest::B3Digest;
use crate::error::StoreError;

/// Largest chunk accepted from anyone (a bound on memory per chunk; the
/// chunker's maximum is far below it).
pub const MAX_CHUNK_SIZE: u64 = 8 * 1024 * 1024;

/// zstd level for frames at rest and in transfer: level 3 is zstd's
/// default balance (fast enough to compress while ingesting at disk speed).
pub const ZSTD_LEVEL: i32 = 3;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(checksummed(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context")));
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context"));
}

/// A compressor whose frames end in zstd's content checksum (see
/// [`crate::frame::Frame::read_back`]: what lets a server skip BLAKE3 on
/// frames it stored itself).
fn checksummed(mut c: zstd::bulk::Compressor<'static>) -> zstd::bulk::Compressor<'static> {
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .expect("zstd checksum flag");
    c
}

/// zstd-compresses bytes with a per-thread context (creating a context
/// per call costs more than compressing a small input).
pub fn compress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| c.borrow_mut().compress(raw))
}

/// Decompresses one frame of at most `capacity` bytes with a per-thread
/// context.
pub fn decompress(frame: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| d.borrow_mut().decompress(frame, capacity))
}

/// The bytes of a chunk as stored or sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkPayload {
    /// Uncompressed, not yet checked.
    Raw(Bytes),
    /// Raw bytes this process has already checked against the digest (e.g.
    /// held in a decoded-chunk cache). Never built from received data:
    /// decoding it skips the hash.
    Verified(Bytes),
}

/// A chunk: digest and raw size, plus its payload in some encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// BLAKE3 of the raw bytes.
    pub digest: B3Digest,
    /// Length of the raw bytes.
    pub size: u64,
    /// The bytes in their encoding.
    pub payload: ChunkPayload,
}

/// A chunk's place in a blob: digest and raw size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkMeta {
    /// BLAKE3 of the chunk's bytes.
    pub digest: B3Digest,
    /// Its length.
    pub size: u64,
}

impl ChunkMeta {
    /// The meta of a chunk with these bytes (hashes them).
    pub fn of(data: &[u8]) -> Self {
        Self {
            digest: B3Digest::of(data),
            size: data.len() as u64,
        }
    }
}

impl Chunk {
    /// A raw chunk from its bytes (computes the digest).
    pub fn from_raw(data: Bytes) -> Self {
        Self {
            digest: B3Digest::of(&data),
            size: data.len() as u64,
            payload: ChunkPayload::Raw(data),
        }
    }

    /// Bytes of the payload as it is (compressed or not).
    pub fn payload_len(&self) -> u64 {
        match &self.payload {
            ChunkPayload::Raw(b) | ChunkPayload::Verified(b) => b.len() as u64,
        }
    }

    /// The raw bytes, after checking size and BLAKE3 against the digest
    /// (unless already verified); a mismatch is [`StoreError::Corrupt`], never wrong bytes.
    pub fn decode_verified(&self) -> Result<Bytes, StoreError> {
        if self.size > MAX_CHUNK_SIZE {
            return Err(StoreError::Invalid(format!(
                "chunk {} claims {} bytes, over the limit of {MAX_CHUNK_SIZE}",
                self.digest, self.size
            )));
        }
        let raw: Bytes = match &self.payload {
            ChunkPayload::Verified(b) => return Ok(b.clone()),
            ChunkPayload::Raw(b) => b.clone(),
        };
        if raw.len() as u64 != self.size {
            return Err(StoreError::Corrupt(format!(
                "chunk {}: {} bytes, expected {}",
                self.digest,
                raw.len(),
                self.size
            )));
        }
        if B3Digest::of(&raw) != self.digest {
            return Err(StoreError::Corrupt(format!(
                "chunk {}: BLAKE3 mismatch",
                self.digest
            )));
        }
        Ok(raw)
    }
}

impl ChunkMeta {
    /// The wire form.
    pub fn to_proto(&self) -> lazix_proto::ext::ChunkMeta {
        lazix_proto::ext::ChunkMeta {
            digest: self.digest.into(),
            size: self.size,
        }
    }

    /// Parses the wire form (`Invalid` for a malformed digest).
    pub fn try_from_proto(m: &lazix_proto::ext::ChunkMeta) -> Result<Self, StoreError> {
        Ok(Self {
            digest: B3Digest::try_from(&m.digest)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
            size: m.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_chunks_are_verified() {
        let c = Chunk::from_raw(Bytes::from(vec![7u8; 10_000]));
        assert_eq!(c.decode_verified().unwrap(), vec![7u8; 10_000]);
        let mut wrong = c.clone();
        wrong.digest = B3Digest::of(b"other");
        assert!(matches!(
            wrong.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
        let mut short = c;
        short.size = 9_999;
        assert!(matches!(
            short.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
    }
}
