//! The read path's shared rules: what every reader (the mount, the NAR
//! renderer, and the proxy and profile prefetch to come) needs to turn a
//! file into verified bytes, written once. Readers keep only their own
//! policy (caching, read-ahead, batching).
//!
//! - [`layout`]: which chunks make a blob, checked against the file before
//!   any byte is sliced by them, and which chunks cover a range.

pub mod layout;

pub use layout::{BlobLayout, Piece};
