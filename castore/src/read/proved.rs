//! Chunk lists known to hash to their file, so that streaming a file from
//! one need not hash the file again.
//!
//! A multi-chunk file streamed whole from a list not known here is hashed
//! on its way out ([`crate::render`]): a reordered list of genuine chunks
//! passes every per-chunk check, and only the whole file's digest catches
//! it. Known here are
//! - lists this process saw hash to their file;
//! - the lists a store's own manifest of the root names
//!   ([`crate::store::BlobStore::own_chunk_list_digests`]): a store keeps
//!   a list only after hashing its chunks to the file, and writes a root's
//!   manifest from the lists it kept, so a list whose digest the manifest
//!   names for a file is one that was hashed.
//!
//! So a restarted server streams the paths it keeps manifests for without
//! hashing their files again, while a list changed after the manifest
//! naming it was written (rot, or edited: its digest no longer matches)
//! is still hashed and caught. A store relies on a stored list for a new
//! upload of that list only if it still hashes to its file; a path added
//! without uploading its lists (a snix client skips files the server has)
//! gets a manifest of the lists as stored, edited or not. What a manifest
//! cannot catch, then, is a list edited at rest before a manifest naming
//! it is written, or edited together with it (rot only breaks a list:
//! its chunks are then not found, or of other sizes), as with the frames
//! a server reads back ([`crate::frame::Frame::read_back`]): a server trusts what it wrote
//! itself against rot, not against whoever can write its store; clients
//! check everything against signatures, and Nix the NAR against its hash.
//!
//! The manifest is held by the NAR plan of its root (and cached with it),
//! not copied into the process-wide set: a large tree's records would
//! churn it on every plan.

use std::sync::OnceLock;

use moka::sync::Cache;

use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::trust::{chunk_list_digest, ChunkListsDigest};

/// A file and the digest of a list of its chunks (a list proved for one
/// file says nothing of another file of the same size answered with it).
pub type ProvedKey = (B3Digest, B3Digest);

/// Lists known, by file and list; bounded by count.
fn known() -> &'static Cache<ProvedKey, ()> {
    static KNOWN: OnceLock<Cache<ProvedKey, ()>> = OnceLock::new();
    KNOWN.get_or_init(|| Cache::new(256 * 1024))
}

/// What a list of `file` is known by.
pub fn key(file: B3Digest, list: &[ChunkMeta]) -> ProvedKey {
    (file, chunk_list_digest(list))
}

/// Whether the list is known to hash to its file: proved in this process,
/// or named for that file by `own`, the store's own manifest of the root
/// being streamed ([`crate::store::BlobStore::own_chunk_list_digests`]).
pub fn is_proved(key: &ProvedKey, own: Option<&ChunkListsDigest>) -> bool {
    own.is_some_and(|m| m.lists.get(&key.0) == Some(&key.1)) || known().contains_key(key)
}

/// The list was seen to hash to its file.
pub(crate) fn note(key: ProvedKey) {
    known().insert(key, ());
}
