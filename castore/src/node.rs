//! A node of the castore tree (directory, file or symlink), as the root of
//! a store path or an entry of a directory.

use bytes::Bytes;
use lazix_proto::castore as pb;

use crate::digest::B3Digest;
use crate::error::StoreError;

/// One node: what a directory entry or a store path's root points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory, by Merkle digest, with its snix `size`.
    Directory {
        /// digest of the Directory message
        digest: B3Digest,
        /// snix size (see `Directory::size`)
        size: u64,
    },
    /// A regular file, by blob digest.
    File {
        /// BLAKE3 of the contents
        digest: B3Digest,
        /// length of the contents
        size: u64,
        /// whether the executable bit is set
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// the link target, non-empty
        target: Bytes,
    },
}

fn digest_of(b: &Bytes, what: &str) -> Result<B3Digest, StoreError> {
    B3Digest::try_from(b).map_err(|e| StoreError::Invalid(format!("{what}: {e}")))
}

impl Node {
    /// Converts to a protobuf Entry with `name`.
    pub fn to_entry(&self, name: Bytes) -> pb::Entry {
        let entry = match self {
            Node::Directory { digest, size } => pb::entry::Entry::Directory(pb::DirectoryEntry {
                name,
                digest: (*digest).into(),
                size: *size,
            }),
            Node::File {
                digest,
                size,
                executable,
            } => pb::entry::Entry::File(pb::FileEntry {
                name,
                digest: (*digest).into(),
                size: *size,
                executable: *executable,
            }),
            Node::Symlink { target } => pb::entry::Entry::Symlink(pb::SymlinkEntry {
                name,
                target: target.clone(),
            }),
        };
        pb::Entry { entry: Some(entry) }
    }

    /// Validates a protobuf Entry (digest lengths, the symlink target rule
    /// of [`crate::limits::bad_symlink_target`]) and
    /// returns its name and node. Name rules are the caller's.
    pub fn from_entry(entry: &pb::Entry) -> Result<(Bytes, Node), StoreError> {
        match &entry.entry {
            None => Err(StoreError::Invalid("entry without a node".into())),
            Some(pb::entry::Entry::Directory(d)) => Ok((
                d.name.clone(),
                Node::Directory {
                    digest: digest_of(&d.digest, "directory entry")?,
                    size: d.size,
                },
            )),
            Some(pb::entry::Entry::File(f)) => Ok((
                f.name.clone(),
                Node::File {
                    digest: digest_of(&f.digest, "file entry")?,
                    size: f.size,
                    executable: f.executable,
                },
            )),
            Some(pb::entry::Entry::Symlink(s)) => {
                if let Some(why) = crate::limits::bad_symlink_target(&s.target) {
                    return Err(StoreError::Invalid(why));
                }
                Ok((
                    s.name.clone(),
                    Node::Symlink {
                        target: s.target.clone(),
                    },
                ))
            }
        }
    }
}
