//! The lazix content-addressed store: digests, chunking, blobs,
//! directories, PathInfo, the Nix formats, storage backends and the
//! ingest/render pipelines. No network servers live here.
#![warn(missing_docs)]

pub mod bucket;
pub mod catalog;
pub mod catalog_sort;
pub mod chunk;
pub mod chunker;
pub mod digest;
pub mod directory;
pub mod disk;
pub mod error;
pub mod frame;
pub mod framing;
pub mod ingest;
pub mod limits;
pub mod nix;
pub mod node;
pub mod pathinfo;
pub mod profile;
pub mod push;
pub mod read;
pub mod regzip;
pub mod render;
pub mod similarity;
pub mod store;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod trust;

pub use digest::B3Digest;
pub use error::{StoreError, StoreResult};
pub use node::Node;
pub use pathinfo::PathInfo;
pub use store::Store;
