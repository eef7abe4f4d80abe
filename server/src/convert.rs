//! Conversions between castore types and wire messages, and between
//! `StoreError` and gRPC `Status`, shared by the server and the client.

use bytes::Bytes;
use lazix_castore::chunk::{Chunk, ChunkMeta, ChunkPayload};
use lazix_castore::{B3Digest, StoreError};
use lazix_proto::ext as lpb;
use tonic::{Code, Status};

/// Maps a store error onto the gRPC status a client should see.
pub fn to_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::Corrupt(m) => Status::data_loss(m),
        StoreError::Unavailable(m) => Status::unavailable(m),
        StoreError::Io(e) => Status::internal(format!("I/O error: {e}")),
    }
}

/// Maps a gRPC status back onto a store error (client side).
pub fn from_status(s: Status) -> StoreError {
    let m = s.message().to_string();
    match s.code() {
        Code::NotFound => StoreError::NotFound(m),
        Code::InvalidArgument | Code::FailedPrecondition => StoreError::Invalid(m),
        Code::DataLoss => StoreError::Corrupt(m),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => StoreError::Unavailable(m),
        _ => StoreError::Io(std::io::Error::other(format!("{:?}: {m}", s.code()))),
    }
}

/// Parses a digest field, as an `InvalidArgument` on failure.
pub fn digest(b: &Bytes) -> Result<B3Digest, Status> {
    B3Digest::try_from(b).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Wire form of a chunk (payload shipped as is).
pub fn chunk_to_proto(c: Chunk) -> lpb::Chunk {
    let (encoding, data) = match c.payload {
        ChunkPayload::Raw(b) | ChunkPayload::Verified(b) => (lpb::ChunkEncoding::Raw, b),
        ChunkPayload::Zstd(b) => (lpb::ChunkEncoding::Zstd, b),
    };
    lpb::Chunk {
        digest: c.digest.into(),
        size: c.size,
        encoding: encoding as i32,
        data,
    }
}

/// Chunk from its wire form (not yet verified: the receiver decodes).
pub fn chunk_from_proto(c: lpb::Chunk) -> Result<Chunk, StoreError> {
    let digest = B3Digest::try_from(&c.digest).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let payload = match lpb::ChunkEncoding::try_from(c.encoding) {
        Ok(lpb::ChunkEncoding::Raw) => ChunkPayload::Raw(c.data),
        Ok(lpb::ChunkEncoding::Zstd) => ChunkPayload::Zstd(c.data),
        Err(_) => return Err(StoreError::Invalid("unknown chunk encoding".into())),
    };
    Ok(Chunk {
        digest,
        size: c.size,
        payload,
    })
}

/// Wire form of a chunk's place in a blob.
pub fn meta_to_proto(m: &ChunkMeta) -> lpb::ChunkMeta {
    lpb::ChunkMeta {
        digest: m.digest.into(),
        size: m.size,
    }
}

/// Chunk meta from its wire form.
pub fn meta_from_proto(m: &lpb::ChunkMeta) -> Result<ChunkMeta, StoreError> {
    Ok(ChunkMeta {
        digest: B3Digest::try_from(&m.digest).map_err(|e| StoreError::Invalid(e.to_string()))?,
        size: m.size,
    })
}

/// Payload bytes per streamed message: well under the 4 MiB default limit
/// of other gRPC implementations (snix), several chunks per message.
pub const MESSAGE_PAYLOAD: u64 = 2 * 1024 * 1024;

/// Splits items into groups of at most `MESSAGE_PAYLOAD` bytes (a single
/// larger item gets its own group).
pub fn group_by_size<T>(items: Vec<T>, size: impl Fn(&T) -> u64) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for it in items {
        let s = size(&it);
        if !cur.is_empty() && bytes + s > MESSAGE_PAYLOAD {
            groups.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += s;
        cur.push(it);
    }
    if !cur.is_empty() {
        groups.push(cur);
    }
    groups
}
