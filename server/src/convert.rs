//! Conversions between castore types and wire messages, and between
//! `StoreError` and gRPC `Status`, shared by the server and the client.

use bytes::Bytes;
use lazix_castore::{B3Digest, StoreError};
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

/// Most digests in one batched request (the server refuses more; the
/// client splits).
pub const MAX_BATCH: usize = 16 * 1024;

/// Payload bytes per streamed message: well under the 4 MiB default limit
/// of other gRPC implementations (snix), several frames per message.
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
