//! The read path's shared rules: what every reader (the mount, the NAR
//! renderer, the gRPC service, and the proxy and profile prefetch to come)
//! needs to turn a file into verified bytes, written once. Readers keep
//! only their own policy (caching, read-ahead, batch sizes).
//!
//! - [`layout`]: which chunks make a blob (the one-chunk rule), checked
//!   against the file before any byte is sliced by them, and which chunks
//!   cover a range;
//! - [`bases`]: frames plus the base chunks their delta frames need, with
//!   the caller's cache asked first;
//! - [`decode`]: frames to verified chunks, plain frames first;
//! - [`exact`]: frames of just the asked chunks, for a reader that knows
//!   what it needs;
//! - [`single_flight`]: one fetch per digest, shared by its waiters;
//! - [`slices`]: many digests asked for in slices, minus what earlier
//!   frames brought;
//! - [`proved`]: chunk lists known to hash to their file (hashed before,
//!   or named by the store's own manifest);
//! - [`trusted`]: paths admitted by their root signature, and chunk lists
//!   checked against what it covers.

pub mod bases;
pub mod decode;
pub mod exact;
pub mod layout;
pub mod proved;
pub mod single_flight;
pub mod slices;
pub mod trusted;

pub use layout::{BlobLayout, Piece, SINGLE_CHUNK_MAX};
